// The REST API from the browser. The bearer token travels in the Authorization header only (never in a URL),
// which is why images are fetched into blob URLs instead of being <img src>'d straight from the API.

const TOKEN_KEY = "cxr-api-token";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, detail, hint, reason) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.hint = hint || "";
    this.reason = reason || ""; // the API's stable code where it gives one (e.g. "unknown_value")
  }
}

function base() {
  // The viewer lives at <root>/viewer/: the API is one level up, whatever the mount point.
  return new URL("../", window.location.href);
}

export function apiUrl(path, params) {
  const url = new URL(path.replace(/^\//, ""), base());
  if (params) {
    for (const [key, value] of params) url.searchParams.append(key, value);
  }
  return url;
}

// One query at a time: each new query (a file, an id, a search, more like these) takes the next generation, which
// aborts every request of the one before. A request carries its generation's signal; an answer that arrives for
// an older generation is dropped by its caller (`isCurrent`), so a slow first query never paints over a second.
export const generation = {
  id: 0,
  controller: new AbortController(),
  next() {
    this.controller.abort();
    this.controller = new AbortController();
    this.id += 1;
    return this.id;
  },
  get signal() {
    return this.controller.signal;
  },
  isCurrent(id) {
    return id === this.id;
  },
};

// A request given up because its query was replaced: not an error to show.
export function isAbort(err) {
  return Boolean(err) && err.name === "AbortError";
}

async function call(path, { method = "GET", params, body, json, signal } = {}) {
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(apiUrl(path, params), { method, headers, body, signal, cache: "no-cache" });
  if (!response.ok) {
    let detail = response.statusText;
    let hint = "";
    let reason = "";
    try {
      const data = await response.json();
      const inner = data.detail && typeof data.detail === "object" && !Array.isArray(data.detail) ? data.detail : data;
      detail = typeof inner.detail === "string" ? inner.detail : JSON.stringify(data.detail);
      hint = inner.hint || data.hint || "";
      reason = inner.reason || data.reason || "";
    } catch {
      /* not JSON */
    }
    throw new ApiError(response.status, detail, hint, reason);
  }
  return response;
}

// Each takes an optional `signal` last (usually `generation.signal`): aborting it rejects with an AbortError.
export async function getJson(path, params, signal) {
  return (await call(path, { params, signal })).json();
}

export async function postJson(path, json, signal) {
  return (await call(path, { method: "POST", json, signal })).json();
}

export async function postFile(path, file, params, signal) {
  const form = new FormData();
  form.append("file", file, file.name || "query");
  return call(path, { method: "POST", params, body: form, signal });
}

export async function fetchBlob(path, params, signal) {
  return (await call(path, { params, signal })).blob();
}

// Blob URLs made for one result page, revoked together when the page is replaced.
export class BlobUrls {
  constructor() {
    this.urls = [];
  }
  make(blob) {
    const url = URL.createObjectURL(blob);
    this.urls.push(url);
    return url;
  }
  revokeAll() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
  }
}
