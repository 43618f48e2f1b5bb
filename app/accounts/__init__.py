"""People and access: who someone is, and what they may do.

- ``__init__`` (this module): sign-up, passwords, web sessions, roles and host invites.
- ``api_keys``: clients' API keys, their limits and the cache the request path reads them from.
- ``tokens``: every secret the platform issues (API keys, host tokens, enrollment keys, invites): made,
  shown once, stored hashed.
- ``audit``: the audit log of who changed what.
- ``throttle``: failed logins counted in Redis, per account and per address.

Imports go one way: this module -> ``audit``, ``tokens``; ``api_keys`` -> ``tokens``. Nothing here imports
views, hosts or money.

Passwords and sessions:

Passwords are at least ``MIN_PASSWORD_LENGTH`` characters and not easy to
guess: zxcvbn (offline, with the person's own e-mail as a hint) must rate
them "safely unguessable". A web session lives on the server
(``WebSession``): logging out ends it, a password change ends every other one,
and "log out everywhere" ends them all; it also ends after
``SESSION_IDLE_HOURS`` unused or ``SESSION_MAX_DAYS`` in all.
"""
from __future__ import annotations

import re
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from sqlalchemy import select, update
from zxcvbn import zxcvbn

from ..extensions import db
from ..models import Invite, User, WebSession, utcnow
from . import audit, tokens

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
MIN_PASSWORD_SCORE = 3  # zxcvbn's "safely unguessable: moderate protection from an offline slow-hash attack"
GUESSABILITY_CHARACTERS = 72  # what zxcvbn rates; a password longer than that is long enough
SEEN_EVERY = timedelta(minutes=5)  # how often a session's last use is written down

hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class AccountError(ValueError):
    """A request about an account that cannot be done; the message is for the person."""


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 254:
        raise AccountError("Enter a valid e-mail address.")
    return email


def check_password_rules(password: str, email: str = "") -> None:
    """Long enough, not too long, and not easy to guess (common passwords, keyboard runs, the e-mail in it)."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"Use a password of at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"Use a password of at most {MAX_PASSWORD_LENGTH} characters.")
    local, _, domain = (email or "").partition("@")
    rating = zxcvbn(password[:GUESSABILITY_CHARACTERS], user_inputs=[part for part in (email, local, domain) if part])
    if rating["score"] < MIN_PASSWORD_SCORE:
        feedback = rating["feedback"]
        why = (feedback.get("warning") or "It is too easy to guess.").rstrip(".")
        hint = " ".join(feedback.get("suggestions") or ["Use a few uncommon words, or a password manager."])
        raise AccountError(f"Choose a password that is harder to guess: {why}. {hint}")


def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == email.strip().lower()))


def create_user(email: str, password: str, *, invite_code: str | None = None, is_admin: bool = False) -> User:
    """Create an account (a client; a host too when a valid invite code is given) and commit."""
    email = normalise_email(email)
    check_password_rules(password, email)
    if find_user(email) is not None:
        raise AccountError("An account with this e-mail already exists. Log in instead.")
    user = User(email=email, password_hash=hasher.hash(password), is_client=True, is_admin=is_admin)
    db.session.add(user)
    db.session.flush()
    if invite_code:
        _redeem(user, invite_code)
    if is_admin:
        audit.record(None, "admin.create", "user", user.id, email=email)
    db.session.commit()
    return user


def authenticate(email: str, password: str) -> User | None:
    """The user whose password this is, or None. Rehashes when argon2's parameters changed."""
    try:
        email = normalise_email(email)
    except AccountError:
        return None
    user = find_user(email)
    if user is None:
        hasher.hash(password or "x")  # spend the same time as a real check
        return None
    try:
        hasher.verify(user.password_hash, password or "")
    except (VerificationError, InvalidHashError):
        return None
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
        db.session.commit()
    return user


def set_password(user: User, password: str) -> None:
    """A new password, and every web session of the user ended (a password reset by the platform)."""
    check_password_rules(password, user.email)
    user.password_hash = hasher.hash(password)
    end_sessions(user)
    db.session.commit()


def change_password(user: User, current: str, new: str, *, keep: str | None = None) -> None:
    """The person's own change: the current password first. Every other session of theirs ends."""
    try:
        hasher.verify(user.password_hash, current or "")
    except (VerificationError, InvalidHashError):
        raise AccountError("Your current password is not right.") from None
    check_password_rules(new, user.email)
    user.password_hash = hasher.hash(new)
    ended = end_sessions(user, keep=keep)
    audit.record(user, "user.password_change", "user", user.id, sessions_ended=ended)
    db.session.commit()


# Web sessions ---------------------------------------------------------------------------------------------------

def start_session(user: User, *, user_agent: str = "", address: str | None = None) -> str:
    """A new web session for ``user``; returns its secret (for the signed cookie) and commits."""
    config = current_app.config
    token = tokens.new_token(tokens.WEB_SESSION_PREFIX)
    now = utcnow()
    db.session.add(WebSession(user_id=user.id, token_hash=token.hash, created_at=now, last_seen_at=now,
                              expires_at=now + timedelta(days=config["SESSION_MAX_DAYS"]),
                              user_agent=(user_agent or "")[:200], ip_address=address))
    user.last_login_at = now
    db.session.commit()
    user.session_token = token.secret
    return token.secret


def session_user(token: str) -> User | None:
    """The user of a live session, or None (unknown, ended, expired or idle too long)."""
    if not tokens.well_formed(token or "", tokens.WEB_SESSION_PREFIX):
        return None
    found = db.session.execute(select(WebSession, User).join(User, User.id == WebSession.user_id)
                               .where(WebSession.token_hash == tokens.hash_secret(token),
                                      WebSession.ended_at.is_(None))).first()
    if found is None:
        return None
    web_session, user = found
    now = utcnow()
    idle = timedelta(hours=current_app.config["SESSION_IDLE_HOURS"])
    if now >= web_session.expires_at or now - web_session.last_seen_at >= idle:
        return None
    if now - web_session.last_seen_at >= SEEN_EVERY:
        web_session.last_seen_at = now
        db.session.commit()
    user.session_token = token
    return user


def end_session(token: str | None) -> None:
    if token and tokens.well_formed(token, tokens.WEB_SESSION_PREFIX):
        db.session.execute(update(WebSession).where(WebSession.token_hash == tokens.hash_secret(token),
                                                    WebSession.ended_at.is_(None)).values(ended_at=utcnow()))
        db.session.commit()


def end_sessions(user: User, *, keep: str | None = None) -> int:
    """End every live session of ``user`` but ``keep`` (a session's secret); returns how many ended. The caller
    commits."""
    query = update(WebSession).where(WebSession.user_id == user.id, WebSession.ended_at.is_(None))
    if keep:
        query = query.where(WebSession.token_hash != tokens.hash_secret(keep))
    return db.session.execute(query.values(ended_at=utcnow())).rowcount


def log_out_everywhere(user: User) -> int:
    """End every session of ``user``, this one included; returns how many."""
    ended = end_sessions(user)
    audit.record(user, "user.logout_everywhere", "user", user.id, sessions_ended=ended)
    db.session.commit()
    return ended


def live_sessions(user: User) -> list[WebSession]:
    """The user's sessions that have not ended or expired, the newest use first."""
    now = utcnow()
    idle = timedelta(hours=current_app.config["SESSION_IDLE_HOURS"])
    return list(db.session.scalars(select(WebSession).where(
        WebSession.user_id == user.id, WebSession.ended_at.is_(None), WebSession.expires_at > now,
        WebSession.last_seen_at > now - idle).order_by(WebSession.last_seen_at.desc())))


def create_invite(admin: User, note: str = "", ttl_hours: int = 72) -> tuple[Invite, str]:
    """A new host invite; returns the row and the code, which is shown once."""
    token = tokens.new_token(tokens.INVITE_PREFIX)
    invite = Invite(prefix=token.prefix, code_hash=token.hash, note=note.strip()[:200], created_by_id=admin.id,
                    expires_at=utcnow() + timedelta(hours=ttl_hours))
    db.session.add(invite)
    db.session.flush()
    audit.record(admin, "invite.create", "invite", invite.id, prefix=token.prefix,
                 expires_at=invite.expires_at.isoformat())
    db.session.commit()
    return invite, token.secret


def redeem_invite(user: User, code: str) -> None:
    """Make ``user`` a host with a single-use invite code, and commit."""
    if user.is_host:
        raise AccountError("This account is already a host.")
    _redeem(user, code)
    db.session.commit()


def _redeem(user: User, code: str) -> None:
    code = (code or "").strip()
    code_hash = tokens.hash_secret(code)
    # Compare-and-set: of two people racing for one code, exactly one wins.
    used = db.session.execute(
        update(Invite)
        .where(Invite.code_hash == code_hash, Invite.used_at.is_(None), Invite.expires_at > utcnow())
        .values(used_at=utcnow(), used_by_id=user.id)
        .returning(Invite.id)
    ).scalar_one_or_none()
    if used is None:
        db.session.rollback()
        invite = db.session.scalar(select(Invite).where(Invite.code_hash == code_hash))
        if invite is None:
            raise AccountError("That invite code is not valid. Check it, or ask an admin for a new one.")
        if invite.used_at is not None:
            raise AccountError("That invite code has already been used. Ask an admin for a new one.")
        raise AccountError("That invite code has expired. Ask an admin for a new one.")
    user.is_host = True
    audit.record(user, "invite.redeem", "invite", used)
