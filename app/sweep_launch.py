"""Launching the real run like a sweep member: a new job (not a member) running the member's
spec, or the stability grid's recommended member's, with a merge patch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy.orm import Session

from app.datasets import parent_lookup
from app.errors import ConflictError, SpecValidationError
from app.models import Job, SweepMemberRow
from app.services import Submitted, submit_job, validate_spec
from app.settings import Settings
from app.sweeps import get_sweep, stability
from app.tenancy import Principal
from core.diagnostics import apply_merge_patch

__all__ = ["SweepLaunch", "launch_member"]


MemberIndex = Annotated[StrictInt, Field(ge=0)]


class SweepLaunch(BaseModel):
    """`POST /v1/sweeps/{id}/launch` body: which member to launch the real run like, and what
    to change in its spec."""

    model_config = ConfigDict(extra="forbid")

    member: MemberIndex | Literal["recommended"] = Field(
        "recommended", description="A member index, or `recommended`: the stability grid's "
                                   "recommended member (409 when it has none).")
    x: str | None = Field(None, description="With `recommended`: the grid's x axis, as "
                                            "`/stability` takes it.")
    y: str | None = Field(None, description="With `recommended`: the grid's y axis.")
    at: dict[str, Any] | None = Field(
        None, description="With `recommended`: where the other axes are held (path -> value), "
                          "as `/stability`'s `at.<path>`.")
    spec_patch: dict[str, Any] | None = Field(
        None, description="RFC 7396 merge patch applied to the member's spec, e.g. "
                          '`{"training": {"epochs": 200}}`.')
    name: str | None = Field(None, max_length=200,
                             description="The new job's name (default: the member's).")


def launch_member(session: Session, sweep_id: str, body: SweepLaunch, settings: Settings, *,
                  principal: Principal, idempotency_key: str | None = None) -> Submitted:
    """A new job running a member's spec with ``body.spec_patch`` merged in (the repair
    path's :func:`core.diagnostics.apply_merge_patch`), owned by the sweep's tenant.

    It is *not* a member: no ``parent_sweep_id`` and no ``sweep_members`` row, so the
    sweep's status and progress do not see it. Where it came from is the job's
    ``launched_from`` (its own JSON column rather than ``repair``, which means "a fix of
    ``parent_id``" to the comparison endpoint and the list's ``parent_id`` filter):
    ``{"sweep_id", "member", "job_id", "values", "recommended", "spec_patch"}``, kept after
    the sweep is deleted. ``idempotency_key`` as for ``POST /v1/jobs``; a key that made a job
    launched from another member (or not launched at all) is a 422.
    """
    sweep = get_sweep(session, sweep_id, principal)
    recommended = body.member == "recommended"
    if isinstance(body.member, int):
        index = body.member
    else:
        grid = stability(session, sweep_id, body.x, body.y, body.at or None,
                         principal=principal, at_loc=lambda path: ["body", "at", path])
        if grid.recommended is None:
            raise ConflictError(
                f"sweep {sweep_id} has no recommended member to launch: "
                f"{grid.recommended_reason} Pass a member index instead.",
                slug="no-recommendation", recommended_reason=grid.recommended_reason)
        index = grid.recommended.index
    row = session.get(SweepMemberRow, (sweep.id, index))
    if row is None:
        raise SpecValidationError(
            f"member {index} does not exist; sweep {sweep_id} has members "
            f"0..{sweep.member_count - 1}",
            errors=[{"loc": ["body", "member"], "msg": "no such member",
                     "type": "value_error"}])
    member_job = session.get(Job, row.job_id) if row.job_id is not None else None
    if member_job is None:
        raise ConflictError(f"member {index}'s job was deleted; its spec is gone",
                            slug="member-deleted")
    patched = apply_merge_patch(member_job.spec, body.spec_patch or {})
    if body.name is not None:
        patched["name"] = body.name
    spec = validate_spec(patched, settings, loc_prefix=("patched_spec",),
                         uploaded=parent_lookup(session, member_job.dataset_id))
    origin = {"sweep_id": sweep.id, "member": index, "job_id": member_job.id,
              "values": row.axis_values, "recommended": recommended,
              "spec_patch": body.spec_patch}
    submitted = submit_job(session, spec=spec, settings=settings, tenant=sweep.tenant,
                           idempotency_key=idempotency_key)
    if submitted.created:
        submitted.job.launched_from = origin
    else:
        before = submitted.job.launched_from or {}
        if (before.get("sweep_id"), before.get("member")) != (sweep.id, index):
            raise SpecValidationError(
                f"Idempotency-Key was already used for job {submitted.job.id}, not launched "
                f"from member {index} of sweep {sweep.id}; use a new key for a different "
                "request", slug="idempotency-key-reused", job_id=submitted.job.id)
    session.flush()
    return submitted
