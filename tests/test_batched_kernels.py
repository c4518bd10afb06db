"""The stacked kernels give each float32 member exactly its single run's bits.

:class:`core.stacked.StackedMLP` keeps hidden work arrays batch-major (contiguous rows over
all members), adds biases and sums bias gradients over those rows, reproduces the single
network's contiguity where BLAS's matrix-vector products depend on it, and runs ReLU against a
shared zeros array. None of this may change a number: these tests compare bytes, not
tolerances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core import Trainer, TrainingResult, TrainingSpec
from core.activations import get_activation
from core.batched import BatchedTrainer
from core.network import MLP
from core.stacked import StackedMLP, initial_parameters
from core.telemetry import LayerRecord


def _spec(**over: Any) -> TrainingSpec:
    base: dict[str, Any] = {
        "seed": 0, "dtype": "float32", "loss": "binary_cross_entropy",
        "data": {"source": "synthetic", "name": "moons", "n_samples": 240},
        "model": {"hidden": [{"units": 32}, {"units": 32}]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "training": {"epochs": 3, "batch_size": 32},
    }
    base.update(over)
    return TrainingSpec.model_validate(base)


def _bits(res: TrainingResult) -> list[Any]:
    """Everything a run without telemetry reports, as exact representations."""
    return [res.stop_reason, res.steps_completed, repr(res.first_non_finite),
            [(r.step, r.loss.hex() if isinstance(r.loss, float) else r.loss,
              float(r.grad_norm).hex(), float(r.clipped_grad_norm).hex()) for r in res.steps],
            [repr(e) for e in res.epochs]]


def _assert_bit_identical(specs: list[TrainingSpec]) -> None:
    trainer = BatchedTrainer(specs, telemetry=False, monitor=False)
    results = trainer.run()
    for k, (spec, res) in enumerate(zip(specs, results, strict=True)):
        single = Trainer(spec, telemetry=False, monitor=False)
        own = single.run()
        assert _bits(res) == _bits(own), f"member {k}"
        assert trainer.final_networks[k].flat.tobytes() == single.network.flat.tobytes()


LRS = [0.01, 0.3, 3.0, 30.0]  # the large ones overflow: members leave, down to one


@pytest.mark.parametrize("model", [
    {"hidden": [{"units": 32}, {"units": 32}]},
    {"hidden": [{"units": 8}, {"units": 12}, {"units": 8}]},  # narrow: BLAS vector products
    {"hidden": [{"units": 8}]},  # one hidden layer: contiguous activations
    {"hidden": [{"units": 5}, {"units": 7, "activation": "tanh"}]},
], ids=["32-32", "8-12-8", "8", "5-7tanh"])
def test_members_equal_their_single_runs_bit_for_bit(model: dict[str, Any]) -> None:
    specs = [_spec(model={**model, "init": {"scheme": "normal", "std": 1.0}},
                   optimizer={"name": "sgd", "lr": lr, "momentum": 0.9}) for lr in LRS]
    _assert_bit_identical(specs)


def test_regression_members_with_their_own_batches_equal_their_single_runs() -> None:
    specs = [_spec(seed=seed, loss="mse",
                   data={"source": "synthetic", "name": "sine", "n_samples": 150},
                   model={"hidden": [{"units": 16}, {"units": 16}]},
                   optimizer={"name": "adam", "lr": lr}, training={"epochs": 2, "batch_size": 10})
             for seed in (0, 1) for lr in (0.001, 0.1)]
    _assert_bit_identical(specs)


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "adamw", "weight_decay": 0.05},
    {"name": "rmsprop", "momentum": 0.5, "centered": True},
    {"name": "adagrad", "lr_decay": 0.01},
], ids=["sgd_nesterov", "adamw", "rmsprop", "adagrad"])
def test_optimizers_and_batch_norm_keep_members_bit_identical(optimizer: dict[str, Any]) -> None:
    specs = [_spec(seed=seed, loss="cross_entropy",
                   data={"source": "synthetic", "name": "spirals", "n_samples": 150},
                   model={"hidden": [{"units": 16}, {"units": 16, "batch_norm": True}]},
                   optimizer={**optimizer, "lr": lr}, training={"epochs": 2, "batch_size": 16})
             for seed in (0, 1) for lr in (0.003, 0.3)]
    _assert_bit_identical(specs)


def test_inference_of_any_members_equals_their_networks() -> None:
    specs = [_spec(model={"hidden": [{"units": 8}, {"units": 12}, {"units": 8}]},
                   optimizer={"name": "sgd", "lr": lr}) for lr in (0.01, 0.1, 1.0)]
    trainer = BatchedTrainer(specs, telemetry=False, monitor=False)
    net = trainer.network
    rng = np.random.default_rng(3)
    net.flat[...] = rng.standard_normal(net.flat.shape).astype(np.float32)
    singles = [Trainer(s, telemetry=False, monitor=False).network for s in specs]
    for k, single in enumerate(singles):
        single.flat[...] = net.flat[k]
    X = trainer.member_data(0).X_val
    with np.errstate(all="ignore"):
        for rows in (np.arange(3), np.array([0, 2]), np.array([1])):
            out = net.predict(X, rows)
            for j, k in enumerate(rows.tolist()):
                assert out[j].tobytes() == singles[k].predict(X).tobytes()
        # training mode too, and the activations handed to the statistics
        Xb = X[:10]
        out = net.forward(Xb)
        for k, single in enumerate(singles):
            assert out[k].tobytes() == single.forward(Xb).tobytes()
            for i in range(3):
                a = net.hidden_activation(i)
                assert a.flags.c_contiguous
                assert a[k].tobytes() == np.ascontiguousarray(single.hidden_activation(i)).tobytes()


@pytest.mark.parametrize("hidden", [
    [{"units": 8}, {"units": 12, "batch_norm": True}],
    [{"units": 16}],
    [{"units": 6, "activation": "tanh"}, {"units": 10}],
], ids=["8-12bn", "16", "6tanh-10"])
def test_inference_in_member_groups_equals_their_networks(
        hidden: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    # inference runs the members in cache-sized groups: force groups of 1, 2 and 3 members
    # (the last group smaller), on all members, a subset and one, float32 and float64
    import core.stacked as stacked
    for dtype in ("float32", "float64"):
        specs = [_spec(dtype=dtype, model={"hidden": hidden}, optimizer={"name": "sgd", "lr": lr})
                 for lr in (0.01, 0.1, 1.0, 0.5, 0.2)]
        trainer = BatchedTrainer(specs, telemetry=False, monitor=False)
        net = trainer.network
        rng = np.random.default_rng(5)
        net.flat[...] = rng.standard_normal(net.flat.shape).astype(dtype)
        for i in net.running_mean:
            net.running_mean[i][...] = rng.standard_normal(net.running_mean[i].shape)
            net.running_var[i][...] = rng.uniform(0.5, 2.0, net.running_var[i].shape)
        singles = [Trainer(s, telemetry=False, monitor=False).network for s in specs]
        for k, single in enumerate(singles):
            single.flat[...] = net.flat[k]
            for i in single.running_mean:
                single.running_mean[i][...] = net.running_mean[i][k, 0]
                single.running_var[i][...] = net.running_var[i][k, 0]
        X = trainer.member_data(0).X_val
        expected = [single.predict(X).tobytes() for single in singles]
        per_member = len(X) * max(h["units"] for h in hidden) * np.dtype(dtype).itemsize
        with np.errstate(all="ignore"):
            for group in (1, 2, 3, 64):
                monkeypatch.setattr(stacked, "_PREDICT_GROUP", group * per_member)
                for rows in (np.arange(5), np.array([4, 0, 2]), np.array([3])):
                    out = net.predict(X, rows)
                    assert out.shape == (len(rows), len(X), 1)
                    for j, k in enumerate(rows.tolist()):
                        assert out[j].tobytes() == expected[k], (dtype, group, rows, k)


@pytest.mark.parametrize("model", [
    {"hidden": [{"units": 8, "init": {"scheme": "orthogonal", "bias": 0.1}},
                {"units": 5, "batch_norm": True, "activation": "tanh"}],
     "init": {"scheme": "xavier_uniform"}},
    {"hidden": [{"units": 6, "activation": "selu", "init": {"scheme": "lecun_normal"}},
                {"units": 7, "init": {"scheme": "uniform", "scale": 0.3}}],
     "init": {"scheme": "he_uniform", "bias": -0.5}},
    {"hidden": [{"units": 4}], "init": {"scheme": "normal", "std": 0.3, "bias": 2.0}},
], ids=["orthogonal-bn", "lecun-uniform", "normal"])
def test_members_start_from_their_networks_parameters(model: dict[str, Any]) -> None:
    # the stack draws its members' parameters without building a network each: the same
    # numbers as core.network.MLP, and the generator left where MLP leaves it
    for dtype in ("float32", "float64"):
        spec = _spec(dtype=dtype, model=model, data={"source": "synthetic", "name": "blobs",
                                                     "n_samples": 60, "n_classes": 3},
                     loss="cross_entropy")
        like = MLP(spec, np.random.default_rng(99))
        for seed in (0, 1):
            own = MLP(spec, r1 := np.random.default_rng(seed))
            out = np.full_like(own.flat, np.nan)
            initial_parameters(spec, r2 := np.random.default_rng(seed), like, out)
            assert out.tobytes() == own.flat.tobytes()
            assert r1.bit_generator.state == r2.bit_generator.state
        specs = [_spec(dtype=dtype, model=model, seed=seed, optimizer={"name": "sgd", "lr": lr})
                 for seed in (0, 3) for lr in (0.1, 0.2)]
        trainer = BatchedTrainer(specs, telemetry=False, monitor=False)
        net = trainer.network
        for k, s in enumerate(specs):
            single = Trainer(s, telemetry=False, monitor=False).network
            assert net.flat[k].tobytes() == single.flat.tobytes()
            for i in single.running_mean:
                assert net.running_mean[i][k, 0].tobytes() == single.running_mean[i].tobytes()
                assert net.running_var[i][k, 0].tobytes() == single.running_var[i].tobytes()
            assert trainer.rngs[k].bit_generator.state == Trainer(s).rng.bit_generator.state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_equals_maximum_with_zero_on_special_values(dtype: type) -> None:
    relu = get_activation("relu")
    rng = np.random.default_rng(0)
    specials = np.array([np.nan, -np.nan, -0.0, 0.0, np.inf, -np.inf, 5e-324, -5e-324, -1.0])
    for shape in [(1,), (7,), (3, 33), (32, 64), (5, 300_000)]:  # the last one: past the cache
        z: np.ndarray = rng.standard_normal(shape).astype(dtype)
        flat = z.reshape(-1)
        flat[rng.integers(0, flat.size, 40)] = rng.choice(specials, 40).astype(dtype)
        for x in (z, z[..., ::2]):
            out = np.empty_like(x)
            assert relu.forward(x, out) is out
            assert out.tobytes() == np.maximum(x, 0).tobytes()


def _norm_bits(res: TrainingResult) -> list[Any]:
    """Every recorded loss and norm, per step and layer, as exact representations."""
    return [res.stop_reason, res.steps_completed, repr(res.first_non_finite)] + [
        (r.step, float(r.loss).hex(), float(r.grad_norm).hex(),
         [(float(ly.grad_norm).hex(), float(ly.weight_grad_norm).hex(),
           float(ly.weight_norm).hex(), float(ly.update_norm).hex()) for ly in r.layers])
        for r in res.steps]


def _hex(x: float | None) -> str | None:
    return None if x is None else float(x).hex()  # NaN -> 'nan', inf -> 'inf'


def _layer_bits(res: TrainingResult) -> list[Any]:
    """Every field of every recorded layer, per step, as exact representations."""
    return [(r.step, [tuple(_hex(getattr(ly, f)) if f != "layer" else ly.layer
                            for f in LayerRecord.__slots__) for ly in r.layers])
            for r in res.steps]


@pytest.mark.parametrize("features,hidden", [
    (256, [256]),  # 67k parameters in 4 segments: one BLAS dot per segment (single trainer)
    (180, [128, 128]),  # 41k: weights and update summed side by side (82k, 12 segments)
    (2, [32, 32]),  # small: reduceat
], ids=["dot", "fused", "reduceat"])
def test_float32_norms_are_the_single_runs_bits(features: int, hidden: list[int]) -> None:
    """The stacked norms take the single trainer's path (reduceat or one dot per segment,
    :func:`core.layout.norms_by_reduceat`): a float32 dot and a reduction sum in different
    orders, so any other path differs in the last bits). So do the activation statistics
    (whole-buffer sums and dots, or BLAS column sums of the single network's layout)."""
    specs = [TrainingSpec.model_validate({
        "seed": 0, "dtype": "float32",
        "data": {"source": "synthetic", "name": "blobs", "n_samples": 256,
                 "n_features": features, "n_classes": 4},
        "model": {"hidden": [{"units": u} for u in hidden]},
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "training": {"epochs": 1, "batch_size": 64}}) for lr in (0.01, 0.1)]
    for spec, res in zip(specs, BatchedTrainer(specs).run(), strict=True):
        single = Trainer(spec).run()
        assert _norm_bits(res) == _norm_bits(single)
        assert _layer_bits(res) == _layer_bits(single)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model,features", [
    ({"hidden": [{"units": 64}]}, 256),  # one hidden layer: whole-buffer sums and dots
    ({"hidden": [{"units": 32}, {"units": 32}]}, 2),  # BLAS column sums, reduceat
    ({"hidden": [{"units": 8, "activation": "leaky_relu"}, {"units": 3, "activation": "tanh"},
                 {"units": 5, "activation": "sigmoid"}]}, 2),  # narrow columns
    ({"hidden": [{"units": 24, "activation": "tanh", "batch_norm": True},
                 {"units": 16, "activation": "elu"}]}, 5),
    ({"hidden": [{"units": 9, "activation": "sigmoid"}]}, 3),
    ({"hidden": [{"units": 12, "activation": "gelu", "batch_norm": True},
                 {"units": 1, "activation": "relu"}]}, 4),
], ids=["256-64", "2-32-32", "leaky-tanh-sigmoid", "bn-tanh-elu", "sigmoid", "bn-gelu-1relu"])
def test_every_layer_record_is_the_single_runs_bits(model: dict[str, Any], features: int,
                                                   dtype: str) -> None:
    """Every per-layer figure (norms, activation mean/std, dead and saturated fractions, None
    where absent) of every member is its single run's, bit for bit; the large learning rates
    drive members to overflow (the statistics' non-finite paths) and out of the stack."""
    specs = [TrainingSpec.model_validate({
        "seed": seed, "dtype": dtype,
        "data": {"source": "synthetic", "name": "blobs", "n_samples": 192,
                 "n_features": features, "n_classes": 3},
        "model": {**model, "init": {"scheme": "normal", "std": std}},
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "training": {"epochs": 2, "batch_size": 48}})
        for seed, std, lr in [(0, 0.1, 0.01), (1, 1.0, 0.3), (0, 3.0, 30.0)]]
    for spec, res in zip(specs, BatchedTrainer(specs).run(), strict=True):
        single = Trainer(spec).run()
        assert res.steps_completed == single.steps_completed
        assert _layer_bits(res) == _layer_bits(single)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden", [
    [{"units": 6, "activation": "linear"}],
    [{"units": 6, "activation": "linear"}, {"units": 4, "activation": "relu"}],
    [{"units": 7, "activation": "tanh"}, {"units": 5, "activation": "linear"},
     {"units": 3, "activation": "leaky_relu"}],
], ids=["1", "2", "3"])
def test_statistics_of_overflowing_members_are_the_single_networks(hidden: list[dict[str, Any]],
                                                                   dtype: str) -> None:
    """Members whose activations overflow at every stage (float32 squares, float32 column
    sums, values themselves, NaN) take the single network's fallbacks, member by member."""
    spec = TrainingSpec.model_validate({
        "seed": 0, "dtype": dtype,
        "data": {"source": "synthetic", "name": "blobs", "n_samples": 64, "n_features": 3},
        "model": {"hidden": hidden}, "training": {"batch_size": 16}})
    scales = [1.0, 1e6, 4e8, 6e8, 1e12, 1e19, 1e30, 1e80, 1e160]
    nets = [MLP(spec, np.random.default_rng(k)) for k in range(len(scales))]
    with np.errstate(over="ignore"):  # float32 weights of the largest scales are inf
        for net, scale in zip(nets, scales, strict=True):
            net.W[0][...] *= scale
    stack = StackedMLP(nets)
    X = np.random.default_rng(9).standard_normal((16, 3)).astype(dtype)
    X[3:5, 1] = 1e30 if dtype == "float32" else 5e299  # column sums overflow, not the values
    with np.errstate(all="ignore"):
        out = stack.forward(X)
        mean, std, dead, sat = stack.activation_stats(out)
        for k, net in enumerate(nets):
            table = net.activation_stat_array(net.forward(X))
            got = np.stack([mean[k], std[k], dead[k], sat[k]], axis=1)
            assert [v.hex() for v in got.ravel().tolist()] == [
                v.hex() for v in table.ravel().tolist()], f"member {k} (scale {scales[k]})"
