"""Signing in with a password: rate-limited attempts and browser sessions.

A session cookie carries 256 random bits that the database stores only as a
hash, so a cookie cannot be forged, and signing out or disabling the user ends
it at once on every node. Each session has its own CSRF token that form posts
and other unsafe requests made with the cookie must echo back.
"""

from __future__ import annotations

import math
import secrets as stdlib_secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from sqlalchemy import delete, func, insert, select

from grace import errors
from grace.auth import secrets
from grace.auth.accounts import Accounts
from grace.auth.principals import Principal, Role
from grace.auth.tables import SESSIONS, USERS, auth_failures, sessions, users
from grace.clock import Clock
from grace.storage import Database, new_id

__all__ = ["SessionGrant", "SignIn"]


@dataclass(frozen=True)
class SessionGrant:
    """A new session: the cookie value and its CSRF token, both shown once."""

    principal: Principal
    session_token: str
    csrf_token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"SessionGrant(user={self.principal.username!r}, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True)
class ActiveSession:
    principal: Principal
    csrf_hash: str

    def check_csrf(self, token: str | None) -> None:
        if not token or not secrets.same_digest(token, self.csrf_hash):
            raise errors.PermissionDenied("missing or wrong CSRF token")


class SignIn:
    """Verify passwords with a limit per user and client address, and manage sessions.

    ``max_failures`` failed attempts for one username from one client address within ``window``
    stop further attempts for that pair (429); other users behind the same address, and the same
    user from elsewhere, are not locked out by them. ``client_max_failures`` (much higher) stops one
    address trying many usernames. Every attempt, for a user that exists or not, costs one password
    hash verification, so its time does not tell which usernames exist.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        accounts: Accounts,
        *,
        session_ttl: timedelta,
        max_failures: int,
        window: timedelta,
        client_max_failures: int | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.accounts = accounts
        self.session_ttl = session_ttl
        self.max_failures = max_failures
        self.client_max_failures = client_max_failures or max_failures * 20
        self.window = window
        self.hasher = hasher
        secrets.prepare()

    async def _check_limit(self, limits: list[tuple[str, int]]) -> None:
        since = self.clock.now() - self.window
        async with self.db.read() as conn:
            for key, most in limits:
                count, oldest = (
                    await conn.execute(
                        select(func.count(), func.min(auth_failures.c.at)).where(
                            auth_failures.c.key == key, auth_failures.c.at > since
                        )
                    )
                ).one()
                if count >= most:
                    retry = math.ceil((oldest + self.window - self.clock.now()).total_seconds())
                    raise errors.RateLimited(
                        f"too many failed sign-ins; try again in {retry} seconds", retry_after=max(retry, 1)
                    )

    async def _record_failure(self, keys: list[str]) -> None:
        now = self.clock.now()
        async with self.db.write() as conn:
            await conn.execute(insert(auth_failures), [{"key": k, "at": now} for k in keys])
            await conn.execute(delete(auth_failures).where(auth_failures.c.at < now - self.window * 4))

    async def verify_password(self, username: str, password: str, *, client: str = "local") -> Principal:
        """Return the principal for a correct username and password; count failures.

        ``client`` is the caller's address (the peer's, or the one a trusted proxy forwarded).
        """
        address = client[:64]
        pair = f"user:{username.strip().lower()[:64]}|client:{address}"
        keys = [pair, f"client:{address}"]
        await self._check_limit([(pair, self.max_failures), (keys[1], self.client_max_failures)])
        user, stored = await self.accounts.password_hash(username)
        # Verify first, whoever the user is: an unknown or disabled user costs the same hash work.
        correct = await secrets.verify_password_off_loop(stored, password[:1024], hasher=self.hasher)
        if user is None or user.disabled or not correct:
            await self._record_failure(keys)
            raise errors.Unauthenticated("wrong username or password")
        async with self.db.write() as conn:
            await conn.execute(delete(auth_failures).where(auth_failures.c.key == keys[0]))
        return Principal(user.id, user.username, user.role)

    async def start_session(self, principal: Principal) -> SessionGrant:
        session_token = stdlib_secrets.token_urlsafe(32)
        csrf_token = stdlib_secrets.token_urlsafe(32)
        now = self.clock.now()
        expires = now + self.session_ttl
        session_id = new_id("ses")
        row = {
            "id": session_id,
            "user_id": principal.user_id,
            "session_hash": secrets.digest(session_token),
            "csrf_hash": secrets.digest(csrf_token),
            "created_at": now,
            "expires_at": expires,
            "revoked_at": None,
        }
        row["seal"] = self.accounts.seal.seal(SESSIONS, row)
        async with self.db.write() as conn:
            await conn.execute(insert(sessions).values(**row))
        bound = Principal(principal.user_id, principal.username, principal.role, session_id=session_id)
        return SessionGrant(bound, session_token, csrf_token, expires)

    async def resolve_session(self, session_token: str) -> ActiveSession:
        if not session_token or len(session_token) > 128:
            raise errors.Unauthenticated("invalid session")
        async with self.db.read() as conn:
            row = (
                (
                    await conn.execute(
                        select(*SESSIONS.selected(), *USERS.selected("owner_"))
                        .join(users, users.c.id == sessions.c.user_id)
                        .where(sessions.c.session_hash == secrets.digest(session_token))
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise errors.Unauthenticated("session expired or signed out")
        # The session's and its user's rows decide who this is and with what role: both must be genuine.
        await self.accounts.seal.check(SESSIONS, row)
        await self.accounts.seal.check(USERS, row, "owner_")
        if row["revoked_at"] is not None or row["owner_disabled"] or row["expires_at"] <= self.clock.now():
            raise errors.Unauthenticated("session expired or signed out")
        principal = Principal(row["owner_id"], row["owner_username"], Role(row["owner_role"]), session_id=row["id"])
        return ActiveSession(principal, row["csrf_hash"])

    async def end_session(self, session_id: str) -> None:
        async with self.db.write() as conn:
            await self.accounts.seal.update_each(
                conn,
                SESSIONS,
                (sessions.c.id == session_id) & sessions.c.revoked_at.is_(None),
                {"revoked_at": self.clock.now()},
            )
