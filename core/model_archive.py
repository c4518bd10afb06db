"""The model file's archive: its format marker, its JSON entries and its arrays, read safely.

A model file is an ``.npz`` (no pickles) that names itself (``format`` = :data:`FORMAT`,
``format_version`` = :data:`FORMAT_VERSION`) and carries JSON documents as UTF-8 bytes;
:func:`open_archive`, :func:`check_format`, :func:`decode_json` and :func:`read_array` read
it, turning anything that is not an intact gradwatch model file into :class:`ModelFileError`,
and :func:`read_info` reads a file's ``info`` without its parameters. What the entries mean,
and :class:`~core.model_io.Model` built from them, is :mod:`core.model_io`, which re-exports
these names.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import IO, Any

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "check_format",
    "decode_json",
    "json_bytes",
    "open_archive",
    "read_array",
    "read_info",
]

Array = np.ndarray
FORMAT = "gradwatch-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """The file is not a gradwatch model, is damaged, or does not fit its own spec."""


def json_bytes(obj: Any) -> Array:
    return np.frombuffer(json.dumps(obj, allow_nan=False).encode(), dtype=np.uint8)


def read_info(file: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
    """The ``info`` of a model file (``which``, ``finite``, ``non_finite``, ``task``, ...),
    without reading its parameters."""
    with open_archive(file) as npz:
        check_format(npz)
        return decode_json(npz, "info_json")


def open_archive(file: str | os.PathLike[str] | IO[bytes]) -> np.lib.npyio.NpzFile:
    try:
        npz = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"not a gradwatch model file (not an .npz archive: {exc})"
                             ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ModelFileError("not a gradwatch model file (a single .npy array, not an .npz)")
    return npz


def read_array(npz: Any, name: str) -> Array:
    try:
        a: Array = npz[name]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelFileError(f"the model file is damaged: cannot read {name!r} ({exc})"
                             ) from None
    if a.dtype.kind != "f":
        raise ModelFileError(f"{name} holds {a.dtype} values; a model holds floats")
    return a


def check_format(npz: Any) -> None:
    if "format" not in npz.files or "format_version" not in npz.files:
        raise ModelFileError("not a gradwatch model file (no 'format' entry); save one with "
                             "core.save_model or download it from GET /v1/jobs/{id}/model")
    try:
        fmt, version = str(npz["format"]), int(npz["format_version"])
    except (ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"the model file is damaged ({exc})") from None
    if fmt != FORMAT:
        raise ModelFileError(f"not a gradwatch model file (format {fmt[:40]!r})")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"model format version {version}; this gradwatch reads version "
                             f"{FORMAT_VERSION} (use the gradwatch that wrote it)")


def decode_json(npz: Any, name: str) -> dict[str, Any]:
    try:
        raw = npz[name]
        if raw.dtype != np.uint8:
            raise ValueError(f"{name} is {raw.dtype}, not uint8")
        doc = json.loads(raw.tobytes().decode())
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ModelFileError(f"the model file is damaged: cannot read {name!r} ({exc})"
                             ) from None
    if not isinstance(doc, dict):
        raise ModelFileError(f"the model file is damaged: {name!r} is not a JSON object")
    return doc
