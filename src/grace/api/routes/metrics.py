"""Prometheus' scrape: ``GET /metrics`` in the exposition format, for the scrape token or an admin."""

from __future__ import annotations

from fastapi import APIRouter, Response

from grace.api import policy, prometheus
from grace.api.deps import ServicesDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    dependencies=[policy.METRICS],
    response_class=Response,
    responses={
        200: {
            "description": "The exposition text (Prometheus' text format 0.0.4).",
            "content": {prometheus.CONTENT_TYPE: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(services: ServicesDep) -> Response:
    """The task manager's and the vault's figures for Prometheus, read from the database: tasks by origin and
    status, execution times, queue depths, SLA counters and compliance, consents by status. Send the scrape
    token (GRACE_METRICS_TOKEN) as a bearer token, or call as an admin."""
    body = prometheus.render(await services.htm.metric_figures(), await services.vault.consent_counts())
    return Response(content=body, media_type=prometheus.CONTENT_TYPE)
