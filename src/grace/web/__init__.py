"""The web UI: server-rendered pages over the same services and the same principal rules as the API.

Jinja2 templates in ``templates/``, vendored client libraries and Grace's own script and style in
``static/`` (served under ``/static/web``; ``static/README.md`` names their versions and licences).
Every page route declares its policy from ``grace.api`` like an API route does.
"""

from __future__ import annotations

import typing

from starlette import staticfiles

from grace.api import add_routes as _add_routes
from grace.web import dashboard, inbox, playbooks, secrets, signin, voice
from grace.web.rendering import ASSETS, CSP, STATIC

if typing.TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ASSETS", "CSP", "STATIC", "install"]


def install(app: FastAPI) -> None:
    """Serve the pages and their static files from ``app``."""
    app.mount(ASSETS, staticfiles.StaticFiles(directory=STATIC), name="web-assets")
    for module in (signin, inbox, secrets, voice, dashboard, playbooks):
        _add_routes(app, module.router)
