"""TPM 2.0 structures (TPM 2.0 Library, Part 2): strict parsers and byte-exact encoders.

This is the formats layer for everything a verifier receives from a (v)TPM: the attestation
structure a quote signs (``TPMS_ATTEST``), the signature over it (``TPMT_SIGNATURE``), the
public areas of the endorsement key and the attestation key (``TPMT_PUBLIC``) and the names
derived from them.  Everything is big-endian, as the TPM marshals it.

Why so strict: these bytes come from the attested machine and are read before anything has
been verified.  Every parser therefore

* checks the discriminating fields (magic, structure tag, algorithm) first,
* requires the input to be consumed exactly (trailing bytes are an error, never ignored),
* refuses algorithms it does not understand rather than guessing their layout, and
* lets only :class:`~ratls._errors.EvidenceFormatError` escape, naming the structure and
  the byte offset of the problem.

Every dataclass here has a ``to_bytes()`` that reproduces the parsed input byte for byte,
so a value can be re-marshalled (to compute a Name, or to build test evidence) without a
second encoding ever entering the picture.

Nothing here performs I/O or cryptographic verification; see :mod:`ratls._tpm_quote` for
quote verification and :mod:`ratls._tpm_credential` for MakeCredential.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Final, final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ._errors import EvidenceFormatError, EvidenceVerificationError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "AK_REQUIRED_ATTRIBUTES",
    "AK_TEMPLATE_ECC_P256",
    "AK_TEMPLATE_RSA2048",
    "EK_TEMPLATE_ECC_P256",
    "EK_TEMPLATE_RSA2048",
    "MAX_DIGEST_SIZE",
    "TCG_EK_AUTH_POLICY_SHA256",
    "TPM_GENERATED_VALUE",
    "TPM_RH_ENDORSEMENT",
    "TPM_RH_NULL",
    "TPM_RH_OWNER",
    "TPM_RH_PLATFORM",
    "ObjectAttributes",
    "TpmAlgId",
    "TpmEccCurve",
    "TpmSt",
    "TpmlPcrSelection",
    "TpmsAttest",
    "TpmsCertifyInfo",
    "TpmsClockInfo",
    "TpmsEccParms",
    "TpmsEccPoint",
    "TpmsPcrSelection",
    "TpmsQuoteInfo",
    "TpmsRsaParms",
    "TpmtPublic",
    "TpmtScheme",
    "TpmtSignature",
    "TpmtSymDefObject",
    "check_ek_public",
    "digest_size",
    "hash_algorithm",
    "hierarchy_name",
    "parse_tpm2b",
    "parse_tpm2b_attest",
    "parse_tpm2b_name",
    "parse_tpm2b_public",
    "parse_tpml_pcr_selection",
    "parse_tpms_attest",
    "parse_tpms_certify_info",
    "parse_tpms_clock_info",
    "parse_tpms_pcr_selection",
    "parse_tpms_quote_info",
    "parse_tpmt_public",
    "parse_tpmt_signature",
    "qualified_name",
    "tpm2b",
]


class TpmAlgId(IntEnum):
    """TPM_ALG_ID (Part 2, table "TPM_ALG_ID Constants"): algorithm identifiers on the wire."""

    RSA = 0x0001  #: RSA asymmetric key type.
    TDES = 0x0003  #: Triple DES block cipher.
    SHA1 = 0x0004  #: SHA-1 hash (PCR bank only; never accepted for signatures by default).
    HMAC = 0x0005  #: HMAC signing scheme.
    AES = 0x0006  #: AES block cipher.
    MGF1 = 0x0007  #: Mask generation function 1 (a KDF scheme).
    KEYEDHASH = 0x0008  #: Keyed-hash object type.
    XOR = 0x000A  #: XOR obfuscation "cipher".
    SHA256 = 0x000B  #: SHA-256 hash.
    SHA384 = 0x000C  #: SHA-384 hash.
    SHA512 = 0x000D  #: SHA-512 hash.
    NULL = 0x0010  #: No algorithm / no scheme.
    SM3_256 = 0x0012  #: SM3 hash (named, not computable here).
    SM4 = 0x0013  #: SM4 block cipher.
    RSASSA = 0x0014  #: RSASSA-PKCS1-v1_5 signature scheme.
    RSAES = 0x0015  #: RSAES-PKCS1-v1_5 encryption scheme.
    RSAPSS = 0x0016  #: RSASSA-PSS signature scheme.
    OAEP = 0x0017  #: RSAES-OAEP encryption scheme.
    ECDSA = 0x0018  #: ECDSA signature scheme.
    ECDH = 0x0019  #: ECDH key exchange scheme.
    ECDAA = 0x001A  #: ECDAA anonymous signature scheme.
    SM2 = 0x001B  #: SM2 signature scheme.
    ECSCHNORR = 0x001C  #: EC-Schnorr signature scheme.
    ECMQV = 0x001D  #: ECMQV key exchange scheme.
    KDF1_SP800_56A = 0x0020  #: KDF from NIST SP 800-56A (KDFe).
    KDF2 = 0x0021  #: KDF2 from IEEE 1363a.
    KDF1_SP800_108 = 0x0022  #: Counter-mode KDF from NIST SP 800-108 (KDFa).
    ECC = 0x0023  #: Elliptic-curve asymmetric key type.
    SYMCIPHER = 0x0025  #: Symmetric block cipher object type.
    CAMELLIA = 0x0026  #: Camellia block cipher.
    SHA3_256 = 0x0027  #: SHA3-256 hash.
    SHA3_384 = 0x0028  #: SHA3-384 hash.
    SHA3_512 = 0x0029  #: SHA3-512 hash.
    CTR = 0x0040  #: Counter block-cipher mode.
    OFB = 0x0041  #: Output-feedback block-cipher mode.
    CBC = 0x0042  #: Cipher-block-chaining mode.
    CFB = 0x0043  #: Cipher-feedback mode (used for parameter and credential encryption).
    ECB = 0x0044  #: Electronic-codebook mode.


class TpmEccCurve(IntEnum):
    """TPM_ECC_CURVE (Part 2): elliptic curve identifiers."""

    NIST_P192 = 0x0001  #: NIST P-192 (named, not supported for keys).
    NIST_P224 = 0x0002  #: NIST P-224 (named, not supported for keys).
    NIST_P256 = 0x0003  #: NIST P-256.
    NIST_P384 = 0x0004  #: NIST P-384.
    NIST_P521 = 0x0005  #: NIST P-521.
    BN_P256 = 0x0010  #: Barreto-Naehrig 256 (ECDAA; not supported for keys).
    BN_P638 = 0x0011  #: Barreto-Naehrig 638 (ECDAA; not supported for keys).
    SM2_P256 = 0x0020  #: SM2 curve (not supported for keys).


class TpmSt(IntEnum):
    """TPM_ST (Part 2): structure tags; the ``ATTEST_*`` values are TPMS_ATTEST types."""

    RSP_COMMAND = 0x00C4  #: Response to an unrecognised command tag.
    NULL = 0x8000  #: No structure.
    NO_SESSIONS = 0x8001  #: Command or response without sessions.
    SESSIONS = 0x8002  #: Command or response with sessions.
    ATTEST_NV = 0x8014  #: TPMS_ATTEST of TPM2_NV_Certify.
    ATTEST_COMMAND_AUDIT = 0x8015  #: TPMS_ATTEST of TPM2_GetCommandAuditDigest.
    ATTEST_SESSION_AUDIT = 0x8016  #: TPMS_ATTEST of TPM2_GetSessionAuditDigest.
    ATTEST_CERTIFY = 0x8017  #: TPMS_ATTEST of TPM2_Certify.
    ATTEST_QUOTE = 0x8018  #: TPMS_ATTEST of TPM2_Quote.
    ATTEST_TIME = 0x8019  #: TPMS_ATTEST of TPM2_GetTime.
    ATTEST_CREATION = 0x801A  #: TPMS_ATTEST of TPM2_CertifyCreation.
    ATTEST_NV_DIGEST = 0x801C  #: TPMS_ATTEST of TPM2_NV_Certify over a digest.
    CREATION = 0x8021  #: TPMT_TK_CREATION ticket.
    VERIFIED = 0x8022  #: TPMT_TK_VERIFIED ticket.
    AUTH_SECRET = 0x8023  #: TPMT_TK_AUTH ticket from PolicySecret.
    HASHCHECK = 0x8024  #: TPMT_TK_HASHCHECK ticket.
    AUTH_SIGNED = 0x8025  #: TPMT_TK_AUTH ticket from PolicySigned.


class ObjectAttributes(IntFlag):
    """TPMA_OBJECT (Part 2): object attribute bits of a TPMT_PUBLIC."""

    FIXED_TPM = 0x00000002  #: fixedTPM: cannot be duplicated to another TPM.
    ST_CLEAR = 0x00000004  #: stClear: lost on TPM Restart.
    FIXED_PARENT = 0x00000010  #: fixedParent: cannot be duplicated to another parent.
    SENSITIVE_DATA_ORIGIN = 0x00000020  #: sensitiveDataOrigin: the TPM generated the secret.
    USER_WITH_AUTH = 0x00000040  #: userWithAuth: USER role usable with authValue or HMAC.
    ADMIN_WITH_POLICY = 0x00000080  #: adminWithPolicy: ADMIN role needs a policy session.
    NO_DA = 0x00000400  #: noDA: not subject to dictionary-attack protection.
    ENCRYPTED_DUPLICATION = 0x00000800  #: encryptedDuplication: duplication needs inner wrap.
    RESTRICTED = 0x00010000  #: restricted: signs/decrypts only TPM-formatted data.
    DECRYPT = 0x00020000  #: decrypt: a decryption (or storage) key.
    SIGN = 0x00040000  #: sign (sign_encrypt): a signing key.


#: TPM_GENERATED_VALUE: the ``magic`` of every TPMS_ATTEST the TPM itself produced.
TPM_GENERATED_VALUE: Final = 0xFF544347

#: Permanent handles of the hierarchies (Part 2, TPM_RH); their Name is the 4-byte handle.
TPM_RH_OWNER: Final = 0x40000001
TPM_RH_NULL: Final = 0x40000007
TPM_RH_ENDORSEMENT: Final = 0x4000000B
TPM_RH_PLATFORM: Final = 0x4000000C

#: Largest digest any supported hash produces (SHA-512); bounds TPM2B_DIGEST and TPM2B_DATA.
MAX_DIGEST_SIZE: Final = 64

#: TCG EK Credential Profile: authPolicy of the default EK templates, i.e. the SHA-256
#: policy digest of PolicySecret(TPM_RH_ENDORSEMENT).
TCG_EK_AUTH_POLICY_SHA256: Final = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)

# Bounds that keep a hostile input from describing absurd structures.  They follow the
# reference implementation's sizes: PCR_SELECT_MAX is 4 octets for 24..32 PCRs (we allow
# up to 8, enough for 64 PCRs), HASH_COUNT is the number of banks (we allow 16), an RSA
# modulus is at most 4096 bits and an ECC coordinate at most 66 bytes (P-521).
_MAX_SIZEOF_SELECT: Final = 8
_MAX_PCR_BANKS: Final = 16
_MAX_RSA_BYTES: Final = 512
_MAX_ECC_BYTES: Final = 66
_MAX_NAME_SIZE: Final = 2 + MAX_DIGEST_SIZE

_HASHES: Final[dict[TpmAlgId, type[hashes.HashAlgorithm]]] = {
    TpmAlgId.SHA1: hashes.SHA1,
    TpmAlgId.SHA256: hashes.SHA256,
    TpmAlgId.SHA384: hashes.SHA384,
    TpmAlgId.SHA512: hashes.SHA512,
    TpmAlgId.SHA3_256: hashes.SHA3_256,
    TpmAlgId.SHA3_384: hashes.SHA3_384,
    TpmAlgId.SHA3_512: hashes.SHA3_512,
}

_CURVES: Final[dict[TpmEccCurve, tuple[type[ec.EllipticCurve], int]]] = {
    TpmEccCurve.NIST_P256: (ec.SECP256R1, 32),
    TpmEccCurve.NIST_P384: (ec.SECP384R1, 48),
    TpmEccCurve.NIST_P521: (ec.SECP521R1, 66),
}

_HASH_BY_VALUE: Final = {int(a): a for a in _HASHES}

_SYM_ALGS: Final = frozenset({TpmAlgId.AES, TpmAlgId.SM4, TpmAlgId.CAMELLIA})
_RSA_SCHEMES: Final = frozenset(
    {TpmAlgId.NULL, TpmAlgId.RSASSA, TpmAlgId.RSAPSS, TpmAlgId.RSAES, TpmAlgId.OAEP}
)
_ECC_SCHEMES: Final = frozenset(
    {
        TpmAlgId.NULL,
        TpmAlgId.ECDSA,
        TpmAlgId.ECDH,
        TpmAlgId.ECDAA,
        TpmAlgId.SM2,
        TpmAlgId.ECSCHNORR,
        TpmAlgId.ECMQV,
    }
)
_KDF_SCHEMES: Final = frozenset(
    {TpmAlgId.MGF1, TpmAlgId.KDF1_SP800_56A, TpmAlgId.KDF2, TpmAlgId.KDF1_SP800_108}
)
_RSA_KEY_BITS: Final = frozenset({1024, 2048, 3072, 4096})


def hash_algorithm(alg: int) -> hashes.HashAlgorithm:
    """The cryptography hash object for a TPM hash algorithm.

    Args:
        alg: a TPM_ALG_ID naming a hash (a :class:`TpmAlgId` or its integer value).

    Returns:
        A fresh ``cryptography`` hash algorithm instance.

    Raises:
        EvidenceFormatError: ``alg`` is not a hash this library can compute.
    """
    try:
        return _HASHES[TpmAlgId(alg)]()
    except (KeyError, ValueError):
        raise EvidenceFormatError(f"{_alg_name(alg)} is not a supported hash algorithm") from None


def digest_size(alg: int) -> int:
    """The digest size in bytes of a TPM hash algorithm.

    Raises:
        EvidenceFormatError: ``alg`` is not a supported hash.
    """
    return hash_algorithm(alg).digest_size


def _digest(alg: TpmAlgId, data: bytes) -> bytes:
    h = hashes.Hash(hash_algorithm(alg))
    h.update(data)
    return h.finalize()


def _alg_name(value: int) -> str:
    try:
        return f"TPM_ALG_{TpmAlgId(value).name}"
    except ValueError:
        return f"algorithm {value:#06x}"


# --------------------------------------------------------------------------------------
# Reading and writing primitives
# --------------------------------------------------------------------------------------


class _Reader:
    """Cursor over untrusted bytes that raises EvidenceFormatError on any overrun."""

    __slots__ = ("_data", "_pos", "structure")

    def __init__(self, data: bytes, structure: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self.structure = structure

    @property
    def pos(self) -> int:
        return self._pos

    def fail(self, message: str, offset: int | None = None) -> EvidenceFormatError:
        return EvidenceFormatError(
            message, structure=self.structure, offset=self._pos if offset is None else offset
        )

    def take(self, n: int, what: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise self.fail(f"truncated {what}: need {n} bytes, {len(self._data) - self._pos} left")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def u64(self, what: str) -> int:
        return int.from_bytes(self.take(8, what), "big")

    def tpm2b(self, what: str, max_size: int) -> bytes:
        start = self._pos
        size = self.u16(f"{what}.size")
        if size > max_size:
            raise self.fail(f"{what} is {size} bytes, at most {max_size} allowed", start)
        return self.take(size, what)

    def alg(self, what: str, allowed: Iterable[TpmAlgId] | None = None) -> TpmAlgId:
        start = self._pos
        raw = self.u16(what)
        try:
            alg = TpmAlgId(raw)
        except ValueError:
            raise self.fail(f"unknown {what} {raw:#06x}", start) from None
        if allowed is not None and alg not in set(allowed):
            raise self.fail(f"{what} {_alg_name(alg)} is not allowed here", start)
        return alg

    def hash_alg(self, what: str) -> TpmAlgId:
        return self.alg(what, _HASHES)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} trailing bytes")


def _u16(v: int) -> bytes:
    return struct.pack(">H", v)


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


def tpm2b(payload: bytes) -> bytes:
    """Marshal a TPM2B: a big-endian u16 size followed by the payload.

    Args:
        payload: the buffer contents (at most 65535 bytes).

    Returns:
        ``size || payload``.

    Raises:
        ValueError: the payload is too long for a TPM2B.
    """
    if len(payload) > 0xFFFF:
        raise ValueError("a TPM2B holds at most 65535 bytes")
    return _u16(len(payload)) + bytes(payload)


def parse_tpm2b(data: bytes, *, structure: str = "TPM2B", max_size: int = 0xFFFF) -> bytes:
    """Unwrap a TPM2B whose size must cover the input exactly.

    Args:
        data: ``size || buffer``.
        structure: structure name reported in errors (e.g. ``"TPM2B_ATTEST"``).
        max_size: largest buffer accepted.

    Returns:
        The buffer.

    Raises:
        EvidenceFormatError: truncated, oversized, or followed by trailing bytes.
    """
    r = _Reader(data, structure)
    out = r.tpm2b("buffer", max_size)
    r.end()
    return out


def _check_name(r: _Reader, name: bytes, what: str, start: int) -> None:
    """A TPM2B_NAME holds nothing, a 4-byte handle, or nameAlg || digest."""
    if len(name) in (0, 4):
        return
    if len(name) < 2:
        raise r.fail(f"{what} of {len(name)} bytes is neither a handle nor a digest", start)
    raw = int.from_bytes(name[:2], "big")
    alg = _HASH_BY_VALUE.get(raw)
    if alg is None:
        raise r.fail(f"{what} uses unknown name algorithm {raw:#06x}", start)
    if len(name) != 2 + digest_size(alg):
        raise r.fail(f"{what} digest length does not match {_alg_name(alg)}", start)


def _read_name(r: _Reader, what: str) -> bytes:
    start = r.pos
    name = r.tpm2b(what, _MAX_NAME_SIZE)
    _check_name(r, name, what, start)
    return name


def parse_tpm2b_name(data: bytes) -> bytes:
    """Parse a TPM2B_NAME: empty, a 4-byte handle, or nameAlg || H(public area).

    Returns:
        The name (without the size prefix).

    Raises:
        EvidenceFormatError: malformed, an unknown name algorithm, or a wrong digest length.
    """
    r = _Reader(data, "TPM2B_NAME")
    name = _read_name(r, "name")
    r.end()
    return name


# --------------------------------------------------------------------------------------
# TPMS_CLOCK_INFO
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsClockInfo:
    """TPMS_CLOCK_INFO: the TPM's clock when it produced an attestation.

    Attributes:
        clock: milliseconds the TPM has been powered since its clock was last set.
        reset_count: number of TPM Resets (power cycles) since the clock was set.
        restart_count: TPM Restarts / Resumes since the last reset.
        safe: True when ``clock`` was never reported ahead of the stored value.
    """

    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_CLOCK_INFO (17 bytes)."""
        return struct.pack(
            ">QIIB", self.clock, self.reset_count, self.restart_count, 1 if self.safe else 0
        )


def _read_clock_info(r: _Reader) -> TpmsClockInfo:
    clock = r.u64("clock")
    reset_count = r.u32("resetCount")
    restart_count = r.u32("restartCount")
    start = r.pos
    safe = r.u8("safe")
    if safe not in (0, 1):
        raise r.fail(f"safe must be YES (1) or NO (0), got {safe}", start)
    return TpmsClockInfo(
        clock=clock, reset_count=reset_count, restart_count=restart_count, safe=safe == 1
    )


def parse_tpms_clock_info(data: bytes) -> TpmsClockInfo:
    """Parse a TPMS_CLOCK_INFO.

    Raises:
        EvidenceFormatError: wrong length or ``safe`` not 0/1.
    """
    r = _Reader(data, "TPMS_CLOCK_INFO")
    out = _read_clock_info(r)
    r.end()
    return out


# --------------------------------------------------------------------------------------
# PCR selections
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsPcrSelection:
    """TPMS_PCR_SELECTION: one bank and a bitmap of PCRs (bit i of byte j = PCR 8j+i).

    Attributes:
        hash: the bank (a hash algorithm).
        pcr_select: the bitmap; its length is ``sizeofSelect``.
    """

    hash: TpmAlgId
    pcr_select: bytes

    def indices(self) -> list[int]:
        """The selected PCR indices, ascending (the order the TPM digests them)."""
        return [
            8 * j + i for j, byte in enumerate(self.pcr_select) for i in range(8) if byte >> i & 1
        ]

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_PCR_SELECTION."""
        return _u16(self.hash) + bytes([len(self.pcr_select)]) + self.pcr_select


def _read_pcr_selection(r: _Reader) -> TpmsPcrSelection:
    alg = r.hash_alg("hash")
    start = r.pos
    size = r.u8("sizeofSelect")
    if size > _MAX_SIZEOF_SELECT:
        raise r.fail(f"sizeofSelect {size} exceeds {_MAX_SIZEOF_SELECT}", start)
    return TpmsPcrSelection(hash=alg, pcr_select=r.take(size, "pcrSelect"))


def parse_tpms_pcr_selection(data: bytes) -> TpmsPcrSelection:
    """Parse a TPMS_PCR_SELECTION.

    Raises:
        EvidenceFormatError: unknown bank, oversized bitmap, wrong length.
    """
    r = _Reader(data, "TPMS_PCR_SELECTION")
    out = _read_pcr_selection(r)
    r.end()
    return out


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmlPcrSelection:
    """TPML_PCR_SELECTION: the PCRs a quote covers, bank by bank, in wire order.

    Attributes:
        pcr_selections: the per-bank selections, in the order they were marshalled.
    """

    pcr_selections: tuple[TpmsPcrSelection, ...] = ()

    @classmethod
    def from_mapping(
        cls, banks: Mapping[TpmAlgId, Iterable[int]], *, sizeof_select: int = 3
    ) -> TpmlPcrSelection:
        """Build a selection from ``{bank: [pcr indices]}`` (banks in mapping order).

        Args:
            banks: the PCR indices to select per bank.
            sizeof_select: bitmap size in bytes (3 covers PCRs 0-23, the PC Client set).

        Returns:
            The selection.

        Raises:
            ValueError: an index does not fit in ``sizeof_select`` bytes, or a bank is not
                a supported hash.
        """
        out = []
        for alg, indices in banks.items():
            if alg not in _HASHES:
                raise ValueError(f"{_alg_name(alg)} is not a PCR bank")
            bitmap = bytearray(sizeof_select)
            for index in indices:
                if not 0 <= index < 8 * sizeof_select:
                    raise ValueError(f"PCR {index} does not fit in {sizeof_select} bytes")
                bitmap[index // 8] |= 1 << (index % 8)
            out.append(TpmsPcrSelection(hash=TpmAlgId(alg), pcr_select=bytes(bitmap)))
        return cls(pcr_selections=tuple(out))

    def selected(self) -> list[tuple[TpmAlgId, int]]:
        """Every selected (bank, index), in the order the TPM hashes PCR values."""
        return [(sel.hash, index) for sel in self.pcr_selections for index in sel.indices()]

    def to_bytes(self) -> bytes:
        """Marshal as TPML_PCR_SELECTION."""
        return _u32(len(self.pcr_selections)) + b"".join(s.to_bytes() for s in self.pcr_selections)


def _read_pcr_selection_list(r: _Reader) -> TpmlPcrSelection:
    start = r.pos
    count = r.u32("count")
    if count > _MAX_PCR_BANKS:
        raise r.fail(f"count {count} exceeds {_MAX_PCR_BANKS} banks", start)
    return TpmlPcrSelection(pcr_selections=tuple(_read_pcr_selection(r) for _ in range(count)))


def parse_tpml_pcr_selection(data: bytes) -> TpmlPcrSelection:
    """Parse a TPML_PCR_SELECTION.

    Raises:
        EvidenceFormatError: too many banks, a bad selection, wrong length.
    """
    r = _Reader(data, "TPML_PCR_SELECTION")
    out = _read_pcr_selection_list(r)
    r.end()
    return out


# --------------------------------------------------------------------------------------
# TPMS_QUOTE_INFO, TPMS_CERTIFY_INFO, TPMS_ATTEST
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsQuoteInfo:
    """TPMS_QUOTE_INFO: the attested part of a quote.

    Attributes:
        pcr_select: the PCRs covered, in the order they were digested.
        pcr_digest: hash (with the signing scheme's hash) of the selected PCR values.
    """

    pcr_select: TpmlPcrSelection
    pcr_digest: bytes

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_QUOTE_INFO."""
        return self.pcr_select.to_bytes() + tpm2b(self.pcr_digest)


def _read_quote_info(r: _Reader) -> TpmsQuoteInfo:
    pcr_select = _read_pcr_selection_list(r)
    pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST_SIZE)
    return TpmsQuoteInfo(pcr_select=pcr_select, pcr_digest=pcr_digest)


def parse_tpms_quote_info(data: bytes) -> TpmsQuoteInfo:
    """Parse a TPMS_QUOTE_INFO.

    Raises:
        EvidenceFormatError: malformed selection or digest, wrong length.
    """
    r = _Reader(data, "TPMS_QUOTE_INFO")
    out = _read_quote_info(r)
    r.end()
    return out


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsCertifyInfo:
    """TPMS_CERTIFY_INFO: the attested part of TPM2_Certify.

    Attributes:
        name: Name of the certified object.
        qualified_name: Qualified Name of the certified object.
    """

    name: bytes
    qualified_name: bytes

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_CERTIFY_INFO."""
        return tpm2b(self.name) + tpm2b(self.qualified_name)


def _read_certify_info(r: _Reader) -> TpmsCertifyInfo:
    name = _read_name(r, "name")
    qn = _read_name(r, "qualifiedName")
    return TpmsCertifyInfo(name=name, qualified_name=qn)


def parse_tpms_certify_info(data: bytes) -> TpmsCertifyInfo:
    """Parse a TPMS_CERTIFY_INFO.

    Raises:
        EvidenceFormatError: malformed names, wrong length.
    """
    r = _Reader(data, "TPMS_CERTIFY_INFO")
    out = _read_certify_info(r)
    r.end()
    return out


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsAttest:
    """TPMS_ATTEST: what a TPM signs for a quote or a certification.

    Only the quote and certify variants are supported; the parser refuses the others.

    Attributes:
        type: TPM_ST_ATTEST_QUOTE or TPM_ST_ATTEST_CERTIFY.
        qualified_signer: Qualified Name of the signing key.
        extra_data: the caller's qualifying data (the nonce or binder).
        clock_info: the TPM clock at signing time.
        firmware_version: vendor-specific TPM firmware version.
        attested: the type-specific part.
    """

    type: TpmSt
    qualified_signer: bytes
    extra_data: bytes
    clock_info: TpmsClockInfo
    firmware_version: int
    attested: TpmsQuoteInfo | TpmsCertifyInfo

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_ATTEST (the bytes the signature covers)."""
        return (
            _u32(TPM_GENERATED_VALUE)
            + _u16(self.type)
            + tpm2b(self.qualified_signer)
            + tpm2b(self.extra_data)
            + self.clock_info.to_bytes()
            + struct.pack(">Q", self.firmware_version)
            + self.attested.to_bytes()
        )


# The attestation types this module understands; the others are refused, not skipped.
_ATTEST_TYPES: Final = {int(t): t for t in (TpmSt.ATTEST_QUOTE, TpmSt.ATTEST_CERTIFY)}


def _read_attest(r: _Reader) -> TpmsAttest:
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise r.fail(f"magic {magic:#010x} is not TPM_GENERATED_VALUE", 0)
    start = r.pos
    raw_type = r.u16("type")
    st = _ATTEST_TYPES.get(raw_type)
    if st is None:
        raise r.fail(f"unsupported attestation type {raw_type:#06x}", start)
    qualified_signer = _read_name(r, "qualifiedSigner")
    extra_data = r.tpm2b("extraData", MAX_DIGEST_SIZE)
    clock_info = _read_clock_info(r)
    firmware_version = r.u64("firmwareVersion")
    attested: TpmsQuoteInfo | TpmsCertifyInfo = (
        _read_quote_info(r) if st is TpmSt.ATTEST_QUOTE else _read_certify_info(r)
    )
    return TpmsAttest(
        type=st,
        qualified_signer=qualified_signer,
        extra_data=extra_data,
        clock_info=clock_info,
        firmware_version=firmware_version,
        attested=attested,
    )


def parse_tpms_attest(data: bytes) -> TpmsAttest:
    """Parse a TPMS_ATTEST (quote or certify), checking magic and type first.

    Args:
        data: the marshalled TPMS_ATTEST, exactly (no TPM2B size prefix).

    Returns:
        The parsed structure.

    Raises:
        EvidenceFormatError: wrong magic, unsupported type, malformed fields, wrong length.
    """
    r = _Reader(data, "TPMS_ATTEST")
    out = _read_attest(r)
    r.end()
    return out


def parse_tpm2b_attest(data: bytes) -> TpmsAttest:
    """Parse a TPM2B_ATTEST (u16 size || TPMS_ATTEST).

    Raises:
        EvidenceFormatError: size mismatch or a malformed TPMS_ATTEST.
    """
    return parse_tpms_attest(parse_tpm2b(data, structure="TPM2B_ATTEST"))


# --------------------------------------------------------------------------------------
# TPMT_SIGNATURE
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmtSignature:
    """TPMT_SIGNATURE for RSASSA, RSAPSS and ECDSA (other schemes are refused).

    Attributes:
        sig_alg: the signature scheme.
        hash: the hash the scheme used.
        sig: the RSA signature (empty for ECDSA).
        signature_r: ECDSA r, big-endian (empty for RSA).
        signature_s: ECDSA s, big-endian (empty for RSA).
    """

    sig_alg: TpmAlgId
    hash: TpmAlgId
    sig: bytes = b""
    signature_r: bytes = b""
    signature_s: bytes = b""

    def to_bytes(self) -> bytes:
        """Marshal as TPMT_SIGNATURE.

        Raises:
            ValueError: ``sig_alg`` is not RSASSA, RSAPSS or ECDSA.
        """
        head = _u16(self.sig_alg) + _u16(self.hash)
        if self.sig_alg in (TpmAlgId.RSASSA, TpmAlgId.RSAPSS):
            return head + tpm2b(self.sig)
        if self.sig_alg is TpmAlgId.ECDSA:
            return head + tpm2b(self.signature_r) + tpm2b(self.signature_s)
        raise ValueError(f"cannot marshal a {_alg_name(self.sig_alg)} signature")


_SIG_ALGS: Final = (TpmAlgId.RSASSA, TpmAlgId.RSAPSS, TpmAlgId.ECDSA)


def parse_tpmt_signature(data: bytes) -> TpmtSignature:
    """Parse a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA).

    Raises:
        EvidenceFormatError: another scheme, an unknown hash, empty or oversized values,
            wrong length.
    """
    r = _Reader(data, "TPMT_SIGNATURE")
    sig_alg = r.alg("sigAlg", _SIG_ALGS)
    alg = r.hash_alg("hash")
    if sig_alg is TpmAlgId.ECDSA:
        parts = []
        for what in ("signatureR", "signatureS"):
            start = r.pos
            value = r.tpm2b(what, _MAX_ECC_BYTES)
            if not value:
                raise r.fail(f"{what} is empty", start)
            parts.append(value)
        out = TpmtSignature(sig_alg=sig_alg, hash=alg, signature_r=parts[0], signature_s=parts[1])
    else:
        start = r.pos
        sig = r.tpm2b("sig", _MAX_RSA_BYTES)
        if not sig:
            raise r.fail("sig is empty", start)
        out = TpmtSignature(sig_alg=sig_alg, hash=alg, sig=sig)
    r.end()
    return out


# --------------------------------------------------------------------------------------
# TPMT_PUBLIC
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmtSymDefObject:
    """TPMT_SYM_DEF_OBJECT: the symmetric algorithm of a storage/EK key (or NULL).

    Attributes:
        algorithm: AES, SM4, CAMELLIA or NULL.
        key_bits: key size (0 when ``algorithm`` is NULL).
        mode: block mode, e.g. CFB (NULL when ``algorithm`` is NULL).
    """

    algorithm: TpmAlgId = TpmAlgId.NULL
    key_bits: int = 0
    mode: TpmAlgId = TpmAlgId.NULL

    def to_bytes(self) -> bytes:
        """Marshal as TPMT_SYM_DEF_OBJECT."""
        if self.algorithm is TpmAlgId.NULL:
            return _u16(TpmAlgId.NULL)
        return _u16(self.algorithm) + _u16(self.key_bits) + _u16(self.mode)


def _read_sym(r: _Reader) -> TpmtSymDefObject:
    alg = r.alg("symmetric.algorithm", _SYM_ALGS | {TpmAlgId.NULL})
    if alg is TpmAlgId.NULL:
        return TpmtSymDefObject()
    key_bits = r.u16("symmetric.keyBits")
    mode = r.alg(
        "symmetric.mode",
        (TpmAlgId.CTR, TpmAlgId.OFB, TpmAlgId.CBC, TpmAlgId.CFB, TpmAlgId.ECB),
    )
    return TpmtSymDefObject(algorithm=alg, key_bits=key_bits, mode=mode)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmtScheme:
    """A TPMT_RSA_SCHEME, TPMT_ECC_SCHEME or TPMT_KDF_SCHEME.

    Attributes:
        scheme: the scheme (NULL for none).
        hash_alg: the scheme's hash (NULL when the scheme has no details).
        count: ECDAA commit count (0 for every other scheme).
    """

    scheme: TpmAlgId = TpmAlgId.NULL
    hash_alg: TpmAlgId = TpmAlgId.NULL
    count: int = 0

    def to_bytes(self) -> bytes:
        """Marshal the scheme and its details."""
        if self.scheme in (TpmAlgId.NULL, TpmAlgId.RSAES):
            return _u16(self.scheme)
        out = _u16(self.scheme) + _u16(self.hash_alg)
        if self.scheme is TpmAlgId.ECDAA:
            out += _u16(self.count)
        return out


def _read_scheme(r: _Reader, what: str, allowed: frozenset[TpmAlgId]) -> TpmtScheme:
    scheme = r.alg(f"{what}.scheme", allowed)
    if scheme in (TpmAlgId.NULL, TpmAlgId.RSAES):
        return TpmtScheme(scheme=scheme)
    hash_alg = r.hash_alg(f"{what}.hashAlg")
    count = r.u16(f"{what}.count") if scheme is TpmAlgId.ECDAA else 0
    return TpmtScheme(scheme=scheme, hash_alg=hash_alg, count=count)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsRsaParms:
    """TPMS_RSA_PARMS.

    Attributes:
        symmetric: symmetric algorithm for a storage key (NULL otherwise).
        scheme: signing or encryption scheme (NULL for "any", or for restricted decrypt).
        key_bits: modulus size in bits.
        exponent: public exponent; 0 means the default 65537.
    """

    symmetric: TpmtSymDefObject = field(default_factory=TpmtSymDefObject)
    scheme: TpmtScheme = field(default_factory=TpmtScheme)
    key_bits: int = 2048
    exponent: int = 0

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_RSA_PARMS."""
        return (
            self.symmetric.to_bytes()
            + self.scheme.to_bytes()
            + _u16(self.key_bits)
            + _u32(self.exponent)
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsEccParms:
    """TPMS_ECC_PARMS.

    Attributes:
        symmetric: symmetric algorithm for a storage key (NULL otherwise).
        scheme: signing or key-exchange scheme (NULL for "any").
        curve_id: the curve.
        kdf: KDF scheme (NULL in every template used here).
    """

    symmetric: TpmtSymDefObject = field(default_factory=TpmtSymDefObject)
    scheme: TpmtScheme = field(default_factory=TpmtScheme)
    curve_id: TpmEccCurve = TpmEccCurve.NIST_P256
    kdf: TpmtScheme = field(default_factory=TpmtScheme)

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_ECC_PARMS."""
        return (
            self.symmetric.to_bytes()
            + self.scheme.to_bytes()
            + _u16(self.curve_id)
            + self.kdf.to_bytes()
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmsEccPoint:
    """TPMS_ECC_POINT: an affine point as two big-endian coordinates.

    Attributes:
        x: the x coordinate.
        y: the y coordinate.
    """

    x: bytes = b""
    y: bytes = b""

    def to_bytes(self) -> bytes:
        """Marshal as TPMS_ECC_POINT."""
        return tpm2b(self.x) + tpm2b(self.y)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmtPublic:
    """TPMT_PUBLIC of an RSA or ECC key (keyed-hash and symmetric objects are refused).

    Attributes:
        type: RSA or ECC.
        name_alg: the hash that computes this object's Name.
        object_attributes: TPMA_OBJECT bits.
        auth_policy: policy digest required for ADMIN (or USER) authorisation.
        parameters: TPMS_RSA_PARMS or TPMS_ECC_PARMS, according to ``type``.
        unique: the RSA modulus (bytes) or the ECC point.
    """

    type: TpmAlgId
    name_alg: TpmAlgId
    object_attributes: ObjectAttributes
    auth_policy: bytes = b""
    parameters: TpmsRsaParms | TpmsEccParms
    unique: bytes | TpmsEccPoint
    # Computed on first use and kept: a verifier meets the same EK and AK on every
    # connection from a peer, and parse_tpmt_public hands out one object per public area.
    _name: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def to_bytes(self) -> bytes:
        """Marshal as TPMT_PUBLIC (the bytes the Name is computed over)."""
        if isinstance(self.unique, TpmsEccPoint):
            unique = self.unique.to_bytes()
        else:
            unique = tpm2b(self.unique)
        return (
            _u16(self.type)
            + _u16(self.name_alg)
            + _u32(int(self.object_attributes))
            + tpm2b(self.auth_policy)
            + self.parameters.to_bytes()
            + unique
        )

    def to_tpm2b(self) -> bytes:
        """Marshal as TPM2B_PUBLIC (u16 size || TPMT_PUBLIC)."""
        return tpm2b(self.to_bytes())

    def name(self) -> bytes:
        """The object's Name: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC).

        Raises:
            EvidenceFormatError: ``name_alg`` is not a supported hash.
        """
        name = self._name
        if name is None:
            name = _u16(self.name_alg) + _digest(self.name_alg, self.to_bytes())
            object.__setattr__(self, "_name", name)
        return name

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The public key as a ``cryptography`` object.

        Returns:
            An RSA key (exponent 0 read as 65537) or an EC key on the declared curve.

        Raises:
            EvidenceFormatError: the modulus length differs from ``key_bits``, the curve is
                unsupported, or the point is not on the curve.
        """
        key = self._key
        if key is None:
            key = self._load_public_key()
            object.__setattr__(self, "_key", key)
        return key

    def _load_public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        params = self.parameters
        if isinstance(params, TpmsRsaParms) and isinstance(self.unique, bytes):
            n = self.unique
            if len(n) * 8 != params.key_bits or not n or n[0] == 0:
                raise EvidenceFormatError(
                    f"modulus of {len(n)} bytes does not match keyBits {params.key_bits}",
                    structure="TPMT_PUBLIC",
                )
            e = params.exponent or 65537
            try:
                return rsa.RSAPublicNumbers(e, int.from_bytes(n, "big")).public_key()
            except ValueError as exc:
                raise EvidenceFormatError(
                    f"invalid RSA public key: {exc}", structure="TPMT_PUBLIC"
                ) from exc
        if isinstance(params, TpmsEccParms) and isinstance(self.unique, TpmsEccPoint):
            try:
                curve_cls, size = _CURVES[params.curve_id]
            except KeyError:
                raise EvidenceFormatError(
                    f"unsupported curve {params.curve_id.name}", structure="TPMT_PUBLIC"
                ) from None
            x, y = self.unique.x, self.unique.y
            if len(x) > size or len(y) > size:
                raise EvidenceFormatError(
                    "ECC coordinate longer than the curve", structure="TPMT_PUBLIC"
                )
            encoded = b"\x04" + x.rjust(size, b"\0") + y.rjust(size, b"\0")
            try:
                return ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), encoded)
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise EvidenceFormatError(
                    f"invalid ECC public key: {exc}", structure="TPMT_PUBLIC"
                ) from exc
        raise EvidenceFormatError(
            "parameters and unique do not match the object type", structure="TPMT_PUBLIC"
        )

    @classmethod
    def from_public_key(
        cls,
        key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        *,
        object_attributes: ObjectAttributes,
        name_alg: TpmAlgId = TpmAlgId.SHA256,
        auth_policy: bytes = b"",
        symmetric: TpmtSymDefObject | None = None,
        scheme: TpmtScheme | None = None,
        default_exponent: bool = True,
    ) -> TpmtPublic:
        """Describe an existing public key as a TPMT_PUBLIC (for tests and simulators).

        Args:
            key: an RSA or NIST-curve EC public key.
            object_attributes: TPMA_OBJECT bits to claim.
            name_alg: the Name hash.
            auth_policy: the policy digest.
            symmetric: symmetric definition (NULL if omitted).
            scheme: signing/encryption scheme (NULL if omitted).
            default_exponent: write exponent 65537 as 0, as TPMs do.

        Returns:
            The public area.

        Raises:
            ValueError: the key type or curve cannot be expressed.
        """
        sym = symmetric or TpmtSymDefObject()
        sch = scheme or TpmtScheme()
        if isinstance(key, rsa.RSAPublicKey):
            numbers = key.public_numbers()
            exponent = 0 if default_exponent and numbers.e == 65537 else numbers.e
            size = (key.key_size + 7) // 8
            return cls(
                type=TpmAlgId.RSA,
                name_alg=name_alg,
                object_attributes=object_attributes,
                auth_policy=auth_policy,
                parameters=TpmsRsaParms(
                    symmetric=sym, scheme=sch, key_bits=key.key_size, exponent=exponent
                ),
                unique=numbers.n.to_bytes(size, "big"),
            )
        if isinstance(key, ec.EllipticCurvePublicKey):
            found = [
                (cid, size) for cid, (cls_, size) in _CURVES.items() if isinstance(key.curve, cls_)
            ]
            if not found:
                raise ValueError(f"curve {key.curve.name} has no TPM identifier here")
            curve_id, size = found[0]
            pn = key.public_numbers()
            return cls(
                type=TpmAlgId.ECC,
                name_alg=name_alg,
                object_attributes=object_attributes,
                auth_policy=auth_policy,
                parameters=TpmsEccParms(symmetric=sym, scheme=sch, curve_id=curve_id),
                unique=TpmsEccPoint(x=pn.x.to_bytes(size, "big"), y=pn.y.to_bytes(size, "big")),
            )
        raise ValueError(f"unsupported key type {type(key).__name__}")  # pragma: no cover


def _read_public(r: _Reader) -> TpmtPublic:
    obj_type = r.alg("type", (TpmAlgId.RSA, TpmAlgId.ECC))
    name_alg = r.hash_alg("nameAlg")
    attributes = ObjectAttributes(r.u32("objectAttributes"))
    auth_policy = r.tpm2b("authPolicy", MAX_DIGEST_SIZE)
    symmetric = _read_sym(r)
    parameters: TpmsRsaParms | TpmsEccParms
    unique: bytes | TpmsEccPoint
    if obj_type is TpmAlgId.RSA:
        scheme = _read_scheme(r, "scheme", _RSA_SCHEMES)
        start = r.pos
        key_bits = r.u16("keyBits")
        if key_bits not in _RSA_KEY_BITS:
            raise r.fail(f"unsupported RSA keyBits {key_bits}", start)
        exponent = r.u32("exponent")
        parameters = TpmsRsaParms(
            symmetric=symmetric, scheme=scheme, key_bits=key_bits, exponent=exponent
        )
        unique = r.tpm2b("unique.rsa", _MAX_RSA_BYTES)
    else:
        scheme = _read_scheme(r, "scheme", _ECC_SCHEMES)
        start = r.pos
        raw_curve = r.u16("curveID")
        try:
            curve = TpmEccCurve(raw_curve)
        except ValueError:
            raise r.fail(f"unknown curveID {raw_curve:#06x}", start) from None
        kdf = _read_scheme(r, "kdf", _KDF_SCHEMES | {TpmAlgId.NULL})
        parameters = TpmsEccParms(symmetric=symmetric, scheme=scheme, curve_id=curve, kdf=kdf)
        unique = TpmsEccPoint(
            x=r.tpm2b("unique.x", _MAX_ECC_BYTES), y=r.tpm2b("unique.y", _MAX_ECC_BYTES)
        )
    return TpmtPublic(
        type=obj_type,
        name_alg=name_alg,
        object_attributes=attributes,
        auth_policy=auth_policy,
        parameters=parameters,
        unique=unique,
    )


#: Distinct public areas whose parse (and Name and key, see TpmtPublic) is remembered.
PUBLIC_AREA_MEMO_SIZE: Final = 256


def parse_tpmt_public(data: bytes) -> TpmtPublic:
    """Parse a TPMT_PUBLIC of an RSA or ECC key.

    The same bytes give the same (immutable) object: the last
    :data:`PUBLIC_AREA_MEMO_SIZE` distinct public areas are remembered, failures never.

    Raises:
        EvidenceFormatError: another object type, unknown algorithms, wrong length.
    """
    return _parse_tpmt_public(bytes(data))


@functools.lru_cache(maxsize=PUBLIC_AREA_MEMO_SIZE)
def _parse_tpmt_public(data: bytes) -> TpmtPublic:
    r = _Reader(data, "TPMT_PUBLIC")
    out = _read_public(r)
    r.end()
    return out


def parse_tpm2b_public(data: bytes) -> TpmtPublic:
    """Parse a TPM2B_PUBLIC (u16 size || TPMT_PUBLIC), as TPM2_ReadPublic returns it.

    Raises:
        EvidenceFormatError: size mismatch or a malformed TPMT_PUBLIC.
    """
    return parse_tpmt_public(parse_tpm2b(data, structure="TPM2B_PUBLIC"))


def hierarchy_name(handle: int) -> bytes:
    """The Name of a permanent handle (a hierarchy): its 4-byte big-endian value.

    It is also the Qualified Name of that hierarchy, the start of every qualified-name chain.
    """
    return _u32(handle)


def qualified_name(parent_qn: bytes, name: bytes) -> bytes:
    """Qualified Name of an object: nameAlg || H_nameAlg(parent QN || Name).

    Args:
        parent_qn: Qualified Name of the parent (for a primary key:
            ``hierarchy_name(TPM_RH_ENDORSEMENT)`` and the like).
        name: the object's Name (nameAlg || digest).

    Returns:
        The Qualified Name, computed with the object's nameAlg.

    Raises:
        EvidenceFormatError: ``name`` is not a digest Name.
    """
    r = _Reader(tpm2b(name) if len(name) <= _MAX_NAME_SIZE else b"", "TPM2B_NAME")
    checked = _read_name(r, "name")
    if len(checked) < 6:
        raise EvidenceFormatError("a qualified name needs a digest Name", structure="TPM2B_NAME")
    alg = TpmAlgId(int.from_bytes(checked[:2], "big"))
    return checked[:2] + _digest(alg, parent_qn + checked)


# --------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------

_EK_ATTRIBUTES: Final = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.ADMIN_WITH_POLICY
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.DECRYPT
)

#: Attributes every attestation key must carry: a restricted signing key the TPM generated
#: and that can never leave it.
AK_REQUIRED_ATTRIBUTES: Final = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.SIGN
)

_AES128_CFB: Final = TpmtSymDefObject(algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CFB)

#: TCG EK Credential Profile template L-1: RSA-2048 storage EK (attributes 0x000300B2).
EK_TEMPLATE_RSA2048: Final = TpmtPublic(
    type=TpmAlgId.RSA,
    name_alg=TpmAlgId.SHA256,
    object_attributes=_EK_ATTRIBUTES,
    auth_policy=TCG_EK_AUTH_POLICY_SHA256,
    parameters=TpmsRsaParms(symmetric=_AES128_CFB, scheme=TpmtScheme(), key_bits=2048, exponent=0),
    unique=bytes(256),
)

#: TCG EK Credential Profile template L-2: NIST P-256 storage EK (attributes 0x000300B2).
EK_TEMPLATE_ECC_P256: Final = TpmtPublic(
    type=TpmAlgId.ECC,
    name_alg=TpmAlgId.SHA256,
    object_attributes=_EK_ATTRIBUTES,
    auth_policy=TCG_EK_AUTH_POLICY_SHA256,
    parameters=TpmsEccParms(
        symmetric=_AES128_CFB, scheme=TpmtScheme(), curve_id=TpmEccCurve.NIST_P256, kdf=TpmtScheme()
    ),
    unique=TpmsEccPoint(x=bytes(32), y=bytes(32)),
)

#: Restricted RSA-2048 signing key, RSASSA with SHA-256: the AK this project creates.
AK_TEMPLATE_RSA2048: Final = TpmtPublic(
    type=TpmAlgId.RSA,
    name_alg=TpmAlgId.SHA256,
    object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
    parameters=TpmsRsaParms(
        scheme=TpmtScheme(scheme=TpmAlgId.RSASSA, hash_alg=TpmAlgId.SHA256),
        key_bits=2048,
        exponent=0,
    ),
    unique=b"",
)

#: Restricted NIST P-256 signing key, ECDSA with SHA-256.
AK_TEMPLATE_ECC_P256: Final = TpmtPublic(
    type=TpmAlgId.ECC,
    name_alg=TpmAlgId.SHA256,
    object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
    parameters=TpmsEccParms(
        scheme=TpmtScheme(scheme=TpmAlgId.ECDSA, hash_alg=TpmAlgId.SHA256),
        curve_id=TpmEccCurve.NIST_P256,
    ),
    unique=TpmsEccPoint(),
)


def check_ek_public(pub: TpmtPublic) -> None:
    """Check that a claimed EK public area was made from the TCG default EK template.

    The RSA template L-1 and the ECC template L-2 are accepted.  Everything but ``unique``
    must equal the template; ``unique`` must have the size of a real key of that type.

    Args:
        pub: the claimed EK public area.

    Raises:
        EvidenceVerificationError: a field differs from the template; the error names it.
    """
    template = EK_TEMPLATE_RSA2048 if pub.type is TpmAlgId.RSA else EK_TEMPLATE_ECC_P256
    if pub.type not in (TpmAlgId.RSA, TpmAlgId.ECC):  # pragma: no cover - parser refuses
        raise EvidenceVerificationError("tpm.ek.type", expected="RSA or ECC", actual=pub.type)
    checks: list[tuple[str, object, object]] = [
        ("tpm.ek.name_alg", template.name_alg, pub.name_alg),
        ("tpm.ek.object_attributes", template.object_attributes, pub.object_attributes),
        ("tpm.ek.auth_policy", template.auth_policy, pub.auth_policy),
        ("tpm.ek.parameters", template.parameters, pub.parameters),
    ]
    for claim, expected, actual in checks:
        if expected != actual:
            if isinstance(expected, ObjectAttributes) and isinstance(actual, ObjectAttributes):
                expected, actual = f"{int(expected):#010x}", f"{int(actual):#010x}"
            raise EvidenceVerificationError(claim, expected=expected, actual=actual)
    if isinstance(template.unique, TpmsEccPoint):
        size = len(template.unique.x)
        ok = (
            isinstance(pub.unique, TpmsEccPoint)
            and len(pub.unique.x) == size
            and len(pub.unique.y) == size
        )
        actual_len: object = (
            (len(pub.unique.x), len(pub.unique.y))
            if isinstance(pub.unique, TpmsEccPoint)
            else pub.unique
        )
    else:
        size = len(template.unique)
        ok = isinstance(pub.unique, bytes) and len(pub.unique) == size
        actual_len = len(pub.unique) if isinstance(pub.unique, bytes) else pub.unique
    if not ok:
        raise EvidenceVerificationError(
            "tpm.ek.unique", expected=f"{size}-byte key material", actual=actual_len
        )
