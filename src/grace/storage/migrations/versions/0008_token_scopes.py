"""Token scopes: what each API token may do, which origins and priority it may claim, and who issued it.

Revision ID: 0008_token_scopes
Revises: 0007_htm_single_claim

Existing tokens keep what they could do before, within the new rule that an agent only asks: a token
naming an agent gets the agent scopes; a user's own token gets every scope its user's role gives.
A row written later without scopes holds none (the column's default), so a forgotten value fails closed.
The scope names are this migration's own copy: renaming a scope later must not change what it did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_token_scopes"
down_revision = "0007_htm_single_claim"
branch_labels = None
depends_on = None

AGENT_SCOPES = "secrets:ask tasks"
MEMBER_SCOPES = "audit consents secrets secrets:ask tasks tokens"
ADMIN_SCOPES = "audit consents keys secrets secrets:ask tasks tokens users"


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("scopes", sa.String(200), nullable=False, server_default=""))
    op.add_column("api_tokens", sa.Column("origins", sa.String(200), nullable=True))
    op.add_column("api_tokens", sa.Column("max_priority", sa.String(16), nullable=True))
    op.add_column("api_tokens", sa.Column("parent_id", sa.String(40), nullable=True))
    op.create_index("ix_api_tokens_parent_id", "api_tokens", ["parent_id"])
    tokens = sa.table("api_tokens", sa.column("agent"), sa.column("user_id"), sa.column("scopes"))
    users = sa.table("users", sa.column("id"), sa.column("role"))
    admins = sa.select(users.c.id).where(users.c.role == "admin")
    op.execute(tokens.update().where(tokens.c.agent.is_not(None)).values(scopes=AGENT_SCOPES))
    op.execute(
        tokens.update().where(tokens.c.agent.is_(None), tokens.c.user_id.in_(admins)).values(scopes=ADMIN_SCOPES)
    )
    op.execute(
        tokens.update().where(tokens.c.agent.is_(None), tokens.c.user_id.not_in(admins)).values(scopes=MEMBER_SCOPES)
    )


def downgrade() -> None:
    op.drop_index("ix_api_tokens_parent_id", table_name="api_tokens")
    # Plain ALTER TABLE on both backends (SQLite 3.35+ drops an unindexed column in place).
    for column in ("parent_id", "max_priority", "origins", "scopes"):
        op.execute(f"ALTER TABLE api_tokens DROP COLUMN {column}")
