// The pair (detail) dialog: the query beside one result, on their original values under window/level, zoomed and
// panned together, with the heat maps of why they are similar, their legend, and how far the maps can be trusted.
import { generation, isAbort } from "./api.js";
import { drawLegend } from "./heatlegend.js";
import { explanation, pairQuery, queryFilm, resultFilm } from "./pairdata.js";
import { PairView } from "./pairview.js";
import { PRESETS, PRESET_TITLE, defaultWindow, describe, toValues, windowed } from "./wl.js";

const $ = (id) => document.getElementById(id);
// Above this cosine two films are copies of one film, and their maps are noise (two copies came out anticorrelated).
const NEAR_DUPLICATE = 0.995;
// One line each on how far a method can be trusted, in the README's words ("How far to trust the heat maps").
const TRUST = {
  relevance: "Relevance (fast): hiding the patches it marks lowers the similarity more than hiding random ones, " +
    "but it agrees only in part with occlusion and localises less on the hybrid model: check a map with occlusion.",
  occlusion: "Occlusion (slow, about 100 model passes per image): how much hiding each patch lowers the " +
    "similarity, measured directly; the check for a relevance map, at the coarseness of the patch grid.",
};
let ctx = null; // {state, toggleMark(id, kind), describe(err) -> text}: the viewer's shared state and helpers
let view = null;
// The open pair: its request sequence, films ({film, error, rel, grey}), explanation and near-duplicate flag.
const pair = {
  seq: 0, mapSeq: 0, controller: null, hit: null, ref: null, query: null, result: null, explanation: null, near: false,
};

const isCurrent = (seq, gen) => seq === pair.seq && generation.isCurrent(gen) && $("detail").open;

// The query's searched region as fractions of the film: the search answer's box (pixels), else the viewer's.
function regionOf(state) {
  const q = state.search && state.search.query;
  if (q && q.crop && q.width && q.height) {
    return [q.crop[0] / q.width, q.crop[1] / q.height, q.crop[2] / q.width, q.crop[3] / q.height];
  }
  return q && q.crop && state.crop ? state.crop : null;
}

function fillText(hit, state) {
  const label = hit.payload.label || "(no label)";
  $("detail-title").textContent = `Result ${hit.rank} of ${state.hits.length}: ${label}`;
  const age = hit.payload.age_band ?? hit.payload.age;
  $("detail-caption").textContent = [`#${hit.rank}`, label, hit.payload.source, hit.payload.view, hit.payload.sex, age]
    .filter((v) => v !== undefined && v !== null && v !== "").join(" · ");
  const region = regionOf(state);
  $("detail-query-caption").textContent = region ? "Query · dashed box: the region searched" : "Query";
  $("detail-region").hidden = !region;
  $("detail-region").textContent = region
    ? "The result was matched as a whole film: the search compares the box with each whole indexed film, so it " +
      "cannot show which part of the result matched."
    : "";
  $("detail-good").setAttribute("aria-pressed", String(state.marks.get(hit.id) === "good"));
  $("detail-payload").replaceChildren(...Object.entries(hit.payload).map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.append(Object.assign(document.createElement("td"), { textContent: k }),
      Object.assign(document.createElement("td"), { textContent: String(v) }));
    return tr;
  }));
  showScore(hit, state, null);
}

// One score, the card's, with what it means; a second number only where it means something else, labelled.
function showScore(hit, state, e) {
  const s = hit.score.toFixed(3);
  const el = $("detail-score");
  el.dataset.score = s;
  const band = hit.band ? ` · ${hit.band}` : "";
  const whole = e ? ` · whole-film cosine ${e.similarity.toFixed(3)} (query and result as whole films: the pair ` +
    "the heat maps explain)" : "";
  if (state.search && state.search.score === "recommend") {
    el.textContent = `Score ${s}${band} (recommend score, as on the card: against the marked results)${whole}`;
  } else if (regionOf(state)) {
    el.textContent = `Region score ${s}${band} (the query's box against the whole result film, as on the card)${whole}`;
  } else {
    el.textContent = `Score ${s}${band} (cosine, as on the card)`;
  }
}

function showNearDuplicate(cosine) {
  pair.near = true;
  $("detail-note").textContent = `Heat maps not drawn: the two films are near-duplicates (cosine ${cosine.toFixed(4)} ` +
    `> ${NEAR_DUPLICATE}), and a map of two copies of one film is not informative.`;
  $("detail").dataset.heat = "not-informative";
}

export async function openDetail(index) {
  const { state } = ctx;
  const hit = state.hits[index];
  if (!hit) return;
  const dialog = $("detail");
  const first = !dialog.open;
  const seq = ++pair.seq;
  const gen = generation.id;
  if (pair.controller) pair.controller.abort();
  pair.controller = new AbortController();
  const signal = AbortSignal.any([generation.signal, pair.controller.signal]);
  state.detailIndex = index;
  Object.assign(pair, { hit, ref: null, result: null, explanation: null, near: false });
  if (first) {
    pair.query = null;
    view.reset();
  }
  fillText(hit, state);
  dialog.dataset.heat = "loading";
  $("detail-note").textContent = "Loading…";
  if (first) {
    dialog.showModal();
    dialog.focus(); // the dialog, not its first slider: the arrows step through the results
  }
  paint();
  try {
    pair.ref = await pairQuery(state);
    if (!isCurrent(seq, gen)) return;
    const maps = loadMaps(seq, gen, signal); // in parallel with the films
    const [q, r] = await Promise.all([queryFilm(pair.ref, state, signal), resultFilm(hit, signal)]);
    if (!isCurrent(seq, gen)) return;
    if (!pair.query || pair.query.film !== q.film) pair.query = { ...q, rel: startWindow(q.film) };
    pair.result = { ...r, rel: startWindow(r.film) };
    rewindow();
    await maps;
  } catch (err) {
    if (isAbort(err) || !isCurrent(seq, gen)) return;
    $("detail-note").textContent = `The films could not be shown: ${ctx.describe(err)}`;
    dialog.dataset.heat = "failed";
  }
}

// The heat maps of the open pair by the chosen method; none for near-duplicates (by the card's cosine when it is
// one, else by the explained pair's).
async function loadMaps(seq, gen, signal) {
  const { state } = ctx;
  const dialog = $("detail");
  const hit = pair.hit;
  const method = $("heat-method").value;
  const mapSeq = ++pair.mapSeq;
  const current = () => isCurrent(seq, gen) && mapSeq === pair.mapSeq;
  pair.explanation = null;
  pair.near = false;
  $("detail-trust").textContent = TRUST[method];
  const cosine = state.search && state.search.score !== "recommend" && !regionOf(state);
  if (cosine && hit.score > NEAR_DUPLICATE) {
    showNearDuplicate(hit.score);
    return;
  }
  dialog.dataset.heat = "loading";
  $("detail-note").textContent = method === "occlusion" ? "Computing the occlusion maps (slow)…" : "Computing the heat maps…";
  paint();
  try {
    const e = await explanation(pair.ref, hit.id, method, signal);
    if (!current()) return;
    pair.explanation = e;
    showScore(hit, state, e);
    if (e.similarity > NEAR_DUPLICATE) {
      showNearDuplicate(e.similarity);
    } else {
      $("detail-note").textContent = `Heat maps (${e.method}): the regions that drove this pair's similarity, ` +
        "brightest = most." + (regionOf(state) ? " The query's map covers its whole film, not only the box." : "");
      dialog.dataset.heat = "ready";
    }
  } catch (err) {
    if (isAbort(err) || !current()) return;
    $("detail-note").textContent = `No heat map: ${ctx.describe(err)}`;
    dialog.dataset.heat = "failed";
  }
  paint();
}

// ---------------------------------------------------------------- window/level

function startWindow(film) {
  const preset = PRESETS[$("wl-preset").value];
  return preset ? { ...preset } : defaultWindow(film);
}

const sides = () => [pair.query, pair.result].filter(Boolean);

// Window both films, then show W and L (original units) and the sliders (the result's place on its own range).
function rewindow() {
  for (const s of sides()) s.grey = windowed(s.film, toValues(s.film, s.rel), s.grey);
  const out = $("wl-values");
  const parts = [];
  for (const [name, s] of [["query", pair.query], ["result", pair.result]]) {
    if (!s) continue;
    const { w, l } = describe(s.film, s.rel);
    Object.assign(out.dataset, { [`${name}W`]: w, [`${name}L`]: l, [`${name}Exact`]: String(s.film.exact) });
    const text = `${name === "query" ? "Query" : "Result"} W ${w} L ${l}${s.film.exact ? "" : " (8-bit render)"}`;
    parts.push(Object.assign(document.createElement("span"), { textContent: text }));
  }
  out.replaceChildren(...parts);
  const ref = pair.result || pair.query;
  if (ref) {
    $("wl-level").value = String(Math.round(ref.rel.centre * 1000));
    $("wl-width").value = String(Math.round(ref.rel.width * 1000));
  }
  const failed = sides().filter((s) => s.error);
  $("detail-wl-note").hidden = !failed.length;
  $("detail-wl-note").textContent = failed.length
    ? `Window/level acts on the 8-bit render of the ${failed.map((s) => (s === pair.query ? "query" : "result")).join(" and ")}: ` +
      `${failed.length > 1 ? "their" : "its"} original values could not be loaded (${ctx.describe(failed[0].error)}).`
    : "";
  paint();
}

// Move both windows by the same amount, each on its own film's range (relative units: the sliders' per mille).
function adjustWindow(dCentre, widthRatio) {
  for (const s of sides()) {
    s.rel = { centre: s.rel.centre + dCentre, width: Math.min(3, Math.max(0.01, s.rel.width * widthRatio)) };
  }
  $("wl-preset").value = "custom";
  rewindow();
}

function resetAll() {
  $("wl-preset").value = "default";
  for (const s of sides()) s.rel = defaultWindow(s.film);
  view.reset();
  rewindow();
}

// ---------------------------------------------------------------- drawing

function paint() {
  const alpha = $("heat-on").checked ? parseInt($("heat-alpha").value, 10) / 100 : 0;
  const e = pair.explanation && !pair.near ? pair.explanation : null;
  $("heat-legend").hidden = !e || alpha === 0;
  const box = regionOf(ctx.state);
  for (const [side, id] of [["query", "detail-query"], ["result", "detail-result"]]) {
    const s = pair[side];
    view.set($(id), { grey: s && s.grey, heat: e && e[side].map, alpha, box: side === "query" ? box : null });
  }
  view.draw();
}

function showView() {
  const dialog = $("detail");
  dialog.dataset.view = [view.zoom.toFixed(3), view.fx.toFixed(4), view.fy.toFixed(4)].join(",");
  $("view-values").textContent = `Zoom ${view.zoom.toFixed(1)}×`;
}

function closeDetail() {
  $("detail").close();
}

function toggleKeys(show = $("detail-keys").hidden) {
  $("detail-keys").hidden = !show;
  $("detail-keys-button").setAttribute("aria-expanded", String(show));
}

// ---------------------------------------------------------------- wiring

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  const field = ["INPUT", "SELECT", "TEXTAREA"].includes(t.tagName) && t.type !== "checkbox";
  // A focused slider or list keeps its own arrows (and text fields every key); elsewhere the keys are the dialog's.
  if (field && (t.tagName === "TEXTAREA" || t.type === "text" || ev.key.startsWith("Arrow") ||
    ["Home", "End", "PageUp", "PageDown"].includes(ev.key))) return;
  const actions = {
    ArrowRight: () => $("detail-next").click(),
    ArrowLeft: () => $("detail-prev").click(),
    g: () => $("detail-good").click(),
    r: resetAll,
    "+": () => view.zoomAt(1.25),
    "=": () => view.zoomAt(1.25),
    "-": () => view.zoomAt(1 / 1.25),
    _: () => view.zoomAt(1 / 1.25),
    "?": () => toggleKeys(),
  };
  const action = actions[ev.key];
  if (!action) return;
  ev.preventDefault();
  action();
}

// Wire the dialog once; `shared` is {state, toggleMark(id, kind), describe(err) -> text}.
export function wirePair(shared) {
  ctx = shared;
  const { state, toggleMark } = ctx;
  const dialog = $("detail");
  const drag = { dx: 0, dy: 0, frame: 0 };
  view = new PairView([$("detail-query"), $("detail-result")], {
    onChange: showView,
    onWindow: (dx, dy) => { // a drag's moves, applied once a frame (windowing two films costs a few ms)
      drag.dx += dx;
      drag.dy += dy;
      if (!drag.frame) {
        drag.frame = requestAnimationFrame(() => {
          adjustWindow(drag.dy / 400, Math.exp(drag.dx / 300));
          Object.assign(drag, { dx: 0, dy: 0, frame: 0 });
        });
      }
    },
  });
  new ResizeObserver(() => dialog.open && paint()).observe($("detail-result"));
  drawLegend($("heat-legend-bar"));
  $("wl-preset").title = PRESET_TITLE;
  $("wl-preset").addEventListener("change", () => {
    for (const s of sides()) s.rel = startWindow(s.film);
    rewindow();
  });
  const slid = () => {
    const ref = pair.result || pair.query;
    if (!ref) return;
    const centre = parseInt($("wl-level").value, 10) / 1000;
    const width = Math.max(0.01, parseInt($("wl-width").value, 10) / 1000);
    adjustWindow(centre - ref.rel.centre, width / ref.rel.width);
  };
  $("wl-level").addEventListener("input", slid);
  $("wl-width").addEventListener("input", slid);
  for (const id of ["heat-on", "heat-alpha"]) $(id).addEventListener("input", paint);
  $("heat-method").addEventListener("change", () => {
    if (pair.ref && dialog.open) loadMaps(pair.seq, generation.id, AbortSignal.any([generation.signal, pair.controller.signal]));
  });
  $("wl-reset").addEventListener("click", resetAll);
  $("detail-keys-button").addEventListener("click", () => toggleKeys());
  $("detail-close").addEventListener("click", closeDetail);
  dialog.addEventListener("close", () => {
    state.detailIndex = -1;
    pair.seq += 1;
    if (pair.controller) pair.controller.abort();
    toggleKeys(false);
  });
  const step = (by) => {
    const next = Math.min(state.hits.length - 1, Math.max(0, state.detailIndex + by));
    if (next !== state.detailIndex) openDetail(next);
  };
  $("detail-prev").addEventListener("click", () => step(-1));
  $("detail-next").addEventListener("click", () => step(1));
  $("detail-good").addEventListener("click", () => toggleMark(state.hits[state.detailIndex].id, "good"));
  dialog.addEventListener("keydown", onKey);
}
