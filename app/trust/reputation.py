"""Reputation: how well each host serves, against the other hosts of its model, and verified <-> degraded.

Over the last ``WINDOW_DAYS``:

- **uptime**: the requests it answered over those it answered or failed (the host's failures, not the clients'
  mistakes or a router's), counted only once it has served ``REPUTATION_MIN_REQUESTS``;
- **verification**: the share of its conclusive checks that passed;
- **latency** (median time to first token) and **throughput** (median tokens per second of a request) beside the
  median of the model's hosts.

A verified host whose uptime falls below ``REPUTATION_DEGRADED_UPTIME_BPS``, or whose throughput is below a third
of its model's median, is degraded to a fallback; it is verified again once neither holds. Quarantine and staging
are verification's, not reputation's: this never moves a host into or out of them.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from sqlalchemy import text

from ..extensions import db
from . import set_state

WINDOW_DAYS = 7
SLOW_SHARE = 1 / 3  # of the model's median throughput
MIN_FOR_MEDIAN = 20  # requests a host serves before its medians count

HOSTS_SQL = text("""
    WITH served AS (
        SELECT u.host_id, u.model_id, u.status, u.http_status, u.ttft_ms,
               CASE WHEN u.status = 'ok' AND u.completion_tokens >= 8 AND u.latency_ms > 0
                    THEN u.completion_tokens * 1000.0 / u.latency_ms END AS tokens_per_second
        FROM usage_records u
        WHERE u.host_id IS NOT NULL AND u.created_at > now() - make_interval(days => :days)
    ), per_host AS (
        SELECT host_id, model_id,
               count(*) FILTER (WHERE status = 'ok') AS answered,
               count(*) FILTER (WHERE status IN ('host_failed', 'timed_out')
                                OR (status = 'failed' AND http_status IN (502, 504))) AS failed,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE status = 'ok') AS ttft_ms,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY tokens_per_second) AS tokens_per_second,
               count(tokens_per_second) AS timed
        FROM served GROUP BY host_id, model_id
    ), medians AS (
        SELECT model_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_ms,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY tokens_per_second) AS tokens_per_second,
               count(*) AS hosts
        FROM per_host WHERE timed >= :min_for_median GROUP BY model_id
    ), verification AS (
        SELECT host_id, count(*) FILTER (WHERE outcome = 'passed') AS passed,
               count(*) FILTER (WHERE outcome = 'failed') AS failed
        FROM verification_checks
        WHERE kind IN ('canary', 'traffic') AND created_at > now() - make_interval(days => :days)
        GROUP BY host_id
    )
    SELECT h.id AS host_id, h.trust_state, coalesce(p.answered, 0) AS answered, coalesce(p.failed, 0) AS failed,
           p.ttft_ms, p.tokens_per_second, coalesce(p.timed, 0) AS timed, m.ttft_ms AS model_ttft_ms,
           m.tokens_per_second AS model_tokens_per_second, coalesce(m.hosts, 0) AS model_hosts,
           coalesce(v.passed, 0) AS checks_passed, coalesce(v.failed, 0) AS checks_failed
    FROM hosts h
    LEFT JOIN LATERAL (SELECT * FROM per_host WHERE per_host.host_id = h.id
                       ORDER BY answered DESC LIMIT 1) p ON true
    LEFT JOIN medians m ON m.model_id = p.model_id
    LEFT JOIN verification v ON v.host_id = h.id
    WHERE h.id = ANY(:hosts)
""")


@dataclass(frozen=True)
class Reputation:
    host_id: int
    trust_state: str
    answered: int
    failed: int
    checks_passed: int
    checks_failed: int
    ttft_ms: float | None
    tokens_per_second: float | None
    timed: int
    model_ttft_ms: float | None
    model_tokens_per_second: float | None
    model_hosts: int
    min_requests: int

    @property
    def uptime(self) -> float | None:
        """Answered over answered and failed, once the host has served enough to say; None before."""
        counted = self.answered + self.failed
        return self.answered / counted if counted >= self.min_requests else None

    @property
    def pass_rate(self) -> float | None:
        checked = self.checks_passed + self.checks_failed
        return self.checks_passed / checked if checked else None

    @property
    def slow(self) -> bool:
        """Far below its model's median throughput (with at least two hosts to compare)."""
        return (self.model_hosts >= 2 and self.timed >= MIN_FOR_MEDIAN and self.tokens_per_second is not None
                and self.model_tokens_per_second is not None
                and self.tokens_per_second < SLOW_SHARE * self.model_tokens_per_second)

    def degraded_because(self, min_uptime: float) -> str | None:
        if self.uptime is not None and self.uptime < min_uptime:
            return (f"uptime {self.uptime:.1%} over its last {self.answered + self.failed} requests, below "
                    f"{min_uptime:.0%}")
        if self.slow:
            return (f"{self.tokens_per_second:.1f} tokens/s per request, under a third of its model's median "
                    f"({self.model_tokens_per_second:.1f})")
        return None


def reputations(host_ids: list[int]) -> dict[int, Reputation]:
    if not host_ids:
        return {}
    minimum = current_app.config["REPUTATION_MIN_REQUESTS"]
    rows = db.session.execute(HOSTS_SQL, {"hosts": host_ids, "days": WINDOW_DAYS, "min_for_median": MIN_FOR_MEDIAN})
    return {row.host_id: Reputation(**row._asdict(), min_requests=minimum) for row in rows}


def update_states() -> dict[str, int]:
    """Degrade verified hosts that serve poorly, and restore degraded ones that recovered."""
    ids = db.session.scalars(text("SELECT id FROM hosts WHERE trust_state IN ('verified', 'degraded') "
                                  "AND NOT reference")).all()
    min_uptime = current_app.config["REPUTATION_DEGRADED_UPTIME_BPS"] / 10_000
    moved = {"degraded": 0, "verified": 0}
    for reputation in reputations(list(ids)).values():
        why = reputation.degraded_because(min_uptime)
        if why and reputation.trust_state == "verified":
            moved["degraded"] += set_state(reputation.host_id, "degraded", why, old=("verified",))
        elif not why and reputation.trust_state == "degraded":
            moved["verified"] += set_state(reputation.host_id, "verified", "its reputation recovered",
                                           old=("degraded",))
    db.session.commit()
    return moved
