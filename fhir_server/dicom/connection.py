"""How the SCP reads from an accepted DICOM connection.

pynetdicom reads a PDU 4 KiB at a time and leaves the kernel to delay its ACKs. A sender that keeps Nagle's
algorithm on (dcmtk's default, and many devices') holds back the last, partial segment of every request
until the previous one is acknowledged, so each C-STORE waited for Linux's delayed ACK (up to 40 ms). Here
a PDU is read in pieces of up to 1 MiB, and TCP_QUICKACK is re-armed before each read (the kernel drops it
again on its own) so that ACKs go at once."""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import Any

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_CHUNK = 1 << 20  # bytes asked of the kernel at a time


def receive(sock: socket.socket, nr_bytes: int) -> bytearray:
    """Read exactly `nr_bytes`, or what came before the peer closed (as pynetdicom's own recv does).

    Memory grows with what arrives, never with what a PDU header announces: a peer may announce 4 GiB."""
    buffer = bytearray()
    while len(buffer) < nr_bytes:
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):  # not a TCP socket (a test's socketpair), or closing
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        part = sock.recv(min(nr_bytes - len(buffer), _CHUNK))
        if not part:
            break
        buffer += part
    return buffer


def on_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN handler (runs before the association reads anything): read with `receive`."""
    conn = event.assoc.dul.socket
    if conn is not None and conn.socket is not None:
        conn.recv = functools.partial(receive, conn.socket)
