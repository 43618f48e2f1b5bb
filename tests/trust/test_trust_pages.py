"""The Trust pages: what an admin reads and does about a host, and what a host's owner sees of its own checks."""
from __future__ import annotations

import json
import re

from sqlalchemy import select

from app.dev.demo import TINY_TEST_MODEL
from app.extensions import db
from app.models import AuditEvent, Calibration, Host, HostBenchmark, VerificationCheck

from ..support.factories import make_host

TOKENS = [{"host": -0.1, "best": -0.1, "rank": 1, "text": "Paris"},
          {"host": -3.2, "best": -0.4, "rank": 6, "text": " <script>alert(1)</script>"}]


def quarantined(people) -> Host:
    host = make_host(people.bob, [TINY_TEST_MODEL], name="rig-7", trust_state="quarantined")
    host.trust_reason = "2 of its last 3 checks failed"
    model_id = host.offers[0].model_id
    db.session.add_all([
        VerificationCheck(host_id=host.id, model_id=model_id, kind="canary", outcome="passed", test="greedy",
                          statistic=0.0, threshold=0.01, tokens=2, evidence={"temperature": 0, "tokens": TOKENS[:1]}),
        VerificationCheck(host_id=host.id, model_id=model_id, kind="canary", outcome="failed", test="greedy",
                          statistic=1.4, threshold=0.01, tokens=2, reason="1.4 nats per token behind",
                          evidence={"temperature": 0, "tokens": TOKENS}),
        HostBenchmark(host_id=host.id, model_id=model_id, gpu="NVIDIA H100 80GB HBM3", passed=False,
                      reason="31 tokens/s at concurrency 8, below the 392 that an H100 reaches at least",
                      results=[{"concurrency": 8, "tokens_per_second": 31, "expected_min": 392,
                                "expected_max": 1960}]),
        Calibration(model_id=model_id, thresholds={"greedy": {"samples": 12, "mean": 0.001, "sd": 0.001, "max": 0.004,
                                                              "threshold": 0.008}}),
    ])
    db.session.commit()
    return host


def test_an_admin_sees_each_hosts_state_and_the_evidence_of_its_checks(client, auth, people):
    host = quarantined(people)
    make_host(people.bob, [TINY_TEST_MODEL], name="rig-8", trust_state="verified")
    auth.login(people.carol)
    page = client.get("/admin/trust").get_data(as_text=True)
    assert "rig-7" in page and "quarantined" in page and "2 of its last 3 checks failed" in page
    assert "rig-8" in page and "0.008" in page  # the calibrated greedy threshold
    detail = client.get(f"/admin/trust/hosts/{host.id}")
    html = detail.get_data(as_text=True)
    assert detail.status_code == 200
    chart = json.loads(re.search(r"data-chart='([^']+)'", html).group(1).replace("&#34;", '"'))
    assert chart["xKind"] == "token" and [s["values"] for s in chart["series"]] == [[-0.1, -0.4], [-0.1, -3.2]]
    assert "of its 2 tokens, 1 were not the reference" in html
    assert "&lt;script&gt;" in html and "<script>alert" not in html  # a canary's text is shown, escaped
    assert "below the 392 that an H100 reaches" in html
    first = db.session.scalar(select(VerificationCheck.id).order_by(VerificationCheck.id))
    assert client.get(f"/admin/trust/hosts/{host.id}?check={first}").status_code == 200
    assert client.get(f"/admin/trust/hosts/{host.id}?check=999999").status_code == 404
    assert client.get(f"/admin/trust/hosts/{host.id}?check=1e9").status_code == 404


def test_an_admin_releases_a_host_and_every_action_is_audited(client, auth, people):
    host = quarantined(people)
    auth.login(people.carol)
    response = client.post(f"/admin/trust/hosts/{host.id}/release", data={"csrf_token": auth.token("/admin/trust")},
                           follow_redirects=True)
    assert "is released" in response.get_data(as_text=True)
    assert db.session.get(Host, host.id, populate_existing=True).trust_state == "verified"
    again = client.post(f"/admin/trust/hosts/{host.id}/release", data={"csrf_token": auth.token("/admin/trust")},
                        follow_redirects=True)
    assert "not quarantined" in again.get_data(as_text=True)
    client.post(f"/admin/trust/hosts/{host.id}/reference", data={"csrf_token": auth.token("/admin/trust"),
                                                                 "reference": "on"})
    client.post(f"/admin/trust/hosts/{host.id}/suspend", data={"csrf_token": auth.token("/admin/trust")})
    actions = db.session.scalars(select(AuditEvent.action).where(AuditEvent.actor_id == people.carol.id)
                                 .order_by(AuditEvent.id)).all()
    assert actions == ["host.trust.verified", "host.reference", "host.suspend"]


def test_an_admin_claws_back_from_the_page(client, auth, people):
    host = quarantined(people)
    auth.login(people.carol)
    response = client.post(f"/admin/trust/hosts/{host.id}/claw-back", data={"csrf_token": auth.token("/admin/trust")},
                           follow_redirects=True)
    assert "Refunded $0.00 to 0 clients for 0 requests" in response.get_data(as_text=True)
    assert db.session.scalar(select(AuditEvent.action).where(AuditEvent.action == "host.claw_back"))


def test_a_calibration_must_name_a_host_that_serves_the_model(client, auth, people):
    host = make_host(people.bob, [TINY_TEST_MODEL], name="rig-9")
    auth.login(people.carol)
    model_id = host.offers[0].model_id
    for bad in ("", "abc", "99999", "1" * 40):
        response = client.post(f"/admin/trust/models/{model_id}/calibrate",
                               data={"csrf_token": auth.token("/admin/trust"), "host_id": bad}, follow_redirects=True)
        assert "Choose an approved host that serves this model" in response.get_data(as_text=True)
    response = client.post(f"/admin/trust/models/{model_id}/calibrate",
                           data={"csrf_token": auth.token("/admin/trust"), "host_id": str(host.id)},
                           follow_redirects=True)
    assert "Calibrating" in response.get_data(as_text=True)


def test_only_admins_see_the_trust_pages(client, auth, people):
    host = quarantined(people)
    assert client.get("/admin/trust").status_code == 302  # to the login page
    auth.login(people.bob)
    assert client.get("/admin/trust").status_code == 403
    assert client.get(f"/admin/trust/hosts/{host.id}").status_code == 403
    assert client.post(f"/admin/trust/hosts/{host.id}/release",
                       data={"csrf_token": auth.token("/host")}).status_code == 403


def test_an_owner_sees_its_hosts_verdicts_but_not_when_or_what_was_checked(client, auth, people):
    """Counts and verdicts only: an owner who saw each check's time or text could tell canaries from clients."""
    quarantined(people)
    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    assert "quarantined: no traffic, earnings held" in page and "2 of its last 3 checks failed" in page
    assert "1 passed, 1 failed" in page and "below the 392 that an H100 reaches" in page
    assert "Paris" not in page and "1.4 nats" not in page


def test_models_count_verified_capacity_only(client, people, sdk):
    """/v1/models lists a model once a verified host serves it, and /models counts verified hosts alone; staged,
    degraded and quarantined hosts are not capacity a client can count on."""
    from ..support.factories import make_key, refresh_routes

    _, secret = make_key(people.alice)
    for state in ("staged", "degraded", "quarantined"):
        make_host(people.bob, [TINY_TEST_MODEL], name=f"rig-{state}", trust_state=state)
    assert TINY_TEST_MODEL not in [m.id for m in sdk(secret).models.list().data]
    assert "none now" in client.get("/models").get_data(as_text=True).split("gpushare tiny chat")[1].split("</tr>")[0]
    verified = make_host(people.bob, [TINY_TEST_MODEL], name="rig-verified")
    db.session.add(HostBenchmark(host_id=verified.id, model_id=verified.offers[0].model_id, gpu="no GPU", passed=True,
                                 results=[{"concurrency": 8, "tokens_per_second": 123.4}]))
    db.session.commit()
    refresh_routes()
    assert TINY_TEST_MODEL in [m.id for m in sdk(secret).models.list().data]
    row = client.get("/models").get_data(as_text=True).split("gpushare tiny chat")[1].split("</tr>")[0]
    assert "1 host<" in row and "123 tokens/s" in row
