"""The request path against hosts that succeed, fail, stall, lie and send garbage (tests/support/fakehost.py)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from sqlalchemy import select, text

from app.extensions import db
from app.models import CatalogModel, UsageRecord
from app.money import ledger

from ..support.factories import give_credits, make_host, make_key, refresh_routes
from ..support.fakehost import WORD, FakeHost

MODEL = "gpushare/tiny-chat"


def price(output_dollars_per_million: str = "100", input_dollars_per_million: str = "0") -> CatalogModel:
    """Make the test model's price simple: by default $0.0001 an output token, input free."""
    from app.catalog import usd
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == MODEL))
    out, inp = usd(output_dollars_per_million), usd(input_dollars_per_million)
    model.reference_input_price = model.reference_output_price = usd("1000")
    model.ceiling_input_price = model.ceiling_output_price = usd("999")
    model.floor_input_price = model.floor_output_price = 0
    model.input_price, model.output_price = inp, out
    db.session.commit()
    return model


def check_ledger():
    db.session.rollback()
    assert ledger.invariants() == []


@pytest.fixture
def client_key(people):
    give_credits(people.alice, "10")
    _, secret = make_key(people.alice)
    return secret


def usage_rows():
    db.session.expire_all()
    return db.session.scalars(select(UsageRecord).order_by(UsageRecord.created_at)).all()


def balance(user):
    return ledger.account("client", user).balance


def test_it_serves_a_chat_completion_and_charges_the_routers_count(sdk, people, client_key):
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        answer = sdk(client_key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=5)
    assert answer.choices[0].message.content == WORD * 5 and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5 and answer.object == "chat.completion"
    assert host.requests[0]["max_tokens"] == 5 and "stream_options" not in host.requests[0]
    [row] = usage_rows()
    assert (row.status, row.completion_tokens, row.host_completion_tokens, row.cost) == ("ok", 5, 5, 500)
    assert balance(people.alice) == 10_000_000 - 500
    assert ledger.account("host", people.bob).balance == 400 and ledger.account("platform_fees").balance == 100
    check_ledger()


def test_it_streams_and_strips_usage_unless_asked(sdk, people, client_key):
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        chunks = list(sdk(client_key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
        with_usage = list(sdk(client_key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == WORD * 4
    assert all(c.usage is None for c in chunks)
    assert host.requests[0]["stream_options"] == {"include_usage": True}  # always asked of the host
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 4
    assert [r.cost for r in usage_rows()] == [400, 400]


def test_it_serves_legacy_completions_streaming_and_not(sdk, people, client_key):
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        whole = sdk(client_key).completions.create(model=MODEL, prompt="Once upon", max_tokens=3)
        parts = list(sdk(client_key).completions.create(model=MODEL, prompt="Once upon", max_tokens=3, stream=True))
    assert whole.choices[0].text == WORD * 3 and whole.usage.completion_tokens == 3
    assert "".join(p.choices[0].text for p in parts) == WORD * 3
    assert host.requests[0]["max_tokens"] == 3


def test_it_bills_by_its_own_count_when_a_host_lies(sdk, people, client_key):
    with FakeHost("liar") as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        answer = sdk(client_key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "short"}], max_tokens=3)
    assert answer.usage.completion_tokens == 3
    [row] = usage_rows()
    assert row.host_completion_tokens == 100_000 and row.completion_tokens == 3 and row.cost == 300
    check_ledger()


def test_it_retries_another_host_when_one_fails_before_the_first_byte(sdk, people, client_key):
    with FakeHost("fail") as bad, FakeHost() as good:
        make_host(people.bob, [MODEL], api_base=bad.api_base, name="bad")
        make_host(people.bob, [MODEL], api_base=good.api_base, name="good")
        price()
        for _ in range(4):  # round-robin starts on each host in turn
            answer = sdk(client_key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices) == WORD * 2
    assert len(bad.requests) == 2 and len(good.requests) == 4
    assert {r.status for r in usage_rows()} == {"ok"}


@pytest.mark.parametrize("mode, status, exception", [
    ("fail", 502, openai.InternalServerError),
    ("stall_first", 504, openai.InternalServerError),
    ("garbage", 502, openai.InternalServerError),
    ("abort", 502, openai.InternalServerError),
])
def test_it_costs_nothing_when_every_host_fails_before_the_first_byte(sdk, people, client_key, short_timeouts, mode,
                                                                       status, exception):
    with FakeHost(mode) as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        before = balance(people.alice)
        with pytest.raises(exception) as error:
            sdk(client_key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                    max_tokens=2)
    assert error.value.status_code == status
    assert set(error.value.body) == {"message", "type", "param", "code"}
    [row] = usage_rows()
    assert row.cost == 0 and balance(people.alice) == before
    assert ledger.account("client", people.alice).held == 0
    check_ledger()


@pytest.mark.parametrize("mode", ["die_midstream", "stall", "garbage", "huge_line", "abort"])
def test_it_ends_a_broken_stream_with_an_error_and_charges_what_was_delivered(sdk, people, client_key,
                                                                              short_timeouts, mode):
    with FakeHost(mode) as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        stream = sdk(client_key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10, stream=True)
        received = []
        with pytest.raises(openai.APIError) as error:
            for chunk in stream:
                received += [c.delta.content or "" for c in chunk.choices]
    assert "".join(received) == WORD * 3 and "failed mid-stream" in str(error.value)
    [row] = usage_rows()
    assert (row.status, row.completion_tokens, row.cost) == ("host_failed", 3, 300)
    assert ledger.account("client", people.alice).held == 0
    check_ledger()


def test_it_frees_the_host_and_charges_what_was_delivered_when_the_client_leaves(live_server, people, client_key):
    with FakeHost(chunk_delay=0.05) as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        with httpx.Client() as http:
            with http.stream("POST", f"{live_server}/v1/chat/completions",
                             headers={"Authorization": f"Bearer {client_key}"},
                             json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 200,
                                   "stream": True}) as response:
                lines = response.iter_lines()
                got = [line for _, line in zip(range(12), lines) if line.startswith("data:")]
        assert host.closed_early.wait(5), "the host kept generating for a client that had gone"
    deadline = time.monotonic() + 5
    while not usage_rows() and time.monotonic() < deadline:
        time.sleep(0.05)
    [row] = usage_rows()
    assert row.status == "client_closed" and 0 < row.completion_tokens < 200
    assert row.cost == row.completion_tokens * 100 and len(got) >= 5
    check_ledger()


def test_it_answers_503_with_retry_after_when_no_host_serves_the_model(people, client, client_key):
    make_host(people.bob, [MODEL], healthy=False)
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {client_key}"},
                           json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 503 and response.headers["Retry-After"] == "10"
    assert response.get_json()["error"]["code"] == "no_host_available"
    assert ledger.account("client", people.alice).held == 0 and usage_rows() == []


def test_it_sends_a_long_request_only_to_a_host_whose_engine_holds_it(people, client, client_key):
    with FakeHost() as short, FakeHost() as long:
        make_host(people.bob, [MODEL], api_base=short.api_base, name="short").heartbeat = {"max_model_len": 64}
        long_host = make_host(people.bob, [MODEL], api_base=long.api_base, name="long")
        db.session.commit()
        refresh_routes()
        ask = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        headers = {"Authorization": f"Bearer {client_key}"}
        for max_tokens in (200, 2) * 4:
            response = client.post("/v1/chat/completions", headers=headers, json={**ask, "max_tokens": max_tokens})
            assert response.status_code == 200
        assert short.requests and {body["max_tokens"] for body in short.requests} == {2}
        assert [body["max_tokens"] for body in long.requests].count(200) == 4
        long_host.enabled = False
        db.session.commit()
        refresh_routes()
        response = client.post("/v1/chat/completions", headers=headers, json={**ask, "max_tokens": 200})
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "The longest context a host serving this model takes now is 64 tokens" in error["message"]
    assert ledger.account("client", people.alice).held == 0 and len(usage_rows()) == 8
    check_ledger()


def test_it_passes_a_hosts_refusal_as_400_and_charges_nothing(sdk, people, client_key):
    with FakeHost("http400") as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        with pytest.raises(openai.BadRequestError) as error:
            sdk(client_key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                    max_tokens=2)
    assert "prompt too long" in error.value.message
    [row] = usage_rows()
    assert row.status == "rejected" and row.cost == 0


def test_it_serves_exactly_what_the_balance_covers_under_concurrency(app, people):
    """50 requests worth $0.10 each, at once, against $1.00: exactly 10 are served and the balance ends at 0."""
    give_credits(people.alice, "1")
    _, secret = make_key(people.alice)
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price("100")  # 1,000 tokens at $100 per million = $0.10

        def one(_):
            with app.test_client() as c:
                return c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                              json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                    "max_tokens": 1000}).status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(one, range(50)))
    assert statuses.count(200) == 10 and statuses.count(402) == 40
    account = ledger.account("client", people.alice)
    assert (account.balance, account.held) == (0, 0)
    check_ledger()


def test_it_caps_generation_at_what_the_balance_covers_when_no_max_tokens(sdk, people):
    give_credits(people.alice, "0.001")  # 1,000 micro-units = 10 tokens at $100 per million
    _, secret = make_key(people.alice)
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price("100")
        answer = sdk(secret).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert host.requests[0]["max_tokens"] == 10 and answer.usage.completion_tokens == 10
    assert balance(people.alice) == 0
    with pytest.raises(openai.APIStatusError) as error:
        sdk(secret).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert error.value.status_code == 402 and error.value.body["code"] == "insufficient_credits"
    assert error.value.response.headers["x-should-retry"] == "false"


def test_it_enforces_a_keys_spend_limit(sdk, people):
    give_credits(people.alice, "10")
    _, secret = make_key(people.alice, spend_limit=1_000)  # $0.001
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price("100")
        sdk(secret).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10)
        with pytest.raises(openai.APIStatusError) as error:
            sdk(secret).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=1)
    assert error.value.status_code == 402 and error.value.body["code"] == "spend_limit_reached"


def test_it_settles_a_request_once_however_often_it_is_finished(app, people, client_key):
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        with app.test_client() as c:
            c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {client_key}"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})
    [row] = usage_rows()
    before = balance(people.alice)
    again = db.session.execute(text(
        "SELECT gs_finish(:r, 'chat', 'ok', false, 200::smallint, 1, 5000, null, null, 999999, 2000, 1, 1, "
        ":h, :u, :k, :m, 0, 100000000)"),
        {"r": row.request_id, "h": row.host_id, "u": row.user_id, "k": row.api_key_id, "m": row.model_id}).scalar()
    db.session.commit()
    assert again == row.cost == 500 and balance(people.alice) == before
    check_ledger()


def test_it_voids_holds_whose_request_never_finished(people, client_key):
    key_id = db.session.execute(text("SELECT id FROM api_keys")).scalar()
    db.session.execute(text("SELECT * FROM gs_hold('lost', :u, :k, 0, 100000000, 50, 100, 1)"),
                       {"u": people.alice.id, "k": key_id})
    db.session.commit()
    assert ledger.account("client", people.alice).held == 5_000
    time.sleep(1.1)
    assert ledger.void_expired_holds() == 1
    assert ledger.account("client", people.alice).held == 0
    check_ledger()


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"\xff\xfe", 400, None),
    (b'{"model": "gpushare/tiny-chat"}', 400, "messages"),
    (b'{"model": "gpushare/tiny-chat", "messages": []}', 400, "messages"),
    (b'{"model": "gpushare/tiny-chat", "messages": [{"role": "x", "content": "a"}]}', 400, "messages[0].role"),
    (b'{"model": "gpushare/tiny-chat", "messages": [{"role": "user", "content": "a"}], "n": 99}', 400, "n"),
    (b'{"model": "gpushare/tiny-chat", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0}', 400,
     "max_tokens"),
    (b'{"model": "gpushare/tiny-chat", "messages": [{"role": "user", "content": "a"}], "max_tokens": 999999}', 400,
     "messages"),
    (b'{"model": "gpushare/tiny-chat", "messages": [{"role": "user", "content": "a"}], "stop": ["a","b","c","d","e"]}',
     400, "stop"),
    (b'{"model": "gpushare/tiny-chat", "messages": [{"role": "user", "content": "a"}], "upstream_url": "http://x"}',
     400, "upstream_url"),
    (b'{"model": "gpushare/tiny-chat", "messages": [{"role": "user", "content": "a"}], "host_id": 1}', 400, "host_id"),
    (b'{"model": "no/such", "messages": [{"role": "user", "content": "a"}]}', 404, "model"),
])
def test_it_refuses_bad_requests_in_openai_shape_and_charges_nothing(client, people, client_key, body, status, param):
    make_host(people.bob, [MODEL])
    response = client.post("/v1/chat/completions", data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {client_key}"})
    error = response.get_json()["error"]
    assert response.status_code == status and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}
    assert client_key not in response.get_data(as_text=True) and "Traceback" not in response.get_data(as_text=True)
    assert usage_rows() == [] and ledger.account("client", people.alice).held == 0


def test_it_refuses_a_body_over_the_limit_with_413(app, client, people, client_key):
    response = client.post("/v1/chat/completions", data=b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1),
                           content_type="application/json", headers={"Authorization": f"Bearer {client_key}"})
    assert response.status_code == 413 and "error" in response.get_json()


def test_it_refuses_a_model_outside_the_keys_allowlist_with_403(sdk, people):
    give_credits(people.alice, "1")
    make_host(people.bob, [MODEL])
    _, secret = make_key(people.alice, allowed_models=["Qwen/Qwen2.5-7B-Instruct"])
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk(secret).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert error.value.body["code"] == "model_not_allowed"


def test_it_limits_requests_per_minute_with_retry_after(client, people):
    give_credits(people.alice, "1")
    key, secret = make_key(people.alice)
    key.requests_per_minute = 2
    db.session.commit()
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        price()
        answers = [client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
                   for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    assert answers[1].headers["x-ratelimit-remaining-requests"] == "0"
    assert int(answers[2].headers["Retry-After"]) >= 1
    assert answers[2].get_json()["error"]["code"] == "rate_limit_exceeded"

