"""Vault tables: the keyring, secrets and their versions, consent, usage, and the audit log.

The migration ``0003_vault`` creates the same tables with explicit DDL; a test
checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from grace.integrity import Sealed
from grace.storage import UTCDateTime, metadata

__all__ = [
    "CONSENTS",
    "SEALED",
    "SECRETS",
    "secret_consent_records",
    "vault_audit",
    "vault_audit_checkpoints",
    "vault_keys",
    "vault_meta",
    "vault_rotations",
    "vault_secret_versions",
    "vault_secrets",
    "vault_usage",
]

# The seal of a row: HMAC over the columns named below (grace.integrity); NULL or wrong means refused.
SEAL_HEX = 64

AuditSeq = BigInteger().with_variant(Integer, "sqlite")

vault_meta = Table(
    "vault_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(512), nullable=False),
)

# Key-encryption keys. ``status``: pending -> active -> retiring -> archived; never deleted.
vault_keys = Table(
    "vault_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("term", Integer, nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("master_key_id", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("activated_at", UTCDateTime, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("archived_at", UTCDateTime, nullable=True),
    # The database itself refuses a second active key.
    Index(
        "uq_vault_keys_one_active",
        "status",
        unique=True,
        sqlite_where=text("status = 'active'"),
        postgresql_where=text("status = 'active'"),
    ),
)

vault_rotations = Table(
    "vault_rotations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("from_key_id", String(40), nullable=True),
    Column("to_key_id", String(40), ForeignKey("vault_keys.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("step", String(16), nullable=False),
    Column("rewrapped", Integer, nullable=False),
    Column("started_by", String(140), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Index(
        "uq_vault_rotations_one_running",
        "status",
        unique=True,
        sqlite_where=text("status = 'running'"),
        postgresql_where=text("status = 'running'"),
    ),
)

vault_secrets = Table(
    "vault_secrets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(128), nullable=False),
    Column("secret_type", String(32), nullable=False),
    Column("service", String(128), nullable=False),
    Column("risk_level", String(16), nullable=False),
    Column("description", String(512), nullable=False),
    Column("status", String(16), nullable=False),
    Column("current_version", Integer, nullable=False),
    Column("hint", String(8), nullable=False),
    Column("usage_count", Integer, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("rotation_interval_seconds", Integer, nullable=True),
    Column("rotation_due_at", UTCDateTime, nullable=True),
    Column("rotation_notified_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revoked_by", String(140), nullable=True),
    Column("seal", String(SEAL_HEX), nullable=True),
    UniqueConstraint("owner_id", "key", name="uq_vault_secrets_owner_id"),
)

vault_secret_versions = Table(
    "vault_secret_versions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("secret_id", String(40), ForeignKey("vault_secrets.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("key_id", String(40), ForeignKey("vault_keys.id"), nullable=False, index=True),
    Column("dek_id", String(40), nullable=False),
    Column("wrapped_dek", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(140), nullable=False),
    UniqueConstraint("secret_id", "version", name="uq_vault_secret_versions_secret_id"),
)

# Named after the seed's schema (002 §4); extra columns carry expiry, governance and approvals.
secret_consent_records = Table(
    "secret_consent_records",
    metadata,
    Column("consent_id", String(128), primary_key=True),
    Column("secret_key", String(128), nullable=False),
    # NULL for an approval (kind ``approval``): a playbook step asking the owner, tied to no secret.
    Column("secret_id", String(40), ForeignKey("vault_secrets.id", ondelete="CASCADE"), nullable=True),
    Column("secret_type", String(64), nullable=False),
    Column("service", String(128), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("requested_for", String(256), nullable=False),
    Column("requested_action", String(128), nullable=False),
    Column("user_id", String(128), nullable=False, index=True),
    Column("requester_user_id", String(40), nullable=True),
    Column("consent_status", String(32), nullable=False),
    Column("risk_level", String(32), nullable=False),
    Column("single_use", Boolean, nullable=False),
    Column("used_count", Integer, nullable=False),
    Column("governance_approval_required", Boolean, nullable=False),
    Column("governance_decision", String(16), nullable=True),
    Column("second_approval_required", Boolean, nullable=False),
    Column("approved_by", String(140), nullable=True),
    Column("second_approved_by", String(140), nullable=True),
    Column("denial_reason", String(512), nullable=True),
    Column("auto_approved", Boolean, nullable=False),
    Column("anomalies", JSON, nullable=False),
    Column("context", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("responded_at", UTCDateTime, nullable=True),
    Column("valid_until", UTCDateTime, nullable=True),
    Column("idle_timeout_seconds", Integer, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revoked_by", String(140), nullable=True),
    Column("seal", String(SEAL_HEX), nullable=True),
    # ``secret`` (a use of a secret) or ``approval`` (migration 0017_approvals).
    Column("kind", String(16), nullable=False, server_default="secret"),
    Index("ix_secret_consent_records_match", "secret_id", "requested_by", "requested_action", "consent_status"),
)

vault_usage = Table(
    "vault_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("secret_id", String(40), ForeignKey("vault_secrets.id", ondelete="CASCADE"), nullable=False),
    Column("owner_id", String(40), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("action", String(128), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("hour", Integer, nullable=False),
    Index("ix_vault_usage_owner_agent", "owner_id", "agent", "at"),
)

# Append-only: triggers in the migration refuse UPDATE and DELETE.
vault_audit = Table(
    "vault_audit",
    metadata,
    Column("seq", AuditSeq, primary_key=True, autoincrement=False),
    Column("at", UTCDateTime, nullable=False),
    Column("event", String(64), nullable=False),
    Column("actor", String(140), nullable=False),
    Column("user_id", String(40), nullable=True, index=True),
    Column("secret_id", String(40), nullable=True),
    Column("consent_id", String(128), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

vault_audit_checkpoints = Table(
    "vault_audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("public_key", String(64), nullable=False),
)

# What each seal covers: everything that decides whether, to whom and which value is released.
# Not sealed: counters and times of use (usage_count, used_count, last_used_at), rotation reminders,
# descriptions, reasons, context and anomalies (see docs/vault.md, the threat model).
SECRETS = Sealed(
    vault_secrets,
    "id",
    ("owner_id", "key", "secret_type", "service", "risk_level", "status", "current_version"),
)
CONSENTS = Sealed(
    secret_consent_records,
    "consent_id",
    (
        "secret_id",
        "secret_key",
        "secret_type",
        "service",
        "requested_by",
        "requested_for",
        "requested_action",
        "user_id",
        "requester_user_id",
        "consent_status",
        "risk_level",
        "single_use",
        "governance_approval_required",
        "governance_decision",
        "second_approval_required",
        "approved_by",
        "second_approved_by",
        "auto_approved",
        "created_at",
        "expires_at",
        "responded_at",
        "valid_until",
        "idle_timeout_seconds",
    ),
)
SEALED = (SECRETS, CONSENTS)
