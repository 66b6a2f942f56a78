"""Shared parts of the SMART authorization tests: a server with FHIR_AUTH=on (two workers, so that every
cross-worker promise is exercised), client and user registration in its database, and a user's way
through the login and consent pages over HTTP."""

from __future__ import annotations

import asyncio
import html
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from conftest import RunningServer, _fresh_database_env, start_server, stop_server
from joserfc.jwk import ECKey, RSAKey

from fhir_server.settings import Settings

PASSWORD = "correct horse battery"
REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the tests read the code from the Location header


@dataclass
class AuthServer:
    server: RunningServer
    env: dict[str, str]
    patients: dict[str, str] = field(default_factory=dict)  # name -> id
    service_id: str = ""  # a backend service (system/*.cruds) and its private key
    service_key: RSAKey | None = None

    @property
    def base(self) -> str:
        return self.server.base_url

    @property
    def token_url(self) -> str:
        return self.base + "/auth/token"

    def settings(self) -> Settings:
        return Settings(data_dir=self.server.data_dir, database_url=self.env.get("FHIR_DATABASE_URL", ""))

    def run(self, work):
        """Run `work(store, settings)` against the server's database, as the CLI does."""
        from fhir_server.store import open_store

        async def main():
            settings = self.settings()
            store = open_store(settings)
            try:
                return await work(store, settings)
            finally:
                await store.close()

        return asyncio.run(main())

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env, "FHIR_DATA_DIR": str(self.server.data_dir)}
        exe = Path(sys.executable).parent / "fhir-server"
        return subprocess.run([str(exe), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)

    def add_client(self, kind: str = "public", scope: str = "", redirect_uris: tuple[str, ...] = (REDIRECT,),
                   jwks: dict | None = None, jwks_uri: str | None = None, name: str = "Test app"):
        from fhir_server.auth.clients import add_client

        return self.run(lambda store, _: add_client(store, name, list(redirect_uris), scope.split(), kind, jwks,
                                                    jwks_uri))

    def system_token(self, scope: str = "system/*.cruds") -> str:
        """An access token of the backend service, got with authlib's client and private_key_jwt."""
        auth = PrivateKeyJWT(self.token_url, headers={"kid": self.service_key.kid}, alg="RS384",
                             claims={"exp": int(time.time()) + 240})
        with OAuth2Client(self.service_id, self.service_key, token_endpoint_auth_method=auth) as client:
            return client.fetch_token(self.token_url, grant_type="client_credentials", scope=scope)["access_token"]

    def add_user(self, username: str, fhir_user: str) -> None:
        from fhir_server.auth.users import add_user

        self.run(lambda store, _: add_user(store, username, PASSWORD, fhir_user))


def start_auth_server(request, env_extra: dict[str, str] | None = None, workers: int = 2) -> AuthServer:
    env = {**_fresh_database_env(request), "FHIR_AUTH": "on", **(env_extra or {})}
    running = start_server(env, workers=workers)
    return AuthServer(running, env)


def auth_server_for(request) -> Iterator[AuthServer]:
    """For a module's `auth_server` fixture: a server with authorization on, an empty store of its own,
    two users and two patients."""
    server = start_auth_server(request)
    try:
        server.service_key = service_key("RS384", "service-1")
        service, _ = server.add_client("confidential-asymmetric", "system/*.cruds", (), name="Backend",
                                       jwks={"keys": [server.service_key.as_dict(private=False)]})
        server.service_id = service.client_id
        server.add_user("dr.li", "Practitioner/dr-li")
        server.add_user("wang.fang", "Patient/wang-fang")
        # Patients are written straight into the store (the API needs a token, and these are fixtures).
        for pid, family in (("wang-fang", "Wang"), ("zhao-lei", "Zhao")):
            server.run(lambda store, settings, pid=pid, family=family: _put_patient(store, settings, pid, family))
            server.patients[family] = pid
        yield server
    finally:
        stop_server(server.server)


async def _put_patient(store, settings, pid: str, family: str) -> None:
    from fhir_server.service import ResourceService

    service = ResourceService(store, settings)
    await service.start()
    await service.update("Patient", pid, {"resourceType": "Patient", "id": pid, "name": [{"family": family,
                                                                                           "given": ["Test"]}]})


def service_key(alg: str, kid: str):
    parameters = {"kid": kid, "alg": alg, "use": "sig"}
    if alg.startswith("ES"):
        return ECKey.generate_key("P-384", parameters=parameters, private=True)
    return RSAKey.generate_key(2048, parameters=parameters, private=True)


def form_fields(page: str) -> dict[str, str]:
    """The hidden request and csrf fields of a login or consent page."""
    fields = dict(re.findall(r"<input type=hidden name=(\w+) value='([^']*)'>", page))
    return {k: html.unescape(v) for k, v in fields.items()}


def oauth_client(server: AuthServer, client_id: str, scope: str, secret: str | None = None,
                 redirect_uri: str = REDIRECT, pkce: bool = True) -> OAuth2Client:
    return OAuth2Client(client_id, secret, scope=scope, redirect_uri=redirect_uri,
                        code_challenge_method="S256" if pkce else None,
                        token_endpoint_auth_method="client_secret_basic" if secret else "none")


def authorize(server: AuthServer, url: str, username: str = "dr.li", password: str = PASSWORD,
              patient: str | None = None, untick: tuple[str, ...] = (), approve: bool = True) -> httpx.Response:
    """A user's way from the authorization URL through login and consent; returns the final answer (the
    303 redirect to the app, or a page)."""
    with httpx.Client(timeout=30) as browser:
        page = browser.get(url)
        if page.status_code != 200:
            return page
        fields = form_fields(page.text)
        consent = browser.post(server.base + "/auth/login", data={**fields, "username": username,
                                                                   "password": password})
        if "name=action" not in consent.text:
            return consent
        fields = form_fields(consent.text)
        scopes = [html.unescape(s) for s in re.findall(r"name=scope value='([^']*)' checked", consent.text)]
        data = {**fields, "action": "approve" if approve else "deny",
                "scope": [s for s in scopes if s not in untick]}
        if patient is not None:
            data["patient"] = patient
        return browser.post(server.base + "/auth/consent", data=data)


def redirect_params(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_flow(server: AuthServer, client: OAuth2Client, **login) -> tuple[dict, str]:
    """Authorize and exchange the code with authlib's client; (token response, code verifier)."""
    verifier = "v" * 20 + str(time.time_ns()) + "x" * 20
    url, state = client.create_authorization_url(server.base + "/auth/authorize", code_verifier=verifier,
                                                 aud=server.base)
    answer = authorize(server, url, **login)
    params = redirect_params(answer)
    assert params["state"] == state
    location = answer.headers["location"]
    token = client.fetch_token(server.token_url, authorization_response=location, code_verifier=verifier)
    return dict(token), verifier


def code_for(server: AuthServer, client: OAuth2Client, verifier: str, **login) -> str:
    """An authorization code for a PKCE request with this verifier (after login and consent)."""
    url, _ = client.create_authorization_url(server.base + "/auth/authorize", code_verifier=verifier,
                                             aud=server.base)
    return redirect_params(authorize(server, url, **login))["code"]


@contextmanager
def local_web(answer: Callable[[str], tuple[int, str, bytes]]) -> Iterator[str]:
    """A web server on loopback whose GETs `answer(path)` -> (status, content type, body); yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, content_type, body = answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
