// The admin and public REST API, called with the operator's key. Errors come back as
// problem+json; `ApiError.detail` is what the page shows.

const KEY = "recfleet.console.key";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

async function problemOf(reply) {
  try {
    return await reply.json();
  } catch {
    return { title: reply.statusText, detail: `HTTP ${reply.status} ${reply.statusText}` };
  }
}

/** `method path` with the stored key (or `key`); resolves to the JSON body. */
export async function call(method, path, { body, query, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    for (const one of [value].flat()) url.searchParams.append(name, String(one));
  }
  const headers = { Authorization: `Bearer ${key ?? storedKey() ?? ""}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!reply.ok) throw new ApiError(reply.status, await problemOf(reply));
  return reply.status === 204 ? null : reply.json();
}

export const get = (path, options) => call("GET", path, options);
export const post = (path, body, options = {}) => call("POST", path, { ...options, body });
export const put = (path, body, options = {}) => call("PUT", path, { ...options, body });
