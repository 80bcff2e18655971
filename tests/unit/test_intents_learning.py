"""The learning loop's arithmetic against answers worked out by hand, and its invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grace.intents import OutcomeFacts, summarise
from grace.intents.learning import (
    brier_score,
    calibration,
    configured_from,
    percentile,
    suggest_sla_ms,
)


def fact(success: bool, seconds: float, confidence: float | None = None, **kw: object) -> OutcomeFacts:
    fields: dict[str, object] = {"action_type": "intent_ingestion", "domain": "ingestion", "task_type": "intent.ingest"}
    fields.update(kw)
    return OutcomeFacts(success=success, execution_time=seconds, confidence=confidence, **fields)  # type: ignore[arg-type]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_the_brier_score_and_calibration_table_of_a_known_set() -> None:
    pairs = [(0.9, True), (0.9, False), (0.2, True), (0.25, False)]
    assert brier_score(pairs) == pytest.approx((0.01 + 0.81 + 0.64 + 0.0625) / 4)
    assert brier_score([]) is None
    table = calibration(pairs)
    assert [(b["lower"], b["count"], b["success_rate"]) for b in table] == [(0.2, 2, 0.5), (0.9, 2, 0.5)]
    assert table[0]["mean_confidence"] == pytest.approx(0.225)
    assert calibration([(1.0, True)])[0]["lower"] == 0.9  # a confidence of 1 goes in the top bin


def test_a_suggested_sla_is_the_observed_p95_with_headroom_once_there_are_enough_successes() -> None:
    assert suggest_sla_ms([1.0, 2.0, 3.0, 4.0]) is None
    assert suggest_sla_ms([1.0] * 19 + [2.0]) == 1200  # p95 of twenty is the 19th: 1 s, +20%
    assert suggest_sla_ms([0.0] * 5) == 100


def test_a_summary_groups_by_action_type_domain_and_task_type() -> None:
    outcomes = [fact(True, float(s), 0.8, sla_ms=4000, sla_met=s <= 4) for s in range(1, 7)] + [
        fact(False, 9.0, 0.8, sla_ms=4000, sla_met=False),
        fact(True, 0.5, None, action_type="send_mail", domain="mail", task_type=None),
    ]
    summary = summarise(outcomes, configured_from({}))
    ingest = summary["by_action_type"]["intent_ingestion"]
    assert ingest["count"] == 7 and ingest["successes"] == 6
    assert ingest["execution_time"]["p50"] == 4.0 and ingest["execution_time"]["max"] == 9.0
    assert ingest["brier_score"] == pytest.approx((6 * 0.04 + 0.64) / 7)
    assert ingest["sla_met_rate"] == pytest.approx(4 / 7)
    assert summary["by_domain"]["mail"]["brier_score"] is None
    assert summary["total"]["count"] == 8
    [suggestion] = summary["sla_suggestions"]
    assert suggestion["observed_p95_ms"] == 6000.0 and suggestion["suggested_sla_ms"] == 7200
    assert (suggestion["configured_sla_ms"], suggestion["configured_from"]) == (4000, "requested")
    configured = summarise(outcomes, configured_from({"intent.ingest": 5000}))["sla_suggestions"][0]
    assert (configured["configured_sla_ms"], configured["configured_from"]) == (5000, "default")


def test_the_configured_sla_is_read_as_the_task_manager_reads_its_defaults_at_normal_priority() -> None:
    outcomes = [fact(True, 1.0, 0.8, sla_ms=4000)]

    def shown(defaults: dict[str, int]) -> tuple[int | None, str | None]:
        [suggestion] = summarise(outcomes, configured_from(defaults))["sla_suggestions"]
        return suggestion["configured_sla_ms"], suggestion["configured_from"]

    every = {"intent.ingest:normal": 1000, "intent.ingest": 2000, "normal": 3000, "intent.ingest:high": 9}
    assert shown(every) == (1000, "default")  # type and priority first
    assert shown({k: v for k, v in every.items() if k != "intent.ingest:normal"}) == (2000, "default")
    assert shown({"normal": 3000, "high": 9, "intent.ingest:high": 9}) == (3000, "default")
    assert shown({"high": 9, "intent.ingest:high": 9}) == (4000, "requested")  # no default for normal


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=50))
def test_calibration_accounts_for_every_outcome_and_the_brier_score_stays_in_range(
    pairs: list[tuple[float, bool]],
) -> None:
    assert sum(b["count"] for b in calibration(pairs)) == len(pairs)
    score = brier_score(pairs)
    if not pairs:
        assert score is None
    else:
        assert score is not None and 0 <= score <= 1


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_a_percentile_is_one_of_the_values_and_grows_with_q(values: list[float], q: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    assert p is not None and p <= (percentile(ordered, min(100.0, q + 10)) or 0)
