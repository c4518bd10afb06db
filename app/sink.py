"""The worker's sink: a run's telemetry into the database, in short batched transactions."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import counters, webhooks
from app.db import retry_on_locked, unit_of_work
from app.heartbeat import Heartbeat
from app.history_store import HistoryWriter, StepColumns
from app.jsonutil import encode_non_finite
from app.lifecycle import progress_dict
from app.repositories import Claim, EventRepository, HistoryRepository, JobLostError, JobRepository
from core.telemetry import EpochRecord, NonFiniteEvent, StepBlock, StepRecord, StopReason

__all__ = ["DatabaseSink", "latest_figures"]

log = logging.getLogger(__name__)


def latest_figures(cols: StepColumns) -> dict[str, Any]:
    """``latest`` of a job: the figures of its most recent recorded step (the last of
    ``cols``). ``step`` is that step's index (steps count from 0), so it is
    ``progress.step - 1`` when the last completed step was recorded."""
    row, present = cols.values[-1], cols.present[-1]
    vals = [v if p else None for v, p in zip(row.tolist(), present.tolist(), strict=True)]
    figures: dict[str, Any] = encode_non_finite({
        "step": int(cols.steps[-1]), "loss": vals[0], "grad_norm": vals[1],
        "clipped_grad_norm": vals[2], "lr": vals[3], "layer_grad_norms": vals[4::8],
    })
    return figures


def _never() -> bool:
    return False


class DatabaseSink:
    """A :class:`core.telemetry.BlockSink` that batch-inserts records every N steps or T seconds.

    The trainer hands it blocks of rows (:meth:`write_block`), stored as they come (no
    per-record conversion); :meth:`write_steps` takes StepRecords (other producers).

    Each flush is one short transaction: the records as one chunk, the completed rollup blocks, progress
    and heartbeat, a (throttled) progress event; it reads the cancel flag, which
    :meth:`should_stop` then reports, so a cancel is honoured within one flush. The first
    non-finite value is the trainer's (:meth:`write_non_finite`), stored with the next flush,
    so the live value is the final one.
    """

    def __init__(self, job_id: str, factory: sessionmaker[Session], *, total_steps: int,
                 flush_every: int = 100, flush_interval: float = 1.0,
                 progress_interval: float = 1.0, claim: Claim | None = None,
                 heartbeat: Heartbeat | None = None,
                 handback_due: Callable[[], bool] = _never) -> None:
        self.job_id = job_id
        self.factory = factory
        self.claim = claim
        self.heartbeat = heartbeat
        self.handback_due = handback_due
        self.lost = False  # the job no longer runs under our claim: write nothing more
        self.handed_back = False  # the worker is shutting down: the job goes back to the queue
        self.total_steps = total_steps
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.progress_interval = progress_interval
        self.steps_completed = 0
        self.first_non_finite: dict[str, Any] | None = None
        self.cancelled = False
        self.rows_written = 0
        self._steps: list[StepRecord] = []
        self._blocks: list[StepColumns] = []
        self._buffered = 0  # steps in _steps and _blocks
        self._epochs: list[EpochRecord] = []
        self._alerts: list[dict[str, Any]] = []
        self._writer = HistoryWriter()
        self._last_flush = time.monotonic()
        self._last_progress_event = 0.0
        self._latest: dict[str, Any] | None = None
        self._key: int | None = None  # the job's history key, once a flush committed it
        self._pending_rows = 0  # rows the flush being written holds
        self._final_write: Callable[[Session], tuple[bool, int | None]] | None = None
        self._final_counted = False

    # ---- Sink protocol ----
    def write_steps(self, records: list[StepRecord]) -> None:
        self._steps.extend(records)
        self._buffered += len(records)
        self._maybe_flush()

    def write_block(self, block: StepBlock) -> None:
        """Rows of emitted steps as arrays (the trainer's preallocated blocks)."""
        self._blocks.append(StepColumns.from_block(block))
        self._buffered += len(block)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (self._buffered >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_interval):
            self.flush()

    def write_epoch(self, record: EpochRecord) -> None:
        self._epochs.append(record)

    def write_alert(self, finding: Any) -> None:
        """An online-monitor finding: stored as an ``alert`` event right away, with the
        ``attempt`` (the run of the job) that saw it."""
        if hasattr(finding, "model_dump_json"):
            data = json.loads(finding.model_dump_json())
        elif isinstance(finding, dict):
            data = encode_non_finite(finding)
        else:
            data = {"message": str(finding)}
        if self.claim is not None:  # which run of the job saw it (a re-queued job runs again)
            data["attempt"] = self.claim.attempt
        self._alerts.append(data)
        self.flush()

    def write_non_finite(self, event: NonFiniteEvent) -> None:
        """The trainer located the run's first non-finite value."""
        if self.first_non_finite is None:
            self.first_non_finite = {"step": event.step, "layer": event.layer,
                                     "tensor": event.tensor, "value": event.value}

    def should_stop(self) -> StopReason | None:
        if self.cancelled:
            return "cancelled"
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            self.lost = True
        if self.lost:
            return "cancelled"
        if self.handback_due():
            self.handed_back = True
            return "cancelled"
        return None

    @property
    def given_up(self) -> bool:
        """True when this run's records must not be stored any more."""
        return self.lost or self.handed_back

    # ---- flushing ----
    def close(self, session: Session | None = None) -> None:
        """Flush what is buffered and close every open rollup block; with ``session``, in a
        savepoint of the caller's transaction (the caller commits; called again, e.g. when
        the caller retries its transaction, it writes the same records again)."""
        if session is None:
            self.flush(final=True)
            return
        if self._final_write is None:
            self._final_write = self._prepare(final=True)
        if self._final_write is None:  # given up: nothing to write
            return
        savepoint = session.begin_nested()
        try:
            cancel, _ = self._final_write(session)
        except JobLostError:
            savepoint.rollback()
            self._lose()
            return
        savepoint.commit()
        # the caller's transaction may still fail and be retried: the key stays unknown (the
        # retry looks it up again) and the rows count once
        self.cancelled = cancel or self.cancelled
        if not self._final_counted:
            self._final_counted = True
            self.rows_written += self._pending_rows

    def flush(self, *, final: bool = False) -> None:
        write = self._prepare(final=final)
        if write is None:
            return

        def own_transaction() -> tuple[bool, int | None]:
            with unit_of_work(self.factory) as session:
                return write(session)

        try:
            cancel, key = retry_on_locked(own_transaction)
        except JobLostError:
            self._lose()
            return
        self._written(cancel, key)

    def _lose(self) -> None:
        log.warning("job %s is no longer ours (%s): its run stops unrecorded",
                    self.job_id, self.claim)
        self.lost = True

    def _written(self, cancel: bool, key: int | None) -> None:
        """After a flush's transaction: the cancel flag read and the history key created."""
        self.cancelled = cancel or self.cancelled
        if key is not None:
            self._key = key
        self.rows_written += self._pending_rows

    def _prepare(self, *, final: bool
                 ) -> Callable[[Session], tuple[bool, int | None]] | None:
        """Take what is buffered; the write of it into a session (None once given up)."""
        records, blocks, epochs, alerts = self._steps, self._blocks, self._epochs, self._alerts
        self._steps, self._blocks, self._epochs, self._alerts = [], [], [], []
        self._buffered = 0
        self._last_flush = time.monotonic()
        if self.given_up:
            return None
        if records:
            n_layers = self._writer.n_layers
            blocks.append(StepColumns.from_records(
                records, len(records[0].layers) if n_layers is None else n_layers))
        cols = StepColumns.concat(blocks) if blocks else None
        chunks = self._writer.chunks_of(cols, final=final)
        n_layers = chunks[0].n_layers
        epoch_rows = [{
            "job_id": self.job_id, "epoch": e.epoch, "step": e.step, "train_loss": e.train_loss,
            "val_loss": e.val_loss, "val_accuracy": e.val_accuracy,
            "train_accuracy": e.train_accuracy} for e in epochs]
        n_steps = 0 if cols is None else len(cols)
        if n_steps:
            assert cols is not None
            self._latest = latest_figures(cols)
            self.steps_completed = max(self.steps_completed, int(cols.steps[-1]) + 1)
        now = time.monotonic()
        progress_event = bool(n_steps) and (final or now - self._last_progress_event
                                            >= self.progress_interval)
        if progress_event:
            self._last_progress_event = now
        latest = self._latest

        self._pending_rows = n_steps * (1 + n_layers)  # steps + layer-steps

        def write(session: Session) -> tuple[bool, int | None]:
            write_started = time.monotonic()
            written_key: int | None = None
            # first: the claim check takes the job's row lock (nothing is written for a
            # run that was given up), then the records
            cancel = JobRepository(session).record_progress(
                self.job_id, steps_completed=self.steps_completed, latest=latest,
                first_non_finite=self.first_non_finite, claim=self.claim)
            history = HistoryRepository(session)
            key = self._key  # known after the first committed flush: no query
            for chunk in chunks:
                if chunk.data is None and not chunk.rollups:
                    continue
                if key is None:
                    key = written_key = history.ensure_key(self.job_id, n_layers)
                if chunk.data is not None:
                    history.insert_chunk(key, chunk.first_step, chunk.last_step,
                                         chunk.n_steps, chunk.data)
                history.insert_rollups(key, chunk.rollups)
            history.insert_epochs(epoch_rows)
            events = EventRepository(session)
            for alert in alerts:
                events.append(self.job_id, "alert", alert)
                webhooks.monitor_alert(session, self.job_id, alert)
            counters.count_flush(session, steps=n_steps,
                                 layer_records=n_steps * n_layers,
                                 seconds=time.monotonic() - write_started)
            if progress_event:
                events.append(self.job_id, "progress", {
                    "status": "running",
                    "progress": progress_dict(self.steps_completed, self.total_steps),
                    "latest": latest})
            return cancel, written_key

        return write
