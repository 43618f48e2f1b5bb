"""billing: Stripe purchases, webhook events, receivables

Credits bought through Stripe Checkout come from the ``stripe`` platform
account (the money Stripe holds for us; negative by design, as ``grants``).
A refund or dispute that takes more than a client has left puts the shortfall
on the client's ``receivable`` account: the only owned account allowed below
zero, and never above it. While a client owes, ``gs_hold`` refuses every
request ('receivable'); the next purchase or grant pays the debt first.

``stripe_events`` holds every webhook event by id: inserting it is the
deduplication, in the same transaction as what the event posts.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
OLD_KINDS = "kind IN ('client', 'host', 'platform_fees', 'grants')"
NEW_KINDS = "kind IN ('client', 'host', 'platform_fees', 'grants', 'stripe', 'receivable')"
OLD_OWNER = "(user_id IS NOT NULL) = (kind IN ('client', 'host'))"
NEW_OWNER = "(user_id IS NOT NULL) = (kind IN ('client', 'host', 'receivable'))"


def upgrade():
    op.drop_constraint("ck_ledger_accounts_kind_known", "ledger_accounts")
    op.drop_constraint("ck_ledger_accounts_owner_matches_kind", "ledger_accounts")
    op.create_check_constraint(op.f("ck_ledger_accounts_kind_known"), "ledger_accounts", NEW_KINDS)
    op.create_check_constraint(op.f("ck_ledger_accounts_owner_matches_kind"), "ledger_accounts", NEW_OWNER)
    op.create_check_constraint(op.f("ck_ledger_accounts_receivable_owed"), "ledger_accounts",
                               "kind <> 'receivable' OR balance <= 0")

    op.create_table(
        "purchases",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=False, unique=True),
        sa.Column("payment_intent_id", sa.String(255), nullable=True, unique=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), server_default="usd", nullable=False),
        sa.Column("status", sa.String(16), server_default="open", nullable=False),
        sa.Column("refunded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("disputed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("paid_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_purchases_amount_positive")),
        sa.CheckConstraint("status IN ('open', 'processing', 'paid', 'failed')",
                           name=op.f("ck_purchases_status_known")),
        sa.CheckConstraint("refunded >= 0 AND disputed >= 0 AND refunded + disputed <= amount",
                           name=op.f("ck_purchases_reversals_within_amount")),
    )
    op.execute("CREATE INDEX ix_purchases_user_created ON purchases (user_id, created_at DESC)")
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("payment_intent_id", sa.String(255), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("received_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
    )
    op.execute("CREATE INDEX ix_stripe_events_waiting ON stripe_events (payment_intent_id) WHERE NOT applied")
    op.execute(BILLING_SQL)


def downgrade():
    op.execute("DROP FUNCTION gs_hold(text, integer, integer, bigint, bigint, integer, integer, integer)")
    op.execute("ALTER FUNCTION gs_hold_balance(text, integer, integer, bigint, bigint, integer, integer, integer) "
               "RENAME TO gs_hold")
    op.execute(GS_ACCOUNT_SQL.format(negative="p_kind = 'grants'"))
    op.drop_table("stripe_events")
    op.drop_table("purchases")
    op.drop_constraint("ck_ledger_accounts_receivable_owed", "ledger_accounts")
    op.drop_constraint("ck_ledger_accounts_owner_matches_kind", "ledger_accounts")
    op.drop_constraint("ck_ledger_accounts_kind_known", "ledger_accounts")
    op.create_check_constraint(op.f("ck_ledger_accounts_kind_known"), "ledger_accounts", OLD_KINDS)
    op.create_check_constraint(op.f("ck_ledger_accounts_owner_matches_kind"), "ledger_accounts", OLD_OWNER)


GS_ACCOUNT_SQL = r"""
CREATE OR REPLACE FUNCTION gs_account(p_kind text, p_user integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    account bigint;
BEGIN
    SELECT id INTO account FROM ledger_accounts WHERE kind = p_kind AND user_id IS NOT DISTINCT FROM p_user;
    IF account IS NULL THEN
        INSERT INTO ledger_accounts (kind, user_id, allow_negative) VALUES (p_kind, p_user, {negative})
            ON CONFLICT DO NOTHING RETURNING id INTO account;
        IF account IS NULL THEN
            SELECT id INTO account FROM ledger_accounts WHERE kind = p_kind AND user_id IS NOT DISTINCT FROM p_user;
        END IF;
    END IF;
    RETURN account;
END $$;
"""

BILLING_SQL = GS_ACCOUNT_SQL.format(negative="p_kind IN ('grants', 'stripe', 'receivable')") + r"""
-- A client who owes the platform (a refund or dispute outran its balance) is refused until it pays.
ALTER FUNCTION gs_hold(text, integer, integer, bigint, bigint, integer, integer, integer) RENAME TO gs_hold_balance;
CREATE FUNCTION gs_hold(p_request text, p_user integer, p_key integer, p_prompt_cost bigint,
                        p_output_price bigint, p_max_tokens integer, p_cap integer, p_ttl_seconds integer,
                        OUT granted integer, OUT amount bigint, OUT refusal text)
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ledger_accounts WHERE kind = 'receivable' AND user_id = p_user AND balance < 0) THEN
        granted := 0;
        amount := 0;
        refusal := 'receivable';
        RETURN;
    END IF;
    SELECT h.granted, h.amount, h.refusal INTO granted, amount, refusal
        FROM gs_hold_balance(p_request, p_user, p_key, p_prompt_cost, p_output_price, p_max_tokens, p_cap,
                             p_ttl_seconds) AS h;
END $$;
"""
