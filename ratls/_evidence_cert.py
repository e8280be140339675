"""Evidence in X.509 certificates: interoperable RA-TLS (``cert`` mode).

What and why
------------

In ``cert`` mode an attesting endpoint presents a self-signed certificate whose key was
generated inside the TEE, and the certificate itself carries the evidence for that key.
Any TLS stack can transport it, and verifiers from other projects (rats-tls, librats,
rats-rs, Gramine) can parse it, because it follows the CCC Interoperable RA-TLS format:

* extension 2.23.133.5.4.9 (TCG DICE tagged evidence / conceptual message wrapper),
  non-critical, whose extnValue holds CBOR directly (no inner DER wrapper)::

      TAG( [ bstr evidence, bstr claims ] )

  with TAG = 0x1A7504 for a raw SEV-SNP ATTESTATION_REPORT (60000-60002 are Intel's);
* ``claims`` is the serialized CBOR map ``{"pubkey-hash": bstr, ? "nonce": bstr, *other}``,
  text keys and bstr values, where the pubkey-hash value is itself the serialized CBOR
  hash entry ``[hash-alg-id, digest over the DER SubjectPublicKeyInfo]`` with the IANA
  Named Information ids (sha-256 = 1, sha-384 = 7, sha-512 = 8);
* the binding: REPORT_DATA[0:32] = SHA-256(claims bytes) and REPORT_DATA[32:64] = 0.

That format carries only the report.  Verification needs the VCEK/VLEK and its chain too,
and we refuse to depend on AMD's KDS at verification time, so ratls adds a second
non-critical extension, IETF ``id-pe-cmw`` (1.3.6.1.5.5.7.1.35), with a CMW collection:
the same report plus the endorsement certificates (and, later, the vTPM bundle).  Its
extnValue is the DER CHOICE ``cbor OCTET STRING`` wrapping the CBOR collection::

    { "snp-report": [ "application/vnd.amd.sev-snp.attestation-report", bstr, 4 ],
      "vcek" / "vlek": [ "application/pkix-cert", bstr, 2 ],
      "ask" / "asvk":  [ "application/pkix-cert", bstr, 2 ],
      "ark":           [ "application/pkix-cert", bstr, 2 ] }

(Each member is a CMW record ``[media type, value, indicator]``; indicator 4 = evidence,
2 = endorsements.)  New members are added under new labels, so the collection grows without
a format break; a reader ignores labels it does not know and names them.

Replay
------

Certificate-carried evidence is replayable by design: nothing in it is fresh for a given
connection.  A verifier bounds the damage with the certificate's own age (its notBefore
is signed by the attested key, which lives in the TEE) and, where the peer can be asked
for one, a ``nonce`` claim.  :func:`verify_evidence_certificate` says so in the result
(``replayable=True``).  The exporter-bound mode is the fresh alternative.

Everything here is pure: certificates, keys, reports and times are passed in.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._amd_certs import der_tlv, load_amd_certificate, parse_der_octet_string
from ._errors import (
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    NonceMismatch,
    PolicyViolation,
    SignatureMismatch,
)
from ._result import AttestationResult
from ._snp_report import parse_snp_report
from ._snp_verify import SnpEndorsements
from ._verify import verify_snp_attestation

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

    from ._policy import Policy

__all__ = [
    "CLOCK_SKEW_MARGIN",
    "DEFAULT_LIFETIME",
    "MAX_EVIDENCE_EXTENSION_SIZE",
    "AttestedCertificateBuilder",
    "BindingStatus",
    "CertificateEvidence",
    "CmwEvidenceBundle",
    "EvidenceClaims",
    "EvidenceTag",
    "EvidenceType",
    "HashAlgorithm",
    "RatlsOID",
    "SnpAttester",
    "TaggedEvidence",
    "VtpmProducer",
    "default_validity",
    "encode_cmw_extension",
    "endpoint_certificate_builder",
    "inspect_evidence_certificate",
    "load_evidence_certificate",
    "parse_claims",
    "parse_cmw_extension",
    "parse_tagged_evidence",
    "report_data_for_claims",
    "spki_der",
    "verify_evidence_certificate",
]

#: Largest extnValue accepted for an evidence extension.  The biggest evidence of this
#: family seen in practice is an SGX/TDX quote with its embedded PCK chain (about 5 KiB)
#: and, in the endorsement extension, SGX collateral (about 12.5 KiB); our CMW bundle is
#: about 6 KiB (report and three certificates) plus a few KiB of vTPM items.  64 KiB leaves
#: room for all of these with margin, bounds the work a hostile certificate can cause, and
#: matches what TLS stacks can carry at all (a Certificate message over 64 KiB already
#: breaks several of them).
MAX_EVIDENCE_EXTENSION_SIZE: Final = 64 * 1024

#: How far notBefore is set back from the signing time.  Peers' clocks disagree; a
#: certificate that is "not yet valid" for a peer whose clock is a little behind fails the
#: handshake.  One minute covers NTP-synchronised machines and stays well inside the
#: default evidence age (300 s), which is measured from notBefore.
CLOCK_SKEW_MARGIN: Final = timedelta(seconds=60)

#: Default lifetime after the signing time.  Short on purpose: the evidence is replayable
#: for as long as the certificate is valid, and our verifiers refuse evidence older than the
#: policy's maximum age anyway.  Ten minutes gives other verifiers a bound as well.
DEFAULT_LIFETIME: Final = timedelta(minutes=10)

_STRUCTURE_DICE: Final = "tcg-dice-tagged-evidence"
_STRUCTURE_CLAIMS: Final = "ra-tls claims"
_STRUCTURE_CMW: Final = "id-pe-cmw"
_MAX_CBOR_DEPTH: Final = 8

_MEDIA_SNP_REPORT: Final = "application/vnd.amd.sev-snp.attestation-report"
_MEDIA_CERT: Final = "application/pkix-cert"
#: CMW indicator values (bit positions 2 and 1 of the indicator bitmask).
_IND_EVIDENCE: Final = 4
_IND_ENDORSEMENTS: Final = 2


@final
class RatlsOID:
    """Object identifiers of the attested-certificate family (ours and others')."""

    #: TCG DICE tagged evidence / conceptual message wrapper (CCC Interoperable RA-TLS).
    TCG_DICE_TAGGED_EVIDENCE: Final = x509.ObjectIdentifier("2.23.133.5.4.9")
    #: TCG DICE endorsement manifest (SGX/TDX collateral in interoperable RA-TLS).
    TCG_DICE_ENDORSEMENT_MANIFEST: Final = x509.ObjectIdentifier("2.23.133.5.4.2")
    #: IETF id-pe-cmw: conceptual message wrapper (IANA-assigned).
    CMW: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.35")
    #: Gramine's legacy RA-TLS extension.  Gramine wrote the DER of 1.2.840.113741.1337.6
    #: (tag and length included) as the OID *contents*, which reads as this OID.
    GRAMINE_LEGACY: Final = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")
    #: rats-tls' 2021 extension: a raw quote bound to the PKCS#1 RSAPublicKey.
    RATS_TLS_LEGACY: Final = x509.ObjectIdentifier("1.2.840.113741.1337.6")
    #: Intel SGX SDK attested-TLS sample: the raw quote (Intel SGX arc).
    INTEL_SGX_QUOTE_LEGACY: Final = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
    #: Enarx Steward evidence in CSRs: KVM (debug), SGX and SEV-SNP.
    ENARX_KVM: Final = x509.ObjectIdentifier("1.3.6.1.4.1.58270.1.1")
    ENARX_SGX: Final = x509.ObjectIdentifier("1.3.6.1.4.1.58270.1.2")
    ENARX_SNP: Final = x509.ObjectIdentifier("1.3.6.1.4.1.58270.1.3")
    #: Edgeless Constellation aTLS attestation variants (private arc 1.3.9900).
    CONSTELLATION_DUMMY: Final = x509.ObjectIdentifier("1.3.9900.1.1")
    CONSTELLATION_AWS_NITRO_TPM: Final = x509.ObjectIdentifier("1.3.9900.2.1")
    CONSTELLATION_AWS_SEV_SNP: Final = x509.ObjectIdentifier("1.3.9900.2.2")
    CONSTELLATION_GCP_SEV_ES: Final = x509.ObjectIdentifier("1.3.9900.3.1")
    CONSTELLATION_GCP_SEV_SNP: Final = x509.ObjectIdentifier("1.3.9900.3.2")
    CONSTELLATION_AZURE_SEV_SNP: Final = x509.ObjectIdentifier("1.3.9900.4.1")
    CONSTELLATION_AZURE_TRUSTED_LAUNCH: Final = x509.ObjectIdentifier("1.3.9900.4.2")
    CONSTELLATION_AZURE_TDX: Final = x509.ObjectIdentifier("1.3.9900.4.3")
    CONSTELLATION_QEMU_VTPM: Final = x509.ObjectIdentifier("1.3.9900.5.1")
    CONSTELLATION_QEMU_TDX: Final = x509.ObjectIdentifier("1.3.9900.5.99")
    #: Edgeless Contrast: the raw SNP report, base64 (private arc 1.3.9901).
    CONTRAST_SNP_REPORT: Final = x509.ObjectIdentifier("1.3.9901.2.1")


class EvidenceTag(enum.IntEnum):
    """CBOR tags of the tagged-evidence array (interoperable RA-TLS and rats-tls)."""

    #: Intel TEE quote: SGX ECDSA (v3, v4 with tee_type 0) or TDX (v4 with tee_type 0x81).
    INTEL_TEE_QUOTE = 60000
    #: Intel TEE report: a TDX TDREPORT or an SGX report (type 2).
    INTEL_TEE_REPORT = 60001
    #: Legacy SGX EREPORT (local attestation).
    SGX_EREPORT = 60002
    #: AMD SEV-SNP ATTESTATION_REPORT, raw 1184 bytes (rats-tls/librats/rats-rs; not IANA).
    AMD_SEV_SNP_REPORT = 0x1A7504
    #: AMD SEV/SEV-ES attestation report (inclavare projects only).
    AMD_SEV_REPORT = 0x1A7505
    #: Hygon CSV attestation report (inclavare projects only).
    HYGON_CSV_REPORT = 0x1A7506


class HashAlgorithm(enum.IntEnum):
    """IANA Named Information hash algorithm ids used in the pubkey-hash entry."""

    #: SHA-256, 32-byte digest (what every generator emits).
    SHA256 = 1
    #: SHA-384, 48-byte digest.
    SHA384 = 7
    #: SHA-512, 64-byte digest.
    SHA512 = 8

    def digest(self, data: bytes) -> bytes:
        """Hash ``data`` with this algorithm."""
        name = {1: "sha256", 7: "sha384", 8: "sha512"}[self.value]
        return hashlib.new(name, data).digest()

    @property
    def digest_size(self) -> int:
        """Length of a digest in bytes."""
        return {1: 32, 7: 48, 8: 64}[self.value]


class EvidenceType(enum.Enum):
    """What kind of evidence a certificate carries."""

    SNP_REPORT = "amd-sev-snp-report"
    SEV_REPORT = "amd-sev-report"
    CSV_REPORT = "hygon-csv-report"
    SGX_QUOTE = "intel-sgx-quote"
    TDX_QUOTE = "intel-tdx-quote"
    INTEL_TEE_REPORT = "intel-tee-report"
    SGX_EREPORT = "intel-sgx-ereport"
    ENARX_STEWARD = "enarx-steward"
    CONSTELLATION = "constellation-attestation-document"
    CONTRAST_SNP_REPORT = "contrast-snp-report"
    CMW = "cmw"


class BindingStatus(enum.Enum):
    """Whether the tie between the certificate key and the evidence was checked."""

    #: The format defines the binding and it holds.
    VERIFIED = "verified"
    #: The format does not define a binding we can check offline (it is named, not judged).
    NOT_CHECKED = "not checked"


# --- a small strict CBOR reader and writer -------------------------------------------------
#
# Only what these formats use: unsigned and negative integers, byte and text strings, arrays,
# maps, tags, and the simple values false/true/null.  Definite lengths only, heads in their
# shortest form (what every generator of this family writes), no duplicate map keys, a depth
# limit.  Keeping the reader this strict means each byte string has exactly one reading,
# which matters because the claims bytes are hashed as they are.


@dataclass(frozen=True, slots=True)
class _Tagged:
    tag: int
    value: object


def _cbor_fail(message: str, structure: str, offset: int) -> EvidenceFormatError:
    return EvidenceFormatError(message, structure=structure, offset=offset)


def _cbor_head(data: bytes, pos: int, structure: str) -> tuple[int, int, int, int]:
    """Return (major type, additional info, argument, position after the head)."""
    if pos >= len(data):
        raise _cbor_fail("truncated CBOR item", structure, pos)
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, info, pos + 1
    if info == 31:
        raise _cbor_fail("indefinite-length CBOR is not accepted", structure, pos)
    if info > 27:
        raise _cbor_fail(f"reserved CBOR additional information {info}", structure, pos)
    size = 1 << (info - 24)
    if pos + 1 + size > len(data):
        raise _cbor_fail("truncated CBOR head", structure, pos)
    value = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
    if major != 7 and value < (24 if size == 1 else 1 << (4 * size)):
        raise _cbor_fail("CBOR head not in its shortest form", structure, pos)
    return major, info, value, pos + 1 + size


def _cbor_item(data: bytes, pos: int, structure: str, depth: int) -> tuple[object, int]:
    if depth > _MAX_CBOR_DEPTH:
        raise _cbor_fail("CBOR nested too deeply", structure, pos)
    start = pos
    major, info, arg, pos = _cbor_head(data, pos, structure)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise _cbor_fail("truncated CBOR string", structure, start)
        raw = data[pos:end]
        if major == 2:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError as exc:
            raise _cbor_fail("text string is not UTF-8", structure, start) from exc
    if major == 4:
        if arg > len(data) - pos:
            raise _cbor_fail("CBOR array longer than its input", structure, start)
        items: list[object] = []
        for _ in range(arg):
            item, pos = _cbor_item(data, pos, structure, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        if arg > (len(data) - pos) // 2:
            raise _cbor_fail("CBOR map longer than its input", structure, start)
        mapping: dict[object, object] = {}
        for _ in range(arg):
            key_at = pos
            key, pos = _cbor_item(data, pos, structure, depth + 1)
            if not isinstance(key, int | str):
                raise _cbor_fail("CBOR map key is not an integer or text", structure, key_at)
            if key in mapping:
                raise _cbor_fail(f"duplicate CBOR map key {key!r}", structure, key_at)
            mapping[key], pos = _cbor_item(data, pos, structure, depth + 1)
        return mapping, pos
    if major == 6:
        value, pos = _cbor_item(data, pos, structure, depth + 1)
        return _Tagged(arg, value), pos
    simple = {20: False, 21: True, 22: None}
    if info in simple:
        return simple[info], pos
    raise _cbor_fail("CBOR floats and other simple values are not accepted", structure, start)


def _cbor_decode(data: bytes, structure: str) -> object:
    value, end = _cbor_item(data, 0, structure, 0)
    if end != len(data):
        raise _cbor_fail(f"{len(data) - end} trailing byte(s) after the CBOR item", structure, end)
    return value


def _cbor_head_bytes(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError("integer too large for CBOR")


def _cbor_encode(value: object) -> bytes:
    if isinstance(value, _Tagged):
        return _cbor_head_bytes(6, value.tag) + _cbor_encode(value.value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _cbor_head_bytes(0, value) if value >= 0 else _cbor_head_bytes(1, -1 - value)
    if isinstance(value, bytes):
        return _cbor_head_bytes(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _cbor_head_bytes(3, len(raw)) + raw
    if isinstance(value, list | tuple):
        return _cbor_head_bytes(4, len(value)) + b"".join(_cbor_encode(v) for v in value)
    if isinstance(value, dict):
        parts = [_cbor_encode(k) + _cbor_encode(v) for k, v in value.items()]
        return _cbor_head_bytes(5, len(value)) + b"".join(parts)
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


# --- claims -----------------------------------------------------------------------------------


def spki_der(key: x509.Certificate | CertificatePublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate or public key (what pubkey-hash covers).

    Args:
        key: a certificate or a public key.

    Returns:
        The DER bytes.
    """
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceClaims:
    """The claims map of the tagged evidence, entries in their original order.

    Attributes:
        entries: (key, value) pairs as they appear; values are byte strings.
        pubkey_hash_alg: the hash algorithm of the pubkey-hash entry, if present.
        pubkey_hash: the digest of the SubjectPublicKeyInfo, if present.
    """

    entries: tuple[tuple[str, bytes], ...]
    pubkey_hash_alg: HashAlgorithm | None
    pubkey_hash: bytes | None

    @classmethod
    def for_key(
        cls,
        key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        *,
        nonce: bytes | None = None,
        algorithm: HashAlgorithm = HashAlgorithm.SHA256,
    ) -> EvidenceClaims:
        """The claims a generator writes for ``key``: pubkey-hash, then the nonce if any.

        Args:
            key: the certificate's public key.
            nonce: an optional verifier-supplied nonce.
            algorithm: the pubkey-hash algorithm (SHA-256, as every generator uses).

        Returns:
            The claims.
        """
        digest = algorithm.digest(spki_der(key))
        entries: list[tuple[str, bytes]] = [("pubkey-hash", _cbor_encode([algorithm, digest]))]
        if nonce is not None:
            entries.append(("nonce", bytes(nonce)))
        return cls(entries=tuple(entries), pubkey_hash_alg=algorithm, pubkey_hash=digest)

    @property
    def nonce(self) -> bytes | None:
        """The ``nonce`` claim, if present."""
        return dict(self.entries).get("nonce")

    def to_bytes(self) -> bytes:
        """Serialize the claims map (the bytes whose SHA-256 goes into REPORT_DATA)."""
        return _cbor_encode(dict(self.entries))


def parse_claims(data: bytes) -> EvidenceClaims:
    """Parse a claims buffer strictly.

    Args:
        data: the serialized CBOR claims map.

    Returns:
        The claims.

    Raises:
        EvidenceFormatError: not one CBOR map of text keys to byte strings, or a
            malformed or unsupported pubkey-hash entry.
    """
    value = _cbor_decode(bytes(data), _STRUCTURE_CLAIMS)
    if not isinstance(value, dict):
        raise EvidenceFormatError("claims are not a CBOR map", structure=_STRUCTURE_CLAIMS)
    entries: list[tuple[str, bytes]] = []
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, bytes):
            raise EvidenceFormatError(
                f"claim {key!r} is not a text key with a byte-string value",
                structure=_STRUCTURE_CLAIMS,
            )
        entries.append((key, item))
    alg: HashAlgorithm | None = None
    digest: bytes | None = None
    entry = value.get("pubkey-hash")
    if isinstance(entry, bytes):
        alg, digest = _parse_hash_entry(entry)
    return EvidenceClaims(entries=tuple(entries), pubkey_hash_alg=alg, pubkey_hash=digest)


def _parse_hash_entry(data: bytes) -> tuple[HashAlgorithm, bytes]:
    structure = "pubkey-hash"
    value = _cbor_decode(data, structure)
    if not isinstance(value, list) or len(value) != 2:
        raise EvidenceFormatError("not an array [hash-alg-id, digest]", structure=structure)
    alg_id, digest = value
    if not isinstance(alg_id, int) or isinstance(alg_id, bool) or not isinstance(digest, bytes):
        raise EvidenceFormatError("not an array [uint, bstr]", structure=structure)
    try:
        alg = HashAlgorithm(alg_id)
    except ValueError:
        raise EvidenceFormatError(
            f"unsupported hash-alg-id {alg_id} (accepted: 1, 7, 8)", structure=structure
        ) from None
    if len(digest) != alg.digest_size:
        raise EvidenceFormatError(f"{alg.name} digest of {len(digest)} bytes", structure=structure)
    return alg, digest


def report_data_for_claims(claims: bytes) -> bytes:
    """The 64 bytes of REPORT_DATA that bind ``claims``: SHA-256(claims) followed by zeros.

    Args:
        claims: the serialized claims map.

    Returns:
        64 bytes.
    """
    return hashlib.sha256(claims).digest() + bytes(32)


# --- the tagged evidence extension ------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TaggedEvidence:
    """The value of the 2.23.133.5.4.9 extension: TAG([evidence, claims]).

    Attributes:
        tag: the CBOR tag naming the evidence type.
        evidence: the raw evidence (report or quote).
        claims: the serialized claims map, exactly as carried.
    """

    tag: EvidenceTag
    evidence: bytes
    claims: bytes

    def to_bytes(self) -> bytes:
        """Serialize (the extnValue contents)."""
        return _cbor_encode(_Tagged(self.tag, [self.evidence, self.claims]))


def parse_tagged_evidence(data: bytes) -> TaggedEvidence:
    """Parse the 2.23.133.5.4.9 extension value.

    Args:
        data: the extnValue contents (CBOR, no inner DER).

    Returns:
        The tagged evidence.

    Raises:
        EvidenceFormatError: too large, not TAG([bstr, bstr]), an unknown tag, or trailing
            bytes.
    """
    data = bytes(data)
    _check_size(data, _STRUCTURE_DICE)
    value = _cbor_decode(data, _STRUCTURE_DICE)
    if not isinstance(value, _Tagged):
        raise EvidenceFormatError("not a CBOR tag", structure=_STRUCTURE_DICE, offset=0)
    try:
        tag = EvidenceTag(value.tag)
    except ValueError:
        raise EvidenceFormatError(
            f"unknown evidence tag {value.tag}", structure=_STRUCTURE_DICE, offset=0
        ) from None
    inner = value.value
    if (
        not isinstance(inner, list)
        or len(inner) != 2
        or not all(isinstance(item, bytes) for item in inner)
    ):
        raise EvidenceFormatError(
            "tag content is not an array [bstr evidence, bstr claims]", structure=_STRUCTURE_DICE
        )
    evidence, claims = (item for item in inner if isinstance(item, bytes))
    return TaggedEvidence(tag=tag, evidence=evidence, claims=claims)


def _check_size(data: bytes, structure: str) -> None:
    if len(data) > MAX_EVIDENCE_EXTENSION_SIZE:
        raise EvidenceFormatError(
            f"{len(data)} bytes exceeds MAX_EVIDENCE_EXTENSION_SIZE "
            f"({MAX_EVIDENCE_EXTENSION_SIZE})",
            structure=structure,
        )


# --- the CMW extension (our bundle) ---------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CmwEvidenceBundle:
    """The CMW collection ratls puts in id-pe-cmw: the report and its endorsements.

    Attributes:
        snp_report: the raw SNP report (the same bytes as in the tagged evidence).
        leaf_label: ``"vcek"`` or ``"vlek"``.
        leaf: DER of the VCEK or VLEK.
        intermediate_label: ``"ask"`` or ``"asvk"``.
        intermediate: DER of the ASK or ASVK.
        ark: DER of the ARK.
        vtpm: the vTPM evidence bundle (CBOR), when the evidence includes a vTPM.
        unknown_labels: labels of members this version does not know (ignored).
    """

    snp_report: bytes
    leaf_label: str
    leaf: bytes
    intermediate_label: str
    intermediate: bytes
    ark: bytes
    vtpm: bytes | None = None
    unknown_labels: tuple[str, ...] = ()

    @classmethod
    def from_endorsements(
        cls, report: bytes, endorsements: SnpEndorsements, *, vtpm: bytes | None = None
    ) -> CmwEvidenceBundle:
        """Build a bundle from a report and its certificate chain.

        Args:
            report: the raw SNP report.
            endorsements: VCEK/VLEK, ASK/ASVK and ARK.
            vtpm: an optional vTPM evidence bundle.

        Returns:
            The bundle.
        """
        der = serialization.Encoding.DER
        vlek = _common_name(endorsements.leaf) == "SEV-VLEK"
        return cls(
            snp_report=bytes(report),
            leaf_label="vlek" if vlek else "vcek",
            leaf=endorsements.leaf.public_bytes(der),
            intermediate_label="asvk" if vlek else "ask",
            intermediate=endorsements.intermediate.public_bytes(der),
            ark=endorsements.root.public_bytes(der),
            vtpm=vtpm,
        )

    def endorsements(self) -> SnpEndorsements:
        """Load the certificates.

        Raises:
            EvidenceFormatError: a certificate is malformed.
        """
        return SnpEndorsements(
            leaf=load_amd_certificate(self.leaf),
            intermediate=load_amd_certificate(self.intermediate),
            root=load_amd_certificate(self.ark),
        )

    def to_cbor(self) -> bytes:
        """The CBOR collection (without the DER CHOICE wrapper)."""
        members: dict[str, object] = {
            "snp-report": [_MEDIA_SNP_REPORT, self.snp_report, _IND_EVIDENCE],
            self.leaf_label: [_MEDIA_CERT, self.leaf, _IND_ENDORSEMENTS],
            self.intermediate_label: [_MEDIA_CERT, self.intermediate, _IND_ENDORSEMENTS],
            "ark": [_MEDIA_CERT, self.ark, _IND_ENDORSEMENTS],
        }
        if self.vtpm is not None:
            members["vtpm"] = [_MEDIA_VTPM, self.vtpm, _IND_EVIDENCE]
        return _cbor_encode(members)


#: Media type of the vTPM evidence bundle member (a ratls CBOR structure).
_MEDIA_VTPM: Final = "application/vnd.ratls.vtpm-evidence+cbor"

_CMW_MEMBERS: Final = {
    "snp-report": (_MEDIA_SNP_REPORT, _IND_EVIDENCE),
    "vcek": (_MEDIA_CERT, _IND_ENDORSEMENTS),
    "vlek": (_MEDIA_CERT, _IND_ENDORSEMENTS),
    "ask": (_MEDIA_CERT, _IND_ENDORSEMENTS),
    "asvk": (_MEDIA_CERT, _IND_ENDORSEMENTS),
    "ark": (_MEDIA_CERT, _IND_ENDORSEMENTS),
    "vtpm": (_MEDIA_VTPM, _IND_EVIDENCE),
}


def encode_cmw_extension(bundle: CmwEvidenceBundle) -> bytes:
    """The id-pe-cmw extnValue contents: the DER ``cbor OCTET STRING`` CHOICE.

    Args:
        bundle: the bundle to carry.

    Returns:
        DER bytes.
    """
    return der_tlv(0x04, bundle.to_cbor())


def parse_cmw_extension(data: bytes) -> CmwEvidenceBundle:
    """Parse an id-pe-cmw extnValue holding a ratls evidence collection.

    Args:
        data: the extnValue contents (DER CHOICE; only the CBOR alternative is ours).

    Returns:
        The bundle.

    Raises:
        EvidenceFormatError: too large, not the DER OCTET STRING alternative, not a CMW
            collection of records, a member with the wrong media type or indicator, a
            missing or doubled member, or trailing bytes.
    """
    data = bytes(data)
    _check_size(data, _STRUCTURE_CMW)
    if data[:1] == b"\x0c":
        raise EvidenceFormatError(
            "JSON CMW (UTF8String) is not a ratls evidence collection", structure=_STRUCTURE_CMW
        )
    collection = _cbor_decode(parse_der_octet_string(data, structure=_STRUCTURE_CMW), "CMW")
    if not isinstance(collection, dict):
        raise EvidenceFormatError("not a CMW collection (CBOR map)", structure=_STRUCTURE_CMW)
    found: dict[str, bytes] = {}
    unknown: list[str] = []
    for label, record in collection.items():
        if not isinstance(label, str) or label not in _CMW_MEMBERS:
            unknown.append(str(label))
            continue
        media, indicator = _CMW_MEMBERS[label]
        if (
            not isinstance(record, list)
            or len(record) != 3
            or record[0] != media
            or not isinstance(record[1], bytes)
            or record[2] != indicator
        ):
            raise EvidenceFormatError(
                f"member {label!r} is not the record [{media!r}, bstr, {indicator}]",
                structure=_STRUCTURE_CMW,
            )
        found[label] = record[1]
    leaf_label = _one_of(found, "vcek", "vlek")
    mid_label = _one_of(found, "ask", "asvk")
    for required in ("snp-report", "ark"):
        if required not in found:
            raise EvidenceFormatError(f"member {required!r} missing", structure=_STRUCTURE_CMW)
    return CmwEvidenceBundle(
        snp_report=found["snp-report"],
        leaf_label=leaf_label,
        leaf=found[leaf_label],
        intermediate_label=mid_label,
        intermediate=found[mid_label],
        ark=found["ark"],
        vtpm=found.get("vtpm"),
        unknown_labels=tuple(unknown),
    )


def _one_of(found: dict[str, bytes], first: str, second: str) -> str:
    if (first in found) == (second in found):
        raise EvidenceFormatError(
            f"exactly one of {first!r} and {second!r} is required", structure=_STRUCTURE_CMW
        )
    return first if first in found else second


def _common_name(cert: x509.Certificate) -> str | None:
    # Only shown, never trusted: a malformed subject (parsed here for the first time)
    # just has no name to show.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (ValueError, TypeError):
        return None
    return str(names[0].value) if len(names) == 1 else None


# --- Intel quotes: where REPORT_DATA lives ------------------------------------------------------

_QUOTE_HEADER_SIZE: Final = 48
_SGX_REPORT_BODY_SIZE: Final = 384
_TD10_REPORT_BODY_SIZE: Final = 584
#: REPORT_DATA within an SGX report body and within a TD 1.0 report body.
_SGX_REPORT_DATA_OFFSET: Final = 320
_TD_REPORT_DATA_OFFSET: Final = 520
_TEE_TYPE_SGX: Final = 0x00
_TEE_TYPE_TDX: Final = 0x81
_SGX_EREPORT_SIZE: Final = 432
_TDREPORT_SIZE: Final = 1024
_TDREPORT_REPORT_DATA_OFFSET: Final = 128


def _intel_quote(quote: bytes) -> tuple[EvidenceType, bytes | None]:
    """Name an Intel quote and return its REPORT_DATA (None where we do not locate it)."""
    structure = "Intel quote"
    if len(quote) < _QUOTE_HEADER_SIZE:
        raise EvidenceFormatError(
            f"{len(quote)} bytes is shorter than the quote header", structure=structure
        )
    version, _key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if version == 5:
        # Version 5 inserts a body descriptor; we name it but do not locate REPORT_DATA.
        body_type = struct.unpack_from("<H", quote, _QUOTE_HEADER_SIZE)[0] if len(quote) > 49 else 0
        kind = EvidenceType.SGX_QUOTE if body_type == 1 else EvidenceType.TDX_QUOTE
        return kind, None
    if version == 3 or (version == 4 and tee_type == _TEE_TYPE_SGX):
        kind, body, offset = EvidenceType.SGX_QUOTE, _SGX_REPORT_BODY_SIZE, _SGX_REPORT_DATA_OFFSET
    elif version == 4 and tee_type == _TEE_TYPE_TDX:
        kind, body, offset = EvidenceType.TDX_QUOTE, _TD10_REPORT_BODY_SIZE, _TD_REPORT_DATA_OFFSET
    else:
        raise EvidenceFormatError(
            f"unsupported quote version {version} / tee_type {tee_type:#x}",
            structure=structure,
            offset=0,
        )
    sig_at = _QUOTE_HEADER_SIZE + body
    if len(quote) < sig_at + 4:
        raise EvidenceFormatError("truncated quote", structure=structure, offset=len(quote))
    sig_len = struct.unpack_from("<I", quote, sig_at)[0]
    if len(quote) != sig_at + 4 + sig_len:
        raise EvidenceFormatError(
            f"quote is {len(quote)} bytes, its signature data length says {sig_at + 4 + sig_len}",
            structure=structure,
            offset=sig_at,
        )
    start = _QUOTE_HEADER_SIZE + offset
    return kind, quote[start : start + 64]


def _intel_report(tag: EvidenceTag, report: bytes) -> bytes | None:
    if tag is EvidenceTag.SGX_EREPORT and len(report) == _SGX_EREPORT_SIZE:
        return report[_SGX_REPORT_DATA_OFFSET : _SGX_REPORT_DATA_OFFSET + 64]
    if tag is EvidenceTag.INTEL_TEE_REPORT and len(report) == _TDREPORT_SIZE:
        start = _TDREPORT_REPORT_DATA_OFFSET
        return report[start : start + 64]
    return None


# --- inspection ----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateEvidence:
    """What a certificate of the attested-certificate family carries.

    Attributes:
        carrier: the extension the evidence came from, e.g. ``"tcg-dice-tagged-evidence"``.
        carrier_oid: its dotted OID.
        evidence_type: the kind of evidence.
        tag: the CBOR tag, for tagged evidence.
        evidence: the raw evidence bytes.
        claims: the parsed claims, for tagged evidence.
        claims_bytes: the claims buffer exactly as carried.
        report_data: the REPORT_DATA found in the evidence, where located.
        binding: whether the key-evidence binding was checked (it holds if so).
        binding_detail: how it was checked, or why not.
        cmw: our id-pe-cmw bundle, if present.
        also_present: names of other evidence-family extensions in the certificate.
    """

    carrier: str
    carrier_oid: str
    evidence_type: EvidenceType
    tag: EvidenceTag | None
    evidence: bytes
    claims: EvidenceClaims | None
    claims_bytes: bytes | None
    report_data: bytes | None
    binding: BindingStatus
    binding_detail: str
    cmw: CmwEvidenceBundle | None = None
    also_present: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"<CertificateEvidence {self.evidence_type.value} via {self.carrier} "
            f"binding={self.binding.value}>"
        )

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary (for the CLI and logs)."""
        out: dict[str, object] = {
            "carrier": self.carrier,
            "carrier_oid": self.carrier_oid,
            "evidence_type": self.evidence_type.value,
            "tag": None if self.tag is None else int(self.tag),
            "evidence_size": len(self.evidence),
            "report_data": None if self.report_data is None else self.report_data.hex(),
            "binding": self.binding.value,
            "binding_detail": self.binding_detail,
            "endorsements_in_cmw": self.cmw is not None,
            "vtpm_in_cmw": self.cmw is not None and self.cmw.vtpm is not None,
            "also_present": list(self.also_present),
        }
        if self.claims is not None:
            out["claims"] = {key: value.hex() for key, value in self.claims.entries}
            out["pubkey_hash_alg"] = (
                None if self.claims.pubkey_hash_alg is None else self.claims.pubkey_hash_alg.name
            )
        return out


_NAMED: Final[dict[x509.ObjectIdentifier, tuple[str, EvidenceType]]] = {
    RatlsOID.ENARX_KVM: ("enarx-steward kvm", EvidenceType.ENARX_STEWARD),
    RatlsOID.ENARX_SGX: ("enarx-steward sgx", EvidenceType.ENARX_STEWARD),
    RatlsOID.ENARX_SNP: ("enarx-steward sev-snp", EvidenceType.ENARX_STEWARD),
    RatlsOID.CONTRAST_SNP_REPORT: ("contrast sev-snp", EvidenceType.CONTRAST_SNP_REPORT),
    RatlsOID.CONSTELLATION_DUMMY: ("constellation dummy", EvidenceType.CONSTELLATION),
    RatlsOID.CONSTELLATION_AWS_NITRO_TPM: (
        "constellation aws-nitro-tpm",
        EvidenceType.CONSTELLATION,
    ),
    RatlsOID.CONSTELLATION_AWS_SEV_SNP: ("constellation aws-sev-snp", EvidenceType.CONSTELLATION),
    RatlsOID.CONSTELLATION_GCP_SEV_ES: ("constellation gcp-sev-es", EvidenceType.CONSTELLATION),
    RatlsOID.CONSTELLATION_GCP_SEV_SNP: ("constellation gcp-sev-snp", EvidenceType.CONSTELLATION),
    RatlsOID.CONSTELLATION_AZURE_SEV_SNP: (
        "constellation azure-sev-snp",
        EvidenceType.CONSTELLATION,
    ),
    RatlsOID.CONSTELLATION_AZURE_TRUSTED_LAUNCH: (
        "constellation azure-trustedlaunch",
        EvidenceType.CONSTELLATION,
    ),
    RatlsOID.CONSTELLATION_AZURE_TDX: ("constellation azure-tdx", EvidenceType.CONSTELLATION),
    RatlsOID.CONSTELLATION_QEMU_VTPM: ("constellation qemu-vtpm", EvidenceType.CONSTELLATION),
    RatlsOID.CONSTELLATION_QEMU_TDX: ("constellation qemu-tdx", EvidenceType.CONSTELLATION),
}

_LEGACY: Final[dict[x509.ObjectIdentifier, str]] = {
    RatlsOID.GRAMINE_LEGACY: "gramine-legacy",
    RatlsOID.RATS_TLS_LEGACY: "rats-tls-legacy",
    RatlsOID.INTEL_SGX_QUOTE_LEGACY: "intel-sgx-sdk-legacy",
}

_FAMILY_NAMES: Final[dict[x509.ObjectIdentifier, str]] = {
    RatlsOID.TCG_DICE_TAGGED_EVIDENCE: _STRUCTURE_DICE,
    RatlsOID.TCG_DICE_ENDORSEMENT_MANIFEST: "tcg-dice-endorsement-manifest",
    RatlsOID.CMW: _STRUCTURE_CMW,
    **_LEGACY,
    **{oid: name for oid, (name, _kind) in _NAMED.items()},
}


def load_evidence_certificate(data: bytes) -> x509.Certificate:
    """Load a certificate from PEM or DER.

    Args:
        data: the certificate file's bytes.

    Returns:
        The certificate.

    Raises:
        EvidenceFormatError: neither a PEM nor a DER certificate.
    """
    try:
        with warnings.catch_warnings():
            # Other RA-TLS stacks may use serial number 0; the serial means nothing here.
            warnings.filterwarnings(
                "ignore",
                message=r"Parsed a serial number which wasn't positive",
                category=CryptographyDeprecationWarning,
            )
            if data.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        # InvalidVersion (an X.509 version other than v1 or v3) is not a ValueError.
        raise EvidenceFormatError(f"not a certificate: {exc}", structure="X.509") from exc


def _family_extensions(
    cert: x509.Certificate,
) -> dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]]:
    try:
        extensions = cert.extensions
    except x509.DuplicateExtension as exc:
        raise EvidenceFormatError(
            f"extension {exc.oid.dotted_string} appears more than once", structure="X.509"
        ) from exc
    except ValueError as exc:
        raise EvidenceFormatError(f"malformed extensions: {exc}", structure="X.509") from exc
    found: dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]] = {}
    for extension in extensions:
        if extension.oid in _FAMILY_NAMES:
            found[extension.oid] = extension
    return found


def _raw_value(extension: x509.Extension[x509.ExtensionType], name: str) -> bytes:
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - all are private
        raise EvidenceFormatError("unexpected extension type", structure=name)
    raw = bytes(value.value)
    _check_size(raw, name)
    return raw


def inspect_evidence_certificate(cert: x509.Certificate) -> CertificateEvidence:
    """Find, name and parse the evidence in a certificate, and check its key binding.

    Handles ratls's own certificates and those of the same family: CCC interoperable RA-TLS
    (all tags), Gramine's and rats-tls' legacy extensions, the Intel SGX SDK sample's, and
    id-pe-cmw; Enarx Steward, Constellation and Contrast extensions are named only.  Where
    the format defines a binding between the certificate key and the evidence, it is
    checked (the pubkey-hash claim, REPORT_DATA = SHA-256(claims) || zeros for tagged
    evidence; REPORT_DATA[0:32] = SHA-256(key) for the legacy formats); where it does not,
    or the evidence cannot be located here, the result says ``NOT_CHECKED``.  Nothing is
    verified cryptographically: see :func:`verify_evidence_certificate`.

    Args:
        cert: the certificate.

    Returns:
        What the certificate carries.

    Raises:
        EvidenceFormatError: no evidence extension, an extension duplicated, critical or
            too large, malformed evidence, claims or CMW bundle, or an unknown tag.
        BindingMismatch: the evidence is not bound to the certificate's key.
    """
    found = _family_extensions(cert)
    for oid in (RatlsOID.TCG_DICE_TAGGED_EVIDENCE, RatlsOID.CMW):
        if oid in found and found[oid].critical:
            raise EvidenceFormatError(
                "the evidence extension is marked critical; it must not be "
                "(TLS peers that do not know it would refuse the certificate)",
                structure=_FAMILY_NAMES[oid],
            )
    cmw: CmwEvidenceBundle | None = None
    if RatlsOID.CMW in found:
        cmw = parse_cmw_extension(_raw_value(found[RatlsOID.CMW], _STRUCTURE_CMW))
    spki = spki_der(cert.public_key()) if _supported_key(cert) else None

    # Legacy extensions with a defined binding are checked whether or not they are primary.
    legacy_results = {
        oid: _legacy(cert, oid, _raw_value(found[oid], _LEGACY[oid]))
        for oid in _LEGACY
        if oid in found
    }

    others = tuple(sorted(name for oid, name in _FAMILY_NAMES.items() if oid in found))
    if RatlsOID.TCG_DICE_TAGGED_EVIDENCE in found:
        tagged = parse_tagged_evidence(
            _raw_value(found[RatlsOID.TCG_DICE_TAGGED_EVIDENCE], _STRUCTURE_DICE)
        )
        primary = _inspect_tagged(tagged, spki, cmw)
    elif legacy_results:
        primary = next(iter(legacy_results.values()))
    else:
        named = [oid for oid in _NAMED if oid in found]
        if not named:
            raise EvidenceFormatError(
                "no evidence extension (2.23.133.5.4.9 or a known legacy one)"
                if cmw is None
                else "an id-pe-cmw bundle without the 2.23.133.5.4.9 tagged evidence that "
                "binds it to the key",
                structure="X.509",
            )
        oid = named[0]
        name, kind = _NAMED[oid]
        primary = CertificateEvidence(
            carrier=name,
            carrier_oid=oid.dotted_string,
            evidence_type=kind,
            tag=None,
            evidence=_raw_value(found[oid], name),
            claims=None,
            claims_bytes=None,
            report_data=None,
            binding=BindingStatus.NOT_CHECKED,
            binding_detail=f"{name} binds the key with its own scheme; named, not checked here",
        )
    return dataclasses.replace(
        primary, cmw=cmw, also_present=tuple(n for n in others if n != primary.carrier)
    )


def _supported_key(cert: x509.Certificate) -> bool:
    try:
        cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


_TAG_TYPES: Final = {
    EvidenceTag.AMD_SEV_SNP_REPORT: EvidenceType.SNP_REPORT,
    EvidenceTag.AMD_SEV_REPORT: EvidenceType.SEV_REPORT,
    EvidenceTag.HYGON_CSV_REPORT: EvidenceType.CSV_REPORT,
    EvidenceTag.INTEL_TEE_REPORT: EvidenceType.INTEL_TEE_REPORT,
    EvidenceTag.SGX_EREPORT: EvidenceType.SGX_EREPORT,
}


def _inspect_tagged(
    tagged: TaggedEvidence, spki: bytes | None, cmw: CmwEvidenceBundle | None
) -> CertificateEvidence:
    claims = parse_claims(tagged.claims)
    report_data: bytes | None
    if tagged.tag is EvidenceTag.AMD_SEV_SNP_REPORT:
        kind = EvidenceType.SNP_REPORT
        report_data = parse_snp_report(tagged.evidence).report_data
    elif tagged.tag is EvidenceTag.INTEL_TEE_QUOTE:
        kind, report_data = _intel_quote(tagged.evidence)
    else:
        kind = _TAG_TYPES[tagged.tag]
        report_data = _intel_report(tagged.tag, tagged.evidence)
    if cmw is not None:
        if tagged.tag is not EvidenceTag.AMD_SEV_SNP_REPORT:
            raise EvidenceFormatError(
                "an id-pe-cmw SNP bundle next to non-SNP tagged evidence", structure="X.509"
            )
        if not hmac.compare_digest(cmw.snp_report, tagged.evidence):
            raise BindingMismatch(
                "cert.cmw.snp-report",
                expected=hashlib.sha256(tagged.evidence).hexdigest(),
                actual=hashlib.sha256(cmw.snp_report).hexdigest(),
                detail="the id-pe-cmw bundle carries another report than the tagged evidence "
                "(SHA-256 shown)",
            )
    _check_pubkey_hash(claims, spki)
    status = BindingStatus.VERIFIED
    detail = "pubkey-hash claim matches the key; REPORT_DATA = SHA-256(claims) || zeros"
    if report_data is None:
        status = BindingStatus.NOT_CHECKED
        detail = (
            "pubkey-hash claim matches the key; REPORT_DATA not located in this evidence "
            f"({kind.value}), so its tie to the claims is not checked"
        )
    else:
        expected = report_data_for_claims(tagged.claims)
        if not hmac.compare_digest(report_data, expected):
            raise BindingMismatch(
                "cert.report_data",
                expected=expected,
                actual=report_data,
                detail=f"tag {int(tagged.tag)}: REPORT_DATA must be SHA-256(claims) "
                "followed by 32 zero bytes",
            )
    return CertificateEvidence(
        carrier=_STRUCTURE_DICE,
        carrier_oid=RatlsOID.TCG_DICE_TAGGED_EVIDENCE.dotted_string,
        evidence_type=kind,
        tag=tagged.tag,
        evidence=tagged.evidence,
        claims=claims,
        claims_bytes=tagged.claims,
        report_data=report_data,
        binding=status,
        binding_detail=detail,
    )


def _check_pubkey_hash(claims: EvidenceClaims, spki: bytes | None) -> None:
    if claims.pubkey_hash is None or claims.pubkey_hash_alg is None:
        raise BindingMismatch(
            "cert.claims.pubkey-hash",
            expected="a pubkey-hash claim",
            actual="none",
            detail="without it the evidence is not bound to the certificate key",
        )
    if spki is None:
        raise BindingMismatch(
            "cert.claims.pubkey-hash",
            expected=claims.pubkey_hash,
            actual="a public key this library cannot read",
        )
    actual = claims.pubkey_hash_alg.digest(spki)
    if not hmac.compare_digest(claims.pubkey_hash, actual):
        raise BindingMismatch(
            "cert.claims.pubkey-hash",
            expected=actual,
            actual=claims.pubkey_hash,
            detail=f"{claims.pubkey_hash_alg.name} of the certificate's SubjectPublicKeyInfo",
        )


def _legacy(
    cert: x509.Certificate, oid: x509.ObjectIdentifier, quote: bytes
) -> CertificateEvidence:
    name = _LEGACY[oid]
    kind, report_data = _intel_quote(quote)
    result = CertificateEvidence(
        carrier=name,
        carrier_oid=oid.dotted_string,
        evidence_type=kind,
        tag=None,
        evidence=quote,
        claims=None,
        claims_bytes=None,
        report_data=report_data,
        binding=BindingStatus.NOT_CHECKED,
        binding_detail=f"{name}: REPORT_DATA not located in this quote; not checked",
    )
    if report_data is None:
        return result
    if oid == RatlsOID.INTEL_SGX_QUOTE_LEGACY:
        detail = f"{name}: the quote is bound through the tagged-evidence claims, not by itself"
        return dataclasses.replace(result, binding_detail=detail)
    public = cert.public_key() if _supported_key(cert) else None
    if oid == RatlsOID.GRAMINE_LEGACY:
        key_der = b"" if public is None else spki_der(cert)
        what = "SHA-256 of the SubjectPublicKeyInfo"
    else:
        if not isinstance(public, rsa.RSAPublicKey):
            raise BindingMismatch(
                f"cert.{name}.report_data",
                expected="an RSA certificate key (the format hashes the PKCS#1 RSAPublicKey)",
                actual=type(public).__name__,
            )
        key_der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        what = "SHA-256 of the PKCS#1 RSAPublicKey"
    expected = hashlib.sha256(key_der).digest()
    if not hmac.compare_digest(report_data[:32], expected):
        raise BindingMismatch(
            f"cert.{name}.report_data",
            expected=expected,
            actual=report_data[:32],
            detail=f"REPORT_DATA[0:32] must be the {what}",
        )
    return dataclasses.replace(
        result, binding=BindingStatus.VERIFIED, binding_detail=f"{name}: REPORT_DATA[0:32] = {what}"
    )


# --- building -------------------------------------------------------------------------------

#: Produces evidence for given REPORT_DATA: the raw SNP report and its endorsements (or None
#: when the attester has none; the certificate then carries the report only).
SnpAttester = Callable[[bytes], tuple[bytes, SnpEndorsements | None]]

#: Produces the vTPM evidence bundle (CBOR, see :mod:`ratls._vtpm_evidence`) for a
#: certificate: called with the quote's qualifying data, SHA-256(claims), and with the
#: 64-byte SVSM nonce, REPORT_DATA-for-claims, so that the VMPL-0 report of the ``svsm``
#: profile binds the certificate key too.
VtpmProducer = Callable[[bytes, bytes], bytes]

_SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def default_validity(now: datetime) -> tuple[datetime, datetime]:
    """The profile's validity for a certificate signed at ``now``.

    Args:
        now: the signing time (timezone-aware).

    Returns:
        (now - CLOCK_SKEW_MARGIN, now + DEFAULT_LIFETIME).
    """
    return now - CLOCK_SKEW_MARGIN, now + DEFAULT_LIFETIME


def endpoint_certificate_builder(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """The profile of a self-signed TLS endpoint certificate, as ratls issues them.

    Not a CA; a key for digital signatures; serverAuth and clientAuth (so the same
    certificate serves either end of a mutual connection, and passes libspdm's leaf rules);
    a random serial and a subject key identifier.  Callers add their own extensions (the
    evidence) and sign.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


@final
class AttestedCertificateBuilder:
    """Build a self-signed certificate carrying SNP evidence for its own key.

    In the cryptography builder style: immutable, each setter returns a new builder, each
    field can be set once (``ValueError`` on a second set, ``TypeError`` on a wrong type),
    and :meth:`sign` checks completeness.  Example::

        cert = (
            AttestedCertificateBuilder()
            .private_key(key)
            .snp_evidence(attester)          # attester(report_data) -> (report, endorsements)
            .validity(not_before, not_after)
            .sign()
        )

    The report must contain the hash of claims that contain the hash of the key, so the
    evidence is normally produced by a callback given the REPORT_DATA; a ready
    ``(report, endorsements)`` pair also works if its REPORT_DATA is right (see
    :func:`report_data_for_claims` and :meth:`EvidenceClaims.for_key`).
    """

    __slots__ = ("_evidence", "_key", "_nonce", "_subject", "_validity", "_vtpm")

    def __init__(self) -> None:
        """An empty builder."""
        self._key: _SigningKey | None = None
        self._evidence: SnpAttester | tuple[bytes, SnpEndorsements | None] | None = None
        self._nonce: bytes | None = None
        self._validity: tuple[datetime, datetime] | None = None
        self._subject: x509.Name | None = None
        self._vtpm: VtpmProducer | None = None

    def __repr__(self) -> str:
        set_fields = [
            name
            for name, value in (
                ("private_key", self._key),
                ("snp_evidence", self._evidence),
                ("nonce", self._nonce),
                ("validity", self._validity),
                ("subject", self._subject),
                ("vtpm_evidence", self._vtpm),
            )
            if value is not None
        ]
        return f"<AttestedCertificateBuilder set={set_fields}>"

    def _copy(self, **changes: object) -> AttestedCertificateBuilder:
        new = AttestedCertificateBuilder()
        for slot in self.__slots__:
            setattr(new, slot, getattr(self, slot))
        for name, value in changes.items():
            setattr(new, f"_{name}", value)
        return new

    def private_key(self, key: _SigningKey) -> AttestedCertificateBuilder:
        """Set the certificate key (generated inside the TEE).

        Args:
            key: an ECDSA P-256 or P-384 key, or an Ed25519 key.

        Raises:
            TypeError: another kind of key.
            ValueError: the key is already set, or the curve is not P-256/P-384.
        """
        if self._key is not None:
            raise ValueError("the private key may only be set once")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
                raise ValueError(f"curve {key.curve.name} is not supported; use P-256 or P-384")
        elif not isinstance(key, ed25519.Ed25519PrivateKey):
            raise TypeError("key must be an ECDSA P-256/P-384 or Ed25519 private key")
        return self._copy(key=key)

    def snp_evidence(
        self, evidence: SnpAttester | tuple[bytes, SnpEndorsements | None]
    ) -> AttestedCertificateBuilder:
        """Set where the SNP evidence comes from.

        Args:
            evidence: a callable ``attester(report_data) -> (report, endorsements)`` (the
                usual case), or a ready ``(report, endorsements)`` pair.

        Raises:
            TypeError: neither a callable nor a (bytes, SnpEndorsements | None) pair.
            ValueError: the evidence is already set.
        """
        if self._evidence is not None:
            raise ValueError("the SNP evidence may only be set once")
        if isinstance(evidence, tuple):
            if (
                len(evidence) != 2
                or not isinstance(evidence[0], bytes)
                or not isinstance(evidence[1], SnpEndorsements | None)
            ):
                raise TypeError("evidence must be (report bytes, SnpEndorsements | None)")
        elif not callable(evidence):
            raise TypeError(
                "evidence must be an attester callable or a (report, endorsements) pair"
            )
        return self._copy(evidence=evidence)

    def vtpm_evidence(self, producer: VtpmProducer) -> AttestedCertificateBuilder:
        """Also carry a vTPM evidence bundle (in the id-pe-cmw extension).

        Args:
            producer: ``producer(binder, svsm_nonce) -> bundle bytes``, where ``binder`` is
                SHA-256(claims), to be the quote's qualifying data, and ``svsm_nonce`` is
                SHA-256(claims) || zeros, to be the SVSM attestation nonce (``svsm``
                profile).  Both tie the vTPM evidence to this certificate's key.

        Raises:
            TypeError: not callable.
            ValueError: already set.
        """
        if self._vtpm is not None:
            raise ValueError("the vTPM evidence may only be set once")
        if not callable(producer):
            raise TypeError("producer must be callable")
        return self._copy(vtpm=producer)

    def nonce(self, nonce: bytes) -> AttestedCertificateBuilder:
        """Add a ``nonce`` claim (a verifier-supplied value, for freshness).

        Raises:
            TypeError: not bytes.
            ValueError: already set, or empty.
        """
        if self._nonce is not None:
            raise ValueError("the nonce may only be set once")
        if not isinstance(nonce, bytes):
            raise TypeError("nonce must be bytes")
        if not nonce:
            raise ValueError("nonce must not be empty")
        return self._copy(nonce=nonce)

    def validity(self, not_before: datetime, not_after: datetime) -> AttestedCertificateBuilder:
        """Set the validity period (see :func:`default_validity` for the profile's).

        Raises:
            TypeError: not datetimes.
            ValueError: already set, naive datetimes, or not_after not after not_before.
        """
        if self._validity is not None:
            raise ValueError("the validity may only be set once")
        if not isinstance(not_before, datetime) or not isinstance(not_after, datetime):
            raise TypeError("not_before and not_after must be datetimes")
        if not_before.tzinfo is None or not_after.tzinfo is None:
            raise ValueError("not_before and not_after must be timezone-aware")
        if not_after <= not_before:
            raise ValueError("not_after must be later than not_before")
        return self._copy(validity=(not_before, not_after))

    def subject(self, name: x509.Name) -> AttestedCertificateBuilder:
        """Set the subject (and issuer) name; ``CN=ratls attested endpoint`` by default.

        Raises:
            TypeError: not an x509.Name.
            ValueError: already set.
        """
        if self._subject is not None:
            raise ValueError("the subject may only be set once")
        if not isinstance(name, x509.Name):
            raise TypeError("subject must be an x509.Name")
        return self._copy(subject=name)

    def sign(self, *, now: datetime | None = None) -> x509.Certificate:
        """Produce the evidence and sign the certificate.

        Args:
            now: the signing time; used only when no validity was set, to apply the
                profile's :func:`default_validity`.

        Returns:
            The self-signed certificate.

        Raises:
            ValueError: the key or the evidence is missing, neither validity nor ``now``
                was given, or a vTPM bundle is requested without SNP endorsements.
            EvidenceFormatError: the attester returned a malformed report or vTPM bundle.
            BindingMismatch: the report's REPORT_DATA is not the claims hash.
            AttesterError: the attester could not produce evidence.
        """
        if self._key is None:
            raise ValueError("private_key() must be set before sign()")
        if self._evidence is None:
            raise ValueError("snp_evidence() must be set before sign()")
        if self._validity is not None:
            not_before, not_after = self._validity
        elif now is not None:
            not_before, not_after = default_validity(now)
        else:
            raise ValueError("set validity() or pass now= to sign()")
        key = self._key
        claims = EvidenceClaims.for_key(key.public_key(), nonce=self._nonce).to_bytes()
        report_data = report_data_for_claims(claims)
        if isinstance(self._evidence, tuple):
            report, endorsements = self._evidence
        else:
            report, endorsements = self._evidence(report_data)
        parsed = parse_snp_report(report)
        if not hmac.compare_digest(parsed.report_data, report_data):
            raise BindingMismatch(
                "snp.report_data",
                expected=report_data,
                actual=parsed.report_data,
                detail="the report does not carry SHA-256(claims) || zeros for this key",
            )
        subject = self._subject or x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "ratls attested endpoint")]
        )
        builder = endpoint_certificate_builder(
            subject, key.public_key(), not_before, not_after
        ).add_extension(
            x509.UnrecognizedExtension(
                RatlsOID.TCG_DICE_TAGGED_EVIDENCE,
                TaggedEvidence(
                    tag=EvidenceTag.AMD_SEV_SNP_REPORT, evidence=report, claims=claims
                ).to_bytes(),
            ),
            critical=False,
        )
        vtpm: bytes | None = None
        if self._vtpm is not None:
            from ._vtpm_evidence import parse_vtpm_evidence

            if endorsements is None:
                raise ValueError(
                    "a vTPM bundle travels in id-pe-cmw with the SNP endorsements, "
                    "but the attester returned none"
                )
            vtpm = bytes(self._vtpm(hashlib.sha256(claims).digest(), report_data))
            parse_vtpm_evidence(vtpm)
        if endorsements is not None:
            bundle = CmwEvidenceBundle.from_endorsements(report, endorsements, vtpm=vtpm)
            builder = builder.add_extension(
                x509.UnrecognizedExtension(RatlsOID.CMW, encode_cmw_extension(bundle)),
                critical=False,
            )
        algorithm: hashes.SHA256 | hashes.SHA384 | None = None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
        return builder.sign(key, algorithm)


# --- verification -----------------------------------------------------------------------------


def verify_evidence_certificate(
    cert: x509.Certificate,
    *,
    policy: Policy | None,
    at: datetime,
    trust_simulator: bool = False,
    endorsements: SnpEndorsements | None = None,
    expected_nonce: bytes | None = None,
    max_evidence_age_seconds: int | None = None,
) -> AttestationResult:
    """Verify an attested certificate: binding, self-signature, age, SNP evidence, policy.

    Args:
        cert: the peer's certificate.
        policy: the appraisal policy; None checks authenticity only (``appraised=False``).
        at: the verification time.
        trust_simulator: accept the simulated AMD root (also accepted when the policy says).
        endorsements: the VCEK chain, when the certificate does not carry it in id-pe-cmw
            (e.g. fetched from AMD's KDS by the caller).
        expected_nonce: require this ``nonce`` claim; the result is then not replayable.
        max_evidence_age_seconds: overrides the policy's maximum age (the default without
            a policy is 300 s).

    Returns:
        The result, with ``replayable=True`` unless a nonce was required and matched.

    Raises:
        EvidenceFormatError: malformed certificate evidence.
        BindingMismatch: the evidence is not bound to the key; NonceMismatch for the nonce.
        SignatureMismatch: the certificate is not signed by its own key.
        CertificateChainError: outside its validity, or no endorsements to verify with.
        PolicyViolation: evidence other than SEV-SNP, or older than the maximum age.
        EvidenceVerificationError: any failed SNP verification or appraisal check.
    """
    from ._policy import DEFAULT_MAX_EVIDENCE_AGE_SECONDS

    found = inspect_evidence_certificate(cert)
    if found.evidence_type is not EvidenceType.SNP_REPORT or found.claims_bytes is None:
        raise PolicyViolation(
            "cert.evidence_type",
            expected=EvidenceType.SNP_REPORT.value,
            actual=found.evidence_type.value,
            detail="ratls verifies SEV-SNP evidence only; other kinds are named by inspect",
        )
    _check_self_signature(cert)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < not_before:
        raise CertificateChainError(
            "cert.not_before",
            expected=f"<= {at.isoformat()}",
            actual=not_before.isoformat(),
            detail="the certificate is not yet valid",
        )
    if at > not_after:
        raise CertificateChainError(
            "cert.not_after",
            expected=f">= {at.isoformat()}",
            actual=not_after.isoformat(),
            detail="the certificate has expired",
        )
    if max_evidence_age_seconds is None:
        max_evidence_age_seconds = (
            policy.max_evidence_age_seconds if policy else DEFAULT_MAX_EVIDENCE_AGE_SECONDS
        )
    age = (at - not_before).total_seconds()
    if age > max_evidence_age_seconds:
        raise PolicyViolation(
            "cert.evidence_age",
            expected=f"<= {max_evidence_age_seconds} s",
            actual=f"{age:.0f} s",
            detail="measured from the certificate's notBefore",
        )
    if expected_nonce is not None:
        carried = found.claims.nonce if found.claims is not None else None
        if carried is None or not hmac.compare_digest(carried, expected_nonce):
            raise NonceMismatch(
                "cert.claims.nonce", expected=expected_nonce, actual=carried or "none"
            )
    chain = endorsements or (found.cmw.endorsements() if found.cmw is not None else None)
    if chain is None:
        raise CertificateChainError(
            "snp.endorsements",
            expected="VCEK/VLEK, ASK/ASVK and ARK (id-pe-cmw extension or endorsements=)",
            actual="none",
            detail="the tagged evidence carries the report only",
        )
    if found.cmw is not None and found.cmw.vtpm is not None:
        return _verify_with_vtpm(
            found.evidence,
            found.claims_bytes,
            found.cmw.vtpm,
            chain,
            policy=policy,
            at=at,
            trust_simulator=trust_simulator,
            replayable=expected_nonce is None,
        )
    snp = verify_snp_attestation(
        found.evidence,
        chain,
        policy=policy,
        at=at,
        expected_report_data=report_data_for_claims(found.claims_bytes),
        trust_simulator=trust_simulator,
    )
    return AttestationResult._create(
        profile=snp.profile,
        snp=snp.snp,
        trust_anchor=snp.trust_anchor,
        appraised=snp.appraised,
        policy_digest=snp.policy_digest,
        verified_at=at,
        replayable=expected_nonce is None,
        ak_binding=snp.ak_binding,
    )


def _verify_with_vtpm(
    report: bytes,
    claims: bytes,
    bundle: bytes,
    chain: SnpEndorsements,
    *,
    policy: Policy | None,
    at: datetime,
    trust_simulator: bool,
    replayable: bool,
) -> AttestationResult:
    """SNP + vTPM: verify the bundle bound to the claims, and the tagged report beside it.

    The bundle's quote must carry SHA-256(claims) as qualifying data and, for ``svsm``,
    its VMPL-0 report must have been requested with REPORT_DATA-for-claims as the nonce, so
    the vTPM evidence binds the certificate key by itself.  The tagged (interoperable)
    report is the guest's own and may come from VMPL 1-3 under an SVSM: it is verified and
    appraised with the policy's VMPL requirement lifted (the VMPL-0 report carries that),
    and it must come from the same chip and launch as the bundle's report.
    """
    from ._vtpm_evidence import VtpmProfile, parse_vtpm_evidence, verify_vtpm_evidence

    evidence = parse_vtpm_evidence(bundle)
    svsm_nonce = report_data_for_claims(claims)
    verified = verify_vtpm_evidence(
        evidence,
        policy=policy,
        at=at,
        expected_binder=hashlib.sha256(claims).digest(),
        expected_nonce=svsm_nonce if evidence.profile is VtpmProfile.SVSM else None,
        trust_simulator=trust_simulator,
    )
    guest_policy = policy
    if policy is not None:
        guest_policy = dataclasses.replace(policy, snp=dataclasses.replace(policy.snp, vmpl=None))
    tagged = verify_snp_attestation(
        report,
        chain,
        policy=guest_policy,
        at=at,
        expected_report_data=svsm_nonce,
        trust_simulator=trust_simulator,
    )
    for claim in ("chip_id", "measurement"):
        mine, theirs = getattr(tagged.snp.report, claim), getattr(verified.snp.report, claim)
        if not hmac.compare_digest(mine, theirs):
            raise BindingMismatch(
                f"cert.vtpm.snp.{claim}",
                expected=theirs,
                actual=mine,
                detail="the tagged report and the vTPM bundle's report come from different guests",
            )
    values: dict[str, object] = {
        "profile": verified.profile.value,
        "snp": verified.snp,
        "trust_anchor": verified.trust_anchor,
        "appraised": verified.appraised,
        "policy_digest": verified.policy_digest,
        "verified_at": at,
        "replayable": replayable,
        "ak_binding": verified.ak_binding.value,
    }
    if "vtpm" in {f.name for f in dataclasses.fields(AttestationResult)}:
        values["vtpm"] = verified
    return AttestationResult._create(**values)


def _check_self_signature(cert: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(cert)
    except InvalidSignature as exc:
        raise SignatureMismatch(
            "cert.signature",
            expected="signed by the certificate's own (attested) key",
            actual="signature does not verify",
        ) from exc
    except (ValueError, TypeError) as exc:
        raise SignatureMismatch(
            "cert.signature",
            expected="a self-signed certificate (issuer == subject)",
            actual=str(exc),
        ) from exc
