import pytest
from sqlalchemy import select

from app import accounts
from app.extensions import db
from app.models import AuditEvent, Invite, User

from ..conftest import csrf_token
from ..support.concurrency import at_once
from ..support.factories import PASSWORD, expire, make_invite


def signup(client, email, code):
    return client.post("/signup", data={"email": email, "password": PASSWORD, "confirm": PASSWORD,
                                        "invite_code": code, "csrf_token": csrf_token(client, "/signup")})


def test_it_creates_an_invite_shown_once_and_stored_hashed(client, auth, people):
    auth.login(people.carol)
    response = client.post("/admin/invites", data={"note": "for dave", "ttl_hours": "24",
                                                   "csrf_token": auth.token("/admin/invites")},
                           headers={"HX-Request": "true"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "shown only once" in page
    code = page.split('aria-label="New invite code"')[0].rsplit('value="', 1)[1].split('"')[0]
    assert code.startswith("gpinv_")
    invite = db.session.scalar(select(Invite))
    assert invite.code_hash != code and invite.prefix == code[:14] and invite.note == "for dave"
    assert code not in client.get("/admin/invites").get_data(as_text=True)
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "invite.create"))
    assert event.actor_id == people.carol.id


def test_it_makes_a_host_with_a_good_code(client, people):
    _, code = make_invite(people.carol)
    response = signup(client, "dave@example.com", code)
    assert response.status_code == 302 and response.headers["Location"] == "/host"
    dave = db.session.scalar(select(User).where(User.email == "dave@example.com"))
    assert dave.is_host and dave.is_client
    assert db.session.scalar(select(Invite)).used_by_id == dave.id


@pytest.mark.parametrize("case, message", [
    ("wrong", "That invite code is not valid."),
    ("used", "That invite code has already been used."),
    ("expired", "That invite code has expired."),
])
def test_it_refuses_a_bad_code_with_a_clear_message_and_creates_nothing(client, people, case, message):
    invite, code = make_invite(people.carol)
    if case == "wrong":
        code = code[:-1] + ("x" if code[-1] != "x" else "y")
    elif case == "used":
        accounts.redeem_invite(people.alice, code)
    else:
        expire(invite)
    response = signup(client, "eve@example.com", code)
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    assert db.session.scalar(select(User).where(User.email == "eve@example.com")) is None


def test_it_lets_a_client_become_a_host_from_the_account_page(client, auth, people):
    _, code = make_invite(people.carol)
    auth.login(people.mallory)
    response = client.post("/account", data={"code": code, "csrf_token": auth.token("/account")})
    assert response.status_code == 302
    assert db.session.get(User, people.mallory.id).is_host
    assert "My hosts" in client.get("/").get_data(as_text=True)


def test_it_gives_one_code_to_one_person_when_two_race(app, people):
    _, code = make_invite(people.carol)
    ids = [people.alice.id, people.mallory.id]
    results = {}

    def redeem(user_id):
        with app.app_context():
            user = db.session.get(User, user_id)
            try:
                accounts.redeem_invite(user, code)
                results[user_id] = "host"
            except accounts.AccountError as exc:
                results[user_id] = str(exc)
            finally:
                db.session.remove()

    at_once(redeem, ids)
    assert sorted(results.values()) == ["That invite code has already been used. Ask an admin for a new one.", "host"]
    db.session.expire_all()
    assert sum(db.session.get(User, i).is_host for i in ids) == 1


def test_it_keeps_invites_to_admins(client, auth, people):
    auth.login(people.alice)
    assert client.get("/admin/invites").status_code == 403
    assert client.post("/admin/invites", data={"csrf_token": auth.token()}).status_code == 403
    assert db.session.scalar(select(db.func.count()).select_from(Invite)) == 0
