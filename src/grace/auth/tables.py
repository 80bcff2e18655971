"""Tables for principals: users, API tokens, sign-in sessions and failed sign-ins."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, ForeignKey, Index, Integer, String, Table

from grace.integrity import Sealed
from grace.storage import UTCDateTime, metadata

__all__ = ["SEALED", "SESSIONS", "TOKENS", "USERS", "api_tokens", "auth_failures", "sessions", "users"]

# The seal of a row: HMAC over these columns (grace.integrity); NULL or wrong means refused.
SEAL_HEX = 64

users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=True),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("seal", String(SEAL_HEX), nullable=True),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("agent", String(64), nullable=True),
    Column("name", String(128), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    # Space-separated scope names; a row written without them holds none (migration 0008_token_scopes).
    Column("scopes", String(200), nullable=False, server_default=""),
    # Space-separated origins the token may claim; NULL: whatever its user's role may.
    Column("origins", String(200), nullable=True),
    # The most urgent priority it may use; NULL: whatever its user's role may.
    Column("max_priority", String(16), nullable=True),
    # The token that issued this one (revoking it revokes this one too); NULL: a session or the CLI.
    Column("parent_id", String(40), nullable=True, index=True),
    Column("seal", String(SEAL_HEX), nullable=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("session_hash", String(64), nullable=False, unique=True),
    Column("csrf_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("seal", String(SEAL_HEX), nullable=True),
)

auth_failures = Table(
    "auth_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_auth_failures_key_at", "key", "at"),
)

# What each seal covers: everything that decides who a principal is and what it may do.
USERS = Sealed(users, "id", ("username", "password_hash", "role", "disabled"))
TOKENS = Sealed(
    api_tokens,
    "id",
    ("user_id", "agent", "token_hash", "expires_at", "revoked_at", "scopes", "origins", "max_priority", "parent_id"),
)
SESSIONS = Sealed(sessions, "id", ("user_id", "session_hash", "csrf_hash", "expires_at", "revoked_at"))
SEALED = (USERS, TOKENS, SESSIONS)
