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
  constructor(status, detail, hint) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.hint = hint || "";
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

async function call(path, { method = "GET", params, body, json } = {}) {
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(apiUrl(path, params), { method, headers, body, cache: "no-cache" });
  if (!response.ok) {
    let detail = response.statusText;
    let hint = "";
    try {
      const data = await response.json();
      detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      hint = data.hint || "";
    } catch {
      /* not JSON */
    }
    throw new ApiError(response.status, detail, hint);
  }
  return response;
}

export async function getJson(path, params) {
  return (await call(path, { params })).json();
}

export async function postJson(path, json) {
  return (await call(path, { method: "POST", json })).json();
}

export async function postFile(path, file, params) {
  const form = new FormData();
  form.append("file", file, file.name || "query");
  return call(path, { method: "POST", params, body: form });
}

export async function fetchBlob(path, params) {
  return (await call(path, { params })).blob();
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
