"""Liveness and readiness: the only routes that need no principal."""

from __future__ import annotations

from fastapi import APIRouter

from grace import __version__, storage
from grace.api import policy
from grace.api.deps import ServicesDep
from grace.api.schemas.platform import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", dependencies=[policy.PUBLIC], response_model=Health)
async def health() -> dict[str, str]:
    """Report that the process is up (liveness); no authentication."""
    return {"status": "ok", "version": __version__}


@router.get("/ready", dependencies=[policy.PUBLIC], response_model=Readiness)
async def ready(services: ServicesDep) -> dict[str, str | None]:
    """Report whether the database answers and is migrated (readiness); 503 if not."""
    await services.db.ping()
    revision = await storage.current_revision(services.db)
    return {"status": "ready", "backend": services.db.backend, "schema": revision}
