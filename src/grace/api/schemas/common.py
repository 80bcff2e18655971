"""What the answer models share: the strict base and the time type."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Answer", "Timestamp"]

# Times travel as ISO 8601 text in UTC (grace.clock.iso): kept as text so the answer is what the
# capability wrote, declared as date-time so a client generator makes them datetimes.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Answer(BaseModel):
    """An answer's (or a part's) model: every field declared, nothing else let through."""

    model_config = ConfigDict(extra="forbid")
