"""Vault tables (filled in by the vault capability).

Revision ID: 0003_vault
Revises: 0002_htm
"""

from __future__ import annotations

revision = "0003_vault"
down_revision = "0002_htm"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
