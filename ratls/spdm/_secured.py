"""DSP0277 secured messages: the record format and a per-direction AEAD channel.

Theory of operation
-------------------
A secured record is::

    SessionID(4, LE) | SequenceNumber(w, LE) | Length(2, LE) | ciphertext | MAC(16)

where ``w`` depends on the transport binding (2 for MCTP, 0 for TCP, up to 8)
and ``Length`` counts ciphertext plus MAC.  Everything before the ciphertext is
the AEAD's associated data.  The plaintext is::

    ApplicationDataLength(2, LE) | ApplicationData | RandomPadding

and the AEAD nonce is the 12-byte IV XOR the full 64-bit sequence number,
little-endian, in bytes 0..7 (libspdm's default byte order).

Every direction (request/response) and every phase (handshake keys, data keys,
each KEY_UPDATE) has its own sequence counter starting at 0.
:class:`SecuredChannel` holds one direction: :meth:`SecuredChannel.seal`
encrypts with the next number, :meth:`SecuredChannel.open` checks that the
record carries the expected session ID and (truncated) sequence number, decrypts,
and only then advances.  A counter that would pass 2**64 - 1 refuses to go on
(:class:`SpdmSequenceOverflow`); the session must then end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ._constants import AeadAlgorithm
from ._errors import SpdmDecodeError, SpdmDecryptError, SpdmSequenceOverflow

__all__ = [
    "AEAD_TAG_SIZE",
    "MAX_SEQUENCE_NUMBER",
    "SecuredChannel",
    "SecuredRecord",
    "aead_key_size",
    "aead_nonce",
    "decode_secured_record",
]

#: Size of the MAC of every supported AEAD.
AEAD_TAG_SIZE: Final = 16
#: The last usable sequence number; after it the session must end (DSP0277).
MAX_SEQUENCE_NUMBER: Final = 2**64 - 1

_KEY_SIZES: dict[int, int] = {
    AeadAlgorithm.AES_128_GCM: 16,
    AeadAlgorithm.AES_256_GCM: 32,
    AeadAlgorithm.CHACHA20_POLY1305: 32,
}


def aead_key_size(aead: int) -> int:
    """Return the key size of one AEAD bit.

    Args:
        aead: one :class:`AeadAlgorithm` bit.

    Returns:
        The key size in bytes.

    Raises:
        ValueError: for SM4-GCM or a value that is not one known bit.
    """
    try:
        return _KEY_SIZES[aead]
    except KeyError:
        raise ValueError(f"unsupported AEAD {aead:#x}") from None


def aead_nonce(iv: bytes, sequence_number: int) -> bytes:
    """Return ``IV XOR u64le(sequence_number)`` (zero-extended to 12 bytes).

    Args:
        iv: the 12-byte IV of the direction and phase.
        sequence_number: the 64-bit record counter.

    Returns:
        The 12-byte AEAD nonce.
    """
    seq = sequence_number.to_bytes(8, "little") + bytes(len(iv) - 8)
    return bytes(a ^ b for a, b in zip(iv, seq, strict=True))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SecuredRecord:
    """A DSP0277 secured record as it travels (still encrypted).

    Attributes:
        session_id: ``RspSessionID << 16 | ReqSessionID``.
        sequence_number: the (possibly truncated) sequence number on the wire.
        sequence_number_size: its width in bytes (0..8).
        encrypted_data: the ciphertext.
        mac: the 16-byte AEAD tag.
    """

    session_id: int
    sequence_number: int
    sequence_number_size: int
    encrypted_data: bytes
    mac: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.sequence_number_size <= 8:
            raise ValueError("sequence_number_size must be 0..8")
        if not 0 <= self.sequence_number < (1 << (8 * self.sequence_number_size)):
            raise ValueError("sequence_number does not fit its width")
        if not 0 <= self.session_id <= 0xFFFFFFFF:
            raise ValueError("session_id must be 32 bits")
        if len(self.mac) != AEAD_TAG_SIZE:
            raise ValueError("mac must be 16 bytes")
        if len(self.encrypted_data) + AEAD_TAG_SIZE > 0xFFFF:
            raise ValueError("record too large")

    def associated_data(self) -> bytes:
        """Return the AEAD associated data (the record header)."""
        return (
            self.session_id.to_bytes(4, "little")
            + self.sequence_number.to_bytes(self.sequence_number_size, "little")
            + (len(self.encrypted_data) + AEAD_TAG_SIZE).to_bytes(2, "little")
        )

    def encode(self) -> bytes:
        """Return the record bytes."""
        return self.associated_data() + self.encrypted_data + self.mac


def decode_secured_record(data: bytes, *, sequence_number_size: int) -> SecuredRecord:
    """Parse a secured record (without decrypting it).

    Args:
        data: the record bytes (the transport header already removed).
        sequence_number_size: the binding's sequence number width (0..8).

    Returns:
        The record.

    Raises:
        SpdmDecodeError: if the record is short, its Length disagrees with its
            size, or bytes trail it.
    """
    data = bytes(data)
    header = 4 + sequence_number_size + 2
    if len(data) < header:
        raise SpdmDecodeError(
            f"record of {len(data)} bytes is shorter than its {header}-byte header",
            structure="SECURED_MESSAGE",
            offset=0,
        )
    length = int.from_bytes(data[header - 2 : header], "little")
    if length < AEAD_TAG_SIZE:
        raise SpdmDecodeError(
            f"Length {length} is shorter than the MAC",
            structure="SECURED_MESSAGE",
            offset=header - 2,
        )
    if length != len(data) - header:
        raise SpdmDecodeError(
            f"Length {length} differs from the {len(data) - header} bytes present",
            structure="SECURED_MESSAGE",
            offset=header - 2,
        )
    return SecuredRecord(
        session_id=int.from_bytes(data[0:4], "little"),
        sequence_number=int.from_bytes(data[4 : 4 + sequence_number_size], "little"),
        sequence_number_size=sequence_number_size,
        encrypted_data=data[header:-AEAD_TAG_SIZE],
        mac=data[-AEAD_TAG_SIZE:],
    )


@final
@dataclass(slots=True, kw_only=True)
class SecuredChannel:
    """One direction of a secured session: AEAD key, IV and sequence counter.

    Attributes:
        session_id: the 32-bit session ID placed in (and expected in) every record.
        aead: the negotiated :class:`AeadAlgorithm` bit.
        sequence_number_size: the transport binding's sequence number width.
        padding_range: (min, max) random padding bytes added by :meth:`seal`.
        sequence_number: the number the next record uses.
    """

    session_id: int
    aead: int
    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    sequence_number_size: int
    padding_range: tuple[int, int] = (0, 0)
    sequence_number: int = 0

    def __post_init__(self) -> None:
        if len(self.key) != aead_key_size(self.aead):
            raise ValueError("key size does not match the AEAD")
        if len(self.iv) != 12:
            raise ValueError("iv must be 12 bytes")

    def _cipher(self) -> AESGCM | ChaCha20Poly1305:
        if self.aead == AeadAlgorithm.CHACHA20_POLY1305:
            return ChaCha20Poly1305(self.key)
        return AESGCM(self.key)

    def rekey(self, key: bytes, iv: bytes) -> None:
        """Switch to new keys (next phase or KEY_UPDATE); the counter restarts at 0."""
        if len(key) != aead_key_size(self.aead) or len(iv) != 12:
            raise ValueError("bad key or iv size")
        self.key, self.iv, self.sequence_number = key, iv, 0

    def _check_sequence(self) -> None:
        if self.sequence_number > MAX_SEQUENCE_NUMBER:
            raise SpdmSequenceOverflow("secured-message sequence number exhausted")

    def seal(self, application_data: bytes, *, padding: bytes | None = None) -> bytes:
        """Encrypt one ApplicationData into a record with the next sequence number.

        Args:
            application_data: the binding's ApplicationData (e.g. ``0x05 || SPDM``).
            padding: RandomPadding to use; random bytes in ``padding_range`` if None.

        Returns:
            The record bytes.

        Raises:
            SpdmSequenceOverflow: if the counter is exhausted.
            ValueError: if the data is too large for one record.
        """
        self._check_sequence()
        if padding is None:
            low, high = self.padding_range
            size = low + (int.from_bytes(os.urandom(1), "little") % (high - low + 1))
            padding = os.urandom(size)
        if len(application_data) > 0xFFFF:
            raise ValueError("ApplicationData too large")
        plaintext = len(application_data).to_bytes(2, "little") + application_data + padding
        wire_sequence = self.sequence_number & ((1 << (8 * self.sequence_number_size)) - 1)
        header = SecuredRecord(
            session_id=self.session_id,
            sequence_number=wire_sequence,
            sequence_number_size=self.sequence_number_size,
            encrypted_data=plaintext,
            mac=bytes(AEAD_TAG_SIZE),
        )
        sealed = self._cipher().encrypt(
            aead_nonce(self.iv, self.sequence_number), plaintext, header.associated_data()
        )
        self.sequence_number += 1
        return header.associated_data() + sealed

    def open(self, record: bytes) -> bytes:
        """Authenticate and decrypt one record with the expected sequence number.

        On success the counter advances; on failure it does not.

        Args:
            record: the record bytes.

        Returns:
            The ApplicationData (length prefix and padding removed).

        Raises:
            SpdmDecodeError: if the record is malformed.
            SpdmDecryptError: if the session ID or sequence number is not the
                expected one, the MAC fails, or the decrypted length is wrong.
            SpdmSequenceOverflow: if the counter is exhausted.
        """
        self._check_sequence()
        parsed = decode_secured_record(record, sequence_number_size=self.sequence_number_size)
        if parsed.session_id != self.session_id:
            raise SpdmDecryptError(
                f"record for session {parsed.session_id:#010x}, expected {self.session_id:#010x}"
            )
        wire_sequence = self.sequence_number & ((1 << (8 * self.sequence_number_size)) - 1)
        if parsed.sequence_number != wire_sequence:
            raise SpdmDecryptError(
                f"sequence number {parsed.sequence_number}, expected {wire_sequence}"
            )
        try:
            plaintext = self._cipher().decrypt(
                aead_nonce(self.iv, self.sequence_number),
                parsed.encrypted_data + parsed.mac,
                parsed.associated_data(),
            )
        except InvalidTag as exc:
            raise SpdmDecryptError("secured message failed authentication") from exc
        if len(plaintext) < 2:
            raise SpdmDecryptError("decrypted record has no ApplicationDataLength")
        size = int.from_bytes(plaintext[:2], "little")
        if size > len(plaintext) - 2:
            raise SpdmDecryptError("ApplicationDataLength exceeds the decrypted record")
        self.sequence_number += 1
        return plaintext[2 : 2 + size]
