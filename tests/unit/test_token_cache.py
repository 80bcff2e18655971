"""The token cache keeps a principal no longer than its TTL or its token's life, and never stores a stale read."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from grace.auth import Principal, Role, TokenCache
from grace.clock import ManualClock

ALICE = Principal("usr_1", "alice", Role.MEMBER, agent="bot", token_id="tok_1")


def test_a_principal_is_kept_for_the_ttl_and_no_longer() -> None:
    clock = ManualClock()
    cache = TokenCache(clock, timedelta(seconds=10))
    cache.put("d1", ALICE, None, cache.generation)
    clock.advance(9)
    assert cache.get("d1") is ALICE
    clock.advance(1)
    assert cache.get("d1") is None


def test_a_principal_is_never_kept_past_its_tokens_expiry() -> None:
    clock = ManualClock()
    cache = TokenCache(clock, timedelta(seconds=10))
    cache.put("d1", ALICE, clock.now() + timedelta(seconds=2), cache.generation)
    clock.advance(2)
    assert cache.get("d1") is None


def test_a_read_begun_before_an_invalidation_is_not_stored() -> None:
    cache = TokenCache(ManualClock(), timedelta(seconds=10))
    began = cache.generation
    cache.drop_tokens(["tok_1"])  # a revocation lands while the rows are being read
    cache.put("d1", ALICE, None, began)
    assert cache.get("d1") is None


def test_revoking_a_token_or_changing_a_user_drops_only_theirs() -> None:
    cache = TokenCache(ManualClock(), timedelta(seconds=10))
    bob = Principal("usr_2", "bob", Role.MEMBER, token_id="tok_2")
    cache.put("d1", ALICE, None, cache.generation)
    cache.put("d2", bob, None, cache.generation)
    cache.drop_tokens(["tok_1"])
    assert cache.get("d1") is None and cache.get("d2") is bob
    cache.drop_user("usr_2")
    assert cache.get("d2") is None


def test_another_process_touching_the_epoch_file_empties_the_cache(tmp_path: Path) -> None:
    clock, epoch = ManualClock(), tmp_path / "grace.db-auth-epoch"
    serving, cli = (
        TokenCache(clock, timedelta(seconds=10), epoch_file=epoch),
        TokenCache(clock, timedelta(seconds=10), epoch_file=epoch),
    )
    serving.put("d1", ALICE, None, serving.generation)
    assert serving.get("d1") is ALICE
    cli.touch_epoch()
    assert serving.get("d1") is None
    assert epoch.stat().st_mode & 0o777 == 0o600


def test_a_zero_ttl_caches_nothing() -> None:
    cache = TokenCache(ManualClock(), timedelta(0))
    cache.put("d1", ALICE, None, cache.generation)
    assert cache.get("d1") is None
