"""Receiving a data set upload: a raw body or multipart/form-data, streamed chunk by chunk
into its parts (CSV parsed on the way, ``.npz``/``.npy`` written to staging files), with the
byte limit checked on Content-Length before reading and again on every chunk.

The body is never held whole in memory; parsing runs in the thread pool, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from app.errors import ProblemError
from app.uploads import CsvPart, FilePart, Format, UploadLimits, invalid, too_large

__all__ = ["Received", "receive_upload"]

# multipart form fields besides the file parts (each at most _FIELD_BYTES)
FORM_FIELDS = ("name", "task", "target", "format")
_FIELD_BYTES = 1024
_PART_HEADER_BYTES = 16 * 1024

_RAW_TYPES: dict[str, Format] = {"text/csv": "csv", "application/csv": "csv",
                                 "application/x-npz": "npz", "application/zip": "npz"}

Part = CsvPart | FilePart


@dataclass
class Received:
    """What a request carried: its form fields and file parts (``file``, or ``X`` and ``y``)."""

    format: Format
    parts: dict[str, Part]
    fields: dict[str, str] = field(default_factory=dict)


def _unsupported(media: str) -> ProblemError:
    return ProblemError(
        f"cannot read a data set from a {media or 'untyped'} body: send multipart/form-data "
        "(part `file`, or parts `X` and `y` for an .npy pair), text/csv, application/x-npz, "
        "or application/octet-stream with ?format=csv|npz", status=415,
        slug="unsupported-media-type")


def _format_of(value: str | None, what: str) -> Format | None:
    if value is None:
        return None
    if value not in ("csv", "npz", "npy"):
        raise invalid(f"{what} must be csv, npz or npy, not {value[:20]!r}", "format")
    return value  # type: ignore[return-value]


async def receive_upload(request: Request, *, limits: UploadLimits, format_param: str | None,
                         stage: Callable[[], Path]) -> Received:
    """Read the body into parts; ``stage()`` gives a fresh staging file (the caller removes
    them all, whatever happens)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large(limits.max_bytes)
    media, options = parse_options_header(request.headers.get("content-type", ""))
    media_type = media.decode("latin-1").lower()
    wanted = _format_of(format_param, "format")
    if media_type == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise invalid("multipart/form-data without a boundary")
        return await _receive_multipart(request, boundary, limits, wanted, stage)
    fmt = _RAW_TYPES.get(media_type)
    if fmt is None and media_type in ("application/octet-stream", ""):
        if not wanted:  # a documented media type, with its required parameter missing
            msg = (f"a {media_type or 'untyped'} body needs ?format=csv|npz (or send text/csv, "
                   "application/x-npz, or multipart/form-data)")
            raise ProblemError(msg, status=422, slug="invalid-dataset", errors=[
                {"loc": ["query", "format"], "msg": msg, "type": "missing"}])
        fmt = wanted
    if fmt is None:
        raise _unsupported(media_type)
    if fmt == "npy":
        raise invalid("an .npy pair needs two files: send multipart/form-data with parts X and y",
                      "format")
    part: Part = CsvPart(limits) if fmt == "csv" else FilePart(stage())
    try:
        await _pump(request, limits, part.write)
    finally:
        part.close()
    return Received(format=fmt, parts={"file": part})


async def _pump(request: Request, limits: UploadLimits, consume: Callable[[bytes], Any]) -> None:
    """Feed the body to ``consume`` chunk by chunk, counting bytes."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise too_large(limits.max_bytes)
            if chunk:
                await run_in_threadpool(consume, chunk)
    except ClientDisconnect:  # nobody to answer; the caller's staging files are removed
        raise ProblemError("the client disconnected before the upload was complete",
                           status=400, slug="upload-incomplete") from None


class _Form:
    """python-multipart callbacks: route each part's bytes to a file part or a form field."""

    def __init__(self, limits: UploadLimits, wanted: Format | None,
                 stage: Callable[[], Path]) -> None:
        self.limits, self.wanted, self.stage = limits, wanted, stage
        self.parts: dict[str, Part] = {}
        self.fields: dict[str, bytearray] = {}
        self.format: Format | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._field_name = bytearray()
        self._field_value = bytearray()
        self._current: Part | bytearray | None = None

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._header_bytes = {}, 0

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > _PART_HEADER_BYTES:
            raise invalid(f"a multipart part's headers exceed {_PART_HEADER_BYTES} bytes")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._field_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field_name).lower()] = bytes(self._field_value)
        self._field_name, self._field_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        if name in self.parts or name in self.fields:
            raise invalid(f"the form has part {name!r} twice", name)
        if name in FORM_FIELDS:
            self._current = self.fields.setdefault(name, bytearray())
        elif name in ("file", "X", "y"):
            self._current = self.parts[name] = self._file_part(name, filename)
        else:
            raise invalid(f"unexpected form part {name[:40]!r}: send `file` (CSV or .npz) or "
                          f"`X` and `y` (.npy), and optionally {', '.join(FORM_FIELDS)}", name)

    def _file_part(self, name: str, filename: str) -> Part:
        if name in ("X", "y"):
            fmt: Format | None = "npy"
        else:
            given = self.fields.get("format")
            fmt = self.wanted or _format_of(given.decode() if given else None, "format")
            suffix = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
            if fmt is None and suffix in ("csv", "npz"):
                fmt = suffix  # type: ignore[assignment]
            content_type = self._headers.get(b"content-type", b"").decode("latin-1").lower()
            fmt = fmt or _RAW_TYPES.get(content_type.split(";")[0].strip())
            if fmt is None:
                raise invalid("cannot tell the format of part `file`: name the file *.csv or "
                              "*.npz, give it a Content-Type, or pass ?format=csv|npz", "file")
            if fmt == "npy":
                raise invalid("an .npy pair is sent as two parts, X and y", "file")
        if self.format is not None and self.format != fmt:
            raise invalid("send either part `file` or parts `X` and `y`, not both", name)
        self.format = fmt
        return CsvPart(self.limits) if fmt == "csv" else FilePart(self.stage())

    def _data(self, data: bytes, start: int, end: int) -> None:
        if isinstance(self._current, bytearray):
            self._current += data[start:end]
            if len(self._current) > _FIELD_BYTES:
                raise invalid(f"a form field is longer than {_FIELD_BYTES} bytes")
        elif self._current is not None:
            self._current.write(data[start:end])

    def _end(self) -> None:
        if isinstance(self._current, CsvPart | FilePart):
            self._current.close()
        self._current = None

    def close(self) -> None:
        for part in self.parts.values():
            part.close()


async def _receive_multipart(request: Request, boundary: bytes, limits: UploadLimits,
                             wanted: Format | None, stage: Callable[[], Path]) -> Received:
    form = _Form(limits, wanted, stage)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        await _pump(request, limits, parser.write)
        parser.finalize()
    except MultipartParseError as exc:
        raise invalid(f"the multipart body is malformed ({exc})") from None
    finally:
        form.close()
    if form.format is None:
        raise invalid("the form has no data: send part `file` (CSV or .npz) or parts `X` and "
                      "`y` (.npy)")
    if form.format == "npy" and set(form.parts) != {"X", "y"}:
        raise invalid("an .npy pair needs both parts, X and y", "y" if "X" in form.parts else "X")
    fields = {}
    for key, raw in form.fields.items():
        try:
            fields[key] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid(f"form field {key!r} is not UTF-8 text", key) from None
    return Received(format=form.format, parts=form.parts, fields=fields)
