"""app.stability_plot: the map is a pure function from arrays to PNG/SVG bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.image import imread

from app.stability_plot import VERDICT_COLORS, render_stability_map

X = [0.001, 0.01, 0.1, 1.0]
Y = [0.1, 1.0]
VERDICT = [["healthy", "healthy", "unstable", "exploding"],
           ["healthy", "exploding", "exploding", None]]
PREDICTED = [[False, False, False, True], [False, False, True, None]]


def test_png_shows_each_cells_verdict_colour() -> None:
    png = render_stability_map("lr", "std", X, Y, VERDICT, PREDICTED, title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(io.BytesIO(png))[..., :3]
    colours = {tuple(int(c) for c in np.round(p * 255)) for p in pixels.reshape(-1, 3)}
    for verdict in ("healthy", "unstable", "exploding"):
        h = VERDICT_COLORS[verdict].lstrip("#")
        assert tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) in colours, verdict
    h = VERDICT_COLORS["vanishing"].lstrip("#")  # absent verdicts are not drawn
    assert tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) not in colours


def test_svg_has_labels_legend_and_both_boundaries() -> None:
    svg = render_stability_map("optimizer.lr", "model.init.std", X, Y, VERDICT, PREDICTED,
                               fmt="svg").decode()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for text in ("optimizer.lr", "model.init.std", "measured boundary", "preflight boundary",
                 "exploding"):
        assert text in svg
    without = render_stability_map("lr", "std", X, Y, VERDICT, fmt="svg").decode()
    assert "preflight boundary" not in without


def test_shape_and_verdict_errors_are_explicit() -> None:
    with pytest.raises(ValueError, match="2 rows of 4 cells"):
        render_stability_map("lr", "std", X, Y, VERDICT[:1])
    with pytest.raises(ValueError, match="unknown verdicts"):
        render_stability_map("lr", "std", X, Y, [["boom"] * 4, ["healthy"] * 4])
    with pytest.raises(ValueError, match="predicted_exploding must be"):
        render_stability_map("lr", "std", X, Y, VERDICT, [[True]])
