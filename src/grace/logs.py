"""Structured logs: one JSON object per line, with stable event names.

The message of every record is its event name (``http.request``,
``bus.published``); details go in ``extra``. The request id of the request being
served is added to every record logged while serving it. Nothing here logs
bodies, headers or secret values; callers pass only names, ids and reasons.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure", "install_request_ids", "request_id"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("grace_request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def install_request_ids() -> None:
    """Stamp every log record created while serving a request with that request's id."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_grace_request_ids", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        rid = request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return record

    factory._grace_request_ids = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        try:  # a line per request at INFO: orjson writes it in a fifth of json's time
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # what orjson refuses (a non-text key, an integer past 64 bits)
            return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        )
        return f"{record.levelname.lower():7} {record.getMessage()} {extras}".rstrip()


def configure(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Send Grace's and uvicorn's logs to stderr in one format."""
    # Neither format shows the thread or the process; finding them cost every record (one a request) a
    # call to threading.current_thread and a getpid system call.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Grace writes its own access log line, with the request id and without query strings.
    logging.getLogger("uvicorn.access").disabled = True
    # aiosqlite's debug lines show each call with its arguments: SQL parameters (password hashes, value
    # hints). SQLAlchemy's own statement log, if turned on, has them hidden (storage.Database).
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLevelName(level)))
