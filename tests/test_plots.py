"""Plot endpoints: real runs in real workers, PNGs decoded, SVGs parsed for their marks."""

from __future__ import annotations

import io
import warnings
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from app import plots
from app.showcase import DIVERGING_SPEC
from tests.conftest import DEAD_SPEC, LiveServer

CLIPPED_EXPLODING_SPEC: dict[str, Any] = {
    "name": "deep-relu-normal-init-clipped",
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
    "model": {"hidden": [{"units": 32, "activation": "relu"}] * 5,
              "init": {"scheme": "normal", "std": 1.0}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "clipping": {"mode": "global_norm", "max_norm": 5.0},
    "training": {"epochs": 3, "batch_size": 32},
}


NON_FINITE_MARKS = {"non-finite-points", "non-finite-nan-points"}  # +-Inf / NaN markers


def _finished(live: LiveServer, spec: dict[str, Any]) -> dict[str, Any]:
    response = live.http.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    return live.wait_for(response.json()["id"], {"succeeded"}, timeout=120)


@pytest.fixture(scope="module")
def diverging(live: LiveServer) -> dict[str, Any]:
    job = _finished(live, DIVERGING_SPEC)
    assert job["verdict"] == "exploding" and job["first_non_finite"] is not None
    return job


@pytest.fixture(scope="module")
def clipped(live: LiveServer) -> dict[str, Any]:
    return _finished(live, CLIPPED_EXPLODING_SPEC)


def _png(content: bytes) -> np.ndarray:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    image: np.ndarray = imread(io.BytesIO(content), format="png")
    return image


def _assert_not_blank(image: np.ndarray) -> None:
    rgb = image[..., :3]
    assert image.shape[0] >= 200 and image.shape[1] >= 400
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert non_white > 0.02, f"only {non_white:.1%} of the pixels are drawn"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # lines, text, colours


def _red_pixels(image: np.ndarray) -> int:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r > 0.75) & (g < 0.3) & (b < 0.3)).sum())


def _svg_ids(content: bytes) -> set[str]:
    root = ET.fromstring(content)
    assert root.tag.endswith("svg")
    return {el.attrib["id"] for el in root.iter() if "id" in el.attrib}


def test_gradient_plot_png_of_a_diverging_run_shows_its_infinite_points(
        live: LiveServer, diverging: dict[str, Any]) -> None:
    response = live.http.get(f"/v1/jobs/{diverging['id']}/plots/gradients")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = _png(response.content)
    _assert_not_blank(image)
    assert _red_pixels(image) > 30  # the +Inf markers, the NaN/Inf band and the first-Inf line


def test_gradient_plot_svg_carries_every_mark(live: LiveServer, diverging: dict[str, Any]
                                              ) -> None:
    response = live.http.get(f"/v1/jobs/{diverging['id']}/plots/gradients",
                             headers={"Accept": "image/svg+xml"})
    assert response.headers["content-type"].startswith("image/svg+xml")
    ids = _svg_ids(response.content)
    assert {"layer-0", "layer-1", "layer-2", "global-grad-norm", "first-non-finite",
            "first-bad-step"} <= ids
    assert ids & NON_FINITE_MARKS
    assert "clip-threshold" not in ids  # this run does not clip
    text = response.content.decode()
    step = diverging["first_non_finite"]["step"]
    assert f"first NaN/Inf (step {step})" in text
    report = live.http.get(f"/v1/jobs/{diverging['id']}/diagnostics").json()
    assert f"diagnosis onset (step {report['first_bad_step']})" in text


def test_gradient_plot_draws_the_clip_threshold(live: LiveServer, clipped: dict[str, Any]
                                                ) -> None:
    response = live.http.get(f"/v1/jobs/{clipped['id']}/plots/gradients", params={"format": "svg"})
    ids = _svg_ids(response.content)
    assert "clip-threshold" in ids
    assert "clip max_norm (global) = 5" in response.content.decode()


@pytest.mark.parametrize("kind", ["heatmap", "loss"])
def test_heatmap_and_loss_plots_are_valid_images(live: LiveServer, diverging: dict[str, Any],
                                                 kind: str) -> None:
    png = live.http.get(f"/v1/jobs/{diverging['id']}/plots/{kind}")
    assert png.status_code == 200, png.text
    image = _png(png.content)
    _assert_not_blank(image)
    assert _red_pixels(image) > 10  # NaN/Inf cells / markers
    svg = live.http.get(f"/v1/jobs/{diverging['id']}/plots/{kind}", params={"format": "svg"})
    ids = _svg_ids(svg.content)
    assert ("non-finite-cells" in ids) if kind == "heatmap" else (ids & NON_FINITE_MARKS)


def test_comparison_plot_overlays_a_job_and_its_repair(live: LiveServer,
                                                       diverging: dict[str, Any]) -> None:
    repair = live.http.post(f"/v1/jobs/{diverging['id']}/repair", json={})
    assert repair.status_code == 202, repair.text
    live.wait_for(repair.json()["id"], {"succeeded"}, timeout=120)
    svg = live.http.get(f"/v1/jobs/{diverging['id']}/plots/comparison", params={"format": "svg"})
    assert svg.status_code == 200, svg.text
    assert {"original-grad-norm", "repair-grad-norm", "original-loss",
            "repair-loss"} <= _svg_ids(svg.content)
    png = live.http.get(f"/v1/jobs/{repair.json()['id']}/plots/comparison",
                        params={"other": diverging["id"]})
    _assert_not_blank(_png(png.content))


def test_plot_errors_are_problem_json(live: LiveServer, diverging: dict[str, Any]) -> None:
    missing = live.http.get("/v1/jobs/00000000-0000-0000-0000-000000000000/plots/gradients")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    bad = live.http.get(f"/v1/jobs/{diverging['id']}/plots/loss", params={"format": "gif"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["query", "format"]


def test_plots_draw_downsampled_series_with_their_spikes() -> None:
    """Pure function: 1M points downsampled by the history rule still show a one-step spike."""
    from app.downsampling import Summary, downsample_points, plan_buckets

    n = 1_000_000
    steps = np.arange(n)
    values = np.full((n, 1), 1.0)
    values[777_777, 0] = 1e9
    values[900_000, 0] = np.inf
    plan = plan_buckets(0, n - 1, 2000)
    units = Summary.from_points(steps, values, np.ones_like(values, dtype=bool))
    edges = [(steps[[0, -1]], values[[0, -1], 0])]
    (ds_steps, ds_values), = downsample_points(units, plan.bucket_size, edges)
    assert ds_steps.size <= 2000 and 777_777 in ds_steps and 900_000 in ds_steps
    svg = plots.gradients_plot([plots.Series(ds_steps, ds_values, "layer 0")],
                               plots.Marks(first_non_finite_step=900_000), fmt="svg")
    assert {"layer-0", "non-finite-points", "first-non-finite"} <= _svg_ids(svg)


@pytest.mark.parametrize("values", [[], ["NaN", "Infinity"], [0.5, "Infinity"]])
def test_loss_plot_without_validation_on_a_log_axis(values: list[Any]) -> None:
    """A loss plot with no validation series on the log axis (no points yet, non-finite
    points): a queued job's /plots/loss answered 500 (ValueError from a strict zip)."""
    image = plots.loss_plot(plots.Series.of(list(range(len(values))), values, "loss"),
                            plots.Marks())
    assert image.startswith(b"\x89PNG")


@pytest.mark.filterwarnings("error")
def test_plots_of_a_run_with_no_steps_draw_no_empty_legend() -> None:
    """A job with no steps yet and nothing to mark: both plots render (a decodable PNG)
    without an empty legend (matplotlib warns when asked for one: an error here)."""
    empty = plots.Series(np.zeros(0, np.int64), np.zeros(0), "layer 0")
    for png in (plots.gradients_plot([], plots.Marks()), plots.loss_plot(empty, plots.Marks())):
        image = imread(io.BytesIO(png), format="png")
        assert image.ndim == 3 and image.shape[0] > 100


# a name with mathtext syntax: matplotlib parsed it as TeX and raised (the plots answered 500)
TEX_NAME = r"budget $\frac{$ 5"


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_a_title_with_dollar_signs_is_drawn_as_text(fmt: plots.Format) -> None:
    layer = plots.Series.of([0, 1, 2], [1.0, 2.0, 4.0], "layer 0")
    run = plots.Run("run", layer, layer)
    images = [plots.gradients_plot([layer], plots.Marks(), title=TEX_NAME, fmt=fmt),
              plots.heatmap_plot([layer], plots.Marks(), title=TEX_NAME, fmt=fmt),
              plots.loss_plot(layer, plots.Marks(), title=TEX_NAME, fmt=fmt),
              plots.comparison_plot(run, run, title=TEX_NAME, fmt=fmt)]
    for image in images:
        if fmt == "png":
            assert imread(io.BytesIO(image), format="png").shape[0] > 100
        else:  # the title as it was written, in a <text> element
            titles = [t.text for t in ET.fromstring(image).iter("{http://www.w3.org/2000/svg}text")]
            assert TEX_NAME in titles, titles


def test_plots_of_a_job_named_with_dollar_signs(live: LiveServer) -> None:
    """The job's name is in each plot's title: drawn as text, never a 500."""
    job = _finished(live, {**CLIPPED_EXPLODING_SPEC, "name": TEX_NAME,
                           "training": {"epochs": 1, "batch_size": 32}})
    for kind in ("gradients", "heatmap", "loss"):
        for fmt in ("png", "svg"):
            r = live.http.get(f"/v1/jobs/{job['id']}/plots/{kind}", params={"format": fmt})
            assert r.status_code == 200, (kind, fmt, r.text)
    svg = live.http.get(f"/v1/jobs/{job['id']}/plots/loss", params={"format": "svg"}).text
    assert TEX_NAME in svg


@pytest.mark.parametrize("name", [r"a\$b", "$x$", "$$", "cost $5", r"\\$a$", r"trailing \ "])
def test_a_title_is_drawn_exactly_as_written(name: str) -> None:
    """Dollars and backslashes in any arrangement: the SVG's title text is the name itself."""
    layer = plots.Series.of([0, 1], [1.0, 2.0], "layer 0")
    svg = plots.loss_plot(layer, plots.Marks(), title=name, fmt="svg")
    assert name in [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]


def test_zero_note_says_which_series_are_exactly_zero_and_from_when() -> None:
    steps = np.arange(10)
    zero_from_4 = np.where(steps >= 4, 0.0, 1.0)
    series = [plots.Series(steps, zero_from_4, f"layer {i}") for i in (0, 1, 2, 4)]
    series += [plots.Series(steps, np.ones(10), "layer 5"),
               plots.Series(steps, np.where(steps == 9, 0.0, 2.0), "global")]
    assert plots.zero_note(series) == (
        "exactly 0, not drawn on the log axis: layers 0–2, 4 from step 4 (6 points); "
        "global from step 9 (1 point)")
    assert plots.zero_note([plots.Series(steps, np.ones(10), "layer 0")]) is None
    svg = plots.gradients_plot(series[:4], plots.Marks(), fmt="svg").decode()
    assert "exactly 0, not drawn on the log axis: layers 0–2, 4 from step 4" in svg


def test_a_loss_of_exactly_zero_is_named_where_the_log_axis_drops_it() -> None:
    steps = np.arange(5)
    fitted = plots.Series(steps, np.array([100.0, 1.0, 0.01, 0.0, 0.0]), "loss")
    svg = plots.loss_plot(fitted, plots.Marks(), fmt="svg").decode()  # spans > 100x: log
    assert "exactly 0, not drawn on the log axis: loss from step 3 (2 points)" in svg
    narrow = plots.Series(steps, np.array([1.0, 0.5, 0.25, 0.0, 0.0]), "loss")
    svg = plots.loss_plot(narrow, plots.Marks(), fmt="svg").decode()  # linear: 0 is drawn
    assert "exactly 0" not in svg
    grad = plots.Series(steps, np.ones(5))
    runs = [plots.Run(label, grad, loss, plots.Marks())
            for label, loss in (("original", plots.Series(steps, np.full(5, 2.0))),
                                ("repair", fitted))]
    svg = plots.comparison_plot(*runs, fmt="svg").decode()
    assert "exactly 0, not drawn on the log axis: repair from step 3 (2 points)" in svg


def test_a_dead_networks_zero_gradients_are_named_on_the_plot(live: LiveServer) -> None:
    """The static plot of a job whose hidden layers' gradients are 0 says so (on the log axis
    their lines would simply be absent)."""
    job = _finished(live, DEAD_SPEC)
    svg = live.http.get(f"/v1/jobs/{job['id']}/plots/gradients", params={"format": "svg"})
    assert svg.status_code == 200
    assert "layers 0–1 from step 0 (8 points)" in svg.text


SVG_NS = "{http://www.w3.org/2000/svg}"


def _y_labels(svg: bytes) -> list[list[str]]:
    """Per axes of a plot, the numbers written at its y ticks (10^-1 reads ``10−1``)."""
    labels = []
    for axes in ET.fromstring(svg).iter(f"{SVG_NS}g"):
        if not axes.get("id", "").startswith("axes_"):
            continue
        axis = [g for g in axes.iter(f"{SVG_NS}g")
                if g.get("id", "").startswith("matplotlib.axis_")][1]  # x first, then y
        ticks = [g for g in axis.iter(f"{SVG_NS}g") if g.get("id", "").startswith("ytick_")]
        texts = ["".join("".join(t.itertext()).split()) for g in ticks for t in g.iter(f"{SVG_NS}text")]
        labels.append([t for t in texts if t])
    return labels


def test_a_log_axis_within_a_decade_is_numbered() -> None:
    """A healthy run's gradient norms often stay between 0.2 and 0.9: with only powers of ten
    labelled its log axis carried no number at all (0.15 to 2.4: just 10^0)."""
    steps = np.arange(50)
    norms = np.geomspace(0.2, 0.9, 50)
    layers = [plots.Series(steps, norms * f, f"layer {i}") for i, f in enumerate((1.0, 0.8))]
    svg = plots.gradients_plot(layers, plots.Marks(), fmt="svg")
    assert _y_labels(svg) == [["0.2", "0.3", "0.4", "0.6"]]
    wider = [plots.Series(steps, np.geomspace(0.15, 2.4, 50), "layer 0")]
    assert _y_labels(plots.gradients_plot(wider, plots.Marks(), fmt="svg")) == [
        ["1", "0.2", "0.3", "0.4", "0.6", "2"]]
    run = plots.Run("run", layers[0], plots.Series(steps, np.geomspace(0.4, 2.0, 50)))
    top, bottom = _y_labels(plots.comparison_plot(run, run, fmt="svg"))
    assert len(top) >= 3 and len(bottom) >= 3, (top, bottom)
    many = [plots.Series(steps, np.geomspace(1e-3, 1e3, 50), "layer 0")]  # powers of ten
    assert _y_labels(plots.gradients_plot(many, plots.Marks(), fmt="svg")) == [
        [f"10{e}".replace("-", "−") for e in range(-3, 4)]]


def test_a_long_job_name_shortens_the_title_in_the_middle_instead_of_cutting_off_both_ends(
        ) -> None:
    """A 120-character job name made the centred title wider than the image: both ends were
    cut off, so neither what the plot shows nor the verdict at the end could be read."""
    name = "lr-sweep-" + "x" * 110 + "-end"
    layer = plots.Series.of(list(range(10)), [float(2 ** i) for i in range(10)], "layer 0")
    run = plots.Run("run", layer, layer)
    for draw, what in ((lambda t, f: plots.gradients_plot([layer], plots.Marks(), title=t, fmt=f),
                        "Gradient norms before clipping"),
                       (lambda t, f: plots.heatmap_plot([layer], plots.Marks(), title=t, fmt=f),
                        "log10 gradient norm"),
                       (lambda t, f: plots.loss_plot(layer, plots.Marks(), title=t, fmt=f), "Loss"),
                       (lambda t, f: plots.comparison_plot(run, run, title=t, fmt=f),
                        "Before and after")):
        title = f"{what} — {name} (exploding)"
        texts = [t.text or "" for t in ET.fromstring(draw(title, "svg")).iter(f"{SVG_NS}text")]
        shown = [t for t in texts if t.startswith(what)]
        assert len(shown) == 1 and shown[0].endswith("-end (exploding)"), texts
        assert "…" in shown[0] and "lr-sweep-x" in shown[0], shown
        image = _png(draw(title, "png"))
        band = image[:int(0.09 * image.shape[0]), :, :3].mean(axis=2)  # the title's rows
        edges = np.concatenate([band[:, :4], band[:, -4:]], axis=1)
        assert edges.min() > 0.9, f"{what}: the title reaches the image's edge"
    short = plots.gradients_plot([layer], plots.Marks(), title="small (healthy)", fmt="svg")
    assert "small (healthy)" in [t.text for t in ET.fromstring(short).iter(f"{SVG_NS}text")]


def _empty_heatmap_cells(svg: bytes) -> tuple[int, int]:
    """(cells drawn, cells left empty: white) of a heatmap's SVG."""
    cells = next(g for g in ET.fromstring(svg).iter(f"{SVG_NS}g")
                 if g.get("id") == "heatmap-cells")
    fills = [path.get("style", "") for path in cells.iter(f"{SVG_NS}path")]
    return len(fills), sum("fill: none" in f for f in fills)


def test_a_heatmap_of_sparse_steps_has_no_white_stripes() -> None:
    """A job recording every 10th step (monitor.record_every) over 1,300 steps got a heatmap
    of 400 columns 3.2 steps wide, three in four holding no record: a barcode of white
    stripes. A downsampled history (min and max of each 7-step bucket) left some columns
    empty the same way. Every column now holds a recorded step."""
    rng = np.random.default_rng(0)
    every_10th = np.arange(0, 1300, 10)
    buckets = np.arange(0, 3381, 7)  # two of each bucket's steps, as min/max downsampling keeps
    downsampled = np.unique(np.concatenate([buckets + rng.integers(0, 7, buckets.size),
                                            buckets + rng.integers(0, 7, buckets.size)]))
    for steps in (every_10th, downsampled):
        layers = [plots.Series(steps, rng.uniform(0.5, 2.0, steps.size), f"layer {i}")
                  for i in range(3)]
        drawn, empty = _empty_heatmap_cells(plots.heatmap_plot(layers, plots.Marks(), fmt="svg"))
        assert empty == 0 and drawn >= 3 * 100, (steps[:5], drawn, empty)
    every_step = [plots.Series(np.arange(50), np.ones(50), "layer 0")]  # one column per step
    assert _empty_heatmap_cells(plots.heatmap_plot(every_step, plots.Marks(), fmt="svg")) == (50, 0)


def test_the_comparison_legend_explains_the_loss_panels_infinite_marks() -> None:
    """The showcase run's loss overflows to +Inf one step before its gradient norm turns NaN:
    the lower (loss) panel drew ▲ marks the legend, made from the upper panel only, never
    named."""
    steps = np.arange(30)
    norms, losses = np.geomspace(1, 1e80, 30), np.geomspace(1, 1e90, 30)
    norms[-1], losses[-1] = np.nan, np.inf
    original = plots.Run("original (exploding)", plots.Series(steps, norms),
                         plots.Series(steps, losses))
    repair = plots.Run("repair (healthy)", plots.Series(steps, np.ones(30)),
                       plots.Series(steps, np.full(30, 0.5)))
    texts = [t.text for t in ET.fromstring(plots.comparison_plot(original, repair, fmt="svg"))
             .iter(f"{SVG_NS}text")]
    assert {"NaN (drawn at top)", "+Inf (drawn at top)"} <= set(texts), texts
    assert texts.count("original (exploding)") == 1  # each run named once


def test_the_plots_note_counts_recorded_steps_of_a_job_recording_one_in_ten(
        live: LiveServer) -> None:
    """A 1,300-step job recording every 10th step: its plots said '131 steps, every point'."""
    job = _finished(live, {**CLIPPED_EXPLODING_SPEC, "training": {"epochs": 20, "batch_size": 32},
                           "monitor": {"record_every": 10}})
    total = job["progress"]["total_steps"]
    recorded = live.http.get(f"/v1/jobs/{job['id']}/metrics").json()["points_in_range"]
    assert total >= 100 and recorded <= total // 10 + 1
    for kind in ("gradients", "heatmap", "loss"):
        svg = live.http.get(f"/v1/jobs/{job['id']}/plots/{kind}", params={"format": "svg"}).text
        assert f"{recorded} recorded steps (1 in 10), every point" in svg, (kind, total)
    svg = live.http.get(f"/v1/jobs/{job['id']}/plots/loss",
                        params={"format": "svg", "max_points": 10}).text
    assert f"{recorded} recorded steps (1 in 10) shown as min/max of" in svg


def test_a_heatmap_of_a_job_without_steps_says_so_without_a_warning() -> None:
    """A job cancelled before it ran has no layer series: the heatmap is one empty row that
    says why (it used to warn of a singular y axis while drawing nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svg = plots.heatmap_plot([], plots.Marks(), fmt="svg").decode()
    assert "no steps recorded" in svg
