"""gradwatch's Python client: ``Client`` (sync) and ``AsyncClient`` for every API operation.

Needs only httpx, pydantic and NumPy: it never imports the server's code.

>>> from client import Client
>>> gw = Client("http://127.0.0.1:8000")
>>> job = gw.submit("spec.json")
>>> for event in gw.follow(job.id): ...
>>> gw.diagnostics(job.id).verdict
"""

from client.aio import AsyncClient
from client.errors import ApiError, FieldError
from client.models import (
    Comparison,
    Dataset,
    Diagnosis,
    Event,
    Finding,
    GradientHistory,
    Job,
    JobPage,
    MetricsHistory,
    Prediction,
    Preflight,
    Recommendation,
    SeriesArrays,
    StabilityMap,
    StabilityRow,
    Sweep,
    SweepMember,
    SweepPage,
    SweepSummary,
)
from client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Comparison",
    "Dataset",
    "Diagnosis",
    "Event",
    "FieldError",
    "Finding",
    "GradientHistory",
    "Job",
    "JobPage",
    "MetricsHistory",
    "Prediction",
    "Preflight",
    "Recommendation",
    "SeriesArrays",
    "StabilityMap",
    "StabilityRow",
    "Sweep",
    "SweepMember",
    "SweepPage",
    "SweepSummary",
]
