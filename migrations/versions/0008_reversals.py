"""payout reversals, an admin's go-ahead after repeated payout failures, reversals bounded one by one

A reversal (``transfer.reversed``) brings money back from the host's connected
account to the platform; the reversed amount is owed to the host again, so the
payout keeps a running total to take only what is new on each event.

An owner whose payouts failed too many times in a row is skipped until an admin
looks; ``failures_cleared_at`` records that go-ahead (older failures no longer
count).

A purchase's refunds and disputes are each bounded by its amount, no longer
their sum: a refund made after a dispute was won can arrive before the win.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


REVERSALS_EACH = "refunded BETWEEN 0 AND amount AND disputed BETWEEN 0 AND amount"
REVERSALS_SUM = "refunded >= 0 AND disputed >= 0 AND refunded + disputed <= amount"


def upgrade():
    op.drop_constraint("ck_purchases_reversals_within_amount", "purchases")
    op.create_check_constraint(op.f("ck_purchases_reversals_within_amount"), "purchases", REVERSALS_EACH)
    op.add_column("payouts", sa.Column("reversed", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_check_constraint(op.f("ck_payouts_reversed_within_amount"), "payouts",
                               "reversed >= 0 AND reversed <= amount")
    op.add_column("payout_accounts", sa.Column("failures_cleared_at", sa.DateTime(timezone=True)))


def downgrade():
    op.drop_constraint("ck_purchases_reversals_within_amount", "purchases")
    op.create_check_constraint(op.f("ck_purchases_reversals_within_amount"), "purchases", REVERSALS_SUM)
    op.drop_column("payout_accounts", "failures_cleared_at")
    op.drop_constraint(op.f("ck_payouts_reversed_within_amount"), "payouts")
    op.drop_column("payouts", "reversed")
