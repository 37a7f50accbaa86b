"""failed_items: message key, structured errors, first-seen time, replay lineage, retention index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 08:00:00
"""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("failed_items", sa.Column("source_key", sa.LargeBinary(), nullable=True))
    op.add_column("failed_items", sa.Column("error_field", sa.Text(), nullable=True))
    op.add_column("failed_items", sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()),
                                            server_default="[]", nullable=False))
    op.add_column("failed_items", sa.Column("first_seen_at", sa.DateTime(timezone=True),
                                            server_default=sa.text("now()"), nullable=False))
    op.add_column("failed_items", sa.Column("replay_of", sa.BigInteger(), nullable=True))
    op.add_column("failed_items", sa.Column("replayed_at", sa.DateTime(timezone=True),
                                            nullable=True))
    op.create_index("ix_failed_items_created_at", "failed_items", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_failed_items_created_at", table_name="failed_items")
    for column in ("replayed_at", "replay_of", "first_seen_at", "errors", "error_field",
                   "source_key"):
        op.drop_column("failed_items", column)
