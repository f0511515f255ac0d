"""Which texts of a drawn matplotlib Figure overlap: the check behind the report's "no text on text" tests."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.text import Text


def drawn_texts(fig: Figure) -> list:
    """Every text artist ``fig`` draws, once each: tick labels only at ticks inside the view (matplotlib keeps
    stale ticks beyond it, undrawn), everything else when visible and non-empty."""
    ticks, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                for lab in (tick.label1, tick.label2):
                    ticks.add(id(lab))
                    if tick.get_visible() and lab.get_visible() and lo - tol <= tick.get_loc() <= hi + tol:
                        drawn.append(lab)
    seen = set(ticks)
    for art in fig.findobj(Text):  # Text artists only: a legend's TextArea wraps one of them
        if id(art) in seen:
            continue
        seen.add(id(art))
        drawn.append(art)
    return [a for a in drawn if a.get_visible() and str(a.get_text()).strip()]


def overlapping_texts(fig: Figure, pad: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of texts of ``fig`` (titles, labels, tick labels, legend entries, annotations) whose drawn boxes
    overlap by more than ``pad`` pixels each way, after a draw: what a reader would see as text on text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [(a.get_window_extent(renderer), str(a.get_text())) for a in drawn_texts(fig)]
    out = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i][0], boxes[j][0]
            if min(a.x1, b.x1) - max(a.x0, b.x0) > pad and min(a.y1, b.y1) - max(a.y0, b.y0) > pad:
                out.append((boxes[i][1], boxes[j][1]))
    return out
