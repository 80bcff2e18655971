"""The HTTP edge: ``grace serve`` driven by wrk at concurrency 10, 50 and 200, on SQLite and PostgreSQL.

For each database a fresh ``grace serve`` is started (on PostgreSQL with ``--workers`` from
``GRACE_BENCH_EDGE_WORKERS``, default 2, when the server offers the option). At each concurrency, in
one run, wrk (Debian's ``wrk``: ``apt-get install wrk``; one thread, keep-alive) drives in turn:

- ``GET /health`` (the reference: no principal, no database);
- ``GET /api/auth/me`` with a bearer token;
- ``GET /api/htm/routing/stats``;
- ``POST /api/secrets/{key}/access`` by an agent holding a standing consent (a consented secret read; the
  servers run with ``GRACE_VAULT_BURST_PER_MINUTE=0``, no burst check, since at the default of 10 every read past
  the tenth in a minute is a burst, answered ``202`` with a fresh consent request instead of the value; ``released``
  counts the values actually handed out, from the secret's ``usage_count``);
- ``POST /api/htm/tasks`` (``htm.noop``);
- ``POST /api/htm/tasks/batch`` with 100 ``htm.noop`` tasks (404 before the route existed).

Each gives requests/s, p50, p99 and max latency, the count of non-2xx answers and socket errors, and the
server's CPU time (every thread and process) per request while wrk ran; the batch also gives tasks/s.
The targets of issue 14 are checked and reported beside the figures. The load average is recorded
before and after each database: the machine has two cores shared with other work, and wrk itself runs
on them.

Before each wrk run the server is let settle: the bench waits (up to 90 s) until no task is queued or
running, so one route's backlog (the embedded workers running the tasks just submitted) does not slow
the next route's figures. Work a run leaves behind (requests wrk stopped waiting for) still costs.

``GRACE_BENCH_EDGE_SECONDS`` (default 5) is each wrk run's length; ``GRACE_BENCH_EDGE_BACKENDS``
(default ``sqlite,postgresql``) which databases; ``GRACE_BENCH_EDGE_ROUTES`` (default all) which routes,
by the names above (``health,auth_me,submit``): a slow route leaves requests behind that wrk stopped
waiting for (50 consented secret reads at c=50 take seconds to finish), and the next route pays for them.
The targets are checked only where their routes were measured. ``GRACE_BENCH_EDGE_SOURCES`` compares servers built
from other source trees in the same run: ``before=/tmp/old/src,after=src`` (default: this tree's
``src`` only, labelled ``current``). All of a database's servers run at once, each on its own fresh
database, and each route is measured on one then the other, the order alternating route by route, so
both meet the same machine (two cores shared with other work).

Beside each database's servers, in the same run, ``/health`` is measured on peers (``bench/edge_peer.py``):
a bare ASGI app answering what Grace's ``/health`` answers, one uvicorn process with ``grace serve``'s
options, on each event loop named in ``GRACE_BENCH_EDGE_PEERS`` (default ``asyncio,uvloop``; empty for
none): what a trivial server gets on this machine at that moment, so a tail can be told to be Grace's
or the machine's.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from bench import htmkit

ROOT = Path(__file__).resolve().parents[1]
GRACE = str(Path(sys.executable).with_name("grace"))
TOKEN = "grc_bench_edge_admin_token_0123456789abcdef"
SECONDS = float(os.environ.get("GRACE_BENCH_EDGE_SECONDS", "5"))
CONCURRENCY = (10, 50, 200)
ROUTES = ("health", "auth_me", "routing_stats", "secret_read", "submit", "batch_100")
CHOSEN = [r for r in os.environ.get("GRACE_BENCH_EDGE_ROUTES", ",".join(ROUTES)).split(",") if r]
BATCH = 100
SECRET_KEY = "bench_edge_key"
PEERS = [p for p in os.environ.get("GRACE_BENCH_EDGE_PEERS", "asyncio,uvloop").split(",") if p]
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


def _cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) of ``pid`` and of the processes it started, from /proc.

    Requests/s on two cores shared with other work moves 2x from one run to the next; the server's CPU
    per request moves much less, so it is what tells two trees apart on a busy machine.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


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
    key = SECRET_KEY
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
        health = routes["health"]["requests_per_s"] if "health" in routes else None
        checked: dict[str, Any] = {}
        if health and "auth_me" in routes:
            checked["auth_me_vs_health"] = round(routes["auth_me"]["requests_per_s"] / health, 3)
        if "submit" in routes:
            checked["submit_rps"] = routes["submit"]["requests_per_s"]
            if health:
                checked["submit_vs_health"] = round(routes["submit"]["requests_per_s"] / health, 3)
        if "batch_100" in routes:
            checked["batch_tasks_per_s"] = routes["batch_100"].get("tasks_per_s")
        others = [r["p99_ms"] for name, r in routes.items() if name != "health"]
        if others:
            checked["worst_p99_ms"] = max(others)
        if health:
            checked["health_p99_ms"] = routes["health"]["p99_ms"]
        out[c] = checked
    return out


async def _released(client: httpx.AsyncClient) -> int:
    """How many times the bench's secret was released so far (its ``usage_count``)."""
    answer = await client.get(f"/api/secrets/{SECRET_KEY}", headers={"Authorization": f"Bearer {TOKEN}"})
    answer.raise_for_status()
    return int(answer.json()["secret"]["usage_count"])


async def _settle(client: httpx.AsyncClient) -> float:
    """Wait until no task is queued or running (at most 90 s); return how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < 90:
        try:
            stats = (await client.get("/api/htm/routing/stats", headers={"Authorization": f"Bearer {TOKEN}"})).json()
            if stats["running"] == 0 and all(o["total_queued"] == 0 for o in stats["origins"].values()):
                break
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 1)


@dataclass
class _Server:
    label: str
    backend: str
    url: str
    base: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    workers: int
    paths: dict[str, tuple[str, Path]]


async def _start(backend: str, work: Path, label: str, src: Path, n: int) -> _Server:
    """Start one ``grace serve`` from ``src`` on a fresh database, and give it its secret and agent."""
    url = await htmkit.fresh(backend, f"edge_{n}")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        {
            "GRACE_DATABASE_URL": url,
            "GRACE_DATA_DIR": str(work / f"{backend}-{label}"),
            "GRACE_BOOTSTRAP_TOKEN": TOKEN,
            "GRACE_LOG_LEVEL": "WARNING",
            "GRACE_HTM_BURST_PER_MINUTE": "0",
            # The consented read measures releases, not the anomaly path a burst takes: no burst check.
            "GRACE_VAULT_BURST_PER_MINUTE": "0",
            "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)]),
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
    log = (work / f"{backend}-{label}.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await _wait_healthy(client, process, 120, "grace serve")
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
    unknown = set(CHOSEN) - set(scripts)
    if unknown:
        raise ValueError(f"GRACE_BENCH_EDGE_ROUTES names no route {sorted(unknown)}; the routes: {', '.join(scripts)}")
    paths = {}
    for name, (path, text) in ((n, scripts[n]) for n in scripts if n in CHOSEN):
        script = work / f"{backend}-{label}-{name}.lua"
        script.write_text(text)
        paths[name] = (path, script)
    return _Server(label, backend, url, base, process, log, workers, paths)


async def _wait_healthy(client: httpx.AsyncClient, process: subprocess.Popen[bytes], seconds: float, what: str) -> None:
    """Wait until ``/health`` answers 200 (a server just started); fail if it exits or takes ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, f"{what} did not start"
        await asyncio.sleep(0.2)


async def _start_peer(work: Path, loop: str) -> _Server:
    """Start the bare ASGI peer (bench/edge_peer.py) on ``loop``; it serves only ``/health``."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    label = f"peer_{loop}"
    log = (work / f"{label}.log").open("wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "bench.edge_peer", str(port), loop], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await _wait_healthy(client, process, 60, f"the {label} peer")
    script = work / f"{label}-health.lua"
    script.write_text(_lua("GET", TOKEN, None))
    return _Server(label, "none", "", base, process, log, 1, {"health": ("/health", script)})


async def _stop(server: _Server) -> None:
    # The PostgreSQL database is dropped after the server is gone; with the before and after servers of
    # --workers 2 each, a run holds about 90 connections (the machine's server allows 100 in all).
    server.process.terminate()
    try:
        await asyncio.to_thread(server.process.wait, 30)
    except subprocess.TimeoutExpired:
        server.process.kill()
    server.log.close()
    if server.backend == "postgresql":
        await htmkit.drop_postgres(server.url)


async def _backend(backend: str, work: Path, sources: list[tuple[str, Path]]) -> dict[str, Any]:
    """Every source's server at once; each route measured on each in turn (the order alternating)."""
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    servers: list[_Server] = []
    peers: list[_Server] = []
    try:
        for n, (label, src) in enumerate(sources):
            servers.append(await _start(backend, work, label, src, n))
        if "health" in CHOSEN:
            for loop in PEERS:
                peers.append(await _start_peer(work, loop))
        rows: dict[str, dict[str, dict[str, dict[str, Any]]]] = {s.label: {} for s in servers + peers}
        turn = 0
        for c in CONCURRENCY:
            for server in servers + peers:
                rows[server.label][f"c{c}"] = {}
            for name in servers[0].paths:
                measured = servers + peers if name == "health" else servers
                order = measured if turn % 2 == 0 else list(reversed(measured))
                turn += 1
                for server in order:
                    path, script = server.paths[name]
                    if server in peers:  # only /health: nothing to settle
                        cpu = _cpu_seconds(server.process.pid)
                        figures = await asyncio.to_thread(_wrk, server.base + path, script, c)
                        cpu = _cpu_seconds(server.process.pid) - cpu
                        figures["settled_s"] = 0.0
                    else:
                        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
                            settled = await _settle(client)
                            released = await _released(client) if name == "secret_read" else 0
                            cpu = _cpu_seconds(server.process.pid)
                            figures = await asyncio.to_thread(_wrk, server.base + path, script, c)
                            cpu = _cpu_seconds(server.process.pid) - cpu
                            if name == "secret_read":
                                # Values handed out while wrk ran (a 202 is a consent request, not a read).
                                figures["released"] = await _released(client) - released
                        figures["settled_s"] = settled
                    # The server's CPU while wrk ran, per answered request (a submission's includes running
                    # the task on the embedded workers, as far as they kept up).
                    figures["server_cpu_ms_per_request"] = round(cpu * 1000 / max(figures["requests"], 1), 3)
                    figures["load_1m"] = round(os.getloadavg()[0], 2)
                    if name == "batch_100":
                        ok = figures["requests"] - figures["non_2xx"]
                        figures["tasks_per_s"] = round(ok * BATCH / SECONDS, 1)
                    rows[server.label][f"c{c}"][name] = figures
                    print(f"   {backend} {server.label} c={c} {name}: {figures}", flush=True)
        for server in servers:
            result[server.label] = {
                "server_processes": server.workers,
                "routes": rows[server.label],
                "targets": _targets(rows[server.label]),
            }
        for peer in peers:
            result[peer.label] = {"server_processes": 1, "routes": rows[peer.label]}
    finally:
        for server in servers + peers:
            try:
                await _stop(server)
            except Exception as exc:  # every server is stopped whatever happened to the one before
                print(f"   stopping {server.label} ({backend}) failed: {type(exc).__name__}: {exc}", flush=True)
        result["load_after"] = os.getloadavg()
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
    sources = [
        (label, Path(path) if Path(path).is_absolute() else ROOT / path)
        for label, _, path in (
            part.partition("=") for part in os.environ.get("GRACE_BENCH_EDGE_SOURCES", "current=src").split(",")
        )
    ]
    for backend in backends:
        results[backend] = await _backend(backend, work, sources)
    results["summary"] = {b: {label: results[b][label]["targets"] for label, _ in sources} for b in backends}
    for b in backends:  # the peers' /health beside Grace's: requests/s and p99 ms at each concurrency
        for loop in PEERS:
            peer = results[b].get(f"peer_{loop}")
            if peer is not None:
                results["summary"][b][f"peer_{loop}"] = {
                    c: {"health_rps": r["health"]["requests_per_s"], "health_p99_ms": r["health"]["p99_ms"]}
                    for c, r in peer["routes"].items()
                }
    return results
