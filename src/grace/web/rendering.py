"""Templates and the headers every page carries: a strict Content-Security-Policy and no framing.

Pages load only Grace's own files (``/static/web/``): no inline script, no inline style, no CDN, so
the policy needs no ``'unsafe-inline'`` and the UI works offline.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from grace import __version__
from grace.web.playbook_views import duration
from grace.web.session import CSRF_COOKIE

__all__ = ["ASSETS", "CSP", "STATIC", "TEMPLATES", "clock_time", "environment", "render", "secure", "utc"]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
ASSETS = "/static/web"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def utc(value: datetime | None, *, seconds: bool = False) -> str:
    """Show a time as the seed does: ``2025-11-14 14:30 UTC`` (empty for None)."""
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def clock_time(seconds: float | None) -> str:
    """Show a moment in a recording as ``m:ss`` (``h:mm:ss`` past an hour)."""
    total = max(0, int(seconds or 0))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = utc
    env.filters["clock"] = clock_time
    env.filters["duration"] = duration
    env.filters["duration_s"] = lambda seconds: duration(float(seconds) * 1000)
    env.globals["assets"] = ASSETS
    env.globals["version"] = __version__
    return env


_ENV = environment()


def render(request: Request, name: str, context: dict[str, Any] | None = None, *, status: int = 200) -> HTMLResponse:
    """Render template ``name`` with the request, the caller and the CSRF token in its context."""
    values: dict[str, Any] = {"request": request, "principal": None}
    values["csrf_token"] = request.cookies.get(CSRF_COOKIE, "")
    values.update(context or {})
    return HTMLResponse(_ENV.get_template(name).render(values), status_code=status)


def secure(response: Response) -> Response:
    """Add the page headers (CSP, no framing, no caching) unless the response set its own."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
