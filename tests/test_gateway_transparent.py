"""Transparent capture (``[[ingress.transparent]]``): the kernel's answer, config, netfilter.

The end-to-end tests run ``tests/netns_transparent.py`` (REDIRECT, IPv4 and IPv6) and
``tests/netns_tproxy.py`` (TPROXY, the client in a second namespace behind a veth pair)
in a new user and network namespace (``unshare -rn``), where they may add addresses,
routes and iptables rules without touching the machine: a client dials a service
address, netfilter sends the connection to the ingress, and it arrives at the backend
through an attested tunnel.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest
import trio
from gateway_helpers import KEY, admin_get, listen_port, run_in_network_namespace, start_gateway
from hypothesis import given
from hypothesis import strategies as st

from gateway._config import ConfigError, Endpoint, TransparentRule, parse_config
from gateway._link import AddressTarget
from gateway._testing import hmac_test_attestation
from gateway._transparent import (
    NotRedirected,
    original_destination,
    parse_original_destination,
    tproxy_destination,
)


def sockaddr_in(host: str, port: int) -> bytes:
    family = struct.pack("=H", socket.AF_INET)  # sa_family_t is in host order
    return family + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)


def sockaddr_in6(host: str, port: int) -> bytes:
    family = struct.pack("=H", socket.AF_INET6)
    address = socket.inet_pton(socket.AF_INET6, host)
    return family + struct.pack("!HI", port, 0) + address + struct.pack("=I", 0)


def test_the_kernels_socket_addresses_decode() -> None:
    assert parse_original_destination(sockaddr_in("10.77.0.5", 5432), socket.AF_INET) == (
        AddressTarget(host="10.77.0.5", port=5432)
    )
    assert parse_original_destination(sockaddr_in6("fd77::5", 443), socket.AF_INET6) == (
        AddressTarget(host="fd77::5", port=443)
    )


@pytest.mark.parametrize(
    ("raw", "family", "message"),
    [
        (sockaddr_in("10.0.0.1", 80)[:-1], socket.AF_INET, "15 bytes, expected 16"),
        (sockaddr_in("10.0.0.1", 80) + b"\0", socket.AF_INET, "17 bytes, expected 16"),
        (sockaddr_in("10.0.0.1", 80), socket.AF_INET6, "16 bytes, expected 28"),
        (sockaddr_in6("::1", 80)[:16], socket.AF_INET, "family 10, expected 2"),
        (sockaddr_in("10.0.0.1", 0), socket.AF_INET, "without a port or an address"),
        (sockaddr_in("0.0.0.0", 80), socket.AF_INET, "without a port or an address"),  # noqa: S104
        (sockaddr_in6("::", 80), socket.AF_INET6, "without a port or an address"),
        (bytes(16), socket.AF_UNIX, "address family 1 has no original destination"),
    ],
)
def test_malformed_answers_are_refused(raw: bytes, family: int, message: str) -> None:
    with pytest.raises(NotRedirected, match=message):
        parse_original_destination(raw, family)


@given(raw=st.binary(max_size=40), family=st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_any_bytes_give_a_target_or_our_error(raw: bytes, family: int) -> None:
    try:
        target = parse_original_destination(raw, family)
    except NotRedirected:
        return
    assert len(raw) == (16 if family == socket.AF_INET else 28)
    assert 1 <= target.port <= 65535


async def test_a_direct_connection_is_not_redirected() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
        server = await listener.accept()
        async with client, server:
            # With connection tracking the kernel names the listener itself; without it,
            # it has no answer. Either way there is nowhere else to go.
            with pytest.raises(NotRedirected, match=r"direct connection|no original destination"):
                original_destination(server.socket)


def test_transparent_rules_parse() -> None:
    rules: list[dict[str, object]] = [
        {"name": "capture", "listen": "127.0.0.1:15001", "egress": "10.0.0.9:9443"},
        {"listen": "unix:/run/capture.sock", "egress": "10.0.0.9:9443"},
        {"name": "capture", "listen": "[::1]:15001", "egress": "10.0.0.9:9443", "x": 1},
    ]
    doc = {"attestation": {"attester": "x"}, "ingress": {"transparent": rules}}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert [str(p) for p in info.value.problems] == [
        "ingress.transparent[1].listen: netfilter diverts TCP: give host:port",
        "ingress.transparent[2].x: unknown key (known: egress, listen, mode, name)",
        "ingress.transparent[2].name: duplicate name 'capture' (also ingress.transparent[0])",
    ]
    del rules[1:]
    config = parse_config(doc)
    assert config.has_ingress
    assert config.transparent == (
        TransparentRule(
            name="capture",
            listen=Endpoint(kind="tcp", host="127.0.0.1", port=15001),
            egress=Endpoint(kind="tcp", host="10.0.0.9", port=9443),
        ),
    )


def test_redirected_connections_reach_their_destination_through_the_tunnel() -> None:
    results = run_in_network_namespace("netns_transparent.py", tools=["ip6tables"])
    # Both families: the client dialled the service, the backend answered through the tunnel.
    assert results["redirected_v4"] == {"answer": "echo:hello", "error": None}
    assert results["redirected_v6"] == {"answer": "echo:hello", "error": None}
    # A redirected destination off the egress's allowlist, and a client of the capture
    # port itself, are cut; a connection no rule matched never met the gateway.
    assert results["not_allowed"]["answer"] is None
    assert results["direct"]["answer"] is None
    assert results["unmatched"] == {"answer": "echo:hello", "error": None}
    lines = {(line["target"], line["result"]) for line in results["tunnels"]}
    assert lines == {
        ("10.77.0.5:5432", "ok"),
        ("[fd77::5]:5432", "ok"),
        ("10.77.0.5:5433", "not-allowed"),
        ("", "not-redirected"),
    }
    modes = {line["mode"] for line in results["tunnels"]}
    assert modes == {"transparent"}


def test_tproxy_diverted_connections_keep_their_addresses_and_reach_the_backend() -> None:
    # The client sits in its own network namespace behind a veth pair; TPROXY hands its
    # connection to the ingress with the addresses untouched.
    results = run_in_network_namespace("netns_tproxy.py", tools=["nsenter"])
    assert results["diverted"] == "echo:hello"
    assert results["direct"] == "ConnectionResetError"  # the capture port itself: cut
    lines = {
        (line["client"].split(":")[0], line["target"], line["result"])
        for line in results["tunnels"]
    }
    assert lines == {
        ("10.88.0.2", "10.77.0.5:5432", "ok"),  # the client's own address, no NAT
        ("127.0.0.1", "", "not-redirected"),
    }


async def test_a_direct_connection_to_a_tproxy_listener_is_refused() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        async with client, server:
            with pytest.raises(NotRedirected, match="direct connection to the capture port"):
                tproxy_destination(server.socket, {port})
            # What TPROXY hands over has the client's destination as its local address.
            assert tproxy_destination(server.socket, {port + 1}) == AddressTarget(
                host="127.0.0.1", port=port
            )


def test_transparent_modes_parse() -> None:
    rule = {"listen": "0.0.0.0:15001", "egress": "10.0.0.9:9443"}
    doc: dict[str, object] = {"attestation": {"attester": "x"}}
    doc["ingress"] = {"transparent": [{**rule, "mode": "tproxy"}]}
    assert parse_config(doc).transparent[0].mode == "tproxy"
    doc["ingress"] = {"transparent": [rule]}
    assert parse_config(doc).transparent[0].mode == "redirect"
    doc["ingress"] = {"transparent": [{**rule, "mode": "divert"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert [str(p) for p in info.value.problems] == [
        'ingress.transparent[0].mode: must be "redirect" or "tproxy"'
    ]


async def test_status_lists_transparent_listeners(nursery: trio.Nursery) -> None:
    doc = {
        "attestation": {"attester": "test"},
        "admin": {"listen": "127.0.0.1:0"},
        "ingress": {
            "transparent": [
                {"name": "capture", "listen": "127.0.0.1:0", "egress": "127.0.0.1:9443"}
            ]
        },
    }
    gateway = await start_gateway(nursery, parse_config(doc), hmac_test_attestation(KEY)[0])
    status, body = await admin_get(listen_port(gateway, "admin"), "/status")
    assert status == 200
    [entry] = json.loads(body)["ingress"]
    assert entry == {"mode": "transparent-redirect", "name": "capture", "listen": "127.0.0.1:0"}
    gateway.request_shutdown()
