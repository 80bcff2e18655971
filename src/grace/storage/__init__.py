"""Storage: the async database handle, shared column types and migrations."""

from __future__ import annotations

from grace.storage.database import Database
from grace.storage.metadata import metadata
from grace.storage.migrate import current_revision, head_revision, upgrade
from grace.storage.types import UTCDateTime, new_id, new_ids

__all__ = ["Database", "UTCDateTime", "current_revision", "head_revision", "metadata", "new_id", "new_ids", "upgrade"]
