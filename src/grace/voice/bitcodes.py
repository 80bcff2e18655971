"""Sign-bit codes of a matrix's rows, to shortlist the rows worth scoring exactly.

Each row (a unit vector) is centred on the matrix's mean and kept as one bit per dimension, its
sign: 384 dimensions are six 64-bit words, 48 bytes against 1,536 for the float32 row. Ranking the
rows by ``query · (row - mean)`` is ranking them by ``query · row`` (the mean's part is the same
for every row), and the Hamming distance between the query's signs and a row's estimates the angle
between them; a scan of the codes is a few XORs and popcounts per row instead of 384
multiply-adds. The rows at the smallest distances are then scored exactly by the caller: what
this shortlist can miss, and how often, is measured in bench/bench_voice.py (docs/voice.md).

:class:`Int8Rows` is the step between: each row as 384 signed bytes and one scale, a quarter of the
float32 row, so scoring the shortlist reads a quarter of the memory, and only the few rows it puts
first are scored again from the float32 matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BitCodes", "Int8Rows"]


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
        return cls(mean, cls.of_rows(mean, matrix))

    def changed(self, keep: npt.NDArray[np.bool_], added: npt.NDArray[np.float32]) -> BitCodes:
        """The codes of the rows ``keep`` picks followed by ``added``'s, centred on the same mean."""
        fresh = BitCodes.of_rows(self.mean, added)
        return BitCodes(self.mean, np.concatenate([self.words[:, keep], fresh], axis=1))

    @staticmethod
    def of_rows(mean: npt.NDArray[np.float32], matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.uint64]:
        words = np.empty((-(-len(mean) // 64), matrix.shape[0]), dtype=np.uint64)
        for start in range(0, matrix.shape[0], 65_536):
            part = matrix[start : start + 65_536]
            words[:, start : start + len(part)] = _pack(part > mean).T
        return words

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


_BLOCK = 2048


@dataclass(frozen=True)
class Int8Rows:
    """A matrix's rows as signed bytes, each row with its own scale (its largest magnitude / 127).

    ``scale[i] * (query @ rows[i])`` is row i's dot product with the query to within about a
    thousandth for unit rows of 384 dimensions: enough to choose which rows to score exactly.
    """

    rows: npt.NDArray[np.int8]
    scale: npt.NDArray[np.float32]

    @classmethod
    def of(cls, matrix: npt.NDArray[np.float32]) -> Int8Rows:
        rows = np.empty(matrix.shape, dtype=np.int8)
        scale = np.empty(len(matrix), dtype=np.float32)
        for start in range(0, len(matrix), 65_536):  # in slices: no full-size temporary
            part = matrix[start : start + 65_536]
            largest = np.abs(part).max(axis=1)
            np.divide(largest, 127.0, out=scale[start : start + len(part)])
            safe = np.where(largest > 0, 127.0 / np.where(largest > 0, largest, 1.0), 0.0).astype(np.float32)
            rows[start : start + len(part)] = np.rint(part * safe[:, None])
        return cls(rows, scale)

    def changed(self, keep: npt.NDArray[np.bool_], added: npt.NDArray[np.float32]) -> Int8Rows:
        """The rows ``keep`` picks followed by ``added``'s."""
        fresh = Int8Rows.of(added)
        kept = int(keep.sum())
        rows = np.empty((kept + len(added), self.rows.shape[1]), dtype=np.int8)
        if kept == len(self.rows):  # a plain copy: indexing by a mask took 1.3 s at 819,174 rows, this 0.07 s
            rows[:kept] = self.rows
        else:
            np.compress(keep, self.rows, axis=0, out=rows[:kept])
        rows[kept:] = fresh.rows
        return Int8Rows(rows, np.concatenate([self.scale[keep], fresh.scale]))

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.scale.nbytes)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def scores(self, picked: npt.NDArray[np.intp], query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The approximate dot products of rows ``picked`` with ``query``, a block at a time (each
        block's bytes widened to float32 in a buffer that stays in the processor's cache)."""
        out = np.empty(len(picked), dtype=np.float32)
        size = min(_BLOCK, len(picked))
        narrow = np.empty((size, self.rows.shape[1]), dtype=np.int8)
        wide = np.empty((size, self.rows.shape[1]), dtype=np.float32)
        for start in range(0, len(picked), _BLOCK):
            part = picked[start : start + _BLOCK]
            n = len(part)
            np.take(self.rows, part, axis=0, out=narrow[:n])
            np.copyto(wide[:n], narrow[:n])
            np.dot(wide[:n], query, out=out[start : start + n])
        out *= self.scale[picked]
        return out
