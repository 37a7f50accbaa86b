"""compliance_flags: one row per flagged payment and rule, with its evidence and review;
the indexes the investigation commands need

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 10:00:00
"""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compliance_flags",
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("merchant_id", sa.Text(), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("config_version", sa.Text(), nullable=False),
        sa.Column("evidence", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), server_default="open", nullable=False),
        sa.Column("reviewed_by", sa.Text(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("flagged_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("status IN ('open', 'cleared', 'escalated')",
                           name="ck_compliance_flags_status"),
        sa.PrimaryKeyConstraint("transaction_id", "rule", name="pk_compliance_flags"),
    )
    op.create_index("ix_compliance_flags_rule_status_event_time", "compliance_flags",
                    ["rule", "status", "event_time"])
    op.create_index("ix_compliance_flags_customer_id_event_time", "compliance_flags",
                    ["customer_id", "event_time"])
    op.create_index("ix_compliance_flags_event_time", "compliance_flags", ["event_time"])
    # one customer's payments across merchants (the rules over a customer's payments,
    # customers show)
    op.create_index("ix_normalized_transactions_customer_event_time", "normalized_transactions",
                    ["customer_id", "event_time"])
    # a payment's re-sends: the id a duplicate carried (payments show)
    op.add_column("failed_items", sa.Column("transaction_id", sa.Text(), nullable=True))
    op.create_index("ix_failed_items_transaction_id", "failed_items", ["transaction_id"],
                    postgresql_where=sa.text("transaction_id IS NOT NULL"))
    # the duplicates stored before: their error's value is the id's Python repr ('tx-1')
    op.execute("""
        UPDATE failed_items
        SET transaction_id = substr(errors -> 0 ->> 'value', 2,
                                    length(errors -> 0 ->> 'value') - 2)
        WHERE error_category = 'duplicate' AND errors -> 0 ->> 'field' = 'transaction_id'
          AND length(errors -> 0 ->> 'value') >= 2
    """)
    # the payments flagged before this table existed: their stored verdicts, as open cases
    op.execute("""
        INSERT INTO compliance_flags (transaction_id, rule, customer_id, merchant_id,
                                      event_time, amount_minor, currency, config_version,
                                      evidence)
        SELECT t.transaction_id, substr(r.key, length('compliance_') + 1), t.customer_id,
               t.merchant_id, t.event_time, t.amount_minor, t.currency, m.config_version,
               jsonb_build_object('backfilled', true)
        FROM dynamic_metrics m
        JOIN normalized_transactions t USING (transaction_id)
        CROSS JOIN LATERAL jsonb_each(m.metric_data) AS r(key, value)
        WHERE m.metric_type = 'compliance' AND r.value = '1'::jsonb
        ON CONFLICT DO NOTHING
    """)


def downgrade() -> None:
    op.drop_index("ix_failed_items_transaction_id", table_name="failed_items")
    op.drop_column("failed_items", "transaction_id")
    op.drop_index("ix_normalized_transactions_customer_event_time",
                  table_name="normalized_transactions")
    op.drop_index("ix_compliance_flags_event_time", table_name="compliance_flags")
    op.drop_index("ix_compliance_flags_customer_id_event_time", table_name="compliance_flags")
    op.drop_index("ix_compliance_flags_rule_status_event_time", table_name="compliance_flags")
    op.drop_table("compliance_flags")
