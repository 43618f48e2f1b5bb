-- The ledger's PostgreSQL functions as they are now, after every migration: the one place to read them.
-- tests/test_ledger_sql.py compares each with pg_get_functiondef on a freshly migrated database, so a migration
-- that changes one must change it here too. The migrations themselves stay as they were written.
--
-- ledger_is_append_only, ledger_apply_entry, ledger_check_balanced: triggers that keep the ledger honest
--   (entries and transfers immutable; each entry moves its account's balance; each transfer sums to zero).
-- gs_account: the ledger account of a person or of the platform, made on first use.
-- gs_hold (and gs_hold_balance): hold a request's worst-case cost at admission.
-- gs_finish: record a request's usage and settle it, once per request id.
-- gs_release: give back the hold of a request that will never be settled.
-- gs_void_expired: the sweeper; release holds past their deadline.

CREATE OR REPLACE FUNCTION public.ledger_is_append_only()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed (post a reversing transfer instead)', TG_TABLE_NAME, TG_OP;
END $function$;

CREATE OR REPLACE FUNCTION public.ledger_apply_entry()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    UPDATE ledger_accounts SET balance = balance + NEW.amount WHERE id = NEW.account_id;
    RETURN NEW;
END $function$;

CREATE OR REPLACE FUNCTION public.ledger_check_balanced()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    total numeric;
BEGIN
    SELECT sum(amount) INTO total FROM ledger_entries WHERE transfer_id = NEW.transfer_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transfer % is unbalanced by %', NEW.transfer_id, total;
    END IF;
    RETURN NULL;
END $function$;

CREATE OR REPLACE FUNCTION public.gs_account(p_kind text, p_user integer)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    account bigint;
BEGIN
    SELECT id INTO account FROM ledger_accounts WHERE kind = p_kind AND user_id IS NOT DISTINCT FROM p_user;
    IF account IS NULL THEN
        INSERT INTO ledger_accounts (kind, user_id, allow_negative) VALUES (p_kind, p_user, p_kind IN ('grants', 'stripe', 'receivable'))
            ON CONFLICT DO NOTHING RETURNING id INTO account;
        IF account IS NULL THEN
            SELECT id INTO account FROM ledger_accounts WHERE kind = p_kind AND user_id IS NOT DISTINCT FROM p_user;
        END IF;
    END IF;
    RETURN account;
END $function$;

CREATE OR REPLACE FUNCTION public.gs_hold_balance(p_request text, p_user integer, p_key integer, p_prompt_cost bigint, p_output_price bigint, p_max_tokens integer, p_cap integer, p_ttl_seconds integer, OUT granted integer, OUT amount bigint, OUT refusal text)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.gs_hold(p_request text, p_user integer, p_key integer, p_prompt_cost bigint, p_output_price bigint, p_max_tokens integer, p_cap integer, p_ttl_seconds integer, OUT granted integer, OUT amount bigint, OUT refusal text)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
BEGIN
    granted := 0;
    amount := 0;
    -- The key cache may be stale (Redis was away when the key was revoked): the database has the last word.
    IF NOT EXISTS (SELECT 1 FROM api_keys WHERE id = p_key AND user_id = p_user AND revoked_at IS NULL) THEN
        refusal := 'revoked';
        RETURN;
    END IF;
    -- A client who owes the platform (a refund or dispute outran its balance) is refused until it pays.
    IF EXISTS (SELECT 1 FROM ledger_accounts WHERE kind = 'receivable' AND user_id = p_user AND balance < 0) THEN
        refusal := 'receivable';
        RETURN;
    END IF;
    SELECT h.granted, h.amount, h.refusal INTO granted, amount, refusal
        FROM gs_hold_balance(p_request, p_user, p_key, p_prompt_cost, p_output_price, p_max_tokens, p_cap,
                             p_ttl_seconds) AS h;
END $function$;

CREATE OR REPLACE FUNCTION public.gs_finish(p_request text, p_endpoint text, p_status text, p_stream boolean, p_http_status smallint, p_prompt_tokens integer, p_completion_tokens integer, p_host_prompt_tokens integer, p_host_completion_tokens integer, p_cost bigint, p_fee_bps integer, p_latency_ms integer, p_ttft_ms integer, p_host integer, p_user integer, p_key integer, p_model integer, p_input_price bigint, p_output_price bigint)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.gs_release(p_request text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.gs_void_expired(p_now timestamp with time zone)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
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
END $function$;
