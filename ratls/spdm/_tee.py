"""CPU-TEE evidence in SPDM: measurement blocks, the responder identity, and their checks.

What and why
------------
SPDM authenticates a device by a certificate chain and signatures over nonces; it says
nothing about *what* the device is.  For a confidential VM the answer is TEE evidence, and
this module maps it onto the two places SPDM has for it (docs/spdm-tee.md has the table):

* **The certificate.**  The responder's key is generated inside the TEE and certified by a
  self-signed leaf carrying the evidence extension (``AttestedCertificateBuilder``, the
  CCC interoperable RA-TLS format): REPORT_DATA binds SHA-256(claims) and the claims bind
  the key.  That evidence is as old as the key.
* **Measurement blocks.**  For every signed GET_MEASUREMENTS the responder produces fresh
  evidence bound to the requester's nonce and to its own key::

      binder = SHA-512("ratls-spdm-tee-v1" || 0x00 || nonce[32] || SHA-256(leaf SPKI DER))

  The SNP report carries it as REPORT_DATA (SNP only) or through the SVSM vTPM service
  (REPORT_DATA = SHA-512(binder || EK TPMT_PUBLIC), the ``svsm`` profile with the binder
  as the SVSM nonce); the vTPM quote (SHA-384 PCR bank) carries SHA-256(binder) as
  qualifying data.  Because
  the MEASUREMENTS response is also signed by the certified key over a transcript holding
  the same nonce, a replayed or relayed set of blocks fails twice.

The requester side (:func:`verify_tee_measurements`, :func:`verify_responder_chain`) uses
the existing verifiers (``verify_evidence_certificate``, ``verify_snp_attestation``,
``verify_vtpm_evidence``) and a :class:`~ratls.Policy`; it raises, never returns False.
The endorsements (VCEK/VLEK, ASK, ARK) travel once, in the certificate's CMW extension,
because a MEASUREMENTS response must fit DataTransferSize (no CHUNK_GET here).

:func:`check_leaf_profile` applies the leaf checks libspdm's requester applies, so a
libspdm requester that pins the certificate accepts it too.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol, final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ratls._errors import (
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    MeasurementMismatch,
)
from ratls._evidence_cert import (
    AttestedCertificateBuilder,
    inspect_evidence_certificate,
    verify_evidence_certificate,
)
from ratls._nopublic import NoPublicConstructor
from ratls._snp_report import SNP_REPORT_SIZE, parse_snp_report
from ratls._tpm_structs import TpmAlgId
from ratls._verify import verify_snp_attestation
from ratls._vtpm_evidence import (
    VtpmEvidence,
    VtpmProfile,
    to_attestation_result,
    verify_vtpm_evidence,
)

from ._codec import MeasurementBlock
from ._constants import BaseAsymAlgo, DmtfMeasurementType, MeasurementHashAlgo
from ._responder import MeasurementContext, ResponderConfig

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ratls._policy import Policy
    from ratls._result import AttestationResult
    from ratls._snp_verify import SnpEndorsements
    from ratls._vtpm_evidence import VerifiedVtpmEvidence
    from ratls.sim import SimulatedAmdSp
    from ratls.sim._svsm import SimulatedSvsm

    from ._codec import CertChain
    from ._transport import TransportBinding

__all__ = [
    "BINDER_LABEL",
    "DMTF_EKU_RESPONDER_AUTH",
    "DeviceMode",
    "MeasurementIndex",
    "SimulatedSnpAttester",
    "SimulatedSvsmAttester",
    "TeeAttester",
    "TeeEvidence",
    "TeeResponderIdentity",
    "VerifiedResponderIdentity",
    "VerifiedTeeMeasurements",
    "check_leaf_profile",
    "parse_device_mode",
    "tee_binder",
    "tee_measurement_blocks",
    "verify_responder_chain",
    "verify_tee_measurements",
]

#: Domain separation for the measurement binder (never reused for another purpose).
BINDER_LABEL: Final = b"ratls-spdm-tee-v1"
#: id-DMTF-eku-responder-auth (DSP0274): libspdm refuses a responder leaf whose EKU
#: names only the requester-auth purpose; ours names neither, which it accepts.
DMTF_EKU_RESPONDER_AUTH: Final = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.3")
_DMTF_EKU_REQUESTER_AUTH: Final = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.4")
_NONCE_SIZE: Final = 32
_DEVICE_MODE_SIZE: Final = 16
#: The PCR bank quoted: SHA-384, the same hash as the SNP launch digest and as the
#: MeasurementHashAlgo this responder announces, so PCRs travel as digest blocks.
_PCR_BANK: Final = TpmAlgId.SHA384

# DSP0274 device-mode bits (OperationalMode*, DeviceMode*).
_OPERATION_MODE_NORMAL: Final = 1 << 2
_INVASIVE_DEBUG_ACTIVE: Final = 1 << 1
_INVASIVE_DEBUG_HAS_BEEN_ACTIVE: Final = 1 << 3


class MeasurementIndex(enum.IntEnum):
    """Measurement indexes of a CPU-TEE responder (see docs/spdm-tee.md)."""

    LAUNCH_MEASUREMENT = 0x01  #: SNP launch MEASUREMENT (SHA-384 digest, DMTF type 0)
    SNP_REPORT = 0x02  #: fresh SNP ATTESTATION_REPORT bound to the nonce (raw, type 4)
    VTPM_EK_PUBLIC = 0x03  #: EK TPMT_PUBLIC, the SVSM vTPM manifest (raw, type 4)
    VTPM_AK_PUBLIC = 0x04  #: AK TPM2B_PUBLIC (raw, type 4)
    VTPM_QUOTE_ATTEST = 0x05  #: fresh quote TPMS_ATTEST (raw, type 4)
    VTPM_QUOTE_SIGNATURE = 0x06  #: fresh quote TPMT_SIGNATURE (raw, type 4)
    PCR_BASE = 0x10  #: 0x10 + i = SHA-384 PCR i, digest (type 1 for even i, 3 for odd)
    DEVICE_MODE = 0xFE  #: DSP0274 device mode; invasive debug = SNP POLICY.DEBUG


_VTPM_INDEXES: Final = (
    MeasurementIndex.VTPM_EK_PUBLIC,
    MeasurementIndex.VTPM_AK_PUBLIC,
    MeasurementIndex.VTPM_QUOTE_ATTEST,
    MeasurementIndex.VTPM_QUOTE_SIGNATURE,
)
_MAX_PCR: Final = 23


def tee_binder(nonce: bytes, spki_der: bytes) -> bytes:
    """The 64-byte value fresh evidence is bound to.

    Args:
        nonce: the requester's 32-byte GET_MEASUREMENTS nonce.
        spki_der: the responder leaf's SubjectPublicKeyInfo (DER).

    Returns:
        SHA-512(BINDER_LABEL || 0x00 || nonce || SHA-256(spki_der)).

    Raises:
        ValueError: the nonce is not 32 bytes.
    """
    if len(nonce) != _NONCE_SIZE:
        raise ValueError(f"the SPDM nonce is 32 bytes, got {len(nonce)}")
    return hashlib.sha512(
        BINDER_LABEL + b"\x00" + bytes(nonce) + hashlib.sha256(spki_der).digest()
    ).digest()


def _quote_qualifying_data(binder: bytes) -> bytes:
    return hashlib.sha256(binder).digest()


# --------------------------------------------------------------------------- device mode


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceMode:
    """The DSP0274 device-mode measurement (DMTF type 5): four little-endian u32.

    Attributes:
        operational_mode_capabilities: OperationalModeCapabilities.
        operational_mode_state: OperationalModeState.
        device_mode_capabilities: DeviceModeCapabilities.
        device_mode_state: DeviceModeState.
    """

    operational_mode_capabilities: int
    operational_mode_state: int
    device_mode_capabilities: int
    device_mode_state: int

    def __post_init__(self) -> None:
        for name in (
            "operational_mode_capabilities",
            "operational_mode_state",
            "device_mode_capabilities",
            "device_mode_state",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"{name} must be a u32")

    @classmethod
    def for_debug(cls, debug: bool) -> DeviceMode:
        """The device mode of a guest whose SNP POLICY.DEBUG is ``debug``.

        Debugging an SNP guest is invasive (the hypervisor may read and write its memory)
        and the policy bit holds for the VM's whole life, so both "is active" and "has
        been active" follow it.
        """
        debug_bits = _INVASIVE_DEBUG_ACTIVE | _INVASIVE_DEBUG_HAS_BEEN_ACTIVE
        return cls(
            operational_mode_capabilities=_OPERATION_MODE_NORMAL,
            operational_mode_state=_OPERATION_MODE_NORMAL,
            device_mode_capabilities=debug_bits,
            device_mode_state=debug_bits if debug else 0,
        )

    @property
    def invasive_debug(self) -> bool:
        """InvasiveDebugModeIsActive or InvasiveDebugModeHasBeenActive is set."""
        return bool(
            self.device_mode_state & (_INVASIVE_DEBUG_ACTIVE | _INVASIVE_DEBUG_HAS_BEEN_ACTIVE)
        )

    def to_bytes(self) -> bytes:
        """The 16 bytes of the measurement value."""
        return struct.pack(
            "<IIII",
            self.operational_mode_capabilities,
            self.operational_mode_state,
            self.device_mode_capabilities,
            self.device_mode_state,
        )


def parse_device_mode(data: bytes) -> DeviceMode:
    """Parse a device-mode measurement value.

    Args:
        data: exactly 16 bytes.

    Returns:
        The four fields.

    Raises:
        EvidenceFormatError: the value is not 16 bytes.
    """
    if len(data) != _DEVICE_MODE_SIZE:
        raise EvidenceFormatError(
            f"device mode is 16 bytes, got {len(data)}", structure="DeviceMode", offset=0
        )
    a, b, c, d = struct.unpack("<IIII", data)
    return DeviceMode(
        operational_mode_capabilities=a,
        operational_mode_state=b,
        device_mode_capabilities=c,
        device_mode_state=d,
    )


# --------------------------------------------------------------------------- evidence


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TeeEvidence:
    """Fresh TEE evidence for one GET_MEASUREMENTS.

    Attributes:
        snp_report: the raw SNP ATTESTATION_REPORT.
        ek_public: the EK TPMT_PUBLIC the report binds (svsm profile), or None without a vTPM.
        ak_public: the AK TPM2B_PUBLIC, or None.
        quote_attest: the quote's TPMS_ATTEST, or None.
        quote_signature: the quote's TPMT_SIGNATURE, or None.
        pcrs: (index, value) of the quoted SHA-384 PCRs, ascending; empty without a vTPM.
    """

    snp_report: bytes
    ek_public: bytes | None = None
    ak_public: bytes | None = None
    quote_attest: bytes | None = None
    quote_signature: bytes | None = None
    pcrs: tuple[tuple[int, bytes], ...] = ()

    @property
    def has_vtpm(self) -> bool:
        """True when the vTPM items are present."""
        return self.quote_attest is not None


class TeeAttester(Protocol):
    """Produces the evidence a CPU-TEE responder needs (simulated or real)."""

    def certificate_evidence(self, report_data: bytes) -> tuple[bytes, SnpEndorsements]:
        """An SNP report with this REPORT_DATA, and its endorsements, for the certificate."""
        ...

    def fresh_evidence(self, binder: bytes) -> TeeEvidence:
        """Evidence bound to a 64-byte binder (see :func:`tee_binder`)."""
        ...


def _sp_endorsements(sp: SimulatedAmdSp) -> SnpEndorsements:
    from ratls._snp_verify import SnpEndorsements

    return SnpEndorsements(leaf=sp.leaf, intermediate=sp.ask, root=sp.ark)


@final
class SimulatedSnpAttester:
    """SNP-only evidence from the simulated AMD-SP (no vTPM).

    Args:
        sp: the simulated AMD-SP.
        measurement: the launch digest to report (the simulator's default otherwise).
        debug: launch the guest with POLICY.DEBUG set (a guest no policy should accept).
    """

    def __init__(
        self, sp: SimulatedAmdSp, *, measurement: bytes | None = None, debug: bool = False
    ) -> None:
        self._sp = sp
        self._measurement = measurement
        self._debug = debug

    def __repr__(self) -> str:
        return f"SimulatedSnpAttester({self._sp!r}, debug={self._debug})"

    def _report(self, report_data: bytes) -> bytes:
        from ratls._snp_report import GuestPolicy

        policy = GuestPolicy(smt=True, debug=self._debug)
        return self._sp.build_report(
            report_data=report_data, measurement=self._measurement, policy=policy
        ).to_bytes()

    def certificate_evidence(self, report_data: bytes) -> tuple[bytes, SnpEndorsements]:
        """A VMPL-0 report with ``report_data``, and the simulator's chain."""
        return self._report(report_data), _sp_endorsements(self._sp)

    def fresh_evidence(self, binder: bytes) -> TeeEvidence:
        """A report whose REPORT_DATA is the binder."""
        return TeeEvidence(snp_report=self._report(binder))


@final
class SimulatedSvsmAttester:
    """SNP + vTPM evidence from a running :class:`~ratls.sim.SimulatedSvsm` (svsm profile).

    The fresh report comes from SVSM_ATTEST_SINGLE_SERVICE with the binder as the SVSM
    nonce; the quote carries SHA-256(binder).

    Args:
        svsm: a booted simulated VM with the ``svsm`` profile.
        measurement: the launch digest the VM was created with (None: the default).
        pcrs: the SHA-384 PCR indexes to quote.
    """

    def __init__(
        self,
        svsm: SimulatedSvsm,
        *,
        measurement: bytes | None = None,
        pcrs: Iterable[int] = range(8),
    ) -> None:
        if svsm.profile is not VtpmProfile.SVSM:
            raise ValueError("the SPDM mapping uses the svsm profile")
        self._svsm = svsm
        self._measurement = measurement
        self._pcrs = tuple(sorted(set(pcrs)))
        if not self._pcrs or not all(0 <= i <= _MAX_PCR for i in self._pcrs):
            raise ValueError("PCR indexes must be 0-23, at least one")

    def __repr__(self) -> str:
        return f"SimulatedSvsmAttester({self._svsm!r})"

    def certificate_evidence(self, report_data: bytes) -> tuple[bytes, SnpEndorsements]:
        """A VMPL-0 report with ``report_data`` (as the SVSM would request it)."""
        sp = self._svsm.sp
        report = sp.build_report(report_data=report_data, measurement=self._measurement)
        return report.to_bytes(), _sp_endorsements(sp)

    def fresh_evidence(self, binder: bytes) -> TeeEvidence:
        """Quote and SVSM report bound to the binder."""
        bundle = self._svsm.collect_evidence(
            binder=_quote_qualifying_data(binder),
            nonce=binder,
            selection={_PCR_BANK: self._pcrs},
        )
        assert bundle.snp_report is not None  # noqa: S101 - the svsm profile has one
        return TeeEvidence(
            snp_report=bundle.snp_report,
            ek_public=bundle.svsm_manifest,
            ak_public=bundle.ak_public,
            quote_attest=bundle.quote_attest,
            quote_signature=bundle.quote_signature,
            pcrs=tuple((i, v) for bank, i, v in bundle.pcrs if bank is _PCR_BANK),
        )


def _manifest(index: MeasurementIndex, value: bytes) -> MeasurementBlock:
    return MeasurementBlock(
        index=index, value_type=0x80 | DmtfMeasurementType.MEASUREMENT_MANIFEST, value=value
    )


def tee_measurement_blocks(
    evidence: TeeEvidence, *, measurement_hash_algo: int
) -> tuple[MeasurementBlock, ...]:
    """Map evidence onto DMTF measurement blocks, in index order.

    Args:
        evidence: the evidence.
        measurement_hash_algo: the negotiated MeasurementHashAlgo; the launch digest and
            the PCRs (SHA-384 values) are digest blocks when it is SHA-384, and raw bit
            streams of the same bytes otherwise (they cannot be re-hashed meaningfully).

    Returns:
        The blocks (see :class:`MeasurementIndex`).

    Raises:
        EvidenceFormatError: the SNP report is malformed.
    """
    report = parse_snp_report(evidence.snp_report)
    raw = 0 if measurement_hash_algo == MeasurementHashAlgo.TPM_ALG_SHA_384 else 0x80
    blocks = [
        MeasurementBlock(
            index=MeasurementIndex.LAUNCH_MEASUREMENT,
            value_type=raw | DmtfMeasurementType.IMMUTABLE_ROM,
            value=report.measurement,
        ),
        _manifest(MeasurementIndex.SNP_REPORT, evidence.snp_report),
    ]
    if evidence.has_vtpm:
        assert evidence.ek_public is not None  # noqa: S101 - has_vtpm
        assert evidence.ak_public is not None  # noqa: S101 - has_vtpm
        assert evidence.quote_attest is not None  # noqa: S101 - has_vtpm
        assert evidence.quote_signature is not None  # noqa: S101 - has_vtpm
        blocks += [
            _manifest(MeasurementIndex.VTPM_EK_PUBLIC, evidence.ek_public),
            _manifest(MeasurementIndex.VTPM_AK_PUBLIC, evidence.ak_public),
            _manifest(MeasurementIndex.VTPM_QUOTE_ATTEST, evidence.quote_attest),
            _manifest(MeasurementIndex.VTPM_QUOTE_SIGNATURE, evidence.quote_signature),
        ]
        for pcr, value in evidence.pcrs:
            kind = (
                DmtfMeasurementType.MUTABLE_FIRMWARE
                if pcr % 2 == 0
                else DmtfMeasurementType.FIRMWARE_CONFIGURATION
            )
            blocks.append(
                MeasurementBlock(
                    index=MeasurementIndex.PCR_BASE + pcr, value_type=raw | kind, value=value
                )
            )
    blocks.append(
        MeasurementBlock(
            index=MeasurementIndex.DEVICE_MODE,
            value_type=0x80 | DmtfMeasurementType.DEVICE_MODE,
            value=DeviceMode.for_debug(report.policy.debug).to_bytes(),
        )
    )
    return tuple(blocks)


# --------------------------------------------------------------------------- responder


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@final
class TeeResponderIdentity:
    """A CPU-TEE responder's key, evidence certificate and measurement provider.

    Build one with :meth:`create`.  The identity is the :data:`MeasurementProvider` of a
    :class:`~ratls.spdm.Responder` (it is callable), and :meth:`responder_config` builds
    the whole configuration.

    Args:
        private_key: the TEE-generated key (never shown in reprs).
        certificate: its self-signed evidence certificate.
        attester: where fresh evidence comes from.
    """

    def __init__(
        self,
        *,
        private_key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        attester: TeeAttester,
    ) -> None:
        self._key = private_key
        self._certificate = certificate
        self._attester = attester
        self._spki = _spki(certificate)
        self._unbound: TeeEvidence | None = None

    def __repr__(self) -> str:
        return (
            f"TeeResponderIdentity(curve={self._key.curve.name}, "
            f"spki_sha256={hashlib.sha256(self._spki).hexdigest()[:16]}...)"
        )

    @classmethod
    def create(
        cls, attester: TeeAttester, *, curve: str = "p384", now: datetime | None = None
    ) -> TeeResponderIdentity:
        """Generate a key and its evidence certificate.

        Args:
            attester: the evidence source.
            curve: ``"p384"`` (default) or ``"p256"``.
            now: the signing time (the current time by default).

        Returns:
            The identity.

        Raises:
            ValueError: an unknown curve.
            RatlsError: the attester failed.
        """
        curves: dict[str, ec.EllipticCurve] = {"p384": ec.SECP384R1(), "p256": ec.SECP256R1()}
        if curve not in curves:
            raise ValueError(f"unknown curve {curve!r}; use p384 or p256")
        key = ec.generate_private_key(curves[curve])
        certificate = (
            AttestedCertificateBuilder()
            .private_key(key)
            .snp_evidence(attester.certificate_evidence)
            .sign(now=now or datetime.now(UTC))
        )
        return cls(private_key=key, certificate=certificate, attester=attester)

    @property
    def certificate(self) -> x509.Certificate:
        """The self-signed evidence certificate (slot 0's one-certificate chain)."""
        return self._certificate

    @property
    def certificate_der(self) -> bytes:
        """The certificate as DER (what ``--cert-out`` writes)."""
        return self._certificate.public_bytes(serialization.Encoding.DER)

    @property
    def base_asym_algo(self) -> BaseAsymAlgo:
        """The BaseAsymAlgo bit of the key."""
        if self._key.curve.key_size > 256:
            return BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384
        return BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256

    def __call__(self, context: MeasurementContext) -> tuple[MeasurementBlock, ...]:
        """The measurement provider: fresh evidence for a nonce, a cached set without.

        Requests without a nonce (unsigned GET_MEASUREMENTS, summary hashes) get one set
        made once with an all-zero nonce, so summary hashes stay stable and cheap; a
        verifier never accepts it, since it checks against its own nonce.
        """
        if context.nonce is None:
            if self._unbound is None:
                self._unbound = self._attester.fresh_evidence(
                    tee_binder(bytes(_NONCE_SIZE), self._spki)
                )
            evidence = self._unbound
        else:
            evidence = self._attester.fresh_evidence(tee_binder(context.nonce, self._spki))
        return tee_measurement_blocks(evidence, measurement_hash_algo=context.measurement_hash_algo)

    def responder_config(self, *, binding: TransportBinding) -> ResponderConfig:
        """A responder configuration serving this identity.

        MeasurementHashAlgo is SHA-384, the hash of the SNP launch digest and of the quoted
        PCR bank, so both travel as digest blocks.

        Args:
            binding: the transport binding.

        Returns:
            The configuration (slot 0 = the certificate alone).
        """
        return ResponderConfig(
            certificate_chain=(self.certificate_der,),
            private_key=self._key,
            base_asym_algo=self.base_asym_algo,
            measurements=self,
            binding=binding,
            measurement_hash_algo=MeasurementHashAlgo.TPM_ALG_SHA_384,
        )


# --------------------------------------------------------------------------- leaf profile

_CURVE_FOR_ALGO: Final[dict[int, type[ec.EllipticCurve]]] = {
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256: ec.SECP256R1,
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384: ec.SECP384R1,
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P521: ec.SECP521R1,
}


def _leaf_fail(claim: str, expected: object, actual: object) -> CertificateChainError:
    return CertificateChainError(f"spdm.leaf.{claim}", expected=expected, actual=actual)


def check_leaf_profile(leaf: x509.Certificate, *, base_asym_algo: int, at: datetime) -> None:
    """Apply the responder-leaf checks of libspdm's requester (reference spdm.md 2.6).

    X.509 v3; a serial number, issuer and subject; validity covering ``at``; an SPKI of
    the negotiated BaseAsymAlgo (ECDSA curves here); KeyUsage with digitalSignature;
    basicConstraints absent or CA:FALSE; an EKU, if present, that does not name only
    the DMTF requester-auth purpose.

    Args:
        leaf: the leaf certificate.
        base_asym_algo: the negotiated BaseAsymAlgo bit.
        at: the time the validity must cover.

    Raises:
        CertificateChainError: naming the first failed rule.
    """
    if leaf.version is not x509.Version.v3:
        raise _leaf_fail("version", "v3", leaf.version.name)
    if not leaf.issuer.rdns or not leaf.subject.rdns:
        raise _leaf_fail("name", "non-empty issuer and subject", "empty")
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        raise _leaf_fail(
            "validity",
            f"{leaf.not_valid_before_utc.isoformat()} .. {leaf.not_valid_after_utc.isoformat()}",
            at.isoformat(),
        )
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _leaf_fail("spki", "a public key cryptography can load", str(exc)) from exc
    curve = _CURVE_FOR_ALGO.get(base_asym_algo)
    if curve is None or not isinstance(key, ec.EllipticCurvePublicKey):
        raise _leaf_fail("spki", f"an ECDSA key for BaseAsymAlgo {base_asym_algo:#x}", key)
    if not isinstance(key.curve, curve):
        raise _leaf_fail("spki", curve.name, key.curve.name)
    try:
        # Parsed on first use: a malformed or repeated extension raises only here.
        extensions = leaf.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise _leaf_fail("extensions", "well-formed, each at most once", str(exc)) from exc
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _leaf_fail("key_usage", "digitalSignature", "absent") from None
    if not usage.digital_signature:
        raise _leaf_fail("key_usage", "digitalSignature", "not set")
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise _leaf_fail("basic_constraints", "absent or CA:FALSE", "CA:TRUE")
    try:
        eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and _DMTF_EKU_REQUESTER_AUTH in eku and DMTF_EKU_RESPONDER_AUTH not in eku:
        raise _leaf_fail("eku", "not requester-auth only", "requester-auth only")


# --------------------------------------------------------------------------- requester


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedResponderIdentity(metaclass=NoPublicConstructor):
    """The outcome of :func:`verify_responder_chain` (only the verifier creates these).

    Attributes:
        mode: ``"evidence"`` (self-signed leaf whose evidence verified) or
            ``"trust-anchor"`` (plain SPDM device authentication).
        leaf: the leaf certificate.
        result: the certificate evidence's result (``evidence`` mode), else None.
    """

    mode: str
    leaf: x509.Certificate
    result: AttestationResult | None


def _load(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise EvidenceFormatError(f"{what} is not a DER certificate: {exc}") from exc


def verify_responder_chain(
    chain: CertChain,
    *,
    base_asym_algo: int,
    at: datetime,
    policy: Policy | None = None,
    trust_simulator: bool = False,
    trust_anchor: bytes | None = None,
) -> VerifiedResponderIdentity:
    """Decide whether the responder's slot-0 chain is trusted.

    Without ``trust_anchor`` the chain must be one self-signed leaf carrying evidence that
    verifies (:func:`~ratls.verify_evidence_certificate`) and meets ``policy``.  With it,
    the chain's root must be that certificate (or be issued by it) and each certificate
    must sign the next: plain SPDM device authentication, no evidence required.  The
    leaf must pass :func:`check_leaf_profile` either way.

    Args:
        chain: the chain the requester read (framing and RootHash already checked).
        base_asym_algo: the negotiated BaseAsymAlgo.
        at: the verification time.
        policy: the appraisal policy (evidence mode).
        trust_simulator: accept the simulated AMD root (evidence mode).
        trust_anchor: DER of the trusted root.

    Returns:
        The verified identity.

    Raises:
        CertificateChainError: a broken chain, an untrusted root, or a leaf-profile rule.
        EvidenceError: (evidence mode) the certificate's evidence failed.
    """
    certs = [_load(der, f"certificate {i}") for i, der in enumerate(chain.certificates)]
    leaf = certs[-1]
    check_leaf_profile(leaf, base_asym_algo=base_asym_algo, at=at)
    if trust_anchor is not None:
        anchor = _load(trust_anchor, "the trust anchor")
        if certs[0] != anchor:
            _check_issued(certs[0], anchor, "spdm.chain.root")
        for i in range(1, len(certs)):
            _check_issued(certs[i], certs[i - 1], f"spdm.chain[{i}]")
        return VerifiedResponderIdentity._create(mode="trust-anchor", leaf=leaf, result=None)
    if len(certs) != 1:
        raise CertificateChainError(
            "spdm.chain.length",
            expected="one self-signed evidence certificate",
            actual=f"{len(certs)} certificates",
            detail="pass a trust anchor for provisioned chains",
        )
    result = verify_evidence_certificate(
        leaf, policy=policy, at=at, trust_simulator=trust_simulator
    )
    return VerifiedResponderIdentity._create(mode="evidence", leaf=leaf, result=result)


def _check_issued(child: x509.Certificate, parent: x509.Certificate, claim: str) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except InvalidSignature as exc:
        raise CertificateChainError(
            claim, expected=f"signed by {parent.subject.rfc4514_string()}", actual="bad signature"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise CertificateChainError(
            claim, expected=f"issued by {parent.subject.rfc4514_string()}", actual=str(exc)
        ) from exc


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedTeeMeasurements(metaclass=NoPublicConstructor):
    """Measurement blocks whose fresh TEE evidence verified (only the verifier creates these).

    Attributes:
        result: the attestation result of the fresh evidence (``snp`` or ``svsm``).
        launch_measurement: the SNP launch digest.
        device_mode: the device-mode block.
        pcrs: the quoted SHA-384 PCRs as (index, value), empty without a vTPM.
        vtpm: the verified vTPM evidence, or None.
    """

    result: AttestationResult
    launch_measurement: bytes
    device_mode: DeviceMode
    pcrs: tuple[tuple[int, bytes], ...]
    vtpm: VerifiedVtpmEvidence | None


def _blocks_by_index(blocks: Sequence[MeasurementBlock]) -> dict[int, MeasurementBlock]:
    found: dict[int, MeasurementBlock] = {}
    for block in blocks:
        if block.index in found:
            raise EvidenceFormatError(
                f"measurement index {block.index:#x} appears twice", structure="MEASUREMENTS"
            )
        found[block.index] = block
    return found


def _need(
    found: dict[int, MeasurementBlock],
    index: MeasurementIndex,
    dmtf_type: int,
    *,
    digest_ok: bool = False,
) -> bytes:
    block = found.get(index)
    if block is None:
        raise EvidenceFormatError(
            f"measurement block {index.name} ({index:#x}) is missing", structure="MEASUREMENTS"
        )
    if (not block.is_raw_bit_stream and not digest_ok) or block.dmtf_type != dmtf_type:
        raise EvidenceFormatError(
            f"measurement block {index.name} must be a raw type-{dmtf_type} block, "
            f"got value type {block.value_type:#04x}",
            structure="MEASUREMENTS",
        )
    return block.value


def verify_tee_measurements(
    blocks: Sequence[MeasurementBlock],
    *,
    nonce: bytes,
    leaf: x509.Certificate,
    at: datetime,
    policy: Policy | None,
    trust_simulator: bool = False,
) -> VerifiedTeeMeasurements:
    """Verify the fresh TEE evidence in a signed MEASUREMENTS response.

    Call it after the requester machine checked the response's signature with ``leaf``'s
    key.  Checks: the SNP report (and with a vTPM the SVSM binding and the quote) verify
    with the endorsements of ``leaf``'s CMW extension and meet ``policy``; the evidence is
    bound to :func:`tee_binder` (``nonce``, ``leaf``'s key); the launch-measurement block
    equals the report's and the certificate's; the device mode matches POLICY.DEBUG; the
    PCR blocks are the quoted values.

    Args:
        blocks: all measurement blocks of the response.
        nonce: the nonce this requester sent in GET_MEASUREMENTS.
        leaf: the responder's evidence certificate.
        at: the verification time.
        policy: the appraisal policy (None: authenticity and binding only).
        trust_simulator: accept the simulated AMD root.

    Returns:
        The verified measurements.

    Raises:
        EvidenceFormatError: missing, duplicated or malformed blocks.
        NonceMismatch: the evidence is bound to another nonce or key (replay, relay).
        MeasurementMismatch: the launch measurement disagrees, or the policy refuses it.
        BindingMismatch: device mode, PCRs or certificate disagree with the evidence.
        EvidenceVerificationError: any other failed check of the existing verifiers.
    """
    found = _blocks_by_index(blocks)
    binder = tee_binder(nonce, _spki(leaf))
    launch = _need(
        found,
        MeasurementIndex.LAUNCH_MEASUREMENT,
        DmtfMeasurementType.IMMUTABLE_ROM,
        digest_ok=True,
    )
    raw_report = _need(found, MeasurementIndex.SNP_REPORT, DmtfMeasurementType.MEASUREMENT_MANIFEST)
    if len(raw_report) != SNP_REPORT_SIZE:
        raise EvidenceFormatError(
            f"SNP report block is {len(raw_report)} bytes", structure="MEASUREMENTS"
        )
    mode = parse_device_mode(
        _need(found, MeasurementIndex.DEVICE_MODE, DmtfMeasurementType.DEVICE_MODE)
    )
    evidence_found = inspect_evidence_certificate(leaf)
    if evidence_found.cmw is None:
        raise CertificateChainError(
            "snp.endorsements",
            expected="VCEK/VLEK, ASK/ASVK and ARK in the certificate's id-pe-cmw extension",
            actual="none",
        )
    endorsements = evidence_found.cmw.endorsements()
    has_vtpm = [i in found for i in _VTPM_INDEXES]
    pcrs = tuple(
        sorted(
            (b.index - MeasurementIndex.PCR_BASE, b.value)
            for b in blocks
            if MeasurementIndex.PCR_BASE <= b.index <= MeasurementIndex.PCR_BASE + _MAX_PCR
        )
    )
    vtpm: VerifiedVtpmEvidence | None = None
    if any(has_vtpm):
        if not all(has_vtpm) or not pcrs:
            raise EvidenceFormatError(
                "vTPM blocks 0x03-0x06 and at least one PCR block come together",
                structure="MEASUREMENTS",
            )
        values = [_need(found, i, DmtfMeasurementType.MEASUREMENT_MANIFEST) for i in _VTPM_INDEXES]
        bundle = VtpmEvidence(
            profile=VtpmProfile.SVSM,
            snp_report=raw_report,
            certs=tuple(
                c.public_bytes(serialization.Encoding.DER)
                for c in (endorsements.leaf, endorsements.intermediate, endorsements.root)
            ),
            svsm_nonce=binder,
            svsm_manifest=values[0],
            ak_public=values[1],
            quote_attest=values[2],
            quote_signature=values[3],
            pcrs=tuple((_PCR_BANK, i, v) for i, v in pcrs),
        )
        vtpm = verify_vtpm_evidence(
            bundle,
            policy=policy,
            at=at,
            expected_binder=_quote_qualifying_data(binder),
            expected_nonce=binder,
            trust_simulator=trust_simulator,
        )
        result = to_attestation_result(vtpm)
        report = vtpm.snp.report
    else:
        if pcrs:
            raise EvidenceFormatError(
                "PCR blocks without the vTPM quote blocks", structure="MEASUREMENTS"
            )
        result = verify_snp_attestation(
            raw_report,
            endorsements,
            policy=policy,
            at=at,
            expected_report_data=binder,
            trust_simulator=trust_simulator,
        )
        report = result.snp.report
    if not hmac.compare_digest(launch, report.measurement):
        raise MeasurementMismatch(
            "spdm.measurement.launch",
            expected=report.measurement,
            actual=launch,
            detail="the launch-measurement block differs from the report's MEASUREMENT",
        )
    certified = parse_snp_report(evidence_found.evidence)
    if not hmac.compare_digest(certified.measurement, report.measurement):
        raise BindingMismatch(
            "spdm.measurement.certificate",
            expected=certified.measurement,
            actual=report.measurement,
            detail="the fresh report and the certificate's report are of different guests",
        )
    if not hmac.compare_digest(certified.chip_id, report.chip_id):
        raise BindingMismatch(
            "spdm.measurement.chip_id", expected=certified.chip_id, actual=report.chip_id
        )
    if mode.invasive_debug != report.policy.debug:
        raise BindingMismatch(
            "spdm.measurement.device_mode",
            expected=f"invasive debug {'on' if report.policy.debug else 'off'} (POLICY.DEBUG)",
            actual=f"invasive debug {'on' if mode.invasive_debug else 'off'}",
        )
    return VerifiedTeeMeasurements._create(
        result=result,
        launch_measurement=launch,
        device_mode=mode,
        pcrs=pcrs,
        vtpm=vtpm,
    )
