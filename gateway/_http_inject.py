"""Attestation headers towards an HTTP backend: the egress adds the client side's claims.

A route with ``http_headers = true`` carries HTTP/1.x requests.  The egress reads the
bytes the ingress side sends, finds every request head, removes any ``X-Ratls-*`` field
the client wrote (a client must not be able to assert what the gateway asserts), and
adds the verified claims of the ingress gateway's attestation as ``X-Ratls-Peer-*``
fields, the same names the HTTP proxy sends to its clients.  An application behind the
egress can then authorise on attested identity by reading a header, without PROXY
protocol support or an RA library.

Theory of operation
-------------------
:class:`HeaderInjector` is sans-I/O: bytes in, bytes out.  Requests are framed exactly
as RFC 9112 section 6 says a server must, so that the injector and the backend agree on
where each request ends (the agreement request smuggling attacks break):

* a head ends at the first CRLF CRLF; lines end in CRLF only, and a bare CR or LF, NUL,
  obsolete line folding or whitespace before a colon are refused;
* a body is ``Transfer-Encoding: chunked`` (the final coding) or ``Content-Length``
  bytes, never both, and one Content-Length value; no framing field means no body;
* chunk sizes are hex without signs or whitespace, chunk data ends in CRLF, and the
  trailer section loses ``X-Ratls-*`` fields too.

Body bytes are passed on as they come, never held back.  Requests that would end HTTP
framing on this connection are refused, because the injector could not see the next
request head: ``CONNECT``, any ``Upgrade`` request (a backend that declines an upgrade
keeps reading HTTP on the connection, and the request after it would pass unseen), and
anything that is not HTTP/1.0 or 1.1 (HTTP/2 prior knowledge).  A refused request ends
the tunnel before any of its bytes reach the backend.
"""

from __future__ import annotations

import re
from enum import Enum, auto
from typing import TYPE_CHECKING, Final, NoReturn, final

from ._http_connect import MAX_REQUEST_HEAD, HttpRequestError
from ._http_proxy import _REQUEST_LINE, _check_framing, _head_lines, _is_ours, _split_fields
from ._rewriting import RewritingStream

if TYPE_CHECKING:
    from collections.abc import Sequence

    import trio

__all__ = ["HeaderInjector", "injecting_stream"]

# Longest chunk-size line (size, extensions, CRLF) accepted.
_MAX_CHUNK_LINE: Final = 4096
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\t\x20-\x7e\x80-\xff]*)?")


class _State(Enum):
    HEAD = auto()
    BODY = auto()
    CHUNK_LINE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()
    TRAILERS = auto()


@final
class HeaderInjector:
    """Rewrites each request head of an HTTP/1.x byte stream; passes bodies through.

    Args:
        headers: the ``(name, value)`` fields to add to every request (names start with
            ``X-Ratls-``).

    Raises (from :meth:`feed`):
        HttpRequestError: a malformed head or framing, or a request the injector cannot
            follow (CONNECT, Upgrade, another HTTP version); nothing of it was returned.
    """

    def __init__(self, headers: Sequence[tuple[str, str]]) -> None:
        self._added = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
        self._state = _State.HEAD
        self._buffer = bytearray()
        self._remaining = 0
        #: Request heads rewritten so far.
        self.requests = 0

    @property
    def between_requests(self) -> bool:
        """Whether the stream stopped exactly after a whole request (or before any)."""
        return self._state is _State.HEAD and not self._buffer

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes from the client side; return what to send to the backend."""
        out = bytearray()
        view = memoryview(data)
        while view:
            view = self._step(view, out)
        return bytes(out)

    def _step(self, view: memoryview, out: bytearray) -> memoryview:
        state = self._state
        if state is _State.BODY or state is _State.CHUNK_DATA:
            take = min(self._remaining, len(view))
            out += view[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._state = _State.HEAD if state is _State.BODY else _State.CHUNK_END
            return view[take:]
        if state is _State.CHUNK_END:
            need = 2 - len(self._buffer)
            self._buffer += view[:need]
            if len(self._buffer) == 2:
                if self._buffer != b"\r\n":
                    self._refuse("chunk data does not end in CRLF")
                out += self._buffer
                self._buffer.clear()
                self._state = _State.CHUNK_LINE
            return view[need:]
        # HEAD, CHUNK_LINE and TRAILERS first collect a section that ends in CRLF CRLF
        # (a head, trailer fields) or CRLF (a chunk-size line, an empty trailer section).
        searched = max(0, len(self._buffer) - 3)
        self._buffer += view
        section_end = self._section_end(state, searched)
        if section_end < 0:
            limit = _MAX_CHUNK_LINE if state is _State.CHUNK_LINE else MAX_REQUEST_HEAD
            if len(self._buffer) > limit:
                self._refuse("request head or chunk line too long", 431)
            return view[len(view) :]
        section = bytes(self._buffer[:section_end])
        rest = len(self._buffer) - section_end
        self._buffer.clear()
        if state is _State.HEAD:
            out += self._head(section)
        elif state is _State.CHUNK_LINE:
            self._chunk(section[:-2])
            out += section
        else:
            out += self._trailers(section)
        return view[len(view) - rest :]

    def _section_end(self, state: _State, searched: int) -> int:
        """Where the section being collected ends in the buffer, or -1 if not yet."""
        buffer = self._buffer
        if state is _State.CHUNK_LINE:
            found = buffer.find(b"\r\n", searched)
            end = found + 2 if found >= 0 else -1
            return end if end <= _MAX_CHUNK_LINE else self._refuse("chunk line too long", 431)
        if state is _State.TRAILERS and buffer[:2] == b"\r\n":
            return 2  # no trailer fields
        found = buffer.find(b"\r\n\r\n", searched)
        end = found + 4 if found >= 0 else -1
        return end if end <= MAX_REQUEST_HEAD else self._refuse("request head too long", 431)

    def _head(self, head: bytes) -> bytes:
        lines = _head_lines(head, MAX_REQUEST_HEAD)
        if lines is None or not lines[0]:
            self._refuse("malformed request head")
        if not _clean(lines):
            self._refuse("a bare CR, LF or NUL in the request head")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            self._refuse("malformed request line")
        method, major, minor = match[1], int(match[3]), int(match[4])
        if (major, minor) not in ((1, 0), (1, 1)):
            self._refuse(f"HTTP/{major}.{minor} is not carried here", 505)
        if method == b"CONNECT":
            self._refuse("CONNECT would end HTTP on this connection", 405)
        fields = _split_fields(lines[1:])
        if fields is None:
            self._refuse("malformed header field")
        if any(name.lower() == "upgrade" for name, _ in fields):
            self._refuse("an Upgrade would end HTTP on this connection", 501)
        _check_framing(fields, minor)
        self._next_body(fields)
        self.requests += 1
        kept = _without_ours(lines[1:], fields)
        return lines[0] + b"\r\n" + kept + self._added + b"\r\n"

    def _next_body(self, fields: list[tuple[str, str]]) -> None:
        if any(name.lower() == "transfer-encoding" for name, _ in fields):
            self._state = _State.CHUNK_LINE
            return
        lengths = [value for name, value in fields if name.lower() == "content-length"]
        # Digits only (checked by _check_framing); 19 digits already exceed 2**63, and
        # int() refuses strings of more than 4300 digits with a ValueError.
        if lengths and (len(lengths[0]) > 19 or int(lengths[0]) >= 1 << 63):
            self._refuse("Content-Length too large")
        length = int(lengths[0]) if lengths else 0
        if length:
            self._remaining = length
            self._state = _State.BODY
        else:
            self._state = _State.HEAD

    def _chunk(self, line: bytes) -> None:
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            self._refuse("malformed chunk size")
        size = int(match[1], 16)
        if size:
            self._remaining = size
            self._state = _State.CHUNK_DATA
        else:
            self._state = _State.TRAILERS

    def _trailers(self, section: bytes) -> bytes:
        self._state = _State.HEAD
        if section == b"\r\n":
            return b"\r\n"
        lines = _head_lines(section, MAX_REQUEST_HEAD)
        if lines is None or not _clean(lines):
            self._refuse("malformed trailer section")
        fields = _split_fields(lines)
        if fields is None:
            self._refuse("malformed trailer field")
        return _without_ours(lines, fields) + b"\r\n"

    def _refuse(self, reason: str, status: int = 400) -> NoReturn:
        raise HttpRequestError(status, reason)


def _clean(lines: list[bytes]) -> bool:
    """No bare CR or LF (a line end only CRLF may make) and no NUL in any line."""
    return not any(b"\r" in line or b"\n" in line or b"\0" in line for line in lines)


def _without_ours(lines: list[bytes], fields: list[tuple[str, str]]) -> bytes:
    """The field lines whose names are not ``X-Ratls-*``, each with its CRLF."""
    return b"".join(
        line + b"\r\n" for line, (name, _) in zip(lines, fields, strict=True) if not _is_ours(name)
    )


def injecting_stream(
    stream: trio.abc.HalfCloseableStream, injector: HeaderInjector
) -> RewritingStream:
    """A backend's stream as the tunnel sees it: requests go through ``injector``.

    Receiving (the responses) is passed through.  When a request is refused, nothing of
    it is sent, ``failure`` says why, and the send raises ``BrokenResourceError`` so
    that the tunnel ends.
    """
    return RewritingStream(stream, injector.feed)
