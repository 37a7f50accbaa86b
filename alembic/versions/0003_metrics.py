"""metrics: histogram partials, quantiles on aggregate_histograms, config version and
retention indexes on dynamic_metrics

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 09:00:00
"""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "histogram_partials",
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric_type", sa.Text(), nullable=False),
        sa.Column("dimension", sa.Text(), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("buckets", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("last_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("window_seconds", "window_start", "metric_type", "dimension",
                                "source_partition", name="pk_histogram_partials"),
    )
    op.create_index("ix_histogram_partials_window_start", "histogram_partials",
                    ["window_start"])
    for column in ("p50", "p95", "p99"):
        op.add_column("aggregate_histograms", sa.Column(column, sa.Float(), nullable=True))
    op.create_index("ix_aggregate_histograms_time_window", "aggregate_histograms",
                    ["time_window"])
    op.add_column("dynamic_metrics", sa.Column("config_version", sa.Text(), nullable=False,
                                               server_default=""))
    op.create_index("ix_dynamic_metrics_created_at", "dynamic_metrics", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_dynamic_metrics_created_at", table_name="dynamic_metrics")
    op.drop_column("dynamic_metrics", "config_version")
    op.drop_index("ix_aggregate_histograms_time_window", table_name="aggregate_histograms")
    for column in ("p99", "p95", "p50"):
        op.drop_column("aggregate_histograms", column)
    op.drop_index("ix_histogram_partials_window_start", table_name="histogram_partials")
    op.drop_table("histogram_partials")
