// The search options: the form, the URL that carries them (so a link reopens the search), and the pickers of
// label, view and source filled from what the collection holds (`GET /v1/facets`), with counts.
import { ApiError, getJson } from "./api.js";

const $ = (id) => document.getElementById(id);
const FIELDS = [["label", "f-label"], ["view", "f-view"], ["sex", "f-sex"], ["source", "f-source"]];
const URL_FIELDS = [...FIELDS, ["age_min", "f-age-min"], ["age_max", "f-age-max"]];
const PICKERS = [["label", "labels"], ["view", "views"], ["source", "sources"]];

// The options as the API takes them. Filter values go as typed: the server matches them case-insensitively and
// answers a value that matches nothing with a 422 that lists what there is.
export function options() {
  const k = Math.max(1, Math.min(200, parseInt($("k").value, 10) || 12));
  const filters = [];
  const clean = (v) => v.split(",").map((s) => s.trim()).filter(Boolean).join(",");
  for (const [field, id] of FIELDS) {
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
  return { k, filters, group: $("group").checked, exclude: $("exclude-patient").checked, aged: lo !== "" || hi !== "" };
}

// The options (and `extra`, e.g. the query id) into the address bar. One per patient is the default, so only
// its absence is written ("group=0").
export function writeUrl(crop, extra = {}) {
  const p = new URLSearchParams();
  const o = options();
  p.set("k", String(o.k));
  if (!o.group) p.set("group", "0");
  if (o.exclude) p.set("exclude", "1");
  for (const [key, id] of URL_FIELDS) if ($(id).value) p.set(key, $(id).value);
  if (crop) p.set("crop", crop.map((v) => v.toFixed(3)).join(","));
  for (const [key, value] of Object.entries(extra)) if (value) p.set(key, value);
  history.replaceState(null, "", `${location.pathname}?${p}`);
}

// The URL into the form; returns the parameters (id, pos, neg, crop are the caller's).
export function readUrl() {
  const p = new URLSearchParams(location.search);
  if (p.get("k")) $("k").value = p.get("k");
  $("group").checked = p.get("group") !== "0";
  $("exclude-patient").checked = p.get("exclude") === "1";
  for (const [key, id] of URL_FIELDS) if (p.get(key) !== null) $(id).value = p.get(key);
  return p;
}

function fillPicker(listId, entries) {
  $(listId).replaceChildren(...entries.map(({ value, count }) => {
    const option = document.createElement("option");
    option.value = value;
    if (count !== undefined) {
      option.label = `${value} (${count})`;
      option.dataset.count = String(count);
    }
    return option;
  }));
}

// What the collection holds, into the pickers; null when the server has no facets (an older API) or refused.
export async function loadFacets(collection, signal) {
  let facets;
  try {
    facets = await getJson("v1/facets", collection ? [["collection", collection]] : [], signal);
  } catch (err) {
    if (err instanceof ApiError) return null;
    throw err;
  }
  for (const [field, listId] of PICKERS) fillPicker(listId, (facets.fields && facets.fields[field]) || []);
  $("labels").dataset.source = "facets";
  return facets;
}

// Without facets, the pickers offer the values seen in results so far.
export function rememberValues(seen, hits) {
  if ($("labels").dataset.source === "facets") return;
  for (const hit of hits) {
    for (const [field] of PICKERS) if (hit.payload[field]) seen[field].add(hit.payload[field]);
  }
  for (const [field, listId] of PICKERS) fillPicker(listId, [...seen[field]].sort().map((value) => ({ value })));
}

// Under the age fields: how many films an age filter leaves out because they have no age.
export function showAgeNote(facets) {
  const note = $("age-note");
  const aged = $("f-age-min").value !== "" || $("f-age-max").value !== "";
  const n = facets && typeof facets.no_age === "number" ? facets.no_age : 0;
  note.hidden = !(aged && n > 0);
  note.textContent = note.hidden ? "" : `${n} film${n === 1 ? " has" : "s have"} no age: an age filter leaves ${n === 1 ? "it" : "them"} out`;
}
