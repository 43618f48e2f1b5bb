from rq import SimpleWorker

import jobs
from app.extensions import db
from app.models import Host
from jobs import health, holds

from ..support.factories import make_host
from ..support.fakehost import FakeHost

MODEL = "gpushare/tiny-chat"


def health_of(host_id):
    db.session.expire_all()
    return db.session.get(Host, host_id)


def test_it_marks_a_host_unhealthy_after_consecutive_failures_and_back(app, people):
    with FakeHost("fail") as broken:
        host = make_host(people.bob, [MODEL], api_base=broken.api_base)
        assert health.check_host(host.id) is True  # one failure is not enough
        assert health.check_host(host.id) is False
        row = health_of(host.id)
        assert row.consecutive_failures == 2 and row.last_check_error == "answered 500"
    with FakeHost() as fixed:
        row.api_base = fixed.api_base
        db.session.commit()
        assert health.check_host(host.id) is False
        assert health.check_host(host.id) is True
        assert fixed.requests[-1]["max_tokens"] == 1 and fixed.requests[-1]["model"] == MODEL
    assert health_of(host.id).last_check_error is None


def test_it_checks_every_approved_enabled_host_and_skips_the_rest(people):
    with FakeHost() as good:
        up = make_host(people.bob, [MODEL], api_base=good.api_base, healthy=False)
        off = make_host(people.bob, [MODEL], api_base=good.api_base, enabled=False, healthy=False, name="off")
        pending = make_host(people.bob, [MODEL], api_base=good.api_base, status="pending", healthy=False,
                            name="new")
        assert health.check_hosts() == {up.id: False}
        assert health.check_hosts() == {up.id: True}
    assert not health_of(off.id).healthy and not health_of(pending.id).healthy


def test_it_counts_an_unreachable_host_as_a_failure(people):
    host = make_host(people.bob, [MODEL], api_base="http://127.0.0.1:9")
    health.check_host(host.id)
    assert health_of(host.id).last_check_error.startswith("unreachable")


def test_it_runs_from_the_queue_with_a_worker(app, people):
    with FakeHost() as good:
        host = make_host(people.bob, [MODEL], api_base=good.api_base, healthy=False)
        job = jobs.enqueue(health.check_hosts)
        SimpleWorker([jobs.queue()], connection=app.extensions["redis"]).work(burst=True)
    assert job.return_value() == {host.id: False} and len(good.requests) == 1


def test_it_sweeps_nothing_when_nothing_expired(ctx):
    assert holds.void_expired() == {"settled": 0, "voided": 0}
    assert holds.void_expired() == {"settled": 0, "voided": 0}


def test_it_lists_the_periodic_jobs(ctx):
    names = {job.func.__name__: job.every_seconds for job in jobs.periodic()}
    assert names == {"check_hosts": 30, "void_expired": 15, "update_prices": 60, "pay_hosts": 3600, "schedule": 5,
                     "update_reputation": 60}
