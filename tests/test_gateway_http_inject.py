"""Attestation headers towards HTTP backends (``http_headers = true`` on an egress route)."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import pytest
import trio
from gateway_helpers import KEY, LOCALHOST, connect, receive_exactly, start_gateway, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._config import parse_config
from gateway._http_connect import HttpRequestError
from gateway._http_inject import HeaderInjector
from gateway._runtime import LOGGER_NAME
from gateway._testing import hmac_test_attestation

if TYPE_CHECKING:
    from collections.abc import Sequence

BOTH = frozenset({"client-vm"})  # both test gateways claim this identity
ADDED = (("X-Ratls-Peer-Profile", "snp"), ("X-Ratls-Peer-Measurement", "ab" * 48))
ADDED_BYTES = b"X-Ratls-Peer-Profile: snp\r\nX-Ratls-Peer-Measurement: " + b"ab" * 48 + b"\r\n"


def rewrite(data: bytes, cuts: Sequence[int] = ()) -> bytes:
    """Feed ``data`` in pieces cut at ``cuts``; return everything the injector let out."""
    injector = HeaderInjector(ADDED)
    out, start = b"", 0
    for cut in [*sorted(cuts), len(data)]:
        out += injector.feed(data[start:cut])
        start = cut
    assert injector.between_requests
    return out


def test_each_request_head_gets_the_claims_and_loses_forged_ones() -> None:
    stream = (
        b"POST /a HTTP/1.1\r\nHost: app\r\nx-RATLS-peer-measurement: forged\r\n"
        b"Content-Length: 22\r\n\r\nX-Ratls-Peer-Forged: 1"  # a body is never touched
        b"GET /b HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Ratls-Peer-Profile: forged\r\nChecksum: 7\r\n\r\n"
        b"GET /c HTTP/1.0\r\n\r\n"
        b"PUT /d HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert rewrite(stream) == (
        b"POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: 22\r\n" + ADDED_BYTES + b"\r\n"
        b"X-Ratls-Peer-Forged: 1"
        b"GET /b HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n"
        + ADDED_BYTES
        + b"\r\n3;ext=1\r\nabc\r\n0\r\nChecksum: 7\r\n\r\n"
        b"GET /c HTTP/1.0\r\n" + ADDED_BYTES + b"\r\n"
        b"PUT /d HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n"
        + ADDED_BYTES
        + b"\r\n0\r\n\r\n"
    )


# Field names, but not those that decide framing or end HTTP (tested one by one below).
_RESERVED = frozenset({"connection", "upgrade", "transfer-encoding", "content-length"})
FORGED = "forged-by-the-client"
_NAME = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name not in _RESERVED
)
_VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=,/", max_size=20).map(str.strip)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One well-framed HTTP/1.1 request: fields (some forged), and some body framing."""
    fields = draw(st.lists(st.tuples(_NAME, _VALUE), max_size=5))
    if draw(st.booleans()):
        fields.append(("X-Ratls-Peer-" + draw(_NAME), FORGED))
    head = b"GET /" + draw(_NAME).encode() + b" HTTP/1.1\r\n"
    head += b"".join(f"{n}: {v}\r\n".encode() for n, v in fields)
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "none":
        return head + b"\r\n"
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
    if framing == "length":
        body = b"".join(chunks)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    coded = b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks)
    trailers = b"X-Ratls-Peer-Trailer: " + FORGED.encode() + b"\r\n" if draw(st.booleans()) else b""
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + coded + b"0\r\n" + trailers + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(
    pipelined=st.lists(requests(), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_split_gives_the_same_rewrite(pipelined: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pipelined)
    whole = rewrite(stream)
    assert rewrite(stream, [c for c in cuts if c <= len(stream)]) == whole
    assert FORGED.encode() not in whole  # every field the client forged went
    assert whole.count(ADDED_BYTES) == len(pipelined)  # ours went into every head


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"GET / HTTP/1.1\nX: y\r\n\r\n", 400, "bare CR, LF or NUL"),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, "bare CR, LF or NUL"),
        (b"GET / HTTP/1.1\r\nX : y\r\n\r\n", 400, "malformed header field"),
        (b"GET / HTTP/1.1\r\nX: y\r\n folded\r\n\r\n", 400, "malformed header field"),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", 400, "malformed request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2.0"),
        (b"CONNECT db:5432 HTTP/1.1\r\n\r\n", 405, "CONNECT"),
        (b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501, "Upgrade"),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400, "more than"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "not a number"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both",
        ),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400, "end in chunked"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\n", 400, "chunk size"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\n", 400, "chunk size"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400, "CRLF"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            400,
            "too large",
        ),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, "too long"),
        (b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400, "too large"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 5000, 431, "long"),
    ],
)
def test_what_cannot_be_followed_is_refused(data: bytes, status: int, reason: str) -> None:
    injector = HeaderInjector(ADDED)
    with pytest.raises(HttpRequestError, match=reason) as info:
        injector.feed(data)
    assert info.value.status == status


def test_a_refused_request_lets_nothing_of_itself_out() -> None:
    injector = HeaderInjector(ADDED)
    ok = injector.feed(b"GET /a HTTP/1.1\r\n\r\n")
    assert ok.startswith(b"GET /a")
    assert injector.feed(b"GET /b HTTP/1.1\r\nUpgr") == b""  # held until the head is whole
    with pytest.raises(HttpRequestError):
        injector.feed(b"ade: h2c\r\n\r\n")


# --------------------------------------------------------------------------- end to end


async def test_the_backend_reads_the_ingress_claims_and_never_forged_ones(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    seen: list[bytes] = []

    async def backend(stream: trio.SocketStream) -> None:
        # Answers two requests; records what each connection received (reset or not).
        data = b""
        try:
            while data.count(b"\r\n\r\n") < 2 and (chunk := await stream.receive_some(65536)):
                data += chunk
            if data:
                await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n" * 2)
        except trio.BrokenResourceError:
            pass
        seen.append(data)

    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, backend, listeners)
    egress_doc = {
        "attestation": {"attester": "test"},
        "egress": {
            "listener": [{"name": "main", "listen": "127.0.0.1:0"}],
            "route": [{"name": "app", "backend": f"127.0.0.1:{port}", "http_headers": True}],
        },
    }
    egress = await start_gateway(
        nursery,
        parse_config(egress_doc),
        hmac_test_attestation(KEY, identity="client-vm", allowed=BOTH)[0],
    )
    address = egress.address("egress:main")
    assert isinstance(address, tuple)
    ingress_doc = {
        "attestation": {"attester": "test"},
        "ingress": {
            "mapping": [
                {
                    "name": "app",
                    "listen": "127.0.0.1:0",
                    "egress": f"127.0.0.1:{address[1]}",
                    "target": "app",
                }
            ]
        },
    }
    ingress = await start_gateway(
        nursery,
        parse_config(ingress_doc),
        hmac_test_attestation(KEY, identity="client-vm", allowed=BOTH)[0],
    )
    ingress_address = ingress.address("mapping:app")
    assert isinstance(ingress_address, tuple)
    client = await connect(LOCALHOST, ingress_address[1])
    await client.send_all(
        b"GET /one HTTP/1.1\r\nHost: app\r\nX-Ratls-Peer-Measurement: 00\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: app\r\n\r\n"
    )
    answer = b"HTTP/1.1 204 No Content\r\n\r\n" * 2
    assert await receive_exactly(client, len(answer)) == answer
    await wait_for(lambda: len(seen) >= 1)
    received = seen[0]
    first, second = received.split(b"\r\n\r\n")[:2]
    measurement = hashlib.sha384(b"client-vm").hexdigest().encode()
    for head in (first, second):
        assert b"X-Ratls-Peer-Profile: test-hmac\r\n" in head
        assert b"X-Ratls-Peer-Measurement: " + measurement in head  # the verified ingress
        assert b"X-Ratls-Peer-Measurement: 00" not in head  # not what the client wrote
    # A WebSocket upgrade cannot be followed: the tunnel ends, the backend sees nothing.
    upgrade = await connect(LOCALHOST, ingress_address[1])
    await upgrade.send_all(b"GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\n\r\n")
    with trio.fail_after(5):
        try:
            answer = await upgrade.receive_some(100)
        except trio.BrokenResourceError:  # the ingress cuts a failed raw tunnel with a RST
            answer = b""
    assert answer == b""
    await wait_for(
        lambda: any(getattr(r, "fields", {}).get("result") == "bad-request" for r in caplog.records)
    )
    await wait_for(lambda: len(seen) == 2)
    assert seen[1] == b""  # the refused request's bytes never reached the backend

    def ingress_details() -> list[str]:
        return [
            str(fields.get("detail", ""))
            for record in caplog.records
            if isinstance(fields := getattr(record, "fields", None), dict)
            and fields.get("side") == "ingress"
        ]

    await wait_for(lambda: any("Upgrade" in detail for detail in ingress_details()))
