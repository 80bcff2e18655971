"""Passwords and bearer tokens, stored only as hashes.

Passwords use Argon2id (memory-hard). Tokens are 256 random bits, so a single
SHA-256 is enough to store them safely and lets a request find its token by an
indexed lookup instead of trying every hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

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
    "needs_rehash",
    "same_digest",
    "verify_password",
]

TOKEN_PREFIX = "grc_"
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHasher()


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


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Return whether ``password`` matches; spends the same work when there is no hash."""
    if stored_hash is None:
        _hasher.hash(password)  # keep timing alike for unknown users and password-less users
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


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
