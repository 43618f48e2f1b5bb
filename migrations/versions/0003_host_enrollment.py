"""host enrollment: single-use machine keys, host tokens, engine port, heartbeat, availability

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade():
    op.create_table(
        "enrollment_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("used_at", TIMESTAMP, nullable=True),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
    )
    op.add_column("hosts", sa.Column("token_prefix", sa.String(32), nullable=True))
    op.add_column("hosts", sa.Column("token_hash", sa.String(64), nullable=True))
    op.create_unique_constraint("uq_hosts_token_hash", "hosts", ["token_hash"])
    op.add_column("hosts", sa.Column("engine_port", sa.Integer(), nullable=True))
    op.add_column("hosts", sa.Column("ssh_host_key", sa.Text(), nullable=True))
    op.add_column("hosts", sa.Column("available", sa.Boolean(), server_default="true", nullable=False))
    op.add_column("hosts", sa.Column("heartbeat", postgresql.JSONB(astext_type=sa.Text()), server_default="{}",
                                     nullable=False))
    op.create_check_constraint("ck_hosts_engine_port_valid", "hosts",
                               "engine_port IS NULL OR engine_port BETWEEN 1 AND 65535")


def downgrade():
    op.drop_constraint(op.f("ck_hosts_ck_hosts_engine_port_valid"), "hosts")  # the name upgrade() gave it
    for column in ("heartbeat", "available", "ssh_host_key", "engine_port"):
        op.drop_column("hosts", column)
    op.drop_constraint("uq_hosts_token_hash", "hosts")
    op.drop_column("hosts", "token_hash")
    op.drop_column("hosts", "token_prefix")
    op.drop_table("enrollment_keys")
