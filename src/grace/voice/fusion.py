"""Combining the two rankings of a search: vector similarity and full-text matches.

- ``vector``: vector similarity alone.
- ``bonus``: vector similarity, plus a small fixed bonus for a chunk that also matches the query's
  words (reorders near ties only; a keyword match never lifts an unrelated chunk far).
- ``rrf``: reciprocal rank fusion of both rankings (k = 60), the common naive fusion.
- ``words``: the full-text ranking alone (BM25 / ``ts_rank_cd``), a baseline for the measurement.

The vector ranking is the chunks' best sentences' similarities (or the chunks' own, the older way).

Which one Grace uses is chosen by measurement (``bench/bench_voice.py``, figures in docs/voice.md).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["FUSIONS", "KEYWORD_BONUS", "RRF_K", "fuse", "uses_words"]

# Each fusion, and whether it reads the full-text ranking (a search skips the full-text query when not).
_USES_WORDS = {"vector": False, "bonus": True, "rrf": True, "words": True}
FUSIONS = tuple(_USES_WORDS)
KEYWORD_BONUS = 0.05
RRF_K = 60


def uses_words(method: str) -> bool:
    """Whether the fusion ``method`` reads the full-text ranking; a search runs the full-text query only then."""
    try:
        return _USES_WORDS[method]
    except KeyError:
        raise ValueError(f"unknown fusion {method!r}; one of {', '.join(FUSIONS)}") from None


def fuse(
    by_vector: Sequence[tuple[int, float]], by_words: Sequence[int], method: str, limit: int
) -> list[tuple[int, float]]:
    """Return up to ``limit`` ``(chunk id, score)``, best first.

    ``by_words`` is ignored by a fusion that does not use it (:func:`uses_words`), so a search may pass
    an empty one instead of querying the full-text index.
    """
    if method == "vector":
        ranked = list(by_vector)
    elif method == "bonus":
        matched = set(by_words)
        ranked = sorted(
            ((c, s + (KEYWORD_BONUS if c in matched else 0.0)) for c, s in by_vector), key=lambda item: -item[1]
        )
    elif method == "rrf":
        scores: dict[int, float] = {}
        for rank, (chunk, _) in enumerate(by_vector):
            scores[chunk] = scores.get(chunk, 0.0) + 1.0 / (RRF_K + rank + 1)
        for rank, chunk in enumerate(by_words):
            scores[chunk] = scores.get(chunk, 0.0) + 1.0 / (RRF_K + rank + 1)
        ranked = sorted(scores.items(), key=lambda item: -item[1])
    elif method == "words":
        ranked = [(chunk, 1.0 / (rank + 1)) for rank, chunk in enumerate(by_words)]
    else:
        raise ValueError(f"unknown fusion {method!r}; one of {', '.join(FUSIONS)}")
    return ranked[:limit]
