"""Chunking timed words (500 characters, 100 overlap, on word boundaries), against a small reference."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from grace.voice import Word, chunk_words, sentences
from grace.voice.chunking import chunk_of, search_sentences

words_st = st.lists(
    st.text(alphabet="abcdefghij.?!", min_size=1, max_size=40).filter(lambda w: w.strip(".?!") != ""),
    max_size=200,
)


def timed(texts: list[str]) -> list[Word]:
    return [Word(t, float(i), float(i) + 0.5) for i, t in enumerate(texts)]


def reference_overlap(prev_last: int, next_first: int, texts: list[str]) -> int:
    """Characters the next chunk repeats from the previous one (words next_first..prev_last)."""
    shared = texts[next_first : prev_last + 1]
    return len(" ".join(shared)) if shared else 0


@settings(max_examples=200, deadline=None)
@given(words_st, st.integers(min_value=20, max_value=600), st.integers(min_value=0, max_value=120))
def test_chunks_cover_every_word_in_order_within_the_limits(texts: list[str], size: int, overlap: int) -> None:
    overlap = min(overlap, size - 1)
    chunks = chunk_words(timed(texts), size, overlap)
    if not texts:
        assert chunks == []
        return
    assert chunks[0].first_word == 0 and chunks[-1].last_word == len(texts) - 1
    for c in chunks:
        assert c.text == " ".join(texts[c.first_word : c.last_word + 1])
        assert len(c.text) <= size or c.first_word == c.last_word  # one word longer than a chunk stands alone
        assert c.start == float(c.first_word) and c.end == float(c.last_word) + 0.5
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.first_word < nxt.first_word <= prev.last_word + 1  # progress, and no word skipped
        assert reference_overlap(prev.last_word, nxt.first_word, texts) <= overlap


def test_the_seeds_sizes_on_a_long_transcript() -> None:
    texts = [f"word{i:03d}" for i in range(400)]  # 7 characters each
    chunks = chunk_words(timed(texts))
    assert all(len(c.text) <= 500 for c in chunks)
    # 62 words fill 500 characters (62*7 + 61 spaces = 495); 12 words (95 characters) are repeated.
    assert chunks[0].last_word == 61 and chunks[1].first_word == 50


@given(words_st)
def test_sentences_partition_the_words(texts: list[str]) -> None:
    found = sentences(timed(texts))
    assert [i for s in found for i in range(s.first_word, s.last_word + 1)] == list(range(len(texts)))
    for s in found[:-1]:
        assert s.text.endswith((".", "?", "!"))


@given(words_st, st.integers(min_value=20, max_value=300))
def test_search_sentences_cover_every_word_and_land_in_the_chunk_holding_most_of_them(
    texts: list[str], size: int
) -> None:
    words = timed(texts)
    found = search_sentences(words, size)
    assert [i for s in found for i in range(s.first_word, s.last_word + 1)] == list(range(len(texts)))
    chunks = chunk_words(words)
    for s in found:
        assert len(s.text) <= size or s.first_word == s.last_word
        assert s.start == float(s.first_word) and s.end == float(s.last_word) + 0.5
        home = chunks[chunk_of(s, chunks)]
        held = min(s.last_word, home.last_word) - max(s.first_word, home.first_word) + 1
        assert held >= 1
        assert all(held >= min(s.last_word, c.last_word) - max(s.first_word, c.first_word) + 1 for c in chunks)
