"""app.stability_plot: the map is a pure function from arrays to PNG/SVG bytes."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from matplotlib.image import imread

from app.stability_plot import RECOMMENDED_COLOR, VERDICT_COLORS, render_stability_map

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


def _rgb255(color: str) -> np.ndarray:
    h = color.lstrip("#")
    return np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)])


def star_cells(png: bytes, nx: int, ny: int, verdicts: set[str]) -> tuple[set[tuple[int, int]],
                                                                          int]:
    """The grid cells ``(i, j)`` (j = 0 at the bottom) holding pixels of the recommended
    marker's colour, and how many such pixels lie outside the grid (the legend's star).
    The grid is found as the rows and columns mostly covered by ``verdicts``' colours (so:
    a grid with no empty cells)."""
    pixels = np.round(imread(io.BytesIO(png))[..., :3] * 255).astype(int)

    def near(color: str, tol: int = 6) -> np.ndarray:
        return np.all(np.abs(pixels - _rgb255(color)) <= tol, axis=-1)

    star = near(RECOMMENDED_COLOR)
    cell = star.copy()
    for v in verdicts:
        cell |= near(VERDICT_COLORS[v])
    by_col, by_row = cell.mean(axis=0), cell.mean(axis=1)
    cols = np.flatnonzero(by_col > 0.5 * by_col.max())
    rows = np.flatnonzero(by_row > 0.5 * by_row.max())
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    inside = np.zeros_like(star)
    inside[y0:y1, x0:x1] = True
    found = set()
    for r, c in zip(*np.nonzero(star & inside), strict=True):
        found.add((int((c - x0) * nx // (x1 - x0)), int(ny - 1 - (r - y0) * ny // (y1 - y0))))
    return found, int((star & ~inside).sum())


FULL = [["healthy", "healthy", "unstable", "exploding"],
        ["healthy", "exploding", "exploding", "exploding"],
        ["stalled", "healthy", "healthy", "exploding"]]


@pytest.mark.parametrize("cell", [(1, 0), (0, 1), (2, 2), (3, 1)])
def test_png_marks_the_recommended_cell_with_a_star_and_a_legend_entry(
        cell: tuple[int, int]) -> None:
    ys = [0.1, 0.3, 1.0]
    verdicts = {v for row in FULL for v in row}
    png = render_stability_map("lr", "std", X, ys, FULL, recommended=cell)
    cells, in_legend = star_cells(png, len(X), len(ys), verdicts)
    assert cells == {cell}
    assert in_legend > 20
    plain = render_stability_map("lr", "std", X, ys, FULL)
    assert star_cells(plain, len(X), len(ys), verdicts) == (set(), 0)


def test_svg_carries_the_star_and_its_legend_entry() -> None:
    svg = render_stability_map("lr", "std", X, Y, VERDICT, PREDICTED, recommended=(1, 0),
                               fmt="svg").decode()
    assert '<g id="recommended">' in svg and "recommended" in svg.split("measured boundary")[1]
    assert RECOMMENDED_COLOR in svg
    plain = render_stability_map("lr", "std", X, Y, VERDICT, PREDICTED, fmt="svg").decode()
    assert 'id="recommended"' not in plain and RECOMMENDED_COLOR not in plain
    with pytest.raises(ValueError, match="outside the 4 x 2 grid"):
        render_stability_map("lr", "std", X, Y, VERDICT, recommended=(4, 0))


def test_a_title_with_dollar_signs_is_drawn_as_text() -> None:
    """A sweep's name with mathtext syntax is drawn as it is (matplotlib parsed it as TeX and
    raised: the map answered 500)."""
    name = r"budget $\frac{$ 5"
    png = render_stability_map("lr", "std", X, Y, VERDICT, PREDICTED, title=name)
    assert imread(io.BytesIO(png)).shape[0] > 100
    svg = render_stability_map("lr", "std", X, Y, VERDICT, PREDICTED, title=name, fmt="svg")
    assert f"<!-- {name} -->".encode() in svg  # matplotlib's comment before the title's glyphs


def test_a_long_title_over_a_narrow_map_is_wrapped_inside_the_figure() -> None:
    """A sweep's name, its id and the fixed axes over a map of 2 columns: the title starts at
    the axes' left edge and wraps at the figure's right edge (centred, it ran off the left)."""
    title = "depth x lr x init, a longer name (sweep ab992d14), optimizer.lr=0.001"
    svg = render_stability_map("model.init.scheme", "model.depth", ["he_normal", "xavier"],
                               [1, 2, 4, 8], [["healthy", "stalled"]] * 4, title=title,
                               fmt="svg").decode()
    # each line of text: a comment with its text, then its glyphs' position (pt)
    lines = re.findall(r'<!-- (.*?) -->\s*<g transform="translate\(([-\d.]+) ', svg)
    parts = [(text, float(x)) for text, x in lines if len(text) > 8 and text in title]
    assert len(parts) >= 2, parts  # wrapped
    assert " ".join(text for text, _ in parts) == title
    assert all(x >= 0 for _, x in parts), parts


def _cell_pixels(png: bytes) -> int:
    """How many pixels of the PNG are painted in a verdict's colour (the map's cells)."""
    pixels = np.round(imread(io.BytesIO(png))[..., :3] * 255).astype(int)
    colours = [tuple(int(VERDICT_COLORS[v].lstrip("#")[k:k + 2], 16) for k in (0, 2, 4))
               for v in ("healthy", "exploding")]
    return int(sum((pixels == np.array(c)).all(axis=-1).sum() for c in colours))


def test_a_long_one_word_sweep_name_does_not_squash_the_map() -> None:
    """A 95-character snake_case sweep name cannot wrap: the layout squeezed the 2 x 2 map
    into a sliver a few pixels wide to make room for it. The word loses its middle instead."""
    name = "stability_of_relu_mlp_with_normal_init_over_learning_rate_and_init_std_for_demo_2026"
    args = ("optimizer.lr", "model.init.std", [0.001, 1.0], [0.3, 3.0],
            [["healthy", "healthy"], ["healthy", "exploding"]])
    short = _cell_pixels(render_stability_map(*args, title="lr x std (sweep d5089d0f)"))
    long = _cell_pixels(render_stability_map(*args, title=f"{name} (sweep d5089d0f)"))
    assert long >= 0.8 * short, (long, short)
    svg = render_stability_map(*args, title=f"{name} (sweep d5089d0f)", fmt="svg").decode()
    shown = re.findall(r"<!-- (stability_of.*?) -->", svg)
    assert shown and "…" in shown[0] and shown[0].endswith("demo_2026"), shown
