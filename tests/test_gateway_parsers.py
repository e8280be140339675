"""Proxy-side parsers: PROXY v2 headers, SOCKS5 messages, HTTP CONNECT heads; metrics."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._config import SocksUser
from gateway._http_connect import (
    MAX_REQUEST_HEAD,
    ConnectRequest,
    HttpRequestError,
    build_response,
    parse_connect_request,
    status_for,
)
from gateway._link import AddressTarget, LinkReason
from gateway._metrics import Counter, GatewayMetrics, MetricsRegistry
from gateway._proxy_protocol import (
    PROXY_V2_SIGNATURE,
    MalformedProxyHeader,
    ProxyCommand,
    ProxyFamily,
    ProxyHeader,
    ProxyTlv,
    build_proxy_header,
    claims_tlvs,
    parse_proxy_header,
)
from gateway._reader import RequestTooLarge, StreamReader, TruncatedRequest
from gateway._socks import (
    SocksAddressType,
    SocksCommand,
    SocksCredentials,
    SocksError,
    SocksGreeting,
    SocksReply,
    SocksRequest,
    build_reply,
    negotiate,
    parse_credentials,
    parse_greeting,
    parse_request,
    parse_udp_datagram,
    reply_for,
    udp_header,
)
from ratls._errors import RatlsError

if TYPE_CHECKING:
    from collections.abc import Callable


def three_ways(parse: Callable[[bytes], object], data: bytes, error: type[Exception]) -> object:
    """Whole input parses; every truncation and a trailing byte raise ``error``."""
    result = parse(data)
    for cut in range(len(data)):
        with pytest.raises(error):
            parse(data[:cut])
    with pytest.raises(error):
        parse(data + b"\0")
    return result


# --------------------------------------------------------------------------- PROXY v2


CLAIMS: dict[str, object] = {
    "profile": "svsm",
    "policy_digest": "ab" * 32,
    "snp": {"measurement": "cd" * 48, "reported_tcb": {"snp": 23, "tee": 0}},
}


def test_proxy_v4_with_tlvs_three_ways() -> None:
    header = build_proxy_header(
        source=("192.0.2.1", 40000),
        destination=("127.0.0.1", 8080),
        tlvs=claims_tlvs(CLAIMS, unique_id="tunnel-7"),
    )
    assert header.startswith(PROXY_V2_SIGNATURE + b"\x21\x11")
    parsed = three_ways(parse_proxy_header, header, MalformedProxyHeader)
    assert isinstance(parsed, ProxyHeader)
    assert parsed.command is ProxyCommand.PROXY
    assert parsed.family is ProxyFamily.TCP4
    assert parsed.source == ipaddress.IPv4Address("192.0.2.1")
    assert parsed.source_port == 40000
    assert parsed.destination_port == 8080
    assert parsed.tlv(ProxyTlv.UNIQUE_ID) == b"tunnel-7"
    assert parsed.tlv(ProxyTlv.RATLS_PROFILE) == b"svsm"
    assert parsed.tlv(ProxyTlv.RATLS_MEASUREMENT) == b"cd" * 48
    assert parsed.tlv(ProxyTlv.RATLS_POLICY) == b"ab" * 32
    assert json.loads(parsed.tlv(ProxyTlv.RATLS_TCB) or b"") == {"snp": 23, "tee": 0}
    assert parsed.claims() == CLAIMS
    assert parsed.tlv(0x99) is None


def test_proxy_v6_mixed_and_unspec() -> None:
    v6 = parse_proxy_header(build_proxy_header(source=("::1", 1), destination=("::2", 2)))
    assert v6.family is ProxyFamily.TCP6
    assert v6.source == ipaddress.IPv6Address("::1")
    mixed = parse_proxy_header(build_proxy_header(source=("::1", 1), destination=("10.0.0.1", 2)))
    assert mixed.family is ProxyFamily.TCP6
    assert mixed.destination == ipaddress.IPv6Address("::ffff:10.0.0.1")
    mapped = parse_proxy_header(
        build_proxy_header(source=("::ffff:10.0.0.9", 1), destination=("10.0.0.1", 2))
    )
    assert mapped.family is ProxyFamily.TCP4
    unspec = build_proxy_header(source=None, destination=None, tlvs=((0xE0, b"{}"),))
    parsed = three_ways(parse_proxy_header, unspec, MalformedProxyHeader)
    assert isinstance(parsed, ProxyHeader)
    assert parsed.family is ProxyFamily.UNSPEC
    assert parsed.source is None
    local = parse_proxy_header(
        build_proxy_header(source=None, destination=None, command=ProxyCommand.LOCAL)
    )
    assert local.command is ProxyCommand.LOCAL


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"X" + b[1:], "signature"),
        (lambda b: b[:12] + b"\x11" + b[13:], "version"),
        (lambda b: b[:12] + b"\x2f" + b[13:], "command"),
        (lambda b: b[:13] + b"\x31" + b[14:], "family"),
        (lambda b: b[:14] + b"\x00\x02" + b[16:18], "address block"),
        (lambda b: b[:14] + b"\x00\x0e" + b[16:28] + b"\xe0\x00", "TLV header"),
        (lambda b: b[:14] + b"\x00\x0f" + b[16:28] + b"\xe0\x00\x05", "TLV value"),
    ],
)
def test_proxy_malformed(mutate: Callable[[bytes], bytes], match: str) -> None:
    header = build_proxy_header(source=("1.2.3.4", 1), destination=("5.6.7.8", 2))
    with pytest.raises(MalformedProxyHeader, match=match):
        parse_proxy_header(mutate(header))


def test_proxy_claims_tlv_must_be_a_json_object() -> None:
    for value in (b"\xff", b"[1]"):
        header = parse_proxy_header(
            build_proxy_header(source=None, destination=None, tlvs=((0xE0, value),))
        )
        with pytest.raises(MalformedProxyHeader):
            header.claims()
    assert parse_proxy_header(build_proxy_header(source=None, destination=None)).claims() is None


def test_proxy_builder_limits() -> None:
    with pytest.raises(ValueError, match="TLV"):
        build_proxy_header(source=None, destination=None, tlvs=((256, b""),))
    with pytest.raises(ValueError, match="65535"):
        build_proxy_header(source=None, destination=None, tlvs=((0xE0, bytes(40000)),) * 2)


@settings(max_examples=200)
@given(st.binary(max_size=120))
def test_proxy_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, PROXY_V2_SIGNATURE + data):
        with contextlib.suppress(RatlsError):
            parse_proxy_header(candidate)


def test_proxy_header_value_type() -> None:
    a = parse_proxy_header(build_proxy_header(source=("1.2.3.4", 1), destination=("1.2.3.4", 2)))
    b = parse_proxy_header(build_proxy_header(source=("1.2.3.4", 1), destination=("1.2.3.4", 2)))
    assert a == b
    assert hash(a) == hash(b)
    assert a != parse_proxy_header(build_proxy_header(source=None, destination=None))
    assert a != object()
    assert "TCP4" in repr(a)


# --------------------------------------------------------------------------- SOCKS5


def test_socks_greeting_three_ways() -> None:
    greeting = three_ways(parse_greeting, b"\x05\x02\x00\x02", SocksError)
    assert greeting == SocksGreeting(methods=(0, 2))
    with pytest.raises(SocksError, match="version 4"):
        parse_greeting(b"\x04\x01\x00")
    with pytest.raises(SocksError, match="no authentication"):
        parse_greeting(b"\x05\x00")


def test_socks_credentials_three_ways() -> None:
    creds = three_ways(parse_credentials, b"\x01\x05alice\x02pw", SocksError)
    assert creds == SocksCredentials(username=b"alice", password=b"pw")
    assert "pw" not in repr(creds)
    for bad, match in ((b"\x02\x01a\x01b", "auth version"), (b"\x01\x00\x01b", "empty username")):
        with pytest.raises(SocksError, match=match):
            parse_credentials(bad)
    with pytest.raises(SocksError, match="empty password"):
        parse_credentials(b"\x01\x01a\x00")


@pytest.mark.parametrize(
    ("data", "atyp", "target"),
    [
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90", SocksAddressType.IPV4, ("127.0.0.1", 8080)),
        (
            b"\x05\x01\x00\x04" + ipaddress.IPv6Address("2001:db8::1").packed + b"\x01\xbb",
            SocksAddressType.IPV6,
            ("2001:db8::1", 443),
        ),
        (b"\x05\x01\x00\x03\x09localhost\x00\x50", SocksAddressType.DOMAIN, ("localhost", 80)),
    ],
)
def test_socks_request_three_ways(
    data: bytes, atyp: SocksAddressType, target: tuple[str, int]
) -> None:
    request = three_ways(parse_request, data, SocksError)
    assert request == SocksRequest(
        command=SocksCommand.CONNECT, address_type=atyp, host=target[0], port=target[1]
    )
    assert request.target == AddressTarget(host=target[0], port=target[1])


def test_socks_udp_associate_request_may_leave_the_address_open() -> None:
    # "Any address, any port": the client does not know yet where it will send from.
    request = parse_request(b"\x05\x03\x00\x01" + bytes(6))
    assert request.command is SocksCommand.UDP_ASSOCIATE
    assert (request.host, request.port) == ("0.0.0.0", 0)  # noqa: S104 - parsed, not bound
    with pytest.raises(SocksError, match="bad target"):
        request.target  # noqa: B018 - no tunnel can go to port 0


@pytest.mark.parametrize(
    ("header", "target"),
    [
        (b"\x00\x00\x00\x01\x0a\x00\x00\x05\x00\x35", ("10.0.0.5", 53)),
        (
            b"\x00\x00\x00\x04" + ipaddress.IPv6Address("2001:db8::1").packed + b"\x01\xbb",
            ("2001:db8::1", 443),
        ),
        (b"\x00\x00\x00\x03\x0bdns.backend\x00\x35", ("dns.backend", 53)),
    ],
)
def test_socks_udp_datagram_three_ways(header: bytes, target: tuple[str, int]) -> None:
    expected = AddressTarget(host=target[0], port=target[1], datagram=True)
    assert parse_udp_datagram(header + b"payload") == (expected, b"payload")
    assert parse_udp_datagram(header) == (expected, b"")  # an empty payload is a datagram
    assert udp_header(expected) == header  # the answer names the destination as given
    for cut in range(len(header)):
        with pytest.raises(SocksError):
            parse_udp_datagram(header[:cut])


@pytest.mark.parametrize(
    ("datagram", "match"),
    [
        (b"\x00\x01\x00\x01\x0a\x00\x00\x05\x00\x35x", "reserved"),
        (b"\x00\x00\x01\x01\x0a\x00\x00\x05\x00\x35x", "fragment 1"),
        (b"\x00\x00\x00\x01\x0a\x00\x00\x05\x00\x00x", "bad destination"),
        (b"\x00\x00\x00\x07\x0a\x00\x00\x05\x00\x35x", "address type"),
        (b"\x00\x00\x00\x03\x00\x00\x35x", "empty domain"),
    ],
)
def test_socks_udp_datagram_refusals(datagram: bytes, match: str) -> None:
    with pytest.raises(SocksError, match=match):
        parse_udp_datagram(datagram)


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_socks_udp_arbitrary_bytes_only_raise_ours(data: bytes) -> None:
    with contextlib.suppress(SocksError):
        target, payload = parse_udp_datagram(data)
        assert udp_header(target) + payload == data or data[3] == SocksAddressType.DOMAIN


def test_socks_udp_associate_reply_names_the_relay() -> None:
    assert build_reply(SocksReply.SUCCEEDED, ("127.0.0.1", 40000)) == (
        b"\x05\x00\x00\x01\x7f\x00\x00\x01\x9c\x40"
    )
    assert build_reply(SocksReply.SUCCEEDED, ("::1", 1)) == (
        b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x01"
    )


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", SocksReply.COMMAND_NOT_SUPPORTED),
        (b"\x05\x01\x00\x05\x7f\x00\x00\x01\x00\x50", SocksReply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", SocksReply.GENERAL_FAILURE),
        (b"\x05\x01\x00\x03\x00\x00\x50", SocksReply.GENERAL_FAILURE),
        (b"\x05\x01\x00\x03\x01\xff\x00\x50", SocksReply.GENERAL_FAILURE),
        (b"\x05\x01\x00\x03\x01 \x00\x50", SocksReply.GENERAL_FAILURE),
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", SocksReply.GENERAL_FAILURE),
    ],
)
def test_socks_request_refusals(data: bytes, reply: SocksReply) -> None:
    with pytest.raises(SocksError) as info:
        parse_request(data)
    assert info.value.reply is reply


@settings(max_examples=200)
@given(st.binary(max_size=80))
def test_socks_arbitrary_bytes(data: bytes) -> None:
    for parse in (parse_greeting, parse_credentials, parse_request):
        with contextlib.suppress(RatlsError):
            parse(data)


def test_socks_reply_codes() -> None:
    assert build_reply(SocksReply.SUCCEEDED) == b"\x05\x00\x00\x01" + bytes(6)
    assert reply_for("not-allowed", LinkReason.NOT_ALLOWED) is SocksReply.NOT_ALLOWED
    assert reply_for("unknown-route", LinkReason.UNKNOWN_ROUTE) is SocksReply.NOT_ALLOWED
    assert reply_for("backend-refused", LinkReason.BACKEND_REFUSED) is SocksReply.CONNECTION_REFUSED
    assert reply_for("x", LinkReason.BACKEND_UNREACHABLE) is SocksReply.HOST_UNREACHABLE
    assert reply_for("x", LinkReason.BACKEND_TIMEOUT) is SocksReply.TTL_EXPIRED
    assert reply_for("handshake-timeout", LinkReason.ATTESTATION_FAILED) is SocksReply.TTL_EXPIRED
    assert reply_for("attestation-failed", LinkReason.ATTESTATION_FAILED) is (
        SocksReply.GENERAL_FAILURE
    )


async def _negotiate(
    client_bytes: bytes, users: tuple[SocksUser, ...]
) -> tuple[SocksRequest | SocksError, bytes]:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(client_bytes)
    await client.send_eof()
    reader = StreamReader(server, limit=600)
    try:
        result: SocksRequest | SocksError = await negotiate(reader, server, users)
    except SocksError as exc:
        result = exc
    answer = b""
    while True:
        with trio.move_on_after(0.1):
            data = await client.receive_some(100)
            if data:
                answer += data
                continue
        break
    return result, answer


USERS = (SocksUser(username="alice", password="pw"),)  # noqa: S106 - test data
REQUEST = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"


async def test_negotiate_no_auth_and_pipelined_data(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"\x05\x01\x00" + REQUEST + b"early data")
    reader = StreamReader(server, limit=600)
    request = await negotiate(reader, server, ())
    assert request.target == AddressTarget(host="127.0.0.1", port=80)
    assert reader.leftover() == b"early data"
    assert await client.receive_some(2) == b"\x05\x00"


async def test_negotiate_auth_and_refusals(autojump_clock: trio.testing.MockClock) -> None:
    ok, answer = await _negotiate(b"\x05\x01\x02\x01\x05alice\x02pw" + REQUEST, USERS)
    assert isinstance(ok, SocksRequest)
    assert answer == b"\x05\x02\x01\x00"
    bad, answer = await _negotiate(b"\x05\x01\x02\x01\x05alice\x02px" + REQUEST, USERS)
    assert isinstance(bad, SocksError)
    assert answer == b"\x05\x02\x01\x01"
    wrong_user, answer = await _negotiate(b"\x05\x01\x02\x01\x03bob\x02pw" + REQUEST, USERS)
    assert isinstance(wrong_user, SocksError)
    no_method, answer = await _negotiate(b"\x05\x01\x00", USERS)
    assert isinstance(no_method, SocksError)
    assert answer == b"\x05\xff"
    bind, answer = await _negotiate(b"\x05\x01\x00\x05\x02\x00\x01" + bytes(5) + b"\x01", ())
    assert isinstance(bind, SocksError)
    assert answer == b"\x05\x00" + build_reply(SocksReply.COMMAND_NOT_SUPPORTED)
    atyp, answer = await _negotiate(b"\x05\x01\x00\x05\x01\x00\x07" + bytes(6), ())
    assert isinstance(atyp, SocksError)
    assert answer.endswith(build_reply(SocksReply.ADDRESS_TYPE_NOT_SUPPORTED))
    with pytest.raises(TruncatedRequest):
        await _negotiate(b"\x05\x01", ())


# --------------------------------------------------------------------------- HTTP


def test_connect_request_three_ways() -> None:
    head = b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\nX-A:  b \r\n\r\n"
    request = parse_connect_request(head)
    assert request == ConnectRequest(
        target=AddressTarget(host="db.internal", port=5432),
        version=1,
        headers=(("host", "db.internal:5432"), ("x-a", "b")),
    )
    for cut in range(len(head)):
        with pytest.raises(HttpRequestError):
            parse_connect_request(head[:cut])
    with pytest.raises(HttpRequestError):
        parse_connect_request(head + b"x")
    v6 = parse_connect_request(b"CONNECT [::1]:443 HTTP/1.0\r\n\r\n")
    assert v6.target == AddressTarget(host="::1", port=443)
    assert v6.version == 0


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 405),
        (b"CONNECT x:1 HTTP/2.0\r\n\r\n", 505),
        (b"CONNECT x:1 HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"CONNECT x HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT ::1:5 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT [::1]5 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT x:http HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT x:0 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT \xff:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT  x:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT x:1 HTTP/1.1\r\n" + b"A: b\r\n" * 2000 + b"\r\n", 431),
    ],
)
def test_connect_request_refusals(head: bytes, status: int) -> None:
    with pytest.raises(HttpRequestError) as info:
        parse_connect_request(head)
    assert info.value.status == status


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_connect_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, b"CONNECT " + data + b"\r\n\r\n"):
        with contextlib.suppress(RatlsError):
            parse_connect_request(candidate)


def test_status_mapping_and_responses() -> None:
    assert status_for("not-allowed", LinkReason.NOT_ALLOWED) == 403
    assert status_for("unknown-route", LinkReason.UNKNOWN_ROUTE) == 403
    assert status_for("attestation-failed", LinkReason.ATTESTATION_FAILED) == 502
    assert status_for("backend-refused", LinkReason.BACKEND_REFUSED) == 502
    assert status_for("backend-timeout", LinkReason.BACKEND_TIMEOUT) == 504
    assert status_for("handshake-timeout", LinkReason.ATTESTATION_FAILED) == 504
    assert status_for("limit-reached", None) == 503
    assert status_for("x", LinkReason.SHUTTING_DOWN) == 503
    assert status_for("rate-limited", None) == 429
    assert build_response(200) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    refused = build_response(403, reason_code="not-allowed\r\nX: y", detail="10.0.0.1:22")
    head, _, body = refused.partition(b"\r\n\r\n")
    assert b"Ratls-Gateway-Reason: not-allowedXy" in head
    assert body == b"403 Forbidden: 10.0.0.1:22\n"
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Allow: CONNECT" in build_response(405)
    assert MAX_REQUEST_HEAD == 8192


# --------------------------------------------------------------------------- reader


async def test_reader_limits() -> None:
    client, server = trio.testing.memory_stream_pair()
    reader = StreamReader(server, limit=8)
    with pytest.raises(RequestTooLarge):
        await reader.read_exactly(9)
    await client.send_all(b"ab\r\n\r\ncd")
    assert await reader.read_until(b"\r\n\r\n") == b"ab\r\n\r\n"
    assert await reader.read_exactly(1) == b"c"
    assert reader.leftover() == b"d"
    await client.send_all(b"0123456789")
    with pytest.raises(RequestTooLarge):
        await reader.read_until(b"\r\n")
    await client.send_eof()
    reader2 = StreamReader(server, limit=100)
    with pytest.raises(TruncatedRequest):
        await reader2.read_exactly(50)


# --------------------------------------------------------------------------- metrics


def test_metrics_render() -> None:
    metrics = GatewayMetrics()
    metrics.tunnels_total.inc(side="egress", rule="main")
    metrics.tunnels_failed.inc(side="egress", rule="main", reason="not-allowed")
    metrics.tunnels_active.add(2, side="egress", rule="main")
    metrics.tunnels_active.add(-1, side="egress", rule="main")
    metrics.bytes.inc(1500, side="egress", rule="main", direction="up")
    metrics.handshake_seconds.observe(0.004, side="egress")
    metrics.handshake_seconds.observe(20.0, side="egress")
    text = metrics.render()
    assert "# TYPE ratls_gateway_tunnels_total counter" in text
    assert 'ratls_gateway_tunnels_active{side="egress",rule="main"} 1' in text
    assert (
        'ratls_gateway_tunnels_failed_total{side="egress",rule="main",reason="not-allowed"} 1'
        in text
    )
    assert 'ratls_gateway_handshake_seconds_bucket{side="egress",le="0.0025"} 0' in text
    assert 'ratls_gateway_handshake_seconds_bucket{side="egress",le="0.005"} 1' in text
    assert 'ratls_gateway_handshake_seconds_bucket{side="egress",le="+Inf"} 2' in text
    assert 'ratls_gateway_handshake_seconds_count{side="egress"} 2' in text
    assert 'ratls_gateway_handshake_seconds_sum{side="egress"} 20.004' in text
    assert metrics.handshake_seconds.count(side="egress") == 2
    assert metrics.tunnels_active.get(side="egress", rule="main") == 1
    assert text.endswith("\n")


def test_metric_labels_are_checked_and_escaped() -> None:
    registry = MetricsRegistry()
    counter = registry.counter("c", "help", ("a",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(b="x")
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1, a="x")
    counter.inc(a='q"\\\n')
    assert 'c{a="q\\"\\\\\\n"} 1' in registry.render()
    gauge = registry.gauge("g", "help")
    gauge.set(2.5)
    assert "g 2.5" in registry.render()
    assert isinstance(counter, Counter)
