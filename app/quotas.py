"""Per-tenant quotas: queued jobs (checked at submission) and running jobs (checked when a
worker claims a job).

* **Queued**: a submission that would leave a tenant with more than
  ``GRADWATCH_TENANT_MAX_QUEUED_JOBS`` queued jobs is refused with 429, ``Retry-After`` and
  a problem naming the quota (a sweep's members count, all or nothing).
* **Running**: a worker does not start a tenant's job while the tenant already has
  ``GRADWATCH_TENANT_MAX_RUNNING_JOBS`` running; the job stays queued and is handed to the
  executor again by the sweeper (within ``GRADWATCH_REAPER_INTERVAL_SECONDS``). Submissions
  are never refused for this one: waiting is what the queue is for.

The admin (``tenant`` None) has no quota. Counting and inserting happen in one transaction;
on PostgreSQL a transaction-scoped advisory lock per tenant orders concurrent submissions and
claims (SQLite's write lock already does).
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.errors import ProblemError
from app.models import Job
from app.repositories import JobRepository
from app.settings import Settings

__all__ = ["QUEUED_RETRY_AFTER_SECONDS", "QuotaExceededError", "check_queued",
           "start_allowance"]

QUEUED_RETRY_AFTER_SECONDS = 30


class QuotaExceededError(ProblemError):
    """429: a tenant quota is used up; ``quota`` names the setting."""

    status, slug = 429, "quota-exceeded"


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
    limit = settings.tenant_max_queued_jobs
    queued = JobRepository(session).count_of_tenant(tenant, "queued")
    if queued + new_jobs > limit:
        what = f"{new_jobs} more jobs" if new_jobs > 1 else "another job"
        raise QuotaExceededError(
            f"tenant {tenant!r} has {queued} queued job{'' if queued == 1 else 's'}; the quota "
            f"is {limit} "
            f"(GRADWATCH_TENANT_MAX_QUEUED_JOBS), so {what} cannot be queued now: retry when "
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
    allowed = settings.tenant_max_running_jobs - jobs.count_of_tenant(tenant, "running")
    if allowed <= 0:
        jobs.defer(job_id)
        return 0
    return min(wanted, allowed)
