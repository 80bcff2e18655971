"""What the answer models share: the strict base and the time type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

__all__ = ["Answer", "Timestamp", "encode", "json_answer"]

# Times travel as ISO 8601 text in UTC (grace.clock.iso): kept as text so the answer is what the
# capability wrote, declared as date-time so a client generator makes them datetimes.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Answer(BaseModel):
    """An answer's (or a part's) model: every field declared, nothing else let through."""

    model_config = ConfigDict(extra="forbid")


def encode(model: type[BaseModel], answer: Any, *, exclude_unset: bool = False) -> str:
    """Check ``answer`` against ``model`` and return its JSON text, as FastAPI's response_model would."""
    return model.model_validate(answer).model_dump_json(by_alias=True, exclude_unset=exclude_unset)


def json_answer(
    model: type[BaseModel],
    answer: Any,
    *,
    status_code: int = 200,
    exclude_unset: bool = False,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Answer with ``answer`` checked and serialised once, by pydantic, in its Rust core.

    For the hot routes: a route returning a dict has FastAPI validate it against the response model,
    dump it to Python objects and encode those with ``json.dumps``. The route still declares its
    ``response_model``: that is what /openapi.json publishes.
    """
    return Response(
        encode(model, answer, exclude_unset=exclude_unset),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )
