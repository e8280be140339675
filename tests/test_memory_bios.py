"""Tests for the pyOpenSSL binding helpers (ratls._memory_bios): idle BIOs, whole writes."""

from __future__ import annotations

import contextlib
import socket

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from ratls._memory_bios import bios_renewable, renew_idle_bios, write_whole_chunks
from ratls._tls_context import (
    generate_ephemeral_identity,
    make_client_context,
    make_server_context,
)
from ratls._tls_stream import AttestedTLSStream

_CLIENT_ID, _SERVER_ID = generate_ephemeral_identity(), generate_ephemeral_identity()
_CLIENT_CONTEXT = make_client_context(*_CLIENT_ID, attested=False)
_SERVER_CONTEXT = make_server_context(*_SERVER_ID, attested=False)


def _move(source: SSL.Connection, target: SSL.Connection) -> bool:
    """Move all ciphertext queued in ``source`` to ``target``; True if any moved."""
    moved = False
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        target.bio_write(data)
        moved = True


def _step(conn: SSL.Connection) -> None:
    with contextlib.suppress(SSL.WantReadError):
        conn.do_handshake()


def _connected_pair() -> tuple[SSL.Connection, SSL.Connection]:
    client = SSL.Connection(_CLIENT_CONTEXT, None)
    client.set_connect_state()
    server = SSL.Connection(_SERVER_CONTEXT, None)
    server.set_accept_state()
    for _ in range(10):
        _step(client)
        _step(server)
        if not (_move(client, server) | _move(server, client)):
            break
    client.send(b"ping")
    _move(client, server)
    assert server.recv(16) == b"ping"
    server.send(b"pong")  # the client also reads the server's session tickets
    _move(server, client)
    assert client.recv(16) == b"pong"
    return client, server


def _receive_all(conn: SSL.Connection) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(conn.recv(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


def _private_bios(conn: SSL.Connection) -> tuple[object, object]:
    return conn._into_ssl, conn._from_ssl


def test_renewed_when_idle_and_connection_keeps_working() -> None:
    client, server = _connected_pair()
    before = _private_bios(client), _private_bios(server)
    assert renew_idle_bios(client)
    assert renew_idle_bios(server)
    assert (_private_bios(client), _private_bios(server)) != before
    payload = bytes(range(256)) * 300  # several records, both ways
    client.send(payload[:16384])
    _move(client, server)
    assert _receive_all(server) == payload[:16384]
    server.sendall(payload)
    _move(server, client)
    assert _receive_all(client) == payload


def test_not_renewed_while_ciphertext_waits_to_be_read() -> None:
    client, server = _connected_pair()
    server.send(b"still in the client's incoming BIO")
    _move(server, client)
    kept = _private_bios(client)
    assert not renew_idle_bios(client)
    assert _private_bios(client) == kept
    assert _receive_all(client) == b"still in the client's incoming BIO"
    assert renew_idle_bios(client)


def test_not_renewed_while_ciphertext_waits_to_be_sent() -> None:
    client, server = _connected_pair()
    client.send(b"still in the client's outgoing BIO")
    assert not renew_idle_bios(client)
    _move(client, server)
    assert _receive_all(server) == b"still in the client's outgoing BIO"
    assert renew_idle_bios(client)


def test_socket_connection_is_left_alone() -> None:
    left, right = socket.socketpair()
    with left, right:
        conn = SSL.Connection(_CLIENT_CONTEXT, left)
        assert not bios_renewable(conn)
        assert not renew_idle_bios(conn)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=40000), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_renewal_attempts_never_lose_or_reorder_bytes(
    steps: list[tuple[bool, int, bool]],
) -> None:
    # Each step: one side sends, the ciphertext may or may not be delivered yet, and
    # both sides try a renewal; whatever sits in a BIO must survive the attempt.
    client, server = _connected_pair()
    sent = {True: bytearray(), False: bytearray()}
    got = {True: bytearray(), False: bytearray()}
    counter = 0
    for from_client, size, deliver in steps:
        sender, receiver = (client, server) if from_client else (server, client)
        chunk = bytes((counter + i) % 251 for i in range(size))
        counter += size
        sender.sendall(chunk)
        sent[from_client] += chunk
        if deliver:
            _move(sender, receiver)
        renew_idle_bios(client)
        renew_idle_bios(server)
        got[from_client] += _receive_all(receiver)
    _move(client, server)
    _move(server, client)
    got[True] += _receive_all(server)
    got[False] += _receive_all(client)
    assert got == sent


async def test_stream_renews_after_handshake_and_attestation() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(client_transport, _CLIENT_CONTEXT, server_side=False)
    server = AttestedTLSStream(server_transport, _SERVER_CONTEXT, server_side=True)
    initial = _private_bios(client._conn), _private_bios(server._conn)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    assert _private_bios(client._conn) != initial[0]
    assert _private_bios(server._conn) != initial[1]
    await client.send_all(b"after renewal")
    assert await server.receive_some() == b"after renewal"
    await server.send_all(b"and back")
    assert await client.receive_some() == b"and back"


async def test_stream_releases_burst_buffers_only_when_idle_and_open() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(client_transport, _CLIENT_CONTEXT, server_side=False)
    server = AttestedTLSStream(server_transport, _SERVER_CONTEXT, server_side=True)
    assert not client.release_idle_buffers()  # no handshake yet: nothing is touched
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    burst = bytes(range(256)) * 2048  # 512 KiB: the BIOs grow to their read and write sizes
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(burst):
            received.extend(await server.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await client.send_all(burst)
    assert bytes(received) == burst
    before = _private_bios(client._conn), _private_bios(server._conn)
    assert client.release_idle_buffers()
    assert server.release_idle_buffers()
    assert _private_bios(client._conn) != before[0]
    assert _private_bios(server._conn) != before[1]
    # Half a record waiting in the server's incoming BIO: released, it would be lost.
    await client.send_all(b"after the release")
    record = await server_transport.receive_some()
    server._conn.bio_write(record[:10])
    assert not server.release_idle_buffers()
    server._conn.bio_write(record[10:])
    assert await server.receive_some() == b"after the release"
    await server.send_all(b"and back")
    assert await client.receive_some() == b"and back"
    await client.aclose()
    assert not client.release_idle_buffers()


def test_one_send_encrypts_a_whole_chunk_once_partial_writes_are_off() -> None:
    client, server = _connected_pair()
    payload = bytes(range(256)) * 256  # 64 KiB: four records
    assert client.send(payload) == 16384  # pyOpenSSL's default: one record per call
    assert write_whole_chunks(client)
    assert client.send(payload[16384:]) == len(payload) - 16384
    _move(client, server)
    assert _receive_all(server) == payload


async def test_stream_sends_whole_chunks() -> None:
    left, right = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(left, _CLIENT_CONTEXT, server_side=False)
    server = AttestedTLSStream(right, _SERVER_CONTEXT, server_side=True)
    payload = bytes(range(256)) * 1024
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            received.extend(await server.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await client.send_all(payload)
    assert bytes(received) == payload
    assert client._conn.send(payload[:65536]) == 65536
