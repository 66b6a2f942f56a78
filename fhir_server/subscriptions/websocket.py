"""The R4 websocket channel: a client opens the server's websocket URL, sends `bind <id>`, gets
`bound <id>`, and then `ping <id>` for every notification of that subscription. Bindings live in the
worker process that holds the socket; its dispatcher delivers the pings of the subscriptions bound there."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger("fhir_server.subscriptions")


class WebSocketHub:
    def __init__(self) -> None:
        self.sockets: dict[str, set[WebSocket]] = {}

    def bound_ids(self) -> set[str]:
        return {sub_id for sub_id, sockets in self.sockets.items() if sockets}

    def bind(self, subscription_id: str, socket: WebSocket) -> None:
        self.sockets.setdefault(subscription_id, set()).add(socket)

    def unbind(self, socket: WebSocket) -> None:
        for sub_id in list(self.sockets):
            self.sockets[sub_id].discard(socket)
            if not self.sockets[sub_id]:
                del self.sockets[sub_id]

    async def ping(self, subscription_id: str) -> bool:
        """`ping <id>` to every socket bound to the subscription here; True if one took it."""
        sent = False
        for socket in list(self.sockets.get(subscription_id, ())):
            try:
                await socket.send_text(f"ping {subscription_id}")
                sent = True
            except Exception:  # a socket that went away: forget it, the ping stays owed
                self.unbind(socket)
        return sent

    async def serve(self, socket: WebSocket, check: Callable, bound: Callable[[], None]) -> None:
        """One client connection. check(id) returns None if the id names a websocket subscription,
        else the reason why not (sent back as `error <id> <reason>`)."""
        await socket.accept()
        try:
            while True:
                message = (await socket.receive_text()).strip()
                command, _, subscription_id = message.partition(" ")
                subscription_id = subscription_id.strip()
                if command != "bind" or not subscription_id:
                    await socket.send_text(f"error {message[:100]}: expected 'bind <Subscription id>'")
                    continue
                problem = await check(subscription_id)
                if problem:
                    await socket.send_text(f"error {subscription_id} {problem}")
                    continue
                self.bind(subscription_id, socket)
                await socket.send_text(f"bound {subscription_id}")
                bound()
        except WebSocketDisconnect:
            pass
        finally:
            self.unbind(socket)
