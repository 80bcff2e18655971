"""The HTTP edge: ``grace serve`` driven by wrk at concurrency 10, 50 and 200, on SQLite and PostgreSQL.

For each database a fresh ``grace serve`` is started (on PostgreSQL with ``--workers`` from
``GRACE_BENCH_EDGE_WORKERS``, default 2, when the server offers the option). At each concurrency, in
one run, wrk (Debian's ``wrk``: ``apt-get install wrk``; one thread, keep-alive) drives in turn:

- ``GET /health`` (the reference: no principal, no database);
- ``GET /api/auth/me`` with a bearer token;
- ``GET /api/htm/routing/stats``;
- ``POST /api/secrets/{key}/access`` by an agent holding a standing consent (a consented secret read);
- ``POST /api/htm/tasks`` (``htm.noop``);
- ``POST /api/htm/tasks/batch`` with 100 ``htm.noop`` tasks (404 before the route existed).

Each gives requests/s, p50, p99 and max latency, the count of non-2xx answers and socket errors; the
batch also gives tasks/s. The targets of issue 14 are checked and reported beside the figures. The load
average is recorded before and after each database: the machine has two cores shared with other work,
and wrk itself runs on them.

``GRACE_BENCH_EDGE_SECONDS`` (default 5) is each wrk run's length; ``GRACE_BENCH_EDGE_BACKENDS``
(default ``sqlite,postgresql``) which databases.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import htmkit

ROOT = Path(__file__).resolve().parents[1]
GRACE = str(Path(sys.executable).with_name("grace"))
TOKEN = "grc_bench_edge_admin_token_0123456789abcdef"
SECONDS = float(os.environ.get("GRACE_BENCH_EDGE_SECONDS", "5"))
CONCURRENCY = (10, 50, 200)
BATCH = 100
MARK = "EDGE_JSON "

_DONE = f"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{MARK}{{"requests":%d,"duration_us":%d,"non_2xx":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def _lua(method: str, token: str, body: Any | None) -> str:
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "Bearer {token}"']
    if body is not None:
        text = json.dumps(body, separators=(",", ":")).replace("\\", "\\\\").replace('"', '\\"')
        lines += ['wrk.headers["Content-Type"] = "application/json"', f'wrk.body = "{text}"']
    return "\n".join(lines) + "\n" + _DONE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wrk(url: str, script: Path, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{SECONDS:g}s", "--timeout", "20s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith(MARK))
    raw = json.loads(line[len(MARK) :])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "requests": raw["requests"],
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
    }


async def _setup(client: httpx.AsyncClient) -> tuple[str, str]:
    """Store a secret, issue an agent token and give it a standing consent; return (agent token, key)."""
    admin = {"Authorization": f"Bearer {TOKEN}"}
    key = "bench_edge_key"
    stored = await client.post(
        "/api/secrets/store",
        headers=admin,
        json={"secret_key": key, "secret_value": "s3cr3t-value-for-bench", "service": "github"},
    )
    stored.raise_for_status()
    issued = await client.post("/api/tokens", headers=admin, json={"agent": "bench_agent"})
    issued.raise_for_status()
    agent = issued.json()["token"]
    ask = await client.post(
        f"/api/secrets/{key}/access", headers={"Authorization": f"Bearer {agent}"}, json={"requested_action": "read"}
    )
    consent_id = ask.json()["consent_id"]
    answered = await client.post(
        "/api/secrets/consent/respond",
        headers=admin,
        json={
            "consent_id": consent_id,
            "approved": True,
            "persistent": True,
            "valid_for_seconds": 86400,
            "idle_timeout_seconds": 86400,
        },
    )
    answered.raise_for_status()
    check = await client.post(
        f"/api/secrets/{key}/access", headers={"Authorization": f"Bearer {agent}"}, json={"requested_action": "read"}
    )
    assert check.status_code == 200, check.text
    return agent, key


def _targets(rows: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Check issue 14's targets against one database's figures."""
    out: dict[str, Any] = {}
    for c, routes in rows.items():
        health = routes["health"]["requests_per_s"]
        out[c] = {
            "auth_me_vs_health": round(routes["auth_me"]["requests_per_s"] / health, 3) if health else None,
            "submit_rps": routes["submit"]["requests_per_s"],
            "submit_vs_health": round(routes["submit"]["requests_per_s"] / health, 3) if health else None,
            "batch_tasks_per_s": routes["batch_100"].get("tasks_per_s"),
            "worst_p99_ms": max(r["p99_ms"] for name, r in routes.items() if name != "health"),
            "health_p99_ms": routes["health"]["p99_ms"],
        }
    return out


async def _one(backend: str, work: Path) -> dict[str, Any]:
    url = await htmkit.fresh(backend, "edge")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        {
            "GRACE_DATABASE_URL": url,
            "GRACE_DATA_DIR": str(work / backend),
            "GRACE_BOOTSTRAP_TOKEN": TOKEN,
            "GRACE_LOG_LEVEL": "WARNING",
            "GRACE_HTM_BURST_PER_MINUTE": "0",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        }
    )
    command = [GRACE, "serve", "--port", str(port)]
    workers = int(os.environ.get("GRACE_BENCH_EDGE_WORKERS", "2"))
    help_text = subprocess.run(  # noqa: ASYNC221 - once, before the measurement
        [GRACE, "serve", "--help"], capture_output=True, text=True, env=env
    ).stdout
    if backend == "postgresql" and workers > 1 and "--workers" in help_text:
        command += ["--workers", str(workers)]
    else:
        workers = 1
    log = (work / f"{backend}.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    result: dict[str, Any] = {"server_processes": workers, "load_before": os.getloadavg()}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and server.poll() is None, "grace serve did not start"
                await asyncio.sleep(0.2)
            agent, key = await _setup(client)
        task = {"task_type": "htm.noop", "origin": "intent"}
        scripts = {
            "health": ("/health", _lua("GET", TOKEN, None)),
            "auth_me": ("/api/auth/me", _lua("GET", TOKEN, None)),
            "routing_stats": ("/api/htm/routing/stats", _lua("GET", TOKEN, None)),
            "secret_read": (f"/api/secrets/{key}/access", _lua("POST", agent, {"requested_action": "read"})),
            "submit": ("/api/htm/tasks", _lua("POST", TOKEN, task)),
            "batch_100": ("/api/htm/tasks/batch", _lua("POST", TOKEN, {"tasks": [task] * BATCH})),
        }
        paths = {}
        for name, (path, text) in scripts.items():
            script = work / f"{backend}-{name}.lua"
            script.write_text(text)
            paths[name] = (path, script)
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        for c in CONCURRENCY:
            rows[f"c{c}"] = {}
            for name, (path, script) in paths.items():
                figures = await asyncio.to_thread(_wrk, base + path, script, c)
                if name == "batch_100":
                    ok = figures["requests"] - figures["non_2xx"]
                    figures["tasks_per_s"] = round(ok * BATCH / SECONDS, 1)
                rows[f"c{c}"][name] = figures
                print(f"   {backend} c={c} {name}: {figures}", flush=True)
        result["routes"] = rows
        result["targets"] = _targets(rows)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        result["load_after"] = os.getloadavg()
        if backend == "postgresql":
            await htmkit.drop_postgres(url)
    return result


async def run() -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    backends = os.environ.get("GRACE_BENCH_EDGE_BACKENDS", "sqlite,postgresql").split(",")
    work = Path(tempfile.mkdtemp(prefix="grace-bench-edge-"))
    results: dict[str, Any] = {
        "seconds_per_run": SECONDS,
        "cpus": os.cpu_count(),
        "note": "2 cores shared with other agents' work; wrk runs on the same cores",
        "postgres_transport": htmkit.transport(),
    }
    for backend in backends:
        results[backend] = await _one(backend, work)
    results["summary"] = {b: results[b]["targets"] for b in backends}
    return results
