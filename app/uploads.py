"""Reading an uploaded data set: CSV parsed while it streams in, ``.npz``/``.npy`` read from a
staging file with every shape checked before its values are read, and the content checks all
formats share (numeric, finite, rectangular, targets that fit the task).

Nothing here touches the database or the blob store's keys: :mod:`app.datasets` owns those.
Every refusal is a :class:`~app.errors.ProblemError` naming the limit, line, row or column.
"""

from __future__ import annotations

import csv
import hashlib
import math
import zipfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt

from app.errors import ProblemError

__all__ = ["CsvPart", "FilePart", "Format", "Parsed", "UploadLimits", "check_arrays", "invalid",
           "limit_exceeded", "read_npy", "read_npz", "too_large"]

Format = Literal["csv", "npz", "npy"]


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_rows: int
    max_columns: int
    max_line_bytes: int
    max_values: int
    max_classes: int


def too_large(limit: int) -> ProblemError:
    return ProblemError(f"the upload is larger than {limit} bytes, the limit "
                        "GRADWATCH_MAX_UPLOAD_BYTES", status=413, slug="upload-too-large",
                        limit=limit, headers={"Connection": "close"})


def limit_exceeded(what: str, value: int, setting: str, limit: int) -> ProblemError:
    msg = f"{what} is {value}; the limit {setting} is {limit}"
    return ProblemError(msg, status=422, slug="limit-exceeded", limit=limit, value=value,
                        errors=[{"loc": ["body"], "msg": msg, "type": "limit_exceeded"}])


def invalid(msg: str, *loc: str | int) -> ProblemError:
    return ProblemError(msg, status=422, slug="invalid-dataset",
                        errors=[{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


@dataclass
class Parsed:
    """An upload's arrays before the task checks: float64 X plus its target column(s)."""

    X: npt.NDArray[Any]
    y: npt.NDArray[Any]
    feature_names: list[str] | None
    target_name: str | None
    dtype: str  # of the uploaded inputs


class FilePart:
    """A file part written to a staging file as it arrives, hashed on the way."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._file: IO[bytes] | None = path.open("wb")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self.sha256.update(chunk)
        self.size += len(chunk)
        self._file.write(chunk)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CsvPart:
    """A CSV file parsed line by line as it arrives: the header row, then numeric rows.

    Limits are checked on every line: line length (the header included), columns, rows and
    values; a bad cell is refused with its line number and column name.
    """

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.header: list[str] | None = None
        self.rows = 0
        self._values = array("d")
        self._pending = bytearray()
        self._line_no = 0

    def write(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.size += len(chunk)
        self._pending += chunk
        end = self._pending.rfind(b"\n")
        if end >= 0:  # the complete lines so far
            block = bytes(self._pending[:end])
            del self._pending[:end + 1]
            self._block(block.split(b"\n"))
        self._check_length(len(self._pending), self._line_no + 1)

    def _block(self, lines: list[bytes]) -> None:
        i = 0
        while self.header is None and i < len(lines):
            self._line(lines[i])
            i += 1
        rest = lines[i:]
        if rest and not self._fast(rest):
            for line in rest:  # the exact, line by line reading: it names what is wrong
                self._line(line)

    def _fast(self, lines: list[bytes]) -> bool:
        """Parse plain numeric rows with NumPy's C reader; False (nothing consumed) whenever
        anything is unusual, so that :meth:`_line` reads them and names the problem."""
        assert self.header is not None
        width = len(self.header)
        if max(map(len, lines)) > self.limits.max_line_bytes:
            return False
        try:
            text = b"\n".join(lines).decode("ascii")
            table = np.loadtxt(text.split("\n"), delimiter=",", dtype=np.float64,
                               comments=None, ndmin=2, quotechar=None)
        except (ValueError, UnicodeDecodeError):
            return False
        n = table.shape[0]
        if (n == 0 or table.shape[1] != width or self.rows + n > self.limits.max_rows
                or (self.rows + n) * width > self.limits.max_values
                or not np.isfinite(table).all()):
            return False
        self._values.frombytes(np.ascontiguousarray(table).tobytes())
        self.rows += n
        self._line_no += len(lines)
        return True

    def close(self) -> None:
        """Nothing to release (the last, unterminated line is read by :meth:`parsed`)."""

    def _check_length(self, n: int, line_no: int) -> None:
        if n > self.limits.max_line_bytes:
            what = "the header line" if self.header is None else f"line {line_no}"
            raise limit_exceeded(f"the length of {what} in bytes", n,
                                 "GRADWATCH_MAX_UPLOAD_LINE_BYTES", self.limits.max_line_bytes)

    def _line(self, raw: bytes) -> None:
        self._line_no += 1
        self._check_length(len(raw), self._line_no)
        try:
            text = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise invalid(f"line {self._line_no} is not UTF-8 text", "line", self._line_no
                          ) from None
        if self._line_no == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            return  # blank lines (a trailing newline) carry nothing
        try:
            cells = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            raise invalid(f"line {self._line_no} is not valid CSV ({exc})", "line",
                          self._line_no) from None
        if self.header is None:
            self._set_header(cells)
        else:
            self._row(cells)

    def _set_header(self, cells: list[str]) -> None:
        if len(cells) > self.limits.max_columns:
            raise limit_exceeded("the number of columns", len(cells),
                                 "GRADWATCH_MAX_UPLOAD_COLUMNS", self.limits.max_columns)
        names = [c.strip() for c in cells]
        if len(names) < 2:
            raise invalid("the header row must name at least 2 columns (inputs and a target), "
                          "separated by commas", "line", self._line_no)
        if any(not n for n in names):
            raise invalid(f"the header row has an empty column name (column "
                          f"{names.index('') + 1})", "line", self._line_no)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise invalid(f"the header row names column {dup!r} twice", "line", self._line_no)
        self.header = names

    def _row(self, cells: list[str]) -> None:
        assert self.header is not None
        width = len(self.header)
        if len(cells) != width:
            raise invalid(f"line {self._line_no} has {len(cells)} values but the header has "
                          f"{width} columns: every row must have one value per column",
                          "line", self._line_no)
        self.rows += 1
        if self.rows > self.limits.max_rows:
            raise limit_exceeded("the number of rows", self.rows, "GRADWATCH_MAX_UPLOAD_ROWS",
                                 self.limits.max_rows)
        if self.rows * width > self.limits.max_values:
            raise limit_exceeded("the number of values (rows x columns)", self.rows * width,
                                 "GRADWATCH_MAX_DATA_VALUES", self.limits.max_values)
        for j, cell in enumerate(cells):
            self._values.append(self._number(cell, j))

    def _number(self, cell: str, j: int) -> float:
        assert self.header is not None
        where = f"line {self._line_no}, column {self.header[j]!r}"
        loc = ("line", self._line_no, "column", self.header[j])
        if not cell.strip():
            raise invalid(f"{where} is empty: every cell must hold a finite number", *loc)
        try:
            value = float(cell)
        except ValueError:
            raise invalid(f"{where} holds {cell[:40]!r}, which is not a number", *loc) from None
        if not math.isfinite(value):
            raise invalid(f"{where} is {cell.strip()[:40]!r}: every value must be finite "
                          "(fill in or drop missing values before uploading)", *loc)
        return value

    def parsed(self, target: str | None) -> Parsed:
        """Inputs and the target column (default: the last one), once the body has ended."""
        if self._pending:
            last, self._pending = bytes(self._pending), bytearray()
            self._line(last)
        if self.header is None:
            raise invalid("the file is empty: expected a header row and data rows")
        table = np.frombuffer(self._values, dtype=np.float64).reshape(self.rows, len(self.header))
        name = target if target is not None else self.header[-1]
        if name not in self.header:
            shown = ", ".join(repr(h) for h in self.header[:20])
            raise invalid(f"target column {name!r} is not in the header ({shown}"
                          f"{', ...' if len(self.header) > 20 else ''})", "target")
        j = self.header.index(name)
        keep = [i for i in range(len(self.header)) if i != j]
        return Parsed(X=table[:, keep], y=table[:, j].copy(),
                      feature_names=[self.header[i] for i in keep], target_name=name,
                      dtype="float64")


# --------------------------------------------------------------------------------------------
# .npy / .npz: the header is checked before any value is read (a zip bomb stops there)
# --------------------------------------------------------------------------------------------


def read_npy(stream: IO[bytes], name: str, limits: UploadLimits) -> npt.NDArray[Any]:
    """One ``.npy`` array: numeric dtype, 1-D or 2-D, within the limits, values read last."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)  # type: ignore[no-untyped-call]
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = reader(stream, max_header_size=10_000)  # type: ignore[operator]
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise invalid(f"{name} is not a .npy array ({exc})", name) from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise invalid(f"{name} has dtype {dtype}: only numbers (bool, int, float) are accepted",
                      name)
    if len(shape) not in (1, 2):
        raise invalid(f"{name} has {len(shape)} dimensions; expected 2 (rows, columns) for X "
                      "and 1 or 2 for y", name)
    rows = shape[0]
    cols = shape[1] if len(shape) == 2 else 1
    if rows > limits.max_rows:
        raise limit_exceeded(f"the number of rows of {name}", rows, "GRADWATCH_MAX_UPLOAD_ROWS",
                             limits.max_rows)
    if cols > limits.max_columns:
        raise limit_exceeded(f"the number of columns of {name}", cols,
                             "GRADWATCH_MAX_UPLOAD_COLUMNS", limits.max_columns)
    if rows * cols > limits.max_values:
        raise limit_exceeded(f"the number of values of {name}", rows * cols,
                             "GRADWATCH_MAX_DATA_VALUES", limits.max_values)
    expected = rows * cols * dtype.itemsize
    data = stream.read(expected)
    if len(data) != expected:
        raise invalid(f"{name} is truncated: its header promises {expected} bytes of values, "
                      f"the file holds {len(data)}", name)
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def read_npz(path: Path, limits: UploadLimits) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """``X`` and ``y`` of an ``.npz`` archive (other members are ignored)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            arrays = []
            for name in ("X", "y"):
                if f"{name}.npy" not in members:
                    raise invalid(f"the .npz archive has no array {name!r} (it has "
                                  f"{sorted(m.removesuffix('.npy') for m in members)[:10]})",
                                  name)
                with archive.open(f"{name}.npy") as member:
                    arrays.append(read_npy(member, name, limits))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError) as exc:
        raise invalid(f"the file is not a valid .npz archive ({exc})") from None
    return arrays[0], arrays[1]


# --------------------------------------------------------------------------------------------
# Content checks shared by every format
# --------------------------------------------------------------------------------------------


def _first_non_finite(a: npt.NDArray[Any]) -> tuple[int, int] | None:
    with np.errstate(all="ignore"):
        bad = ~np.isfinite(a.reshape(len(a), -1))
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    return int(row), int(col)


def check_arrays(X: npt.NDArray[Any], y: npt.NDArray[Any], task: str, limits: UploadLimits
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any], int | None]:
    """Normalised ``(X float64 (n, d), y, n_classes)``: int64 labels (n,) or float64 targets
    (n, k); a 422 naming the row and column of the first bad value."""
    if X.ndim != 2:
        raise invalid(f"X must be 2-D (rows, columns); it has shape {X.shape}", "X")
    n, d = X.shape
    if n < 2:
        raise invalid(f"a data set needs at least 2 rows; this one has {n}", "X")
    if d < 1:
        raise invalid("X has no columns", "X")
    if len(y) != n or y.ndim > 2:
        raise invalid(f"X has {n} rows but y has shape {y.shape}", "y")
    Xf = np.ascontiguousarray(X, dtype=np.float64)
    if (bad := _first_non_finite(Xf)) is not None:
        raise invalid(f"X row {bad[0]}, column {bad[1]} is {Xf[bad]}: every value must be "
                      "finite", "X", *bad)
    with np.errstate(all="ignore"):
        yf = np.asarray(y, dtype=np.float64)
    if (bad := _first_non_finite(yf)) is not None:
        raise invalid(f"y row {bad[0]} is {yf.reshape(n, -1)[bad]}: every target must be "
                      "finite", "y", bad[0])
    if task == "regression":
        return Xf, np.ascontiguousarray(yf.reshape(n, -1)), None
    if yf.ndim == 2 and yf.shape[1] != 1:
        raise invalid(f"classification needs one label per row; y has {yf.shape[1]} columns "
                      "(use task=regression for several targets)", "y")
    yf = yf.reshape(n)
    fractional = np.flatnonzero(yf != np.round(yf))
    if fractional.size:
        i = int(fractional[0])
        raise invalid(f"y row {i} is {yf[i]}: classification labels must be integers 0..K-1 "
                      "(use task=regression for continuous targets)", "y", i)
    if yf.min() < 0:
        i = int(np.argmin(yf))
        raise invalid(f"y row {i} is {yf[i]:g}: class labels must be >= 0", "y", i)
    n_classes = int(yf.max()) + 1
    if n_classes > limits.max_classes:
        raise limit_exceeded("the number of classes (max label + 1)", n_classes,
                             "GRADWATCH_MAX_UPLOAD_CLASSES", limits.max_classes)
    labels = yf.astype(np.int64)
    if np.unique(labels).size < 2:
        raise invalid("classification needs at least 2 distinct labels", "y")
    return Xf, labels, max(n_classes, 2)
