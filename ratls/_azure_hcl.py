"""Azure confidential-VM HCL report: strict parser, encoder, and the runtime claims inside.

On an Azure SEV-SNP confidential VM the paravisor (the "HCL", running at VMPL 0) owns the
vTPM.  At boot it asks the AMD-SP for an SNP report whose REPORT_DATA begins with a hash of
a JSON document, the *runtime claims*, and stores the whole package in vTPM NV index
0x01400001.  The runtime claims carry the vTPM's attestation key as a JWK (``HCLAkPub``), so
a verifier that checks the SNP report and the hash knows that this AK belongs to the vTPM
of an attested VM, without credential activation: the AK is *bound at VMPL 0*.

Layout (all integers little-endian; offsets from the start of the blob)::

    0x000  header   signature "HCLA" | version u32 | report_size u32 | request_type u32
                    | status u32 | reserved 3 x u32
    0x020  the SEV-SNP ATTESTATION_REPORT (0x4A0 bytes)
    0x4C0  IGVM request data: data_size u32 | version u32 | report_type u32 (2 = SNP)
                    | report_data_hash_type u32 (1 = SHA-256) | variable_data_size u32
    0x4D4  variable data (the runtime-claims JSON), variable_data_size bytes

REPORT_DATA[0:n] = H(variable data) with H given by ``report_data_hash_type`` (n = its size).

Parsing is strict in the usual way (signature and version first, exact length, only
:class:`~ratls._errors.EvidenceFormatError` escapes).  The one concession to reality is the
NV index: it has a fixed size larger than the report, so a blob read from it ends in zero
padding; :func:`parse_hcl_report` accepts that padding only when asked to
(``nv_padding=True``) and only if every padding byte is zero.

Nothing here performs I/O or verifies signatures; :mod:`ratls._vtpm_evidence` does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Final, final

from cryptography.hazmat.primitives.asymmetric import rsa

from ._errors import EvidenceFormatError
from ._snp_report import SNP_REPORT_SIZE

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "HCL_AK_KID",
    "HCL_EK_KID",
    "HCL_HEADER_SIZE",
    "HCL_NV_INDEX",
    "HCL_SIGNATURE",
    "HCL_VARIABLE_DATA_OFFSET",
    "MAX_HCL_VARIABLE_DATA_SIZE",
    "HclJwk",
    "HclReport",
    "IgvmHashType",
    "IgvmReportType",
    "RuntimeClaims",
    "build_runtime_claims",
    "parse_hcl_report",
    "parse_runtime_claims",
]

#: The NV index where the Azure paravisor stores the HCL report.
HCL_NV_INDEX: Final = 0x01400001
#: The header's signature field, "HCLA".
HCL_SIGNATURE: Final = b"HCLA"
#: Size of the header before the SNP report.
HCL_HEADER_SIZE: Final = 0x20
#: Where the IGVM request data starts: after the header and the 0x4A0-byte hardware report.
_IGVM_OFFSET: Final = HCL_HEADER_SIZE + SNP_REPORT_SIZE
_IGVM_FIXED_SIZE: Final = 20
#: Where the runtime-claims JSON starts.
HCL_VARIABLE_DATA_OFFSET: Final = _IGVM_OFFSET + _IGVM_FIXED_SIZE
#: Largest runtime-claims document accepted.  Real ones are 1-2 KiB (two RSA-2048 JWKs and a
#: few configuration flags); the NV index that holds the whole report is a few KiB.  16 KiB
#: leaves room for growth while refusing a size field that asks for megabytes.
MAX_HCL_VARIABLE_DATA_SIZE: Final = 0x4000
#: The ``kid`` of the vTPM attestation key in the runtime claims.
HCL_AK_KID: Final = "HCLAkPub"
#: The ``kid`` of the vTPM endorsement key in the runtime claims.
HCL_EK_KID: Final = "HCLEkPub"

_HEADER: Final = struct.Struct("<4sIIII12s")
_IGVM: Final = struct.Struct("<IIIII")
_STRUCTURE: Final = "HCL report"
_CLAIMS: Final = "HCL runtime claims"
_SUPPORTED_VERSIONS: Final = frozenset({1, 2})
#: The request type of an attestation report request (the only one a vTPM NV blob holds).
_REQUEST_TYPE_REPORT: Final = 2


class IgvmReportType(IntEnum):
    """IGVM request data ``report_type``: which hardware report the blob embeds."""

    SNP = 2  #: An AMD SEV-SNP ATTESTATION_REPORT.
    TDX = 4  #: An Intel TDX TDREPORT (recognised, not supported here).


class IgvmHashType(IntEnum):
    """IGVM request data ``report_data_hash_type``: how the variable data is hashed."""

    SHA256 = 1  #: REPORT_DATA[0:32] = SHA-256(variable data).
    SHA384 = 2  #: REPORT_DATA[0:48] = SHA-384(variable data).
    SHA512 = 3  #: REPORT_DATA[0:64] = SHA-512(variable data).

    def digest(self, data: bytes) -> bytes:
        """Hash ``data`` with this algorithm."""
        return hashlib.new(self.name.lower(), data).digest()


def _fail(message: str, offset: int | None = None) -> EvidenceFormatError:
    return EvidenceFormatError(message, structure=_STRUCTURE, offset=offset)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HclReport:
    """An Azure HCL attestation report (the blob in NV index 0x01400001).

    Attributes:
        version: header version (1 or 2).
        report_size: header ``report_size`` as written by the paravisor (recorded, not
            interpreted: its exact meaning is not documented publicly).
        request_type: header request type (2, an attestation report).
        status: header status (0; anything else means the paravisor reported an error).
        reserved: the 12 reserved header bytes, kept for a byte-exact round trip.
        snp_report: the embedded 0x4A0-byte SEV-SNP ATTESTATION_REPORT (unparsed).
        data_size: IGVM request data ``data_size`` (recorded, not interpreted).
        igvm_version: IGVM request data version.
        report_type: the embedded report's type (SNP).
        report_data_hash_type: how REPORT_DATA hashes the variable data.
        variable_data: the runtime-claims JSON document, byte for byte.
    """

    version: int
    report_size: int
    request_type: int = _REQUEST_TYPE_REPORT
    status: int = 0
    reserved: bytes = bytes(12)
    snp_report: bytes
    data_size: int
    igvm_version: int
    report_type: IgvmReportType = IgvmReportType.SNP
    report_data_hash_type: IgvmHashType = IgvmHashType.SHA256
    variable_data: bytes

    def to_bytes(self) -> bytes:
        """Marshal the report (without NV padding); round-trips :func:`parse_hcl_report`.

        Raises:
            ValueError: a field does not fit its wire size.
        """
        if len(self.snp_report) != SNP_REPORT_SIZE or len(self.reserved) != 12:
            raise ValueError("snp_report must be 0x4A0 bytes and reserved 12 bytes")
        try:
            return (
                _HEADER.pack(
                    HCL_SIGNATURE,
                    self.version,
                    self.report_size,
                    self.request_type,
                    self.status,
                    self.reserved,
                )
                + self.snp_report
                + _IGVM.pack(
                    self.data_size,
                    self.igvm_version,
                    self.report_type,
                    self.report_data_hash_type,
                    len(self.variable_data),
                )
                + self.variable_data
            )
        except struct.error as exc:
            raise ValueError(f"a field does not fit its wire size: {exc}") from exc

    def report_data_binding(self) -> bytes:
        """The prefix REPORT_DATA must start with: H(variable data)."""
        return self.report_data_hash_type.digest(self.variable_data)

    def runtime_claims(self) -> RuntimeClaims:
        """Parse the variable data as runtime claims.

        Raises:
            EvidenceFormatError: the variable data is not a valid runtime-claims document.
        """
        return parse_runtime_claims(self.variable_data)


def parse_hcl_report(data: bytes, *, nv_padding: bool = False) -> HclReport:
    """Parse an HCL report.

    Args:
        data: the blob.
        nv_padding: accept zero bytes after the variable data (a blob read whole from the
            fixed-size NV index).  Non-zero bytes there are always refused.

    Returns:
        The report.  The embedded SNP report is returned as bytes; parse and verify it with
        the SNP modules.

    Raises:
        EvidenceFormatError: wrong signature, unsupported version, request type or report
            type, non-zero status, unknown hash type, truncated or trailing data.
    """
    data = bytes(data)
    if len(data) < 4 or data[:4] != HCL_SIGNATURE:
        raise _fail(f"signature {data[:4]!r} is not {HCL_SIGNATURE!r}", 0)
    if len(data) < HCL_VARIABLE_DATA_OFFSET:
        raise _fail(f"truncated: {len(data)} bytes, at least {HCL_VARIABLE_DATA_OFFSET} needed")
    _, version, report_size, request_type, status, reserved = _HEADER.unpack_from(data, 0)
    if version not in _SUPPORTED_VERSIONS:
        raise _fail(f"unsupported version {version}", 4)
    if request_type != _REQUEST_TYPE_REPORT:
        raise _fail(f"request type {request_type} is not an attestation report (2)", 12)
    if status != 0:
        raise _fail(f"the paravisor reported status {status:#x}", 16)
    data_size, igvm_version, raw_type, raw_hash, var_size = _IGVM.unpack_from(data, _IGVM_OFFSET)
    try:
        report_type = IgvmReportType(raw_type)
    except ValueError:
        raise _fail(f"unknown report type {raw_type}", _IGVM_OFFSET + 8) from None
    if report_type is not IgvmReportType.SNP:
        raise _fail(f"report type {report_type.name} is not supported", _IGVM_OFFSET + 8)
    try:
        hash_type = IgvmHashType(raw_hash)
    except ValueError:
        raise _fail(f"unknown report data hash type {raw_hash}", _IGVM_OFFSET + 12) from None
    if var_size > MAX_HCL_VARIABLE_DATA_SIZE:
        raise _fail(
            f"variable data of {var_size} bytes exceeds {MAX_HCL_VARIABLE_DATA_SIZE}",
            _IGVM_OFFSET + 16,
        )
    end = HCL_VARIABLE_DATA_OFFSET + var_size
    if len(data) < end:
        raise _fail(
            f"variable data truncated: {len(data) - HCL_VARIABLE_DATA_OFFSET} of {var_size} bytes",
            HCL_VARIABLE_DATA_OFFSET,
        )
    if len(data) > end and (not nv_padding or any(data[end:])):
        what = "non-zero padding" if nv_padding else "trailing bytes"
        raise _fail(f"{len(data) - end} {what} after the variable data", end)
    return HclReport(
        version=version,
        report_size=report_size,
        request_type=request_type,
        status=status,
        reserved=reserved,
        snp_report=data[HCL_HEADER_SIZE:_IGVM_OFFSET],
        data_size=data_size,
        igvm_version=igvm_version,
        report_type=report_type,
        report_data_hash_type=hash_type,
        variable_data=data[HCL_VARIABLE_DATA_OFFSET:end],
    )


# --------------------------------------------------------------------------------------
# Runtime claims
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HclJwk:
    """An RSA public key from the runtime claims (a JWK with ``kty`` "RSA").

    Attributes:
        kid: the key identifier, e.g. ``"HCLAkPub"``.
        n: the modulus, big-endian, without leading zero bytes.
        e: the public exponent.
        key_ops: the ``key_ops`` member, if present.
    """

    kid: str
    n: bytes
    e: int
    key_ops: tuple[str, ...] | None = None

    def public_key(self) -> rsa.RSAPublicKey:
        """The key as a ``cryptography`` object.

        Raises:
            EvidenceFormatError: the numbers are not a valid RSA public key.
        """
        try:
            return rsa.RSAPublicNumbers(self.e, int.from_bytes(self.n, "big")).public_key()
        except ValueError as exc:
            raise EvidenceFormatError(
                f"{self.kid} is not a valid RSA public key: {exc}", structure=_CLAIMS
            ) from exc


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeClaims:
    """The runtime-claims document of an HCL report.

    Attributes:
        keys: every JWK in ``keys``, in document order (``kid`` values are unique).
        user_data: the ``user-data`` member (a hex string the guest chose), if present.
        vm_configuration: the ``vm-configuration`` member re-serialised as canonical JSON
            (sorted keys), if present; kept as text so the value stays hashable.
    """

    keys: tuple[HclJwk, ...]
    user_data: str | None = None
    vm_configuration: str | None = None

    def key(self, kid: str) -> HclJwk:
        """The key with identifier ``kid``.

        Raises:
            EvidenceFormatError: no such key.
        """
        for jwk in self.keys:
            if jwk.kid == kid:
                return jwk
        raise EvidenceFormatError(f"no key with kid {kid!r}", structure=_CLAIMS)

    @property
    def ak_pub(self) -> HclJwk:
        """The vTPM attestation key (``HCLAkPub``).

        Raises:
            EvidenceFormatError: the document has none.
        """
        return self.key(HCL_AK_KID)


def _claims_fail(message: str) -> EvidenceFormatError:
    return EvidenceFormatError(message, structure=_CLAIMS)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _claims_fail(f"duplicate member {key!r}")
        out[key] = value
    return out


def _b64url(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _claims_fail(f"{what} must be a non-empty base64url string")
    if "=" in value or not value.isascii():
        raise _claims_fail(f"{what} must be unpadded base64url")
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _claims_fail(f"{what} is not base64url: {exc}") from exc
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != value:
        raise _claims_fail(f"{what} is not canonical base64url")
    return decoded


def _parse_jwk(value: object, index: int) -> HclJwk:
    where = f"keys[{index}]"
    if not isinstance(value, dict):
        raise _claims_fail(f"{where} is not an object")
    kid = value.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _claims_fail(f"{where}.kid must be a non-empty string")
    if value.get("kty") != "RSA":
        raise _claims_fail(f"{where} ({kid}) kty must be 'RSA', got {value.get('kty')!r}")
    n = _b64url(value.get("n"), f"{kid}.n")
    e_bytes = _b64url(value.get("e"), f"{kid}.e")
    if n[0] == 0 or e_bytes[0] == 0:
        raise _claims_fail(f"{kid}: n and e must have no leading zero bytes")
    if len(e_bytes) > 8:
        raise _claims_fail(f"{kid}.e is implausibly long")
    ops = value.get("key_ops")
    key_ops: tuple[str, ...] | None = None
    if ops is not None:
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise _claims_fail(f"{kid}.key_ops must be a list of strings")
        key_ops = tuple(ops)
    return HclJwk(kid=kid, n=n, e=int.from_bytes(e_bytes, "big"), key_ops=key_ops)


def parse_runtime_claims(data: bytes) -> RuntimeClaims:
    """Parse a runtime-claims JSON document.

    Strict where it matters: UTF-8 JSON, an object at the top, no duplicate members, a
    ``keys`` array of RSA JWKs with unique ``kid`` values and canonical unpadded base64url
    numbers, and an ``HCLAkPub`` among them.  Other members are allowed (the paravisor adds
    configuration flags over time) but ``user-data`` must be a string and
    ``vm-configuration`` an object.

    Args:
        data: the variable data of an HCL report.

    Returns:
        The claims.

    Raises:
        EvidenceFormatError: the document does not meet the rules above.
    """
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _claims_fail(f"not UTF-8: {exc}") from exc
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates)
    except EvidenceFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise _claims_fail(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _claims_fail("the document is not a JSON object")
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise _claims_fail("'keys' must be a non-empty array")
    keys = tuple(_parse_jwk(value, i) for i, value in enumerate(raw_keys))
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise _claims_fail(f"duplicate kid among {kids}")
    if HCL_AK_KID not in kids:
        raise _claims_fail(f"no {HCL_AK_KID} key")
    user_data = document.get("user-data")
    if user_data is not None and not isinstance(user_data, str):
        raise _claims_fail("'user-data' must be a string")
    vm_config = document.get("vm-configuration")
    if vm_config is not None and not isinstance(vm_config, dict):
        raise _claims_fail("'vm-configuration' must be an object")
    return RuntimeClaims(
        keys=keys,
        user_data=user_data,
        vm_configuration=None
        if vm_config is None
        else json.dumps(vm_config, sort_keys=True, separators=(",", ":")),
    )


def _b64url_encode(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")


def _jwk(kid: str, key: rsa.RSAPublicKey, ops: Sequence[str]) -> dict[str, object]:
    numbers = key.public_numbers()
    return {
        "kid": kid,
        "key_ops": list(ops),
        "kty": "RSA",
        "e": _b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        "n": _b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
    }


def build_runtime_claims(
    *,
    ak_public: rsa.RSAPublicKey,
    ek_public: rsa.RSAPublicKey | None = None,
    user_data: str | None = None,
    vm_configuration: dict[str, object] | None = None,
) -> bytes:
    """Encode a runtime-claims document the way the paravisor lays it out (for tests).

    Args:
        ak_public: the vTPM AK (``HCLAkPub``).
        ek_public: the vTPM EK (``HCLEkPub``), if it should be listed.
        user_data: the ``user-data`` string.
        vm_configuration: the ``vm-configuration`` object.

    Returns:
        Compact UTF-8 JSON.
    """
    keys = [_jwk(HCL_AK_KID, ak_public, ["sign"])]
    if ek_public is not None:
        keys.append(_jwk(HCL_EK_KID, ek_public, ["encrypt"]))
    document: dict[str, object] = {"keys": keys}
    if vm_configuration is not None:
        document["vm-configuration"] = vm_configuration
    if user_data is not None:
        document["user-data"] = user_data
    return json.dumps(document, separators=(",", ":")).encode("utf-8")
