"""Secrets: random tokens, slow salted hashes for passwords and client secrets (scrypt), fast digests for
long random tokens (codes, refresh tokens), which no dictionary attack can guess."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt cost: about 50 ms and 16 MiB per hash on one core, so a stolen table is slow to attack.
_N, _R, _P = 2**14, 8, 1


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def new_client_id() -> str:
    """A client id, which administrators pass to `fhir-server client remove`: hex, so it never starts with '-'
    (a URL-safe token does one time in 64, and the command line then takes it for an option)."""
    return secrets.token_hex(16)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(_unb64(key)))
    except ValueError:
        return False
    return hmac.compare_digest(actual, _unb64(key))


# Checked when a name is unknown, so that a wrong name costs the same time as a wrong password.
DUMMY_HASH = hash_secret(new_token())
