"""Supply-and-demand pricing: the rule (table-driven), the job that applies it, refusals counted by the request
path, and the admission quote a request keeps while the price moves under it."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from sqlalchemy import func, select

from app.catalog import pricing, usd
from app.extensions import db
from app.models import CatalogModel, PriceHistory, UsageRecord
from app.money.units import cost_of
from jobs import pricing as pricing_job

from ..support.factories import give_credits, make_host, make_key, refresh_routes
from ..support.fakehost import FakeHost

MODEL = "gpushare/tiny-chat"
STEP = 500  # 5 %

# name, current, floor, ceiling, demand, supply, refused, queued, expected move
SCENARIOS = [
    ("demand twice the supply: a full step up", 100_000, 10_000, 200_000, 2_400, 1_200, 0, 0, +5_000),
    ("demand far above the supply: still one step", 100_000, 10_000, 200_000, 10**9, 1_200, 0, 0, +5_000),
    ("demand half again the supply: half a step", 100_000, 10_000, 200_000, 1_800, 1_200, 0, 0, +2_500),
    ("demand just above the supply: the least move", 100_000, 10_000, 200_000, 1_201, 1_200, 0, 0, +4),
    ("requests refused for lack of a host", 100_000, 10_000, 200_000, 0, 1_200, 3, 0, +5_000),
    ("no host at all and demand", 100_000, 10_000, 200_000, 500, 0, 0, 0, +5_000),
    ("no host and no demand: hold", 100_000, 10_000, 200_000, 0, 0, 0, 0, 0),
    ("hosts queueing while busy: half a step", 100_000, 10_000, 200_000, 700, 1_200, 0, 2, +2_500),
    ("a queue but mostly idle: down", 100_000, 10_000, 200_000, 0, 1_200, 0, 2, -5_000),
    ("busy, inside the band: hold", 100_000, 10_000, 200_000, 900, 1_200, 0, 0, 0),
    ("exactly the supply: hold", 100_000, 10_000, 200_000, 1_200, 1_200, 0, 0, 0),
    ("exactly half the supply: hold", 100_000, 10_000, 200_000, 600, 1_200, 0, 0, 0),
    ("nothing asked: a full step down", 100_000, 10_000, 200_000, 0, 1_200, 0, 0, -5_000),
    ("a quarter of the supply: half a step down", 100_000, 10_000, 200_000, 300, 1_200, 0, 0, -2_500),
    ("at the ceiling under shortage: stays", 200_000, 10_000, 200_000, 5_000, 1_200, 0, 0, 0),
    ("near the ceiling: stops at it", 199_000, 10_000, 200_000, 5_000, 1_200, 0, 0, +1_000),
    ("at the floor while idle: stays", 10_000, 10_000, 200_000, 0, 1_200, 0, 0, 0),
    ("near the floor: stops at it", 10_200, 10_000, 200_000, 0, 1_200, 0, 0, -200),
    ("a free model under shortage creeps up", 0, 0, 1_000, 5_000, 1_200, 0, 0, +1),
    ("a tiny price still moves", 7, 0, 1_000, 0, 1_200, 0, 0, -1),
    ("floor equals ceiling: fixed", 50_000, 50_000, 50_000, 5_000, 1_200, 1, 0, 0),
]


@pytest.mark.parametrize("name, current, floor, ceiling, demand, supply, refused, queued, expected", SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_it_moves_the_price_toward_the_market(name, current, floor, ceiling, demand, supply, refused, queued,
                                              expected):
    new = pricing.next_price(current, floor, ceiling, demand, supply, STEP, refused=refused, queued=queued)
    assert new - current == expected
    assert floor <= new <= ceiling
    assert abs(new - current) <= pricing.max_step(current, STEP)


def test_it_never_leaves_the_band_nor_exceeds_the_step_anywhere():
    loads = [0, 1, 299, 600, 601, 1_199, 1_200, 1_201, 2_399, 2_400, 10**7]
    for current in (0, 1, 19, 10_000, 123_457, 200_000):
        for step_bps in (0, 1, 500, 5000):
            for demand in loads:
                for supply in (0, 1, 1_200):
                    for refused, queued in ((0, 0), (1, 0), (0, 3)):
                        new = pricing.next_price(current, 0, 200_000, demand, supply, step_bps, refused, queued)
                        push = pricing.pressure(demand, supply, refused, queued)
                        assert 0 <= new <= 200_000
                        assert abs(new - current) <= pricing.max_step(current, step_bps)
                        direction = (new > current) - (new < current)
                        assert direction in (0, (push.numerator > 0) - (push.numerator < 0))


def test_it_moves_nothing_with_a_zero_step():
    assert pricing.next_price(100_000, 0, 200_000, 10**6, 1, 0) == 100_000


# The job ---------------------------------------------------------------------------------------------------

def set_prices(input_price: str = "10", output_price: str = "100") -> CatalogModel:
    """Simple prices for the test model, in dollars per million tokens, in a wide band."""
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == MODEL))
    model.reference_input_price = model.reference_output_price = usd("1000")
    model.ceiling_input_price = model.ceiling_output_price = usd("999")
    model.floor_input_price = model.floor_output_price = usd("1")
    model.input_price, model.output_price = usd(input_price), usd(output_price)
    db.session.commit()
    return model


def record_usage(user, key, model: CatalogModel, tokens: int, at: datetime) -> None:
    db.session.add(UsageRecord(
        request_id=uuid.uuid4().hex, user_id=user.id, api_key_id=key.id, model_id=model.id, endpoint="chat",
        stream=False, status="ok", http_status=200, prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2,
        input_price=model.input_price, output_price=model.output_price, cost=0, held=0, latency_ms=1,
        created_at=at))
    db.session.commit()


def history(model: CatalogModel) -> list[PriceHistory]:
    db.session.expire_all()
    return db.session.scalars(select(PriceHistory).where(PriceHistory.model_id == model.id)
                              .order_by(PriceHistory.at)).all()


def test_it_raises_the_price_when_demand_exceeds_supply_and_records_why(people):
    host = make_host(people.bob, [MODEL])
    host.heartbeat = {"tokens_per_second": 10.0, "queue_depth": 0}  # below the default: 20 tokens/s counted
    model = set_prices()
    key, _ = make_key(people.alice)
    now = time.time()
    window_start = (pricing.minute_of(now) - 1) * 60
    record_usage(people.alice, key, model, 3_000, datetime.fromtimestamp(window_start + 10, timezone.utc))
    record_usage(people.alice, key, model, 9_999, datetime.fromtimestamp(window_start - 1, timezone.utc))  # earlier

    results = pricing_job.update_prices(now)

    assert results[model.id] == "shortage"
    [row] = history(model)
    assert (row.demand, row.supply, row.refused, row.reason) == (3_000, 1_200, 0, "shortage")
    assert row.at == datetime.fromtimestamp(window_start + 60, timezone.utc)
    assert (row.old_input_price, row.new_input_price) == (usd("10"), usd("10.50"))
    assert (row.old_output_price, row.new_output_price) == (usd("100"), usd("105"))
    db.session.refresh(model)
    assert (model.input_price, model.output_price) == (usd("10.50"), usd("105"))


def test_it_prices_a_window_once_however_often_it_runs(people):
    make_host(people.bob, [MODEL])
    model = set_prices()
    now = time.time()
    assert pricing_job.update_prices(now)[model.id] == "idle"
    assert pricing_job.update_prices(now)[model.id] is None
    assert len(history(model)) == 1
    db.session.refresh(model)
    assert model.output_price == usd("95")
    assert pricing_job.update_prices(now + 60)[model.id] == "idle"
    db.session.refresh(model)
    assert model.output_price == usd("90.25") and len(history(model)) == 2


def test_it_counts_a_busy_hosts_measured_rate_as_its_capacity(people):
    host = make_host(people.bob, [MODEL])
    host.heartbeat = {"tokens_per_second": 100.0, "queue_depth": 4}
    make_host(people.bob, [MODEL], name="sick", healthy=False)  # not supply
    model = set_prices()
    key, _ = make_key(people.alice)
    now = time.time()
    record_usage(people.alice, key, model, 4_000, datetime.fromtimestamp((pricing.minute_of(now) - 1) * 60 + 5,
                                                                          timezone.utc))
    assert pricing_job.update_prices(now)[model.id] == "queued"
    [row] = history(model)
    assert (row.demand, row.supply) == (4_000, 6_000) and row.new_output_price == usd("102.50")


def test_it_leaves_disabled_models_alone(people):
    make_host(people.bob, [MODEL])
    model = set_prices()
    model.enabled = False
    db.session.commit()
    assert model.id not in pricing_job.update_prices()
    assert history(model) == []


def test_it_lists_pricing_with_the_periodic_jobs(ctx):
    import jobs

    [job] = [job for job in jobs.periodic() if job.func is pricing_job.update_prices]
    assert job.every_seconds == 60


# Refusals ----------------------------------------------------------------------------------------------------

def test_it_counts_requests_refused_for_lack_of_a_host_and_raises_the_price(app, people, client):
    give_credits(people.alice, "5")
    _, secret = make_key(people.alice)
    make_host(people.bob, [MODEL], healthy=False)
    model = set_prices()
    for _ in range(3):
        response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                     "max_tokens": 50})
        assert response.status_code == 503
    now = time.time()
    requests, tokens = pricing.refusals(app.extensions["redis"], model.id, range(pricing.minute_of(now),
                                                                                 pricing.minute_of(now) + 1))
    assert requests == 3 and tokens > 150
    ttl = app.extensions["redis"].ttl(pricing.REFUSED_KEY.format(model_id=model.id, minute=pricing.minute_of(now)))
    assert 0 < ttl <= 2 * 60 + 120

    assert pricing_job.update_prices(now + 60)[model.id] == "refused"
    [row] = history(model)
    assert (row.refused, row.supply, row.demand) == (3, 0, tokens)
    assert row.new_output_price == usd("105")


def test_it_answers_503_even_when_redis_cannot_count(app, people, client, monkeypatch):
    give_credits(people.alice, "5")
    _, secret = make_key(people.alice)
    make_host(people.bob, [MODEL], healthy=False)

    def broken(*args, **kwargs):
        import redis
        raise redis.ConnectionError("gone")

    monkeypatch.setattr("redis.client.Pipeline.execute", broken)
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                           json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 503


# The admission quote -------------------------------------------------------------------------------------------

def usage_rows() -> list[UsageRecord]:
    db.session.expire_all()
    return db.session.scalars(select(UsageRecord).order_by(UsageRecord.created_at)).all()


def test_it_charges_a_stream_the_price_quoted_at_admission_when_the_price_moves_mid_stream(app, people,
                                                                                          live_server):
    give_credits(people.alice, "10")
    _, secret = make_key(people.alice)
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 40, "stream": True}
    with FakeHost(chunk_delay=0.05) as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        model = set_prices("10", "100")
        refresh_routes()
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{live_server}/v1/chat/completions", headers=headers, json=body) as response:
                lines = response.iter_lines()
                assert [line for _, line in zip(range(6), lines) if line.startswith("data:")]
                # Mid-stream, the market turns: the job raises the price and routers see it at once.
                pricing.record_refusal(app.extensions["redis"], model.id, 1_000, 300)
                assert pricing_job.update_prices(time.time() + 60)[model.id] == "refused"
                refresh_routes()
                assert usage_rows() == [] and not host.closed_early.is_set()  # still streaming
                rest = [line for line in lines if line.startswith("data:")]
            assert rest[-1] == "data: [DONE]"
            http.post(f"{live_server}/v1/chat/completions", headers=headers, json=body).raise_for_status()
    db.session.refresh(model)
    assert (model.input_price, model.output_price) == (usd("10.50"), usd("105"))
    first, second = usage_rows()
    assert (first.input_price, first.output_price) == (usd("10"), usd("100"))
    assert first.completion_tokens == 40
    assert first.cost == cost_of(first.prompt_tokens, 40, usd("10"), usd("100"))
    assert (second.input_price, second.output_price) == (usd("10.50"), usd("105"))
    assert second.cost == cost_of(second.prompt_tokens, 40, usd("10.50"), usd("105"))
    assert db.session.scalar(select(func.count()).select_from(PriceHistory)) >= 1


# What clients and visitors see ---------------------------------------------------------------------------------

def test_it_shows_the_price_its_reference_and_recent_moves_on_the_model_page(people, client):
    make_host(people.bob, [MODEL])
    set_prices()
    pricing_job.update_prices()  # idle: a step down
    page = client.get("/models").get_data(as_text=True)
    assert "$95.00" in page and "$1000.00" in page
    assert "Recent price moves" in page and "idle" in page


def test_it_lists_the_reference_price_in_v1_models(people, client):
    make_host(people.bob, [MODEL])
    set_prices("10", "100")
    _, secret = make_key(people.alice)
    [listed] = client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).get_json()["data"]
    assert listed["pricing"] == {"currency": "USD", "input_per_million_tokens": "10.00",
                                 "output_per_million_tokens": "100.00",
                                 "reference_input_per_million_tokens": "1000.00",
                                 "reference_output_per_million_tokens": "1000.00"}
