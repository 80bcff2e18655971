"""Signed heads of the audit chain, and the copies of them kept outside the database.

A signed head (:class:`Checkpoint`) says "the chain's entry at ``seq`` has the hash ``head_hash``",
signed with Ed25519 under a key derived from the master key (:class:`HeadSigner`), so nobody who can
only write the database can make one. The audit log keeps checkpoints in the database; the same
statement is kept outside it in the anchor file (:class:`AnchorFile`, ``GRACE_AUDIT_ANCHOR_PATH``),
which every committed entry advances, and in exported sets (:func:`export_document`,
:func:`parse_export`) that an operator keeps elsewhere.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from grace import clock, errors, storage
from grace.vault.masterkey import MasterKey

__all__ = [
    "EXPORT_FORMAT",
    "AnchorFile",
    "AnchorReading",
    "Checkpoint",
    "HeadSigner",
    "export_document",
    "parse_export",
]

log = logging.getLogger("grace.vault")

EXPORT_FORMAT = "grace-audit-checkpoints/1"

AnchorState = Literal["absent", "genuine", "empty", "unreadable", "foreign"]


@dataclass(frozen=True)
class Checkpoint:
    """A signed head of the chain: the entry at ``seq`` has the hash ``head_hash``."""

    seq: int
    head_hash: str
    at: datetime
    signature: str
    public_key: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "head_hash": self.head_hash,
            "at": clock.iso(self.at),
            "signature": self.signature,
            "public_key": self.public_key,
        }

    @classmethod
    def from_dict(cls, body: Any) -> Checkpoint:
        """Read a checkpoint's fields; ValueError unless ``body`` holds each with its type."""
        if not isinstance(body, dict):
            raise ValueError("not an object")
        seq, at = body.get("seq"), body.get("at")
        texts = [body.get(name) for name in ("head_hash", "signature", "public_key")]
        if type(seq) is not int or seq < 1 or not isinstance(at, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("not a checkpoint")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("a time without its zone")
        return cls(seq, str(texts[0]), when, str(texts[1]), str(texts[2]))


def _statement(seq: int, head_hash: str) -> bytes:
    return f"grace-audit-checkpoint:{seq}:{head_hash}".encode()


class HeadSigner:
    """Signs heads of the chain and checks signatures (Ed25519, key derived from the master key)."""

    def __init__(self, master: MasterKey) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(master.derive("audit-checkpoint-signing"))
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        self._verifier = Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_key))

    def __repr__(self) -> str:
        return f"HeadSigner(public_key={self.public_key[:16]}…)"

    def sign(self, seq: int, head_hash: str, at: datetime) -> Checkpoint:
        return Checkpoint(seq, head_hash, at, self._key.sign(_statement(seq, head_hash)).hex(), self.public_key)

    def genuine(self, checkpoint: Checkpoint) -> bool:
        """Return whether this vault's key signed ``checkpoint``."""
        if checkpoint.public_key != self.public_key:
            return False
        try:
            self._verifier.verify(bytes.fromhex(checkpoint.signature), _statement(checkpoint.seq, checkpoint.head_hash))
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class AnchorReading:
    """What the anchor file holds: a genuine signed head, nothing (``absent``), or something else."""

    path: Path
    state: AnchorState
    checkpoint: Checkpoint | None = None  # when genuine

    @property
    def problem(self) -> str | None:
        """Say what is wrong with the file itself; None when it holds a genuine head or does not exist."""
        return {
            "empty": f"the anchor file {self.path} is empty",
            "unreadable": f"the anchor file {self.path} does not hold a signed head (garbled or replaced)",
            "foreign": f"the anchor file {self.path} is not signed by this vault's key (forged, or from another "
            "master key)",
        }.get(self.state)

    def describe(self) -> dict[str, Any]:
        """The reading as an audit entry records it (no path: the log is read by users too)."""
        found: dict[str, Any] = {"state": self.state}
        if self.checkpoint is not None:
            found.update(seq=self.checkpoint.seq, head_hash=self.checkpoint.head_hash)
        return found


class AnchorFile:
    """The newest signed head, in a file outside the database that processes sharing it take turns on.

    Readers check its signature; a writer holds an exclusive lock on a file beside it while it reads
    and replaces it, so processes sharing it never put it back to an older head.
    """

    def __init__(self, path: Path, signer: HeadSigner) -> None:
        self.path = path
        self._signer = signer
        self._last: tuple[bytes, AnchorReading] | None = None  # the signature is checked once per content

    def __repr__(self) -> str:
        return f"AnchorFile({str(self.path)!r})"

    def read(self) -> AnchorReading:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AnchorReading(self.path, "absent")
        except OSError:
            return AnchorReading(self.path, "unreadable")
        if self._last is not None and self._last[0] == raw:
            return self._last[1]
        reading = self._judge(raw)
        self._last = (raw, reading)
        return reading

    def _judge(self, raw: bytes) -> AnchorReading:
        if not raw.strip():
            return AnchorReading(self.path, "empty")
        try:
            checkpoint = Checkpoint.from_dict(json.loads(raw))
        except ValueError:
            return AnchorReading(self.path, "unreadable")
        if not self._signer.genuine(checkpoint):
            return AnchorReading(self.path, "foreign")
        return AnchorReading(self.path, "genuine", checkpoint)

    def advance(self, make: Callable[[], Checkpoint], seq: int, *, checked: AnchorReading) -> None:
        """After the entry ``seq`` committed, write its signed head ``make()``; log, never raise, on failure.

        ``checked`` is what the append found here. The file is replaced only if it still holds that
        (a first entry's absent file) or a genuine older head: a file changed in between is evidence
        that verify must still see, and a newer head written by another process stays.
        """

        def change(current: AnchorReading) -> Checkpoint | None:
            if current.state == "absent" and checked.state == "absent":
                return make()
            if current.checkpoint is not None and current.checkpoint.seq < seq:
                return make()
            return None

        try:
            self._locked(change)
        except OSError as exc:
            log.warning("vault.audit_anchor_failed", extra={"reason": type(exc).__name__})

    def replace(self, checkpoint: Checkpoint, *, over: AnchorReading) -> None:
        """Write ``checkpoint`` in place of ``over`` (re-anchoring); keep a genuine newer head written since.

        Raises OSError when the file cannot be written.
        """

        def change(current: AnchorReading) -> Checkpoint | None:
            newer = current.checkpoint is not None and current.checkpoint.seq > checkpoint.seq
            return None if newer and current != over else checkpoint

        self._locked(change)

    def _locked(self, change: Callable[[AnchorReading], Checkpoint | None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            replacement = change(self.read())
            if replacement is not None:
                self._store(replacement)
        finally:
            os.close(fd)  # and with it the lock

    def _store(self, checkpoint: Checkpoint) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")  # processes sharing it never share this
        text = json.dumps(checkpoint.as_dict())  # ASCII: the bytes read back are these
        storage.write_private(tmp, text)  # 0600 whatever the umask
        tmp.replace(self.path)
        # Signed here: the next read of these same bytes needs no check of the signature.
        self._last = (text.encode(), AnchorReading(self.path, "genuine", checkpoint))


def export_document(checkpoints: Iterable[Checkpoint], *, public_key: str, at: datetime) -> dict[str, Any]:
    """The exported set of signed heads, one per (seq, head), oldest first."""
    unique = {(c.seq, c.head_hash): c for c in checkpoints}
    return {
        "format": EXPORT_FORMAT,
        "exported_at": clock.iso(at),
        "public_key": public_key,
        "checkpoints": [unique[k].as_dict() for k in sorted(unique)],
    }


def parse_export(text: str, signer: HeadSigner) -> list[Checkpoint]:
    """Read an exported set (or a copy of the anchor file); InvalidInput unless each head is genuine."""
    try:
        body = json.loads(text)
        if isinstance(body, dict) and body.get("format") == EXPORT_FORMAT:
            listed = body.get("checkpoints")
            if not isinstance(listed, list):
                raise ValueError("no list of checkpoints")
            checkpoints = [Checkpoint.from_dict(c) for c in listed]
        else:
            checkpoints = [Checkpoint.from_dict(body)]
    except ValueError:
        raise errors.InvalidInput(
            "not an export of signed checkpoints (grace audit export) nor a copy of the anchor file"
        ) from None
    forged = [c.seq for c in checkpoints if not signer.genuine(c)]
    if forged:
        raise errors.InvalidInput(
            f"the file holds checkpoints this vault's key did not sign (seq {', '.join(map(str, forged[:10]))}):"
            " it is forged, or from another install",
            details={"seq": forged[:100]},
        )
    return checkpoints
