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
from typing import TYPE_CHECKING, Final, final

import trio

from ._readiness import ReadinessPoller, SocketWatch, current_poller

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_RECEIVE_SIZE", "DirectSocketStream", "direct_if_socket"]

#: Bytes read when ``receive_some`` is given no size (as ``trio.SocketStream``).
DEFAULT_RECEIVE_SIZE: Final = 65536


@final
class DirectSocketStream(trio.abc.HalfCloseableStream):
    """A :class:`trio.SocketStream` whose receives and sends skip trio's extra round.

    The descriptor is asked for afresh before every call (no await in between), so a
    socket closed meanwhile gives :class:`trio.ClosedResourceError`, never another
    connection's data.  Waits for readiness go to the run's
    :class:`~gateway._readiness.ReadinessPoller` (trio's own waits where there is no
    epoll), registered on the first wait.  Close through this wrapper (or call
    :meth:`release` first): a task waiting here then gets ClosedResourceError.

    Args:
        stream: the socket stream to wrap; keep using this wrapper instead of it.
    """

    __slots__ = ("_receiving", "_sending", "_socket", "_stream", "_watch")

    #: Read by :class:`~ratls._tls_stream.AttestedTLSStream`: our calls do not always
    #: checkpoint, so it checkpoints for us.
    checkpoints_always: Final = False

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._receiving = False
        self._sending = False
        self._watch: SocketWatch | None = None

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

    def _watched(self, poller: ReadinessPoller) -> SocketWatch:
        watch = self._watch
        if watch is None or watch.poller is not poller:  # first wait, or another trio run
            if watch is not None:
                watch.poller.forget(watch)
            fd = self._socket.fileno()
            if fd == -1:
                raise trio.ClosedResourceError("waiting on a closed socket")
            watch = self._watch = poller.watch(fd)
        return watch

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Bytes the kernel has (at most ``max_bytes``), ``b""`` at end, None if none yet.

        Never waits and never checkpoints.  After None, :meth:`call_when_readable` can
        arrange to be told when to try again.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        try:
            return os.read(self._socket.fileno(), max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._error(exc, "receiving") from exc

    def receive_into_nowait(self, buffer: memoryview) -> int | None:
        """Like :meth:`receive_nowait`, into ``buffer``: the count, 0 at end, None if none yet.

        The caller may reuse its buffer for every read instead of getting a new bytes
        object each time (the gateway reads behind room for a frame header).
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        try:
            return os.readv(self._socket.fileno(), (buffer,))
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._error(exc, "receiving") from exc

    def call_when_readable(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` once when the socket may be readable, with no task waiting.

        Call only after :meth:`receive_nowait` returned None.  Returns False where this
        platform has no poller (the caller must wait in a task instead).
        """
        poller = current_poller()
        if poller is None:
            return False
        poller.call_when_readable(self._watched(poller), callback)
        return True

    def release(self) -> None:
        """Stop watching the socket (before it is closed elsewhere).

        A task waiting here gets ClosedResourceError; a pending callback is dropped.
        """
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.poller.forget(watch)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes the kernel has (at most ``max_bytes``), waiting only if it has none.

        Returns ``b""`` at end of stream.  Not a checkpoint when data was waiting.
        """
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        while True:
            data = self.receive_nowait(max_bytes)
            if data is not None:
                return data
            self._receiving = True
            try:
                poller = current_poller()
                if poller is None:
                    await trio.lowlevel.wait_readable(self._socket)
                else:
                    watch = self._watched(poller)
                    await trio.lowlevel.wait_task_rescheduled(watch.park_reader())
                    watch.raise_if_closed()
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
            # Waiting outside the except clause: inside it the BlockingIOError and its
            # traceback would stay alive for as long as the socket is full.
            self._sending = True
            try:
                poller = current_poller()
                if poller is None:
                    await trio.lowlevel.wait_writable(self._socket)
                else:
                    watch = self._watched(poller)
                    await trio.lowlevel.wait_task_rescheduled(watch.park_writer())
                    watch.raise_if_closed()
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
        """Close the socket (waiters here get ClosedResourceError)."""
        self.release()
        await self._stream.aclose()


def direct_if_socket(stream: trio.abc.Stream) -> trio.abc.Stream:
    """``stream`` wrapped in :class:`DirectSocketStream` if it is a plain socket stream."""
    if type(stream) is trio.SocketStream:
        return DirectSocketStream(stream)
    return stream
