"""Tables of the authorization server (schema version 5): signing keys, registered clients and users, and
what was issued (codes, access and refresh tokens), so that every worker sees the same state.

Secrets are never stored: client secrets and passwords as slow salted hashes (auth/secrets.py), codes and
refresh tokens as SHA-256 digests (they are long random strings), access tokens by their jti."""

from __future__ import annotations

from sqlalchemy import Column, Index, PrimaryKeyConstraint, String, Table, Text

from ..store.schema import UtcDateTime, metadata

# RSA signing keys, newest signs; private_jwk is the JWK (JSON) with its private part.
auth_keys = Table(
    "auth_keys", metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("private_jwk", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

auth_clients = Table(
    "auth_clients", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    # public | confidential-symmetric (a secret) | confidential-asymmetric (private_key_jwt)
    Column("kind", String(32), nullable=False),
    Column("secret_hash", Text),
    Column("redirect_uris", Text, nullable=False),  # JSON list
    Column("scope", Text, nullable=False),  # the scopes it may be granted, space separated
    Column("jwks", Text),  # JSON key set (public keys) for private_key_jwt
    Column("jwks_uri", Text),
    Column("created_at", UtcDateTime, nullable=False),
)

auth_users = Table(
    "auth_users", metadata,
    Column("username", String(100), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("fhir_user", String(200), nullable=False),  # "Practitioner/1", "Patient/9"
    Column("created_at", UtcDateTime, nullable=False),
)

# An authorization request between /auth/authorize and the consent page's answer.
auth_requests = Table(
    "auth_requests", metadata,
    Column("id", String(64), primary_key=True),
    Column("params", Text, nullable=False),  # JSON: the validated request
    Column("csrf_hash", String(64), nullable=False),
    Column("username", String(100)),  # set once the user has logged in
    Column("expires_at", UtcDateTime, nullable=False),
)

# `context` (JSON) of codes and tokens: scope, subject, patient, encounter, fhir_user, need_patient_banner, ...
auth_codes = Table(
    "auth_codes", metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False),  # every token issued from this code carries it
    Column("client_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", String(128)),
    Column("context", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime),
)

auth_refresh_tokens = Table(
    "auth_refresh_tokens", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("context", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime),  # rotated: exchanged for a new one
    Column("revoked_at", UtcDateTime),
    Index("ix_auth_refresh_tokens_grant", "grant_id"),
)

auth_access_tokens = Table(
    "auth_access_tokens", metadata,
    Column("jti", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    Index("ix_auth_access_tokens_grant", "grant_id"),
)

# EHR launch contexts handed to an app as `launch`.
auth_launches = Table(
    "auth_launches", metadata,
    Column("id", String(64), primary_key=True),
    Column("context", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

# jti values of client assertions seen (private_key_jwt), refused when used again before they expire.
auth_assertions = Table(
    "auth_assertions", metadata,
    Column("client_id", String(64), nullable=False),
    Column("jti", String(255), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("client_id", "jti", name="pk_auth_assertions"),
)

AUTH_TABLES = [auth_keys, auth_clients, auth_users, auth_requests, auth_codes, auth_refresh_tokens,
               auth_access_tokens, auth_launches, auth_assertions]
