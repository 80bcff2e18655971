"""``grace voice``: add a recording and follow it through its stages, search, show, list, export, delete.

The CLI runs beside the database, so it acts as the user named by ``--user``. ``add`` runs the
stages in this process (a worker pool of its own) and shows a progress bar; with ``--no-wait`` it
only queues them for ``grace serve`` or ``grace worker``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn

from grace import errors
from grace.auth import Principal
from grace.cli.common import console, fail, open_services, print_table, run
from grace.services import Services

app = typer.Typer(help="Voice notes: transcribed on this machine, searchable by meaning.", no_args_is_help=True)

POLL_SECONDS = 0.25


async def _principal(services: Services, username: str) -> Principal:
    user = await services.accounts.get_user(username)
    return Principal(user.id, user.username, user.role)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, secs = divmod(float(value), 60)
    return f"{int(minutes)}:{secs:05.2f}"


@app.command("add")
def add(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="The recording."),
    title: str = typer.Option(..., "--title", "-t", help="The note's title."),
    user: str = typer.Option(..., "--user", "-u", help="Username that owns the note."),
    purpose: str = typer.Option("", "--purpose", help="What the note is for."),
    learning: bool = typer.Option(True, "--learning/--no-learning", help="Consent to feeding the learning loop."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Process here with a progress bar, or only queue it."),
) -> None:
    """Add a recording: store it encrypted, consent, transcribe, chunk, embed and index it."""
    data = file.read_bytes()

    async def work() -> None:
        async with open_services() as services:
            principal = await _principal(services, user)
            voice = services.voice
            note_id = (await voice.start(principal, title=title, purpose=purpose))["session_id"]
            await voice.upload(principal, note_id, data)
            scopes = ["recording", "transcription"] + (["learning"] if learning else [])
            status = await voice.consent(principal, note_id, scopes)
            if not wait:
                console.print(f"queued {note_id}: the stages run in grace serve or grace worker")
                return
            await services.htm.start_workers()
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%")) as bar:
                shown = bar.add_task("decode", total=1.0)
                while status["status"] == "processing":
                    bar.update(shown, completed=status["progress"], description=str(status["stage"]))
                    await asyncio.sleep(POLL_SECONDS)
                    status = await voice.status(principal, note_id)
                bar.update(shown, completed=status["progress"], description=status["status"])
            if status["status"] != "completed":
                raise errors.GraceError(f"{note_id} failed: {status['error']} (grace voice reprocess is the API's)")
            console.print(f"added {note_id}: {_seconds(status['duration_seconds'])} of audio, searchable")

    run(work)


@app.command("search")
def search(
    query: str = typer.Argument(..., help="What you said, in your own words."),
    user: str = typer.Option(..., "--user", "-u", help="Whose notes to search."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=50, help="How many hits."),
) -> None:
    """Search your notes by meaning and words; each hit names the sentence and when it was said."""

    async def work() -> None:
        async with open_services() as services:
            hits = await services.voice.search(await _principal(services, user), query, top_k=top_k)
        if not hits:
            console.print("no matches")
            return
        print_table(
            ["note"],
            ["title", "at", "score", "said"],
            ([h.note_id, h.title, f"{_seconds(h.start)}-{_seconds(h.end)}", f"{h.score:.3f}", h.snippet] for h in hits),
        )

    run(work)


@app.command("list")
def list_(
    user: str = typer.Option(..., "--user", "-u", help="Whose notes to list."),
    limit: int = typer.Option(50, "--limit", min=1, max=200, help="At most this many notes."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many (the next page)."),
) -> None:
    """List your notes, newest first."""

    async def work() -> None:
        async with open_services() as services:
            page = await services.voice.list_notes(await _principal(services, user), limit=limit, offset=offset)
        print_table(
            ["note"],
            ["title", "status", "length", "created"],
            (
                [n["id"], n["title"], n["status"], _seconds(n["duration_seconds"]), str(n["created_at"])]
                for n in page["notes"]
            ),
        )
        console.print(f"{len(page['notes'])} of {page['total']}")

    run(work)


@app.command("show")
def show(
    note_id: str = typer.Argument(..., help="The note's id."),
    user: str = typer.Option(..., "--user", "-u", help="Whose note it is."),
) -> None:
    """Show a note's status and, once transcribed, its transcript with times."""

    async def work() -> None:
        async with open_services() as services:
            principal = await _principal(services, user)
            status = await services.voice.status(principal, note_id)
            console.print(f"{status['title']} ({note_id}): {status['status']}, {_seconds(status['duration_seconds'])}")
            console.print(f"steps: {', '.join(status['steps_completed']) or 'none'}")
            if status["error"]:
                console.print(f"error: {status['error']}")
            if status["learning"]:
                console.print(f"learning: {status['learning']}")
            if "transcribed" in status["steps_completed"]:
                _, segments, _ = await services.voice.segments(principal, note_id)
                for segment in segments:
                    console.print(f"[{_seconds(segment['start'])}] {segment['text']}")

    run(work)


@app.command("export")
def export(
    note_id: str = typer.Argument(..., help="The note's id."),
    user: str = typer.Option(..., "--user", "-u", help="Whose note it is."),
    fmt: str = typer.Option("srt", "--format", "-f", help="srt, vtt or json."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
) -> None:
    """Export a transcript as subtitles (SRT, WebVTT) or JSON with word timings."""
    if fmt not in ("srt", "vtt", "json"):
        raise fail("--format must be srt, vtt or json")

    async def work() -> str:
        async with open_services() as services:
            result = await services.voice.transcript(await _principal(services, user), note_id, fmt)
        return result if isinstance(result, str) else json.dumps(result, indent=2)

    out = run(work)
    if output is None:
        typer.echo(out)
    else:
        output.write_text(out)
        console.print(f"wrote {output}")


@app.command("delete")
def delete(
    note_id: str = typer.Argument(..., help="The note's id."),
    user: str = typer.Option(..., "--user", "-u", help="Whose note it is."),
) -> None:
    """Delete a note and every trace of it: audio and its key, transcript, chunks, vectors, index rows."""

    async def work() -> None:
        async with open_services() as services:
            await services.voice.delete(await _principal(services, user), note_id)
        console.print(f"deleted {note_id}")

    run(work)


@app.command("reindex")
def reindex(
    from_stage: str = typer.Option("embed", "--from", help="transcribe (a new speech model), chunk or embed."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Run the stages here, or only queue them."),
) -> None:
    """Rebuild every note from a stage after a model change (all owners' notes: Grace's own maintenance)."""

    async def work() -> None:
        async with open_services() as services:
            started = await services.voice.reindex(from_stage=from_stage)
            if wait and started:
                await services.htm.start_workers()
                pending = len(started)
                while pending:
                    await asyncio.sleep(POLL_SECONDS)
                    pending = await services.voice.processing_count(started)
        console.print(f"reindexed {len(started)} note(s) from {from_stage}")

    run(work)
