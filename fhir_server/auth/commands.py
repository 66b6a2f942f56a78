"""`fhir-server client|user|launch|keys`: register apps and users, make EHR launch contexts, rotate keys.
They work on the database directly (the server may be running: every worker reads the same tables)."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import orjson

from ..settings import Settings


def _run(work: Callable[[Any, Settings], Awaitable[Any]]) -> Any:
    """Migrate, then run `work(store, settings)` against the configured database."""
    from ..store import open_store

    async def main():
        settings = Settings()
        store = open_store(settings)
        try:
            await store.migrate()
            return await work(store, settings)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_setting(settings: Settings) -> None:
    """FHIR_AUTH=off serves every record to anyone who can connect: only to this machine, then."""
    if settings.auth.strip().lower() not in ("on", "off"):
        raise click.ClickException(f"FHIR_AUTH must be on or off, not {settings.auth!r}")
    if not settings.auth_enabled and not is_loopback(settings.host):
        raise click.ClickException(
            f"FHIR_AUTH=off serves every record without authorization: it may listen only on a loopback "
            f"address (127.0.0.1, ::1, localhost), not {settings.host!r}. Turn authorization on to serve a network.")


@click.group()
def client() -> None:
    """Register, list and remove SMART apps and backend services."""


@client.command("add")
@click.option("--name", required=True, help="The app's name, shown on the consent page.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Where codes are sent (repeatable; exact match).")
@click.option("--scope", required=True, help='Scopes it may be granted, e.g. "launch/patient openid fhirUser '
                                              'offline_access patient/*.rs".')
@click.option("--public", "kind", flag_value="public", help="A public app (browser, mobile): PKCE, no secret.")
@click.option("--secret-generate", "kind", flag_value="confidential-symmetric",
              help="A confidential app with a client secret (printed once).")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A backend service's public key set (JWKS JSON) for private_key_jwt.")
@click.option("--jwks-uri", help="The URL of a backend service's public key set (private_key_jwt).")
def client_add(name: str, redirect_uris: tuple[str, ...], scope: str, kind: str | None, jwks_file: Path | None,
               jwks_uri: str | None) -> None:
    """Register a client; prints its client_id (and its secret, only this once)."""
    from .clients import ASYMMETRIC, add_client

    if sum(bool(x) for x in (kind, jwks_file, jwks_uri)) != 1:
        raise click.UsageError("give exactly one of --public, --secret-generate, --jwks-file, --jwks-uri")
    jwks = None
    if jwks_file is not None:
        try:
            jwks = orjson.loads(jwks_file.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(f"{jwks_file} is not JSON: {exc}") from exc
    kind = kind or ASYMMETRIC
    if kind != ASYMMETRIC and not redirect_uris:
        raise click.UsageError("an app that users log in to needs at least one --redirect-uri")
    registered, secret = _run(lambda store, _: add_client(store, name, list(redirect_uris), scope.split(), kind,
                                                          jwks, jwks_uri))
    click.echo(f"client_id: {registered.client_id}")
    if secret:
        click.echo(f"client_secret: {secret}")
        click.echo("(the secret is shown only now; it is stored hashed)", err=True)


@client.command("list")
def client_list() -> None:
    """List registered clients."""
    from .clients import list_clients

    for c in _run(lambda store, _: list_clients(store)):
        keys = c.jwks_uri or ("registered key set" if c.jwks else "")
        click.echo(f"{c.client_id}\t{c.kind}\t{c.name}\t{' '.join(c.redirect_uris) or keys}\t{' '.join(c.scopes)}")


@client.command("remove")
@click.argument("client_id")
def client_remove(client_id: str) -> None:
    """Remove a client (its tokens stop working when they expire; revoke them to stop them now)."""
    from .clients import remove_client

    if not _run(lambda store, _: remove_client(store, client_id)):
        raise click.ClickException(f"no client {client_id!r}")
    click.echo(f"removed {client_id}")


@click.group()
def user() -> None:
    """Users who log in on the authorization pages."""


@user.command("add")
@click.argument("username")
@click.option("--fhir-user", required=True, help="The user's own resource: Practitioner/1, Patient/9, ...")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else it is prompted).")
def user_add(username: str, fhir_user: str, password_stdin: bool) -> None:
    """Add a user (the password is stored as a slow salted hash)."""
    from .users import add_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    _run(lambda store, _: add_user(store, username, password, fhir_user))
    click.echo(f"added {username} ({fhir_user})")


@user.command("list")
def user_list() -> None:
    from .users import list_users

    for u in _run(lambda store, _: list_users(store)):
        click.echo(f"{u.username}\t{u.fhir_user}")


@user.command("remove")
@click.argument("username")
def user_remove(username: str) -> None:
    from .users import remove_user

    if not _run(lambda store, _: remove_user(store, username)):
        raise click.ClickException(f"no user {username!r}")
    click.echo(f"removed {username}")


@click.command()
@click.option("--patient", required=True, help="The Patient id the app opens with.")
@click.option("--encounter", default=None, help="The Encounter id, if any.")
def launch(patient: str, encounter: str | None) -> None:
    """Print a `launch` value for an EHR launch: the app gets this patient (and encounter) as its context."""
    from .keys import KeyRing
    from .tokens import Tokens

    async def work(store, settings):
        for kind, ident in (("Patient", patient), ("Encounter", encounter)):
            if ident and (await store.read(kind, ident)) is None:
                raise ValueError(f"{kind}/{ident} does not exist")
        return await Tokens(store, settings, KeyRing(store, settings)).create_launch(patient, encounter)

    click.echo(_run(work))


@click.group()
def keys() -> None:
    """The token signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key now; the old ones keep verifying the tokens they signed until those expire."""
    from .keys import create_key

    click.echo(f"new signing key {_run(lambda store, settings: create_key(store, settings, only_if_due=False))}")


@keys.command("list")
def keys_list() -> None:
    from .keys import list_keys

    for kid, created, state in _run(list_keys):
        click.echo(f"{kid}\t{created.isoformat(timespec='seconds')}\t{state}")


COMMANDS = [client, user, launch, keys]
