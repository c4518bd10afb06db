"""core.model_io: a trained model as a file, read back offline with NumPy only.

Predictions must be exactly what the network's own inference forward pass gives on the inputs
prepared as training prepared them (standardised in float64, cast to the trained dtype), with
the output the loss defines (softmax / sigmoid); a damaged or foreign file is a clear error.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import core
from app.showcase import DIVERGING_SPEC
from core.batched import BatchedTrainer
from core.model_io import FORMAT_VERSION, read_info

SPIRALS: dict[str, Any] = {
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 150, "standardize": True},
    "model": {"hidden": [{"units": 8, "batch_norm": True}, {"units": 6, "activation": "tanh"}]},
    "training": {"epochs": 3, "batch_size": 16, "validation_split": 0.2},
}


def trained(overrides: dict[str, Any] | None = None, **kw: Any) -> core.Trainer:
    spec = core.TrainingSpec.model_validate({**SPIRALS, **(overrides or {})})
    trainer = core.Trainer(spec, **kw)
    trainer.run()
    return trainer


def round_trip(model: core.Model) -> core.Model:
    buf = io.BytesIO()
    core.save_model(model, buf)
    buf.seek(0)
    return core.load_model(buf)


def softmax_like_training(logits: np.ndarray) -> np.ndarray:
    _, dlogits = core.losses.cross_entropy(logits.copy(), np.zeros(len(logits), np.int64))
    # cross_entropy's gradient is (softmax - onehot) / n: undo the onehot and the 1/n
    p = dlogits * len(logits)
    p[:, 0] += 1
    return p


def test_predictions_are_the_networks_forward_pass_on_standardised_inputs_bit_for_bit() -> None:
    trainer = trained()
    model = round_trip(core.Model.from_trainer(trainer))
    X = np.random.default_rng(3).normal(scale=2.0, size=(57, 2))
    x = (X - trainer.data.x_mean) / trainer.data.x_std  # type: ignore[operator]
    logits = trainer.network.predict(np.ascontiguousarray(x))
    np.testing.assert_array_equal(model.outputs(X), logits)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.array_equal(model.predict(X), expected)
    np.testing.assert_allclose(model.predict(X), softmax_like_training(logits), rtol=1e-12)
    assert model.predict_classes(X).tolist() == logits.argmax(axis=1).tolist()


def test_the_validation_split_is_predicted_as_the_trainer_evaluates_it() -> None:
    """Raw validation inputs through the model give the trainer's own validation outputs."""
    trainer = trained()
    model = round_trip(core.Model.from_trainer(trainer))
    raw_val = trainer.data.X_val * trainer.data.x_std + trainer.data.x_mean  # type: ignore[operator]
    out = trainer.network.predict(trainer.data.X_val)
    np.testing.assert_allclose(model.outputs(raw_val), out, rtol=1e-12, atol=1e-12)


def test_round_trip_keeps_every_array_bit_for_bit_with_its_dtype(tmp_path: Path) -> None:
    trainer = trained({"dtype": "float32"})
    model = core.Model.from_trainer(trainer, step=7)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = core.load_model(path)
    assert set(loaded.arrays) == set(model.arrays)
    assert {"layers.0.running_mean", "layers.0.running_var"} <= set(loaded.arrays)
    for name, a in model.arrays.items():
        assert loaded.arrays[name].dtype == np.float32
        assert loaded.arrays[name].tobytes() == a.tobytes(), name
    for name, value in trainer.parameters():
        assert np.array_equal(loaded.arrays[name], value)
    assert np.array_equal(loaded.arrays["layers.0.running_var"],
                          trainer.network.running_var[0])
    assert loaded.info["which"] == "final" and loaded.info["step"] == 7
    assert loaded.spec == trainer.spec
    assert np.array_equal(loaded.x_mean, trainer.data.x_mean)  # type: ignore[arg-type]
    X = np.random.default_rng(0).normal(size=(9, 2))
    assert np.array_equal(loaded.predict(X), model.predict(X))
    # the file is plain NumPy: no pickles, the spec and info as JSON
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["format"]) == "gradwatch-model"
        assert int(npz["format_version"]) == FORMAT_VERSION
        assert json.loads(npz["spec_json"].tobytes())["dtype"] == "float32"
    assert read_info(path)["finite"] is True


def test_regression_outputs_come_back_in_the_targets_scale() -> None:
    trainer = trained({"data": {"source": "builtin", "name": "diabetes", "standardize": True},
                       "model": {"hidden": [{"units": 8}]}})
    model = round_trip(core.Model.from_trainer(trainer))
    assert model.task == "regression" and not model.has_probabilities
    raw_val = trainer.data.X_val * trainer.data.x_std + trainer.data.x_mean  # type: ignore[operator]
    out = model.outputs(raw_val)
    np.testing.assert_array_equal(
        model.predict(raw_val),
        out.astype(np.float64) * trainer.data.y_std + trainer.data.y_mean)  # type: ignore[operator]
    assert 25 < float(np.median(model.predict(raw_val))) < 346  # diabetes targets' range


def test_binary_cross_entropy_gives_two_probabilities_from_the_sigmoid() -> None:
    trainer = trained({"data": {"source": "synthetic", "name": "moons", "n_samples": 100},
                       "loss": "binary_cross_entropy"})
    model = round_trip(core.Model.from_trainer(trainer))
    X = np.random.default_rng(1).normal(size=(20, 2))
    logits = trainer.network.predict(X)[:, 0]
    p = model.predict(X)
    assert p.shape == (20, 2)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-logits)), rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-15)


def test_best_parameters_are_those_of_the_lowest_validation_loss() -> None:
    spec = core.TrainingSpec.model_validate({**SPIRALS, "optimizer": {"name": "sgd", "lr": 0.5},
                                             "training": {"epochs": 6, "batch_size": 16,
                                                          "validation_split": 0.3}})
    trainer = core.Trainer(spec, keep_best=True)
    result = trainer.run()
    best = trainer.best
    assert best is not None
    lowest = min(result.epochs, key=lambda e: e.val_loss or np.inf)
    assert (best.epoch, best.step, best.val_loss) == (lowest.epoch, lowest.step, lowest.val_loss)
    model = round_trip(core.Model.from_trainer(trainer, "best"))
    assert model.info["which"] == "best" and model.info["val_loss"] == best.val_loss
    loss, _ = core.losses.cross_entropy(model.outputs(
        trainer.data.X_val * trainer.data.x_std + trainer.data.x_mean), trainer.data.y_val)  # type: ignore[operator]
    assert loss == pytest.approx(best.val_loss, rel=1e-9)


def test_a_trainer_without_a_validation_split_keeps_no_best() -> None:
    trainer = trained({"training": {"epochs": 2, "validation_split": 0.0}}, keep_best=True)
    assert trainer.best is None
    with pytest.raises(ValueError, match="no best"):
        core.Model.from_trainer(trainer, "best")


def test_a_sweep_member_model_is_what_the_single_trainer_would_keep() -> None:
    specs = [core.TrainingSpec.model_validate({**SPIRALS, "seed": s,
                                               "optimizer": {"name": "sgd", "lr": lr}})
             for s, lr in ((0, 0.05), (1, 0.2))]
    batched = BatchedTrainer(specs)
    batched.run()
    for k, spec in enumerate(specs):
        alone = core.Trainer(spec)
        alone.run()
        member = round_trip(core.Model.from_member(batched, k))
        single = core.Model.from_trainer(alone)
        for name, a in single.arrays.items():
            np.testing.assert_allclose(member.arrays[name], a, rtol=1e-9, atol=1e-12)


def test_exploded_weights_are_kept_and_reported_non_finite() -> None:
    spec = core.TrainingSpec.model_validate(DIVERGING_SPEC)  # overflows to Inf at step 25
    trainer = core.Trainer(spec)
    assert trainer.run().stop_reason == "non_finite"
    model = round_trip(core.Model.from_trainer(trainer))
    assert not model.finite and "layers.0.weight" in model.non_finite()
    assert read_info(io.BytesIO(_bytes(model)))["non_finite"] == model.non_finite()
    assert np.isnan(model.predict(np.zeros((2, 8)))).all()  # NaN is data, not an error


def _bytes(model: core.Model) -> bytes:
    buf = io.BytesIO()
    model.save(buf)
    return buf.getvalue()


def test_wrong_input_width_names_expected_and_given() -> None:
    model = core.Model.from_trainer(trained())
    with pytest.raises(ValueError, match=r"takes 2 input columns; got shape \(4, 3\)"):
        model.predict(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="takes 2 input columns"):
        model.predict(np.zeros(2))
    assert model.predict(np.zeros((0, 2))).shape == (0, 3)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not an .npz"),
    (b"PK\x03\x04 truncated zip", "not an .npz"),
    (b"\x93NUMPY garbage", "not an .npz"),
    (b"just some text", "not an .npz"),
])
def test_foreign_bytes_are_a_clear_error(content: bytes, message: str) -> None:
    with pytest.raises(core.ModelFileError, match=message):
        core.load_model(io.BytesIO(content))


def test_foreign_and_damaged_npz_files_are_clear_errors(tmp_path: Path) -> None:
    good = _bytes(core.Model.from_trainer(trained()))

    def rewritten(**changes: Any) -> io.BytesIO:
        with np.load(io.BytesIO(good)) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays.update(changes)
        for k in [k for k, v in changes.items() if v is None]:
            del arrays[k]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        buf.seek(0)
        return buf

    cases = [
        (rewritten(format=None), "no 'format' entry"),
        (rewritten(format=np.array("something-else")), "format 'something-else'"),
        (rewritten(format_version=np.array(99)), "format version 99"),
        (rewritten(**{"layers.0.weight": None}), "no 'layers.0.weight'"),
        (rewritten(**{"layers.0.weight": np.zeros((3, 8))}), r"layers.0.weight is float64\[3, 8\]"),
        (rewritten(**{"layers.1.bias": np.zeros(6, np.float32)}), "float32"),
        (rewritten(**{"layers.9.weight": np.zeros(2)}), "does not define"),
        (rewritten(spec_json=np.frombuffer(b"{not json", np.uint8)), "cannot read 'spec_json'"),
        (rewritten(spec_json=np.frombuffer(b'{"data": 1}', np.uint8)), "spec is not valid"),
        (rewritten(x_mean=np.zeros(5)), r"x_mean has shape \[5\]"),
        (rewritten(x_std=None), "pairs"),
    ]
    for buf, message in cases:
        with pytest.raises(core.ModelFileError, match=message):
            core.load_model(buf)
    plain = io.BytesIO()
    np.save(plain, np.zeros(3))
    plain.seek(0)
    with pytest.raises(core.ModelFileError, match=r"single \.npy"):
        core.load_model(plain)
    # a member whose bytes were damaged inside the zip
    broken = bytearray(good)
    at = good.index(b"layers.0.weight.npy") + 200
    broken[at:at + 64] = b"\xff" * 64
    with pytest.raises(core.ModelFileError):
        core.load_model(io.BytesIO(bytes(broken)))
    with pytest.raises(FileNotFoundError):
        core.load_model(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(io.BytesIO(good))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 9000), dtype=st.sampled_from(["float32", "float64"]),
       in_dtype=st.sampled_from([np.float64, np.float32, np.int64]),
       seed=st.integers(0, 2**16))
@example(n=2 * 4096 + 5, dtype="float32", in_dtype=np.float64, seed=0)  # three batches
def test_predictions_in_batches_equal_one_forward_pass_per_batch(
        n: int, dtype: str, in_dtype: Any, seed: int) -> None:
    """Any number of rows (more than one batch of EVAL_CHUNK too), any input dtype: the
    model's predictions equal the network's inference pass on the prepared inputs."""
    model = _small_model(dtype)
    rng = np.random.default_rng(seed)
    X = (rng.normal(scale=3.0, size=(n, 2)) * 10).astype(in_dtype)
    x = np.ascontiguousarray(((X.astype(np.float64) - model.x_mean) / model.x_std)
                             .astype(dtype))
    out = model.network.predict(x)
    assert model.outputs(X).dtype == np.dtype(dtype)
    assert np.array_equal(model.outputs(X), out)
    p = model.predict(X)
    assert p.shape == (n, 3) and p.dtype == np.float64
    if n:
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


_MODELS: dict[str, core.Model] = {}


def _small_model(dtype: str) -> core.Model:
    if dtype not in _MODELS:
        _MODELS[dtype] = round_trip(core.Model.from_trainer(trained({"dtype": dtype})))
    return _MODELS[dtype]
