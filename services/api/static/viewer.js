// The cxr viewer: a query beside its most similar indexed X-rays, the labels of those neighbours, a pair view with
// heat maps, refine by marking results, search by region. The search options live in the URL. Each query is one
// generation (api.js): a new one aborts the requests of the last, so what is on screen is always what was asked.
import {
  ApiError, BlobUrls, fetchBlob, generation, getJson, getToken, isAbort, postFile, postJson, setToken,
} from "./api.js";
import { drawWindowed } from "./draw.js";
import { loadFacets, options, readUrl, rememberValues, showAgeNote, writeUrl } from "./filters.js";
import { openDetail, wirePair } from "./pair.js";
import { drawCropBox, setCrop, wireRegion } from "./region.js";
import { wireReport } from "./report.js";
import { card, renderTally, renderWarnings } from "./results.js";

const $ = (id) => document.getElementById(id);
const state = {
  file: null, // an uploaded query (File)
  queryId: null, // an indexed query (point id)
  queryBitmap: null,
  hits: [],
  marks: new Map(), // id -> "good" | "bad"
  crop: null, // [x0, y0, x1, y1] as fractions
  ready: false,
  detailIndex: -1,
  detail: null, // the pair dialog's own state (pair.js)
  search: null, // the last search answer: the pair view keys its caches by its model and query.content_sha256
};
const blobs = new BlobUrls();
const seen = { label: new Set(), view: new Set(), source: new Set() }; // values in results, without facets
// The main flow's own state: the collection, its facets, and whether a query waits for the API token.
const flow = { collection: null, facets: null, pending: false };

// ---------------------------------------------------------------- status and messages

function say(text, isError = false) {
  const el = $("message");
  el.hidden = !text;
  el.textContent = text || "";
  el.classList.toggle("error", isError);
}

function explain(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) {
      return getToken()
        ? "The API token was refused: check it in the box at the top right; the search runs again when you change it."
        : "This server needs an API token: paste it in the box at the top right, and the search runs.";
    }
    return `${err.message}${err.hint ? ` (${err.hint})` : ""}`;
  }
  return String(err && err.message ? err.message : err);
}

async function watchReadiness() {
  for (;;) {
    try {
      const r = await fetch(new URL("../readyz", window.location.href), { cache: "no-store" });
      const body = await r.json();
      if (r.ok) {
        state.ready = true;
        flow.collection = body.collection || null;
        $("status").textContent = `ready: collection ${body.collection}`;
        $("status").classList.remove("bad");
        updateButtons();
        refreshFacets();
        if ((state.file || state.queryId) && !state.search && !flow.pending) runSearch(); // chosen while starting
        return;
      }
      const errors = body.errors ? Object.values(body.errors).map((e) => e.message).join("; ") : "";
      $("status").textContent = errors ? `not ready: ${errors}` : "starting: loading the model and the store…";
      $("status").classList.toggle("bad", Boolean(errors));
    } catch {
      $("status").textContent = "cannot reach the server";
      $("status").classList.add("bad");
    }
    await new Promise((resolve) => setTimeout(resolve, 1500));
  }
}

function updateButtons() {
  $("search").disabled = !state.ready || !(state.file || state.queryId);
  const good = [...state.marks.values()].filter((m) => m === "good").length;
  const bad = state.marks.size - good;
  $("more-like").disabled = !state.ready || good === 0;
  $("clear-marks").disabled = state.marks.size === 0;
  $("marked").textContent = state.marks.size
    ? `${good} good${bad ? `, ${bad} not` : ""} marked:`
    : "Mark good results, then";
}

// ---------------------------------------------------------------- the query

// A new query (a file, an id) takes the next generation: every request of the one before is aborted and a late
// answer to it is dropped. What the old query showed goes at once, so nothing on screen belongs to it.
function startQuery(caption) {
  const g = generation.next();
  state.marks.clear();
  setCrop(null);
  say("");
  clearResults();
  state.queryBitmap = null;
  const canvas = $("query-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  $("query-caption").textContent = caption;
  flow.pending = false;
  refreshFacets();
  return g;
}

async function showQuery(blob, caption, g) {
  const bitmap = await createImageBitmap(blob);
  if (!generation.isCurrent(g)) return;
  state.queryBitmap = bitmap;
  drawWindowed($("query-canvas"), bitmap);
  $("query-caption").textContent = caption;
  drawCropBox();
}

async function useFile(file) {
  if (!file) return;
  const name = file.name || "upload";
  const g = startQuery(`${name}: reading…`);
  const signal = generation.signal;
  state.file = file;
  state.queryId = null;
  updateButtons();
  try {
    const response = await postFile("v1/render", file, [["size", "768"]], signal);
    const w = response.headers.get("X-Image-Width");
    const h = response.headers.get("X-Image-Height");
    await showQuery(await response.blob(), `${name} · ${w}×${h} px · drag on it to search a region`, g);
  } catch (err) {
    if (!isAbort(err) && generation.isCurrent(g)) failQuery(name, err);
    return;
  }
  if (!generation.isCurrent(g)) return;
  updateButtons();
  await runSearch(g);
}

async function useId(id) {
  id = (id || "").trim();
  if (!id) return;
  const g = startQuery(`indexed ${id}: loading…`);
  const signal = generation.signal;
  state.file = null;
  state.queryId = id;
  updateButtons();
  try {
    const point = await getJson(`v1/points/${encodeURIComponent(id)}`, undefined, signal);
    const blob = await fetchBlob(point.thumbnail_url.replace(/^\//, ""), [["size", "768"]], signal);
    await showQuery(blob, `indexed ${point.payload.label || "unlabelled"} · ${point.payload.source || ""}`, g);
  } catch (err) {
    if (!isAbort(err) && generation.isCurrent(g)) failQuery(`id ${id}`, err);
    return;
  }
  if (!generation.isCurrent(g)) return;
  updateButtons();
  await runSearch(g);
}

function needsToken(err) {
  return err instanceof ApiError && (err.status === 401 || err.status === 403);
}

// A query the server did not take. Without a (good) token it is kept, and entering the token runs it; otherwise
// (not an image, too large, no such id) there is no query: nothing of the previous one stays on screen.
function failQuery(name, err) {
  clearResults();
  if (needsToken(err)) {
    flow.pending = true;
    $("query-caption").textContent = `${name}: waiting for the API token`;
  } else {
    state.file = null;
    state.queryId = null;
    state.queryBitmap = null;
    const canvas = $("query-canvas");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    $("query-caption").textContent = `No query: ${name} was refused.`;
    writeUrl(null);
  }
  say(needsToken(err) ? explain(err) : `${name} was refused: ${explain(err)}`, true);
  updateButtons();
}

// ---------------------------------------------------------------- searching

// A search of the current query. Called without `g` (new options, a region, the Search button) it takes the next
// generation, superseding the last search; useFile/useId pass the generation their query started.
async function runSearch(g = null) {
  if (!state.ready || !(state.file || state.queryId)) return;
  if (g === null) g = generation.next();
  else if (!generation.isCurrent(g)) return;
  const signal = generation.signal;
  const o = options();
  const crop = state.crop;
  say("");
  $("grid").setAttribute("aria-busy", "true");
  try {
    let result;
    if (state.file) {
      const params = [["k", String(o.k)], ["group_by_patient", String(o.group)],
        ["exclude_same_patient", String(o.exclude)], ...o.filters.map((f) => ["filter", f])];
      if (crop) params.push(["crop", crop.map((v) => v.toFixed(4)).join(",")]);
      result = await (await postFile("v1/search", state.file, params, signal)).json();
    } else {
      result = await postJson("v1/search/similar", {
        positive: [state.queryId], k: o.k, filters: o.filters,
        group_by_patient: o.group, exclude_same_patient: o.exclude,
      }, signal);
    }
    if (!generation.isCurrent(g)) return;
    showResults(result);
    shareQuery(result, crop);
  } catch (err) {
    if (isAbort(err) || !generation.isCurrent(g)) return;
    if (needsToken(err) || [413, 415].includes(err.status)) failQuery(state.file ? state.file.name || "upload" : `id ${state.queryId}`, err);
    else {
      // e.g. a filter value the collection does not have (422 unknown_value): its detail, not an empty grid
      clearResults();
      say(explain(err), true);
    }
  }
}

// The address bar after a search, and whether Copy link can share it: an upload only when the archive holds the
// same film (`query.indexed`), as a link can carry an id but not a file.
function shareQuery(result, crop) {
  if (!state.file) {
    writeUrl(null, { id: state.queryId });
    setShare(null);
  } else if (result.query && result.query.indexed === true && !crop) {
    writeUrl(null, { id: result.query.id });
    setShare(null);
  } else {
    writeUrl(crop);
    setShare(result.query && result.query.indexed === true
      ? "a region of an uploaded film cannot be shared by link: search the whole film to share it"
      : "an uploaded film that is not in the archive cannot be shared by link", true);
  }
}

function setShare(reason, visible = false) {
  $("share").disabled = Boolean(reason);
  $("share").title = reason || "Copy the link to this search";
  $("share-why").textContent = reason && visible ? reason : "";
  $("share-why").hidden = !(reason && visible);
}

async function moreLikeThese() {
  const positive = [...state.marks].filter(([, m]) => m === "good").map(([id]) => id);
  const negative = [...state.marks].filter(([, m]) => m === "bad").map(([id]) => id);
  if (!positive.length) return;
  const g = generation.next();
  const signal = generation.signal;
  const o = options();
  say("");
  try {
    const result = await postJson("v1/search/similar", {
      positive, negative, k: o.k, filters: o.filters, group_by_patient: o.group, exclude_same_patient: o.exclude,
    }, signal);
    if (!generation.isCurrent(g)) return;
    state.marks.clear();
    writeUrl(state.crop, { id: state.queryId, pos: positive.join(","), neg: negative.join(",") });
    showResults(result, `More like ${positive.length} marked result${positive.length > 1 ? "s" : ""}` +
      (negative.length ? `, less like ${negative.length}` : ""));
    setShare(null);
  } catch (err) {
    if (!isAbort(err) && generation.isCurrent(g)) say(explain(err), true);
  }
}

function showResults(result, heading) {
  state.hits = result.hits;
  state.search = result;
  blobs.revokeAll();
  renderWarnings($("warnings"), result.warnings);
  renderTally($("tally"), result, heading);
  const grid = $("grid");
  grid.removeAttribute("aria-busy");
  grid.dataset.count = String(result.hits.length);
  grid.dataset.score = result.score;
  const signal = generation.signal;
  grid.replaceChildren(...result.hits.map((hit, index) => card(hit, {
    onOpen: () => openDetail(index), onMark: (kind) => toggleMark(hit.id, kind), blobs, signal, describe: explain,
  })));
  if (!result.hits.length) say("No indexed image matches these filters.");
  rememberValues(seen, result.hits);
  updateButtons();
}

// No results on screen: none of a query that is gone, or of options the server refused.
function clearResults() {
  state.hits = [];
  state.search = null;
  blobs.revokeAll();
  const grid = $("grid");
  grid.replaceChildren();
  grid.removeAttribute("aria-busy");
  delete grid.dataset.count;
  delete grid.dataset.score;
  $("tally").replaceChildren();
  renderWarnings($("warnings"), []);
  setShare("there is no search to share yet");
}

// The pickers (label, view, source with counts) for this collection; the server caches them per point count.
async function refreshFacets() {
  if (!state.ready) return;
  try {
    const facets = await loadFacets(flow.collection, generation.signal);
    if (!facets) return;
    flow.facets = facets;
    showAgeNote(facets);
    $("status").textContent = `ready: collection ${facets.collection || flow.collection} · ${facets.total} films`;
  } catch {
    // aborted by a newer query, or the server is unreachable: the pickers keep what they have
  }
}

function toggleMark(id, kind) {
  if (state.marks.get(id) === kind) state.marks.delete(id);
  else state.marks.set(id, kind);
  refreshMarks();
}

function refreshMarks() {
  for (const li of $("grid").children) {
    const mark = state.marks.get(li.dataset.id);
    li.classList.toggle("good", mark === "good");
    li.classList.toggle("bad", mark === "bad");
    li.querySelector(".mark-good").setAttribute("aria-pressed", String(mark === "good"));
    li.querySelector(".mark-bad").setAttribute("aria-pressed", String(mark === "bad"));
  }
  if (state.detailIndex >= 0) {
    $("detail-good").setAttribute("aria-pressed", String(state.marks.get(state.hits[state.detailIndex].id) === "good"));
  }
  updateButtons();
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("token").value = getToken();
  $("token").addEventListener("change", () => {
    // A query that waited for the token (or never got results) runs now, whole; otherwise the pickers refresh.
    setToken($("token").value.trim());
    if (flow.pending || !state.search) {
      if (state.file) return useFile(state.file);
      if (state.queryId) return useId(state.queryId);
    }
    say("");
    return refreshFacets();
  });
  $("file-input").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    ev.target.value = ""; // so that choosing the same file again fires again
    useFile(file);
  });
  const drop = $("drop");
  drop.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("file-input").click(); }
  });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    ev.stopPropagation(); // the document's drop handler would start the same query a second time
    drop.classList.remove("over");
    useFile(ev.dataTransfer.files[0]);
  });
  document.addEventListener("dragover", (ev) => ev.preventDefault());
  document.addEventListener("drop", (ev) => { ev.preventDefault(); if (ev.dataTransfer.files[0]) useFile(ev.dataTransfer.files[0]); });
  $("by-id").addEventListener("submit", (ev) => { ev.preventDefault(); useId($("start-id").value); });
  $("options").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });
  $("crop").addEventListener("change", () => {
    setCrop($("crop").value ? $("crop").value.split(",").map(Number) : null);
    runSearch();
  });
  $("clear-crop").addEventListener("click", () => { setCrop(null); runSearch(); });
  for (const id of ["f-age-min", "f-age-max"]) $(id).addEventListener("input", () => showAgeNote(flow.facets));
  $("more-like").addEventListener("click", moreLikeThese);
  $("clear-marks").addEventListener("click", () => { state.marks.clear(); refreshMarks(); });
  $("share").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(location.href); say("Link copied."); } catch { say(location.href); }
  });
  wirePair({ state, toggleMark, describe: explain });
  wireReport({ state, say, describe: explain, k: () => options().k });
  wireRegion(state, { say, onRegion: () => runSearch() });
}

async function main() {
  wire();
  const params = readUrl();
  if (params.get("crop")) setCrop(params.get("crop").split(",").map(Number));
  setShare("there is no search to share yet");
  await watchReadiness();
  if (params.get("id")) {
    $("start-id").value = params.get("id");
    await useId(params.get("id"));
  }
  if (params.get("pos")) {
    for (const id of params.get("pos").split(",")) state.marks.set(id, "good");
    for (const id of (params.get("neg") || "").split(",").filter(Boolean)) state.marks.set(id, "bad");
    await moreLikeThese();
  }
}

main();
