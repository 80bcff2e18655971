"""Task manager tables (filled in by the HTM capability).

Revision ID: 0002_htm
Revises: 0001_platform
"""

from __future__ import annotations

revision = "0002_htm"
down_revision = "0001_platform"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
