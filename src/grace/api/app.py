"""The FastAPI application: routes, error handling and the lifespan that builds the services."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from grace import __version__, logs
from grace import services as services_module
from grace.api import contract, docs_pages, flat
from grace.api import errors as api_errors
from grace.api.bodies import EdgeBounds
from grace.api.middleware import RequestContext
from grace.api.routes import auth, health, htm, intents, metrics, playbooks, secrets, users, voice
from grace.clock import Clock
from grace.config import Settings

__all__ = ["create_app", "served_app"]

log = logging.getLogger("grace.api")


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    services: services_module.Services | None = None,
    background: bool = True,
) -> FastAPI:
    """Build the app. Its lifespan builds the services from ``settings`` unless ``services`` is given."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        built = services or await services_module.build(settings, clock=clock)
        app.state.services = built
        if owned and background:
            built.start_background()
        log.info("grace.started", extra={"backend": built.db.backend, "version": __version__})
        try:
            yield
        finally:
            if owned:
                app.state.services = None  # what arrives from now on is told the service is not running
                await built.close()
            log.info("grace.stopped")

    app = FastAPI(
        title="Grace",
        version=__version__,
        description="Control plane for a personal AI agent: tasks, vault, voice notes and playbooks.",
        lifespan=lifespan,
        docs_url=None,  # served from vendored files below (docs_pages)
        redoc_url=None,
        # Grace publishes its own metrics (/metrics) and logs. FastAPI's native OpenTelemetry, on by
        # default, asked on every request whether a tracer, meter or logger provider had been set up.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    logs.install_request_ids()
    if services is not None:
        app.state.services = services  # usable without running the lifespan (in-process tests)
    api_errors.install(app)
    # Inside RequestContext (added last, so outermost): its size limit holds while EdgeBounds reads a body.
    app.add_middleware(EdgeBounds)
    app.add_middleware(
        RequestContext, max_body_bytes=settings.max_request_bytes, larger_bodies=voice.larger_bodies(settings)
    )
    # FastAPI matches a request by walking the routes in this order (no prefix shortcut), so the
    # hottest come first: a task submission walked 29 other routes before its own (6.9% of the event
    # loop in a submission run). The prefixes do not overlap, so order changes no match.
    for module in (health, auth, htm, users, secrets, intents, voice, metrics, playbooks):
        flat.add_routes(app, module.router)
    contract.install(app)
    docs_pages.install(app)
    # Imported here: grace.web imports what grace.api exports, so it must come after grace.api has loaded.
    from grace import web

    web.install(app)
    return app


def served_app() -> FastAPI:
    """Build the app from the environment's settings: each process of ``grace serve --workers N`` calls this."""
    from grace import memory
    from grace.config import load_settings

    settings = load_settings()
    logs.configure(settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    memory.settle()
    return app
