"""Verification against real engines: honest hosts are verified and stay so; every kind of cheater is quarantined.

Each host is driven as the verification jobs drive it (``run_benchmark``, then ``run_canary`` again and again),
every canary on the ordinary request path and every answer scored by the float32 reference engine.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import current_app
from rq import SimpleWorker
from sqlalchemy import select

from app.dev.demo import DEMO_MODEL
from app.extensions import db
from app.models import Host, HostBenchmark, VerificationCheck
from app.money import payouts
from app.proxy.gateway import gateway
from jobs import queue, verification
from jobs.queues import VERIFY_QUEUE

from ..support.cheaters import Cheater
from ..support.factories import give_credits, make_key, make_user, refresh_routes
from .conftest import H100_REPORT

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]
SMOLLM2_EOS = 2  # <|im_end|>
CAUGHT_WITHIN = 16  # canaries a cheater is driven with
LONG_RUN = 6  # canaries to each honest host once verified (bench/bench_verification.py runs hundreds)


def drive(app, host_id: int, canaries: int, *, until: tuple[str, ...] = ("quarantined",)) -> str:
    """What the jobs do for a host: a benchmark while it is staged, then canaries, until it reaches one of
    ``until`` or has had ``canaries``. Returns its state."""
    with app.app_context():
        for _ in range(canaries):
            host = db.session.get(Host, host_id, populate_existing=True)
            if host.trust_state in until:
                break
            if host.trust_state == "staged" and not db.session.scalar(
                    select(HostBenchmark.id).where(HostBenchmark.host_id == host_id, HostBenchmark.passed)):
                verification.run_benchmark(host_id)  # again after one the host could not finish
            verification.run_canary(host_id)
        state = db.session.get(Host, host_id, populate_existing=True).trust_state
        db.session.remove()
        return state


def drive_all(app, plan: dict[int, tuple[int, tuple[str, ...]]]) -> dict[int, str]:
    """Drive several hosts at once (their engines are separate processes); host id -> its state after."""
    with ThreadPoolExecutor(len(plan)) as pool:
        futures = {host_id: pool.submit(drive, app, host_id, count, until=until)
                   for host_id, (count, until) in plan.items()}
        return {host_id: future.result() for host_id, future in futures.items()}


def failures(*hosts) -> dict:
    """What failed, for an assertion's message: each host's state, its failed checks and its benchmarks."""
    found = {}
    for host in hosts:
        host = db.session.get(Host, host.id, populate_existing=True)
        benchmarks = db.session.scalars(select(HostBenchmark).where(HostBenchmark.host_id == host.id)).all()
        found[host.name] = (host.trust_state, host.trust_reason,
                            [(c.test, c.statistic, c.threshold, c.reason) for c in checks_of(host.id)
                             if c.outcome == "failed"], [(b.passed, b.reason, b.results) for b in benchmarks])
    return found


def checks_of(host_id: int) -> list[VerificationCheck]:
    return db.session.scalars(select(VerificationCheck).where(VerificationCheck.host_id == host_id)
                              .order_by(VerificationCheck.id).execution_options(populate_existing=True)).all()


def test_honest_hosts_are_verified_and_stay_verified(app, world):
    """bf16 weights (another dtype than the reference) and another max-num-seqs, then both busy with clients."""
    honest = world.host("bf16", world.fleet.url("honest"))
    seqs = world.host("max-num-seqs 2", world.fleet.url("seqs"))
    assert verification.run_benchmark(honest.id) == "passed"
    # The other's benchmark passed as well (a CPU host's always fits; test_a_host_claiming_a_faster_gpu runs it).
    db.session.add(HostBenchmark(host_id=seqs.id, model_id=seqs.offers[0].model_id, gpu="no GPU", passed=True))
    db.session.commit()
    verified = drive_all(app, {h.id: (8, ("verified", "quarantined")) for h in (honest, seqs)})
    assert set(verified.values()) == {"verified"}, failures(honest, seqs)
    refresh_routes()  # the router's table would see them verified within ROUTING_REFRESH_SECONDS

    # A long run: canaries keep coming while clients keep both engines batching other work.
    client = make_user("client@example.com")
    give_credits(client, "5")
    _, secret = make_key(client)
    stop = threading.Event()
    served = []

    def traffic():
        http = app.test_client()
        while not stop.is_set():
            response = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                                 json={"model": DEMO_MODEL, "max_tokens": 48, "temperature": 0.8,
                                       "messages": [{"role": "user", "content": "Tell me about the sea."}]})
            served.append(response.status_code)

    clients = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        after = drive_all(app, {h.id: (LONG_RUN, ("quarantined",)) for h in (honest, seqs)})
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert served and set(served) == {200}
    assert set(after.values()) == {"verified"}, failures(honest, seqs)
    for host in (honest, seqs):
        # An honest check fails about once in 400 (bench/bench_verification.py); quarantine needs two of three.
        outcomes = [c.outcome for c in checks_of(host.id)]
        assert outcomes.count("passed") >= LONG_RUN and outcomes.count("failed") <= 1, (host.name, outcomes)
    tests = {c.test for host in (honest, seqs) for c in checks_of(host.id)}
    assert tests == {"greedy", "sampled"}  # canaries come greedy and sampled, as clients' requests do


@pytest.mark.parametrize("kind", ["int4", "pruned", "replay", "truncate"])
def test_a_cheater_is_quarantined_within_a_few_canaries(app, world, kind):
    """4-bit weights, another model with the same tokenizer, cached answers to new prompts, answers cut short."""
    with Cheater(world.fleet.url("honest"), kind, eos_token_id=SMOLLM2_EOS) if kind in ("replay", "truncate") \
            else _nothing() as cheater:
        url = cheater.api_base if cheater else world.fleet.url(kind)
        host = world.host(kind, url)
        # Each check catches these 64 % (answers cut short) to 100 % (another model) of the time: within 16 canaries
        # two of three fail but for one run in several thousand.
        assert drive(app, host.id, CAUGHT_WITHIN) == "quarantined"
    db.session.refresh(host)
    failed = [c for c in checks_of(host.id) if c.outcome == "failed"]
    assert failed and host.trust_reason
    evidence = failed[0].evidence["tokens"]
    assert evidence and {"host", "best", "rank", "text"} <= set(evidence[0])
    # Each failure is a rule broken outright (an answer cut short, or cached for a request allowed more tokens) or
    # a statistic above its threshold.
    assert all(c.test == "violation" or c.statistic > c.threshold for c in failed)


def test_8bit_weights_are_caught_by_the_slow_test(app, world):
    """An 8-bit copy passes most single checks; the mean over a window of greedy checks gives it away."""
    host = world.host("int8", world.fleet.url("int8"))
    window = current_app.config["VERIFY_WINDOW"]
    assert drive(app, host.id, 8 * window) == "quarantined", failures(host)
    db.session.refresh(host)
    assert "greedy checks" in host.trust_reason or "checks failed" in host.trust_reason


def test_a_verified_host_that_turns_cheater_is_caught(app, world):
    with Cheater(world.fleet.url("honest"), "honest", eos_token_id=SMOLLM2_EOS) as turncoat:
        host = world.host("turncoat", turncoat.api_base)
        assert drive(app, host.id, 8, until=("verified", "quarantined")) == "verified"
        turncoat.switch_to(world.fleet.url("int4"))
        first_cheat = len(checks_of(host.id))
        assert drive(app, host.id, CAUGHT_WITHIN) == "quarantined"
    db.session.refresh(host)
    cheating = checks_of(host.id)[first_cheat:]
    assert cheating[-1].outcome == "failed" and host.trust_reason


def test_a_host_claiming_a_faster_gpu_is_quarantined(app, world):
    host = world.host("claims an H100", world.fleet.url("seqs"), hardware=H100_REPORT)
    assert verification.run_benchmark(host.id) == "failed"
    db.session.refresh(host)
    benchmark = db.session.scalar(select(HostBenchmark).where(HostBenchmark.host_id == host.id))
    assert host.trust_state == "quarantined" and "H100" in host.trust_reason
    assert [r["concurrency"] for r in benchmark.results] == [1, 4, 8]
    assert benchmark.results[-1]["tokens_per_second"] < benchmark.results[-1]["expected_min"]
    honest = world.host("honest CPU", world.fleet.url("seqs"))
    assert verification.run_benchmark(honest.id) == "passed"


def test_sampled_client_answers_are_checked_off_the_request_path(app, world, monkeypatch):
    honest = world.host("honest", world.fleet.url("honest"), trust_state="verified")
    cheat = world.host("int4", world.fleet.url("int4"), trust_state="verified")
    client = make_user("client@example.com")
    give_credits(client, "5")
    _, secret = make_key(client)
    monkeypatch.setattr(gateway(), "sample_rate", 1.0)
    http = app.test_client()
    for i in range(12):
        body = {"model": DEMO_MODEL, "max_tokens": 64, "temperature": 0 if i % 3 else 0.7, "stream": i % 4 < 2,
                "messages": [{"role": "user", "content": f"Write a paragraph on the history of city number {i}."}]}
        response = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=body)
        assert response.status_code == 200 and b"error" not in response.get_data()
    # Without an explicit temperature the engine samples as the model's generation config says: not sampled.
    http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
              json={"model": DEMO_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
    assert queue(VERIFY_QUEUE).count == 12
    SimpleWorker([queue(VERIFY_QUEUE)], connection=current_app.extensions["redis"]).work(burst=True)
    honest_checks, cheat_checks = checks_of(honest.id), checks_of(cheat.id)
    assert {c.kind for c in honest_checks + cheat_checks} == {"traffic"}
    assert len(honest_checks) + len(cheat_checks) == 12
    assert {c.outcome for c in honest_checks} == {"passed"}
    assert "failed" in {c.outcome for c in cheat_checks}
    assert all("text" not in row for c in honest_checks + cheat_checks for row in c.evidence["tokens"])
    db.session.refresh(cheat)
    if cheat.trust_state == "quarantined":
        assert payouts.held_by_verification(world.owner.id)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
