"""three check constraints get the names the models give them

Migrations 0002 and 0003 passed already-conventional names to a naming
convention, which prefixed them again (``ck_hosts_ck_hosts_engine_port_valid``).

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

RENAMED = (("hosts", "engine_port_valid"), ("api_keys", "held_not_negative"), ("api_keys", "within_spend_limit"))


def upgrade():
    for table, name in RENAMED:
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT ck_{table}_ck_{table}_{name} TO ck_{table}_{name}")


def downgrade():
    for table, name in RENAMED:
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT ck_{table}_{name} TO ck_{table}_ck_{table}_{name}")
