"""Users and their API tokens."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import clock, errors
from grace.auth import scopes as scopes_module
from grace.auth import secrets
from grace.auth.principals import Principal, Role
from grace.auth.scopes import Scope, TaskLimits
from grace.auth.tables import SESSIONS, TOKENS, USERS, api_tokens, sessions, users
from grace.auth.tokencache import TokenCache
from grace.bus import Bus
from grace.clock import Clock
from grace.integrity import RowSeal
from grace.storage import Database, new_id

__all__ = ["Accounts", "BootstrapCredentials", "PasswordReset", "TokenInfo", "User"]

log = logging.getLogger("grace.auth")

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{1,63}$")
_AGENT = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
LAST_USED_RESOLUTION = timedelta(seconds=60)
# Published after a change commits; every process's token cache is emptied when it hears of one.
TOKENS_REVOKED = "auth.tokens.revoked"  # {"token_ids": [...]}
USER_CHANGED = "auth.user.changed"  # {"user_id": ...}: disabled, re-enabled, or its tokens revoked with a reset


@dataclass(frozen=True)
class User:
    id: str
    username: str
    role: Role
    disabled: bool
    created_at: datetime

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role.value,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class TokenInfo:
    """A token's public description; the token itself is shown once, at creation."""

    id: str
    user_id: str
    name: str
    agent: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    scopes: tuple[str, ...] = ()
    origins: tuple[str, ...] | None = None  # None: whatever the user's role may claim
    max_priority: str | None = None  # None: whatever the user's role may use
    parent_id: str | None = None  # the token that issued it

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "name": self.name,
            "agent": self.agent,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "origins": list(self.origins) if self.origins is not None else None,
            "max_priority": self.max_priority,
            "parent_id": self.parent_id,
            "created_at": clock.iso(self.created_at),
            "last_used_at": clock.iso(self.last_used_at),
            "expires_at": clock.iso(self.expires_at),
            "revoked_at": clock.iso(self.revoked_at),
        }


@dataclass(frozen=True)
class BootstrapCredentials:
    """The first admin's credentials, printed once at first start."""

    username: str
    password: str
    token: str

    def __repr__(self) -> str:
        return f"BootstrapCredentials(username={self.username!r}, password=<hidden>, token=<hidden>)"


@dataclass(frozen=True)
class PasswordReset:
    """What setting a password ended: the user's sessions, and their tokens when asked."""

    username: str
    sessions_ended: int
    tokens_revoked: int


def _user(row: RowMapping) -> User:
    return User(row["id"], row["username"], Role(row["role"]), bool(row["disabled"]), row["created_at"])


def _token(row: RowMapping) -> TokenInfo:
    origins = row["origins"]
    return TokenInfo(
        row["id"],
        row["user_id"],
        row["name"],
        row["agent"],
        row["prefix"],
        row["created_at"],
        row["last_used_at"],
        row["expires_at"],
        row["revoked_at"],
        tuple(sorted(scopes_module.parse_names(row["scopes"]))),
        tuple(sorted(scopes_module.parse_names(origins))) if origins is not None else None,
        row["max_priority"],
        row["parent_id"],
    )


def _stored_scopes(stored: str | None) -> frozenset[Scope]:
    """Return the scopes a row holds; a name this version does not know grants nothing."""
    known = {s.value for s in Scope}
    return frozenset(Scope(name) for name in scopes_module.parse_names(stored) if name in known)


def validate_username(username: str) -> str:
    username = username.strip().lower()
    if not _USERNAME.match(username):
        raise errors.InvalidInput(
            "a username is 2 to 64 characters: lowercase letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return username


class Accounts:
    """Create, list and disable users; issue, resolve and revoke API tokens.

    Users' and tokens' rows are sealed (``seal``, :mod:`grace.integrity`): every write here seals
    what it writes, and every read that decides who a principal is or what it may do checks the seal.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        seal: RowSeal,
        *,
        limits: TaskLimits | None = None,
        cache: TokenCache | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.seal = seal
        # The task manager's origins and priorities per role, to cap what a token may be given.
        self.limits = limits
        # Resolved tokens, kept a few seconds (None: every request reads its rows).
        self.cache = cache
        self.bus = bus
        self._listening = False

    # -- the token cache's invalidation ---------------------------------------------

    async def start(self) -> None:
        """Empty the token cache whenever any process publishes a token or user change (with a cache and a bus).

        The bus calls back as soon as it learns of an ``auth.`` event: here right after publishing, on
        PostgreSQL when the NOTIFY sent on the other process's commit arrives (and after the listening
        connection was lost), before anything reads the event. Changes are rare; the cache refills.
        """
        if self.cache is None or self.bus is None or self._listening:
            return
        self.bus.on_published("auth.", self.cache.clear)
        self._listening = True

    async def close(self) -> None:
        """Nothing to stop: the bus's callback goes with the bus."""

    async def _announce(
        self, conn: AsyncConnection, *, token_ids: Iterable[str] = (), user_id: str | None = None
    ) -> None:
        """Inside the change's transaction: tell every other process, with the change itself.

        On PostgreSQL the event is written in that transaction and its NOTIFY sent on commit, so a
        process that dies the moment its change commits still empties every other node's cache.
        """
        if self.bus is None:
            return
        items: list[tuple[str, dict[str, object]]] = []
        if token_ids:
            items.append((TOKENS_REVOKED, {"token_ids": list(token_ids)}))
        if user_id is not None:
            items.append((USER_CHANGED, {"user_id": user_id}))
        await self.bus.publish_within(self.db, conn, items)

    async def _changed(self, *, token_ids: Iterable[str] = (), user_id: str | None = None) -> None:
        """After the commit: drop this process's cached principals for them, and tell every other process.

        This machine's others through the epoch file (SQLite); on PostgreSQL the change's NOTIFY empties
        every node's cache, and the bus's barrier waits until each listening node confirms it has heard
        it, so when the change's call returns no node still honours what it took away.
        """
        if self.cache is None:
            return
        token_ids = list(token_ids)
        if token_ids:
            self.cache.drop_tokens(token_ids)
        if user_id is not None:
            self.cache.drop_user(user_id)
        self.cache.touch_epoch()
        if self.bus is not None:
            await self.bus.barrier()

    # -- users ----------------------------------------------------------------

    async def count_users(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(users))).scalar_one())

    async def create_user(self, username: str, role: Role | str, password: str | None = None) -> tuple[User, str]:
        """Create a user; return it and its password (generated when none is given)."""
        username = validate_username(username)
        role = Role.parse(role) if isinstance(role, str) else role
        if password is None:
            password = secrets.generate_password()
        else:
            secrets.check_password_strength(password)
        now = self.clock.now()
        user_id = new_id("usr")
        row = {
            "id": user_id,
            "username": username,
            "password_hash": await secrets.hash_password_off_loop(password),
            "role": role.value,
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        row["seal"] = self.seal.seal(USERS, row)
        try:
            async with self.db.write() as conn:
                await conn.execute(insert(users).values(**row))
        except IntegrityError:
            raise errors.Conflict(f"a user named {username!r} already exists") from None
        return User(user_id, username, role, False, now), password

    @staticmethod
    def _named(username_or_id: str) -> ColumnElement[bool]:
        return (users.c.username == username_or_id.strip().lower()) | (users.c.id == username_or_id)

    async def get_user(self, username_or_id: str) -> User:
        """Return a user, its seal checked (its role decides what it may do)."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(users).where(self._named(username_or_id)))).mappings().first()
        if row is None:
            raise errors.NotFound(f"no user {username_or_id!r}")
        await self.seal.check(USERS, row)
        return _user(row)

    async def list_users(self) -> list[User]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(users).order_by(users.c.created_at))).mappings().all()
        return [_user(r) for r in rows]

    async def _change_user(self, conn: AsyncConnection, username_or_id: str, **values: object) -> RowMapping:
        """Change a user's columns inside ``conn``, locking its row first and sealing what it becomes."""
        row = (
            (await conn.execute(select(users).where(self._named(username_or_id)).with_for_update())).mappings().first()
        )
        if row is None:
            raise errors.NotFound(f"no user {username_or_id!r}")
        self.seal.require(USERS, row)
        changed = {**row, **values}
        await conn.execute(
            update(users)
            .where(users.c.id == row["id"])
            .values(**values, updated_at=self.clock.now(), seal=self.seal.seal(USERS, changed))
        )
        return row

    async def set_disabled(self, username_or_id: str, disabled: bool = True) -> User:
        """Disable (or re-enable) a user; a disabled user's tokens and sessions stop working."""
        async with self.seal.reporting(), self.db.write() as conn:
            row = await self._change_user(conn, username_or_id, disabled=disabled)
            if disabled:
                await self.seal.update_each(
                    conn,
                    SESSIONS,
                    (sessions.c.user_id == row["id"]) & sessions.c.revoked_at.is_(None),
                    {"revoked_at": self.clock.now()},
                )
            await self._announce(conn, user_id=row["id"])
        await self._changed(user_id=row["id"])
        return await self.get_user(row["id"])

    async def set_password(self, username_or_id: str, password: str, *, revoke_tokens: bool = False) -> PasswordReset:
        """Set a user's password and end every session they have (signed in with the old one).

        With ``revoke_tokens`` their API tokens are revoked too (a reset after a leak); without it
        their tokens, which the password never protected, keep working.
        """
        secrets.check_password_strength(password)
        password_hash = await secrets.hash_password_off_loop(password)
        now = self.clock.now()
        async with self.seal.reporting(), self.db.write() as conn:
            row = await self._change_user(conn, username_or_id, password_hash=password_hash)
            ended = await self.seal.update_each(
                conn,
                SESSIONS,
                (sessions.c.user_id == row["id"]) & sessions.c.revoked_at.is_(None),
                {"revoked_at": now},
            )
            revoked = 0
            if revoke_tokens:
                revoked = await self.seal.update_each(
                    conn,
                    TOKENS,
                    (api_tokens.c.user_id == row["id"]) & api_tokens.c.revoked_at.is_(None),
                    {"revoked_at": now},
                )
                if revoked:
                    await self._announce(conn, user_id=row["id"])
        if revoked:
            await self._changed(user_id=row["id"])
        return PasswordReset(row["username"], ended, revoked)

    async def password_hash(self, username: str) -> tuple[User | None, str | None]:
        """Return a user and its password hash, its seal checked, for signing in."""
        async with self.db.read() as conn:
            row = (
                (await conn.execute(select(users).where(users.c.username == username.strip().lower())))
                .mappings()
                .first()
            )
        if row is None:
            return None, None
        await self.seal.check(USERS, row)
        return _user(row), row["password_hash"]

    async def bootstrap(self, token: str | None = None) -> BootstrapCredentials | None:
        """On an empty database, create the first admin and its token; otherwise do nothing."""
        if await self.count_users():
            return None
        try:
            user, password = await self.create_user("admin", Role.ADMIN)
        except errors.Conflict:
            return None  # another node bootstrapped first
        _, plaintext = await self.create_token(user.id, name="bootstrap", plaintext=token)
        return BootstrapCredentials(user.username, password, plaintext)

    # -- tokens -------------------------------------------------------------------

    async def create_token(
        self,
        user_id: str,
        *,
        name: str = "",
        agent: str | None = None,
        expires_in: timedelta | None = None,
        plaintext: str | None = None,
        scopes: Iterable[str] | None = None,
        origins: Iterable[str] | None = None,
        max_priority: str | None = None,
        by: Principal | None = None,
    ) -> tuple[TokenInfo, str]:
        """Issue a token for ``user_id``; return its description and the token, shown once.

        ``by`` is who asks (None: the local CLI or the first start). An agent never issues tokens, and
        nobody gets a token holding more than their own credentials: scopes, origins, priority and,
        when ``by`` is itself a token, lifetime are capped by its own (see :func:`grace.auth.scopes.grant_for`).
        """
        if by is not None:
            by.require_scope(Scope.TOKENS, "issue tokens")
        user = await self.get_user(user_id)
        if by is not None:
            by.require_self_or_admin(user.id)
        if agent is not None:
            agent = agent.strip().lower()
            if not _AGENT.match(agent):
                raise errors.InvalidInput(
                    "an agent name is 1 to 64 characters: lowercase letters, digits, '.', '_', '-'"
                )
        if len(name) > 128:
            raise errors.InvalidInput("a token name is at most 128 characters")
        if expires_in is not None and expires_in <= timedelta(0):
            raise errors.InvalidInput("a token's lifetime must be positive")
        grant = scopes_module.grant_for(
            user.role,
            agent=agent is not None,
            issuer=by,
            limits=self.limits,
            scopes=scopes,
            origins=origins,
            max_priority=max_priority,
        )
        plaintext = plaintext or secrets.generate_token()
        now = self.clock.now()
        expires_at = now + expires_in if expires_in else None
        row = {
            "id": new_id("tok"),
            "user_id": user.id,
            "agent": agent,
            "name": name or (agent or "token"),
            "token_hash": secrets.digest(plaintext),
            "prefix": plaintext[:8],
            "created_at": now,
            "last_used_at": None,
            "expires_at": expires_at,
            "revoked_at": None,
            "scopes": scopes_module.format_names(s.value for s in grant.scopes),
            "origins": scopes_module.format_names(grant.origins) if grant.origins is not None else None,
            "max_priority": grant.max_priority,
            "parent_id": by.token_id if by is not None else None,
        }
        try:
            async with self.seal.reporting(), self.db.write() as conn:
                if by is not None and by.token_id is not None:
                    row["expires_at"] = await self._within_issuer(conn, by.token_id, expires_at)
                row["seal"] = self.seal.seal(TOKENS, row)
                await conn.execute(insert(api_tokens).values(**row))
        except IntegrityError:
            raise errors.Conflict("that token is already in use") from None
        return _token(row), plaintext  # type: ignore[arg-type]

    async def _within_issuer(
        self, conn: AsyncConnection, issuer_id: str, expires_at: datetime | None
    ) -> datetime | None:
        """Return ``expires_at`` cut to the issuing token's own expiry; refuse if that token was revoked meanwhile."""
        issuer = (
            (await conn.execute(select(*TOKENS.selected()).where(api_tokens.c.id == issuer_id).with_for_update()))
            .mappings()
            .first()
        )
        if issuer is None:
            raise errors.Unauthenticated("invalid or revoked token")
        self.seal.require(TOKENS, issuer)
        if issuer["revoked_at"] is not None:
            raise errors.Unauthenticated("invalid or revoked token")
        limit: datetime | None = issuer["expires_at"]
        if limit is not None and (expires_at is None or expires_at > limit):
            return limit
        return expires_at

    async def list_tokens(self, user_id: str | None = None) -> list[TokenInfo]:
        query = select(api_tokens).order_by(api_tokens.c.created_at)
        if user_id is not None:
            query = query.where(api_tokens.c.user_id == user_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_token(r) for r in rows]

    async def revoke_token(self, token_id: str, *, by: Principal | None = None) -> TokenInfo:
        """Revoke a token and every token it issued, down the line.

        Members may revoke only their own; agents none; ``by=None`` is the local CLI.
        """
        if by is not None:
            by.require_scope(Scope.TOKENS, "revoke tokens")
        now = self.clock.now()
        async with self.seal.reporting(), self.db.write() as conn:
            row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))).mappings().first()
            if row is None:
                raise errors.NotFound(f"no token {token_id!r}")
            self.seal.require(TOKENS, row)  # whose token it is decides who may revoke it
            if by is not None and row["user_id"] != by.user_id and not by.is_admin:
                raise errors.NotFound(f"no token {token_id!r}")
            # A token's descendants go with it: a leaked token must not leave one behind.
            seen: set[str] = set()
            frontier = [token_id]
            while frontier:
                seen.update(frontier)
                await self.seal.update_each(
                    conn,
                    TOKENS,
                    api_tokens.c.id.in_(frontier) & api_tokens.c.revoked_at.is_(None),
                    {"revoked_at": now},
                )
                children = await conn.execute(select(api_tokens.c.id).where(api_tokens.c.parent_id.in_(frontier)))
                frontier = [c for (c,) in children.all() if c not in seen]
            await self._announce(conn, token_ids=sorted(seen))
        await self._changed(token_ids=sorted(seen))
        async with self.db.read() as conn:
            row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))).mappings().one()
        return _token(row)

    async def resolve_token(self, plaintext: str) -> Principal:
        """Return the principal a bearer token stands for, or raise Unauthenticated."""
        if not plaintext or len(plaintext) > 512:
            raise errors.Unauthenticated("invalid token")
        token_hash = secrets.digest(plaintext)
        cache = self.cache
        if cache is not None:
            cached = cache.get(token_hash)
            if cached is not None:
                return cached
            generation = cache.generation
        async with self.db.read() as conn:
            row = (
                (
                    await conn.execute(
                        select(*TOKENS.selected(), api_tokens.c.last_used_at, *USERS.selected("owner_"))
                        .join(users, users.c.id == api_tokens.c.user_id)
                        .where(api_tokens.c.token_hash == token_hash)
                    )
                )
                .mappings()
                .first()
            )
        now = self.clock.now()
        if row is None:
            raise errors.Unauthenticated("invalid or revoked token")
        # The token's and its user's rows decide who this is and what it may do: both must be genuine.
        await self.seal.check(TOKENS, row)
        await self.seal.check(USERS, row, "owner_")
        if row["revoked_at"] is not None or row["owner_disabled"]:
            raise errors.Unauthenticated("invalid or revoked token")
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise errors.Unauthenticated("token expired")
        if row["last_used_at"] is None or now - row["last_used_at"] > LAST_USED_RESOLUTION:
            async with self.db.write() as conn:
                await conn.execute(update(api_tokens).where(api_tokens.c.id == row["id"]).values(last_used_at=now))
        origins = row["origins"]
        principal = Principal(
            row["owner_id"],
            row["owner_username"],
            Role(row["owner_role"]),
            agent=row["agent"],
            token_id=row["id"],
            scopes=_stored_scopes(row["scopes"]),
            origins=scopes_module.parse_names(origins) if origins is not None else None,
            max_priority=row["max_priority"],
        )
        if cache is not None:
            cache.put(token_hash, principal, row["expires_at"], generation)
        return principal
