"""The spec's building blocks: strict pydantic bases, located validation errors, limits.

Every part of :class:`core.spec.TrainingSpec` derives from :class:`_Strict` (no unknown
fields, no type coercion, finite floats) or :class:`_FloatsAcceptInts` (the same, but a JSON
integer is accepted where a float is expected). :class:`SpecLimits` are the resource limits
the spec checks before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["DEFAULT_LIMITS", "SpecLimits"]


class _Strict(BaseModel):
    """Base for every spec part: no unknown fields, no type coercion, finite floats."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _fail(loc: tuple[str | int, ...], message: str, *, kind: str = "value_error",
          value: Any = None) -> ValidationError:
    """A validation error located at ``loc`` (relative to the model being validated).

    Raised from model validators so that cross-field errors still name the field path.
    """
    return ValidationError.from_exception_data(
        "TrainingSpec",
        [InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)],
    )


def _limit(loc: tuple[str | int, ...], what: str, value: int, name: str, limit: int,
           hint: str = "") -> ValidationError:
    return _fail(loc, f"{what} is {value}; the limit {name} is {limit}{hint}",
                 kind="limit_exceeded", value=value)


def _lax_float(v: Any) -> Any:
    # Accept JSON integers for float fields (1 -> 1.0) but nothing else (no "1.0", no True).
    if isinstance(v, bool):
        return v  # left to the strict float check, which names the exact field
    if isinstance(v, int):
        return float(v)
    return v


class _FloatsAcceptInts(_Strict):
    """Float fields accept JSON integers (``1`` means ``1.0``); strings/booleans stay errors."""

    @model_validator(mode="before")
    @classmethod
    def _ints_to_floats(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if name in out and _is_float_annotation(field.annotation):
                out[name] = _lax_float(out[name])
        return out


def _is_float_annotation(annotation: Any) -> bool:
    if annotation is float:
        return True
    args = getattr(annotation, "__args__", ())
    return float in args


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecLimits:
    """Resource limits checked during validation, before anything is allocated."""

    max_parameters: int = 20_000_000
    max_layers: int = 100
    max_units: int = 8_192
    max_steps: int = 1_000_000
    max_samples: int = 1_000_000
    max_data_values: int = 20_000_000
    max_inline_values: int = 1_000_000
    max_batch_size: int = 65_536

    @classmethod
    def from_context(cls, info: ValidationInfo | None) -> SpecLimits:
        ctx = info.context if info is not None else None
        if isinstance(ctx, dict) and isinstance(ctx.get("limits"), SpecLimits):
            limits: SpecLimits = ctx["limits"]
            return limits
        return DEFAULT_LIMITS


DEFAULT_LIMITS = SpecLimits()
