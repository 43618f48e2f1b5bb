"""People: sign-up, password checks, roles and host invites."""
from __future__ import annotations

import re
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update

from . import audit, tokens
from .extensions import db
from .models import Invite, User, utcnow

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class AccountError(ValueError):
    """A request about an account that cannot be done; the message is for the person."""


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 254:
        raise AccountError("Enter a valid e-mail address.")
    return email


def check_password_rules(password: str) -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"Use a password of at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"Use a password of at most {MAX_PASSWORD_LENGTH} characters.")


def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == email.strip().lower()))


def create_user(email: str, password: str, *, invite_code: str | None = None, is_admin: bool = False) -> User:
    """Create an account (a client; a host too when a valid invite code is given) and commit."""
    email = normalise_email(email)
    check_password_rules(password)
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
    user.last_login_at = utcnow()
    db.session.commit()
    return user


def set_password(user: User, password: str) -> None:
    check_password_rules(password)
    user.password_hash = hasher.hash(password)
    db.session.commit()


def create_invite(admin: User, note: str = "", ttl_hours: int = 72) -> tuple[Invite, str]:
    """A new host invite; returns the row and the code, which is shown once."""
    token = tokens.new_token(tokens.INVITE_PREFIX)
    invite = Invite(prefix=token.prefix, code_hash=token.hash, note=note.strip()[:200], created_by_id=admin.id,
                    expires_at=utcnow() + timedelta(hours=ttl_hours))
    db.session.add(invite)
    db.session.flush()
    audit.record(admin, "invite.create", "invite", invite.id, prefix=token.prefix, expires_at=invite.expires_at.isoformat())
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
