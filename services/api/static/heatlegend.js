// The heat maps' legend: the colour scale the maps are drawn in (draw.js's inferno), "more relevant" at the top.
// Opacity grows with the value too, so the bottom of the scale is drawn fading into the film.
import { colour } from "./draw.js";

export function drawLegend(canvas) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  for (let y = 0; y < height; y++) {
    const v = 1 - y / Math.max(1, height - 1);
    const [r, g, b] = colour(v);
    ctx.fillStyle = `rgba(${r}, ${g}, ${b}, ${Math.max(0.08, v).toFixed(3)})`;
    ctx.fillRect(0, y, width, 1);
  }
}
