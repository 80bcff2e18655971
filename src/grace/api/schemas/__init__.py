"""What every route answers, as pydantic models: the typed objects of ``/openapi.json``.

One module per area (``errors``, ``platform`` for health and sign-in, ``users``, ``secrets``, ``tasks``).
Every answer forbids fields it does not declare, so an ``as_dict`` that grows a field without its
model here fails the route (and the suite) instead of drifting from the published contract.
"""

from __future__ import annotations

from grace.api.schemas.common import Answer, Timestamp
from grace.api.schemas.errors import ErrorBody, ErrorDetail

__all__ = ["Answer", "ErrorBody", "ErrorDetail", "Timestamp"]
