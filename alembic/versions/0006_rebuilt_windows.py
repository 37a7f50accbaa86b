"""rebuilt_windows: the windows ``reprocess`` rebuilt, which the workers' writes no longer
replace (but for their late_events and failed rows)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 20:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rebuilt_windows",
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("config_version", sa.Text(), nullable=False),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("window_seconds", "window_start", "source_partition"),
    )
    op.create_index("ix_rebuilt_windows_window_start", "rebuilt_windows", ["window_start"])


def downgrade() -> None:
    op.drop_index("ix_rebuilt_windows_window_start", table_name="rebuilt_windows")
    op.drop_table("rebuilt_windows")
