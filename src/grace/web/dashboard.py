"""The task manager's dashboard: tiles, charts, violations, slow and queued tasks, origin shares, health.

The page is a shell; ``static/dashboard.js`` fills it from the dashboard API itself
(``/api/htm/dashboard/stats|violations|tasks/slow|tasks/queued|metrics/hourly|health`` and
``/api/htm/routing/stats``) with the session cookie, and again every few seconds. So the figures are
exactly the API's for the caller (a member's own tasks; everyone's for operators and admins), and the
charts (uPlot, vendored) are drawn from the same JSON the API publishes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from grace.api import TASKS, CurrentPrincipal
from grace.web.rendering import render
from grace.web.routing import page_router

__all__ = ["REFRESH_SECONDS", "router"]

router = page_router()

REFRESH_SECONDS = 5


@router.get("/dashboard", dependencies=[TASKS])
async def dashboard(request: Request, principal: CurrentPrincipal) -> Response:
    """The task manager's figures for you (everyone's for operators and admins), refreshed live."""
    context = {"principal": principal, "page": "dashboard", "refresh_ms": REFRESH_SECONDS * 1000}
    return render(request, "dashboard.html", context)
