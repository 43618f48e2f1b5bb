"""The overlay tests' world, shared by the package's modules: a router, hub and two hosts in network namespaces.

The router machine (its own namespace) runs ``python -m app.dev.serve``: web app, RQ worker and scheduler, and
the overlay hub on ``wireguard-go``. Two host machines (namespaces on the same LAN) each run the real ``hostkit
register`` and ``hostkit agent``: h1's engine in a podman container (``hostkit.container``), h2's as a plain
vLLM process. Clients and the admin sit in the test's own namespace.
"""
from __future__ import annotations

import os
import sys

import httpx
import pytest
from sqlalchemy import text

from app import ROOT, create_app
from app.config import normalise_database_url
from app.extensions import db
from hostkit.isolation import runtime_reachable
from hostkit.local.engine import EngineError, engine_python, ensure_model
from hostkit.local.image import engine_root

from ..support.netns import Lan
from .world import MODEL, ROUTER_PORT, World, wait_until


@pytest.fixture(scope="package")
def world(servers, tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("overlay")
    lan = Lan(hosts=2)
    request.addfinalizer(lan.close)  # also when the set-up fails half way
    app = create_app({"TESTING": True, "GPUSHARE_ENV": "test", "SECRET_KEY": "overlay-test-secret-key-long-enough",
                      "GPUSHARE_DATA_DIR": str(tmp / "admin"),
                      "SQLALCHEMY_DATABASE_URI": normalise_database_url(servers["database"]),
                      "REDIS_URL": servers["redis"], "OVERLAY_NETWORK": lan.overlay})
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
        db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        db.session.commit()
        app.extensions["redis"].flushdb()
    try:
        python = engine_python()
        model_dir = ensure_model("tiny-chat", tmp / "models", python=python, data_dir=tmp)
        root = engine_root()  # h1's engine runs in podman, from this machine's engine image
    except EngineError as error:
        pytest.fail(f"these tests need vLLM and its engine image: {error}", pytrace=False)
    if not runtime_reachable("podman"):
        pytest.fail("these tests need podman (make test installs it, as root)", pytrace=False)
    router_data = tmp / "router"
    (router_data / "tokenizers" / "gpushare").mkdir(parents=True)
    (router_data / "tokenizers" / MODEL).symlink_to(model_dir, target_is_directory=True)
    world = World(app, lan, tmp, model_dir, root)
    env = dict(os.environ, DATABASE_URL=servers["database"], REDIS_URL=servers["redis"],
               GPUSHARE_DATA_DIR=str(router_data), GPUSHARE_PUBLIC_URL=world.url,
               OVERLAY_NETWORK=lan.overlay, OVERLAY_INTERFACE=lan.interface("hub"),
               OVERLAY_ENDPOINT=f"{lan.router.address}:51820", OVERLAY_LISTEN_PORT="51820",
               OVERLAY_RECONCILE_SECONDS="2",
               HEALTH_CHECK_SECONDS="1", ROUTING_REFRESH_SECONDS="1", GPUSHARE_DEMO_MODEL="none")
    try:
        lan.router.spawn(sys.executable, "-m", "app.dev.serve", "--host", "0.0.0.0",
                         "--port", str(ROUTER_PORT), log=tmp / "router.log", env=env, cwd=str(ROOT))
        wait_until(lambda: _answers(f"{world.url}/healthz"), 90, "the router answers")
        yield world
    except BaseException:
        print(world.logs())
        raise
    finally:
        lan.close()  # before the database goes: agents and the router say goodbye first
        with app.app_context():
            db.engine.dispose()
        app.extensions["redis"].close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


