// The "Report" button: the similar-cases report of the query on screen (POST /v1/report, the upload or the indexed
// id), one PDF page opened in a new tab. The bearer token travels in the Authorization header, as everywhere.
import { ApiError, apiUrl, getToken } from "./api.js";

const MAX_K = 20; // what one report page shows

async function fetchReport(state, k) {
  const params = [["k", String(Math.min(MAX_K, Math.max(1, k || 10)))]];
  let body;
  if (state.file) {
    body = new FormData();
    body.append("file", state.file, state.file.name || "query");
  } else {
    params.push(["id", state.queryId]);
  }
  const headers = getToken() ? { Authorization: `Bearer ${getToken()}` } : {};
  const response = await fetch(apiUrl("v1/report", params), { method: "POST", headers, body, cache: "no-store" });
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
  return response.blob();
}

// `k()` gives the number of results the search asked for; `say` and `describe` report progress and errors.
export function wireReport({ state, say, describe, k }) {
  const button = document.getElementById("report");
  if (!button) return;
  button.addEventListener("click", async () => {
    if (!state.file && !state.queryId) {
      say("Choose a film first: the report is about the query on screen.");
      return;
    }
    const tab = window.open("", "_blank"); // opened on the click itself, so that no pop-up blocker stops it
    button.disabled = true;
    say("Making the similar-cases report…");
    try {
      const url = URL.createObjectURL(await fetchReport(state, k ? k() : 10));
      if (tab) tab.location.href = url;
      else window.location.assign(url);
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      say("");
    } catch (err) {
      if (tab) tab.close();
      say(describe(err), true);
    } finally {
      button.disabled = false;
    }
  });
}
