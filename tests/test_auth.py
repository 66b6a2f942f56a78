"""SMART on FHIR authorization end to end: discovery, the code flow with PKCE (public and confidential
apps) through the login and consent pages, refresh rotation, backend services with signed assertions,
introspection, revocation, the bearer-token checks of the FHIR API and key rotation. Real servers with
FHIR_AUTH=on and authlib's OAuth 2 client; no mocks."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import smart_auth
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from conftest import BACKENDS, stop_server
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey
from smart_auth import (
    PASSWORD,
    REDIRECT,
    AuthServer,
    authorize,
    code_flow,
    code_for,
    form_fields,
    local_web,
    oauth_client,
    redirect_params,
    service_key,
    start_auth_server,
)


@pytest.fixture(scope="module", params=BACKENDS)
def auth_server(request):
    yield from smart_auth.auth_server_for(request)


PATIENT_APP = "launch/patient openid fhirUser offline_access patient/*.rs"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fresh_get(url: str, token: str | None, times: int = 6) -> list[httpx.Response]:
    """The same request on new connections, so that both workers answer it."""
    answers = []
    for _ in range(times):
        with httpx.Client(timeout=30) as http:
            answers.append(http.get(url, headers=bearer(token) if token else {}))
    return answers


def claims(token: str) -> dict:
    return orjson.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def newest_version(server: AuthServer, token: str):
    """The newest version of anything but the AuditEvents that every request (refusals too) writes."""
    entries = httpx.get(server.base + "/_history", params={"_count": 200}, headers=bearer(token)).json()
    return [(e["fullUrl"], e["response"]["etag"]) for e in entries.get("entry", [])
            if "/AuditEvent/" not in e["fullUrl"]][:1]


def oauth_error(answer: httpx.Response, status: int, error: str) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["error"] == error, body
    return body.get("error_description", "")


def auth_outcome(answer: httpx.Response, code: str, error: str | None = "invalid_token") -> str:
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="http://127.0.0.1:')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    issue = answer.json()["issue"][0]
    assert (issue["code"], issue["expression"]) == (code, ["Authorization"])
    return issue["diagnostics"]


# ---- discovery ----

def test_discovery(auth_server: AuthServer):
    config = httpx.get(auth_server.base + "/.well-known/smart-configuration").json()
    base = auth_server.base
    assert config["issuer"] == base
    assert config["token_endpoint"] == base + "/auth/token"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert set(config["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post",
                                                                     "private_key_jwt", "none"}
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert {"launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
            "context-standalone-patient", "sso-openid-connect", "permission-v2", "permission-offline",
            "authorize-post"} <= set(config["capabilities"])
    security = httpx.get(base + "/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == config["authorization_endpoint"] and uris["token"] == config["token_endpoint"]
    keys = httpx.get(config["jwks_uri"]).json()["keys"]
    assert keys and all("d" not in k and k["alg"] == "RS256" for k in keys)
    assert httpx.get(base + "/.well-known/openid-configuration").json()["jwks_uri"] == config["jwks_uri"]


# ---- the authorization code flow ----

def test_public_app_standalone_launch_with_patient_picker(auth_server: AuthServer):
    app, secret = auth_server.add_client("public", PATIENT_APP)
    assert secret is None
    client = oauth_client(auth_server, app.client_id, PATIENT_APP)
    zhao = auth_server.patients["Zhao"]
    token, _ = code_flow(auth_server, client, patient=zhao)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert token["patient"] == zhao and token["need_patient_banner"] is True
    assert token["scope"].split() == PATIENT_APP.split()
    assert token["refresh_token"]
    access = claims(token["access_token"])
    assert access["iss"] == access["aud"] == auth_server.base
    assert (access["sub"], access["client_id"], access["patient"], access["fhirUser"]) == (
        "dr.li", app.client_id, zhao, "Practitioner/dr-li")
    assert access["exp"] - access["iat"] == 3600 and access["jti"]
    jwks = KeySet.import_key_set(httpx.get(auth_server.base + "/auth/jwks").json())
    id_token = jwt.decode(token["id_token"], jwks, algorithms=["RS256"]).claims
    assert id_token["aud"] == app.client_id and id_token["sub"] == "dr.li"
    assert id_token["fhirUser"] == auth_server.base + "/Practitioner/dr-li"
    answer = httpx.get(f"{auth_server.base}/Patient/{zhao}", headers=bearer(token["access_token"]))
    assert answer.status_code == 200 and answer.json()["id"] == zhao


def test_confidential_app_patient_user_gets_own_record(auth_server: AuthServer):
    app, secret = auth_server.add_client("confidential-symmetric", "openid fhirUser patient/*.rs online_access")
    client = oauth_client(auth_server, app.client_id, "openid fhirUser patient/*.rs online_access", secret=secret,
                          pkce=False)
    url, state = client.create_authorization_url(auth_server.base + "/auth/authorize", aud=auth_server.base,
                                                 nonce="n-0S6_WzA2Mj")
    answer = authorize(auth_server, url, username="wang.fang")
    params = redirect_params(answer)
    assert params["state"] == state
    token = client.fetch_token(auth_server.token_url, authorization_response=answer.headers["location"])
    assert token["patient"] == "wang-fang" and token["refresh_token"]
    jwks = KeySet.import_key_set(httpx.get(auth_server.base + "/auth/jwks").json())
    id_token = jwt.decode(token["id_token"], jwks).claims
    assert id_token["nonce"] == "n-0S6_WzA2Mj"
    assert id_token["fhirUser"] == auth_server.base + "/Patient/wang-fang"


def test_unticked_scope_is_not_granted(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", PATIENT_APP)
    client = oauth_client(auth_server, app.client_id, PATIENT_APP)
    token, _ = code_flow(auth_server, client, patient=auth_server.patients["Wang"], untick=("offline_access",))
    assert "offline_access" not in token["scope"].split()
    assert "refresh_token" not in token


def test_wrong_and_missing_code_verifier(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", PATIENT_APP)
    client = oauth_client(auth_server, app.client_id, PATIENT_APP)
    verifier = "a" * 50
    code = code_for(auth_server, client, verifier, patient=auth_server.patients["Wang"])
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": app.client_id}
    answer = httpx.post(auth_server.token_url, data={**form, "code_verifier": "b" * 50})
    assert "does not match" in oauth_error(answer, 400, "invalid_grant")
    answer = httpx.post(auth_server.token_url, data=form)
    assert "code_verifier is required" in oauth_error(answer, 400, "invalid_grant")
    answer = httpx.post(auth_server.token_url, data={**form, "code_verifier": verifier})
    assert answer.status_code == 200 and answer.json()["access_token"]


def test_public_app_must_use_pkce_s256(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", PATIENT_APP)
    query = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT, "scope": PATIENT_APP,
             "state": "s1", "aud": auth_server.base}
    answer = httpx.get(auth_server.base + "/auth/authorize", params=query)
    params = redirect_params(answer)
    assert (params["error"], params["state"]) == ("invalid_request", "s1")
    assert "PKCE" in params["error_description"]
    answer = httpx.get(auth_server.base + "/auth/authorize", params={
        **query, "code_challenge": "c" * 43, "code_challenge_method": "plain"})
    assert redirect_params(answer)["error_description"] == "code_challenge_method must be S256"


def test_replayed_code_is_refused_and_revokes_its_tokens(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", PATIENT_APP)
    client = oauth_client(auth_server, app.client_id, PATIENT_APP)
    verifier = "r" * 60
    code = code_for(auth_server, client, verifier, patient=auth_server.patients["Wang"])
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": app.client_id,
            "code_verifier": verifier}
    first = httpx.post(auth_server.token_url, data=form).json()
    patient_url = f"{auth_server.base}/Patient/{auth_server.patients['Wang']}"
    assert all(a.status_code == 200 for a in fresh_get(patient_url, first["access_token"], 2))
    again = httpx.post(auth_server.token_url, data=form)
    assert "already used" in oauth_error(again, 400, "invalid_grant")
    for answer in fresh_get(patient_url, first["access_token"]):
        assert auth_outcome(answer, "login") == "The access token was revoked"
    refresh = httpx.post(auth_server.token_url, data={"grant_type": "refresh_token", "client_id": app.client_id,
                                                      "refresh_token": first["refresh_token"]})
    assert "revoked" in oauth_error(refresh, 400, "invalid_grant")


def test_redirect_uri_must_match_exactly(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", PATIENT_APP)
    client = oauth_client(auth_server, app.client_id, PATIENT_APP, redirect_uri=REDIRECT + "/other")
    url, _ = client.create_authorization_url(auth_server.base + "/auth/authorize", code_verifier="q" * 50,
                                             aud=auth_server.base)
    answer = httpx.get(url)
    assert answer.status_code == 400 and "location" not in answer.headers  # never sent to an unregistered URI
    assert "redirect_uri is not one this app registered" in answer.text
    # a code got for the registered URI cannot be exchanged with another one
    client = oauth_client(auth_server, app.client_id, PATIENT_APP)
    code = code_for(auth_server, client, "q" * 50, patient=auth_server.patients["Wang"])
    answer = httpx.post(auth_server.token_url, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT + "/other",
        "client_id": app.client_id, "code_verifier": "q" * 50})
    assert "redirect_uri differs" in oauth_error(answer, 400, "invalid_grant")


def test_scope_outside_registration_is_refused(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", "launch/patient patient/Observation.rs")
    client = oauth_client(auth_server, app.client_id, "launch/patient patient/Observation.rs patient/Patient.rs")
    url, state = client.create_authorization_url(auth_server.base + "/auth/authorize", code_verifier="s" * 50,
                                                 aud=auth_server.base)
    params = redirect_params(httpx.get(url))
    assert (params["error"], params["state"]) == ("invalid_scope", state)
    assert params["error_description"].endswith("patient/Patient.rs")
    # narrower than the registration is fine
    client = oauth_client(auth_server, app.client_id, "launch/patient patient/Observation.r")
    url, _ = client.create_authorization_url(auth_server.base + "/auth/authorize", code_verifier="s" * 50,
                                             aud=auth_server.base)
    assert httpx.get(url).status_code == 200


def test_authorization_request_errors(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", PATIENT_APP)
    query = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT, "scope": PATIENT_APP,
             "state": "s2", "aud": auth_server.base, "code_challenge": "c" * 43, "code_challenge_method": "S256"}
    unknown = httpx.get(auth_server.base + "/auth/authorize", params={**query, "client_id": "nobody"})
    assert unknown.status_code == 400 and "Unknown client_id" in unknown.text and "location" not in unknown.headers
    wrong_aud = redirect_params(httpx.get(auth_server.base + "/auth/authorize",
                                          params={**query, "aud": "https://elsewhere.example/fhir"}))
    assert wrong_aud["error"] == "invalid_request" and "aud" in wrong_aud["error_description"]
    token_type = redirect_params(httpx.get(auth_server.base + "/auth/authorize",
                                           params={**query, "response_type": "token"}))
    assert token_type["error"] == "unsupported_response_type"
    launch = redirect_params(httpx.get(auth_server.base + "/auth/authorize", params={**query, "launch": "nope"}))
    assert launch["error"] == "invalid_request" and "launch" in launch["error_description"]
    # the same request by POST (authorize-post) leads to the login page
    page = httpx.post(auth_server.base + "/auth/authorize", data=query)
    assert page.status_code == 200 and "name=password" in page.text


def test_login_and_consent_pages_refuse_bad_input(auth_server: AuthServer):
    app, _ = auth_server.add_client("public", PATIENT_APP)
    client = oauth_client(auth_server, app.client_id, PATIENT_APP)
    url, state = client.create_authorization_url(auth_server.base + "/auth/authorize", code_verifier="p" * 50,
                                                 aud=auth_server.base)
    wrong = authorize(auth_server, url, password="not the password")
    assert wrong.status_code == 200 and "The user name or password is wrong." in wrong.text
    unknown = authorize(auth_server, url, username="nobody")
    assert "The user name or password is wrong." in unknown.text
    no_patient = authorize(auth_server, url)  # a practitioner must pick the patient
    assert "Choose the patient" in no_patient.text
    missing = authorize(auth_server, url, patient="no-such-patient")
    assert "Choose the patient" in missing.text
    denied = redirect_params(authorize(auth_server, url, approve=False))
    assert (denied["error"], denied["state"]) == ("access_denied", state)
    with httpx.Client(timeout=30) as browser:
        fields = form_fields(browser.get(url).text)
        forged = httpx.post(auth_server.base + "/auth/login", data={**fields, "username": "dr.li",
                                                                    "password": PASSWORD})  # no cookie
        assert forged.status_code == 403 and "security token" in forged.text
        other = browser.post(auth_server.base + "/auth/login", data={**fields, "csrf": "x" * 32,
                                                                     "username": "dr.li", "password": PASSWORD})
        assert other.status_code == 403
        gone = browser.post(auth_server.base + "/auth/login", data={**fields, "request": "unknown"})
        assert gone.status_code == 400 and "expired or was already answered" in gone.text
    page = httpx.get(url)
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]


# ---- refresh tokens ----

def test_refresh_rotation_and_reuse(auth_server: AuthServer):
    app, secret = auth_server.add_client("confidential-symmetric", PATIENT_APP)
    client = oauth_client(auth_server, app.client_id, PATIENT_APP, secret=secret)
    token, _ = code_flow(auth_server, client, patient=auth_server.patients["Wang"])
    first_refresh = token["refresh_token"]
    renewed = client.refresh_token(auth_server.token_url, refresh_token=first_refresh)
    assert renewed["refresh_token"] != first_refresh and renewed["access_token"] != token["access_token"]
    assert renewed["patient"] == auth_server.patients["Wang"] and renewed["scope"] == token["scope"]
    narrowed = httpx.post(auth_server.token_url, auth=(app.client_id, secret), data={
        "grant_type": "refresh_token", "refresh_token": renewed["refresh_token"], "scope": "patient/*.rs"}).json()
    assert narrowed["scope"] == "patient/*.rs" and claims(narrowed["access_token"])["scope"] == "patient/*.rs"
    wider = httpx.post(auth_server.token_url, auth=(app.client_id, secret), data={
        "grant_type": "refresh_token", "refresh_token": narrowed["refresh_token"], "scope": "user/*.rs"})
    assert "beyond the original grant" in oauth_error(wider, 400, "invalid_scope")
    # an old refresh token used again: refused, and the whole authorization is revoked
    reuse = httpx.post(auth_server.token_url, auth=(app.client_id, secret),
                       data={"grant_type": "refresh_token", "refresh_token": first_refresh})
    assert "already used" in oauth_error(reuse, 400, "invalid_grant")
    latest = httpx.post(auth_server.token_url, auth=(app.client_id, secret),
                        data={"grant_type": "refresh_token", "refresh_token": narrowed["refresh_token"]})
    assert "revoked" in oauth_error(latest, 400, "invalid_grant")
    answer = httpx.get(auth_server.base + "/Patient/wang-fang", headers=bearer(narrowed["access_token"]))
    assert auth_outcome(answer, "login") == "The access token was revoked"
    other = httpx.post(auth_server.token_url, data={"grant_type": "refresh_token", "refresh_token": "x" * 43,
                                                    "client_id": app.client_id, "client_secret": secret})
    assert oauth_error(other, 400, "invalid_grant") == "The refresh token is not known"


# ---- the token endpoint's own errors ----

def test_token_endpoint_errors(auth_server: AuthServer):
    app, secret = auth_server.add_client("confidential-symmetric", PATIENT_APP)
    url = auth_server.token_url
    assert oauth_error(httpx.post(url, data={"code": "x"}), 400, "invalid_request") == "grant_type is required"
    oauth_error(httpx.post(url, data={"grant_type": "password"}), 400, "unsupported_grant_type")
    wrong = httpx.post(url, auth=(app.client_id, "wrong"), data={"grant_type": "authorization_code", "code": "x"})
    assert oauth_error(wrong, 401, "invalid_client") == "The client secret is wrong"
    assert wrong.headers["www-authenticate"].startswith("Basic ")
    no_secret = httpx.post(url, data={"grant_type": "authorization_code", "code": "x", "client_id": app.client_id})
    assert "must authenticate" in oauth_error(no_secret, 401, "invalid_client")
    unknown = httpx.post(url, data={"grant_type": "authorization_code", "code": "x", "client_id": "nobody"})
    assert oauth_error(unknown, 401, "invalid_client") == "Client 'nobody' is not registered"
    no_code = httpx.post(url, auth=(app.client_id, secret), data={"grant_type": "authorization_code"})
    assert oauth_error(no_code, 400, "invalid_request") == "code is required"
    bad_code = httpx.post(url, data={"grant_type": "authorization_code", "code": "nope", "client_id": app.client_id,
                                     "client_secret": secret, "redirect_uri": REDIRECT})
    assert oauth_error(bad_code, 400, "invalid_grant") == "The authorization code is not known"
    as_service = httpx.post(url, auth=(app.client_id, secret), data={"grant_type": "client_credentials",
                                                                     "scope": "system/*.rs"})
    oauth_error(as_service, 400, "unauthorized_client")
    json_body = httpx.post(url, json={"grant_type": "client_credentials"})
    assert "x-www-form-urlencoded" in oauth_error(json_body, 400, "invalid_request")


# ---- backend services (client_credentials with private_key_jwt) ----

def assertion(server: AuthServer, client_id: str, key, alg: str, **claims) -> str:
    values = {"exp": int(time.time()) + 240, **claims}
    aud = values.pop("aud", server.token_url)
    return private_key_jwt_sign(key, client_id, aud, alg=alg, claims=values, header={"kid": key.kid})


def service_token(server: AuthServer, client_id: str, jwt_assertion: str, scope: str = "system/*.rs"):
    return httpx.post(server.token_url, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt_assertion})


@pytest.fixture(scope="module")
def jwks_host():
    """A local web server publishing a backend service's key set (its jwks_uri)."""
    published: dict[str, bytes] = {}

    def answer(path: str) -> tuple[int, str, bytes]:
        body = published.get(path)
        return (200 if body else 404), "application/json", body or b"{}"

    with local_web(answer) as url:
        yield url, published


def test_backend_service_with_registered_key_set(auth_server: AuthServer):
    key = service_key("RS384", "rs-1")
    app, _ = auth_server.add_client("confidential-asymmetric", "system/*.rs system/Observation.cruds", (),
                                    jwks={"keys": [key.as_dict(private=False)]})
    good = service_token(auth_server, app.client_id, assertion(auth_server, app.client_id, key, "RS384"))
    assert good.status_code == 200, good.text
    token = good.json()
    assert token["scope"] == "system/*.rs" and "refresh_token" not in token and "patient" not in token
    access = claims(token["access_token"])
    assert access["sub"] == access["client_id"] == app.client_id
    answer = httpx.get(auth_server.base + "/Patient", headers=bearer(token["access_token"]))
    assert answer.status_code == 200 and answer.json()["resourceType"] == "Bundle"

    def refused(jwt_assertion: str, scope: str = "system/*.rs") -> str:
        return oauth_error(service_token(auth_server, app.client_id, jwt_assertion, scope), 401, "invalid_client")

    now = int(time.time())
    assert "expired" in refused(assertion(auth_server, app.client_id, key, "RS384", exp=now - 30))
    assert "more than 300 s ahead" in refused(assertion(auth_server, app.client_id, key, "RS384", exp=now + 900))
    assert "aud must be the token URL" in refused(assertion(auth_server, app.client_id, key, "RS384",
                                                            aud=auth_server.base + "/auth/authorize"))
    used = assertion(auth_server, app.client_id, key, "RS384", jti="once-only")
    assert service_token(auth_server, app.client_id, used).status_code == 200
    assert "jti was used before" in refused(used)
    stranger = service_key("RS384", "rs-1")  # same kid, another key: not the registered one
    assert "does not verify" in refused(assertion(auth_server, app.client_id, stranger, "RS384"))
    assert "signed with one of RS384, ES384" in refused(
        assertion(auth_server, app.client_id, service_key("RS256", "rs-1"), "RS256"))
    assert "is not registered" in refused(assertion(auth_server, "nobody", key, "RS384"))
    scoped = service_token(auth_server, app.client_id, assertion(auth_server, app.client_id, key, "RS384"),
                           scope="patient/*.rs")
    assert "only system/ scopes" in oauth_error(scoped, 400, "invalid_scope")
    beyond = service_token(auth_server, app.client_id, assertion(auth_server, app.client_id, key, "RS384"),
                           scope="system/Patient.cud")
    assert "not registered" in oauth_error(beyond, 400, "invalid_scope")


def test_backend_service_with_jwks_uri_and_authlib_client(auth_server: AuthServer, jwks_host):
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    host, published = jwks_host
    key = service_key("ES384", "ec-1")
    path = f"/{auth_server.server.data_dir.name}/jwks.json"
    published[path] = orjson.dumps({"keys": [key.as_dict(private=False)]})
    app, _ = auth_server.add_client("confidential-asymmetric", "system/*.rs", (), jwks_uri=host + path)
    auth = PrivateKeyJWT(auth_server.token_url, headers={"kid": "ec-1"}, alg="ES384",
                         claims={"exp": int(time.time()) + 120})
    with OAuth2Client(app.client_id, key, token_endpoint_auth_method=auth) as client:
        token = client.fetch_token(auth_server.token_url, grant_type="client_credentials", scope="system/*.rs")
    assert token["scope"] == "system/*.rs"
    # the service rotates its key: the server fetches the key set again for the new kid
    rotated = service_key("ES384", "ec-2")
    published[path] = orjson.dumps({"keys": [rotated.as_dict(private=False)]})
    good = service_token(auth_server, app.client_id, assertion(auth_server, app.client_id, rotated, "ES384"))
    assert good.status_code == 200, good.text
    del published[path]
    gone = service_token(auth_server, app.client_id,
                         assertion(auth_server, app.client_id, service_key("ES384", "ec-3"), "ES384"))
    assert "could not be read" in oauth_error(gone, 401, "invalid_client")


# ---- introspection and revocation ----

def test_introspection_and_revocation(auth_server: AuthServer):
    app, secret = auth_server.add_client("confidential-symmetric", PATIENT_APP)
    client = oauth_client(auth_server, app.client_id, PATIENT_APP, secret=secret)
    token, _ = code_flow(auth_server, client, patient=auth_server.patients["Wang"])
    resource_server, rs_secret = auth_server.add_client("confidential-symmetric", "system/*.rs", name="Gateway")
    introspect = auth_server.base + "/auth/introspect"

    def look(value: str) -> dict:
        answer = httpx.post(introspect, auth=(resource_server.client_id, rs_secret), data={"token": value})
        assert answer.status_code == 200, answer.text
        return answer.json()

    active = look(token["access_token"])
    assert active["active"] is True and active["client_id"] == app.client_id and active["sub"] == "dr.li"
    assert active["patient"] == auth_server.patients["Wang"] and active["scope"] == token["scope"]
    assert look(token["refresh_token"])["token_type"] == "refresh_token"
    assert look("garbage") == {"active": False}
    assert look(token["access_token"][:-4] + "AAAA") == {"active": False}
    anonymous = httpx.post(introspect, data={"token": token["access_token"]})
    assert "is not registered" in oauth_error(anonymous, 401, "invalid_client")
    public_app, _ = auth_server.add_client("public", PATIENT_APP)
    as_public = httpx.post(introspect, data={"token": token["access_token"], "client_id": public_app.client_id})
    oauth_error(as_public, 400, "unauthorized_client")

    patient_url = f"{auth_server.base}/Patient/{auth_server.patients['Wang']}"
    assert all(a.status_code == 200 for a in fresh_get(patient_url, token["access_token"], 2))
    other_app, other_secret = auth_server.add_client("confidential-symmetric", PATIENT_APP)
    foreign = httpx.post(auth_server.base + "/auth/revoke", auth=(other_app.client_id, other_secret),
                         data={"token": token["access_token"]})
    assert "not issued to this client" in oauth_error(foreign, 400, "invalid_grant")
    client.revoke_token(auth_server.base + "/auth/revoke", token["access_token"], token_type_hint="access_token")
    assert look(token["access_token"]) == {"active": False}
    for answer in fresh_get(patient_url, token["access_token"]):  # every worker refuses it at once
        assert auth_outcome(answer, "login") == "The access token was revoked"
    renewed = client.refresh_token(auth_server.token_url, refresh_token=token["refresh_token"])
    assert httpx.get(patient_url, headers=bearer(renewed["access_token"])).status_code == 200
    # revoking a refresh token ends its whole authorization, access tokens included
    client.revoke_token(auth_server.base + "/auth/revoke", renewed["refresh_token"], token_type_hint="refresh_token")
    assert look(renewed["refresh_token"]) == {"active": False}
    assert auth_outcome(httpx.get(patient_url, headers=bearer(renewed["access_token"])), "login")
    unknown = httpx.post(auth_server.base + "/auth/revoke", auth=(app.client_id, secret), data={"token": "nope"})
    assert unknown.status_code == 200  # RFC 7009: an invalid token is no error


# ---- the FHIR API's bearer-token checks ----

def forged(server: AuthServer, **changes) -> str:
    """A token signed with the server's own current key (read from its database), with some claims changed."""
    from fhir_server.auth.keys import KeyRing

    async def signing(store, settings):
        return await KeyRing(store, settings).signing_key()

    key = server.run(signing)
    real = claims(server.system_token())
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {**real, **changes}, key.key)


def test_requests_without_a_valid_token_get_401(auth_server: AuthServer):
    url = auth_server.base + "/Patient"
    token = auth_server.system_token()
    before = newest_version(auth_server, token)
    missing = httpx.post(url, json={"resourceType": "Patient"})
    assert "No access token" in auth_outcome(missing, "login", error=None)
    basic = httpx.get(url, auth=("dr.li", PASSWORD))
    assert "No access token" in auth_outcome(basic, "login", error=None)
    header, payload, signature = token.split(".")
    body = claims(token)
    tampered_payload = base64.urlsafe_b64encode(orjson.dumps({**body, "scope": "system/*.cruds user/*.cruds"}))
    tampered = f"{header}.{tampered_payload.decode().rstrip('=')}.{signature}"
    assert auth_outcome(httpx.post(url, json={"resourceType": "Patient"}, headers=bearer(tampered)),
                        "login") == "The access token's signature is not valid"
    assert "not a well-formed JWT" in auth_outcome(httpx.get(url, headers=bearer("abc.def")), "login")
    wrong_aud = forged(auth_server, aud="https://other-server.example/fhir")
    assert "not " + auth_server.base in auth_outcome(httpx.get(url, headers=bearer(wrong_aud)), "login")
    wrong_iss = forged(auth_server, iss="https://other-server.example")
    assert "issued by" in auth_outcome(httpx.get(url, headers=bearer(wrong_iss)), "login")
    expired = forged(auth_server, exp=int(time.time()) - 60)
    assert auth_outcome(httpx.get(url, headers=bearer(expired)), "expired") == "The access token has expired"
    never_issued = forged(auth_server, jti="never-issued")
    assert "not known" in auth_outcome(httpx.get(url, headers=bearer(never_issued)), "login")
    stranger = RSAKey.generate_key(2048, parameters={"kid": claims_kid(token)}, private=True)
    foreign = jwt.encode({"alg": "RS256", "kid": claims_kid(token)}, body, stranger)
    assert "signature is not valid" in auth_outcome(httpx.get(url, headers=bearer(foreign)), "login")
    unknown_kid = jwt.encode({"alg": "RS256", "kid": "not-ours"}, body, stranger)
    assert "not signed by a key of this server" in auth_outcome(httpx.get(url, headers=bearer(unknown_kid)), "login")
    hs256 = jwt.encode({"alg": "HS256"}, body, OctKey.import_key("secret-secret-secret-secret-32b!"),
                       algorithms=["HS256"])
    assert "must be signed with RS256" in auth_outcome(httpx.get(url, headers=bearer(hs256)), "login")
    assert newest_version(auth_server, token) == before  # nothing was written
    for public in ("/metadata", "/.well-known/smart-configuration", "/health", "/auth/jwks"):
        assert httpx.get(auth_server.base + public).status_code == 200, public


def claims_kid(token: str) -> str:
    return orjson.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]


@pytest.fixture(scope="module", params=BACKENDS)
def short_lived(request):
    server = start_auth_server(request, {"FHIR_AUTH_ACCESS_TOKEN_TTL_S": "1"}, workers=1)
    key = service_key("RS384", "short-1")
    app, _ = server.add_client("confidential-asymmetric", "system/*.rs", (), jwks={"keys": [key.as_dict()]})
    server.service_id, server.service_key = app.client_id, key
    yield server
    stop_server(server.server)


def test_expired_token_is_refused(short_lived: AuthServer):
    token = short_lived.system_token("system/*.rs")
    assert httpx.get(short_lived.base + "/Patient", headers=bearer(token)).status_code == 200
    time.sleep(3.1)  # the 1 s lifetime, and the verifier's leeway of 1 s
    answer = httpx.get(short_lived.base + "/Patient", headers=bearer(token))
    assert auth_outcome(answer, "expired") == "The access token has expired"
    assert 'error_description="The access token has expired"' in answer.headers["www-authenticate"]


# ---- signing keys ----

def test_key_rotation_keeps_old_tokens_valid(auth_server: AuthServer):
    before = auth_server.system_token()
    rotated = auth_server.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[-1]
    after = auth_server.system_token()
    assert claims_kid(after) == new_kid != claims_kid(before)  # the new key signs at once, in every worker
    kids = [k["kid"] for k in httpx.get(auth_server.base + "/auth/jwks").json()["keys"]]
    assert kids[0] == new_kid and claims_kid(before) in kids
    for token in (before, after):
        assert all(a.status_code == 200 for a in fresh_get(auth_server.base + "/Patient", token))
    listed = auth_server.cli("keys", "list").stdout
    assert f"{new_kid}\t" in listed and "\tsigning" in listed and "\tverifying" in listed


# ---- EHR launch and the command line ----

def test_ehr_launch_from_the_command_line_and_over_http(auth_server: AuthServer):
    wang = auth_server.patients["Wang"]
    launched = auth_server.cli("launch", "--patient", wang)
    assert launched.returncode == 0, launched.stderr
    scope = "launch openid fhirUser patient/*.rs"
    app, _ = auth_server.add_client("public", scope)
    client = oauth_client(auth_server, app.client_id, scope)
    verifier = "e" * 64
    url, _ = client.create_authorization_url(auth_server.base + "/auth/authorize", code_verifier=verifier,
                                             aud=auth_server.base, launch=launched.stdout.strip())
    answer = authorize(auth_server, url)  # no patient picked: the launch names it
    token = client.fetch_token(auth_server.token_url, authorization_response=answer.headers["location"],
                               code_verifier=verifier)
    assert token["patient"] == wang and token["need_patient_banner"] is False
    missing = auth_server.cli("launch", "--patient", "no-such-patient")
    assert missing.returncode != 0 and "Patient/no-such-patient does not exist" in missing.stderr
    # an EHR asks for a launch value with its own token
    launch_url = auth_server.base + "/auth/launch"
    ehr = auth_server.system_token()
    made = httpx.post(launch_url, json={"patient": wang}, headers=bearer(ehr))
    assert made.status_code == 201 and made.json()["launch"]
    assert "No access token" in auth_outcome(httpx.post(launch_url, json={"patient": wang}), "login", error=None)
    forbidden = httpx.post(launch_url, json={"patient": wang}, headers=bearer(token["access_token"]))
    issue = forbidden.json()["issue"][0]
    assert forbidden.status_code == 403 and issue["expression"] == ["Authorization"]
    unknown = httpx.post(launch_url, json={"patient": "no-such-patient"}, headers=bearer(ehr))
    assert unknown.status_code == 404
    malformed = httpx.post(launch_url, json={"encounter": "e1"}, headers=bearer(ehr))
    assert malformed.status_code == 400 and malformed.json()["issue"][0]["expression"] == ["patient"]


def test_client_and_user_commands(auth_server: AuthServer):
    added = auth_server.cli("client", "add", "--name", "Clinic app", "--redirect-uri", REDIRECT, "--scope",
                            "openid fhirUser user/*.rs", "--secret-generate")
    assert added.returncode == 0, added.stderr
    fields = dict(line.split(": ", 1) for line in added.stdout.splitlines())
    client_id, secret = fields["client_id"], fields["client_secret"]
    user = auth_server.cli("user", "add", "nurse.chen", "--fhir-user", "Practitioner/chen", "--password-stdin",
                           stdin="a long enough password\n")
    assert user.returncode == 0, user.stderr
    client = oauth_client(auth_server, client_id, "openid fhirUser user/*.rs", secret=secret, pkce=False)
    url, _ = client.create_authorization_url(auth_server.base + "/auth/authorize", aud=auth_server.base)
    answer = authorize(auth_server, url, username="nurse.chen", password="a long enough password")
    token = client.fetch_token(auth_server.token_url, authorization_response=answer.headers["location"])
    assert claims(token["access_token"])["fhirUser"] == "Practitioner/chen" and "patient" not in token
    listed = auth_server.cli("client", "list").stdout
    assert f"{client_id}\tconfidential-symmetric\tClinic app" in listed and secret not in listed
    assert auth_server.cli("client", "remove", client_id).returncode == 0
    gone = httpx.post(auth_server.token_url, auth=(client_id, secret), data={"grant_type": "refresh_token",
                                                                              "refresh_token": "x"})
    oauth_error(gone, 401, "invalid_client")
    wrong = auth_server.cli("client", "add", "--name", "x", "--scope", "patient/*.rs", "--public")
    assert wrong.returncode != 0 and "--redirect-uri" in wrong.stderr
    bad_scope = auth_server.cli("client", "add", "--name", "x", "--redirect-uri", REDIRECT, "--scope",
                                "patient/Observation.readwrite", "--public")
    assert bad_scope.returncode != 0 and "not a SMART clinical scope" in bad_scope.stderr
    bad_user = auth_server.cli("user", "add", "x", "--fhir-user", "Observation/1", "--password-stdin",
                               stdin="long password\n")
    assert bad_user.returncode != 0 and "must be a reference" in bad_user.stderr


def test_auth_off_serves_only_loopback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "fhir-server")
    env = {**os.environ, "FHIR_AUTH": "off", "FHIR_DICOM_PORT": "0", "FHIR_DATA_DIR": str(tmp_path)}
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        refused = subprocess.run([exe, "serve", "--host", host, "--port", "1"], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode != 0, host
        assert "FHIR_AUTH=off" in refused.stderr and "loopback" in refused.stderr
    typo = subprocess.run([exe, "serve", "--port", "1"], env={**env, "FHIR_AUTH": "of"}, capture_output=True,
                          text=True, timeout=60)
    assert typo.returncode != 0 and "FHIR_AUTH must be on or off" in typo.stderr
    assert not (tmp_path / "fhir.sqlite3").exists()  # refused before touching the database


# ---- a person in a real browser ----

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def receiver():
    """The app's redirect URI: a local web server that records the requests it gets."""
    import queue

    got: queue.Queue[str] = queue.Queue()

    def answer(path: str) -> tuple[int, str, bytes]:
        if not path.startswith("/callback"):  # the browser also asks for /favicon.ico
            return 404, "text/plain", b""
        got.put(path)
        return 200, "text/html", b"<p>app received the answer</p>"

    with local_web(answer) as url:
        yield url + "/callback", got


def test_browser_login_and_consent(auth_server: AuthServer, receiver, tmp_path):
    import os
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        if os.environ.get("FHIR_REQUIRE_POSTGRES"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium); CI must run the browser test")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    callback, got = receiver
    app, _ = auth_server.add_client("public", PATIENT_APP, (callback,), name="Heart <Health> & Co")
    client = oauth_client(auth_server, app.client_id, PATIENT_APP, redirect_uri=callback)
    verifier = "b" * 43 + "rowser"
    url, state = client.create_authorization_url(auth_server.base + "/auth/authorize", code_verifier=verifier,
                                                 aud=auth_server.base)
    zhao = auth_server.patients["Zhao"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(url)
            assert "Heart <Health> & Co" in page.inner_text("main")  # escaped, shown as text
            page.fill("input[name=username]", "dr.li")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("text=Allow access?")
            page.fill("input[name=q]", "Zhao")
            page.click("text=Search")
            page.wait_for_selector(f"input[name=patient][value='{zhao}']")
            assert page.locator("input[name=patient]").count() == 1  # only the match
            page.check(f"input[name=patient][value='{zhao}']")
            page.uncheck("input[name=scope][value='offline_access']")
            page.screenshot(path=str(tmp_path / "consent.png"))
            page.click("button[value=approve]")
            page.wait_for_url(callback + "*")
        finally:
            browser.close()
    path = got.get(timeout=10)
    params = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
    assert params["state"] == state
    token = client.fetch_token(auth_server.token_url, authorization_response=callback + path[len("/callback"):],
                               code_verifier=verifier)
    assert token["patient"] == zhao and "refresh_token" not in token
    assert "offline_access" not in token["scope"].split()
    assert httpx.get(f"{auth_server.base}/Patient/{zhao}", headers=bearer(token["access_token"])).status_code == 200
