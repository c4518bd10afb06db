"""Setting a sweep axis's dotted path in a spec dict, and the objects the spec leaves out.

A user sweeping ``optimizer.lr`` over a base spec without ``optimizer`` means "the default
optimizer, with these learning rates", not a bare ``{"lr": ...}``. So an object on an axis's
path that the member's spec leaves out (absent or null) is first a placeholder holding the
values the axes set in it (:func:`assign`); once all of a member's values are set,
:func:`resolve` makes it the object the spec would use for that field — the pydantic default
of the field (the default optimizer, ``model.init``, ...) dumped to JSON with only what that
default sets, so every other default is still filled in by the member's own validation —
with the axis values on top. Fields whose default depends on another field of the member
(a hidden layer's ``init``, null, means the member's ``model.init``) start from that field of
the member itself, resolved after everything else.

A union member is chosen by the fields the axes set: the default one if it has them all
(``optimizer.lr`` -> the default SGD), else the only kind that has them (``model.init.std``
-> ``normal``, ``clipping.clip_value`` -> ``value``); when several kinds have them
(``clipping.max_norm``: ``global_norm`` or ``layer_norm``) a :class:`SweepError` names the
axis and the field to add. An axis that sets the discriminator itself picks the kind.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.spec import HiddenLayer, ModelSpec, TrainingSpec

__all__ = ["DEPTH", "SweepError", "assign", "resolve"]

DEPTH = "model.depth"

Loc = tuple[str | int, ...]


class SweepError(ValueError):
    """A sweep that cannot be built; ``loc`` says where (``("axes", 1, "values", 3)``),
    ``limit`` names the exceeded limit if that is the reason."""

    def __init__(self, message: str, loc: Loc = (), limit: str | None = None) -> None:
        super().__init__(message)
        self.loc = loc
        self.limit = limit


# ---- the shape of the spec, read from its pydantic models ----------------------------------


@dataclass(frozen=True)
class _Model:
    cls: type[BaseModel]


@dataclass(frozen=True)
class _Union:
    discriminator: str
    variants: dict[str, type[BaseModel]]


@dataclass(frozen=True)
class _List:
    item: _Shape


_Shape = _Model | _Union | _List | None


def _shape(annotation: Any, discriminator: str | None = None) -> _Shape:
    """What a field holds: a model, a discriminated union of models, a list; None: a value."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *meta = get_args(annotation)
        for m in meta:
            if isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
                discriminator = m.discriminator
        return _shape(inner, discriminator)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _shape(args[0], discriminator)
        if discriminator is None or not all(
                isinstance(a, type) and issubclass(a, BaseModel) for a in args):
            return None
        variants: dict[str, type[BaseModel]] = {}
        for a in args:
            tag = get_args(a.model_fields[discriminator].annotation)
            if get_origin(a.model_fields[discriminator].annotation) is Literal and tag:
                variants[str(tag[0])] = a
        return _Union(discriminator, variants)
    if origin is list:
        (item,) = get_args(annotation)
        return _List(_shape(item))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _Model(annotation)
    return None


def _field_shape(info: FieldInfo) -> _Shape:
    return _shape(info.annotation, info.discriminator if isinstance(info.discriminator, str)
                  else None)


def _model_of(node: Any, shape: _Shape) -> type[BaseModel] | None:
    """The model class of a dict ``node`` of this shape (a union's: from its discriminator)."""
    if isinstance(shape, _Model):
        return shape.cls
    if isinstance(shape, _Union) and isinstance(node, dict):
        return shape.variants.get(str(node.get(shape.discriminator)))
    return None


def _child_field(node: Any, shape: _Shape, key: str) -> FieldInfo | None:
    cls = _model_of(node, shape)
    return cls.model_fields.get(key) if cls is not None else None


_REQUIRED = object()


def _default_json(info: FieldInfo) -> Any:
    """The field's default as the JSON a user would write (only what the default sets), or
    ``_REQUIRED``."""
    if info.is_required():
        return _REQUIRED
    default = info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json", exclude_unset=True)
    if isinstance(default, list):
        return [d.model_dump(mode="json", exclude_unset=True) if isinstance(d, BaseModel)
                else copy.deepcopy(d) for d in default]
    return copy.deepcopy(default)


# Fields whose default (null) means another field of the same member: they start from it.
_INHERITED: dict[tuple[type[BaseModel], str], tuple[str, str]] = {
    (HiddenLayer, "init"): ("model", "init"),
}


# ---- placeholders ----------------------------------------------------------------------------


class _Missing(dict[str, Any]):
    """An object the member's spec leaves out, holding the values the axes set in it."""

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.axes: dict[str, tuple[str, int | None]] = {}  # key -> (axis path, axis index)
        self.base: Any = None  # set when an enclosing filled object already had this one


@dataclass
class _Pending:
    """An inherited placeholder, resolved last."""

    node: dict[str, Any]
    owner: type[BaseModel]
    key: str
    shape: _Shape
    start: Any


def _where(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def _axis_loc(axis: int | None) -> Loc:
    return ("axes", axis, "path") if axis is not None else ()


def assign(spec: dict[str, Any], path: str, value: Any, axis: int | None = None) -> None:
    """Set ``path`` to ``value`` in ``spec`` in place; objects it leaves out on the way become
    placeholders for :func:`resolve` (``axis``: the axis's index, for error locations)."""
    if path == DEPTH:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepError(f"model.depth must be an integer >= 1, got {value!r}",
                             _axis_loc(axis))
        model = spec.get("model")
        if not isinstance(model, dict):
            model = spec["model"] = _Missing(("model",))
        hidden = model.get("hidden") or [{}]
        model["hidden"] = [copy.deepcopy(hidden[0]) for _ in range(value)]
        return
    keys = path.split(".")
    node: Any = spec
    shape: _Shape = _Model(TrainingSpec)
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                what = (f"no list item {key}" if last
                        else f"{_where(tuple(keys[:i + 1]))} is not an item of the list")
                raise SweepError(f"{path}: {what}", _axis_loc(axis))
            if last:
                node[int(key)] = value
                return
            node, shape = node[int(key)], shape.item if isinstance(shape, _List) else None
            continue
        if not isinstance(node, dict):
            raise SweepError(f"{path}: {_where(tuple(keys[:i]))} is not an object",
                             _axis_loc(axis))
        if isinstance(node, _Missing):
            node.axes.setdefault(key, (path, axis))
        if last:
            node[key] = value
            return
        info = _child_field(node, shape, key)
        child_shape = _field_shape(info) if info is not None else None
        if node.get(key) is None:
            loc = (*keys[:i + 1],)
            if isinstance(child_shape, _List):  # a list is filled now: it is indexed next
                assert info is not None
                default = _default_json(info)
                node[key] = default if isinstance(default, list) else []
            elif isinstance(child_shape, _Model | _Union):
                node[key] = _Missing(loc)
            else:
                node[key] = [] if keys[i + 1].isdigit() else {}
        node, shape = node[key], child_shape


def resolve(spec: dict[str, Any]) -> None:
    """Replace the placeholders :func:`assign` left in ``spec`` by the objects the spec would
    use there, with the axis values on top (in place)."""
    inherited: list[_Pending] = []
    _walk(spec, _Model(TrainingSpec), inherited)
    for p in inherited:  # after everything else: they start from another field of the member
        own = p.start is None
        start = _inherited_start(spec, p) if own else p.start
        p.node[p.key] = _fill(p.node[p.key], p.shape, start, carry=own)
        _walk(p.node[p.key], p.shape, inherited)


def _inherited_start(spec: dict[str, Any], p: _Pending) -> Any:
    """The member's own value of the field ``p`` falls back to, or that field's default."""
    outer, name = _INHERITED[(p.owner, p.key)]
    holder = spec.get(outer)
    if isinstance(holder, dict) and isinstance(holder.get(name), dict):
        return copy.deepcopy(holder[name])
    outer_cls = _model_of(holder, _field_shape(TrainingSpec.model_fields[outer]))
    return _default_json((outer_cls or ModelSpec).model_fields[name])


def _holds_objects(shape: _Shape) -> bool:
    return isinstance(shape, _Model | _Union) or (
        isinstance(shape, _List) and _holds_objects(shape.item))


def _walk(node: Any, shape: _Shape, inherited: list[_Pending]) -> None:
    if isinstance(shape, _List):
        if isinstance(node, list) and _holds_objects(shape.item):  # not inline data's rows
            for item in node:
                _walk(item, shape.item, inherited)
        return
    cls = _model_of(node, shape)
    if cls is None or not isinstance(node, dict):
        return
    for key, child in list(node.items()):
        info = cls.model_fields.get(key)
        if info is None:
            continue  # validation names the unknown field
        child_shape = _field_shape(info)
        if isinstance(child, _Missing):
            if (cls, key) in _INHERITED:
                inherited.append(_Pending(node, cls, key, child_shape, child.base))
                continue
            start = child.base if child.base is not None else _default_json(info)
            child = node[key] = _fill(child, child_shape, start)
        _walk(child, child_shape, inherited)


def _first_axis(m: _Missing, keys: list[str]) -> tuple[str, Loc]:
    path, index = m.axes.get(keys[0], (_where(m.loc), None)) if keys else (_where(m.loc), None)
    return path, ("axes", index, "path") if index is not None else ()


def _overlay(start: dict[str, Any], m: _Missing) -> dict[str, Any]:
    out = copy.deepcopy(start)
    for key, value in m.items():
        if isinstance(value, _Missing) and isinstance(out.get(key), dict):
            value.base = out[key]
        out[key] = value
    return out


def _fill(m: _Missing, shape: _Shape, start: Any, carry: bool = False) -> dict[str, Any]:
    """The object at ``m.loc``: ``start`` (the one the spec would use) with ``m`` on top.

    Where the axes need another kind than ``start``'s, that kind starts from its own defaults;
    with ``carry`` (``start`` is the member's own object, not a default) it keeps the values
    of ``start`` that the new kind also has."""
    where = _where(m.loc)
    keys = list(m)
    if start is _REQUIRED:
        path, loc = _first_axis(m, keys)
        raise SweepError(f"axis {path!r}: the spec has no `{where}`, which has no default; add "
                         f"`{where}` to the base spec", loc)
    if not isinstance(shape, _Union):
        return _overlay(start if isinstance(start, dict) else {}, m)
    disc, variants = shape.discriminator, shape.variants
    start_kind = start.get(disc) if isinstance(start, dict) else None
    def switch(kind: Any) -> dict[str, Any]:
        cls = variants.get(str(kind))
        kept = ({k: v for k, v in start.items() if k in cls.model_fields}
                if carry and cls is not None and isinstance(start, dict) else {})
        return _overlay({**kept, disc: kind}, m)

    if disc in m:  # an axis picks the kind: the default object only if it is of that kind
        return _overlay(start, m) if start_kind == m[disc] else switch(m[disc])
    keys = [k for k in keys if k != disc]
    if start_kind in variants and all(k in variants[start_kind].model_fields for k in keys):
        return _overlay(start, m)
    fits = [t for t, c in variants.items() if all(k in c.model_fields for k in keys)]
    if len(fits) == 1:
        return switch(fits[0])
    path, loc = _first_axis(m, keys)
    fields = ", ".join(f"`{k}`" for k in keys)
    default = (f"; the {where} it would use ({disc} {start_kind!r}) has no {fields}"
               if start_kind is not None else "")
    if not fits:
        raise SweepError(f"axis {path!r}: no {where} {disc} has {fields} "
                         f"({disc}s: {', '.join(variants)})", loc)
    raise SweepError(f"axis {path!r}: the spec has no `{where}`{default}, and more than one "
                     f"{disc} has {fields} ({', '.join(fits)}): add `{where}.{disc}` to the "
                     f"base spec or as an axis", loc)
