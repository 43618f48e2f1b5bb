"""Fixtures in the flaskr style, on real PostgreSQL and Redis.

The servers come from ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` when set,
else from the same embedded pair ``make run`` uses, started once per test
session under a temporary directory. Each test starts from empty tables and
an empty Redis database.
"""
from __future__ import annotations

import functools
import os
import re
import threading
import uuid

import httpx
import openai
import psycopg
import pytest
import redis
from argon2 import PasswordHasher
from flask import has_app_context
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from app import accounts, create_app
from app.config import normalise_database_url
from app.extensions import db
from hostkit.local.engine import CPU_THREADS_VARIABLE

from .support import factories
from .support.stripe_helpers import standin  # noqa: F401 (the local Stripe stand-in fixture, for every test file)

# Many engines share this machine's cores in the tests: one thread each, placed by the kernel (engine_env).
os.environ.setdefault(CPU_THREADS_VARIABLE, "1")
CSRF_RE = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"|"X-CSRFToken": "([^"]+)"')


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """URLs of a PostgreSQL database made for this test session, and of Redis."""
    embedded = None
    database_url, redis_url = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    if not (database_url and redis_url):
        from app.dev.embedded import EmbeddedServices

        embedded = EmbeddedServices(tmp_path_factory.mktemp("servers"))
        database_url = database_url or embedded.start_postgres()
        redis_url = redis_url or embedded.start_redis()
    name = f"gpushare_test_{uuid.uuid4().hex[:8]}"
    server_url = make_url(database_url).set(drivername="postgresql")
    admin_url = server_url.render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    test_url = server_url.set(database=name).render_as_string(hide_password=False)
    yield {"database": test_url, "redis": redis_url, "embedded": embedded}
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    if embedded is not None:
        embedded.stop()


class Client(FlaskClient):
    """Each request gets its own app context, as in production, even inside a test's ``ctx``.

    Flask reuses an app context already pushed, which would share ``g`` (and
    with it the cached CSRF token) between requests. Afterwards the test's
    own session is expired so that it reads what the request committed.
    """

    def open(self, *args, **kwargs):
        with self.application.app_context():
            response = super().open(*args, **kwargs)
        if has_app_context():
            db.session.expire_all()
        return response


@pytest.fixture(scope="session")
def app(servers, tmp_path_factory):
    from flask_migrate import upgrade

    data_dir = tmp_path_factory.mktemp("data")
    app = create_app({
        "TESTING": True,
        "GPUSHARE_ENV": "test",
        "SECRET_KEY": "test-secret-key-that-is-long-enough-for-anything",
        "GPUSHARE_DATA_DIR": str(data_dir),
        "TOKENIZERS_DIR": str(data_dir / "tokenizers"),
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(servers["database"]),
        "REDIS_URL": servers["redis"],
        "UPSTREAM_FIRST_TOKEN_TIMEOUT": 60,
        "UPSTREAM_CHUNK_TIMEOUT": 20,
    })
    app.test_client_class = Client
    # Cheap argon2 parameters for the tests' many accounts: the real ones cost ~140 ms a password.
    accounts.hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        db.engine.dispose()
    if "gateway" in app.extensions:
        app.extensions["gateway"].close()
    app.extensions["redis"].close()


@functools.cache
def _empty_tables_sql() -> str:
    """Every row out and every id sequence back to 1, in one round trip. DELETE on tables this small is five
    times faster than TRUNCATE; the ledger's append-only triggers are off for this transaction only."""
    tables = [table.name for table in reversed(db.metadata.sorted_tables)]
    sequences = db.session.scalars(text("SELECT relname FROM pg_class WHERE relkind = 'S'")).all()
    return ("SET LOCAL session_replication_role = replica; " + "".join(f'DELETE FROM "{t}"; ' for t in tables)
            + "".join(f'ALTER SEQUENCE "{s}" RESTART; ' for s in sequences))


@pytest.fixture(autouse=True)
def _clean_state(request):
    """Empty tables and Redis before each test that uses the app."""
    if "app" not in request.fixturenames:
        yield
        return
    app = request.getfixturevalue("app")
    with app.app_context():
        db.session.execute(text(_empty_tables_sql()))
        db.session.commit()
        redis.Redis.from_url(app.config["REDIS_URL"]).flushdb()
        if "gateway" in app.extensions:
            app.extensions["gateway"].routing.invalidate()
    yield


@pytest.fixture
def ctx(app):
    """An app context for calling services and factories directly."""
    with app.app_context():
        yield
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


def csrf_token(client, path: str = "/") -> str:
    html = client.get(path).get_data(as_text=True)
    match = CSRF_RE.search(html)
    assert match, f"no CSRF token on {path}"
    return match.group(1) or match.group(2)


class Auth:
    """Logs a test client in and out through the real pages."""

    def __init__(self, client):
        self.client = client

    def login(self, user_or_email, password: str = factories.PASSWORD):
        email = getattr(user_or_email, "email", user_or_email)
        token = csrf_token(self.client, "/login")
        return self.client.post("/login", data={"email": email, "password": password, "csrf_token": token})

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": csrf_token(self.client)})

    def token(self, path: str = "/") -> str:
        return csrf_token(self.client, path)


@pytest.fixture
def auth(client):
    return Auth(client)


@pytest.fixture
def people(ctx):
    """alice is a client, bob a host, carol an admin, mallory an outsider with a client account."""
    return factories.personas()


@pytest.fixture
def live_server(app):
    """The session app on a real HTTP server on loopback; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # A short poll: shutdown() waits for the loop to notice, 0.5 s a test by default.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def short_timeouts(app):
    """First-token and between-chunk timeouts of a few seconds, for tests of hosts that stall."""
    from app.proxy.gateway import gateway

    with app.app_context():
        upstream = gateway().upstream
    saved = upstream.first_token_timeout, upstream.chunk_timeout
    upstream.first_token_timeout, upstream.chunk_timeout = 3, 2
    yield
    upstream.first_token_timeout, upstream.chunk_timeout = saved


# Headless Chromium for the browser tests: a missing Chromium is a failure, never a skip.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 10_000


@pytest.fixture
def page(live_server):
    """A fresh headless Chromium page; closed with its browser at teardown."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=live_server)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            yield page
            context.close()
        finally:
            browser.close()


@pytest.fixture
def sdk(app):
    """Official openai SDK clients: ``sdk(key)`` talks to the app in process, ``sdk(key, base)`` over HTTP."""
    clients = []

    def make(api_key: str, base: str | None = None) -> openai.OpenAI:
        if base is None:
            http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://gpushare.test")
            base = "http://gpushare.test"
        else:
            http = httpx.Client()
        clients.append(http)
        return openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, http_client=http, max_retries=0)

    yield make
    for http in clients:
        http.close()


def pytest_collection_modifyitems(items):
    """Every test that drives Chromium is marked ``browser`` (``make test-fast`` leaves them out)."""
    for item in items:
        if "page" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
