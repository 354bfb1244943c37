"""Providers' API keys at rest: encrypted with SMMGW_SECRET_KEY (Fernet, from `cryptography`),
so that a copy of the database alone does not give them away, and named by a fingerprint that
says which key is set without showing any of it.

SMMGW_SECRET_KEY is any passphrase of at least 32 characters (or a Fernet key): the Fernet key
is derived from it with SHA-256, so the operator never has to produce the exact format.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from app.errors import OperatorError

MIN_SECRET_LENGTH = 32
NO_SECRET = (
    "set SMMGW_SECRET_KEY (at least 32 characters, e.g. python3 -c 'import secrets;"
    " print(secrets.token_hex(32))') to store a provider's key encrypted"
)
WRONG_SECRET = (
    "a provider's key cannot be decrypted with this SMMGW_SECRET_KEY (was it changed?):"
    " set the key again with `smm-gateway providers set NAME --key K`"
)


def _fernet(secret: str) -> Fernet:
    if len(secret) < MIN_SECRET_LENGTH:
        raise OperatorError(NO_SECRET)
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def encrypt_key(secret: str, key: str) -> str:
    return _fernet(secret).encrypt(key.encode()).decode("ascii")


def decrypt_key(secret: str, token: str) -> str:
    try:
        return _fernet(secret).decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        raise OperatorError(WRONG_SECRET) from None


def fingerprint(key: str) -> str:
    """Eight hex digits of the key's SHA-256: tells two keys apart, reveals nothing of it."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]
