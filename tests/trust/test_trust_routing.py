"""Routing follows trust: verified hosts take client traffic, degraded hosts only when no verified one can, and
staged, quarantined and reference hosts none."""
from __future__ import annotations

from sqlalchemy import select

from app.dev.demo import TINY_TEST_MODEL
from app.extensions import db
from app.models import UsageRecord

from ..support.factories import give_credits, make_host, make_key, refresh_routes
from ..support.fakehost import FakeHost

BODY = {"model": TINY_TEST_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def served_by(client, secret) -> int | None:
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=BODY)
    assert response.status_code == 200, response.get_data(as_text=True)
    return db.session.scalar(select(UsageRecord.host_id).order_by(UsageRecord.created_at.desc()).limit(1))


def test_a_degraded_host_serves_only_when_no_verified_host_can(client, people):
    give_credits(people.alice, "5")
    _, secret = make_key(people.alice)
    with FakeHost() as good, FakeHost() as fallback, FakeHost("fail") as broken, FakeHost() as untrusted:
        for state in ("staged", "quarantined"):
            make_host(people.bob, [TINY_TEST_MODEL], api_base=untrusted.api_base, name=state, trust_state=state)
        make_host(people.bob, [TINY_TEST_MODEL], api_base=untrusted.api_base, name="reference", reference=True)
        degraded = make_host(people.bob, [TINY_TEST_MODEL], api_base=fallback.api_base, name="degraded",
                             trust_state="degraded")
        verified = make_host(people.bob, [TINY_TEST_MODEL], api_base=good.api_base, name="verified")
        assert {served_by(client, secret) for _ in range(6)} == {verified.id}
        # The verified host fails before its first byte: the request goes on to the fallback.
        verified.api_base = broken.api_base
        db.session.commit()
        refresh_routes()
        assert served_by(client, secret) == degraded.id
        assert untrusted.requests == []
