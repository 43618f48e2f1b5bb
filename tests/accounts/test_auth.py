from argon2 import PasswordHasher
from sqlalchemy import select

from app.extensions import db
from app.models import User

from ..conftest import csrf_token
from ..support.factories import PASSWORD, make_user


def signup(client, **fields):
    data = {"email": "new@example.com", "password": PASSWORD, "confirm": PASSWORD, "invite_code": ""} | fields
    return client.post("/signup", data=data | {"csrf_token": csrf_token(client, "/signup")})


def test_it_signs_up_a_client_and_logs_them_in(client, ctx):
    response = signup(client, email="  New@Example.com ")
    assert response.status_code == 302 and response.headers["Location"] == "/keys"
    user = db.session.scalar(select(User).where(User.email == "new@example.com"))
    assert user.roles == ["client"]
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    page = client.get("/keys").get_data(as_text=True)
    assert "new@example.com" in page and "Welcome to gpushare" in page


def test_it_refuses_a_duplicate_email_and_a_weak_password(client, people):
    response = signup(client, email="alice@example.com")
    assert response.status_code == 400
    assert "An account with this e-mail already exists" in response.get_data(as_text=True)
    response = signup(client, password="short", confirm="short")
    assert response.status_code == 400 and "at least 12" in response.get_data(as_text=True)
    response = signup(client, confirm="something else entirely")
    assert response.status_code == 400 and "The passwords do not match." in response.get_data(as_text=True)
    assert db.session.scalar(select(db.func.count()).select_from(User)) == 4


def test_it_logs_in_and_out(client, auth, people):
    response = auth.login(people.alice)
    assert response.status_code == 302
    assert "alice@example.com" in client.get("/").get_data(as_text=True)
    response = auth.logout()
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert "alice@example.com" not in page and "Log in" in page
    assert client.get("/keys").status_code == 302  # back to the login page


def test_it_refuses_a_wrong_password_with_one_message_for_both_cases(client, auth, people):
    wrong = auth.login(people.alice, "not the password at all")
    unknown = auth.login("nobody@example.com")
    for response in (wrong, unknown):
        assert response.status_code == 400
        assert "That e-mail and password do not match an account." in response.get_data(as_text=True)


def test_it_refuses_a_form_without_its_csrf_token(client, people):
    response = client.post("/login", data={"email": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert "alice@example.com" not in client.get("/").get_data(as_text=True)


def test_it_refuses_an_htmx_request_without_the_csrf_header(client, auth, people):
    auth.login(people.alice)
    response = client.post("/keys", data={"name": "x"}, headers={"HX-Request": "true"})
    assert response.status_code == 400
    token = csrf_token(client, "/keys")
    response = client.post("/keys", data={"name": "x"}, headers={"HX-Request": "true", "X-CSRFToken": token})
    assert response.status_code == 200 and "gpsk_" in response.get_data(as_text=True)


def test_it_renews_the_session_at_login(client, auth, people):
    before = csrf_token(client, "/login")
    cookie_before = client.get_cookie("session").value
    auth.login(people.alice)
    assert client.get_cookie("session").value != cookie_before
    after = csrf_token(client, "/")
    assert after != before
    # A token minted before login is worthless after it.
    response = client.post("/keys", data={"name": "x", "csrf_token": before})
    assert response.status_code == 400


def test_it_sends_a_signed_in_visitor_back_where_they_were_going(client, people):
    response = client.get("/keys")
    assert response.status_code == 302 and "next=%2Fkeys" in response.headers["Location"]
    token = csrf_token(client, "/login")
    response = client.post("/login?next=/keys", data={"email": people.alice.email, "password": PASSWORD,
                                                       "csrf_token": token})
    assert response.headers["Location"] == "/keys"


def test_it_never_redirects_off_site_after_login(client, people):
    token = csrf_token(client, "/login")
    response = client.post("/login?next=//evil.example/x", data={"email": people.alice.email,
                                                                 "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/"


def test_it_rehashes_a_password_hashed_with_old_parameters(client, auth, ctx):
    user = make_user("old@example.com")
    user.password_hash = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    db.session.commit()
    old = user.password_hash
    assert auth.login(user).status_code == 302
    db.session.expire_all()
    user = db.session.get(User, user.id)
    assert user.password_hash != old and "m=8," not in user.password_hash


def test_it_shows_each_person_only_the_navigation_they_may_use(client, auth, people):
    expectations = {
        people.alice: ({"API keys"}, {"My hosts", "Admin"}),
        people.bob: ({"My hosts"}, {"API keys", "Admin"}),
        people.carol: ({"Admin"}, {"API keys", "My hosts"}),
    }
    for person, (shown, hidden) in expectations.items():
        auth.login(person)
        nav = client.get("/").get_data(as_text=True).split("</nav>")[0]
        assert all(label in nav for label in shown), person.email
        assert not any(label in nav for label in hidden), person.email
        auth.logout()


def test_it_refuses_pages_a_role_may_not_use(client, auth, people):
    auth.login(people.alice)
    assert client.get("/admin").status_code == 403
    assert client.get("/host").status_code == 403
    auth.logout()
    auth.login(people.bob)
    assert client.get("/admin/models").status_code == 403


def test_it_makes_an_admin_from_the_command_line(app, ctx):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["admin", "create", "root@example.com", "--password", PASSWORD])
    assert result.exit_code == 0 and "Admin root@example.com created." in result.output
    assert db.session.scalar(select(User).where(User.email == "root@example.com")).is_admin
    result = runner.invoke(args=["admin", "create", "bad-address", "--password", PASSWORD])
    assert result.exit_code == 1 and "Enter a valid e-mail address." in result.output
