// Canvas drawing: a grey image under a window/level control, with a similarity heat map over it.

// matplotlib's "inferno" at 9 anchors (the same colours as the server's PNG overlays).
const INFERNO = [
  [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
  [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
];

export function colour(v) {
  const x = Math.min(1, Math.max(0, v)) * (INFERNO.length - 1);
  const i = Math.min(INFERNO.length - 2, Math.floor(x));
  const f = x - i;
  return INFERNO[i].map((c, j) => Math.round(c * (1 - f) + INFERNO[i + 1][j] * f));
}

// A map (rows of values in [0, 1] on the model's patch grid) as a small RGBA canvas; opacity grows with the
// value, so regions that did not matter show the film.
export function heatCanvas(map) {
  const rows = map.length;
  const cols = rows ? map[0].length : 0;
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = map[r][c];
      const [red, green, blue] = colour(v);
      const o = (r * cols + c) * 4;
      img.data[o] = red;
      img.data[o + 1] = green;
      img.data[o + 2] = blue;
      img.data[o + 3] = Math.round(255 * Math.min(1, Math.max(0, v)));
    }
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

// Draw `bitmap` on `canvas` through a window (level, width on the displayed 0..255 scale), then the heat map.
export function drawWindowed(canvas, bitmap, { level = 128, width = 256, heat = null, alpha = 0.55 } = {}) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.globalAlpha = 1;
  ctx.drawImage(bitmap, 0, 0);
  if (level !== 128 || width !== 256) {
    const lut = new Uint8ClampedArray(256);
    const low = level - width / 2;
    for (let v = 0; v < 256; v++) lut[v] = ((v - low) / width) * 255;
    const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const d = img.data;
    for (let o = 0; o < d.length; o += 4) {
      d[o] = lut[d[o]];
      d[o + 1] = lut[d[o + 1]];
      d[o + 2] = lut[d[o + 2]];
    }
    ctx.putImageData(img, 0, 0);
  }
  if (heat && alpha > 0) {
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.globalAlpha = alpha;
    ctx.drawImage(heatCanvas(heat), 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }
}
