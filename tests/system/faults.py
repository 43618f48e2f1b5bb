"""Fault-test instruments: a load of clients, a stream kept in flight, and a view of the running platform's database."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from sqlalchemy import select, text
from sqlalchemy.pool import NullPool

from app import create_app
from app.config import normalise_database_url, read_env_file
from app.dev.embedded import EmbeddedPostgres
from app.extensions import db
from app.models import UsageRecord
from app.money import ledger
from app.proxy.metering import Meter

from ..support.platforms import Platform, run_processes

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
            if outcome.kind == "broken" and record.status == "ok":
                # The process died after the request was settled, as it sent the stream's end: the client had every
                # token of the answer, and its finish reason (the end-of-sequence token is billed, never text).
                eos = {"stop": (1,), "length": (0,)}.get(outcome.finish_reason, (0, 1))
                assert record.completion_tokens - self.tokens(outcome.text) in eos, (outcome, record)
                continue
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
