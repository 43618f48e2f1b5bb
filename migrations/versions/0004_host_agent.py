"""host agent: weekly schedules, the host's time zone, the last known WireGuard endpoint

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("hosts", sa.Column("schedule", postgresql.JSONB(astext_type=sa.Text()), server_default="[]",
                                     nullable=False))
    op.add_column("hosts", sa.Column("timezone", sa.String(64), server_default="UTC", nullable=False))
    op.add_column("hosts", sa.Column("wg_endpoint", sa.String(120), nullable=True))


def downgrade():
    for column in ("wg_endpoint", "timezone", "schedule"):
        op.drop_column("hosts", column)
