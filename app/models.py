"""The platform's tables. Money and prices are integer micro-units (1 USD = 1,000,000)."""
from __future__ import annotations

from datetime import datetime, timezone

from flask_login import UserMixin
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


Timestamp = DateTime(timezone=True)


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK's condition: ``column`` holds one of ``values`` (each enum is written once, as a tuple on its
    model, and the database checks the same tuple)."""
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_client: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    is_host: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)  # None: the platform default
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="user", order_by="ApiKey.id")

    __table_args__ = (CheckConstraint("email = lower(email)", name="email_lowercase"),)

    # The secret of the web session this user was loaded through (see WebSession); Flask-Login keeps it in the
    # signed cookie in place of the user's id, so ending the session on the server ends the cookie too.
    session_token = None  # (not a column)

    def get_id(self) -> str | None:
        return self.session_token

    @property
    def roles(self) -> list[str]:
        return [role for role, on in (("client", self.is_client), ("host", self.is_host),
                                      ("admin", self.is_admin)) if on]


class WebSession(db.Model):
    """A signed-in browser. The cookie carries a secret whose SHA-256 is kept here: logging out, changing the
    password or "log out everywhere" ends it on the server, whatever copy of the cookie is left."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp)
    user_agent: Mapped[str] = mapped_column(String(200), default="", server_default="")
    ip_address: Mapped[str | None] = mapped_column(INET)

    user: Mapped[User] = relationship()


class ApiKey(db.Model):
    """A client's API key. Only its SHA-256 and a display prefix are stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    spend_limit: Mapped[int | None] = mapped_column(BigInteger)
    allowed_models: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    spent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # maintained by gs_finish
    held: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # maintained by gs_hold/gs_finish
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)  # None: the account's limit
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)

    user: Mapped[User] = relationship(back_populates="api_keys")

    __table_args__ = (
        CheckConstraint("spend_limit IS NULL OR spend_limit > 0", name="spend_limit_positive"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("spend_limit IS NULL OR spent + held <= spend_limit", name="within_spend_limit"),
    )

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Invite(db.Model):
    """A single-use, expiring host invite. The code is stored hashed."""

    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(32))
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str] = mapped_column(String(200), default="", server_default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    used_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    created_by: Mapped[User | None] = relationship(foreign_keys=[created_by_id])
    used_by: Mapped[User | None] = relationship(foreign_keys=[used_by_id])

    @property
    def state(self) -> str:
        if self.used_at is not None:
            return "used"
        if self.expires_at <= utcnow():
            return "expired"
        return "open"


class CatalogModel(db.Model):
    """A model clients may call and hosts may serve. Prices are micro-units per million tokens."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    hf_id: Mapped[str] = mapped_column(String(200), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    license_name: Mapped[str] = mapped_column(String(120))
    license_url: Mapped[str] = mapped_column(String(500))
    attribution: Mapped[str] = mapped_column(Text, default="", server_default="")
    context_length: Mapped[int] = mapped_column(Integer)
    min_vram_mib: Mapped[int] = mapped_column(Integer)
    reference_input_price: Mapped[int] = mapped_column(BigInteger)
    reference_output_price: Mapped[int] = mapped_column(BigInteger)
    floor_input_price: Mapped[int] = mapped_column(BigInteger)
    floor_output_price: Mapped[int] = mapped_column(BigInteger)
    ceiling_input_price: Mapped[int] = mapped_column(BigInteger)
    ceiling_output_price: Mapped[int] = mapped_column(BigInteger)
    input_price: Mapped[int] = mapped_column(BigInteger)
    output_price: Mapped[int] = mapped_column(BigInteger)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    KINDS = ("chat", "embedding")

    # What it serves: chat and text completions, or embeddings (vLLM's pooling runner).
    kind: Mapped[str] = mapped_column(String(16), default="chat", server_default="chat")
    # vLLM's names for the parsers that turn this model's text into tool calls and reasoning (None: it has none).
    tool_call_parser: Mapped[str | None] = mapped_column(String(40))
    reasoning_parser: Mapped[str | None] = mapped_column(String(40))
    # Weights, in millions: what a GPU must read per generated token, for the hardware check (``trust.hardware``).
    parameters_millions: Mapped[int] = mapped_column(Integer, default=1000, server_default="1000")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow,
                                                 server_default=func.now())

    __table_args__ = (
        CheckConstraint("context_length > 0", name="context_length_positive"),
        CheckConstraint(one_of("kind", KINDS), name="kind_known"),
        CheckConstraint("tool_call_parser ~ '^[a-z0-9_]{1,40}$'", name="tool_call_parser_name"),
        CheckConstraint("reasoning_parser ~ '^[a-z0-9_]{1,40}$'", name="reasoning_parser_name"),
        CheckConstraint("min_vram_mib >= 0", name="min_vram_not_negative"),
        CheckConstraint("parameters_millions > 0", name="parameters_positive"),
        CheckConstraint("0 <= floor_input_price AND floor_input_price <= ceiling_input_price "
                        "AND ceiling_input_price < reference_input_price", name="input_price_bounds"),
        CheckConstraint("0 <= floor_output_price AND floor_output_price <= ceiling_output_price "
                        "AND ceiling_output_price < reference_output_price", name="output_price_bounds"),
        CheckConstraint("input_price BETWEEN floor_input_price AND ceiling_input_price", name="input_price_in_band"),
        CheckConstraint("output_price BETWEEN floor_output_price AND ceiling_output_price",
                        name="output_price_in_band"),
    )


class Host(db.Model):
    """A GPU machine offered by a host user. Nothing is routed to it until an admin approves it."""

    __tablename__ = "hosts"

    STATUSES = ("pending", "approved", "rejected", "suspended")
    # What verification says of it (``app.trust``): checked before any client traffic, trusted, a fallback only,
    # or cut off with its earnings held.
    TRUST_STATES = ("staged", "verified", "degraded", "quarantined")

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    public_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    peer_id: Mapped[str | None] = mapped_column(String(80), unique=True)
    overlay_address: Mapped[str | None] = mapped_column(INET, unique=True)
    api_base: Mapped[str | None] = mapped_column(String(300))
    enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    healthy: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    hardware: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    approved_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    consecutive_successes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_checked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_check_error: Mapped[str | None] = mapped_column(Text)
    token_prefix: Mapped[str | None] = mapped_column(String(32))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    engine_port: Mapped[int | None] = mapped_column(Integer)
    ssh_host_key: Mapped[str | None] = mapped_column(Text)
    available: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    heartbeat: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    # Weekly windows in which the host serves (empty: always), in its own time zone; see app/hosts/schedule.py.
    schedule: Mapped[list] = mapped_column(JSONB, default=list, server_default="[]")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # The host's last known WireGuard endpoint, kept so a peer re-added on the hub is reachable at once.
    wg_endpoint: Mapped[str | None] = mapped_column(String(120))
    trust_state: Mapped[str] = mapped_column(String(16), default="staged", server_default="staged")
    trust_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    trust_changed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # A platform-run engine in full precision that checks the others; it takes no client traffic.
    reference: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    next_canary_at: Mapped[datetime | None] = mapped_column(Timestamp)

    owner: Mapped[User] = relationship()
    offers: Mapped[list[HostModel]] = relationship(back_populates="host", cascade="all, delete-orphan")

    __table_args__ = (
        CheckConstraint(one_of("status", STATUSES), name="status_known"),
        CheckConstraint("engine_port IS NULL OR engine_port BETWEEN 1 AND 65535", name="engine_port_valid"),
        CheckConstraint(one_of("trust_state", TRUST_STATES), name="trust_state_known"),
    )


class EnrollmentKey(db.Model):
    """A single-use, expiring key with which a host user registers one machine (``hostkit register``)."""

    __tablename__ = "enrollment_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))


class HostModel(db.Model):
    """A model a host offers to serve."""

    __tablename__ = "host_models"

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    host: Mapped[Host] = relationship(back_populates="offers")
    model: Mapped[CatalogModel] = relationship()


class AuditEvent(db.Model):
    """Who did what, when, from where. The database refuses UPDATE and DELETE on this table."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now(), index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    ip_address: Mapped[str | None] = mapped_column(INET)

    actor: Mapped[User | None] = relationship()



class LedgerAccount(db.Model):
    """A balance in the double-entry ledger, maintained by the database from its entries."""

    __tablename__ = "ledger_accounts"

    KINDS = ("client", "host", "platform_fees", "grants", "stripe", "receivable", "payouts_pending")
    OWNED_KINDS = ("client", "host", "receivable")  # a person's accounts; the rest are the platform's

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    credit_limit: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    allow_negative: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    __table_args__ = (
        CheckConstraint(one_of("kind", KINDS), name="kind_known"),
        CheckConstraint(f"(user_id IS NOT NULL) = ({one_of('kind', OWNED_KINDS)})", name="owner_matches_kind"),
        CheckConstraint("kind <> 'receivable' OR balance <= 0", name="receivable_owed"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("credit_limit >= 0", name="credit_limit_not_negative"),
        CheckConstraint("allow_negative OR balance + credit_limit - held >= 0", name="no_overdraft"),
        UniqueConstraint("kind", "user_id", name="uq_ledger_accounts_kind_user_id"),
        Index("uq_ledger_accounts_platform", "kind", unique=True, postgresql_where=text("user_id IS NULL")),
    )

    @property
    def available(self) -> int:
        return self.balance + self.credit_limit - self.held


class LedgerTransfer(db.Model):
    """One balanced posting; its id is its idempotency key."""

    __tablename__ = "ledger_transfers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    memo: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    entries: Mapped[list[LedgerEntry]] = relationship(back_populates="transfer")


class LedgerEntry(db.Model):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("ledger_transfers.id", ondelete="RESTRICT"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id", ondelete="RESTRICT"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    transfer: Mapped[LedgerTransfer] = relationship(back_populates="entries")
    account: Mapped[LedgerAccount] = relationship()

    __table_args__ = (CheckConstraint("amount <> 0", name="amount_not_zero"),)


class Hold(db.Model):
    """A request's worst-case cost, reserved at admission and released when it is settled or voided."""

    __tablename__ = "holds"
    STATUSES = ("held", "settled", "voided")

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="held", server_default="held")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    closed_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(one_of("status", STATUSES), name="status_known"),
        Index("ix_holds_open", "expires_at", postgresql_where=text("status = 'held'")),
    )


class UsageRecord(db.Model):
    """One request through the proxy: tokens counted by the router beside the host's claim, and its cost."""

    __tablename__ = "usage_records"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"))
    endpoint: Mapped[str] = mapped_column(String(32))
    stream: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(24))
    http_status: Mapped[int] = mapped_column(SmallInteger)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    host_prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    host_completion_tokens: Mapped[int | None] = mapped_column(Integer)
    input_price: Mapped[int] = mapped_column(BigInteger)
    output_price: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)
    held: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    api_key: Mapped[ApiKey] = relationship()
    model: Mapped[CatalogModel] = relationship()

    __table_args__ = (
        CheckConstraint("cost >= 0 AND cost <= held", name="cost_within_hold"),
        Index("ix_usage_records_user_created", "user_id", text("created_at DESC")),
    )


class PriceHistory(db.Model):
    """One pricing decision for a model: the market it saw over the minutes ending ``at``, and the move."""

    __tablename__ = "price_history"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(Timestamp)
    old_input_price: Mapped[int] = mapped_column(BigInteger)
    new_input_price: Mapped[int] = mapped_column(BigInteger)
    old_output_price: Mapped[int] = mapped_column(BigInteger)
    new_output_price: Mapped[int] = mapped_column(BigInteger)
    demand: Mapped[int] = mapped_column(BigInteger)  # tokens per minute, served plus refused
    supply: Mapped[int] = mapped_column(BigInteger)  # tokens per minute the healthy hosts can serve
    refused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # requests in the window
    reason: Mapped[str] = mapped_column(String(16))

    model: Mapped[CatalogModel] = relationship()

    # One decision per model per window: a job run twice moves the price once.
    __table_args__ = (UniqueConstraint("model_id", "at", name="uq_price_history_model_id_at"),)


class Purchase(db.Model):
    """Credits bought through one Stripe Checkout Session; credited only when Stripe's webhook says paid."""

    __tablename__ = "purchases"

    STATUSES = ("open", "processing", "paid", "failed")

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    session_id: Mapped[str] = mapped_column(String(255), unique=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="usd", server_default="usd")
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    refunded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    disputed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    paid_at: Mapped[datetime | None] = mapped_column(Timestamp)

    user: Mapped[User] = relationship()

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(one_of("status", STATUSES), name="status_known"),
        # Each within the payment; their sum may pass it while a won dispute's event is still on its way.
        CheckConstraint("refunded BETWEEN 0 AND amount AND disputed BETWEEN 0 AND amount",
                        name="reversals_within_amount"),
        Index("ix_purchases_user_created", "user_id", text("created_at DESC")),
    )


class StripeEvent(db.Model):
    """A webhook event, stored by Stripe's id in the transaction that acts on it (the deduplication).

    ``applied`` is false for a refund or dispute that arrived before its payment was credited; it is
    applied when the payment lands."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    applied: Mapped[bool] = mapped_column(Boolean)
    payload: Mapped[dict] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    __table_args__ = (
        Index("ix_stripe_events_waiting", "payment_intent_id", postgresql_where=text("NOT applied")),
    )


class PayoutAccount(db.Model):
    """A host owner's Stripe Connect (Express) account and how far its onboarding went."""

    __tablename__ = "payout_accounts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True)
    stripe_account_id: Mapped[str] = mapped_column(String(255), unique=True)
    details_submitted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    payouts_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    threshold: Mapped[int | None] = mapped_column(BigInteger)  # micro-USD; None: PAYOUT_THRESHOLD_USD
    bank_payout_error: Mapped[str | None] = mapped_column(Text)  # the last ``payout.failed``, until one is paid
    failures_cleared_at: Mapped[datetime | None] = mapped_column(Timestamp)  # an admin's go-ahead after failures
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    user: Mapped[User] = relationship()

    __table_args__ = (CheckConstraint("threshold IS NULL OR threshold > 0", name="threshold_positive"),)

    @property
    def state(self) -> str:
        """'details needed' until Stripe has what it asks for, then 'ready' once it lets us pay the account."""
        if self.payouts_enabled:
            return "ready"
        return "details needed"


class Payout(db.Model):
    """One Stripe transfer of a host owner's earnings; its idempotency key is stored before the call."""

    __tablename__ = "payouts"

    STATUSES = ("pending", "paid", "failed", "needs_attention")

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    amount: Mapped[int] = mapped_column(BigInteger)  # micro-USD, whole cents
    destination: Mapped[str] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_transfer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    reversed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # micro-USD Stripe took back
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    user: Mapped[User] = relationship()

    __table_args__ = (
        CheckConstraint("amount > 0 AND amount % 10000 = 0", name="amount_whole_cents"),
        CheckConstraint(one_of("status", STATUSES), name="status_known"),
        CheckConstraint("status <> 'paid' OR stripe_transfer_id IS NOT NULL", name="paid_has_transfer"),
        CheckConstraint("reversed >= 0 AND reversed <= amount", name="reversed_within_amount"),
        Index("uq_payouts_one_open", "user_id", unique=True,
              postgresql_where=text("status IN ('pending', 'needs_attention')")),
        Index("ix_payouts_user_created", "user_id", text("created_at DESC")),
    )


class VerificationCheck(db.Model):
    """One spot check of a host: its answer's tokens replayed through a reference engine (``app.trust``)."""

    __tablename__ = "verification_checks"

    KINDS = ("canary", "traffic", "calibration")
    OUTCOMES = ("passed", "failed", "inconclusive")
    TESTS = ("greedy", "sampled", "violation")

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    reference_host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    request_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    test: Mapped[str | None] = mapped_column(String(16))
    statistic: Mapped[float | None] = mapped_column(Double)
    threshold: Mapped[float | None] = mapped_column(Double)
    tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # the host's tokens checked
    cost_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # tokens the check spent
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    evidence: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    host: Mapped[Host] = relationship(foreign_keys=[host_id])
    model: Mapped[CatalogModel] = relationship()

    __table_args__ = (
        CheckConstraint(one_of("kind", KINDS), name="kind_known"),
        CheckConstraint(one_of("outcome", OUTCOMES), name="outcome_known"),
        CheckConstraint(one_of("test", TESTS), name="test_known"),
        CheckConstraint("tokens >= 0 AND cost_tokens >= 0", name="tokens_not_negative"),
        Index("ix_verification_checks_host_created", "host_id", text("created_at DESC")),
    )


class Calibration(db.Model):
    """A model's honest noise, measured by canaries on an engine an admin vouches for against the reference;
    the thresholds the checks of that model use until the next calibration."""

    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    reference_host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    # Per test ("greedy", "sampled", "window"): {"samples", "mean", "sd", "max", "threshold"}.
    thresholds: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    statistics: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")  # test -> measured values

    model: Mapped[CatalogModel] = relationship()
    host: Mapped[Host | None] = relationship(foreign_keys=[host_id])

    __table_args__ = (Index("ix_calibrations_model_created", "model_id", text("created_at DESC")),)


class HostBenchmark(db.Model):
    """A throughput run at several concurrencies, against what the GPU the host reported should do."""

    __tablename__ = "host_benchmarks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    gpu: Mapped[str] = mapped_column(String(120))  # the GPU class it was held to, as reported
    passed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # [{"concurrency", "tokens_per_second", "expected_min", "expected_max"}]
    results: Mapped[list] = mapped_column(JSONB, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    host: Mapped[Host] = relationship()
    model: Mapped[CatalogModel] = relationship()

    __table_args__ = (Index("ix_host_benchmarks_host_created", "host_id", text("created_at DESC")),)
