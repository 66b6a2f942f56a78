"""The R4 websocket channel of Subscriptions: GET /websocket upgrades, then `bind <id>` (see
subscriptions/websocket.py). Its URL is advertised in the CapabilityStatement."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.websockets import WebSocket

router = APIRouter()

PATH = "/websocket"
EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"


def websocket_url(base: str) -> str:
    """ws:// (wss:// behind https) URL of the websocket channel for a FHIR base URL."""
    scheme, _, rest = base.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{PATH}"


@router.websocket(PATH)
async def websocket_channel(socket: WebSocket) -> None:
    dispatcher = socket.app.state.subscriptions
    await dispatcher.sockets.serve(socket, dispatcher.check_bind, dispatcher.wake)
