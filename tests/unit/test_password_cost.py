"""Grace hashes passwords with Argon2id at the production cost; only the suite's own process uses less."""

from __future__ import annotations

from argon2 import Type, extract_parameters

from tests import hashing


def test_grace_hashes_passwords_with_argon2id_over_64_mib_in_three_passes() -> None:
    stored = hashing.PRODUCTION.hash("a long enough password")
    used = extract_parameters(stored)
    assert used.type is Type.ID
    assert (used.time_cost, used.memory_cost, used.parallelism) == (3, 64 * 1024, 4)
    assert hashing.PRODUCTION.verify(stored, "a long enough password")


def test_a_hash_made_at_the_test_cost_and_one_at_the_production_cost_verify_alike() -> None:
    cheap = hashing.TEST_COST.hash("a long enough password")
    assert extract_parameters(cheap).type is Type.ID
    # A hash records its own parameters: either hasher verifies the other's hashes.
    assert hashing.PRODUCTION.verify(cheap, "a long enough password")
    assert hashing.TEST_COST.verify(hashing.PRODUCTION.hash("another password"), "another password")
