"""JSON text on the hot paths: the same values as the standard library, faster."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from grace import jsontext


@pytest.mark.parametrize(
    "value",
    [
        {"task_id": "task_1", "n": 3, "ok": True, "none": None, "ratio": 0.25, "nested": {"list": [1, "two", 3.5]}},
        {"text": 'naïve café ☕ \u2028 "quoted" \\ back'},
        {"big": 2**70, "small": -(2**70)},  # wider than 64 bits: orjson refuses, json writes it
        [],
        "just text",
    ],
)
def test_what_is_written_reads_back_equal_through_either_library(value: object) -> None:
    text = jsontext.dumps(value)
    assert jsontext.loads(text) == value
    assert json.loads(text) == value


def test_keys_that_are_not_text_become_text_as_json_makes_them() -> None:
    assert jsontext.loads(jsontext.dumps({1: "a", None: "b"})) == json.loads(json.dumps({1: "a", None: "b"}))


def test_what_json_refuses_is_refused() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps({"when": datetime(2026, 1, 1, tzinfo=UTC)})
    with pytest.raises(TypeError):
        jsontext.dumps({"set": {1, 2}})


def test_nan_becomes_null_and_the_nan_json_writes_still_reads() -> None:
    assert jsontext.loads(jsontext.dumps({"x": math.nan})) == {"x": None}
    assert math.isnan(jsontext.loads('{"x": NaN}')["x"])


def test_encoded_text_is_written_as_it_is() -> None:
    assert jsontext.dumps(jsontext.Encoded('{"a":1}')) == '{"a":1}'
    assert type(jsontext.dumps(jsontext.Encoded("[]"))) is str
