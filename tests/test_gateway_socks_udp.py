"""SOCKS5 UDP ASSOCIATE through attested UDP flows, with real sockets on loopback."""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any

import pytest
import trio
from gateway_helpers import (
    KEY,
    LOCALHOST,
    egress_doc,
    ingress_doc,
    listen_port,
    receive_exactly,
    start_gateway,
    tunnel_lines,
    wait_for,
)
from test_gateway_udp import udp_echo

from gateway._config import ConfigError, parse_config
from gateway._link import AddressTarget
from gateway._socks import udp_header
from gateway._testing import hmac_test_attestation

if TYPE_CHECKING:
    from gateway._daemon import RunningGateway


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    from gateway_helpers import capture_gateway_logs

    capture_gateway_logs(caplog)


async def _pair(
    nursery: trio.Nursery, allow_udp: list[str], *, udp: bool = True
) -> tuple[RunningGateway, RunningGateway]:
    edoc = egress_doc({})
    edoc["egress"]["route"] = [{"name": "unused", "backend": f"{LOCALHOST}:9"}]
    edoc["egress"]["listener"][0]["allow"] = []
    edoc["egress"]["listener"][0]["allow_udp"] = allow_udp
    egress = await start_gateway(nursery, parse_config(edoc), hmac_test_attestation(KEY)[0])
    address = f"{LOCALHOST}:{listen_port(egress, 'egress:main')}"
    idoc: dict[str, Any] = ingress_doc(address, {})
    idoc["ingress"] = {
        "socks5": [{"name": "socks", "listen": f"{LOCALHOST}:0", "egress": address, "udp": udp}]
    }
    ingress = await start_gateway(nursery, parse_config(idoc), hmac_test_attestation(KEY)[0])
    return egress, ingress


async def _associate(
    ingress: RunningGateway,
    claimed: tuple[str, int] = ("0.0.0.0", 0),  # noqa: S104 - "not known yet", not a bind
) -> tuple[trio.SocketStream, tuple[str, int], bytes]:
    """Open a control connection and ask for UDP ASSOCIATE; the relay address and reply."""
    address = ingress.address("socks5:socks")
    assert isinstance(address, tuple)
    control = await trio.open_tcp_stream(*address)
    await control.send_all(b"\x05\x01\x00")
    assert await receive_exactly(control, 2) == b"\x05\x00"
    request = b"\x05\x03\x00\x01" + socket.inet_aton(claimed[0]) + struct.pack(">H", claimed[1])
    await control.send_all(request)
    reply = await receive_exactly(control, 10)
    relay = (socket.inet_ntoa(reply[4:8]), struct.unpack(">H", reply[8:10])[0])
    return control, relay, reply


async def _client() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((LOCALHOST, 0))
    return sock


async def _exchange(
    sock: trio.socket.SocketType, relay: tuple[str, int], target: AddressTarget, payload: bytes
) -> bytes:
    await sock.sendto(udp_header(target) + payload, relay)
    with trio.fail_after(10):
        data, source = await sock.recvfrom(65535)
    assert source == relay
    return bytes(data)


async def test_udp_associate_carries_datagrams_to_each_destination(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    first: int = await nursery.start(udp_echo)
    second: int = await nursery.start(udp_echo)
    _egress, ingress = await _pair(nursery, [f"{LOCALHOST}:{first}", f"{LOCALHOST}:{second}"])
    control, relay, reply = await _associate(ingress)
    assert reply[:4] == b"\x05\x00\x00\x01"
    assert relay[0] == LOCALHOST
    assert relay[1] != 0
    sock = await _client()
    one = AddressTarget(host=LOCALHOST, port=first, datagram=True)
    two = AddressTarget(host=LOCALHOST, port=second, datagram=True)
    # Each answer carries the header naming the destination, and its payload whole.
    assert await _exchange(sock, relay, one, b"hello") == udp_header(one) + b"echo:hello"
    assert (
        await _exchange(sock, relay, two, b"x" * 1200) == udp_header(two) + b"echo:" + b"x" * 1200
    )
    assert await _exchange(sock, relay, one, b"again") == udp_header(one) + b"echo:again"
    # Closing the control connection ends the association and every flow of it.
    await control.aclose()
    await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 3)
    lines = tunnel_lines(caplog, "ingress")
    flows = [line for line in lines if line["mode"] == "socks5-udp"]
    assert sorted(line["target"] for line in flows) == sorted([str(one), str(two)])
    assert all(line["result"] == "ok" for line in lines)
    (association,) = [line for line in lines if line["mode"] == "socks5"]
    assert association["target"] == "udp-associate"
    assert association["relay"] == f"{relay[0]}:{relay[1]}"
    sock.close()


async def test_only_the_associations_client_is_relayed_and_fragments_are_dropped(
    nursery: trio.Nursery,
) -> None:
    backend: int = await nursery.start(udp_echo)
    _egress, ingress = await _pair(nursery, [f"{LOCALHOST}:{backend}"])
    mine = await _client()
    other = await _client()
    # The client names the port it will send from: another port of its host is dropped.
    control, relay, _ = await _associate(ingress, (LOCALHOST, mine.getsockname()[1]))
    target = AddressTarget(host=LOCALHOST, port=backend, datagram=True)
    dropped = ingress.runtime.metrics.udp_dropped
    await other.sendto(udp_header(target) + b"not yours", relay)
    fragment = b"\x00\x00\x01" + udp_header(target)[3:] + b"part"
    await mine.sendto(fragment, relay)
    await mine.sendto(b"\x00\x00\x00\x09junk", relay)  # an unknown address type
    await wait_for(lambda: dropped.values.get(("socks",), 0) == 3)
    assert await _exchange(mine, relay, target, b"ok") == udp_header(target) + b"echo:ok"
    with trio.move_on_after(0.2):
        await other.recvfrom(65535)
        pytest.fail("a datagram reached a host that is not the association's client")
    await control.aclose()
    mine.close()
    other.close()


async def test_the_egress_decides_what_udp_may_reach(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend: int = await nursery.start(udp_echo)
    _egress, ingress = await _pair(nursery, [f"{LOCALHOST}:1"])  # not the backend
    control, relay, _ = await _associate(ingress)
    sock = await _client()
    target = AddressTarget(host=LOCALHOST, port=backend, datagram=True)
    await sock.sendto(udp_header(target) + b"refused", relay)
    await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    (line,) = tunnel_lines(caplog, "ingress")
    assert line["mode"] == "socks5-udp"
    assert line["result"] == "not-allowed"
    await control.aclose()
    sock.close()


async def test_udp_associate_is_refused_unless_the_rule_allows_it(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    _egress, ingress = await _pair(nursery, [], udp=False)
    control, _relay, reply = await _associate(ingress)
    assert reply[1] == 0x07  # command not supported
    await control.aclose()
    await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "bad-request"


def test_udp_needs_a_tcp_listen_address() -> None:
    doc = ingress_doc("127.0.0.1:9443", {})
    rule = {"name": "s", "listen": "unix:socks.sock", "egress": "127.0.0.1:9443", "udp": True}
    doc["ingress"] = {"socks5": [rule]}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert [p.location for p in info.value.problems] == ["ingress.socks5[0].udp"]
    rule["listen"] = "127.0.0.1:1080"
    assert parse_config(doc).socks5[0].udp
