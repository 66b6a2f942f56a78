#!/usr/bin/env python3
"""Authorization benchmark: what bearer-token checking costs a FHIR read, and how fast tokens are issued.

    python bench/auth.py                     # SQLite, 2000 reads, 200 tokens
    python bench/auth.py --reads 500 --tokens 50 --backend postgresql

Starts `fhir-server serve` twice on a fresh data dir (FHIR_AUTH=off, then on), and with one sequential
keep-alive client measures GET /Patient/{id} (with a Bearer token when on), then POST /auth/token
(client_credentials with a fresh RS384 private_key_jwt assertion each time). Prints requests/s and
p50/p99 latencies. A measuring tool, not a test; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from crud import Server, percentile
from joserfc.jwk import RSAKey

ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def timed(n: int, call) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return sorted(times)


def figures(name: str, times: list[float]) -> str:
    return (f"{name:<34} {len(times) / sum(times):8.0f}/s  p50 {1000 * statistics.median(times):6.2f} ms  "
            f"p99 {1000 * percentile(times, 99):6.2f} ms")


def register_service(data_dir: Path, database_url: str, key: RSAKey) -> str:
    from fhir_server.auth.clients import ASYMMETRIC, add_client
    from fhir_server.settings import Settings
    from fhir_server.store import open_store

    async def main():
        store = open_store(Settings(data_dir=data_dir, database_url=database_url))
        try:
            client, _ = await add_client(store, "bench", [], ["system/*.cruds"], ASYMMETRIC,
                                         jwks={"keys": [key.as_dict(private=False)]})
            return client.client_id
        finally:
            await store.close()

    return asyncio.run(main())


def issue(http: httpx.Client, key: RSAKey, client_id: str, token_url: str) -> str:
    answer = http.post("/auth/token", data={
        "grant_type": "client_credentials", "scope": "system/*.cruds", "client_assertion_type": ASSERTION,
        "client_assertion": private_key_jwt_sign(key, client_id, token_url, alg="RS384", header={"kid": "bench"},
                                                 expires_in=120)})
    answer.raise_for_status()
    return answer.json()["access_token"]


def measure(backend: str, auth: str, reads: int, tokens: int, database_url: str, key: RSAKey) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        server = Server(Path(tmp), 1, {"FHIR_AUTH": auth, "FHIR_LOG_LEVEL": "WARNING",
                                       "FHIR_DATABASE_URL": database_url})
        try:
            server.wait_ready()
            base = f"http://127.0.0.1:{server.port}"
            headers = {"Content-Type": "application/fhir+json"}
            with httpx.Client(base_url=base, timeout=30) as http:
                if auth == "on":
                    client_id = register_service(server.data_dir, database_url, key)
                    headers["Authorization"] = f"Bearer {issue(http, key, client_id, base + '/auth/token')}"
                    times = timed(tokens, lambda: issue(http, key, client_id, base + "/auth/token"))
                    print(f"[{backend}] " + figures("POST /auth/token (private_key_jwt)", times))
                http.put("/Patient/bench-1", headers=headers,
                         json={"resourceType": "Patient", "id": "bench-1", "gender": "female"}).raise_for_status()
                for _ in range(50):  # warm-up
                    http.get("/Patient/bench-1", headers=headers).raise_for_status()
                times = timed(reads, lambda: http.get("/Patient/bench-1", headers=headers).raise_for_status())
                print(f"[{backend}] " + figures(f"GET /Patient/id, FHIR_AUTH={auth}", times))
        finally:
            server.stop()


def run(backend: str, reads: int, tokens: int, database_url: str) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "bench", "alg": "RS384"}, private=True)
    for auth in ("off", "on"):
        measure(backend, auth, reads, tokens, database_url, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = ""
        if args.backend == "postgresql":
            from pgcluster import postgres_cluster

            url = stack.enter_context(postgres_cluster())
        run(args.backend, args.reads, args.tokens, url)


if __name__ == "__main__":
    main()
