"""A matplotlib figure as PNG or SVG bytes, safe to call from many request threads at once.

The SVG writer reads its settings (``svg.fonttype``, ``svg.hashsalt``) from matplotlib's
process-global ``rcParams``, and ``matplotlib.rc_context`` sets and restores them without a
lock: two requests rendering SVG at once could restore each other's settings, leaving one's
behind for every later image of the process (seen: after the dashboard's concurrent plot
requests, stability maps came out with the job plots' text-as-``<text>`` setting). So SVG
is rendered under one lock, always with the caller's full settings; PNG (Agg) reads none of
them and is not serialised.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Literal

import matplotlib
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

__all__ = ["figure_bytes", "plain_text", "shorten_middle"]

_SVG_LOCK = threading.Lock()


def figure_bytes(fig: Figure, fmt: Literal["png", "svg"], *, fonttype: str,
                 metadata: dict[str, Any] | None = None) -> bytes:
    """``fig`` saved as ``fmt``; an SVG's text as ``<text>`` (``fonttype="none"``) or as
    glyph paths (``"path"``), its ids salted the same in every run (reproducible bytes)."""
    buf = io.BytesIO()
    if fmt == "svg":
        with _SVG_LOCK, matplotlib.rc_context({"svg.fonttype": fonttype,
                                               "svg.hashsalt": "gradwatch"}):
            fig.savefig(buf, format="svg", metadata=metadata)
    else:
        fig.savefig(buf, format=fmt, metadata=metadata)
    return buf.getvalue()


def plain_text(text: str) -> str:
    """``text`` as matplotlib should draw it, as it is: a user's name may hold ``$`` pairs,
    which matplotlib would parse as TeX (and raise on, e.g. ``$\\frac{$``). Each ``$`` is
    escaped; matplotlib draws ``\\$`` as ``$`` in text that is not math. (``parse_math=False``
    alone is not enough: a wrapped title's line widths are measured as math all the same.)"""
    return text.replace("$", r"\$")



def shorten_middle(text: str, room: float, font: FontProperties, dpi: float) -> str:
    """``text`` as it is when, drawn in ``font`` at ``dpi``, it is at most ``room`` pixels wide;
    else its start and end around an ellipsis, keeping as many characters as fit (a long name
    loses its middle, not the ends that say what a figure shows)."""
    renderer: Any = RendererAgg(1, 1, dpi)  # type: ignore[no-untyped-call]

    def fits(candidate: str) -> bool:
        return bool(renderer.get_text_width_height_descent(candidate, font, ismath=False)[0]
                    <= room)

    def kept(n: int) -> str:
        return text[:(n + 1) // 2] + "…" + text[len(text) - n // 2:]

    if fits(text):
        return text
    lo, hi = 0, len(text) - 1  # the most characters kept that still fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(kept(mid)) else (lo, mid - 1)
    return kept(lo)
