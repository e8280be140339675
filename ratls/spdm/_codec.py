"""SPDM 1.2 message codec: bytes <-> frozen dataclasses, no I/O and no crypto.

Theory of operation
-------------------
Every SPDM message starts with the 4-byte header ``SPDMVersion | Code | Param1 |
Param2``.  :func:`parse_header` reads only that, so a state machine can decide
what to do with a message (VersionMismatch, UnexpectedRequest) before trusting
the rest.  :func:`decode_message` decodes a whole message into one of the
dataclasses below; each dataclass has ``encode()``, and ``decode(encode(m)) ==
m`` and ``encode(decode(b)) == b`` hold byte for byte, because every reserved
byte must be zero and every length field must agree with the bytes present.

Some message lengths are not carried on the wire but follow from what was
negotiated (hash size H, signature size S, DHE exchange size D) or from the
request a response answers (is there a MeasurementSummaryHash?  a signature?).
The decoder takes these as a :class:`NegotiatedSizes` and the request message;
it never guesses.

Only SPDM 1.2 layouts are implemented (GET_VERSION / VERSION are always 1.0);
any other SPDMVersion raises :class:`SpdmVersionMismatch`.  Malformed input
raises :class:`SpdmDecodeError` (a :class:`ratls.RemoteProtocolError`); no other
exception type escapes a decoder.  Field names follow the DSP0274 tables in
snake case.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, final

from ._constants import (
    NONCE_SIZE,
    RANDOM_DATA_SIZE,
    SPDM_VERSION_10,
    SPDM_VERSION_12,
    AlgType,
    BaseAsymAlgo,
    BaseHashAlgo,
    CapabilityFlag,
    DheGroup,
    KeyUpdateOperation,
    MeasurementSummaryHashType,
    RequestCode,
    ResponseCode,
)
from ._errors import (
    SpdmDecodeError,
    SpdmMessageTooLarge,
    SpdmUnexpectedMessage,
    SpdmUnsupportedRequest,
    SpdmVersionMismatch,
)

__all__ = [
    "MAX_SPDM_MESSAGE_SIZE",
    "AlgStruct",
    "Algorithms",
    "Capabilities",
    "CertChain",
    "Certificate",
    "Challenge",
    "ChallengeAuth",
    "Digests",
    "EndSession",
    "EndSessionAck",
    "Error",
    "Finish",
    "FinishRsp",
    "GetCapabilities",
    "GetCertificate",
    "GetDigests",
    "GetMeasurements",
    "GetVersion",
    "Heartbeat",
    "HeartbeatAck",
    "KeyExchange",
    "KeyExchangeRsp",
    "KeyUpdate",
    "KeyUpdateAck",
    "MeasurementBlock",
    "Measurements",
    "NegotiateAlgorithms",
    "NegotiatedSizes",
    "OpaqueData",
    "OpaqueElement",
    "RespondIfReady",
    "ResponseNotReadyData",
    "SecuredMessageSupportedVersions",
    "SecuredMessageVersionSelection",
    "SpdmHeader",
    "SpdmMessage",
    "Version",
    "decode_message",
    "decode_opaque_data",
    "decode_secured_message_opaque",
    "dhe_exchange_size",
    "hash_size",
    "parse_cert_chain",
    "parse_header",
    "parse_measurement_record",
    "parse_response_not_ready",
    "signature_size",
]

#: Largest SPDM message this codec accepts.  Without CHUNK_CAP a message must
#: fit DataTransferSize, which libspdm sets to 4608; the largest message we
#: produce (a CERTIFICATE portion of an SPDM chain whose length field is 16
#: bits) stays under 64 KiB + 8.  Anything larger is refused before decoding,
#: so a peer cannot make us hold more than this per message.
MAX_SPDM_MESSAGE_SIZE = 0x10000 + 8

_HEADER_SIZE = 4
_NO_FLAGS = CapabilityFlag(0)
_MAX_EXTENDED_ERROR_DATA = 32

_HASH_SIZES: dict[int, int] = {
    BaseHashAlgo.TPM_ALG_SHA_256: 32,
    BaseHashAlgo.TPM_ALG_SHA_384: 48,
    BaseHashAlgo.TPM_ALG_SHA_512: 64,
    BaseHashAlgo.TPM_ALG_SHA3_256: 32,
    BaseHashAlgo.TPM_ALG_SHA3_384: 48,
    BaseHashAlgo.TPM_ALG_SHA3_512: 64,
    BaseHashAlgo.TPM_ALG_SM3_256: 32,
}
_SIGNATURE_SIZES: dict[int, int] = {
    BaseAsymAlgo.TPM_ALG_RSASSA_2048: 256,
    BaseAsymAlgo.TPM_ALG_RSAPSS_2048: 256,
    BaseAsymAlgo.TPM_ALG_RSASSA_3072: 384,
    BaseAsymAlgo.TPM_ALG_RSAPSS_3072: 384,
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256: 64,
    BaseAsymAlgo.TPM_ALG_RSASSA_4096: 512,
    BaseAsymAlgo.TPM_ALG_RSAPSS_4096: 512,
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384: 96,
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P521: 132,
    BaseAsymAlgo.TPM_ALG_SM2_ECC_SM2_P256: 64,
    BaseAsymAlgo.EDDSA_ED25519: 64,
    BaseAsymAlgo.EDDSA_ED448: 114,
}
_DHE_SIZES: dict[int, int] = {
    DheGroup.FFDHE_2048: 256,
    DheGroup.FFDHE_3072: 384,
    DheGroup.FFDHE_4096: 512,
    DheGroup.SECP_256_R1: 64,
    DheGroup.SECP_384_R1: 96,
    DheGroup.SECP_521_R1: 132,
    DheGroup.SM2_P256: 64,
}


def hash_size(base_hash_algo: int) -> int:
    """Return the digest size H of one BaseHashAlgo bit.

    Args:
        base_hash_algo: exactly one :class:`BaseHashAlgo` bit.

    Returns:
        The digest size in bytes.

    Raises:
        ValueError: if the value is not exactly one known bit.
    """
    try:
        return _HASH_SIZES[base_hash_algo]
    except KeyError:
        raise ValueError(f"not a single BaseHashAlgo bit: {base_hash_algo:#x}") from None


def signature_size(base_asym_algo: int) -> int:
    """Return the signature size S of one BaseAsymAlgo bit (ECDSA: raw r||s).

    Args:
        base_asym_algo: exactly one :class:`BaseAsymAlgo` bit.

    Returns:
        The signature size in bytes.

    Raises:
        ValueError: if the value is not exactly one known bit.
    """
    try:
        return _SIGNATURE_SIZES[base_asym_algo]
    except KeyError:
        raise ValueError(f"not a single BaseAsymAlgo bit: {base_asym_algo:#x}") from None


def dhe_exchange_size(dhe_group: int) -> int:
    """Return the ExchangeData size D of one DHE group bit (ECDHE: X||Y).

    Args:
        dhe_group: exactly one :class:`DheGroup` bit.

    Returns:
        The ExchangeData size in bytes.

    Raises:
        ValueError: if the value is not exactly one known bit.
    """
    try:
        return _DHE_SIZES[dhe_group]
    except KeyError:
        raise ValueError(f"not a single DHE group bit: {dhe_group:#x}") from None


# ------------------------------------------------------------------ field checks and a reader


def _check_int(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must fit in {bits} bits, got {value!r}")


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def _hdr(version: int, code: int, param1: int, param2: int) -> bytes:
    return bytes((version, code, param1, param2))


def _u16(value: int) -> bytes:
    _check_int("16-bit field", value, 16)
    return value.to_bytes(2, "little")


def _u24(value: int) -> bytes:
    _check_int("24-bit field", value, 24)
    return value.to_bytes(3, "little")


class _Reader:
    """A cursor over one structure that raises SpdmDecodeError, never IndexError."""

    __slots__ = ("_data", "_pos", "structure")

    def __init__(self, data: bytes, structure: str, pos: int = 0) -> None:
        self._data = data
        self._pos = pos
        self.structure = structure

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def error(self, message: str) -> SpdmDecodeError:
        return SpdmDecodeError(message, structure=self.structure, offset=self._pos)

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or size > self.remaining:
            raise self.error(f"{what} needs {size} bytes, {self.remaining} left")
        out = self._data[self._pos : self._pos + size]
        self._pos += size
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    def zeros(self, size: int, what: str) -> None:
        start = self._pos
        if any(self.take(size, what)):
            raise SpdmDecodeError(f"{what} must be zero", structure=self.structure, offset=start)

    def finish(self) -> None:
        if self.remaining:
            raise self.error(f"{self.remaining} trailing bytes")


# --------------------------------------------------------------------------- header


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SpdmHeader:
    """The 4-byte header every SPDM message starts with."""

    spdm_version: int
    request_response_code: int
    param1: int
    param2: int

    @property
    def is_request(self) -> bool:
        """True for request codes (bit 7 set), False for responses."""
        return bool(self.request_response_code & 0x80)


def parse_header(data: bytes) -> SpdmHeader:
    """Read the SPDM header of a message without decoding its body.

    Args:
        data: a whole SPDM message (or at least its first 4 bytes).

    Returns:
        The header fields.

    Raises:
        SpdmDecodeError: if fewer than 4 bytes are given.
    """
    if len(data) < _HEADER_SIZE:
        raise SpdmDecodeError(f"message of {len(data)} bytes has no 4-byte header", offset=0)
    return SpdmHeader(
        spdm_version=data[0],
        request_response_code=data[1],
        param1=data[2],
        param2=data[3],
    )


# --------------------------------------------------------------------------- sizes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiatedSizes:
    """Sizes that follow from NEGOTIATE_ALGORITHMS and CAPABILITIES.

    Attributes:
        hash_size: H, the BaseHashAlgo digest size.
        signature_size: S, the responder's BaseAsymAlgo signature size.
        dhe_size: D, the ExchangeData size of the DHE group (0 if none).
        req_signature_size: the ReqBaseAsymAlg signature size (0 without mutual auth).
        handshake_in_the_clear: both sides set HANDSHAKE_IN_THE_CLEAR_CAP, so
            KEY_EXCHANGE_RSP has no ResponderVerifyData and FINISH_RSP has one.
    """

    hash_size: int
    signature_size: int
    dhe_size: int = 0
    req_signature_size: int = 0
    handshake_in_the_clear: bool = False

    @classmethod
    def from_algorithms(
        cls, algorithms: Algorithms, *, handshake_in_the_clear: bool = False
    ) -> NegotiatedSizes:
        """Derive the sizes from a responder's ALGORITHMS message.

        Args:
            algorithms: the ALGORITHMS response.
            handshake_in_the_clear: whether both sides set HANDSHAKE_IN_THE_CLEAR_CAP.

        Returns:
            The sizes.

        Raises:
            ValueError: if a selection is not exactly one known bit.
        """
        dhe = algorithms.selected(AlgType.DHE)
        req_asym = algorithms.selected(AlgType.REQ_BASE_ASYM_ALG)
        return cls(
            hash_size=hash_size(algorithms.base_hash_sel),
            signature_size=signature_size(algorithms.base_asym_sel),
            dhe_size=dhe_exchange_size(dhe) if dhe else 0,
            req_signature_size=signature_size(req_asym) if req_asym else 0,
            handshake_in_the_clear=handshake_in_the_clear,
        )


# --------------------------------------------------------------------------- VCA


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GetVersion:
    """GET_VERSION: always SPDMVersion 1.0, no body."""

    CODE: ClassVar[int] = RequestCode.GET_VERSION
    version: int = SPDM_VERSION_10

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, 0, 0)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Version:
    """VERSION: the responder's supported versions (u16 entries, 0x1200 = 1.2)."""

    CODE: ClassVar[int] = ResponseCode.VERSION
    version_number_entries: tuple[int, ...]
    version: int = SPDM_VERSION_10

    def __post_init__(self) -> None:
        if not 1 <= len(self.version_number_entries) <= 255:
            raise ValueError("VERSION needs 1..255 version entries")
        for entry in self.version_number_entries:
            _check_int("version entry", entry, 16)

    @property
    def spdm_versions(self) -> tuple[int, ...]:
        """The entries as SPDMVersion header bytes (major << 4 | minor)."""
        return tuple(entry >> 8 for entry in self.version_number_entries)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        entries = b"".join(e.to_bytes(2, "little") for e in self.version_number_entries)
        return (
            _hdr(self.version, self.CODE, 0, 0)
            + bytes((0, len(self.version_number_entries)))
            + entries
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _CapabilitiesBase:
    ct_exponent: int = 0
    flags: CapabilityFlag = _NO_FLAGS
    data_transfer_size: int = 0x1200
    max_spdm_msg_size: int = 0x1200
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("ct_exponent", self.ct_exponent, 8)
        _check_int("flags", int(self.flags), 32)
        _check_int("data_transfer_size", self.data_transfer_size, 32)
        _check_int("max_spdm_msg_size", self.max_spdm_msg_size, 32)

    def _encode(self, code: int) -> bytes:
        return _hdr(self.version, code, 0, 0) + struct.pack(
            "<BBHIII",
            0,
            self.ct_exponent,
            0,
            int(self.flags),
            self.data_transfer_size,
            self.max_spdm_msg_size,
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GetCapabilities(_CapabilitiesBase):
    """GET_CAPABILITIES (1.2 layout, 20 bytes)."""

    CODE: ClassVar[int] = RequestCode.GET_CAPABILITIES

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return self._encode(self.CODE)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities(_CapabilitiesBase):
    """CAPABILITIES (1.2 layout, 20 bytes)."""

    CODE: ClassVar[int] = ResponseCode.CAPABILITIES

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return self._encode(self.CODE)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AlgStruct:
    """One AlgStruct table: AlgType, AlgSupported and external algorithms."""

    alg_type: int
    alg_supported: int
    alg_external: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        _check_int("alg_type", self.alg_type, 8)
        _check_int("alg_supported", self.alg_supported, 16)
        if len(self.alg_external) > 15:
            raise ValueError("at most 15 external algorithms per AlgStruct")
        for ext in self.alg_external:
            _check_len("external algorithm", ext, 4)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return (
            bytes((self.alg_type, 0x20 | len(self.alg_external)))
            + _u16(self.alg_supported)
            + b"".join(self.alg_external)
        )


def _encode_alg_structs(structs: tuple[AlgStruct, ...]) -> bytes:
    return b"".join(s.encode() for s in structs)


def _check_alg_structs(structs: tuple[AlgStruct, ...]) -> None:
    if len(structs) > 255:
        raise ValueError("too many AlgStruct tables")
    for before, after in itertools.pairwise(structs):
        if after.alg_type <= before.alg_type:
            raise ValueError("AlgStruct types must strictly increase")


def _read_alg_structs(r: _Reader, count: int) -> tuple[AlgStruct, ...]:
    out: list[AlgStruct] = []
    last = -1
    for _ in range(count):
        start = r.pos
        alg_type = r.u8("AlgType")
        alg_count = r.u8("AlgCount")
        if alg_count >> 4 != 2:
            raise SpdmDecodeError(
                f"AlgCount fixed size must be 2, got {alg_count >> 4}",
                structure=r.structure,
                offset=start + 1,
            )
        if alg_type <= last:
            raise SpdmDecodeError(
                "AlgType values must strictly increase", structure=r.structure, offset=start
            )
        last = alg_type
        supported = r.u16("AlgSupported")
        external = tuple(r.take(4, "AlgExternal") for _ in range(alg_count & 0xF))
        out.append(AlgStruct(alg_type=alg_type, alg_supported=supported, alg_external=external))
    return tuple(out)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiateAlgorithms:
    """NEGOTIATE_ALGORITHMS: the requester's offer (1.2 layout)."""

    CODE: ClassVar[int] = RequestCode.NEGOTIATE_ALGORITHMS
    measurement_specification: int
    other_params_support: int
    base_asym_algo: int
    base_hash_algo: int
    ext_asym: tuple[bytes, ...] = ()
    ext_hash: tuple[bytes, ...] = ()
    req_alg_struct: tuple[AlgStruct, ...] = ()
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("measurement_specification", self.measurement_specification, 8)
        _check_int("other_params_support", self.other_params_support, 8)
        _check_int("base_asym_algo", self.base_asym_algo, 32)
        _check_int("base_hash_algo", self.base_hash_algo, 32)
        for ext in (*self.ext_asym, *self.ext_hash):
            _check_len("extended algorithm", ext, 4)
        if len(self.ext_asym) > 255 or len(self.ext_hash) > 255:
            raise ValueError("too many extended algorithms")
        _check_alg_structs(self.req_alg_struct)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        tail = b"".join(self.ext_asym) + b"".join(self.ext_hash)
        tail += _encode_alg_structs(self.req_alg_struct)
        length = 32 + len(tail)
        body = struct.pack(
            "<HBBII12xBBBB",
            length,
            self.measurement_specification,
            self.other_params_support,
            self.base_asym_algo,
            self.base_hash_algo,
            len(self.ext_asym),
            len(self.ext_hash),
            0,
            0,
        )
        return _hdr(self.version, self.CODE, len(self.req_alg_struct), 0) + body + tail


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Algorithms:
    """ALGORITHMS: the responder's selection (1.2 layout)."""

    CODE: ClassVar[int] = ResponseCode.ALGORITHMS
    measurement_specification_sel: int
    other_params_selection: int
    measurement_hash_algo: int
    base_asym_sel: int
    base_hash_sel: int
    ext_asym_sel: tuple[bytes, ...] = ()
    ext_hash_sel: tuple[bytes, ...] = ()
    resp_alg_struct: tuple[AlgStruct, ...] = ()
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("measurement_specification_sel", self.measurement_specification_sel, 8)
        _check_int("other_params_selection", self.other_params_selection, 8)
        _check_int("measurement_hash_algo", self.measurement_hash_algo, 32)
        _check_int("base_asym_sel", self.base_asym_sel, 32)
        _check_int("base_hash_sel", self.base_hash_sel, 32)
        for ext in (*self.ext_asym_sel, *self.ext_hash_sel):
            _check_len("extended algorithm", ext, 4)
        if len(self.ext_asym_sel) > 255 or len(self.ext_hash_sel) > 255:
            raise ValueError("too many extended algorithms")
        _check_alg_structs(self.resp_alg_struct)

    def selected(self, alg_type: AlgType) -> int:
        """Return AlgSupported of the table of this type, or 0 if it is absent."""
        for table in self.resp_alg_struct:
            if table.alg_type == alg_type:
                return table.alg_supported
        return 0

    def encode(self) -> bytes:
        """Return the wire bytes."""
        tail = b"".join(self.ext_asym_sel) + b"".join(self.ext_hash_sel)
        tail += _encode_alg_structs(self.resp_alg_struct)
        length = 36 + len(tail)
        body = struct.pack(
            "<HBBIII12xBBH",
            length,
            self.measurement_specification_sel,
            self.other_params_selection,
            self.measurement_hash_algo,
            self.base_asym_sel,
            self.base_hash_sel,
            len(self.ext_asym_sel),
            len(self.ext_hash_sel),
            0,
        )
        return _hdr(self.version, self.CODE, len(self.resp_alg_struct), 0) + body + tail


# --------------------------------------------------------------------------- certificates


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GetDigests:
    """GET_DIGESTS: no body."""

    CODE: ClassVar[int] = RequestCode.GET_DIGESTS
    version: int = SPDM_VERSION_12

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, 0, 0)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Digests:
    """DIGESTS: one H-byte digest per set bit of ``slot_mask``, in slot order."""

    CODE: ClassVar[int] = ResponseCode.DIGESTS
    slot_mask: int
    digests: tuple[bytes, ...]
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("slot_mask", self.slot_mask, 8)
        if self.slot_mask.bit_count() != len(self.digests):
            raise ValueError("one digest per set slot_mask bit is required")
        if len({len(d) for d in self.digests}) > 1:
            raise ValueError("digests must all have the same size")

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, 0, self.slot_mask) + b"".join(self.digests)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GetCertificate:
    """GET_CERTIFICATE: read ``length`` bytes of slot ``slot_id``'s chain at ``offset``."""

    CODE: ClassVar[int] = RequestCode.GET_CERTIFICATE
    slot_id: int
    offset: int
    length: int
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("slot_id", self.slot_id, 4)
        _check_int("offset", self.offset, 16)
        _check_int("length", self.length, 16)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, self.slot_id, 0) + struct.pack(
            "<HH", self.offset, self.length
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """CERTIFICATE: one portion of a chain and how many bytes remain after it."""

    CODE: ClassVar[int] = ResponseCode.CERTIFICATE
    slot_id: int
    remainder_length: int
    cert_chain: bytes
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("slot_id", self.slot_id, 4)
        _check_int("remainder_length", self.remainder_length, 16)
        _check_int("portion_length", len(self.cert_chain), 16)

    @property
    def portion_length(self) -> int:
        """PortionLength, the size of ``cert_chain``."""
        return len(self.cert_chain)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return (
            _hdr(self.version, self.CODE, self.slot_id, 0)
            + struct.pack("<HH", len(self.cert_chain), self.remainder_length)
            + self.cert_chain
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CertChain:
    """An SPDM certificate chain: ``Length | Reserved | RootHash | DER certs``.

    Attributes:
        root_hash: H(DER of the first certificate), as carried.
        certificates: DER certificates, root first, leaf last.
    """

    root_hash: bytes
    certificates: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.certificates:
            raise ValueError("a certificate chain needs at least one certificate")
        _check_int("chain length", self.length, 16)

    @property
    def length(self) -> int:
        """The Length field: the size of the whole chain including its header."""
        return 4 + len(self.root_hash) + sum(len(c) for c in self.certificates)

    @property
    def leaf(self) -> bytes:
        """DER of the last (leaf) certificate."""
        return self.certificates[-1]

    def encode(self) -> bytes:
        """Return the chain bytes as served by GET_CERTIFICATE."""
        return _u16(self.length) + b"\0\0" + self.root_hash + b"".join(self.certificates)


def _der_element_size(data: bytes, pos: int, structure: str) -> int:
    """Size of the DER TLV starting at pos (tag, length and contents)."""
    r = _Reader(data, structure, pos)
    if r.u8("DER tag") != 0x30:
        raise SpdmDecodeError("certificate is not a DER SEQUENCE", structure=structure, offset=pos)
    first = r.u8("DER length")
    if first < 0x80:
        length = first
    elif first in (0x81, 0x82, 0x83):
        raw = r.take(first & 0x7F, "DER long length")
        length = int.from_bytes(raw, "big")
        if length < 0x80 or raw[0] == 0:
            raise SpdmDecodeError("non-minimal DER length", structure=structure, offset=pos + 1)
    else:
        raise SpdmDecodeError("unsupported DER length form", structure=structure, offset=pos + 1)
    r.take(length, "DER contents")
    return r.pos - pos


def parse_cert_chain(data: bytes, hash_size: int) -> CertChain:
    """Split an SPDM certificate chain into its header fields and DER certificates.

    Only the framing is checked here (Length, reserved bytes, DER sizes); the
    certificates themselves are checked by whoever trusts them.

    Args:
        data: the whole chain (all CERTIFICATE portions concatenated).
        hash_size: H of the negotiated BaseHashAlgo (the RootHash size).

    Returns:
        The parsed chain.

    Raises:
        SpdmDecodeError: if the framing is wrong.
    """
    structure = "SPDM_CERT_CHAIN"
    r = _Reader(bytes(data), structure)
    length = r.u16("Length")
    if length != len(data):
        raise SpdmDecodeError(
            f"Length {length} differs from the chain size {len(data)}",
            structure=structure,
            offset=0,
        )
    r.zeros(2, "Reserved")
    root_hash = r.take(hash_size, "RootHash")
    certs: list[bytes] = []
    while r.remaining:
        size = _der_element_size(data, r.pos, structure)
        certs.append(r.take(size, "certificate"))
    if not certs:
        raise r.error("chain holds no certificate")
    return CertChain(root_hash=root_hash, certificates=tuple(certs))


# --------------------------------------------------------------------------- challenge


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """CHALLENGE: ask slot ``slot_id`` to sign M1 over ``nonce``."""

    CODE: ClassVar[int] = RequestCode.CHALLENGE
    slot_id: int
    measurement_summary_hash_type: MeasurementSummaryHashType
    nonce: bytes
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("slot_id", self.slot_id, 8)
        _check_len("nonce", self.nonce, NONCE_SIZE)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return (
            _hdr(self.version, self.CODE, self.slot_id, self.measurement_summary_hash_type)
            + self.nonce
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeAuth:
    """CHALLENGE_AUTH: the signed answer to CHALLENGE."""

    CODE: ClassVar[int] = ResponseCode.CHALLENGE_AUTH
    slot_id: int
    slot_mask: int
    cert_chain_hash: bytes
    nonce: bytes
    measurement_summary_hash: bytes
    opaque_data: bytes
    signature: bytes
    basic_mut_auth_req: bool = False
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("slot_id", self.slot_id, 4)
        _check_int("slot_mask", self.slot_mask, 8)
        _check_len("nonce", self.nonce, NONCE_SIZE)
        _check_int("opaque length", len(self.opaque_data), 16)

    def encode_unsigned(self) -> bytes:
        """Return the message up to (excluding) the Signature: what M1 covers."""
        param1 = self.slot_id | (0x80 if self.basic_mut_auth_req else 0)
        return (
            _hdr(self.version, self.CODE, param1, self.slot_mask)
            + self.cert_chain_hash
            + self.nonce
            + self.measurement_summary_hash
            + _u16(len(self.opaque_data))
            + self.opaque_data
        )

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return self.encode_unsigned() + self.signature


# --------------------------------------------------------------------------- measurements


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MeasurementBlock:
    """One measurement block with a DMTF measurement.

    Attributes:
        index: the measurement index (1..0xFE).
        value_type: DMTFSpecMeasurementValueType; bit 7 set means raw bit stream.
        value: the DMTF measurement value (a digest or raw bytes).
    """

    index: int
    value_type: int
    value: bytes
    measurement_specification: int = 0x01

    def __post_init__(self) -> None:
        if not 1 <= self.index <= 0xFE:
            raise ValueError(f"measurement index must be 1..0xFE, got {self.index}")
        _check_int("value_type", self.value_type, 8)
        if self.measurement_specification != 0x01:
            raise ValueError("only the DMTF measurement specification (0x01) is supported")
        _check_int("value size", len(self.value) + 3, 16)

    @property
    def is_raw_bit_stream(self) -> bool:
        """True if the value is a raw bit stream, False if it is a digest."""
        return bool(self.value_type & 0x80)

    @property
    def dmtf_type(self) -> int:
        """Bits 6:0 of the value type (see :class:`DmtfMeasurementType`)."""
        return self.value_type & 0x7F

    def encode(self) -> bytes:
        """Return the block bytes (block header, DMTF header and value)."""
        return (
            bytes((self.index, self.measurement_specification))
            + _u16(3 + len(self.value))
            + bytes((self.value_type,))
            + _u16(len(self.value))
            + self.value
        )


def _read_measurement_block(r: _Reader) -> MeasurementBlock:
    start = r.pos
    index = r.u8("Index")
    if index in (0, 0xFF):
        raise SpdmDecodeError(
            f"reserved measurement index {index:#x}", structure=r.structure, offset=start
        )
    spec = r.u8("MeasurementSpecification")
    if spec != 0x01:
        raise SpdmDecodeError(
            f"MeasurementSpecification {spec:#x} is not DMTF",
            structure=r.structure,
            offset=start + 1,
        )
    size = r.u16("MeasurementSize")
    inner = _Reader(r.take(size, "Measurement"), r.structure, 0)
    value_type = inner.u8("DMTFSpecMeasurementValueType")
    value_size = inner.u16("DMTFSpecMeasurementValueSize")
    value = inner.take(value_size, "DMTFSpecMeasurementValue")
    if inner.remaining:
        raise SpdmDecodeError(
            "MeasurementSize disagrees with DMTFSpecMeasurementValueSize",
            structure=r.structure,
            offset=start + 2,
        )
    return MeasurementBlock(index=index, value_type=value_type, value=value)


def parse_measurement_record(data: bytes, number_of_blocks: int) -> tuple[MeasurementBlock, ...]:
    """Parse a MeasurementRecord holding exactly ``number_of_blocks`` DMTF blocks.

    Args:
        data: the MeasurementRecord bytes.
        number_of_blocks: NumberOfBlocks from the MEASUREMENTS header.

    Returns:
        The blocks, in record order.

    Raises:
        SpdmDecodeError: on a malformed block, a count mismatch or trailing bytes.
    """
    r = _Reader(bytes(data), "MeasurementRecord")
    blocks = tuple(_read_measurement_block(r) for _ in range(number_of_blocks))
    r.finish()
    return blocks


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GetMeasurements:
    """GET_MEASUREMENTS: ask for one (1..0xFE), all (0xFF) or the count (0) of the blocks."""

    CODE: ClassVar[int] = RequestCode.GET_MEASUREMENTS
    measurement_operation: int
    signature_requested: bool = False
    raw_bit_stream_requested: bool = False
    nonce: bytes | None = None
    slot_id_param: int = 0
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("measurement_operation", self.measurement_operation, 8)
        _check_int("slot_id_param", self.slot_id_param, 4)
        if self.signature_requested:
            if self.nonce is None:
                raise ValueError("a signed GET_MEASUREMENTS needs a nonce")
            _check_len("nonce", self.nonce, NONCE_SIZE)
        elif self.nonce is not None or self.slot_id_param:
            raise ValueError("nonce and slot_id_param only go with signature_requested")

    def encode(self) -> bytes:
        """Return the wire bytes."""
        attributes = (1 if self.signature_requested else 0) | (
            2 if self.raw_bit_stream_requested else 0
        )
        out = _hdr(self.version, self.CODE, attributes, self.measurement_operation)
        if self.nonce is not None:
            out += self.nonce + bytes((self.slot_id_param,))
        return out


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Measurements:
    """MEASUREMENTS: the blocks, a nonce, opaque data and (if asked) a signature."""

    CODE: ClassVar[int] = ResponseCode.MEASUREMENTS
    measurement_record: tuple[MeasurementBlock, ...]
    nonce: bytes
    opaque_data: bytes = b""
    signature: bytes = b""
    number_of_measurement_indices: int = 0
    slot_id_param: int = 0
    content_changed: int = 0
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("number_of_measurement_indices", self.number_of_measurement_indices, 8)
        _check_int("slot_id_param", self.slot_id_param, 4)
        _check_int("content_changed", self.content_changed, 2)
        _check_int("number_of_blocks", len(self.measurement_record), 8)
        _check_len("nonce", self.nonce, NONCE_SIZE)
        _check_int("opaque length", len(self.opaque_data), 16)

    def encode_unsigned(self) -> bytes:
        """Return the message up to (excluding) the Signature: what L1/L2 covers."""
        record = b"".join(b.encode() for b in self.measurement_record)
        param2 = self.slot_id_param | (self.content_changed << 4)
        return (
            _hdr(self.version, self.CODE, self.number_of_measurement_indices, param2)
            + bytes((len(self.measurement_record),))
            + _u24(len(record))
            + record
            + self.nonce
            + _u16(len(self.opaque_data))
            + self.opaque_data
        )

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return self.encode_unsigned() + self.signature


# --------------------------------------------------------------------------- sessions


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyExchange:
    """KEY_EXCHANGE: the requester's DHE share and session half-ID."""

    CODE: ClassVar[int] = RequestCode.KEY_EXCHANGE
    measurement_summary_hash_type: MeasurementSummaryHashType
    slot_id: int
    req_session_id: int
    random_data: bytes
    exchange_data: bytes
    opaque_data: bytes
    session_policy: int = 0
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("slot_id", self.slot_id, 8)
        _check_int("req_session_id", self.req_session_id, 16)
        _check_int("session_policy", self.session_policy, 8)
        _check_len("random_data", self.random_data, RANDOM_DATA_SIZE)
        _check_int("opaque length", len(self.opaque_data), 16)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return (
            _hdr(self.version, self.CODE, self.measurement_summary_hash_type, self.slot_id)
            + struct.pack("<HBB", self.req_session_id, self.session_policy, 0)
            + self.random_data
            + self.exchange_data
            + _u16(len(self.opaque_data))
            + self.opaque_data
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyExchangeRsp:
    """KEY_EXCHANGE_RSP: the responder's DHE share, signature and verify data."""

    CODE: ClassVar[int] = ResponseCode.KEY_EXCHANGE_RSP
    rsp_session_id: int
    random_data: bytes
    exchange_data: bytes
    measurement_summary_hash: bytes
    opaque_data: bytes
    signature: bytes
    responder_verify_data: bytes
    heartbeat_period: int = 0
    mut_auth_requested: int = 0
    req_slot_id_param: int = 0
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("heartbeat_period", self.heartbeat_period, 8)
        _check_int("rsp_session_id", self.rsp_session_id, 16)
        _check_int("mut_auth_requested", self.mut_auth_requested, 8)
        _check_int("req_slot_id_param", self.req_slot_id_param, 8)
        _check_len("random_data", self.random_data, RANDOM_DATA_SIZE)
        _check_int("opaque length", len(self.opaque_data), 16)

    def encode_unsigned(self) -> bytes:
        """Return the message up to (excluding) the Signature."""
        return (
            _hdr(self.version, self.CODE, self.heartbeat_period, 0)
            + struct.pack(
                "<HBB", self.rsp_session_id, self.mut_auth_requested, self.req_slot_id_param
            )
            + self.random_data
            + self.exchange_data
            + self.measurement_summary_hash
            + _u16(len(self.opaque_data))
            + self.opaque_data
        )

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return self.encode_unsigned() + self.signature + self.responder_verify_data


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Finish:
    """FINISH: the requester's verify data (and signature under mutual auth)."""

    CODE: ClassVar[int] = RequestCode.FINISH
    requester_verify_data: bytes
    signature: bytes = b""
    req_slot_id: int = 0
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("req_slot_id", self.req_slot_id, 8)

    @property
    def signature_included(self) -> bool:
        """Param1 bit 0: a requester signature is present."""
        return bool(self.signature)

    def encode_header(self) -> bytes:
        """Return the 4-byte header, the part RequesterVerifyData covers (no mutual auth)."""
        return _hdr(self.version, self.CODE, 1 if self.signature else 0, self.req_slot_id)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return self.encode_header() + self.signature + self.requester_verify_data


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FinishRsp:
    """FINISH_RSP: carries ResponderVerifyData only when the handshake is in the clear."""

    CODE: ClassVar[int] = ResponseCode.FINISH_RSP
    responder_verify_data: bytes = b""
    version: int = SPDM_VERSION_12

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, 0, 0) + self.responder_verify_data


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """HEARTBEAT: no body."""

    CODE: ClassVar[int] = RequestCode.HEARTBEAT
    version: int = SPDM_VERSION_12

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, 0, 0)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAck:
    """HEARTBEAT_ACK: no body."""

    CODE: ClassVar[int] = ResponseCode.HEARTBEAT_ACK
    version: int = SPDM_VERSION_12

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, 0, 0)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUpdate:
    """KEY_UPDATE: operation in Param1, tag in Param2."""

    CODE: ClassVar[int] = RequestCode.KEY_UPDATE
    key_operation: KeyUpdateOperation
    tag: int
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("tag", self.tag, 8)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, self.key_operation, self.tag)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUpdateAck:
    """KEY_UPDATE_ACK: echoes the operation and tag."""

    CODE: ClassVar[int] = ResponseCode.KEY_UPDATE_ACK
    key_operation: KeyUpdateOperation
    tag: int
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("tag", self.tag, 8)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, self.key_operation, self.tag)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EndSession:
    """END_SESSION: Param1 bit 0 asks the responder to clear the negotiated state."""

    CODE: ClassVar[int] = RequestCode.END_SESSION
    preserve_negotiated_state_clear: bool = False
    version: int = SPDM_VERSION_12

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, int(self.preserve_negotiated_state_clear), 0)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EndSessionAck:
    """END_SESSION_ACK: no body."""

    CODE: ClassVar[int] = ResponseCode.END_SESSION_ACK
    version: int = SPDM_VERSION_12

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, 0, 0)


# --------------------------------------------------------------------------- errors


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """ERROR: ErrorCode, ErrorData and up to 32 bytes of ExtendedErrorData.

    ``error_code`` stays an ``int`` so unknown codes pass through; compare it with
    :class:`SpdmErrorCode` members.
    """

    CODE: ClassVar[int] = ResponseCode.ERROR
    error_code: int
    error_data: int = 0
    extended_error_data: bytes = b""
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("error_code", self.error_code, 8)
        _check_int("error_data", self.error_data, 8)
        if len(self.extended_error_data) > _MAX_EXTENDED_ERROR_DATA:
            raise ValueError("ExtendedErrorData is at most 32 bytes")

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return (
            _hdr(self.version, self.CODE, self.error_code, self.error_data)
            + self.extended_error_data
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseNotReadyData:
    """ExtendedErrorData of ERROR(ResponseNotReady)."""

    rd_exponent: int
    request_code: int
    token: int
    rdtm: int

    def __post_init__(self) -> None:
        for name in ("rd_exponent", "request_code", "token", "rdtm"):
            _check_int(name, getattr(self, name), 8)

    def encode(self) -> bytes:
        """Return the 4 ExtendedErrorData bytes."""
        return bytes((self.rd_exponent, self.request_code, self.token, self.rdtm))


def parse_response_not_ready(data: bytes) -> ResponseNotReadyData:
    """Parse the ExtendedErrorData of ERROR(ResponseNotReady).

    Args:
        data: exactly 4 bytes.

    Returns:
        The parsed fields.

    Raises:
        SpdmDecodeError: if the size is not 4.
    """
    if len(data) != 4:
        raise SpdmDecodeError(
            f"ResponseNotReady data must be 4 bytes, got {len(data)}", structure="ERROR"
        )
    return ResponseNotReadyData(
        rd_exponent=data[0], request_code=data[1], token=data[2], rdtm=data[3]
    )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RespondIfReady:
    """RESPOND_IF_READY: retry the request named by the ResponseNotReady token."""

    CODE: ClassVar[int] = RequestCode.RESPOND_IF_READY
    request_code: int
    token: int
    version: int = SPDM_VERSION_12

    def __post_init__(self) -> None:
        _check_int("request_code", self.request_code, 8)
        _check_int("token", self.token, 8)

    def encode(self) -> bytes:
        """Return the wire bytes."""
        return _hdr(self.version, self.CODE, self.request_code, self.token)


SpdmMessage: TypeAlias = (
    GetVersion
    | Version
    | GetCapabilities
    | Capabilities
    | NegotiateAlgorithms
    | Algorithms
    | GetDigests
    | Digests
    | GetCertificate
    | Certificate
    | Challenge
    | ChallengeAuth
    | GetMeasurements
    | Measurements
    | KeyExchange
    | KeyExchangeRsp
    | Finish
    | FinishRsp
    | Heartbeat
    | HeartbeatAck
    | KeyUpdate
    | KeyUpdateAck
    | EndSession
    | EndSessionAck
    | Error
    | RespondIfReady
)


# --------------------------------------------------------------------------- opaque data


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class OpaqueElement:
    """One element of general opaque data (format 1): registry ID, vendor ID, data."""

    data: bytes
    registry_id: int = 0
    vendor_id: bytes = b""

    def __post_init__(self) -> None:
        _check_int("registry_id", self.registry_id, 8)
        _check_int("vendor_id length", len(self.vendor_id), 8)
        _check_int("data length", len(self.data), 16)

    def encode(self) -> bytes:
        """Return the element bytes including its zero padding to a multiple of 4."""
        raw = (
            bytes((self.registry_id, len(self.vendor_id)))
            + self.vendor_id
            + _u16(len(self.data))
            + self.data
        )
        return raw + bytes(-len(raw) % 4)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class OpaqueData:
    """General opaque data, format 1: ``TotalElements | Reserved(3) | elements``."""

    elements: tuple[OpaqueElement, ...]

    def __post_init__(self) -> None:
        _check_int("total elements", len(self.elements), 8)

    def encode(self) -> bytes:
        """Return the opaque data bytes."""
        return bytes((len(self.elements), 0, 0, 0)) + b"".join(e.encode() for e in self.elements)


def decode_opaque_data(data: bytes) -> OpaqueData:
    """Parse general opaque data (OpaqueDataFmt1).

    Args:
        data: the OpaqueData bytes of a message.

    Returns:
        The elements.

    Raises:
        SpdmDecodeError: on malformed or non-zero padding, or trailing bytes.
    """
    r = _Reader(bytes(data), "OpaqueData")
    total = r.u8("TotalElements")
    r.zeros(3, "Reserved")
    elements = []
    for _ in range(total):
        start = r.pos
        registry_id = r.u8("ID")
        vendor_id = r.take(r.u8("VendorLen"), "VendorID")
        payload = r.take(r.u16("OpaqueElementDataLen"), "OpaqueElementData")
        r.zeros(-(r.pos - start) % 4, "AlignPadding")
        elements.append(OpaqueElement(data=payload, registry_id=registry_id, vendor_id=vendor_id))
    r.finish()
    return OpaqueData(elements=tuple(elements))


_SM_DATA_VERSION = 1
_SM_ID_VERSION_SELECTION = 0
_SM_ID_SUPPORTED_VERSIONS = 1


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SecuredMessageSupportedVersions:
    """DSP0277 opaque element "supported version list" (in KEY_EXCHANGE).

    Attributes:
        versions: u16 version entries, e.g. 0x1200 for secured-message 1.2.
    """

    versions: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_int("version count", len(self.versions), 8)
        for version in self.versions:
            _check_int("version", version, 16)

    def to_opaque_data(self) -> OpaqueData:
        """Wrap in format-1 opaque data with one DMTF element."""
        data = bytes((_SM_DATA_VERSION, _SM_ID_SUPPORTED_VERSIONS, len(self.versions)))
        data += b"".join(v.to_bytes(2, "little") for v in self.versions)
        return OpaqueData(elements=(OpaqueElement(data=data),))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SecuredMessageVersionSelection:
    """DSP0277 opaque element "version selection" (in KEY_EXCHANGE_RSP)."""

    selected_version: int

    def __post_init__(self) -> None:
        _check_int("selected_version", self.selected_version, 16)

    def to_opaque_data(self) -> OpaqueData:
        """Wrap in format-1 opaque data with one DMTF element."""
        data = bytes((_SM_DATA_VERSION, _SM_ID_VERSION_SELECTION))
        data += self.selected_version.to_bytes(2, "little")
        return OpaqueData(elements=(OpaqueElement(data=data),))


def decode_secured_message_opaque(
    data: bytes,
) -> SecuredMessageSupportedVersions | SecuredMessageVersionSelection:
    """Parse the DSP0277 opaque data of KEY_EXCHANGE or KEY_EXCHANGE_RSP.

    Exactly one DMTF element (registry ID 0, no vendor ID) is accepted.

    Args:
        data: the OpaqueData of the message (format 1).

    Returns:
        The supported-version list or the version selection.

    Raises:
        SpdmDecodeError: if the data is not exactly one well-formed DSP0277 element.
    """
    opaque = decode_opaque_data(data)
    if len(opaque.elements) != 1:
        raise SpdmDecodeError("expected exactly one opaque element", structure="OpaqueData")
    element = opaque.elements[0]
    if element.registry_id != 0 or element.vendor_id:
        raise SpdmDecodeError("opaque element is not a DMTF element", structure="OpaqueData")
    r = _Reader(element.data, "SecuredMessageOpaqueElement")
    if r.u8("SMDataVersion") != _SM_DATA_VERSION:
        raise SpdmDecodeError("unsupported SMDataVersion", structure=r.structure, offset=0)
    sm_id = r.u8("SMDataID")
    result: SecuredMessageSupportedVersions | SecuredMessageVersionSelection
    if sm_id == _SM_ID_VERSION_SELECTION:
        result = SecuredMessageVersionSelection(selected_version=r.u16("SelectedVersion"))
    elif sm_id == _SM_ID_SUPPORTED_VERSIONS:
        count = r.u8("VersionCount")
        result = SecuredMessageSupportedVersions(
            versions=tuple(r.u16("VersionsList") for _ in range(count))
        )
    else:
        raise SpdmDecodeError(f"unknown SMDataID {sm_id}", structure=r.structure, offset=1)
    r.finish()
    return result


# --------------------------------------------------------------------------- decoding


def _need_sizes(sizes: NegotiatedSizes | None, structure: str) -> NegotiatedSizes:
    if sizes is None:
        raise SpdmUnexpectedMessage(f"{structure} before algorithms were negotiated")
    return sizes


def _decode_body(
    hdr: SpdmHeader,
    r: _Reader,
    sizes: NegotiatedSizes | None,
    request: SpdmMessage | None,
) -> SpdmMessage:
    code = hdr.request_response_code
    p1, p2, version = hdr.param1, hdr.param2, hdr.spdm_version
    name = r.structure

    def reserved_params(*, param1: bool = True, param2: bool = True) -> None:
        if param1 and p1:
            raise SpdmDecodeError("reserved Param1 must be zero", structure=name, offset=2)
        if param2 and p2:
            raise SpdmDecodeError("reserved Param2 must be zero", structure=name, offset=3)

    def response_to(kind: type[object]) -> object:
        if not isinstance(request, kind):
            raise SpdmUnexpectedMessage(f"{name} does not answer {type(request).__name__}")
        return request

    if code == RequestCode.GET_VERSION:
        reserved_params()
        return GetVersion(version=version)
    if code == ResponseCode.VERSION:
        reserved_params()
        r.zeros(1, "Reserved")
        count = r.u8("VersionNumberEntryCount")
        if count == 0:
            raise r.error("VERSION lists no version")
        return Version(
            version_number_entries=tuple(r.u16("VersionNumberEntry") for _ in range(count)),
            version=version,
        )
    if code in (RequestCode.GET_CAPABILITIES, ResponseCode.CAPABILITIES):
        reserved_params()
        r.zeros(1, "Reserved")
        ct_exponent = r.u8("CTExponent")
        r.zeros(2, "Reserved")
        flags = CapabilityFlag(r.u32("Flags"))
        dts = r.u32("DataTransferSize")
        max_size = r.u32("MaxSPDMmsgSize")
        cls: type[GetCapabilities | Capabilities] = (
            GetCapabilities if code == RequestCode.GET_CAPABILITIES else Capabilities
        )
        return cls(
            ct_exponent=ct_exponent,
            flags=flags,
            data_transfer_size=dts,
            max_spdm_msg_size=max_size,
            version=version,
        )
    if code == RequestCode.NEGOTIATE_ALGORITHMS:
        reserved_params(param1=False)
        length = r.u16("Length")
        if length != len(r._data):
            raise SpdmDecodeError(
                f"Length {length} differs from message size {len(r._data)}",
                structure=name,
                offset=4,
            )
        meas_spec = r.u8("MeasurementSpecification")
        other = r.u8("OtherParamsSupport")
        base_asym = r.u32("BaseAsymAlgo")
        base_hash = r.u32("BaseHashAlgo")
        r.zeros(12, "Reserved")
        ext_asym_count = r.u8("ExtAsymCount")
        ext_hash_count = r.u8("ExtHashCount")
        r.zeros(2, "Reserved")
        ext_asym = tuple(r.take(4, "ExtAsym") for _ in range(ext_asym_count))
        ext_hash = tuple(r.take(4, "ExtHash") for _ in range(ext_hash_count))
        return NegotiateAlgorithms(
            measurement_specification=meas_spec,
            other_params_support=other,
            base_asym_algo=base_asym,
            base_hash_algo=base_hash,
            ext_asym=ext_asym,
            ext_hash=ext_hash,
            req_alg_struct=_read_alg_structs(r, p1),
            version=version,
        )
    if code == ResponseCode.ALGORITHMS:
        reserved_params(param1=False)
        length = r.u16("Length")
        if length != len(r._data):
            raise SpdmDecodeError(
                f"Length {length} differs from message size {len(r._data)}",
                structure=name,
                offset=4,
            )
        meas_spec = r.u8("MeasurementSpecificationSel")
        other = r.u8("OtherParamsSelection")
        meas_hash = r.u32("MeasurementHashAlgo")
        base_asym = r.u32("BaseAsymSel")
        base_hash = r.u32("BaseHashSel")
        r.zeros(12, "Reserved")
        ext_asym_count = r.u8("ExtAsymSelCount")
        ext_hash_count = r.u8("ExtHashSelCount")
        r.zeros(2, "Reserved")
        ext_asym = tuple(r.take(4, "ExtAsymSel") for _ in range(ext_asym_count))
        ext_hash = tuple(r.take(4, "ExtHashSel") for _ in range(ext_hash_count))
        return Algorithms(
            measurement_specification_sel=meas_spec,
            other_params_selection=other,
            measurement_hash_algo=meas_hash,
            base_asym_sel=base_asym,
            base_hash_sel=base_hash,
            ext_asym_sel=ext_asym,
            ext_hash_sel=ext_hash,
            resp_alg_struct=_read_alg_structs(r, p1),
            version=version,
        )
    if code == RequestCode.GET_DIGESTS:
        reserved_params()
        return GetDigests(version=version)
    if code == ResponseCode.DIGESTS:
        reserved_params(param2=False)
        h = _need_sizes(sizes, name).hash_size
        digests = tuple(r.take(h, "Digest") for _ in range(p2.bit_count()))
        return Digests(slot_mask=p2, digests=digests, version=version)
    if code == RequestCode.GET_CERTIFICATE:
        reserved_params(param1=False)
        if p1 & 0xF0:
            raise SpdmDecodeError("reserved SlotID bits must be zero", structure=name, offset=2)
        offset = r.u16("Offset")
        return GetCertificate(slot_id=p1, offset=offset, length=r.u16("Length"), version=version)
    if code == ResponseCode.CERTIFICATE:
        reserved_params(param1=False)
        if p1 & 0xF0:
            raise SpdmDecodeError("reserved SlotID bits must be zero", structure=name, offset=2)
        portion = r.u16("PortionLength")
        remainder = r.u16("RemainderLength")
        return Certificate(
            slot_id=p1,
            remainder_length=remainder,
            cert_chain=r.take(portion, "CertChain"),
            version=version,
        )
    if code == RequestCode.CHALLENGE:
        try:
            summary_type = MeasurementSummaryHashType(p2)
        except ValueError:
            raise SpdmDecodeError(
                f"unknown MeasurementSummaryHashType {p2:#x}", structure=name, offset=3
            ) from None
        return Challenge(
            slot_id=p1,
            measurement_summary_hash_type=summary_type,
            nonce=r.take(NONCE_SIZE, "Nonce"),
            version=version,
        )
    if code == ResponseCode.CHALLENGE_AUTH:
        challenge = response_to(Challenge)
        assert isinstance(challenge, Challenge)  # noqa: S101 - narrowing only
        s = _need_sizes(sizes, name)
        if p1 & 0x70:
            raise SpdmDecodeError("reserved Param1 bits must be zero", structure=name, offset=2)
        cert_chain_hash = r.take(s.hash_size, "CertChainHash")
        nonce = r.take(NONCE_SIZE, "Nonce")
        summary_present = challenge.measurement_summary_hash_type != MeasurementSummaryHashType.NONE
        summary = r.take(s.hash_size, "MeasurementSummaryHash") if summary_present else b""
        opaque = r.take(r.u16("OpaqueDataLength"), "OpaqueData")
        return ChallengeAuth(
            slot_id=p1 & 0xF,
            basic_mut_auth_req=bool(p1 & 0x80),
            slot_mask=p2,
            cert_chain_hash=cert_chain_hash,
            nonce=nonce,
            measurement_summary_hash=summary,
            opaque_data=opaque,
            signature=r.take(s.signature_size, "Signature"),
            version=version,
        )
    if code == RequestCode.GET_MEASUREMENTS:
        if p1 & ~0x03:
            raise SpdmDecodeError("reserved attribute bits must be zero", structure=name, offset=2)
        signed = bool(p1 & 0x01)
        req_nonce: bytes | None = None
        slot_id_param = 0
        if signed:
            req_nonce = r.take(NONCE_SIZE, "Nonce")
            slot_id_param = r.u8("SlotIDParam")
            if slot_id_param & 0xF0:
                raise SpdmDecodeError(
                    "reserved SlotIDParam bits must be zero", structure=name, offset=r.pos - 1
                )
        return GetMeasurements(
            measurement_operation=p2,
            signature_requested=signed,
            raw_bit_stream_requested=bool(p1 & 0x02),
            nonce=req_nonce,
            slot_id_param=slot_id_param,
            version=version,
        )
    if code == ResponseCode.MEASUREMENTS:
        get = response_to(GetMeasurements)
        assert isinstance(get, GetMeasurements)  # noqa: S101 - narrowing only
        if p2 & 0xC0:
            raise SpdmDecodeError("reserved Param2 bits must be zero", structure=name, offset=3)
        number_of_blocks = r.u8("NumberOfBlocks")
        record_start = r.pos + 3
        record = r.take(r.u24("MeasurementRecordLength"), "MeasurementRecord")
        try:
            blocks = parse_measurement_record(record, number_of_blocks)
        except SpdmDecodeError as exc:
            rec_offset: int | None = None if exc.offset is None else record_start + exc.offset
            raise SpdmDecodeError(
                str(exc), structure=f"{name}.MeasurementRecord", offset=rec_offset
            ) from None
        nonce_value = r.take(NONCE_SIZE, "Nonce")
        opaque = r.take(r.u16("OpaqueDataLength"), "OpaqueData")
        signature = b""
        if get.signature_requested:
            signature = r.take(_need_sizes(sizes, name).signature_size, "Signature")
        return Measurements(
            number_of_measurement_indices=p1,
            slot_id_param=p2 & 0xF,
            content_changed=(p2 >> 4) & 0x3,
            measurement_record=blocks,
            nonce=nonce_value,
            opaque_data=opaque,
            signature=signature,
            version=version,
        )
    if code == RequestCode.KEY_EXCHANGE:
        try:
            summary_type = MeasurementSummaryHashType(p1)
        except ValueError:
            raise SpdmDecodeError(
                f"unknown MeasurementSummaryHashType {p1:#x}", structure=name, offset=2
            ) from None
        s = _need_sizes(sizes, name)
        req_session_id = r.u16("ReqSessionID")
        session_policy = r.u8("SessionPolicy")
        r.zeros(1, "Reserved")
        return KeyExchange(
            measurement_summary_hash_type=summary_type,
            slot_id=p2,
            req_session_id=req_session_id,
            session_policy=session_policy,
            random_data=r.take(RANDOM_DATA_SIZE, "RandomData"),
            exchange_data=r.take(s.dhe_size, "ExchangeData"),
            opaque_data=r.take(r.u16("OpaqueDataLength"), "OpaqueData"),
            version=version,
        )
    if code == ResponseCode.KEY_EXCHANGE_RSP:
        key_exchange = response_to(KeyExchange)
        assert isinstance(key_exchange, KeyExchange)  # noqa: S101 - narrowing only
        s = _need_sizes(sizes, name)
        reserved_params(param1=False)
        rsp_session_id = r.u16("RspSessionID")
        mut_auth = r.u8("MutAuthRequested")
        req_slot = r.u8("ReqSlotIDParam")
        random_data = r.take(RANDOM_DATA_SIZE, "RandomData")
        exchange_data = r.take(s.dhe_size, "ExchangeData")
        summary_present = (
            key_exchange.measurement_summary_hash_type != MeasurementSummaryHashType.NONE
        )
        summary = r.take(s.hash_size, "MeasurementSummaryHash") if summary_present else b""
        opaque = r.take(r.u16("OpaqueDataLength"), "OpaqueData")
        signature = r.take(s.signature_size, "Signature")
        verify = b"" if s.handshake_in_the_clear else r.take(s.hash_size, "ResponderVerifyData")
        return KeyExchangeRsp(
            heartbeat_period=p1,
            rsp_session_id=rsp_session_id,
            mut_auth_requested=mut_auth,
            req_slot_id_param=req_slot,
            random_data=random_data,
            exchange_data=exchange_data,
            measurement_summary_hash=summary,
            opaque_data=opaque,
            signature=signature,
            responder_verify_data=verify,
            version=version,
        )
    if code == RequestCode.FINISH:
        s = _need_sizes(sizes, name)
        if p1 & ~0x01:
            raise SpdmDecodeError("reserved Param1 bits must be zero", structure=name, offset=2)
        signature = b""
        if p1 & 0x01:
            if not s.req_signature_size:
                raise SpdmDecodeError(
                    "FINISH carries a signature but no requester algorithm was negotiated",
                    structure=name,
                    offset=2,
                )
            signature = r.take(s.req_signature_size, "Signature")
        return Finish(
            signature=signature,
            req_slot_id=p2,
            requester_verify_data=r.take(s.hash_size, "RequesterVerifyData"),
            version=version,
        )
    if code == ResponseCode.FINISH_RSP:
        s = _need_sizes(sizes, name)
        reserved_params()
        verify = r.take(s.hash_size, "ResponderVerifyData") if s.handshake_in_the_clear else b""
        return FinishRsp(responder_verify_data=verify, version=version)
    if code == RequestCode.HEARTBEAT:
        reserved_params()
        return Heartbeat(version=version)
    if code == ResponseCode.HEARTBEAT_ACK:
        reserved_params()
        return HeartbeatAck(version=version)
    if code in (RequestCode.KEY_UPDATE, ResponseCode.KEY_UPDATE_ACK):
        try:
            operation = KeyUpdateOperation(p1)
        except ValueError:
            raise SpdmDecodeError(
                f"unknown KeyOperation {p1:#x}", structure=name, offset=2
            ) from None
        update_cls: type[KeyUpdate | KeyUpdateAck] = (
            KeyUpdate if code == RequestCode.KEY_UPDATE else KeyUpdateAck
        )
        return update_cls(key_operation=operation, tag=p2, version=version)
    if code == RequestCode.END_SESSION:
        if p1 & ~0x01:
            raise SpdmDecodeError("reserved Param1 bits must be zero", structure=name, offset=2)
        reserved_params(param1=False)
        return EndSession(preserve_negotiated_state_clear=bool(p1 & 1), version=version)
    if code == ResponseCode.END_SESSION_ACK:
        reserved_params()
        return EndSessionAck(version=version)
    if code == ResponseCode.ERROR:
        extended = r.take(r.remaining, "ExtendedErrorData")
        if len(extended) > _MAX_EXTENDED_ERROR_DATA:
            raise SpdmDecodeError(
                "ExtendedErrorData is longer than 32 bytes", structure=name, offset=4
            )
        return Error(error_code=p1, error_data=p2, extended_error_data=extended, version=version)
    if code == RequestCode.RESPOND_IF_READY:
        return RespondIfReady(request_code=p1, token=p2, version=version)
    raise AssertionError(f"unhandled code {code:#x}")  # pragma: no cover


_IMPLEMENTED: frozenset[int] = frozenset(
    {
        RequestCode.GET_VERSION,
        RequestCode.GET_CAPABILITIES,
        RequestCode.NEGOTIATE_ALGORITHMS,
        RequestCode.GET_DIGESTS,
        RequestCode.GET_CERTIFICATE,
        RequestCode.CHALLENGE,
        RequestCode.GET_MEASUREMENTS,
        RequestCode.KEY_EXCHANGE,
        RequestCode.FINISH,
        RequestCode.HEARTBEAT,
        RequestCode.KEY_UPDATE,
        RequestCode.END_SESSION,
        RequestCode.RESPOND_IF_READY,
        ResponseCode.VERSION,
        ResponseCode.CAPABILITIES,
        ResponseCode.ALGORITHMS,
        ResponseCode.DIGESTS,
        ResponseCode.CERTIFICATE,
        ResponseCode.CHALLENGE_AUTH,
        ResponseCode.MEASUREMENTS,
        ResponseCode.KEY_EXCHANGE_RSP,
        ResponseCode.FINISH_RSP,
        ResponseCode.HEARTBEAT_ACK,
        ResponseCode.KEY_UPDATE_ACK,
        ResponseCode.END_SESSION_ACK,
        ResponseCode.ERROR,
    }
)
_VERSION_10_ONLY = frozenset({RequestCode.GET_VERSION, ResponseCode.VERSION})


def _code_name(code: int) -> str:
    for enum_cls in (RequestCode, ResponseCode):
        try:
            return enum_cls(code).name
        except ValueError:
            continue
    return f"code {code:#04x}"


def decode_message(
    data: bytes,
    *,
    sizes: NegotiatedSizes | None = None,
    request: SpdmMessage | None = None,
) -> SpdmMessage:
    """Decode one whole SPDM message.

    Args:
        data: the message bytes, without any transport header.
        sizes: the negotiated sizes; needed for every message after ALGORITHMS
            whose layout depends on H, S or D.
        request: for CHALLENGE_AUTH, MEASUREMENTS and KEY_EXCHANGE_RSP, the
            request being answered (it decides whether a summary hash or a
            signature is present).

    Returns:
        The decoded message dataclass.

    Raises:
        SpdmMessageTooLarge: if ``data`` exceeds :data:`MAX_SPDM_MESSAGE_SIZE`.
        SpdmDecodeError: if the message is malformed or has trailing bytes.
        SpdmVersionMismatch: if SPDMVersion is not 1.0 for GET_VERSION/VERSION
            or not 1.2 for any other message (ERROR accepts both).
        SpdmUnsupportedRequest: for a request code this codec does not implement.
        SpdmUnexpectedMessage: for a response that needs ``sizes`` or a matching
            ``request`` that was not given.
    """
    data = bytes(data)
    if len(data) > MAX_SPDM_MESSAGE_SIZE:
        raise SpdmMessageTooLarge(
            f"message of {len(data)} bytes exceeds {MAX_SPDM_MESSAGE_SIZE}", offset=0
        )
    hdr = parse_header(data)
    code = hdr.request_response_code
    if code not in _IMPLEMENTED:
        if hdr.is_request:
            raise SpdmUnsupportedRequest(f"unsupported request {_code_name(code)}", error_data=code)
        raise SpdmDecodeError(f"unsupported response {_code_name(code)}", offset=1)
    name = _code_name(code)
    if code in _VERSION_10_ONLY:
        allowed: tuple[int, ...] = (SPDM_VERSION_10,)
    elif code == ResponseCode.ERROR:
        allowed = (SPDM_VERSION_10, SPDM_VERSION_12)
    else:
        allowed = (SPDM_VERSION_12,)
    if hdr.spdm_version not in allowed:
        raise SpdmVersionMismatch(f"{name} with SPDMVersion {hdr.spdm_version:#04x}")
    r = _Reader(data, name, _HEADER_SIZE)
    try:
        message = _decode_body(hdr, r, sizes, request)
    except ValueError as exc:  # pragma: no cover - the decoders check every field first
        raise SpdmDecodeError(str(exc), structure=name) from exc
    r.finish()
    return message
