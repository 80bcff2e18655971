"""The search index over one owner's chunks: full text per backend, and exact vector search.

- Full text. SQLite: the FTS5 table ``voice_chunks_fts`` (porter stemming), its rowid the chunk's
  id, written by the index stage. PostgreSQL: the generated ``tsv`` column (English configuration)
  with a GIN index, kept by the database itself.
- Vectors: search over the caller's own sentence vectors only. :class:`VectorCache` holds each
  recent owner's sentence vectors in memory (a float32 matrix), scores them against the query (a
  matrix product: every one of them, or for an owner with more than ``EXACT_UP_TO`` the shortlist
  their bit codes pick) and ranks each chunk by its best sentence. When ``voice_index_versions``
  says that owner's searchable notes changed, it reads from ``voice_index_changes`` which notes
  the changes since its copy were about and reloads only those notes' vectors (the owner's whole
  matrix only when that cannot be told).
  Why sentences, and why not sqlite-vec or a query per search: measured in bench/bench_voice.py,
  figures in docs/voice.md.

A query's words are reduced to ``\\w+`` tokens joined by OR before either backend sees them, so no
query syntax reaches FTS5 or ``to_tsquery``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, and_, func, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from grace.voice.bitcodes import BitCodes, Int8Rows
from grace.voice.tables import (
    voice_chunks,
    voice_index_changes,
    voice_index_versions,
    voice_notes,
    voice_sentences,
)

__all__ = [
    "CHANGES_KEPT",
    "EXACT_UP_TO",
    "RESCORED",
    "SHORTLIST",
    "VectorCache",
    "add_full_text",
    "best_sentences",
    "bump_version",
    "chunk_vector_search",
    "drop_full_text",
    "hit_rows",
    "keyword_search",
    "searchable_vectors",
    "sentences_by_id",
    "tokens",
    "vector_search",
]

_TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_TOKENS = 32


def tokens(query: str) -> list[str]:
    """Return the query's words, lower-cased, at most 32."""
    return [t.lower() for t in _TOKEN.findall(query)][:MAX_TOKENS]


async def add_full_text(conn: AsyncConnection, rows: Sequence[tuple[int, str, str]]) -> None:
    """Index ``(chunk id, owner id, text)`` rows (SQLite; PostgreSQL's column is generated)."""
    if conn.dialect.name != "sqlite" or not rows:
        return
    await conn.execute(
        text("INSERT OR REPLACE INTO voice_chunks_fts (rowid, text, owner_id) VALUES (:id, :text, :owner)"),
        [{"id": i, "text": t, "owner": o} for i, o, t in rows],
    )


async def drop_full_text(conn: AsyncConnection, chunk_ids: Sequence[int]) -> None:
    """Remove chunks from the full-text index (SQLite; PostgreSQL's rows go with the chunks)."""
    if conn.dialect.name != "sqlite" or not chunk_ids:
        return
    await conn.execute(text("DELETE FROM voice_chunks_fts WHERE rowid = :id"), [{"id": i} for i in chunk_ids])


async def keyword_search(conn: AsyncConnection, owner_id: str, query: str, limit: int) -> list[int]:
    """Return ids of ``owner_id``'s searchable chunks matching any query word, best first."""
    words = tokens(query)
    if not words:
        return []
    if conn.dialect.name == "sqlite":
        match = " OR ".join(f'"{w}"' for w in words)
        rows = await conn.execute(
            text(
                "SELECT rowid FROM voice_chunks_fts WHERE voice_chunks_fts MATCH :match AND owner_id = :owner "
                "ORDER BY bm25(voice_chunks_fts) LIMIT :limit"
            ),
            {"match": match, "owner": owner_id, "limit": limit},
        )
    else:
        rows = await conn.execute(
            text(
                "SELECT c.id FROM voice_chunks c JOIN voice_notes n ON n.id = c.note_id "
                "WHERE c.owner_id = :owner AND n.steps LIKE '%indexed%' "
                "AND c.tsv @@ to_tsquery('english', :q) "
                "ORDER BY ts_rank_cd(c.tsv, to_tsquery('english', :q)) DESC LIMIT :limit"
            ),
            {"owner": owner_id, "q": " | ".join(words), "limit": limit},
        )
    return [int(r[0]) for r in rows]


# Each owner's last this many changes are kept in ``voice_index_changes``; a cache further behind
# (or behind by more than this many notes) loads the owner's vectors whole.
CHANGES_KEPT = 1000


async def bump_version(conn: AsyncConnection, owner_id: str, note_id: str | None) -> int:
    """Record, in the caller's write transaction, that ``owner_id``'s searchable notes changed.

    ``note_id`` is the note the change was about (made searchable, no longer searchable, reindexed
    or deleted): it is written to ``voice_index_changes`` under the new version, so a process
    holding the owner's vectors reloads only that note's. None (a change that is not one note's)
    leaves no row there, and a process behind it loads the owner's vectors whole. The owner's row
    in ``voice_index_versions`` is updated first, which holds the other writers of that owner's
    versions until this transaction ends, so versions commit in order. Returns the new version.
    """
    moved = await conn.execute(
        update(voice_index_versions)
        .where(voice_index_versions.c.owner_id == owner_id)
        .values(version=voice_index_versions.c.version + 1)
        .returning(voice_index_versions.c.version)
    )
    version = moved.scalar_one_or_none()
    if version is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(voice_index_versions).values(owner_id=owner_id, version=1)
        version = (
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[voice_index_versions.c.owner_id],
                    set_={"version": voice_index_versions.c.version + 1},
                ).returning(voice_index_versions.c.version)
            )
        ).scalar_one()
    version = int(version)
    if note_id is not None:
        await conn.execute(voice_index_changes.insert().values(owner_id=owner_id, version=version, note_id=note_id))
    if version % 100 == 0:  # now and then, the rows no cache can use any more
        await conn.execute(
            voice_index_changes.delete().where(
                voice_index_changes.c.owner_id == owner_id, voice_index_changes.c.version <= version - CHANGES_KEPT
            )
        )
    return version


async def changed_notes(conn: AsyncConnection, owner_id: str, after: int, upto: int) -> list[str] | None:
    """The notes the changes to ``owner_id``'s searchable notes after version ``after`` up to
    ``upto`` were about, or None when some change of them is not recorded (one that was not a
    note's, one older than the table, or one pruned) or they are more than ``CHANGES_KEPT``."""
    if not 0 <= after < upto or upto - after > CHANGES_KEPT:
        return None
    rows = (
        await conn.execute(
            select(voice_index_changes.c.note_id).where(
                voice_index_changes.c.owner_id == owner_id,
                voice_index_changes.c.version > after,
                voice_index_changes.c.version <= upto,
            )
        )
    ).all()
    if len(rows) != upto - after:
        return None
    return sorted({str(r[0]) for r in rows})


async def _version(conn: AsyncConnection, owner_id: str) -> int:
    found = await conn.execute(
        select(voice_index_versions.c.version).where(voice_index_versions.c.owner_id == owner_id)
    )
    return int(found.scalar_one_or_none() or 0)


_LOAD_BATCH = 10_000


def _room(count: int) -> int:
    """Rows kept free past an owner's ``count`` vectors, for the notes added next to be written in
    place: a 16th of them, between 1,024 and 32,768 (48 MB of 384-wide rows)."""
    return min(max(1024, count // 16), 32_768)


def _with_room(blobs: Sequence[bytes], count: int) -> npt.NDArray[np.float32]:
    """The vectors' bytes as the first ``count`` rows of a writable float32 buffer with :func:`_room` past them."""
    width = sum(len(b) for b in blobs) // 4 // count
    buffer = np.empty((count + _room(count), width), dtype=np.float32)
    at = 0
    for blob in blobs:
        part = np.frombuffer(blob, dtype="<f4").reshape(-1, width)
        buffer[at : at + len(part)] = part
        at += len(part)
    assert at == count
    return buffer


def _matrix(blobs: Sequence[bytes], count: int) -> npt.NDArray[np.float32]:
    """The vectors' bytes as one C-contiguous float32 matrix (native order), one row per vector."""
    joined = blobs[0] if len(blobs) == 1 else b"".join(blobs)
    return np.ascontiguousarray(np.frombuffer(joined, dtype="<f4").reshape(count, -1), dtype=np.float32)


async def searchable_vectors(
    conn: AsyncConnection, owner_id: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The owner's searchable sentence vectors: (chunk ids, sentence ids, matrix), one row per sentence."""
    found = await _searchable(conn, owner_id, None)
    return found.chunk_ids, found.sentence_ids, found.matrix


@dataclass
class _Rows:
    chunk_ids: npt.NDArray[np.int64]
    sentence_ids: npt.NDArray[np.int64]
    notes: npt.NDArray[np.int32]  # each row's note, as its number in ``note_numbers``
    note_numbers: dict[str, int]
    matrix: npt.NDArray[np.float32]
    buffer: npt.NDArray[np.float32] | None = None  # ``matrix`` is its first rows; the rest are free


async def _searchable(
    conn: AsyncConnection, owner_id: str, only: Sequence[str] | None, note_numbers: dict[str, int] | None = None
) -> _Rows:
    """The owner's searchable sentence vectors (of the notes ``only`` names, when given), each row
    with its note's number in ``note_numbers`` (new notes numbered as they come).

    A chunk with no sentence vectors (a note processed before they existed) has its own vector, with
    sentence id 0. Those chunks are found from the owner's chunk ids (one column, by the owner's
    index) less the chunks the sentences named, and only their vectors are read, by id: a join of
    the chunks with the notes and the sentences left PostgreSQL, on tables without statistics yet,
    to a nested loop that ran for minutes at 100k chunks. The rows arrive in batches straight into
    arrays: one pass, no per-row Python work beyond collecting each batch's bytes.
    """
    numbers = {} if note_numbers is None else note_numbers
    searchable = voice_notes.c.steps.like("%indexed%")
    sentences = (
        select(voice_sentences.c.chunk_id, voice_sentences.c.id, voice_sentences.c.embedding, voice_sentences.c.note_id)
        .join(voice_notes, voice_notes.c.id == voice_sentences.c.note_id)
        .where(voice_sentences.c.owner_id == owner_id, voice_sentences.c.embedding.is_not(None), searchable)
    )
    owned_chunks = select(voice_chunks.c.id).where(voice_chunks.c.owner_id == owner_id)
    if only is not None:  # by the notes' own index (note_id, idx) on either table
        sentences = sentences.where(voice_sentences.c.note_id.in_(list(only)))
        owned_chunks = owned_chunks.where(voice_chunks.c.note_id.in_(list(only)))
    chunk_parts: list[npt.NDArray[np.int64]] = []
    sentence_parts: list[npt.NDArray[np.int64]] = []
    note_parts: list[npt.NDArray[np.int32]] = []
    blobs: list[bytes] = []

    def number(note: str) -> int:
        found = numbers.get(note)
        if found is None:
            found = numbers[note] = len(numbers)
        return found

    async def read(statement: Any) -> None:
        result = await conn.stream(statement)
        async for batch in result.partitions(_LOAD_BATCH):
            chunk_parts.append(np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch)))
            sentence_parts.append(np.fromiter((r[1] for r in batch), dtype=np.int64, count=len(batch)))
            note_parts.append(np.fromiter((number(r[3]) for r in batch), dtype=np.int32, count=len(batch)))
            blobs.append(b"".join([bytes(r[2]) for r in batch]))

    await read(sentences)
    owned = np.fromiter((await conn.execute(owned_chunks)).scalars(), dtype=np.int64)
    with_sentences = np.concatenate(chunk_parts) if chunk_parts else np.zeros(0, dtype=np.int64)
    without = np.setdiff1d(owned, with_sentences).tolist()
    for start in range(0, len(without), 1000):
        await read(
            select(voice_chunks.c.id, literal(0, BigInteger), voice_chunks.c.embedding, voice_chunks.c.note_id)
            .join(voice_notes, voice_notes.c.id == voice_chunks.c.note_id)
            .where(
                voice_chunks.c.id.in_(without[start : start + 1000]),
                voice_chunks.c.embedding.is_not(None),
                searchable,
            )
        )
    if not blobs:
        empty = np.zeros(0, dtype=np.int64)
        return _Rows(empty, empty.copy(), np.zeros(0, dtype=np.int32), numbers, np.zeros((0, 0), dtype=np.float32))
    chunk_ids = np.concatenate(chunk_parts)
    buffer = await asyncio.to_thread(_with_room, blobs, len(chunk_ids))
    matrix = buffer[: len(chunk_ids)]
    return _Rows(chunk_ids, np.concatenate(sentence_parts), np.concatenate(note_parts), numbers, matrix, buffer)


def _best_chunks(
    chunk_ids: npt.NDArray[np.int64],
    sentence_ids: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    limit: int,
) -> list[tuple[int, float, int]]:
    """The ``limit`` chunks with the best sentences: ``(chunk id, similarity, sentence id)``, best first."""
    wanted = limit * 16
    while True:
        if len(scores) > wanted:
            rows = np.argpartition(-scores, wanted)[:wanted]
            rows = rows[np.argsort(-scores[rows], kind="stable")]
        else:
            rows = np.argsort(-scores, kind="stable")
        found: dict[int, tuple[int, float, int]] = {}
        for row in rows:
            chunk = int(chunk_ids[row])
            if chunk >= 0 and chunk not in found:  # below 0: a row dropped in place (see _Owner)
                found[chunk] = (chunk, float(scores[row]), int(sentence_ids[row]))
                if len(found) == limit:
                    return list(found.values())
        if len(rows) == len(scores):
            return list(found.values())
        wanted *= 4


async def vector_search(
    conn: AsyncConnection, owner_id: str, query: npt.NDArray[np.float32], limit: int
) -> list[tuple[int, float, int]]:
    """:meth:`VectorCache.search` without the cache: every vector of the owner is read for this query."""
    chunk_ids, sentence_ids, matrix = await searchable_vectors(conn, owner_id)
    if not len(chunk_ids):
        return []
    return _best_chunks(chunk_ids, sentence_ids, matrix @ query.astype("<f4"), limit)


# An owner with more vectors than this is searched through a shortlist: the bit codes
# (grace.voice.bitcodes) pick the SHORTLIST share of the rows nearest the query, and only those are
# scored exactly. At or under it, every vector is scored. Both measured in bench/bench_voice.py.
EXACT_UP_TO = 200_000
SHORTLIST = 0.02
# Of the shortlist, the rows whose int8 scores are the best this many are scored again exactly (at
# least 16 per chunk asked for): the int8 scores are within about 0.001 of the exact ones.
RESCORED = 1024


_blas_limited = threading.Lock()
_blas_threads: Any = None


def _one_blas_thread() -> None:
    """Keep numpy's BLAS to one thread in this process (done once, on the first search).

    OpenBLAS otherwise runs a matrix-vector product on every core and leaves its threads spinning
    after it: on two cores shared with the database and the workers that made the shortlist's
    scoring two to four times slower under load (bench/bench_voice.py, docs/voice.md), as it did
    for onnxruntime and torch (grace.voice.engines gives them one thread too).
    """
    global _blas_threads
    if _blas_threads is not None:
        return
    with _blas_limited:
        if _blas_threads is None:
            from threadpoolctl import threadpool_limits

            _blas_threads = threadpool_limits(limits=1, user_api="blas")


_SCORE_BLOCK = 2048


def _scores(matrix: npt.NDArray[np.float32], rows: npt.NDArray[np.intp], query: npt.NDArray[np.float32]) -> Any:
    """``matrix[rows] @ query``, a block of rows at a time: each block is gathered into a buffer that
    stays in the processor's cache and scored there, instead of copying every shortlisted row
    (about 29 MB at 819,150 vectors) into a new array first."""
    out = np.empty(len(rows), dtype=np.float32)
    block = np.empty((min(_SCORE_BLOCK, len(rows)), matrix.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), _SCORE_BLOCK):
        part = rows[start : start + _SCORE_BLOCK]
        gathered = block[: len(part)]
        np.take(matrix, part, axis=0, out=gathered)
        np.dot(gathered, query, out=out[start : start + len(part)])
    return out


@dataclass
class _Owner:
    version: int
    chunk_ids: npt.NDArray[np.int64]
    sentence_ids: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]
    codes: BitCodes | None = None
    narrow: Int8Rows | None = None
    # Each row's note (its number in ``note_numbers``), so a change to one note replaces its rows
    # alone; None for an entry made without them, which is always loaded whole.
    notes: npt.NDArray[np.int32] | None = None
    note_numbers: dict[str, int] = field(default_factory=dict)
    # The buffer whose first rows are ``matrix``, its rows past them free for the next notes added
    # (written there in place: no entry reads past its own rows); None once another entry took them.
    buffer: npt.NDArray[np.float32] | None = None
    # Rows dropped in place: their chunk id and note are -1, and they are never ranked. At most a
    # 16th of the rows; past that the rows are copied without them.
    dead: int = 0

    @property
    def nbytes(self) -> int:
        matrix = self.buffer if self.buffer is not None else self.matrix
        held = matrix.nbytes + self.chunk_ids.nbytes + self.sentence_ids.nbytes
        held += self.notes.nbytes if self.notes is not None else 0
        held += self.codes.nbytes if self.codes is not None else 0
        return int(held + (self.narrow.nbytes if self.narrow is not None else 0))

    def rank(self, query: npt.NDArray[np.float32], limit: int, exact: bool = False) -> list[tuple[int, float, int]]:
        """The ``limit`` best chunks for ``query`` (run in a worker thread: it is the search's arithmetic)."""
        if not len(self.chunk_ids):
            return []
        _one_blas_thread()
        query = query.astype(np.float32)
        if self.codes is None or exact:
            scores = self.matrix @ query
            if self.dead:
                scores[self.chunk_ids < 0] = -np.inf
            return _best_chunks(self.chunk_ids, self.sentence_ids, scores, limit)
        rows = self.codes.nearest(query, max(limit * 16, int(len(self.codes) * SHORTLIST)))
        if self.narrow is not None:  # the shortlist scored from its bytes; the best of it exactly
            keep = max(limit * 16, RESCORED)
            if len(rows) > keep:
                approx = self.narrow.scores(rows, query)
                if self.dead:
                    approx[self.chunk_ids[rows] < 0] = -np.inf
                rows = np.sort(rows[np.argpartition(-approx, keep)[:keep]])
        chunk_ids = self.chunk_ids[rows]
        scores = _scores(self.matrix, rows, query)
        if self.dead:
            scores[chunk_ids < 0] = -np.inf
        return _best_chunks(chunk_ids, self.sentence_ids[rows], scores, limit)


async def _load(conn: AsyncConnection, owner_id: str, version: int) -> _Owner:
    rows = await _searchable(conn, owner_id, None)
    found = _Owner(
        version, rows.chunk_ids, rows.sentence_ids, rows.matrix, None, None, rows.notes, rows.note_numbers, rows.buffer
    )
    if len(rows.matrix) <= EXACT_UP_TO:
        return found
    found.codes = await asyncio.to_thread(BitCodes.of, rows.matrix)
    found.narrow = await asyncio.to_thread(Int8Rows.of, rows.matrix)
    return found


def _changed(held: _Owner, version: int, changed: Sequence[str], rows: _Rows) -> _Owner | None:
    """``held`` with the rows of the notes ``changed`` replaced by ``rows`` (their searchable rows
    now), at ``version``; None when they cannot be put together (the vectors' width differs)."""
    assert held.notes is not None
    if len(rows.matrix) and len(held.matrix) and rows.matrix.shape[1] != held.matrix.shape[1]:
        return None  # another embedding model: everything is loaded again
    numbers = [rows.note_numbers[n] for n in changed if n in rows.note_numbers]
    drop = np.isin(held.notes, np.asarray(numbers, dtype=np.int32))
    held_rows, added = len(held.matrix), len(rows.matrix)
    dead = held.dead + int(drop.sum())
    buffer = held.buffer
    if held_rows and buffer is not None and len(buffer) >= held_rows + added and dead * 16 <= held_rows + added:
        # In place: the rows added are written past the held rows, which nothing else reads or
        # writes (the held entry keeps its own rows; the free ones pass to the new entry), and the
        # rows dropped stay, marked dead in the new entry's own ids (the held entry's are untouched).
        if added:
            buffer[held_rows : held_rows + added] = rows.matrix
        held.buffer = None
        found = _Owner(
            version,
            np.concatenate([np.where(drop, -1, held.chunk_ids), rows.chunk_ids]),
            np.concatenate([held.sentence_ids, rows.sentence_ids]),
            buffer[: held_rows + added],
            None,
            None,
            np.concatenate([np.where(drop, -1, held.notes).astype(np.int32), rows.notes]),
            rows.note_numbers,
            buffer,
            dead,
        )
        return _with_codes(found, held, np.ones(held_rows, dtype=np.bool_), rows)
    keep = ~drop & (held.chunk_ids >= 0)
    kept = int(keep.sum())
    if not len(held.matrix):
        matrix, buffer = rows.matrix, rows.buffer
    else:  # rows dropped past a 16th, or no room left: one new buffer (the held entry may be ranking meanwhile)
        buffer = np.empty((kept + added + _room(kept + added), held.matrix.shape[1]), dtype=np.float32)
        if kept == len(held.matrix):
            buffer[:kept] = held.matrix
        else:
            np.compress(keep, held.matrix, axis=0, out=buffer[:kept])
        if added:
            buffer[kept : kept + added] = rows.matrix
        matrix = buffer[: kept + added]
    found = _Owner(
        version,
        np.concatenate([held.chunk_ids[keep], rows.chunk_ids]),
        np.concatenate([held.sentence_ids[keep], rows.sentence_ids]),
        matrix,
        None,
        None,
        np.concatenate([held.notes[keep], rows.notes]),
        rows.note_numbers,
        buffer,
    )
    return _with_codes(found, held, keep, rows)


def _with_codes(found: _Owner, held: _Owner, keep: npt.NDArray[np.bool_], rows: _Rows) -> _Owner:
    """``found`` with bit codes and int8 rows when it is past ``EXACT_UP_TO``: ``held``'s rows
    ``keep`` picks, then ``rows``', centred on ``held``'s mean (or made anew when ``held`` had none)."""
    if len(found.matrix) <= EXACT_UP_TO:
        return found
    if held.codes is not None and held.narrow is not None:  # the same mean: the codes stay comparable
        fresh = rows.matrix if len(rows.matrix) else np.zeros((0, found.matrix.shape[1]), dtype=np.float32)
        found.codes = held.codes.changed(keep, fresh)
        found.narrow = held.narrow.changed(keep, fresh)
    else:
        found.codes, found.narrow = BitCodes.of(found.matrix), Int8Rows.of(found.matrix)
    return found


async def _refreshed(conn: AsyncConnection, owner_id: str, held: _Owner, version: int) -> _Owner | None:
    """``held`` brought to ``version`` by reloading only the notes changed since, or None when which
    notes changed cannot be told (then the caller loads the owner's vectors whole).

    Safe however the changes interleave with these reads: ``version`` was read before them, every
    change up to it committed before it could be read (each holds the owner's version row until it
    commits), and each changed note's rows are read as they are now, never older than ``version``;
    a change that lands meanwhile moves the version past it, and the next search reads that note
    again.
    """
    if held.notes is None:
        return None
    changed = await changed_notes(conn, owner_id, held.version, version)
    if changed is None:
        return None
    rows = await _searchable(conn, owner_id, changed, dict(held.note_numbers))
    return await asyncio.to_thread(_changed, held, version, changed, rows)


class VectorCache:
    """Recent owners' sentence vectors in memory, each brought up to date when its version moves.

    An owner's entry holds only that owner's searchable notes' vectors (a C-contiguous float32
    matrix, and for a large owner its bit codes); the least recently searched owners are dropped
    past ``max_bytes``. Every search reads the owner's version first (one row), so a note made
    searchable, reindexed or deleted by any process is seen by the next search: the notes changed
    since the entry's version are read again alone (``refreshes``), or, when which notes changed
    cannot be told, the owner's vectors whole (``loads``). The scoring runs in a worker thread,
    off the event loop.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._owners: OrderedDict[str, _Owner] = OrderedDict()
        self._lock = asyncio.Lock()
        self.loads = 0
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"VectorCache(owners={len(self._owners)}, loads={self.loads}, refreshes={self.refreshes})"

    def clear(self) -> None:
        self._owners.clear()

    def size(self, owner_id: str) -> int:
        """How many vectors of ``owner_id`` are held (0 when none are)."""
        found = self._owners.get(owner_id)
        return 0 if found is None else len(found.chunk_ids) - found.dead

    def cached(self, owner_id: str) -> _Owner | None:
        """The owner's entry as held, whatever its version (the caller checks it, see :func:`hit_rows`)."""
        found = self._owners.get(owner_id)
        if found is not None:
            self._owners.move_to_end(owner_id)
        return found

    async def entry(self, conn: AsyncConnection, owner_id: str) -> _Owner:
        """The owner's entry at the version ``conn`` reads now, brought up to it if that version moved."""
        version = await _version(conn, owner_id)
        found = self._owners.get(owner_id)
        if found is not None and found.version == version:
            self._owners.move_to_end(owner_id)
            return found
        async with self._lock:
            found = self._owners.get(owner_id)
            if found is not None and found.version > version:
                pass  # brought past it by a search that began later: it holds every change this one must see
            elif found is None or found.version != version:
                refreshed = None if found is None else await _refreshed(conn, owner_id, found, version)
                if refreshed is not None:
                    found = refreshed
                    self.refreshes += 1
                else:
                    found = await _load(conn, owner_id, version)
                    self.loads += 1
                self._owners[owner_id] = found
                self._owners.move_to_end(owner_id)
                while len(self._owners) > 1 and sum(o.nbytes for o in self._owners.values()) > self.max_bytes:
                    self._owners.popitem(last=False)
            return found

    async def search(
        self, conn: AsyncConnection, owner_id: str, query: npt.NDArray[np.float32], limit: int, *, exact: bool = False
    ) -> list[tuple[int, float, int]]:
        """``owner_id``'s searchable chunks with the sentences most similar to ``query``, best first.

        Each is ``(chunk id, cosine similarity of its best sentence, that sentence's id)``, a chunk
        counting by its best sentence. Every sentence vector is scored for an owner with up to
        ``EXACT_UP_TO`` of them (or with ``exact``); above, the ``SHORTLIST`` share of them that
        their bit codes put nearest the query.
        """
        return await self.rank(await self.entry(conn, owner_id), query, limit, exact=exact)

    @staticmethod
    async def rank(
        entry: _Owner, query: npt.NDArray[np.float32], limit: int, *, exact: bool = False
    ) -> list[tuple[int, float, int]]:
        """:meth:`search` over an entry already at hand (the arithmetic, in a worker thread)."""
        return await asyncio.to_thread(entry.rank, query, limit, exact)


async def hit_rows(
    conn: AsyncConnection, owner_id: str, chunk_ids: Sequence[int], sentence_ids: Sequence[int]
) -> tuple[int, dict[int, Any]]:
    """The owner's index version and the hits' rows, in one statement (one round trip).

    Each row is a chunk of ``chunk_ids`` that is ``owner_id``'s: its note id, index, text and times,
    its note's title, and the one sentence of ``sentence_ids`` it holds (``sentence_text``,
    ``sentence_start`` and ``sentence_end``, None for a chunk scored by its own vector). The version
    is read in the same statement, so a caller that ranked with an entry of that version knows the
    rows are the ones it ranked, and one that ranked with an older entry knows to load again.
    """
    version = (
        select(voice_index_versions.c.version).where(voice_index_versions.c.owner_id == owner_id).scalar_subquery()
    )
    held = select(func.coalesce(version, 0).label("index_version")).subquery("held")
    found = (
        (
            await conn.execute(
                select(
                    held.c.index_version,
                    voice_chunks.c.id,
                    voice_chunks.c.note_id,
                    voice_chunks.c.idx,
                    voice_chunks.c.text,
                    voice_chunks.c.start_s,
                    voice_chunks.c.end_s,
                    voice_notes.c.title,
                    voice_sentences.c.text.label("sentence_text"),
                    voice_sentences.c.start_s.label("sentence_start"),
                    voice_sentences.c.end_s.label("sentence_end"),
                ).select_from(
                    held.outerjoin(
                        voice_chunks.join(voice_notes, voice_notes.c.id == voice_chunks.c.note_id).outerjoin(
                            voice_sentences,
                            and_(
                                voice_sentences.c.chunk_id == voice_chunks.c.id,
                                voice_sentences.c.id.in_(list(sentence_ids)),
                            ),
                        ),
                        and_(voice_chunks.c.id.in_(list(chunk_ids)), voice_chunks.c.owner_id == owner_id),
                    )
                )
            )
        )
        .mappings()
        .all()
    )
    return int(found[0]["index_version"]), {int(r["id"]): r for r in found if r["id"] is not None}


async def sentences_by_id(
    conn: AsyncConnection, owner_id: str, sentence_ids: Sequence[int]
) -> dict[int, tuple[str, float, float]]:
    """``owner_id``'s sentences ``sentence_ids``: their text, start and end."""
    if not sentence_ids:
        return {}
    rows = await conn.execute(
        select(voice_sentences.c.id, voice_sentences.c.text, voice_sentences.c.start_s, voice_sentences.c.end_s).where(
            voice_sentences.c.id.in_(list(sentence_ids)), voice_sentences.c.owner_id == owner_id
        )
    )
    return {int(r[0]): (str(r[1]), float(r[2]), float(r[3])) for r in rows}


async def best_sentences(
    conn: AsyncConnection, owner_id: str, chunk_ids: Sequence[int], query: npt.NDArray[np.float32]
) -> dict[int, int]:
    """For each of ``owner_id``'s ``chunk_ids`` with sentence vectors, its sentence most similar to ``query``."""
    if not chunk_ids:
        return {}
    rows = (
        await conn.execute(
            select(voice_sentences.c.chunk_id, voice_sentences.c.id, voice_sentences.c.embedding).where(
                voice_sentences.c.chunk_id.in_(list(chunk_ids)),
                voice_sentences.c.owner_id == owner_id,
                voice_sentences.c.embedding.is_not(None),
            )
        )
    ).all()
    if not rows:
        return {}
    chunks = np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter((int(r[1]) for r in rows), dtype=np.int64, count=len(rows))
    scores = _matrix([bytes(r[2]) for r in rows], len(rows)) @ query.astype("<f4")
    return {chunk: sentence for chunk, _, sentence in _best_chunks(chunks, ids, scores, len(chunk_ids))}


async def chunk_vector_search(
    conn: AsyncConnection, owner_id: str, query: npt.NDArray[np.float32], limit: int
) -> list[tuple[int, float]]:
    """Chunks ranked by their own vectors (no sentences, no cache): the older way, kept to measure against."""
    rows = (
        await conn.execute(
            select(voice_chunks.c.id, voice_chunks.c.embedding)
            .join(voice_notes, voice_notes.c.id == voice_chunks.c.note_id)
            .where(
                voice_chunks.c.owner_id == owner_id,
                voice_chunks.c.embedding.is_not(None),
                voice_notes.c.steps.like("%indexed%"),
            )
        )
    ).all()
    if not rows:
        return []
    ids = np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=len(rows))
    scores = _matrix([bytes(r[1]) for r in rows], len(rows)) @ query.astype("<f4")
    return [(c, score) for c, score, _ in _best_chunks(ids, ids, scores, limit)]
