"""Passwords and bearer tokens, stored only as hashes.

Passwords use Argon2id (memory-hard). Tokens are 256 random bits, so a single
SHA-256 is enough to store them safely and lets a request find its token by an
indexed lookup instead of trying every hash.

A hash or a verification takes a quarter of a second of CPU and 64 MiB by design. The services
do them off the event loop (:func:`hash_password_off_loop`, :func:`verify_password_off_loop`), on
two threads of their own: a sign-in does not stall every other request while its hash runs, and a
burst of sign-ins holds at most two hashes' memory at once (Argon2 releases the GIL while it works).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from grace import errors

__all__ = [
    "TOKEN_PREFIX",
    "check_password_strength",
    "digest",
    "generate_password",
    "generate_token",
    "hash_password",
    "hash_password_off_loop",
    "needs_rehash",
    "prepare",
    "same_digest",
    "verify_password",
    "verify_password_off_loop",
]

TOKEN_PREFIX = "grc_"
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHasher()
_dummy: list[str] = []  # the dummy hash, made on first use
HASH_THREADS = 2
_threads: list[ThreadPoolExecutor] = []  # made on first use


def check_password_strength(password: str) -> None:
    """Refuse passwords that are too short, too long or trivially guessable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise errors.InvalidInput(f"a password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise errors.InvalidInput(f"a password must be at most {MAX_PASSWORD_LENGTH} characters")
    if len(set(password)) < 4:
        raise errors.InvalidInput("a password must use more than a few distinct characters")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str, *, hasher: PasswordHasher | None = None) -> bool:
    """Return whether ``password`` matches ``stored_hash``.

    Without a hash (an unknown user, a user with no password) the password is verified against a
    dummy hash made with the same parameters and refused, so the answer costs one verification
    either way and its time does not tell whether the user exists.
    """
    hasher = hasher or _hasher
    try:
        matches = hasher.verify(stored_hash or _dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return matches and stored_hash is not None


async def hash_password_off_loop(password: str) -> str:
    """:func:`hash_password` on the hashing threads, the event loop free meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_hashing_threads(), hash_password, password)


async def verify_password_off_loop(
    stored_hash: str | None, password: str, *, hasher: PasswordHasher | None = None
) -> bool:
    """:func:`verify_password` on the hashing threads, the event loop free meanwhile."""
    check = functools.partial(verify_password, stored_hash, password, hasher=hasher)
    return await asyncio.get_running_loop().run_in_executor(_hashing_threads(), check)


def _hashing_threads() -> ThreadPoolExecutor:
    if not _threads:
        _threads.append(ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="grace-password-hash"))
    return _threads[0]


def prepare() -> None:
    """Make the dummy hash now, so the first sign-in of an unknown user does not pay for it."""
    _dummy_hash()


def _dummy_hash() -> str:
    """Return a hash of a random password with the parameters stored hashes are made with."""
    if not _dummy:
        _dummy.append(_hasher.hash(secrets.token_urlsafe(32)))
    return _dummy[0]


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(value: str) -> str:
    """Return the SHA-256 hex digest under which a token, session or CSRF value is stored."""
    return hashlib.sha256(value.encode()).hexdigest()


def same_digest(value: str, stored: str) -> bool:
    return hmac.compare_digest(digest(value), stored)
