"""Registering a machine with an enrollment key, and an admin's approval that gives it an overlay address."""
import base64
from datetime import timedelta

import pytest
from sqlalchemy import select

from app import hosts as host_service
from app.extensions import db
from app.models import AuditEvent, EnrollmentKey, Host, utcnow

from ..support import h100_report
from ..support.factories import seed_catalog

H100 = h100_report()


def public_key(n: int = 1) -> str:
    return base64.b64encode(bytes((n + i) % 256 or 1 for i in range(32))).decode()


def enrollment_key(client, auth, person) -> str:
    auth.login(person)
    page = client.post("/host/enrollment-keys", data={"csrf_token": auth.token("/host")},
                       headers={"HX-Request": "true"}).get_data(as_text=True)
    auth.logout()
    return page.split("--invite ")[1].split('"')[0]


def register(client, key, **fields):
    body = {"enrollment_key": key, "public_key": public_key(), "name": "rig-1", "engine_port": 8000,
            "hardware": H100} | fields
    return client.post("/api/hosts/register", json=body)


def test_it_registers_a_pending_host_and_shows_the_token_once(client, auth, people):
    key = enrollment_key(client, auth, people.bob)
    response = register(client, key)
    assert response.status_code == 201
    body = response.get_json()
    assert body["token"].startswith("gphost_") and body["host"]["status"] == "pending"
    assert body["host"]["peer_id"].startswith("Qm") and body["host"]["overlay_address"] is None
    host = db.session.scalar(select(Host))
    assert host.owner_id == people.bob.id and host.token_hash != body["token"] and host.api_base is None
    me = client.get("/api/hosts/me", headers={"Authorization": f"Bearer {body['token']}"}).get_json()
    assert me["host"]["name"] == "rig-1"


@pytest.mark.parametrize("case, fields, status, message", [
    ("wrong key", {"enrollment_key": "gpenr_" + "A" * 38}, 401, "not valid"),
    ("malformed public key", {"public_key": "abc"}, 400, "public_key: a WireGuard public key"),
    ("bad port", {"engine_port": 70000}, 400, "engine_port: 70000 is greater than the maximum of 65535"),
    ("empty name", {"name": "  "}, 400, "name must be 1 to 80 characters"),
    ("an engine address outside the overlay", {"api_base": "http://169.254.169.254"}, 400,
     "only at the overlay address it assigns"),
    ("an unknown field", {"gpu_count": 8}, 400, "Additional properties are not allowed ('gpu_count' was unexpected)"),
])
def test_it_refuses_a_bad_registration_and_writes_nothing(client, auth, people, case, fields, status, message):
    key = enrollment_key(client, auth, people.bob)
    response = register(client, key, **fields)
    assert response.status_code == status and message in response.get_json()["error"]
    assert db.session.scalar(select(db.func.count()).select_from(Host)) == 0
    assert db.session.scalar(select(EnrollmentKey.used_at)) is None  # the key still works


def test_it_refuses_a_used_or_expired_key_and_a_second_registration_of_one_wireguard_key(client, auth, people):
    key = enrollment_key(client, auth, people.bob)
    assert register(client, key).status_code == 201
    again = register(client, key, public_key=public_key(2))
    assert again.status_code == 401 and "already been used" in again.get_json()["error"]
    second = enrollment_key(client, auth, people.bob)
    same_key = register(client, second)
    assert same_key.status_code == 409 and "already registered" in same_key.get_json()["error"]
    row = db.session.scalar(select(EnrollmentKey).where(EnrollmentKey.used_at.is_(None)))
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    expired = register(client, second, public_key=public_key(3))
    assert expired.status_code == 401 and "expired" in expired.get_json()["error"]
    assert db.session.scalar(select(db.func.count()).select_from(Host)) == 1


def test_it_lets_an_admin_approve_with_an_overlay_address_and_suspend(client, auth, people):
    tokens = [register(client, enrollment_key(client, auth, people.bob), public_key=public_key(i), name=f"rig-{i}")
              .get_json()["token"] for i in (1, 2)]
    ids = db.session.scalars(select(Host.id).order_by(Host.id)).all()
    auth.login(people.carol)
    page = client.get("/admin/hosts").get_data(as_text=True)
    assert "1 GPU: NVIDIA H100 80GB HBM3 (80 GiB)" in page and page.count(">Approve<") == 2
    token = auth.token("/admin/hosts")
    for host_id in ids:
        row = client.post(f"/admin/hosts/{host_id}/approve", data={"csrf_token": token},
                          headers={"HX-Request": "true"}).get_data(as_text=True)
        assert row.lstrip().startswith(f'<tr id="host-{host_id}"') and "approved" in row
    first, second = (db.session.get(Host, i) for i in ids)
    assert (str(first.overlay_address), str(second.overlay_address)) == ("10.77.0.2", "10.77.0.3")
    assert first.api_base == "http://10.77.0.2:8000"
    twice = client.post(f"/admin/hosts/{ids[0]}/approve", data={"csrf_token": token}, headers={"HX-Request": "true"})
    assert twice.status_code == 409 and "cannot be approved now" in twice.get_data(as_text=True)
    client.post(f"/admin/hosts/{ids[0]}/suspend", data={"csrf_token": token})
    assert db.session.get(Host, ids[0]).status == "suspended"
    me = client.get("/api/hosts/me", headers={"Authorization": f"Bearer {tokens[0]}"}).get_json()
    assert me["host"]["status"] == "suspended" and me["host"]["overlay_address"] == "10.77.0.2"
    actions = db.session.scalars(select(AuditEvent.action).where(AuditEvent.target_type == "host")).all()
    assert actions.count("host.approve") == 2 and "host.suspend" in actions


def test_it_keeps_host_admin_pages_to_admins(client, auth, people):
    register(client, enrollment_key(client, auth, people.bob))
    host_id = db.session.scalar(select(Host.id))
    auth.login(people.bob)
    assert client.post(f"/admin/hosts/{host_id}/approve", data={"csrf_token": auth.token("/host")}).status_code == 403
    assert db.session.get(Host, host_id).status == "pending"


def test_it_records_heartbeats_for_a_known_token_only(client, auth, people):
    token = register(client, enrollment_key(client, auth, people.bob)).get_json()["token"]
    seed_catalog()
    host_service.set_model(people.bob, db.session.scalar(select(Host)), "gpushare/tiny-chat", True)
    beat = {"engine": "running", "models": ["gpushare/tiny-chat"], "queue_depth": 0, "tokens_per_second": 512.0}
    response = client.post("/api/hosts/heartbeat", json=beat, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    host = db.session.scalar(select(Host))
    assert host.heartbeat == beat and host.last_heartbeat_at is not None
    refused = client.post("/api/hosts/heartbeat", json=beat, headers={"Authorization": "Bearer gphost_nope"})
    assert refused.status_code == 401 and "hostkit register" in refused.get_json()["error"]
    assert client.get("/api/hosts/nothing").get_json() == {
        "error": "There is nothing here. It may have been removed, or the link is wrong."}


@pytest.mark.parametrize("state", ["starting", "failed", "stopped", "waiting"])
def test_a_heartbeat_of_an_engine_that_is_not_running_stops_routing_until_a_health_check_passes(client, auth, people,
                                                                                                state):
    token = register(client, enrollment_key(client, auth, people.bob)).get_json()["token"]
    seed_catalog()
    host = db.session.scalar(select(Host))
    host_service.set_model(people.bob, host, "gpushare/tiny-chat", True)
    host.healthy, host.consecutive_successes = True, 5
    db.session.commit()
    beat = {"engine": state, "models": []}
    answer = client.post("/api/hosts/heartbeat", json=beat, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    db.session.expire_all()
    assert (host.healthy, host.consecutive_successes) == (False, 0)
    assert host_service.serving(host).code in ("unhealthy", "pending")


def test_it_shows_the_enrollment_key_once(client, auth, people):
    auth.login(people.bob)
    page = client.post("/host/enrollment-keys", data={"csrf_token": auth.token("/host")}).get_data(as_text=True)
    key = page.split("--invite ")[1].split('"')[0]
    assert key.startswith("gpenr_") and "works once" in page
    assert key not in client.get("/host").get_data(as_text=True)
    assert db.session.scalar(select(EnrollmentKey.key_hash)) == host_service.tokens.hash_secret(key)
