"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), from the vendored files in ``static/`` (no CDN).

``static/VENDORED.md`` names the npm packages, their versions and licences.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["ASSETS", "STATIC", "install"]

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = "/static/docs"
FAVICON = "swagger-ui/favicon-32x32.png"


def install(app: FastAPI, *, openapi_url: str = "/openapi.json") -> None:
    """Serve the vendored files under ``ASSETS`` and the two pages that load them."""
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="docs-assets")

    def _root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/{FAVICON}",
            # No badge asking the public validator about this schema.
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/{FAVICON}",
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
