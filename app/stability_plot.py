"""The stability map as an image: arrays in, PNG or SVG bytes out (matplotlib, no display).

One cell per grid point of two sweep axes, coloured by the measured verdict; a solid black
line is the measured boundary (between exploding cells and the others), a dashed purple line
is preflight's predicted boundary, and hatched cells are those preflight predicted to explode;
a white-edged indigo star marks the recommended cell (``core.stability.recommend``).
Pure: no database, no HTTP, no global pyplot state (a ``Figure`` per call), so it is safe in
worker processes and threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from app.figure_bytes import figure_bytes, plain_text, shorten_middle

__all__ = ["RECOMMENDED_COLOR", "VERDICT_COLORS", "render_stability_map"]

VERDICT_COLORS: dict[str, str] = {
    "healthy": "#43a047",
    "unstable": "#fdd835",
    "exploding": "#e53935",
    "vanishing": "#1e88e5",
    "stalled": "#9e9e9e",
}
_MISSING = "#ffffff"
_MEASURED = "#000000"
_PREDICTED = "#7b1fa2"
RECOMMENDED_COLOR = "#1a237e"  # the star's face (white edge): no verdict or line uses it

Value = float | int | str | bool


def _label(v: Value) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _edges(mask: list[list[bool | None]]) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Cell edges between a True cell and a False neighbour (None cells draw no edge)."""
    segs = []
    rows, cols = len(mask), len(mask[0]) if mask else 0
    for j in range(rows):
        for i in range(cols):
            a = mask[j][i]
            if a is None:
                continue
            if i + 1 < cols and mask[j][i + 1] is not None and mask[j][i + 1] != a:
                segs.append(((i + 0.5, j - 0.5), (i + 0.5, j + 0.5)))
            if j + 1 < rows and mask[j + 1][i] is not None and mask[j + 1][i] != a:
                segs.append(((i - 0.5, j + 0.5), (i + 0.5, j + 0.5)))
    return segs


def render_stability_map(
    x_label: str,
    y_label: str,
    x_values: Sequence[Value],
    y_values: Sequence[Value],
    verdict: Sequence[Sequence[str | None]],
    predicted_exploding: Sequence[Sequence[bool | None]] | None = None,
    *,
    recommended: tuple[int, int] | None = None,
    title: str = "",
    fmt: Literal["png", "svg"] = "png",
    dpi: int = 110,
) -> bytes:
    """The map as ``fmt`` bytes.

    Parameters
    ----------
    x_label, y_label : axis names (e.g. the sweep paths ``optimizer.lr``, ``model.init.std``).
    x_values, y_values : the axis values (columns, rows), in display order.
    verdict : ``verdict[j][i]`` for ``y_values[j]``, ``x_values[i]``: one of
        :data:`VERDICT_COLORS`'s keys, or None (no member: a white cell).
    predicted_exploding : same shape; True where preflight predicts an explosion (None: no
        prediction). Omitted: no predicted boundary.
    recommended : ``(i, j)``, the recommended cell (``StabilityGrid.recommended_cell()``):
        a white-edged star there and a legend entry "recommended". None: no star.
    """
    ny, nx = len(y_values), len(x_values)
    if len(verdict) != ny or any(len(row) != nx for row in verdict):
        raise ValueError(f"verdict must be {ny} rows of {nx} cells")
    unknown = {v for row in verdict for v in row if v is not None} - set(VERDICT_COLORS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}; expected {list(VERDICT_COLORS)}")
    fig = Figure(figsize=(1.6 + 0.62 * max(nx, 4), 1.5 + 0.5 * max(ny, 4)), dpi=dpi,
                 layout="constrained")
    ax = fig.subplots()
    rgb = np.array([[_rgb(VERDICT_COLORS.get(v or "", _MISSING)) for v in row] for row in verdict])
    ax.imshow(rgb.reshape(ny, nx, 3), origin="lower", aspect="auto",
              extent=(-0.5, nx - 0.5, -0.5, ny - 0.5), interpolation="nearest")
    explode = [[None if v is None else v == "exploding" for v in row] for row in verdict]
    for a, b in _edges(explode):
        ax.plot([a[0], b[0]], [a[1], b[1]], color=_MEASURED, linewidth=3, solid_capstyle="round")
    handles: list[Patch | Line2D] = [Patch(facecolor=VERDICT_COLORS[v], edgecolor="#555555",
                                           label=v)
                                     for v in VERDICT_COLORS
                                     if any(v in row for row in verdict)]
    handles.append(Line2D([], [], color=_MEASURED, linewidth=3, label="measured boundary"))
    if predicted_exploding is not None:
        pred = [list(row) for row in predicted_exploding]
        if len(pred) != ny or any(len(row) != nx for row in pred):
            raise ValueError(f"predicted_exploding must be {ny} rows of {nx} cells")
        for j in range(ny):
            for i in range(nx):
                if pred[j][i]:
                    ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, hatch="///",
                                           edgecolor=_PREDICTED, linewidth=0))
        for a, b in _edges(pred):
            ax.plot([a[0], b[0]], [a[1], b[1]], color=_PREDICTED, linewidth=2.2,
                    linestyle=(0, (3, 2)))
        handles.append(Line2D([], [], color=_PREDICTED, linewidth=2.2, linestyle=(0, (3, 2)),
                              label="preflight boundary"))
        handles.append(Patch(facecolor="none", edgecolor=_PREDICTED, hatch="///",
                             label="preflight: will explode"))
    if recommended is not None:
        i, j = recommended
        if not (0 <= i < nx and 0 <= j < ny):
            raise ValueError(f"recommended cell {recommended} is outside the {nx} x {ny} grid")
        ax.plot([i], [j], marker="*", markersize=20, markerfacecolor=RECOMMENDED_COLOR,
                markeredgecolor="white", markeredgewidth=1.4, linestyle="none", zorder=5,
                gid="recommended")
        handles.append(Line2D([], [], marker="*", markersize=14,
                              markerfacecolor=RECOMMENDED_COLOR, markeredgecolor="white",
                              markeredgewidth=1.0, linestyle="none", label="recommended"))
    ax.set_xticks(range(nx), [_label(v) for v in x_values], rotation=45, ha="right")
    ax.set_yticks(range(ny), [_label(v) for v in y_values])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    if title:
        # from the axes' left edge, wrapped at the figure's right one (a name, the id and the fixed
        # axes are wider than a map of 2 columns); a sweep's name drawn as it is. A word wider
        # than the figure cannot wrap: the layout shrank the map to a sliver to fit it. Such a
        # word (a long snake_case name) loses its middle.
        text = ax.set_title(plain_text(title), fontsize=10, loc="left", wrap=True)
        room = 0.75 * fig.get_figwidth() * dpi  # right of the y axis' labels
        words = [shorten_middle(w, room, text.get_fontproperties(), dpi) for w in title.split(" ")]
        text.set_text(plain_text(" ".join(words)))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return figure_bytes(fig, fmt, fonttype="path",
                        metadata={"Software": None} if fmt == "png" else {"Date": None})


def _rgb(color: str) -> tuple[float, float, float]:
    h = color.lstrip("#")
    return (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255)
