"""Sign-bit codes of a matrix's rows, to shortlist the rows worth scoring exactly.

Each row (a unit vector) is centred on the matrix's mean and kept as one bit per dimension, its
sign: 384 dimensions are six 64-bit words, 48 bytes against 1,536 for the float32 row. Ranking the
rows by ``query · (row - mean)`` is ranking them by ``query · row`` (the mean's part is the same
for every row), and the Hamming distance between the query's signs and a row's estimates the angle
between them; a scan of the codes is a few XORs and popcounts per row instead of 384
multiply-adds. The rows at the smallest distances are then scored exactly by the caller: what
this shortlist can miss, and how often, is measured in bench/bench_voice.py (docs/voice.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BitCodes"]


def _pack(signs: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint64]:
    """One row of bits per row of ``signs``, padded to whole 64-bit words."""
    width = -(-signs.shape[-1] // 64) * 64
    if signs.shape[-1] != width:
        padded = np.zeros((*signs.shape[:-1], width), dtype=np.bool_)
        padded[..., : signs.shape[-1]] = signs
        signs = padded
    return np.packbits(signs, axis=-1).view(np.uint64)


@dataclass(frozen=True)
class BitCodes:
    """The sign codes of a matrix's centred rows, stored word by word (``words[j]`` is every row's j-th word)."""

    mean: npt.NDArray[np.float32]
    words: npt.NDArray[np.uint64]

    @classmethod
    def of(cls, matrix: npt.NDArray[np.float32]) -> BitCodes:
        mean = matrix.mean(axis=0, dtype=np.float64).astype(np.float32)
        words = np.empty((-(-matrix.shape[1] // 64), matrix.shape[0]), dtype=np.uint64)
        for start in range(0, matrix.shape[0], 65_536):  # in slices: no full-size temporary
            part = matrix[start : start + 65_536]
            words[:, start : start + len(part)] = _pack(part > mean).T
        return cls(mean, words)

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes + self.mean.nbytes)

    def __len__(self) -> int:
        return int(self.words.shape[1])

    def distances(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
        """Each row's Hamming distance to the query's signs."""
        code = _pack(query > 0)
        total = np.zeros(len(self), dtype=np.uint16)
        xor = np.empty(len(self), dtype=np.uint64)
        count = np.empty(len(self), dtype=np.uint8)
        for j, word in enumerate(self.words):
            np.bitwise_xor(word, code[j], out=xor)
            np.bitwise_count(xor, out=count)
            np.add(total, count, out=total)
        return total

    def nearest(self, query: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.intp]:
        """The row numbers of at least ``count`` rows nearest the query (all rows tied at the cut-off), in row order."""
        if count >= len(self):
            return np.arange(len(self))
        found = self.distances(query)
        within = np.cumsum(np.bincount(found, minlength=self.words.shape[0] * 64 + 1))
        cut = int(np.searchsorted(within, count))
        return np.flatnonzero(found <= cut)
