"""Signature primitives the sources share: Ed25519 verification (Discord, Standard Webhooks
v1a), with `cryptography`'s implementation.

Pure: bytes in, a boolean out; never raises on bad input.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def ed25519_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is the key's Ed25519 signature of `message`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """The signature by the key of a 32-byte seed (what senders do; relay uses it only in tests
    and stand-ins)."""
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def ed25519_public(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
