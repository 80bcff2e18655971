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
    """Report whether the database answers, is migrated and takes a write now (readiness); 503 if not.

    The write check commits one unchanged row: a database that answers reads but cannot write (a
    full disk, a read-only replica) is not ready.
    """
    await services.db.ping()
    revision = await storage.current_revision(services.db)
    if revision is not None:
        await services.db.check_write()
    return {"status": "ready", "backend": services.db.backend, "schema": revision}
