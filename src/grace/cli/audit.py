"""``grace audit``: check the vault's audit log, export its signed checkpoints, re-anchor it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from grace import storage
from grace.cli.common import console, err_console, fail, open_services, run
from grace.vault import VerifyReport

app = typer.Typer(help="The vault's tamper-evident audit log.", no_args_is_help=True)

FINDINGS = ("modified", "deleted", "inserted", "reordered", "truncated", "forked", "bad_checkpoints")


def _print_report(report: VerifyReport) -> None:
    against = f", checked against {report.against} exported checkpoints" if report.against else ""
    console.print(f"{report.entries} entries, {report.checkpoints} signed checkpoints{against}")
    for kind in FINDINGS:
        found = getattr(report, kind)
        if found:
            shown = ", ".join(str(s) for s in found[:20]) + (" …" if len(found) > 20 else "")
            console.print(f"[red]{kind.replace('_', ' ')}:[/red] {len(found)} at seq {shown}")
    if report.anchor:
        console.print(f"[red]anchor:[/red] {report.anchor}")
    if report.tampered_rows:
        console.print(f"[red]tampered rows:[/red] {len(report.tampered_rows)} (their seals do not match)")
        for row in report.tampered_rows:
            console.print(f"  {row['table']} {row['id']}")
    if report.ok:
        console.print("audit log intact, every sealed row intact")


@app.command("verify")
def verify(
    against: Path | None = typer.Option(
        None,
        "--against",
        help="Also check the log against a file of signed checkpoints (from `grace audit export`, or a copy of"
        " the anchor file): a log cut below one of them is reported.",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
) -> None:
    """Check the hash chain, signed checkpoints, anchor and row seals; report every entry and row tampered with.

    Exits 2 when it finds anything.
    """

    try:
        exported = against.read_text() if against is not None else None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {against}: {getattr(exc, 'strerror', None) or exc}") from None

    async def work() -> bool:
        async with open_services() as services:
            heads = services.vault.read_audit_export(exported) if exported is not None else []
            report = await services.vault.verify_audit(heads)
        _print_report(report)
        return report.ok

    if not run(work):
        raise fail("the audit log or a sealed row has been tampered with, or cut (see above)", code=2)


@app.command("checkpoint")
def checkpoint() -> None:
    """Sign the current head of the log now and update the anchor file outside the database."""

    async def work() -> None:
        async with open_services() as services:
            made = await services.vault.audit.checkpoint()
        console.print(f"checkpoint at seq {made.seq}" if made else "the audit log is empty")

    run(work)


@app.command("export")
def export(
    file: Path = typer.Argument(..., help="Where to write the signed checkpoints (replaced if it exists)."),
) -> None:
    """Write every signed checkpoint of the log to FILE, the current head signed first, to keep elsewhere.

    Keep the file off this machine (or at least off this disk): `grace audit verify --against FILE` then
    catches a log cut below any of its checkpoints, even if the database and the anchor file were both
    changed.
    """

    async def work() -> dict[str, object]:
        async with open_services() as services:
            return await services.vault.export_audit()

    document = run(work)
    try:
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        storage.write_private(tmp, json.dumps(document, indent=1) + "\n")  # 0600 whatever the umask
        tmp.replace(file)
    except OSError as exc:
        raise fail(f"cannot write {file}: {exc.strerror or exc}") from None
    checkpoints = document["checkpoints"]
    assert isinstance(checkpoints, list)
    newest = f", the newest at seq {checkpoints[-1]['seq']}" if checkpoints else ""
    console.print(f"exported {len(checkpoints)} signed checkpoints{newest} to {file}; keep a copy off this machine")


@app.command("reanchor")
def reanchor(
    reason: str = typer.Option("", "--reason", help="Why (recorded in the audit entry): the incident or the upgrade."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation when the log is not intact."),
) -> None:
    """Sign the current head into the anchor file, with an audit entry saying so and what the anchor held.

    Use it after an investigated incident (the log was cut and cannot be restored from a backup), for an
    install from before the anchor, or after moving the anchor (GRACE_AUDIT_ANCHOR_PATH) without its
    file. Deleted, modified, inserted or reordered entries stay reported by `grace audit verify`.
    """

    async def work() -> str:
        async with open_services() as services:
            report = await services.vault.verify_audit()
            if not report.ok:
                _print_report(report)
                if not yes and not typer.confirm("Re-anchor the log at its current head anyway?", err=True):
                    return ""
            made = await services.vault.reanchor_audit(actor="cli", reason=reason)
            after = await services.vault.verify_audit()
        still = "" if after.ok else " (`grace audit verify` still reports what the anchor cannot explain)"
        return f"re-anchored at seq {made.seq}{still}"

    done = run(work)
    if not done:
        err_console.print("nothing changed")
        raise typer.Exit(1)
    console.print(done)
