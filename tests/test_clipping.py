"""Clipping: torch parity, the flat trainer-facing modes, AGC, non-finite data, properties."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import TypeAdapter

from core.clipping import adaptive_clip_flat, clip_flat, clip_grad_norm_, clip_grad_value_
from core.layout import ParamLayout
from core.spec import ClippingSpec

_CLIPPING = TypeAdapter(ClippingSpec)

LAYOUT = ParamLayout.for_mlp([3, 5, 4, 2], [True, False])
SMALL_LAYOUT = ParamLayout.for_mlp([2, 3, 1], [False])


def clipping(mode: str, **kw: Any) -> Any:
    return _CLIPPING.validate_python({"mode": mode, **kw})


def norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(x, dtype=np.float64))))


def random_grads(seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) * scale for s in [(3, 5), (5,), (5, 4), (4,), (7,)]]


def flat_case(seed: int = 0, grad_scale: float = 1.0,
              layout: ParamLayout = LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(layout.size) * grad_scale, rng.standard_normal(layout.size)


def apply(spec: Any, grad: np.ndarray, params: np.ndarray,
          layout: ParamLayout = LAYOUT) -> tuple[float, bool]:
    with np.errstate(all="ignore"):  # the trainer's job (layout.layer_sumsq), not clipping's
        layer_sumsq = layout.layer_sumsq(grad)
    return clip_flat(spec, grad, params, layout, layer_sumsq)


@contextmanager
def no_numpy_warnings() -> Iterator[None]:
    """Fail on any warning, and make NumPy raise on floating-point errors not suppressed inside."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------------------------
# clip_grad_norm_ / clip_grad_value_
# --------------------------------------------------------------------------------------------


def test_clip_grad_norm_returns_the_pre_clip_norm_and_clips_to_max_norm() -> None:
    grads = random_grads(scale=10.0)
    before = norm(np.concatenate([g.ravel() for g in grads]))
    total = clip_grad_norm_(grads, 1.0)
    assert total == pytest.approx(before, rel=1e-14)
    after = norm(np.concatenate([g.ravel() for g in grads]))
    assert after == pytest.approx(1.0 * before / (before + 1e-6), rel=1e-13)


def test_small_gradients_are_untouched_bit_for_bit() -> None:
    grads = random_grads(scale=1e-3)
    originals = [g.copy() for g in grads]
    clip_grad_norm_(grads, 1.0)
    for g, o in zip(grads, originals, strict=True):
        assert g.tobytes() == o.tobytes()


def test_clip_grad_norm_rejects_non_positive_max_norm() -> None:
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_(random_grads(), 0.0)


def test_clip_grad_value_clamps_elements() -> None:
    grads = [np.array([-3.0, 0.5, 2.0, np.inf, -np.inf, np.nan])]
    clip_grad_value_(grads, 1.0)
    np.testing.assert_array_equal(grads[0], [-1.0, 0.5, 1.0, 1.0, -1.0, np.nan])


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("max_norm", [0.5, 5.0])
def test_clip_grad_norm_matches_torch(scale: float, max_norm: float) -> None:
    torch = pytest.importorskip("torch")
    grads = random_grads(1, scale)
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    expected = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    assert clip_grad_norm_(grads, max_norm) == pytest.approx(expected, rel=1e-12)
    for p, g in zip(params, grads, strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_totals_behave_as_torch(bad: float) -> None:
    torch = pytest.importorskip("torch")
    grads = random_grads(2)
    grads[2][1, 1] = bad
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    expected = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    with no_numpy_warnings():
        total = clip_grad_norm_(grads, 1.0)
    assert total == expected or (math.isnan(total) and math.isnan(expected))
    for p, g in zip(params, grads, strict=True):
        np.testing.assert_array_equal(g, p.grad.numpy())  # NaN == NaN here


def test_clip_grad_value_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    grads = random_grads(3, 2.0)
    grads[0][0, 0], grads[1][0], grads[3][1] = np.inf, -np.inf, np.nan
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_value_(params, 0.7)
    clip_grad_value_(grads, 0.7)
    for p, g in zip(params, grads, strict=True):
        np.testing.assert_array_equal(g, p.grad.numpy())


# --------------------------------------------------------------------------------------------
# clip_flat: the trainer's modes
# --------------------------------------------------------------------------------------------


def test_none_reports_the_pre_clip_norm_and_changes_nothing() -> None:
    grad, params = flat_case(grad_scale=100.0)
    original = grad.copy()
    clipped_norm, clipped = apply(clipping("none"), grad, params)
    assert clipped_norm == pytest.approx(norm(original), rel=1e-13)
    assert clipped is False
    assert grad.tobytes() == original.tobytes()


@pytest.mark.parametrize("grad_scale", [1e-3, 10.0])
def test_global_norm_equals_clip_grad_norm_over_all_tensors(grad_scale: float) -> None:
    grad, params = flat_case(grad_scale=grad_scale)
    reference = [v.copy() for v in LAYOUT.views(grad)]
    pre = clip_grad_norm_(reference, 2.0)
    clipped_norm, clipped = apply(clipping("global_norm", max_norm=2.0), grad, params)
    for ours, ref in zip(LAYOUT.views(grad), reference, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-14)
    assert clipped is (pre > 2.0)
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-12)
    assert clipped_norm <= 2.0 or not clipped


def test_layer_norm_clips_each_layer_to_max_norm_and_leaves_small_layers() -> None:
    grad, params = flat_case(grad_scale=0.3)
    grad[LAYOUT.layer_offsets[1]:LAYOUT.layer_offsets[2]] *= 100.0  # only layer 1 is large
    small = [LAYOUT.layer_segment(grad, i).copy() for i in (0, 2)]
    layer_norms = np.sqrt(LAYOUT.layer_sumsq(grad))
    assert layer_norms[0] < 3.0 < layer_norms[1] and layer_norms[2] < 3.0
    clipped_norm, clipped = apply(clipping("layer_norm", max_norm=3.0), grad, params)
    assert clipped is True
    assert norm(LAYOUT.layer_segment(grad, 1)) == pytest.approx(3.0, rel=1e-6)
    assert norm(LAYOUT.layer_segment(grad, 1)) <= 3.0
    for i, before in zip((0, 2), small, strict=True):
        assert LAYOUT.layer_segment(grad, i).tobytes() == before.tobytes()
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-12)


# small layers are scaled in one vectorised pass, large ones one call per clipped layer
WIDE_LAYOUT = ParamLayout.for_mlp([100, 100, 100, 2], [True, False])


@pytest.mark.parametrize("layout", [LAYOUT, WIDE_LAYOUT], ids=["small", "wide"])
@pytest.mark.parametrize("large_layer", [0, 1, None])
def test_layer_norm_equals_clip_grad_norm_per_layer(layout: ParamLayout,
                                                    large_layer: int | None) -> None:
    grad, params = flat_case(4, grad_scale=1e-3, layout=layout)
    for i in range(layout.n_layers) if large_layer is None else [large_layer]:
        layout.layer_segment(grad, i)[:] *= 1e5
    reference = grad.copy()
    for i in range(layout.n_layers):
        clip_grad_norm_([layout.layer_segment(reference, i)], 1.5)
    clipped_norm, clipped = apply(clipping("layer_norm", max_norm=1.5), grad, params, layout)
    assert grad.tobytes() == reference.tobytes()  # untouched layers too, bit for bit
    assert clipped is True
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-12)


def test_layer_norm_without_a_large_layer_is_not_clipped() -> None:
    grad, params = flat_case(grad_scale=1e-2)
    original = grad.copy()
    clipped_norm, clipped = apply(clipping("layer_norm", max_norm=1.0), grad, params)
    assert clipped is False
    assert clipped_norm == pytest.approx(norm(original), rel=1e-13)
    assert grad.tobytes() == original.tobytes()


def test_value_equals_clip_grad_value_and_reports_the_new_norm() -> None:
    grad, params = flat_case(grad_scale=3.0)
    reference = grad.copy()
    clip_grad_value_([reference], 1.0)
    clipped_norm, clipped = apply(clipping("value", clip_value=1.0), grad, params)
    np.testing.assert_array_equal(grad, reference)
    assert clipped is True
    assert clipped_norm == pytest.approx(norm(reference), rel=1e-13)


def test_value_with_everything_inside_the_bound_is_not_clipped() -> None:
    grad, params = flat_case(grad_scale=1e-3)
    original = grad.copy()
    clipped_norm, clipped = apply(clipping("value", clip_value=1.0), grad, params)
    assert clipped is False
    assert grad.tobytes() == original.tobytes()
    assert clipped_norm == pytest.approx(norm(original), rel=1e-13)


def test_value_still_clips_when_the_gradient_also_holds_nan() -> None:
    grad, params = flat_case(grad_scale=1e-3)
    grad[0], grad[1] = np.nan, 50.0
    with no_numpy_warnings():
        clipped_norm, clipped = apply(clipping("value", clip_value=1.0), grad, params)
    assert clipped is True
    assert grad[1] == 1.0 and np.isnan(grad[0]) and math.isnan(clipped_norm)


def test_clip_flat_keeps_float32() -> None:
    grad, params = (a.astype(np.float32) for a in flat_case(grad_scale=10.0))
    for spec in [clipping("global_norm"), clipping("layer_norm"), clipping("value"),
                 clipping("adaptive")]:
        g = grad.copy()
        clipped_norm, clipped = apply(spec, g, params)
        assert g.dtype == np.float32 and clipped is True
        assert clipped_norm == pytest.approx(norm(g), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Adaptive gradient clipping
# --------------------------------------------------------------------------------------------


def agc_reference(grads: list[np.ndarray], params: list[np.ndarray], clip_factor: float,
                  eps: float) -> None:
    """timm ``adaptive_clip_grad`` transcribed to NumPy, weights as (fan_in, fan_out)."""
    for g, p in zip(grads, params, strict=True):
        if p.ndim <= 1:
            p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        else:  # one unit per output = per column in our layout
            p_norm = np.linalg.norm(p, axis=0, keepdims=True)
            g_norm = np.linalg.norm(g, axis=0, keepdims=True)
        max_norm = np.maximum(p_norm, eps) * clip_factor
        clipped_grad = g * (max_norm / np.maximum(g_norm, 1e-6))
        g[...] = np.where(g_norm < max_norm, g, clipped_grad)


@pytest.mark.parametrize("clip_factor", [0.01, 0.5, 10.0])
def test_adaptive_matches_the_timm_formula(clip_factor: float) -> None:
    grad, params = flat_case(5, grad_scale=0.3)
    params[LAYOUT.slot("layers.1.bias").offset:LAYOUT.slot("layers.1.bias").stop] = 0.0  # eps floor
    reference = [v.copy() for v in LAYOUT.views(grad)]
    agc_reference(reference, LAYOUT.views(params), clip_factor, 1e-3)
    clipped_norm, clipped = apply(clipping("adaptive", clip_factor=clip_factor), grad, params)
    for ours, ref in zip(LAYOUT.views(grad), reference, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert clipped is True
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-13)


def test_adaptive_matches_timm_written_in_torch() -> None:
    torch = pytest.importorskip("torch")
    grad, params = flat_case(6, grad_scale=0.1)
    tparams = []
    for p, g in zip(LAYOUT.views(params), LAYOUT.views(grad), strict=True):
        tp = torch.nn.Parameter(torch.from_numpy(p.T.copy()))  # torch Linear: (out, in)
        tp.grad = torch.from_numpy(g.T.copy())
        tparams.append(tp)
    for p in tparams:  # timm.utils.agc.adaptive_clip_grad, verbatim in substance
        def unitwise(x: Any) -> Any:
            return x.norm(2.0) if x.ndim <= 1 else x.norm(2.0, dim=1, keepdim=True)
        max_norm = unitwise(p.detach()).clamp_(min=1e-3).mul_(0.05)
        grad_norm = unitwise(p.grad.detach())
        clipped_grad = p.grad.detach() * (max_norm / grad_norm.clamp(min=1e-6))
        p.grad.detach().copy_(torch.where(grad_norm < max_norm, p.grad.detach(), clipped_grad))
    apply(clipping("adaptive", clip_factor=0.05), grad, params)
    for ours, tp in zip(LAYOUT.views(grad), tparams, strict=True):
        np.testing.assert_allclose(ours, tp.grad.numpy().T, rtol=1e-12)


def test_adaptive_leaves_small_gradients_untouched() -> None:
    grad, params = flat_case(7, grad_scale=1e-6)
    original = grad.copy()
    clipped_norm, clipped = apply(clipping("adaptive", clip_factor=0.01), grad, params)
    assert clipped is False
    assert grad.tobytes() == original.tobytes()
    assert clipped_norm == pytest.approx(norm(original), rel=1e-13)


def test_adaptive_clip_flat_works_for_several_layouts() -> None:
    for layout in (LAYOUT, SMALL_LAYOUT, LAYOUT):  # index cache: hit, miss, hit
        grad, params = flat_case(8, 10.0, layout)
        reference = [v.copy() for v in layout.views(grad)]
        agc_reference(reference, layout.views(params), 0.01, 1e-3)
        assert adaptive_clip_flat(grad, params, layout, 0.01) is True
        np.testing.assert_allclose(grad, np.concatenate([r.ravel() for r in reference]),
                                   rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Non-finite inputs: no warnings, no exceptions, torch-like propagation
# --------------------------------------------------------------------------------------------

ALL_MODES = [clipping("none"), clipping("global_norm"), clipping("value"),
             clipping("layer_norm"), clipping("adaptive")]


@pytest.mark.parametrize("spec", ALL_MODES, ids=lambda s: s.mode)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "huge"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_gradients_are_data(spec: Any, bad: str, dtype: Any) -> None:
    grad, params = (a.astype(dtype) for a in flat_case(9))
    grad[3] = np.finfo(dtype).max / 2 if bad == "huge" else float(bad)  # huge: its square overflows
    params[5] = np.nan
    with np.errstate(all="ignore"):
        layer_sumsq = LAYOUT.layer_sumsq(grad)
    with no_numpy_warnings():
        clipped_norm, _ = clip_flat(spec, grad, params, LAYOUT, layer_sumsq)
        clip_grad_norm_(LAYOUT.views(grad), 1.0)
        clip_grad_value_(LAYOUT.views(grad), 1.0)
    assert isinstance(clipped_norm, float)


def test_global_norm_with_inf_zeroes_finite_entries_like_torch() -> None:
    grad, params = flat_case(10)
    grad[0] = np.inf
    with no_numpy_warnings():
        clipped_norm, clipped = apply(clipping("global_norm"), grad, params)
    assert clipped is True and math.isnan(clipped_norm)
    assert np.isnan(grad[0]) and np.all(grad[1:] == 0.0)


def test_layer_norm_with_nan_poisons_only_that_layer() -> None:
    grad, params = flat_case(11, grad_scale=1e-3)
    grad[LAYOUT.layer_offsets[2]] = np.nan
    with no_numpy_warnings():
        clipped_norm, clipped = apply(clipping("layer_norm"), grad, params)
    assert clipped is True and math.isnan(clipped_norm)
    assert np.all(np.isnan(LAYOUT.layer_segment(grad, 2)))
    assert np.all(np.isfinite(grad[:LAYOUT.layer_offsets[2]]))


# --------------------------------------------------------------------------------------------
# Properties (finite inputs)
# --------------------------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
grads_and_params = st.tuples(
    arrays(np.float64, LAYOUT.size, elements=finite),
    arrays(np.float64, LAYOUT.size, elements=finite),
)
limits = st.floats(1e-3, 1e3)


@settings(max_examples=100, deadline=None)
@given(grads_and_params, limits)
def test_global_norm_property(case: tuple[np.ndarray, np.ndarray], max_norm: float) -> None:
    grad, params = case
    pre = norm(grad)
    clipped_norm, clipped = apply(clipping("global_norm", max_norm=max_norm), grad, params)
    assert norm(grad) <= max_norm * (1 + 1e-9) or not clipped
    assert norm(grad) <= max(pre, max_norm) * (1 + 1e-9)
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-9, abs=1e-300)


@settings(max_examples=100, deadline=None)
@given(grads_and_params, limits)
def test_layer_norm_property(case: tuple[np.ndarray, np.ndarray], max_norm: float) -> None:
    grad, params = case
    pre = np.sqrt(LAYOUT.layer_sumsq(grad))
    clipped_norm, _ = apply(clipping("layer_norm", max_norm=max_norm), grad, params)
    post = np.sqrt(LAYOUT.layer_sumsq(grad))
    assert np.all(post <= np.maximum(np.minimum(pre, max_norm), 0) * (1 + 1e-9) + 1e-300)
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-9, abs=1e-300)


@settings(max_examples=100, deadline=None)
@given(grads_and_params, limits)
def test_value_property(case: tuple[np.ndarray, np.ndarray], clip_value: float) -> None:
    grad, params = case
    original = grad.copy()
    clipped_norm, clipped = apply(clipping("value", clip_value=clip_value), grad, params)
    assert np.all(np.abs(grad) <= clip_value)
    assert clipped is (not np.array_equal(grad, original))
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-9, abs=1e-300)


@settings(max_examples=100, deadline=None)
@given(grads_and_params, st.floats(1e-3, 10.0))
def test_adaptive_property(case: tuple[np.ndarray, np.ndarray], clip_factor: float) -> None:
    grad, params = case
    original = grad.copy()
    clipped_norm, clipped = apply(clipping("adaptive", clip_factor=clip_factor), grad, params)
    for g, p in zip(LAYOUT.views(grad), LAYOUT.views(params), strict=True):
        axis = 0 if g.ndim == 2 else None
        limit = np.maximum(np.linalg.norm(p, axis=axis), 1e-3) * clip_factor
        assert np.all(np.linalg.norm(g, axis=axis) <= limit * (1 + 1e-9) + 1e-300)
    assert clipped is (not np.array_equal(grad, original))
    assert clipped_norm == pytest.approx(norm(grad), rel=1e-9, abs=1e-300)
