"""What the authorization server issues and checks: authorization codes, access tokens (RS256 JWTs),
id_tokens, rotating refresh tokens, their revocation and introspection, and EHR launch contexts.

Every issued access token is recorded by its jti (auth_access_tokens), so that a revocation holds in
every worker at once; codes and refresh tokens are kept as digests. All tokens from one authorization
share a grant id: a replayed code or a reused refresh token revokes them all (RFC 9700 4.14)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidScopeError
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..settings import Settings
from .clients import Client
from .grant import Grant
from .keys import ALG, KeyRing
from .secrets import digest, new_token
from .tables import auth_access_tokens, auth_codes, auth_launches, auth_refresh_tokens

REFRESH_SCOPES = ("offline_access", "online_access")


class TokenRejected(Exception):
    """An access token that does not grant anything; `expired` tells an expired one from a bad one."""

    def __init__(self, message: str, *, expired: bool = False):
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class Audience:
    """Who the tokens of one request are for: the issuer (this server) and the FHIR base URL."""

    issuer: str
    fhir_base: str


def _now() -> datetime:
    return datetime.now(UTC)


def scope_list(scope: str | None) -> list[str]:
    return list(dict.fromkeys((scope or "").split()))


class Tokens:
    def __init__(self, store, settings: Settings, keys: KeyRing):
        self.store = store
        self.settings = settings
        self.keys = keys

    # ---- authorization codes ----

    async def create_code(self, client: Client, redirect_uri: str, code_challenge: str | None,
                          context: dict[str, Any]) -> str:
        code = new_token(32)
        async with self.store.write_engine.begin() as conn:
            await conn.execute(auth_codes.insert().values(
                code_hash=digest(code), grant_id=new_token(16), client_id=client.client_id, redirect_uri=redirect_uri,
                code_challenge=code_challenge, context=orjson.dumps(context).decode(),
                expires_at=_now() + timedelta(seconds=self.settings.auth_code_ttl_s)))
        return code

    async def exchange_code(self, client: Client, code: str, redirect_uri: str | None, verifier: str | None,
                            audience: Audience) -> dict[str, Any]:
        async with self.store.read_engine.connect() as conn:
            row = (await conn.execute(select(auth_codes).where(auth_codes.c.code_hash == digest(code)))).first()
        if row is None or row.client_id != client.client_id:
            raise InvalidGrantError("The authorization code is not known")
        if row.used_at is not None:
            await self.revoke_grant(row.grant_id)
            raise InvalidGrantError("The authorization code was already used; the tokens issued for it are revoked")
        if row.expires_at <= _now():
            raise InvalidGrantError("The authorization code has expired")
        if redirect_uri != row.redirect_uri:
            raise InvalidGrantError("redirect_uri differs from the one of the authorization request")
        if row.code_challenge is not None:
            if not verifier:
                raise InvalidGrantError("code_verifier is required (PKCE)")
            if create_s256_code_challenge(verifier) != row.code_challenge:
                raise InvalidGrantError("code_verifier does not match the code_challenge (PKCE)")
        elif verifier:
            raise InvalidGrantError("code_verifier given, but the authorization request had no code_challenge")
        context = orjson.loads(row.context)
        async with self.store.write_engine.begin() as conn:
            used = await conn.execute(update(auth_codes).where(auth_codes.c.code_hash == row.code_hash,
                                                               auth_codes.c.used_at.is_(None)).values(used_at=_now()))
            if used.rowcount == 1:
                return await self._issue(conn, client, context, row.grant_id, audience)
        await self.revoke_grant(row.grant_id)  # lost a race with another use of the same code
        raise InvalidGrantError("The authorization code was already used; the tokens issued for it are revoked")

    # ---- refresh tokens ----

    async def refresh(self, client: Client, token: str, scope: str | None, audience: Audience) -> dict[str, Any]:
        async with self.store.read_engine.connect() as conn:
            row = (await conn.execute(select(auth_refresh_tokens)
                                      .where(auth_refresh_tokens.c.token_hash == digest(token)))).first()
        if row is None or row.client_id != client.client_id:
            raise InvalidGrantError("The refresh token is not known")
        if row.revoked_at is not None:
            raise InvalidGrantError("The refresh token was revoked")
        if row.used_at is not None:
            await self.revoke_grant(row.grant_id)
            raise InvalidGrantError("The refresh token was already used (each is good for one refresh); "
                                    "every token of this authorization is revoked")
        if row.expires_at <= _now():
            raise InvalidGrantError("The refresh token has expired")
        context = orjson.loads(row.context)
        granted = scope_list(context["scope"])
        if scope is not None:
            asked = scope_list(scope)
            beyond = [s for s in asked if s not in granted]
            if beyond:
                raise InvalidScopeError(f"Scope beyond the original grant: {' '.join(beyond)}")
        async with self.store.write_engine.begin() as conn:
            used = await conn.execute(update(auth_refresh_tokens).where(
                auth_refresh_tokens.c.token_hash == row.token_hash, auth_refresh_tokens.c.used_at.is_(None),
                auth_refresh_tokens.c.revoked_at.is_(None)).values(used_at=_now()))
            if used.rowcount == 1:
                narrowed = {**context, "scope": " ".join(asked)} if scope is not None else context
                return await self._issue(conn, client, narrowed, row.grant_id, audience, refresh_context=context,
                                         refresh_expires=row.expires_at)
        await self.revoke_grant(row.grant_id)
        raise InvalidGrantError("The refresh token was already used; every token of this authorization is revoked")

    # ---- client credentials (backend services) ----

    async def client_credentials(self, client: Client, context: dict[str, Any], audience: Audience) -> dict[str, Any]:
        async with self.store.write_engine.begin() as conn:
            return await self._issue(conn, client, context, new_token(16), audience)

    # ---- issuing ----

    async def _sign(self, claims: dict[str, Any]) -> str:
        key = await self.keys.signing_key()
        return jwt.encode({"alg": ALG, "kid": key.kid, "typ": "JWT"}, claims, key.key)

    async def _issue(self, conn: AsyncConnection, client: Client, context: dict[str, Any], grant_id: str,
                     audience: Audience, *, refresh_context: dict[str, Any] | None = None,
                     refresh_expires: datetime | None = None) -> dict[str, Any]:
        """The token response for a grant's context (scope, sub, patient, encounter, fhir_user, ...)."""
        now = int(time.time())
        ttl = self.settings.auth_access_token_ttl_s
        scopes = scope_list(context["scope"])
        jti = new_token(16)
        claims = {"iss": audience.issuer, "sub": context["sub"], "aud": audience.fhir_base, "iat": now,
                  "exp": now + ttl, "jti": jti, "client_id": client.client_id, "scope": " ".join(scopes)}
        for claim, key in (("patient", "patient"), ("encounter", "encounter"), ("fhirUser", "fhir_user")):
            if context.get(key):
                claims[claim] = context[key]
        await conn.execute(auth_access_tokens.insert().values(
            jti=jti, grant_id=grant_id, client_id=client.client_id,
            expires_at=datetime.fromtimestamp(now + ttl, UTC)))
        response: dict[str, Any] = {"access_token": await self._sign(claims), "token_type": "Bearer",
                                    "expires_in": ttl, "scope": " ".join(scopes)}
        for key in ("patient", "encounter"):
            if context.get(key):
                response[key] = context[key]
        if "need_patient_banner" in context:
            response["need_patient_banner"] = context["need_patient_banner"]
        if "openid" in scopes and context.get("fhir_user"):
            id_claims = {"iss": audience.issuer, "sub": context["sub"], "aud": client.client_id, "iat": now,
                         "exp": now + ttl, "auth_time": context.get("auth_time", now)}
            if context.get("nonce"):
                id_claims["nonce"] = context["nonce"]
            if "fhirUser" in scopes:
                id_claims["fhirUser"] = f"{audience.fhir_base}/{context['fhir_user']}"
            response["id_token"] = await self._sign(id_claims)
        kept = refresh_context or context
        if any(s in scope_list(kept["scope"]) for s in REFRESH_SCOPES):
            response["refresh_token"] = refresh = new_token(32)
            await conn.execute(auth_refresh_tokens.insert().values(
                token_hash=digest(refresh), grant_id=grant_id, client_id=client.client_id,
                context=orjson.dumps(kept).decode(), expires_at=self._refresh_expiry(kept, refresh_expires)))
        return response

    def _refresh_expiry(self, context: dict[str, Any], previous: datetime | None) -> datetime:
        if "offline_access" in scope_list(context["scope"]):
            return _now() + timedelta(days=self.settings.auth_refresh_token_ttl_days)
        # online_access: good while the user's login is, and never longer than the token it replaces
        until = datetime.fromtimestamp(context.get("auth_time", time.time()) + self.settings.auth_online_ttl_s, UTC)
        return min(until, previous) if previous is not None else until

    # ---- verification, revocation, introspection ----

    async def _decode(self, token: str, *, check_exp: bool) -> dict[str, Any]:
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError) as exc:
            raise TokenRejected("The access token is not a well-formed JWT") from exc
        if header.get("alg") != ALG:
            raise TokenRejected(f"The access token must be signed with {ALG}")
        key = await self.keys.verification_key(str(header.get("kid", "")))
        if key is None:
            raise TokenRejected("The access token was not signed by a key of this server")
        try:
            claims = jwt.decode(token, key, algorithms=[ALG]).claims
        except (JoseError, ValueError) as exc:
            raise TokenRejected("The access token's signature is not valid") from exc
        if check_exp:
            try:
                jwt.JWTClaimsRegistry(leeway=1, exp={"essential": True}).validate(claims)
            except ExpiredTokenError as exc:
                raise TokenRejected("The access token has expired", expired=True) from exc
            except JoseError as exc:
                raise TokenRejected(f"The access token's claims are not valid: {exc.description}") from exc
        return claims

    async def verify(self, token: str, audience: Audience) -> Grant:
        """The Grant an access token carries, or TokenRejected."""
        claims = await self._decode(token, check_exp=True)
        if claims.get("iss") != audience.issuer:
            raise TokenRejected(f"The access token was issued by {claims.get('iss')!r}, not this server")
        aud = claims.get("aud")
        if audience.fhir_base not in (aud if isinstance(aud, list) else [aud]):
            raise TokenRejected(f"The access token is for {aud!r}, not {audience.fhir_base}")
        nbf = claims.get("nbf")
        if isinstance(nbf, int) and nbf > time.time() + 5:
            raise TokenRejected("The access token is not valid yet")
        async with self.store.read_engine.connect() as conn:
            row = (await conn.execute(select(auth_access_tokens.c.revoked_at)
                                      .where(auth_access_tokens.c.jti == str(claims.get("jti"))))).first()
        if row is None:
            raise TokenRejected("The access token is not known to this server")
        if row.revoked_at is not None:
            raise TokenRejected("The access token was revoked")
        return Grant(scopes=tuple(scope_list(claims.get("scope"))), client_id=str(claims.get("client_id")),
                     subject=str(claims.get("sub")), patient=claims.get("patient"), fhir_user=claims.get("fhirUser"),
                     token_id=str(claims["jti"]))

    async def revoke_grant(self, grant_id: str) -> None:
        now = _now()
        async with self.store.write_engine.begin() as conn:
            await conn.execute(update(auth_access_tokens).where(auth_access_tokens.c.grant_id == grant_id,
                                                                auth_access_tokens.c.revoked_at.is_(None))
                               .values(revoked_at=now))
            await conn.execute(update(auth_refresh_tokens).where(auth_refresh_tokens.c.grant_id == grant_id,
                                                                 auth_refresh_tokens.c.revoked_at.is_(None))
                               .values(revoked_at=now))

    async def _refresh_row(self, token: str):
        async with self.store.read_engine.connect() as conn:
            return (await conn.execute(select(auth_refresh_tokens)
                                       .where(auth_refresh_tokens.c.token_hash == digest(token)))).first()

    async def revoke(self, client: Client, token: str, hint: str | None) -> None:
        """RFC 7009: revoke a token of this client; an unknown or invalid token is not an error. A refresh
        token takes every token of its authorization with it (RFC 7009 2.1)."""
        if hint != "refresh_token" and token.count(".") == 2:
            try:
                claims = await self._decode(token, check_exp=False)
            except TokenRejected:
                return
            if claims.get("client_id") != client.client_id:
                raise InvalidGrantError("The token was not issued to this client")
            async with self.store.write_engine.begin() as conn:
                await conn.execute(update(auth_access_tokens).where(
                    auth_access_tokens.c.jti == str(claims.get("jti")),
                    auth_access_tokens.c.revoked_at.is_(None)).values(revoked_at=_now()))
            return
        row = await self._refresh_row(token)
        if row is None:
            return
        if row.client_id != client.client_id:
            raise InvalidGrantError("The token was not issued to this client")
        await self.revoke_grant(row.grant_id)

    async def introspect(self, token: str, audience: Audience) -> dict[str, Any]:
        """RFC 7662: what an active token grants; {"active": false} for anything else."""
        if token.count(".") == 2:
            try:
                grant = await self.verify(token, audience)
                claims = await self._decode(token, check_exp=False)
            except TokenRejected:
                return {"active": False}
            answer = {"active": True, "token_type": "Bearer", "scope": " ".join(grant.scopes),
                      "client_id": grant.client_id, "sub": grant.subject, "iss": claims["iss"],
                      "aud": claims["aud"], "exp": claims["exp"], "iat": claims["iat"], "jti": claims["jti"]}
            for claim in ("patient", "encounter", "fhirUser"):
                if claims.get(claim):
                    answer[claim] = claims[claim]
            return answer
        row = await self._refresh_row(token)
        if row is None or row.used_at is not None or row.revoked_at is not None or row.expires_at <= _now():
            return {"active": False}
        context = orjson.loads(row.context)
        return {"active": True, "token_type": "refresh_token", "scope": context["scope"], "client_id": row.client_id,
                "sub": context["sub"], "iss": audience.issuer, "exp": int(row.expires_at.timestamp())}

    # ---- EHR launch contexts ----

    async def create_launch(self, patient: str | None, encounter: str | None) -> str:
        launch = new_token(16)
        context = {k: v for k, v in (("patient", patient), ("encounter", encounter)) if v}
        async with self.store.write_engine.begin() as conn:
            await conn.execute(auth_launches.insert().values(
                id=launch, context=orjson.dumps(context).decode(),
                expires_at=_now() + timedelta(seconds=self.settings.auth_launch_ttl_s)))
        return launch

    async def launch_context(self, launch: str) -> dict[str, Any] | None:
        async with self.store.read_engine.connect() as conn:
            row = (await conn.execute(select(auth_launches).where(auth_launches.c.id == launch))).first()
        if row is None or row.expires_at <= _now():
            return None
        return orjson.loads(row.context)
