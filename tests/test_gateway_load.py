"""Load and abuse on real loopback sockets: many tunnels, floods, slowloris; bulk reads.

The gateways run in the test's trio process with the HMAC test attestation
(gateway._testing), so a thousand attested tunnels cost TLS handshakes and little else.
The last tests pin the receive path the gateway's throughput depends on: one
``receive_some`` on an attested TLS stream returns every record that has arrived, not
one record per call.
"""

from __future__ import annotations

import logging
import os
import resource
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from gateway_helpers import receive_exactly, start_gateway, tunnel_lines, wait_for

from gateway._config import parse_config
from gateway._runtime import LOGGER_NAME
from gateway._testing import hmac_test_attestation
from ratls._tls_context import generate_ephemeral_identity, make_client_context, make_server_context
from ratls._tls_stream import AttestedTLSStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway._daemon import RunningGateway

KEY = b"gateway-load-test-key"
LOCALHOST = "127.0.0.1"
TUNNELS = 1000
# Per tunnel in this one process: client, ingress local and link, egress link and
# backend, backend; plus room for listeners, the test runner and a margin.
FDS_NEEDED = TUNNELS * 6 + 512


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def many_fds() -> Any:
    """Raise the soft fd limit for the test, or skip if the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= FDS_NEEDED:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < FDS_NEEDED:
        pytest.skip(f"needs {FDS_NEEDED} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS_NEEDED, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class Backend:
    """An echo backend that counts its connections."""

    port: int
    connections: int = 0
    open: int = 0
    eof_seen: int = 0


async def _echo(backend: Backend, stream: trio.SocketStream) -> None:
    backend.connections += 1
    backend.open += 1
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        backend.eof_seen += 1
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass
    finally:
        backend.open -= 1
        await stream.aclose()


async def start_backend(nursery: trio.Nursery) -> Backend:
    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST, backlog=1024)
    backend = Backend(port=listeners[0].socket.getsockname()[1])
    nursery.start_soon(trio.serve_listeners, partial(_echo, backend), listeners)
    return backend


def _doc(side: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"attestation": {"attester": "test"}, **side}
    for key, value in extra.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


@dataclass
class Pair:
    egress: RunningGateway
    ingress: RunningGateway

    def port(self) -> int:
        address = self.ingress.address("mapping:web")
        assert isinstance(address, tuple)
        return address[1]

    def egress_port(self) -> int:
        address = self.egress.address("egress:main")
        assert isinstance(address, tuple)
        return address[1]


@asynccontextmanager
async def gateway_pair(
    backend_port: int,
    *,
    egress_extra: dict[str, Any] | None = None,
    ingress_extra: dict[str, Any] | None = None,
) -> AsyncIterator[Pair]:
    egress_side = {
        "egress": {
            "listener": [{"name": "main", "listen": f"{LOCALHOST}:0", "allow": [f"{LOCALHOST}:*"]}],
            "route": [{"name": "web", "backend": f"{LOCALHOST}:{backend_port}"}],
        }
    }
    async with trio.open_nursery() as nursery:
        egress = await start_gateway(
            nursery,
            parse_config(_doc(egress_side, egress_extra or {})),
            hmac_test_attestation(KEY)[0],
        )
        address = egress.address("egress:main")
        assert isinstance(address, tuple)
        ingress_side = {
            "ingress": {
                "mapping": [
                    {
                        "name": "web",
                        "listen": f"{LOCALHOST}:0",
                        "egress": f"{LOCALHOST}:{address[1]}",
                        "target": "web",
                    }
                ]
            }
        }
        ingress = await start_gateway(
            nursery,
            parse_config(_doc(ingress_side, ingress_extra or {})),
            hmac_test_attestation(KEY)[0],
        )
        yield Pair(egress, ingress)
        nursery.cancel_scope.cancel()


async def receive_all_or_reset(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until EOF; a reset counts as the end too (returned as what came)."""
    buf = bytearray()
    try:
        while data := await stream.receive_some(65536):
            buf += data
    except trio.BrokenResourceError:
        pass
    return bytes(buf)


async def echo_through(port: int, message: bytes) -> None:
    """Open one tunnel, check an echo, close it cleanly."""
    stream = await trio.open_tcp_stream(LOCALHOST, port)
    async with stream:
        await stream.send_all(message)
        assert await receive_exactly(stream, len(message)) == message
        await stream.send_eof()
        assert await receive_all_or_reset(stream) == b""


# --------------------------------------------------------------------------- 1,000 tunnels


async def test_a_thousand_concurrent_tunnels_held_and_released(
    nursery: trio.Nursery, many_fds: None
) -> None:
    backend = await start_backend(nursery)
    limits = {"limits": {"max_tunnels": TUNNELS + 16}, "timeouts": {"handshake": 120}}
    async with gateway_pair(backend.port, egress_extra=limits, ingress_extra=limits) as pair:
        port = pair.port()
        clients: list[trio.SocketStream | None] = [None] * TUNNELS
        connecting = trio.CapacityLimiter(64)  # below the listeners' backlog

        async def open_one(i: int) -> None:
            async with connecting:
                stream = await trio.open_tcp_stream(LOCALHOST, port)
                message = b"tunnel %d" % i
                await stream.send_all(message)
                assert await receive_exactly(stream, len(message)) == message
            clients[i] = stream

        try:
            with trio.fail_after(300):  # a guard against hanging, not a timing check
                async with trio.open_nursery() as inner:
                    for i in range(TUNNELS):
                        inner.start_soon(open_one, i)
                held = [c for c in clients if c is not None]
                assert len(held) == TUNNELS
                assert pair.ingress.runtime.admission.active == TUNNELS
                assert pair.egress.runtime.admission.active == TUNNELS
                assert len(pair.ingress.runtime.tunnels) == TUNNELS
                assert len(pair.egress.runtime.tunnels) == TUNNELS
                assert backend.open == TUNNELS

                # Still responsive with all of them held: a new tunnel works, and so
                # do the held ones (a few, picked across the range).
                await echo_through(port, b"one more")
                for stream in held[:: TUNNELS // 10]:
                    await stream.send_all(b"still there")
                    assert await receive_exactly(stream, 11) == b"still there"

                # Release: half-close each, the echo backend closes its side, and every
                # tunnel ends cleanly.
                async def release(stream: trio.SocketStream) -> None:
                    await stream.send_eof()
                    assert await receive_all_or_reset(stream) == b""
                    await stream.aclose()

                async with trio.open_nursery() as inner:
                    for stream in held:
                        inner.start_soon(release, stream)
                await wait_for(lambda: pair.ingress.runtime.admission.active == 0)
                await wait_for(lambda: pair.egress.runtime.admission.active == 0)
                await wait_for(lambda: backend.open == 0)
        finally:
            for leftover in clients:
                if leftover is not None:
                    await trio.aclose_forcefully(leftover)
        assert pair.ingress.runtime.tunnels == {}
        assert pair.egress.runtime.tunnels == {}
        assert pair.ingress.runtime.live == {}
        # Everything was released and nothing leaks into the next tunnel.
        await echo_through(port, b"after")
    assert backend.connections == TUNNELS + 2
    assert backend.eof_seen == TUNNELS + 2


# --------------------------------------------------------------------------- floods


async def test_handshake_flood_past_max_tunnels_is_refused_cleanly(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    limit = 4
    async with gateway_pair(backend.port, egress_extra={"limits": {"max_tunnels": limit}}) as pair:
        port = pair.port()
        held = []
        for i in range(limit):
            stream = await trio.open_tcp_stream(LOCALHOST, port)
            await stream.send_all(b"held %d" % i)
            assert await receive_exactly(stream, 6) == b"held %d" % i
            held.append(stream)
        assert backend.open == limit

        # A flood of raw TCP connections straight at the egress, each starting a
        # ClientHello: all are cut before any TLS, none reaches the backend.
        egress_port = pair.egress_port()

        async def flood_one() -> None:
            stream = await trio.open_tcp_stream(LOCALHOST, egress_port)
            async with stream:
                with trio.move_on_after(0):
                    await stream.send_all(b"\x16\x03\x01\x00\x05hello")
                assert await receive_all_or_reset(stream) == b""

        # And a flood through the ingress: each tunnel is refused by the egress, so the
        # client is closed without a byte.
        async def through_ingress() -> None:
            stream = await trio.open_tcp_stream(LOCALHOST, port)
            async with stream:
                with trio.move_on_after(0):
                    await stream.send_all(b"should not arrive")
                assert await receive_all_or_reset(stream) == b""

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                for _ in range(50):
                    inner.start_soon(flood_one)
                    inner.start_soon(through_ingress)
        assert backend.connections == limit
        assert pair.egress.runtime.admission.active == limit
        for stream in held:
            await stream.send_all(b"ok")
            assert await receive_exactly(stream, 2) == b"ok"
            await stream.aclose()
        await wait_for(lambda: pair.egress.runtime.admission.active == 0)
        await echo_through(port, b"served again")
    assert backend.connections == limit + 1


async def test_slowloris_during_handshake_times_out_and_others_are_served(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    backend = await start_backend(nursery)
    timeouts = {"timeouts": {"handshake": 5}}
    async with gateway_pair(backend.port, egress_extra=timeouts) as pair:
        egress_port = pair.egress_port()
        slow: list[trio.SocketStream] = []
        for _ in range(20):
            stream = await trio.open_tcp_stream(LOCALHOST, egress_port)
            await stream.send_all(b"\x16\x03")  # the start of a ClientHello, then nothing
            slow.append(stream)
        # While they dribble, real tunnels still open.
        await echo_through(pair.port(), b"not starved")

        async def dribble(stream: trio.SocketStream) -> None:
            # One byte every second: never a complete ClientHello within the timeout.
            with trio.move_on_after(60):
                try:
                    while True:
                        await stream.send_all(b"\x01")
                        await trio.sleep(1)
                except trio.BrokenResourceError:
                    pass
            assert await receive_all_or_reset(stream) == b""

        async with trio.open_nursery() as inner:
            for stream in slow:
                inner.start_soon(dribble, stream)
        for stream in slow:
            await stream.aclose()
        await wait_for(lambda: pair.egress.runtime.admission.active == 0)
        assert backend.connections == 1
        results = [str(line["result"]) for line in tunnel_lines(caplog, "egress")]
        assert results.count("handshake-timeout") == len(slow)
        assert trio.current_time() >= 5  # cut by the timeout, not at once
        await echo_through(pair.port(), b"and after")
    assert backend.connections == 2


# --------------------------------------------------------------------------- bulk reads


def _plain_pair() -> tuple[AttestedTLSStream[Any], AttestedTLSStream[Any]]:
    (ck, cc), (sk, sc) = generate_ephemeral_identity(), generate_ephemeral_identity()
    client_t, server_t = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(
        client_t, make_client_context(ck, cc, attested=False), server_side=False
    )
    server = AttestedTLSStream(
        server_t, make_server_context(sk, sc, attested=False), server_side=True
    )
    return client, server


async def _handshake(*streams: AttestedTLSStream[Any]) -> None:
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(stream.do_handshake)


async def test_receive_some_returns_every_record_that_arrived() -> None:
    client, server = _plain_pair()
    await _handshake(client, server)
    payload = bytes(range(256)) * 1024  # 256 KiB: sixteen records
    await server.send_all(payload)  # all ciphertext now waits in the client's transport
    got = await client.receive_some()
    # One transport read (everything the memory stream holds) gives every record.
    assert got == payload
    await server.send_all(payload[:50000])
    first = await client.receive_some(20000)  # a limit is still honoured...
    assert first == payload[:20000]
    rest = await client.receive_some()  # ...and nothing after it is lost or reordered
    assert rest == payload[20000:50000]


async def test_bulk_read_then_close_notify_then_eof() -> None:
    client, server = _plain_pair()
    await _handshake(client, server)
    await server.send_all(b"x" * 40000)
    await server.aclose()
    assert await client.receive_some() == b"x" * 40000
    assert await client.receive_some() == b""
    assert await client.receive_some() == b""


async def test_bulk_read_then_truncation_is_broken_not_eof() -> None:
    client, server = _plain_pair()
    await _handshake(client, server)
    await server.send_all(b"y" * 40000)
    await server.transport_stream.aclose()  # no close_notify: a truncation
    assert await client.receive_some() == b"y" * 40000
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()


class _Corrupting(trio.abc.Stream):
    """Forwards to a stream, counting sends; once ``corrupt`` is set, flips the last byte."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.corrupt = False
        self.sends = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends += 1
        out = bytearray(data)
        if self.corrupt and out:
            out[-1] ^= 1
        await self.inner.send_all(out)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_bulk_read_then_corrupt_record_breaks_after_the_good_ones() -> None:
    (ck, cc), (sk, sc) = generate_ephemeral_identity(), generate_ephemeral_identity()
    client_t, server_t = trio.testing.memory_stream_pair()
    corrupting = _Corrupting(server_t)
    client = AttestedTLSStream(
        client_t, make_client_context(ck, cc, attested=False), server_side=False
    )
    server = AttestedTLSStream(
        corrupting, make_server_context(sk, sc, attested=False), server_side=True
    )
    await _handshake(client, server)
    await server.send_all(b"a" * 16384)  # one intact record
    corrupting.corrupt = True
    await server.send_all(b"b" * 100)  # one record whose AEAD tag no longer verifies
    # The intact record is delivered; the forged one is never returned as data.
    assert await client.receive_some() == b"a" * 16384
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()


async def test_a_64_kib_write_is_one_transport_send_of_four_records() -> None:
    (ck, cc), (sk, sc) = generate_ephemeral_identity(), generate_ephemeral_identity()
    client_t, server_t = trio.testing.memory_stream_pair()
    counting = _Corrupting(server_t)
    client = AttestedTLSStream(
        client_t, make_client_context(ck, cc, attested=False), server_side=False
    )
    server = AttestedTLSStream(
        counting, make_server_context(sk, sc, attested=False), server_side=True
    )
    await _handshake(client, server)
    before = counting.sends
    payload = os.urandom(65536)
    await server.send_all(payload)
    # Four full records, encrypted before anything is sent, leave in one send; and the
    # receiver gets them back with one receive_some.
    assert counting.sends == before + 1
    assert await client.receive_some() == payload
    await server.send_all(payload + payload[:100])  # 64 KiB + 100 B: two sends
    assert counting.sends == before + 3
    assert await receive_exactly(client, 65636) == payload + payload[:100]


# --------------------------------------------------------------------------- idle tunnels


def _task_names() -> list[str]:
    names: list[str] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None:
            continue
        if task.name != "gateway readiness poller":  # started with the first tunnel
            names.append(task.name)
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return names


async def test_quiet_tunnels_give_back_burst_buffers_and_keep_working(
    nursery: trio.Nursery,
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        client = await trio.open_tcp_stream(LOCALHOST, pair.port())
        burst = os.urandom(2 << 20)
        async with trio.open_nursery() as inner:
            inner.start_soon(client.send_all, burst)
            assert await receive_exactly(client, len(burst)) == burst
        sides = (pair.ingress.runtime, pair.egress.runtime)
        busy_until = trio.current_time()
        # Nothing was quiet before the burst ended: nothing is released.
        assert [side.release_idle_buffers(busy_until - 60) for side in sides] == [0, 0]
        await trio.sleep(0.05)
        quiet_since = trio.current_time()
        assert [side.release_idle_buffers(quiet_since) for side in sides] == [1, 1]
        # Once per quiet spell: a second sweep finds nothing new to release.
        assert [side.release_idle_buffers(quiet_since) for side in sides] == [0, 0]
        # The tunnel carries on with fresh buffers, and releases again after more bytes.
        await client.send_all(burst[:100_000])
        assert await receive_exactly(client, 100_000) == burst[:100_000]
        await trio.sleep(0.05)
        assert [side.release_idle_buffers(trio.current_time()) for side in sides] == [1, 1]
        await client.send_eof()
        assert await receive_all_or_reset(client) == b""
        await client.aclose()


async def test_an_idle_tunnel_keeps_no_task_reading_its_local_socket(
    nursery: trio.Nursery,
) -> None:
    # Each direction's reader of the local socket exists only while it has bytes to
    # move; the poller starts it again when more arrive (a parked task is a few KiB,
    # times 10,000 idle tunnels).
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        port = pair.port()
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        baseline = len(_task_names())
        clients = [await trio.open_tcp_stream(LOCALHOST, port) for _ in range(20)]
        for round_ in range(3):
            for i, client in enumerate(clients):
                message = b"round %d tunnel %d " % (round_, i) * (1 + 997 * round_)
                await client.send_all(message)
                assert await receive_exactly(client, len(message)) == message
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            names = _task_names()
            assert not [name for name in names if "_pump_out" in name]
            # One task per tunnel in each gateway (its connection's, reading the link)
            # and the backend's echo handler: nothing else waits.
            assert len(names) - baseline == 3 * len(clients)
        # Half-close still goes both ways after the readers came and went.
        for client in clients:
            await client.send_eof()
            assert await receive_all_or_reset(client) == b""
            await client.aclose()
        await wait_for(lambda: backend.eof_seen == 20)
