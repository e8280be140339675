"""Datagrams as streams, so that UDP flows ride the tunnel machinery built for TCP.

See :mod:`gateway._udp` for how flows are made.  :class:`FlowStream` is one flow on the
ingress (fed by the listener's socket, answering with ``sendto``);
:class:`ConnectedDatagramStream` is the egress's UDP socket connected to the backend.
Each ``receive_some`` returns exactly one datagram and each ``send_all`` sends exactly
one, so a DATA frame is a datagram and boundaries survive the link.  End of file is the
flow's end: on the ingress after ``timeouts.udp_idle`` without a datagram either way, on
the egress when the ingress's end of file arrives.  Empty datagrams are dropped (an empty
read means end of file).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Final, final

import trio

from ._runtime import set_mark

__all__ = [
    "FLOW_QUEUE",
    "MAX_DATAGRAM",
    "ConnectedDatagramStream",
    "DatagramListener",
    "FlowStream",
    "connect_udp",
]

#: Largest datagram read (the IPv4 and IPv6 UDP payload limit, with room).
MAX_DATAGRAM: Final = 65535
#: Datagrams a flow holds while its tunnel opens or its link is busy; more are dropped.
FLOW_QUEUE: Final = 256


@final
@dataclass(frozen=True, slots=True)
class DatagramListener:
    """A bound UDP socket, listed with the gateway's listeners (its ``address``)."""

    socket: socket.socket


@final
class FlowStream(trio.abc.HalfCloseableStream):
    """One UDP flow on the ingress, as a stream of datagrams (see the module docstring).

    Args:
        sock: the listener's socket (shared by every flow of the rule).
        client: the client's address, where answers go.
        idle: seconds without a datagram either way after which reading returns EOF.
        reply_prefix: bytes put in front of every answer (a SOCKS5 UDP header).
    """

    def __init__(
        self,
        sock: socket.socket,
        client: tuple[Any, ...],
        *,
        idle: float,
        reply_prefix: bytes = b"",
    ) -> None:
        self.client = client
        self.dropped = 0
        self._sock = sock
        self._prefix = reply_prefix
        self._idle = idle
        self._to_send, self._received = trio.open_memory_channel[bytes](FLOW_QUEUE)
        self._last = trio.current_time()
        self._ended = False
        self._closed = False

    def deliver(self, datagram: bytes) -> bool:
        """Queue a datagram from the client; False (and counted) if the queue is full."""
        if self._closed or self._ended:
            return False
        try:
            self._to_send.send_nowait(datagram)
        except trio.WouldBlock:
            self.dropped += 1
            return False
        except trio.ClosedResourceError:
            return False  # ended meanwhile
        self._last = trio.current_time()
        return True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The client's next datagram; ``b""`` once the flow has been idle ``udp_idle``."""
        if self._closed:
            raise trio.ClosedResourceError("the flow was closed")
        while not self._ended:
            with trio.move_on_at(self._last + self._idle):
                try:
                    return await self._received.receive()
                except trio.EndOfChannel:
                    break  # ended by the listener (it stops), after what was queued
            if trio.current_time() >= self._last + self._idle:
                self._ended = True  # quiet both ways: the flow is over
        self._ended = True
        await trio.lowlevel.checkpoint()
        return b""

    async def receive_batch(self, max_bytes: int) -> list[bytes]:
        """Every datagram waiting (at least one, about ``max_bytes`` in all); ``[]`` at EOF."""
        first = await self.receive_some()
        if not first:
            return []
        batch, total = [first], len(first)
        while total < max_bytes:
            try:
                datagram = self._received.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.append(datagram)
            total += len(datagram)
        return batch

    def end(self) -> None:
        """End the flow now (the listener stops): reading returns EOF once the queue is empty."""
        self._to_send.close()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send one datagram to the client."""
        if self._closed:
            raise trio.ClosedResourceError("the flow was closed")
        self._last = trio.current_time()
        if self._prefix:
            data = self._prefix + data
        while self._sock.fileno() >= 0:  # else the listener stopped: no way back
            try:
                self._sock.sendto(data, self.client)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"sending to the client: {exc}") from exc
            return
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """A UDP send does not wait for the peer."""
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """The egress's side of the flow ended: UDP has nothing to tell the client."""
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Stop taking datagrams for this flow (the socket is the listener's)."""
        self._closed = True
        self._to_send.close()
        self._received.close()
        await trio.lowlevel.checkpoint()


@final
class ConnectedDatagramStream(trio.abc.HalfCloseableStream):
    """A UDP socket connected to a backend, as a stream of datagrams (egress side).

    The socket is used without trio's wrapper: a read takes every datagram waiting
    (:meth:`receive_batch`) and waits only when there is none, so a burst costs one
    scheduler round, not one per datagram.

    Args:
        sock: the connected UDP socket, non-blocking (closed with this stream).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._ended = False
        self._waiting: trio.CancelScope | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The backend's next datagram; ``b""`` once the ingress ended the flow."""
        batch = await self.receive_batch(1)
        return batch[0] if batch else b""

    async def receive_batch(self, max_bytes: int) -> list[bytes]:
        """Every datagram waiting (at least one, about ``max_bytes`` in all); ``[]`` at EOF."""
        batch: list[bytes] = []
        total = 0
        while not self._ended and total < max_bytes:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                if batch:
                    break
                with trio.CancelScope() as scope:
                    self._waiting = scope
                    try:
                        await trio.lowlevel.wait_readable(self._sock)
                    finally:
                        self._waiting = None
                continue
            except ConnectionRefusedError:
                continue  # ICMP port unreachable for an earlier datagram: it was lost
            except OSError as exc:
                raise trio.BrokenResourceError(f"receiving from the backend: {exc}") from exc
            if data:  # an empty datagram cannot be carried
                batch.append(data)
                total += len(data)
        if not batch:
            await trio.lowlevel.checkpoint()
        return batch

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send one datagram to the backend (lost, as UDP's are, if nobody listens)."""
        while True:
            try:
                self._sock.send(data)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            except ConnectionRefusedError:
                pass  # an earlier datagram met no listener; this one may
            except OSError as exc:
                raise trio.BrokenResourceError(f"sending to the backend: {exc}") from exc
            return

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket takes a datagram."""
        await trio.lowlevel.wait_writable(self._sock)

    async def send_eof(self) -> None:
        """The ingress ended the flow: reading now returns end of file."""
        self._ended = True
        if self._waiting is not None:
            self._waiting.cancel()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the socket."""
        self._ended = True
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await trio.lowlevel.checkpoint()


async def connect_udp(host: str, port: int, *, mark: int = 0) -> ConnectedDatagramStream:
    """A UDP socket connected to ``host:port`` (its first address), as a stream.

    Raises:
        OSError: the name did not resolve (``socket.gaierror``) or no route leads there.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if mark:
            set_mark(sock, mark)
        sock.connect(address)  # UDP: sets the peer, sends nothing, never blocks
    except BaseException:
        sock.close()
        raise
    return ConnectedDatagramStream(sock)
