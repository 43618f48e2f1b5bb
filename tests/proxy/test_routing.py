from app.extensions import db, redis_client
from app.proxy.routing import RoutingTable

from ..support.factories import make_host

MODEL = "gpushare/tiny-chat"


def table(strategy):
    return RoutingTable(db.engine, redis_client.client, 60, strategy)


def test_it_takes_turns_round_robin(people):
    ids = [make_host(people.bob, [MODEL], name=f"h{i}").id for i in range(3)]
    routes = table("round_robin")
    offer = routes.model(MODEL)
    firsts = [routes.candidates(offer)[0].host_id for _ in range(6)]
    assert firsts == ids + ids
    assert [r.host_id for r in routes.candidates(offer)] == ids  # every host is still a fallback


def test_it_prefers_the_least_outstanding_host_across_processes(people):
    ids = [make_host(people.bob, [MODEL], name=f"h{i}").id for i in range(3)]
    routes, other_process = table("least_outstanding"), table("least_outstanding")
    offer = routes.model(MODEL)
    first, second, _ = routes.candidates(offer)
    with routes.in_flight(first), other_process.in_flight(second):  # counted in Redis: every process sees it
        assert [r.host_id for r in routes.candidates(offer)] == [ids[2], ids[0], ids[1]]
        stream = routes.in_flight(first).__enter__().hand_over()  # a stream holds its host past the ``with``
    assert [r.host_id for r in routes.candidates(offer)] == [ids[1], ids[2], ids[0]]
    stream.release()
    stream.release()  # released once, however often asked
    assert [r.host_id for r in routes.candidates(offer)] == [ids[0], ids[1], ids[2]]


def test_it_skips_hosts_that_may_not_serve(people):
    make_host(people.bob, [MODEL], healthy=False, name="sick")
    make_host(people.bob, [MODEL], enabled=False, name="off")
    make_host(people.bob, [MODEL], status="suspended", name="suspended")
    make_host(people.bob, ["Qwen/Qwen2.5-7B-Instruct"], name="other model")
    routes = table("round_robin")
    assert routes.candidates(routes.model(MODEL)) == []
    assert [m.hf_id for m in routes.served_models()] == ["Qwen/Qwen2.5-7B-Instruct"]
