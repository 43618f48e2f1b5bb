"""The request journal: what a dead router process or an absent database leaves is settled exactly once, from
what the client was really sent."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import CatalogModel, UsageRecord
from app.money import ledger
from app.money.units import cost_of
from app.proxy import gateway as gateway_module
from app.proxy.gateway import DatabaseUnavailable, gateway
from app.proxy.settlement import HOLD_SQL, settlement

from ..support.factories import give_credits, make_host, make_key
from ..support.fakehost import FakeHost

MODEL = "gpushare/tiny-chat"

# A router process as far as the journal can tell: it opens an entry, records what it sent, then waits to be
# killed.
WRITER = """
import sys, time
from app.proxy.journal import Journal
journal = Journal(sys.argv[1])
entry = journal.open(sys.argv[2], __import__("json").loads(sys.argv[3]))
entry.host(int(sys.argv[4]))
for text in sys.argv[5:]:
    entry.delivered(0, text)
print("written", flush=True)
time.sleep(300)
"""


@pytest.fixture
def world(app, people):
    give_credits(people.alice, "10")
    key, secret = make_key(people.alice)
    host = make_host(people.bob, [MODEL])
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == MODEL))
    with app.app_context():
        gw = gateway()
    return {"key": key, "secret": secret, "host": host, "model": model, "gw": gw, "alice": people.alice}


def hold(world, request_id: str, prompt_tokens: int = 10) -> tuple[int, int]:
    model = world["model"]
    granted, amount, refusal = world["gw"].sql(HOLD_SQL, {
        "request_id": request_id, "user_id": world["alice"].id, "key_id": world["key"].id,
        "prompt_cost": cost_of(prompt_tokens, 0, model.input_price, 0), "output_price": model.output_price,
        "max_tokens": 50, "cap": 1000, "ttl_seconds": 600})
    assert refusal is None
    return granted, amount


def header(world, request_id: str, prompt_tokens: int = 10, **extra) -> dict:
    model = world["model"]
    return {"endpoint": "chat", "stream": True, "prompt_tokens": prompt_tokens, "user_id": world["alice"].id,
            "key_id": world["key"].id, "model_id": model.id, "model_hf_id": MODEL, "input_price": model.input_price,
            "output_price": model.output_price, "fee_bps": 2000, "started_at": time.time(),
            "deadline": time.time() + 600, **extra}


def killed_writer(world, request_id: str, texts: list[str]) -> None:
    """A real process writes the entry and is killed with SIGKILL."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(world["gw"].journal.directory), request_id,
         json.dumps(header(world, request_id)), str(world["host"].id), *texts], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "written"
    process.kill()
    process.wait()
    process.stdout.close()


def drained(world) -> None:
    """Drain the journal now, as the router does every few seconds. The gateway's own drainer may be at it at the
    same moment (then this drain finds the lock taken): wait until nothing is pending."""
    world["gw"].drain()
    deadline = time.monotonic() + 15
    while list(world["gw"].journal.pending()):
        assert time.monotonic() < deadline, "the journal was not drained"
        time.sleep(0.05)


def open_holds() -> int:
    return db.session.scalar(select(db.func.count()).select_from(db.text("holds")).where(db.text("status = 'held'")))


def test_a_dead_process_stream_is_charged_for_what_the_client_was_sent(ctx, world):
    request_id = uuid.uuid4().hex
    _, amount = hold(world, request_id)
    killed_writer(world, request_id, ["The capital", " of France", " is Paris"])
    drained(world)
    record = db.session.get(UsageRecord, request_id)
    tokens = world["gw"].count_texts(MODEL, ["The capital of France is Paris"])
    assert record.status == "router_died" and record.completion_tokens == tokens and tokens > 0
    assert record.host_id == world["host"].id and record.held == amount
    assert record.cost == cost_of(10, tokens, world["model"].input_price, world["model"].output_price)
    assert open_holds() == 0 and ledger.invariants() == []
    assert ledger.balance(world["alice"]).balance == 10_000_000 - record.cost
    assert world["gw"].drain() == 0, "settled once"
    assert list(world["gw"].journal.pending()) == []


def test_a_dead_process_that_sent_nothing_releases_its_hold(ctx, world):
    request_id = uuid.uuid4().hex
    hold(world, request_id)
    killed_writer(world, request_id, [])
    drained(world)
    assert db.session.get(UsageRecord, request_id) is None
    assert open_holds() == 0 and ledger.invariants() == []
    assert ledger.balance(world["alice"]).balance == 10_000_000


def test_a_live_process_entry_waits_until_it_is_long_overdue(ctx, world):
    request_id = uuid.uuid4().hex
    hold(world, request_id)
    entry = world["gw"].journal.open(request_id, {"request_id": request_id, **header(world, request_id)})
    entry.delivered(0, "still streaming")
    assert world["gw"].drain() == 0 and open_holds() == 1  # its own process is alive and within its deadline
    entry.remove()
    # The same request, its deadline long gone: settled from what it sent, though its writer lives.
    hung = world["gw"].journal.open(request_id, {"request_id": request_id,
                                                 **header(world, request_id, deadline=time.time() - 120)})
    hung.delivered(0, "still streaming")
    hung.close()
    drained(world)
    assert db.session.get(UsageRecord, request_id).status == "router_died" and open_holds() == 0


def test_a_line_cut_short_by_a_dying_writer_is_left_out(ctx, world):
    request_id = uuid.uuid4().hex
    hold(world, request_id)
    killed_writer(world, request_id, ["whole"])
    path = world["gw"].journal.directory / f"{request_id}.req"
    with path.open("ab") as journal_file:
        journal_file.write(b'[0, "half a li')
    drained(world)
    assert db.session.get(UsageRecord, request_id).completion_tokens == world["gw"].count_texts(MODEL, ["whole"])


def test_a_settlement_spooled_while_the_database_was_away_is_made_once(ctx, world):
    request_id = uuid.uuid4().hex
    _, amount = hold(world, request_id)
    request = {"request_id": request_id, **header(world, request_id)}
    params = settlement(request, status="ok", http_status=200, completion_tokens=7, host_id=world["host"].id,
                        latency_ms=1200, ttft_ms=80, host_usage={"completion_tokens": 7, "prompt_tokens": 10})
    world["gw"].journal.open(request_id, request).spool(params)
    drained(world)
    assert world["gw"].drain() == 0
    record = db.session.get(UsageRecord, request_id)
    assert (record.status, record.completion_tokens, record.host_completion_tokens) == ("ok", 7, 7)
    assert record.cost == min(params["cost"], amount) and open_holds() == 0 and ledger.invariants() == []


def test_a_stream_that_ends_while_the_database_is_away_still_ends_cleanly_and_is_billed_later(
        app, client, ctx, world, monkeypatch):
    """The client gets its whole answer and [DONE]; the usage waits in the journal and is settled once the
    database answers again."""
    real_sql = gateway_module.Gateway.sql

    def database_away_at_the_end(self, statement, params):
        if "gs_finish" in statement:
            raise DatabaseUnavailable("connection refused")
        return real_sql(self, statement, params)

    with FakeHost() as host:
        world["host"].api_base = host.api_base
        db.session.commit()
        world["gw"].routing.invalidate()
        monkeypatch.setattr(gateway_module.Gateway, "sql", database_away_at_the_end)
        response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {world['secret']}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}})
        body = response.get_data(as_text=True)
    assert response.status_code == 200 and body.rstrip().endswith("data: [DONE]")
    usage = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")][-1]["usage"]
    request_id = response.headers["x-request-id"]
    assert db.session.get(UsageRecord, request_id) is None and open_holds() == 1  # not yet: the database is away
    monkeypatch.setattr(gateway_module.Gateway, "sql", real_sql)
    drained(world)
    record = db.session.get(UsageRecord, request_id)
    assert record.status == "ok" and record.completion_tokens == usage["completion_tokens"] == 5
    assert open_holds() == 0 and ledger.invariants() == []


def test_admission_answers_503_while_the_database_is_away_and_nothing_is_held(client, ctx, world, monkeypatch):
    def database_away(self, statement, params):
        raise DatabaseUnavailable("connection refused")

    monkeypatch.setattr(gateway_module.Gateway, "sql", database_away)
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {world['secret']}"},
                           json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    # The hold might have been made before the connection broke: the journal releases it.
    drained(world)
    assert open_holds() == 0
