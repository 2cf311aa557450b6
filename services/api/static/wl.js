// Window/level on a film's original values: the pixels route's uint16 array mapped back to the modality's units
// (X-Value-Min/Max), windowed in JS, then inverted for MONOCHROME1 (the array itself is never inverted).
import { apiUrl, ApiError, getToken, postFile } from "./api.js";

// CR and DX values are not Hounsfield units, so a preset cannot be a fixed centre and width as in CT. Each one is
// placed on the film's own value range, from its 0.5th (0) to its 99.5th (1) percentile in display order (0 the
// darkest, 1 the brightest as shown): lung widens the dark fields, mediastinum and bone the brighter parts.
export const PRESETS = {
  lung: { centre: 0.35, width: 0.7 },
  mediastinum: { centre: 0.62, width: 0.45 },
  bone: { centre: 0.8, width: 0.4 },
};
export const PRESET_TITLE = "CR and DX values are not Hounsfield units: each preset is placed on the film's own " +
  "value range (0 = its 0.5th, 1 = its 99.5th percentile, darkest to brightest as shown). default: the file's own " +
  "window; lung: centre 0.35, width 0.7; mediastinum: centre 0.62, width 0.45; bone: centre 0.8, width 0.4.";

const num = (headers, name) => {
  const v = parseFloat(headers.get(name));
  return Number.isFinite(v) ? v : null;
};

// A film: `data` (Uint16Array, row-major), `vmin`/`vmax` (the values 0 and 65535 stand for), the file's own window
// (`centre`, `width`), `mono1`, `exact` (false for the 8-bit fallback), and its 0.5/99.5 percentiles (`lo`, `hi`).
function film(data, width, height, { vmin, vmax, centre, windowWidth, mono1, bits, exact }) {
  const f = { data, width, height, vmin, vmax, mono1, bits, exact };
  const hist = new Uint32Array(65536);
  for (let i = 0; i < data.length; i++) hist[data[i]]++;
  const at = (q) => {
    const target = q * data.length;
    let seen = 0;
    for (let u = 0; u < 65536; u++) {
      seen += hist[u];
      if (seen >= target) return u;
    }
    return 65535;
  };
  f.lo = value(f, at(0.005));
  f.hi = value(f, at(0.995));
  if (f.hi <= f.lo) f.hi = f.lo + Math.max(1e-6, (vmax - vmin) / 65535);
  f.centre = centre ?? (f.lo + f.hi) / 2;
  f.windowWidth = windowWidth && windowWidth > 0 ? windowWidth : f.hi - f.lo;
  return f;
}

export function value(f, u) {
  return f.vmin + (u * (f.vmax - f.vmin)) / 65535;
}

function fromResponse(headers, buffer) {
  const width = parseInt(headers.get("X-Width"), 10);
  const height = parseInt(headers.get("X-Height"), 10);
  if (!(width > 0 && height > 0) || buffer.byteLength !== width * height * 2) {
    throw new Error(`the pixels answer is ${buffer.byteLength} bytes, not ${width}x${height} uint16`);
  }
  const vmin = num(headers, "X-Value-Min") ?? 0;
  const vmax = num(headers, "X-Value-Max") ?? 65535;
  return film(new Uint16Array(buffer), width, height, {
    vmin, vmax: vmax > vmin ? vmax : vmin + 1,
    centre: num(headers, "X-Window-Center"), windowWidth: num(headers, "X-Window-Width"),
    mono1: (headers.get("X-Photometric") || "").toUpperCase() === "MONOCHROME1",
    bits: num(headers, "X-Bits-Stored"), exact: true,
  });
}

// An indexed point's original values (GET /v1/points/{id}/pixels).
export async function pointFilm(id, maxSide, signal) {
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const url = apiUrl(`v1/points/${encodeURIComponent(id)}/pixels`, [["max_side", String(maxSide)]]);
  const r = await fetch(url, { headers, signal, cache: "no-cache" });
  if (!r.ok) {
    let detail = r.statusText;
    try { const body = await r.json(); detail = typeof body.detail === "string" ? body.detail : detail; } catch { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }
  return fromResponse(r.headers, await r.arrayBuffer());
}

// An uploaded film's original values (POST /v1/pixels).
export async function uploadFilm(file, maxSide, signal) {
  const r = await postFile("v1/pixels", file, [["max_side", String(maxSide)]], signal);
  return fromResponse(r.headers, await r.arrayBuffer());
}

// The fallback: an 8-bit render (already windowed and inverted by the server) as a film of values 0-255.
export function bitmapFilm(bitmap) {
  const c = document.createElement("canvas");
  c.width = bitmap.width;
  c.height = bitmap.height;
  const g = c.getContext("2d", { willReadFrequently: true });
  g.drawImage(bitmap, 0, 0);
  const rgba = g.getImageData(0, 0, c.width, c.height).data;
  const data = new Uint16Array(c.width * c.height);
  for (let i = 0; i < data.length; i++) data[i] = rgba[i * 4] * 257;
  return film(data, c.width, c.height, { vmin: 0, vmax: 255, centre: 127.5, windowWidth: 255, mono1: false, bits: 8, exact: false });
}

// Windows in display-relative units ({centre, width} on the film's lo..hi range, 0 darkest as shown) and back.
export function toRelative(f, centre, width) {
  const span = f.hi - f.lo;
  const t = (centre - f.lo) / span;
  return { centre: f.mono1 ? 1 - t : t, width: width / span };
}

export function toValues(f, rel) {
  const span = f.hi - f.lo;
  const t = f.mono1 ? 1 - rel.centre : rel.centre;
  return { centre: f.lo + t * span, width: Math.max(rel.width * span, 1e-6) };
}

export function defaultWindow(f) {
  return toRelative(f, f.centre, f.windowWidth);
}

// The film through a window (original units) as a grey canvas of the film's size; MONOCHROME1 inverted after.
export function windowed(f, { centre, width }, canvas = document.createElement("canvas")) {
  const lut = new Uint8ClampedArray(65536);
  const low = centre - width / 2;
  const scale = (f.vmax - f.vmin) / 65535;
  for (let u = 0; u < 65536; u++) {
    const g = ((f.vmin + u * scale - low) / width) * 255;
    lut[u] = f.mono1 ? 255 - Math.min(255, Math.max(0, g)) : g;
  }
  canvas.width = f.width;
  canvas.height = f.height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(f.width, f.height);
  const out = new Uint32Array(img.data.buffer);
  const d = f.data;
  for (let i = 0; i < d.length; i++) {
    const g = lut[d[i]];
    out[i] = 0xff000000 | (g << 16) | (g << 8) | g; // little-endian RGBA
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

// W and L in the film's units, as a reader writes them (no decimals above 10).
export function describe(f, rel) {
  const { centre, width } = toValues(f, rel);
  const fmt = (v) => (Math.abs(v) >= 10 ? String(Math.round(v)) : v.toFixed(2));
  return { w: fmt(width), l: fmt(centre) };
}
