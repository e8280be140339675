"""The ingress HTTP proxy in absolute form: client -> ingress -> attested link -> backend.

Both gateways run in the test's trio process with the HMAC test attesters
(gateway._testing); backends are small HTTP servers on 127.0.0.1 that record every byte
they receive, so header rewriting and "nothing reached the backend" are checked where
they matter.  The pure parts (request parser and rewriter, response parser and
rewriter, attestation headers) are tested three ways and fuzzed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import struct
import urllib.error
import urllib.request
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
    start_gateway,
    tunnel_lines,
    wait_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._config import ConfigError, parse_config
from gateway._http_connect import ConnectRequest, HttpRequestError
from gateway._http_proxy import (
    MAX_RESPONSE_HEAD,
    AbsoluteRequest,
    HttpResponseError,
    ResponseHead,
    ResponseRewriter,
    attestation_headers,
    parse_absolute_request,
    parse_proxy_request,
    parse_response_head,
    proxied_client_stream,
    rewrite_request,
    rewrite_response_head,
    serve_http_proxy,
)
from gateway._link import AddressTarget
from gateway._runtime import LOGGER_NAME
from gateway._testing import hmac_test_attestation
from ratls._errors import RatlsError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from gateway._daemon import RunningGateway


KEY = b"gateway-http-proxy-test-key"
LOCALHOST = "127.0.0.1"
GOOD_MEASUREMENT = hashlib.sha384(b"good").hexdigest()

HOP_BY_HOP = (
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
)

# A response with everything a backend must not get through: forged attestation
# fields in several spellings and connection-specific fields.
FORGING_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 5\r\n"
    b"X-Ratls-Peer-Measurement: forged\r\n"
    b"x-ratls-peer-profile: forged\r\n"
    b"X-RATLS-Anything: forged\r\n"
    b"Connection: keep-alive, X-Backend-Hop\r\n"
    b"X-Backend-Hop: 1\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"\r\n"
    b"hello"
)


# --------------------------------------------------------------------------- backends


@dataclass
class HttpBackend:
    """A recording HTTP/1.1 backend: reads one request, answers ``response``, closes."""

    port: int
    response: bytes = FORGING_RESPONSE
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    delay: float = 0.0
    reset_after: bool = False


def _request_complete(data: bytes) -> bool:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[: end + 4].lower()
    body = data[end + 4 :]
    if b"\r\ntransfer-encoding: chunked" in head:
        return body.endswith(b"0\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


async def _serve_http(backend: HttpBackend, stream: trio.SocketStream) -> None:
    backend.connections += 1
    received = bytearray()
    backend.requests.append(b"")
    index = len(backend.requests) - 1
    try:
        while not _request_complete(bytes(received)):
            data = await stream.receive_some(65536)
            if not data:
                break
            received += data
            backend.requests[index] = bytes(received)
        await trio.sleep(backend.delay)
        await stream.send_all(backend.response)
        if backend.reset_after:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def start_http_backend(
    nursery: trio.Nursery, response: bytes = FORGING_RESPONSE
) -> HttpBackend:
    sock = trio.socket.socket(socket.AF_INET)
    await sock.bind((LOCALHOST, 0))
    sock.listen(16)
    backend = HttpBackend(port=sock.getsockname()[1], response=response)
    nursery.start_soon(
        trio.serve_listeners, partial(_serve_http, backend), [trio.SocketListener(sock)]
    )
    return backend


# --------------------------------------------------------------------------- gateways


@dataclass
class Proxy:
    """The egress, the ingress, and the HTTP proxy listener on the ingress."""

    egress: RunningGateway
    ingress: RunningGateway
    port: int
    egress_verifier_calls: Callable[[], int]


@asynccontextmanager
async def proxy_gateways(
    allow: list[str],
    *,
    attestation_headers: bool = False,
    ingress_identity: str = "good",
    egress_identity: str = "good",
    ingress_extra: dict[str, Any] | None = None,
    egress_extra: dict[str, Any] | None = None,
) -> AsyncIterator[Proxy]:
    egress_att = hmac_test_attestation(KEY, identity=egress_identity)
    ingress_att = hmac_test_attestation(KEY, identity=ingress_identity)
    edoc: dict[str, Any] = {
        "attestation": {"attester": "test"},
        "egress": {"listener": [{"name": "main", "listen": "127.0.0.1:0", "allow": allow}]},
        **(egress_extra or {}),
    }
    async with trio.open_nursery() as nursery:
        egress = await start_gateway(nursery, parse_config(edoc), egress_att[0])
        address = egress.address("egress:main")
        assert isinstance(address, tuple)
        proxy_rule: dict[str, Any] = {
            "name": "proxy",
            "listen": "127.0.0.1:0",
            "egress": f"127.0.0.1:{address[1]}",
        }
        if attestation_headers:
            proxy_rule["attestation_headers"] = True
        idoc: dict[str, Any] = {
            "attestation": {"attester": "test"},
            "ingress": {"http_connect": [proxy_rule]},
            **(ingress_extra or {}),
        }
        ingress = await start_gateway(nursery, parse_config(idoc), ingress_att[0])
        # The combined CONNECT + absolute-form listener, on the ingress's runtime (its
        # config, identity, limits, metrics and access log).
        rule = ingress.runtime.config.http_connect[0]
        listeners = await nursery.start(partial(serve_http_proxy, ingress.runtime, rule))
        port = int(listeners[0].socket.getsockname()[1])
        try:
            yield Proxy(egress, ingress, port, lambda: egress_att[2].calls)
        finally:
            await close_clients()
        nursery.cancel_scope.cancel()


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` through the proxy; return everything until the proxy's EOF."""
    stream = await connect(LOCALHOST, port)
    await stream.send_all(request)
    return await receive_all(stream)


def split_response(data: bytes) -> tuple[bytes, dict[str, list[str]], bytes]:
    """``(status line, lowercase name -> values, body)`` of the first response in data."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.lower(), []).append(value.strip())
    return lines[0].encode(), fields, body


@pytest.fixture(autouse=True)
def _capture_gateway_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)


@pytest.fixture(autouse=True)
def _no_proxy_bypass(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib skips the proxy for hosts in no_proxy; the tests must go through it.
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)


def urllib_fetch(
    proxy_port: int, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A real HTTP client (urllib with a ProxyHandler); run in a thread."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://{LOCALHOST}:{proxy_port}"})
    )
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


async def fetch(
    proxy_port: int, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(urllib_fetch, proxy_port, url, data, headers)


# --------------------------------------------------------------------------- end to end


async def test_get_through_urllib_rewrites_the_head(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_http_backend(nursery)
    async with proxy_gateways([f"127.0.0.1:{backend.port}"]) as proxy:
        url = f"http://127.0.0.1:{backend.port}/path/x?q=1&r=%20"
        status, headers, body = await fetch(proxy.port, url, headers={"X-Custom": "kept"})
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert status == 200
    assert body == b"hello"
    request = backend.requests[0]
    line, fields, rest = split_response(request)
    assert line == b"GET /path/x?q=1&r=%20 HTTP/1.1"
    assert fields["host"] == [f"127.0.0.1:{backend.port}"]
    assert fields["x-custom"] == ["kept"]
    assert fields["connection"] == ["close"]
    assert fields["via"] == ["1.1 ratls-gateway"]
    assert rest == b""
    # The forged and connection-specific response fields never reached the client.
    lowered = {k.lower(): v for k, v in headers.items()}
    assert not [k for k in lowered if k.startswith("x-ratls-")]
    assert "keep-alive" not in lowered
    assert "x-backend-hop" not in lowered
    assert lowered["connection"] == "close"
    assert lowered["via"] == "1.1 ratls-gateway"
    log = tunnel_lines(caplog, "ingress")[0]
    assert log["result"] == "ok"
    assert log["http"] == "absolute-form"
    assert log["method"] == "GET"
    assert log["target"] == f"127.0.0.1:{backend.port}"
    assert log["peer"] == "test-hmac identity=good"


async def test_post_with_a_large_body_through_urllib(nursery: trio.Nursery) -> None:
    backend = await start_http_backend(nursery)
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with proxy_gateways([f"127.0.0.1:{backend.port}"]) as proxy:
        status, _headers, body = await fetch(
            proxy.port,
            f"http://127.0.0.1:{backend.port}/upload",
            data=payload,
            headers={"Content-Type": "application/octet-stream"},
        )
    assert (status, body) == (200, b"hello")
    line, fields, rest = split_response(backend.requests[0])
    assert line == b"POST /upload HTTP/1.1"
    assert fields["content-length"] == [str(len(payload))]
    assert hashlib.sha256(rest).digest() == hashlib.sha256(payload).digest()


async def test_chunked_post_and_every_hop_by_hop_field_removed(nursery: trio.Nursery) -> None:
    backend = await start_http_backend(nursery)
    async with proxy_gateways([f"127.0.0.1:{backend.port}"]) as proxy:
        request = (
            f"POST http://127.0.0.1:{backend.port}/items HTTP/1.1\r\n"
            "Host: wrong.example\r\n"
            "Host: second.example\r\n"
            "Connection: keep-alive, X-Private-Hop\r\n"
            "X-Private-Hop: secret-to-this-hop\r\n"
            "Proxy-Connection: keep-alive\r\n"
            "Keep-Alive: timeout=5\r\n"
            "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
            "TE: trailers\r\n"
            "Trailer: X-Checksum\r\n"
            "Upgrade: websocket\r\n"
            "X-Ratls-Peer-Profile: forged-by-client\r\n"
            "Via: 1.0 upstream\r\n"
            "Transfer-Encoding: chunked\r\n"
            "X-End: 1\r\n"
            "\r\n"
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ).encode()
        response = await exchange(proxy.port, request)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    line, fields, body = split_response(backend.requests[0])
    assert line == b"POST /items HTTP/1.1"
    assert fields["host"] == [f"127.0.0.1:{backend.port}"]  # the URI's authority wins
    for name in (*HOP_BY_HOP, "x-private-hop"):
        if name == "connection":
            assert fields[name] == ["close"]
        else:
            assert name not in fields, name
    assert not [k for k in fields if k.startswith("x-ratls-")]
    assert fields["via"] == ["1.0 upstream", "1.1 ratls-gateway"]
    assert fields["transfer-encoding"] == ["chunked"]
    assert fields["x-end"] == ["1"]
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    # Host is first, Via and Connection close the head.
    names = [
        x.split(":")[0]
        for x in backend.requests[0].split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    ]
    assert names[0] == "Host"
    assert names[-2:] == ["Via", "Connection"]


async def test_http_10_client_keeps_its_version_and_port_80_is_the_default(
    nursery: trio.Nursery,
) -> None:
    backend = await start_http_backend(nursery)
    async with proxy_gateways([f"127.0.0.1:{backend.port}", "localhost:*"]) as proxy:
        # No port in the URI means port 80, which this egress does not allow.
        refused = await exchange(proxy.port, b"GET http://127.0.0.1/ HTTP/1.0\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert b"127.0.0.1:80 is not allowed" in refused
        response = await exchange(
            proxy.port, f"GET http://localhost:{backend.port} HTTP/1.0\r\n\r\n".encode()
        )
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    line, fields, _ = split_response(backend.requests[0])
    assert line == b"GET / HTTP/1.0"
    assert fields["host"] == [f"localhost:{backend.port}"]
    assert fields["via"] == ["1.0 ratls-gateway"]


async def test_attestation_headers_only_when_enabled(nursery: trio.Nursery) -> None:
    backend = await start_http_backend(nursery)
    url = f"http://127.0.0.1:{backend.port}/"
    async with proxy_gateways([f"127.0.0.1:{backend.port}"], attestation_headers=True) as proxy:
        status, headers, body = await fetch(proxy.port, url)
    assert (status, body) == (200, b"hello")
    ours = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratls-")}
    # Exactly the verified claims of the egress: the backend's forgeries are gone.
    assert ours == {
        "x-ratls-peer-profile": "test-hmac",
        "x-ratls-peer-measurement": GOOD_MEASUREMENT,
    }
    async with proxy_gateways([f"127.0.0.1:{backend.port}"]) as proxy:
        status, headers, body = await fetch(proxy.port, url)
    assert (status, body) == (200, b"hello")
    assert not [k for k in headers if k.lower().startswith("x-ratls-")]


async def test_interim_responses_are_rewritten_and_the_final_one_attested(
    nursery: trio.Nursery,
) -> None:
    backend = await start_http_backend(
        nursery,
        response=(
            b"HTTP/1.1 100 Continue\r\nX-Ratls-Peer-Profile: forged\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nX-Ratls-Peer-Profile: forged\r\nContent-Length: 2\r\n\r\nok"
        ),
    )
    async with proxy_gateways([f"127.0.0.1:{backend.port}"], attestation_headers=True) as proxy:
        response = await exchange(
            proxy.port,
            f"PUT http://127.0.0.1:{backend.port}/x HTTP/1.1\r\nContent-Length: 2\r\n"
            "Expect: 100-continue\r\n\r\nhi".encode(),
        )
    heads = response.split(b"\r\n\r\n")
    assert heads[0] == b"HTTP/1.1 100 Continue\r\nVia: 1.1 ratls-gateway"
    assert heads[1] == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nVia: 1.1 ratls-gateway"
    )
    assert heads[2] == (
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nVia: 1.1 ratls-gateway\r\n"
        b"Connection: close\r\nX-Ratls-Peer-Profile: test-hmac\r\n"
        b"X-Ratls-Peer-Measurement: " + GOOD_MEASUREMENT.encode()
    )
    assert heads[3] == b"ok"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"", b"the backend closed without a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", b"in the middle of its response head"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"malformed status line"),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", b"malformed header line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * MAX_RESPONSE_HEAD + b"\r\n\r\n", b"large"),
    ],
    ids=["empty", "truncated", "not-http", "obs-fold", "too-large"],
)
async def test_bad_backend_responses_become_502(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, response: bytes, reason: bytes
) -> None:
    backend = await start_http_backend(nursery, response=response)
    async with proxy_gateways([f"127.0.0.1:{backend.port}"]) as proxy:
        answer = await exchange(
            proxy.port, f"GET http://127.0.0.1:{backend.port}/ HTTP/1.1\r\n\r\n".encode()
        )
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Ratls-Gateway-Reason: bad-response\r\n" in answer
    assert reason in answer
    assert b"X-Big" not in answer
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "bad-response"


async def test_backend_reset_after_its_head_resets_the_client(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_http_backend(
        nursery, response=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
    )
    backend.reset_after = True
    async with proxy_gateways([f"127.0.0.1:{backend.port}"]) as proxy:
        stream = await connect(LOCALHOST, proxy.port)
        await stream.send_all(f"GET http://127.0.0.1:{backend.port}/ HTTP/1.1\r\n\r\n".encode())
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(stream)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "peer-backend-reset"


async def test_reattestation_while_the_backend_thinks(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await start_http_backend(nursery)
    backend.delay = 61
    async with proxy_gateways(
        [f"127.0.0.1:{backend.port}"],
        attestation_headers=True,
        ingress_extra={"timeouts": {"max_attestation_age": 60}},
    ) as proxy:
        response = await exchange(
            proxy.port, f"GET http://127.0.0.1:{backend.port}/ HTTP/1.1\r\n\r\n".encode()
        )
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
        metrics = proxy.ingress.runtime.metrics
        passed = metrics.reattest_total.get(side="ingress", outcome="ok")
        assert metrics.reattest_total.get(side="ingress", outcome="failed") == 0
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nX-Ratls-Peer-Profile: test-hmac\r\n" in response
    # Re-attested while the backend thought (at least once in 61 s with a 60 s age), and
    # every re-attestation passed, also after the request side of the tunnel had ended.
    assert passed >= 1
    assert tunnel_lines(caplog, "ingress")[0]["reattestations"] == passed


@pytest.mark.parametrize("how", ["reset", "half-close"])
async def test_client_gone_in_the_middle_of_its_head(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    async with proxy_gateways(["127.0.0.1:1"]) as proxy:
        stream = await connect(LOCALHOST, proxy.port)
        await stream.send_all(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x")
        if how == "reset":
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
        else:
            await stream.send_eof()
            answer = await receive_all(stream)
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert b"incomplete request" in answer
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
        assert proxy.egress_verifier_calls() == 0
    expected = "client-reset" if how == "reset" else "bad-request"
    assert tunnel_lines(caplog, "ingress")[0]["result"] == expected


async def test_proxied_client_stream_contract() -> None:
    a, b = socket.socketpair()
    ours, theirs = (
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        trio.SocketStream(trio.socket.from_stdlib_socket(b)),
    )
    async with ours, theirs:
        client = proxied_client_stream(ours, ResponseRewriter())
        await client.wait_send_all_might_not_block()
        await theirs.send_all(b"request body")
        assert await client.receive_some(100) == b"request body"
        await client.send_all(b"HTTP/1.1 200 OK\r\nX-Ratls-A: f\r\n\r\nbody")
        await client.send_all(b"")  # after the head, even empty sends just pass
        bad = proxied_client_stream(ours, ResponseRewriter())
        with pytest.raises(trio.BrokenResourceError) as info:
            await bad.send_all(b"nonsense\r\n\r\n")
        assert isinstance(info.value.__cause__, HttpResponseError)
        assert bad.failure == "malformed status line"
        await client.send_eof()
        assert await receive_all(theirs) == (
            b"HTTP/1.1 200 OK\r\nVia: 1.1 ratls-gateway\r\nConnection: close\r\n\r\nbody"
        )
        broken = proxied_client_stream(ours, ResponseRewriter())
        with pytest.raises(trio.BrokenResourceError):
            await broken.send_eof()
        assert broken.failure == "the backend closed without a response"
        with pytest.raises(trio.BrokenResourceError, match="without a response"):
            await broken.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
        await client.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await ours.send_all(b"x")


async def test_connect_still_served_by_the_same_listener(nursery: trio.Nursery) -> None:
    backend = await start_http_backend(nursery)
    async with proxy_gateways([f"127.0.0.1:{backend.port}"], attestation_headers=True) as proxy:
        stream, head = await http_connect(proxy.port, f"127.0.0.1:{backend.port}")
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Through CONNECT the bytes are the client's and the backend's, untouched.
        assert await receive_all(stream) == FORGING_RESPONSE
    assert backend.requests == [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]


async def _statuses(port: int, target: str) -> tuple[bytes, bytes]:
    """The CONNECT head and the absolute-form answer's head for ``target``."""
    _stream, connect_answer = await http_connect(port, target)
    absolute = await exchange(port, f"GET http://{target}/ HTTP/1.1\r\n\r\n".encode())
    return connect_answer.split(b"\r\n\r\n")[0], absolute.split(b"\r\n\r\n")[0]


def _status_and_reason(head: bytes) -> tuple[bytes, bytes]:
    lines = head.split(b"\r\n")
    reason = [x for x in lines if x.startswith(b"Ratls-Gateway-Reason: ")]
    return lines[0], reason[0] if reason else b""


async def test_not_allowed_is_403_like_connect(nursery: trio.Nursery) -> None:
    backend = await start_http_backend(nursery)
    other = free_port()
    async with proxy_gateways([f"127.0.0.1:{backend.port}"]) as proxy:
        connect_head_, absolute = await _statuses(proxy.port, f"127.0.0.1:{other}")
    assert _status_and_reason(absolute) == _status_and_reason(connect_head_)
    assert _status_and_reason(absolute) == (
        b"HTTP/1.1 403 Forbidden",
        b"Ratls-Gateway-Reason: not-allowed",
    )
    assert backend.connections == 0


async def test_dead_backend_is_502_like_connect(nursery: trio.Nursery) -> None:
    dead = free_port()
    async with proxy_gateways([f"127.0.0.1:{dead}"]) as proxy:
        connect_head_, absolute = await _statuses(proxy.port, f"127.0.0.1:{dead}")
    assert _status_and_reason(absolute) == _status_and_reason(connect_head_)
    assert _status_and_reason(absolute) == (
        b"HTTP/1.1 502 Bad Gateway",
        b"Ratls-Gateway-Reason: backend-refused",
    )


@pytest.mark.parametrize("side", ["ingress", "egress"])
async def test_attestation_failure_is_502_and_reaches_no_backend(
    nursery: trio.Nursery, side: str
) -> None:
    backend = await start_http_backend(nursery)
    async with proxy_gateways(
        [f"127.0.0.1:{backend.port}"],
        ingress_identity="tampered" if side == "ingress" else "good",
        egress_identity="tampered" if side == "egress" else "good",
    ) as proxy:
        connect_head_, absolute = await _statuses(proxy.port, f"127.0.0.1:{backend.port}")
    assert _status_and_reason(absolute) == _status_and_reason(connect_head_)
    assert _status_and_reason(absolute) == (
        b"HTTP/1.1 502 Bad Gateway",
        b"Ratls-Gateway-Reason: attestation-failed",
    )
    assert backend.connections == 0


async def test_backend_timeout_is_504_like_connect(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    backend = await start_http_backend(nursery)

    async def hang(host: str, port: int, **options: object) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr("gateway._egress.connect_tcp", hang)
    async with proxy_gateways(
        [f"127.0.0.1:{backend.port}"], egress_extra={"timeouts": {"connect": 3}}
    ) as proxy:
        connect_head_, absolute = await _statuses(proxy.port, f"127.0.0.1:{backend.port}")
    assert _status_and_reason(absolute) == _status_and_reason(connect_head_)
    assert _status_and_reason(absolute) == (
        b"HTTP/1.1 504 Gateway Timeout",
        b"Ratls-Gateway-Reason: backend-timeout",
    )
    assert backend.connections == 0


async def test_limits_are_503_and_429_like_connect(nursery: trio.Nursery) -> None:
    backend = await start_http_backend(nursery)
    target = f"127.0.0.1:{backend.port}"
    request = f"GET http://{target}/ HTTP/1.1\r\n\r\n".encode()
    async with proxy_gateways([target], ingress_extra={"limits": {"max_tunnels": 1}}) as proxy:
        held, head = await http_connect(proxy.port, target)
        assert head.startswith(b"HTTP/1.1 200 ")
        _second, refused_connect = await http_connect(proxy.port, target)
        # Refused on accept, before the request is read: read the answer first (the
        # refusal closes without draining the request, so sending first races a reset).
        refused_absolute = await receive_all(await connect(LOCALHOST, proxy.port))
        assert refused_connect.startswith(b"HTTP/1.1 503 ")
        assert refused_absolute.startswith(b"HTTP/1.1 503 ")
        assert b"limit-reached" in refused_absolute
        await held.aclose()
    async with proxy_gateways(
        [target], ingress_extra={"limits": {"rate_per_source": 0.001, "rate_burst": 1}}
    ) as proxy:
        assert (await exchange(proxy.port, request)).startswith(b"HTTP/1.1 200 ")
        limited = await receive_all(await connect(LOCALHOST, proxy.port))
        assert limited.startswith(b"HTTP/1.1 429 ")
        assert b"rate-limited" in limited


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"GET https://example.com/ HTTP/1.1\r\n\r\n", 400, b"use CONNECT"),
        (b"GET ftp://example.com/ HTTP/1.1\r\n\r\n", 400, b"scheme 'ftp'"),
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, b"origin-form"),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", 400, b"asterisk-form"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n", 400, b"malformed request line"),
        (b"hello\r\n\r\n", 400, b"malformed request line"),
        (b"GET http://user@example.com/ HTTP/1.1\r\n\r\n", 400, b"userinfo"),
        (b"GET http://example.com/ HTTP/2.0\r\n\r\n", 505, b"HTTP/1.0 and HTTP/1.1"),
        (
            b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            b"both Content-Length and Transfer-Encoding",
        ),
        (b"GET http://example.com/ HTTP/1.1\r\n" + b"X: y\r\n" * 2000, 431, b"too large"),
    ],
    ids=[
        "https",
        "ftp",
        "origin-form",
        "asterisk",
        "tls-hello",
        "junk",
        "userinfo",
        "http2",
        "cl-and-te",
        "too-large",
    ],
)
async def test_bad_requests_refused_before_any_tunnel(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    status: int,
    says: bytes,
) -> None:
    backend = await start_http_backend(nursery)
    async with proxy_gateways(["127.0.0.1:1"]) as proxy:
        answer = await exchange(proxy.port, request_bytes)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
        assert proxy.egress_verifier_calls() == 0  # no attested connection was opened
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Ratls-Gateway-Reason: bad-request\r\n" in answer
    assert says in answer
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "bad-request"
    assert backend.connections == 0


async def test_slow_request_head_is_408(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with proxy_gateways(["127.0.0.1:1"]) as proxy:
        stream = await connect(LOCALHOST, proxy.port)
        await stream.send_all(b"GET http://example.com/ HTTP/1.1\r\n")  # ...and no end
        assert (await receive_all(stream)).startswith(b"HTTP/1.1 408 ")


# --------------------------------------------------------------------------- config


def test_attestation_headers_config_key() -> None:
    base: dict[str, Any] = {
        "attestation": {"attester": "test"},
        "ingress": {
            "http_connect": [
                {"name": "p", "listen": "127.0.0.1:0", "egress": "127.0.0.1:9"},
            ]
        },
    }
    assert parse_config(base).http_connect[0].attestation_headers is False
    base["ingress"]["http_connect"][0]["attestation_headers"] = True
    assert parse_config(base).http_connect[0].attestation_headers is True
    base["ingress"]["http_connect"][0]["attestation_headers"] = "yes"
    with pytest.raises(ConfigError) as info:
        parse_config(base)
    assert info.value.location == "ingress.http_connect[0].attestation_headers"
    assert "true or false" in str(info.value)


# --------------------------------------------------------------------------- request parser

GET = b"GET http://backend.example:8080/a/b?c=d HTTP/1.1\r\nHost: other\r\nAccept: */*\r\n\r\n"


def test_absolute_request_three_ways() -> None:
    request = parse_absolute_request(GET)
    assert request == AbsoluteRequest(
        method="GET",
        target=AddressTarget(host="backend.example", port=8080),
        authority="backend.example:8080",
        path="/a/b?c=d",
        version=1,
        headers=(("Host", "other"), ("Accept", "*/*")),
    )
    for cut in range(len(GET)):
        with pytest.raises(HttpRequestError) as info:
            parse_absolute_request(GET[:cut])
        assert info.value.status == 400
    for extra in (b"x", b"\r\n", b"\r\n\r\n"):
        with pytest.raises(HttpRequestError):
            parse_absolute_request(GET + extra)


@pytest.mark.parametrize(
    ("uri", "host", "port", "authority", "path"),
    [
        ("http://h", "h", 80, "h", "/"),
        ("http://h:/", "h", 80, "h", "/"),
        ("HTTP://h:81/x", "h", 81, "h:81", "/x"),
        ("http://h?q=1", "h", 80, "h", "/?q=1"),
        ("http://10.0.0.1:8000/p", "10.0.0.1", 8000, "10.0.0.1:8000", "/p"),
        ("http://[::1]:8080/v6", "::1", 8080, "[::1]:8080", "/v6"),
        ("http://[2001:db8::1]/", "2001:db8::1", 80, "[2001:db8::1]", "/"),
    ],
)
def test_absolute_uri_forms(uri: str, host: str, port: int, authority: str, path: str) -> None:
    request = parse_absolute_request(f"GET {uri} HTTP/1.1\r\n\r\n".encode())
    assert request.target == AddressTarget(host=host, port=port)
    assert (request.authority, request.path) == (authority, path)


def test_options_with_empty_path_goes_on_as_asterisk() -> None:
    request = parse_absolute_request(b"OPTIONS http://h:81 HTTP/1.1\r\n\r\n")
    assert request.path == "*"
    assert rewrite_request(request).startswith(b"OPTIONS * HTTP/1.1\r\nHost: h:81\r\n")
    assert parse_absolute_request(b"OPTIONS http://h/ HTTP/1.1\r\n\r\n").path == "/"


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://h/#frag HTTP/1.1\r\n\r\n",
        b"GET http:h HTTP/1.1\r\n\r\n",
        b"GET http:// HTTP/1.1\r\n\r\n",
        b"GET http://:80/ HTTP/1.1\r\n\r\n",
        b"GET http://h:0/ HTTP/1.1\r\n\r\n",
        b"GET http://h:65536/ HTTP/1.1\r\n\r\n",
        b"GET http://h:8x/ HTTP/1.1\r\n\r\n",
        b"GET http://[::1/ HTTP/1.1\r\n\r\n",
        b"GET http://[::1]x/ HTTP/1.1\r\n\r\n",
        b"GET http://[zz::1]/ HTTP/1.1\r\n\r\n",
        b"GET http://h%41/ HTTP/1.1\r\n\r\n",
        b"GET mailto:a@b HTTP/1.1\r\n\r\n",
        b"GET 1http://h/ HTTP/1.1\r\n\r\n",
        b"CONNECT http://h/ HTTP/1.1\r\n\r\n",
        b"GET  http://h/ HTTP/1.1\r\n\r\n",
        b"GET http://h/\x7f HTTP/1.1\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nX : y\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
        b"GET http://h/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nConnection: Content-Length\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nConnection: transfer-encoding\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nConnection: host\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nConnection: a b\r\n\r\n",
        # Blank runs before a bad byte: refused at once (a backtracking field pattern
        # took minutes on these).
        b"GET http://h/ HTTP/1.1\r\nX:" + b" " * 8000 + b"\x00\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nX:" + b" \t" * 4000 + b"\x01\r\n\r\n",
    ],
)
def test_absolute_request_refusals(head: bytes) -> None:
    with pytest.raises(HttpRequestError) as info:
        parse_proxy_request(head)
    assert info.value.status == 400


def test_connect_header_with_a_blank_run_is_refused_at_once() -> None:
    # The CONNECT parser shares the linear field matching (a backtracking pattern took
    # quadratic time on blank runs followed by a stray CR).
    head = b"CONNECT h:1 HTTP/1.1\r\nX:" + b" " * 8000 + b"\r\r\n\r\n"
    with pytest.raises(HttpRequestError) as info:
        parse_proxy_request(head)
    assert info.value.status == 400
    request = parse_proxy_request(b"CONNECT h:1 HTTP/1.1\r\nUser-Agent:  t \r\n\r\n")
    assert isinstance(request, ConnectRequest)
    assert request.headers == (("user-agent", "t"),)


def test_absolute_parser_alone_refuses_connect_and_oversize() -> None:
    with pytest.raises(HttpRequestError, match="CONNECT takes host:port") as info:
        parse_absolute_request(b"CONNECT h:1 HTTP/1.1\r\n\r\n")
    assert info.value.status == 400
    big = b"GET http://h/ HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
    with pytest.raises(HttpRequestError) as info:
        parse_absolute_request(big)
    assert info.value.status == 431


def test_proxy_request_dispatches_connect_and_absolute() -> None:
    assert isinstance(parse_proxy_request(b"CONNECT h:443 HTTP/1.1\r\n\r\n"), ConnectRequest)
    assert isinstance(parse_proxy_request(GET), AbsoluteRequest)
    with pytest.raises(HttpRequestError) as info:
        parse_proxy_request(b"GET http://h/ HTTP/1.2\r\n\r\n")
    assert info.value.status == 505


def test_rewrite_request_exact_bytes() -> None:
    request = parse_absolute_request(
        b"DELETE http://h:8080/x HTTP/1.1\r\n"
        b"User-Agent: t\r\n"
        b"connection: Keep-Alive, x-drop\r\n"
        b"X-Drop: 1\r\n"
        b"X-RATLS-PEER-POLICY: forged\r\n"
        b"Accept:  text/plain  \r\n"
        b"\r\n"
    )
    assert rewrite_request(request) == (
        b"DELETE /x HTTP/1.1\r\nHost: h:8080\r\nUser-Agent: t\r\nAccept: text/plain\r\n"
        b"Via: 1.1 ratls-gateway\r\nConnection: close\r\n\r\n"
    )


def test_absolute_request_value_type() -> None:
    a = parse_absolute_request(GET)
    b = parse_absolute_request(GET)
    c = parse_absolute_request(GET.replace(b"8080", b"8081"))
    assert a == b
    assert a != c
    assert a != object()
    assert hash(a) == hash(b)
    assert len({a, b, c}) == 2
    assert repr(a).startswith("AbsoluteRequest(method='GET', target=AddressTarget(")
    assert "path='/a/b?c=d'" in repr(a)


# --------------------------------------------------------------------------- response parser

OK = b"HTTP/1.1 204 No Content\r\nServer: s\r\nX-Ratls-Peer-Tcb: forged\r\n\r\n"


def test_response_head_three_ways() -> None:
    head = parse_response_head(OK)
    assert head == ResponseHead(
        version=1,
        status=204,
        reason="No Content",
        headers=(("Server", "s"), ("X-Ratls-Peer-Tcb", "forged")),
    )
    assert not head.interim
    for cut in range(len(OK)):
        with pytest.raises(HttpResponseError):
            parse_response_head(OK[:cut])
    for extra in (b"x", b"\r\n"):
        with pytest.raises(HttpResponseError):
            parse_response_head(OK + extra)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.2 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 99 Low\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX:" + b" " * 16000 + b"\x00\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * MAX_RESPONSE_HEAD + b"\r\n\r\n",
    ],
)
def test_response_head_refusals(head: bytes) -> None:
    with pytest.raises(HttpResponseError):
        parse_response_head(head)


def test_response_head_without_reason_and_interim() -> None:
    head = parse_response_head(b"HTTP/1.0 100\r\n\r\n")
    assert (head.version, head.status, head.reason, head.interim) == (0, 100, "", True)
    assert not parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").interim
    assert rewrite_response_head(head, final_head=False) == (
        b"HTTP/1.0 100 \r\nVia: 1.0 ratls-gateway\r\n\r\n"
    )


def test_rewrite_response_head_exact_bytes() -> None:
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: x-hop, content-length\r\n"
        b"X-Hop: 1\r\n"
        b"Content-Length: 0\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"x-ratls-peer-measurement: forged\r\n"
        b"Set-Cookie: a=b\r\n"
        b"\r\n"
    )
    assert rewrite_response_head(head, (("X-Ratls-Peer-Profile", "svsm"),)) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: a=b\r\n"
        b"Via: 1.1 ratls-gateway\r\nConnection: close\r\nX-Ratls-Peer-Profile: svsm\r\n\r\n"
    )


def test_response_head_value_type() -> None:
    a = parse_response_head(OK)
    b = parse_response_head(OK)
    c = parse_response_head(OK.replace(b"204", b"205"))
    assert a == b
    assert a != c
    assert a != object()
    assert hash(a) == hash(b)
    assert len({a, b, c}) == 2
    assert repr(a).startswith("ResponseHead(version=1, status=204, reason='No Content'")


def test_response_rewriter_in_pieces_and_after_the_head() -> None:
    stream = b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"body bytes \r\n\r\n HTTP/1.1 200"
    rewriter = ResponseRewriter((("X-Ratls-Peer-Profile", "p"),))
    out = b"".join(rewriter.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert rewriter.done
    assert rewriter.heads == 2
    rewriter.finish()
    assert out == (
        b"HTTP/1.1 100 Continue\r\nVia: 1.1 ratls-gateway\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\nServer: s\r\nVia: 1.1 ratls-gateway\r\n"
        b"Connection: close\r\nX-Ratls-Peer-Profile: p\r\n\r\n"
        b"body bytes \r\n\r\n HTTP/1.1 200"
    )
    assert rewriter.feed(b"X-Ratls-Raw: after the head is relayed") == (
        b"X-Ratls-Raw: after the head is relayed"
    )


def test_response_rewriter_failures() -> None:
    with pytest.raises(HttpResponseError, match="without a response"):
        ResponseRewriter().finish()
    rewriter = ResponseRewriter()
    assert rewriter.feed(b"HTTP/1.1 100 Continue\r\n\r\n") != b""
    with pytest.raises(HttpResponseError, match="middle of its response head"):
        rewriter.finish()
    rewriter = ResponseRewriter()
    with pytest.raises(HttpResponseError, match="too large"):
        rewriter.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_RESPONSE_HEAD)


# --------------------------------------------------------------------------- attestation headers


@dataclass
class _Result:
    value: object

    def claims(self) -> object:
        return self.value


def test_attestation_headers_from_a_full_result() -> None:
    claims = {
        "profile": "svsm",
        "policy_digest": "ab" * 32,
        "report_data": "secret-looking-but-never-sent",
        "snp": {"measurement": "cd" * 48, "reported_tcb": {"snp": 22, "microcode": 213}},
    }
    assert attestation_headers(_Result(claims)) == (
        ("X-Ratls-Peer-Profile", "svsm"),
        ("X-Ratls-Peer-Measurement", "cd" * 48),
        ("X-Ratls-Peer-Tcb", '{"microcode": 213, "snp": 22}'),
        ("X-Ratls-Peer-Policy", "ab" * 32),
    )


@pytest.mark.parametrize(
    "claims",
    [
        {"profile": "bad\r\nInjected: 1"},
        {"profile": "x" * 2000},
        {"profile": ""},
        {"profile": "ünïcode"},
        {"profile": None},
        {},
    ],
)
def test_attestation_headers_leave_out_unsafe_values(claims: dict[str, object]) -> None:
    assert attestation_headers(_Result(claims)) == ()


def test_attestation_headers_without_claims() -> None:
    assert attestation_headers(object()) == ()
    assert attestation_headers(_Result(["not", "a", "mapping"])) == ()


# --------------------------------------------------------------------------- fuzzing

_NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_request_parser_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, data + b"\r\n\r\n", b"GET http://h/ HTTP/1.1\r\n" + data + b"\r\n\r\n"):
        try:
            request = parse_proxy_request(candidate)
        except RatlsError:
            continue
        if isinstance(request, AbsoluteRequest):
            rewritten = rewrite_request(request)
            assert rewritten.endswith(b"\r\nConnection: close\r\n\r\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_response_rewriter_arbitrary_bytes(data: bytes, piece: int) -> None:
    for candidate in (data, b"HTTP/1.1 200 OK\r\n" + data):
        rewriter = ResponseRewriter()
        try:
            for i in range(0, len(candidate), piece):
                rewriter.feed(candidate[i : i + piece])
            rewriter.finish()
        except HttpResponseError:
            continue


_field_names = st.one_of(
    st.sampled_from(
        [
            "Connection",
            "Proxy-Connection",
            "Keep-Alive",
            "Proxy-Authorization",
            "Proxy-Authenticate",
            "TE",
            "Trailer",
            "Upgrade",
            "Host",
            "X-Ratls-Peer-Profile",
            "Accept",
            "Via",
        ]
    ),
    st.text(_NAME_ALPHABET, min_size=1, max_size=12),
)
_field_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(
    str.strip
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "X-CUSTOM"]),
    host=st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
    port=st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
    path=st.from_regex(
        r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]*)*(\?[A-Za-z0-9=&%/?-]*)?", fullmatch=True
    ),
    fields=st.lists(st.tuples(_field_names, _field_values), max_size=8),
    version=st.sampled_from([0, 1]),
)
def test_rewritten_request_properties(
    method: str,
    host: str,
    port: int | None,
    path: str,
    fields: list[tuple[str, str]],
    version: int,
) -> None:
    authority = host if port is None else f"{host}:{port}"
    head = f"{method} http://{authority}{path} HTTP/1.{version}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    refusal: tuple[int, str] | None
    try:
        request = parse_absolute_request(head.encode())
    except HttpRequestError as exc:
        refusal = (exc.status, str(exc))
    else:
        refusal = None
    if refusal is not None:
        # Only framing can be refused here: a bad Connection option, or a random name
        # that happens to spell a framing field.
        assert refusal[0] == 400
        assert any(x in refusal[1] for x in ("Connection", "Content-Length", "Transfer-Encoding"))
        return
    assert request.target == AddressTarget(host=host, port=port or 80)
    out = rewrite_request(request).decode("latin-1")
    lines = out.split("\r\n")
    expected_path = path if path.startswith("/") else "/" + path
    assert lines[0] == f"{method} {expected_path} HTTP/1.{version}"
    assert lines[1] == f"Host: {authority}"
    assert lines[-4:] == [f"Via: 1.{version} ratls-gateway", "Connection: close", "", ""]
    forwarded = [line.split(":", 1)[0].lower() for line in lines[2:-4]]
    named = {
        item.strip().lower()
        for name, value in fields
        if name.lower() == "connection"
        for item in value.split(",")
    }
    for name in forwarded:
        assert name not in HOP_BY_HOP
        assert name not in named
        assert name != "host"
        assert not name.startswith("x-ratls-")
    kept = [
        name.lower()
        for name, _ in fields
        if name.lower() not in {*HOP_BY_HOP, *named, "host"}
        and not name.lower().startswith("x-ratls-")
    ]
    assert forwarded == kept
    assert json.dumps(out)  # plain text, no surprises
