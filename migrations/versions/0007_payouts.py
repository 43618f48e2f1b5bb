"""payouts: host owners' Stripe Connect accounts and the transfers that pay them

Earnings sit in the owner's ``host`` ledger account. Starting a payout moves
whole cents of them to the platform's ``payouts_pending`` account in the same
transaction that stores the payout and its idempotency key, so the same money
can't be paid twice; when Stripe confirms the transfer the amount leaves for
the ``stripe`` account (the money Stripe holds for us); when Stripe refuses it
the amount goes back to the host account, still owed.

At most one payout per owner is open (pending or needing attention) at a time.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
OLD_KINDS = "kind IN ('client', 'host', 'platform_fees', 'grants', 'stripe', 'receivable')"
NEW_KINDS = "kind IN ('client', 'host', 'platform_fees', 'grants', 'stripe', 'receivable', 'payouts_pending')"


def upgrade():
    op.drop_constraint("ck_ledger_accounts_kind_known", "ledger_accounts")
    op.create_check_constraint(op.f("ck_ledger_accounts_kind_known"), "ledger_accounts", NEW_KINDS)
    op.create_table(
        "payout_accounts",
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True),
        sa.Column("stripe_account_id", sa.String(255), nullable=False, unique=True),
        sa.Column("details_submitted", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("payouts_enabled", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=True),
        # Stripe's payout from the connected account to the host's bank failed (``payout.failed``): the
        # transfer was made, the money waits in the host's Stripe balance until the bank details are fixed.
        sa.Column("bank_payout_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("threshold IS NULL OR threshold > 0", name=op.f("ck_payout_accounts_threshold_positive")),
    )
    op.create_table(
        "payouts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("destination", sa.String(255), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("stripe_transfer_id", sa.String(255), nullable=True, unique=True),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        # Whole cents only: Stripe can't move less, and the remainder stays owed.
        sa.CheckConstraint("amount > 0 AND amount % 10000 = 0", name=op.f("ck_payouts_amount_whole_cents")),
        sa.CheckConstraint("status IN ('pending', 'paid', 'failed', 'needs_attention')",
                           name=op.f("ck_payouts_status_known")),
        sa.CheckConstraint("status <> 'paid' OR stripe_transfer_id IS NOT NULL",
                           name=op.f("ck_payouts_paid_has_transfer")),
    )
    op.execute("CREATE UNIQUE INDEX uq_payouts_one_open ON payouts (user_id) "
               "WHERE status IN ('pending', 'needs_attention')")
    op.execute("CREATE INDEX ix_payouts_user_created ON payouts (user_id, created_at DESC)")


def downgrade():
    op.drop_table("payouts")
    op.drop_table("payout_accounts")
    op.execute("DELETE FROM ledger_accounts WHERE kind = 'payouts_pending' AND balance = 0")
    op.drop_constraint("ck_ledger_accounts_kind_known", "ledger_accounts")
    op.create_check_constraint(op.f("ck_ledger_accounts_kind_known"), "ledger_accounts", OLD_KINDS)
