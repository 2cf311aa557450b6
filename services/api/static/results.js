// What a search answered, as a reader sees it: the warnings first, then the labels of the neighbours (not a
// diagnosis) with how close they are, then one card per film with the facts a radiologist asks first.
import { fetchBlob, isAbort } from "./api.js";

const BANDS = ["very close", "close", "typical", "distant"];

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The one score a result shows, everywhere (card, pair view): "0.932 · close", or "0.932" without a band.
export function scoreText(hit) {
  const score = hit.score.toFixed(3);
  return hit.band ? `${score} · ${hit.band}` : score;
}

// Every warning the API gave, in its own words, above the results.
export function renderWarnings(list, warnings) {
  list.replaceChildren(...(warnings || []).map((w) => {
    const li = el("li", "warning", w.message);
    li.dataset.code = w.code;
    return li;
  }));
  list.hidden = !list.children.length;
}

// How close the neighbours are, in words a reader can weigh: their bands and percentiles where the collection is
// calibrated, else the raw score range and why there is no scale.
export function closeness(result) {
  const hits = result.hits;
  if (!hits.length) return "";
  if (result.score === "recommend") return "scores are recommend scores (more like the marked films), not cosines";
  const scores = hits.map((h) => h.score);
  const range = `cosine ${Math.min(...scores).toFixed(3)}-${Math.max(...scores).toFixed(3)}`;
  const banded = hits.filter((h) => h.band);
  if (!banded.length) {
    if (result.calibration === null) return `${range}; no closeness scale: the collection has too few films (under 50)`;
    return range;
  }
  const counts = BANDS.map((b) => [b, banded.filter((h) => h.band === b).length]).filter(([, n]) => n);
  const pct = hits.map((h) => h.percentile).filter((p) => typeof p === "number");
  const span = pct.length
    ? `; percentile ${Math.round(Math.min(...pct))}-${Math.round(Math.max(...pct))} of this archive's nearest-neighbour scores`
    : "";
  return `how close: ${counts.map(([b, n]) => `${n} ${b}`).join(", ")}${span}`;
}

// The labels of the neighbours, titled as such, with a bar and a count for each.
export function renderTally(box, result, heading) {
  const total = result.hits.length;
  const title = result.tally_title || `labels of the ${total} most similar films`;
  box.replaceChildren(el("div", "tally-title", `${heading ? `${heading}: ` : ""}${title}`));
  const tally = result.label_tally || {};
  const max = Math.max(1, ...Object.values(tally));
  for (const [label, n] of Object.entries(tally)) {
    const bar = el("span", "barv");
    bar.style.width = `${(100 * n) / max}%`;
    const row = [el("span", "name", label), bar, el("span", "n", `${n} (${Math.round((100 * n) / Math.max(1, total))}%)`)];
    row.forEach((e) => { e.dataset.label = label; });
    box.append(...row);
  }
  const close = closeness(result);
  if (close) box.append(el("div", "closeness", close));
}

// "F · 45 y · PA · 2004-08-26": what is known of the film, in a fixed order. The API top-codes ages: age_band
// ("90+") stands for every age of 90 or over.
export function facts(payload) {
  const age = payload.age_band ?? payload.age;
  return [payload.sex, age !== undefined && age !== null && age !== "" ? `${age} y` : "", payload.view,
    payload.study_date]
    .filter((v) => v !== undefined && v !== null && v !== "").join(" · ");
}

// One result card: the thumbnail (opens the pair view), rank, score and band, label, facts, source, a same-patient
// flag, and the good / not-like marks. The thumbnail is fetched under the query's `signal`.
export function card(hit, { onOpen, onMark, blobs, signal, describe }) {
  const li = el("li", "card");
  li.dataset.id = hit.id;
  li.dataset.label = hit.payload.label || "";
  if (hit.band) li.dataset.band = hit.band;
  const label = hit.payload.label || "(no label)";
  const open = el("button", "open");
  open.type = "button";
  open.setAttribute("aria-label", `Open result ${hit.rank}: ${label}, score ${scoreText(hit)}`);
  const img = el("img");
  img.alt = "";
  open.append(img);
  open.addEventListener("click", onOpen);
  fetchBlob(hit.thumbnail_url.replace(/^\//, ""), [["size", "256"]], signal)
    .then((blob) => { img.src = blobs.make(blob); img.dataset.loaded = "1"; })
    .catch((err) => { if (!isAbort(err)) img.alt = describe(err); });
  const meta = el("div", "meta");
  const score = el("span", "score", scoreText(hit));
  if (hit.band) score.dataset.band = hit.band;
  if (typeof hit.percentile === "number") score.title = `percentile ${hit.percentile.toFixed(0)} of this archive's nearest-neighbour scores`;
  meta.append(el("span", "label", label), el("span", "rank", `#${hit.rank}`), score);
  if (hit.same_patient) meta.append(el("span", "flag same-patient", "same patient"));
  meta.append(el("span", "facts", facts(hit.payload)), el("span", "source", hit.payload.source || ""));
  const marks = el("div", "marks");
  for (const [kind, text] of [["good", "Good"], ["bad", "Not like"]]) {
    const b = el("button", `mark-${kind}`, text);
    b.type = "button";
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => onMark(kind));
    marks.append(b);
  }
  li.append(open, meta, marks);
  return li;
}
