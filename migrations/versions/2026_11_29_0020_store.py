"""history store: history_chunks as a rowid table on SQLite

A chunk row is large (a flush of every series: tens to hundreds of KiB). In a WITHOUT ROWID
table SQLite keeps the whole row in the primary-key b-tree, so finding or scanning chunks by
step reads their overflow pages: listing a 100k-step job's 200 chunk spans took ~9 ms, finding
one chunk ~1 ms. As a rowid table the spans and keys sit in small index and leaf cells (~0.05
ms). PostgreSQL stores rows in a heap either way: nothing changes there. The bytes of the
chunks are untouched (format: app/history_store.py).

Revision ID: 0020_store
Revises: 0018_datasets
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_store"
down_revision: str | None = "0018_datasets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _chunks_table(name: str, *, rowid: bool) -> sa.Table:
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("job_key", sa.Integer(), sa.ForeignKey("history_keys.key", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("n_steps", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_key", "first_step", name="pk_history_chunks"),
        sqlite_with_rowid=rowid)


def _rebuild(*, rowid: bool) -> None:
    """Copy history_chunks into a table of the other kind and swap it in (SQLite only)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # the history_keys table must be known to the new table's metadata for its foreign key
    new = _chunks_table("history_chunks_new", rowid=rowid)
    sa.Table("history_keys", new.metadata, sa.Column("key", sa.Integer(), primary_key=True))
    new.create(bind)
    op.execute("INSERT INTO history_chunks_new (job_key, first_step, last_step, n_steps, data) "
               "SELECT job_key, first_step, last_step, n_steps, data FROM history_chunks")
    op.drop_table("history_chunks")
    op.rename_table("history_chunks_new", "history_chunks")


def upgrade() -> None:
    _rebuild(rowid=True)


def downgrade() -> None:
    _rebuild(rowid=False)
