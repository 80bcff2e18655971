"""A name given for one of a fixed set of values is read leniently and refused helpfully."""

from __future__ import annotations

import pytest

from grace import choices, errors
from grace.htm import Origin, Priority
from grace.vault.risk import SecretType


def test_a_name_is_read_whatever_its_case_and_surrounding_spaces() -> None:
    assert choices.parse(Priority, "  HIGH ", noun="priority", plural="priorities") is Priority.HIGH
    assert Origin("intent") is choices.parse(Origin, "Intent", noun="origin", plural="origins")


def test_an_unknown_name_is_refused_naming_the_valid_values() -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        SecretType.parse("passport")
    valid = [t.value for t in SecretType]
    assert caught.value.message == f"unknown secret type 'passport'; valid types: {', '.join(valid)}"
    assert caught.value.details == {"valid": valid}


def test_a_long_unknown_name_is_cut_in_the_message() -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        choices.parse(Priority, "x" * 500, noun="priority", plural="priorities")
    assert "x" * 41 not in caught.value.message and "x" * 40 in caught.value.message
