// A region of the query to search by: typed as x0,y0,x1,y1 (fractions of the width and height) or dragged on the
// query image, and drawn over it as a box.
const $ = (id) => document.getElementById(id);
let state = null; // the viewer's state, from wireRegion

export function setCrop(box) {
  if (box && (box.length !== 4 || box.some((v) => !Number.isFinite(v)) || box[0] >= box[2] || box[1] >= box[3])) {
    box = null;
  }
  state.crop = box ? box.map((v) => Math.min(1, Math.max(0, v))) : null;
  $("crop").value = state.crop ? state.crop.map((v) => v.toFixed(3)).join(",") : "";
  drawCropBox();
}

export function drawCropBox() {
  const el = $("crop-box");
  if (!state.crop || !state.queryBitmap) {
    el.hidden = true;
    return;
  }
  const [x0, y0, x1, y1] = state.crop;
  Object.assign(el.style, { left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%` });
  el.hidden = false;
}

// Wire the drawing once; `shared` is the viewer's state (crop, file, queryId, queryBitmap), `say` its message line
// and `onRegion` what to do with a region drawn (search it).
export function wireRegion(shared, { say, onRegion }) {
  state = shared;
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
      onRegion();
    } else {
      setCrop(null);
    }
  });
}
