"""The host's dashboard: status that polls itself, the enable switch, the schedule, models and earnings."""
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Host, HostModel, UsageRecord, utcnow
from app.money import ledger
from app.money.units import format_usd

from ..support import h100_report
from ..support.factories import PASSWORD, give_credits, make_host, make_key, make_user, refresh_routes
from ..support.fakehost import FakeHost

H100 = h100_report()
MODEL = "gpushare/tiny-chat"
TOO_LARGE = "meta-llama/Llama-3.1-70B-Instruct"  # 144 GiB; the H100 has 80
FITS = "meta-llama/Llama-3.1-8B-Instruct"
HX = {"HX-Request": "true"}


def rig(owner, *, status="approved", name="rig", models=(), **fields) -> Host:
    host = make_host(owner, list(models), name=name, status=status)
    host.hardware, host.peer_id = H100, f"QmPeer{host.id}"
    host.overlay_address = f"10.77.0.{host.id + 1}" if status == "approved" else None
    for field, value in fields.items():
        setattr(host, field, value)
    db.session.commit()
    return host


def audit_actions() -> list[str]:
    return db.session.scalars(select(AuditEvent.action).where(AuditEvent.target_type == "host")
                              .order_by(AuditEvent.id)).all()


def test_it_shows_each_of_the_owners_hosts_with_its_facts(client, auth, people):
    approved = rig(people.bob, name="big-box")
    rig(people.bob, name="new-box", status="pending")
    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    assert "big-box" in page and "new-box" in page and "Add a machine" in page
    assert "waiting for an admin&#39;s approval" in page
    assert f"QmPeer{approved.id}" in page and "10.77.0.2" in page
    assert page.count('class="facts earnings"') == 2 and "$0.00" in page


def test_it_polls_the_status_with_the_heartbeat_figures(client, auth, people):
    host = rig(people.bob, models=[MODEL], last_heartbeat_at=utcnow() - timedelta(seconds=12),
               heartbeat={"engine": "running", "models": [MODEL], "queue_depth": 3, "tokens_per_second": 511.6,
                          "max_model_len": 2048})
    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    assert f'hx-get="/host/{host.id}/status"' in page and 'hx-trigger="every 5s' in page
    response = client.get(f"/host/{host.id}/status", headers=HX)
    part = response.get_data(as_text=True)
    assert response.status_code == 200 and part.lstrip().startswith(f'<div id="host-status-{host.id}"')
    assert re.search(r"<dd>1[2-4] s ago</dd>", part), part
    assert f"running, serving {MODEL}" in part and "3 waiting" in part and "512 tokens/s" in part
    assert "2048 tokens" in part and "<dt>Serving now</dt><dd>yes</dd>" in part
    assert "HX-Request" in response.headers["Vary"]


@pytest.mark.parametrize("kind, shown", [
    ("podman", "in a podman container, isolated from the machine"),
    ("docker", "in a docker container, isolated from the machine"),
    ("process", "as a plain vLLM process (not isolated: with podman or Docker it would run in a container)"),
])
def test_it_says_whether_the_engine_runs_isolated(client, auth, people, kind, shown):
    host = rig(people.bob, models=[MODEL], heartbeat={"engine": "running", "models": [MODEL], "engine_kind": kind})
    auth.login(people.bob)
    part = client.get(f"/host/{host.id}/status", headers=HX).get_data(as_text=True)
    assert f"<dt>Runs</dt><dd>{shown}" in " ".join(re.sub(r"</?small[^>]*>", "", part).split())


def test_it_says_when_a_host_is_outside_its_schedule_and_stops_polling_a_rejected_one(client, auth, people):
    other_day = (utcnow().weekday() + 3) % 7
    host = rig(people.bob, schedule=[{"days": [other_day], "start": 0, "end": 1440}], timezone="UTC",
               heartbeat={"engine": {"state": "stopped"}})
    rejected = rig(people.bob, status="rejected", name="nope")
    auth.login(people.bob)
    part = client.get(f"/host/{host.id}/status", headers=HX).get_data(as_text=True)
    assert "no: outside its schedule" in part and "<dd>stopped</dd>" in part and "<dd>never</dd>" in part
    response = client.get(f"/host/{rejected.id}/status", headers=HX)
    assert response.status_code == 286 and "hx-get" not in response.get_data(as_text=True)


def test_it_disables_and_enables_a_host_and_the_router_stops_sending_to_it(client, auth, people):
    give_credits(people.alice, "1")
    _, secret = make_key(people.alice)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with FakeHost() as engine:
        host = make_host(people.bob, [MODEL], api_base=engine.api_base)
        auth.login(people.bob)
        token = auth.token("/host")
        part = client.post(f"/host/{host.id}/enabled", data={"enabled": "off", "csrf_token": token}, headers=HX)
        assert part.status_code == 200 and part.headers["HX-Trigger"] == f"host-{host.id}-changed"
        assert "Disabled." in part.get_data(as_text=True) and ">Enable<" in part.get_data(as_text=True)
        assert db.session.get(Host, host.id).enabled is False
        refresh_routes()
        response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=chat)
        assert response.status_code == 503 and engine.requests == []
        client.post(f"/host/{host.id}/enabled", data={"enabled": "on", "csrf_token": token}, headers=HX)
        refresh_routes()
        response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=chat)
        assert response.status_code == 200 and len(engine.requests) == 1
    assert audit_actions() == ["host.disable", "host.enable"]


def test_it_toggles_without_htmx_too(client, auth, people):
    host = rig(people.bob)
    auth.login(people.bob)
    response = client.post(f"/host/{host.id}/enabled", data={"enabled": "off", "csrf_token": auth.token("/host")})
    assert response.status_code == 302 and db.session.get(Host, host.id).enabled is False


@pytest.mark.parametrize("windows, timezone, field, message", [
    ("weekdays 9-5", "UTC", "schedule", "write a window as DAYS HH:MM-HH:MM"),
    ("mon-fri 25:00-08:00", "UTC", "schedule", "25:00 is not a time of day"),
    ("mon-fri 22:00-08:00", "Mars/Olympus", "timezone", "is not a time zone name"),
])
def test_it_shows_a_schedule_error_next_to_its_field_and_saves_nothing(client, auth, people, windows, timezone,
                                                                          field, message):
    host = rig(people.bob)
    auth.login(people.bob)
    prefix = f"host-{host.id}"
    response = client.post(f"/host/{host.id}/schedule", headers=HX, data={
        f"{prefix}-schedule": windows, f"{prefix}-timezone": timezone, "csrf_token": auth.token("/host")})
    part = response.get_data(as_text=True)
    assert response.status_code == 400 and part.lstrip().startswith(f'<div id="host-schedule-{host.id}"')
    label = re.search(rf'<label class="field invalid">\s*<span>[^<]*</span>\s*<[^>]*name="{prefix}-{field}"'
                      rf'[^<]*(?:</textarea>)?\s*<small class="error">([^<]*)</small>', part)
    assert label and message in label.group(1).replace("&#39;", "'"), part
    assert part.count('class="error"') == 1
    assert windows in part  # what was typed stays in the form
    host = db.session.get(Host, host.id)
    assert host.schedule == [] and host.timezone == "UTC" and "host.schedule" not in audit_actions()


def test_it_saves_a_schedule(client, auth, people):
    host = rig(people.bob)
    auth.login(people.bob)
    prefix = f"host-{host.id}"
    response = client.post(f"/host/{host.id}/schedule", headers=HX, data={
        f"{prefix}-schedule": "MON-FRI 22:00-08:00\nsat,sun 00:00-24:00", f"{prefix}-timezone": "Europe/Berlin",
        "csrf_token": auth.token("/host")})
    part = response.get_data(as_text=True)
    assert response.status_code == 200 and "Schedule saved." in part and 'class="error"' not in part
    assert "mon-fri 22:00-08:00\nsat,sun 00:00-24:00" in part and 'value="Europe/Berlin"' in part
    host = db.session.get(Host, host.id)
    assert host.timezone == "Europe/Berlin" and host.schedule[0] == {"days": [0, 1, 2, 3, 4], "start": 1320, "end": 480}
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "host.schedule"))
    assert event.actor_id == people.bob.id and event.details["timezone"] == "Europe/Berlin"


def test_it_offers_models_that_fit_and_shows_why_others_do_not(client, auth, people):
    host = rig(people.bob)
    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    too_large = page.split(f'value="{TOO_LARGE}"')[1].split("</tr>")[0]
    assert "disabled>Offer</button>" in too_large and "needs 144 GiB of GPU memory" in too_large
    assert "largest GPU has 80 GiB" in too_large
    token = auth.token("/host")
    part = client.post(f"/host/{host.id}/models", headers=HX,
                       data={"model": FITS, "enabled": "on", "csrf_token": token}).get_data(as_text=True)
    assert part.lstrip().startswith(f'<div id="host-models-{host.id}"')
    assert part.split(f'value="{FITS}"')[1].split("</tr>")[0].count("Stop offering") == 1
    refused = client.post(f"/host/{host.id}/models", headers=HX,
                          data={"model": TOO_LARGE, "enabled": "on", "csrf_token": token})
    assert refused.status_code == 400
    assert "needs 147456 MiB of GPU memory; this host has 81559 MiB" in refused.get_data(as_text=True)
    client.post(f"/host/{host.id}/models", headers=HX, data={"model": FITS, "enabled": "off", "csrf_token": token})
    offers = db.session.scalars(select(HostModel).where(HostModel.host_id == host.id)).all()
    assert [(o.model.hf_id, o.enabled) for o in offers] == [(FITS, False)]
    assert audit_actions() == ["host.model_enable", "host.model_disable"]


def test_it_shows_what_a_host_has_earned_once_usage_is_settled(client, auth, people):
    give_credits(people.alice, "2")
    _, secret = make_key(people.alice)
    with FakeHost() as engine:
        host = make_host(people.bob, [MODEL], api_base=engine.api_base)
        for tokens in (3, 4):
            assert client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": tokens}).status_code == 200
    earned = ledger.account("host", people.bob).balance
    tokens = db.session.scalar(select(db.func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens)))
    assert earned > 0
    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    facts = page.split(f'<section class="card" id="host-{host.id}"')[1].split('class="facts earnings">')[1]
    facts = facts.split("</dl>")[0]
    assert f"<dt>Earned</dt><dd>{format_usd(earned)}</dd>" in facts
    assert f"<dt>Last 7 days</dt><dd>{format_usd(earned)}</dd>" in facts
    assert "<dt>Requests served</dt><dd>2</dd>" in facts and f"<dt>Tokens served</dt><dd>{tokens}</dd>" in facts


def test_it_shows_and_changes_a_host_for_its_owner_only(client, auth, people):
    dave = make_user("dave@example.com", client=False, host=True)
    theirs = rig(dave, name="daves-rig")
    auth.login(people.bob)
    assert "daves-rig" not in client.get("/host").get_data(as_text=True)
    token = auth.token("/host")
    prefix = f"host-{theirs.id}"
    for method, path, data in (
        ("get", "status", None),
        ("post", "enabled", {"enabled": "off"}),
        ("post", "schedule", {f"{prefix}-schedule": "mon 01:00-02:00", f"{prefix}-timezone": "UTC"}),
        ("post", "models", {"model": FITS, "enabled": "on"}),
    ):
        kwargs = {"headers": HX} if data is None else {"headers": HX, "data": data | {"csrf_token": token}}
        assert getattr(client, method)(f"/host/{theirs.id}/{path}", **kwargs).status_code == 404, path
    assert client.get("/host/999999/status").status_code == 404
    host = db.session.get(Host, theirs.id)
    assert host.enabled and host.schedule == [] and not host.offers and audit_actions() == []
    auth.logout()
    auth.login(people.alice)  # a client without the host role
    assert client.get(f"/host/{theirs.id}/status").status_code == 403


def test_it_works_in_a_browser_without_reloading(people, page):
    """htmx swaps every part in place, including a schedule answered 400 with its errors."""
    from playwright.sync_api import expect

    host = rig(people.bob)
    page.goto("/login?next=/host")
    page.fill("input[name=email]", people.bob.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url("**/host")
    page.evaluate("window.__marker = 42")
    card = page.locator(f"#host-{host.id}")

    with page.expect_response(lambda r: r.url.endswith(f"/host/{host.id}/status"), timeout=15_000) as polled:
        card.get_by_role("button", name="Disable").click()
        expect(card.locator(f"#host-enabled-{host.id}")).to_contain_text("Disabled.")
    assert polled.value.status == 200  # the status asked again at once, told by the toggle's HX-Trigger
    expect(card.locator(f"#host-status-{host.id}")).to_contain_text("no: disabled on the dashboard")

    schedule = card.locator(f"#host-schedule-{host.id}")
    schedule.locator("textarea").fill("weekdays 9-5")
    schedule.get_by_role("button", name="Save schedule").click()
    expect(schedule.locator(".field.invalid .error")).to_contain_text("write a window as DAYS HH:MM-HH:MM")
    schedule.locator("textarea").fill("sat,sun 00:00-24:00")
    schedule.locator("input[type=text]").fill("Europe/Berlin")
    schedule.get_by_role("button", name="Save schedule").click()
    expect(schedule).to_contain_text("Schedule saved.")
    expect(schedule.locator(".error")).to_have_count(0)

    models = card.locator(f"#host-models-{host.id}")
    fits = models.locator("tr", has_text=FITS)
    fits.get_by_role("button", name="Offer").click()
    expect(fits.get_by_role("button", name="Stop offering")).to_be_visible()
    expect(models.locator("tr", has_text=TOO_LARGE).get_by_role("button", name="Offer")).to_be_disabled()

    assert page.evaluate("window.__marker") == 42, "a change reloaded the page"
    db.session.expire_all()
    saved = db.session.get(Host, host.id)
    assert not saved.enabled and saved.timezone == "Europe/Berlin" and [o.model.hf_id for o in saved.offers] == [FITS]
