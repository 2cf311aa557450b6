// Two canvases (query, result) that share one view: zoom and the image point at the centre, in fractions of each
// image, so both show the same part of their films. Wheel zooms at the pointer, left-drag pans, right-drag (or
// shift-drag) calls `onWindow(dx, dy)` for window/level, as PACS viewers do.
import { heatCanvas } from "./draw.js";

export const MAX_ZOOM = 16;

export class PairView {
  constructor(canvases, { onChange, onWindow }) {
    this.canvases = canvases;
    this.layers = new Map(); // canvas -> {grey, heat, alpha, box}
    this.onChange = onChange;
    this.onWindow = onWindow;
    this.reset();
    for (const canvas of canvases) this.wire(canvas);
  }

  reset() {
    this.zoom = 1;
    this.fx = 0.5;
    this.fy = 0.5;
  }

  set(canvas, layers) {
    this.layers.set(canvas, layers);
  }

  // Where a film is drawn on its canvas (device pixels): the fit times the zoom, the view centre in the middle.
  rect(canvas, grey) {
    const fit = Math.min(canvas.width / grey.width, canvas.height / grey.height);
    const w = grey.width * fit * this.zoom;
    const h = grey.height * fit * this.zoom;
    return { x: canvas.width / 2 - this.fx * w, y: canvas.height / 2 - this.fy * h, w, h };
  }

  draw() {
    for (const canvas of this.canvases) {
      const dpr = window.devicePixelRatio || 1;
      const cw = Math.max(1, Math.round(canvas.clientWidth * dpr));
      const ch = Math.max(1, Math.round(canvas.clientHeight * dpr));
      if (canvas.width !== cw || canvas.height !== ch) Object.assign(canvas, { width: cw, height: ch });
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, cw, ch);
      const l = this.layers.get(canvas);
      if (!l || !l.grey) continue;
      const r = this.rect(canvas, l.grey);
      canvas.dataset.rect = [r.x, r.y, r.w, r.h].map(Math.round).join(",");
      ctx.globalAlpha = 1;
      ctx.imageSmoothingQuality = "high"; // set each time: a context keeps it from the last draw
      ctx.imageSmoothingEnabled = this.zoom < 2;
      ctx.drawImage(l.grey, r.x, r.y, r.w, r.h);
      if (l.heat && l.alpha > 0) {
        if (!l.heatCanvas || l.heatCanvas.map !== l.heat) l.heatCanvas = Object.assign(heatCanvas(l.heat), { map: l.heat });
        ctx.imageSmoothingEnabled = true;
        ctx.globalAlpha = l.alpha;
        ctx.drawImage(l.heatCanvas, r.x, r.y, r.w, r.h);
        ctx.globalAlpha = 1;
      }
      if (l.box) {
        const [x0, y0, x1, y1] = l.box;
        ctx.strokeStyle = "#ffd24d";
        ctx.lineWidth = Math.max(2, 2 * dpr);
        ctx.setLineDash([8 * dpr, 5 * dpr]);
        ctx.strokeRect(r.x + x0 * r.w, r.y + y0 * r.h, (x1 - x0) * r.w, (y1 - y0) * r.h);
        ctx.setLineDash([]);
      }
    }
    this.onChange();
  }

  // Zoom by `factor` keeping the image point under (px, py) of `canvas` (device pixels) where it is.
  zoomAt(factor, canvas = this.canvases[1], px = canvas.width / 2, py = canvas.height / 2) {
    const l = this.layers.get(canvas);
    const next = Math.min(MAX_ZOOM, Math.max(1, this.zoom * factor));
    if (l && l.grey) {
      const r = this.rect(canvas, l.grey);
      const u = (px - r.x) / r.w;
      const v = (py - r.y) / r.h;
      const scale = next / this.zoom;
      this.fx = u - (px - canvas.width / 2) / (r.w * scale);
      this.fy = v - (py - canvas.height / 2) / (r.h * scale);
    }
    this.zoom = next;
    this.clamp();
    this.draw();
  }

  clamp() {
    if (this.zoom <= 1) this.reset();
    this.fx = Math.min(1, Math.max(0, this.fx));
    this.fy = Math.min(1, Math.max(0, this.fy));
  }

  wire(canvas) {
    const device = (ev) => {
      const b = canvas.getBoundingClientRect();
      return [((ev.clientX - b.left) / b.width) * canvas.width, ((ev.clientY - b.top) / b.height) * canvas.height];
    };
    canvas.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const [px, py] = device(ev);
      this.zoomAt(Math.exp(-ev.deltaY * 0.0015), canvas, px, py);
    }, { passive: false });
    canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
    let drag = null;
    canvas.addEventListener("pointerdown", (ev) => {
      const l = this.layers.get(canvas);
      if (!l || !l.grey) return;
      drag = { x: ev.clientX, y: ev.clientY, mode: ev.button === 2 || ev.shiftKey ? "window" : "pan" };
      canvas.setPointerCapture(ev.pointerId);
      ev.preventDefault();
    });
    canvas.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const dx = ev.clientX - drag.x;
      const dy = ev.clientY - drag.y;
      drag.x = ev.clientX;
      drag.y = ev.clientY;
      if (drag.mode === "window") {
        this.onWindow(dx, dy);
        return;
      }
      const r = this.rect(canvas, this.layers.get(canvas).grey);
      const b = canvas.getBoundingClientRect();
      this.fx -= (dx * (canvas.width / b.width)) / r.w;
      this.fy -= (dy * (canvas.height / b.height)) / r.h;
      this.clamp();
      this.draw();
    });
    const end = () => { drag = null; };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }
}
