"""``grace keys``: the vault's master key and keyring."""

from __future__ import annotations

import typer

from grace.cli.common import console, open_services, run
from grace.vault import generate_encoded

app = typer.Typer(help="The vault's master key and key-encryption keys.", no_args_is_help=True)


@app.command("generate")
def generate() -> None:
    """Print a fresh random master key for GRACE_MASTER_KEY (nothing is stored)."""
    console.print(generate_encoded())


@app.command("status")
def status() -> None:
    """Show the active key, its expiry (warns 7 days ahead), the next scheduled rotation and every archived key."""

    async def work() -> None:
        async with open_services() as services:
            info = await services.vault.keys_status()
        active = info["active_key"] or {}
        console.print(f"master key: {info['master_key_source']} (id {info['master_key_id']})")
        console.print(f"active key: {active.get('id')} term {active.get('term')}, expires {info['expires_at']}")
        if info["expired"]:
            console.print("[red]the active key has expired: run `grace keys rotate`[/red]")
        elif info["expiring_soon"]:
            console.print("[yellow]warning: the active key expires within 7 days; run `grace keys rotate`[/yellow]")
        console.print(f"next scheduled rotation: {info['next_scheduled_rotation']}")
        if info["rotation_in_progress"]:
            console.print(f"unfinished rotation {info['rotation_in_progress']}: `grace keys rotate` resumes it")
        for key in info["keys"]:
            console.print(f"  term {key['term']:>3}  {key['id']}  {key['status']:<9} data keys: {key['data_keys']}")

    run(work)


@app.command("rotate")
def rotate(
    batch_size: int = typer.Option(
        500, "--batch-size", min=1, max=10_000, help="Data keys re-wrapped per transaction."
    ),
) -> None:
    """Rotate the key-encryption key, or resume an interrupted rotation; old keys are archived, never deleted."""

    async def work() -> None:
        async with open_services() as services:
            report = await services.vault.rotate_keys(by="cli", batch_size=batch_size)
        verb = "resumed and finished" if report.resumed else "finished"
        console.print(
            f"rotation {report.rotation_id} {verb}: active key {report.to_key_id}, "
            f"{report.rewrapped} data keys re-wrapped, archived {len(report.archived)} key(s)"
        )

    run(work)
