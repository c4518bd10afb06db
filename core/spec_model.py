"""The ``model`` part of the spec: hidden layers, activations and weight initialisations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from core.spec_base import _FloatsAcceptInts, _Strict

__all__ = [
    "ACTIVATIONS",
    "INIT_SCHEMES",
    "Activation",
    "HeNormal",
    "HeUniform",
    "HiddenLayer",
    "InitSpec",
    "LecunNormal",
    "ModelSpec",
    "NormalInit",
    "Orthogonal",
    "UniformInit",
    "XavierNormal",
    "XavierUniform",
]

Activation = Literal[
    "relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "softplus", "gelu", "linear"
]
ACTIVATIONS: tuple[str, ...] = (
    "relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "softplus", "gelu", "linear"
)

_BIAS = Field(0.0, description="Constant initial value of the biases.")


class _InitBase(_FloatsAcceptInts):
    bias: float = _BIAS


class XavierUniform(_InitBase):
    """Glorot & Bengio (2010): U(-a, a), a = gain*sqrt(6/(fan_in+fan_out)); gain from the activation."""

    scheme: Literal["xavier_uniform"]


class XavierNormal(_InitBase):
    """Glorot & Bengio (2010): N(0, gain^2 * 2/(fan_in+fan_out)); gain from the activation."""

    scheme: Literal["xavier_normal"]


class HeUniform(_InitBase):
    """He et al. (2015): U(-a, a), a = sqrt(2)*sqrt(3/fan_in) (ReLU gain, fan_in)."""

    scheme: Literal["he_uniform"]


class HeNormal(_InitBase):
    """He et al. (2015): N(0, 2/fan_in) (ReLU gain, fan_in)."""

    scheme: Literal["he_normal"]


class LecunNormal(_InitBase):
    """LeCun: N(0, 1/fan_in) (the SELU initialisation)."""

    scheme: Literal["lecun_normal"]


class Orthogonal(_InitBase):
    """Saxe et al. (2014): a (semi-)orthogonal matrix times the gain."""

    scheme: Literal["orthogonal"]
    gain: float = Field(1.0, gt=0, description="Multiplier of the orthogonal matrix.")


class NormalInit(_InitBase):
    """N(0, std^2), whatever the layer size: large std explodes deep nets at step 0."""

    scheme: Literal["normal"]
    std: float = Field(0.01, gt=0, description="Standard deviation.", examples=[0.01, 1.0])


class UniformInit(_InitBase):
    """U(-scale, scale), whatever the layer size."""

    scheme: Literal["uniform"]
    scale: float = Field(0.05, gt=0, description="Half-width of the interval.")


InitSpec = Annotated[
    XavierUniform | XavierNormal | HeUniform | HeNormal | LecunNormal | Orthogonal
    | NormalInit | UniformInit,
    Field(discriminator="scheme"),
]
INIT_SCHEMES: tuple[str, ...] = (
    "xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "lecun_normal", "orthogonal",
    "normal", "uniform",
)


class HiddenLayer(_Strict):
    """One hidden layer: Linear -> (BatchNorm) -> activation."""

    units: int = Field(64, ge=1, description="Width of the layer.")
    activation: Activation = Field("relu", description="Nonlinearity after the layer.")
    batch_norm: bool = Field(False, description="Batch normalisation between Linear and activation.")
    init: InitSpec | None = Field(
        None, description="Initialisation of this layer (null: `model.init`)."
    )


def _default_hidden() -> list[HiddenLayer]:
    return [HiddenLayer(units=64, activation="relu"), HiddenLayer(units=64, activation="relu")]


class ModelSpec(_Strict):
    """A multi-layer perceptron; the output layer is linear and its width follows from the data."""

    hidden: list[HiddenLayer] = Field(
        default=_default_hidden(),
        description="Hidden layers in order (may be empty: a linear model).",
    )
    init: InitSpec = Field(
        default=HeNormal(scheme="he_normal"),
        description="Weight initialisation for every layer without its own `init`, and for the "
                    "output layer.",
    )
