"""Principals resolved from bearer tokens, kept a few seconds so a request need not read the database.

A cached principal was built from token and user rows whose seals were checked when they were read
(:meth:`grace.auth.Accounts.resolve_token`); the cache keeps it at most ``ttl`` (the injected
clock's time), never past the token's own expiry. What changes a token's or user's standing empties
the cache's entries for it:

- in the process that made the change, before the change's call returns (so the next request there
  is refused);
- in every other process through the bus (``auth.tokens.revoked``, ``auth.user.changed``): on
  PostgreSQL, NOTIFY on the event's commit wakes each node's subscription at once;
- on SQLite, where another process (``grace tokens revoke`` from the CLI) has its own in-process
  bus, through the epoch file beside the database: a change touches it, and each lookup compares its
  stat (one system call) with the last seen.

A resolution that began before an invalidation does not store what it read (a generation count).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from grace.auth.principals import Principal
from grace.clock import Clock

__all__ = ["TokenCache"]

MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    until: datetime  # the earlier of the cache's deadline and the token's expiry


class TokenCache:
    """Token digest -> principal, for ``ttl`` at most; emptied per token or per user on change."""

    def __init__(self, clock: Clock, ttl: timedelta, *, epoch_file: Path | None = None) -> None:
        self.clock = clock
        self.ttl = ttl
        self.epoch_file = epoch_file
        self._entries: dict[str, _Entry] = {}
        self._generation = 0
        self._epoch = self._read_epoch()

    @property
    def enabled(self) -> bool:
        return self.ttl > timedelta(0)

    @property
    def generation(self) -> int:
        """A count of invalidations; a resolution stores what it read only if none happened meanwhile."""
        return self._generation

    def _read_epoch(self) -> tuple[int, int] | None:
        if self.epoch_file is None:
            return None
        try:
            st = os.stat(self.epoch_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self.epoch_file is not None and self._read_epoch() != self._epoch:
            self.clear()  # another process changed a token or user: forget everything
            return None
        if self.clock.now() >= entry.until:
            self._entries.pop(digest, None)
            return None
        return entry.principal

    def put(self, digest: str, principal: Principal, expires_at: datetime | None, generation: int) -> None:
        if not self.enabled or generation != self._generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        until = self.clock.now() + self.ttl
        if expires_at is not None and expires_at < until:
            until = expires_at
        self._entries[digest] = _Entry(principal, until)

    def drop_tokens(self, token_ids: Iterable[str]) -> None:
        ids = set(token_ids)
        self._generation += 1
        for digest in [d for d, e in self._entries.items() if e.principal.token_id in ids]:
            del self._entries[digest]

    def drop_user(self, user_id: str) -> None:
        self._generation += 1
        for digest in [d for d, e in self._entries.items() if e.principal.user_id == user_id]:
            del self._entries[digest]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._epoch = self._read_epoch()

    def touch_epoch(self) -> None:
        """Tell other processes on this machine that a token or user changed (SQLite)."""
        if self.epoch_file is None:
            return
        try:
            # Size and mtime both move, whatever the file system's time resolution; 0600 like the database.
            fd = os.open(self.epoch_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b".")
                if os.fstat(fd).st_size > 4096:
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        except OSError:
            return
        self._epoch = self._read_epoch()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"TokenCache(entries={len(self._entries)}, ttl={self.ttl.total_seconds()}s)"
