"""The ingress HTTP proxy listener: CONNECT tunnels and absolute-form HTTP requests.

One listener, one configuration block (``[[ingress.http_connect]]``), two kinds of
request, decided by the first line:

* ``CONNECT host:port`` (RFC 9110 9.3.6): answered ``200`` once the attested tunnel is
  open, then bytes flow untouched (:mod:`gateway._http_connect`).
* ``GET http://host:port/path HTTP/1.1`` and every other method in absolute form
  (RFC 9112 3.2.2): the target comes from the URI (port 80 when absent), the same
  attested tunnel is opened to the egress with the same route and allowlist decision,
  and the request goes through it in origin form with a rewritten head.

Theory of operation for absolute form
-------------------------------------
The gateway carries bytes; it is not an HTTP implementation.  It therefore serves
exactly **one request per client connection** and parses only the two heads it must
change, never a body:

1. The request head (bounded by :data:`~gateway._http_connect.MAX_REQUEST_HEAD`) is
   parsed by :func:`parse_proxy_request`, a pure function.  :func:`rewrite_request`
   turns it into an origin-form head: ``Host`` from the URI's authority (RFC 9112 3.2.2:
   a proxy ignores a received Host and generates one from the request target), the
   hop-by-hop fields of RFC 9110 7.6.1 removed (``Connection`` and every field it
   names, ``Proxy-Connection``, ``Keep-Alive``, ``Proxy-Authorization``,
   ``Proxy-Authenticate``, ``TE``, ``Trailer``, ``Upgrade``), a ``Via`` entry appended
   (RFC 9110 7.6.3) and ``Connection: close`` added.
2. Everything the client sends after its head (the body, framed by Content-Length or
   chunked coding) is relayed untouched until the client closes: since the backend is
   told ``Connection: close`` and the connection carries one request, the body's end
   needs no parsing.  Because the body is relayed raw, heads whose framing is ambiguous
   are refused (both Content-Length and Transfer-Encoding, a Transfer-Encoding not ending
   in ``chunked``, Transfer-Encoding in HTTP/1.0, several Content-Length values, or a
   ``Connection`` header naming a framing field).
3. The backend's response head (bounded by :data:`MAX_RESPONSE_HEAD`) is parsed by a
   sans-I/O :class:`ResponseRewriter`: interim ``1xx`` heads and the final head lose
   their hop-by-hop fields and every ``X-Ratls-*`` field the backend sent (a backend
   must not be able to forge what the gateway asserts), gain ``Via``, and the final head
   gains ``Connection: close`` and, when the listener has ``attestation_headers = true``,
   the egress's verified attestation summary (:func:`attestation_headers`).  The rest is
   relayed untouched.  A response head that is malformed, too large or missing becomes
   a ``502`` with ``Ratls-Gateway-Reason: bad-response``.

``https://`` URIs are refused with 400: a client that wants TLS to the backend uses
CONNECT (the gateway never terminates the client's TLS).  Other schemes, origin-form and
asterisk-form requests are refused with 400 too; the refusal's body says why.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, final

import trio

from ratls._errors import RemoteProtocolError

from ._attestation import peer_claims
from ._http_connect import (
    MAX_REQUEST_HEAD,
    ConnectRequest,
    HttpRequestError,
    build_response,
    parse_connect_request,
    status_for,
)
from ._ingress import (
    IngressFailure,
    OpenedLink,
    _answer_and_close,
    _send_quietly,
    _serve,
    open_link,
    run_opened_tunnel,
)
from ._link import AddressTarget
from ._reader import RequestTooLarge, StreamReader, TruncatedRequest
from ._rewriting import RewritingStream
from ._tunnel import close_link

if TYPE_CHECKING:
    from ._config import HttpConnectRule
    from ._runtime import Runtime, TunnelRecord

__all__ = [
    "ATTESTATION_HEADER_PREFIX",
    "MAX_RESPONSE_HEAD",
    "VIA_PSEUDONYM",
    "AbsoluteRequest",
    "HttpResponseError",
    "ResponseHead",
    "ResponseRewriter",
    "attestation_headers",
    "parse_absolute_request",
    "parse_proxy_request",
    "parse_response_head",
    "proxied_client_stream",
    "rewrite_request",
    "rewrite_response_head",
    "serve_http_proxy",
]

# Largest backend response head we buffer before relaying.  Response heads are bigger
# than request heads (Set-Cookie, Content-Security-Policy, Link); 16 KiB is twice the
# request limit and what common reverse proxies buffer per response head by default.
# A backend that needs more is answered with 502 rather than relayed unchecked, since
# the head is where forged attestation fields would hide.
MAX_RESPONSE_HEAD: Final = 16384

#: Every field whose name starts with this (case-insensitively) is the gateway's to
#: write: removed from requests and from the backend's responses.
ATTESTATION_HEADER_PREFIX: Final = "x-ratls-"

#: The pseudonym in our ``Via`` entries (RFC 9110 7.6.3); it names no host.
VIA_PSEUDONYM: Final = "ratls-gateway"

# Longest attestation header value we write; claims longer than this are left out.
_MAX_CLAIM_VALUE: Final = 1024

_TOKEN: Final = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_STATUS_LINE: Final = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# field-line = field-name ":" OWS field-value OWS; field values are SP, HTAB, VCHAR and
# obs-text (RFC 9110 5.5).  NUL, CR, LF and other controls are refused, and so is
# obs-fold (a line starting with whitespace), which does not match a field name.  The
# name and the value are matched separately by single character classes, so matching
# is linear: a pattern with optional whitespace on both sides of a value that may
# itself hold whitespace backtracks polynomially on a line of blanks.
_FIELD_NAME: Final = re.compile(_TOKEN)
_FIELD_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TOKEN_TEXT: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_URI: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
_REG_NAME: Final = re.compile(r"[A-Za-z0-9._~-]+")

# Fields that describe one connection and never cross a proxy (RFC 9110 7.6.1), plus
# the proxy-authentication pair (RFC 9110 11.7), which is for this hop only.
_HOP_BY_HOP_REQUEST: Final = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    }
)
# In a response, Trailer and Transfer-Encoding describe the body we relay untouched,
# so they stay; so does Upgrade on a 101 (which cannot happen: requests lose Upgrade).
_HOP_BY_HOP_RESPONSE: Final = frozenset(
    {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate"}
)
# Fields a request's Connection header may not name: removing the framing fields would
# change where the backend thinks the raw-relayed body ends, and Host is always sent.
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "host"})

# (header name, claim key) for the attestation summary; the same claims as the PROXY v2
# TLVs 0xE1-0xE4 (gateway._proxy_protocol.ProxyTlv), looked up at the top level of
# claims() first and then under "snp", as claims_tlvs does.
_CLAIM_HEADERS: Final = (
    ("X-Ratls-Peer-Profile", "profile"),
    ("X-Ratls-Peer-Measurement", "measurement"),
    ("X-Ratls-Peer-Tcb", "reported_tcb"),
    ("X-Ratls-Peer-Policy", "policy_digest"),
)

_DEFAULT_PORT: Final = 80


class HttpResponseError(RemoteProtocolError):
    """The backend's response head cannot be relayed (answered with 502).

    Attributes:
        reason: what was wrong, safe to show the client.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"bad response from the backend: {reason}")


# --------------------------------------------------------------------------- requests


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AbsoluteRequest:
    """A parsed absolute-form request for an ``http://`` URI.

    Attributes:
        method: the request method, as sent.
        target: host and port from the URI (port 80 when the URI has none).
        authority: the Host value for the backend: the URI's host, plus ``:port`` when
            the URI names a port.
        path: the origin-form target (``/path?query``; ``/`` or ``*`` when empty).
        version: the HTTP minor version (0 or 1).
        headers: ``(name, value)`` field lines as received, names with their case.
    """

    method: str
    target: AddressTarget
    authority: str
    path: str
    version: int
    headers: tuple[tuple[str, str], ...] = ()


def _split_fields(lines: list[bytes]) -> list[tuple[str, str]] | None:
    """``(name, value)`` for each field line, or None when one is malformed."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            return None
        fields.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return fields


def _head_lines(head: bytes, limit: int) -> list[bytes] | None:
    """The head's lines without the final empty line, or None when it is not a head."""
    if len(head) > limit or not head.endswith(b"\r\n\r\n"):
        return None
    return head[:-4].split(b"\r\n")


def parse_proxy_request(head: bytes) -> ConnectRequest | AbsoluteRequest:
    """Parse a proxy client's request head: CONNECT, or absolute form.

    Args:
        head: exactly the head (request line, fields, empty line), nothing after it.

    Returns:
        A :class:`~gateway._http_connect.ConnectRequest` for ``CONNECT``, otherwise an
        :class:`AbsoluteRequest`.

    Raises:
        HttpRequestError: with the status to answer (400 malformed or not an
            ``http://`` absolute URI, 431 too large, 505 not HTTP/1.x).
    """
    head = bytes(head)
    if head.startswith(b"CONNECT "):
        return parse_connect_request(head)
    return parse_absolute_request(head)


def parse_absolute_request(head: bytes) -> AbsoluteRequest:
    """Parse an absolute-form request head (RFC 9112 3.2.2) for an ``http://`` URI.

    Args:
        head: exactly the head, nothing after it.

    Returns:
        The request.

    Raises:
        HttpRequestError: 431 too large; 505 not HTTP/1.0 or 1.1; 400 for a malformed
            head, a URI that is not ``http://`` absolute form, or ambiguous body framing.
    """
    head = bytes(head)
    if len(head) > MAX_REQUEST_HEAD:
        raise HttpRequestError(431, "request head too large")
    lines = _head_lines(head, MAX_REQUEST_HEAD)
    if lines is None:
        raise HttpRequestError(400, "request head does not end with an empty line")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpRequestError(400, "malformed request line")
    raw_method, raw_target, major, minor = match.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise HttpRequestError(505, "only HTTP/1.0 and HTTP/1.1 are spoken")
    method = raw_method.decode("ascii")
    if method == "CONNECT":
        raise HttpRequestError(400, "CONNECT takes host:port, not a URI")
    version = int(minor)
    target, authority, path = _parse_http_uri(raw_target.decode("ascii"))
    if method == "OPTIONS" and path == "/" and not raw_target.endswith(b"/"):
        # RFC 9112 3.2.4: OPTIONS for an empty path and no query goes on as "*".
        path = "*"
    fields = _split_fields(lines[1:])
    if fields is None:
        raise HttpRequestError(400, "malformed header line")
    _check_framing(fields, version)
    return AbsoluteRequest(
        method=method,
        target=target,
        authority=authority,
        path=path,
        version=version,
        headers=tuple(fields),
    )


def _parse_http_uri(uri: str) -> tuple[AddressTarget, str, str]:
    """``(target, Host value, origin-form path)`` of an ``http://`` absolute URI."""
    if uri.startswith("/"):
        raise HttpRequestError(
            400, "origin-form request: this is a proxy, send an absolute http:// URI or CONNECT"
        )
    if uri == "*":
        raise HttpRequestError(400, "asterisk-form request: this is a proxy")
    match = _URI.fullmatch(uri)
    if match is None:
        raise HttpRequestError(400, "request target is not an absolute URI")
    scheme, rest = match[1].lower(), match[2]
    if scheme == "https":
        raise HttpRequestError(
            400, "https:// is not proxied in absolute form: use CONNECT for TLS to the backend"
        )
    if scheme != "http":
        raise HttpRequestError(400, f"scheme {scheme!r} is not proxied: only http:// (or CONNECT)")
    if not rest.startswith("//"):
        raise HttpRequestError(400, "http URI without an authority")
    if "#" in rest:
        raise HttpRequestError(400, "a request target carries no fragment")
    rest = rest[2:]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        # RFC 9110 4.2.4: userinfo in an http URI is an error for the recipient.
        raise HttpRequestError(400, "http URI with userinfo")
    host, port_text = _split_authority(authority)
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
            raise HttpRequestError(400, "http URI port is not 1..65535")
        port = int(port_text)
        host_value = f"{authority.rpartition(':')[0]}:{port_text}"
    else:
        port = _DEFAULT_PORT
        host_value = authority.removesuffix(":")
    if not path:
        path = "/"
    elif path.startswith("?"):
        path = "/" + path
    try:
        target = AddressTarget(host=host, port=port)
    except ValueError as exc:  # pragma: no cover - the host grammar above is narrower
        raise HttpRequestError(400, f"bad http URI host: {exc}") from None
    return target, host_value, path


def _split_authority(authority: str) -> tuple[str, str]:
    """``(host without brackets, port text)``; the port text may be empty."""
    if authority.startswith("["):
        literal, sep, after = authority[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            raise HttpRequestError(400, "malformed IPv6 literal in http URI")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise HttpRequestError(400, "malformed IPv6 literal in http URI") from None
        return literal, after[1:]
    host, _, port = authority.partition(":")
    if not host:
        # RFC 9110 4.2.1: an http URI with an empty host is invalid.
        raise HttpRequestError(400, "http URI without a host")
    if not _REG_NAME.fullmatch(host):
        raise HttpRequestError(400, "http URI host is not a DNS name or IP address")
    return host, port


def _list_values(fields: list[tuple[str, str]], name: str) -> list[str]:
    """The comma-separated elements of every ``name`` field, stripped, empties dropped."""
    return [
        item.strip()
        for field_name, value in fields
        if field_name.lower() == name
        for item in value.split(",")
        if item.strip()
    ]


def _check_framing(fields: list[tuple[str, str]], version: int) -> None:
    lengths = [value for name, value in fields if name.lower() == "content-length"]
    codings = _list_values(fields, "transfer-encoding")
    has_te = any(name.lower() == "transfer-encoding" for name, _ in fields)
    if len(lengths) > 1:
        raise HttpRequestError(400, "more than one Content-Length")
    if lengths and not (lengths[0].isdigit() and lengths[0].isascii()):
        raise HttpRequestError(400, "Content-Length is not a number")
    if has_te:
        if version == 0:
            raise HttpRequestError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise HttpRequestError(400, "both Content-Length and Transfer-Encoding")
        if not codings or codings[-1].lower() != "chunked":
            raise HttpRequestError(400, "Transfer-Encoding does not end in chunked")
    for option in _list_values(fields, "connection"):
        if not _TOKEN_TEXT.fullmatch(option):
            raise HttpRequestError(400, "malformed Connection option")
        if option.lower() in _FRAMING:
            raise HttpRequestError(400, f"Connection may not name {option}")


def _is_ours(name: str) -> bool:
    return name.lower().startswith(ATTESTATION_HEADER_PREFIX)


def rewrite_request(request: AbsoluteRequest) -> bytes:
    """The origin-form head to send to the backend (see the module docstring).

    Args:
        request: the parsed absolute-form request.

    Returns:
        The head, ending with CRLF CRLF.
    """
    named = {option.lower() for option in _list_values(list(request.headers), "connection")}
    drop = _HOP_BY_HOP_REQUEST | named
    version = f"1.{request.version}"
    lines = [f"{request.method} {request.path} HTTP/{version}", f"Host: {request.authority}"]
    for name, value in request.headers:
        lowered = name.lower()
        if lowered in drop or lowered == "host" or _is_ours(name):
            continue
        lines.append(f"{name}: {value}")
    lines.append(f"Via: {version} {VIA_PSEUDONYM}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --------------------------------------------------------------------------- responses


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead:
    """A parsed response head from the backend.

    Attributes:
        version: the HTTP minor version (0 or 1).
        status: the status code (100-999).
        reason: the reason phrase (may be empty).
        headers: ``(name, value)`` field lines as received.
    """

    version: int
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def interim(self) -> bool:
        """Whether more heads follow: a 1xx other than 101 Switching Protocols."""
        return 100 <= self.status < 200 and self.status != 101


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse a response head (status line, fields, empty line).

    Args:
        head: exactly the head, nothing after it.

    Returns:
        The head.

    Raises:
        HttpResponseError: too large, not a head, not HTTP/1.x, a malformed status
            line or field line (obs-fold included, RFC 9112 5.2).
    """
    head = bytes(head)
    if len(head) > MAX_RESPONSE_HEAD:
        raise HttpResponseError("response head too large")
    lines = _head_lines(head, MAX_RESPONSE_HEAD)
    if lines is None:
        raise HttpResponseError("response head does not end with an empty line")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpResponseError("malformed status line")
    major, minor, status, reason = match.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise HttpResponseError("not an HTTP/1.0 or HTTP/1.1 response")
    if status[0:1] == b"0":
        raise HttpResponseError("status code below 100")
    fields = _split_fields(lines[1:])
    if fields is None:
        raise HttpResponseError("malformed header line")
    return ResponseHead(
        version=int(minor),
        status=int(status),
        reason=(reason or b"").decode("latin-1"),
        headers=tuple(fields),
    )


def rewrite_response_head(
    head: ResponseHead, extra: tuple[tuple[str, str], ...] = (), *, final_head: bool = True
) -> bytes:
    """The head to send to the client.

    Removes hop-by-hop fields and every ``X-Ratls-*`` field, appends ``Via``; a final
    head also gets ``Connection: close`` and ``extra`` (the attestation headers).

    Args:
        head: the backend's head.
        extra: fields to add to a final head.
        final_head: False for an interim (1xx) head.

    Returns:
        The head, ending with CRLF CRLF.
    """
    named = {
        option.lower()
        for option in _list_values(list(head.headers), "connection")
        if option.lower() not in _FRAMING
    }
    drop = _HOP_BY_HOP_RESPONSE | named
    version = f"1.{head.version}"
    # status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 4)
    lines = [f"HTTP/{version} {head.status} {head.reason}"]
    lines.extend(
        f"{name}: {value}"
        for name, value in head.headers
        if name.lower() not in drop and not _is_ours(name)
    )
    lines.append(f"Via: {version} {VIA_PSEUDONYM}")
    if final_head:
        lines.append("Connection: close")
        lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _claim_text(value: object) -> str | None:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if not text or len(text) > _MAX_CLAIM_VALUE or not re.fullmatch(r"[\x21-\x7e ]+", text):
        return None
    return text.strip() or None


def attestation_headers(result: object) -> tuple[tuple[str, str], ...]:
    """The response fields describing the egress's verified attestation.

    Only the claims the PROXY v2 TLVs carry (profile, launch measurement, reported TCB,
    policy digest), taken from the verifier result's ``claims()``; a claim that is
    absent, too long or not printable ASCII is left out.  Nothing here is secret: these
    are what the egress proved, not keys or evidence.

    Args:
        result: the verifier's result for the egress (``OpenedLink.attestation.
            peer_result``).

    Returns:
        ``(name, value)`` pairs, possibly empty.
    """
    claims = peer_claims(result)
    snp = claims.get("snp")
    nested: dict[str, Any] = snp if isinstance(snp, dict) else {}
    headers: list[tuple[str, str]] = []
    for name, key in _CLAIM_HEADERS:
        value = claims.get(key, nested.get(key))
        if value is None:
            continue
        text = _claim_text(value)
        if text is not None:
            headers.append((name, text))
    return tuple(headers)


@final
class ResponseRewriter:
    """Sans-I/O rewriting of the backend's response stream, head by head, then raw.

    Feed it the backend's bytes in any pieces; it returns what to send to the client.
    Interim 1xx heads are rewritten and passed on; the final head is rewritten with
    ``extra``; after it every byte is returned unchanged.

    Args:
        extra: fields for the final head (e.g. :func:`attestation_headers`).
    """

    def __init__(self, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self._extra = extra
        self._buffer = bytearray()
        self._scanned = 0
        self._done = False
        self.heads = 0

    @property
    def done(self) -> bool:
        """Whether the final head went through (everything after is relayed raw)."""
        return self._done

    def feed(self, data: bytes) -> bytes:
        """Take backend bytes; return the bytes for the client (may be empty).

        Raises:
            HttpResponseError: a head is malformed or larger than
                :data:`MAX_RESPONSE_HEAD`.
        """
        if self._done:
            return bytes(data)
        self._buffer += data
        out = bytearray()
        while not self._done:
            end = self._buffer.find(b"\r\n\r\n", self._scanned)
            if end < 0:
                if len(self._buffer) > MAX_RESPONSE_HEAD:
                    raise HttpResponseError("response head too large")
                # Search only the new bytes next time (a trickling backend stays linear).
                self._scanned = max(0, len(self._buffer) - 3)
                break
            head = parse_response_head(bytes(self._buffer[: end + 4]))
            del self._buffer[: end + 4]
            self._scanned = 0
            self.heads += 1
            if head.interim:
                out += rewrite_response_head(head, final_head=False)
            else:
                out += rewrite_response_head(head, self._extra)
                out += self._buffer
                self._buffer.clear()
                self._done = True
        return bytes(out)

    def finish(self) -> None:
        """The backend ended its side: check that the final head arrived.

        Raises:
            HttpResponseError: no final head (nothing, or a truncated head).
        """
        if self._done:
            return
        if not self._buffer and self.heads == 0:
            raise HttpResponseError("the backend closed without a response")
        raise HttpResponseError("the backend closed in the middle of its response head")


def proxied_client_stream(stream: trio.SocketStream, rewriter: ResponseRewriter) -> RewritingStream:
    """The client's stream as the tunnel sees it: responses go through ``rewriter``.

    Receiving is passed through (the request body).  When the response cannot be
    relayed, nothing more is sent, ``failure`` says why, and the send raises
    ``BrokenResourceError`` so that the tunnel ends; its owner then answers 502.  At EOF
    the response must have had a complete head.
    """
    return RewritingStream(stream, rewriter.feed, rewriter.finish)


# --------------------------------------------------------------------------- serving


async def _run_absolute(
    runtime: Runtime,
    rule: HttpConnectRule,
    opened: OpenedLink,
    raw: trio.SocketStream,
    record: TunnelRecord,
    fields: dict[str, Any],
    request: AbsoluteRequest,
    pipelined: bytes,
) -> None:
    extra = attestation_headers(opened.attestation.peer_result) if rule.attestation_headers else ()
    client = proxied_client_stream(raw, ResponseRewriter(extra))
    await run_opened_tunnel(
        runtime, opened, client, record, fields, initial_data=rewrite_request(request) + pipelined
    )
    if client.failure is not None:
        # The backend's answer was not HTTP we can relay: say so, and close gently (no
        # abortive close) so the 502 is not destroyed by a reset.
        fields.pop("abort_client", None)
        fields.update(result="bad-response", detail=client.failure)
        await _answer_and_close(
            raw, build_response(502, reason_code="bad-response", detail=client.failure)
        )


async def serve_http_proxy(
    runtime: Runtime,
    rule: HttpConnectRule,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve one HTTP proxy listener (CONNECT and absolute-form ``http://``) forever.

    Admission, limits, the access log line and the refusal statuses are those of every
    ingress listener (mode ``http-connect``); absolute-form tunnels log
    ``http="absolute-form"`` and the method.

    Args:
        runtime: the gateway's shared state.
        rule: the listener's configuration.
        handler_nursery: where connection handlers run (the daemon's tunnel nursery).
        task_status: receives the bound listeners.

    Raises:
        OSError: the listen address cannot be bound.
    """

    async def handler(
        runtime: Runtime,
        raw: trio.SocketStream,
        client: str,
        record: TunnelRecord,
        fields: dict[str, Any],
    ) -> None:
        reader = StreamReader(raw, limit=MAX_REQUEST_HEAD)
        try:
            with trio.fail_after(runtime.config.timeouts.proxy_request):
                head = await reader.read_until(b"\r\n\r\n")
                request = parse_proxy_request(head)
        except trio.TooSlowError:
            fields.update(result="request-timeout")
            await _answer_and_close(raw, build_response(408, detail="request head too slow"))
            return
        except HttpRequestError as exc:
            fields.update(result="bad-request", detail=str(exc))
            await _answer_and_close(
                raw, build_response(exc.status, reason_code="bad-request", detail=str(exc))
            )
            return
        except RequestTooLarge as exc:
            fields.update(result="bad-request", detail=str(exc))
            await _answer_and_close(
                raw,
                build_response(431, reason_code="bad-request", detail="request head too large"),
            )
            return
        except TruncatedRequest as exc:
            fields.update(result="bad-request", detail=str(exc))
            await _answer_and_close(
                raw, build_response(400, reason_code="bad-request", detail="incomplete request")
            )
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            fields.update(result="client-reset")
            return
        record.target = str(request.target)
        if isinstance(request, AbsoluteRequest):
            fields.update(http="absolute-form", method=request.method)
        current = runtime.current_rule(rule)  # after a reload: the new egress and headers
        opened = await open_link(runtime, current.egress, request.target, client)
        if isinstance(opened, IngressFailure):
            fields.update(result=opened.result, detail=opened.detail)
            status = status_for(opened.result, opened.code)
            await _answer_and_close(
                raw, build_response(status, reason_code=opened.result, detail=opened.detail)
            )
            return
        if isinstance(request, AbsoluteRequest):
            await _run_absolute(
                runtime, current, opened, raw, record, fields, request, reader.leftover()
            )
            return
        if not await _send_quietly(raw, build_response(200)):
            await close_link(opened.channel.stream, graceful=True)
            fields.update(result="client-reset")
            return
        await run_opened_tunnel(
            runtime, opened, raw, record, fields, initial_data=reader.leftover()
        )

    await _serve(
        runtime, rule.listen, "http-connect", rule.name, handler, handler_nursery, task_status
    )
