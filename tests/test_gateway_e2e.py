"""End to end: client -> ingress -> attested link -> egress -> backend, on real sockets.

Both gateways run in the test's trio process with test attesters (HMAC over the binder,
see gateway._testing); the real SNP + vTPM evidence path is tested where it is built.
Backends are small trio servers on 127.0.0.1 that record what they receive, so "no byte
reaches the backend" is checked directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from gateway_helpers import (
    close_clients,
    connect,
    free_port,
    http_connect,
    receive_all,
    receive_exactly,
    stable_port,
    start_gateway,
    tunnel_lines,
    wait_for,
)
from OpenSSL import SSL

from gateway._config import ClaimRule, EgressRoute, parse_config
from gateway._daemon import RunningGateway, run_gateway
from gateway._proxy_protocol import PROXY_V2_SIGNATURE, ProxyTlv, parse_proxy_header
from gateway._runtime import LOGGER_NAME
from gateway._socks import SocksReply
from gateway._testing import HmacTestAttester, HmacTestVerifier, hmac_test_attestation
from ratls._tls_context import key_exchange_groups_settable

if TYPE_CHECKING:
    from pathlib import Path

    from ratls._exchange import AttestationConfig

KEY = b"gateway-e2e-test-key"
LOCALHOST = "127.0.0.1"


# --------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """A recording backend server."""

    port: int
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0
    eof_seen: int = 0
    resets: int = 0


async def _echo(backend: Backend, stream: trio.SocketStream) -> None:
    backend.connections += 1
    try:
        while data := await stream.receive_some(65536):
            backend.received += data
            await stream.send_all(data)
        backend.eof_seen += 1
        await stream.send_eof()
    except trio.BrokenResourceError:
        backend.resets += 1
    finally:
        await stream.aclose()


async def _record(backend: Backend, stream: trio.SocketStream) -> None:
    backend.connections += 1
    try:
        while data := await stream.receive_some(65536):
            backend.received += data
        backend.eof_seen += 1
    except trio.BrokenResourceError:
        backend.resets += 1
    finally:
        await stream.aclose()


BackendHandler = Callable[[Backend, trio.SocketStream], Awaitable[None]]


async def start_backend(
    nursery: trio.Nursery, handler: BackendHandler = _echo, host: str = LOCALHOST, port: int = 0
) -> Backend:
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    await sock.bind((host, port))
    sock.listen(16)
    listener = trio.SocketListener(sock)
    backend = Backend(port=sock.getsockname()[1])
    nursery.start_soon(trio.serve_listeners, partial(handler, backend), [listener])
    return backend


# --------------------------------------------------------------------------- gateways


@dataclass
class Pair:
    egress: RunningGateway
    ingress: RunningGateway
    egress_att: tuple[AttestationConfig, HmacTestAttester, HmacTestVerifier]
    ingress_att: tuple[AttestationConfig, HmacTestAttester, HmacTestVerifier]

    def port(self, key: str) -> int:
        address = self.ingress.address(key)
        assert isinstance(address, tuple)
        return address[1]


def egress_doc(backend_port: int, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "attestation": {"attester": "test"},
        "egress": {
            "listener": [
                {
                    "name": "main",
                    "listen": "127.0.0.1:0",
                    "allow": [f"127.0.0.1:{backend_port}", "localhost:*"],
                }
            ],
            "route": [{"name": "web", "backend": f"127.0.0.1:{backend_port}"}],
        },
    }
    doc.update(extra)
    return doc


def ingress_doc(egress_port: int, **extra: Any) -> dict[str, Any]:
    egress = f"127.0.0.1:{egress_port}"
    doc: dict[str, Any] = {
        "attestation": {"attester": "test"},
        "admin": {"listen": "127.0.0.1:0"},
        "ingress": {
            "mapping": [
                {"name": "web", "listen": "127.0.0.1:0", "egress": egress, "target": "web"}
            ],
            "http_connect": [{"name": "proxy", "listen": "127.0.0.1:0", "egress": egress}],
            "socks5": [{"name": "socks", "listen": "127.0.0.1:0", "egress": egress}],
        },
    }
    doc.update(extra)
    return doc


@asynccontextmanager
async def gateway_pair(
    backend_port: int,
    *,
    egress_extra: dict[str, Any] | None = None,
    ingress_extra: dict[str, Any] | None = None,
    egress_identity: str = "good",
    ingress_identity: str = "good",
    egress_listener: dict[str, Any] | None = None,
) -> AsyncIterator[Pair]:
    egress_att = hmac_test_attestation(KEY, identity=egress_identity)
    ingress_att = hmac_test_attestation(KEY, identity=ingress_identity)
    edoc = egress_doc(backend_port, **(egress_extra or {}))
    if egress_listener is not None:
        edoc["egress"]["listener"][0].update(egress_listener)
    async with trio.open_nursery() as nursery:
        egress = await start_gateway(nursery, parse_config(edoc), egress_att[0])
        address = egress.address("egress:main")
        assert isinstance(address, tuple)
        ingress = await start_gateway(
            nursery, parse_config(ingress_doc(address[1], **(ingress_extra or {}))), ingress_att[0]
        )
        try:
            yield Pair(egress, ingress, egress_att, ingress_att)
        finally:
            await close_clients()
        nursery.cancel_scope.cancel()


async def socks_connect(
    port: int,
    atyp: int,
    address: bytes,
    dport: int,
    *,
    auth: tuple[bytes, bytes] | None = None,
) -> tuple[trio.SocketStream, bytes]:
    stream = await connect(LOCALHOST, port)
    if auth is None:
        await stream.send_all(b"\x05\x01\x00")
        assert await receive_exactly(stream, 2) == b"\x05\x00"
    else:
        await stream.send_all(b"\x05\x01\x02")
        assert await receive_exactly(stream, 2) == b"\x05\x02"
        user, password = auth
        await stream.send_all(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        status = await receive_exactly(stream, 2)
        if status != b"\x01\x00":
            return stream, status
    await stream.send_all(b"\x05\x01\x00" + bytes([atyp]) + address + struct.pack(">H", dport))
    return stream, await receive_exactly(stream, 10)


@pytest.fixture(autouse=True)
def _capture_gateway_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)


# --------------------------------------------------------------------------- modes


async def test_mapping_echo(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"hello through the tunnel")
        assert await receive_exactly(client, 24) == b"hello through the tunnel"
        await client.send_eof()
        assert await receive_all(client) == b""
        await client.aclose()
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    line = tunnel_lines(caplog, "ingress")[0]
    assert line["result"] == "ok"
    assert line["bytes_up"] == line["bytes_down"] == 24
    assert line["mode"] == "mapping"
    assert line["peer"] == "test-hmac identity=good"
    assert line["tls"].startswith("TLSv1.3 ")  # and the group OpenSSL chose
    assert backend.received == b"hello through the tunnel"
    egress_line = tunnel_lines(caplog, "egress")[0]
    assert egress_line["result"] == "ok"
    assert egress_line["target"] == "route:web"


async def test_http_connect_echo_with_pipelined_bytes(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        stream, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}", extra=b"early"
        )
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        assert await receive_exactly(stream, 5) == b"early"
        await stream.send_all(b" and more")
        assert await receive_exactly(stream, 9) == b" and more"
        await stream.aclose()


async def test_socks5_ipv4_and_domain_resolved_by_egress(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        port = pair.port("socks5:socks")
        stream, reply = await socks_connect(port, 1, socket.inet_aton(LOCALHOST), backend.port)
        assert reply[:2] == b"\x05\x00"
        await stream.send_all(b"ping")
        assert await receive_exactly(stream, 4) == b"ping"
        await stream.aclose()
        stream, reply = await socks_connect(port, 3, b"\x09localhost", backend.port)
        assert reply[:2] == b"\x05\x00"
        await stream.send_all(b"by name")
        assert await receive_exactly(stream, 7) == b"by name"
        await stream.aclose()


async def test_socks5_username_password(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        address = pair.egress.address("egress:main")
        assert isinstance(address, tuple)
        users = [{"username": "alice", "password": "s3cret"}]
        doc = ingress_doc(address[1])
        doc["ingress"] = {
            "socks5": [
                {
                    "name": "auth",
                    "listen": "127.0.0.1:0",
                    "egress": f"127.0.0.1:{address[1]}",
                    "users": users,
                }
            ]
        }
        doc.pop("admin")
        gateway = await start_gateway(nursery, parse_config(doc), pair.ingress_att[0])
        gaddress = gateway.address("socks5:auth")
        assert isinstance(gaddress, tuple)
        stream, status = await socks_connect(
            gaddress[1], 1, socket.inet_aton(LOCALHOST), backend.port, auth=(b"alice", b"wrong")
        )
        assert status == b"\x01\x01"
        assert await receive_all(stream) == b""
        stream, reply = await socks_connect(
            gaddress[1], 1, socket.inet_aton(LOCALHOST), backend.port, auth=(b"alice", b"s3cret")
        )
        assert reply[:2] == b"\x05\x00"
        await stream.send_all(b"authed")
        assert await receive_exactly(stream, 6) == b"authed"
        # A client offering only no-auth is turned away.
        raw = await connect(LOCALHOST, gaddress[1])
        await raw.send_all(b"\x05\x01\x00")
        assert await receive_exactly(raw, 2) == b"\x05\xff"
        gateway.request_shutdown()


async def test_ipv6_and_unix_endpoints(nursery: trio.Nursery, tmp_path: Path) -> None:
    if not socket.has_ipv6:  # pragma: no cover - depends on the machine
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:  # pragma: no cover - depends on the machine
        pytest.skip("::1 not available")
    backend_path = tmp_path / "backend.sock"
    sock = trio.socket.socket(socket.AF_UNIX)
    await sock.bind(str(backend_path))
    sock.listen(4)
    backend = Backend(port=0)
    nursery.start_soon(trio.serve_listeners, partial(_echo, backend), [trio.SocketListener(sock)])
    egress_att = hmac_test_attestation(KEY)
    ingress_att = hmac_test_attestation(KEY)
    edoc = {
        "attestation": {"attester": "test"},
        "egress": {
            "listener": [{"name": "u", "listen": f"unix:{tmp_path / 'egress.sock'}"}],
            "route": [{"name": "app", "backend": f"unix:{backend_path}"}],
        },
    }
    egress = await start_gateway(nursery, parse_config(edoc), egress_att[0])
    assert egress.address("egress:u") == str(tmp_path / "egress.sock")
    idoc = {
        "attestation": {"attester": "test"},
        "ingress": {
            "mapping": [
                {
                    "name": "v6",
                    "listen": "[::1]:0",
                    "egress": f"unix:{tmp_path / 'egress.sock'}",
                    "target": "app",
                }
            ]
        },
    }
    ingress = await start_gateway(nursery, parse_config(idoc), ingress_att[0])
    address = ingress.address("mapping:v6")
    assert isinstance(address, tuple)
    assert address[0] == "::1"
    client = await connect("::1", address[1])
    await client.send_all(b"v6 to unix")
    assert await receive_exactly(client, 10) == b"v6 to unix"
    await close_clients()
    ingress.request_shutdown()
    egress.request_shutdown()


# --------------------------------------------------------------------------- fail closed


async def test_ingress_refused_by_egress_policy_reaches_no_backend(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port, ingress_identity="tampered") as pair:
        # Raw TCP: the client gets a reset (or EOF) and nothing else.
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"secret request")
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await client.aclose()
        # HTTP: 502 with the reason.
        stream, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}", extra=b"payload"
        )
        assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert b"Ratls-Gateway-Reason: attestation-failed\r\n" in head
        body = await receive_all(stream)
        assert b"refused our attestation" in body
        assert b"test.identity" in body  # the claim that failed, not the reference values
        assert b"good" not in body
        # SOCKS5: general failure.
        stream, reply = await socks_connect(
            pair.port("socks5:socks"), 1, socket.inet_aton(LOCALHOST), backend.port
        )
        assert reply[1] == SocksReply.GENERAL_FAILURE
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 3)
    assert backend.connections == 0
    assert backend.received == b""
    lines = tunnel_lines(caplog, "ingress")
    assert {line["result"] for line in lines} == {"attestation-failed"}
    assert all("refused our attestation" in line["detail"] for line in lines)
    egress_lines = tunnel_lines(caplog, "egress")
    assert {line["result"] for line in egress_lines} == {"attestation-failed"}


async def test_egress_refused_by_ingress_policy(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port, egress_identity="tampered") as pair:
        stream, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"the egress failed attestation: PolicyViolation: test.identity" in (
            await receive_all(stream)
        )
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    assert backend.connections == 0
    assert tunnel_lines(caplog, "egress")[0]["result"] == "attestation-failed"


async def test_broken_attester_fails_closed(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port) as pair:
        pair.ingress_att[1].broken = True
        _stream, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 502 ")
    assert backend.connections == 0


@pytest.mark.skipif(
    not key_exchange_groups_settable(), reason="this cryptography cannot set TLS groups"
)
async def test_key_exchange_groups_from_the_config(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery)
    classic = {"tls": {"groups": ["X25519"]}}
    async with gateway_pair(backend.port, egress_extra=classic, ingress_extra=classic) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"classic")
        assert await receive_exactly(client, 7) == b"classic"
        await client.aclose()
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    line = tunnel_lines(caplog, "egress")[0]
    named = hasattr(SSL.Connection, "get_group_name")  # pyOpenSSL 26 and later
    assert line["tls"] == ("TLSv1.3 x25519" if named else "TLSv1.3 ?")
    # No group in common: no tunnel, and the client learns why.
    other = {"tls": {"groups": ["P-256"]}}
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port, egress_extra=other, ingress_extra=classic) as pair:
        _stream, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 502 ")
    assert backend.connections == 0


async def test_not_allowed_and_unknown_route(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _record)
    other = free_port()
    async with gateway_pair(
        backend.port,
        ingress_extra={},
    ) as pair:
        stream, head = await http_connect(pair.port("http-connect:proxy"), f"127.0.0.1:{other}")
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert b"Ratls-Gateway-Reason: not-allowed" in head
        assert b"is not allowed" in await receive_all(stream)
        stream, reply = await socks_connect(
            pair.port("socks5:socks"), 1, socket.inet_aton("10.1.2.3"), 80
        )
        assert reply[1] == SocksReply.NOT_ALLOWED
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 2)
    assert backend.connections == 0
    assert [line["result"] for line in tunnel_lines(caplog, "ingress")] == [
        "not-allowed",
        "not-allowed",
    ]


async def test_mapping_to_unknown_route_is_reset_and_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port) as pair:
        address = pair.egress.address("egress:main")
        assert isinstance(address, tuple)
        doc = {
            "attestation": {"attester": "test"},
            "ingress": {
                "mapping": [
                    {
                        "name": "nowhere",
                        "listen": "127.0.0.1:0",
                        "egress": f"127.0.0.1:{address[1]}",
                        "target": "db",
                    }
                ]
            },
        }
        gateway = await start_gateway(nursery, parse_config(doc), pair.ingress_att[0])
        gaddress = gateway.address("mapping:nowhere")
        assert isinstance(gaddress, tuple)
        client = await connect(LOCALHOST, gaddress[1])
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await wait_for(lambda: any(x["rule"] == "nowhere" for x in tunnel_lines(caplog, "ingress")))
        gateway.request_shutdown()
    line = next(x for x in tunnel_lines(caplog, "ingress") if x["rule"] == "nowhere")
    assert line["result"] == "unknown-route"
    assert "no route 'db'" in line["detail"]


async def test_dead_backend(nursery: trio.Nursery) -> None:
    dead = free_port()
    async with gateway_pair(dead) as pair:
        _stream, head = await http_connect(pair.port("http-connect:proxy"), f"127.0.0.1:{dead}")
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"Ratls-Gateway-Reason: backend-refused" in head
        _stream, reply = await socks_connect(
            pair.port("socks5:socks"), 1, socket.inet_aton(LOCALHOST), dead
        )
        assert reply[1] == SocksReply.CONNECTION_REFUSED
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)


async def test_backend_timeout(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    backend = await start_backend(nursery)

    async def hang(endpoint: object, **options: object) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr("gateway._egress.connect_endpoint", hang)
    async with gateway_pair(backend.port, egress_extra={"timeouts": {"connect": 3}}) as pair:
        _stream, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
        assert b"backend-timeout" in head
        _stream, reply = await socks_connect(
            pair.port("socks5:socks"), 1, socket.inet_aton(LOCALHOST), backend.port
        )
        assert reply[1] == SocksReply.TTL_EXPIRED
    assert backend.connections == 0


async def test_silent_egress_is_a_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # A "peer" that accepts TCP and never speaks TLS (slowloris towards the ingress).
    sock = trio.socket.socket()
    await sock.bind((LOCALHOST, 0))
    sock.listen(4)
    port = sock.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, [trio.SocketListener(sock)])
    doc = ingress_doc(port)
    doc["timeouts"] = {"handshake": 2}
    ingress = await start_gateway(nursery, parse_config(doc), hmac_test_attestation(KEY)[0])
    address = ingress.address("http-connect:proxy")
    assert isinstance(address, tuple)
    _stream, head = await http_connect(address[1], "127.0.0.1:1")
    assert head.startswith(b"HTTP/1.1 504 ")
    assert b"handshake-timeout" in head
    await close_clients()
    ingress.request_shutdown()


async def test_slow_client_to_egress_is_cut_at_the_handshake_timeout(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port, egress_extra={"timeouts": {"handshake": 2}}) as pair:
        address = pair.egress.address("egress:main")
        assert isinstance(address, tuple)
        slow = await connect(LOCALHOST, address[1])
        await slow.send_all(b"\x16\x03")  # the first bytes of a ClientHello, then nothing
        assert await receive_all(slow) == b""
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    assert tunnel_lines(caplog, "egress")[0]["result"] == "handshake-timeout"
    assert backend.connections == 0


# --------------------------------------------------------------------------- streams


async def _long_reply(backend: Backend, stream: trio.SocketStream) -> None:
    """Read the whole request (until EOF), then send a long reply and close."""
    backend.connections += 1
    request = await receive_all(stream)
    backend.received += request
    backend.eof_seen += 1
    reply = hashlib.sha256(request).digest() * (1 << 15)  # 1 MiB
    await stream.send_all(reply)
    await stream.aclose()


async def test_half_close_request_finished_reply_still_flowing(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, _long_reply)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"GET /big")
        await client.send_eof()
        reply = await receive_all(client)
        await client.aclose()
    assert backend.received == b"GET /big"
    assert reply == hashlib.sha256(b"GET /big").digest() * (1 << 15)


async def _speaks_first_then_listens(backend: Backend, stream: trio.SocketStream) -> None:
    """Send a greeting and half-close at once, then keep reading the client."""
    backend.connections += 1
    await stream.send_all(b"banner")
    await stream.send_eof()
    backend.received += await receive_all(stream)
    backend.eof_seen += 1
    await stream.aclose()


async def test_half_close_from_the_backend_side(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, _speaks_first_then_listens)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        assert await receive_all(client) == b"banner"  # the backend's direction ended
        for i in range(20):  # ...and ours still flows
            await client.send_all(b"line %d\n" % i)
        await client.send_eof()
        await wait_for(lambda: backend.eof_seen == 1)
        await client.aclose()
    assert backend.received == b"".join(b"line %d\n" % i for i in range(20))


async def _reset_after_first_chunk(backend: Backend, stream: trio.SocketStream) -> None:
    backend.connections += 1
    backend.received += await stream.receive_some(65536)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def test_backend_abortive_close_resets_the_client(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _reset_after_first_chunk)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert tunnel_lines(caplog, "egress")[0]["result"] == "backend-reset"
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "peer-backend-reset"


async def test_client_abortive_close_resets_the_backend(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"partial")
        await wait_for(lambda: backend.received == b"partial")
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()
        await wait_for(lambda: backend.resets == 1)
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    assert backend.eof_seen == 0  # a reset, not a clean end
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "client-reset"
    assert tunnel_lines(caplog, "egress")[0]["result"] == "peer-client-reset"


async def test_16_mib_full_duplex_with_checksums(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    size = 16 * 1024 * 1024
    payload = os.urandom(1 << 20)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        sent = hashlib.sha256()
        got = hashlib.sha256()
        received = 0

        async def send() -> None:
            for i in range(size // len(payload)):
                chunk = payload[i:] + payload[:i]  # varied content, same size
                sent.update(chunk)
                # many small writes too
                if i % 4 == 0:
                    for j in range(0, len(chunk), 1000):
                        await client.send_all(chunk[j : j + 1000])
                else:
                    await client.send_all(chunk)
            await client.send_eof()

        async def receive() -> None:
            nonlocal received
            while data := await client.receive_some(65536):
                got.update(data)
                received += len(data)

        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            inner.start_soon(receive)
        await client.aclose()
    assert received == size
    assert got.digest() == sent.digest()
    assert len(backend.received) == size
    assert hashlib.sha256(backend.received).digest() == sent.digest()


# --------------------------------------------------------------------------- limits


async def test_max_tunnels_and_rate_limit(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port, ingress_extra={"limits": {"max_tunnels": 1}}) as pair:
        first, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 200 ")
        _second, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"limit-reached" in head
        await first.aclose()
        await wait_for(lambda: pair.ingress.runtime.admission.active == 0)
        third, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 200 ")
        await third.aclose()
    async with gateway_pair(
        backend.port, ingress_extra={"limits": {"rate_per_source": 0.001, "rate_burst": 1}}
    ) as pair:
        ok, head = await http_connect(pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}")
        assert head.startswith(b"HTTP/1.1 200 ")
        await ok.aclose()
        _limited, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 429 ")


async def test_egress_limit_resets_before_any_tls(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port, egress_extra={"limits": {"max_tunnels": 1}}) as pair:
        first = await connect(LOCALHOST, pair.port("mapping:web"))
        await first.send_all(b"a")
        assert await receive_exactly(first, 1) == b"a"
        _stream, head = await http_connect(
            pair.port("http-connect:proxy"), f"127.0.0.1:{backend.port}"
        )
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"handshake-failed" in head
        await first.aclose()


async def test_idle_timeout(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port, ingress_extra={"timeouts": {"idle": 30}}) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"x")
        assert await receive_exactly(client, 1) == b"x"
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        assert trio.current_time() - start >= 30
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "idle-timeout"
    assert tunnel_lines(caplog, "egress")[0]["result"] == "peer-idle-timeout"


async def test_max_lifetime(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port, egress_extra={"timeouts": {"max_lifetime": 100}}) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        for _ in range(3):  # busy, but not for ever
            await client.send_all(b"tick")
            assert await receive_exactly(client, 4) == b"tick"
            await trio.sleep(30)
        await trio.sleep(20)
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert tunnel_lines(caplog, "egress")[0]["result"] == "lifetime-exceeded"


async def _silent_after_eof(backend: Backend, stream: trio.SocketStream) -> None:
    """Read the request to its end, then neither answer nor close."""
    backend.connections += 1
    backend.received += await receive_all(stream)
    await trio.sleep_forever()


async def test_half_close_drain_timeout(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client finished its request; the backend never answers nor closes.  The
    # half-close drain (20 s here) ends the tunnel: its timer starts at the EOF.
    backend = await start_backend(nursery, _silent_after_eof)
    async with gateway_pair(backend.port, ingress_extra={"timeouts": {"half_close": 20}}) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await trio.sleep(100)  # idle before the EOF: no drain deadline yet
        await client.send_all(b"request")
        await client.send_eof()
        start = trio.current_time()
        with trio.fail_after(60), pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        assert 20 <= trio.current_time() - start < 30
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    line = tunnel_lines(caplog, "ingress")[0]
    assert line["result"] == "idle-timeout"
    assert "half-closed and silent for 20 s" in json.dumps(line)
    assert backend.received == b"request"


async def test_lifetime_and_idle_share_one_timer(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Idle 50 s and lifetime 120 s on one tunnel kept busy every 40 s: the lifetime,
    # not the idle timeout, ends it.
    backend = await start_backend(nursery)
    timeouts = {"timeouts": {"idle": 50, "max_lifetime": 120}}
    async with gateway_pair(backend.port, ingress_extra=timeouts) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        start = trio.current_time()

        async def busy_until_closed() -> None:
            while True:
                await client.send_all(b"tick")
                assert await receive_exactly(client, 4) == b"tick"
                await trio.sleep(40)

        with trio.fail_after(300), pytest.raises(trio.BrokenResourceError):
            await busy_until_closed()
        assert 120 <= trio.current_time() - start < 130
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "lifetime-exceeded"


# --------------------------------------------------------------------------- attestation


async def test_reattestation_on_a_timer_and_failure_closes(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(
        backend.port, ingress_extra={"timeouts": {"max_attestation_age": 60}}
    ) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"a")
        assert await receive_exactly(client, 1) == b"a"
        egress_attester = pair.egress_att[1]
        calls = egress_attester.calls
        await trio.sleep(61)
        assert egress_attester.calls == calls + 1  # fresh evidence was produced
        metrics = pair.ingress.runtime.metrics
        assert metrics.reattest_total.get(side="ingress", outcome="ok") == 1
        await client.send_all(b"b")
        assert await receive_exactly(client, 1) == b"b"
        # The egress's new image is no longer admitted: the next round closes the tunnel.
        pair.ingress_att[2].allowed = frozenset({"other"})
        await trio.sleep(61)
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    ingress_line = tunnel_lines(caplog, "ingress")[0]
    assert ingress_line["result"] == "attestation-failed"
    assert "test.identity" in ingress_line["detail"]
    assert ingress_line["reattestations"] == 1
    assert tunnel_lines(caplog, "egress")[0]["result"] == "peer-attestation-failed"
    assert backend.resets == 1


async def test_reattestation_without_answer_closes(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(
        backend.port, egress_extra={"timeouts": {"max_attestation_age": 60}}
    ) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"a")
        assert await receive_exactly(client, 1) == b"a"
        pair.ingress_att[1].broken = True  # the ingress can no longer produce evidence
        await trio.sleep(61)
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "attestation-failed"
    assert "could not produce fresh evidence" in tunnel_lines(caplog, "ingress")[0]["detail"]
    assert tunnel_lines(caplog, "egress")[0]["result"] == "peer-attestation-failed"


async def test_policy_reload_tears_down_tunnels_to_removed_peers(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"a")
        assert await receive_exactly(client, 1) == b"a"
        config, _, verifier = hmac_test_attestation(KEY, allowed=frozenset({"good"}))
        pair.egress.reload(pair.egress.runtime.config, attestation=config)
        await client.send_all(b"b")  # still admitted: the tunnel lives on
        assert await receive_exactly(client, 1) == b"b"
        await wait_for(lambda: verifier.calls == 1)
        strict, _, _ = hmac_test_attestation(KEY, allowed=frozenset({"other"}))
        pair.egress.reload(pair.egress.runtime.config, attestation=strict)
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert tunnel_lines(caplog, "egress")[0]["result"] == "attestation-failed"


async def test_a_port_range_maps_port_by_port(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    first_backend = stable_port(3)
    backends = [await start_backend(nursery, port=first_backend + i) for i in range(3)]
    first_listen = stable_port(3)  # chosen while the backends hold theirs
    span = f"{first_backend}-{first_backend + 2}"
    async with gateway_pair(
        backends[0].port,
        egress_listener={"allow": [f"127.0.0.1:{span}"]},
    ) as pair:
        egress = pair.egress.address("egress:main")
        assert isinstance(egress, tuple)
        mapping = {
            "name": "kv",
            "listen": f"127.0.0.1:{first_listen}-{first_listen + 2}",
            "egress": f"127.0.0.1:{egress[1]}",
            "target": f"127.0.0.1:{span}",
        }
        async with trio.open_nursery() as inner:
            ingress = await start_gateway(
                inner,
                parse_config(ingress_doc(egress[1], ingress={"mapping": [mapping]})),
                pair.ingress_att[0],
            )
            assert len(ingress.listeners["mapping:kv"]) == 3
            for i in (2, 0, 1):
                client = await connect(LOCALHOST, first_listen + i)
                await client.send_all(b"to %d" % i)
                assert await receive_exactly(client, 4) == b"to %d" % i
                await client.aclose()
            await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 3)
            inner.cancel_scope.cancel()
    assert [bytes(b.received) for b in backends] == [b"to 0", b"to 1", b"to 2"]
    targets = sorted(line["target"] for line in tunnel_lines(caplog, "ingress"))
    assert targets == [f"127.0.0.1:{first_backend + i}" for i in range(3)]


async def test_reload_sends_new_connections_where_the_new_rules_say(
    nursery: trio.Nursery,
) -> None:
    first = await start_backend(nursery)
    second = await start_backend(nursery)
    async with gateway_pair(first.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"1")
        assert await receive_exactly(client, 1) == b"1"
        egress = pair.egress.address("egress:main")
        assert isinstance(egress, tuple)
        doc = ingress_doc(egress[1])
        doc["ingress"]["mapping"][0]["target"] = f"localhost:{second.port}"
        doc["ingress"]["socks5"][0]["users"] = [{"username": "u", "password": "p"}]
        pair.ingress.reload(parse_config(doc), attestation=pair.ingress_att[0])
        # New connections follow the new mapping target and SOCKS users...
        moved = await connect(LOCALHOST, pair.port("mapping:web"))
        await moved.send_all(b"2")
        assert await receive_exactly(moved, 1) == b"2"
        assert bytes(second.received) == b"2"
        socks = await connect(LOCALHOST, pair.port("socks5:socks"))
        await socks.send_all(b"\x05\x01\x00")  # offers "no authentication" only
        assert await receive_exactly(socks, 2) == b"\x05\xff"  # no acceptable method now
        # ...while the tunnel opened before the reload stays where it was.
        await client.send_all(b"3")
        assert await receive_exactly(client, 1) == b"3"
        assert bytes(first.received) == b"13"


async def test_proxy_protocol_v2_carries_verified_claims(nursery: trio.Nursery) -> None:
    seen: list[bytes] = []

    async def proxied(backend: Backend, stream: trio.SocketStream) -> None:
        head = await receive_exactly(stream, 16)
        (length,) = struct.unpack(">H", head[14:16])
        seen.append(head + await receive_exactly(stream, length))
        await _echo(backend, stream)

    backend = await start_backend(nursery, proxied)
    extra = {
        "egress": {
            "listener": [{"name": "main", "listen": "127.0.0.1:0"}],
            "route": [
                {"name": "web", "backend": f"127.0.0.1:{backend.port}", "proxy_protocol": True}
            ],
        }
    }
    async with gateway_pair(backend.port, egress_extra=extra) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        client_port = client.socket.getsockname()[1]
        await client.send_all(b"after the header")
        assert await receive_exactly(client, 16) == b"after the header"
        await client.aclose()
    header = parse_proxy_header(seen[0])
    assert seen[0].startswith(PROXY_V2_SIGNATURE)
    assert str(header.source) == LOCALHOST
    assert header.source_port == client_port
    claims = header.claims()
    assert claims is not None
    assert claims["identity"] == "good"
    assert claims["profile"] == "test-hmac"
    assert header.tlv(ProxyTlv.RATLS_PROFILE) == b"test-hmac"
    assert header.tlv(ProxyTlv.RATLS_MEASUREMENT) == hashlib.sha384(b"good").hexdigest().encode()
    assert (header.tlv(ProxyTlv.UNIQUE_ID) or b"").startswith(b"tunnel-")
    assert backend.received == b"after the header"


# --------------------------------------------------------------------------- operations


async def _admin_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await connect(LOCALHOST, port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = await receive_all(stream)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_admin_endpoints(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        port = pair.port("admin")
        assert await _admin_get(port, "/livez") == (200, b"ok\n")
        assert await _admin_get(port, "/readyz") == (200, b"ready\n")
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"abc")
        assert await receive_exactly(client, 3) == b"abc"
        status, body = await _admin_get(port, "/status")
        assert status == 200
        doc = json.loads(body)
        assert doc["ready"] is True
        assert doc["tunnels_active"] == 1
        assert doc["tunnels"][0]["peer"] == "test-hmac identity=good"
        assert doc["tunnels"][0]["bytes_up"] == 3
        assert doc["tunnels"][0]["tls"].startswith("TLSv1.3 ")
        assert {x["mode"] for x in doc["ingress"]} == {"mapping", "http-connect", "socks5"}
        status, body = await _admin_get(port, "/metrics")
        assert status == 200
        text = body.decode()
        assert 'ratls_gateway_tunnels_active{side="ingress",rule="web"} 1' in text
        assert 'ratls_gateway_bytes_total{side="ingress",rule="web",direction="up"} 3' in text
        assert 'ratls_gateway_handshake_seconds_count{side="ingress"} 1' in text
        assert (await _admin_get(port, "/nope"))[0] == 404
        await client.aclose()
        pair.ingress.request_shutdown()
        await wait_for(lambda: pair.ingress.runtime.draining)


async def test_drain_lets_live_tunnels_finish_and_refuses_new(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(backend.port) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"before")
        assert await receive_exactly(client, 6) == b"before"
        port = pair.port("mapping:web")
        pair.ingress.request_shutdown()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(OSError, match="connect"):  # the listener is closed
            await connect(LOCALHOST, port)
        await client.send_all(b"during drain")
        assert await receive_exactly(client, 12) == b"during drain"
        await client.send_eof()
        assert await receive_all(client) == b""


async def test_claim_rules_per_route(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _record)
    good = hashlib.sha384(b"good").hexdigest()
    extra = {
        "egress": {
            "listener": [{"name": "main", "listen": "127.0.0.1:0"}],
            "route": [
                {
                    "name": "web",
                    "backend": f"127.0.0.1:{backend.port}",
                    "require": {"measurement": ["00" * 48], "profile": "test-hmac"},
                }
            ],
        }
    }
    async with gateway_pair(backend.port, egress_extra=extra) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"not for you")
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(client)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
        line = tunnel_lines(caplog, "ingress")[0]
        assert line["result"] == "not-allowed"
        assert line["detail"] == "claim measurement is not admitted for route:web"
        assert good not in line["detail"]
        assert "00" * 48 not in line["detail"]
        # The same peer is admitted once the route lists its measurement.
        new = parse_config(egress_doc(backend.port))
        routes = dict(new.routes)
        routes["web"] = EgressRoute(
            name="web",
            backend=routes["web"].backend,
            require=(ClaimRule(path="measurement", allowed=frozenset({good})),),
        )
        pair.egress.reload(
            dataclasses.replace(pair.egress.runtime.config, routes=routes),
            attestation=pair.egress_att[0],
        )
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"welcome")
        await client.send_eof()
        await wait_for(lambda: backend.eof_seen == 1)
    assert backend.received == b"welcome"


async def test_http_proxy_bad_requests(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port) as pair:
        port = pair.port("http-connect:proxy")
        stream = await connect(LOCALHOST, port)
        # Absolute-form http:// is proxied (tests/test_gateway_http_proxy.py); https://
        # in absolute form is refused before any attested connection is opened.
        await stream.send_all(b"GET https://example/ HTTP/1.1\r\nHost: example\r\n\r\n")
        response = await receive_all(stream)
        assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        slow = await connect(LOCALHOST, port)
        await slow.send_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n")  # ...and never the end
        assert (await receive_all(slow)).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        huge = await connect(LOCALHOST, port)
        await huge.send_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n" + b"X: y\r\n" * 2000)
        assert (await receive_all(huge)).startswith(b"HTTP/1.1 431 ")
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 3)
    results = sorted(line["result"] for line in tunnel_lines(caplog, "ingress"))
    assert results == ["bad-request", "bad-request", "request-timeout"]
    assert backend.connections == 0
    assert tunnel_lines(caplog, "egress") == []  # no attested connection was even opened


async def test_socks_bad_client_is_dropped(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery, _record)
    async with gateway_pair(backend.port) as pair:
        stream = await connect(LOCALHOST, pair.port("socks5:socks"))
        await stream.send_all(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")  # SOCKS4
        assert await receive_all(stream) == b""
        bind = await connect(LOCALHOST, pair.port("socks5:socks"))
        await bind.send_all(b"\x05\x01\x00")
        assert await receive_exactly(bind, 2) == b"\x05\x00"
        await bind.send_all(b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")
        reply = await receive_exactly(bind, 10)
        assert reply[1] == SocksReply.COMMAND_NOT_SUPPORTED
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 2)
    assert {line["result"] for line in tunnel_lines(caplog, "ingress")} == {"bad-request"}
    assert backend.connections == 0


async def test_many_concurrent_tunnels_are_all_released(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    count = 64
    async with gateway_pair(backend.port) as pair:
        port = pair.port("mapping:web")
        clients = [await connect(LOCALHOST, port) for _ in range(count)]

        async def one(i: int, client: trio.SocketStream) -> None:
            message = b"tunnel %d" % i
            await client.send_all(message)
            assert await receive_exactly(client, len(message)) == message

        async with trio.open_nursery() as inner:
            for i, client in enumerate(clients):
                inner.start_soon(one, i, client)
        assert pair.ingress.runtime.admission.active == count
        assert len(pair.egress.runtime.tunnels) == count
        for client in clients:
            await client.send_eof()
            assert await receive_all(client) == b""
        await wait_for(lambda: pair.egress.runtime.admission.active == 0)
        await wait_for(lambda: pair.ingress.runtime.admission.active == 0)
        assert pair.ingress.runtime.tunnels == {}
        assert pair.ingress.runtime.live == {}
    assert backend.connections == count
    assert backend.eof_seen == count


async def test_egress_going_away_mid_stream_resets_the_client(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery)
    egress_att = hmac_test_attestation(KEY)
    done = trio.Event()

    async def run_egress(task_status: trio.TaskStatus[RunningGateway]) -> None:
        await run_gateway(
            parse_config(egress_doc(backend.port)),
            attestation=egress_att[0],
            drain_timeout=0.01,
            task_status=task_status,
        )
        done.set()

    egress: RunningGateway = await nursery.start(run_egress)
    address = egress.address("egress:main")
    assert isinstance(address, tuple)
    ingress = await start_gateway(
        nursery, parse_config(ingress_doc(address[1])), hmac_test_attestation(KEY)[0]
    )
    client_address = ingress.address("mapping:web")
    assert isinstance(client_address, tuple)
    client = await connect(LOCALHOST, client_address[1])
    await client.send_all(b"before")
    assert await receive_exactly(client, 6) == b"before"
    egress.request_shutdown()
    await done.wait()
    with pytest.raises(trio.BrokenResourceError):
        await receive_all(client)
    await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert tunnel_lines(caplog, "egress")[0]["result"] == "shutting-down"
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "link-lost"
    await close_clients()
    ingress.request_shutdown()
