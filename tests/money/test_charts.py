"""Charts: the client's spend per day on /billing, the owner's earnings, demand and price on /host.

What a reader sees: a chart drawn in Chromium from the vendored uPlot (nothing from another site, no console
error), words beside it, and words instead of an empty chart. Below that, the day buckets (UTC, zero-filled).
"""
from __future__ import annotations

import calendar
import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select, text

from app import hosts
from app.catalog import pricing
from app.extensions import db
from app.models import CatalogModel, HostModel, PriceHistory, utcnow
from app.money import ledger, usage
from app.money.units import format_usd

from ..support.factories import PASSWORD, give_credits, make_host, make_key, make_user

MODEL = "gpushare/tiny-chat"
OTHER = "meta-llama/Llama-3.1-8B-Instruct"
NOW = datetime(2025, 3, 10, 0, 30, tzinfo=UTC)


def at(day: str, clock: str = "12:00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}+00:00")


def settle(user, host, cost: int, when: datetime | None = None) -> str:
    """One request held and settled as the router does (gs_hold, gs_finish), its usage record dated ``when``."""
    key_id = db.session.scalar(text("SELECT id FROM api_keys WHERE user_id = :u ORDER BY id LIMIT 1"), {"u": user.id})
    model_id = db.session.scalar(select(CatalogModel.id).where(CatalogModel.hf_id == MODEL))
    request = uuid.uuid4().hex
    # One micro-USD per output token: holding ``cost`` tokens holds ``cost``.
    db.session.execute(text("SELECT * FROM gs_hold(:r, :u, :k, 0, 1000000, :n, :n, 60)"),
                       {"r": request, "u": user.id, "k": key_id, "n": cost})
    charged = db.session.execute(text(
        "SELECT gs_finish(:r, 'chat', 'ok', false, 200::smallint, 1, :n, null, null, :n, 2000, 1, 1, "
        ":h, :u, :k, :m, 0, 1000000)"),
        {"r": request, "n": cost, "h": host.id, "u": user.id, "k": key_id, "m": model_id}).scalar_one()
    assert charged == cost
    if when is not None:
        db.session.execute(text("UPDATE usage_records SET created_at = :at WHERE request_id = :r"),
                           {"at": when, "r": request})
    db.session.commit()
    return request


def credit(owner, amount: int, when: datetime, kind: str = "usage") -> None:
    """A credit to the owner's host account posted at ``when`` (ledger entries are immutable, so dated at insert)."""
    transfer = f"test-{kind}:{uuid.uuid4()}"
    db.session.execute(text("INSERT INTO ledger_transfers (id, kind, created_at) VALUES (:t, :kind, :at)"),
                       {"t": transfer, "kind": kind, "at": when})
    db.session.execute(text("INSERT INTO ledger_entries (transfer_id, account_id, amount, created_at) "
                            "VALUES (:t, :grants, :minus, :at), (:t, :host, :amount, :at)"),
                       {"t": transfer, "grants": ledger.account_id("grants"), "host": ledger.account_id("host", owner),
                        "amount": amount, "minus": -amount, "at": when})
    db.session.commit()


def price_point(model_id: int, when: datetime, *, demand: int, supply: int, output: int, input_: int = 100_000):
    db.session.add(PriceHistory(model_id=model_id, at=when, old_input_price=input_, new_input_price=input_,
                                old_output_price=output, new_output_price=output, demand=demand, supply=supply,
                                reason="steady"))
    db.session.commit()


def model_id(hf_id: str) -> int:
    return db.session.scalar(select(CatalogModel.id).where(CatalogModel.hf_id == hf_id))


def amounts(series) -> dict[date, int]:
    return {point.day: point.amount for point in series if point.amount}


def client_with_spend(people) -> tuple[date, date]:
    """alice spent $1.25 three days ago and $0.30 yesterday (UTC), on bob's host."""
    give_credits(people.alice, "5")
    make_key(people.alice)
    host = make_host(people.bob, [MODEL])
    today = utcnow().date()
    earlier, later = today - timedelta(days=3), today - timedelta(days=1)
    settle(people.alice, host, 1_250_000, at(earlier.isoformat()))
    settle(people.alice, host, 300_000, at(later.isoformat()))
    return earlier, later


def log_in(page, user, path: str) -> None:
    page.goto(f"/login?next={path}")
    page.fill("input[name=email]", user.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url(f"**{path}")


def watch(page, origin: str) -> tuple[list[str], list[str]]:
    """Console errors and page errors; requests to anywhere but ``origin``."""
    errors, foreign = [], []

    def console(message):
        if message.type == "error":
            errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: foreign.append(request.url)
            if not request.url.startswith(origin + "/") else None)
    return errors, foreign


# Pages ---------------------------------------------------------------------------------------------------------

def test_it_shows_a_clients_spend_per_day_with_a_table_of_the_days(client, auth, people):
    earlier, later = client_with_spend(people)
    auth.login(people.alice)
    page = client.get("/billing").get_data(as_text=True)
    figure = page.split('<figure class="chart-figure" id="spend-chart">')[1].split("</figure>")[0]
    assert 'class="chart" role="img" aria-labelledby="spend-chart-summary"' in figure
    assert "$1.55 spent over the last 30 days (UTC); the most in one day was $1.25, on " + str(earlier) in figure
    rows = figure.split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr>") == 2
    assert f"<tr><td>{later}</td><td>$0.30</td></tr>" in rows and f"<tr><td>{earlier}</td><td>$1.25</td></tr>" in rows
    assert "vendor/uplot-1.6.32.min.js" in page and "vendor/uplot-1.6.32.min.css" in page and "charts.js" in page


def test_it_says_in_words_when_a_client_has_spent_nothing(client, auth, people):
    auth.login(people.alice)
    page = client.get("/billing").get_data(as_text=True)
    assert "Nothing spent in the last 30 days" in page
    assert 'class="chart"' not in page


def test_it_loads_the_chart_library_only_on_pages_with_charts(client, auth, people):
    auth.login(people.alice)
    assert "uplot" not in client.get("/keys").get_data(as_text=True)


def test_it_shows_a_host_owner_demand_price_and_earnings(client, auth, people):
    host = make_host(people.bob, [MODEL])
    now = utcnow()
    tiny = model_id(MODEL)
    price_point(tiny, now - timedelta(hours=25), demand=9_999, supply=1, output=9_000_000)  # too old to show
    price_point(tiny, now - timedelta(hours=2), demand=1_200, supply=6_000, output=400_000)
    price_point(tiny, now - timedelta(hours=1), demand=7_500, supply=6_000, output=440_000, input_=110_000)
    give_credits(people.alice, "5")
    make_key(people.alice)
    settle(people.alice, host, 1_000_000)
    earned = ledger.account("host", people.bob).balance
    assert earned == 800_000  # the platform kept its 20%

    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    section = page.split('<section class="card" id="earnings-charts">')[1].split("</section>")[0]
    price = section.split(f'id="price-chart-{tiny}"')[1].split("</figure>")[0]
    assert "Output price now $0.44 per million tokens ($0.40 to $0.44 over 24 hours); input price now $0.11." in price
    demand = section.split(f'id="demand-chart-{tiny}"')[1].split("</figure>")[0]
    assert "Demand now 7,500 tokens/min (peak 7,500 over 24 hours); supply now 6,000 tokens/min." in demand
    assert demand.count("<tr><td>") == 2 and "9,999" not in section
    earnings = section.split('id="earnings-chart"')[1].split("</figure>")[0]
    assert f"<tr><td>{utcnow().date()}</td><td>{format_usd(earned)}</td></tr>" in earnings
    assert "vendor/uplot-1.6.32.min.js" in page


def test_it_says_in_words_when_a_host_owner_has_no_data(client, auth, people):
    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    assert "Nothing earned in the last 30 days" in page
    assert "Your hosts offer no models yet" in page and 'class="chart"' not in page
    make_host(people.bob, [MODEL])
    page = client.get("/host").get_data(as_text=True)
    assert "No pricing decisions for gpushare tiny chat (test) in the last 24 hours." in page
    assert 'class="chart"' not in page


# In Chromium ---------------------------------------------------------------------------------------------------

def test_the_spend_chart_draws_in_a_browser_from_this_site_only(people, page, live_server):
    from playwright.sync_api import expect

    client_with_spend(people)
    errors, foreign = watch(page, live_server)
    log_in(page, people.alice, "/billing")
    chart = page.locator("#spend-chart .chart")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(chart.locator(".u-legend")).to_contain_text("Spend")
    assert chart.bounding_box()["height"] > 100
    expect(page.locator("#spend-chart-summary")).to_contain_text("$1.55 spent over the last 30 days")

    # Content htmx swaps in is drawn too.
    page.evaluate("window.__old = document.querySelector('#spend-chart .chart')")
    page.evaluate("htmx.ajax('GET', '/billing', {target: '#spend-chart', select: '#spend-chart', swap: 'outerHTML'})")
    expect(page.locator("#spend-chart .chart[data-drawn]")).to_have_count(1)
    assert page.evaluate("document.querySelector('#spend-chart .chart') !== window.__old")
    expect(page.locator("#spend-chart .chart canvas")).to_have_count(1)
    assert errors == [] and foreign == []


def test_the_price_and_demand_charts_draw_for_a_host_owner(people, page, live_server):
    from playwright.sync_api import expect

    make_host(people.bob, [MODEL])
    tiny = model_id(MODEL)
    now = utcnow()
    for hours, demand, output in ((3, 800, 400_000), (2, 2_000, 420_000), (1, 7_000, 460_000)):
        price_point(tiny, now - timedelta(hours=hours), demand=demand, supply=6_000, output=output)
    errors, foreign = watch(page, live_server)
    log_in(page, people.bob, "/host")
    for figure in (f"#price-chart-{tiny}", f"#demand-chart-{tiny}"):
        expect(page.locator(f"{figure} .chart canvas")).to_have_count(1)
    expect(page.locator(f"#price-chart-{tiny} .u-legend")).to_contain_text("Output price")
    expect(page.locator("#earnings-chart-empty")).to_contain_text("Nothing earned")
    assert errors == [] and foreign == []


# Queries -------------------------------------------------------------------------------------------------------

def test_it_buckets_spend_by_utc_day_and_fills_the_empty_days(ctx, people):
    give_credits(people.alice, "5")
    give_credits(people.mallory, "5")
    make_key(people.alice)
    make_key(people.mallory)
    host = make_host(people.bob, [MODEL])
    for cost, when in ((7, at("2025-02-08", "23:59:59")),  # the day before the first of the 30
                       (11, at("2025-02-09", "00:00:00")),
                       (100, at("2025-03-08", "23:59:59")),
                       (200, at("2025-03-09", "00:00:00")),
                       (50, at("2025-03-09", "12:00:00")),  # already 10 March in Auckland
                       (3, at("2025-03-10", "00:10:00"))):
        settle(people.alice, host, cost, when)
    settle(people.mallory, host, 999, at("2025-03-09"))

    db.session.execute(text("SET LOCAL TIME ZONE 'Pacific/Auckland'"))  # the buckets must not follow it
    series = usage.spend_per_day(people.alice, now=NOW)
    assert [point.day for point in series] == [date(2025, 2, 9) + timedelta(days=n) for n in range(30)]
    assert amounts(series) == {date(2025, 2, 9): 11, date(2025, 3, 8): 100, date(2025, 3, 9): 250,
                               date(2025, 3, 10): 3}
    assert series[0].ts == calendar.timegm((2025, 2, 9, 0, 0, 0))
    assert [point.amount for point in usage.spend_per_day(people.alice, days=1, now=NOW)] == [3]
    nothing = usage.spend_per_day(people.carol, now=NOW)
    assert len(nothing) == 30 and amounts(nothing) == {}


def test_it_counts_an_owners_earnings_from_usage_credits_only(ctx, people):
    dave = make_user("dave@example.com", client=False, host=True)
    credit(people.bob, 400, at("2025-03-08", "23:59:59"))
    credit(people.bob, 600, at("2025-03-09", "00:00:01"))
    credit(people.bob, 5_000, at("2025-03-09"), kind="payout")  # a payout given back is not earned again
    credit(dave, 9_000, at("2025-03-09"))
    series = hosts.earnings_per_day(people.bob, days=3, now=NOW)
    assert [(point.day, point.amount) for point in series] == [
        (date(2025, 3, 8), 400), (date(2025, 3, 9), 600), (date(2025, 3, 10), 0)]


def test_it_counts_what_settlement_credits_the_host_after_the_fee(ctx, people):
    give_credits(people.alice, "5")
    make_key(people.alice)
    host = make_host(people.bob, [MODEL])
    settle(people.alice, host, 1_000)
    series = hosts.earnings_per_day(people.bob)
    assert len(series) == 30 and series[-1].day == utcnow().date()
    assert amounts(series) == {utcnow().date(): 800} and usage.spend_per_day(people.alice)[-1].amount == 1_000


def test_it_reads_each_served_models_market_over_the_last_day(ctx, people):
    make_host(people.bob, [MODEL, OTHER])
    tiny, other = model_id(MODEL), model_id(OTHER)
    for hours in (25, 23, 1):
        price_point(tiny, NOW - timedelta(hours=hours), demand=hours, supply=10, output=hours * 1_000)
    price_point(other, NOW - timedelta(hours=2), demand=5, supply=10, output=1)
    history = pricing.market_history([tiny], now=NOW)
    assert list(history) == [tiny]
    assert [(p.at, p.demand, p.output_price) for p in history[tiny]] == [
        (NOW - timedelta(hours=23), 23, 23_000), (NOW - timedelta(hours=1), 1, 1_000)]
    assert history[tiny][0].ts == int((NOW - timedelta(hours=23)).timestamp())
    assert pricing.market_history([]) == {}


def test_it_charts_only_the_models_the_owners_hosts_offer(ctx, people):
    host = make_host(people.bob, [MODEL, OTHER])
    make_host(make_user("dave@example.com", client=False, host=True), ["meta-llama/Llama-3.1-70B-Instruct"])
    db.session.get(HostModel, (host.id, model_id(OTHER))).enabled = False
    db.session.commit()
    assert [model.hf_id for model, _ in hosts.markets(people.bob)] == [MODEL]
    assert hosts.markets(people.alice) == []
