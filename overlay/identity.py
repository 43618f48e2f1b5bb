"""A host's identity is its WireGuard key pair; its peer id is derived from the public key (libp2p-style).

The peer id is the base58btc multihash (sha2-256) of the raw 32-byte public
key, so anyone holding the public key can check it and nobody needs the
private key, which never leaves the host.
"""
from __future__ import annotations

import base64
import binascii
import hashlib

import base58

KEY_BYTES = 32
SHA2_256, DIGEST_BYTES = 0x12, 0x20  # multihash code and length


class PublicKeyError(ValueError):
    """Not a WireGuard public key; the message says why."""


def parse_public_key(text: str) -> bytes:
    """The raw key of a WireGuard public key in its usual base64 form, or PublicKeyError."""
    text = (text or "").strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PublicKeyError("a WireGuard public key is 44 characters of base64 (the output of `wg pubkey`)") from None
    if len(raw) != KEY_BYTES or base64.b64encode(raw).decode() != text:
        raise PublicKeyError("a WireGuard public key is 32 bytes, written as 44 characters of base64")
    if raw == bytes(KEY_BYTES):
        raise PublicKeyError("the all-zero key is not a public key")
    return raw


def peer_id(public_key: str) -> str:
    """``Qm…``: the base58btc sha2-256 multihash of the public key."""
    digest = hashlib.sha256(parse_public_key(public_key)).digest()
    return base58.b58encode(bytes([SHA2_256, DIGEST_BYTES]) + digest).decode()
