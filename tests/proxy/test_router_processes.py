"""Several router processes (gunicorn with gevent workers, as in production) share one rate limit and one ledger."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app import ROOT
from app.extensions import db
from app.money import ledger
from hostkit.local.engine import free_port

from ..support.factories import give_credits, make_host, make_key
from ..support.fakehost import FakeHost

MODEL = "gpushare/tiny-chat"



@pytest.fixture
def routers(app, servers, tmp_path):
    """Two gunicorn gevent worker processes on the test database and Redis; yields (base URL, access log)."""
    port, log = free_port(), tmp_path / "access.log"
    env = {**os.environ, "DATABASE_URL": servers["database"], "REDIS_URL": servers["redis"],
           "SECRET_KEY": app.config["SECRET_KEY"], "GPUSHARE_DATA_DIR": str(tmp_path),
           "ROUTING_REFRESH_SECONDS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "2", "--no-control-socket",
         "--bind", f"127.0.0.1:{port}", "--access-logfile", str(log), "--access-logformat", "%(p)s %(s)s",
         "wsgi:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the router processes did not start"
        time.sleep(0.2)
    try:
        yield base, log
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()


def test_it_holds_a_rate_limit_across_router_processes(routers, people):
    base, log = routers
    give_credits(people.alice, "5")
    key, secret = make_key(people.alice)
    key.requests_per_minute = 10
    db.session.commit()
    with FakeHost(chunk_delay=0.01) as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)

        def one(_):
            with httpx.Client() as http:  # a connection each, so the kernel spreads them over both processes
                return http.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                                 json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                       "max_tokens": 5, "stream": True}, timeout=30).status_code

        time.sleep(1.1)  # the routers' routing tables see the new host
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(one, range(30)))
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    workers = {m.group(1) for m in re.finditer(r"^<(\d+)> (?:200|429)$", log.read_text(), re.M)}
    assert len(workers) == 2, "both router processes should have served"


def test_it_never_overspends_a_balance_across_router_processes(routers, people):
    base, _ = routers
    give_credits(people.alice, "0.01")  # 10,000 micro-units: 20 requests of 5 tokens at $100 per million
    _, secret = make_key(people.alice)
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        from .test_chat_proxy import price
        price("100")
        time.sleep(1.1)

        def one(_):
            with httpx.Client() as http:
                return http.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                                 json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                       "max_tokens": 5}, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(one, range(40)))
    assert statuses.count(200) == 20 and statuses.count(402) == 20
    account = ledger.account("client", people.alice)
    assert (account.balance, account.held) == (0, 0)
    assert ledger.invariants() == []
