"""Password hashing at a test cost for the services the suite builds in its own process.

Argon2id at Grace's cost (argon2-cffi's RFC 9106 low-memory profile: 3 passes over 64 MiB, 4 lanes)
takes about a quarter of a second a hash here. The suite builds the services some thousand times, and
each build hashes a bootstrap admin's password and the dummy password sign-ins verify against, and
each vault cast four users' passwords: about half the suite's time went to hashing. In-process
services therefore hash with Argon2id at the lowest cost it allows for tests (one pass over 8 MiB, one
lane): the same algorithm, the same encoded form, the same verification. The servers the suite starts
as processes (``grace serve`` in the acceptance, fault and browser tests) keep the production cost,
and ``tests/unit/test_password_cost.py`` checks that the production cost is what Grace uses.
"""

from __future__ import annotations

from argon2 import PasswordHasher

from grace.auth import secrets

PRODUCTION = secrets._hasher
TEST_COST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


def use_test_cost() -> None:
    """Hash in this process at the test cost (the dummy hash is made again at it)."""
    secrets._hasher = TEST_COST
    secrets._dummy.clear()
