"""The verification schedule (``jobs.verification.schedule``): which hosts get a canary or a benchmark, and when."""
from __future__ import annotations

from datetime import timedelta

from app.dev.demo import DEMO_EMBEDDING_MODEL, TINY_TEST_MODEL
from app.extensions import db
from app.models import Calibration, Host, HostBenchmark, utcnow
from jobs import queue, verification
from jobs.queues import VERIFY_QUEUE

from ..support.factories import make_host


def queued() -> list[str]:
    return sorted(queue(VERIFY_QUEUE).job_ids)


def test_a_staged_host_is_benchmarked_and_gets_canaries_once_its_model_can_be_checked(app, people):
    host = make_host(people.bob, [TINY_TEST_MODEL], trust_state="staged")
    assert verification.schedule() == {"canaries": 0, "benchmarks": 1}  # no reference, no calibration: no canary
    assert queued() == [f"benchmark-{host.id}"]
    make_host(people.carol, [TINY_TEST_MODEL], name="reference", reference=True)
    db.session.add(Calibration(model_id=host.offers[0].model_id, thresholds={"greedy": {"threshold": 0.02}}))
    db.session.commit()
    before = utcnow()
    assert verification.schedule() == {"canaries": 1, "benchmarks": 0}  # the benchmark is queued already
    assert queued() == [f"benchmark-{host.id}", f"canary-{host.id}"]
    wait = db.session.get(Host, host.id, populate_existing=True).next_canary_at - before
    mean = app.config["VERIFY_STAGED_CANARY_SECONDS"]
    assert timedelta(seconds=mean / 2) <= wait <= timedelta(seconds=mean * 1.5 + 1)
    assert verification.schedule() == {"canaries": 0, "benchmarks": 0}  # nothing due twice


def test_quarantined_and_reference_hosts_get_nothing_and_a_passed_benchmark_is_not_repeated(people):
    make_host(people.bob, [TINY_TEST_MODEL], name="q", trust_state="quarantined")
    make_host(people.bob, [TINY_TEST_MODEL], name="r", reference=True)
    verified = make_host(people.bob, [TINY_TEST_MODEL], name="v")
    db.session.add(HostBenchmark(host_id=verified.id, model_id=verified.offers[0].model_id, gpu="no GPU",
                                 passed=True))
    db.session.commit()
    assert verification.schedule() == {"canaries": 0, "benchmarks": 0}
    assert queued() == []


def test_a_host_serving_embeddings_only_is_verified_by_its_health(people):
    host = make_host(people.bob, [DEMO_EMBEDDING_MODEL], trust_state="staged")
    verification.schedule()
    host = db.session.get(Host, host.id, populate_existing=True)
    assert host.trust_state == "verified" and "embeddings only" in host.trust_reason
