"""initial schema: the contract's tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 04:52:39.018567
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('aggregate_histograms',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('metric_type', sa.Text(), nullable=False),
    sa.Column('dimension', sa.Text(), server_default='', nullable=False),
    sa.Column('time_window', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_seconds', sa.Integer(), nullable=False),
    sa.Column('buckets', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('sum', sa.Float(), nullable=False),
    sa.Column('min', sa.Float(), nullable=True),
    sa.Column('max', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_aggregate_histograms')),
    sa.UniqueConstraint('metric_type', 'dimension', 'time_window', 'window_seconds', name='uq_aggregate_histograms_metric_dimension_window')
    )
    op.create_table('failed_items',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('raw_payload', sa.LargeBinary(), nullable=False),
    sa.Column('error_category', sa.Text(), nullable=False),
    sa.Column('error_message', sa.Text(), nullable=False),
    sa.Column('source_topic', sa.Text(), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', sa.BigInteger(), nullable=False),
    sa.Column('retry_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('replayed', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_failed_items')),
    sa.UniqueConstraint('source_topic', 'source_partition', 'source_offset', name=op.f('uq_failed_items_source_topic_source_partition_source_offset'))
    )
    op.create_index('ix_failed_items_error_category_created_at', 'failed_items', ['error_category', 'created_at'], unique=False)
    op.create_table('normalized_transactions',
    sa.Column('transaction_id', sa.Text(), nullable=False),
    sa.Column('event_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('merchant_id', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.Text(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('payment_method', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('decline_code', sa.Text(), nullable=True),
    sa.Column('country', sa.Text(), nullable=False),
    sa.Column('processing_ms', sa.Integer(), nullable=False),
    sa.Column('card_bin', sa.Text(), nullable=True),
    sa.Column('risk_score', sa.Float(), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('source_topic', sa.Text(), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', sa.BigInteger(), nullable=False),
    sa.Column('ingested_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('transaction_id', name=op.f('pk_normalized_transactions'))
    )
    op.create_index('ix_normalized_transactions_event_time', 'normalized_transactions', ['event_time'], unique=False)
    op.create_index('ix_normalized_transactions_merchant_event_time', 'normalized_transactions', ['merchant_id', 'event_time'], unique=False)
    op.create_table('payment_metrics_5m',
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('tx_count', sa.BigInteger(), nullable=False),
    sa.Column('approved_count', sa.BigInteger(), nullable=False),
    sa.Column('declined_count', sa.BigInteger(), nullable=False),
    sa.Column('failed_count', sa.BigInteger(), nullable=False),
    sa.Column('pending_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('reversed_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('amount_minor_sum', sa.Numeric(precision=30, scale=0), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('window_start', 'channel', name=op.f('pk_payment_metrics_5m'))
    )
    op.create_table('payment_window_partials',
    sa.Column('window_seconds', sa.Integer(), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('tx_count', sa.BigInteger(), nullable=False),
    sa.Column('approved_count', sa.BigInteger(), nullable=False),
    sa.Column('declined_count', sa.BigInteger(), nullable=False),
    sa.Column('failed_count', sa.BigInteger(), nullable=False),
    sa.Column('pending_count', sa.BigInteger(), nullable=False),
    sa.Column('reversed_count', sa.BigInteger(), nullable=False),
    sa.Column('amount_minor_sum', sa.Numeric(precision=30, scale=0), nullable=False),
    sa.Column('last_offset', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('window_seconds', 'window_start', 'channel', 'source_partition', name=op.f('pk_payment_window_partials'))
    )
    op.create_table('dynamic_metrics',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('transaction_id', sa.Text(), nullable=False),
    sa.Column('metric_type', sa.Text(), nullable=False),
    sa.Column('metric_data', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['transaction_id'], ['normalized_transactions.transaction_id'], name=op.f('fk_dynamic_metrics_transaction_id_normalized_transactions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dynamic_metrics'))
    )
    op.create_index('ix_dynamic_metrics_transaction_id_metric_type', 'dynamic_metrics', ['transaction_id', 'metric_type'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_dynamic_metrics_transaction_id_metric_type', table_name='dynamic_metrics')
    op.drop_table('dynamic_metrics')
    op.drop_table('payment_window_partials')
    op.drop_table('payment_metrics_5m')
    op.drop_index('ix_normalized_transactions_merchant_event_time', table_name='normalized_transactions')
    op.drop_index('ix_normalized_transactions_event_time', table_name='normalized_transactions')
    op.drop_table('normalized_transactions')
    op.drop_index('ix_failed_items_error_category_created_at', table_name='failed_items')
    op.drop_table('failed_items')
    op.drop_table('aggregate_histograms')
