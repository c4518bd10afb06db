"""Response models of one sweep (:func:`app.sweeps.sweep_to_read`): what ``POST /v1/sweeps``
answers, 202 or its Idempotency-Key replay 200 (the list's models are in :mod:`app.schemas`).

They document the responses; the handlers encode the dicts themselves (non-finite member
figures as ``"NaN"`` / ``"Infinity"``, as :data:`JsonFloat` says).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from app.schemas import ApiModel, JobStatus, SweepProgress, SweepStatus, Timestamp, Verdict
from core.diagnostics.report import RiskLevel
from core.telemetry import JsonFloat

__all__ = ["SweepCreated", "SweepMemberRead", "SweepRead"]


class SweepMemberRead(ApiModel):
    """One grid point: its axis values and how its job went."""

    index: int = Field(description="The grid point's number (0, 1, ...).")
    job_id: str | None = Field(description="The member's job (null once that job was "
                                           "deleted).")
    values: dict[str, Any] = Field(description="Axis path -> this member's value.")
    status: JobStatus | Literal["deleted"] = Field(description="The job's status (`deleted` "
                                                               "once it was deleted).")
    verdict: Verdict | None = Field(description="The job's diagnosis (null until it finished).")
    stop_reason: str | None = Field(description="Why its training stopped (null until then).")
    first_bad_step: int | None = Field(description="The diagnosis' first bad step, if any.")
    peak_to_baseline: JsonFloat | None = Field(
        description="Largest global gradient norm over the median of the first recorded "
                    "ones (`Infinity` once one was non-finite; null until finished).")
    final_loss: JsonFloat | None = Field(description="Its run's final loss (null until "
                                                     "finished).")
    predicted_risk: RiskLevel | None = Field(
        description="Preflight's explosion risk for the member's spec (null until computed).")


class SweepRead(ApiModel):
    """A sweep with its members; status and progress follow from the member jobs."""

    id: str = Field(description="UUID.")
    name: str | None = Field(description="The sweep's `name` (a free-form label), if any.")
    created_at: Timestamp = Field(description="When the sweep was created (UTC, ISO 8601).")
    tenant: str | None = Field(description="The tenant whose key created the sweep; null for "
                                           "the admin's.")
    status: SweepStatus = Field(description="Derived from the member jobs (see `listSweeps`).")
    progress: SweepProgress = Field(description="Members done and steps done, over all "
                                                "members.")
    axes: list[dict[str, Any]] = Field(description="The axes as created: `path` with `values` "
                                                   "or `log_range` + `points`.")
    spec: dict[str, Any] = Field(description="The base spec as posted (its `notify`, if any, "
                                             "is the sweep's webhook).")
    members: list[SweepMemberRead] = Field(description="One entry per grid point.")
    links: dict[str, str] = Field(description="Related resources: `self`, `cancel`, `events`, "
                                              "`stability`, `stability_plot`, `webhook` (with "
                                              "`notify`).")


class SweepCreated(SweepRead):
    """The sweep that ``POST /v1/sweeps`` created (202) or, for a replayed Idempotency-Key,
    created earlier (200)."""

    notify_secret: str | None = Field(
        description="The signing secret of the sweep's `notify` webhook (`whsec_<base64>`): "
                    "in the 202 that created it only; null on a replay and without `notify`.")
