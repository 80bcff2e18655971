"""The search index over one owner's chunks: full text per backend, and exact vector search.

- Full text. SQLite: the FTS5 table ``voice_chunks_fts`` (porter stemming), its rowid the chunk's
  id, written by the index stage. PostgreSQL: the generated ``tsv`` column (English configuration)
  with a GIN index, kept by the database itself.
- Vectors: exact cosine similarity (the vectors are unit length, so a dot product) over the caller's
  own chunks only, computed with numpy. Exact search reads every vector of that one owner; there is
  no approximate index to leak one user's neighbours into another's results.

A query's words are reduced to ``\\w+`` tokens joined by OR before either backend sees them, so no
query syntax reaches FTS5 or ``to_tsquery``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from grace.voice.tables import voice_chunks, voice_notes

__all__ = ["add_full_text", "drop_full_text", "keyword_search", "tokens", "vector_search"]

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


async def vector_search(
    conn: AsyncConnection, owner_id: str, query: npt.NDArray[np.float32], limit: int
) -> list[tuple[int, float]]:
    """Return ``(chunk id, cosine similarity)`` of ``owner_id``'s searchable chunks, best first."""
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
    matrix = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype="<f4").reshape(len(rows), -1)
    scores = matrix @ query.astype("<f4")
    top = np.argsort(-scores)[:limit]
    return [(int(ids[i]), float(scores[i])) for i in top]
