"""Lint: every broken playbook under tests/playbooks/broken gives its expected error at its position.

Each file's first line says what it must produce: ``# expect: LINE:COLUMN CODE "message part"``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grace.cli.main import app
from grace.playbooks import check, check_text, default_registry

BROKEN = sorted((Path(__file__).parent.parent / "playbooks" / "broken").glob("*.yaml"))
SHIPPED = sorted((Path(__file__).parent.parent.parent / "playbooks").glob("*.yaml"))
EXPECT = re.compile(r'^# expect: (?P<line>\d+):(?P<col>\d+) (?P<code>\w+) "(?P<message>.*)"$')


def expectation(path: Path) -> tuple[int, int, str, str]:
    found = EXPECT.match(path.read_text().splitlines()[0])
    assert found, f"{path.name} does not start with its expectation"
    return int(found["line"]), int(found["col"]), found["code"], found["message"]


def test_there_are_at_least_twenty_broken_playbooks() -> None:
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_a_broken_playbook_gives_its_error_at_its_position(path: Path) -> None:
    line, col, code, message = expectation(path)
    playbook, problems = check(path, default_registry())
    assert playbook is None, "a playbook with a problem must not load"
    matching = [p for p in problems if p.code == code and message in p.message]
    assert matching, f"no {code} problem saying {message!r}; got {[str(p) for p in problems]}"
    assert (matching[0].line, matching[0].column) == (line, col), str(matching[0])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_the_shipped_playbooks_pass_lint(path: Path) -> None:
    playbook, problems = check(path, default_registry())
    assert problems == []
    assert playbook is not None and playbook.name == path.stem


def test_the_four_playbooks_of_the_seed_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "htm_timing_and_sizing",
        "secrets_capture_and_consent",
        "recording_to_learning",
        "crypto_key_persistence",
    }


def test_lint_exits_non_zero_and_prints_file_line_column() -> None:
    broken = BROKEN[0]
    result = CliRunner().invoke(app, ["playbook", "lint", str(SHIPPED[0]), str(broken)])
    assert result.exit_code == 1
    line, col, code, _ = expectation(broken)
    assert f"{broken}:{line}:{col}: {code}:" in result.output
    assert f"{SHIPPED[0]}: ok" in result.output


def test_lint_passes_clean_files_with_exit_zero() -> None:
    result = CliRunner().invoke(app, ["playbook", "lint", *map(str, SHIPPED)])
    assert result.exit_code == 0, result.output


def test_a_misspelt_name_next_to_a_false_is_still_an_error() -> None:
    # CEL's && absorbs an evaluation error beside false, so only the checker can catch this.
    text = """
version: 1
name: guard
inputs: {enabled: {type: bool, default: false}}
steps:
  - id: a
    action: htm.reap
    when: inputs.enabled && inputs.enabld
"""
    _, problems = check_text(text, "guard.yaml", default_registry())
    assert [(p.code, p.line) for p in problems] == [("undeclared", 8)]


def test_yaml_that_does_not_parse_is_reported_at_its_place() -> None:
    _, problems = check_text("version: 1\nsteps: [\n", "bad.yaml", default_registry())
    assert problems and problems[0].code == "yaml" and problems[0].line >= 2


def test_a_duplicate_key_is_a_problem_not_a_silent_override() -> None:
    text = "version: 1\nname: a\nname: b\nsteps: [{id: a, action: htm.stats}]\n"
    _, problems = check_text(text, "dup.yaml", default_registry())
    assert problems and problems[0].code == "yaml"
