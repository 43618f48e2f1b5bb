"""holds survive faults: the database refuses revoked keys, and a hold can be released by request id

``gs_hold`` refuses a key that is revoked (or not the caller's): the key
cache in Redis may be stale after an outage, the database is not.
``gs_release`` gives back the hold of a request that will never be settled
(its router process died before anything reached the client); it is a no-op
for a request already settled or released, so it is safe to run twice.

Revision ID: 0010
Revises: 0009
"""
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

GS_HOLD = r"""
CREATE OR REPLACE FUNCTION gs_hold(p_request text, p_user integer, p_key integer, p_prompt_cost bigint,
                                   p_output_price bigint, p_max_tokens integer, p_cap integer,
                                   p_ttl_seconds integer, OUT granted integer, OUT amount bigint, OUT refusal text)
LANGUAGE plpgsql AS $$
BEGIN
    granted := 0;
    amount := 0;
    {revoked}
    -- A client who owes the platform (a refund or dispute outran its balance) is refused until it pays.
    IF EXISTS (SELECT 1 FROM ledger_accounts WHERE kind = 'receivable' AND user_id = p_user AND balance < 0) THEN
        refusal := 'receivable';
        RETURN;
    END IF;
    SELECT h.granted, h.amount, h.refusal INTO granted, amount, refusal
        FROM gs_hold_balance(p_request, p_user, p_key, p_prompt_cost, p_output_price, p_max_tokens, p_cap,
                             p_ttl_seconds) AS h;
END $$;
"""

REVOKED = """-- The key cache may be stale (Redis was away when the key was revoked): the database has the last word.
    IF NOT EXISTS (SELECT 1 FROM api_keys WHERE id = p_key AND user_id = p_user AND revoked_at IS NULL) THEN
        refusal := 'revoked';
        RETURN;
    END IF;"""

GS_RELEASE = r"""
CREATE FUNCTION gs_release(p_request text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    hold holds%ROWTYPE;
BEGIN
    -- The hold's row first, then the account and the key: the order gs_finish locks them in.
    SELECT * INTO hold FROM holds WHERE request_id = p_request AND status = 'held' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE ledger_accounts SET held = held - hold.amount WHERE id = hold.account_id;
    UPDATE api_keys SET held = held - hold.amount WHERE id = hold.api_key_id;
    UPDATE holds SET status = 'voided', closed_at = now() WHERE request_id = p_request;
    RETURN true;
END $$;
"""


def upgrade():
    op.execute(GS_HOLD.replace("{revoked}", REVOKED))
    op.execute(GS_RELEASE)


def downgrade():
    op.execute("DROP FUNCTION gs_release(text)")
    op.execute(GS_HOLD.replace("{revoked}", ""))
