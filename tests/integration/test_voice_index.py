"""The in-memory vector index over the real tables, on both databases: what it loads and how it ranks.

Vectors here are hand-made (a few axes of the 384), so each expected ranking is worked out by hand.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import delete, insert, select, update

from grace.auth import Principal, Role
from grace.config import Settings
from grace.services import Services, build
from grace.voice import index
from grace.voice.tables import voice_chunks, voice_index_changes, voice_notes, voice_sentences

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
        await index.bump_version(conn, owner, note_id)
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
        await index.bump_version(conn, me.id, "vn_a")
    async with services.db.read() as conn:
        after = await cache.search(conn, me.id, query, 10)
        left = (await conn.execute(select(voice_chunks.c.id).where(voice_chunks.c.owner_id == me.id))).scalars().all()
    assert (cache.loads, cache.refreshes) == (1, 1) and [c for c, _, _ in after] == [older] and len(left) == 2


async def test_a_search_finds_at_once_a_note_another_process_added_and_never_one_it_deleted(
    services: Services, settings: Settings
) -> None:
    # Real embeddings of real sentences; "another process" is a second composition root on the same
    # database, with its own memory: the first one's cached vectors know nothing of its writes.
    me, _ = await services.accounts.create_user("speaker", "member")
    other, _ = await services.accounts.create_user("someone", "member")
    speaker = Principal(me.id, me.username, Role.MEMBER)
    roses, budget = await services.voice.engines.embed(
        [
            "The roses in the garden need water every morning during the heat wave.",
            "Maria moved the quarterly budget review to Thursday afternoon.",
        ]
    )
    await add_note(services, me.id, "vn_budget", [(budget, [budget])])
    await add_note(services, other.id, "vn_theirs", [(roses, [roses])])  # someone else's: never found
    question = "how often should the flowers be watered"

    async def found() -> list[str]:
        return [hit.note_id for hit in await services.voice.search(speaker, question, top_k=5)]

    assert await found() == ["vn_budget"]
    loads = services.voice.vectors.loads
    assert await found() == ["vn_budget"] and services.voice.vectors.loads == loads  # held, not read again

    elsewhere = await build(settings, migrate=False, bootstrap=False)
    try:
        await add_note(elsewhere, me.id, "vn_garden", [(roses, [budget, roses])])
        assert await found() == ["vn_garden", "vn_budget"]
        # The hit points at the sentence that said it, scored against the query's own vector.
        hit = (await services.voice.search(speaker, question, top_k=1))[0]
        asked = (await services.voice.engines.embed_query([question]))[0]
        assert hit.snippet == "sentence 1" and hit.score == pytest.approx(float(asked @ roses), abs=1e-5)
        # Only the added note was read: the owner's vectors were not loaded again.
        assert services.voice.vectors.loads == loads and services.voice.vectors.refreshes == 1

        await elsewhere.voice.delete(speaker, "vn_garden")
        assert await found() == ["vn_budget"]
        assert services.voice.vectors.loads == loads and services.voice.vectors.refreshes == 2
    finally:
        await elsewhere.close()


async def drop_note(services: Services, owner: str, note_id: str, *, bump: bool = True) -> None:
    async with services.db.write() as conn:
        for table in (voice_sentences, voice_chunks, voice_notes):
            column = table.c.id if table is voice_notes else table.c.note_id
            await conn.execute(delete(table).where(column == note_id))
        if bump:
            await index.bump_version(conn, owner, note_id)


@pytest.mark.parametrize("filler", [0, 120], ids=["copied", "in_place"])
@pytest.mark.parametrize("exact_up_to", [200_000, 2], ids=["every_vector", "shortlist"])
async def test_the_cache_reads_only_the_changed_notes_and_ranks_as_a_full_read_would(
    services: Services, monkeypatch: pytest.MonkeyPatch, exact_up_to: int, filler: int
) -> None:
    # With exact_up_to 2 the owner's rows carry bit codes and an int8 copy, changed row by row too.
    # With 120 filler rows a note's rows dropped are marked dead in place (up to a 16th of the rows);
    # with none, every drop copies the rows kept.
    monkeypatch.setattr(index, "EXACT_UP_TO", exact_up_to)
    me, _ = await services.accounts.create_user("speaker", "member")
    other, _ = await services.accounts.create_user("someone", "member")
    if filler:  # below every query, each by its own margin (no ties among them)
        away = [axis((100 + k, 1), *((i, -(0.1 + 0.01 * k)) for i in range(7))) for k in range(filler)]
        await add_note(services, me.id, "vn_filler", [(v, [v]) for v in away])
    await add_note(services, me.id, "vn_a", [(axis((0, 1)), [axis((0, 1)), axis((1, 1))])])
    await add_note(services, me.id, "vn_b", [(axis((2, 1)), [axis((2, 1))]), (axis((3, 1)), [])])
    await add_note(services, me.id, "vn_old", [(axis((4, 1)), [])])  # scored by its chunk's own vector
    await add_note(services, other.id, "vn_theirs", [(axis((0, 1)), [axis((0, 1))])])
    cache = index.VectorCache()
    queries = [axis((0, 1)), axis((1, 1), (2, 1)), axis((3, 1), (4, 1)), axis((5, 1)), axis((0, 1), (5, 2))]

    async def notes_found() -> set[str]:
        """Every query's hits by the cache, checked against reading every vector from the tables."""
        found: set[str] = set()
        async with services.db.read() as conn:
            for query in queries:
                cached = await cache.search(conn, me.id, query, 10)
                truth = await index.vector_search(conn, me.id, query, 10)
                # The same chunks with the same scores (rows tied at 0 may come in another order),
                # each pointing at the same best sentence wherever it scored at all.
                assert {c: round(x, 5) for c, x, _ in cached} == {c: round(x, 5) for c, x, _ in truth}
                assert [round(x, 5) for _, x, _ in cached] == [round(x, 5) for _, x, _ in truth]
                assert {c: s for c, x, s in cached if x > 1e-6} == {c: s for c, x, s in truth if x > 1e-6}
                hits = [c for c, _, _ in cached]
                names = await conn.execute(select(voice_chunks.c.note_id).where(voice_chunks.c.id.in_(hits)))
                found |= set(names.scalars())
        return found - {"vn_filler"}

    assert await notes_found() == {"vn_a", "vn_b", "vn_old"}
    assert (cache.loads, cache.refreshes) == (1, 0)

    # A note made searchable: found at the next search, and only its rows were read.
    await add_note(services, me.id, "vn_new", [(axis((5, 1)), [axis((5, 1)), axis((0, 1), (5, 1))])])
    assert await notes_found() == {"vn_a", "vn_b", "vn_old", "vn_new"}
    assert (cache.loads, cache.refreshes) == (1, 1)

    # No longer searchable (reprocessing), then searchable again with other vectors.
    async with services.db.write() as conn:
        await conn.execute(update(voice_notes).where(voice_notes.c.id == "vn_b").values(steps="decoded"))
        await index.bump_version(conn, me.id, "vn_b")
    assert await notes_found() == {"vn_a", "vn_old", "vn_new"}
    await drop_note(services, me.id, "vn_b", bump=False)
    await add_note(services, me.id, "vn_b", [(axis((1, 1)), [axis((1, 1)), axis((3, 1))])])
    assert await notes_found() == {"vn_a", "vn_b", "vn_old", "vn_new"}
    assert (cache.loads, cache.refreshes) == (1, 3)

    # Deleted, two at once (one behind the other, read in one refresh); another user's change moves nothing here.
    await drop_note(services, me.id, "vn_a")
    await drop_note(services, me.id, "vn_old")
    await add_note(services, other.id, "vn_theirs_too", [(axis((5, 1)), [axis((5, 1))])])
    assert await notes_found() == {"vn_b", "vn_new"}
    assert (cache.loads, cache.refreshes) == (1, 4)
    held = cache.cached(me.id)
    assert held is not None and (held.dead > 0) == bool(filler)

    # A change that names no note, or changes no longer recorded: the owner's vectors are loaded whole.
    async with services.db.write() as conn:
        await index.bump_version(conn, me.id, None)
    assert await notes_found() == {"vn_b", "vn_new"}
    assert (cache.loads, cache.refreshes) == (2, 4)
    await add_note(services, me.id, "vn_last", [(axis((6, 1)), [axis((6, 1))])])
    async with services.db.write() as conn:
        await conn.execute(delete(voice_index_changes).where(voice_index_changes.c.owner_id == me.id))
    assert await notes_found() == {"vn_b", "vn_new", "vn_last"}
    assert (cache.loads, cache.refreshes) == (3, 4)


async def test_searches_during_changes_by_another_process_never_return_a_deleted_note_and_find_an_added_one(
    services: Services, settings: Settings
) -> None:
    me, _ = await services.accounts.create_user("speaker", "member")
    speaker = Principal(me.id, me.username, Role.MEMBER)
    [vector] = await services.voice.engines.embed(["Maria moved the quarterly budget review to Thursday afternoon."])
    await add_note(services, me.id, "vn_kept", [(vector, [vector])])
    assert [h.note_id for h in await services.voice.search(speaker, "budget", top_k=10)] == ["vn_kept"]
    added: set[str] = {"vn_kept"}  # each once its write committed
    deleting: set[str] = set()  # each before its delete is asked for
    deleted: set[str] = set()  # each once its delete committed
    writing = True
    searched = 0

    async def searching() -> None:
        nonlocal searched
        while writing:
            present, gone = set(added - deleted), set(deleted)
            found = {h.note_id for h in await services.voice.search(speaker, "budget", top_k=10)}
            assert not found & gone, "a note deleted before the search began was returned"
            assert present - deleting <= found, "a note searchable before the search began was missed"
            searched += 1

    elsewhere = await build(settings, migrate=False, bootstrap=False)
    try:
        searchers = [asyncio.create_task(searching()) for _ in range(3)]
        for i in range(8):
            await add_note(elsewhere, me.id, f"vn_{i}", [(vector, [vector])])
            added.add(f"vn_{i}")
            await asyncio.sleep(0.01)
            if i % 2:
                deleting.add(f"vn_{i - 1}")
                await elsewhere.voice.delete(speaker, f"vn_{i - 1}")
                deleted.add(f"vn_{i - 1}")
            await asyncio.sleep(0.01)
        writing = False
        await asyncio.gather(*searchers)
    finally:
        writing = False
        await elsewhere.close()
    found = {h.note_id for h in await services.voice.search(speaker, "budget", top_k=10)}
    assert found == {"vn_kept", "vn_1", "vn_3", "vn_5", "vn_7"}
    assert searched >= 8 and services.voice.vectors.loads == 1
