"""The SMART on FHIR authorization server: the authorization request and the pages it leads through
(login, consent with a patient picker), the token endpoint's grants, introspection, revocation and the
discovery document. HTTP handlers (rest/smart.py) only parse and answer; the decisions are here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import (
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from sqlalchemy import delete, select, update

from ..model.outcome import FhirError
from ..settings import Settings
from .client_auth import ASSERTION_ALGS, ClientAuthenticator
from .clients import ASYMMETRIC, Client, get_client
from .grant import system_access
from .keys import KeyRing
from .secrets import digest, new_token
from .tables import (
    auth_access_tokens,
    auth_assertions,
    auth_codes,
    auth_launches,
    auth_refresh_tokens,
    auth_requests,
)
from .tokens import Audience, Tokens, scope_list
from .users import User, authenticate, get_user

PREFIX = "/auth"
SCOPES_SUPPORTED = ["openid", "fhirUser", "launch", "launch/patient", "launch/encounter", "offline_access",
                    "online_access", "patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.read",
                    "user/*.read", "system/*.read", "patient/*.write", "user/*.write", "system/*.write"]
CAPABILITIES = ["launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter",
                "context-standalone-patient", "context-banner", "sso-openid-connect", "permission-patient",
                "permission-user", "permission-v1", "permission-v2", "permission-offline", "permission-online",
                "authorize-post"]


class PageError(Exception):
    """An authorization request that cannot be answered by a redirect (unknown client, wrong redirect_uri,
    stale page): the user sees this message (RFC 6749 4.1.2.1)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Redirect:
    url: str


@dataclass
class Pending:
    """An authorization request waiting for the user: what the login and consent pages show."""

    id: str
    csrf: str
    client: Client
    params: dict[str, Any]
    user: User | None = None
    patients: list[dict[str, str]] = field(default_factory=list)  # the picker's choices
    query: str = ""
    error: str = ""

    @property
    def scopes(self) -> list[str]:
        return self.params["scope"]

    def needs_patient_choice(self) -> bool:
        if self.params.get("launch_context", {}).get("patient") or (self.user and self.user.patient_id):
            return False
        return "launch/patient" in self.scopes or any(s.startswith("patient/") for s in self.scopes)


def _redirect_error(params: dict[str, Any], error: str, description: str) -> Redirect:
    values = [("error", error), ("error_description", description)]
    if params.get("state") is not None:
        values.append(("state", params["state"]))
    return Redirect(add_params_to_uri(params["redirect_uri"], values))


class AuthServer:
    def __init__(self, store, settings: Settings, service):
        self.store = store
        self.settings = settings
        self.service = service
        self.keys = KeyRing(store, settings)
        self.tokens = Tokens(store, settings, self.keys)
        self.client_auth = ClientAuthenticator(store)
        self._pruned = time.monotonic()

    async def start(self) -> None:
        await self.keys.signing_key()  # the first worker to start makes the first key
        await self.prune()

    async def prune(self) -> None:
        """Drop what can no longer be used (expired codes, tokens, requests, launches, assertion jtis)."""
        now = datetime.now(UTC)
        async with self.store.write_engine.begin() as conn:
            for table in (auth_requests, auth_codes, auth_access_tokens, auth_refresh_tokens, auth_launches,
                          auth_assertions):
                await conn.execute(delete(table).where(table.c.expires_at < now - timedelta(hours=1)))

    @staticmethod
    def audience(base: str) -> Audience:
        return Audience(issuer=base, fhir_base=base)

    # ---- discovery ----

    def configuration(self, base: str) -> dict[str, Any]:
        auth = base + PREFIX
        return {
            "issuer": base,
            "jwks_uri": f"{auth}/jwks",
            "authorization_endpoint": f"{auth}/authorize",
            "token_endpoint": f"{auth}/token",
            "introspection_endpoint": f"{auth}/introspect",
            "revocation_endpoint": f"{auth}/revoke",
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post",
                                                      "private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
            "scopes_supported": SCOPES_SUPPORTED,
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "capabilities": CAPABILITIES,
        }

    def openid_configuration(self, base: str) -> dict[str, Any]:
        smart = self.configuration(base)
        keep = ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "scopes_supported",
                "response_types_supported", "grant_types_supported", "token_endpoint_auth_methods_supported",
                "token_endpoint_auth_signing_alg_values_supported", "code_challenge_methods_supported",
                "id_token_signing_alg_values_supported")
        return {**{k: smart[k] for k in keep}, "subject_types_supported": ["public"],
                "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"]}

    # ---- the authorization request ----

    async def authorize(self, query: dict[str, str], base: str) -> Pending | Redirect:
        """Check an authorization request; a Pending request for the login page, or an error redirect."""
        client = await get_client(self.store, query.get("client_id", "")) if query.get("client_id") else None
        if client is None:
            raise PageError("Unknown client_id: this app is not registered with the server.")
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise PageError("redirect_uri is not one this app registered; the request is not answered.")
        params: dict[str, Any] = {"client_id": client.client_id, "redirect_uri": redirect_uri,
                                  "state": query.get("state"), "nonce": query.get("nonce")}
        if query.get("response_type") != "code":
            return _redirect_error(params, "unsupported_response_type", "response_type must be code")
        if query.get("aud", "").rstrip("/") != base:
            return _redirect_error(params, "invalid_request", f"aud must be this FHIR server's base URL {base}")
        method, challenge = query.get("code_challenge_method"), query.get("code_challenge")
        if challenge or method:
            if method != "S256":
                return _redirect_error(params, "invalid_request", "code_challenge_method must be S256")
            if not challenge or not 43 <= len(challenge) <= 128:
                return _redirect_error(params, "invalid_request", "code_challenge must be 43 to 128 characters")
        elif client.public:
            return _redirect_error(params, "invalid_request", "a public client must use PKCE (S256 code_challenge)")
        scopes = scope_list(query.get("scope"))
        if not scopes:
            return _redirect_error(params, "invalid_scope", "scope is required")
        beyond = [s for s in scopes if not client.allows(s)]
        if beyond:
            return _redirect_error(params, "invalid_scope", f"scope not registered for this app: {' '.join(beyond)}")
        if any(s.startswith("system/") for s in scopes):
            return _redirect_error(params, "invalid_scope", "system/ scopes are for backend services "
                                                            "(client_credentials), not for a user's authorization")
        launch_context: dict[str, Any] = {}
        if query.get("launch"):
            context = await self.tokens.launch_context(query["launch"])
            if context is None:
                return _redirect_error(params, "invalid_request", "launch is unknown or has expired")
            launch_context = context
        csrf = new_token(24)
        params.update(scope=scopes, code_challenge=challenge, launch_context=launch_context,
                      ehr_launch=bool(query.get("launch")))
        request_id = new_token(24)
        async with self.store.write_engine.begin() as conn:
            await conn.execute(auth_requests.insert().values(
                id=request_id, params=orjson.dumps(params).decode(), csrf_hash=digest(csrf),
                expires_at=datetime.now(UTC) + timedelta(seconds=self.settings.auth_request_ttl_s)))
        return Pending(request_id, csrf, client, params)

    async def pending(self, request_id: str, csrf_cookie: str | None, csrf_form: str | None = None) -> Pending:
        """The pending request a page belongs to, checked against the browser's CSRF cookie (and the form's
        copy of it): a page from another browser, or a forged form, gets nothing."""
        async with self.store.read_engine.connect() as conn:
            row = (await conn.execute(select(auth_requests).where(auth_requests.c.id == request_id))).first()
        if row is None or row.expires_at <= datetime.now(UTC):
            raise PageError("This authorization request has expired or was already answered. "
                            "Start again from the app.")
        if not csrf_cookie or digest(csrf_cookie) != row.csrf_hash or (csrf_form is not None
                                                                        and csrf_form != csrf_cookie):
            raise PageError("The form's security token does not match this browser's; start again from the app.",
                            status=403)
        params = orjson.loads(row.params)
        client = await get_client(self.store, params["client_id"])
        if client is None:
            raise PageError("The app was removed.")
        user = await get_user(self.store, row.username) if row.username else None
        return Pending(row.id, csrf_cookie, client, params, user)

    async def login(self, pending: Pending, username: str, password: str) -> bool:
        user = await authenticate(self.store, username, password)
        if user is None:
            pending.error = "The user name or password is wrong."
            return False
        pending.user = user
        pending.params["auth_time"] = int(time.time())
        async with self.store.write_engine.begin() as conn:
            await conn.execute(update(auth_requests).where(auth_requests.c.id == pending.id).values(
                username=user.username, params=orjson.dumps(pending.params).decode()))
        return True

    async def find_patients(self, pending: Pending, query: str, base: str) -> None:
        """The consent page's patient picker: patients whose name matches (the newest 20 without a name)."""
        params = [("_count", "20"), ("_sort", "-_lastUpdated")]
        if query.strip():
            params.append(("name", query.strip()))
        with system_access():  # the picker runs before any token exists
            _, page = await self.service.search(("Patient",), params, base_url=base, strict=False)
        pending.query = query
        pending.patients = []
        for version in page.matches:
            patient = orjson.loads(version.content)
            name = next(iter(patient.get("name") or []), {})
            text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
            pending.patients.append({"id": patient["id"], "name": text or "(no name)",
                                     "birthDate": patient.get("birthDate", "")})

    async def _patient_exists(self, patient_id: str) -> bool:
        try:
            with system_access():
                await self.service.read("Patient", patient_id)
        except FhirError:
            return False
        return True

    async def decide(self, pending: Pending, approve: bool, ticked: list[str], patient: str | None,
                     base: str) -> Redirect | None:
        """The consent page's answer: a redirect with a code, or access_denied; None to show the page again."""
        if pending.user is None:
            raise PageError("Log in first.", status=403)
        params = pending.params
        if not approve:
            await self._finish(pending)
            return _redirect_error(params, "access_denied", "The user denied the request")
        granted = [s for s in pending.scopes if s in ticked]
        context: dict[str, Any] = {"scope": " ".join(granted), "sub": pending.user.username,
                                   "fhir_user": pending.user.fhir_user, "auth_time": params.get("auth_time"),
                                   "nonce": params.get("nonce")}
        launch = params.get("launch_context") or {}
        own = pending.user.patient_id
        if own and launch.get("patient") not in (None, own):
            raise PageError("This launch is for another patient's record than yours.", status=403)
        chosen = own or launch.get("patient")
        if chosen is None and pending.needs_patient_choice():
            if not patient or not await self._patient_exists(patient):
                pending.error = "Choose the patient this app may see."
                return None
            chosen = patient
        if chosen:
            context["patient"] = chosen
            context["need_patient_banner"] = not params.get("ehr_launch")
        if launch.get("encounter"):
            context["encounter"] = launch["encounter"]
        code = await self.tokens.create_code(pending.client, params["redirect_uri"], params.get("code_challenge"),
                                             context)
        await self._finish(pending)
        values = [("code", code)]
        if params.get("state") is not None:
            values.append(("state", params["state"]))
        return Redirect(add_params_to_uri(params["redirect_uri"], values))

    async def _finish(self, pending: Pending) -> None:
        async with self.store.write_engine.begin() as conn:
            await conn.execute(delete(auth_requests).where(auth_requests.c.id == pending.id))

    # ---- the token endpoint ----

    async def token(self, form: dict[str, str], authorization: str | None, base: str) -> dict[str, Any]:
        if time.monotonic() - self._pruned > 3600:  # now and then, from the endpoint that makes the rows
            self._pruned = time.monotonic()
            await self.prune()
        grant_type = form.get("grant_type")
        if not grant_type:
            raise InvalidRequestError("grant_type is required")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            raise UnsupportedGrantTypeError(f"grant_type {grant_type!r} is not supported")
        client = await self.client_auth.authenticate(form, authorization, base + PREFIX + "/token")
        audience = self.audience(base)
        if grant_type == "authorization_code":
            if not form.get("code"):
                raise InvalidRequestError("code is required")
            return await self.tokens.exchange_code(client, form["code"], form.get("redirect_uri"),
                                                   form.get("code_verifier"), audience)
        if grant_type == "refresh_token":
            if not form.get("refresh_token"):
                raise InvalidRequestError("refresh_token is required")
            return await self.tokens.refresh(client, form["refresh_token"], form.get("scope"), audience)
        if client.kind != ASYMMETRIC:
            raise UnauthorizedClientError("client_credentials is for backend services registered with a key set "
                                          "(private_key_jwt)")
        scopes = scope_list(form.get("scope"))
        if not scopes:
            raise InvalidScopeError("scope is required")
        wrong = [s for s in scopes if not s.startswith("system/")]
        if wrong:
            raise InvalidScopeError(f"only system/ scopes can be granted to a backend service: {' '.join(wrong)}")
        beyond = [s for s in scopes if not client.allows(s)]
        if beyond:
            raise InvalidScopeError(f"scope not registered for this client: {' '.join(beyond)}")
        return await self.tokens.client_credentials(client, {"scope": " ".join(scopes), "sub": client.client_id},
                                                    audience)

    async def introspect(self, form: dict[str, str], authorization: str | None, base: str) -> dict[str, Any]:
        client = await self.client_auth.authenticate(form, authorization, base + PREFIX + "/token")
        if client.public:
            raise UnauthorizedClientError("introspection is for confidential clients (resource servers)")
        if not form.get("token"):
            raise InvalidRequestError("token is required")
        return await self.tokens.introspect(form["token"], self.audience(base))

    async def revoke(self, form: dict[str, str], authorization: str | None, base: str) -> None:
        client = await self.client_auth.authenticate(form, authorization, base + PREFIX + "/token")
        if not form.get("token"):
            raise InvalidRequestError("token is required")
        await self.tokens.revoke(client, form["token"], form.get("token_type_hint"))

