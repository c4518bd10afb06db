"""Cursors of paged history reads: opaque to clients, validated on the way back in.

A cursor names the next step to read and the last step of the paged read (fixed when the
first page was served, so a running job's new steps do not stretch a read under way), plus a
digest of the query it belongs to (job, endpoint, layer, metrics, max_points, requested
range): a cursor handed to another query is refused instead of silently reading the wrong
thing. Every integer in it is checked against the 32-bit step columns.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from app.errors import SpecValidationError

__all__ = ["MAX_CURSOR_LENGTH", "HistoryCursor", "query_digest"]

_VERSION = 1
_LAYOUT = struct.Struct(">BII8s")  # version, next step, last step, query digest
_MAX_STEP = 2**31 - 1
#: the encoded length of every cursor (a longer one is refused before decoding)
MAX_CURSOR_LENGTH = len(base64.urlsafe_b64encode(bytes(_LAYOUT.size)).rstrip(b"="))


def query_digest(*parts: str | int | Sequence[str] | None) -> bytes:
    """8 bytes that tell one query from another (not a secret: a checksum of intent)."""
    text = repr([list(p) if isinstance(p, tuple | list) else p for p in parts])
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def _invalid(why: str) -> SpecValidationError:
    msg = f"cursor is not valid ({why}): pass the next_cursor of a previous page unchanged, " \
          "with the same query parameters"
    return SpecValidationError(msg, slug="invalid-cursor", errors=[
        {"loc": ["query", "cursor"], "msg": msg, "type": "value_error"}])


@dataclass(frozen=True)
class HistoryCursor:
    """Where the next page of a paged history read starts, and where the read ends."""

    next_step: int
    last_step: int
    digest: bytes

    def encode(self) -> str:
        raw = _LAYOUT.pack(_VERSION, self.next_step, self.last_step, self.digest)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, digest: bytes) -> HistoryCursor:
        """The cursor in ``text``, or a 422 saying it is not one of ``digest``'s query."""
        if len(text) != MAX_CURSOR_LENGTH or not text.isascii():
            raise _invalid("wrong length")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, next_step, last_step, got = _LAYOUT.unpack(raw)
        except (binascii.Error, ValueError, struct.error):
            raise _invalid("not a cursor") from None
        if version != _VERSION:
            raise _invalid(f"version {version}")
        if not 0 <= next_step <= last_step <= _MAX_STEP:
            raise _invalid("steps out of range")
        if got != digest:
            raise _invalid("it belongs to another query")
        return cls(next_step, last_step, digest)
