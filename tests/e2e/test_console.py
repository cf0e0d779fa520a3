"""The operator console in a real headless browser against the whole fleet: sign-in (a
wrong key refused with the API's own detail), the ranking canary's weight moved through
the page and rolled back, an experiment's readout, and a user's history beside their
explained recommendations. Each page is also saved as docs/images/console_<page>.png
(1280x800), the screenshots of docs/console.md."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from recfleet_store.registry import new_version_name, register_version

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
VIEWPORT = {"width": 1280, "height": 800}
# Debian's chromium, headless, with nothing that reaches for the network on its own.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, fleet):
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(f"{fleet.gateway_url}/console")
    yield tab
    context.close()
    assert not errors, errors  # no script failed on any page


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"console_{name}.png"))


def ranking_state(api: httpx.Client) -> dict:
    return next(s for s in api.get("/admin/v1/traffic").json()["services"] if s["service"] == "ranking")


@pytest.fixture
def ranking_weight_restored(api):
    """The ranking canary open at weight 0 before and after, as the other e2e tests expect."""
    api.post("/admin/v1/traffic/ranking/ack")
    assert api.put("/admin/v1/traffic/ranking", json={"weight": 0, "shadow_percent": 0}).status_code == 200
    yield
    api.post("/admin/v1/traffic/ranking/ack")
    assert api.put("/admin/v1/traffic/ranking", json={"weight": 0, "shadow_percent": 0}).status_code == 200


def test_a_wrong_key_is_refused_with_the_apis_detail_and_the_right_one_shows_the_fleet(page, api, fleet):
    refused = httpx.get(f"{fleet.gateway_url}/admin/v1/fleet", headers={"Authorization": "Bearer not-a-key"})
    assert refused.status_code == 401
    sign_in(page, "not-a-key")
    expect(page.locator("#login-error")).to_have_text(refused.json()["detail"])
    expect(page.locator("#app")).to_be_hidden()

    sign_in(page, fleet.config.admin_key)
    services = page.locator("#fleet-services")
    expect(services).to_be_visible()
    # Every downstream endpoint, the ranking canary among them, with its health.
    endpoints = sum(len(t["endpoints"]) for s in api.get("/admin/v1/fleet").json()["services"] for t in s["tracks"])
    expect(services.locator("tbody tr")).to_have_count(endpoints)
    expect(services.locator("tbody tr", has_text="canary")).to_contain_text("ranking")
    expect(services).to_contain_text("serving")
    serving = api.get("/admin/v1/models").json()["serving"]["als"]
    expect(page.locator("#page-fleet")).to_contain_text(serving)
    shards = page.locator("#fleet-index tbody tr")
    expect(shards).to_have_count(len(api.get("/admin/v1/index").json()["shards"]))
    expect(shards.first).to_contain_text(serving)
    screenshot(page, "fleet")


def test_the_ranking_canary_weight_moves_through_the_page_and_rolls_back(page, api, fleet, ranking_weight_restored):
    sign_in(page, fleet.config.admin_key)
    open_tab(page, "Traffic")
    row = page.locator("#traffic-services tbody tr", has_text="ranking")
    expect(row.locator(".weight")).to_have_text("0%")

    row.get_by_label("ranking canary weight %").fill("10")
    row.get_by_role("button", name="Apply").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Route 10% of users to the ranking canary")
    dialog.get_by_role("button", name="Change traffic").click()
    expect(row.locator(".weight")).to_have_text("10%")
    expect(row.get_by_role("img")).to_have_attribute("aria-label", "10% of users on the canary")
    assert ranking_state(api)["weight"] == 10
    expect(page.locator("#traffic-events tbody tr").first).to_contain_text("set")
    screenshot(page, "traffic")

    # A cancelled dialog changes nothing.
    row.get_by_label("ranking canary weight %").fill("50")
    row.get_by_role("button", name="Apply").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert ranking_state(api)["weight"] == 10

    row.get_by_role("button", name="Roll back ranking").click()
    page.get_by_role("dialog").get_by_role("button", name="Roll back").click()
    expect(row.locator(".weight")).to_have_text("0%")
    expect(row).to_contain_text("frozen")
    state = ranking_state(api)
    assert state["weight"] == 0 and state["frozen"]
    latest = page.locator("#traffic-events tbody tr").first
    expect(latest).to_contain_text("rollback")
    expect(latest).to_contain_text("rolled back from the console")

    # Frozen: the API refuses a new weight, and the page shows its detail.
    row.get_by_label("ranking canary weight %").fill("10")
    row.get_by_role("button", name="Apply").click()
    page.get_by_role("dialog").get_by_role("button", name="Change traffic").click()
    refusal = api.put("/admin/v1/traffic/ranking", json={"weight": 10, "shadow_percent": 0}).json()["detail"]
    expect(page.locator("#status")).to_have_text(refusal)

    row.get_by_role("button", name="Acknowledge ranking").click()
    expect(row).to_contain_text("open")
    assert not ranking_state(api)["frozen"]


@pytest.fixture
def unindexed_als(fleet):
    """A registered ALS version whose FAISS index was never built: the gates refuse it."""
    version = new_version_name("als")
    with psycopg.connect(fleet.config.postgres_dsn) as conn:
        register_version(conn, version, "als", f"file:///nowhere/{version}", {"ndcg@10": 0.2}, {})
    yield version
    with psycopg.connect(fleet.config.postgres_dsn) as conn:
        conn.execute("DELETE FROM model_versions WHERE version = %s", (version,))


def test_the_models_page_lists_every_version_and_shows_a_refused_promotion(page, api, fleet, unindexed_als):
    sign_in(page, fleet.config.admin_key)
    open_tab(page, "Models")
    models = api.get("/admin/v1/models").json()
    rows = page.locator("#models-versions tbody tr")
    expect(rows).to_have_count(len(models["versions"]))
    for version in models["versions"]:
        expect(rows.filter(has_text=version["version"])).to_have_count(1)
    for kind, version in models["serving"].items():
        expect(page.locator("#page-models .card", has_text=f"Serving {kind}")).to_contain_text(version or "none")

    page.get_by_role("button", name=f"Promote {unindexed_als}", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Promote").click()
    refused = api.post("/admin/v1/models/als/promote", json={"version": unindexed_als})
    assert refused.status_code == 409
    outcome = page.locator("#models-outcome")
    expect(outcome).to_contain_text(refused.json()["detail"])
    for reason in refused.json()["reasons"]:
        expect(outcome).to_contain_text(reason)
    assert api.get("/admin/v1/models").json()["serving"] == models["serving"]  # nothing changed
    screenshot(page, "models")


@pytest.fixture
def experiment(api):
    """A running experiment on a surface of its own, with exposures and some clicks."""
    name = f"console-{uuid.uuid4().hex[:8]}"
    surface = f"{name}-surface"
    variants = [
        {"name": "control", "share": 0.5, "ranker_version": "rules"},
        {"name": "treatment", "share": 0.5, "ranker_version": "serving"},
    ]
    created = api.post("/admin/v1/experiments", json={"name": name, "variants": variants, "surface": surface})
    assert created.status_code == 201, created.text
    api.get("/admin/v1/experiments")  # the create refreshed this replica's experiments
    clicks = 0
    for user in range(1, 41):
        reply = api.get("/v1/recommendations", params={"user_id": str(user), "limit": 5, "surface": surface})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["experiment"]["name"] == name
        if user % 3 == 0:
            event = {
                "user_id": str(user),
                "item_id": body["items"][0]["item_id"],
                "type": "click",
                "context": {"request_id": body["request_id"]},
            }
            assert api.post("/v1/events", json={"events": [event]}).status_code == 202
            clicks += 1
    # Clicks reach the readout through the event pipeline: wait until every one counts, so
    # the page and the API read the same figures.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        readout = api.get(f"/admin/v1/experiments/{name}/readout").json()
        if sum(variant["clicks"] for variant in readout["variants"]) >= clicks:
            break
        time.sleep(0.5)
    yield name
    api.post(f"/admin/v1/experiments/{name}/stop")


def test_an_experiment_readout_is_a_chart_and_a_table(page, api, fleet, experiment):
    sign_in(page, fleet.config.admin_key)
    open_tab(page, "Experiments")
    expect(page.locator("#experiments-list tbody tr", has_text=experiment)).to_contain_text("running")
    page.get_by_role("button", name=f"Readout of {experiment}").click()
    readout = page.locator("#experiment-readout")
    expect(readout.get_by_role("heading")).to_have_text(f"Readout: {experiment} (running)")
    body = api.get(f"/admin/v1/experiments/{experiment}/readout").json()
    table = readout.locator("#readout-table tbody tr")
    expect(table).to_have_count(2)
    for row, variant in zip(["control", "treatment"], body["variants"], strict=True):
        expect(table.filter(has_text=row)).to_contain_text(str(variant["exposures"]))
    assert sum(v["exposures"] for v in body["variants"]) >= 40
    # CTR bars per variant, and the treatment's lift with its 95% interval as a whisker.
    charts = readout.locator("svg.chart")
    expect(charts).to_have_count(2)
    expect(charts.first.locator("rect.bar")).to_have_count(2)
    expect(charts.nth(1).locator("line.whisker")).to_have_count(3)
    described = charts.nth(1).get_attribute("aria-label") or ""
    assert described.startswith("Lift over the control (CTR points), 95% interval: treatment: "), described
    # The page rounds in JavaScript, the test in Python: a half may round either way.
    shown = [float(x) for x in re.findall(r"[-+]\d+\.\d+(?= pt)", described)]
    treatment = body["variants"][1]
    expected = [100 * treatment["lift"], *(100 * bound for bound in treatment["ci95"])]
    assert shown == pytest.approx(expected, abs=0.006), described
    expect(readout).to_contain_text("sample ratio")
    readout.scroll_into_view_if_needed()
    screenshot(page, "experiments")


def test_a_user_shows_history_beside_explained_recommendations(page, api, fleet):
    sign_in(page, fleet.config.admin_key)
    open_tab(page, "Try a user")
    page.get_by_label("User id").fill("1")
    page.get_by_role("button", name="Show").click()

    history = page.locator("#user-history li")
    expect(history).to_have_count(20)
    events = api.get("/v1/users/1/export").json()["events"]
    newest = events[-1]["item_id"]
    title = api.get("/admin/v1/items", params={"item_id": newest}).json()["items"][0]["title"]
    assert title  # MovieLens titles are in the catalog
    expect(history.first).to_contain_text(title)
    expect(history.first).to_contain_text(f"#{newest}")

    recommendations = page.locator("#user-recommendations li.rec")
    expect(recommendations).to_have_count(10)
    answer = api.get("/v1/recommendations", params={"user_id": "1", "limit": 10, "explain": "true"}).json()
    first = answer["items"][0]
    expect(recommendations.first).to_contain_text(f"#{first['item_id']}")
    titles = api.get("/admin/v1/items", params={"item_id": first["item_id"]}).json()["items"][0]["title"]
    expect(recommendations.first.locator(".title")).to_have_text(titles)
    expect(recommendations.first).to_contain_text(f"candidate score {first['explanation']['candidate_score']:.3f}")
    # With EASE fused in (the local fleet's version), each source's own score beside it
    # (rounded by JavaScript: compared as numbers).
    line = recommendations.first.locator("p.muted").inner_text()
    for source, score in first["explanation"]["source_scores"].items():
        shown = re.search(rf"\b{re.escape(source)} (-?\d+\.\d+)", line)
        assert shown and float(shown.group(1)) == pytest.approx(score, abs=0.0011), line
    contributions = first["explanation"]["ranker_contributions"]
    if contributions:  # the learned ranker served: one bar per feature, largest first
        expect(recommendations.first.locator("svg.contributions rect")).to_have_count(min(6, len(contributions)))
    expect(page.locator("#user-recommendations")).to_contain_text(f"served by {answer['served_by']}")
    screenshot(page, "user")
