"""The SCP's reads from an accepted connection (fhir_server/dicom/connection.py): whole PDUs of the announced
length, whatever the sender's segmenting, over a socketpair and over real loopback TCP (TCP_QUICKACK)."""

from __future__ import annotations

import os
import socket
import threading

from fhir_server.dicom.connection import receive


def _send_in_pieces(sock: socket.socket, data: bytes, sizes: list[int], close: bool) -> threading.Thread:
    def run() -> None:
        at = 0
        for size in sizes:
            sock.sendall(data[at:at + size])
            at += size
        sock.sendall(data[at:])
        if close:
            sock.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_pdu_sent_in_odd_pieces_is_read_whole():
    left, right = socket.socketpair()
    data = os.urandom(300_001)
    sender = _send_in_pieces(right, data, [1, 5, 4095, 4097, 65_536, 7], close=False)
    assert receive(left, len(data)) == data
    sender.join()
    left.close()
    right.close()


def test_a_closed_connection_returns_what_came_before():
    left, right = socket.socketpair()
    sender = _send_in_pieces(right, b"0123456789", [3], close=True)
    sender.join()
    assert receive(left, 100) == bytearray(b"0123456789")
    left.close()


def test_reads_over_loopback_tcp_with_quick_acks():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    data = os.urandom(1_000_000)
    sender = _send_in_pieces(client, data, [6, 100, 16_384], close=False)
    assert receive(accepted, 6) == data[:6]  # a PDU header, then its body, as the DUL reads them
    assert receive(accepted, len(data) - 6) == data[6:]
    sender.join()
    for sock in (accepted, client, server):
        sock.close()
