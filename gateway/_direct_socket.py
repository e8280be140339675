"""A socket stream read and written straight through its descriptor, yielding only to wait.

``trio.SocketStream`` yields to the scheduler on every call, even when the kernel had
data or room at once, and each call goes through a conflict detector, an error-translating
context manager and trio's non-blocking helper.  A relay pays all of that once per chunk
per socket.  :class:`DirectSocketStream` reads and writes the descriptor at once and waits
for readiness only when the kernel says the call would block.

So its calls are *not* checkpoints when the kernel is ready: use it only under something
that checkpoints for it.  The gateway uses it for a tunnel's local socket (the pump's
other half, the TLS link, checkpoints in every round) and as the transport of the link's
:class:`~ratls._tls_stream.AttestedTLSStream`, which checkpoints once per call for a
transport that says it may not (``checkpoints_always = False``).
"""

from __future__ import annotations

import os
from typing import Final, final

import trio

__all__ = ["DEFAULT_RECEIVE_SIZE", "DirectSocketStream", "direct_if_socket"]

#: Bytes read when ``receive_some`` is given no size (as ``trio.SocketStream``).
DEFAULT_RECEIVE_SIZE: Final = 65536


@final
class DirectSocketStream(trio.abc.HalfCloseableStream):
    """A :class:`trio.SocketStream` whose receives and sends skip trio's extra round.

    The descriptor is asked for afresh before every call (no await in between), so a
    socket closed meanwhile gives :class:`trio.ClosedResourceError`, never another
    connection's data.  Closing, half-closing and waiting for room go to the wrapped
    stream.  Two tasks can only meet inside a call that waits, so the conflict check
    (:class:`trio.BusyResourceError`) is a flag set around the waits alone.

    Args:
        stream: the socket stream to wrap; keep using this wrapper instead of it.
    """

    __slots__ = ("_receiving", "_sending", "_socket", "_stream")

    #: Read by :class:`~ratls._tls_stream.AttestedTLSStream`: our calls do not always
    #: checkpoint, so it checkpoints for us.
    checkpoints_always: Final = False

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._receiving = False
        self._sending = False

    @property
    def socket(self) -> trio.socket.SocketType:
        """The wrapped trio socket."""
        return self._socket

    def _error(
        self, exc: OSError, what: str
    ) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._socket.fileno() == -1:
            return trio.ClosedResourceError(f"{what} on a closed socket")
        return trio.BrokenResourceError(f"{what}: {exc}")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes the kernel has (at most ``max_bytes``), waiting only if it has none.

        Returns ``b""`` at end of stream.  Not a checkpoint when data was waiting.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        while True:
            try:
                return os.read(self._socket.fileno(), max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._error(exc, "receiving") from exc
            # Waiting outside the except clause: inside it the BlockingIOError and its
            # traceback would stay alive for as long as the socket is idle.
            self._receiving = True
            try:
                await trio.lowlevel.wait_readable(self._socket)
            finally:
                self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting for room only when the kernel has none.

        Not a checkpoint when everything fitted at once (or ``data`` is empty).  If
        cancelled while waiting, an unknown prefix was sent.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        view = memoryview(data).cast("B")
        while view:
            try:
                view = view[os.write(self._socket.fileno(), view) :]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._error(exc, "sending") from exc
            self._sending = True
            try:
                await trio.lowlevel.wait_writable(self._socket)
            finally:
                self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """See :meth:`trio.abc.SendStream.wait_send_all_might_not_block`."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await self._stream.wait_send_all_might_not_block()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Half-close: shut down the sending direction (TCP FIN)."""
        await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the socket."""
        await self._stream.aclose()


def direct_if_socket(stream: trio.abc.Stream) -> trio.abc.Stream:
    """``stream`` wrapped in :class:`DirectSocketStream` if it is a plain socket stream."""
    if type(stream) is trio.SocketStream:
        return DirectSocketStream(stream)
    return stream
