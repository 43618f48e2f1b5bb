from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, LedgerTransfer, UsageRecord
from app.money import ledger
from app.money.units import format_usd

from ..support.factories import give_credits, make_host, make_key
from ..support.fakehost import FakeHost

MODEL = "gpushare/tiny-chat"


def test_it_shows_requests_tokens_and_cost_per_key_and_model(client, auth, people):
    give_credits(people.alice, "2")
    _, secret = make_key(people.alice, "batch job")
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        for tokens in (3, 4):
            assert client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": tokens}).status_code == 200
    auth.login(people.alice)
    page = client.get("/usage").get_data(as_text=True)
    assert "batch job" in page and "gpushare tiny chat (test)" in page
    assert page.count("<td>ok</td>") == 2 and "/ 3</td>" in page and "/ 4</td>" in page
    account = ledger.account("client", people.alice)
    spent = db.session.scalar(select(db.func.sum(UsageRecord.cost)))
    assert spent > 0 and account.balance == 2_000_000 - spent
    assert f"<dd>{format_usd(account.balance)}</dd>" in page and f"<dd>{format_usd(spent)}</dd>" in page


def test_it_pages_through_requests_with_htmx(client, auth, people):
    give_credits(people.alice, "2")
    _, secret = make_key(people.alice)
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        for _ in range(27):
            client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    auth.login(people.alice)
    first = client.get("/usage").get_data(as_text=True)
    assert first.count('<td>ok</td>') == 25 and "Older" in first
    second = client.get("/usage?page=2", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert second.startswith('<div id="requests">') and second.count("<td>ok</td>") == 2 and "Newer" in second


def test_it_shows_another_clients_usage_to_nobody(client, auth, people):
    give_credits(people.alice, "1")
    _, secret = make_key(people.alice, "alices key")
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    auth.login(people.mallory)
    page = client.get("/usage").get_data(as_text=True)
    assert "alices key" not in page and "No requests yet" in page


def test_it_lets_an_admin_grant_credits_once_per_form(client, auth, people):
    auth.login(people.carol)
    form = client.get("/admin/credits").get_data(as_text=True)
    key = form.split('name="idempotency_key" type="hidden" value="')[1].split('"')[0]
    data = {"email": "alice@example.com", "amount": "12.50", "memo": "support credit", "idempotency_key": key,
            "csrf_token": auth.token("/admin/credits")}
    assert client.post("/admin/credits", data=data).status_code == 302
    assert client.post("/admin/credits", data=data).status_code == 302  # a double submit
    assert ledger.account("client", people.alice).balance == 12_500_000
    assert db.session.scalar(select(db.func.count()).select_from(LedgerTransfer)) == 1
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "credits.grant"))
    assert event.actor_id == people.carol.id and event.details["amount"] == 12_500_000
    assert ledger.invariants() == []


def test_it_refuses_a_grant_to_nobody_or_of_nothing(client, auth, people):
    auth.login(people.carol)
    for email, amount, message in (("nobody@example.com", "5", "No client account"),
                                   ("alice@example.com", "0", "more than zero")):
        response = client.post("/admin/credits", data={"email": email, "amount": amount, "memo": "x",
                                                       "idempotency_key": "k" * 32,
                                                       "csrf_token": auth.token("/admin/credits")})
        assert response.status_code == 400 and message in response.get_data(as_text=True)
    assert ledger.account("client", people.alice).balance == 0
