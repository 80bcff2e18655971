"""Bit codes and the shortlist a large owner's search goes through, against plain arithmetic."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from grace.voice import index
from grace.voice.bitcodes import BitCodes, Int8Rows


def unit_rows(rng: np.random.Generator, n: int, dim: int = 384) -> npt.NDArray[np.float32]:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    unit: npt.NDArray[np.float32] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return unit


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.sampled_from([384, 100, 64]))
def test_distances_count_the_signs_that_differ_from_the_query(seed: int, n: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = unit_rows(rng, n, dim)
    query = unit_rows(rng, 1, dim)[0]
    codes = BitCodes.of(matrix)
    by_hand = ((matrix > matrix.mean(axis=0)) != (query > 0)).sum(axis=1)
    assert codes.distances(query).tolist() == by_hand.tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 400), st.integers(1, 500))
def test_nearest_holds_every_row_at_least_as_close_as_the_cut(seed: int, n: int, count: int) -> None:
    rng = np.random.default_rng(seed)
    codes = BitCodes.of(unit_rows(rng, n))
    query = unit_rows(rng, 1)[0]
    rows = codes.nearest(query, count)
    distances = codes.distances(query)
    assert len(rows) >= min(count, n) and sorted(rows.tolist()) == rows.tolist()
    if len(rows) < n:
        left_out = np.setdiff1d(np.arange(n), rows)
        assert distances[left_out].min() > distances[rows].max()


def test_a_large_owner_finds_the_sentences_said_near_the_query_through_the_shortlist() -> None:
    # 60,000 sentence vectors in 8,000 chunks: 200 topics, each sentence a noisy copy of its topic.
    # A query near one topic must find the same chunks through the shortlist as by scoring every vector.
    rng = np.random.default_rng(7)
    topics = unit_rows(rng, 200)
    topic_of = rng.integers(0, 200, 60_000)
    matrix = topics[topic_of] + 0.08 * rng.standard_normal((60_000, 384)).astype(np.float32)
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    chunk_ids = np.sort(rng.integers(1, 8_001, 60_000)).astype(np.int64)
    owner = index._Owner(1, chunk_ids, np.arange(1, 60_001, dtype=np.int64), matrix, BitCodes.of(matrix))
    # The same owner with the int8 step between the bit codes and the exact scores.
    narrowed = dataclasses.replace(owner, narrow=Int8Rows.of(matrix))
    same = 0
    for t in range(20):
        query = topics[t] + 0.05 * rng.standard_normal(384).astype(np.float32)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        shortlisted = owner.rank(query, 10)
        every = owner.rank(query, 10, exact=True)
        assert shortlisted[0] == every[0]  # the best chunk, its score and its sentence
        assert narrowed.rank(query, 10) == shortlisted  # the int8 step keeps every row the top ten needs
        same += [c for c, _, _ in shortlisted] == [c for c, _, _ in every]
    assert same >= 18


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5000))
def test_int8_rows_score_each_picked_row_within_its_rounding_and_about_a_thousandth_overall(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = unit_rows(rng, n)
    matrix[rng.integers(0, n)] = 0.0  # a row of zeros scores zero, not a division by zero
    query = unit_rows(rng, 1)[0]
    picked = np.sort(rng.choice(n, size=min(n, 3000), replace=False))
    narrow = Int8Rows.of(matrix)
    error = np.abs(narrow.scores(picked, query) - matrix[picked] @ query)
    # Each element is off by at most half its row's step, so a row's score by at most that times the
    # query's summed magnitudes (a bound, not a likelihood: a fixed "< 0.002" failed one seed in many).
    assert (error <= narrow.scale[picked] / 2 * np.abs(query).sum() + 1e-6).all()
    if len(picked) >= 100:  # and typically within a thousandth (the rounding's spread is about half that)
        assert np.sqrt(np.mean(error**2)) < 1e-3


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 200), st.integers(0, 50), st.sampled_from([384, 100]))
def test_codes_changed_row_by_row_are_the_rows_kept_then_the_rows_added(
    seed: int, n: int, added: int, dim: int
) -> None:
    # What a refresh of a large owner does: drop some rows, add a note's, keep the mean the codes centre on.
    rng = np.random.default_rng(seed)
    matrix, fresh = unit_rows(rng, n, dim), unit_rows(rng, added, dim)
    keep = rng.random(n) < 0.7
    codes, narrow = BitCodes.of(matrix), Int8Rows.of(matrix)
    after = np.concatenate([matrix[keep], fresh])
    query = unit_rows(rng, 1, dim)[0]
    changed = codes.changed(keep, fresh)
    by_hand = ((after > codes.mean) != (query > 0)).sum(axis=1)
    assert changed.distances(query).tolist() == by_hand.tolist() and len(changed) == len(after)
    rows = np.arange(len(after))
    assert np.array_equal(narrow.changed(keep, fresh).scores(rows, query), Int8Rows.of(after).scores(rows, query))
