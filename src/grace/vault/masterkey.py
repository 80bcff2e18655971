"""Where the master key comes from: the environment, a 0600 key file, or a passphrase.

Order of preference: ``GRACE_MASTER_KEY`` (32 bytes, base64 or hex), then
``GRACE_MASTER_PASSPHRASE`` stretched with Argon2id (the salt lives in the
database, it is not secret), then the key file (``GRACE_MASTER_KEY_FILE``, by
default ``master.key`` in the data directory), created on first run with mode
0600 and a loud warning to back it up. The master key never touches the
database: it only wraps the key-encryption keys stored there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw

from grace import errors
from grace.config import Settings
from grace.vault import crypto

__all__ = ["MasterKey", "from_passphrase", "from_settings", "generate_encoded", "key_file_path", "load_from_file"]

log = logging.getLogger("grace.vault")

KEY_FILE_NAME = "master.key"
# Argon2id: 64 MiB, 3 passes (RFC 9106's second recommended option, with fewer lanes for small machines).
ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 64 * 1024
ARGON2_PARALLELISM = 2
SALT_BYTES = 16


class MasterKey:
    """The root of the key hierarchy; holds 32 bytes and never shows them."""

    __slots__ = ("_material", "created_file", "source")

    def __init__(self, material: bytes, source: str, *, created_file: Path | None = None) -> None:
        if len(material) != crypto.KEY_BYTES:
            raise errors.ConfigurationError("the master key must be 32 bytes")
        self._material = bytes(material)
        self.source = source
        self.created_file = created_file  # set when this process generated the key file

    @property
    def first_run_warning(self) -> str | None:
        """Return the warning to show a person when this process just created the key file."""
        if self.created_file is None:
            return None
        return (
            f"A new vault master key was written to {self.created_file} (mode 0600). Back it up now: without it "
            "every stored secret is lost. To manage the key yourself set GRACE_MASTER_KEY (see `grace keys "
            "generate`) or GRACE_MASTER_PASSPHRASE."
        )

    @property
    def key_id(self) -> str:
        """Return a public fingerprint that tells one master key from another."""
        return crypto.mac(self._material, b"grace master key id")[:24]

    def wrapping_key(self, key_id: str) -> crypto.Key:
        """Return the key that wraps the keyring's key-encryption keys."""
        return crypto.Key(key_id, crypto.derive(self._material, "kek-wrap"))

    def derive(self, label: str) -> bytes:
        """Derive an independent sub-key (audit chain, value fingerprints, checkpoint signing)."""
        return crypto.derive(self._material, label)

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r}, id={self.key_id!r}, material=<hidden>)"


def generate_encoded() -> str:
    """Return a fresh master key, base64url encoded, for ``GRACE_MASTER_KEY``."""
    return base64.urlsafe_b64encode(secrets.token_bytes(crypto.KEY_BYTES)).decode()


def _decode(raw: str, where: str) -> bytes:
    raw = raw.strip()
    material = b""
    if re.fullmatch(r"[0-9a-fA-F]{64}", raw):
        material = bytes.fromhex(raw)
    else:
        with contextlib.suppress(binascii.Error, ValueError):
            material = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    if len(material) != crypto.KEY_BYTES:
        raise errors.ConfigurationError(f"{where} must hold 32 random bytes, base64 or hex (try: grace keys generate)")
    return material


def key_file_path(settings: Settings) -> Path:
    return settings.master_key_file or settings.data_dir / KEY_FILE_NAME


def load_from_file(path: Path, *, create: bool = True) -> MasterKey:
    """Read the key file, or create it (mode 0600) when it does not exist yet."""
    created = False
    if not path.exists():
        if not create:
            raise errors.ConfigurationError(f"GRACE_MASTER_KEY_FILE: {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        created = _create(path)
        if created:
            log.warning(
                "vault.master_key_file_created",
                extra={
                    "path": str(path),
                    "warning": "a new master key was generated; back this file up now: without it every stored "
                    "secret is lost. Set GRACE_MASTER_KEY or GRACE_MASTER_PASSPHRASE to manage the key yourself.",
                },
            )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise errors.ConfigurationError(
            f"GRACE_MASTER_KEY_FILE: {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    material = _decode(path.read_text().strip(), f"GRACE_MASTER_KEY_FILE ({path})")
    return MasterKey(material, "file", created_file=path if created else None)


def _create(path: Path) -> bool:
    """Write a new key to ``path`` whole, or leave the one another process wrote; return True if this one wrote it.

    The key is written and flushed to disk under a temporary name, then linked to ``path``, which
    fails if the file exists: so ``path`` never exists half-written, and of processes starting
    together exactly one key wins and every one of them reads it.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_encoded() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False  # another process created it first
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the new name survives a power cut as well as the contents
        finally:
            os.close(directory)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def from_passphrase(passphrase: str, salt: bytes) -> MasterKey:
    """Stretch a passphrase into the master key with Argon2id."""
    material = hash_secret_raw(
        passphrase.encode(),
        salt,
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=crypto.KEY_BYTES,
        type=Type.ID,
    )
    return MasterKey(material, "passphrase")


def from_settings(settings: Settings, passphrase_salt: bytes | None = None) -> MasterKey:
    """Return the master key the settings name; ``passphrase_salt`` is needed for the passphrase option."""
    if settings.master_key is not None:
        return MasterKey(_decode(settings.master_key.get_secret_value(), "GRACE_MASTER_KEY"), "environment")
    if settings.master_passphrase is not None:
        if passphrase_salt is None:
            raise errors.ConfigurationError("GRACE_MASTER_PASSPHRASE needs the vault's salt (open the database first)")
        return from_passphrase(settings.master_passphrase.get_secret_value(), passphrase_salt)
    return load_from_file(key_file_path(settings))
