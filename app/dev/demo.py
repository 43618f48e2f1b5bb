"""What ``make run`` and the tests add to a platform: the demo and test models, the demo accounts, the demo
host's registration and payout, and the ``demo.env`` file that hands the accounts over."""
from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import urllib3
from flask import current_app
from sqlalchemy import func, select

from app import accounts, catalog, hosts, trust
from app.accounts import api_keys
from app.config import read_env_file
from app.extensions import db
from app.models import Host, User, VerificationCheck
from app.money import connect, ledger
from app.trust import checks, verifier

DEMO_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_TEST_MODEL = "gpushare/tiny-chat"
DEMO_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Models no client pays real money for: SmolLM2 runs on a CPU for the demo, tiny-chat is the tests' (its text is
# noise), all-MiniLM-L6-v2 makes the demo's and the tests' embeddings. None is part of the catalog on sale.
MODELS = [
    catalog.entry(DEMO_MODEL, "SmolLM2 135M Instruct", *catalog.APACHE,
                  "SmolLM2 by Hugging Face. Small enough to serve on a CPU.", 8192, 0,
                  catalog.SMALL_REFERENCE, ("0.02", "0.04"), ("0.001", "0.002"), ("0.005", "0.01"),
                  parameters_millions=135, tool_call_parser="hermes"),
    catalog.entry(TINY_TEST_MODEL, "gpushare tiny chat (test)", *catalog.APACHE,
                  "A tiny randomly initialised model built by gpushare's test suite; its output is noise.",
                  2048, 0, catalog.SMALL_REFERENCE, ("0.02", "0.04"), ("0.001", "0.002"), ("0.005", "0.01"),
                  parameters_millions=1, tool_call_parser="hermes"),
    catalog.entry(DEMO_EMBEDDING_MODEL, "all-MiniLM-L6-v2 (embeddings)", *catalog.APACHE,
                  "all-MiniLM-L6-v2 by the Sentence Transformers team.", 256, 0, ("0.02", "0.02"), ("0.01", "0"),
                  ("0.001", "0"), ("0.005", "0"), parameters_millions=23, kind="embedding"),
]

DEMO_ADMIN_EMAIL = "admin@gpushare.localhost"
DEMO_HOST_EMAIL = "host@gpushare.localhost"
DEMO_HOST_NAME = "demo host"
DEMO_EMBEDDINGS_HOST_NAME = "demo embeddings host"
DEMO_REFERENCE_HOST_NAME = "demo reference engine"
# Fewer honest canaries than an admin's calibration takes (VERIFY_CALIBRATION_CHECKS), so the demo starts sooner;
# calibrate again from the Trust page for thresholds measured on more.
DEMO_CALIBRATION_CHECKS = 16
DEMO_CLIENT_EMAIL = "demo@gpushare.localhost"
DEMO_KEY_NAME = "demo"
DEMO_CREDITS = 5_000_000  # $5
DEMO_HOST_EARNINGS = 12_340_000  # $12.34: above the payout threshold, so the demo shows a payout


@dataclass
class Demo:
    base_url: str
    api_key: str
    admin_email: str
    admin_password: str
    client_email: str
    client_password: str

    def env_lines(self) -> list[str]:
        return [
            f"OPENAI_BASE_URL={self.base_url}",
            f"OPENAI_API_KEY={self.api_key}",
            f"GPUSHARE_ADMIN_EMAIL={self.admin_email}",
            f"GPUSHARE_ADMIN_PASSWORD={self.admin_password}",
            f"GPUSHARE_DEMO_EMAIL={self.client_email}",
            f"GPUSHARE_DEMO_PASSWORD={self.client_password}",
        ]


def seed_models() -> int:
    """The catalog on sale, and the demo and test models. Returns how many models were added."""
    return catalog.seed() + catalog.seed(MODELS)


def _account(email: str, password: str | None, **roles):
    """The demo account with a password that works: the one from the last run, else a new one."""
    user = accounts.find_user(email)
    if user is None:
        password = secrets.token_urlsafe(12)
        user = accounts.create_user(email, password, is_admin=roles.get("is_admin", False))
    elif not password or accounts.authenticate(email, password) is None:
        password = secrets.token_urlsafe(12)
        accounts.set_password(user, password)
    return user, password


def ensure_demo(data_dir: Path, base_url: str) -> Demo:
    """Create or reuse the demo admin, client and API key, and write ``demo.env``."""
    env_path = data_dir / "demo.env"
    previous = read_env_file(env_path)
    _, admin_password = _account(DEMO_ADMIN_EMAIL, previous.get("GPUSHARE_ADMIN_PASSWORD"), is_admin=True)
    client, client_password = _account(DEMO_CLIENT_EMAIL, previous.get("GPUSHARE_DEMO_PASSWORD"))
    secret = previous.get("OPENAI_API_KEY", "")
    if api_keys.authenticate(secret) is None:
        _, secret = api_keys.create_key(client, DEMO_KEY_NAME)
    ledger.grant(None, client, DEMO_CREDITS, memo="demo credits", transfer_id="demo:credits")  # once
    db.session.commit()
    demo = Demo(base_url=base_url, api_key=secret, admin_email=DEMO_ADMIN_EMAIL, admin_password=admin_password,
                client_email=DEMO_CLIENT_EMAIL, client_password=client_password)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(demo.env_lines()) + "\n")
    return demo


def demo_host_owner() -> User:
    owner = accounts.find_user(DEMO_HOST_EMAIL)
    if owner is None:
        owner = accounts.create_user(DEMO_HOST_EMAIL, secrets.token_urlsafe(16))
        owner.is_client, owner.is_host = False, True
        db.session.commit()
    return owner


def demo_host(name: str = DEMO_HOST_NAME) -> Host | None:
    return db.session.scalar(select(Host).join(User, User.id == Host.owner_id)
                             .where(User.email == DEMO_HOST_EMAIL, Host.name == name,
                                    Host.status.in_(("pending", "approved"))))


def enroll_demo_host(state_dir: Path, register, name: str = DEMO_HOST_NAME) -> Host:
    """A demo machine registered the way every host is: an enrollment key from its owner, then
    ``register(key)`` (which runs ``hostkit register``), reusing the registration of an earlier run."""
    owner = demo_host_owner()
    host = demo_host(name)
    if host is None or not (state_dir / "host.json").exists():
        for stale in ("host.json", "wireguard.key"):
            (state_dir / stale).unlink(missing_ok=True)
        _, key = hosts.create_enrollment_key(owner)
        register(key)
        host = demo_host(name)
    return host


def approve_demo_host(host: Host, model_id: str, model_dir: Path, tokenizers_dir: Path, *,
                      reference: bool = False, trusted: bool = False) -> Host:
    """Approve the demo host as the seeded admin, offer ``model_id`` on it, and let the router count tokens
    with the model's own tokenizer files. A host approved by an earlier run on another overlay network (the
    run's slot changed) gets an address in this one. A ``reference`` (a platform-run host that serves the model
    in float32 and checks the others) is marked so before its agent starts, so that its engine starts in
    float32; a ``trusted`` host (a run without a reference engine) is taken as verified."""
    admin = accounts.find_user(DEMO_ADMIN_EMAIL)
    network = ipaddress.ip_network(current_app.config["OVERLAY_NETWORK"])
    if host.overlay_address is not None and ipaddress.ip_address(str(host.overlay_address)) not in network:
        host.overlay_address = None
        host.api_base = None
        if host.status == "approved":
            host.status = "pending"
        db.session.commit()
    if host.status == "pending":
        host = hosts.change_status(admin, host.id, "approve")
    owner = host.owner
    for offer in list(host.offers):
        if offer.enabled and offer.model.hf_id != model_id:
            hosts.set_model(owner, host, offer.model.hf_id, False)
    hosts.set_model(owner, host, model_id, True)
    hosts.set_enabled(owner, host, True)
    hosts.set_available(host, True)
    # Its engine starts afresh: no requests until it passes a health check (not on an earlier run's word).
    host.healthy, host.consecutive_successes = False, 0
    db.session.commit()
    link = tokenizers_dir / model_id
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(model_dir, target_is_directory=True)
    if reference:
        host = trust.set_reference(admin, host.id, True)
    elif trusted:
        trust.set_state(host.id, "verified", "the demo's own host: make run without a reference engine",
                        old=("staged",), actor=admin)
    return host


def pay_demo_host(base_url: str) -> dict[str, int]:
    """With the local Stripe stand-in: the demo host's owner is credited some earnings (once), connects an
    Express account by submitting the stand-in's onboarding form, and the payout job pays them, as it pays
    every host. Returns the job's outcome."""
    owner = demo_host_owner()
    ledger.post("demo:host-earnings", "grant", [(ledger.account_id("grants"), -DEMO_HOST_EARNINGS),
                                                (ledger.account_id("host", owner), DEMO_HOST_EARNINGS)],
                memo="demo host earnings, so that the demo has a payout to show")
    db.session.commit()
    account = connect.payout_account(owner)
    if account is None or not account.payouts_enabled:
        url = connect.onboarding_link(owner, refresh_url=f"{base_url}/host/payouts/refresh",
                                      return_url=f"{base_url}/host/payouts/return")
        response = urllib3.request("POST", url, redirect=False, timeout=10)  # "Submit details"
        if response.status != 303:
            raise connect.PayoutError(f"the Stripe stand-in's onboarding answered {response.status}")
        connect.refresh_account(owner)
    from jobs.payouts import pay_hosts  # jobs build on the app package

    return pay_hosts()


def banner(info: Demo, env_path: Path, public: str, model: str | None) -> str:
    """What ``make run`` prints once the platform serves: the logins, the demo key and calls to try."""
    try_model = [
        f"  .venv/bin/python -c 'import openai; [print(c.choices[0].delta.content or \"\", end=\"\", flush=True) "
        f"for c in openai.OpenAI().chat.completions.create(model=\"{model}\", stream=True, "
        f"messages=[{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]) if c.choices]'",
        "  .venv/bin/python -c 'import openai; e = openai.OpenAI().embeddings.create("
        f"model=\"{DEMO_EMBEDDING_MODEL}\", input=\"Paris\"); print(len(e.data[0].embedding), e.usage)'",
    ] if model else ["  (no demo host: start with --demo-model smollm2 to serve a model here)"]
    return "\n".join([
        "",
        f"gpushare is running at {public}",
        f"  admin: {info.admin_email} / {info.admin_password}",
        f"  demo client: {info.client_email} / {info.client_password}",
        f"  demo API key: {info.api_key}",
        f"  written to {env_path}",
        "",
        "Try it:",
        f"  set -a; . {env_path}; set +a",
        '  curl -s "$OPENAI_BASE_URL/models" -H "Authorization: Bearer $OPENAI_API_KEY"',
        *try_model,
        "",
        "Press Ctrl-C to stop.",
        "",
    ])


def calibrate(host_id: int) -> bool:
    """Queue the demo model's calibration against the demo host, as the seeded admin; a calibration kept from an
    earlier run is used again. Returns whether one was queued."""
    from jobs.queues import VERIFY_QUEUE, enqueue

    model = verifier.chat_model(db.session.get(Host, host_id))
    if model is None or checks.current_calibration(model.id) is not None:
        return False
    enqueue("jobs.verification.calibrate", host_id, accounts.find_user(DEMO_ADMIN_EMAIL).id,
            DEMO_CALIBRATION_CHECKS, queue_name=VERIFY_QUEUE, job_timeout=1800, result_ttl=600)
    return True


def verification_progress(host_id: int) -> str:
    """Where the demo host's verification stands, in a few words."""
    host = db.session.get(Host, host_id, populate_existing=True)
    scored = db.session.scalar(select(func.count()).select_from(VerificationCheck).where(
        VerificationCheck.host_id == host_id, VerificationCheck.kind == "calibration")) or 0
    passed = db.session.scalar(select(func.count()).select_from(VerificationCheck).where(
        VerificationCheck.host_id == host_id, VerificationCheck.kind == "canary",
        VerificationCheck.outcome == "passed")) or 0
    db.session.commit()
    return f"{scored} calibration canaries scored, {passed} checks passed; {host.trust_state}"


def healthy(host_id: int) -> bool:
    found = db.session.get(Host, host_id, populate_existing=True).healthy
    db.session.commit()
    return found


def ready(host_id: int) -> bool:
    """A demo host is ready when it serves clients; a reference engine, when its engine passes health checks."""
    host = db.session.get(Host, host_id, populate_existing=True)
    found = host.healthy if host.reference else hosts.serving(host).ok
    db.session.commit()
    return found


def build_shared_model(model: str, engine_dir: Path, reference_dir: Path) -> Path:
    """Build ``model`` for the demo host once; its reference engine serves the same folder (linked)."""
    from hostkit.local.engine import ensure_model

    built = ensure_model(model, engine_dir / "models")
    shared = reference_dir / "models" / model
    shared.parent.mkdir(parents=True, exist_ok=True)
    if not shared.is_symlink():
        shutil.rmtree(shared, ignore_errors=True)
        shared.symlink_to(built, target_is_directory=True)
    return built
