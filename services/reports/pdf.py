"""The similar-cases report as one landscape A4 page (matplotlib's PDF backend, text as vector glyphs).

Laid out for a reading-room monitor: large type, the query on the left, the similar films in a grid with their
label, score and similarity band under each, the neighbours' labels and the model's evaluation above, and the
decision-support statement at the foot.
"""

from __future__ import annotations

import functools
import io
import math
import threading

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from PIL import Image

from services.reports.content import STATEMENT, UNLABELLED, Picture, ReportContent, ResultCase

PAGE = (11.69, 8.27)  # inches, A4 landscape
MAX_RESULTS = 20  # what one page shows legibly
TALLY_LINES = 6
_INK, _MUTED, _PAPER = "#111111", "#444444", "white"
_TEXT_PATH = TextToPath()
_RC_LOCK = threading.Lock()  # rc_context changes matplotlib's global settings: one render at a time


def render_pdf(content: ReportContent) -> bytes:
    """One PDF page for `content`. Text is vector glyphs (Type 3 fonts: selectable, and a second faster to write
    than embedded TrueType); the films are embedded at their thumbnail size, for the viewer to scale."""
    fig = Figure(figsize=PAGE, facecolor=_PAPER)
    films = _films_axes(fig)
    _header(fig, content)
    _query(fig, films, content)
    _results(fig, films, content.results)
    fig.text(0.03, 0.03, STATEMENT, fontsize=10.5, color=_INK, weight="bold", wrap=True, va="bottom")
    buf = io.BytesIO()
    with _RC_LOCK, matplotlib.rc_context({"pdf.fonttype": 3, "font.family": "DejaVu Sans"}):
        fig.savefig(buf, format="pdf", facecolor=_PAPER, metadata={"Title": "cxr similar cases", "Creator": "cxr"})
    return buf.getvalue()


def _header(fig: Figure, c: ReportContent) -> None:
    fig.text(0.03, 0.955, "Similar cases", fontsize=22, weight="bold", color=_INK, va="top")
    fig.text(
        0.03,
        0.905,
        f"Collection {c.collection}  ·  model {c.model_id}  ·  {c.created:%Y-%m-%d %H:%M} UTC",
        fontsize=11,
        color=_MUTED,
        va="top",
    )
    fig.text(0.03, 0.875, f"Model evaluation: {c.evaluation}", fontsize=11, color=_MUTED, va="top")
    if c.results and not any(r.band for r in c.results):
        fig.text(
            0.03, 0.845, "Similarity bands: not calibrated (collection too small)", fontsize=11, color=_MUTED, va="top"
        )


def _query(fig: Figure, films: Axes, c: ReportContent) -> None:
    """The query on the left, then the neighbours' labels under it."""
    _picture(films, (0.03, 0.45, 0.22, 0.37), c.query_picture)
    fig.text(0.03, 0.435, "This film (the query)", fontsize=12, weight="bold", color=_INK, va="top")
    excluded = "its patient excluded" if c.patient_excluded else "no patient id: none excluded"
    fig.text(0.03, 0.405, f"One result per patient; {excluded}", fontsize=10, color=_MUTED, va="top")
    fig.text(0.03, 0.355, "The neighbours' labels", fontsize=13, weight="bold", color=_INK, va="top")
    shown = c.tally[:TALLY_LINES] if len(c.tally) <= TALLY_LINES else c.tally[: TALLY_LINES - 1]
    y = 0.32
    for label, n in shown:
        fig.text(0.03, y, _fit(label, 0.19 * PAGE[0] * 72, 12), fontsize=12, color=_INK, va="top")
        fig.text(0.25, y, str(n), fontsize=12, color=_INK, va="top", ha="right", weight="bold")
        y -= 0.03
    rest = c.tally[len(shown) :]
    if rest:
        others = sum(n for _, n in rest)
        fig.text(0.03, y, f"{len(rest)} other labels", fontsize=12, color=_INK, va="top")
        fig.text(0.25, y, str(others), fontsize=12, color=_INK, va="top", ha="right", weight="bold")
        y -= 0.03
    fig.text(0.03, y - 0.005, f"of {len(c.results)} similar films", fontsize=10, color=_MUTED, va="top")


def _results(fig: Figure, films: Axes, results: tuple[ResultCase, ...]) -> None:
    if not results:
        fig.text(0.30, 0.55, "No similar films of other patients in this collection.", fontsize=14, color=_INK)
        return
    cols = min(5, len(results))
    rows = math.ceil(len(results) / cols)
    left, right, top, bottom = 0.30, 0.98, 0.84, 0.10
    cell_w, cell_h = (right - left) / cols, (top - bottom) / rows
    size = 10 if rows <= 2 else 8
    line = size * 1.3 / (PAGE[1] * 72)  # one caption line, in figure height
    caption_h = 5 * line + 0.008
    width_pt = (cell_w - 0.014) * PAGE[0] * 72
    for i, case in enumerate(results):
        r, col = divmod(i, cols)
        x0, y_top = left + col * cell_w, top - r * cell_h
        _picture(
            films, (x0 + 0.004, y_top - cell_h + caption_h, cell_w - 0.012, cell_h - caption_h - 0.012), case.picture
        )
        label = case.label or UNLABELLED
        lines = [
            (label, "bold", _shrink(label, width_pt, size)),  # the label is never cut: set smaller instead
            (f"#{case.rank}  ·  score {case.score:.3f}", "normal", size),
            (case.band or "", "normal", size),
            ("  ·  ".join(x for x in (case.age_band, case.view) if x) or "age, view unknown", "normal", size),
            (case.source or "source unknown", "normal", size),
        ]
        for j, (text, weight, points) in enumerate(lines):
            fig.text(
                x0 + 0.004,
                y_top - cell_h + caption_h - 0.004 - j * line,
                text if weight == "bold" else _fit(text, width_pt, size),
                fontsize=points,
                weight=weight,
                color=_INK,
                va="top",
            )


@functools.lru_cache(maxsize=4096)
def _width(text: str, size: float, weight: str = "normal") -> float:
    """The width of `text` set in `size` points, in points, as matplotlib lays it out (kept: labels, sources and
    bands recur from report to report)."""
    prop = FontProperties(family="DejaVu Sans", size=size, weight=weight)
    return _TEXT_PATH.get_text_width_height_descent(text, prop, ismath=False)[0]


def _fit(text: str, width_pt: float, size: float) -> str:
    """`text` cut to `width_pt`, with an ellipsis when cut (captions never run into the next cell)."""
    full = _width(text, size)
    if full <= width_pt:
        return text
    text = text[: max(1, int(len(text) * width_pt / full))]  # in proportion first, then a character at a time
    while len(text) > 1 and _width(text + "…", size) > width_pt:
        text = text[:-1]
    return text.rstrip() + "…"


def _shrink(text: str, width_pt: float, size: float) -> float:
    """The largest size up to `size` (and at least 6 points) at which bold `text` fits `width_pt`."""
    return max(6.0, min(size, size * width_pt / max(1.0, _width(text, size, "bold"))))


def _films_axes(fig: Figure) -> Axes:
    """One Axes over the whole page, in figure fractions, that every film is drawn on: an Axes per film cost more
    than the rest of the page (each one's ticks, spines and layout pass)."""
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_autoscale_on(False)
    return ax


def _picture(ax: Axes, box: tuple[float, float, float, float], picture: Picture) -> None:
    """`picture` fitted in `box` (left, bottom, width, height in figure fractions), centred, its aspect kept: where
    an Axes of its own with an equal aspect would put it. A film not drawn says why, in the box's centre."""
    left, bottom, width, height = box
    if picture.png is None:
        ax.text(
            left + width / 2,
            bottom + height / 2,
            f"not shown:\n{picture.not_drawn}",
            ha="center",
            va="center",
            fontsize=10,
            color=_MUTED,
        )
        return
    grey = np.asarray(Image.open(io.BytesIO(picture.png)).convert("L"))
    rows, cols = grey.shape
    scale = min(width * PAGE[0] / cols, height * PAGE[1] / rows)  # inches per pixel
    w, h = cols * scale / PAGE[0], rows * scale / PAGE[1]
    x, y = left + (width - w) / 2, bottom + (height - h) / 2
    # embedded as is (interpolation "none"): the viewer scales it
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="none", extent=(x, x + w, y, y + h), aspect="auto")
