"""``grace audit``: check the vault's audit log."""

from __future__ import annotations

import typer

from grace.cli.common import console, fail, open_services, run

app = typer.Typer(help="The vault's tamper-evident audit log.", no_args_is_help=True)


@app.command("verify")
def verify() -> None:
    """Check the hash chain and signed checkpoints; report modified, deleted, inserted, reordered, truncated entries."""

    async def work() -> bool:
        async with open_services() as services:
            report = await services.vault.verify_audit()
        console.print(f"{report.entries} entries, {report.checkpoints} signed checkpoints")
        for kind in ("modified", "deleted", "inserted", "reordered", "truncated", "bad_checkpoints"):
            found = getattr(report, kind)
            if found:
                shown = ", ".join(str(s) for s in found[:20]) + (" …" if len(found) > 20 else "")
                console.print(f"[red]{kind.replace('_', ' ')}:[/red] {len(found)} at seq {shown}")
        if report.ok:
            console.print("audit log intact")
        return report.ok

    if not run(work):
        raise fail("the audit log has been tampered with", code=2)


@app.command("checkpoint")
def checkpoint() -> None:
    """Sign the current head of the log now and update the anchor file outside the database."""

    async def work() -> None:
        async with open_services() as services:
            made = await services.vault.audit.checkpoint()
        console.print(f"checkpoint at seq {made.seq}" if made else "the audit log is empty")

    run(work)
