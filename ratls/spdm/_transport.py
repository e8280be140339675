"""SPDM transport bindings: how an SPDM message or secured record is framed.

Two bindings from the reference material are implemented, as pure codecs:

* MCTP (DSP0275/DSP0276), which is what DMTF's spdm-emu speaks by default:
  ``0x05 || SPDM message`` in the clear, ``0x06 || secured record`` in a
  session.  Inside a record the application data is again ``0x05 || SPDM``; the
  record's sequence number field is 2 bytes and 1..32 bytes of random padding
  are added when encrypting.
* TCP (DSP0287 as libspdm implements it): ``PayloadLength(2, LE) | BindingVersion
  (1) = 1 | MessageType(1)`` then the payload (0x05 clear, 0x06 secured);
  PayloadLength counts everything after itself.  No sequence number in the
  record header and no padding; the application data repeats the 4-byte header.

The spdm-emu socket framing (``Command | TransportType | Size``, all u32
big-endian) wraps either binding when talking to the emulators.
:class:`EmuStreamDecoder` and :class:`TcpStreamDecoder` cut a byte stream into
whole frames, so a socket adapter only reads and feeds.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, final

from ._errors import SpdmDecodeError, SpdmMessageTooLarge

__all__ = [
    "EMU_HEADER_SIZE",
    "MAX_TRANSPORT_MESSAGE_SIZE",
    "EmuCommand",
    "EmuFrame",
    "EmuStreamDecoder",
    "EmuTransportType",
    "MctpBinding",
    "TcpBinding",
    "TcpStreamDecoder",
    "TransportBinding",
    "TransportMessage",
    "decode_emu_header",
]

_MCTP_SPDM = 0x05
_MCTP_SECURED = 0x06
_TCP_BINDING_VERSION = 0x01


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TransportMessage:
    """A decoded transport payload.

    Attributes:
        secured: True if ``body`` is a DSP0277 secured record, False if it is a
            plain SPDM message.
        body: the record or message bytes.
    """

    secured: bool
    body: bytes


@final
@dataclass(frozen=True, slots=True)
class MctpBinding:
    """The MCTP binding (message type 0x05 SPDM, 0x06 secured SPDM)."""

    #: Width of the sequence number in the secured-record header.
    sequence_number_size: ClassVar[int] = 2
    #: Random padding added when encrypting (minimum, maximum).
    padding_range: ClassVar[tuple[int, int]] = (1, 32)
    name: ClassVar[str] = "MCTP"

    def encode(self, message: bytes, *, secured: bool = False) -> bytes:
        """Frame an SPDM message (or a secured record when ``secured``)."""
        return bytes((_MCTP_SECURED if secured else _MCTP_SPDM,)) + message

    def decode(self, payload: bytes) -> TransportMessage:
        """Split a transport payload into its kind and body.

        Raises:
            SpdmDecodeError: for an empty payload or an unknown message type.
        """
        if not payload:
            raise SpdmDecodeError("empty MCTP payload", structure="MCTP", offset=0)
        kind = payload[0]
        if kind not in (_MCTP_SPDM, _MCTP_SECURED):
            raise SpdmDecodeError(f"MCTP message type {kind:#04x}", structure="MCTP", offset=0)
        return TransportMessage(secured=kind == _MCTP_SECURED, body=bytes(payload[1:]))

    def wrap_application_data(self, message: bytes) -> bytes:
        """Return the ApplicationData carrying an SPDM message inside a record."""
        return bytes((_MCTP_SPDM,)) + message

    def unwrap_application_data(self, data: bytes) -> bytes:
        """Return the SPDM message carried in a record's ApplicationData.

        Raises:
            SpdmDecodeError: if the inner message type is not SPDM.
        """
        if not data or data[0] != _MCTP_SPDM:
            raise SpdmDecodeError(
                "secured ApplicationData is not an MCTP SPDM message",
                structure="ApplicationData",
                offset=0,
            )
        return bytes(data[1:])


@final
@dataclass(frozen=True, slots=True)
class TcpBinding:
    """The DSP0287 TCP binding as libspdm writes it (PayloadLength little-endian)."""

    sequence_number_size: ClassVar[int] = 0
    padding_range: ClassVar[tuple[int, int]] = (0, 0)
    name: ClassVar[str] = "TCP"

    def _header(self, payload_size: int, kind: int) -> bytes:
        length = payload_size + 2
        if length > 0xFFFF:
            raise ValueError("message too large for the TCP binding")
        return struct.pack("<HBB", length, _TCP_BINDING_VERSION, kind)

    def encode(self, message: bytes, *, secured: bool = False) -> bytes:
        """Frame an SPDM message (or a secured record when ``secured``)."""
        return self._header(len(message), _MCTP_SECURED if secured else _MCTP_SPDM) + message

    def _split(self, frame: bytes, structure: str) -> tuple[int, bytes]:
        if len(frame) < 4:
            raise SpdmDecodeError("TCP binding header is 4 bytes", structure=structure, offset=0)
        length, version, kind = struct.unpack_from("<HBB", frame)
        if version != _TCP_BINDING_VERSION:
            raise SpdmDecodeError(f"BindingVersion {version:#04x}", structure=structure, offset=2)
        if length != len(frame) - 2:
            raise SpdmDecodeError(
                f"PayloadLength {length} differs from frame size {len(frame)} - 2",
                structure=structure,
                offset=0,
            )
        return kind, bytes(frame[4:])

    def decode(self, payload: bytes) -> TransportMessage:
        """Split a TCP binding frame into its kind and body.

        Raises:
            SpdmDecodeError: for a short frame, wrong length, version or type.
        """
        kind, body = self._split(payload, "TCP")
        if kind not in (_MCTP_SPDM, _MCTP_SECURED):
            raise SpdmDecodeError(f"MessageType {kind:#04x}", structure="TCP", offset=3)
        return TransportMessage(secured=kind == _MCTP_SECURED, body=body)

    def wrap_application_data(self, message: bytes) -> bytes:
        """Return the ApplicationData (header repeated) carrying an SPDM message."""
        return self.encode(message)

    def unwrap_application_data(self, data: bytes) -> bytes:
        """Return the SPDM message carried in a record's ApplicationData.

        Raises:
            SpdmDecodeError: if the inner header is malformed or not type 0x05.
        """
        kind, body = self._split(data, "ApplicationData")
        if kind != _MCTP_SPDM:
            raise SpdmDecodeError(
                f"inner MessageType {kind:#04x}", structure="ApplicationData", offset=3
            )
        return body


TransportBinding = MctpBinding | TcpBinding


# --------------------------------------------------------------------------- spdm-emu


class EmuCommand(enum.IntEnum):
    """Command field of the spdm-emu socket framing."""

    NORMAL = 0x0001  #: payload is one transport message
    OOB_ENCAP_KEY_UPDATE = 0x8001  #: out-of-band: trigger an encapsulated KEY_UPDATE
    OOB_ENCAP_ENDPOINT_INFO = 0x8002  #: out-of-band: trigger encapsulated GET_ENDPOINT_INFO
    TEST = 0xDEAD  #: hello exchange ("Client Hello!" / "Server Hello!")
    CONTINUE = 0xFFFD  #: close this connection and accept the next one
    SHUTDOWN = 0xFFFE  #: end the emulator
    UNKNOWN = 0xFFFF  #: reply to an unknown command


class EmuTransportType(enum.IntEnum):
    """TransportType field of the spdm-emu socket framing."""

    NONE = 0  #: raw SPDM, no sessions
    MCTP = 1  #: MCTP binding
    PCI_DOE = 2  #: PCI DOE binding
    TCP = 3  #: DSP0287 binding


#: Size of the spdm-emu frame header (three u32 big-endian fields).
EMU_HEADER_SIZE: Final = 12


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EmuFrame:
    """One spdm-emu socket frame header and the size of the payload that follows."""

    command: int
    transport_type: int
    payload_size: int

    def encode(self) -> bytes:
        """Return the 12 header bytes."""
        return struct.pack(">III", self.command, self.transport_type, self.payload_size)


def decode_emu_header(data: bytes) -> EmuFrame:
    """Parse the 12-byte spdm-emu frame header.

    Args:
        data: exactly 12 bytes.

    Returns:
        The header fields (command and transport type stay ints, unknown values included).

    Raises:
        SpdmDecodeError: if ``data`` is not 12 bytes.
    """
    if len(data) != EMU_HEADER_SIZE:
        raise SpdmDecodeError(
            f"spdm-emu header is 12 bytes, got {len(data)}", structure="EMU", offset=0
        )
    command, transport_type, size = struct.unpack(">III", data)
    return EmuFrame(command=command, transport_type=transport_type, payload_size=size)


#: Largest transport message the stream decoders buffer: the largest SPDM
#: message we decode (64 KiB + 8) plus a secured record's header, MAC and
#: padding.  A peer announcing more is refused before anything is buffered.
MAX_TRANSPORT_MESSAGE_SIZE: Final = 0x10000 + 8 + 64


@final
class EmuStreamDecoder:
    """Split a byte stream into spdm-emu frames (sans-I/O).

    Feed whatever the socket returned to :meth:`receive_data`; call
    :meth:`next_frame` until it returns None.
    """

    __slots__ = ("_buffer", "_max_payload")

    def __init__(self, *, max_payload: int = MAX_TRANSPORT_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the stream."""
        self._buffer += data

    def next_frame(self) -> tuple[EmuFrame, bytes] | None:
        """Return the next complete frame and its payload, or None if more data is needed.

        Raises:
            SpdmMessageTooLarge: if a header announces more than ``max_payload`` bytes.
        """
        if len(self._buffer) < EMU_HEADER_SIZE:
            return None
        frame = decode_emu_header(bytes(self._buffer[:EMU_HEADER_SIZE]))
        if frame.payload_size > self._max_payload:
            raise SpdmMessageTooLarge(
                f"spdm-emu frame of {frame.payload_size} bytes", structure="EMU", offset=8
            )
        end = EMU_HEADER_SIZE + frame.payload_size
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[EMU_HEADER_SIZE:end])
        del self._buffer[:end]
        return frame, payload

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)


@final
class TcpStreamDecoder:
    """Split a DSP0287 byte stream into whole binding frames (sans-I/O).

    Each returned frame still carries its 4-byte header, ready for
    :meth:`TcpBinding.decode`.
    """

    __slots__ = ("_buffer", "_max_payload")

    def __init__(self, *, max_payload: int = MAX_TRANSPORT_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the stream."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Return the next complete frame, or None if more data is needed.

        Raises:
            SpdmDecodeError: if PayloadLength is too small to cover the header's rest.
            SpdmMessageTooLarge: if PayloadLength exceeds ``max_payload``.
        """
        if len(self._buffer) < 2:
            return None
        length = int.from_bytes(self._buffer[:2], "little")
        if length < 2:
            raise SpdmDecodeError(f"PayloadLength {length}", structure="TCP", offset=0)
        if length > self._max_payload:
            raise SpdmMessageTooLarge(f"TCP frame of {length} bytes", structure="TCP", offset=0)
        end = 2 + length
        if len(self._buffer) < end:
            return None
        frame = bytes(self._buffer[:end])
        del self._buffer[:end]
        return frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)
