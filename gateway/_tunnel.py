"""One tunnel: a local TCP/UNIX stream joined to a link over an attested TLS stream.

Both gateways end up here once the tunnel is open: the ingress with the client's
connection as its local stream, the egress with the backend's.  A tunnel is one trio
nursery whose own task runs ``_pump_in``, with ``_pump_out``, a re-attestation round
while one runs and, once it has a deadline to watch, the watchdog as child tasks:

* ``_pump_out`` reads the local stream (at most ``buffer_size`` bytes at a time) and
  sends DATA frames; on local EOF it sends EOF.  Backpressure is natural: it does not
  read again until the frame is written into the TLS stream.  On a plain socket it runs
  only while there are bytes: finding none, it leaves a callback with the gateway's
  readiness poller and ends, and the poller starts it again when bytes arrive (an idle
  tunnel then keeps one task, not two).
* ``_pump_in`` reads frames.  DATA is written to the local stream before the next frame
  is read (so a slow local reader throttles the peer through TLS and TCP windows); EOF
  becomes ``send_eof()`` on the local stream (TCP half-close); ERROR aborts the tunnel;
  REATTEST is answered in a separate task; EVIDENCE is handed to the timer.
* the watchdog closes the tunnel when nothing moved for ``idle`` seconds, or, once one
  direction has finished, for ``half_close`` seconds (the timer restarts whenever bytes
  move, so long replies after a half-close are never cut), or at ``max_lifetime``;
* re-attestation asks the peer for fresh evidence every ``max_attestation_age`` seconds
  and aborts the tunnel if the answer is late or fails; the gateway's shared
  :class:`~gateway._deadlines.Deadlines` starts each round, so an idle tunnel has no
  task waiting for it.

The tunnel ends cleanly when EOF has gone both ways.  Anything else is an abort, with a
result label for logs and metrics and, where the peer should learn why, an ERROR frame.
The owner closes both streams afterwards (abortively, with a TCP RST, after an abort).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import struct
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar, final, runtime_checkable

import trio

from ratls._errors import (
    EvidenceVerificationError,
    LocalProtocolError,
    RatlsError,
    RemoteProtocolError,
)
from ratls._sync import LightLock
from ratls._tls_stream import acquire_for_io

from ._attestation import check_media_type, reattest_binder
from ._deadlines import Deadline, Deadlines
from ._direct_socket import DirectSocketStream, direct_if_socket
from ._link import (
    FRAME_HEADER_SIZE,
    NEED_DATA,
    Data,
    Eof,
    Error,
    EvidenceFrame,
    LinkClosed,
    LinkConnection,
    LinkEvent,
    LinkReason,
    LinkRole,
    LinkState,
    Ready,
    Reattest,
    reason_name,
    safe_reason,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cryptography import x509

    from ratls._exchange import AttestationConfig
    from ratls._tls_stream import AttestedTLSStream

__all__ = [
    "MIN_REATTEST_ANSWER_INTERVAL",
    "LinkChannel",
    "Tunnel",
    "TunnelAttestation",
    "TunnelOutcome",
    "TunnelSettings",
    "abort_stream",
    "close_link",
    "is_cancellation",
    "refusal_text",
    "reset_detail",
]

_T = TypeVar("_T")

# What a send on the link can raise once the tunnel is going down: the stream failed or
# was closed, or the link machine no longer allows the frame (the peer ended it).
_SEND_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError)

# How long we try to tell the peer why a tunnel is aborted before giving up on it.
_ERROR_SEND_GRACE: Final = 2.0

# A peer may ask for fresh evidence again as soon as it got some; producing evidence
# costs the attester (an SNP report is a firmware call, a vTPM quote a TPM signature).
# Answers are therefore spaced at least this far apart: legitimate re-attestation runs
# on a timer of minutes to hours, so one second never delays it noticeably.
MIN_REATTEST_ANSWER_INTERVAL: Final = 1.0


@final
class _FrameBuffers:
    """Reusable buffers that local reads land in, behind room for a frame header.

    A buffer is held only while its frame is being written into the TLS stream, so the
    pool holds as many as there are sends in progress at once, and keeps a few spare
    ones between bursts; an idle tunnel holds none.
    """

    __slots__ = ("_free",)

    #: Spare buffers kept for reuse (64 KiB each at the default buffer size).
    KEEP: Final = 16

    def __init__(self) -> None:
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes (its contents are whatever was there)."""
        free = self._free
        while free:
            buffer = free.pop()
            if len(buffer) == size:  # another size: the buffer size was reloaded
                return buffer
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        """Return a buffer that no send uses any more."""
        if len(self._free) < self.KEEP:
            self._free.append(buffer)


_FRAME_BUFFERS: Final = _FrameBuffers()


def refusal_text(exc: BaseException) -> str:
    """What a peer or client may learn about a failure: the error class and the claim.

    Reference values our policy expects are not disclosed, only which claim failed.
    """
    if isinstance(exc, EvidenceVerificationError):
        return f"{type(exc).__name__}: {exc.claim}"
    if isinstance(exc, RatlsError):
        return f"{type(exc).__name__}: {exc}"[:512]
    return type(exc).__name__


def reset_detail(exc: BaseException) -> str:
    """Why a local connection (client or backend) failed, for the access line and the peer.

    The error class, and the system's words for the socket error under it (or our own
    error under it, such as an HTTP request the egress would not forward).  ETIMEDOUT
    on an established connection means the peer stopped answering: TCP keepalive probes
    (``[tcp]``) or retransmissions went unanswered.
    """
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(cause, RatlsError):  # e.g. a request the egress refused to forward
        return f"{type(cause).__name__}: {cause}"[:512]
    if not isinstance(cause, OSError) or cause.errno is None:
        return type(exc).__name__
    if cause.errno == errno.ETIMEDOUT:
        return "the peer stopped answering (TCP keepalive or retransmission timed out)"
    return f"{type(exc).__name__}: {os.strerror(cause.errno)}"


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is trio's Cancelled, alone or inside an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(trio.Cancelled) is not None
    return isinstance(exc, trio.Cancelled)


async def abort_stream(stream: trio.abc.Stream) -> None:
    """Close ``stream`` abortively: a TCP RST for sockets (SO_LINGER 0), never waiting."""
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def close_link(stream: trio.abc.Stream, *, graceful: bool) -> None:
    """Close the attested stream: close_notify first when ``graceful``, bounded in time."""
    if graceful:
        with trio.move_on_after(_ERROR_SEND_GRACE) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()
            return
    await trio.aclose_forcefully(stream)


# Linux TCP_INFO tcpi_state values (include/net/tcp_states.h).
_TCP_CLOSE: Final = 7


def _reset_not_closed(stream: trio.abc.Stream) -> bool:
    """Whether an end of file just read from ``stream`` was really a connection reset.

    Linux hands a reset socket's error to one call only; if another task's send took it,
    the next read returns an empty string as if the peer had closed cleanly.  A socket
    that received a FIN is in CLOSE_WAIT; one that was reset is in CLOSE.  (A socket that
    sent its own FIN first also ends in CLOSE, so callers ask only while we have not
    closed our side.)  On other systems, or for other streams, this answers False.
    """
    if not isinstance(stream, trio.SocketStream) or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    return bool(info) and info[0] == _TCP_CLOSE


@runtime_checkable
class DatagramSource(Protocol):
    """A local stream of datagrams that can hand over all it has waiting at once."""

    async def receive_batch(self, max_bytes: int) -> list[bytes]:
        """One datagram or more (about ``max_bytes`` in all); an empty list at the end."""
        ...


@final
class LinkChannel:
    """A :class:`~gateway._link.LinkConnection` driven over an attested stream.

    Sends are serialised by a FIFO lock (pumps and control frames share the stream);
    receives are done by one task at a time (the stream's own conflict detector
    enforces it).

    Args:
        stream: the attested TLS stream, after its handshake.
        role: ingress or egress.
        buffer_size: the largest DATA payload we send; also sizes reads.
    """

    def __init__(
        self,
        stream: AttestedTLSStream[trio.abc.Stream],
        role: LinkRole,
        *,
        buffer_size: int,
    ) -> None:
        self.stream = stream
        self.conn = LinkConnection(role)
        self._send_lock = LightLock()
        self._receive_size = buffer_size

    async def send(self, event: LinkEvent) -> None:
        """Encode and send one event.

        Raises:
            LocalProtocolError: the event is not allowed now.
            trio.BrokenResourceError: the stream failed.
            trio.ClosedResourceError: the stream was closed.
        """
        # The stream's send_all is the schedule point; a free lock adds none (a relay
        # sends one DATA frame per chunk, so a needless run-loop round per chunk counts).
        await acquire_for_io(self._send_lock)
        try:
            data = self.conn.send(event)
            await self.stream.send_all(data)
        finally:
            self._send_lock.release()

    async def send_data_in_place(self, frame: bytearray, length: int) -> None:
        """Send one DATA frame whose ``length``-byte payload follows the header's room.

        ``frame[FRAME_HEADER_SIZE:FRAME_HEADER_SIZE + length]`` holds the payload; the
        header is written in front of it and the frame goes out as one write, with no
        copy to join header and payload.  ``frame`` may be reused once this returns.

        Raises:
            LocalProtocolError: DATA is not allowed now.
            trio.BrokenResourceError: the stream failed.
            trio.ClosedResourceError: the stream was closed.
        """
        await acquire_for_io(self._send_lock)
        try:
            frame[:FRAME_HEADER_SIZE] = self.conn.send_data_header(length)
            with memoryview(frame) as view:
                await self.stream.send_all(view[: FRAME_HEADER_SIZE + length])
        finally:
            self._send_lock.release()

    async def send_many(self, events: Sequence[LinkEvent]) -> None:
        """Encode several events and send them in one write (datagrams of a UDP flow).

        :meth:`send` stays separate: it is the bulk path, one frame per chunk.

        Raises:
            LocalProtocolError: an event is not allowed now.
            trio.BrokenResourceError: the stream failed.
            trio.ClosedResourceError: the stream was closed.
        """
        await acquire_for_io(self._send_lock)
        try:
            data = b"".join([self.conn.send(event) for event in events])
            await self.stream.send_all(data)
        finally:
            self._send_lock.release()

    async def receive(self) -> LinkEvent | LinkClosed:
        """The peer's next event; :class:`LinkClosed` when the stream ended or broke.

        Raises:
            RemoteProtocolError: the peer broke the link protocol.
        """
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(self._receive_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The peer gateway vanished (or our stream was closed): the link is lost,
                # even if that cut a frame short.  Only a clean TLS close in the middle of
                # a frame is the peer breaking the protocol.
                return LinkClosed()
            self.conn.receive_data(data)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelSettings:
    """Per-tunnel timers and sizes (from the gateway configuration).

    Attributes:
        buffer_size: bytes read from the local stream per step.
        idle: abort when nothing moved this long (0 = off).
        half_close: after one EOF, abort when nothing moved this long (0 = off).
        max_lifetime: abort after this long (0 = off).
        reattest_interval: ask the peer for fresh evidence this often (0 = off).
        reattest_timeout: how long the peer has to answer.
    """

    buffer_size: int = 64 * 1024
    idle: float = 0.0
    half_close: float = 60.0
    max_lifetime: float = 0.0
    reattest_interval: float = 0.0
    reattest_timeout: float = 10.0


@final
@dataclass(slots=True, kw_only=True)
class TunnelAttestation:
    """What re-attestation needs: our config and certificate, the peer's, its result.

    Attributes:
        config: our attester and verifier.
        own_certificate: our TLS certificate (binds our fresh evidence).
        peer_certificate: the peer's TLS certificate (binds its fresh evidence).
        peer_result: the peer's latest verified result.
        verified_at: trio time of that verification.
    """

    config: AttestationConfig
    own_certificate: x509.Certificate
    peer_certificate: x509.Certificate
    peer_result: object
    verified_at: float


@final
@dataclass(slots=True, kw_only=True)
class TunnelOutcome:
    """How a tunnel ended.

    Attributes:
        result: ``"ok"`` for a clean end (EOF both ways), otherwise a label such as
            ``"client-reset"``, ``"idle-timeout"``, ``"attestation-failed"``,
            ``"link-lost"``, ``"protocol-error"`` or ``"peer-<reason>"``.
        code: the link reason code involved, if any.
        detail: human-readable detail.
        bytes_up: bytes from the client towards the backend.
        bytes_down: bytes from the backend towards the client.
        reattestations: how many times the peer was re-attested successfully.
    """

    result: str = "ok"
    code: LinkReason | int | None = None
    detail: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    reattestations: int = 0

    @property
    def aborted(self) -> bool:
        """Whether the tunnel ended any other way than EOF in both directions."""
        return self.result != "ok"


@final
class Tunnel:
    """Pump bytes between ``local`` and the link until both directions end.

    Args:
        channel: the link channel (after OPEN/OPENED).
        local: the client's stream (ingress) or the backend's (egress).
        settings: timers and sizes.
        local_is_client: True on the ingress; decides byte directions and reset reasons.
        attestation: what re-attestation needs; None disables it.
        on_bytes: called with ``("up" | "down", count)`` as bytes move.
        initial_data: bytes already read from the local stream (e.g. pipelined after an
            HTTP CONNECT request) to send first.
        deadlines: the gateway's shared timer for re-attestation (its owner runs it);
            None gives the tunnel a timer task of its own.
    """

    # Slots: an instance dict of this many attributes is over 1.5 KiB, per tunnel.
    __slots__ = (
        "_aborted",
        "_channel",
        "_deadlines",
        "_eof_delivered",
        "_eof_sent",
        "_evidence",
        "_half_closed",
        "_half_closed_event",
        "_in_dir",
        "_initial",
        "_last_activity",
        "_last_answer",
        "_local",
        "_local_io",
        "_local_is_client",
        "_nursery",
        "_on_bytes",
        "_on_reattest",
        "_out_dir",
        "_read_size",
        "_reattest_again",
        "_reattest_due",
        "_reattest_running",
        "_released_at",
        "_scope",
        "_send_error",
        "_settings",
        "_started",
        "_watchdog_running",
        "attestation",
        "outcome",
    )

    def __init__(
        self,
        channel: LinkChannel,
        local: trio.abc.Stream,
        *,
        settings: TunnelSettings,
        local_is_client: bool,
        attestation: TunnelAttestation | None = None,
        on_bytes: Callable[[Literal["up", "down"], int], None] | None = None,
        on_reattest: Callable[[bool, float], None] | None = None,
        initial_data: bytes = b"",
        deadlines: Deadlines | None = None,
    ) -> None:
        self._channel = channel
        self._local = local
        # Plain sockets (TCP, UNIX) are read and written directly; other local streams
        # (e.g. the HTTP proxy's rewriting wrapper) through their own methods.
        self._local_io = direct_if_socket(local)
        self._settings = settings
        self._local_is_client = local_is_client
        self.attestation = attestation
        self._on_bytes = on_bytes
        self._on_reattest = on_reattest
        self._initial = initial_data
        self.outcome = TunnelOutcome()
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._watchdog_running = False
        self._started = trio.current_time()
        self._aborted = False
        self._send_error: Error | None = None
        self._last_activity = trio.current_time()
        # The _last_activity at which release_idle_buffers last gave buffers back.
        self._released_at: float | None = None
        self._half_closed = False
        # Made only when the watchdog must wait for the first half-close.
        self._half_closed_event: trio.Event | None = None
        # Both ends finished: our EOF frame has left (not merely been queued: the link
        # machine counts it as sent before the bytes go out) and the peer's EOF has been
        # passed on locally.  Only then may the tunnel's tasks be cancelled.
        self._eof_sent = False
        self._eof_delivered = False
        self._evidence: tuple[bytes, trio.Event, list[EvidenceFrame]] | None = None
        self._deadlines = deadlines
        self._reattest_due: Deadline | None = None
        self._reattest_running = False
        self._reattest_again = False
        self._last_answer: float | None = None
        # A DATA frame is header + payload; reading buffer_size - header bytes makes a
        # full frame exactly buffer_size long, which the TLS stream writes as whole
        # records (64 KiB = four 16 KiB records) instead of adding a tiny fifth one.
        self._read_size = max(1, settings.buffer_size - FRAME_HEADER_SIZE)
        self._out_dir: Literal["up", "down"] = "up" if local_is_client else "down"
        self._in_dir: Literal["up", "down"] = "down" if local_is_client else "up"

    # ----------------------------------------------------------------- outcome

    def _abort(
        self, result: str, detail: str, *, code: LinkReason | int | None, tell_peer: bool
    ) -> None:
        if self._aborted:
            return
        self._aborted = True
        self.outcome.result = result
        self.outcome.code = code
        self.outcome.detail = detail
        if tell_peer and isinstance(code, LinkReason):
            self._send_error = Error(code=code, reason=safe_reason(detail))
        if self._scope is not None:
            self._scope.cancel()

    def _local_reset(self, exc: BaseException) -> None:
        code = LinkReason.CLIENT_RESET if self._local_is_client else LinkReason.BACKEND_RESET
        self._abort(reason_name(code), reset_detail(exc), code=code, tell_peer=True)

    def _link_lost(self, detail: str) -> None:
        self._abort("link-lost", detail, code=None, tell_peer=False)

    def release_idle_buffers(self, quiet_since: float) -> bool:
        """Give back what a burst grew the link's TLS buffers to, if the tunnel went quiet.

        Does something only when no byte has moved since ``quiet_since`` (trio clock) and
        nothing has moved since the last release, so calling it on every tunnel now and
        then costs a busy or already released tunnel one comparison.

        Returns:
            True when buffers were released.
        """
        last = self._last_activity
        if last > quiet_since or last == self._released_at:
            return False
        self._released_at = last
        return self._channel.stream.release_idle_buffers()

    def _count(self, direction: Literal["up", "down"], n: int) -> None:
        self._last_activity = trio.current_time()
        if direction == "up":
            self.outcome.bytes_up += n
        else:
            self.outcome.bytes_down += n
        if self._on_bytes is not None:
            self._on_bytes(direction, n)

    def _check_done(self) -> None:
        if self._eof_sent and self._eof_delivered and self._scope is not None:
            self._scope.cancel()

    # ----------------------------------------------------------------- run

    async def run(self) -> TunnelOutcome:
        """Run the tunnel to its end; never raises for tunnel failures.

        Returns:
            How it ended (:attr:`outcome`).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                self._started = trio.current_time()
                nursery.start_soon(self._pump_out)
                s = self._settings
                # One timer task for every deadline, and none at all in an idle tunnel that
                # only has the half-close drain (the default): it starts at the first EOF.
                # A waiting task costs a few KiB, and a gateway may hold 10,000 tunnels.
                if s.idle > 0 or s.max_lifetime > 0:
                    self._start_watchdog()
                if self.attestation is not None:
                    if self._deadlines is None:
                        self._deadlines = Deadlines()
                        nursery.start_soon(self._deadlines.run)
                    self._schedule_reattest()
                # The frames from the peer are read in this task (the nursery's cancel scope
                # covers it as it covers the children): one task fewer per idle tunnel.
                try:
                    await self._pump_in(nursery)
                finally:
                    if self._reattest_due is not None:
                        self._reattest_due.cancel()
        finally:
            # The owner closes the local stream itself: stop watching its socket first.
            if isinstance(self._local_io, DirectSocketStream):
                self._local_io.release()
        if self._send_error is not None and self._channel.conn.state in (
            LinkState.OPEN,
            LinkState.ERROR,
        ):
            with trio.move_on_after(_ERROR_SEND_GRACE) as scope:
                scope.shield = True
                with contextlib.suppress(*_SEND_ERRORS, trio.BusyResourceError):
                    await self._channel.send(self._send_error)
        return self.outcome

    def _resume_pump_out(self) -> None:
        """The local socket became readable while ``_pump_out`` had no task: start one."""
        scope, nursery = self._scope, self._nursery
        if scope is None or nursery is None or scope.cancel_called:
            return
        # A closed nursery means the tunnel is over anyway.
        with contextlib.suppress(RuntimeError):
            nursery.start_soon(self._pump_out)

    async def _pump_out(self) -> None:
        if self._initial:
            data, self._initial = self._initial, b""
            if not await self._send_data(data):
                return
        local_io = self._local_io
        direct = local_io if isinstance(local_io, DirectSocketStream) else None
        # A UDP flow: whatever datagrams are waiting go in one write, a frame each.
        batching = local_io if isinstance(local_io, DatagramSource) else None
        while True:
            try:
                if batching is not None:
                    batch = await batching.receive_batch(self._read_size)
                    if batch:
                        if not await self._send_batch(batch):
                            return
                        continue
                    data = b""
                elif direct is not None:
                    # An idle direction keeps no task (a parked task with its frames is
                    # a few KiB, times 10,000 tunnels): when the socket has nothing, the
                    # poller starts this method again once it has.
                    frame = _FRAME_BUFFERS.take(self._settings.buffer_size)
                    try:
                        with memoryview(frame) as view:
                            count = direct.receive_into_nowait(view[FRAME_HEADER_SIZE:])
                        if count:
                            if not await self._send_frame(frame, count):
                                return
                            continue
                    finally:
                        _FRAME_BUFFERS.give(frame)
                    if count is None:
                        if direct.call_when_readable(self._resume_pump_out):
                            return
                        direct = None  # no poller here: wait in this task
                        continue
                    data = b""
                else:
                    data = bytes(await local_io.receive_some(self._read_size))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._local_reset(exc)
                return
            if not data:
                if not self._eof_delivered and _reset_not_closed(self._local):
                    self._local_reset(ConnectionResetError("reset by peer (read as end of file)"))
                    return
                break
            if not await self._send_data(data):
                return
        try:
            await self._channel.send(Eof())
        except _SEND_ERRORS as exc:
            self._link_lost(f"sending EOF: {type(exc).__name__}")
            return
        self._eof_sent = True
        self._note_half_close()
        self._check_done()

    async def _send_batch(self, batch: list[bytes]) -> bool:
        try:
            await self._channel.send_many([Data(data=datagram) for datagram in batch])
        except _SEND_ERRORS as exc:
            self._link_lost(f"sending: {type(exc).__name__}")
            return False
        self._count(self._out_dir, sum(map(len, batch)))
        return True

    async def _send_frame(self, frame: bytearray, length: int) -> bool:
        try:
            await self._channel.send_data_in_place(frame, length)
        except _SEND_ERRORS as exc:
            self._link_lost(f"sending: {type(exc).__name__}")
            return False
        self._count(self._out_dir, length)
        return True

    async def _send_data(self, data: bytes) -> bool:
        try:
            await self._channel.send(Data(data=data))
        except _SEND_ERRORS as exc:
            self._link_lost(f"sending: {type(exc).__name__}")
            return False
        self._count(self._out_dir, len(data))
        return True

    async def _pump_in(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                event = await self._channel.receive()
            except RemoteProtocolError as exc:
                self._abort(
                    "protocol-error", str(exc), code=LinkReason.PROTOCOL_ERROR, tell_peer=True
                )
                return
            if isinstance(event, Data):
                try:
                    await self._local_io.send_all(event.data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._local_reset(exc)
                    return
                self._count(self._in_dir, len(event.data))
            elif isinstance(event, Eof):
                try:
                    if isinstance(self._local, trio.abc.HalfCloseableStream):
                        await self._local.send_eof()
                    else:
                        await self._local.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._local_reset(exc)
                    return
                self._eof_delivered = True
                self._note_half_close()
                self._check_done()
                # Keep reading: while we still send, the peer may re-attest us, answer
                # our re-attestation, or report (ERROR) that it could not deliver our bytes.
                continue
            elif isinstance(event, Error):
                label = f"peer-{reason_name(event.code)}"
                self._abort(label, event.reason, code=event.code, tell_peer=False)
                return
            elif isinstance(event, Reattest):
                nursery.start_soon(self._answer_reattest, event.nonce)
            elif isinstance(event, EvidenceFrame):
                waiter = self._evidence
                if waiter is not None:
                    waiter[2].append(event)
                    waiter[1].set()
            elif isinstance(event, Ready):
                # The egress delivered everything and keeps the link (version 3); this
                # tunnel is complete (READY comes only after EOF both ways), and whoever
                # keeps the link learns of the READY from the link machine.
                self._check_done()
                return
            elif isinstance(event, LinkClosed):
                if self._eof_delivered and self._channel.conn.state is LinkState.DONE:
                    # The peer closed after both EOFs, so ours reached it, even if our
                    # pump has not yet resumed from sending it: the tunnel is complete.
                    self._eof_sent = True
                    self._check_done()
                    return
                self._link_lost("the link stream ended before EOF in both directions")
                return
            else:  # OPEN/OPENED/REFUSED: the link machine already refused them here
                self._abort(
                    "protocol-error",
                    f"unexpected {type(event).__name__}",
                    code=LinkReason.PROTOCOL_ERROR,
                    tell_peer=True,
                )
                return

    # ----------------------------------------------------------------- timers

    def _note_half_close(self) -> None:
        self._half_closed = True
        if self._half_closed_event is not None:
            self._half_closed_event.set()
        if self._settings.half_close > 0:
            self._start_watchdog()

    def _start_watchdog(self) -> None:
        if not self._watchdog_running and self._nursery is not None:
            self._watchdog_running = True
            self._nursery.start_soon(self._watchdog)

    async def _watchdog(self) -> None:
        """Abort the tunnel at its first deadline: lifetime, idle, half-close silence."""
        s = self._settings
        while True:
            deadlines: list[tuple[float, str, str, LinkReason]] = []
            if s.max_lifetime > 0:
                deadlines.append(
                    (
                        self._started + s.max_lifetime,
                        "lifetime-exceeded",
                        f"tunnel older than {s.max_lifetime:g} s",
                        LinkReason.LIFETIME_EXCEEDED,
                    )
                )
            if s.idle > 0:
                deadlines.append(
                    (
                        self._last_activity + s.idle,
                        "idle-timeout",
                        f"idle for {s.idle:g} s",
                        LinkReason.IDLE_TIMEOUT,
                    )
                )
            if s.half_close > 0 and self._half_closed:
                deadlines.append(
                    (
                        self._last_activity + s.half_close,
                        "idle-timeout",
                        f"half-closed and silent for {s.half_close:g} s",
                        LinkReason.IDLE_TIMEOUT,
                    )
                )
            if not deadlines:  # pragma: no cover - only started with a deadline to watch
                return
            deadline, result, why, code = min(deadlines)
            if trio.current_time() >= deadline:
                self._abort(result, why, code=code, tell_peer=True)
                return
            if self._half_closed or s.half_close <= 0:
                await trio.sleep_until(deadline)
            else:
                if self._half_closed_event is None:
                    self._half_closed_event = trio.Event()
                with trio.move_on_at(deadline):
                    await self._half_closed_event.wait()

    def request_reattest(self, config: AttestationConfig | None = None) -> None:
        """Re-attest the peer now, optionally under a new configuration (policy reload).

        If the peer's fresh evidence fails, the tunnel is aborted with
        ``attestation-failed``.  Does nothing for a tunnel without attestation.

        Args:
            config: the new attester/verifier for this tunnel, or None to keep its own.
        """
        if self.attestation is None:
            return
        if config is not None:
            self.attestation.config = config
        self._start_reattest()

    async def _call(self, in_thread: bool, fn: Callable[[], _T]) -> _T:
        if in_thread:
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
        await trio.lowlevel.checkpoint()
        return fn()

    def _schedule_reattest(self) -> None:
        """Put the next re-attestation on the shared timer (none if it is off)."""
        att, interval = self.attestation, self._settings.reattest_interval
        if att is None or interval <= 0 or self._deadlines is None:
            return
        if self._reattest_due is not None:
            self._reattest_due.cancel()
        self._reattest_due = self._deadlines.call_at(
            att.verified_at + interval, self._start_reattest
        )

    def _start_reattest(self) -> None:
        """Begin a re-attestation round now (one at a time; a request during one repeats it).

        Runs in the timer's task or in whoever asked: it only starts a task.
        """
        if self._reattest_running:
            self._reattest_again = True
            return
        if self._reattest_due is not None:
            self._reattest_due.cancel()
            self._reattest_due = None
        if self._nursery is None:  # not running yet
            return
        try:
            self._nursery.start_soon(self._reattest_round)
        except RuntimeError:  # the tunnel is over (its nursery is closed)
            return
        self._reattest_running = True

    async def _reattest_round(self) -> None:
        try:
            passed = await self._reattest_once()
        finally:
            self._reattest_running = False
        if self._aborted:
            return
        if self._reattest_again:  # asked for (a policy reload) while this round ran
            self._reattest_again = False
            self._start_reattest()
        elif passed:
            self._schedule_reattest()

    async def _reattest_once(self) -> bool:
        """One challenge and verification.

        Returns:
            True when the peer passed; False when the tunnel was aborted or this side
            has no verifier (then nothing is scheduled until a reload asks again).
        """
        att = self.attestation
        if att is None:  # only started with it
            return False
        verifier = att.config.verifier
        if verifier is None:
            # We do not judge this peer (one-way): nothing to ask until a policy reload
            # gives us a verifier (request_reattest), so nothing is scheduled.
            return False
        s = self._settings
        nonce = secrets.token_bytes(32)
        event = trio.Event()
        box: list[EvidenceFrame] = []
        self._evidence = (nonce, event, box)
        started = trio.current_time()
        try:
            await self._channel.send(Reattest(nonce=nonce))
        except _SEND_ERRORS as exc:
            self._link_lost(f"sending REATTEST: {type(exc).__name__}")
            return False
        with trio.move_on_after(s.reattest_timeout):
            await event.wait()
        self._evidence = None
        if not box:
            self._reattest_failed(started, f"no fresh evidence within {s.reattest_timeout:g} s")
            return False
        frame = box[0]
        binder = reattest_binder(self._channel.stream, att.peer_certificate, nonce)
        try:
            check_media_type(att.config, frame.media_type)
            result = await self._call(
                att.config.verifier_in_thread, partial(verifier.verify, frame.evidence, binder)
            )
        except RatlsError as exc:
            self._reattest_failed(started, refusal_text(exc))
            return False
        att.peer_result = result
        att.verified_at = trio.current_time()
        self.outcome.reattestations += 1
        if self._on_reattest is not None:
            self._on_reattest(True, att.verified_at - started)
        return True

    def _reattest_failed(self, started: float, detail: str) -> None:
        if self._on_reattest is not None:
            self._on_reattest(False, trio.current_time() - started)
        self._abort(
            "attestation-failed",
            f"re-attestation: {detail}",
            code=LinkReason.ATTESTATION_FAILED,
            tell_peer=True,
        )

    async def _answer_reattest(self, nonce: bytes) -> None:
        att = self.attestation
        if att is None or att.config.attester is None:
            self._abort(
                "attestation-failed",
                "asked to re-attest without an attester",
                code=LinkReason.ATTESTATION_FAILED,
                tell_peer=True,
            )
            return
        attester = att.config.attester
        if self._last_answer is not None:
            await trio.sleep_until(self._last_answer + MIN_REATTEST_ANSWER_INTERVAL)
        self._last_answer = trio.current_time()
        binder = reattest_binder(self._channel.stream, att.own_certificate, nonce)
        try:
            evidence = await self._call(
                att.config.run_in_thread, partial(attester.evidence, binder)
            )
        except RatlsError as exc:
            self._abort(
                "attestation-failed",
                f"could not produce fresh evidence: {refusal_text(exc)}",
                code=LinkReason.ATTESTATION_FAILED,
                tell_peer=True,
            )
            return
        try:
            await self._channel.send(
                EvidenceFrame(nonce=nonce, media_type=att.config.media_type, evidence=evidence)
            )
        except _SEND_ERRORS as exc:
            self._link_lost(f"sending EVIDENCE: {type(exc).__name__}")
