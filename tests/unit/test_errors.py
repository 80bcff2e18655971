"""The exception tree errors.py draws is the one it defines, and every error has a code of its own."""

from __future__ import annotations

import re

from grace import errors
from grace.api.errors import status_for

BRANCH = re.compile(r"^(?P<indent>(?:│   |    )*)[├└]── (?P<name>\w+)")


def drawn_tree() -> dict[str, str]:
    """Return each class the module docstring draws, with the class it is drawn under."""
    doc = errors.__doc__ or ""
    lines = [line.strip("\n")[4:] for line in doc.splitlines() if "── " in line or line.strip() == "GraceError"]
    assert lines and lines[0] == "GraceError", "the tree starts at GraceError"
    parents: dict[str, str] = {}
    path = ["GraceError"]
    for line in lines[1:]:
        match = BRANCH.match(line)
        assert match, f"not a branch of the tree: {line!r}"
        depth = len(match["indent"]) // 4 + 1
        path = [*path[:depth], match["name"]]
        parents[match["name"]] = path[depth - 1]
    return parents


def defined_tree() -> dict[str, str]:
    found = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        if cls is not errors.GraceError:
            found[name] = cls.__bases__[0].__name__
    return found


def test_the_docstring_draws_every_error_under_its_parent() -> None:
    assert drawn_tree() == defined_tree()


def test_every_error_has_a_code_of_its_own() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), "two errors share a code: a client could not tell them apart"


def test_a_leaf_answers_with_its_parents_status() -> None:
    # Clients that only know the parent's status keep working when a leaf is added below it.
    for name, parent in defined_tree().items():
        cls, base = getattr(errors, name), getattr(errors, parent)
        if base is not errors.GraceError:
            assert status_for(cls()) == status_for(base())


def test_every_default_message_is_one_line_of_plain_words() -> None:
    # A docstring that wraps must not reach a client as "...\n    ..." in error.message.
    for name in errors.__all__:
        message = getattr(errors, name)().message
        assert message and "\n" not in message and "  " not in message, f"{name}: {message!r}"
