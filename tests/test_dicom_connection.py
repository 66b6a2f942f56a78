"""The SCP's reads from an accepted connection (fhir_server/dicom/connection.py): whole PDUs of the announced
length, whatever the sender's segmenting, over a socketpair and over real loopback TCP (TCP_QUICKACK)."""

from __future__ import annotations

import os
import socket
import threading

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from fhir_server.dicom.connection import on_connection_open, receive


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


def test_memory_follows_what_arrives_not_what_a_header_announces():
    left, right = socket.socketpair()
    right.sendall(b"abc")
    right.close()
    assert receive(left, 1 << 40) == bytearray(b"abc")  # a PDU header may announce a terabyte
    left.close()


def test_an_association_reads_through_it_once_bound_at_connection_open():
    readers = []

    def on_echo(event) -> int:
        readers.append(event.assoc.dul.socket.recv)
        return 0x0000

    acceptor = AE()
    acceptor.add_supported_context(Verification)
    server = acceptor.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_CONN_OPEN, on_connection_open), (evt.EVT_C_ECHO, on_echo)])
    try:
        requestor = AE()
        requestor.add_requested_context(Verification)
        assoc = requestor.associate("127.0.0.1", server.server_address[1])
        assert assoc.is_established
        answer = assoc.send_c_echo()
        assoc.release()
    finally:
        server.shutdown()
    assert answer.Status == 0x0000
    assert readers and readers[0].func is receive

