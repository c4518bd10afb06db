"""``/metrics``: Prometheus text exposition. Server-wide figures (every tenant's jobs): the
admin's only when the server has keys (a tenant key gets 403)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import require_admin
from app.routers.common import problems

router = APIRouter(tags=["health"], dependencies=[Depends(require_admin)])


@router.get("/metrics", operation_id="prometheusMetrics", summary="Prometheus metrics",
            response_class=Response,
            description="Prometheus text format: jobs by status and verdict, queue depth and "
                        "age, steps trained, layer records stored, explosions detected, monitor "
                        "stops, webhook delivery attempts, database-write and HTTP latency "
                        "histograms (README: Metrics). Covers every tenant: needs the admin key "
                        "when the server has keys (a tenant key gets 403).",
            responses={200: {"content": {"text/plain": {}}}, **problems(401, 403)})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)
