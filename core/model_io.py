"""Trained models as files: a run's parameters with everything needed to predict on raw inputs.

A model file is a NumPy ``.npz`` (no pickles) holding

- ``format`` (``"gradwatch-model"``) and ``format_version`` (:data:`FORMAT_VERSION`);
- ``spec_json``: the validated :class:`~core.spec.TrainingSpec` as UTF-8 JSON bytes (``uint8``);
- ``info_json``: what the file holds (``which``: ``final`` or ``best``, ``step``, ``epoch``,
  ``val_loss``, ``task``, ``loss``, ``layer_sizes``, ``finite``, ``non_finite``: the names
  of parameters holding NaN/Inf) as UTF-8 JSON bytes;
- the parameters, named as :meth:`core.network.MLP.parameters` names them
  (``layers.{i}.weight`` of shape ``(fan_in, fan_out)``, ``layers.{i}.bias``,
  ``layers.{i}.bn_gamma``, ``layers.{i}.bn_beta``), in the dtype they were trained in;
- batch-norm running statistics ``layers.{i}.running_mean`` / ``running_var`` (inference uses
  them, as training's validation pass does);
- ``x_mean``, ``x_std`` (and ``y_mean``, ``y_std`` for regression) when the data pipeline
  standardised (``data.standardize``): float64 training-split statistics.

:meth:`Model.predict` takes raw inputs and does what training did to them: ``(X - x_mean) /
x_std`` in float64, a cast to the trained dtype, then the network's own inference forward pass
(:meth:`core.network.MLP.predict`) and the output the loss defines: softmax probabilities
(``cross_entropy``), ``[1 - p, p]`` with ``p = sigmoid`` (``binary_cross_entropy``), or the
outputs (``mse``; regression outputs mapped back to the target's scale with ``y_mean`` /
``y_std``).

The archive itself (format marker, JSON entries, safe reads, :class:`ModelFileError`,
:func:`read_info`) is :mod:`core.model_archive`, re-exported here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np
from pydantic import ValidationError

from core.data import Dataset
from core.layout import ParamLayout
from core.model_archive import (
    FORMAT,
    FORMAT_VERSION,
    ModelFileError,
    check_format,
    decode_json,
    json_bytes,
    open_archive,
    read_array,
    read_info,
)
from core.network import EVAL_CHUNK, MLP
from core.snapshot import BestParameters, NetworkCopy
from core.spec import SpecLimits, TrainingSpec, data_shape

__all__ = ["FORMAT", "FORMAT_VERSION", "Model", "ModelFileError", "load_model", "read_info",
           "save_model"]

Array = np.ndarray
_NORMALISATION = ("x_mean", "x_std", "y_mean", "y_std")
# A model file was validated when it was trained: read it back whatever this process' limits.
_UNBOUNDED = SpecLimits(max_parameters=2**62, max_layers=2**62, max_units=2**62,
                        max_steps=2**62, max_samples=2**62, max_data_values=2**62,
                        max_inline_values=2**62, max_batch_size=2**62)


class _Trainer(Protocol):  # core.trainer.Trainer, as far as a model needs it
    spec: TrainingSpec
    network: MLP
    data: Dataset
    best: BestParameters | None


class _StackedTrainer(Protocol):  # core.batched.BatchedTrainer
    specs: list[TrainingSpec]
    final_networks: dict[int, NetworkCopy]

    def member_data(self, k: int) -> Dataset: ...


@dataclass
class Model:
    """A trained network with the input (and target) scaling of its data pipeline.

    Attributes
    ----------
    spec : the validated training spec the network was trained with.
    arrays : parameters (:meth:`core.network.MLP.parameters` names) and batch-norm running
        statistics (``layers.{i}.running_mean`` / ``running_var``), in the trained dtype.
    x_mean, x_std, y_mean, y_std : float64 standardisation statistics, or None.
    info : ``which`` (``final`` | ``best``), ``step``, ``epoch``, ``val_loss`` and anything
        else the writer recorded.
    """

    spec: TrainingSpec
    arrays: dict[str, Array]
    x_mean: Array | None = None
    x_std: Array | None = None
    y_mean: Array | None = None
    y_std: Array | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _network: MLP | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_arrays(self.spec, self.arrays)
        _check_normalisation(self)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_network(cls, spec: TrainingSpec, network: MLP | NetworkCopy, data: Dataset,
                     **info: Any) -> Model:
        """A copy of ``network``'s parameters and batch-norm running statistics, with the
        standardisation ``data``'s pipeline applied; ``info`` is recorded in the file."""
        state = NetworkCopy.of(network)
        arrays = {s.name: state.layout.view(state.flat, s) for s in state.layout.slots}
        for i in state.running_mean:
            arrays[f"layers.{i}.running_mean"] = state.running_mean[i]
            arrays[f"layers.{i}.running_var"] = state.running_var[i]
        return cls(spec, arrays, data.x_mean, data.x_std, data.y_mean, data.y_std,
                   {"which": "final", **info})

    @classmethod
    def from_trainer(cls, trainer: _Trainer, which: str = "final", **info: Any) -> Model:
        """The trainer's current (``final``) parameters, or the ``best`` it kept by
        validation loss (``Trainer(spec, keep_best=True)``; ValueError if there is none)."""
        if which == "final":
            return cls.from_network(trainer.spec, trainer.network, trainer.data, **info)
        if which != "best":
            raise ValueError(f"which must be 'final' or 'best', not {which!r}")
        best = trainer.best
        if best is None:
            raise ValueError("the trainer kept no best parameters (it needs keep_best=True, a "
                             "validation split and a finite validation loss)")
        model = cls.from_network(trainer.spec, best.network, trainer.data, **info)
        model.info.update(which="best", step=best.step, epoch=best.epoch,
                          val_loss=best.val_loss)
        return model

    @classmethod
    def from_member(cls, trainer: _StackedTrainer, k: int, **info: Any) -> Model:
        """Member ``k``'s final parameters after :meth:`core.batched.BatchedTrainer.run`."""
        final = trainer.final_networks.get(k)
        if final is None:
            raise ValueError(f"member {k} has not finished")
        return cls.from_network(trainer.specs[k], final, trainer.member_data(k), **info)

    # ---------------------------------------------------------------- properties
    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.spec.dtype)

    @property
    def loss(self) -> str:
        return self.spec.loss or "mse"

    @property
    def task(self) -> str:
        return data_shape(self.spec.data).task

    @property
    def n_features(self) -> int:
        return self.spec.layer_sizes()[0]

    @property
    def n_outputs(self) -> int:
        """Columns of :meth:`predict`: one per class, or per regression target."""
        if self.loss == "binary_cross_entropy":
            return 2
        return self.spec.layer_sizes()[-1]

    @property
    def has_probabilities(self) -> bool:
        """Whether :meth:`predict` gives class probabilities (the loss defines them)."""
        return self.loss in ("cross_entropy", "binary_cross_entropy")

    def non_finite(self) -> list[str]:
        """Names of the arrays holding NaN or +-Inf (an exploded run's weights)."""
        return [name for name, a in self.arrays.items() if not np.isfinite(a).all()]

    @property
    def finite(self) -> bool:
        return not self.non_finite()

    def parameters(self) -> list[tuple[str, Array]]:
        """``[(name, array)]`` in the order of :meth:`core.network.MLP.parameters`."""
        return [(s.name, self.arrays[s.name]) for s in _layout(self.spec).slots]

    # ---------------------------------------------------------------- inference
    @property
    def network(self) -> MLP:
        """The network with these parameters (built on first use)."""
        if self._network is None:
            net = MLP(self.spec, np.random.default_rng(0))
            for name, view in net.parameters():
                view[...] = self.arrays[name]
            for i in net.running_mean:
                net.running_mean[i][...] = self.arrays[f"layers.{i}.running_mean"]
                net.running_var[i][...] = self.arrays[f"layers.{i}.running_var"]
            self._network = net
        return self._network

    def prepare(self, X: Any) -> Array:
        """``X`` as the network saw its training inputs: float64, standardised as training
        standardised (if it did), cast to the trained dtype. ValueError on a wrong shape."""
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}): the model takes "
                             f"{self.n_features} input columns; got shape {x.shape}")
        if self.x_mean is not None and self.x_std is not None:
            x = (x - self.x_mean) / self.x_std
        with np.errstate(over="ignore"):  # beyond float32's range: inf, as in training
            return np.ascontiguousarray(x, dtype=self.dtype)

    def _chunks(self, X: Any) -> Iterator[Array]:
        x = np.asarray(X)
        if x.ndim != 2:
            self.prepare(x)  # raises with the expected shape
        for start in range(0, len(x), EVAL_CHUNK):
            yield self.network.predict(self.prepare(x[start:start + EVAL_CHUNK]))

    def outputs(self, X: Any) -> Array:
        """The network's raw outputs (logits; regression outputs in the scale it was trained
        on), inference mode, in batches of ``EVAL_CHUNK`` rows; ``(n, output units)``."""
        parts = list(self._chunks(X))
        if not parts:
            return np.empty((0, self.spec.layer_sizes()[-1]), dtype=self.dtype)
        return np.concatenate(parts)

    def predict(self, X: Any) -> Array:
        """float64 ``(n, n_outputs)``: class probabilities (``cross_entropy``: softmax of the
        logits; ``binary_cross_entropy``: ``[1 - p, p]``), or the outputs (regression, in the
        target's original scale; ``mse`` on class labels: the one-hot scores), computed in
        the trained dtype by the network's own forward pass, in batches."""
        parts = [self._head(out) for out in self._chunks(X)]
        if not parts:
            return np.empty((0, self.n_outputs), dtype=np.float64)
        return np.concatenate(parts)

    def predict_classes(self, X: Any) -> Array:
        """int64 class labels (the highest score); ValueError for a regression model."""
        if self.task != "classification":
            raise ValueError("predict_classes needs a classification model")
        return np.asarray(self.predict(X).argmax(axis=1), dtype=np.int64)

    def _head(self, out: Array) -> Array:
        with np.errstate(all="ignore"):  # non-finite outputs are data
            if self.loss == "cross_entropy":  # as core.losses.cross_entropy computes it
                exp = np.exp(out - out.max(axis=1, keepdims=True))
                exp /= exp.sum(axis=1, keepdims=True)
                return exp.astype(np.float64)
            if self.loss == "binary_cross_entropy":  # as core.losses.binary_cross_entropy
                e = np.exp(-np.abs(out))
                p = (np.where(out >= 0, 1, e) / (1 + e)).astype(out.dtype)
                return np.concatenate([1 - p, p], axis=1).astype(np.float64)
            y = out.astype(np.float64)
            if self.y_mean is not None and self.y_std is not None:
                y = y * self.y_std + self.y_mean
            return y

    # ---------------------------------------------------------------- files
    def save(self, file: str | os.PathLike[str] | IO[bytes]) -> None:
        """Write the model as an ``.npz`` (see the module docstring)."""
        save_model(self, file)


def _layout(spec: TrainingSpec) -> ParamLayout:
    return ParamLayout.for_mlp(spec.layer_sizes(), [h.batch_norm for h in spec.model.hidden])


def _expected_shapes(spec: TrainingSpec) -> dict[str, tuple[int, ...]]:
    layout = _layout(spec)
    shapes = {s.name: s.shape for s in layout.slots}
    for i, h in enumerate(spec.model.hidden):
        if h.batch_norm:
            shapes[f"layers.{i}.running_mean"] = (h.units,)
            shapes[f"layers.{i}.running_var"] = (h.units,)
    return shapes


def _check_arrays(spec: TrainingSpec, arrays: dict[str, Array]) -> None:
    expected = _expected_shapes(spec)
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise ModelFileError(f"the model has no {missing[0]!r} (its spec needs "
                             f"{len(expected)} arrays: {', '.join(expected)})")
    extra = [n for n in arrays if n not in expected]
    if extra:
        raise ModelFileError(f"the model has an array {extra[0]!r} its spec does not define")
    dtype = np.dtype(spec.dtype)
    for name, shape in expected.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != dtype:
            raise ModelFileError(f"{name} is {a.dtype}{list(a.shape)}; the spec needs "
                                 f"{dtype}{list(shape)}")


def _check_normalisation(model: Model) -> None:
    n_in, n_out = model.spec.layer_sizes()[0], model.spec.layer_sizes()[-1]
    for name, width in (("x_mean", n_in), ("x_std", n_in), ("y_mean", n_out), ("y_std", n_out)):
        a = getattr(model, name)
        if a is None:
            continue
        a = np.asarray(a, dtype=np.float64)
        if a.shape != (width,):
            raise ModelFileError(f"{name} has shape {list(a.shape)}; the model needs [{width}]")
        setattr(model, name, a)
    if (model.x_mean is None) != (model.x_std is None) or (
            (model.y_mean is None) != (model.y_std is None)):
        raise ModelFileError("standardisation statistics come in pairs (mean and std)")


def _finite_or_none(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


def save_model(model: Model, file: str | os.PathLike[str] | IO[bytes]) -> None:
    """Write ``model`` to ``file`` (a path or a binary file object) as a model ``.npz``."""
    non_finite = model.non_finite()
    sizes = model.spec.layer_sizes()
    info = {k: _finite_or_none(v) for k, v in model.info.items()}
    info.update(task=model.task, loss=model.loss, layer_sizes=sizes, dtype=model.spec.dtype,
                finite=not non_finite, non_finite=non_finite,
                standardized=model.x_mean is not None)
    payload: dict[str, Array] = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "spec_json": np.frombuffer(model.spec.model_dump_json().encode(), dtype=np.uint8),
        "info_json": json_bytes(info),
        **model.arrays,
    }
    for name in _NORMALISATION:
        value = getattr(model, name)
        if value is not None:
            payload[name] = np.asarray(value, dtype=np.float64)
    np.savez(file, **payload)  # type: ignore[arg-type]


def load_model(file: str | os.PathLike[str] | IO[bytes]) -> Model:
    """Read a model file written by :func:`save_model` (NumPy only, no pickles).

    Raises :class:`ModelFileError` for anything that is not an intact gradwatch model file.
    """
    with open_archive(file) as npz:
        check_format(npz)
        spec_doc = decode_json(npz, "spec_json")
        info = decode_json(npz, "info_json")
        try:
            spec = TrainingSpec.model_validate(spec_doc, context={"limits": _UNBOUNDED})
        except ValidationError as exc:
            raise ModelFileError(f"the model's spec is not valid: {exc.errors()[0]['msg']}"
                                 ) from None
        expected = _expected_shapes(spec)
        names = set(npz.files) - {"format", "format_version", "spec_json", "info_json",
                                  *_NORMALISATION}
        unknown = sorted(names - set(expected))
        if unknown:
            raise ModelFileError(f"the model has an array {unknown[0]!r} its spec does not "
                                 "define")
        arrays = {name: read_array(npz, name) for name in expected if name in names}
        stats = {name: read_array(npz, name) if name in npz.files else None
                 for name in _NORMALISATION}
    return Model(spec, arrays, stats["x_mean"], stats["x_std"], stats["y_mean"], stats["y_std"],
                 info)
