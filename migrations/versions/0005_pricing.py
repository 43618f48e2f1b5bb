"""pricing engine: one row per model per pricing window, with the market seen and the move made

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade():
    op.create_table(
        "price_history",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("old_input_price", sa.BigInteger(), nullable=False),
        sa.Column("new_input_price", sa.BigInteger(), nullable=False),
        sa.Column("old_output_price", sa.BigInteger(), nullable=False),
        sa.Column("new_output_price", sa.BigInteger(), nullable=False),
        sa.Column("demand", sa.BigInteger(), nullable=False),
        sa.Column("supply", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        # The unique index also serves "this model's latest prices" (the model page's history).
        sa.UniqueConstraint("model_id", "at", name="uq_price_history_model_id_at"),
    )
    # The pricing job sums every model's usage over the last minutes each minute.
    op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])


def downgrade():
    op.drop_index("ix_usage_records_created_at", table_name="usage_records")
    op.drop_table("price_history")
