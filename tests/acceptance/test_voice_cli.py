"""``grace voice`` as a person uses it, with real speech through the real models, on both databases."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from grace.cli.main import app
from tests.voicekit import Notes


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    return CliRunner()


def _run(grace: CliRunner, *args: str) -> Result:
    return grace.invoke(app, list(args))


def test_add_search_show_list_export_reindex_and_delete(grace: CliRunner, tmp_path: Path, spoken: Notes) -> None:
    assert _run(grace, "users", "create", "aaron").exit_code == 0
    assert _run(grace, "users", "create", "bella").exit_code == 0
    recording = tmp_path / "garden.wav"
    recording.write_bytes(spoken.garden.wav)

    added = _run(grace, "voice", "add", str(recording), "--title", "Garden", "--user", "aaron", "--no-learning")
    assert added.exit_code == 0, added.output
    match = re.search(r"added (vn_\w+): 0:1\d\.\d\d of audio, searchable", added.output)
    assert match, added.output
    note_id = match.group(1)

    found = _run(grace, "voice", "search", "watering the flowers", "--user", "aaron")
    assert found.exit_code == 0 and note_id in found.output and "roses" in found.output.lower()
    assert note_id not in _run(grace, "voice", "search", "watering the flowers", "--user", "bella").output

    listed = _run(grace, "voice", "list", "--user", "aaron")
    assert note_id in listed.output and "completed" in listed.output and "1 of 1" in listed.output
    shown = _run(grace, "voice", "show", note_id, "--user", "aaron")
    assert shown.exit_code == 0 and "[0:00." in shown.output and "tomatoes" in shown.output.lower()
    assert "not fed to the learning loop" in shown.output

    exported = tmp_path / "garden.vtt"
    assert (
        _run(grace, "voice", "export", note_id, "--user", "aaron", "--format", "vtt", "-o", str(exported)).exit_code
        == 0
    )
    assert exported.read_text().startswith("WEBVTT")
    srt = _run(grace, "voice", "export", note_id, "--user", "aaron")
    assert srt.output.startswith("1\n00:00:0")
    refused = _run(grace, "voice", "export", note_id, "--user", "bella")
    assert refused.exit_code == 1 and "no voice note" in refused.output

    reindexed = _run(grace, "voice", "reindex", "--from", "embed")
    assert reindexed.exit_code == 0 and "reindexed 1 note(s) from embed" in reindexed.output
    assert note_id in _run(grace, "voice", "search", "watering the flowers", "--user", "aaron").output

    assert _run(grace, "voice", "delete", note_id, "--user", "bella").exit_code == 1
    deleted = _run(grace, "voice", "delete", note_id, "--user", "aaron")
    assert deleted.exit_code == 0 and f"deleted {note_id}" in deleted.output
    assert "no matches" in _run(grace, "voice", "search", "watering the flowers", "--user", "aaron").output

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is text, not a recording\n")
    bad = _run(grace, "voice", "add", str(not_audio), "--title", "x", "--user", "aaron")
    assert bad.exit_code == 1 and "not audio Grace reads" in bad.output
