"""Per-tenant quotas: queued jobs (checked at submission) and running jobs (checked when a
worker claims a job).

* **Queued**: a submission that would leave a tenant with more than
  ``GRADWATCH_TENANT_MAX_QUEUED_JOBS`` queued jobs is refused with 429, ``Retry-After`` and
  a problem naming the quota (a sweep's members count, all or nothing).
* **Running**: a worker does not start a tenant's job while the tenant already has
  ``GRADWATCH_TENANT_MAX_RUNNING_JOBS`` running; the job stays queued and is handed to the
  executor again by the sweeper (within ``GRADWATCH_REAPER_INTERVAL_SECONDS``). Submissions
  are never refused for this one: waiting is what the queue is for.

``gradwatch tenants quota NAME --max-running N --max-queued M`` gives one tenant limits of its
own (table ``tenant_quotas``; unset: the settings). The admin (``tenant`` None) has no
quota. Counting and inserting happen in one transaction;
on PostgreSQL a transaction-scoped advisory lock per tenant orders concurrent submissions and
claims (SQLite's write lock already does).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.errors import ProblemError
from app.models import Job, TenantQuota, utcnow
from app.repositories import JobRepository
from app.settings import Settings

__all__ = ["QUEUED_RETRY_AFTER_SECONDS", "Limits", "QuotaExceededError", "check_queued",
           "limits", "set_limits", "start_allowance"]

QUEUED_RETRY_AFTER_SECONDS = 30


class QuotaExceededError(ProblemError):
    """429: a tenant quota is used up; ``quota`` names the setting."""

    status, slug = 429, "quota-exceeded"


@dataclass(frozen=True)
class Limits:
    """A tenant's quotas in force, and whether each is the tenant's own."""

    max_running_jobs: int
    max_queued_jobs: int
    own_running: bool = False
    own_queued: bool = False


def limits(session: Session, tenant: str, settings: Settings) -> Limits:
    """``tenant``'s quotas: its own (``tenant_quotas``) where set, else the settings'."""
    row = session.get(TenantQuota, tenant)
    running = row.max_running_jobs if row is not None else None
    queued = row.max_queued_jobs if row is not None else None
    return Limits(settings.tenant_max_running_jobs if running is None else running,
                  settings.tenant_max_queued_jobs if queued is None else queued,
                  running is not None, queued is not None)


def set_limits(session: Session, tenant: str, *, max_running_jobs: int | None,
               max_queued_jobs: int | None) -> None:
    """Give ``tenant`` quotas of its own (None: back to the setting); the caller commits."""
    for value in (max_running_jobs, max_queued_jobs):
        if value is not None and value < 0:
            raise ValueError("a quota is a number of jobs, 0 or more")
    row = session.get(TenantQuota, tenant)
    if row is None:
        row = TenantQuota(tenant=tenant)
        session.add(row)
    row.max_running_jobs, row.max_queued_jobs = max_running_jobs, max_queued_jobs
    row.updated_at = utcnow()
    session.flush()


def _lock(session: Session, tenant: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                        {"k": f"gradwatch-quota:{tenant}"})


def check_queued(session: Session, tenant: str | None, settings: Settings, new_jobs: int = 1
                 ) -> None:
    """429 unless ``tenant`` may add ``new_jobs`` queued jobs."""
    if tenant is None:
        return
    _lock(session, tenant)
    own = limits(session, tenant, settings)
    limit = own.max_queued_jobs
    setting = ("its own quota (gradwatch tenants quota)" if own.own_queued
               else "GRADWATCH_TENANT_MAX_QUEUED_JOBS")
    queued = JobRepository(session).count_of_tenant(tenant, "queued")
    if queued + new_jobs > limit:
        what = f"{new_jobs} more jobs" if new_jobs > 1 else "another job"
        raise QuotaExceededError(
            f"tenant {tenant!r} has {queued} queued job{'' if queued == 1 else 's'}; the quota "
            f"is {limit} "
            f"({setting}), so {what} cannot be queued now: retry when "
            "some have started, or cancel some",
            headers={"Retry-After": str(QUEUED_RETRY_AFTER_SECONDS)},
            quota="tenant_max_queued_jobs", limit=limit, current=queued, requested=new_jobs)


def start_allowance(session: Session, job_id: str, settings: Settings, wanted: int = 1) -> int:
    """How many jobs (up to ``wanted``) of queued job ``job_id``'s tenant may start now; 0
    defers ``job_id`` (it stays queued; the sweeper sends it to the executor again). Call it
    in the claiming transaction, before the claim."""
    row = session.execute(select(Job.tenant).where(Job.id == job_id,
                                                   Job.status == "queued")).first()
    if row is None or row[0] is None:  # not queued (the claim will skip it), or the admin's
        return wanted
    tenant: str = row[0]
    _lock(session, tenant)
    jobs = JobRepository(session)
    allowed = (limits(session, tenant, settings).max_running_jobs
               - jobs.count_of_tenant(tenant, "running"))
    if allowed <= 0:
        jobs.defer(job_id)
        return 0
    return min(wanted, allowed)
