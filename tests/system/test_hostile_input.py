"""No input gets a 500: every form field, query parameter, URL id and JSON body is checked at the edge and
refused with a 4xx in the caller's format, with a short message, and nothing is written. Hosts cannot break the
platform: the host API takes bodies of one shape only, and the routing table survives any one host's bad data.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text

from app.extensions import db
from app.models import ApiKey, Host, User
from app.proxy.gateway import gateway

from ..conftest import csrf_token
from ..hosts.test_host_registration import H100, enrollment_key, register
from ..support.factories import give_credits, make_host, make_key, refresh_routes
from ..support.fakehost import FakeHost

MODEL = "gpushare/tiny-chat"
NUL = "a\x00b"


# Forms and query parameters -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, fields", [
    ("/login", {"email": NUL, "password": "whatever it is"}),
    ("/login", {"email": "alice@example.com", "password": NUL}),
    ("/signup", {"email": "x@example.com", "password": NUL * 8, "confirm": NUL * 8}),
    ("/signup", {"email": NUL + "@example.com", "password": "plum orbit caravan 7",
                 "confirm": "plum orbit caravan 7"}),
])
def test_a_nul_byte_in_a_form_is_a_400_page(client, people, path, fields):
    response = client.post(path, data={**fields, "csrf_token": csrf_token(client, path)})
    assert response.status_code == 400
    assert "a NUL byte" in response.get_data(as_text=True)
    assert db.session.scalar(select(db.func.count()).select_from(User)) == 4


def test_a_nul_byte_in_a_key_name_or_a_query_parameter_is_a_400(client, auth, people):
    auth.login(people.alice)
    response = client.post("/keys", data={"name": NUL, "csrf_token": auth.token("/keys")})
    assert response.status_code == 400 and "a NUL byte" in response.get_data(as_text=True)
    assert db.session.scalar(select(db.func.count()).select_from(ApiKey)) == 0
    assert client.get(f"/billing/success?session_id={NUL}").status_code == 400
    assert client.get("/usage?page=1%00").status_code == 400


@pytest.mark.parametrize("limit, says", [
    ("1e30", "is more than $1,000,000,000"), ("9" * 5000, "cannot be longer than 20 characters"),
    ("NaN", "is not an amount in dollars"), ("-Infinity", "is not an amount in dollars"),
    ("0.0000001", "more than six decimal places"),
])
def test_an_absurd_spend_limit_is_refused_with_a_short_message(client, auth, people, limit, says):
    auth.login(people.alice)
    response = client.post("/keys", data={"name": "laptop", "spend_limit": limit, "csrf_token": auth.token("/keys")})
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and says in page and "9" * 100 not in page
    assert db.session.scalar(select(db.func.count()).select_from(ApiKey)) == 0


@pytest.mark.parametrize("who, path", [
    ("alice", "/usage?page=100000000000000000000"), ("alice", "/usage?page=-1"), ("alice", "/usage?page=x"),
    ("carol", "/admin/audit?page=100000000000000000000"),
    ("alice", "/keys/100000000000000000000"), ("alice", "/keys/100000000000000000000/edit"),
    ("alice", "/keys/0"), ("alice", "/billing/purchases/100000000000000000000"),
    ("bob", "/host/100000000000000000000/status"), ("carol", "/admin/models/100000000000000000000"),
])
def test_a_page_or_id_that_cannot_exist_is_a_404(client, auth, people, who, path):
    auth.login(getattr(people, who))
    response = client.get(path)
    assert response.status_code == 404 and "There is nothing here" in response.get_data(as_text=True)


def test_huge_ids_in_posts_are_404s_too(client, auth, people):
    auth.login(people.alice)
    response = client.post("/keys/100000000000000000000/revoke", data={"csrf_token": auth.token("/keys")})
    assert response.status_code == 404


# The host API ---------------------------------------------------------------------------------------------------

@pytest.fixture
def host_token(client, auth, people):
    response = register(client, enrollment_key(client, auth, people.bob))
    assert response.status_code == 201
    return response.get_json()["token"]


def beat(client, token, body, **kwargs):
    return client.post("/api/hosts/heartbeat", headers={"Authorization": f"Bearer {token}"}, json=body, **kwargs)


@pytest.mark.parametrize("body, says", [
    ({"engine": "running", "tokens_per_second": 1e308}, "tokens_per_second: 1e+308 is greater than the maximum"),
    ({"engine": "running", "queue_depth": -5}, "queue_depth: -5 is less than the minimum of 0"),
    ({"engine": "running", "gpu_temperature": 30}, "Additional properties are not allowed ('gpu_temperature'"),
    ({"engine": "running", "api_base": "http://169.254.169.254"}, "Additional properties are not allowed"),
    ({"engine": "running", "max_model_len": 1e308}, "max_model_len: 1e+308 is greater than the maximum"),
    ({"engine": "on fire"}, "engine: 'on fire' is not one of"),
    ({"engine": "running", "models": ["x"] * 50}, "models: ["),
    ({"engine": "running", "error": "e" * 100_000}, "error: 'eeeeeeee"),
])
def test_a_heartbeat_out_of_bounds_is_refused_and_nothing_is_stored(client, host_token, body, says):
    response = beat(client, host_token, body)
    error = response.get_json()["error"]
    assert response.status_code == 400 and says in error and len(error) < 400, error
    assert db.session.scalar(select(Host.heartbeat)) == {}


def test_a_heartbeat_claiming_a_model_the_host_does_not_offer_is_refused(client, host_token):
    response = beat(client, host_token, {"engine": "running", "models": ["gpt-4o"]})
    assert response.status_code == 409
    assert response.get_json()["error"].startswith("models: this host does not offer 'gpt-4o'")
    assert db.session.scalar(select(Host.heartbeat)) == {}


@pytest.mark.parametrize("raw, says", [
    (b'{"engine": "running", "tokens_per_second": NaN}', "not valid JSON"),
    (b'{"engine": "running", "tokens_per_second": Infinity}', "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b'{"engine": "running", "error": "a\\u0000b"}', "NUL character"),
    (b'"just a string"', "must be a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
    (b"{" + b'"a": 1, ' * 40_000 + b'"b": 2}', "larger than 256 KiB"),
])
def test_a_heartbeat_that_is_not_plain_json_is_refused(client, host_token, raw, says):
    response = client.post("/api/hosts/heartbeat", data=raw, content_type="application/json",
                           headers={"Authorization": f"Bearer {host_token}"})
    assert response.status_code in (400, 413) and says in response.get_json()["error"]


@pytest.mark.parametrize("hardware, says", [
    ({"checks": "all fine"}, "checks: 'all fine' is not of type 'array'"),
    ({"checks": [{"name": "gpu", "status": "ok", "data": {"gpus": [{"memory_total_mib": "lots"}]}}]},
     "checks/0/data/gpus/0/memory_total_mib: 'lots' is not of type 'integer'"),
    ({"checks": [{"name": "gpu", "status": "ok", "data": {"gpus": "H100"}}]}, "gpus: 'H100' is not of type"),
    ({"verdict": "ready"}, "Additional properties are not allowed ('verdict'"),
    ([1, 2, 3], "hardware: [1, 2, 3] is not of type 'object'"),
])
def test_a_hardware_report_of_the_wrong_shape_is_refused(client, auth, people, hardware, says):
    response = register(client, enrollment_key(client, auth, people.bob), hardware=hardware)
    assert response.status_code == 400 and says in response.get_json()["error"], response.get_json()
    assert db.session.scalar(select(db.func.count()).select_from(Host)) == 0


def test_the_owners_page_survives_a_stored_report_of_any_shape(client, auth, people, host_token):
    """Reports stored before they were checked: the page shows what it can."""
    auth.login(people.bob)
    for report in ({"checks": "all fine"}, {"checks": [{"name": "gpu", "data": {"gpus": [{"memory_total_mib": "x"}]}}]},
                   [1, 2], {"checks": [{"name": "gpu", "data": {"gpus": "H100"}}]}):
        db.session.execute(text("UPDATE hosts SET hardware = CAST(:report AS jsonb), heartbeat = CAST(:beat AS jsonb)"),
                           {"report": json.dumps(report), "beat": json.dumps({"engine": {"x": 1}, "models": 7})})
        db.session.commit()
        assert client.get("/host").status_code == 200
        auth.logout()
        auth.login(people.carol)
        assert client.get("/admin/hosts").status_code == 200
        auth.logout()
        auth.login(people.bob)


def test_the_other_host_api_bodies_are_checked_too(client, host_token):
    headers = {"Authorization": f"Bearer {host_token}"}
    for path, method, body, says in (
        ("/api/hosts/availability", "post", {"available": "yes"}, "available: 'yes' is not of type 'boolean'"),
        ("/api/hosts/availability", "post", {}, "'available' is a required property"),
        ("/api/hosts/models", "post", {"model": "x" * 5000, "enabled": True}, "model: "),
        ("/api/hosts/schedule", "put", {"schedule": ["mon"]}, "schedule: ['mon'] is not of type 'string'"),
    ):
        response = getattr(client, method)(path, json=body, headers=headers)
        assert response.status_code == 400 and says in response.get_json()["error"], response.get_json()
        assert len(response.get_json()["error"]) < 400


# The OpenAI-compatible API --------------------------------------------------------------------------------------

@pytest.fixture
def key(people):
    give_credits(people.alice, "5")
    return {"Authorization": f"Bearer {make_key(people.alice)[1]}"}


def test_thousands_of_tools_are_refused(client, people, key):
    make_host(people.bob, [MODEL])
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    response = client.post("/v1/chat/completions", headers=key, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool] * 5000})
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["code"] == "array_above_max_length" and error["param"] == "tools"


@pytest.mark.parametrize("tool, param", [
    ("not a tool", "tools[0]"), ({"type": "function", "function": {"name": "x" * 65}}, "tools[0].function.name"),
    ({"type": "function", "function": {"name": "bad name; rm -rf /"}}, "tools[0].function.name"),
    ({"type": "function", "function": {"name": "big", "description": "d" * 100_000}}, "tools[0]"),
])
def test_a_malformed_or_huge_tool_is_refused(client, people, key, tool, param):
    make_host(people.bob, [MODEL])
    response = client.post("/v1/chat/completions", headers=key, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]})
    assert response.status_code == 400 and response.get_json()["error"]["param"] == param


def test_a_huge_model_name_is_refused_and_never_echoed_whole(client, key):
    for model in ("m" * 1_000_000, "m" * 300):
        response = client.post("/v1/chat/completions", headers=key, json={
            "model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code in (400, 413) and len(response.get_data()) < 1000
    unknown = client.get("/v1/models/" + "n" * 5000, headers=key)
    assert unknown.status_code == 404 and len(unknown.get_data()) < 1000


# The routing table ----------------------------------------------------------------------------------------------

def test_one_hosts_bad_data_never_stops_the_others(client, people, key, caplog):
    with FakeHost() as good:
        bad = make_host(people.bob, [MODEL], name="bad", api_base=good.api_base)
        make_host(people.bob, [MODEL], name="good", api_base=good.api_base)
        # Written straight into the database, as data from before the API checked it would be.
        db.session.execute(text("UPDATE hosts SET heartbeat = CAST(:beat AS jsonb) WHERE id = :id"),
                           {"beat": '{"max_model_len": 1e308}', "id": bad.id})
        db.session.commit()
        refresh_routes()
        listed = client.get("/v1/models", headers=key)
        assert listed.status_code == 200 and [m["id"] for m in listed.get_json()["data"]] == [MODEL]
        db.session.execute(text("UPDATE hosts SET schedule = CAST(:windows AS jsonb) WHERE id = :id"),
                           {"windows": '[{"days": "everyday", "start": null}]', "id": bad.id})
        db.session.commit()
        refresh_routes()
        with caplog.at_level("ERROR"):
            answer = client.post("/v1/chat/completions", headers=key, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert answer.status_code == 200
        assert f"host {bad.id} skipped in the routing table" in caplog.text
        assert [route.host_id for route in gateway().routing.candidates(gateway().routing.model(MODEL))] != [bad.id]


def test_what_hostkit_itself_sends_fits_the_schemas():
    """The agent's heartbeat and `hostkit check --json` are accepted as they are."""
    from jsonschema import Draft202012Validator

    from app.hostapi import schemas
    from hostkit.agent import Agent
    from hostkit.engines import ProcessEngine

    agent = Agent(router=None, interface="gs0-host", engine=ProcessEngine(data_dir=None, venv=None),
                  heartbeat_seconds=15)
    for state, error in (("waiting", None), ("failed", "the engine exited (killed by SIGKILL)\n" + "log " * 2000)):
        agent.state, agent.error = state, error
        assert list(Draft202012Validator(schemas.HEARTBEAT).iter_errors(agent.report())) == []
    assert list(Draft202012Validator(schemas.HARDWARE).iter_errors(H100)) == []
