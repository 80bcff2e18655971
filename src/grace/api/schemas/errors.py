"""The one error shape (``grace.api.errors``), as the schema every declared 4xx and 5xx refers to."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from grace.api.schemas.common import Answer

__all__ = ["ErrorBody", "ErrorDetail"]


class ErrorDetail(Answer):
    code: str = Field(description="What went wrong, for a client to branch on (never the message).")
    message: str = Field(description="What went wrong, for a person.")
    details: Any = Field(description="More about it, when there is more: e.g. the fields a request got wrong.")


class ErrorBody(Answer):
    """Every 4xx and 5xx answer: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorDetail
