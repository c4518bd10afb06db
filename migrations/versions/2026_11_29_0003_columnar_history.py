"""columnar history: per-job integer key, one compact chunk per flush, rollups of all series

Converts every row-format history (step_metrics, layer_stats, series_rollups) into
history_keys / history_chunks / history_rollups (format: app/history_store.py) and drops the
row tables; the downgrade rebuilds the rows and the old per-layer rollups from the chunks.

Revision ID: 0003_columnar
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op

from app.db import NonFiniteFloat
from app.downsampling import LAYER_METRICS, STEP_METRICS, RollupBuilder
from app.history_store import HistoryWriter, StepColumns, decode_chunk, n_series

revision: str = "0003_columnar"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WINDOW = 8192  # steps per converted chunk
TERMINAL = ("succeeded", "failed", "cancelled")
N_STEP, N_LAYER = len(STEP_METRICS), len(LAYER_METRICS)


def _job_fk() -> sa.ForeignKey:
    return sa.ForeignKey("jobs.id", name=None, ondelete="CASCADE")


def _with_jobs(metadata: sa.MetaData) -> sa.MetaData:
    """``metadata`` knowing the jobs table (for the foreign keys; it is never created here)."""
    if "jobs" not in metadata.tables:
        sa.Table("jobs", metadata, sa.Column("id", sa.String(36), primary_key=True))
    return metadata


def _row_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The row format of revision 0002 (NonFiniteFloat: NaN survives SQLite both ways)."""
    metadata = _with_jobs(metadata)
    steps = sa.Table(
        "step_metrics", metadata,
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        *(sa.Column(m, NonFiniteFloat(), nullable=False) for m in STEP_METRICS),
        sa.Column("clipped", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "step", name="pk_step_metrics"),
        sqlite_with_rowid=False)
    layers = sa.Table(
        "layer_stats", metadata,
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        *(sa.Column(m, NonFiniteFloat(), nullable=i >= 4) for i, m in enumerate(LAYER_METRICS)),
        sa.PrimaryKeyConstraint("job_id", "layer", "step", name="pk_layer_stats"),
        sqlite_with_rowid=False)
    rollups = sa.Table(
        "series_rollups", metadata,
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("block", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "level", "layer", "block", name="pk_series_rollups"),
        sqlite_with_rowid=False)
    return steps, layers, rollups


def _store_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    metadata = _with_jobs(metadata)
    keys = sa.Table(
        "history_keys", metadata,
        sa.Column("key", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("n_layers", sa.SmallInteger(), nullable=False),
        sa.UniqueConstraint("job_id", name="uq_history_keys_job_id"))
    key_fk = sa.ForeignKey("history_keys.key", ondelete="CASCADE")
    chunks = sa.Table(
        "history_chunks", metadata,
        sa.Column("job_key", sa.Integer(), key_fk, nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("n_steps", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_key", "first_step", name="pk_history_chunks"),
        sqlite_with_rowid=False)
    rollups = sa.Table(
        "history_rollups", metadata,
        sa.Column("job_key", sa.Integer(), sa.ForeignKey("history_keys.key", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("block", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_key", "level", "block", name="pk_history_rollups"),
        sqlite_with_rowid=False)
    return keys, chunks, rollups


def _create(tables: Sequence[sa.Table]) -> None:
    bind = op.get_bind()
    for table in tables:
        table.create(bind)


# --------------------------------------------------------------------------------------------
# rows -> chunks
# --------------------------------------------------------------------------------------------


def _windows(conn: sa.Connection, steps_t: sa.Table, layers_t: sa.Table, job_id: str,
             n_layers: int) -> Iterator[StepColumns]:
    """The job's rows, WINDOW steps at a time, as columns."""
    lo = 0
    while True:
        rows = conn.execute(
            sa.select(steps_t.c.step, steps_t.c.epoch, steps_t.c.clipped,
                      *(steps_t.c[m] for m in STEP_METRICS))
            .where(steps_t.c.job_id == job_id, steps_t.c.step >= lo)
            .order_by(steps_t.c.step).limit(WINDOW)).all()
        if not rows:
            return
        n = len(rows)
        step_arr = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.full((n, n_series(n_layers)), np.nan)
        present = np.zeros(values.shape, dtype=bool)
        values[:, :N_STEP] = np.array([r[3:] for r in rows], dtype=np.float64)
        present[:, :N_STEP] = True
        layer_rows = conn.execute(
            sa.select(layers_t.c.step, layers_t.c.layer, *(layers_t.c[m] for m in LAYER_METRICS))
            .where(layers_t.c.job_id == job_id,
                   layers_t.c.step.between(int(step_arr[0]), int(step_arr[-1])))).all()
        for row in layer_rows:
            i = int(np.searchsorted(step_arr, row[0]))
            if i >= n or step_arr[i] != row[0]:
                continue
            base = N_STEP + row[1] * N_LAYER
            for j, v in enumerate(row[2:]):
                if v is not None:
                    values[i, base + j], present[i, base + j] = v, True
        yield StepColumns(n_layers, step_arr,
                          np.array([r[1] for r in rows], dtype=np.int64),
                          np.array([bool(r[2]) for r in rows], dtype=bool), values, present)
        lo = int(step_arr[-1]) + 1


def upgrade() -> None:
    conn = op.get_bind()
    old = _row_tables(sa.MetaData())
    keys_t, chunks_t, rollups_t = _store_tables(sa.MetaData())
    _create([keys_t, chunks_t, rollups_t])
    steps_t, layers_t, _ = old
    jobs = conn.execute(sa.text(
        "SELECT j.id, j.status, (SELECT max(l.layer) FROM layer_stats l WHERE l.job_id = j.id) "
        "FROM jobs j WHERE EXISTS (SELECT 1 FROM step_metrics s WHERE s.job_id = j.id)")).all()
    for job_id, status, max_layer in jobs:
        n_layers = 0 if max_layer is None else int(max_layer) + 1
        key = conn.execute(sa.insert(keys_t).values(job_id=job_id, n_layers=n_layers)
                           .returning(keys_t.c.key)).scalar_one()
        writer = HistoryWriter(n_layers)
        for cols in _windows(conn, steps_t, layers_t, job_id, n_layers):
            _store(conn, chunks_t, rollups_t, key, writer.chunk_columns(cols))
        if status in TERMINAL:  # a finished run's worker closed every block
            _store(conn, chunks_t, rollups_t, key, writer.chunk_columns(None, final=True))
    for table in ("series_rollups", "layer_stats", "step_metrics"):
        op.drop_table(table)


def _store(conn: sa.Connection, chunks_t: sa.Table, rollups_t: sa.Table, key: int,
           chunk: Any) -> None:
    if chunk.data is not None:
        conn.execute(sa.insert(chunks_t).values(
            job_key=key, first_step=chunk.first_step, last_step=chunk.last_step,
            n_steps=chunk.n_steps, data=chunk.data))
    if chunk.rollups:
        conn.execute(sa.insert(rollups_t), [
            {"job_key": key, "level": lv, "block": b, "data": d} for lv, b, d in chunk.rollups])


# --------------------------------------------------------------------------------------------
# chunks -> rows
# --------------------------------------------------------------------------------------------


def _old_rollup_rows(job_id: str, builder_blocks: Any, n_layers: int) -> list[dict[str, Any]]:
    """Revision 0002's rollups: per (level, layer, block) a little-endian float64
    ``(n_metrics, 7)`` array (count, min step/value, max step/value, nf step/value)."""
    rows: list[dict[str, Any]] = []
    groups = [(-1, slice(0, N_STEP))] + [
        (ly, slice(N_STEP + ly * N_LAYER, N_STEP + (ly + 1) * N_LAYER)) for ly in range(n_layers)]
    for rb in builder_blocks:
        s = rb.summary
        for layer, cols in groups:
            has_data = s.count[:, cols].sum(axis=1) > 0
            for b in np.flatnonzero(has_data):
                table = np.stack([np.asarray(f[b, cols], dtype=np.float64) for f in (
                    s.count, s.min_step, s.min_value, s.max_step, s.max_value, s.nf_step,
                    s.nf_value)], axis=1)
                rows.append({"job_id": job_id, "level": rb.level, "layer": layer,
                             "block": int(rb.block[b]), "data": table.astype("<f8").tobytes()})
    return rows


def downgrade() -> None:
    conn = op.get_bind()
    steps_t, layers_t, rollups_old = _row_tables(sa.MetaData())
    _, chunks_t, _ = _store_tables(sa.MetaData())
    _create([steps_t, layers_t, rollups_old])
    keys = conn.execute(sa.text(
        "SELECT k.key, k.job_id, k.n_layers, j.status FROM history_keys k "
        "JOIN jobs j ON j.id = k.job_id")).all()
    for key, job_id, n_layers, status in keys:
        builder = RollupBuilder(n_series(n_layers))
        firsts = conn.execute(sa.select(chunks_t.c.first_step).where(chunks_t.c.job_key == key)
                              .order_by(chunks_t.c.first_step)).scalars().all()
        for first in firsts:
            data = conn.execute(sa.select(chunks_t.c.data).where(
                chunks_t.c.job_key == key, chunks_t.c.first_step == first)).scalar_one()
            d = decode_chunk(bytes(data))
            vals = [[v if p else None for v, p in zip(vr, pr, strict=True)]
                    for vr, pr in zip(d.values.tolist(), d.present.tolist(), strict=True)]
            steps = d.steps.tolist()
            conn.execute(sa.insert(steps_t), [
                {"job_id": job_id, "step": s, "epoch": int(e), "clipped": bool(c),
                 **dict(zip(STEP_METRICS, v[:N_STEP], strict=True))}
                for s, e, c, v in zip(steps, d.epochs, d.clipped, vals, strict=True)])
            if n_layers:
                conn.execute(sa.insert(layers_t), [
                    {"job_id": job_id, "layer": ly, "step": s, **dict(zip(
                        LAYER_METRICS, v[N_STEP + ly * N_LAYER:N_STEP + (ly + 1) * N_LAYER],
                        strict=True))}
                    for s, v in zip(steps, vals, strict=True) for ly in range(n_layers)])
            blocks = builder.add(d.steps, d.values, d.present)
            rows = _old_rollup_rows(job_id, blocks, n_layers)
            if rows:
                conn.execute(sa.insert(rollups_old), rows)
        if status in TERMINAL:
            rows = _old_rollup_rows(job_id, builder.finish(), n_layers)
            if rows:
                conn.execute(sa.insert(rollups_old), rows)
    for table in ("history_rollups", "history_chunks", "history_keys"):
        op.drop_table(table)
