"""Grace's exception tree. Each class's docstring is its default message.

    GraceError
    ├── InvalidInput           (422)
    │   ├── UnsupportedAudio       (422, a file that is not audio in a format Grace decodes)
    │   └── PlaybookInvalid        (422, a playbook that does not pass lint; details lists each problem)
    ├── NotFound               (404)
    ├── Conflict               (409)
    │   ├── ConsentAlreadyAnswered (409, answering a consent request that is no longer pending)
    │   ├── IdempotencyKeyInUse    (409, the first request under this Idempotency-Key is still running)
    │   ├── IdempotencyKeyReused   (409, this Idempotency-Key was used for another request)
    │   ├── TaskAlreadyFinished    (409, cancelling a task that has finished)
    │   └── RunAlreadyFinished     (409, cancelling a playbook run that has finished)
    ├── PayloadTooLarge        (413)
    ├── Unauthenticated        (401)
    ├── PermissionDenied       (403)
    ├── RateLimited            (429)
    ├── ConfigurationError     (CLI and start-up only)
    ├── StorageUnavailable     (503)
    │   ├── AuditChainBroken       (503, the audit chain does not continue from its anchor: nothing written)
    │   ├── DatabaseUnreachable    (503, the database refused, dropped or did not answer the connection)
    │   └── DiskFull               (503, the database's disk is full: nothing was written)
    ├── ServiceNotRunning      (503, Grace not running in this process: try again shortly)
    └── RowTampered            (500, a row that decides a release or a privilege fails its seal)

Capabilities raise these; the HTTP edge maps them to statuses in one place
(``grace.api.errors``) and the CLI prints their message and exits non-zero. Every class has
its own ``code``, sent as ``error.code``: a client branches on the code, never on the message.
A class with ``retry_after`` (seconds) is a passing condition: the HTTP answer carries it as
``Retry-After``. A database failing mid-request (a cut connection, a full disk) reaches the edge
as the driver's own exception; ``grace.storage.outage`` turns it into one of these.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuditChainBroken",
    "ConfigurationError",
    "Conflict",
    "ConsentAlreadyAnswered",
    "DatabaseUnreachable",
    "DiskFull",
    "GraceError",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PlaybookInvalid",
    "RateLimited",
    "RowTampered",
    "RunAlreadyFinished",
    "ServiceNotRunning",
    "StorageUnavailable",
    "TaskAlreadyFinished",
    "Unauthenticated",
    "UnsupportedAudio",
]


class GraceError(Exception):
    """Something went wrong in Grace."""

    code = "error"
    # Seconds a client should wait before trying again, for a condition expected to pass; else None.
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or " ".join((self.__doc__ or self.code).split())
        self.details = details
        super().__init__(self.message)


class InvalidInput(GraceError):
    """The request is not valid."""

    code = "invalid_input"


class UnsupportedAudio(InvalidInput):
    """The file is not audio Grace reads: send WAV, MP3, M4A, WebM, Ogg or FLAC (the content decides, not the name)."""

    code = "unsupported_audio"


class PlaybookInvalid(InvalidInput):
    """The playbook does not pass lint."""

    code = "playbook_invalid"


class NotFound(GraceError):
    """Not found."""

    code = "not_found"


class Conflict(GraceError):
    """The request conflicts with the current state."""

    code = "conflict"


class ConsentAlreadyAnswered(Conflict):
    """This consent request was already answered (approved, denied, expired or revoked); nothing changed."""

    code = "consent_already_answered"


class IdempotencyKeyInUse(Conflict):
    """A request with this Idempotency-Key is still running; retry in a moment to get its answer."""

    code = "idempotency_key_in_use"


class IdempotencyKeyReused(Conflict):
    """This Idempotency-Key was already used for a different request (another body or route) in the last 24 hours;
    use a new key for a new request."""

    code = "idempotency_key_reused"


class TaskAlreadyFinished(Conflict):
    """The task has already finished; only waiting or running tasks can be changed."""

    code = "task_already_finished"


class RunAlreadyFinished(Conflict):
    """The playbook run has already finished; only a queued, running or waiting run can be cancelled."""

    code = "run_already_finished"


class PayloadTooLarge(GraceError):
    """The request body is larger than allowed."""

    code = "payload_too_large"


class Unauthenticated(GraceError):
    """Authentication required: send a bearer token or sign in."""

    code = "unauthenticated"


class PermissionDenied(GraceError):
    """Your role does not allow this."""

    code = "forbidden"


class RateLimited(GraceError):
    """Too many attempts; try again later."""

    code = "rate_limited"
    retry_after: int = 60

    def __init__(self, message: str | None = None, *, retry_after: int = 60, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class ConfigurationError(GraceError):
    """Grace is not configured correctly."""

    code = "configuration_error"


class StorageUnavailable(GraceError):
    """The database cannot be reached."""

    code = "storage_unavailable"
    retry_after: int | None = 5


class AuditChainBroken(StorageUnavailable):
    """The audit log does not continue from its signed anchor, so nothing was written: run `grace audit verify`."""

    code = "audit_chain_broken"
    retry_after = None  # waiting does not mend it: an operator must look


class DatabaseUnreachable(StorageUnavailable):
    """The database cannot be reached (it is restarting, down, or the connection was cut); try again shortly."""

    code = "database_unreachable"
    retry_after = 5


class DiskFull(StorageUnavailable):
    """The database's disk is full, so nothing was written; try again once space has been freed."""

    code = "disk_full"
    retry_after = 30


class ServiceNotRunning(GraceError):
    """Grace is not running in this process (starting up or shutting down); try again shortly."""

    code = "service_not_running"
    retry_after = 2


class RowTampered(GraceError):
    """A stored row that decides this was changed outside Grace; nothing was done (see grace audit verify)."""

    code = "row_tampered"

    def __init__(self, message: str | None = None, *, table: str = "", row_id: str = "") -> None:
        super().__init__(message, details={"table": table, "id": row_id})
        self.table = table
        self.row_id = row_id
        self.reported = False  # set once it has been logged and audited
