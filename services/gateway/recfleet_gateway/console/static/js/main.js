// Sign-in, page switching and refresh. Each page module exports `render(panel, ui)`,
// which fetches what it shows and draws it into its panel.

import { ApiError, forgetKey, get, storeKey, storedKey } from "./api.js";
import * as experiments from "./experiments.js";
import * as fleet from "./fleet.js";
import * as models from "./models.js";
import * as traffic from "./traffic.js";
import * as user from "./user.js";

const PAGES = { fleet, traffic, models, experiments, user };
let current = "fleet";

const $ = (id) => document.getElementById(id);

/** What the pages share: reporting an error, and showing another page. */
const ui = {
  report(error) {
    $("status").textContent = error ? `${error.message}` : "";
    if (error && !(error instanceof ApiError)) console.error(error);
  },
  show,
};

async function show(name) {
  current = name;
  for (const page of Object.keys(PAGES)) {
    const selected = page === name;
    $(`tab-${page}`).setAttribute("aria-selected", String(selected));
    $(`page-${page}`).hidden = !selected;
  }
  ui.report(null);
  try {
    await PAGES[name].render($(`page-${name}`), ui);
  } catch (error) {
    ui.report(error);
  }
}

function signedIn(signed) {
  $("login").hidden = signed;
  $("app").hidden = !signed;
  $("refresh").hidden = !signed;
  $("sign-out").hidden = !signed;
  $("who").hidden = !signed;
}

async function signIn(key) {
  // Any admin route tells a good key from a bad one; the fleet page needs this one anyway.
  await get("/admin/v1/fleet", { key });
  storeKey(key);
  signedIn(true);
  $("who").textContent = `signed in to ${window.location.host}`;
  await show(current);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    await signIn($("key").value);
    $("key").value = "";
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("sign-out").addEventListener("click", () => {
  forgetKey();
  signedIn(false);
  $("key").focus();
});

$("refresh").addEventListener("click", () => show(current));

for (const page of Object.keys(PAGES)) {
  $(`tab-${page}`).addEventListener("click", () => show(page));
}

if (storedKey()) {
  signIn(storedKey()).catch((error) => {
    forgetKey();
    signedIn(false);
    $("login-error").textContent = error.message;
  });
}
