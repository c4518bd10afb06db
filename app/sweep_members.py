"""A sweep's members as their jobs say: the rows, the sweep's status derived from them, and
the finished members' outcomes (what the stability grid reads). Below :mod:`app.sweeps` and
:mod:`app.sweep_notify`, which both read them."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Job, SweepMemberRow
from core.stability import MemberOutcome

__all__ = ["FINISHED", "member_outcomes", "member_rows", "sweep_status"]

# app.lifecycle.TERMINAL (app.lifecycle imports app.sweep_notify, which reads this module;
# a test keeps the two equal)
FINISHED = ("succeeded", "failed", "cancelled")

Members = list[tuple[SweepMemberRow, Job | None]]


def member_rows(session: Session, sweep_id: str, *, fresh: bool = False) -> Members:
    """Every member in index order with its job (None: the job was deleted). ``fresh``: read
    the jobs' rows again even if this session holds them (a transaction that just moved one
    with a bulk UPDATE)."""
    query = (select(SweepMemberRow, Job).outerjoin(Job, Job.id == SweepMemberRow.job_id)
             .where(SweepMemberRow.sweep_id == sweep_id).order_by(SweepMemberRow.idx))
    if fresh:
        query = query.execution_options(populate_existing=True)
    return [(r[0], r[1]) for r in session.execute(query).all()]


def sweep_status(statuses: Collection[str]) -> str:
    """The sweep's status from its (existing) members' statuses: queued while all are, running
    while any is unfinished, then failed / cancelled if any is, else succeeded."""
    if statuses and all(s == "queued" for s in statuses):
        return "queued"
    if any(s not in FINISHED for s in statuses):
        return "running"
    if "failed" in statuses:
        return "failed"
    if "cancelled" in statuses:
        return "cancelled"
    return "succeeded"


def member_outcomes(members: Sequence[tuple[SweepMemberRow, Job | None]]) -> list[MemberOutcome]:
    """The finished members' outcomes (verdicts from their jobs)."""
    return [MemberOutcome(
        index=row.idx, values=row.axis_values, verdict=job.verdict,
        first_bad_step=row.first_bad_step, peak_to_baseline=row.peak_to_baseline,
        final_loss=row.final_loss, stop_reason=job.stop_reason or "",
        predicted_risk=row.predicted_risk, job_id=row.job_id)
        for row, job in members if job is not None and job.verdict is not None]
