"""A small buffered reader over a trio stream, for proxy request heads.

HTTP CONNECT and SOCKS5 negotiations are read a piece at a time (exact byte counts, or
up to a delimiter) with a hard bound on what is buffered.  Whatever the client sent
beyond the negotiation (pipelined application bytes) stays in :meth:`StreamReader.
leftover` and is tunnelled first, so nothing is lost and nothing is interpreted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from ratls._errors import RemoteProtocolError

if TYPE_CHECKING:
    import trio

__all__ = ["RequestTooLarge", "StreamReader", "TruncatedRequest"]


class TruncatedRequest(RemoteProtocolError):
    """The client closed the connection in the middle of its request."""


class RequestTooLarge(RemoteProtocolError):
    """The client's request is longer than the limit."""


@final
class StreamReader:
    """Reads exact sizes or delimited heads from ``stream``, buffering at most ``limit``.

    Args:
        stream: the client's stream.
        limit: the most bytes one read may need to buffer.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, *, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()

    async def _fill(self) -> None:
        data = await self._stream.receive_some(self._limit)
        if not data:
            raise TruncatedRequest(f"client closed after {len(self._buffer)} bytes of its request")
        self._buffer += data

    async def read_exactly(self, size: int) -> bytes:
        """Return exactly ``size`` bytes.

        Raises:
            TruncatedRequest: the client closed first.
            RequestTooLarge: ``size`` exceeds the limit.
        """
        if size > self._limit:
            raise RequestTooLarge(f"a {size}-byte read exceeds the limit of {self._limit}")
        while len(self._buffer) < size:
            await self._fill()
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    async def read_until(self, delimiter: bytes) -> bytes:
        """Return everything up to and including ``delimiter``.

        Raises:
            TruncatedRequest: the client closed first.
            RequestTooLarge: no delimiter within the limit.
        """
        start = 0
        while True:
            index = self._buffer.find(delimiter, start)
            if index >= 0:
                end = index + len(delimiter)
                if end > self._limit:
                    break
                chunk = bytes(self._buffer[:end])
                del self._buffer[:end]
                return chunk
            if len(self._buffer) >= self._limit:
                break
            start = max(0, len(self._buffer) - len(delimiter) + 1)
            await self._fill()
        raise RequestTooLarge(f"no end of request within {self._limit} bytes")

    def leftover(self) -> bytes:
        """Bytes received beyond what was read (and forget them)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data
