"""Server-side plots of a job's history: arrays in, PNG or SVG bytes out (matplotlib, Agg).

Pure functions: no database, no HTTP. The caller hands over already-downsampled series
(the history endpoints' spike-preserving rule), so drawing never touches the raw rows and a
1M-step run costs the same as a 2,000-step one.

Non-finite values are data: on a log axis they cannot be drawn where they are, so they are
drawn at the top edge of the plot (``^`` for +Inf, ``x`` for NaN) in a band labelled
"NaN / Inf", and the line breaks there. Marks carry SVG ids (``gid``) so a test or a script
can find them in the SVG: ``clip-threshold``, ``first-non-finite``, ``first-bad-step``,
``non-finite-points``, ``layer-<i>``, ``global-grad-norm``, ``non-finite-cells``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; we never do, but a notebook might

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from app.figure_bytes import figure_bytes, plain_text, shorten_middle

__all__ = [
    "Format",
    "Marks",
    "Run",
    "Series",
    "comparison_plot",
    "gradients_plot",
    "heatmap_plot",
    "loss_plot",
    "zero_note",
]

Format = Literal["png", "svg"]

_NON_FINITE_COLOR = "#d62728"
_MARK_COLORS = {"first-bad-step": "#ff7f0e", "first-non-finite": _NON_FINITE_COLOR}


@dataclass(frozen=True)
class Series:
    """``values[i]`` was recorded at ``steps[i]``; values may be NaN or +-Inf."""

    steps: np.ndarray
    values: np.ndarray
    label: str = ""

    @classmethod
    def of(cls, steps: Sequence[int], values: Sequence[float | None], label: str = "") -> Series:
        """From lists as the history endpoints return them (None: not recorded, dropped)."""
        keep = [i for i, v in enumerate(values) if v is not None]
        return cls(np.asarray([steps[i] for i in keep], dtype=np.int64),
                   np.asarray([values[i] for i in keep], dtype=np.float64), label)


@dataclass(frozen=True)
class Marks:
    """What to point at: the clip threshold and the steps where things went wrong."""

    clip_threshold: float | None = None
    clip_label: str = "clip threshold"
    first_non_finite_step: int | None = None
    first_bad_step: int | None = None
    note: str | None = None  # e.g. how the series were downsampled


@dataclass(frozen=True)
class Run:
    """One run of a comparison: its global gradient norm and loss."""

    label: str
    grad_norm: Series
    loss: Series
    marks: Marks = field(default_factory=Marks)


def _new_figure(height: float = 4.8, *, right: float = 0.77) -> Figure:
    # Fixed margins (legend outside on the right): a layout engine would cost more than the
    # drawing itself.
    fig = Figure(figsize=(9.6, height), dpi=100)
    fig.subplots_adjust(left=0.09, right=right, bottom=0.5 / height + 0.02,
                        top=1 - 0.45 / height, hspace=0.12)
    return fig


def _render(fig: Figure, fmt: Format) -> bytes:
    # SVG text as <text> elements (the marks' ids and labels stay readable)
    return figure_bytes(fig, fmt, fonttype="none", metadata={"Date": None} if fmt == "svg"
                        else None)


def _finite_positive_range(series: Sequence[Series]) -> tuple[float, float]:
    lo, hi = np.inf, 0.0
    for s in series:
        ok = s.values[np.isfinite(s.values) & (s.values > 0)]
        if ok.size:
            lo, hi = min(lo, float(ok.min())), max(hi, float(ok.max()))
    if hi == 0.0:
        return 1e-3, 1.0
    return lo, hi


def _draw_on_log_axis(ax: Axes, series: Sequence[Series], gids: Sequence[str],
                      widths: Sequence[float], colors: Sequence[str | None]) -> bool:
    """Lines on a log y axis with non-finite points at the top edge; True if any were drawn."""
    lo, hi = _finite_positive_range(series)
    # Positions in decades, so the NaN/Inf band is the same share of any axis.
    span = max(np.log10(hi) - np.log10(lo), 1.0)
    top = 10 ** (np.log10(hi) + 0.12 * span)
    any_non_finite = False
    nf_steps: list[np.ndarray] = []
    nf_values: list[np.ndarray] = []
    for s, gid, width, color in zip(series, gids, widths, colors, strict=True):
        finite = np.where(np.isfinite(s.values), s.values, np.nan)
        (line,) = ax.plot(s.steps, finite, lw=width, label=s.label, color=color)
        line.set_gid(gid)
        bad = ~np.isfinite(s.values)
        if bad.any():
            any_non_finite = True
            nf_steps.append(s.steps[bad])
            nf_values.append(s.values[bad])
    if any_non_finite:
        steps = np.concatenate(nf_steps)
        values = np.concatenate(nf_values)
        for mask, marker, label, gid in ((np.isinf(values), "^", "+Inf (drawn at top)",
                                          "non-finite-points"),
                                         (np.isnan(values), "x", "NaN (drawn at top)",
                                          "non-finite-nan-points")):
            if mask.any():
                group = ax.scatter(steps[mask], np.full(mask.sum(), top), marker=marker, s=40,
                                   color=_NON_FINITE_COLOR, zorder=5, label=label,
                                   clip_on=False)
                group.set_gid(gid)
        ax.axhspan(10 ** (np.log10(hi) + 0.06 * span), 10 ** (np.log10(hi) + 0.2 * span),
                   color=_NON_FINITE_COLOR, alpha=0.08, lw=0)
        ax.text(0.005, 0.985, "NaN / Inf", transform=ax.transAxes, va="top", ha="left",
                color=_NON_FINITE_COLOR, fontsize=9)
    ax.set_yscale("log", nonpositive="clip")
    bottom, top = (10 ** (np.log10(lo) - 0.04 * span),
                   10 ** (np.log10(hi) + (0.18 if any_non_finite else 0.04) * span))
    ax.set_ylim(bottom, top)
    if np.log10(top / bottom) <= 2:
        # A healthy run's norms often lie within a decade (0.2 to 0.9): powers of ten alone
        # left such an axis with one number or none. Plain numbers, 2×, 3×, 4×, 6× labelled too.
        ax.yaxis.set_major_formatter(FuncFormatter(_plain_log_label))
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain_log_label))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())
    return any_non_finite


def _plain_log_label(value: float, _position: int | None = None) -> str:
    """A log tick's label on an axis of two decades or less: 0.2, 3, 40 for 1, 2, 3, 4 or 6
    times a power of ten, no label for the other ticks."""
    mantissa = value / 10 ** np.floor(np.log10(value) + 1e-9)
    return f"{value:g}" if round(float(mantissa), 6) in (1, 2, 3, 4, 6) else ""


def _set_title(ax: Axes, title: str) -> None:
    """``title`` centred above ``ax`` on one line, as written (a job's name may hold ``$``).
    A title wider than the figure (a long job name) loses its middle to an ellipsis instead of
    both ends, so what the plot shows and the verdict at its end stay readable."""
    text = ax.set_title(plain_text(title))
    box = ax.get_position()
    room = min(box.x0 + box.x1, 2 - box.x0 - box.x1) * ax.figure.bbox.width - 8  # pixels
    text.set_text(plain_text(shorten_middle(title, room, text.get_fontproperties(),
                                            ax.figure.dpi)))


def _mark_steps(ax: Axes, marks: Marks) -> None:
    if marks.first_bad_step is not None:
        line = ax.axvline(marks.first_bad_step, color=_MARK_COLORS["first-bad-step"], ls="--",
                          lw=1.2, label=f"diagnosis onset (step {marks.first_bad_step})")
        line.set_gid("first-bad-step")
    if marks.first_non_finite_step is not None:
        line = ax.axvline(marks.first_non_finite_step, color=_MARK_COLORS["first-non-finite"],
                          ls=":", lw=1.5,
                          label=f"first NaN/Inf (step {marks.first_non_finite_step})")
        line.set_gid("first-non-finite")


def _legend(ax: Axes, *others: Axes) -> None:
    """The legend right of the axes, of what on them and on ``others`` has a label (each label
    once); none when nothing has one (no empty legend, no matplotlib warning)."""
    entries: dict[str, Artist] = {}
    for a in (ax, *others):
        for handle, label in zip(*a.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        ax.legend(list(entries.values()), list(entries), loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def zero_note(series: Sequence[Series]) -> str | None:
    """Which series hold exact zeros, which a log axis cannot draw (a dead ReLU network's
    gradients, a loss fitted exactly: their lines would just stop), e.g. ``exactly 0, not drawn on the log axis:
    layers 0–7 from step 145 (155 points)``; None when none does. The dashboard's live chart
    says the same (app/static/dashboard.js, ``zeroNote``)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for s in series:
        zero = s.values == 0
        if zero.any():
            groups.setdefault((int(s.steps[zero][0]), int(zero.sum())), []).append(s.label)
    if not groups:
        return None
    parts = [f"{_labels(labels)} from step {first} ({n} point{'s' if n > 1 else ''})"
             for (first, n), labels in groups.items()]
    return "exactly 0, not drawn on the log axis: " + "; ".join(parts)


def _labels(labels: list[str]) -> str:
    """``layer 0`` … ``layer 7`` as ``layers 0–7`` (runs of consecutive layers joined)."""
    numbers = [int(label[6:]) for label in labels
               if label.startswith("layer ") and label[6:].isdigit()]
    if len(numbers) != len(labels) or len(numbers) < 2:
        return ", ".join(labels)
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return "layers " + ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _note(ax: Axes, *notes: str | None) -> None:
    """The notes that are not None, one under the other, in the axes' lower right corner."""
    note = "\n".join(textwrap.fill(n, 110) for n in notes if n)
    if note:
        ax.text(0.995, 0.01, note, transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, color="#333333",
                bbox={"facecolor": "white", "alpha": 0.75, "linewidth": 0, "pad": 1.5})


def gradients_plot(layers: Sequence[Series], marks: Marks, *, global_norm: Series | None = None,
                   title: str = "Gradient norms (before clipping)", fmt: Format = "png") -> bytes:
    """Per-layer pre-clip gradient norm vs step on a log scale, one line per layer.

    ``global_norm`` (the network's L2 norm) is drawn thicker in black; the clip threshold is a
    horizontal line; the diagnosis onset and the first non-finite step are vertical lines.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    series = list(layers) + ([global_norm] if global_norm is not None else [])
    gids = [f"layer-{i}" for i in range(len(layers))] + (
        ["global-grad-norm"] if global_norm is not None else [])
    widths = [1.2] * len(layers) + ([2.2] if global_norm is not None else [])
    colors: list[str | None] = [None] * len(layers) + (
        ["black"] if global_norm is not None else [])
    _draw_on_log_axis(ax, series, gids, widths, colors)
    if marks.clip_threshold is not None:
        line = ax.axhline(marks.clip_threshold, color="#2ca02c", ls="-.", lw=1.2,
                          label=f"{marks.clip_label} = {marks.clip_threshold:g}")
        line.set_gid("clip-threshold")
    _mark_steps(ax, marks)
    ax.set_xlabel("step")
    ax.set_ylabel("gradient L2 norm (log scale)")
    _set_title(ax, title)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    _note(ax, zero_note(series), marks.note)
    return _render(fig, fmt)


def _grid(layers: Sequence[Series], columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, log10 of the bin maximum per layer and bin (NaN: empty), non-finite mask)."""
    all_steps = np.concatenate([s.steps for s in layers]) if layers else np.zeros(1, np.int64)
    first, last = int(all_steps.min()), int(all_steps.max())
    # No bin narrower than the widest gap between a layer's recorded steps (record_every, or
    # the buckets of a downsampled history): a narrower one could hold no point and showed as
    # a white stripe, as if nothing had been recorded there.
    gap = max((int(np.diff(s.steps).max()) for s in layers if s.steps.size > 1), default=1)
    n = max(1, min(columns, (last - first + 1) // gap))
    edges = np.linspace(first, last + 1, n + 1)
    value = np.full((len(layers), n), np.nan)
    non_finite = np.zeros((len(layers), n), dtype=bool)
    for row, s in enumerate(layers):
        col = np.clip(np.searchsorted(edges, s.steps, side="right") - 1, 0, n - 1)
        bad = ~np.isfinite(s.values)
        non_finite[row, np.unique(col[bad])] = True
        ok = ~bad & (s.values > 0)
        best = np.full(n, -np.inf)
        np.maximum.at(best, col[ok], np.log10(s.values[ok]))
        best[np.isneginf(best)] = np.nan  # empty bin
        zero_cols = np.unique(col[~bad & (s.values <= 0)])  # a zero norm: the colour scale's floor
        best[zero_cols] = np.where(np.isnan(best[zero_cols]), -np.inf, best[zero_cols])
        value[row] = best
    return edges, value, non_finite


def heatmap_plot(layers: Sequence[Series], marks: Marks, *, columns: int = 400,
                 title: str = "log10 gradient norm by layer and step", fmt: Format = "png"
                 ) -> bytes:
    """Layer x step heatmap of log10 pre-clip gradient norm; NaN/Inf cells in solid red."""
    edges, value, non_finite = _grid(layers, columns)
    finite = value[np.isfinite(value)]
    vmin = float(finite.min()) if finite.size else -3.0
    vmax = float(finite.max()) if finite.size else 0.0
    shown = np.where(np.isneginf(value), vmin, value)
    fig = _new_figure(height=max(2.6, 1.0 + 0.45 * len(layers)), right=0.97)
    ax = fig.add_subplot()
    rows = np.arange(len(layers) + 1) - 0.5
    mesh = ax.pcolormesh(edges, rows, np.ma.masked_invalid(shown), cmap="viridis",
                         vmin=vmin, vmax=max(vmax, vmin + 1e-9), shading="flat")
    mesh.set_gid("heatmap-cells")
    if non_finite.any():
        overlay = ax.pcolormesh(edges, rows, np.ma.masked_where(~non_finite, non_finite * 1.0),
                                cmap=ListedColormap([_NON_FINITE_COLOR]), vmin=0, vmax=1,
                                shading="flat")
        overlay.set_gid("non-finite-cells")
    fig.colorbar(mesh, ax=ax, label="log10 grad norm\n(red: NaN/Inf)")
    _mark_steps(ax, marks)
    ax.set_yticks(range(len(layers)), [s.label or f"layer {i}" for i, s in enumerate(layers)])
    ax.set_ylim(max(len(layers), 1) - 0.5, -0.5)  # one empty row when nothing was recorded
    ax.set_xlabel("step")
    _set_title(ax, title)
    _note(ax, None if layers else "no steps recorded", marks.note)
    return _render(fig, fmt)


def loss_plot(loss: Series, marks: Marks, *, val_loss: Series | None = None,
              title: str = "Loss", fmt: Format = "png") -> bytes:
    """Training loss per step (and validation loss per epoch); log scale when it spans >100x."""
    fig = _new_figure()
    ax = fig.add_subplot()
    series = [loss] + ([val_loss] if val_loss is not None and val_loss.steps.size else [])
    lo, hi = _finite_positive_range(series)
    all_values = np.concatenate([s.values for s in series])
    zeros = None  # a linear axis draws a loss of exactly 0
    if hi / lo > 100 or not np.isfinite(all_values).all():
        n = len(series)  # the validation series only when there is one
        _draw_on_log_axis(ax, series, ["loss", "val-loss"][:n], [1.2, 2.0][:n],
                          [None, "#9467bd"][:n])
        zeros = zero_note(series)
    else:
        (line,) = ax.plot(loss.steps, loss.values, lw=1.2, label=loss.label or "loss")
        line.set_gid("loss")
        if len(series) > 1:
            (line,) = ax.plot(series[1].steps, series[1].values, "o-", lw=2.0, ms=4,
                              color="#9467bd", label=series[1].label or "validation loss")
            line.set_gid("val-loss")
    _mark_steps(ax, marks)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    _set_title(ax, title)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _note(ax, zeros, marks.note)
    return _render(fig, fmt)


def comparison_plot(original: Run, repair: Run, *, title: str = "Before and after the repair",
                    fmt: Format = "png") -> bytes:
    """Two runs overlaid: global pre-clip gradient norm (log) above, loss below."""
    fig = _new_figure(height=7.2)
    top, bottom = fig.subplots(2, 1, sharex=True)
    colors = ["#d62728", "#1f77b4"]
    runs = [original, repair]
    norms = [Series(r.grad_norm.steps, r.grad_norm.values, r.label) for r in runs]
    _draw_on_log_axis(top, norms, ["original-grad-norm", "repair-grad-norm"], [1.6, 1.6], colors)
    _note(top, zero_note(norms))
    for run, color, gid in zip(runs, colors, ["original", "repair"], strict=True):
        if run.marks.first_non_finite_step is not None:
            line = top.axvline(run.marks.first_non_finite_step, color=color, ls=":", lw=1.2)
            line.set_gid(f"{gid}-first-non-finite")
    top.set_ylabel("global gradient norm\n(before clipping, log)")
    _set_title(top, title)
    top.grid(True, alpha=0.3)
    losses = [Series(r.loss.steps, r.loss.values, r.label) for r in runs]
    _draw_on_log_axis(bottom, losses, ["original-loss", "repair-loss"], [1.2, 1.2], colors)
    _note(bottom, zero_note(losses))
    bottom.set_ylabel("loss (log)")
    bottom.set_xlabel("step")
    bottom.grid(True, alpha=0.3)
    _legend(top, bottom)  # with the loss panel's NaN/Inf marks
    return _render(fig, fmt)
