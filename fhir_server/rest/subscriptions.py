"""The R4 websocket channel of Subscriptions: GET /websocket upgrades, then `bind <id>` (see
subscriptions/websocket.py). Its URL is advertised in the CapabilityStatement.

With authorization on, the upgrade request carries an access token (`Authorization: Bearer`, or
`?access_token=` for browsers, which cannot set headers on a websocket), and a client may bind only the
Subscriptions its token may read. Without a valid token the upgrade is refused (403)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.websockets import WebSocket

from ..auth.grant import acting_as
from ..model.outcome import FhirError
from ..subscriptions import rules as subscription_rules

router = APIRouter()

PATH = "/websocket"
EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"


def websocket_url(base: str) -> str:
    """ws:// (wss:// behind https) URL of the websocket channel for a FHIR base URL."""
    scheme, _, rest = base.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{PATH}"


@router.websocket(PATH)
async def websocket_channel(socket: WebSocket) -> None:
    state = socket.app.state
    dispatcher = state.subscriptions
    check = dispatcher.check_bind
    if state.settings.auth_enabled:
        # the JOSE stack only where tokens are checked (see app.py)
        from ..auth.middleware import bearer_token, request_base
        from ..auth.tokens import TokenRejected

        token = bearer_token(socket.headers.get("authorization", "")) or socket.query_params.get("access_token", "")
        audience = state.auth.audience(request_base(socket.scope, state.settings.base_url))
        try:
            if not token:
                raise TokenRejected("No access token")
            await state.auth.tokens.verify(token, audience)
        except TokenRejected:
            await socket.close(code=1008)  # before accept(): the upgrade is answered 403
            return

        async def check(subscription_id: str) -> str | None:
            try:  # again at each bind: the token may have expired or been revoked since the upgrade
                grant = await state.auth.tokens.verify(token, audience)
            except TokenRejected:
                return "may not be followed: the access token is no longer valid"
            with acting_as(grant):  # the token's scopes decide which subscriptions it may follow
                try:
                    version = await state.service.read("Subscription", subscription_id)
                except FhirError:
                    return "is not a known Subscription"  # not readable with this token: say no more
                try:
                    subscription_rules.check_follower(orjson.loads(version.content), state.service.registry)
                except FhirError as refused:
                    return f"may not be followed with this token: {refused}"
            return await dispatcher.check_bind(subscription_id)
    await dispatcher.sockets.serve(socket, check, dispatcher.wake)
