"""history store: chunks in the per-layer GWH2 layout; PostgreSQL stores them uncompressed

GWH2 (app/history_store.py) keeps each layer's series in a zstd frame of its own, so a read of
one layer decompresses one frame in eleven. The upgrade rewrites the GWH1 chunks of earlier
runs as GWH2 (the reader accepts both, so this only gives old histories the faster reads);
the downgrade rewrites every chunk as GWH1, the only layout older code reads. Values are
re-encoded from their decoded bits: NaN, +-Inf and -0.0 are kept exactly.

PostgreSQL: the chunks are zstd already, yet with the default EXTENDED storage the server
tried pglz on every 200 KiB chunk before storing it uncompressed (3.5 ms per GWH2 insert
against 1.1 ms with pglz off, measured). EXTERNAL storage skips that and lets substring()
read a slice without fetching the whole value. The rollups are small: unchanged.

Revision ID: 0021_store2
Revises: 0020_store
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.history_store import recode_chunk

revision: str = "0021_store2"
down_revision: str | None = "0020_store"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 64  # chunks per round trip (each up to a few hundred KiB)


def _recode(*, framed: bool) -> None:
    """Rewrite every chunk not yet in the target layout, in key order, a batch at a time."""
    bind = op.get_bind()
    last = (-1, -1)
    select = sa.text(
        "SELECT job_key, first_step, data FROM history_chunks "
        "WHERE job_key > :k OR (job_key = :k AND first_step > :f) "
        "ORDER BY job_key, first_step LIMIT :n")
    update = sa.text("UPDATE history_chunks SET data = :d WHERE job_key = :k AND first_step = :f")
    while True:
        rows = bind.execute(select, {"k": last[0], "f": last[1], "n": _BATCH}).all()
        if not rows:
            return
        changed = []
        for key, first, data in rows:
            data = bytes(data)
            new = recode_chunk(data, framed=framed)
            if new != data:
                changed.append({"k": key, "f": first, "d": new})
        if changed:
            bind.execute(update, changed)
        last = (rows[-1][0], rows[-1][1])


def _storage(kind: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE history_chunks ALTER COLUMN data SET STORAGE {kind}")


def upgrade() -> None:
    _storage("EXTERNAL")
    _recode(framed=True)


def downgrade() -> None:
    _storage("EXTENDED")
    _recode(framed=False)
