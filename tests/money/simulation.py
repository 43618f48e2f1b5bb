"""The money simulation's world, its steps and its checks; test_money_simulation.py plays them, one world per seed."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from sqlalchemy import func, select, text

from app.catalog import usd
from app.extensions import db
from app.models import CatalogModel, Payout, Purchase, UsageRecord
from app.money import connect, ledger, payouts
from app.money.units import MICRO_PER_CENT as CENT
from app.money.units import cost_of
from jobs import payouts as payout_job

from ..support.factories import make_host, make_key, make_user, refresh_routes
from ..support.stripe_helpers import start
from .simulation_trust import check_passed, claw_back, quarantine, release, release_all

MODEL = "gpushare/tiny-chat"




class WorkerKilled(Exception):
    """The payout worker's process died here."""


@dataclass
class World:
    rng: random.Random
    standin: object
    http: object
    clients: list = field(default_factory=list)  # (user, api key secret)
    owners: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # events Stripe has sent and not yet seen delivered
    seen: int = 0  # how many of the stand-in's events were picked up
    sessions: list = field(default_factory=list)  # (session id, user)
    log: list = field(default_factory=list)
    dead_routers: int = 0
    hosts: list = field(default_factory=list)  # host ids, one per owner
    admin: object = None

    def pick(self, items):
        return self.rng.choice(items) if items else None


def build(seed: int, standin, http, engines) -> World:
    world = World(random.Random(seed), standin, http)
    standin.autodeliver = False
    standin.balance = None
    world.admin = make_user("admin@sim.test", client=False, admin=True)
    for i in range(2):
        user = make_user(f"client{i}@sim.test")
        world.clients.append((user, make_key(user)[1]))
        owner = make_user(f"owner{i}@sim.test", client=False, host=True)
        world.hosts.append(make_host(owner, [MODEL], api_base=engines[i].api_base, name=f"rig{i}").id)
        world.owners.append(owner)
        ledger.account_id("host", owner)  # so that its check runs from the first step
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == MODEL))
    model.floor_input_price = model.floor_output_price = 0
    model.reference_input_price = model.reference_output_price = usd("250000")
    model.ceiling_input_price = model.ceiling_output_price = usd("200000")
    # Dear tokens ($0.10 an output token): a few requests use up a top-up and make an owner's payout due.
    model.input_price, model.output_price = usd("5000"), usd("100000")
    db.session.commit()
    refresh_routes()
    for owner in world.owners:  # connect both owners' Express accounts; the first also sets a low threshold
        connect.onboarding_link(owner, refresh_url="http://sim.test/r", return_url="http://sim.test/done")
        standin.onboard(connect.payout_account(owner).stripe_account_id)
        connect.refresh_account(owner)
    connect.set_threshold(world.owners[0], 1)
    connect.set_threshold(world.owners[1], 3)
    for user, _ in world.clients:  # each client starts with a card top-up that has landed
        session_id = start(user, 20)
        world.sessions.append((session_id, user))
        standin.pay(session_id)
    collect(world)
    while world.pending:
        deliver(world, world.pending[0], keep=False)
    return world


def collect(world: World) -> None:
    """Pick up the events the stand-in sent since the last look: they are now on their way."""
    events = world.standin.events[world.seen:]
    world.seen = len(world.standin.events)
    world.pending.extend(events)


def deliver(world: World, event: dict, *, keep: bool) -> None:
    standin = world.standin
    if "account" in event:
        status = standin.deliver(event, url=standin.connect_webhook_url, secret=standin.connect_webhook_secret)
    else:
        status = standin.deliver(event)
    assert status == 200, f"webhook answered {status} to {event['type']}"
    if not keep:
        world.pending.remove(event)


def paid_sessions(world: World, *, disputable: bool = False) -> list[str]:
    charges = world.standin.charges
    result = []
    for session_id, _ in world.sessions:
        charge_id = world.standin.sessions[session_id].get("_charge")
        if charge_id is None:
            continue
        charge = charges[charge_id]
        if charge["disputed"]:
            continue
        left = charge["amount"] - charge["amount_refunded"]
        if left > 0 and (not disputable or not any(d["charge"] == charge_id for d in world.standin.disputes.values())):
            result.append(session_id)
    return result


def top_up(world: World) -> str:
    user, _ = world.pick(world.clients)
    session_id = start(user, world.rng.choice([5, 5, 20]))
    world.sessions.append((session_id, user))
    if world.rng.random() < 0.25:
        world.standin.pay(session_id, asynchronous=True)
        return f"top-up {session_id} by bank transfer (unpaid)"
    world.standin.pay(session_id)
    return f"top-up {session_id} paid by card"


def settle(world: World) -> str:
    waiting = [s for s, _ in world.sessions if world.standin.sessions[s]["payment_status"] == "unpaid"
               and world.standin.sessions[s]["status"] == "complete"
               and not world.standin.sessions[s].get("_settled")]
    session_id = world.pick(waiting)
    if session_id is None:
        return "no bank transfer to settle"
    succeeded = world.rng.random() < 0.7
    world.standin.sessions[session_id]["_settled"] = True
    world.standin.settle(session_id, succeeded=succeeded)
    return f"bank transfer {session_id} {'succeeded' if succeeded else 'failed'}"


def request(world: World) -> str:
    _, secret = world.pick(world.clients)
    kind = world.rng.choice(["whole", "whole", "stream", "client cut", "repriced"])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": world.rng.randint(1, 12)}
    headers = {"Authorization": f"Bearer {secret}"}
    if kind == "whole":
        response = world.http.post("/v1/chat/completions", json=body, headers=headers)
        # 503: every host is quarantined.
        assert response.status_code in (200, 402, 502, 503), response.get_data(as_text=True)
        return f"request ({response.status_code})"
    body["stream"] = True
    response = world.http.post("/v1/chat/completions", json=body, headers=headers, buffered=False)
    if response.status_code != 200:
        response.close()
        return f"stream refused ({response.status_code})"
    chunks = iter(response.response)
    next(chunks, None)
    before = None
    if kind == "repriced":  # the pricing job moves the price while this stream runs
        model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == MODEL))
        before = (model.input_price, model.output_price)
        model.output_price = world.rng.choice([usd("50000"), usd("150000"), usd("99999")])
        db.session.commit()
        refresh_routes()
    if kind != "client cut":
        for _ in chunks:
            pass
    response.close()
    if before is not None:
        row = db.session.scalars(select(UsageRecord).order_by(UsageRecord.created_at.desc()).limit(1)).first()
        assert (row.input_price, row.output_price) == before, "a request was charged at a price quoted after admission"
    return f"stream ({kind})"


def router_dies(world: World) -> str:
    """A router process admitted a request and died before settling it: its hold waits for the sweeper."""
    user, secret = world.pick(world.clients)
    key_id = db.session.execute(text("SELECT id FROM api_keys WHERE user_id = :u"), {"u": user.id}).scalar_one()
    world.dead_routers += 1
    granted = db.session.execute(text("SELECT granted FROM gs_hold(:r, :u, :k, 100, :p, 8, 64, 60)"), {
        "r": f"sim-dead-router-{world.dead_routers}", "u": user.id, "k": key_id, "p": usd("100000")}).scalar_one()
    db.session.commit()
    return f"a router died holding credit for {user.email} (granted {granted})"


def take_back(world: World, kind: str) -> str:
    """A refund by the merchant or a dispute by the cardholder, of part of what is left of a paid charge."""
    session_id = world.pick(paid_sessions(world, disputable=kind == "dispute"))
    if session_id is None:
        return f"nothing to {kind}"
    charge = world.standin.charges[world.standin.sessions[session_id]["_charge"]]
    cents = world.rng.randint(1, charge["amount"] - charge["amount_refunded"])
    getattr(world.standin, kind)(session_id, cents)
    return f"{kind} {cents} cents of {session_id}"


def refund(world: World) -> str:
    return take_back(world, "refund")


def dispute(world: World) -> str:
    return take_back(world, "dispute")


def win_dispute(world: World) -> str:
    open_disputes = [d for d in world.standin.disputes.values() if d["status"] != "won"]
    found = world.pick(open_disputes)
    if found is None:
        return "no dispute to win"
    world.standin.win_dispute(found["id"])
    return f"dispute {found['id']} won"


def webhook(world: World) -> str:
    event = world.pick(world.pending)
    if event is None:
        return "no event on its way"
    keep = world.rng.random() < 0.3  # Stripe will send it again
    deliver(world, event, keep=keep)
    return f"delivered {event['type']} {event['id']}" + (" (it will come again)" if keep else "")


def payout_run(world: World) -> str:
    standin, rng = world.standin, world.rng
    standin.balance = rng.choice([None, None, None, 0, 300])
    fault = rng.choice([None, None, "after the transfer", "before the transfer"])
    real_transfer = payouts.transfer

    def transfer_then_die(client, payout):
        real_transfer(client, payout)
        raise WorkerKilled

    def die_before(client, payout):
        raise WorkerKilled

    if fault == "after the transfer":
        payouts.transfer = transfer_then_die
    elif fault == "before the transfer":
        payouts.transfer = die_before
    try:
        outcome = payout_job.pay_hosts()
    except WorkerKilled:
        db.session.rollback()
        outcome = f"worker killed {fault}"
    finally:
        payouts.transfer = real_transfer
    return f"payout run, platform balance {standin.balance}: {outcome}"


def reverse(world: World) -> str:
    live = [t for t in world.standin.transfers.values() if t["amount_reversed"] < t["amount"]]
    found = world.pick(live)
    if found is None:
        return "no transfer to reverse"
    cents = world.rng.randint(1, found["amount"] - found["amount_reversed"])
    world.standin.reverse_transfer(found["id"], cents)
    return f"reversed {cents} cents of {found['id']}"


def clock(world: World) -> str:
    """Time passes: every stored deadline moves closer; Stripe may forget its idempotency keys."""
    minutes = world.rng.choice([1, 10, 90, 60 * 25])
    advance(minutes)
    ledger.void_expired_holds()
    if minutes > 60 * 24:
        world.standin.forget_keys()
    return f"{minutes} minutes pass"


def advance(minutes: int) -> None:
    shift = {"m": minutes}
    db.session.execute(text("UPDATE payouts SET next_attempt_at = next_attempt_at - make_interval(mins => :m), "
                            "created_at = created_at - make_interval(mins => :m)"), shift)
    db.session.execute(text("UPDATE holds SET expires_at = expires_at - make_interval(mins => :m) "
                            "WHERE status = 'held'"), shift)
    db.session.execute(text("UPDATE payout_accounts SET failures_cleared_at = "
                            "failures_cleared_at - make_interval(mins => :m)"), shift)
    db.session.commit()


STEP_WEIGHTS = {top_up: 3, settle: 1, request: 9, router_dies: 1, refund: 2, dispute: 1, win_dispute: 1,
                webhook: 8, payout_run: 4, reverse: 2, clock: 2, check_passed: 1, quarantine: 1, claw_back: 3,
                release: 1}


def micro(cents: int) -> int:
    return cents * CENT


def check(world: World) -> None:
    """What must hold after every step, however far the webhooks lag."""
    db.session.rollback()
    assert ledger.invariants() == []
    standin = world.standin
    by_payout: dict[str, list[dict]] = {}
    for transfer in standin.transfers.values():
        by_payout.setdefault(transfer["metadata"]["payout_id"], []).append(transfer)
    assert all(len(found) == 1 for found in by_payout.values()), f"a payout was transferred twice: {by_payout}"
    for payout in db.session.scalars(select(Payout).execution_options(populate_existing=True)):
        sent = by_payout.get(str(payout.id))
        if payout.status == "failed":
            assert not sent, f"payout {payout.id} is marked failed but Stripe made its transfer"
        if payout.status == "paid":
            assert sent and sent[0]["id"] == payout.stripe_transfer_id and micro(sent[0]["amount"]) == payout.amount
            assert payout.reversed <= micro(sent[0]["amount_reversed"])
    # What each client has (spendable plus owed) is what it paid, less what was taken back, less its usage (but for
    # what a claw-back refunded).
    for email, has, bought, used in db.session.execute(text("""
            SELECT u.email,
                   (SELECT coalesce(sum(a.balance), 0) FROM ledger_accounts a
                     WHERE a.user_id = u.id AND a.kind IN ('client', 'receivable')),
                   (SELECT coalesce(sum(p.amount - p.refunded - p.disputed), 0) FROM purchases p
                     WHERE p.user_id = u.id AND p.status = 'paid'),
                   (SELECT coalesce(sum(r.cost), 0) FROM usage_records r WHERE r.user_id = u.id
                     AND NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.id = 'clawback:' || r.request_id))
            FROM users u WHERE u.id = ANY(:ids)"""), {"ids": [user.id for user, _ in world.clients]}):
        assert has == bought - used, f"{email} has {has}, paid {bought} and used {used}"
    for row in db.session.scalars(select(UsageRecord)):
        assert 0 <= row.cost <= row.held
        owed = cost_of(row.prompt_tokens, row.completion_tokens, row.input_price, row.output_price)
        if row.status != "ok" and not row.completion_tokens:
            owed = 0  # nothing delivered, nothing owed
        assert row.cost == min(owed, row.held), f"request {row.request_id} ({row.status}) cost {row.cost}"
    # What each owner earned is on its host account, on its way, or paid (less what Stripe took back).
    for email, has, moving, paid, earned in db.session.execute(text("""
            SELECT u.email, a.balance,
                   (SELECT coalesce(sum(p.amount), 0) FROM payouts p
                     WHERE p.user_id = u.id AND p.status IN ('pending', 'needs_attention')),
                   (SELECT coalesce(sum(p.amount - p.reversed), 0) FROM payouts p
                     WHERE p.user_id = u.id AND p.status = 'paid'),
                   (SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e
                     JOIN ledger_transfers t ON t.id = e.transfer_id WHERE e.account_id = a.id AND t.kind <> 'payout')
            FROM users u JOIN ledger_accounts a ON a.user_id = u.id AND a.kind = 'host'
            WHERE u.id = ANY(:ids)"""), {"ids": [owner.id for owner in world.owners]}):
        assert has + moving + paid == earned, f"{email}'s earnings drifted: {has} + {moving} + {paid} != {earned}"
    db.session.rollback()


def drain(world: World, max_attempts: int) -> None:
    """Every quarantine is decided (released), Stripe delivers everything (some twice), time passes, jobs run until
    there is nothing left to do."""
    release_all(world)
    world.standin.balance = None
    for step in range(200):
        collect(world)
        if not world.pending:
            break
        deliver(world, world.pending[0], keep=False)
    assert not world.pending, "events kept coming"
    for _ in range(max_attempts + 3):
        advance(60 * 25)
        ledger.void_expired_holds()
        payout_job.pay_hosts()
        collect(world)
        for event in list(world.pending):
            deliver(world, event, keep=False)
    for owner in world.owners:
        payouts.resume_owner(None, owner.id)
    payout_job.pay_hosts()
    check(world)


def check_final(world: World) -> None:
    """With every event delivered, the ledger and Stripe agree to the cent."""
    standin = world.standin
    for session_id, user in world.sessions:
        session = standin.sessions[session_id]
        purchase = db.session.scalar(select(Purchase).where(Purchase.session_id == session_id)
                                     .execution_options(populate_existing=True))
        if session["payment_status"] != "paid":
            assert purchase.status != "paid", f"{session_id} was credited without being paid"
            continue
        charge = standin.charges[session["_charge"]]
        lost = sum(d["amount"] for d in standin.disputes.values() if d["charge"] == charge["id"]
                   and d["status"] != "won")
        assert (purchase.status, purchase.amount, purchase.refunded, purchase.disputed) == (
            "paid", micro(charge["amount"]), micro(charge["amount_refunded"]), micro(lost)), session_id
    for transfer in standin.transfers.values():
        payout = db.session.get(Payout, int(transfer["metadata"]["payout_id"]), populate_existing=True)
        assert payout.status == "paid" and payout.reversed == micro(transfer["amount_reversed"])
    assert db.session.scalar(select(func.count()).select_from(Payout).where(Payout.status.in_(payouts.OPEN))) == 0
    assert db.session.scalar(text("SELECT count(*) FROM holds WHERE status = 'held'")) == 0
    # The ledger's Stripe account mirrors Stripe's money: kept from charges, less what left as transfers.
    kept = sum(c["amount"] - c["amount_refunded"] for c in standin.charges.values()) - sum(
        d["amount"] for d in standin.disputes.values() if d["status"] != "won")
    sent = sum(t["amount"] - t["amount_reversed"] for t in standin.transfers.values())
    assert ledger.account("stripe").balance == micro(sent - kept)
    # Every owner whose earnings reached the threshold was paid.
    for owner in world.owners:
        account = connect.payout_account(owner)
        assert ledger.account("host", owner).available < (account.threshold or payouts.default_threshold())
    db.session.rollback()
