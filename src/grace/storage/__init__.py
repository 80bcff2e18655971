"""Storage: the async database handle, shared column types, locks across processes, migrations, private files
and telling a database outage from a bug."""

from __future__ import annotations

from grace.storage.database import Database, driver_in_transaction
from grace.storage.files import private_dir, private_file, private_tree, write_private
from grace.storage.guards import VALUE_ERRORS, refused_value
from grace.storage.locks import FileLock, Leadership, file_lock_free, serialise, serialise_in, try_serialise
from grace.storage.locks import key as lock_key
from grace.storage.metadata import metadata
from grace.storage.migrate import current_revision, head_revision, upgrade
from grace.storage.outages import OUTAGE_ERRORS, driver_message, outage
from grace.storage.types import UTCDateTime, new_id, new_ids, utc_from_text, utc_read, utc_text

__all__ = [
    "OUTAGE_ERRORS",
    "VALUE_ERRORS",
    "Database",
    "FileLock",
    "Leadership",
    "UTCDateTime",
    "current_revision",
    "driver_in_transaction",
    "driver_message",
    "file_lock_free",
    "head_revision",
    "lock_key",
    "metadata",
    "new_id",
    "new_ids",
    "outage",
    "private_dir",
    "private_file",
    "private_tree",
    "refused_value",
    "serialise",
    "serialise_in",
    "try_serialise",
    "upgrade",
    "utc_from_text",
    "utc_read",
    "utc_text",
    "write_private",
]
