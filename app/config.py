"""Configuration read from the environment through typed parsers.

Every setting comes from an environment variable (secrets may come from
``NAME_FILE`` instead). A bad value raises :class:`ConfigError` with a
one-line reason, and production refuses to boot without a real secret and
real database and Redis URLs.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Mapping

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
ENVIRONMENTS = {"development", "production", "test"}
MIN_SECRET_LENGTH = 32
WIREGUARD_OVERLAY_NETWORK = "10.77.0.0/16"
LOOPBACK_OVERLAY_NETWORK = "127.77.0.0/16"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line for the operator."""


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    return default if value is None or value == "" else value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, not {number}")
    return number


def env_secret(env: Mapping[str, str], name: str) -> str | None:
    """``NAME`` itself, or the stripped contents of the file named by ``NAME_FILE``."""
    value = env.get(name)
    path = env.get(f"{name}_FILE")
    if value and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE {path!r} cannot be read: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{name}_FILE {path!r} is empty")
    return value or None


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(env, name, default)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _overlay(env: Mapping[str, str]) -> tuple[str, str]:
    """The overlay's mode and network. Loopback mode (a one-machine demo) keeps every host address on this
    machine: a network outside 127.0.0.0/8 would send the router's traffic for hosts out of the machine."""
    mode = _choice(env, "OVERLAY_MODE", "wireguard", ("wireguard", "loopback"))
    default = LOOPBACK_OVERLAY_NETWORK if mode == "loopback" else WIREGUARD_OVERLAY_NETWORK
    value = env_str(env, "OVERLAY_NETWORK", default)
    try:
        network = ipaddress.ip_network(value)
    except ValueError:
        raise ConfigError(f"OVERLAY_NETWORK must be a network such as {default}, not {value[:60]!r}") from None
    if network.num_addresses < 4:
        raise ConfigError(f"OVERLAY_NETWORK {network} is too small: it needs room for the hub and hosts")
    if mode == "loopback" and not network.is_loopback:
        raise ConfigError(f"OVERLAY_MODE=loopback needs a loopback OVERLAY_NETWORK such as {LOOPBACK_OVERLAY_NETWORK}, "
                          f"not {network}: hosts' addresses must stay on this machine")
    return mode, str(network)


def normalise_database_url(url: str) -> str:
    """SQLAlchemy needs the driver named; operators write plain ``postgresql://``."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith("postgresql+psycopg://"):
        return url
    raise ConfigError("DATABASE_URL must be a postgresql:// URL")


SERVICES_FILE = "services.env"


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (``services.env``, ``demo.env``); no file is no settings."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def _running_services(data_dir: Path) -> dict[str, str]:
    """The URLs of the PostgreSQL and Redis that a ``make run`` on ``data_dir`` runs (it writes them to
    ``services.env`` while it runs), so that a flask command beside it needs no settings."""
    found = read_env_file(data_dir / SERVICES_FILE)
    return {name: found[name] for name in ("DATABASE_URL", "REDIS_URL") if name in found}


def _dev_secret(data_dir: Path) -> str:
    """A per-installation secret kept in the data directory, so sessions survive restarts."""
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def load_config(env: Mapping[str, str] | None = None) -> dict:
    """Build the Flask config mapping from ``env`` (``os.environ`` by default)."""
    env = os.environ if env is None else env
    environment = env_str(env, "GPUSHARE_ENV", "development")
    if environment not in ENVIRONMENTS:
        raise ConfigError(f"GPUSHARE_ENV must be one of {', '.join(sorted(ENVIRONMENTS))}, not {environment!r}")
    production = environment == "production"
    data_dir = Path(env_str(env, "GPUSHARE_DATA_DIR", "instance")).resolve()

    running = {} if production else _running_services(data_dir)
    database_url = env_str(env, "DATABASE_URL") or running.get("DATABASE_URL")
    redis_url = env_str(env, "REDIS_URL") or running.get("REDIS_URL")
    secret_key = env_secret(env, "SECRET_KEY")

    if production:
        if not secret_key:
            raise ConfigError("SECRET_KEY (or SECRET_KEY_FILE) must be set in production")
        if len(secret_key) < MIN_SECRET_LENGTH:
            raise ConfigError(f"SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters in production")
        if not database_url:
            raise ConfigError("DATABASE_URL must point at a real PostgreSQL server in production")
        if not redis_url:
            raise ConfigError("REDIS_URL must point at a real Redis server in production")
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
    overlay_mode, overlay_network = _overlay(env)
    connect_timeout = env_int(env, "UPSTREAM_CONNECT_TIMEOUT", 3, minimum=1, maximum=60)
    first_token_timeout = env_int(env, "UPSTREAM_FIRST_TOKEN_TIMEOUT", 120, minimum=1, maximum=3600)
    request_timeout = env_int(env, "REQUEST_TIMEOUT_SECONDS", 600, minimum=30, maximum=86_400)
    if request_timeout < connect_timeout + first_token_timeout:
        raise ConfigError(f"REQUEST_TIMEOUT_SECONDS ({request_timeout}) must be at least UPSTREAM_CONNECT_TIMEOUT + "
                          f"UPSTREAM_FIRST_TOKEN_TIMEOUT ({connect_timeout + first_token_timeout})")

    return {
        "GPUSHARE_ENV": environment,
        "GPUSHARE_DATA_DIR": str(data_dir),
        "SECRET_KEY": secret_key or _dev_secret(data_dir),
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(database_url) if database_url else None,
        "SQLALCHEMY_ENGINE_OPTIONS": {
            # No ping on checkout: the request path would pay a round trip for it. Dropped connections are
            # recycled, and the request path retries once on a connection that died.
            "pool_recycle": 300,
            "pool_size": env_int(env, "DATABASE_POOL_SIZE", 5, minimum=1, maximum=100),
        },
        "REDIS_URL": redis_url,
        # Connections per process, and how long a request waits for one when all are busy.
        "REDIS_MAX_CONNECTIONS": env_int(env, "REDIS_MAX_CONNECTIONS", 64, minimum=2, maximum=10_000),
        "REDIS_POOL_TIMEOUT": env_int(env, "REDIS_POOL_TIMEOUT", 5, minimum=1, maximum=60),
        "SESSION_COOKIE_SECURE": env_bool(env, "SESSION_COOKIE_SECURE", production),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": env_bool(env, "SESSION_COOKIE_SECURE", production),
        "WTF_CSRF_TIME_LIMIT": None,
        "PREFERRED_URL_SCHEME": "https" if production else "http",
        "PUBLIC_URL": env_str(env, "GPUSHARE_PUBLIC_URL", "http://127.0.0.1:8000"),
        "INVITE_TTL_HOURS": env_int(env, "INVITE_TTL_HOURS", 72, minimum=1, maximum=24 * 90),
        # Web sessions (app/accounts/__init__.py): they end after this long unused, or this long in all.
        "SESSION_IDLE_HOURS": env_int(env, "SESSION_IDLE_HOURS", 12, minimum=1, maximum=24 * 30),
        "SESSION_MAX_DAYS": env_int(env, "SESSION_MAX_DAYS", 30, minimum=1, maximum=365),
        # Failed logins (app/accounts/throttle.py), counted in Redis by every process: after this many for one
        # account, or from one client address, logins there wait until the window has passed.
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": env_int(env, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 5, minimum=1),
        "LOGIN_MAX_FAILURES_PER_ADDRESS": env_int(env, "LOGIN_MAX_FAILURES_PER_ADDRESS", 20, minimum=1),
        "LOGIN_THROTTLE_SECONDS": env_int(env, "LOGIN_THROTTLE_SECONDS", 900, minimum=1, maximum=86_400),
        "API_KEY_CACHE_SECONDS": env_int(env, "API_KEY_CACHE_SECONDS", 60, minimum=1, maximum=3600),
        # How many reverse proxies in front of the app set X-Forwarded-For (audit logs record the real client).
        "PROXY_FIX_HOPS": env_int(env, "PROXY_FIX_HOPS", 0, minimum=0, maximum=5),
        # The request path (see app/proxy).
        "PLATFORM_FEE_BPS": env_int(env, "PLATFORM_FEE_BPS", 2000, minimum=0, maximum=10_000),
        "RATE_LIMIT_REQUESTS_PER_MINUTE": env_int(env, "RATE_LIMIT_REQUESTS_PER_MINUTE", 600, minimum=1),
        "RATE_LIMIT_TOKENS_PER_MINUTE": env_int(env, "RATE_LIMIT_TOKENS_PER_MINUTE", 2_000_000, minimum=1),
        "ROUTING_STRATEGY": _choice(env, "ROUTING_STRATEGY", "round_robin", ("round_robin", "least_outstanding")),
        "ROUTING_MAX_ATTEMPTS": env_int(env, "ROUTING_MAX_ATTEMPTS", 3, minimum=1, maximum=10),
        "ROUTING_REFRESH_SECONDS": env_int(env, "ROUTING_REFRESH_SECONDS", 2, minimum=1, maximum=300),
        "UPSTREAM_CONNECT_TIMEOUT": connect_timeout,
        "UPSTREAM_FIRST_TOKEN_TIMEOUT": first_token_timeout,
        "UPSTREAM_CHUNK_TIMEOUT": env_int(env, "UPSTREAM_CHUNK_TIMEOUT", 30, minimum=1, maximum=600),
        # The longest a request may run, end to end; a stream still going then is ended (what was delivered is
        # charged). A request's hold lasts its deadline and a minute more, so a hold nobody settles goes soon.
        "REQUEST_TIMEOUT_SECONDS": request_timeout,
        # The request journal (app/proxy/journal.py): local to each machine, never shared between machines.
        "USAGE_SPOOL_DIR": str(Path(env_str(env, "USAGE_SPOOL_DIR", str(data_dir / "spool"))).resolve()),
        # The request path's own database connections per process; a request waits this long for a free one.
        "DATABASE_REQUEST_POOL_SIZE": env_int(env, "DATABASE_REQUEST_POOL_SIZE", 10, minimum=1, maximum=200),
        "DATABASE_POOL_TIMEOUT": env_int(env, "DATABASE_POOL_TIMEOUT", 10, minimum=1, maximum=120),
        "MAX_MESSAGES": env_int(env, "MAX_MESSAGES", 1024, minimum=1),
        "MAX_CHOICES": env_int(env, "MAX_CHOICES", 8, minimum=1, maximum=128),
        "TOKENIZERS_DIR": str(Path(env_str(env, "GPUSHARE_TOKENIZERS_DIR", str(data_dir / "tokenizers"))).resolve()),
        "HEALTH_CHECK_SECONDS": env_int(env, "HEALTH_CHECK_SECONDS", 30, minimum=1, maximum=3600),
        "HEALTH_FAILURES_TO_UNHEALTHY": env_int(env, "HEALTH_FAILURES_TO_UNHEALTHY", 2, minimum=1),
        "HEALTH_SUCCESSES_TO_HEALTHY": env_int(env, "HEALTH_SUCCESSES_TO_HEALTHY", 2, minimum=1),
        # Verification (app/trust, jobs/verification.py): the share of client requests whose answers are checked
        # (in basis points), the mean gap between canaries to a host (each gap is drawn between half and one and a
        # half times it; a staged host, or one that just failed a check, is checked sooner), the passes that verify a
        # staged host, the honest canaries a calibration measures, the greedy checks the slow test averages over,
        # how often hardware is benchmarked again, and the verifier's credit line for the canaries it pays for.
        "VERIFY_SAMPLE_BPS": env_int(env, "VERIFY_SAMPLE_BPS", 10, minimum=0, maximum=10_000),
        "VERIFY_CANARY_SECONDS": env_int(env, "VERIFY_CANARY_SECONDS", 60, minimum=1, maximum=86_400),
        "VERIFY_STAGED_CANARY_SECONDS": env_int(env, "VERIFY_STAGED_CANARY_SECONDS", 5, minimum=1, maximum=3600),
        "VERIFY_STAGED_PASSES": env_int(env, "VERIFY_STAGED_PASSES", 3, minimum=1, maximum=100),
        "VERIFY_CALIBRATION_CHECKS": env_int(env, "VERIFY_CALIBRATION_CHECKS", 40, minimum=8, maximum=10_000),
        "VERIFY_WINDOW": env_int(env, "VERIFY_WINDOW", 16, minimum=2, maximum=1000),
        "VERIFY_BENCHMARK_HOURS": env_int(env, "VERIFY_BENCHMARK_HOURS", 24, minimum=1, maximum=24 * 90),
        "VERIFY_CREDIT_USD": env_int(env, "VERIFY_CREDIT_USD", 1000, minimum=1, maximum=1_000_000),
        # Reputation (app/trust/reputation.py): requests a host serves before its uptime counts, and the uptime below
        # which it is degraded to a fallback.
        "REPUTATION_MIN_REQUESTS": env_int(env, "REPUTATION_MIN_REQUESTS", 100, minimum=1),
        "REPUTATION_DEGRADED_UPTIME_BPS": env_int(env, "REPUTATION_DEGRADED_UPTIME_BPS", 8000, minimum=0,
                                                  maximum=10_000),
        # Pricing (app/catalog/pricing.py, jobs/pricing.py): how often prices move, the largest move, and the capacity
        # assumed for a host whose heartbeat has not measured more.
        "PRICING_INTERVAL_SECONDS": env_int(env, "PRICING_INTERVAL_SECONDS", 60, minimum=60, maximum=3600),
        "PRICING_STEP_BPS": env_int(env, "PRICING_STEP_BPS", 500, minimum=0, maximum=5000),
        "PRICING_HOST_TOKENS_PER_SECOND": env_int(env, "PRICING_HOST_TOKENS_PER_SECOND", 20, minimum=1),
        # Hosts and the overlay (see app/hosts/__init__.py, overlay/).
        "OVERLAY_NETWORK": overlay_network,
        # wireguard: the router is a WireGuard hub (``flask overlay-hub``, as root). loopback: for a demo on one
        # machine that cannot make interfaces; hosts get 127.x addresses and no tunnel.
        "OVERLAY_MODE": overlay_mode,
        "OVERLAY_INTERFACE": env_str(env, "OVERLAY_INTERFACE", "gpushare-hub"),
        "OVERLAY_LISTEN_PORT": env_int(env, "OVERLAY_LISTEN_PORT", 51820, minimum=1, maximum=65535),
        # Where hosts reach the hub (host:port); defaults to the public URL's host name and the listening port.
        "OVERLAY_ENDPOINT": env_str(env, "OVERLAY_ENDPOINT", ""),
        "OVERLAY_PRIVATE_KEY_FILE": env_str(env, "OVERLAY_PRIVATE_KEY_FILE", str(data_dir / "overlay" / "hub.key")),
        "OVERLAY_RECONCILE_SECONDS": env_int(env, "OVERLAY_RECONCILE_SECONDS", 30, minimum=1, maximum=3600),
        # Why the overlay is loopback only, when ``make run`` had to choose it (shown on the hosts pages).
        "OVERLAY_NOTE": env_str(env, "OVERLAY_NOTE", ""),
        # Remote diagnostics (app/hosts/diagnostics.py): the router runs `hostkit check --json` on a host over SSH.
        # The platform's ed25519 client key: this file, or one made on first use in the data directory.
        "DIAGNOSTICS_SSH_KEY_FILE": env_str(env, "DIAGNOSTICS_SSH_KEY_FILE", ""),
        "DIAGNOSTICS_SSH_USER": env_str(env, "DIAGNOSTICS_SSH_USER", "root"),
        "DIAGNOSTICS_SSH_PORT": env_int(env, "DIAGNOSTICS_SSH_PORT", 22, minimum=1, maximum=65535),
        "DIAGNOSTICS_CONNECT_TIMEOUT": env_int(env, "DIAGNOSTICS_CONNECT_TIMEOUT", 10, minimum=1, maximum=120),
        "DIAGNOSTICS_TIMEOUT_SECONDS": env_int(env, "DIAGNOSTICS_TIMEOUT_SECONDS", 90, minimum=1, maximum=600),
        # Buying credits (app/money/purchases.py). With no STRIPE_SECRET_KEY payments are off, except that `make run`
        # then starts the local Stripe stand-in (app/dev/stripe_standin) and uses it, unless STRIPE_STANDIN is off.
        "STRIPE_SECRET_KEY": env_secret(env, "STRIPE_SECRET_KEY"),
        "STRIPE_WEBHOOK_SECRET": env_secret(env, "STRIPE_WEBHOOK_SECRET"),
        # The secret being rotated out: signatures made with either are accepted until it is removed.
        "STRIPE_WEBHOOK_SECRET_PREVIOUS": env_secret(env, "STRIPE_WEBHOOK_SECRET_PREVIOUS"),
        # The Connect endpoint (events from host owners' accounts: account.updated, payout.failed) has its own.
        "STRIPE_CONNECT_WEBHOOK_SECRET": env_secret(env, "STRIPE_CONNECT_WEBHOOK_SECRET"),
        "STRIPE_API_BASE": env_str(env, "STRIPE_API_BASE", "https://api.stripe.com"),
        "STRIPE_STANDIN": env_bool(env, "STRIPE_STANDIN", not production),
        "STRIPE_WEBHOOK_TOLERANCE_SECONDS": env_int(env, "STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1,
                                                    maximum=3600),
        "CREDITS_MIN_PURCHASE_USD": env_int(env, "CREDITS_MIN_PURCHASE_USD", 5, minimum=1, maximum=10_000),
        "CREDITS_MAX_PURCHASE_USD": env_int(env, "CREDITS_MAX_PURCHASE_USD", 1000, minimum=1, maximum=100_000),
        "LOW_BALANCE_USD": env_int(env, "LOW_BALANCE_USD", 2, minimum=0, maximum=100_000),
        # Host payouts through Stripe Connect (app/money/payouts.py, jobs/payouts.py): how often the job runs, the
        # smallest payout (an owner may have a higher threshold), and how often an unanswered transfer is retried.
        "PAYOUT_INTERVAL_SECONDS": env_int(env, "PAYOUT_INTERVAL_SECONDS", 3600, minimum=60, maximum=7 * 86400),
        "PAYOUT_THRESHOLD_USD": env_int(env, "PAYOUT_THRESHOLD_USD", 10, minimum=1, maximum=100_000),
        "PAYOUT_MAX_ATTEMPTS": env_int(env, "PAYOUT_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
        "ENROLLMENT_KEY_TTL_HOURS": env_int(env, "ENROLLMENT_KEY_TTL_HOURS", 24, minimum=1, maximum=24 * 30),
        "MAX_CONTENT_LENGTH": env_int(env, "MAX_REQUEST_BYTES", 2 * 1024 * 1024, minimum=1024),
    }
