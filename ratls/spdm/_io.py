"""SPDM over sockets: the spdm-emu framing and plain DSP0287 TCP, for trio and blocking code.

What and why
------------
The state machines speak transport messages (an MCTP or DSP0287 payload).  This module
puts them on a TCP connection in one of two ways:

* **spdm-emu framing**, so DMTF's ``spdm_responder_emu`` / ``spdm_requester_emu`` can be
  the other end: every frame is ``Command(u32 BE) | TransportType(u32 BE) |
  PayloadSize(u32 BE) | payload``.  Commands: NORMAL carries one transport message, TEST
  is the hello (``"Client Hello!\\0"`` answered by ``"Server Hello!\\0"``, skipped for
  NONE), SHUTDOWN ends the responder, CONTINUE closes the connection and the responder
  accepts the next one; a responder answers an unknown command with UNKNOWN.  Transport
  types: NONE (a bare SPDM message, no sessions), MCTP, TCP (DSP0287 frames inside the
  emu frame).  A frame of another transport type drops the link, as the emulator does.
* **plain TCP** (DSP0287 as libspdm writes it): binding frames back to back on the
  stream, no emu header, no commands; the connection's end ends the conversation.

The NONE transport reuses the MCTP binding inside the machines and strips (adds) the
0x05 type byte at the socket, so the machines need no third binding; a secured record
cannot travel on it.

:class:`SpdmFramer` is the sans-I/O core; :class:`TrioSpdmChannel` and
:class:`BlockingSpdmChannel` only read, feed and write.  Both set TCP_NODELAY: SPDM is
strict request/response, and with Nagle's algorithm and delayed ACKs each round trip
would cost tens of milliseconds.  :func:`serve_spdm_responder` serves one connection at a
time (like the emulator) until SHUTDOWN.

A peer that closes the connection or resets it mid-exchange is reported as
:class:`ratls.RemoteProtocolError`, so callers see one error family.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import trio

from ratls._errors import LocalProtocolError, RemoteProtocolError

from ._responder import ApplicationData, Responder
from ._state import NeedData
from ._transport import (
    EmuCommand,
    EmuFrame,
    EmuStreamDecoder,
    EmuTransportType,
    MctpBinding,
    TcpBinding,
    TcpStreamDecoder,
    TransportBinding,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "APPLICATION_MESSAGE_TYPE",
    "CLIENT_HELLO",
    "DEFAULT_PORT",
    "SERVER_HELLO",
    "AppHandler",
    "BlockingSpdmChannel",
    "Frame",
    "SpdmFramer",
    "TransportKind",
    "TrioSpdmChannel",
    "connect_spdm_channel",
    "open_spdm_channel",
    "serve_spdm_responder",
    "unwrap_application_payload",
    "wrap_application_payload",
]

#: spdm-emu's default port for the MCTP, PCI-DOE and NONE transports (the CLI's default).
DEFAULT_PORT: Final = 2323
#: The requester's TEST payload.
CLIENT_HELLO: Final = b"Client Hello!\x00"
#: The responder's TEST answer.
SERVER_HELLO: Final = b"Server Hello!\x00"
#: Message type of application data inside a session record (MCTP message type byte, or
#: DSP0287 MessageType).  Neither binding assigns it to SPDM, so a record is application
#: data exactly when its ApplicationData is not an SPDM message; the value is ratls's
#: own choice, not interoperable with the emulator's application messages.
APPLICATION_MESSAGE_TYPE: Final = 0x7F
#: How many bytes one receive call asks the socket for.
_RECEIVE_SIZE: Final = 65536
_TCP_BINDING_VERSION: Final = 0x01


class TransportKind(enum.Enum):
    """How SPDM travels on the socket."""

    NONE = "none"  #: spdm-emu framing, transport type NONE (bare SPDM, no sessions)
    MCTP = "mctp"  #: spdm-emu framing, transport type MCTP
    TCP = "tcp"  #: spdm-emu framing, transport type TCP (DSP0287 frames inside)
    PLAIN_TCP = "plain-tcp"  #: DSP0287 frames directly on the stream

    @property
    def binding(self) -> TransportBinding:
        """The binding the state machines use."""
        if self in (TransportKind.TCP, TransportKind.PLAIN_TCP):
            return TcpBinding()
        return MctpBinding()

    @property
    def emu_transport_type(self) -> EmuTransportType | None:
        """The spdm-emu TransportType, or None for plain TCP."""
        return {
            TransportKind.NONE: EmuTransportType.NONE,
            TransportKind.MCTP: EmuTransportType.MCTP,
            TransportKind.TCP: EmuTransportType.TCP,
        }.get(self)

    @property
    def supports_sessions(self) -> bool:
        """False for NONE, whose messages cannot say which session they belong to."""
        return self is not TransportKind.NONE


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One frame read from the socket.

    Attributes:
        command: the spdm-emu command (NORMAL for plain TCP); unknown values stay ints.
        payload: for NORMAL, one transport message as the machines expect it; otherwise
            the command's payload.
    """

    command: int
    payload: bytes


@final
class SpdmFramer:
    """Sans-I/O framing of one connection (see the module docstring).

    Args:
        kind: the transport.
    """

    __slots__ = ("_emu", "_kind", "_plain")

    def __init__(self, kind: TransportKind) -> None:
        self._kind = kind
        self._emu = EmuStreamDecoder() if kind is not TransportKind.PLAIN_TCP else None
        self._plain = TcpStreamDecoder() if kind is TransportKind.PLAIN_TCP else None

    @property
    def kind(self) -> TransportKind:
        """The transport."""
        return self._kind

    def encode(self, command: int, payload: bytes = b"") -> bytes:
        """Frame a command (NORMAL: one transport message from a machine).

        Raises:
            LocalProtocolError: a command other than NORMAL on plain TCP, or a secured
                record on the NONE transport.
        """
        emu_type = self._kind.emu_transport_type
        if emu_type is None:
            if command != EmuCommand.NORMAL:
                raise LocalProtocolError(f"plain TCP carries no command {command:#x}")
            return bytes(payload)
        if self._kind is TransportKind.NONE and command == EmuCommand.NORMAL:
            if not payload or payload[0] != 0x05:
                raise LocalProtocolError("the NONE transport cannot carry secured messages")
            payload = payload[1:]
        header = EmuFrame(command=command, transport_type=emu_type, payload_size=len(payload))
        return header.encode() + bytes(payload)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket."""
        if self._plain is not None:
            self._plain.receive_data(data)
        else:
            assert self._emu is not None  # noqa: S101 - one of the two exists
            self._emu.receive_data(data)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: a frame of another transport type, or too large.
        """
        if self._plain is not None:
            message = self._plain.next_frame()
            return None if message is None else Frame(command=EmuCommand.NORMAL, payload=message)
        assert self._emu is not None  # noqa: S101 - one of the two exists
        got = self._emu.next_frame()
        if got is None:
            return None
        header, payload = got
        if header.transport_type != self._kind.emu_transport_type:
            raise RemoteProtocolError(
                f"spdm-emu TransportType {header.transport_type} on a {self._kind.value} connection"
            )
        if self._kind is TransportKind.NONE and header.command == EmuCommand.NORMAL:
            payload = b"\x05" + payload
        return Frame(command=header.command, payload=payload)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame."""
        if self._plain is not None:
            return self._plain.buffered
        assert self._emu is not None  # noqa: S101 - one of the two exists
        return self._emu.buffered


def wrap_application_payload(binding: TransportBinding, data: bytes) -> bytes:
    """The ApplicationData of a record carrying application bytes (type 0x7F)."""
    if isinstance(binding, TcpBinding):
        if len(data) + 2 > 0xFFFF:
            raise LocalProtocolError("application message too large for the TCP binding")
        header = struct.pack("<HBB", len(data) + 2, _TCP_BINDING_VERSION, APPLICATION_MESSAGE_TYPE)
        return header + bytes(data)
    return bytes((APPLICATION_MESSAGE_TYPE,)) + bytes(data)


def unwrap_application_payload(binding: TransportBinding, inner: bytes) -> bytes:
    """Undo :func:`wrap_application_payload`.

    Raises:
        RemoteProtocolError: the ApplicationData is not a type-0x7F application message.
    """
    if isinstance(binding, TcpBinding):
        if len(inner) < 4:
            raise RemoteProtocolError("application record shorter than the TCP header")
        length, version, kind = struct.unpack_from("<HBB", inner)
        if (length, version, kind) != (len(inner) - 2, _TCP_BINDING_VERSION, 0x7F):
            raise RemoteProtocolError("application record with a wrong TCP binding header")
        return bytes(inner[4:])
    if not inner or inner[0] != APPLICATION_MESSAGE_TYPE:
        raise RemoteProtocolError("application record with an unknown message type")
    return bytes(inner[1:])


def _closed(where: str, exc: BaseException | None = None) -> RemoteProtocolError:
    if isinstance(exc, TimeoutError):
        return RemoteProtocolError(f"the peer did not answer in time ({where})")
    detail = f": {exc}" if exc is not None else ""
    return RemoteProtocolError(f"the peer closed the connection {where}".rstrip() + detail)


# --------------------------------------------------------------------------- trio


@final
class TrioSpdmChannel:
    """One SPDM connection over a trio stream.

    Args:
        stream: a connected stream (usually a :class:`trio.SocketStream`).
        kind: the transport.

    Cancellation: a cancelled receive may leave part of a frame buffered; the channel
    is then unusable for a conversation and should be closed.
    """

    def __init__(self, stream: trio.abc.Stream, kind: TransportKind) -> None:
        self._stream = stream
        self._framer = SpdmFramer(kind)

    @property
    def kind(self) -> TransportKind:
        """The transport."""
        return self._framer.kind

    async def send_frame(self, command: int, payload: bytes = b"") -> None:
        """Write one frame.

        Raises:
            RemoteProtocolError: the connection is gone.
        """
        data = self._framer.encode(command, payload)
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _closed("while sending", exc) from exc

    async def receive_frame(self) -> Frame:
        """Read one frame.

        Raises:
            RemoteProtocolError: the peer closed the connection, or sent a bad frame.
        """
        while True:
            frame = self._framer.next_frame()
            if frame is not None:
                return frame
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _closed("while receiving", exc) from exc
            if not data:
                raise _closed("before a whole frame arrived" if self._framer.buffered else "")
            self._framer.receive_data(bytes(data))

    async def exchange(self, message: bytes) -> bytes:
        """Send one transport message (NORMAL) and return the one that answers it.

        Raises:
            RemoteProtocolError: the connection ended, or the answer was not NORMAL.
        """
        await self.send_frame(EmuCommand.NORMAL, message)
        return await self.receive_message()

    async def receive_message(self) -> bytes:
        """Read one NORMAL frame's transport message.

        Raises:
            RemoteProtocolError: the connection ended, or another command arrived.
        """
        frame = await self.receive_frame()
        if frame.command != EmuCommand.NORMAL:
            raise RemoteProtocolError(f"expected NORMAL, got command {frame.command:#x}")
        return frame.payload

    async def hello(self) -> None:
        """The spdm-emu TEST exchange (nothing for NONE and plain TCP).

        Raises:
            RemoteProtocolError: the responder did not answer with its hello.
        """
        if self.kind in (TransportKind.NONE, TransportKind.PLAIN_TCP):
            return
        await self.send_frame(EmuCommand.TEST, CLIENT_HELLO)
        _check_hello(await self.receive_frame())

    async def finish(self, command: EmuCommand = EmuCommand.SHUTDOWN) -> None:
        """Send SHUTDOWN or CONTINUE and wait for the echo (nothing for plain TCP).

        Raises:
            RemoteProtocolError: the responder did not echo the command.
        """
        if self.kind is TransportKind.PLAIN_TCP:
            return
        await self.send_frame(command)
        _check_echo(await self.receive_frame(), command)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._stream.aclose()


def _check_hello(frame: Frame) -> None:
    if frame.command != EmuCommand.TEST or frame.payload != SERVER_HELLO:
        raise RemoteProtocolError(
            f"expected the TEST hello, got command {frame.command:#x} {frame.payload!r}"
        )


def _check_echo(frame: Frame, command: EmuCommand) -> None:
    if frame.command != command:
        raise RemoteProtocolError(f"expected {command.name} echoed, got command {frame.command:#x}")


async def open_spdm_channel(host: str, port: int, kind: TransportKind) -> TrioSpdmChannel:
    """Connect to an SPDM responder (TCP_NODELAY on) and do the hello.

    Raises:
        RemoteProtocolError: the connection failed or the hello was wrong.
    """
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise RemoteProtocolError(f"cannot connect to {host} port {port}: {exc}") from exc
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    channel = TrioSpdmChannel(stream, kind)
    try:
        await channel.hello()
    except BaseException:
        await stream.aclose()
        raise
    return channel


# --------------------------------------------------------------------------- blocking


@final
class BlockingSpdmChannel:
    """One SPDM connection over a blocking socket (same methods as the trio channel).

    Args:
        sock: a connected socket.
        kind: the transport.
    """

    def __init__(self, sock: socket.socket, kind: TransportKind) -> None:
        self._sock = sock
        self._framer = SpdmFramer(kind)

    @property
    def kind(self) -> TransportKind:
        """The transport."""
        return self._framer.kind

    def send_frame(self, command: int, payload: bytes = b"") -> None:
        """Write one frame.

        Raises:
            RemoteProtocolError: the connection is gone.
        """
        data = self._framer.encode(command, payload)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise _closed("while sending", exc) from exc

    def receive_frame(self) -> Frame:
        """Read one frame.

        Raises:
            RemoteProtocolError: the peer closed the connection, or sent a bad frame.
        """
        while True:
            frame = self._framer.next_frame()
            if frame is not None:
                return frame
            try:
                data = self._sock.recv(_RECEIVE_SIZE)
            except OSError as exc:
                raise _closed("while receiving", exc) from exc
            if not data:
                raise _closed("before a whole frame arrived" if self._framer.buffered else "")
            self._framer.receive_data(data)

    def exchange(self, message: bytes) -> bytes:
        """Send one transport message (NORMAL) and return the one that answers it."""
        self.send_frame(EmuCommand.NORMAL, message)
        return self.receive_message()

    def receive_message(self) -> bytes:
        """Read one NORMAL frame's transport message.

        Raises:
            RemoteProtocolError: the connection ended, or another command arrived.
        """
        frame = self.receive_frame()
        if frame.command != EmuCommand.NORMAL:
            raise RemoteProtocolError(f"expected NORMAL, got command {frame.command:#x}")
        return frame.payload

    def hello(self) -> None:
        """The spdm-emu TEST exchange (nothing for NONE and plain TCP)."""
        if self.kind in (TransportKind.NONE, TransportKind.PLAIN_TCP):
            return
        self.send_frame(EmuCommand.TEST, CLIENT_HELLO)
        _check_hello(self.receive_frame())

    def finish(self, command: EmuCommand = EmuCommand.SHUTDOWN) -> None:
        """Send SHUTDOWN or CONTINUE and wait for the echo (nothing for plain TCP)."""
        if self.kind is TransportKind.PLAIN_TCP:
            return
        self.send_frame(command)
        _check_echo(self.receive_frame(), command)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def connect_spdm_channel(
    host: str, port: int, kind: TransportKind, *, timeout: float | None = None
) -> BlockingSpdmChannel:
    """Connect to an SPDM responder with a blocking socket (TCP_NODELAY on), do the hello.

    Args:
        host: the responder's address.
        port: its port.
        kind: the transport.
        timeout: socket timeout in seconds for every operation (None: block).

    Raises:
        RemoteProtocolError: the connection failed or the hello was wrong.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RemoteProtocolError(f"cannot connect to {host} port {port}: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    channel = BlockingSpdmChannel(sock, kind)
    try:
        channel.hello()
    except BaseException:
        sock.close()
        raise
    return channel


# --------------------------------------------------------------------------- responder

#: Answers one application message of a session (None: no answer).
AppHandler = Callable[[bytes], bytes | None]


def _echo(data: bytes) -> bytes:
    return data


async def _serve_connection(
    stream: trio.SocketStream,
    responder: Responder,
    kind: TransportKind,
    app_handler: AppHandler,
    on_event: Callable[[object], None] | None,
) -> bool:
    """Serve one connection; True when the requester asked for SHUTDOWN."""
    channel = TrioSpdmChannel(stream, kind)
    binding = kind.binding
    while True:
        try:
            frame = await channel.receive_frame()
        except RemoteProtocolError:
            return False  # the requester left (or broke the framing): next connection
        if frame.command == EmuCommand.TEST:
            await channel.send_frame(EmuCommand.TEST, SERVER_HELLO)
        elif frame.command == EmuCommand.SHUTDOWN:
            await channel.send_frame(EmuCommand.SHUTDOWN)
            return True
        elif frame.command == EmuCommand.CONTINUE:
            await channel.send_frame(EmuCommand.CONTINUE)
            return False
        elif frame.command != EmuCommand.NORMAL:
            await channel.send_frame(EmuCommand.UNKNOWN)
        else:
            responder.receive_data(frame.payload)
            for event in _events(responder):
                if on_event is not None:
                    on_event(event)
                if isinstance(event, ApplicationData):
                    try:
                        payload = unwrap_application_payload(binding, event.data)
                    except RemoteProtocolError:
                        continue
                    reply = app_handler(payload)
                    if reply is not None:
                        message = responder.send_application_data(
                            wrap_application_payload(binding, reply)
                        )
                        await channel.send_frame(EmuCommand.NORMAL, message)
            while answer := responder.data_to_send():
                try:
                    await channel.send_frame(EmuCommand.NORMAL, answer)
                except LocalProtocolError:
                    return False  # a record on NONE cannot happen; drop the link


def _events(responder: Responder) -> Sequence[object]:
    events: list[object] = []
    while not isinstance(event := responder.next_event(), NeedData):
        events.append(event)
    return events


async def serve_spdm_responder(
    make_responder: Callable[[], Responder],
    *,
    kind: TransportKind = TransportKind.MCTP,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    app_handler: AppHandler = _echo,
    on_event: Callable[[object], None] | None = None,
    on_connection: Callable[[tuple[str, int]], Awaitable[None] | None] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve SPDM requesters one connection at a time, until one sends SHUTDOWN.

    Each connection gets a fresh responder machine from ``make_responder`` (the identity
    and its key stay the same).  CONTINUE, a closed connection or broken framing move on
    to the next connection; plain TCP has no SHUTDOWN, so it serves until cancelled.

    Args:
        make_responder: builds the machine for a new connection.
        kind: the transport (and binding: ``make_responder`` must use ``kind.binding``).
        host: the address to listen on (loopback by default).
        port: the port (0 picks a free one, reported through ``task_status``).
        app_handler: answers application data in sessions (echo by default).
        on_event: called with every event of the responder machines (for logs).
        on_connection: called with the peer address of each accepted connection.
        task_status: receives the bound port.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    listener = listeners[0]
    try:
        bound = listener.socket.getsockname()[1]
        task_status.started(bound)
        while True:
            stream = await listener.accept()
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            async with stream:
                if on_connection is not None:
                    done = on_connection(stream.socket.getpeername()[:2])
                    if done is not None:
                        await done
                if await _serve_connection(stream, make_responder(), kind, app_handler, on_event):
                    return
    finally:
        for item in listeners:
            await item.aclose()
