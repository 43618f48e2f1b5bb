"""What the Trust pages show: the fleet's states and reputations, one host's checks with their evidence, what
verification costs, and each model's calibration."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, text

from ..extensions import db
from ..hosts import schedule
from ..models import Calibration, Host, HostBenchmark, User, VerificationCheck, utcnow
from ..proxy.routing import SERVING_HOSTS
from . import STATE_WORDS, checks, reputation, verifier

RECENT_CHECKS = 50
RECENT_BENCHMARKS = 5


@dataclass
class HostTrust:
    host: Host
    reputation: reputation.Reputation | None
    checks: list[VerificationCheck]
    benchmarks: list[HostBenchmark]
    calibration: Calibration | None

    @property
    def words(self) -> str:
        return "reference engine: checks the others" if self.host.reference else STATE_WORDS[self.host.trust_state]

    @property
    def last_check(self) -> VerificationCheck | None:
        return self.checks[0] if self.checks else None


def for_hosts(hosts: list[Host], *, recent: int = RECENT_CHECKS) -> dict[int, HostTrust]:
    """Each host's trust, reputation, latest checks and benchmarks."""
    ids = [host.id for host in hosts]
    reputations = reputation.reputations(ids)
    found = {}
    for host in hosts:
        rows = db.session.scalars(select(VerificationCheck).where(VerificationCheck.host_id == host.id)
                                  .order_by(VerificationCheck.created_at.desc(), VerificationCheck.id.desc())
                                  .limit(recent)).all()
        benchmarks = db.session.scalars(select(HostBenchmark).where(HostBenchmark.host_id == host.id)
                                        .order_by(HostBenchmark.created_at.desc(), HostBenchmark.id.desc())
                                        .limit(RECENT_BENCHMARKS)).all()
        model = verifier.chat_model(host)
        found[host.id] = HostTrust(host, reputations.get(host.id), list(rows), list(benchmarks),
                                   checks.current_calibration(model.id) if model else None)
    return found


def fleet() -> tuple[list[Host], dict[int, HostTrust]]:
    """Approved hosts, quarantined first (they wait for an admin), then staged, degraded, verified, references."""
    order = {"quarantined": 0, "staged": 1, "degraded": 2, "verified": 3}
    hosts = db.session.scalars(select(Host).where(Host.status.in_(("approved", "suspended")))).all()
    hosts = sorted(hosts, key=lambda h: (h.reference, order[h.trust_state], h.id))
    return hosts, for_hosts(hosts, recent=1)


def state_counts() -> dict[str, int]:
    rows = dict(db.session.execute(select(Host.trust_state, func.count()).where(Host.status == "approved",
                                                                                ~Host.reference)
                                   .group_by(Host.trust_state)).all())
    return {state: rows.get(state, 0) for state in Host.TRUST_STATES}


COST_SQL = text("""
    SELECT
      (SELECT coalesce(sum(u.prompt_tokens + u.completion_tokens), 0) FROM usage_records u
        WHERE u.created_at > :since AND u.status = 'ok' AND u.user_id IS DISTINCT FROM :verifier) AS served,
      (SELECT coalesce(sum(c.cost_tokens), 0) FROM verification_checks c
        WHERE c.created_at > :since AND c.kind IN ('canary', 'traffic')) AS spent,
      (SELECT count(*) FILTER (WHERE c.outcome = 'passed') FROM verification_checks c
        WHERE c.created_at > :since AND c.kind IN ('canary', 'traffic')) AS passed,
      (SELECT count(*) FILTER (WHERE c.outcome = 'failed') FROM verification_checks c
        WHERE c.created_at > :since AND c.kind IN ('canary', 'traffic')) AS failed,
      (SELECT count(*) FILTER (WHERE c.outcome = 'inconclusive') FROM verification_checks c
        WHERE c.created_at > :since AND c.kind IN ('canary', 'traffic')) AS inconclusive
""")


@dataclass
class Cost:
    served: int  # client tokens served (the verifier's own requests aside)
    spent: int  # tokens checks spent: canaries on hosts and the reference's passes
    passed: int
    failed: int
    inconclusive: int
    spend: int  # micro-USD the verifier's canaries and benchmarks were charged, in all

    @property
    def share(self) -> float | None:
        return self.spent / self.served if self.served else None


def cost(hours: int = 24) -> Cost:
    """What verification spent over the last ``hours`` against what clients were served."""
    found = db.session.scalar(select(User.id).where(User.email == verifier.VERIFIER_EMAIL))
    row = db.session.execute(COST_SQL, {"since": utcnow() - timedelta(hours=hours), "verifier": found}).one()
    return Cost(row.served, row.spent, row.passed, row.failed, row.inconclusive, verifier.spent())


def evidence_chart(check: VerificationCheck) -> dict:
    """The check's per-token evidence as the chart macro takes it: the reference's best log-probability at each
    position, and that of the token the host chose."""
    tokens = (check.evidence or {}).get("tokens") or []
    return {"x": list(range(1, len(tokens) + 1)),
            "series": [{"label": "reference's best token", "unit": "logprob", "values": [t["best"] for t in tokens]},
                       {"label": "host's token", "unit": "logprob", "values": [t["host"] for t in tokens]}]}


VERIFIED_SQL = text(f"""
    SELECT hm.model_id, h.schedule, h.timezone,
           (SELECT b.results -> -1 ->> 'tokens_per_second' FROM host_benchmarks b
            WHERE b.host_id = h.id AND b.passed ORDER BY b.created_at DESC LIMIT 1) AS tokens_per_second
    {SERVING_HOSTS} AND h.trust_state = 'verified'
""")


@dataclass
class Capacity:
    hosts: int = 0
    tokens_per_second: float = 0.0  # their benchmarked throughput at full concurrency, summed


def verified_capacity() -> dict[int, Capacity]:
    """Model id -> the verified hosts serving it now (degraded fallbacks, staged and quarantined hosts aside)."""
    found: dict[int, Capacity] = {}
    now = utcnow()
    for model_id, windows, tz, tokens_per_second in db.session.execute(VERIFIED_SQL):
        try:
            if not schedule.in_schedule(windows, tz, now):
                continue
        except Exception:  # a schedule that cannot be read is never inside (hosts.in_schedule)
            continue
        capacity = found.setdefault(model_id, Capacity())
        capacity.hosts += 1
        capacity.tokens_per_second += float(tokens_per_second or 0)
    return found
