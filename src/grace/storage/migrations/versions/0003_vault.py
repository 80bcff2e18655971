"""Vault tables: keyring, secrets and versions, consent records, usage, audit log and checkpoints.

Revision ID: 0003_vault
Revises: 0002_htm
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_vault"
down_revision = "0002_htm"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
AUDIT_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The audit log is append-only in the database too: UPDATE and DELETE are refused.
SQLITE_TRIGGERS = [
    "CREATE TRIGGER vault_audit_no_update BEFORE UPDATE ON vault_audit "
    "BEGIN SELECT RAISE(ABORT, 'vault_audit is append-only'); END",
    "CREATE TRIGGER vault_audit_no_delete BEFORE DELETE ON vault_audit "
    "BEGIN SELECT RAISE(ABORT, 'vault_audit is append-only'); END",
]
POSTGRES_TRIGGERS = [
    "CREATE FUNCTION vault_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'vault_audit is append-only'; END $$",
    "CREATE TRIGGER vault_audit_no_update BEFORE UPDATE ON vault_audit "
    "FOR EACH ROW EXECUTE FUNCTION vault_audit_append_only()",
    "CREATE TRIGGER vault_audit_no_delete BEFORE DELETE ON vault_audit "
    "FOR EACH ROW EXECUTE FUNCTION vault_audit_append_only()",
]


def upgrade() -> None:
    op.create_table(
        "vault_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
    )
    op.create_table(
        "vault_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("term", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("activated_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("archived_at", TS, nullable=True),
        sa.UniqueConstraint("term", name="uq_vault_keys_term"),
    )
    op.create_index(
        "uq_vault_keys_one_active",
        "vault_keys",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "vault_rotations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("from_key_id", sa.String(40), nullable=True),
        sa.Column("to_key_id", sa.String(40), sa.ForeignKey("vault_keys.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("rewrapped", sa.Integer(), nullable=False),
        sa.Column("started_by", sa.String(140), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index(
        "uq_vault_rotations_one_running",
        "vault_rotations",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "vault_secrets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("secret_type", sa.String(32), nullable=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("risk_level", sa.String(16), nullable=False),
        sa.Column("description", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("hint", sa.String(8), nullable=False),
        sa.Column("usage_count", sa.Integer(), nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("rotation_interval_seconds", sa.Integer(), nullable=True),
        sa.Column("rotation_due_at", TS, nullable=True),
        sa.Column("rotation_notified_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoked_by", sa.String(140), nullable=True),
        sa.UniqueConstraint("owner_id", "key", name="uq_vault_secrets_owner_id"),
    )
    op.create_table(
        "vault_secret_versions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("secret_id", sa.String(40), sa.ForeignKey("vault_secrets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(40), sa.ForeignKey("vault_keys.id"), nullable=False),
        sa.Column("dek_id", sa.String(40), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(140), nullable=False),
        sa.UniqueConstraint("secret_id", "version", name="uq_vault_secret_versions_secret_id"),
    )
    op.create_index("ix_vault_secret_versions_key_id", "vault_secret_versions", ["key_id"])
    op.create_table(
        "secret_consent_records",
        sa.Column("consent_id", sa.String(128), primary_key=True),
        sa.Column("secret_key", sa.String(128), nullable=False),
        sa.Column("secret_id", sa.String(40), sa.ForeignKey("vault_secrets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("secret_type", sa.String(64), nullable=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_for", sa.String(256), nullable=False),
        sa.Column("requested_action", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("requester_user_id", sa.String(40), nullable=True),
        sa.Column("consent_status", sa.String(32), nullable=False),
        sa.Column("risk_level", sa.String(32), nullable=False),
        sa.Column("single_use", sa.Boolean(), nullable=False),
        sa.Column("used_count", sa.Integer(), nullable=False),
        sa.Column("governance_approval_required", sa.Boolean(), nullable=False),
        sa.Column("governance_decision", sa.String(16), nullable=True),
        sa.Column("second_approval_required", sa.Boolean(), nullable=False),
        sa.Column("approved_by", sa.String(140), nullable=True),
        sa.Column("second_approved_by", sa.String(140), nullable=True),
        sa.Column("denial_reason", sa.String(512), nullable=True),
        sa.Column("auto_approved", sa.Boolean(), nullable=False),
        sa.Column("anomalies", sa.JSON(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("responded_at", TS, nullable=True),
        sa.Column("valid_until", TS, nullable=True),
        sa.Column("idle_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoked_by", sa.String(140), nullable=True),
    )
    op.create_index("ix_secret_consent_records_user_id", "secret_consent_records", ["user_id"])
    op.create_index(
        "ix_secret_consent_records_match",
        "secret_consent_records",
        ["secret_id", "requested_by", "requested_action", "consent_status"],
    )
    op.create_table(
        "vault_usage",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("secret_id", sa.String(40), sa.ForeignKey("vault_secrets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner_id", sa.String(40), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
    )
    op.create_index("ix_vault_usage_owner_agent", "vault_usage", ["owner_id", "agent", "at"])
    op.create_table(
        "vault_audit",
        sa.Column("seq", AUDIT_SEQ, primary_key=True, autoincrement=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(140), nullable=False),
        sa.Column("user_id", sa.String(40), nullable=True),
        sa.Column("secret_id", sa.String(40), nullable=True),
        sa.Column("consent_id", sa.String(128), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_vault_audit_user_id", "vault_audit", ["user_id"])
    op.create_table(
        "vault_audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
    )
    triggers = SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else POSTGRES_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS vault_audit_no_update")
        op.execute("DROP TRIGGER IF EXISTS vault_audit_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS vault_audit_no_update ON vault_audit")
        op.execute("DROP TRIGGER IF EXISTS vault_audit_no_delete ON vault_audit")
        op.execute("DROP FUNCTION IF EXISTS vault_audit_append_only()")
    for table in (
        "vault_audit_checkpoints",
        "vault_audit",
        "vault_usage",
        "secret_consent_records",
        "vault_secret_versions",
        "vault_secrets",
        "vault_rotations",
        "vault_keys",
        "vault_meta",
    ):
        op.drop_table(table)
