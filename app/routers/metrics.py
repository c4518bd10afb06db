"""``/metrics``: Prometheus text exposition (protected like /v1 when an API key is set)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.routers.common import problems

router = APIRouter(tags=["health"])


@router.get("/metrics", operation_id="prometheusMetrics", summary="Prometheus metrics",
            response_class=Response,
            description="Prometheus text format: jobs by status and verdict, queue depth and "
                        "age, steps trained, layer records stored, explosions detected, monitor "
                        "stops, webhook delivery attempts, database-write and HTTP latency "
                        "histograms (README: Metrics). Needs the API key when one is set.",
            responses={200: {"content": {"text/plain": {}}}, **problems(401)})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)
