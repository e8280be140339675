"""The AMD SEV-SNP endorsement chain: ARK -> ASK/ASVK -> VCEK/VLEK.

An SNP attestation report is signed by a VCEK (chip- and TCB-specific) or a VLEK (issued to
a cloud provider).  That key is endorsed by AMD's signing key for the product line (ASK for
VCEKs, ASVK for VLEKs), which is endorsed by the product's root key (ARK).  This module checks
that chain strictly and pins the ARK by the SHA-256 of its SubjectPublicKeyInfo, so an ARK
that merely *arrives with* the evidence is never trusted on its own word.

Theory of operation
-------------------

* **Loading.**  Every real VCEK and VLEK has serial number 0, which RFC 5280 forbids.
  cryptography loads such certificates but emits a ``CryptographyDeprecationWarning``
  ("Parsed a serial number which wasn't positive ...") on load *and* on every read of
  ``Certificate.serial_number``.  :func:`load_amd_certificate` silences exactly that
  message and category while loading (a narrow ``warnings.catch_warnings`` filter); every
  other warning still surfaces.  Nothing in this module reads ``serial_number``; use
  :func:`amd_certificate_serial` when you need it.  If a future cryptography refuses such
  certificates outright, loading raises an :class:`EvidenceFormatError` that says so.
* **Signature profile.**  AMD signs the ARK, the ASK/ASVK and the VCEK/VLEK with
  RSASSA-PSS, SHA-384, MGF1-SHA-384, salt length 48 (and writes the default trailerField 1
  explicitly).  The verifier reads the AlgorithmIdentifier parameters from the DER itself
  and checks each of them, instead of only trying a PSS verification, so a certificate that
  claims other parameters is refused even if some library would accept its signature.
* **Key extensions.**  The VCEK/VLEK carry their TCB and identity in private extensions
  under 1.3.6.1.4.1.3704.1.  cryptography exposes them as raw ``extnValue`` bytes, so a
  small strict DER reader decodes them (INTEGER, IA5String, OCTET STRING: definite
  minimal lengths, minimal integers, no trailing bytes).  hwID is the exception: AMD
  stores it raw in extnValue (64 bytes on Milan/Genoa, 8 on Turin); a DER OCTET STRING
  wrapping is also accepted because newer tooling produces it.
* **No I/O.**  Certificates and the verification time come in as arguments.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import re
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from ._errors import CertificateChainError, EvidenceFormatError, SignatureMismatch
from ._nopublic import NoPublicConstructor
from ._snp_report import SNP_SIGNED_SIZE, ProductLine, TcbLayout
from ._steps import offload, run_inline

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

    from ._snp_report import SnpReport
    from ._steps import Steps

__all__ = [
    "AMD_KDS_CRL_URL",
    "AMD_KDS_URL",
    "PINNED_ARK_SPKI_SHA256",
    "SIMULATOR_MARK",
    "AmdKeyExtensions",
    "AmdOID",
    "AmdTrustAnchors",
    "KeyKind",
    "TrustedArk",
    "VerifiedAmdChain",
    "amd_certificate_serial",
    "is_simulated_root",
    "kds_chain_url",
    "kds_vcek_url",
    "load_amd_certificate",
    "parse_amd_key_extensions",
    "report_signature_steps",
    "spki_sha256",
    "verify_amd_ca_chain",
    "verify_amd_chain",
    "verify_report_signature",
]

_CERT: Final = "X.509 certificate"
_EXT: Final = "VCEK/VLEK extensions"

#: The exact start of the warning cryptography emits for a serial number <= 0.  Matched as a
#: regular expression anchored at the start of the message, so only this warning is silenced.
_SERIAL_WARNING_RE: Final = r"Parsed a serial number which wasn't positive"

#: AMD KDS CRL distribution point, by key family ("vcek" or "vlek") and product name.  The
#: ARK and the ASK carry the vcek one, the ASVK the vlek one.
AMD_KDS_CRL_URL: Final = "https://kdsintf.amd.com/{family}/v1/{product}/crl"

#: AMD Key Distribution Service, where a VCEK and the ASK/ARK chain can be downloaded.
AMD_KDS_URL: Final = "https://kdsintf.amd.com"

#: SHA-256 of the SubjectPublicKeyInfo DER of AMD's root key (ARK) per product line.
PINNED_ARK_SPKI_SHA256: Final[Mapping[ProductLine, bytes]] = MappingProxyType(
    {
        ProductLine.MILAN: bytes.fromhex(
            "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9"
        ),
        ProductLine.GENOA: bytes.fromhex(
            "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831"
        ),
        ProductLine.TURIN: bytes.fromhex(
            "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08"
        ),
    }
)

#: The human-visible mark ratls's simulated AMD-SP puts in the subject of each certificate
#: it makes (attribute 2.5.4.13, ``description``).  It labels; it never grants trust.
SIMULATOR_MARK: Final = "ratls simulator - not AMD hardware"
_DESCRIPTION_OID: Final = x509.ObjectIdentifier("2.5.4.13")

#: The one signature profile AMD uses for the whole chain.
_PSS_SALT_LENGTH: Final = 48
_AMD_RSA_BITS: Final = 4096
_PSS_DESCRIPTION: Final = "RSASSA-PSS SHA-384, MGF1-SHA-384, salt 48, trailerField 1"

_OID_SHA384: Final = "2.16.840.1.101.3.4.2.2"
_OID_MGF1: Final = "1.2.840.113549.1.1.8"

#: AMD's subject/issuer attributes for ARK, ASK and ASVK (besides the common name).
_AMD_LOCATION: Final[tuple[tuple[x509.ObjectIdentifier, str, str], ...]] = (
    (NameOID.ORGANIZATION_NAME, "O", "Advanced Micro Devices"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU", "Engineering"),
    (NameOID.LOCALITY_NAME, "L", "Santa Clara"),
    (NameOID.STATE_OR_PROVINCE_NAME, "ST", "CA"),
    (NameOID.COUNTRY_NAME, "C", "US"),
)


@final
class AmdOID:
    """Object identifiers of the VCEK/VLEK extensions (AMD arc 1.3.6.1.4.1.3704.1)."""

    #: structVersion, INTEGER: 0 on Milan/Genoa, 1 on Turin.
    STRUCT_VERSION: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.1")
    #: productName, IA5String, e.g. "Milan-B0", "Genoa", "Turin".
    PRODUCT_NAME: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
    #: blSPL, INTEGER: boot loader security patch level.
    BL_SPL: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
    #: teeSPL, INTEGER: PSP OS (TEE) security patch level.
    TEE_SPL: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
    #: snpSPL, INTEGER: SNP firmware security patch level.
    SNP_SPL: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
    #: spl_4 .. spl_7, INTEGER: reserved (present on Milan/Genoa, absent on Turin).
    SPL_4: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.4")
    SPL_5: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.5")
    SPL_6: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.6")
    SPL_7: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.7")
    #: ucodeSPL, INTEGER: microcode security patch level (values >= 128 need two bytes).
    UCODE_SPL: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
    #: fmcSPL, INTEGER: firmware mask ROM patch level, Turin only.
    FMC_SPL: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9")
    #: hwID: the chip ID, raw in extnValue (64 bytes, 8 on Turin); VCEK only.
    HW_ID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
    #: cspID, IA5String: the cloud provider a VLEK was issued to; VLEK only.
    CSP_ID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.5")


_AMD_ARC: Final = "1.3.6.1.4.1.3704.1."
_RESERVED_SPLS: Final = (AmdOID.SPL_4, AmdOID.SPL_5, AmdOID.SPL_6, AmdOID.SPL_7)


class KeyKind(enum.Enum):
    """Which AMD key signed a report, and so which chain endorses it."""

    #: Versioned Chip Endorsement Key: one chip at one TCB, endorsed by the ASK.
    VCEK = "VCEK"
    #: Versioned Loaded Endorsement Key: issued to a cloud provider, endorsed by the ASVK.
    VLEK = "VLEK"


# --- a tiny strict DER reader and writer ------------------------------------------------------
#
# Only what the AMD profile needs: single-byte tags, definite lengths in minimal form.  The
# writer is used by the simulator to build certificates byte-exactly (serial 0, AMD's PSS
# parameters), so both halves live here and are tested against each other.


def _der_read(data: bytes, offset: int, structure: str) -> tuple[int, bytes, int]:
    """Read the TLV at ``offset``; return (tag, contents, offset after it)."""
    if offset >= len(data):
        raise EvidenceFormatError("truncated DER: missing tag", structure=structure, offset=offset)
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise EvidenceFormatError(
            "multi-byte DER tags are not used", structure=structure, offset=offset
        )
    if offset + 1 >= len(data):
        raise EvidenceFormatError(
            "truncated DER: missing length", structure=structure, offset=offset
        )
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise EvidenceFormatError(
            "indefinite length is not DER", structure=structure, offset=offset
        )
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            raise EvidenceFormatError("truncated DER length", structure=structure, offset=offset)
        raw = data[pos : pos + count]
        length = int.from_bytes(raw, "big")
        if raw[0] == 0 or length < 0x80:
            raise EvidenceFormatError("non-minimal DER length", structure=structure, offset=offset)
        pos += count
    end = pos + length
    if end > len(data):
        raise EvidenceFormatError(
            f"truncated DER: {length} content bytes announced, {len(data) - pos} present",
            structure=structure,
            offset=offset,
        )
    return tag, data[pos:end], end


def _der_single(data: bytes, tag: int, structure: str) -> bytes:
    """Contents of the one TLV that ``data`` must consist of, with the given tag."""
    found, contents, end = _der_read(data, 0, structure)
    if found != tag:
        raise EvidenceFormatError(
            f"expected DER tag {tag:#04x}, found {found:#04x}", structure=structure, offset=0
        )
    if end != len(data):
        raise EvidenceFormatError(
            f"{len(data) - end} trailing byte(s) after the DER value",
            structure=structure,
            offset=end,
        )
    return contents


def _der_items(contents: bytes, structure: str) -> list[tuple[int, bytes, bytes]]:
    """Split constructed contents into (tag, contents, whole encoding) items."""
    items: list[tuple[int, bytes, bytes]] = []
    offset = 0
    while offset < len(contents):
        tag, inner, end = _der_read(contents, offset, structure)
        items.append((tag, inner, contents[offset:end]))
        offset = end
    return items


def _der_int_value(contents: bytes, structure: str) -> int:
    """Decode INTEGER contents, refusing empty and non-minimal encodings."""
    if not contents:
        raise EvidenceFormatError("empty INTEGER", structure=structure)
    if len(contents) > 1 and (
        (contents[0] == 0x00 and contents[1] < 0x80)
        or (contents[0] == 0xFF and contents[1] >= 0x80)
    ):
        raise EvidenceFormatError("non-minimal INTEGER encoding", structure=structure)
    return int.from_bytes(contents, "big", signed=True)


def _der_oid_value(contents: bytes, structure: str) -> str:
    """Decode OBJECT IDENTIFIER contents to dotted form."""
    if not contents or contents[-1] & 0x80:
        raise EvidenceFormatError("malformed OBJECT IDENTIFIER", structure=structure)
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in contents:
        if fresh and byte == 0x80:
            raise EvidenceFormatError("non-minimal OBJECT IDENTIFIER arc", structure=structure)
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])


def parse_der_integer(data: bytes, *, structure: str) -> int:
    """Decode one DER INTEGER (the whole of ``data``).

    Raises:
        EvidenceFormatError: not exactly one minimal DER INTEGER.
    """
    return _der_int_value(_der_single(data, 0x02, structure), structure)


def parse_der_ia5string(data: bytes, *, structure: str) -> str:
    """Decode one DER IA5String (the whole of ``data``).

    Raises:
        EvidenceFormatError: not exactly one IA5String of 7-bit characters.
    """
    contents = _der_single(data, 0x16, structure)
    if any(byte >= 0x80 for byte in contents):
        raise EvidenceFormatError("IA5String with a non-ASCII byte", structure=structure)
    return contents.decode("ascii")


def parse_der_octet_string(data: bytes, *, structure: str) -> bytes:
    """Decode one DER OCTET STRING (the whole of ``data``).

    Raises:
        EvidenceFormatError: not exactly one OCTET STRING.
    """
    return _der_single(data, 0x04, structure)


def _der_len(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def der_tlv(tag: int, contents: bytes) -> bytes:
    """Encode one DER TLV with a single-byte tag."""
    return bytes([tag]) + _der_len(len(contents)) + contents


def der_integer(value: int) -> bytes:
    """Encode a non-negative DER INTEGER in minimal form."""
    if value < 0:
        raise ValueError("only non-negative INTEGERs are needed here")
    return der_tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_oid(dotted: str) -> bytes:
    """Encode a DER OBJECT IDENTIFIER from its dotted form."""
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return der_tlv(0x06, bytes(body))


def der_sequence(*items: bytes) -> bytes:
    """Encode a DER SEQUENCE of already encoded items."""
    return der_tlv(0x30, b"".join(items))


def der_explicit(number: int, inner: bytes) -> bytes:
    """Encode an EXPLICIT context-specific tag [number] around an encoded value."""
    return der_tlv(0xA0 | number, inner)


def amd_pss_algorithm_identifier() -> bytes:
    """The RSASSA-PSS AlgorithmIdentifier AMD writes: SHA-384, MGF1-SHA-384, salt 48, trailer 1."""
    sha384 = der_sequence(der_oid(_OID_SHA384), der_tlv(0x05, b""))
    params = der_sequence(
        der_explicit(0, sha384),
        der_explicit(1, der_sequence(der_oid(_OID_MGF1), sha384)),
        der_explicit(2, der_integer(_PSS_SALT_LENGTH)),
        der_explicit(3, der_integer(1)),
    )
    return der_sequence(der_oid(SignatureAlgorithmOID.RSASSA_PSS.dotted_string), params)


# --- loading ----------------------------------------------------------------------------------


def load_amd_certificate(data: bytes) -> x509.Certificate:
    """Load an AMD certificate (ARK, ASK, ASVK, VCEK, VLEK) from PEM or DER.

    VCEKs and VLEKs have serial number 0; the deprecation warning cryptography emits for
    that (and only that warning) is suppressed while loading.  Do not read
    ``serial_number`` of the result directly (it warns again); use
    :func:`amd_certificate_serial`.

    Args:
        data: one certificate, PEM (exactly one ``CERTIFICATE`` block) or DER (exact length).

    Returns:
        The certificate.

    Raises:
        EvidenceFormatError: the bytes are not exactly one well-formed certificate, or the
            installed cryptography refuses serial-number-0 certificates.
    """
    return _load_amd_certificate(bytes(data))


@functools.lru_cache(maxsize=128)
def _load_amd_certificate(data: bytes) -> x509.Certificate:
    """load_amd_certificate, remembered per exact bytes (failures are not remembered).

    Every connection from a peer carries the same three endorsement certificates; parsing
    them once spares the parse and the warnings filter on each verification.
    """
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        if (
            stripped.count(b"-----BEGIN") != 1
            or not stripped.startswith(b"-----BEGIN CERTIFICATE-----")
            or not stripped.endswith(b"-----END CERTIFICATE-----")
        ):
            raise EvidenceFormatError("expected exactly one PEM CERTIFICATE block", structure=_CERT)
        loader = x509.load_pem_x509_certificate
    else:
        loader = x509.load_der_x509_certificate
    try:
        with warnings.catch_warnings():
            # Narrow on purpose: this message, this category; anything else still surfaces.
            warnings.filterwarnings(
                "ignore", message=_SERIAL_WARNING_RE, category=CryptographyDeprecationWarning
            )
            cert = loader(stripped if loader is x509.load_pem_x509_certificate else data)
    except x509.InvalidVersion as exc:  # not a ValueError
        raise EvidenceFormatError(f"not a certificate: {exc}", structure=_CERT) from exc
    except ValueError as exc:
        if _serial_is_not_positive(data):
            raise EvidenceFormatError(
                "this version of cryptography refuses certificates whose serial number is not "
                "positive; every AMD VCEK/VLEK has serial number 0, so install a cryptography "
                "release that still loads them (see docs/amd-chain.md)",
                structure=_CERT,
            ) from exc
        raise EvidenceFormatError(f"not a certificate: {exc}", structure=_CERT) from exc
    _parse_names_now(cert)
    return cert


def _parse_names_now(cert: x509.Certificate) -> None:
    """Parse the subject and issuer now, refusing malformed ones.

    cryptography parses names on first use, so a malformed one would otherwise raise
    ValueError or TypeError (or warn about an attribute's length) deep inside the chain
    checks.  AMD's names are well-formed; one that is not cannot be AMD's.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Attribute's length", category=UserWarning)
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
    except (ValueError, TypeError, UserWarning) as exc:
        raise EvidenceFormatError(f"malformed subject or issuer: {exc}", structure=_CERT) from exc


def _serial_is_not_positive(data: bytes) -> bool:
    """Whether cryptography refused this certificate *only* because of its serial number.

    Re-encodes the certificate with serial number 1 and tries again: if that copy loads,
    the serial (0 on every VCEK/VLEK) was the one problem.  Any other answer means the
    certificate is malformed for another reason, and the generic error is right.
    """
    try:
        stripped = data.strip()
        if stripped.startswith(b"-----BEGIN"):
            body = b"".join(line for line in stripped.splitlines() if not line.startswith(b"-----"))
            data = base64.b64decode(body, validate=True)
        outer = _der_items(_der_single(data, 0x30, _CERT), _CERT)
        tbs = [whole for _, _, whole in _der_items(outer[0][1], _CERT)]
        index = 1 if tbs[0][0] == 0xA0 else 0
        if tbs[index][0] != 0x02 or _der_int_value(_der_single(tbs[index], 0x02, _CERT), _CERT) > 0:
            return False
        tbs[index] = der_integer(1)
        patched = der_sequence(der_sequence(*tbs), *(whole for _, _, whole in outer[1:]))
        x509.load_der_x509_certificate(patched)
    except (EvidenceFormatError, IndexError, ValueError, x509.InvalidVersion):
        return False
    return True


def _public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    """The certificate's public key; an unsupported or malformed key is a format error."""
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EvidenceFormatError(f"unusable public key: {exc}", structure=_CERT) from exc


def amd_certificate_serial(cert: x509.Certificate) -> int:
    """Read a certificate's serial number without the serial-0 deprecation warning.

    Args:
        cert: a certificate from :func:`load_amd_certificate`.

    Returns:
        The serial number (0 for every real VCEK/VLEK).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=_SERIAL_WARNING_RE, category=CryptographyDeprecationWarning
        )
        return cert.serial_number


def spki_sha256(subject: x509.Certificate | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo of a certificate or public key (the ARK pin).

    Args:
        subject: a certificate or a public key.

    Returns:
        The 32-byte digest.
    """
    key = _public_key(subject) if isinstance(subject, x509.Certificate) else subject
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


# --- VCEK / VLEK extensions -------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AmdKeyExtensions:
    """The AMD-specific extensions of a VCEK or VLEK (OID arc 1.3.6.1.4.1.3704.1).

    Attributes:
        struct_version: structVersion (0 on Milan/Genoa, 1 on Turin).
        product_name: productName as written, e.g. ``"Milan-B0"``.
        bl_spl: boot loader SPL.
        tee_spl: TEE (PSP OS) SPL.
        snp_spl: SNP firmware SPL.
        ucode_spl: microcode SPL.
        fmc_spl: FMC SPL (Turin only), else None.
        hw_id: hwID, the chip ID (64 bytes, 8 on Turin); VCEKs only, else None.
        csp_id: cspID, the cloud provider of a VLEK; VLEKs only, else None.
    """

    struct_version: int
    product_name: str
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None = None
    hw_id: bytes | None = None
    csp_id: str | None = None

    def components(self, product: ProductLine) -> dict[str, int]:
        """The certificate's TCB as named components, comparable with ``TcbVersion.components()``.

        Args:
            product: the product line, which decides whether ``fmc`` is part of the TCB.

        Returns:
            ``{"bootloader", "tee", "snp", "microcode"}`` (plus ``"fmc"`` on Turin) to values.

        Raises:
            CertificateChainError: a Turin certificate without fmcSPL.
        """
        result = {
            "bootloader": self.bl_spl,
            "tee": self.tee_spl,
            "snp": self.snp_spl,
            "microcode": self.ucode_spl,
        }
        if product.tcb_layout is TcbLayout.TURIN:
            if self.fmc_spl is None:
                raise CertificateChainError(
                    "amd.leaf.fmc_spl", expected="an fmcSPL extension (Turin)", actual="none"
                )
            result["fmc"] = self.fmc_spl
        return result


def _spl(values: Mapping[str, bytes], oid: x509.ObjectIdentifier, name: str) -> int | None:
    raw = values.get(oid.dotted_string)
    if raw is None:
        return None
    value = parse_der_integer(raw, structure=f"{_EXT} {name}")
    if not 0 <= value <= 0xFF:
        raise EvidenceFormatError(f"{name} {value} is outside 0..255", structure=_EXT)
    return value


def _required_spl(values: Mapping[str, bytes], oid: x509.ObjectIdentifier, name: str) -> int:
    value = _spl(values, oid, name)
    if value is None:
        raise EvidenceFormatError(f"missing {name} ({oid.dotted_string})", structure=_EXT)
    return value


def _hw_id(raw: bytes) -> bytes:
    """hwID: raw 64/8 bytes in extnValue (AMD's KDS), or a DER OCTET STRING around them."""
    if len(raw) in (8, 64):
        return raw
    inner = parse_der_octet_string(raw, structure=f"{_EXT} hwID")
    if len(inner) not in (8, 64):
        raise EvidenceFormatError(f"hwID of {len(inner)} bytes; expected 64 or 8", structure=_EXT)
    return inner


def parse_amd_key_extensions(cert: x509.Certificate) -> AmdKeyExtensions:
    """Decode the AMD extensions of a VCEK or VLEK.

    Unknown OIDs inside AMD's arc are ignored (a later KDS may add fields); the reserved
    spl_4..spl_7 are checked to be INTEGERs and otherwise ignored.

    Args:
        cert: the VCEK or VLEK.

    Returns:
        The decoded extensions.

    Raises:
        EvidenceFormatError: a required extension is missing or an encoding is wrong.
    """
    try:
        extensions = cert.extensions
    except (x509.DuplicateExtension, ValueError) as exc:
        raise EvidenceFormatError(f"unreadable extensions: {exc}", structure=_EXT) from exc
    values: dict[str, bytes] = {}
    for extension in extensions:
        if extension.oid.dotted_string.startswith(_AMD_ARC):
            value = extension.value
            if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
                raise EvidenceFormatError("AMD extension decoded unexpectedly", structure=_EXT)
            values[extension.oid.dotted_string] = value.value

    def required(oid: x509.ObjectIdentifier, name: str) -> bytes:
        raw = values.get(oid.dotted_string)
        if raw is None:
            raise EvidenceFormatError(f"missing {name} ({oid.dotted_string})", structure=_EXT)
        return raw

    struct_version = parse_der_integer(
        required(AmdOID.STRUCT_VERSION, "structVersion"), structure=f"{_EXT} structVersion"
    )
    if not 0 <= struct_version <= 0xFF:
        raise EvidenceFormatError(f"structVersion {struct_version} out of range", structure=_EXT)
    product_name = parse_der_ia5string(
        required(AmdOID.PRODUCT_NAME, "productName"), structure=f"{_EXT} productName"
    )
    for index, oid in enumerate(_RESERVED_SPLS, start=4):
        _spl(values, oid, f"spl_{index}")
    hw_raw = values.get(AmdOID.HW_ID.dotted_string)
    csp_raw = values.get(AmdOID.CSP_ID.dotted_string)
    return AmdKeyExtensions(
        struct_version=struct_version,
        product_name=product_name,
        bl_spl=_required_spl(values, AmdOID.BL_SPL, "blSPL"),
        tee_spl=_required_spl(values, AmdOID.TEE_SPL, "teeSPL"),
        snp_spl=_required_spl(values, AmdOID.SNP_SPL, "snpSPL"),
        ucode_spl=_required_spl(values, AmdOID.UCODE_SPL, "ucodeSPL"),
        fmc_spl=_spl(values, AmdOID.FMC_SPL, "fmcSPL"),
        hw_id=None if hw_raw is None else _hw_id(hw_raw),
        csp_id=None if csp_raw is None else parse_der_ia5string(csp_raw, structure=f"{_EXT} cspID"),
    )


# --- trust anchors ----------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedArk:
    """One trusted root key for one product line.

    Attributes:
        product: the product line whose chains may end in this root.
        spki_sha256: SHA-256 of the root's SubjectPublicKeyInfo DER.
        label: a name for results and logs, e.g. ``"AMD"`` or ``"simulator"``.
        simulated: True when the root is not AMD's, so results can say the evidence was
            trusted only because the policy trusts simulated hardware.
    """

    product: ProductLine
    spki_sha256: bytes
    label: str
    simulated: bool

    def __post_init__(self) -> None:
        if not isinstance(self.spki_sha256, bytes) or len(self.spki_sha256) != 32:
            raise ValueError("spki_sha256 must be 32 bytes (a SHA-256 digest)")
        if not self.label:
            raise ValueError("an anchor needs a label")


@final
@dataclass(frozen=True, slots=True)
class AmdTrustAnchors:
    """The ARKs a verifier accepts, per product line.

    ``AmdTrustAnchors.default()`` holds AMD's three pinned roots and nothing else.  Other
    roots (the simulator's, a test CA) are added with :meth:`with_extra`, each with a label
    that the verification result carries.

    Attributes:
        arks: the trusted roots.
    """

    arks: frozenset[TrustedArk]

    @classmethod
    def default(cls) -> AmdTrustAnchors:
        """AMD's pinned ARKs for Milan, Genoa and Turin, labelled ``"AMD"``.

        One shared instance (it is immutable), so that memos keyed by anchors find it
        without hashing it again.
        """
        return _default_anchors()

    def with_extra(
        self, product: ProductLine, spki_sha256: bytes, *, label: str, simulated: bool = True
    ) -> AmdTrustAnchors:
        """A copy that also trusts the given root for ``product``.

        Args:
            product: the product line the root may sign for.
            spki_sha256: SHA-256 of the root's SubjectPublicKeyInfo DER.
            label: name carried into results, e.g. ``"simulator"``.
            simulated: whether this root stands for simulated hardware (default True: any
                root that is not AMD's pinned one is, as far as the verifier knows).

        Returns:
            The extended anchor set.
        """
        extra = TrustedArk(
            product=product, spki_sha256=spki_sha256, label=label, simulated=simulated
        )
        return AmdTrustAnchors(self.arks | {extra})

    def with_simulator_root(self, root: x509.Certificate) -> AmdTrustAnchors:
        """A copy that also trusts this simulated ARK, labelled ``"simulator"``.

        The product is the one the root's CN names (``ARK-<Product>``).  Only a root that
        carries :data:`SIMULATOR_MARK` is accepted here, so an AMD root can never be added
        under the simulator's label by mistake.

        Args:
            root: an ARK made by ratls's simulated AMD-SP.

        Returns:
            The extended anchor set.

        Raises:
            CertificateChainError: the root is not marked as simulated, or its CN names no
                known product.
        """
        if not is_simulated_root(root):
            raise CertificateChainError(
                "amd.ark.simulator_mark", expected=SIMULATOR_MARK, actual="(not marked)"
            )
        cn = _single_attribute(root.subject, NameOID.COMMON_NAME) or ""
        for product in ProductLine:
            if cn == f"ARK-{product.value}":
                return self.with_extra(product, spki_sha256(root), label="simulator")
        raise CertificateChainError(
            "amd.ark.common_name", expected="ARK-Milan, ARK-Genoa or ARK-Turin", actual=cn
        )

    def digests(self, product: ProductLine) -> frozenset[bytes]:
        """The SPKI digests trusted for ``product``."""
        return frozenset(ark.spki_sha256 for ark in self.arks if ark.product is product)

    def find(self, product: ProductLine, spki_sha256: bytes) -> TrustedArk | None:
        """The trusted root for ``product`` with this SPKI digest, or None."""
        # Deterministic order: a non-simulated anchor wins if a digest was added twice.
        for ark in sorted(self.arks, key=lambda ark: (ark.simulated, ark.label)):
            if ark.product is product and hmac.compare_digest(ark.spki_sha256, spki_sha256):
                return ark
        return None


# --- chain verification -----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedAmdChain(metaclass=NoPublicConstructor):
    """A VCEK/VLEK whose chain to a trusted ARK was verified.

    Only :func:`verify_amd_chain` creates these.

    Attributes:
        leaf_public_key: the VCEK/VLEK public key (ECDSA P-384) that signs reports.
        extensions: the leaf's AMD extensions (TCB, hwID or cspID).
        product: the product line the chain was verified for.
        key_kind: VCEK or VLEK.
        anchor_label: label of the trusted root, ``"AMD"`` or e.g. ``"simulator"``.
        anchor_simulated: True when the root is not one of AMD's pinned roots.
        root_spki_sha256: SHA-256 of the root's SubjectPublicKeyInfo DER.
        leaf: the VCEK/VLEK certificate.
        intermediate: the ASK/ASVK certificate.
        root: the ARK certificate.
    """

    leaf_public_key: ec.EllipticCurvePublicKey
    extensions: AmdKeyExtensions
    product: ProductLine
    key_kind: KeyKind
    anchor_label: str
    anchor_simulated: bool
    root_spki_sha256: bytes
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate


def is_simulated_root(cert: x509.Certificate) -> bool:
    """Whether a certificate carries the simulated AMD-SP's mark in its subject.

    This is a label for better error messages and results, not a trust decision: anyone
    can write the mark into a certificate.  Trust comes only from the anchors.

    Args:
        cert: any certificate (typically the ARK that came with evidence).

    Returns:
        True if the subject has a ``description`` attribute equal to :data:`SIMULATOR_MARK`.
    """
    return any(
        attribute.value == SIMULATOR_MARK
        for attribute in cert.subject.get_attributes_for_oid(_DESCRIPTION_OID)
    )


def _fail(
    claim: str, expected: object, actual: object, detail: str | None = None
) -> CertificateChainError:
    return CertificateChainError(claim, expected=expected, actual=actual, detail=detail)


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def _check_version(cert: x509.Certificate, role: str) -> None:
    if cert.version is not x509.Version.v3:
        raise _fail(f"amd.{role}.version", expected="X.509 v3", actual=cert.version.name)


def _check_cn(cert: x509.Certificate, role: str, expected: str) -> None:
    actual = _single_attribute(cert.subject, NameOID.COMMON_NAME)
    if actual != expected:
        raise _fail(f"amd.{role}.common_name", expected=expected, actual=actual or "(none)")


def _check_location(cert: x509.Certificate, role: str) -> None:
    for oid, short, expected in _AMD_LOCATION:
        actual = _single_attribute(cert.subject, oid)
        if actual != expected:
            raise _fail(f"amd.{role}.subject.{short}", expected=expected, actual=actual or "(none)")


def _check_issuer(
    cert: x509.Certificate, role: str, issuer: x509.Certificate, issuer_role: str
) -> None:
    if cert.issuer != issuer.subject:
        raise _fail(
            f"amd.{role}.issuer",
            expected=issuer.subject.rfc4514_string(),
            actual=cert.issuer.rfc4514_string(),
            detail=f"the {role.upper()} must be issued by the {issuer_role.upper()}",
        )


def _describe_alg(oid: str, params: bytes | None) -> str:
    return f"{oid} with parameters {params.hex() if params is not None else '(none)'}"


def _check_hash_alg(encoded: bytes, structure: str) -> bool:
    """True if ``encoded`` is the AlgorithmIdentifier of SHA-384 (NULL or absent parameters)."""
    items = _der_items(_der_single(encoded, 0x30, structure), structure)
    if not items or items[0][0] != 0x06 or _der_oid_value(items[0][1], structure) != _OID_SHA384:
        return False
    return len(items) == 1 or (len(items) == 2 and items[1][0] == 0x05 and items[1][1] == b"")


def _pss_parameters_ok(params: bytes, structure: str) -> bool:
    """Check RSASSA-PSS-params: SHA-384, MGF1(SHA-384), salt 48, trailerField absent or 1."""
    fields: dict[int, bytes] = {}
    last = -1
    for tag, contents, _ in _der_items(_der_single(params, 0x30, structure), structure):
        number = tag - 0xA0
        if not 0 <= number <= 3 or number <= last:
            return False
        last = number
        fields[number] = contents
    if 0 not in fields or 1 not in fields or 2 not in fields:
        return False  # the defaults (SHA-1, MGF1-SHA-1, salt 20) are not AMD's profile
    if not _check_hash_alg(fields[0], structure):
        return False
    mgf = _der_items(_der_single(fields[1], 0x30, structure), structure)
    if (
        len(mgf) != 2
        or mgf[0][0] != 0x06
        or _der_oid_value(mgf[0][1], structure) != _OID_MGF1
        or not _check_hash_alg(mgf[1][2], structure)
    ):
        return False
    if parse_der_integer(fields[2], structure=structure) != _PSS_SALT_LENGTH:
        return False
    return 3 not in fields or parse_der_integer(fields[3], structure=structure) == 1


def _signature_algorithm(cert: x509.Certificate, role: str) -> None:
    """The signatureAlgorithm (outer and inside the TBS) must be AMD's RSASSA-PSS profile."""
    structure = f"{role.upper()} certificate"
    der = cert.public_bytes(serialization.Encoding.DER)
    outer = _der_items(_der_single(der, 0x30, structure), structure)
    if len(outer) != 3 or outer[0][0] != 0x30 or outer[1][0] != 0x30:
        raise EvidenceFormatError(
            "Certificate is not SEQUENCE {tbs, algorithm, signature}", structure=structure
        )
    tbs_items = _der_items(outer[0][1], structure)
    index = 1 if tbs_items and tbs_items[0][0] == 0xA0 else 0
    if len(tbs_items) <= index + 1 or tbs_items[index + 1][2] != outer[1][2]:
        raise _fail(
            f"amd.{role}.signature_algorithm",
            expected="the same AlgorithmIdentifier inside and outside the TBSCertificate",
            actual="they differ",
        )
    alg = _der_items(outer[1][1], structure)
    oid = _der_oid_value(alg[0][1], structure) if alg and alg[0][0] == 0x06 else "(malformed)"
    params = alg[1][2] if len(alg) == 2 else None
    ok = (
        oid == SignatureAlgorithmOID.RSASSA_PSS.dotted_string
        and params is not None
        and _pss_parameters_ok(params, structure)
    )
    if not ok:
        raise _fail(
            f"amd.{role}.signature_algorithm",
            expected=_PSS_DESCRIPTION,
            actual=_describe_alg(oid, params),
        )


def _check_signature(
    cert: x509.Certificate, role: str, issuer: x509.Certificate, issuer_role: str
) -> None:
    _signature_algorithm(cert, role)
    key = _public_key(issuer)
    if not isinstance(key, rsa.RSAPublicKey):
        raise _fail(f"amd.{issuer_role}.public_key", expected="RSA-4096", actual=type(key).__name__)
    try:
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=_PSS_SALT_LENGTH),
            hashes.SHA384(),
        )
    except InvalidSignature as exc:
        raise _fail(
            f"amd.{role}.signature",
            expected=f"a valid signature by the {issuer_role.upper()}",
            actual="signature does not verify",
        ) from exc


def _check_rsa4096(cert: x509.Certificate, role: str) -> None:
    key = _public_key(cert)
    size = key.key_size if isinstance(key, rsa.RSAPublicKey) else None
    if size != _AMD_RSA_BITS:
        actual = f"RSA-{size}" if size else type(key).__name__
        raise _fail(f"amd.{role}.public_key", expected="RSA-4096", actual=actual)


def _check_validity(cert: x509.Certificate, role: str, at: datetime) -> None:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not before <= at <= after:
        raise _fail(
            f"amd.{role}.validity",
            expected=f"{before.isoformat()} .. {after.isoformat()}",
            actual=at.isoformat(),
            detail="not yet valid" if at < before else "expired",
        )


def _extension(
    cert: x509.Certificate, role: str, oid: x509.ObjectIdentifier
) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except (x509.DuplicateExtension, ValueError) as exc:
        raise EvidenceFormatError(
            f"unreadable extensions: {exc}", structure=f"{role.upper()} certificate"
        ) from exc


def _check_no_unknown_critical(cert: x509.Certificate, role: str) -> None:
    allowed = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}
    try:
        extensions = list(cert.extensions)
    except (x509.DuplicateExtension, ValueError) as exc:
        raise EvidenceFormatError(
            f"unreadable extensions: {exc}", structure=f"{role.upper()} certificate"
        ) from exc
    for extension in extensions:
        if extension.critical and extension.oid not in allowed:
            raise _fail(
                f"amd.{role}.extensions",
                expected="no unknown critical extension",
                actual=extension.oid.dotted_string,
            )


def _check_ca(cert: x509.Certificate, role: str) -> None:
    constraints = _extension(cert, role, ExtensionOID.BASIC_CONSTRAINTS)
    if (
        constraints is None
        or not isinstance(constraints.value, x509.BasicConstraints)
        or not constraints.value.ca
    ):
        raise _fail(
            f"amd.{role}.basic_constraints", expected="CA:TRUE", actual="missing or CA:FALSE"
        )
    usage = _extension(cert, role, ExtensionOID.KEY_USAGE)
    if usage is None or not isinstance(usage.value, x509.KeyUsage) or not usage.value.key_cert_sign:
        raise _fail(
            f"amd.{role}.key_usage", expected="keyCertSign", actual="missing or without keyCertSign"
        )


def _check_crl(cert: x509.Certificate, role: str, family: str, product: ProductLine) -> None:
    expected = AMD_KDS_CRL_URL.format(family=family, product=product.value)
    points = _extension(cert, role, ExtensionOID.CRL_DISTRIBUTION_POINTS)
    urls: list[str] = []
    if points is not None and isinstance(points.value, x509.CRLDistributionPoints):
        for point in points.value:
            for general in point.full_name or ():
                if isinstance(general, x509.UniformResourceIdentifier):
                    urls.append(general.value)
    if urls != [expected]:
        raise _fail(
            f"amd.{role}.crl_distribution_point",
            expected=expected,
            actual=", ".join(urls) or "(none)",
        )


def _check_product_name(name: str, product: ProductLine, role: str) -> None:
    stepping = product in (ProductLine.MILAN, ProductLine.GENOA)
    pattern = rf"{product.value}(-[A-Z][0-9])?" if stepping else product.value
    if re.fullmatch(pattern, name) is None:
        raise _fail(
            f"amd.{role}.product_name",
            expected=product.value
            + (" (optionally with a stepping, e.g. -B0)" if stepping else ""),
            actual=name,
        )


def verify_amd_ca_chain(
    *,
    intermediate: x509.Certificate,
    root: x509.Certificate,
    product: ProductLine,
    key_kind: KeyKind,
    anchors: AmdTrustAnchors,
    at: datetime,
) -> TrustedArk:
    """Verify the CA part of an AMD chain: a pinned ARK and the ASK/ASVK it signed.

    This is the first half of :func:`verify_amd_chain`, usable on its own for a KDS
    ``cert_chain`` download (ASK/ASVK + ARK) before any VCEK/VLEK is at hand.

    Args:
        intermediate: the ASK (``KeyKind.VCEK``) or ASVK (``KeyKind.VLEK``).
        root: the ARK.
        product: the product line.
        key_kind: which family of leaf keys the intermediate must sign for.
        anchors: the trusted roots.
        at: the time at which validity is judged (timezone-aware).

    Returns:
        The trusted root the chain ends in.

    Raises:
        CertificateChainError: a check failed; ``claim`` names the certificate and check.
        EvidenceFormatError: a certificate is malformed.
        ValueError: ``at`` is a naive datetime.
    """
    if at.tzinfo is None:
        raise ValueError("AMD chain verification needs a timezone-aware time")
    vlek = key_kind is KeyKind.VLEK
    mid = "asvk" if vlek else "ask"
    low = "vlek" if vlek else "vcek"
    p = product.value

    # Root: trusted by pin, then well-formed.
    digest = spki_sha256(root)
    anchor = anchors.find(product, digest)
    if anchor is None:
        trusted = sorted(d.hex() for d in anchors.digests(product))
        raise _fail(
            "amd.ark.spki_sha256",
            expected=" or ".join(trusted) or f"(no trusted root for {p})",
            actual=digest,
            detail=f"the ARK is not a trusted root for {p}",
        )
    _check_version(root, "ark")
    _check_cn(root, "ark", f"ARK-{p}")
    _check_location(root, "ark")
    _check_issuer(root, "ark", root, "ark")
    _check_signature(root, "ark", root, "ark")
    _check_validity(root, "ark", at)
    _check_rsa4096(root, "ark")
    _check_ca(root, "ark")
    _check_crl(root, "ark", "vcek", product)
    _check_no_unknown_critical(root, "ark")

    # Intermediate: ASK for VCEKs, ASVK for VLEKs.
    _check_version(intermediate, mid)
    _check_cn(intermediate, mid, f"SEV-VLEK-{p}" if vlek else f"SEV-{p}")
    _check_location(intermediate, mid)
    _check_issuer(intermediate, mid, root, "ark")
    _check_signature(intermediate, mid, root, "ark")
    _check_validity(intermediate, mid, at)
    _check_rsa4096(intermediate, mid)
    _check_ca(intermediate, mid)
    _check_crl(intermediate, mid, low, product)
    _check_no_unknown_critical(intermediate, mid)

    return anchor


def verify_amd_chain(
    *,
    leaf: x509.Certificate,
    intermediate: x509.Certificate,
    root: x509.Certificate,
    product: ProductLine,
    key_kind: KeyKind,
    anchors: AmdTrustAnchors,
    at: datetime,
) -> VerifiedAmdChain:
    """Verify a VCEK/VLEK chain up to a pinned ARK.

    Checks, in order: the root's SPKI digest is trusted for ``product`` (the root sent with
    the evidence is never trusted by itself); each certificate is X.509 v3, has AMD's names
    (CN ``ARK-<P>``, ``SEV-<P>`` or ``SEV-VLEK-<P>``, ``SEV-VCEK`` or ``SEV-VLEK``, and
    AMD's O/OU/L/ST/C on the root and intermediate), is issued by the next one up, is
    signed with RSASSA-PSS SHA-384/MGF1-SHA-384/salt 48 (parameters checked in the DER),
    and is valid at ``at``; root and intermediate are RSA-4096 CAs with AMD's KDS CRL
    distribution point; the leaf key is ECDSA P-384; the leaf's AMD extensions parse and
    agree with ``product`` and ``key_kind`` (VCEK: hwID, 64 bytes or 8 on Turin; VLEK:
    cspID; Turin: fmcSPL).

    Args:
        leaf: the VCEK or VLEK.
        intermediate: the ASK (VCEK) or ASVK (VLEK).
        root: the ARK that came with the evidence.
        product: the product line the report claims.
        key_kind: which key signed the report (from its SIGNER_INFO).
        anchors: the trusted roots.
        at: the time at which validity is judged (timezone-aware).

    Returns:
        The verified chain.

    Raises:
        CertificateChainError: a check failed; ``claim`` names the certificate and check.
        EvidenceFormatError: a certificate or extension is malformed.
        ValueError: ``at`` is a naive datetime.
    """
    anchor = verify_amd_ca_chain(
        intermediate=intermediate,
        root=root,
        product=product,
        key_kind=key_kind,
        anchors=anchors,
        at=at,
    )
    vlek = key_kind is KeyKind.VLEK
    mid = "asvk" if vlek else "ask"
    low = "vlek" if vlek else "vcek"
    p = product.value

    # Leaf: VCEK or VLEK.
    _check_version(leaf, low)
    _check_cn(leaf, low, f"SEV-{low.upper()}")
    _check_issuer(leaf, low, intermediate, mid)
    _check_signature(leaf, low, intermediate, mid)
    _check_validity(leaf, low, at)
    _check_no_unknown_critical(leaf, low)
    constraints = _extension(leaf, low, ExtensionOID.BASIC_CONSTRAINTS)
    if (
        constraints is not None
        and isinstance(constraints.value, x509.BasicConstraints)
        and constraints.value.ca
    ):
        raise _fail(f"amd.{low}.basic_constraints", expected="not a CA", actual="CA:TRUE")
    key = _public_key(leaf)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        actual = (
            key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        )
        raise _fail(f"amd.{low}.public_key", expected="ECDSA P-384 (secp384r1)", actual=actual)
    extensions = parse_amd_key_extensions(leaf)
    _check_product_name(extensions.product_name, product, low)
    turin = product.tcb_layout is TcbLayout.TURIN
    if turin != (extensions.fmc_spl is not None):
        raise _fail(
            f"amd.{low}.fmc_spl",
            expected="an fmcSPL extension" if turin else "no fmcSPL extension",
            actual="present" if extensions.fmc_spl is not None else "absent",
            detail="fmcSPL is part of the TCB on Turin only",
        )
    if vlek:
        if extensions.csp_id is None:
            raise _fail("amd.vlek.csp_id", expected="a cspID extension", actual="none")
        if extensions.hw_id is not None:
            raise _fail("amd.vlek.hw_id", expected="no hwID on a VLEK", actual=extensions.hw_id)
    else:
        if extensions.hw_id is None:
            raise _fail("amd.vcek.hw_id", expected="a hwID extension", actual="none")
        width = 8 if turin else 64
        if len(extensions.hw_id) != width:
            raise _fail(
                "amd.vcek.hw_id",
                expected=f"{width} bytes for {p}",
                actual=f"{len(extensions.hw_id)} bytes",
            )
        if extensions.csp_id is not None:
            raise _fail("amd.vcek.csp_id", expected="no cspID on a VCEK", actual=extensions.csp_id)

    return VerifiedAmdChain._create(
        leaf_public_key=key,
        extensions=extensions,
        product=product,
        key_kind=key_kind,
        anchor_label=anchor.label,
        anchor_simulated=anchor.simulated,
        root_spki_sha256=anchor.spki_sha256,
        leaf=leaf,
        intermediate=intermediate,
        root=root,
    )


def verify_report_signature(report: SnpReport, public_key: ec.EllipticCurvePublicKey) -> None:
    """Verify an SNP report's signature: ECDSA P-384 with SHA-384 over bytes 0x000-0x29F.

    The checks of :func:`report_signature_steps`, with the ECDSA call made here.
    """
    run_inline(report_signature_steps(report, public_key))


def report_signature_steps(
    report: SnpReport, public_key: ec.EllipticCurvePublicKey, *, raw: bytes | None = None
) -> Steps[None]:
    """Verify an SNP report's signature: ECDSA P-384 with SHA-384 over bytes 0x000-0x29F.

    The ECDSA verification is yielded (:mod:`ratls._steps`), so a driver may make it on
    another core; everything else runs in the driver's thread.

    Args:
        report: the parsed report (its R and S are little-endian on the wire; the parser
            has already turned them into integers).
        public_key: the VCEK/VLEK public key from :class:`VerifiedAmdChain`.
        raw: the received report that ``report`` was parsed from, if at hand: its signed
            bytes are then checked as they arrived, without encoding the report again.

    Raises:
        SignatureMismatch: the key is not P-384 or the signature does not verify (with
            cryptography's ``InvalidSignature`` as ``__cause__``).
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP384R1
    ):
        raise SignatureMismatch(
            "snp.signature", expected="an ECDSA P-384 key", actual=type(public_key).__name__
        )
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    signed = raw[:SNP_SIGNED_SIZE] if raw is not None else report.signed_bytes()
    check = functools.partial(public_key.verify, signature, signed, ec.ECDSA(hashes.SHA384()))
    try:
        yield from offload(check)
    except InvalidSignature as exc:
        raise SignatureMismatch(
            "snp.signature",
            expected="a valid ECDSA P-384/SHA-384 signature by the VCEK/VLEK",
            actual="signature does not verify",
        ) from exc


def kds_vcek_url(report: SnpReport) -> str:
    """The KDS address of the VCEK that signed ``report`` (chip ID and REPORTED_TCB).

    Turin and later use an 8-byte hwID and add ``fmcSPL``.  Verification never needs the
    network: this is only a hint for users whose host supplied no certificates.

    Raises:
        ValueError: the report's product line is unknown (a version-2 report parsed without
            a product) or its chip ID is masked.
    """
    if report.product is None:
        raise ValueError("the report does not name its product line; pass one explicitly")
    if not any(report.chip_id):
        raise ValueError("the report's CHIP_ID is masked; the VCEK cannot be looked up by it")
    tcb = report.reported_tcb
    if report.product is ProductLine.TURIN:
        hw_id = report.chip_id[:8].hex()
        query = f"fmcSPL={tcb.fmc or 0}&blSPL={tcb.bootloader}&teeSPL={tcb.tee}"
    else:
        hw_id = report.chip_id.hex()
        query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}"
    query += f"&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    return f"{AMD_KDS_URL}/vcek/v1/{report.product.value}/{hw_id}?{query}"


def kds_chain_url(product: ProductLine, key_kind: KeyKind = KeyKind.VCEK) -> str:
    """The KDS address of the ASK+ARK (or ASVK+ARK) chain for ``product``, as PEM."""
    family = "vlek" if key_kind is KeyKind.VLEK else "vcek"
    return f"{AMD_KDS_URL}/{family}/v1/{product.value}/cert_chain"


@functools.cache
def _default_anchors() -> AmdTrustAnchors:
    return AmdTrustAnchors(
        frozenset(
            TrustedArk(product=product, spki_sha256=digest, label="AMD", simulated=False)
            for product, digest in PINNED_ARK_SPKI_SHA256.items()
        )
    )
