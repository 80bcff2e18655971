"""The in-memory vector index over the real tables, on both databases: what it loads and how it ranks.

Vectors here are hand-made (a few axes of the 384), so each expected ranking is worked out by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, insert, select

from grace.services import Services
from grace.voice import index
from grace.voice.tables import voice_chunks, voice_notes, voice_sentences

SEARCHABLE = "decoded,transcribed,chunked,embedded,indexed"


def axis(*weights: tuple[int, float]) -> npt.NDArray[np.float32]:
    v = np.zeros(384, dtype=np.float32)
    for i, w in weights:
        v[i] = w
    return (v / np.linalg.norm(v)).astype(np.float32)


async def add_note(
    services: Services,
    owner: str,
    note_id: str,
    chunks: list[tuple[npt.NDArray[np.float32], list[npt.NDArray[np.float32]]]],
    steps: str = SEARCHABLE,
) -> list[tuple[int, list[int]]]:
    """A note with ``chunks`` (each its own vector and its sentences' vectors); return the ids made."""
    now = datetime.now(UTC)
    made = []
    async with services.db.write() as conn:
        await conn.execute(
            insert(voice_notes).values(
                id=note_id,
                owner_id=owner,
                title=note_id,
                purpose="",
                status="completed",
                steps=steps,
                created_at=now,
                updated_at=now,
            )
        )
        sentence_idx = 0
        for k, (vector, sentences) in enumerate(chunks):
            chunk_id = (
                await conn.execute(
                    insert(voice_chunks)
                    .values(
                        note_id=note_id,
                        owner_id=owner,
                        idx=k,
                        text=f"chunk {k}",
                        start_s=10.0 * k,
                        end_s=10.0 * k + 9,
                        first_word=0,
                        last_word=1,
                        embedding=vector.astype("<f4").tobytes(),
                        embed_model="test",
                    )
                    .returning(voice_chunks.c.id)
                )
            ).scalar_one()
            ids = []
            for s in sentences:
                ids.append(
                    (
                        await conn.execute(
                            insert(voice_sentences)
                            .values(
                                chunk_id=chunk_id,
                                note_id=note_id,
                                owner_id=owner,
                                idx=sentence_idx,
                                text=f"sentence {sentence_idx}",
                                start_s=10.0 * k,
                                end_s=10.0 * k + 1,
                                embedding=s.astype("<f4").tobytes(),
                            )
                            .returning(voice_sentences.c.id)
                        )
                    ).scalar_one()
                )
                sentence_idx += 1
            made.append((int(chunk_id), [int(i) for i in ids]))
        await index.bump_version(conn, owner)
    return made


async def test_the_cache_ranks_chunks_by_best_sentence_and_older_chunks_by_their_own_vector(
    services: Services,
) -> None:
    me, _ = await services.accounts.create_user("speaker", "member")
    other, _ = await services.accounts.create_user("someone", "member")
    # Two chunks with sentences: the first's chunk vector points away from axis 0, but one of its
    # sentences points straight at it; the second's sentences half way.
    [(first, first_sentences), (second, second_sentences)] = await add_note(
        services,
        me.id,
        "vn_a",
        [(axis((5, 1)), [axis((6, 1)), axis((0, 1))]), (axis((0, 1)), [axis((0, 1), (7, 1)), axis((8, 1))])],
    )
    # A note processed before sentence vectors: its chunk counts by its own vector (sentence id 0).
    [(older, _)] = await add_note(services, me.id, "vn_old", [(axis((0, 1), (9, 2)), [])])
    # Not searchable yet, and someone else's: never found, however close.
    await add_note(services, me.id, "vn_busy", [(axis((0, 1)), [axis((0, 1))])], steps="decoded,transcribed")
    await add_note(services, other.id, "vn_theirs", [(axis((0, 1)), [axis((0, 1))])])

    cache = index.VectorCache()
    query = axis((0, 1))
    async with services.db.read() as conn:
        found = await cache.search(conn, me.id, query, 10)
        uncached = await index.vector_search(conn, me.id, query, 10)
    assert [(c, s) for c, _, s in found] == [(first, first_sentences[1]), (second, second_sentences[0]), (older, 0)]
    assert np.allclose([score for _, score, _ in found], [1.0, 1 / np.sqrt(2), 1 / np.sqrt(5)], atol=1e-6)
    assert [(c, s) for c, _, s in uncached] == [(c, s) for c, _, s in found]
    assert cache.loads == 1

    # Another search reads no vectors again; a deleted note moves the version and the next search reloads.
    async with services.db.read() as conn:
        await cache.search(conn, me.id, axis((8, 1)), 10)
    assert cache.loads == 1
    async with services.db.write() as conn:
        for table in (voice_sentences, voice_chunks, voice_notes):
            column = table.c.id if table is voice_notes else table.c.note_id
            await conn.execute(delete(table).where(column == "vn_a"))
        await index.bump_version(conn, me.id)
    async with services.db.read() as conn:
        after = await cache.search(conn, me.id, query, 10)
        left = (await conn.execute(select(voice_chunks.c.id).where(voice_chunks.c.owner_id == me.id))).scalars().all()
    assert cache.loads == 2 and [c for c, _, _ in after] == [older] and len(left) == 2
