"""A real ``grace serve`` in a subprocess, for tests that kill it, trace it or starve it of disk.

:class:`Served` starts the server with its own data directory and port, waits until ``/ready``
answers, and can be killed (``kill -9``) and started again on the same data. ``command_prefix``
runs it under another program (``strace``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
GRACE = str(Path(sys.executable).with_name("grace"))
TOKEN = "served-test-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """One ``grace serve`` process (and its successors, after :meth:`kill` and :meth:`start`)."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        *,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        command_prefix: Sequence[str] = (),
        umask: int = -1,
    ) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command_prefix = list(command_prefix)
        self.umask = umask  # -1: the test process's own
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRACE_")}
        self.env.update(
            GRACE_DATA_DIR=str(data_dir),
            GRACE_PORT=str(self.port),
            GRACE_BOOTSTRAP_TOKEN=TOKEN,
            GRACE_HTM_SHUTDOWN_GRACE_SECONDS="0",
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        )
        if database_url is not None:
            self.env["GRACE_DATABASE_URL"] = database_url
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, ready_timeout: float = 300.0) -> None:
        """Start the server and wait until ``/ready`` says 200 (``ready_timeout`` only stops a hang)."""
        with self.log.open("a") as sink:
            self.proc = subprocess.Popen(
                [*self.command_prefix, GRACE, "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=sink,
                stderr=sink,
                umask=self.umask,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "grace serve did not become ready:\n" + self.log.read_text()[-3000:]
            time.sleep(0.1)

    def kill(self) -> None:
        """``kill -9`` the server's whole process group, as a crash would end it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop the server as an operator would (SIGTERM), killing it if it does not end in 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=ADMIN, timeout=30)

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=ADMIN, timeout=30)
