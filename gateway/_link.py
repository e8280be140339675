"""The gateway link protocol: what the ingress and egress say inside an attested stream.

An ingress gateway and an egress gateway talk over one :class:`~ratls._tls_stream.
AttestedTLSStream` per client connection.  By the time the first link byte moves, both
sides' evidence has been verified (that is the stream's job).  What the stream cannot
carry on its own is everything a TCP proxy needs beyond raw bytes: which backend to open,
whether the egress agreed and if not why, that one direction of the TCP connection is
finished while the other still flows (the TLS stream is a plain ``trio.abc.Stream``, not
a ``HalfCloseableStream``: TLS close_notify ends both directions at once), that the
tunnel was torn down abortively and why, and fresh evidence for long-lived tunnels.  So
the link protocol frames everything in-band.  This module is sans-I/O, in the h11 style:
:class:`LinkConnection` turns bytes into events and events into bytes, and touches no
socket, clock or attester.

Wire format, version 1.  Every frame is ::

    type:u8 | length:u32 (big-endian) | payload[length]

=========  ====  ==========================================================================
frame      type  payload
=========  ====  ==========================================================================
OPEN       0x01  version:u8 | kind:u8 | port:u16 | host_len:u8 | host | client_len:u8 |
                 client.  kind 1 = ADDRESS (host is a DNS name or an IP literal, port
                 1-65535), kind 2 = ROUTE (host is a route name, port 0).  client is the
                 client's address as text, for logs and PROXY headers.
OPENED     0x02  version:u8, the version the egress speaks on this tunnel.
REFUSED    0x03  code:u16 | reason (UTF-8, rest of payload).
DATA       0x10  1 or more bytes of the tunnelled TCP stream.
EOF        0x11  empty: the sender has no more DATA (TCP half-close, FIN).
ERROR      0x12  code:u16 | reason (UTF-8): the tunnel is aborted in both directions.
REATTEST   0x20  nonce[32]: "prove yourself again".
EVIDENCE   0x21  nonce[32] | media_len:u8 | media type | evidence.
=========  ====  ==========================================================================

Conversation::

    ingress -> egress   OPEN
    egress -> ingress   OPENED, or REFUSED (the tunnel ends)
    both ways           DATA* EOF      (each direction ends with its own EOF)
    either way          ERROR          (at any point; the tunnel ends)
    either way          REATTEST, answered by EVIDENCE (any time after OPENED)

The tunnel is finished once EOF was sent and received; the TLS stream is then closed
with close_notify.  A close_notify (or a transport failure) before that is an abortive
close.  REFUSED and ERROR share one code space (:class:`LinkReason`); unknown codes are
passed through as plain integers because they only inform.

Versioning.  The frame header and the REFUSED layout are the same in every version, and
OPEN starts with the version, so an egress can always parse the version of an OPEN it
does not speak and answer REFUSED(UNSUPPORTED_VERSION) naming the versions it speaks.

Re-attestation.  The side that wants fresh evidence sends REATTEST with a random nonce;
the other side answers EVIDENCE whose binder is ``SHA-256(SPKI of its certificate) ||
TLS-Exporter(REATTEST_EXPORTER_LABEL, context=nonce, 32)``: both ends compute it, it is
new for every nonce, and it is bound to this TLS connection, so it can be neither
replayed nor relayed.  One request per direction may be outstanding at a time.
Control frames (REATTEST, EVIDENCE, ERROR) may follow the sender's EOF.
"""

from __future__ import annotations

import enum
import hmac
import re
import struct
from dataclasses import dataclass
from typing import Final, final

from ratls._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DATAGRAM_LINK_VERSION",
    "FRAME_HEADER_SIZE",
    "LINK_VERSION",
    "MAX_FRAME_PAYLOAD",
    "MAX_REASON_BYTES",
    "NEED_DATA",
    "NONCE_LENGTH",
    "REATTEST_EXPORTER_LABEL",
    "REUSE_LINK_VERSION",
    "SUPPORTED_VERSIONS",
    "AddressTarget",
    "Data",
    "Eof",
    "Error",
    "EvidenceFrame",
    "FrameType",
    "LinkClosed",
    "LinkConnection",
    "LinkEvent",
    "LinkFrameTooLarge",
    "LinkReason",
    "LinkRole",
    "LinkState",
    "LinkTruncated",
    "MalformedLinkFrame",
    "Open",
    "Opened",
    "Ready",
    "Reattest",
    "Refused",
    "RouteTarget",
    "Target",
    "UnexpectedLinkFrame",
    "UnsupportedLinkVersion",
    "decode_frame",
    "encode_frame",
    "open_version",
    "reason_name",
    "safe_reason",
]

#: The link protocol version of stream (TCP) tunnels.
LINK_VERSION: Final = 1
#: The version that added datagram (UDP) tunnels: OPEN target kinds 3 and 4.  An ingress
#: sends it only for datagram targets, so an egress speaking version 1 alone still serves
#: every stream tunnel and refuses datagram ones plainly (unsupported-version).
DATAGRAM_LINK_VERSION: Final = 2
#: The version that added link reuse: after a clean tunnel (EOF both ways) the egress
#: sends READY, and the link may carry another OPEN.  An ingress sends it only when told
#: to reuse links (``[prewarm] reuse``), so egresses speaking older versions only are
#: unaffected otherwise.
REUSE_LINK_VERSION: Final = 3
#: Every version this module can speak (an egress refuses others in its REFUSED reason).
SUPPORTED_VERSIONS: Final = frozenset({LINK_VERSION, DATAGRAM_LINK_VERSION, REUSE_LINK_VERSION})

#: Length of a REATTEST nonce: as long as the exporter value it feeds.
NONCE_LENGTH: Final = 32

#: Exporter label for re-attestation binders (RFC 8446 7.5; the nonce is the context).
REATTEST_EXPORTER_LABEL: Final = b"EXPORTER-ratls-gateway-reattest"

# Largest payload accepted in any frame.  EVIDENCE is the big one: the attestation
# exchange accepts evidence up to 256 KiB (MAX_EXCHANGE_MESSAGE_SIZE), and fresh evidence
# must fit as well as the first.  Anything larger is refused before it is buffered, which
# bounds the memory one peer can make us hold to this plus one header.
MAX_FRAME_PAYLOAD: Final = 256 * 1024 + 512

#: Longest reason text (bytes of UTF-8) in REFUSED and ERROR: a log line, not a document.
MAX_REASON_BYTES: Final = 1024

_HEADER: Final = struct.Struct(">BI")
#: Bytes in front of every frame's payload: its type (1) and payload length (4, big-endian).
FRAME_HEADER_SIZE: Final = _HEADER.size
_U16: Final = struct.Struct(">H")
_OPEN_FIXED: Final = struct.Struct(">BBH")

# A route name: what an operator writes in the config (letters, digits, ".", "_", "-").
_ROUTE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A host: a DNS name or an IP literal (IPv6 without brackets); printable ASCII, no space.
_HOST: Final = re.compile(r"[!-~]{1,255}")


class FrameType(enum.IntEnum):
    """Link frame types (the first byte of every frame)."""

    #: Ingress asks the egress to open a target.
    OPEN = 0x01
    #: The egress opened the target; DATA may flow.
    OPENED = 0x02
    #: The egress refused; the tunnel ends.
    REFUSED = 0x03
    #: Tunnelled TCP bytes.
    DATA = 0x10
    #: End of the sender's direction (TCP FIN).
    EOF = 0x11
    #: Abortive end of the tunnel, with a reason.
    ERROR = 0x12
    #: Request for fresh evidence.
    REATTEST = 0x20
    #: Fresh evidence answering a REATTEST.
    EVIDENCE = 0x21
    #: The egress delivered a finished tunnel; the link may carry another OPEN (v3).
    READY = 0x30


class LinkReason(enum.IntEnum):
    """Reason codes carried by REFUSED and ERROR (unknown codes stay plain ints)."""

    #: The target matches no allowlist entry or route.
    NOT_ALLOWED = 1
    #: The named route does not exist.
    UNKNOWN_ROUTE = 2
    #: The backend actively refused the connection.
    BACKEND_REFUSED = 3
    #: The backend did not answer within the connect timeout.
    BACKEND_TIMEOUT = 4
    #: The backend's name did not resolve, or its network is unreachable.
    BACKEND_UNREACHABLE = 5
    #: Attestation (initial or renewed) failed.
    ATTESTATION_FAILED = 6
    #: A limit (concurrent tunnels, rate) was reached.
    LIMIT_REACHED = 7
    #: The OPEN used a link protocol version this side does not speak.
    UNSUPPORTED_VERSION = 8
    #: The peer broke the link protocol.
    PROTOCOL_ERROR = 9
    #: The gateway is shutting down.
    SHUTTING_DOWN = 10
    #: Something unexpected failed inside the gateway.
    INTERNAL_ERROR = 11
    #: The backend reset the connection mid-stream.
    BACKEND_RESET = 12
    #: The client reset the connection mid-stream.
    CLIENT_RESET = 13
    #: No byte moved for the idle timeout (or the half-close drain timeout).
    IDLE_TIMEOUT = 14
    #: The tunnel reached its maximum lifetime.
    LIFETIME_EXCEEDED = 15

    @classmethod
    def from_int(cls, value: int) -> LinkReason | int:
        """The member for ``value``, or ``value`` itself when unknown (informational)."""
        try:
            return cls(value)
        except ValueError:
            return value


def reason_name(code: LinkReason | int) -> str:
    """A stable, log-friendly name for a reason code: ``"not-allowed"`` or ``"code-99"``."""
    if isinstance(code, LinkReason):
        return code.name.lower().replace("_", "-")
    return f"code-{code}"


# --------------------------------------------------------------------------- errors


class MalformedLinkFrame(RemoteProtocolError):
    """A link frame does not follow the wire format.

    Attributes:
        frame_type: the frame's type byte, when it was read.
        offset: byte offset of the problem within the frame, when known.
    """

    def __init__(
        self, message: str, *, frame_type: int | None = None, offset: int | None = None
    ) -> None:
        self.frame_type = frame_type
        self.offset = offset
        where = ""
        if frame_type is not None:
            where = _type_name(frame_type)
            if offset is not None:
                where += f" at offset {offset}"
        super().__init__(f"{where}: {message}" if where else message)


class LinkFrameTooLarge(MalformedLinkFrame):
    """A frame header announced a payload longer than :data:`MAX_FRAME_PAYLOAD`.

    Attributes:
        size: the announced length.
        limit: the largest length accepted.
    """

    def __init__(self, frame_type: int, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"payload of {size} bytes exceeds the limit of {limit}", frame_type=frame_type
        )


class UnsupportedLinkVersion(RemoteProtocolError):
    """An OPEN asked for a link protocol version this side does not speak.

    Attributes:
        version: the version the peer asked for.
    """

    def __init__(self, version: int) -> None:
        self.version = version
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        super().__init__(f"unsupported link version {version} (supported: {supported})")


class UnexpectedLinkFrame(RemoteProtocolError):
    """A well-formed frame arrived when the protocol does not allow it.

    Attributes:
        state: the connection state when it arrived.
        frame_type: the frame's type.
    """

    def __init__(self, state: LinkState, frame_type: FrameType, detail: str = "") -> None:
        self.state = state
        self.frame_type = frame_type
        message = f"unexpected {frame_type.name} frame in state {state.name}"
        super().__init__(f"{message} ({detail})" if detail else message)


class LinkTruncated(RemoteProtocolError):
    """The stream ended in the middle of a frame.

    Attributes:
        buffered: how many bytes of the incomplete frame were pending.
    """

    def __init__(self, buffered: int) -> None:
        self.buffered = buffered
        super().__init__(f"link stream ended inside a frame ({buffered} bytes pending)")


def _type_name(frame_type: int) -> str:
    try:
        return FrameType(frame_type).name
    except ValueError:
        return f"frame type {frame_type:#04x}"


# --------------------------------------------------------------------------- events


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AddressTarget:
    """An OPEN target given as host and port (CONNECT/SOCKS, or an explicit mapping).

    Attributes:
        host: a DNS name or an IP literal (IPv6 without brackets); the egress resolves it.
        port: 1-65535.
        datagram: a UDP target (the tunnel carries datagrams, link version 2).
    """

    host: str
    port: int
    datagram: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not _HOST.fullmatch(self.host):
            raise ValueError("host must be 1-255 printable ASCII characters without spaces")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError("port must be 1..65535")

    def __str__(self) -> str:
        text = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"udp:{text}" if self.datagram else text


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTarget:
    """An OPEN target given as the name of a route configured on the egress.

    Attributes:
        name: the route name (letters, digits, ``.``, ``_``, ``-``; at most 64).
        datagram: a UDP route (the tunnel carries datagrams, link version 2).
    """

    name: str
    datagram: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _ROUTE_NAME.fullmatch(self.name):
            raise ValueError("route name must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")

    def __str__(self) -> str:
        return f"udp:route:{self.name}" if self.datagram else f"route:{self.name}"


Target = AddressTarget | RouteTarget


def open_version(target: Target, *, reuse: bool = False) -> int:
    """The link version an OPEN of ``target`` is sent with: the oldest that can carry it.

    ``reuse`` asks for a link that may carry further tunnels after this one (stream
    targets only: a UDP flow ends by idling out, and its link is closed).
    """
    if target.datagram:
        return DATAGRAM_LINK_VERSION
    return REUSE_LINK_VERSION if reuse else LINK_VERSION


def safe_reason(text: str) -> str:
    """``text`` made fit for REFUSED/ERROR: printable, at most :data:`MAX_REASON_BYTES`."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    data = cleaned.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return data.decode("utf-8", "ignore")


def _check_reason(reason: str) -> None:
    if len(reason.encode("utf-8", "surrogatepass")) > MAX_REASON_BYTES:
        raise ValueError(f"reason longer than {MAX_REASON_BYTES} bytes")
    if not reason.isprintable():
        raise ValueError("reason must be printable text")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Open:
    """OPEN: the ingress asks for a target.

    Attributes:
        target: where the tunnel should lead.
        client: the client's address as text (e.g. ``"192.0.2.1:5555"``), at most 255
            bytes of UTF-8; informational (logs, PROXY headers).
        version: the link protocol version the ingress speaks.
    """

    target: Target
    client: str = ""
    version: int = LINK_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.target, AddressTarget | RouteTarget):
            raise TypeError("target must be an AddressTarget or a RouteTarget")
        if len(self.client.encode("utf-8", "surrogatepass")) > 255 or not self.client.isprintable():
            raise ValueError("client must be at most 255 bytes of printable text")
        if not 0 <= self.version <= 255:
            raise ValueError("version must be 0..255")
        if self.target.datagram and self.version < DATAGRAM_LINK_VERSION:
            raise ValueError(f"a datagram target needs link version {DATAGRAM_LINK_VERSION}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    """OPENED: the egress reached the target.

    Attributes:
        version: the link protocol version the egress speaks on this tunnel.
    """

    version: int = LINK_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 255:
            raise ValueError("version must be 0..255")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """REFUSED: the egress will not open the target, and says why.

    Attributes:
        code: a :class:`LinkReason` (or an unknown code, kept as an int).
        reason: human-readable detail; reaches the client (keep secrets out).
    """

    code: LinkReason | int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0 <= int(self.code) <= 0xFFFF:
            raise ValueError("code must fit in 16 bits")
        _check_reason(self.reason)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """DATA: bytes of the tunnelled stream.

    Attributes:
        data: 1 to :data:`MAX_FRAME_PAYLOAD` bytes.
    """

    data: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.data) <= MAX_FRAME_PAYLOAD:
            raise ValueError(f"DATA carries 1..{MAX_FRAME_PAYLOAD} bytes")

    def __repr__(self) -> str:
        return f"Data(<{len(self.data)} bytes>)"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Eof:
    """EOF: the sender's direction is finished (TCP half-close)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """ERROR: the tunnel is aborted in both directions.

    Attributes:
        code: a :class:`LinkReason` (or an unknown code, kept as an int).
        reason: human-readable detail.
    """

    code: LinkReason | int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0 <= int(self.code) <= 0xFFFF:
            raise ValueError("code must fit in 16 bits")
        _check_reason(self.reason)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Reattest:
    """REATTEST: a request for fresh evidence.

    Attributes:
        nonce: :data:`NONCE_LENGTH` random bytes (the exporter context of the binder).
    """

    nonce: bytes

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LENGTH:
            raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceFrame:
    """EVIDENCE: fresh evidence answering a REATTEST.

    Attributes:
        nonce: the nonce of the REATTEST being answered.
        media_type: what the evidence is (1-255 ASCII characters).
        evidence: the evidence, opaque to the link.
    """

    nonce: bytes
    media_type: str
    evidence: bytes

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LENGTH:
            raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")
        if not 1 <= len(self.media_type) <= 255 or not _HOST.fullmatch(self.media_type):
            raise ValueError("media_type must be 1-255 printable ASCII characters")
        if NONCE_LENGTH + 1 + len(self.media_type) + len(self.evidence) > MAX_FRAME_PAYLOAD:
            raise ValueError("evidence too large for one frame")

    def __repr__(self) -> str:
        return (
            f"EvidenceFrame(nonce={self.nonce.hex()[:16]}..., media_type={self.media_type!r},"
            f" evidence=<{len(self.evidence)} bytes>)"
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """READY (version 3): the egress finished the tunnel cleanly; OPEN may follow."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LinkClosed:
    """Not a frame: the peer closed the link stream (cleanly between frames)."""


LinkEvent = Open | Opened | Refused | Data | Eof | Error | Reattest | EvidenceFrame | Ready


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`LinkConnection.next_event` when more bytes are needed.
NEED_DATA: Final = _Sentinel.NEED_DATA


# --------------------------------------------------------------------------- codec


def encode_frame(event: LinkEvent) -> bytes:
    """Encode one event as one frame.

    Args:
        event: the event (values were checked when it was built).

    Returns:
        The frame bytes, header included.

    Raises:
        TypeError: ``event`` is not a link event.
    """
    frame_type: FrameType
    payload: bytes
    if isinstance(event, Data):
        frame_type, payload = FrameType.DATA, event.data
    elif isinstance(event, Open):
        target = event.target
        if isinstance(target, AddressTarget):
            kind, host, port = _KIND_UDP_ADDRESS if target.datagram else 1, target.host, target.port
        else:
            kind, host, port = _KIND_UDP_ROUTE if target.datagram else 2, target.name, 0
        host_b = host.encode("ascii")
        client_b = event.client.encode("utf-8")
        frame_type = FrameType.OPEN
        payload = (
            _OPEN_FIXED.pack(event.version, kind, port)
            + bytes([len(host_b)])
            + host_b
            + bytes([len(client_b)])
            + client_b
        )
    elif isinstance(event, Opened):
        frame_type, payload = FrameType.OPENED, bytes([event.version])
    elif isinstance(event, Refused | Error):
        frame_type = FrameType.REFUSED if isinstance(event, Refused) else FrameType.ERROR
        payload = _U16.pack(int(event.code)) + event.reason.encode("utf-8")
    elif isinstance(event, Eof):
        frame_type, payload = FrameType.EOF, b""
    elif isinstance(event, Ready):
        frame_type, payload = FrameType.READY, b""
    elif isinstance(event, Reattest):
        frame_type, payload = FrameType.REATTEST, event.nonce
    elif isinstance(event, EvidenceFrame):
        media = event.media_type.encode("ascii")
        frame_type = FrameType.EVIDENCE
        payload = event.nonce + bytes([len(media)]) + media + event.evidence
    else:
        raise TypeError(f"not a link event: {type(event).__name__}")
    return _HEADER.pack(frame_type, len(payload)) + payload


def _decode_text(data: bytes, *, frame_type: int, offset: int, what: str) -> str:
    try:
        text = data.decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise MalformedLinkFrame(
            f"{what} is not UTF-8", frame_type=frame_type, offset=offset + exc.start
        ) from None
    if not text.isprintable():
        raise MalformedLinkFrame(f"{what} is not printable", frame_type=frame_type, offset=offset)
    return text


# OPEN target kinds of version 2: a datagram (UDP) address, a datagram route.
_KIND_UDP_ADDRESS: Final = 3
_KIND_UDP_ROUTE: Final = 4


def _decode_open(payload: bytes) -> Open:
    t = FrameType.OPEN
    if len(payload) < 1:
        raise MalformedLinkFrame("missing version", frame_type=t, offset=5)
    version = payload[0]
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedLinkVersion(version)
    if len(payload) < _OPEN_FIXED.size + 1:
        raise MalformedLinkFrame("truncated", frame_type=t, offset=5 + len(payload))
    _, kind, port = _OPEN_FIXED.unpack_from(payload)
    host_len = payload[_OPEN_FIXED.size]
    pos = _OPEN_FIXED.size + 1
    host_b = payload[pos : pos + host_len]
    if len(host_b) != host_len:
        raise MalformedLinkFrame("host truncated", frame_type=t, offset=5 + len(payload))
    pos += host_len
    if pos >= len(payload):
        raise MalformedLinkFrame("client length missing", frame_type=t, offset=5 + pos)
    client_len = payload[pos]
    pos += 1
    client_b = payload[pos : pos + client_len]
    if len(client_b) != client_len:
        raise MalformedLinkFrame("client truncated", frame_type=t, offset=5 + len(payload))
    if pos + client_len != len(payload):
        raise MalformedLinkFrame(
            "trailing bytes after the client address", frame_type=t, offset=5 + pos + client_len
        )
    host = _decode_text(host_b, frame_type=t, offset=5 + _OPEN_FIXED.size + 1, what="host")
    client = _decode_text(client_b, frame_type=t, offset=5 + pos, what="client")
    target: Target
    datagram = kind in (_KIND_UDP_ADDRESS, _KIND_UDP_ROUTE)
    if datagram and version < DATAGRAM_LINK_VERSION:
        raise MalformedLinkFrame(
            f"target kind {kind} needs version {DATAGRAM_LINK_VERSION}", frame_type=t, offset=6
        )
    try:
        if kind in (1, _KIND_UDP_ADDRESS):
            target = AddressTarget(host=host, port=port, datagram=datagram)
        elif kind in (2, _KIND_UDP_ROUTE):
            if port != 0:
                raise MalformedLinkFrame("a ROUTE target carries port 0", frame_type=t, offset=7)
            target = RouteTarget(name=host, datagram=datagram)
        else:
            raise MalformedLinkFrame(f"unknown target kind {kind}", frame_type=t, offset=6)
    except ValueError as exc:
        raise MalformedLinkFrame(f"bad target: {exc}", frame_type=t, offset=8) from None
    return Open(target=target, client=client, version=version)


def _decode_coded(frame_type: FrameType, payload: bytes) -> tuple[LinkReason | int, str]:
    if len(payload) < _U16.size:
        raise MalformedLinkFrame("missing reason code", frame_type=frame_type, offset=5)
    (code,) = _U16.unpack_from(payload)
    if len(payload) - _U16.size > MAX_REASON_BYTES:
        raise MalformedLinkFrame("reason too long", frame_type=frame_type, offset=7)
    reason = _decode_text(payload[_U16.size :], frame_type=frame_type, offset=7, what="reason")
    return LinkReason.from_int(code), reason


def _decode_payload(frame_type: int, payload: bytes) -> LinkEvent:
    if frame_type == FrameType.DATA:
        if not payload:
            raise MalformedLinkFrame("empty DATA frame", frame_type=frame_type, offset=5)
        return Data(data=payload)
    if frame_type == FrameType.OPEN:
        return _decode_open(payload)
    if frame_type == FrameType.OPENED:
        if len(payload) != 1:
            raise MalformedLinkFrame("payload must be 1 byte", frame_type=frame_type, offset=5)
        return Opened(version=payload[0])
    if frame_type == FrameType.REFUSED:
        code, reason = _decode_coded(FrameType.REFUSED, payload)
        return Refused(code=code, reason=reason)
    if frame_type == FrameType.ERROR:
        code, reason = _decode_coded(FrameType.ERROR, payload)
        return Error(code=code, reason=reason)
    if frame_type == FrameType.EOF:
        if payload:
            raise MalformedLinkFrame("EOF carries no payload", frame_type=frame_type, offset=5)
        return Eof()
    if frame_type == FrameType.READY:
        if payload:
            raise MalformedLinkFrame("READY carries no payload", frame_type=frame_type, offset=5)
        return Ready()
    if frame_type == FrameType.REATTEST:
        if len(payload) != NONCE_LENGTH:
            raise MalformedLinkFrame(
                f"nonce must be {NONCE_LENGTH} bytes", frame_type=frame_type, offset=5
            )
        return Reattest(nonce=payload)
    if frame_type == FrameType.EVIDENCE:
        if len(payload) < NONCE_LENGTH + 1:
            raise MalformedLinkFrame("truncated", frame_type=frame_type, offset=5 + len(payload))
        media_len = payload[NONCE_LENGTH]
        start = NONCE_LENGTH + 1
        media_b = payload[start : start + media_len]
        if media_len == 0 or len(media_b) != media_len:
            raise MalformedLinkFrame(
                "media type empty or truncated", frame_type=frame_type, offset=5 + NONCE_LENGTH
            )
        try:
            media = media_b.decode("ascii")
            return EvidenceFrame(
                nonce=payload[:NONCE_LENGTH],
                media_type=media,
                evidence=payload[start + media_len :],
            )
        except ValueError:  # UnicodeDecodeError is a ValueError
            raise MalformedLinkFrame(
                "media type is not printable ASCII", frame_type=frame_type, offset=5 + start
            ) from None
    raise MalformedLinkFrame(f"unknown frame type {frame_type:#04x}", offset=0)


def decode_frame(data: bytes) -> LinkEvent:
    """Decode exactly one frame.

    Args:
        data: one whole frame, header included, and nothing after it.

    Returns:
        The event.

    Raises:
        MalformedLinkFrame: truncated, trailing bytes, unknown type, bad field.
        LinkFrameTooLarge: the header announces more than :data:`MAX_FRAME_PAYLOAD`.
        UnsupportedLinkVersion: an OPEN in a version this side does not speak.
    """
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise MalformedLinkFrame("truncated frame header", offset=len(data))
    frame_type, length = _HEADER.unpack_from(data)
    if frame_type not in FrameType.__members__.values():
        raise MalformedLinkFrame(f"unknown frame type {frame_type:#04x}", offset=0)
    if length > MAX_FRAME_PAYLOAD:
        raise LinkFrameTooLarge(frame_type, length, MAX_FRAME_PAYLOAD)
    if len(data) != _HEADER.size + length:
        what = "truncated" if len(data) < _HEADER.size + length else "trailing bytes"
        raise MalformedLinkFrame(
            f"{what}: header announces {length} payload bytes, got {len(data) - _HEADER.size}",
            frame_type=frame_type,
            offset=min(len(data), _HEADER.size + length),
        )
    return _decode_payload(frame_type, data[_HEADER.size :])


# --------------------------------------------------------------------------- machine


class LinkRole(enum.Enum):
    """Which gateway a :class:`LinkConnection` belongs to."""

    #: The ingress: sends OPEN.
    INGRESS = "ingress"
    #: The egress: answers OPEN.
    EGRESS = "egress"


class LinkState(enum.Enum):
    """Where a link connection is (the opening phase, then OPEN until it ends)."""

    #: Ingress, before sending OPEN.
    SEND_OPEN = enum.auto()
    #: Ingress, waiting for OPENED or REFUSED.
    AWAIT_ANSWER = enum.auto()
    #: Egress, waiting for OPEN.
    AWAIT_OPEN = enum.auto()
    #: Egress, must send OPENED or REFUSED.
    SEND_ANSWER = enum.auto()
    #: Tunnel open; each direction may still be flowing or finished.
    OPEN = enum.auto()
    #: Both directions finished with EOF.
    DONE = enum.auto()
    #: Ended by REFUSED or ERROR (sent or received), or by READY (the link goes on to
    #: another OPEN, under a new LinkConnection).
    CLOSED = enum.auto()
    #: The peer broke the protocol, or the stream ended abortively.
    ERROR = enum.auto()


_L = LinkState
_SEND: Final = "send"
_RECV: Final = "receive"

# The opening phase as a table: (role, state, frame type, direction) -> next state.
# Frames of the OPEN state (DATA, EOF, REATTEST, EVIDENCE) are checked by the half-close
# and re-attestation rules in LinkConnection; ERROR is allowed in every live state.
_TRANSITIONS: Final[dict[tuple[LinkRole, LinkState, FrameType, str], LinkState]] = {
    (LinkRole.INGRESS, _L.SEND_OPEN, FrameType.OPEN, _SEND): _L.AWAIT_ANSWER,
    (LinkRole.INGRESS, _L.AWAIT_ANSWER, FrameType.OPENED, _RECV): _L.OPEN,
    (LinkRole.INGRESS, _L.AWAIT_ANSWER, FrameType.REFUSED, _RECV): _L.CLOSED,
    (LinkRole.EGRESS, _L.AWAIT_OPEN, FrameType.OPEN, _RECV): _L.SEND_ANSWER,
    (LinkRole.EGRESS, _L.SEND_ANSWER, FrameType.OPENED, _SEND): _L.OPEN,
    (LinkRole.EGRESS, _L.SEND_ANSWER, FrameType.REFUSED, _SEND): _L.CLOSED,
}
_IN_TUNNEL: Final = frozenset(
    {FrameType.DATA, FrameType.EOF, FrameType.REATTEST, FrameType.EVIDENCE}
)
_LIVE: Final = frozenset({_L.SEND_OPEN, _L.AWAIT_ANSWER, _L.AWAIT_OPEN, _L.SEND_ANSWER, _L.OPEN})


def _frame_type_of(event: LinkEvent) -> FrameType:
    return _EVENT_TYPES[type(event)]


_EVENT_TYPES: Final[dict[type, FrameType]] = {
    Open: FrameType.OPEN,
    Opened: FrameType.OPENED,
    Refused: FrameType.REFUSED,
    Data: FrameType.DATA,
    Eof: FrameType.EOF,
    Error: FrameType.ERROR,
    Reattest: FrameType.REATTEST,
    EvidenceFrame: FrameType.EVIDENCE,
    Ready: FrameType.READY,
}


@final
class LinkConnection:
    """One side of a gateway link (sans-I/O, h11-style).

    Feed bytes from the peer with :meth:`receive_data`, pull events with
    :meth:`next_event`, and turn our own events into bytes with :meth:`send`.

    Args:
        role: ingress or egress.
        max_frame_payload: largest payload accepted from the peer.
    """

    def __init__(self, role: LinkRole, *, max_frame_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._role = role
        self._state = _L.SEND_OPEN if role is LinkRole.INGRESS else _L.AWAIT_OPEN
        self._max = max_frame_payload
        # Received bytes not parsed yet: the last chunk as received (from _offset on),
        # or, once a frame spans chunks, a copy in _buffer.  At most one is non-empty.
        self._chunk = b""
        self._offset = 0
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._our_eof = False
        self._their_eof = False
        self._our_nonce: bytes | None = None
        self._their_nonce: bytes | None = None
        self._opening_failed = False
        self._version = 0  # of the OPEN, once sent or received
        self._ready_received = False

    @property
    def role(self) -> LinkRole:
        """Ingress or egress."""
        return self._role

    @property
    def state(self) -> LinkState:
        """The current state."""
        return self._state

    @property
    def version(self) -> int:
        """The link version of the OPEN sent or received (0 before OPEN)."""
        return self._version

    @property
    def ready_received(self) -> bool:
        """Whether the egress's READY arrived (the link may carry another OPEN)."""
        return self._ready_received

    @property
    def buffered(self) -> int:
        """Bytes received from the peer and not parsed yet."""
        return len(self._chunk) - self._offset + len(self._buffer)

    @property
    def our_eof(self) -> bool:
        """Whether we sent EOF (our direction is finished)."""
        return self._our_eof

    @property
    def their_eof(self) -> bool:
        """Whether the peer sent EOF (its direction is finished)."""
        return self._their_eof

    @property
    def pending_reattest(self) -> bytes | None:
        """The nonce of our outstanding REATTEST, if any."""
        return self._our_nonce

    @property
    def peer_reattest(self) -> bytes | None:
        """The nonce of the peer's REATTEST we have not answered yet, if any."""
        return self._their_nonce

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed the stream.

        Args:
            data: the bytes, or ``b""`` for end of stream.

        Raises:
            LocalProtocolError: data after end of stream.
        """
        if self._eof and data:
            raise LocalProtocolError("received data after end of stream")
        if not data:
            self._eof = True
        elif self._buffer:
            self._buffer += data
        elif self._chunk:
            self._spill()
            self._buffer += data
        else:
            # Kept as it is (no copy): a relay's chunk usually holds whole frames.
            self._chunk = bytes(data)
            self._offset = 0

    def _spill(self) -> None:
        """Move the unparsed rest of the last chunk into the buffer."""
        self._buffer += memoryview(self._chunk)[self._offset :]
        self._chunk = b""
        self._offset = 0

    def next_event(self) -> LinkEvent | LinkClosed | _Sentinel:
        """Parse the next frame from the peer.

        Returns:
            The event; :class:`LinkClosed` when the stream ended between frames (an
            abortive close unless the state is DONE or CLOSED); or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: a subclass naming what the peer got wrong; the state
                becomes ERROR and the same error is raised again on every later call.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._parse_one()
        except RemoteProtocolError as exc:
            self._opening_failed = self._state is _L.AWAIT_OPEN
            self._state = _L.ERROR
            self._error = exc
            raise

    def _parse_one(self) -> LinkEvent | LinkClosed | _Sentinel:
        chunk = self._chunk
        if chunk:
            # Frames wholly inside the received chunk are cut straight out of it: one
            # copy of a DATA payload instead of three through the buffer.
            start = self._offset
            if len(chunk) - start >= _HEADER.size:
                frame_type, length = _HEADER.unpack_from(chunk, start)
                if length > self._max:
                    raise LinkFrameTooLarge(frame_type, length, self._max)
                end = start + _HEADER.size + length
                if end <= len(chunk):
                    if end == len(chunk):
                        self._chunk, self._offset = b"", 0
                    else:
                        self._offset = end
                    if frame_type == FrameType.DATA and length:
                        event: LinkEvent = Data(data=chunk[start + _HEADER.size : end])
                    else:
                        event = decode_frame(chunk[start:end])
                    self._advance(event, _RECV)
                    return event
            self._spill()  # a frame continues in the next chunk
        if len(self._buffer) < _HEADER.size:
            return self._need_data()
        frame_type, length = _HEADER.unpack_from(self._buffer)
        if length > self._max:
            raise LinkFrameTooLarge(frame_type, length, self._max)
        end = _HEADER.size + length
        if len(self._buffer) < end:
            return self._need_data()
        if frame_type == FrameType.DATA and length:
            # Fast path for the hot frame: no second copy through decode_frame.
            with memoryview(self._buffer) as view:  # released before the del below
                event = Data(data=bytes(view[_HEADER.size : end]))
        else:
            event = decode_frame(bytes(self._buffer[:end]))
        if end == len(self._buffer):
            # A new, empty buffer: the old one keeps the capacity of the largest frame it
            # held (a bytearray never shrinks), which an idle link should not carry.
            self._buffer = bytearray()
        else:
            del self._buffer[:end]
        self._advance(event, _RECV)
        return event

    def _need_data(self) -> LinkClosed | _Sentinel:
        if self._eof:
            if self._buffer:
                raise LinkTruncated(len(self._buffer))
            if self._state in _LIVE:
                self._state = _L.ERROR
            return LinkClosed()
        return NEED_DATA

    def send(self, event: LinkEvent) -> bytes:
        """Encode our next event and advance the state.

        ERROR may be sent in every live state, and also after the peer broke the
        protocol (to tell it why we stop); so may REFUSED by an egress whose peer broke
        the protocol before OPEN was understood (e.g. an unsupported version).

        Args:
            event: the event to send.

        Returns:
            The bytes to write to the peer.

        Raises:
            LocalProtocolError: the event is not allowed now.
        """
        if self._state is _L.ERROR and (
            isinstance(event, Error) or (isinstance(event, Refused) and self._opening_failed)
        ):
            # Telling the peer why we stop is allowed after it broke the protocol.
            self._state = _L.CLOSED
            return encode_frame(event)
        self._advance(event, _SEND)
        return encode_frame(event)

    def send_data_header(self, length: int) -> bytes:
        """Advance the state for a DATA frame of ``length`` bytes we send; its header.

        For a sender that has the payload in a buffer with room in front: it writes the
        header there and sends header and payload in one write, sparing the copy that
        :meth:`send` makes to join them.

        Args:
            length: the payload length, 1 to :data:`MAX_FRAME_PAYLOAD`.

        Returns:
            The frame header (:data:`FRAME_HEADER_SIZE` bytes).

        Raises:
            ValueError: ``length`` is out of range.
            LocalProtocolError: DATA is not allowed now.
        """
        if not 1 <= length <= MAX_FRAME_PAYLOAD:
            raise ValueError(f"DATA carries 1..{MAX_FRAME_PAYLOAD} bytes")
        self._advance_type(FrameType.DATA, None, _SEND)
        return _HEADER.pack(FrameType.DATA, length)

    def _fail(self, direction: str, frame_type: FrameType, detail: str = "") -> None:
        if direction == _SEND:
            message = f"can't send {frame_type.name} in state {self._state.name}"
            raise LocalProtocolError(f"{message} ({detail})" if detail else message)
        raise UnexpectedLinkFrame(self._state, frame_type, detail)

    def _advance(self, event: LinkEvent, direction: str) -> None:
        self._advance_type(_frame_type_of(event), event, direction)

    def _advance_type(self, frame_type: FrameType, event: LinkEvent | None, direction: str) -> None:
        # ``event`` is None only for DATA sent by send_data_header.
        state = self._state
        if frame_type is FrameType.READY:
            sender = _SEND if self._role is LinkRole.EGRESS else _RECV
            if state is not _L.DONE or direction != sender or self._version < REUSE_LINK_VERSION:
                self._fail(direction, frame_type, "only from the egress after EOF both ways, v3")
            self._state = _L.CLOSED
            self._ready_received = direction == _RECV
            return
        if frame_type is FrameType.OPEN and isinstance(event, Open):
            self._version = event.version
        if state is _L.OPEN and frame_type is FrameType.DATA:
            # The hot path, once per chunk: the general checks below come to the same
            # answer, but hash enums in Python to get there.
            if self._our_eof if direction == _SEND else self._their_eof:
                self._fail(direction, frame_type, "after EOF")
            return
        if state is _L.DONE and frame_type is FrameType.ERROR and direction != _SEND:
            # Both EOFs were exchanged, but the peer could not deliver our last bytes (or
            # its ERROR crossed our EOF): it may still say so, and the tunnel fails.
            self._state = _L.CLOSED
            return
        if state not in _LIVE:
            self._fail(direction, frame_type)
        if frame_type is FrameType.ERROR:
            self._state = _L.CLOSED
            return
        next_state = _TRANSITIONS.get((self._role, state, frame_type, direction))
        if next_state is not None:
            self._state = next_state
            return
        if state is not _L.OPEN or frame_type not in _IN_TUNNEL:
            self._fail(direction, frame_type)
        ours = direction == _SEND
        if frame_type is FrameType.DATA or frame_type is FrameType.EOF:
            finished = self._our_eof if ours else self._their_eof
            if finished:
                self._fail(direction, frame_type, "after EOF")
            if frame_type is FrameType.EOF:
                if ours:
                    self._our_eof = True
                else:
                    self._their_eof = True
                if self._our_eof and self._their_eof:
                    self._state = _L.DONE
        elif isinstance(event, Reattest):
            if ours:
                if self._our_nonce is not None:
                    self._fail(direction, frame_type, "a REATTEST is already outstanding")
                self._our_nonce = event.nonce
            else:
                if self._their_nonce is not None:
                    self._fail(direction, frame_type, "a REATTEST is already outstanding")
                self._their_nonce = event.nonce
        elif isinstance(event, EvidenceFrame):
            expected = self._their_nonce if ours else self._our_nonce
            if expected is None:
                self._fail(direction, frame_type, "no REATTEST is outstanding")
            elif not hmac.compare_digest(expected, event.nonce):
                self._fail(direction, frame_type, "nonce does not match the REATTEST")
            if ours:
                self._their_nonce = None
            else:
                self._our_nonce = None

    def __repr__(self) -> str:
        return (
            f"<LinkConnection role={self._role.value} state={self._state.name}"
            f" our_eof={self._our_eof} their_eof={self._their_eof}"
            f" buffered={len(self._buffer) + len(self._chunk) - self._offset}>"
        )
