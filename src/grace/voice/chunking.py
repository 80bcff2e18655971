"""Timed words into sentences and into overlapping chunks (the seed's 500 characters, 100 overlap).

Pure functions over :class:`Word` lists, property-tested against a small reference
(``tests/unit/test_voice_chunking.py``). A chunk is cut on word boundaries: it holds whole words
joined by single spaces, at most ``size`` characters unless one word alone is longer, and the next
chunk starts at the first word that lies within the last ``overlap`` characters of the previous one
(always at least one word further, so chunking ends). Each chunk and sentence carries the start of
its first word and the end of its last, in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CHUNK_OVERLAP",
    "CHUNK_SIZE",
    "SENTENCE_SIZE",
    "Chunk",
    "Sentence",
    "Word",
    "chunk_of",
    "chunk_words",
    "search_sentences",
    "sentences",
]

CHUNK_SIZE = 500
CHUNK_OVERLAP = 100
# A sentence longer than this (speech the transcriber left unpunctuated) is searched in pieces.
SENTENCE_SIZE = 300
_SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class Word:
    """One spoken word (no surrounding spaces) and when it was said, in seconds."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Chunk:
    """A run of whole words: its text, its place among the words, and its start and end in seconds."""

    index: int
    text: str
    first_word: int
    last_word: int  # inclusive
    start: float
    end: float


@dataclass(frozen=True)
class Sentence:
    """Words up to one ending in '.', '?' or '!' (or the last word)."""

    first_word: int
    last_word: int  # inclusive
    text: str
    start: float
    end: float


def _clean(words: Sequence[Word]) -> list[Word]:
    return [Word(w.text.strip(), w.start, w.end) for w in words if w.text.strip()]


def chunk_words(words: Sequence[Word], size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP) -> list[Chunk]:
    """Cut ``words`` into chunks of at most ``size`` characters overlapping by at most ``overlap``."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("chunk size must be positive and the overlap smaller than it")
    items = _clean(words)
    chunks: list[Chunk] = []
    first = 0
    while first < len(items):
        last = first
        length = len(items[first].text)
        while last + 1 < len(items) and length + 1 + len(items[last + 1].text) <= size:
            last += 1
            length += 1 + len(items[last].text)
        text = " ".join(w.text for w in items[first : last + 1])
        chunks.append(Chunk(len(chunks), text, first, last, items[first].start, items[last].end))
        if last + 1 >= len(items):
            break
        # The next chunk begins at the earliest word that starts within the last ``overlap`` characters.
        following = last + 1
        tail = 0
        candidate = last + 1
        for i in range(last, first, -1):
            tail += len(items[i].text) + (1 if i < last else 0)
            if tail > overlap:
                break
            candidate = i
        first = max(min(candidate, following), first + 1)
    return chunks


def sentences(words: Sequence[Word]) -> list[Sentence]:
    """Group ``words`` into sentences, each with its own start and end."""
    items = _clean(words)
    found: list[Sentence] = []
    begin = 0
    for i, word in enumerate(items):
        if word.text.endswith(_SENTENCE_END) or i == len(items) - 1:
            run = items[begin : i + 1]
            found.append(Sentence(begin, i, " ".join(w.text for w in run), run[0].start, run[-1].end))
            begin = i + 1
    return found


def search_sentences(words: Sequence[Word], size: int = SENTENCE_SIZE) -> list[Sentence]:
    """The sentences search embeds: each sentence of ``words``, one longer than ``size`` cut on word boundaries.

    Word positions are those of ``words`` without blank entries, as for :func:`chunk_words`.
    """
    items = _clean(words)
    found: list[Sentence] = []
    for sentence in sentences(items):
        if len(sentence.text) <= size:
            found.append(sentence)
            continue
        for piece in chunk_words(items[sentence.first_word : sentence.last_word + 1], size, 0):
            first = sentence.first_word + piece.first_word
            last = sentence.first_word + piece.last_word
            found.append(Sentence(first, last, piece.text, piece.start, piece.end))
    return found


def chunk_of(sentence: Sentence, chunks: Sequence[Chunk]) -> int:
    """The index of the chunk holding most of ``sentence``'s words (the earliest on a tie)."""
    best, most = 0, -1
    for chunk in chunks:
        shared = min(sentence.last_word, chunk.last_word) - max(sentence.first_word, chunk.first_word) + 1
        if shared > most:
            best, most = chunk.index, shared
    return best
