"""Row seals: every row that decides a release or a privilege carries a MAC (grace.integrity).

Revision ID: 0010_row_seals
Revises: 0009_voice

Adds ``seal`` to users, api_tokens, sessions, vault_secrets and secret_consent_records, and seals
the rows already there. Sealing needs the row-seal key, derived from the master key: Grace passes it
in (``storage.upgrade(db, seal_key=...)``, from ``grace serve``, ``grace db upgrade`` and every other
command). A database that already holds such rows is refused without it, rather than left unsealed
(an unsealed row is refused on every read that decides). The sealed columns are this migration's own
copy: a later change to what is sealed reseals in a migration of its own.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from grace import errors
from grace.integrity import RowSeal, Sealed
from grace.storage import UTCDateTime

revision = "0010_row_seals"
down_revision = "0009_voice"
branch_labels = None
depends_on = None

# table: (primary key, sealed columns), with each column's type where reading it back needs one.
SEALED: dict[str, tuple[str, tuple[str, ...]]] = {
    "users": ("id", ("username", "password_hash", "role", "disabled")),
    "api_tokens": (
        "id",
        (
            "user_id",
            "agent",
            "token_hash",
            "expires_at",
            "revoked_at",
            "scopes",
            "origins",
            "max_priority",
            "parent_id",
        ),
    ),
    "sessions": ("id", ("user_id", "session_hash", "csrf_hash", "expires_at", "revoked_at")),
    "vault_secrets": ("id", ("owner_id", "key", "secret_type", "service", "risk_level", "status", "current_version")),
    "secret_consent_records": (
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
    ),
}
TIMES = {"expires_at", "revoked_at", "created_at", "responded_at", "valid_until"}
FLAGS = {"disabled", "single_use", "governance_approval_required", "second_approval_required", "auto_approved"}
NUMBERS = {"current_version", "idle_timeout_seconds"}


def _column(name: str) -> sa.ColumnClause[Any]:
    if name in TIMES:
        return sa.column(name, UTCDateTime)
    if name in FLAGS:
        return sa.column(name, sa.Boolean)
    if name in NUMBERS:
        return sa.column(name, sa.Integer)
    return sa.column(name, sa.String)


def upgrade() -> None:
    for name in SEALED:
        op.add_column(name, sa.Column("seal", sa.String(64), nullable=True))
    key = context.config.attributes.get("seal_key")
    bind = op.get_bind()
    sealer = RowSeal(key) if key is not None else None
    for name, (primary, columns) in SEALED.items():
        table = sa.table(name, _column(primary), *(_column(c) for c in columns), sa.column("seal", sa.String))
        rows = bind.execute(sa.select(table.c[primary], *(table.c[c] for c in columns))).mappings().all()
        if rows and sealer is None:
            raise errors.ConfigurationError(
                "migration 0010_row_seals seals the rows already stored and needs the master key for it:"
                " run it through Grace (grace db upgrade) with the master key configured"
            )
        spec = Sealed(table, primary, columns)
        for row in rows:
            assert sealer is not None
            bind.execute(table.update().where(table.c[primary] == row[primary]).values(seal=sealer.seal(spec, row)))


def downgrade() -> None:
    # Plain ALTER TABLE on both backends (SQLite 3.35+ drops an unindexed column in place).
    for name in SEALED:
        op.execute(f"ALTER TABLE {name} DROP COLUMN seal")
