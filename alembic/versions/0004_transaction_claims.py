"""transaction_claims: the first record of every transaction_id, across partitions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 21:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transaction_claims",
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.Column("source_topic", sa.Text(), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name="pk_transaction_claims"),
    )
    op.create_index("ix_transaction_claims_claimed_at", "transaction_claims", ["claimed_at"])
    # what was stored before claims existed keeps its claim
    op.execute("""
        INSERT INTO transaction_claims (transaction_id, source_topic, source_partition,
                                        source_offset, claimed_at)
        SELECT transaction_id, source_topic, source_partition, source_offset, ingested_at
        FROM normalized_transactions
        ON CONFLICT DO NOTHING
    """)


def downgrade() -> None:
    op.drop_index("ix_transaction_claims_claimed_at", table_name="transaction_claims")
    op.drop_table("transaction_claims")
