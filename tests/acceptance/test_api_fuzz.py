"""schemathesis against a live server, on both databases: the published contract holds under fuzzing.

Every operation of ``/openapi.json`` is called by the schemathesis command (a subprocess) against
uvicorn on 127.0.0.1, as an admin (every route admits or refuses in its declared way) and as nobody,
with the checks not_a_server_error, status_code_conformance, content_type_conformance and
response_schema_conformance. A failure it finds is a bug in Grace or in the contract, never a reason
to leave an operation or a check out.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from grace.api import create_app
from grace.config import Settings
from tests.vaultkit import Cast

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).parent / "st"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# Examples per operation in the fuzzing phase (the coverage phase adds its boundary and negative cases
# whatever this is). As an admin, 20 reach every declared status in about a minute per database on two
# cores; as nobody, every operation answers 401 or 422 before its work, so 10 show it.
ADMIN_EXAMPLES = 20
NOBODY_EXAMPLES = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def live(cast: Cast, settings: Settings) -> AsyncIterator[str]:
    """Grace served by uvicorn on a free port of 127.0.0.1, on the test's database."""
    port = _free_port()
    app = create_app(settings, services=cast.services)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn stopped before it started"
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


async def _schemathesis(
    url: str, *headers: str, workdir: Path, examples: int, own: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run the schemathesis command against ``url``; return its exit code and its report."""
    env = dict(os.environ, SCHEMATHESIS_HOOKS="tests.schemathesis_hooks", PYTHONPATH=str(ROOT), **(own or {}))
    args = [
        "run",
        f"{url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(examples),
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--workers",
        "1",
        "--no-color",
        # The credentials are the ones given (or none): no generated token or cookie in their place.
        "--generation-with-security-parameters",
        "false",
        *[f"--header={h}" for h in headers],
    ]
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), *args, cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    return int(process.returncode or 0), output.decode(errors="replace")


@pytest.mark.slow
async def test_the_contract_holds_under_fuzzing_as_an_admin(live: str, cast: Cast, tmp_path: Path) -> None:
    own = {"GRACE_FUZZ_TOKEN_ID": str(cast.admin.token_id), "GRACE_FUZZ_USERNAME": cast.admin.username}
    code, output = await _schemathesis(
        live, f"Authorization: Bearer {cast.tokens['admin2']}", workdir=tmp_path, examples=ADMIN_EXAMPLES, own=own
    )
    assert code == 0, output
    assert re.search(r"(\d+) generated, \1 passed", output), output
    assert "Authentication failed" not in output, output


@pytest.mark.slow
async def test_the_contract_holds_under_fuzzing_for_nobody(live: str, tmp_path: Path) -> None:
    code, output = await _schemathesis(live, workdir=tmp_path, examples=NOBODY_EXAMPLES)
    assert code == 0, output
    assert re.search(r"(\d+) generated, \1 passed", output), output
