"""Tests for DirectSocketStream (gateway._direct_socket), on real loopback sockets."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from gateway._direct_socket import DirectSocketStream, direct_if_socket
from ratls._tls_context import (
    generate_ephemeral_identity,
    make_client_context,
    make_server_context,
)
from ratls._tls_stream import AttestedTLSStream


async def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    ours = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    theirs = await listener.accept()
    await listener.aclose()
    return ours, theirs


async def test_waits_moves_everything_and_fails_when_closed() -> None:
    ours, theirs = await _socket_pair()
    direct = DirectSocketStream(ours)
    got: list[bytes] = []

    async def read_one() -> None:
        got.append(await direct.receive_some(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_one)  # nothing there yet: it must wait, not fail
        await trio.sleep(0.05)
        await theirs.send_all(b"hello")
    assert got == [b"hello"]

    # More than the kernel buffers hold: partial writes and waiting for room.
    payload = random.Random(7).randbytes(8 << 20)  # noqa: S311 - test data
    received = bytearray()

    async def drain() -> None:
        while len(received) < len(payload):
            received.extend(await theirs.receive_some(65536))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await direct.send_all(payload)
    assert bytes(received) == payload

    # Half-close reaches the peer as end of stream; the other direction still works.
    await direct.send_eof()
    assert await theirs.receive_some(10) == b""
    await theirs.send_all(b"still here")
    assert await direct.receive_some() == b"still here"
    await theirs.aclose()
    assert await direct.receive_some(10) == b""

    await direct.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await direct.receive_some(100)
    with pytest.raises(trio.ClosedResourceError):
        await direct.send_all(b"x")


async def test_receive_into_fills_the_callers_buffer() -> None:
    ours, theirs = await _socket_pair()
    direct = DirectSocketStream(ours)
    buffer = bytearray(b"#" * 16)
    with memoryview(buffer) as view:
        assert direct.receive_into_nowait(view[4:]) is None  # nothing yet: no wait
        await theirs.send_all(b"hello")
        await trio.sleep(0.05)
        assert direct.receive_into_nowait(view[4:]) == 5
        assert buffer == b"####hello#######"  # in place, after the room left in front
        await theirs.send_eof()
        await trio.sleep(0.05)
        assert direct.receive_into_nowait(view[4:]) == 0  # end of stream
        await direct.aclose()
        with pytest.raises(trio.ClosedResourceError):
            direct.receive_into_nowait(view)
    await theirs.aclose()


async def test_a_reset_is_a_broken_stream() -> None:
    import socket
    import struct

    ours, theirs = await _socket_pair()
    direct = DirectSocketStream(ours)
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await theirs.aclose()  # RST
    await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        await direct.receive_some(10)
    await direct.aclose()


async def test_close_wakes_a_waiting_receiver() -> None:
    ours, theirs = await _socket_pair()
    direct = DirectSocketStream(ours)

    async def closer() -> None:
        await trio.sleep(0.05)
        await direct.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(closer)
        with pytest.raises(trio.ClosedResourceError):
            await direct.receive_some(10)
    await theirs.aclose()


async def test_two_waiting_callers_conflict() -> None:
    ours, theirs = await _socket_pair()
    direct = DirectSocketStream(ours)
    with pytest.raises(ValueError, match="max_bytes"):
        await direct.receive_some(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(direct.receive_some, 10)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await direct.receive_some(10)
        nursery.cancel_scope.cancel()

    # Fill the kernel's buffers so the next send must wait, then try a second sender.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(direct.send_all, bytes(32 << 20))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await direct.send_all(b"x")
        with pytest.raises(trio.BusyResourceError):
            await direct.wait_send_all_might_not_block()
        nursery.cancel_scope.cancel()
    await direct.aclose()
    await theirs.aclose()


async def test_only_plain_socket_streams_are_wrapped() -> None:
    ours, theirs = await _socket_pair()
    assert isinstance(direct_if_socket(ours), DirectSocketStream)
    left, _right = trio.testing.memory_stream_pair()
    assert direct_if_socket(left) is left
    await ours.aclose()
    await theirs.aclose()


_CLIENT = make_client_context(*generate_ephemeral_identity(), attested=False)
_SERVER = make_server_context(*generate_ephemeral_identity(), attested=False)


async def test_attested_stream_over_direct_sockets_is_a_conforming_stream() -> None:
    # The wrapper's own calls are not checkpoints when the kernel is ready, so it is not
    # a trio stream by itself; the TLS stream on top of it (the gateway's link) must be.
    async def maker() -> tuple[
        AttestedTLSStream[DirectSocketStream], AttestedTLSStream[DirectSocketStream]
    ]:
        ours, theirs = await _socket_pair()
        client = AttestedTLSStream(DirectSocketStream(ours), _CLIENT, server_side=False)
        server = AttestedTLSStream(DirectSocketStream(theirs), _SERVER, server_side=True)
        return client, server

    await trio.testing.check_two_way_stream(maker, None)
