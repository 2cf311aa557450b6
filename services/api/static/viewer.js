// The cxr viewer: a query beside its most similar indexed X-rays, a tally of their diagnoses, a pair view with
// heat maps, refine by marking results, search by region. The search options live in the URL.
import { ApiError, BlobUrls, fetchBlob, getJson, getToken, postFile, postJson, setToken } from "./api.js";
import { drawWindowed } from "./draw.js";

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
  detail: null, // {queryBitmap, resultBitmap, explanation}
};
const blobs = new BlobUrls();
const explanations = new Map(); // "query|result" -> Promise of the explain JSON (a pair costs a model pass)
const seen = { labels: new Set(), views: new Set(), sources: new Set() };

// ---------------------------------------------------------------- status and messages

function say(text, isError = false) {
  const el = $("message");
  el.hidden = !text;
  el.textContent = text || "";
  el.classList.toggle("error", isError);
}

function explain(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return "This server needs an API token: paste it in the box at the top right.";
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
        $("status").textContent = `ready: collection ${body.collection}`;
        $("status").classList.remove("bad");
        updateButtons();
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

// ---------------------------------------------------------------- options <-> URL

function options() {
  const k = Math.max(1, Math.min(200, parseInt($("k").value, 10) || 12));
  const filters = [];
  const clean = (v) => v.split(",").map((s) => s.trim()).filter(Boolean).join(",");
  for (const [field, id] of [["label", "f-label"], ["view", "f-view"], ["sex", "f-sex"], ["source", "f-source"]]) {
    const value = clean($(id).value);
    if (value) filters.push(`${field}=${value}`);
  }
  const lo = $("f-age-min").value;
  const hi = $("f-age-max").value;
  if (lo !== "" || hi !== "") {
    // Ages are integers in the store; a range becomes the any-of list the filter syntax has. The store keeps
    // 90 and over as one band (90), and the server maps any age from 90 up to that band.
    const from = Math.max(0, parseInt(lo || "0", 10));
    const to = Math.min(120, parseInt(hi || "120", 10));
    const ages = [];
    for (let a = from; a <= to; a++) ages.push(a);
    if (ages.length) filters.push(`age=${ages.join(",")}`);
  }
  return { k, filters, group: $("group").checked, exclude: $("exclude-patient").checked };
}

function writeUrl(extra = {}) {
  const p = new URLSearchParams();
  const o = options();
  p.set("k", String(o.k));
  if (o.group) p.set("group", "1");
  if (o.exclude) p.set("exclude", "1");
  for (const [key, id] of [["label", "f-label"], ["view", "f-view"], ["sex", "f-sex"], ["source", "f-source"],
    ["age_min", "f-age-min"], ["age_max", "f-age-max"]]) {
    if ($(id).value) p.set(key, $(id).value);
  }
  if (state.crop) p.set("crop", state.crop.map((v) => v.toFixed(3)).join(","));
  for (const [key, value] of Object.entries(extra)) if (value) p.set(key, value);
  history.replaceState(null, "", `${location.pathname}?${p}`);
}

function readUrl() {
  const p = new URLSearchParams(location.search);
  if (p.get("k")) $("k").value = p.get("k");
  $("group").checked = p.get("group") === "1";
  $("exclude-patient").checked = p.get("exclude") === "1";
  for (const [key, id] of [["label", "f-label"], ["view", "f-view"], ["sex", "f-sex"], ["source", "f-source"],
    ["age_min", "f-age-min"], ["age_max", "f-age-max"]]) {
    if (p.get(key) !== null) $(id).value = p.get(key);
  }
  if (p.get("crop")) setCrop(p.get("crop").split(",").map(Number));
  return p;
}

// ---------------------------------------------------------------- the query

async function showQuery(blob, caption) {
  state.queryBitmap = await createImageBitmap(blob);
  drawWindowed($("query-canvas"), state.queryBitmap);
  $("query-caption").textContent = caption;
  drawCropBox();
}

async function useFile(file) {
  if (!file) return;
  state.file = file;
  state.queryId = null;
  state.marks.clear();
  setCrop(null);
  say("");
  try {
    const response = await postFile("v1/render", file, [["size", "768"]]);
    const w = response.headers.get("X-Image-Width");
    const h = response.headers.get("X-Image-Height");
    await showQuery(await response.blob(), `${file.name || "upload"} · ${w}×${h} px · drag on it to search a region`);
  } catch (err) {
    say(explain(err), true);
    state.file = null;
    updateButtons();
    return;
  }
  updateButtons();
  await runSearch();
}

async function useId(id) {
  id = (id || "").trim();
  if (!id) return;
  state.file = null;
  state.queryId = id;
  state.marks.clear();
  setCrop(null);
  say("");
  try {
    const point = await getJson(`v1/points/${encodeURIComponent(id)}`);
    await showQuery(await fetchBlob(point.thumbnail_url.replace(/^\//, ""), [["size", "768"]]),
      `indexed ${point.payload.label || "unlabelled"} · ${point.payload.source || ""}`);
  } catch (err) {
    say(explain(err), true);
    state.queryId = null;
    updateButtons();
    return;
  }
  updateButtons();
  await runSearch();
}

// ---------------------------------------------------------------- searching

async function runSearch() {
  if (!state.ready || !(state.file || state.queryId)) return;
  const o = options();
  say("");
  $("grid").setAttribute("aria-busy", "true");
  try {
    let result;
    if (state.file) {
      const params = [["k", String(o.k)], ["group_by_patient", String(o.group)],
        ["exclude_same_patient", String(o.exclude)], ...o.filters.map((f) => ["filter", f])];
      if (state.crop) params.push(["crop", state.crop.map((v) => v.toFixed(4)).join(",")]);
      result = await (await postFile("v1/search", state.file, params)).json();
      writeUrl();
    } else {
      result = await postJson("v1/search/similar", {
        positive: [state.queryId], k: o.k, filters: o.filters,
        group_by_patient: o.group, exclude_same_patient: o.exclude,
      });
      writeUrl({ id: state.queryId });
    }
    showResults(result);
  } catch (err) {
    say(explain(err), true);
  } finally {
    $("grid").removeAttribute("aria-busy");
  }
}

async function moreLikeThese() {
  const positive = [...state.marks].filter(([, m]) => m === "good").map(([id]) => id);
  const negative = [...state.marks].filter(([, m]) => m === "bad").map(([id]) => id);
  if (!positive.length) return;
  const o = options();
  say("");
  try {
    const result = await postJson("v1/search/similar", {
      positive, negative, k: o.k, filters: o.filters, group_by_patient: o.group, exclude_same_patient: o.exclude,
    });
    state.marks.clear();
    writeUrl({ id: state.queryId, pos: positive.join(","), neg: negative.join(",") });
    showResults(result, `More like ${positive.length} marked result${positive.length > 1 ? "s" : ""}` +
      (negative.length ? `, less like ${negative.length}` : ""));
  } catch (err) {
    say(explain(err), true);
  }
}

function showResults(result, heading) {
  state.hits = result.hits;
  blobs.revokeAll();
  renderTally(result.label_tally, result.hits.length, heading);
  const grid = $("grid");
  grid.replaceChildren();
  grid.dataset.count = String(result.hits.length);
  grid.dataset.score = result.score;
  result.hits.forEach((hit, index) => grid.append(card(hit, index)));
  if (!result.hits.length) say("No indexed image matches these filters.");
  for (const hit of result.hits) {
    const p = hit.payload;
    if (p.label) seen.labels.add(p.label);
    if (p.view) seen.views.add(p.view);
    if (p.source) seen.sources.add(p.source);
  }
  for (const [id, values] of [["labels", seen.labels], ["views", seen.views], ["sources", seen.sources]]) {
    $(id).replaceChildren(...[...values].sort().map((v) => Object.assign(document.createElement("option"), { value: v })));
  }
  updateButtons();
}

function renderTally(tally, total, heading) {
  const el = $("tally");
  el.replaceChildren();
  const title = document.createElement("div");
  title.className = "tally-title";
  title.style.gridColumn = "1 / -1";
  title.textContent = `${heading ? `${heading}: ` : ""}diagnoses among the top ${total}`;
  el.append(title);
  const max = Math.max(1, ...Object.values(tally));
  for (const [label, n] of Object.entries(tally)) {
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: label });
    const bar = document.createElement("span");
    bar.className = "barv";
    bar.style.width = `${(100 * n) / max}%`;
    const count = Object.assign(document.createElement("span"), {
      className: "n", textContent: `${n} (${Math.round((100 * n) / Math.max(1, total))}%)`,
    });
    const row = [name, bar, count];
    row.forEach((e) => { e.dataset.label = label; });
    el.append(...row);
  }
}

function card(hit, index) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.id = hit.id;
  li.dataset.label = hit.payload.label || "";
  const label = hit.payload.label || "(no label)";
  const open = document.createElement("button");
  open.className = "open";
  open.type = "button";
  open.setAttribute("aria-label", `Open result ${hit.rank}: ${label}, score ${hit.score.toFixed(3)}`);
  const img = document.createElement("img");
  img.alt = "";
  open.append(img);
  open.addEventListener("click", () => openDetail(index));
  fetchBlob(hit.thumbnail_url.replace(/^\//, ""), [["size", "256"]])
    .then((blob) => { img.src = blobs.make(blob); img.dataset.loaded = "1"; })
    .catch((err) => { img.alt = explain(err); });
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = '<span class="label"></span><span class="rank"></span><span class="score"></span><span class="source"></span>';
  meta.querySelector(".label").textContent = label;
  meta.querySelector(".rank").textContent = `#${hit.rank}`;
  meta.querySelector(".score").textContent = hit.score.toFixed(3);
  // The API top-codes ages: age_band ("90+") stands for every age of 90 or over.
  const age = hit.payload.age_band ?? hit.payload.age;
  meta.querySelector(".source").textContent = [hit.payload.source, hit.payload.view, hit.payload.sex, age]
    .filter((v) => v !== undefined && v !== null && v !== "").join(" · ");
  const marks = document.createElement("div");
  marks.className = "marks";
  for (const [kind, text] of [["good", "Good"], ["bad", "Not like"]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `mark-${kind}`;
    b.textContent = text;
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => toggleMark(hit.id, kind));
    marks.append(b);
  }
  li.append(open, meta, marks);
  return li;
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

// ---------------------------------------------------------------- the pair view with heat maps

async function openDetail(index) {
  const hit = state.hits[index];
  if (!hit) return;
  state.detailIndex = index;
  const dialog = $("detail");
  dialog.dataset.heat = "loading";
  $("detail-title").textContent = `Result ${hit.rank} of ${state.hits.length}: ${hit.payload.label || "(no label)"}`;
  $("detail-caption").textContent = `score ${hit.score.toFixed(4)} · ${hit.payload.source || ""}`;
  $("detail-good").setAttribute("aria-pressed", String(state.marks.get(hit.id) === "good"));
  $("detail-note").textContent = "Computing the heat maps…";
  const table = $("detail-payload");
  table.replaceChildren(...Object.entries(hit.payload).map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.append(Object.assign(document.createElement("td"), { textContent: k }),
      Object.assign(document.createElement("td"), { textContent: String(v) }));
    return tr;
  }));
  if (!dialog.open) dialog.showModal();
  const queryRef = state.queryId || (state.file ? null : state.hits[0] && state.hits[0].id);
  try {
    const resultBlob = fetchBlob(hit.thumbnail_url.replace(/^\//, ""), [["size", "1024"]]);
    const key = `${state.file ? `upload:${state.file.name}:${state.file.size}` : queryRef}|${hit.id}`;
    let explanation = explanations.get(key);
    if (!explanation) {
      explanation = state.file
        ? postFile("v1/explain", state.file, [["result", hit.id]]).then((r) => r.json())
        : getJson("v1/explain", [["query", queryRef], ["result", hit.id]]);
      explanations.set(key, explanation);
      explanation.catch(() => explanations.delete(key));
    }
    const resultBitmap = await createImageBitmap(await resultBlob);
    let queryBitmap = state.queryBitmap;
    if (!state.file && queryRef && queryRef !== state.queryId) {
      queryBitmap = await createImageBitmap(await fetchBlob(`v1/points/${queryRef}/thumbnail`, [["size", "1024"]]));
    }
    state.detail = { queryBitmap, resultBitmap, explanation: null };
    redrawDetail();
    state.detail.explanation = await explanation;
    if (state.detailIndex !== index) return;
    redrawDetail();
    const e = state.detail.explanation;
    $("detail-note").textContent = `Heat maps: ${e.method} (gradient-weighted attention relevance for this pair); ` +
      `cosine ${e.similarity.toFixed(4)}. Bright regions drove the similarity.` +
      (state.crop ? " The query map covers the whole film, not only the region." : "");
    dialog.dataset.heat = "ready";
  } catch (err) {
    $("detail-note").textContent = `No heat map: ${explain(err)}`;
    dialog.dataset.heat = "failed";
  }
}

function redrawDetail() {
  const d = state.detail;
  if (!d) return;
  const opts = {
    level: parseInt($("wl-level").value, 10),
    width: parseInt($("wl-width").value, 10),
    alpha: $("heat-on").checked ? parseInt($("heat-alpha").value, 10) / 100 : 0,
  };
  const e = d.explanation;
  if (d.queryBitmap) drawWindowed($("detail-query"), d.queryBitmap, { ...opts, heat: e && e.query.map });
  drawWindowed($("detail-result"), d.resultBitmap, { ...opts, heat: e && e.result.map });
}

function closeDetail() {
  state.detailIndex = -1;
  state.detail = null;
  $("detail").close();
}

// ---------------------------------------------------------------- region (crop) on the query

function setCrop(box) {
  if (box && (box.length !== 4 || box.some((v) => !Number.isFinite(v)) || box[0] >= box[2] || box[1] >= box[3])) {
    box = null;
  }
  state.crop = box ? box.map((v) => Math.min(1, Math.max(0, v))) : null;
  $("crop").value = state.crop ? state.crop.map((v) => v.toFixed(3)).join(",") : "";
  drawCropBox();
}

function drawCropBox() {
  const el = $("crop-box");
  if (!state.crop || !state.queryBitmap) {
    el.hidden = true;
    return;
  }
  const [x0, y0, x1, y1] = state.crop;
  Object.assign(el.style, { left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%` });
  el.hidden = false;
}

function wireCropDrawing() {
  const canvas = $("query-canvas");
  let start = null;
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width)), Math.min(1, Math.max(0, (ev.clientY - r.top) / r.height))];
  };
  canvas.addEventListener("pointerdown", (ev) => {
    if (!state.file) {
      if (state.queryId) say("Region search needs an uploaded query image.");
      return;
    }
    start = at(ev);
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!start) return;
    const p = at(ev);
    state.crop = [Math.min(start[0], p[0]), Math.min(start[1], p[1]), Math.max(start[0], p[0]), Math.max(start[1], p[1])];
    drawCropBox();
  });
  canvas.addEventListener("pointerup", () => {
    if (!start) return;
    start = null;
    const box = state.crop;
    if (box && box[2] - box[0] > 0.05 && box[3] - box[1] > 0.05) {
      setCrop(box);
      runSearch();
    } else {
      setCrop(null);
    }
  });
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("token").value = getToken();
  $("token").addEventListener("change", () => { setToken($("token").value.trim()); runSearch(); });
  $("file-input").addEventListener("change", (ev) => useFile(ev.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("file-input").click(); }
  });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
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
  $("more-like").addEventListener("click", moreLikeThese);
  $("clear-marks").addEventListener("click", () => { state.marks.clear(); refreshMarks(); });
  $("share").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(location.href); say("Link copied."); } catch { say(location.href); }
  });
  for (const id of ["wl-level", "wl-width", "heat-on", "heat-alpha"]) $(id).addEventListener("input", redrawDetail);
  $("wl-reset").addEventListener("click", () => { $("wl-level").value = 128; $("wl-width").value = 256; redrawDetail(); });
  $("detail-close").addEventListener("click", closeDetail);
  $("detail").addEventListener("close", () => { state.detailIndex = -1; });
  $("detail-prev").addEventListener("click", () => openDetail(Math.max(0, state.detailIndex - 1)));
  $("detail-next").addEventListener("click", () => openDetail(Math.min(state.hits.length - 1, state.detailIndex + 1)));
  $("detail-good").addEventListener("click", () => toggleMark(state.hits[state.detailIndex].id, "good"));
  $("detail").addEventListener("keydown", (ev) => {
    // Sliders and text fields keep their own arrow keys; elsewhere the arrows step through the results.
    if (["INPUT", "SELECT", "TEXTAREA"].includes(ev.target.tagName) && ev.target.type !== "checkbox") return;
    if (ev.key === "ArrowRight") $("detail-next").click();
    else if (ev.key === "ArrowLeft") $("detail-prev").click();
    else if (ev.key === "g") $("detail-good").click();
  });
  wireCropDrawing();
}

async function main() {
  wire();
  const params = readUrl();
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
