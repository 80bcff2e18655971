"""Envelope encryption for other capabilities' data (a voice note's audio): the vault's keys, their storage.

:meth:`Envelope.seal` makes a fresh data key, seals the bytes with it (AES-256-GCM, bound to the
caller's ``subject``) and wraps the data key with the active key-encryption key; the caller stores the
:class:`SealedData` it gets back and hands it to :meth:`Envelope.open` to read the bytes again.
Deleting the stored row deletes the data key with it: nothing else can open the ciphertext.
The caller registers the table it stores them in (:meth:`Envelope.register`), and key rotation
re-wraps those data keys with the new key too, then archives the old key once nothing names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Table

from grace.storage import new_id
from grace.vault import crypto
from grace.vault.keyring import Keyring, SealedTable

__all__ = ["Envelope", "SealedData"]

VERSION = 1


@dataclass(frozen=True, repr=False)
class SealedData:
    """A ciphertext with its wrapped data key and the ids of both keys (no key bytes)."""

    key_id: str
    dek_id: str
    wrapped_dek: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"SealedData(key_id={self.key_id!r}, dek_id={self.dek_id!r}, bytes={len(self.ciphertext)})"


class Envelope:
    """Seal and open bytes with a data key of their own, wrapped by the active key-encryption key."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def seal(self, subject: str, data: bytes) -> SealedData:
        """Encrypt ``data`` for ``subject`` (e.g. ``voice:<note id>``) under a new data key."""
        kek = await self.keyring.active()
        dek = crypto.new_key(new_id("dek"))
        ciphertext = crypto.seal(dek, data, crypto.Binding("data", subject, VERSION, dek.id))
        return SealedData(kek.id, dek.id, self.keyring.wrap_dek(kek, dek, subject, VERSION), ciphertext)

    def register(self, table: Table, id_column: str, subject: Callable[[str], str]) -> None:
        """Have key rotation re-wrap the data keys stored in ``table``.

        ``table`` keeps each :class:`SealedData`'s ``key_id`` and ``wrapped_dek`` in columns of those
        names; ``subject(row id)`` is the subject the row's data was sealed for.
        """
        self.keyring.register_sealed(SealedTable(table, id_column, subject, VERSION))

    async def open(self, subject: str, sealed: SealedData) -> bytes:
        """Decrypt what :meth:`seal` gave for ``subject``; IntegrityFailure if it was altered or moved."""
        dek = await self.keyring.unwrap_dek(sealed.key_id, sealed.dek_id, sealed.wrapped_dek, subject, VERSION)
        return crypto.open_sealed(dek, sealed.ciphertext, crypto.Binding("data", subject, VERSION, dek.id))
