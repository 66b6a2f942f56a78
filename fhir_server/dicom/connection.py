"""How the SCP reads from an accepted DICOM connection.

pynetdicom reads a PDU 4 KiB at a time into a growing bytearray, and leaves the kernel to delay its ACKs.
A sender that keeps Nagle's algorithm on (dcmtk's default, and many devices') holds back the last,
partial segment of every request until the previous one is acknowledged, so each C-STORE waited for
Linux's delayed ACK (up to 40 ms). Here a PDU is read straight into one buffer of its announced length,
and TCP_QUICKACK is re-armed before each read (the kernel drops it again on its own) so that ACKs go at
once."""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import Any

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def receive(sock: socket.socket, nr_bytes: int) -> bytearray:
    """Read exactly `nr_bytes`, or what came before the peer closed (as pynetdicom's own recv does)."""
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    got = 0
    while got < nr_bytes:
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):  # not a TCP socket (a test's socketpair), or closing
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        count = sock.recv_into(view[got:], nr_bytes - got)
        if count == 0:
            return buffer[:got]
        got += count
    return buffer


def on_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN handler (runs before the association reads anything): read with `receive`."""
    conn = event.assoc.dul.socket
    if conn is not None and conn.socket is not None:
        conn.recv = functools.partial(receive, conn.socket)
