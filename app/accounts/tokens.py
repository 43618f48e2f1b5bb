"""Secrets shown once and stored as a visible prefix plus a SHA-256 hash.

API keys look like ``gpsk_<32 base62 chars><6 char checksum>``; the checksum
(CRC32 of the random part, base62) lets a key with a typo be refused without
a database lookup and lets secret scanners recognise a real key.
"""
from __future__ import annotations

import hashlib
import secrets
import zlib
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
PREFIX_SHOWN = 8
API_KEY_PREFIX = "gpsk_"
INVITE_PREFIX = "gpinv_"
ENROLLMENT_PREFIX = "gpenr_"
HOST_TOKEN_PREFIX = "gphost_"
WEB_SESSION_PREFIX = "gpss_"


@dataclass(frozen=True)
class Token:
    secret: str  # the full value, shown once
    prefix: str  # what lists show
    hash: str  # what the database keeps


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(kind: str) -> Token:
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    secret = f"{kind}{body}{_checksum(body)}"
    return Token(secret=secret, prefix=secret[:len(kind) + PREFIX_SHOWN], hash=hash_secret(secret))


def well_formed(secret: str, kind: str) -> bool:
    """True when ``secret`` has the shape and checksum of a token of ``kind``."""
    if not secret.startswith(kind) or len(secret) != len(kind) + RANDOM_LENGTH + CHECKSUM_LENGTH:
        return False
    body = secret[len(kind):len(kind) + RANDOM_LENGTH]
    tail = secret[len(kind) + RANDOM_LENGTH:]
    return all(c in ALPHABET for c in body) and secrets.compare_digest(tail, _checksum(body))
