"""Authenticated encryption with AES-256-GCM, bound to what each ciphertext is for.

Every ciphertext is sealed with associated data naming its purpose, its subject
(the secret or key it belongs to), its version and the id of the key that
sealed it. Opening it with any other label fails, so a ciphertext copied to
another secret or version, or relabelled with another key id, is refused
instead of yielding a plaintext. A sealed blob is ``nonce (12 bytes) ||
ciphertext || tag (16 bytes)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from grace import errors

__all__ = [
    "KEY_BYTES",
    "Binding",
    "IntegrityFailure",
    "Key",
    "derive",
    "mac",
    "new_key",
    "open_sealed",
    "seal",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FORMAT = b"grace-vault/1"

# What a sealed blob can be for; anything else is refused.
PURPOSES = frozenset({"value", "dek", "kek", "data"})


class IntegrityFailure(errors.GraceError):
    """A stored ciphertext failed authentication: it was altered, moved or relabelled; nothing was decrypted."""

    code = "integrity_failure"


class Key:
    """Raw key bytes with an id; never shows the bytes in a repr."""

    __slots__ = ("_material", "id")

    def __init__(self, key_id: str, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise ValueError("a vault key is 32 bytes")
        self.id = key_id
        self._material = bytes(material)

    @property
    def material(self) -> bytes:
        return self._material

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, material=<hidden>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and self.id == other.id and hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.id)


@dataclass(frozen=True)
class Binding:
    """The associated data a ciphertext is bound to."""

    purpose: str
    subject: str
    version: int
    key_id: str

    def encode(self) -> bytes:
        if self.purpose not in PURPOSES:
            raise ValueError(f"unknown purpose {self.purpose!r}")
        # Length-prefixed fields: no two different bindings encode alike.
        out = bytearray(FORMAT)
        for field in (self.purpose, self.subject, self.key_id):
            raw = field.encode()
            out += struct.pack(">H", len(raw)) + raw
        out += struct.pack(">Q", self.version)
        return bytes(out)


def new_key(key_id: str) -> Key:
    """Return a fresh random 256-bit key."""
    return Key(key_id, os.urandom(KEY_BYTES))


def seal(key: Key, plaintext: bytes, binding: Binding) -> bytes:
    """Encrypt and authenticate ``plaintext`` under ``key``, bound to ``binding``."""
    if binding.key_id != key.id:
        raise ValueError("the binding must name the key that seals it")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key.material).encrypt(nonce, plaintext, binding.encode())


def open_sealed(key: Key, blob: bytes, binding: Binding) -> bytes:
    """Decrypt ``blob``; raise IntegrityFailure if it was not sealed by ``key`` for ``binding``."""
    if binding.key_id != key.id or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise IntegrityFailure()
    try:
        return AESGCM(key.material).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], binding.encode())
    except InvalidTag:
        raise IntegrityFailure() from None


def derive(master: bytes, label: str, length: int = KEY_BYTES) -> bytes:
    """Derive an independent sub-key from ``master`` for ``label`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"grace/{label}".encode()).derive(master)


def mac(key: bytes, data: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``data``."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()
