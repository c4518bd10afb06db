"""Creating a job: one queued job per request (or per Idempotency-Key), its own webhook, and
its enqueueing. Never commits: the caller's session does.

A new job's id is handed to the executor only after the transaction that created it
committed: :func:`submit_job` requests it (:func:`app.dispatch.request_enqueue`) and the
session's after-commit hook sends it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import quotas, webhooks
from app.correlation import current_request_id
from app.dispatch import request_enqueue
from app.errors import ConflictError, SpecValidationError
from app.lifecycle import announce_created, announce_created_many
from app.models import Job, utcnow
from app.repositories import JobRepository
from app.settings import Settings
from app.specs import echoed_spec, spec_hash
from core.spec import TrainingSpec, UploadedData

__all__ = ["IDEMPOTENCY_IN_FLIGHT", "Submitted", "scoped_key", "submit_job", "submit_members"]

IDEMPOTENCY_IN_FLIGHT = timedelta(seconds=30)


@dataclass
class Submitted:
    job: Job
    created: bool  # False: an earlier request with the same Idempotency-Key made it
    notify_secret: str | None = None  # the secret of the spec's `notify` webhook (shown once)


def submit_job(session: Session, *, spec: TrainingSpec, settings: Settings,
               tenant: str | None = None, idempotency_key: str | None = None,
               parent_id: str | None = None, repair: dict[str, Any] | None = None,
               quota_checked: bool = False) -> Submitted:
    """Insert a queued job owned by ``tenant`` (None: the admin) and request its enqueueing
    (sent when the caller commits); 429 past the tenant's queued-jobs quota."""
    spec_json = echoed_spec(spec)
    digest = spec_hash(spec_json)
    jobs = JobRepository(session)
    idempotency_key = scoped_key(idempotency_key, tenant)
    if idempotency_key is not None:
        existing = jobs.by_idempotency_key(idempotency_key)
        if existing is not None:
            return Submitted(_replay(existing, digest, parent_id), created=False)
    if not quota_checked:
        quotas.check_queued(session, tenant, settings)
    job = _new_job(spec, spec_json, digest, settings, tenant, idempotency_key=idempotency_key,
                   parent_id=parent_id, repair=repair)
    try:
        with session.begin_nested():
            jobs.add(job)
    except IntegrityError:
        # a concurrent request with the same key won the insert
        existing = jobs.by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise ConflictError(
                "a request with this Idempotency-Key is still being processed; retry shortly",
                slug="idempotency-in-flight", headers={"Retry-After": "1"}) from None
        return Submitted(_replay(existing, digest, parent_id), created=False)
    secret = _notify(session, job, spec, settings)
    announce_created(session, job)
    request_enqueue(session, job.id)
    return Submitted(job, created=True, notify_secret=secret)


def submit_members(session: Session, specs: Sequence[TrainingSpec], *, settings: Settings,
                   tenant: str | None, sweep_id: str) -> list[Job]:
    """Insert one queued job per spec for the sweep ``sweep_id``, owned by ``tenant``, and
    request their enqueueing: the jobs, and then their first ``status`` events, each in one
    statement however many members there are. The caller checked the queued-jobs quota for
    all of them; members have no Idempotency-Key and no webhook of their own (the sweep
    notifies as a whole)."""
    jobs = []
    for spec in specs:
        spec_json = echoed_spec(spec)
        job = _new_job(spec, spec_json, spec_hash(spec_json), settings, tenant)
        job.parent_sweep_id, job.event_seq = sweep_id, 1  # its first event follows
        jobs.append(job)
    session.add_all(jobs)
    session.flush()
    announce_created_many(session, jobs)
    for job in jobs:
        request_enqueue(session, job.id)
    return jobs


def _new_job(spec: TrainingSpec, spec_json: dict[str, Any], digest: str, settings: Settings,
             tenant: str | None, *, idempotency_key: str | None = None,
             parent_id: str | None = None, repair: dict[str, Any] | None = None) -> Job:
    """The row of a new queued job (not added to a session)."""
    return Job(
        id=str(uuid.uuid4()), status="queued", name=spec.name, spec=spec_json, spec_hash=digest,
        idempotency_key=idempotency_key, parent_id=parent_id, repair=repair,
        executor=settings.executor, created_at=utcnow(), total_steps=spec.total_steps(),
        steps_completed=0, cancel_requested=False, event_seq=0,
        request_id=current_request_id(), tenant=tenant,
        dataset_id=spec.data.id if isinstance(spec.data, UploadedData) else None,
    )


def _notify(session: Session, job: Job, spec: TrainingSpec, settings: Settings) -> str | None:
    """The job's own webhook from ``spec.notify`` (422 for a refused URL); its secret."""
    if spec.notify is None:
        return None
    try:
        webhooks.check_destination(spec.notify.url, allow_private=settings.webhook_allow_private)
    except webhooks.DestinationRefused as exc:
        raise SpecValidationError(
            f"notify.url: {exc}", slug="webhook-url-refused",
            errors=[{"loc": ["body", "notify", "url"], "msg": str(exc),
                     "type": "url_refused"}]) from None
    return webhooks.WebhookRepository(session).create(
        url=spec.notify.url, events=spec.notify.events, job_id=job.id, tenant=job.tenant).secret


def scoped_key(idempotency_key: str | None, tenant: str | None) -> str | None:
    """Idempotency keys are per tenant (two tenants may both send "retry-1"): a tenant's is
    stored as ``<tenant>:<sha256 of the key>``; the admin's as given."""
    if idempotency_key is None or tenant is None:
        return idempotency_key
    return f"{tenant}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def _replay(existing: Job, digest: str, parent_id: str | None) -> Job:
    if existing.spec_hash != digest or existing.parent_id != parent_id:
        raise SpecValidationError(
            f"Idempotency-Key was already used for job {existing.id} with a different spec; "
            "use a new key for a different request",
            slug="idempotency-key-reused", job_id=existing.id)
    if existing.enqueued_at is None and existing.status == "queued":
        created = existing.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=utcnow().tzinfo)
        if utcnow() - created < IDEMPOTENCY_IN_FLIGHT:
            raise ConflictError(
                "the first request with this Idempotency-Key is still being processed; "
                "retry shortly", slug="idempotency-in-flight", headers={"Retry-After": "1"})
    return existing
