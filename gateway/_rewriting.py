"""A stream whose outgoing bytes pass through a sans-I/O HTTP rewriter first.

The HTTP proxy rewrites responses on their way to its client
(:func:`~gateway._http_proxy.proxied_client_stream`), the egress rewrites requests on
their way to an HTTP backend (:func:`~gateway._http_inject.injecting_stream`).  Both
sit where the tunnel expects a plain stream: receiving is passed through, sending goes
through ``feed``, and a refusal from the rewriter stops the stream for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, final

import trio

from ratls._errors import RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RewritingStream"]


@final
class RewritingStream(trio.abc.HalfCloseableStream):
    """Sends ``feed(data)`` instead of ``data``; everything else goes to ``stream``.

    When ``feed`` (or ``finish``, at EOF) raises a ``RemoteProtocolError``, nothing more
    is sent, :attr:`failure` keeps the reason, and this and every later send raise
    ``BrokenResourceError``, so the tunnel ends and its owner can say why.

    Args:
        stream: the stream to write to and read from.
        feed: the rewriter's feed: bytes in, bytes to send out.
        finish: called at EOF, to object to how the bytes ended (optional).
    """

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream,
        feed: Callable[[bytes], bytes],
        finish: Callable[[], None] | None = None,
    ) -> None:
        self._stream = stream
        self._feed = feed
        self._finish = finish
        #: Why the rewriter refused the bytes (None while all is well).
        self.failure: str | None = None

    def _fail(self, exc: RemoteProtocolError) -> NoReturn:
        self.failure = getattr(exc, "reason", None) or str(exc)
        raise trio.BrokenResourceError(self.failure) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Rewrite and send.

        Raises:
            trio.BrokenResourceError: the peer went away, or the rewriter refused.
            trio.ClosedResourceError: the stream was closed.
        """
        if self.failure is not None:
            raise trio.BrokenResourceError(self.failure)
        try:
            out = self._feed(bytes(data))
        except RemoteProtocolError as exc:
            self._fail(exc)
        if out:
            await self._stream.send_all(out)

    async def wait_send_all_might_not_block(self) -> None:
        """Passed through."""
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Let the rewriter check the end, then half-close.

        Raises:
            trio.BrokenResourceError: the rewriter refused how the bytes ended.
        """
        if self._finish is not None:
            try:
                self._finish()
            except RemoteProtocolError as exc:
                self._fail(exc)
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Passed through."""
        return bytes(await self._stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self._stream.aclose()
