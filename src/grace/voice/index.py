"""The search index over one owner's chunks: full text per backend, and exact vector search.

- Full text. SQLite: the FTS5 table ``voice_chunks_fts`` (porter stemming), its rowid the chunk's
  id, written by the index stage. PostgreSQL: the generated ``tsv`` column (English configuration)
  with a GIN index, kept by the database itself.
- Vectors: search over the caller's own sentence vectors only. :class:`VectorCache` holds each
  recent owner's sentence vectors in memory (a float32 matrix), scores them against the query (a
  matrix product: every one of them, or for an owner with more than ``EXACT_UP_TO`` the shortlist
  their bit codes pick) and ranks each chunk by its best sentence; it reloads an owner's vectors
  when ``voice_index_versions`` says that owner's searchable notes changed.
  Why sentences, and why not sqlite-vec or a query per search: measured in bench/bench_voice.py,
  figures in docs/voice.md.

A query's words are reduced to ``\\w+`` tokens joined by OR before either backend sees them, so no
query syntax reaches FTS5 or ``to_tsquery``.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from grace.voice.bitcodes import BitCodes
from grace.voice.tables import voice_chunks, voice_index_versions, voice_notes, voice_sentences

__all__ = [
    "EXACT_UP_TO",
    "SHORTLIST",
    "VectorCache",
    "add_full_text",
    "best_sentences",
    "bump_version",
    "chunk_vector_search",
    "drop_full_text",
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


async def bump_version(conn: AsyncConnection, owner_id: str) -> None:
    """Record, in the caller's write transaction, that ``owner_id``'s searchable notes changed."""
    changed = await conn.execute(
        update(voice_index_versions)
        .where(voice_index_versions.c.owner_id == owner_id)
        .values(version=voice_index_versions.c.version + 1)
    )
    if changed.rowcount:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(voice_index_versions).values(owner_id=owner_id, version=1)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[voice_index_versions.c.owner_id], set_={"version": voice_index_versions.c.version + 1}
        )
    )


async def _version(conn: AsyncConnection, owner_id: str) -> int:
    found = await conn.execute(
        select(voice_index_versions.c.version).where(voice_index_versions.c.owner_id == owner_id)
    )
    return int(found.scalar_one_or_none() or 0)


_LOAD_BATCH = 10_000


def _matrix(blobs: Sequence[bytes], count: int) -> npt.NDArray[np.float32]:
    """The vectors' bytes as one C-contiguous float32 matrix (native order), one row per vector."""
    joined = blobs[0] if len(blobs) == 1 else b"".join(blobs)
    return np.ascontiguousarray(np.frombuffer(joined, dtype="<f4").reshape(count, -1), dtype=np.float32)


async def searchable_vectors(
    conn: AsyncConnection, owner_id: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The owner's searchable sentence vectors: (chunk ids, sentence ids, matrix), one row per sentence.

    A chunk with no sentence vectors (a note processed before they existed) has its own vector, with
    sentence id 0. Those chunks are found from the owner's chunk ids (one column, by the owner's
    index) less the chunks the sentences named, and only their vectors are read, by id: a join of
    the chunks with the notes and the sentences left PostgreSQL, on tables without statistics yet,
    to a nested loop that ran for minutes at 100k chunks. The rows arrive in batches straight into
    arrays: one pass, no per-row Python work beyond collecting each batch's bytes.
    """
    searchable = voice_notes.c.steps.like("%indexed%")
    sentences = (
        select(voice_sentences.c.chunk_id, voice_sentences.c.id, voice_sentences.c.embedding)
        .join(voice_notes, voice_notes.c.id == voice_sentences.c.note_id)
        .where(voice_sentences.c.owner_id == owner_id, voice_sentences.c.embedding.is_not(None), searchable)
    )
    chunk_parts: list[npt.NDArray[np.int64]] = []
    sentence_parts: list[npt.NDArray[np.int64]] = []
    blobs: list[bytes] = []

    async def read(statement: Any) -> None:
        result = await conn.stream(statement)
        async for batch in result.partitions(_LOAD_BATCH):
            chunk_parts.append(np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch)))
            sentence_parts.append(np.fromiter((r[1] for r in batch), dtype=np.int64, count=len(batch)))
            blobs.append(b"".join([bytes(r[2]) for r in batch]))

    await read(sentences)
    owned = np.fromiter(
        (await conn.execute(select(voice_chunks.c.id).where(voice_chunks.c.owner_id == owner_id))).scalars(),
        dtype=np.int64,
    )
    with_sentences = np.concatenate(chunk_parts) if chunk_parts else np.zeros(0, dtype=np.int64)
    without = np.setdiff1d(owned, with_sentences).tolist()
    for start in range(0, len(without), 1000):
        await read(
            select(voice_chunks.c.id, literal(0, BigInteger), voice_chunks.c.embedding)
            .join(voice_notes, voice_notes.c.id == voice_chunks.c.note_id)
            .where(
                voice_chunks.c.id.in_(without[start : start + 1000]),
                voice_chunks.c.embedding.is_not(None),
                searchable,
            )
        )
    if not blobs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros((0, 0), dtype=np.float32)
    chunk_ids = np.concatenate(chunk_parts)
    sentence_ids = np.concatenate(sentence_parts)
    return chunk_ids, sentence_ids, await asyncio.to_thread(_matrix, blobs, len(chunk_ids))


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
            if chunk not in found:
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


@dataclass
class _Owner:
    version: int
    chunk_ids: npt.NDArray[np.int64]
    sentence_ids: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]
    codes: BitCodes | None = None

    @property
    def nbytes(self) -> int:
        held = self.matrix.nbytes + self.chunk_ids.nbytes + self.sentence_ids.nbytes
        return int(held + (self.codes.nbytes if self.codes is not None else 0))

    def rank(self, query: npt.NDArray[np.float32], limit: int, exact: bool = False) -> list[tuple[int, float, int]]:
        """The ``limit`` best chunks for ``query`` (run in a worker thread: it is the search's arithmetic)."""
        if not len(self.chunk_ids):
            return []
        query = query.astype(np.float32)
        if self.codes is None or exact:
            return _best_chunks(self.chunk_ids, self.sentence_ids, self.matrix @ query, limit)
        rows = self.codes.nearest(query, max(limit * 16, int(len(self.codes) * SHORTLIST)))
        return _best_chunks(self.chunk_ids[rows], self.sentence_ids[rows], self.matrix[rows] @ query, limit)


async def _load(conn: AsyncConnection, owner_id: str, version: int) -> _Owner:
    chunk_ids, sentence_ids, matrix = await searchable_vectors(conn, owner_id)
    codes = await asyncio.to_thread(BitCodes.of, matrix) if len(matrix) > EXACT_UP_TO else None
    return _Owner(version, chunk_ids, sentence_ids, matrix, codes)


class VectorCache:
    """Recent owners' sentence vectors in memory, each reloaded when its version moves.

    An owner's entry holds only that owner's searchable notes' vectors (a C-contiguous float32
    matrix, and for a large owner its bit codes); the least recently searched owners are dropped
    past ``max_bytes``. Every search reads the owner's version first (one row), so a note made
    searchable, reindexed or deleted by any process is seen by the next search. The scoring runs
    in a worker thread, off the event loop.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._owners: OrderedDict[str, _Owner] = OrderedDict()
        self._lock = asyncio.Lock()
        self.loads = 0

    def __repr__(self) -> str:
        return f"VectorCache(owners={len(self._owners)}, loads={self.loads})"

    def clear(self) -> None:
        self._owners.clear()

    def size(self, owner_id: str) -> int:
        """How many vectors of ``owner_id`` are held (0 when none are)."""
        found = self._owners.get(owner_id)
        return 0 if found is None else len(found.chunk_ids)

    async def _entry(self, conn: AsyncConnection, owner_id: str) -> _Owner:
        version = await _version(conn, owner_id)
        found = self._owners.get(owner_id)
        if found is not None and found.version == version:
            self._owners.move_to_end(owner_id)
            return found
        async with self._lock:
            found = self._owners.get(owner_id)
            if found is None or found.version != version:
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
        entry = await self._entry(conn, owner_id)
        return await asyncio.to_thread(entry.rank, query, limit, exact)


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
