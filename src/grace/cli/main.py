"""The ``grace`` command."""

from __future__ import annotations

import importlib.util

import typer

from grace import __version__, storage
from grace.cli import audit, htm, intents, keys, playbooks, secrets, tasks, tokens, users, voice
from grace.cli.common import console, err_console, fail, open_services, run, settings
from grace.integrity import SEAL_LABEL
from grace.vault import stored_master_key

app = typer.Typer(
    name="grace",
    help="Grace: control plane for a personal AI agent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users.app, name="users")
app.add_typer(tokens.app, name="tokens")
app.add_typer(secrets.app, name="secrets")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(tasks.app, name="tasks")
app.add_typer(htm.app, name="htm")
app.add_typer(voice.app, name="voice")
app.add_typer(playbooks.app, name="playbook")
app.add_typer(intents.app, name="intents")
app.add_typer(intents.learning_app, name="learning")
app.command("worker")(tasks.worker)


def _version(value: bool) -> None:
    if value:
        console.print(f"grace {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Grace: control plane for a personal AI agent."""


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations up to the newest; re-running is a no-op."""

    async def work() -> None:
        cfg = settings()
        db = storage.Database(cfg.database_url)
        try:
            # The row seals' migration seals the rows already stored: it needs the master key.
            master = await stored_master_key(cfg, db)
            before, after = await storage.upgrade(db, seal_key=master.derive(SEAL_LABEL) if master else None)
        finally:
            await db.dispose()
        if before == after:
            console.print(f"database already at {after}; nothing to do")
        else:
            console.print(f"database upgraded from {before or 'empty'} to {after}")

    run(work)


@app.command("serve")
def serve(
    host: str | None = typer.Option(None, help="Address to listen on (default GRACE_HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to listen on (default GRACE_PORT, 8000)."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="Server processes sharing the port (PostgreSQL only: the bus and all accounting are in the database).",
    ),
) -> None:
    """Run Grace: migrate, create the first admin if needed, and serve the API and UI."""
    import uvicorn

    from grace import logs, memory
    from grace.api import create_app

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    try:
        cfg = settings().model_copy(update=overrides)
    except Exception as exc:  # ConfigurationError is a GraceError; this is belt and braces
        raise fail(str(exc)) from None
    if cfg.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise fail("GRACE_EVENT_LOOP=uvloop needs the uvloop package (pip install uvloop), or use asyncio")
    # uvloop's own servers take one new connection per turn of the loop; this one takes all that wait.
    loop = "grace.api.eventloop:eager_uvloop" if cfg.event_loop == "uvloop" else "asyncio"
    if workers > 1 and cfg.backend == "sqlite":
        raise fail(
            "--workers needs PostgreSQL (GRACE_DATABASE_URL=postgresql://...). On SQLite one process serves:"
            " its event bus lives in that process (another process would not hear its events: consent"
            " requests, task events) and its writes are serialised inside it (several processes would"
            " queue on the database file's one write lock instead)."
        )

    async def prepare() -> None:
        async with open_services(bootstrap=True) as services:
            creds = services.bootstrap
        url = f"http://{cfg.host}:{cfg.port}"
        console.print(f"Grace {__version__} on {cfg.backend} — data in {cfg.data_dir}")
        if workers > 1:
            console.print(f"{workers} server processes on one port")
        console.print(f"Serving at {url}  (API docs at {url}/docs)")
        if creds is not None:
            console.print("First start: an admin was created. These are shown once; keep them safe.")
            console.print(f"  username: {creds.username}")
            console.print(f"  password: {creds.password}")
            console.print(f"  token:    {creds.token}")
            console.print(
                f"Sign in: send 'Authorization: Bearer <token>', or POST the username and password to "
                f"{url}/api/auth/login; try it at {url}/docs (Authorize)."
            )
        else:
            console.print("Sign in with your existing credentials; a new token: grace tokens create --user admin")

    run(prepare)
    logs.configure(cfg.log_level, json_lines=cfg.log_json)
    if workers > 1:
        # Each process builds its own app from the environment (api.served_app); the host and port
        # given here are uvicorn's, so they need not reach the processes' settings.
        uvicorn.run(
            "grace.api:served_app",
            factory=True,
            workers=workers,
            host=cfg.host,
            port=cfg.port,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            loop=loop,
            # A process starting on a busy machine (imports, migrations checked, services built) can take
            # longer than uvicorn's 5 s to answer its first health ping; it would be killed and restarted.
            timeout_worker_healthcheck=120,
        )
        return
    app = create_app(cfg)
    memory.settle()  # what start-up made lives as long as the process: keep it out of collections
    # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1; Grace
    # believes it only from GRACE_TRUSTED_PROXIES (api/forwarded.py).
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        loop=loop,
    )


def main() -> None:
    """Entry point for the ``grace`` console script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        err_console.print("interrupted")
        raise SystemExit(130) from None
