"""Hooks for the schemathesis run of tests/acceptance/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

The fuzzer reuses ids it saw in answers, so it would find its own token in ``GET /api/tokens`` and
revoke it (or disable its own user), and spend the rest of the run on 401s: those two calls name
another id instead (``GRACE_FUZZ_TOKEN_ID``, ``GRACE_FUZZ_USERNAME``). Both are still called.

The consent stream stays open until its timeout_seconds (or limit) ends it, as a stream should; a
client that only checks its answer asks it to end at once, so every call to it gets a short
``timeout_seconds`` unless the generated value is one the route must refuse (then the 422 is checked).
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

STREAM = "/api/secrets/consent/stream"
STREAM_SECONDS = 0.05


def _valid_timeout(value: Any) -> bool:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return False
    return 0 < seconds <= 86_400


OWN = {
    "/api/tokens/{token_id}/revoke": ("token_id", "GRACE_FUZZ_TOKEN_ID"),
    "/api/users/{username}/disable": ("username", "GRACE_FUZZ_USERNAME"),
}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path = case.operation.path
    if path in OWN:
        name, variable = OWN[path]
        parameters = dict(case.path_parameters or {})
        if parameters.get(name) == os.environ.get(variable):
            parameters[name] = "someone-else"
            case.path_parameters = parameters
        return
    if path != STREAM:
        return
    query = dict(case.query or {})
    if "timeout_seconds" not in query or _valid_timeout(query["timeout_seconds"]):
        query["timeout_seconds"] = STREAM_SECONDS
    case.query = query
