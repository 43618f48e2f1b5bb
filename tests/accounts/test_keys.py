import pytest
from sqlalchemy import select, text

from app.extensions import db
from app.models import ApiKey, AuditEvent

from ..support.factories import make_host, make_key


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def create(client, auth, **fields):
    data = {"name": "laptop", "spend_limit": "", "csrf_token": auth.token("/keys")} | fields
    return client.post("/keys", data=data, headers={"HX-Request": "true"})


def test_it_shows_the_key_once_and_stores_only_its_hash(client, auth, people):
    auth.login(people.alice)
    response = create(client, auth, name="ci runner", spend_limit="12.50")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="keys-panel"' in page and "<html" not in page
    secret = page.split('class="secret" readonly value="')[1].split('"')[0]
    assert secret.startswith("gpsk_") and "shown only once" in page
    assert 'name="name" required type="text" value=""' in page  # the form is empty for the next key

    row = db.session.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert row["name"] == "ci runner" and row["spend_limit"] == 12_500_000
    assert row["prefix"] == secret[:13] and secret not in str(dict(row))
    assert len(row["key_hash"]) == 64 and row["key_hash"] != secret

    again = client.get("/keys").get_data(as_text=True)
    assert secret not in again and f"{secret[:13]}…" in again and "ci runner" in again
    assert client.get("/v1/models", headers=bearer(secret)).status_code == 200


def test_it_limits_a_key_to_the_models_chosen(client, auth, people):
    make_host(people.bob, ["Qwen/Qwen2.5-7B-Instruct", "google/gemma-2-9b-it"])
    auth.login(people.alice)
    page = create(client, auth, models=["Qwen/Qwen2.5-7B-Instruct"]).get_data(as_text=True)
    secret = page.split('class="secret" readonly value="')[1].split('"')[0]
    ids = [m["id"] for m in client.get("/v1/models", headers=bearer(secret)).get_json()["data"]]
    assert ids == ["Qwen/Qwen2.5-7B-Instruct"]
    response = create(client, auth, models=["no/such-model"])
    assert response.status_code == 400 and "is not a valid choice" in response.get_data(as_text=True)


@pytest.mark.parametrize("fields, message", [
    ({"name": ""}, "This field is required."),
    ({"name": "x" * 81}, "Field cannot be longer than 80 characters."),
    ({"spend_limit": "-5"}, "must be zero or more"),
    ({"spend_limit": "0"}, "A spend limit must be more than zero"),
    ({"spend_limit": "lots"}, "is not an amount in dollars"),
])
def test_it_refuses_a_bad_key_form_and_creates_nothing(client, auth, people, fields, message):
    auth.login(people.alice)
    response = create(client, auth, **fields)
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    assert db.session.scalar(select(db.func.count()).select_from(ApiKey)) == 0


def test_it_revokes_a_key_for_the_very_next_request(client, auth, people):
    key, secret = make_key(people.alice)
    assert client.get("/v1/models", headers=bearer(secret)).status_code == 200  # now cached in Redis
    auth.login(people.alice)
    response = client.post(f"/keys/{key.id}/revoke", data={"csrf_token": auth.token("/keys")},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200 and "revoked" in response.get_data(as_text=True)
    assert response.get_data(as_text=True).lstrip().startswith(f'<tr id="key-{key.id}"')
    answer = client.get("/v1/models", headers=bearer(secret))
    assert answer.status_code == 401
    assert answer.get_json()["error"]["code"] == "invalid_api_key" and secret not in answer.get_data(as_text=True)


def test_it_revokes_for_every_router_process(app, people):
    """A second app (another process's view) with its own connections sees the revocation at once."""
    from app import create_app

    other = create_app({k: app.config[k] for k in ("SECRET_KEY", "SQLALCHEMY_DATABASE_URI", "REDIS_URL",
                                                   "GPUSHARE_DATA_DIR")} | {"TESTING": True})
    key, secret = make_key(people.alice)
    other_client = other.test_client()
    assert other_client.get("/v1/models", headers=bearer(secret)).status_code == 200
    from app.accounts import api_keys
    api_keys.revoke_key(people.alice, key)
    assert other_client.get("/v1/models", headers=bearer(secret)).status_code == 401
    with other.app_context():
        db.engine.dispose()
    other.extensions["gateway"].close()
    other.extensions["redis"].close()


def test_it_keeps_a_revocation_when_a_stale_lookup_races_it(app, people):
    from app.accounts import api_keys

    key, secret = make_key(people.alice)
    api_keys.revoke_key(people.alice, key)
    # A lookup that read the row before the revocation now tries to fill the cache: it must not win.
    from app.extensions import redis_client
    cached = redis_client.set(f"apikey:{key.key_hash}", '{"id": 1}', nx=True)
    assert not cached
    assert api_keys.authenticate(secret) is None


def test_it_renames_a_key_inline(client, auth, people):
    key, _ = make_key(people.alice, "old name")
    auth.login(people.alice)
    form = client.get(f"/keys/{key.id}/edit", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'value="old name"' in form
    response = client.post(f"/keys/{key.id}/rename", data={"name": "new name", "csrf_token": auth.token("/keys")},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200 and "new name" in response.get_data(as_text=True)
    assert db.session.get(ApiKey, key.id).name == "new name"


@pytest.mark.parametrize("method, path", [
    ("GET", "/keys/{id}"),
    ("GET", "/keys/{id}/edit"),
    ("POST", "/keys/{id}/rename"),
    ("POST", "/keys/{id}/revoke"),
])
def test_it_answers_404_for_another_persons_key(client, auth, people, method, path):
    key, secret = make_key(people.alice)
    auth.login(people.mallory)
    response = client.open(path.format(id=key.id), method=method,
                           data={"name": "pwned", "csrf_token": auth.token("/keys")})
    assert response.status_code == 404
    fresh = db.session.get(ApiKey, key.id)
    assert fresh.name == "laptop" and fresh.revoked_at is None
    assert client.get("/v1/models", headers=bearer(secret)).status_code == 200


def test_it_records_every_key_change_in_the_audit_log(client, auth, people):
    key, _ = make_key(people.alice)
    auth.login(people.alice)
    token = auth.token("/keys")
    client.post(f"/keys/{key.id}/rename", data={"name": "renamed", "csrf_token": token})
    client.post(f"/keys/{key.id}/revoke", data={"csrf_token": token})
    events = db.session.scalars(select(AuditEvent).where(AuditEvent.target_type == "api_key")
                                .order_by(AuditEvent.id)).all()
    assert [(e.action, e.actor_id, e.target_id) for e in events] == [
        ("api_key.create", people.alice.id, str(key.id)),
        ("api_key.rename", people.alice.id, str(key.id)),
        ("api_key.revoke", people.alice.id, str(key.id)),
    ]
    assert events[1].details == {"old": "laptop", "new": "renamed"}
    assert str(events[2].ip_address) == "127.0.0.1"


def test_it_works_without_htmx_too(client, auth, people):
    key, _ = make_key(people.alice)
    auth.login(people.alice)
    response = client.post(f"/keys/{key.id}/revoke", data={"csrf_token": auth.token("/keys")},
                           follow_redirects=True)
    assert response.status_code == 200 and "revoked. It stopped working at once." in response.get_data(as_text=True)


def test_it_keeps_keys_to_clients(client, auth, people):
    auth.login(people.bob)  # a host only
    assert client.get("/keys").status_code == 403
