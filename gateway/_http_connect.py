"""HTTP CONNECT proxy requests (RFC 9110 9.3.6) and the gateway's answers.

The ingress HTTP proxy accepts only ``CONNECT host:port HTTP/1.x`` (authority form).
The request head is parsed by :func:`parse_connect_request`, a pure function that
raises :class:`HttpRequestError` carrying the status code to answer with (400, 405,
414, 431, 505).  Once the tunnel decision is known, :func:`build_response` produces the
answer: ``200`` and then the tunnel, or an error status with a plain-text body and a
``Ratls-Gateway-Reason`` header naming the reason code, so that a proxy client learns
why it was refused:

========================================  =====
reason                                    status
========================================  =====
not-allowed, unknown-route                403
attestation-failed                        502
backend-refused, backend-unreachable,
backend-reset, protocol-error, internal   502
backend-timeout, handshake/egress timeout 504
limit-reached, shutting-down              503
rate-limited                              429
========================================  =====

The same table applies to absolute-form requests (``GET http://host/path``), which the
listener in :mod:`gateway._http_proxy` serves next to CONNECT; this module's
:func:`parse_connect_request` on its own answers them with 405, for a CONNECT-only
listener.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

from ratls._errors import RemoteProtocolError

from ._link import AddressTarget, LinkReason

__all__ = [
    "MAX_REQUEST_HEAD",
    "ConnectRequest",
    "HttpRequestError",
    "build_response",
    "parse_connect_request",
    "status_for",
]

# Largest request head accepted.  A CONNECT request is one line plus a few headers
# (Host, Proxy-Authorization, User-Agent); 8 KiB is what common servers allow per head
# and bounds what a client can make us buffer before it is tunnelled.
MAX_REQUEST_HEAD: Final = 8192

_REQUEST_LINE: Final = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d)\.(\d)")
# One character class per part, so matching is linear (optional blanks followed by a
# class that also holds blanks would backtrack quadratically on a line of blanks).
_HEADER_NAME: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE: Final = re.compile(rb"[^\r\n]*")

_REASONS: Final = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


class HttpRequestError(RemoteProtocolError):
    """The proxy client's request cannot be served.

    Attributes:
        status: the HTTP status code to answer with.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{status}: {message}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequest:
    """A parsed CONNECT request.

    Attributes:
        target: where the client wants to go.
        version: the HTTP minor version (0 or 1).
        headers: header ``(name, value)`` pairs, names lowercased, in order.
    """

    target: AddressTarget
    version: int
    headers: tuple[tuple[str, str], ...] = ()


def parse_connect_request(head: bytes) -> ConnectRequest:
    """Parse a request head (request line, headers, empty line: ends with CRLF CRLF).

    Args:
        head: exactly the head, nothing after it.

    Returns:
        The request.

    Raises:
        HttpRequestError: with the status to answer (400 malformed, 405 not CONNECT,
            505 not HTTP/1.x, 431 too large).
    """
    head = bytes(head)
    if len(head) > MAX_REQUEST_HEAD:
        raise HttpRequestError(431, "request head too large")
    if not head.endswith(b"\r\n\r\n"):
        raise HttpRequestError(400, "request head does not end with an empty line")
    lines = head[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpRequestError(400, "malformed request line")
    method, authority, major, minor = match.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise HttpRequestError(505, "only HTTP/1.0 and HTTP/1.1 are spoken")
    if method != b"CONNECT":
        raise HttpRequestError(405, "this proxy only accepts CONNECT")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise HttpRequestError(400, "malformed header line")
        try:
            headers.append((name.decode("ascii").lower(), value.strip().decode("latin-1")))
        except UnicodeDecodeError:  # pragma: no cover - the regex admits ASCII names only
            raise HttpRequestError(400, "malformed header name") from None
    return ConnectRequest(
        target=_parse_authority(authority), version=int(minor), headers=tuple(headers)
    )


def _parse_authority(authority: bytes) -> AddressTarget:
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError:
        raise HttpRequestError(400, "CONNECT target is not ASCII") from None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise HttpRequestError(400, "CONNECT target must be host:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise HttpRequestError(400, "CONNECT target must be host:port or [v6]:port")
    if not port.isdigit() or len(port) > 5:
        raise HttpRequestError(400, "CONNECT target port is not a number")
    try:
        return AddressTarget(host=host, port=int(port))
    except ValueError as exc:
        raise HttpRequestError(400, f"bad CONNECT target: {exc}") from None


def status_for(result: str, code: LinkReason | int | None) -> int:
    """The HTTP status for a failed tunnel (see the module table).

    Args:
        result: the failure label (e.g. ``"handshake-timeout"``, ``"rate-limited"``).
        code: the link reason code, when there is one.
    """
    if result == "rate-limited":
        return 429
    if result in ("limit-reached", "shutting-down"):
        return 503
    if code in (LinkReason.NOT_ALLOWED, LinkReason.UNKNOWN_ROUTE):
        return 403
    if code is LinkReason.BACKEND_TIMEOUT or result.endswith("timeout"):
        return 504
    if code in (LinkReason.LIMIT_REACHED, LinkReason.SHUTTING_DOWN):
        return 503
    return 502


def build_response(status: int, *, reason_code: str = "", detail: str = "") -> bytes:
    """An HTTP/1.1 response head (and body for errors).

    Args:
        status: the status code.
        reason_code: the gateway's reason name, sent as ``Ratls-Gateway-Reason``.
        detail: plain-text explanation for the body (no secrets).

    Returns:
        The bytes to send.
    """
    phrase = _REASONS.get(status, "Error")
    if status == 200:
        return f"HTTP/1.1 200 {phrase}\r\n\r\n".encode("ascii")
    body = (f"{status} {phrase}: {detail}" if detail else f"{status} {phrase}").encode(
        "utf-8", "replace"
    ) + b"\n"
    safe_reason = re.sub(r"[^A-Za-z0-9._-]", "", reason_code)
    headers = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status == 405:
        headers.append("Allow: CONNECT")
    if safe_reason:
        headers.append(f"Ratls-Gateway-Reason: {safe_reason}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + body
