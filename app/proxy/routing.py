"""Which host serves a request: approved, enabled, available and healthy hosts that offer the model,
inside their weekly schedule, that verification trusts (``app.trust``): verified hosts first, degraded ones only
as a fallback when no verified one can take the request. Staged, quarantined and reference hosts get no client
traffic.

Each router process keeps the routing table in memory and reloads it from
PostgreSQL every ``ROUTING_REFRESH_SECONDS``. Round-robin is per process;
least-outstanding counts in-flight requests per host in Redis, shared by all
router processes (without Redis, it falls back to round-robin).

The table survives bad data and outages: a host row that cannot be read (a
heartbeat's nonsense, say) is skipped and logged while the other hosts keep
serving, and while PostgreSQL is away the last table read stays in use.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..hosts import schedule
from ..shared import quietly

log = logging.getLogger(__name__)

# After a failed reload, the next try waits this long (the old table stays in use meanwhile).
RETRY_SECONDS = 1.0

# The hosts that may take requests for a model (``hm``) now, before their weekly schedules; the pricing job
# counts supply over the same hosts.
# ``hosts.serving(host)`` in SQL, for speed: the schedule is checked in Python on each row (``load``).
# tests/hosts/test_serving.py holds the two to each other over every combination of their inputs.
SERVING_HOSTS = """
    FROM host_models hm JOIN hosts h ON h.id = hm.host_id
    WHERE hm.enabled AND h.status = 'approved' AND h.enabled AND h.available AND h.healthy
      AND h.api_base IS NOT NULL AND NOT h.reference AND h.trust_state IN ('verified', 'degraded')
"""

# A host's engine may run with a shorter context than the catalog's (vLLM's --max-model-len); its heartbeat says.
# It comes as JSON and is read in Python, row by row: one host's nonsense must not fail the query for all.
ROUTES_SQL = text(f"""
    SELECT hm.model_id, h.id, h.owner_id, h.api_base, h.schedule, h.timezone,
           h.heartbeat -> 'max_model_len' AS max_model_len, h.trust_state = 'degraded' AS fallback
    {SERVING_HOSTS}
    ORDER BY h.id
""")
MAX_CONTEXT = 2**31 - 1

MODELS_SQL = text("""
    SELECT id, hf_id, context_length, input_price, output_price, reference_input_price, reference_output_price,
           enabled, created_at, tool_call_parser, kind FROM models
""")


@dataclass(frozen=True)
class Route:
    host_id: int
    owner_id: int
    api_base: str
    max_model_len: int | None = None  # None: the catalog's context length
    fallback: bool = False  # degraded: tried only after every verified host

    def fits(self, tokens: int) -> bool:
        return self.max_model_len is None or tokens <= self.max_model_len


@dataclass(frozen=True)
class Offer:
    """A catalog model as the request path sees it, with the price quoted now."""

    id: int
    hf_id: str
    context_length: int
    input_price: int
    output_price: int
    reference_input_price: int  # the closed-model prices it undercuts
    reference_output_price: int
    enabled: bool
    created: int
    tools: bool = False  # its hosts call tools (the catalog names its tool-call parser)
    kind: str = "chat"  # or "embedding"


class RoutingUnavailable(Exception):
    """No routing table could be read yet (PostgreSQL is away since this process started)."""


def heartbeat_context(value) -> int | None:
    """A heartbeat's ``max_model_len``: a whole number of tokens, or None (the catalog's length)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= MAX_CONTEXT:
        return None
    return int(value)


class RoutingTable:
    def __init__(self, engine: Engine, cache: redis.Redis, refresh_seconds: float, strategy: str):
        self._engine, self._cache = engine, cache
        self._refresh_seconds, self._strategy = refresh_seconds, strategy
        self._loaded_at = 0.0
        self._routes: dict[int, list[Route]] = {}
        self._models: dict[str, Offer] = {}
        self._turns: dict[tuple[int, bool], itertools.count] = {}  # (model id, fallback) -> round-robin turns
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._refresh_seconds:
            return
        with self._lock:
            if time.monotonic() - self._loaded_at < self._refresh_seconds:
                return
            try:
                self._models, self._routes = self._read()
            except SQLAlchemyError as error:
                # Keep the table we have and try again shortly; without one yet, the request cannot be routed.
                log.warning("the routing table could not be reloaded: %s", type(error).__name__)
                if not self._models:
                    self._loaded_at = 0.0
                    raise RoutingUnavailable() from None
                self._loaded_at = time.monotonic() - self._refresh_seconds + RETRY_SECONDS
                return
            self._loaded_at = time.monotonic()

    def _read(self) -> tuple[dict[str, Offer], dict[int, list[Route]]]:
        with self._engine.connect() as conn:
            models = {row.hf_id: Offer(row.id, row.hf_id, row.context_length, row.input_price, row.output_price,
                                       row.reference_input_price, row.reference_output_price, row.enabled,
                                       int(row.created_at.timestamp()), row.tool_call_parser is not None,
                                       row.kind)
                      for row in conn.execute(MODELS_SQL)}
            rows = conn.execute(ROUTES_SQL).all()
        routes: dict[int, list[Route]] = {}
        now = datetime.now(timezone.utc)
        for model_id, host_id, owner_id, api_base, windows, tz, max_len, fallback in rows:
            try:
                if schedule.in_schedule(windows, tz, now):
                    routes.setdefault(model_id, []).append(Route(host_id, owner_id, api_base.rstrip("/"),
                                                                 heartbeat_context(max_len), fallback))
            except Exception:  # one host's bad data must not stop the others from serving
                log.exception("host %s skipped in the routing table: its schedule or settings cannot be read",
                              host_id)
        return models, routes

    def invalidate(self) -> None:
        self._loaded_at = 0.0

    def model(self, hf_id: str) -> Offer | None:
        self._refresh()
        offer = self._models.get(hf_id)
        return offer if offer is not None and offer.enabled else None

    def served_models(self) -> list[Offer]:
        """Enabled models with at least one verified host serving now, in catalog order."""
        self._refresh()
        return sorted((m for m in self._models.values()
                       if m.enabled and any(not route.fallback for route in self._routes.get(m.id, ()))),
                      key=lambda m: m.id)

    def candidates(self, model: Offer, tokens: int = 0, sticky: str | None = None) -> list[Route]:
        """Hosts to try, best first, among those whose context holds ``tokens`` (prompt and completion).

        With a ``sticky`` key (a client's ``prompt_cache_key`` or user id), the same key ranks the hosts the same
        way every time (rendezvous hashing): its requests go to one host while that host serves, so the host's
        prefix cache is reused, and only the keys of a host that leaves move."""
        self._refresh()
        routes = [route for route in self._routes.get(model.id, []) if route.fits(tokens)]
        verified = [route for route in routes if not route.fallback]
        fallbacks = [route for route in routes if route.fallback]
        return self._ranked((model.id, False), verified, sticky) + self._ranked((model.id, True), fallbacks, sticky)

    def _ranked(self, turns: tuple[int, bool], routes: list[Route], sticky: str | None) -> list[Route]:
        if len(routes) < 2:
            return list(routes)
        if sticky is not None:
            return sorted(routes, key=lambda r: hashlib.blake2b(f"{r.host_id}:{sticky}".encode(),
                                                                digest_size=8).digest(), reverse=True)
        if self._strategy == "least_outstanding":
            loads = quietly(lambda: self._cache.mget([f"inflight:{r.host_id}" for r in routes]), None,
                            "least-outstanding routing")
            if loads is not None:
                ranked = sorted((int(load or 0), i) for i, load in enumerate(loads))
                return [routes[i] for _, i in ranked]
        turn = next(self._turns.setdefault(turns, itertools.count())) % len(routes)
        return routes[turn:] + routes[:turn]

    def longest_context(self, model: Offer) -> int | None:
        """The most tokens a serving host takes for ``model`` (the catalog's length when one has no limit);
        None when no host serves it."""
        self._refresh()
        routes = self._routes.get(model.id, [])
        if not routes:
            return None
        return max(route.max_model_len or model.context_length for route in routes)

    def in_flight(self, route: Route) -> InFlight:
        """``with table.in_flight(route):`` this request holds the host (see ``InFlight``)."""
        return InFlight(self, route)

    def _started(self, route: Route) -> None:
        if self._strategy == "least_outstanding":
            quietly(lambda: self._cache.incr(f"inflight:{route.host_id}"), None, "least-outstanding routing")

    def _finished(self, route: Route) -> None:
        if self._strategy == "least_outstanding":
            quietly(lambda: self._cache.decr(f"inflight:{route.host_id}"), None, "least-outstanding routing")


class InFlight:
    """A request holding a host: counted among the host's requests in flight (what least-outstanding routing
    reads) from ``with`` until released, exactly once. A stream outlives the ``with``: it takes the hold over
    (``hand_over``) and releases it when it ends."""

    def __init__(self, table: RoutingTable, route: Route):
        self._table, self.route = table, route
        self._handed_over = self._released = False

    def __enter__(self) -> InFlight:
        self._table._started(self.route)
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._handed_over:
            self.release()

    def hand_over(self) -> InFlight:
        self._handed_over = True
        return self

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._table._finished(self.route)
