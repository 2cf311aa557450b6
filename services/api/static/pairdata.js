// What the pair view loads, and the caches that keep it: heat maps and films are keyed by the query's CONTENT
// (the sha256 of the uploaded bytes, or the indexed query's id) and the model id, never by a file name or size,
// so a second film called IM0001.dcm of the same size never gets the first one's maps.
import { fetchBlob, getJson, postFile } from "./api.js";
import { bitmapFilm, pointFilm, uploadFilm } from "./wl.js";

export const MAX_SIDE = 1024;
const explanations = new Map(); // key -> Promise of the explain JSON (a pair costs a model pass)
const films = new Map(); // key -> Promise of a film (wl.js), at most FILMS kept (each is ~2 MB)
const FILMS = 8;
const digests = new WeakMap(); // File -> Promise of its sha256 (hex)

// The sha256 of the bytes an upload sends: computed here where the browser allows (a secure context), else the
// search answer's `query.content_sha256`; null when neither is known (nothing is then cached for it).
function fileDigest(file, search) {
  const fromSearch = (search && search.query && search.query.content_sha256) || null;
  if (!(globalThis.crypto && crypto.subtle)) return Promise.resolve(fromSearch);
  if (!digests.has(file)) {
    digests.set(file, file.arrayBuffer()
      .then((bytes) => crypto.subtle.digest("SHA-256", bytes))
      .then((d) => [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join(""))
      .catch(() => fromSearch));
  }
  return digests.get(file);
}

// The query of the pair: {file} (an upload) or {id} (an indexed point), with its cache key (or null).
export async function pairQuery(state) {
  const model = state.search && state.search.model;
  if (state.file) {
    const sha = await fileDigest(state.file, state.search);
    return { file: state.file, key: sha && model ? `sha256:${sha}|model:${model}` : null };
  }
  const id = state.queryId || (state.hits[0] && state.hits[0].id);
  return { id, key: id && model ? `id:${id}|model:${model}` : null };
}

function cached(map, key, make, limit = Infinity) {
  if (key === null) return make();
  let p = map.get(key);
  if (!p) {
    p = make();
    map.set(key, p);
    p.catch(() => map.delete(key));
    while (map.size > limit) map.delete(map.keys().next().value);
  }
  return p;
}

export function explanation(query, resultId, method, signal) {
  const key = query.key === null ? null : `${query.key}|result:${resultId}|method:${method}`;
  return cached(explanations, key, () => (query.file
    ? postFile("v1/explain", query.file, [["result", resultId], ["method", method]], signal).then((r) => r.json())
    : getJson("v1/explain", [["query", query.id], ["result", resultId], ["method", method]], signal)));
}

// A film on its original values, or the 8-bit render when the pixels route fails: {film, error}.
async function withFallback(original, render) {
  try {
    return { film: await original(), error: null };
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    return { film: bitmapFilm(await render()), error: err };
  }
}

export function resultFilm(hit, signal) {
  return cached(films, `point:${hit.id}`, () => withFallback(
    () => pointFilm(hit.id, MAX_SIDE, signal),
    async () => createImageBitmap(await fetchBlob(hit.thumbnail_url.replace(/^\//, ""), [["size", String(MAX_SIDE)]], signal)),
  ), FILMS);
}

export function queryFilm(query, state, signal) {
  const key = query.key === null ? null : `query:${query.key.split("|model:")[0]}`;
  if (query.file) {
    return cached(films, key, () => withFallback(
      () => uploadFilm(query.file, MAX_SIDE, signal),
      async () => state.queryBitmap || createImageBitmap(await (await postFile("v1/render", query.file, [["size", "768"]], signal)).blob()),
    ), FILMS);
  }
  return cached(films, `point:${query.id}`, () => withFallback(
    () => pointFilm(query.id, MAX_SIDE, signal),
    async () => createImageBitmap(await fetchBlob(`v1/points/${encodeURIComponent(query.id)}/thumbnail`, [["size", String(MAX_SIDE)]], signal)),
  ), FILMS);
}
