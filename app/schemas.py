"""Response models (the request model of a job is core.spec.TrainingSpec itself).

Non-finite numbers are data: every float that may be NaN or +-Inf is a :data:`JsonFloat`,
serialised as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` and documented in the
OpenAPI schema as number-or-one-of-those-strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from core.telemetry import JsonFloat

__all__ = [
    "ApiModel",
    "Comparison",
    "GradientHistory",
    "Health",
    "JobPage",
    "JobRead",
    "JobStatus",
    "JobSummary",
    "JsonFloat",
    "MetricsHistory",
    "RepairRequest",
    "RunFigures",
    "Series",
    "SweepPage",
    "SweepStatus",
    "SweepSummary",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookDeliveryPage",
    "WebhookRead",
    "utc_text",
]

def utc_text(value: datetime | None) -> str | None:
    """A stored time as RFC 3339 UTC text (``...Z``); None stays None."""
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive datetimes; they are stored in UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    PlainSerializer(utc_text, return_type=str | None, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Verdict = Literal["healthy", "exploding", "vanishing", "unstable", "stalled"]


class ApiModel(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings", from_attributes=True)


class Progress(ApiModel):
    step: int = Field(description="Optimizer steps completed (a count, 0..total_steps; "
                                  "`latest.step` is an index, so progress.step - 1).")
    total_steps: int = Field(description="Steps the spec asks for.")
    fraction: float = Field(description="step / total_steps, 0..1.")
    elapsed_seconds: float | None = Field(
        None, description="While running: seconds since the job started (this run).")
    eta_seconds: float | None = Field(
        None, description="While running: estimated seconds to the last step, at the rate so "
                          "far (null before the first step completed).")


class LatestFigures(ApiModel):
    """The most recent recorded step (updated every flush)."""

    step: int = Field(description="Index of that step (steps count from 0, as in the "
                                  "histories); `progress.step` counts completed steps.")
    loss: JsonFloat
    grad_norm: JsonFloat = Field(description="Global L2 norm before clipping.")
    clipped_grad_norm: JsonFloat
    lr: JsonFloat
    layer_grad_norms: list[JsonFloat] = Field(description="Per layer, layer 0 first.")


class NonFiniteInfo(ApiModel):
    step: int
    layer: int | None = Field(description="Null for the loss.")
    tensor: str
    value: Literal["nan", "inf"]
    description: str


class RepairInfo(ApiModel):
    """How a repair job was derived from its parent."""

    parent_id: str
    recommendation: int | None = Field(description="Index into the parent's recommendations.")
    action: str | None
    spec_patch: dict[str, Any] = Field(description="RFC 7396 merge patch applied to the parent's spec.")


class LaunchedFrom(ApiModel):
    """The sweep member a job was launched like (``POST /v1/sweeps/{id}/launch``)."""

    sweep_id: str = Field(description="The sweep (kept after the sweep is deleted).")
    member: int = Field(description="The member's index in the sweep.")
    job_id: str = Field(description="The member's job, whose spec the patch was applied to.")
    values: dict[str, Any] = Field(description="The member's axis values (path -> value).")
    recommended: bool = Field(description="Chosen as the stability grid's `recommended`.")
    spec_patch: dict[str, Any] | None = Field(
        description="RFC 7396 merge patch applied to the member's spec.")


class JobSummary(ApiModel):
    """A job without its spec (what the list returns)."""

    id: str = Field(description="UUID.")
    name: str | None
    status: JobStatus = Field(
        description="Execution state: queued -> running -> succeeded | failed | cancelled "
                    "(or queued -> cancelled; running -> queued when the job's worker was lost "
                    "or shut down and the job starts over). A run that exploded is `succeeded` with verdict "
                    "`exploding`; `failed` means the service could not execute it (see `error`)."
    )
    verdict: Verdict | None = Field(description="The diagnosis of the training (set at the end).")
    stop_reason: str | None = Field(
        description="completed | non_finite | cancelled | max_runtime | early_stop | explosion."
    )
    error: str | None = Field(description="Why a `failed` job failed.")
    cancel_requested: bool
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    progress: Progress
    latest: LatestFigures | None
    first_non_finite: NonFiniteInfo | None
    runtime_seconds: float | None
    parent_id: str | None = Field(description="The job this one repairs.")
    parent_sweep_id: str | None = Field(None, description="The sweep this job is a member of.")
    launched_from: LaunchedFrom | None = Field(
        None, description="The sweep member this job was launched like (not a member itself).")
    attempts: int = Field(
        0, description="How many times a worker started this job. A job whose worker was "
                       "lost goes back to the queue and starts over (its history too), up to "
                       "GRADWATCH_MAX_ATTEMPTS starts; then it fails with 'worker lost'.")
    request_id: str | None = Field(
        None, description="X-Request-ID of the request that created the job (correlate "
                          "with your logs and ours).")
    tenant: str | None = Field(
        None, description="The tenant whose key created the job (a repair or sweep member: "
                          "its parent's); null for the admin's.")
    links: dict[str, str] = Field(description="Related resources.")


class JobRead(JobSummary):
    """A job with its validated spec (every default filled in, absent optionals null)."""

    notify_secret: str | None = Field(
        None, description="Only in the response that created a job whose spec has `notify`: "
                          "the `whsec_` secret that signs its webhook deliveries. Shown once.")
    spec: dict[str, Any] = Field(description="The validated TrainingSpec, every default filled in.")
    repair: RepairInfo | None


class JobPage(ApiModel):
    items: list[JobSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class Series(ApiModel):
    """One series, columnar: ``values[i]`` was recorded at ``steps[i]``."""

    steps: list[int]
    values: list[JsonFloat | None]


class Sampling(ApiModel):
    downsampled: bool = Field(description="True when fewer points are returned than are stored.")
    method: Literal["minmax-buckets"] | None = Field(
        description="`minmax-buckets`: per bucket its min and max point and first non-finite "
                    "point; first/last point of the range always kept."
    )
    bucket_size: int | None = Field(description="Steps per bucket (buckets align to multiples).")
    max_points: int = Field(description="Upper bound on points per series.")
    points_in_range: int = Field(description="Recorded steps in the requested range (of a "
                                             "paged read: from this page's first step on).")
    next_cursor: str | None = Field(
        None, description="A full-resolution read past the response budget is paged: pass "
                          "this as `cursor` (with the same other parameters) for the next "
                          "page; null on the last page and for downsampled reads.",
        examples=["AQABhqAAD0I_k2s1c0xVtEw"])


class LayerHistory(ApiModel):
    layer: int
    series: dict[str, Series] = Field(
        description="grad_norm, weight_grad_norm, weight_norm, update_norm, act_mean, act_std, "
                    "dead_fraction, saturated_fraction (or the requested `metrics`)."
    )


class GradientHistory(Sampling):
    job_id: str
    start_step: int | None = Field(description="First step of the range (null: no data).")
    end_step: int | None
    layers: list[LayerHistory]


class EpochColumns(ApiModel):
    epoch: list[int]
    step: list[int]
    train_loss: list[JsonFloat]
    val_loss: list[JsonFloat | None]
    val_accuracy: list[JsonFloat | None]
    train_accuracy: list[JsonFloat | None]


class MetricsHistory(Sampling):
    job_id: str
    start_step: int | None
    end_step: int | None
    series: dict[str, Series] = Field(description="loss, grad_norm (pre-clip), clipped_grad_norm, lr.")
    epochs: EpochColumns


class RepairRequest(BaseModel):
    """Which fix to run: a recommendation of the parent's diagnosis, or your own merge patch."""

    model_config = ConfigDict(extra="forbid", strict=True)

    recommendation: int | None = Field(
        None, ge=0, description="Index into the diagnosis' recommendations (default 0: the first)."
    )
    spec_patch: dict[str, Any] | None = Field(
        None, description="An RFC 7396 merge patch on the parent's spec, instead of a recommendation."
    )


class RunFigures(ApiModel):
    job_id: str
    status: JobStatus
    verdict: Verdict | None
    stop_reason: str | None
    steps_completed: int
    total_steps: int
    final_loss: JsonFloat | None
    min_loss: JsonFloat | None
    max_grad_norm: JsonFloat | None
    max_grad_norm_step: int | None
    first_bad_step: int | None
    first_non_finite_step: int | None
    final_val_loss: JsonFloat | None
    final_val_accuracy: JsonFloat | None
    runtime_seconds: float | None


class Comparison(ApiModel):
    """A job and its repair side by side."""

    original: RunFigures
    repair: RunFigures
    spec_patch: dict[str, Any] | None = Field(description="What the repair changed.")
    summary: str


class Health(ApiModel):
    status: Literal["ok"]
    checks: dict[str, str] = Field(default_factory=dict)


WebhookEvent = Literal["job.succeeded", "job.failed", "job.cancelled", "diagnosis.exploding",
                       "diagnosis.final"]
# a sweep's final status (app.sweep_notify): all a sweep's own webhook (its base spec's
# `notify`) sends; a subscription (POST /v1/webhooks) may ask for them besides job events
SweepWebhookEvent = Literal["sweep.succeeded", "sweep.failed", "sweep.cancelled"]
SubscriptionEvent = Literal[WebhookEvent, SweepWebhookEvent]


class WebhookCreate(BaseModel):
    """A subscription to events of every job and every sweep."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, max_length=2000, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://",
                     examples=["https://ci.example.com/hooks/gw"],
                     description="http(s) URL without credentials; private, loopback and "
                                 "link-local addresses are refused unless "
                                 "GRADWATCH_WEBHOOK_ALLOW_PRIVATE=true.")
    events: list[SubscriptionEvent] = Field(
        min_length=1, examples=[["diagnosis.exploding", "job.succeeded", "job.failed"]],
        description="Events to deliver: a job's (`job.*`, `diagnosis.*`, one per job) and a "
                    "sweep's (`sweep.*`, one per sweep when its last member finished).")
    description: str | None = Field(None, max_length=200, description="Free-form label.")


class WebhookRead(ApiModel):
    """A subscription (its secret is shown only when it is created)."""

    id: str
    url: str
    events: list[WebhookEvent | SweepWebhookEvent]
    description: str | None
    job_id: str | None = Field(description="Set for a job's own `notify` endpoint.")
    sweep_id: str | None = Field(None, description="Set for a sweep's own `notify` endpoint "
                                                   "(its events: `sweep.*`).")
    tenant: str | None = Field(None, description="The owning tenant; null for the admin's.")
    created_at: Timestamp
    links: dict[str, str]


class WebhookCreated(WebhookRead):
    secret: str = Field(description="Signing secret `whsec_<base64>` (Standard Webhooks). "
                                    "Shown once: store it now.")


class DeliveryAttempt(ApiModel):
    attempt: int
    at: str
    status_code: int | None = Field(description="The receiver's HTTP status; null when no "
                                                "answer came (timeout, refused, unreachable).")
    error: str | None
    duration_ms: float
    response: str | None = Field(description="The first 500 characters of the answer.")


class WebhookDeliveryRead(ApiModel):
    id: str = Field(description="The message id (`webhook-id` header), the same on retries.")
    event: WebhookEvent | SweepWebhookEvent
    job_id: str | None
    sweep_id: str | None = Field(None, description="The sweep of a `sweep.*` event.")
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: Timestamp | None = Field(description="When a pending delivery is retried.")
    created_at: Timestamp
    finished_at: Timestamp | None
    attempt_log: list[DeliveryAttempt]
    payload: dict[str, Any] = Field(description="The body that is (or was) sent.")


class WebhookDeliveryPage(ApiModel):
    items: list[WebhookDeliveryRead] = Field(description="Newest first.")
    next_cursor: str | None


SweepStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class SweepProgress(ApiModel):
    """Members done and optimizer steps done, over all of a sweep's members."""

    members_done: int = Field(description="Members that finished (or whose job was deleted).")
    members: int = Field(description="Grid points.")
    step: int = Field(description="Optimizer steps completed, summed over the members.")
    total_steps: int = Field(description="Steps the members' specs ask for, summed.")
    fraction: float = Field(description="step / total_steps, 0..1.")


class SweepSummary(ApiModel):
    """A sweep without its members and spec (what the list returns); GET the sweep for them."""

    id: str = Field(description="UUID.")
    name: str | None = Field(description="The sweep's `name` (a free-form label), if any.")
    created_at: Timestamp = Field(description="When the sweep was created (UTC, ISO 8601).")
    tenant: str | None = Field(description="The tenant whose key created the sweep; null for "
                                            "the admin's.")
    status: SweepStatus = Field(
        description="Derived from the member jobs, as `GET /v1/sweeps/{id}` reports it: "
                    "`queued` while every member is queued, `running` while any is unfinished, "
                    "then `failed` if any failed, else `cancelled` if any was cancelled, else "
                    "`succeeded`.")
    progress: SweepProgress = Field(description="Members done and steps done, over all "
                                                "members.")
    axes: list[dict[str, Any]] = Field(description="The axes as created: `path` with `values` "
                                                   "or `log_range` + `points`.")
    member_count: int = Field(description="Grid points (member jobs).")
    verdicts: dict[str, int] = Field(description="Verdict -> members with that verdict (members "
                                                 "without a verdict yet are not counted).")
    links: dict[str, str] = Field(description="Related resources: `self`.")


class SweepPage(ApiModel):
    """One page of sweeps, newest first."""

    items: list[SweepSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at "
                                                "the end.")
