"""Fusions: which read the full-text ranking, and that the ones that do not ignore it entirely."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grace.voice import fusion

ranked_by_vector = st.lists(
    st.tuples(st.integers(1, 60), st.floats(-1, 1, allow_nan=False)), unique_by=lambda item: item[0], max_size=30
).map(lambda found: sorted(found, key=lambda item: -item[1]))
ranked_by_words = st.lists(st.integers(1, 60), unique=True, max_size=30)


@given(ranked_by_vector, ranked_by_words, st.integers(1, 20))
def test_a_fusion_that_does_not_use_full_text_ranks_the_same_without_it(
    by_vector: list[tuple[int, float]], by_words: list[int], limit: int
) -> None:
    # A search skips the full-text query for such a fusion: its results must be what they were with it.
    for method in fusion.FUSIONS:
        if not fusion.uses_words(method):
            assert fusion.fuse(by_vector, by_words, method, limit) == fusion.fuse(by_vector, [], method, limit)


@given(ranked_by_vector, ranked_by_words.filter(bool), st.integers(1, 20))
def test_every_fusion_that_says_it_uses_full_text_does(
    by_vector: list[tuple[int, float]], by_words: list[int], limit: int
) -> None:
    with_words = {m: fusion.fuse(by_vector, by_words, m, limit) for m in fusion.FUSIONS if fusion.uses_words(m)}
    assert set(with_words) == {"bonus", "rrf", "words"}
    # words ranks by full text alone; rrf adds each chunk's full-text rank; bonus lifts a matched chunk.
    assert [c for c, _ in with_words["words"]] == by_words[:limit]
    vector_rank = {c: r for r, (c, _) in enumerate(by_vector)}
    word_rank = {c: r for r, c in enumerate(by_words)}
    assert all(
        score
        == pytest.approx(sum(1 / (fusion.RRF_K + ranks[c] + 1) for ranks in (vector_rank, word_rank) if c in ranks))
        for c, score in with_words["rrf"]
    )
    matched = set(by_words)
    assert all(
        score == pytest.approx(dict(by_vector)[c] + (fusion.KEYWORD_BONUS if c in matched else 0.0))
        for c, score in with_words["bonus"]
    )


def test_the_default_fusion_reads_no_full_text_and_an_unknown_one_is_refused() -> None:
    from grace.voice.notes import FUSION

    assert FUSION == "vector" and not fusion.uses_words(FUSION)
    with pytest.raises(ValueError, match="unknown fusion 'cosine'"):
        fusion.uses_words("cosine")
