"""ledger, holds, usage records, rate limits

The ledger is double-entry and append-only. PostgreSQL itself keeps it honest:
entries and transfers refuse UPDATE and DELETE, every transfer must balance to
zero at commit, each account's balance is maintained by a trigger from its
entries, and a CHECK keeps it from going below zero (less what is held) unless
the account has an explicit credit line or is a platform source account.

Holds reserve a request's worst-case cost at admission (gs_hold) and are
released when the request is settled (gs_finish, idempotent by request id) or
voided by the sweeper (gs_void_expired).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade():
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credit_limit", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("allow_negative", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('client', 'host', 'platform_fees', 'grants')", name="kind_known"),
        sa.CheckConstraint("(user_id IS NOT NULL) = (kind IN ('client', 'host'))", name="owner_matches_kind"),
        sa.CheckConstraint("held >= 0", name="held_not_negative"),
        sa.CheckConstraint("credit_limit >= 0", name="credit_limit_not_negative"),
        sa.CheckConstraint("allow_negative OR balance + credit_limit - held >= 0", name="no_overdraft"),
        sa.UniqueConstraint("kind", "user_id", name="uq_ledger_accounts_kind_user_id"),
    )
    # Platform accounts have no owner: one of each kind, made on first use by gs_account.
    op.execute("CREATE UNIQUE INDEX uq_ledger_accounts_platform ON ledger_accounts (kind) WHERE user_id IS NULL")

    op.create_table(
        "ledger_transfers",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True, unique=True),
        sa.Column("memo", sa.Text(), server_default="", nullable=False),
        sa.Column("created_by_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("transfer_id", sa.String(100), sa.ForeignKey("ledger_transfers.id", ondelete="RESTRICT"),
                  nullable=False, index=True),
        sa.Column("account_id", sa.BigInteger(), sa.ForeignKey("ledger_accounts.id", ondelete="RESTRICT"),
                  nullable=False, index=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
    )

    op.create_table(
        "holds",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.BigInteger(), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("api_key_id", sa.Integer(), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), server_default="held", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("closed_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint("status IN ('held', 'settled', 'voided')", name="status_known"),
    )
    op.execute("CREATE INDEX ix_holds_open ON holds (expires_at) WHERE status = 'held'")

    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("api_key_id", sa.Integer(), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("hosts.id"), nullable=True),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("host_prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("host_completion_tokens", sa.Integer(), nullable=True),
        sa.Column("input_price", sa.BigInteger(), nullable=False),
        sa.Column("output_price", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("cost >= 0 AND cost <= held", name="cost_within_hold"),
    )
    op.execute("CREATE INDEX ix_usage_records_user_created ON usage_records (user_id, created_at DESC)")

    op.add_column("api_keys", sa.Column("spent", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("api_keys", sa.Column("held", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("api_keys", sa.Column("requests_per_minute", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("tokens_per_minute", sa.Integer(), nullable=True))
    op.add_column("users", sa.Column("requests_per_minute", sa.Integer(), nullable=True))
    op.add_column("users", sa.Column("tokens_per_minute", sa.Integer(), nullable=True))
    op.add_column("hosts", sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False))
    op.add_column("hosts", sa.Column("consecutive_successes", sa.Integer(), server_default="0", nullable=False))
    op.add_column("hosts", sa.Column("last_checked_at", TIMESTAMP, nullable=True))
    op.add_column("hosts", sa.Column("last_check_error", sa.Text(), nullable=True))
    op.create_check_constraint("ck_api_keys_held_not_negative", "api_keys", "held >= 0")
    op.create_check_constraint("ck_api_keys_within_spend_limit", "api_keys",
                               "spend_limit IS NULL OR spent + held <= spend_limit")

    op.execute(LEDGER_SQL)


def downgrade():
    for function in ("gs_void_expired", "gs_finish", "gs_hold", "gs_account", "ledger_check_balanced",
                     "ledger_apply_entry", "ledger_is_append_only"):
        op.execute(f"DROP FUNCTION IF EXISTS {function} CASCADE")
    # The names upgrade() gave them (the naming convention prefixed them a second time).
    op.drop_constraint(op.f("ck_api_keys_ck_api_keys_within_spend_limit"), "api_keys")
    op.drop_constraint(op.f("ck_api_keys_ck_api_keys_held_not_negative"), "api_keys")
    for table, column in (("hosts", "last_check_error"), ("hosts", "last_checked_at"),
                          ("hosts", "consecutive_successes"), ("hosts", "consecutive_failures"),
                          ("users", "tokens_per_minute"), ("users", "requests_per_minute"),
                          ("api_keys", "tokens_per_minute"), ("api_keys", "requests_per_minute"),
                          ("api_keys", "held"), ("api_keys", "spent")):
        op.drop_column(table, column)
    op.drop_table("usage_records")
    op.drop_table("holds")
    op.drop_table("ledger_entries")
    op.drop_table("ledger_transfers")
    op.drop_table("ledger_accounts")


LEDGER_SQL = r"""
CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed (post a reversing transfer instead)', TG_TABLE_NAME, TG_OP;
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_transfers_append_only BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

-- Each entry moves its account's balance; the account's CHECK refuses an overdraft.
CREATE FUNCTION ledger_apply_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger_accounts SET balance = balance + NEW.amount WHERE id = NEW.account_id;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_entries_apply AFTER INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_entry();

-- At commit, every transfer touched sums to zero.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
BEGIN
    SELECT sum(amount) INTO total FROM ledger_entries WHERE transfer_id = NEW.transfer_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transfer % is unbalanced by %', NEW.transfer_id, total;
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- The ledger account of a person (kind client or host) or of the platform, made on first use.
CREATE FUNCTION gs_account(p_kind text, p_user integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    account bigint;
BEGIN
    SELECT id INTO account FROM ledger_accounts WHERE kind = p_kind AND user_id IS NOT DISTINCT FROM p_user;
    IF account IS NULL THEN
        -- Grants is where credits the platform gives away come from: its balance goes negative by design.
        INSERT INTO ledger_accounts (kind, user_id, allow_negative) VALUES (p_kind, p_user, p_kind = 'grants')
            ON CONFLICT DO NOTHING RETURNING id INTO account;
        IF account IS NULL THEN
            SELECT id INTO account FROM ledger_accounts WHERE kind = p_kind AND user_id IS NOT DISTINCT FROM p_user;
        END IF;
    END IF;
    RETURN account;
END $$;

-- Admission: hold the worst-case cost of a request on the client's balance (and its key's spend limit).
-- With no max_tokens, generation is capped at what the balance covers, at most p_cap tokens.
-- Returns the tokens granted and the amount held, or a refusal: 'balance' or 'spend_limit'.
CREATE FUNCTION gs_hold(p_request text, p_user integer, p_key integer, p_prompt_cost bigint,
                        p_output_price bigint, p_max_tokens integer, p_cap integer, p_ttl_seconds integer,
                        OUT granted integer, OUT amount bigint, OUT refusal text)
LANGUAGE plpgsql AS $$
DECLARE
    account bigint;
    available bigint;
    key_room bigint;
    room bigint;
BEGIN
    account := gs_account('client', p_user);
    -- NO KEY UPDATE: we change no key, so foreign-key checks elsewhere (KEY SHARE) never deadlock with us.
    SELECT balance + credit_limit - held INTO available FROM ledger_accounts WHERE id = account FOR NO KEY UPDATE;
    SELECT spend_limit - spent - held INTO key_room FROM api_keys WHERE id = p_key FOR NO KEY UPDATE;
    room := LEAST(available, COALESCE(key_room, available));
    granted := COALESCE(p_max_tokens, p_cap);
    IF p_max_tokens IS NULL AND p_output_price > 0 THEN
        granted := LEAST(p_cap, GREATEST(0, (room - p_prompt_cost) * 1000000 / p_output_price));
    END IF;
    amount := p_prompt_cost + (granted::bigint * p_output_price + 999999) / 1000000;
    IF granted < 1 OR amount > room THEN
        refusal := CASE WHEN key_room IS NOT NULL AND key_room < available THEN 'spend_limit' ELSE 'balance' END;
        granted := 0;
        RETURN;
    END IF;
    IF amount = 0 THEN
        RETURN;  -- a free model: nothing to hold
    END IF;
    UPDATE ledger_accounts SET held = held + amount WHERE id = account;
    UPDATE api_keys SET held = held + amount WHERE id = p_key;
    INSERT INTO holds (request_id, account_id, api_key_id, amount, expires_at)
        VALUES (p_request, account, p_key, amount, now() + make_interval(secs => p_ttl_seconds));
END $$;

-- The end of a request: record its usage, post its cost (client -> host owner + platform fee) and
-- release its hold, all in one transaction. Idempotent by request id: a second call changes nothing
-- and returns the cost charged the first time. Never charges more than was held.
CREATE FUNCTION gs_finish(p_request text, p_endpoint text, p_status text, p_stream boolean, p_http_status smallint,
                          p_prompt_tokens integer, p_completion_tokens integer, p_host_prompt_tokens integer,
                          p_host_completion_tokens integer, p_cost bigint, p_fee_bps integer, p_latency_ms integer,
                          p_ttft_ms integer, p_host integer,
                          p_user integer, p_key integer, p_model integer, p_input_price bigint,
                          p_output_price bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    hold holds%ROWTYPE;
    charged bigint;
    fee bigint;
    host_owner integer;
    already bigint;
BEGIN
    -- The hold's row lock serialises two finishes of the same request; the second finds the usage record.
    SELECT * INTO hold FROM holds WHERE request_id = p_request FOR UPDATE;
    charged := CASE WHEN FOUND AND hold.status = 'held' THEN LEAST(GREATEST(p_cost, 0), hold.amount) ELSE 0 END;
    SELECT cost INTO already FROM usage_records WHERE request_id = p_request;
    IF FOUND THEN
        RETURN already;
    END IF;
    -- Release first, in the order gs_hold locks (account, then key): the overdraft CHECK counts what is
    -- held, and the charge comes out of the hold.
    IF hold.status = 'held' THEN
        UPDATE ledger_accounts SET held = held - hold.amount WHERE id = hold.account_id;
        UPDATE api_keys SET held = held - hold.amount, spent = spent + charged WHERE id = hold.api_key_id;
        UPDATE holds SET status = 'settled', closed_at = now() WHERE request_id = p_request;
    END IF;
    INSERT INTO usage_records (request_id, user_id, api_key_id, model_id, host_id, endpoint, stream, status,
                               http_status, prompt_tokens, completion_tokens, host_prompt_tokens,
                               host_completion_tokens, input_price, output_price, cost, held, latency_ms, ttft_ms)
        VALUES (p_request, p_user, p_key, p_model, p_host, p_endpoint, p_stream, p_status, p_http_status,
                p_prompt_tokens, p_completion_tokens, p_host_prompt_tokens, p_host_completion_tokens,
                p_input_price, p_output_price, charged, COALESCE(hold.amount, 0), p_latency_ms, p_ttft_ms)
        ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN  -- a request that held nothing, finished twice at once
        RETURN 0;
    END IF;
    IF charged > 0 THEN
        SELECT owner_id INTO host_owner FROM hosts WHERE id = p_host;
        fee := CASE WHEN host_owner IS NULL THEN charged ELSE charged * p_fee_bps / 10000 END;
        INSERT INTO ledger_transfers (id, kind, request_id) VALUES ('usage:' || p_request, 'usage', p_request);
        INSERT INTO ledger_entries (transfer_id, account_id, amount)
            VALUES ('usage:' || p_request, hold.account_id, -charged);
        IF charged - fee > 0 THEN
            INSERT INTO ledger_entries (transfer_id, account_id, amount)
                VALUES ('usage:' || p_request, gs_account('host', host_owner), charged - fee);
        END IF;
        IF fee > 0 THEN
            INSERT INTO ledger_entries (transfer_id, account_id, amount)
                VALUES ('usage:' || p_request, gs_account('platform_fees', NULL), fee);
        END IF;
    END IF;
    RETURN charged;
END $$;

-- The sweeper: release holds whose request never finished (the router died). Returns how many.
CREATE FUNCTION gs_void_expired(p_now timestamptz) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    hold holds%ROWTYPE;
    voided integer := 0;
BEGIN
    FOR hold IN SELECT * FROM holds WHERE status = 'held' AND expires_at < p_now
                ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED LOOP
        UPDATE ledger_accounts SET held = held - hold.amount WHERE id = hold.account_id;
        UPDATE api_keys SET held = held - hold.amount WHERE id = hold.api_key_id;
        UPDATE holds SET status = 'voided', closed_at = p_now WHERE request_id = hold.request_id;
        voided := voided + 1;
    END LOOP;
    RETURN voided;
END $$;
"""
