"""A simulated AMD secure processor: its own ARK, ASK/ASVK and VCEK/VLEK, and signed reports.

Nobody has SNP hardware on a laptop, so the simulator plays AMD's part end to end: it
creates a root key (ARK), a signing key (ASK, or ASVK for VLEKs) and a report-signing key
(VCEK or VLEK) with certificates in AMD's exact profile, then builds and signs attestation
reports with them.  The evidence it produces goes through the very same verifier as real
evidence; only the trust anchor differs, and the simulator's root is trusted solely when a
caller adds it (:meth:`SimulatedAmdSp.anchors`, or a policy that says so in plain words).

Certificate fidelity
--------------------

* ARK and ASK/ASVK: RSA-4096, AMD's subject attributes (O=Advanced Micro Devices,
  OU=Engineering, L=Santa Clara, ST=CA, C=US; CN ``ARK-<P>``, ``SEV-<P>`` or
  ``SEV-VLEK-<P>``), critical keyUsage and basicConstraints, AMD's KDS CRL distribution
  point.  VCEK/VLEK: ECDSA P-384, serial number 0, CN ``SEV-VCEK``/``SEV-VLEK``, the
  1.3.6.1.4.1.3704.1.* extensions with the reported TCB, hwID raw in extnValue.
* Every certificate is signed with RSASSA-PSS SHA-384/MGF1-SHA-384/salt 48 and carries
  AMD's AlgorithmIdentifier byte for byte (including the explicit trailerField).
  cryptography's ``CertificateBuilder`` refuses serial 0 and writes its own PSS
  parameters, so the simulator lets it build a TBSCertificate, re-encodes that with
  serial 0 (leaves only) and AMD's AlgorithmIdentifier using a small DER writer, signs the
  new TBS itself and assembles the certificate.
* Marking: each simulated certificate's subject carries a ``description`` attribute
  (2.5.4.13) reading "ratls simulator - not AMD hardware".  ``openssl x509 -text`` shows
  it; the verifier ignores it (it checks CN, O, OU, L, ST and C only), so the chain has
  the real format and is still plainly labelled for a human.

Cost: RSA-4096 key generation takes around a second, so tests and demos share instances
through :func:`simulated_amd_sp`, and a simulated machine can keep its identity across
runs with :meth:`SimulatedAmdSp.save` / :meth:`SimulatedAmdSp.load`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .._amd_certs import (
    AMD_KDS_CRL_URL,
    SIMULATOR_MARK,
    AmdOID,
    AmdTrustAnchors,
    KeyKind,
    _der_items,
    _der_read,
    amd_pss_algorithm_identifier,
    der_integer,
    der_sequence,
    der_tlv,
    load_amd_certificate,
    spki_sha256,
)
from .._files import write_atomically
from .._snp_certtable import (
    CERT_TABLE_GUID_ARK,
    CERT_TABLE_GUID_ASK,
    CERT_TABLE_GUID_VCEK,
    CERT_TABLE_GUID_VLEK,
    CertTableEntry,
    build_cert_table,
)
from .._snp_report import (
    SNP_SIGNED_SIZE,
    GuestPolicy,
    PlatformInfo,
    ProductLine,
    SignatureAlgorithm,
    SignerInfo,
    SigningKey,
    SnpReport,
    TcbLayout,
    TcbVersion,
)
from .._steps import offload, run_inline

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    from .._steps import Steps

__all__ = [
    "SIMULATOR_MARK",
    "SimulatedAmdSp",
    "simulated_amd_sp",
]

_DESCRIPTION: Final = x509.ObjectIdentifier("2.5.4.13")

_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_RSA_BITS: Final = 4096

#: Lifetimes AMD's KDS uses: ARK/ASK 25 years, VCEK 7 years, VLEK 1 year.
_CA_LIFETIME: Final = timedelta(days=25 * 365)
_LIFETIME: Final[Mapping[KeyKind, timedelta]] = {
    KeyKind.VCEK: timedelta(days=7 * 365),
    KeyKind.VLEK: timedelta(days=365),
}

#: CPUID family, model, stepping written into v3+ reports, one real part per product.
_CPUID: Final[Mapping[ProductLine, tuple[int, int, int]]] = {
    ProductLine.MILAN: (0x19, 0x01, 0x01),
    ProductLine.GENOA: (0x19, 0x11, 0x01),
    ProductLine.TURIN: (0x1A, 0x02, 0x01),
}

#: Plausible TCBs per product (Milan's microcode SPL is >= 128 on purpose: it exercises the
#: two-byte INTEGER encoding of the ucodeSPL extension).
_DEFAULT_TCB: Final[Mapping[ProductLine, TcbVersion]] = {
    ProductLine.MILAN: TcbVersion(bootloader=3, tee=0, snp=20, microcode=209),
    ProductLine.GENOA: TcbVersion(bootloader=9, tee=0, snp=23, microcode=72),
    ProductLine.TURIN: TcbVersion(
        bootloader=1, tee=0, snp=2, microcode=71, fmc=0, layout=TcbLayout.TURIN
    ),
}

#: Firmware version reported as CURRENT/COMMITTED (major, minor, build).
_FIRMWARE: Final = (1, 55, 21)

_SAVE_FORMAT: Final = 1

# Where report_bytes_steps writes into a report (AMD SEV-SNP ABI, ATTESTATION_REPORT).
_REPORT_DATA_SIZE: Final = 64
_REPORT_DATA: Final = slice(0x50, 0x90)
_REPORT_ID: Final = slice(0x140, 0x160)
_SIGNATURE_R: Final = slice(0x2A0, 0x2E8)
_SIGNATURE_S: Final = slice(0x2E8, 0x330)
_SIGNATURE_COMPONENT: Final = 72
#: Unsigned report layouts kept per simulator (one per distinct attester setup).
_TEMPLATES_KEPT: Final = 16


def _amd_name(common_name: str) -> x509.Name:
    """AMD's subject layout (OU, C, L, ST, O, CN), plus the simulator mark."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(_DESCRIPTION, SIMULATOR_MARK),
        ]
    )


def _crl_point(family: str, product: ProductLine) -> x509.CRLDistributionPoints:
    url = AMD_KDS_CRL_URL.format(family=family, product=product.value)
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def _amd_resign(
    cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey, *, serial: int | None
) -> x509.Certificate:
    """Re-encode a built certificate in AMD's profile and sign it with RSASSA-PSS.

    Replaces the TBS serial (when given) and the TBS and outer AlgorithmIdentifier with
    AMD's exact encoding, signs the new TBS, and assembles Certificate ::= SEQUENCE {
    tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }.
    """
    structure = "simulated certificate"
    tbs = cert.tbs_certificate_bytes
    _, contents, _ = _der_read(tbs, 0, structure)
    items = [whole for _, _, whole in _der_items(contents, structure)]
    # TBSCertificate: [0] version, serialNumber, signature, issuer, validity, subject, ...
    if serial is not None:
        items[1] = der_integer(serial)
    algorithm = amd_pss_algorithm_identifier()
    items[2] = algorithm
    new_tbs = der_sequence(*items)
    signature = issuer_key.sign(new_tbs, _PSS, hashes.SHA384())
    der = der_sequence(new_tbs, algorithm, der_tlv(0x03, b"\x00" + signature))
    return load_amd_certificate(der)


def _u8(value: int) -> bytes:
    return der_integer(value)


@final
class SimulatedAmdSp:
    """A software AMD-SP: a product's key hierarchy and a report signer.

    Create one with :meth:`generate` (fresh keys), :func:`simulated_amd_sp` (cached per
    product and key kind) or :meth:`load` (a saved identity).

    Attributes:
        product: the product line being simulated.
        key_kind: whether reports are signed by a VCEK or a VLEK.
        chip_id: the 64-byte CHIP_ID (8 significant bytes on Turin); the VCEK's hwID.
        reported_tcb: the TCB the VCEK/VLEK was issued for (REPORTED_TCB of reports).
        csp_id: the cloud-provider name in a VLEK's cspID, None for VCEKs.
        ark: the simulated ARK certificate.
        ask: the intermediate: ASK for VCEKs, ASVK for VLEKs.
        leaf: the VCEK or VLEK certificate.
    """

    def __init__(
        self,
        *,
        product: ProductLine,
        key_kind: KeyKind,
        chip_id: bytes,
        reported_tcb: TcbVersion,
        csp_id: str | None,
        ark: x509.Certificate,
        ask: x509.Certificate,
        leaf: x509.Certificate,
        ark_key: rsa.RSAPrivateKey,
        ask_key: rsa.RSAPrivateKey,
        leaf_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        """Assemble a simulator from existing parts; prefer :meth:`generate` or :meth:`load`."""
        self.product = product
        self.key_kind = key_kind
        self.chip_id = chip_id
        self.reported_tcb = reported_tcb
        self.csp_id = csp_id
        self.ark = ark
        self.ask = ask
        self.leaf = leaf
        self._ark_key = ark_key
        self._ask_key = ask_key
        self._leaf_key = leaf_key
        # Unsigned report layouts per (version, vmpl, measurement, policy), for
        # report_bytes_steps; each made by the full build path once.
        self._templates: dict[tuple[object, ...], bytes] = {}

    def __repr__(self) -> str:
        return (
            f"<SimulatedAmdSp {self.product.value} {self.key_kind.name} "
            f"ark={self.ark_spki_sha256.hex()[:16]}...>"
        )

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        product: ProductLine,
        *,
        key_kind: KeyKind = KeyKind.VCEK,
        chip_id: bytes | None = None,
        reported_tcb: TcbVersion | None = None,
        not_before: datetime | None = None,
        csp_id: str = "CN=ratls-simulated-cloud",
        ark_key: rsa.RSAPrivateKey | None = None,
        ask_key: rsa.RSAPrivateKey | None = None,
        leaf_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> SimulatedAmdSp:
        """Create a simulated AMD-SP with fresh (or supplied) keys.

        Args:
            product: the product line to simulate.
            key_kind: sign reports with a VCEK (default) or a VLEK.
            chip_id: the chip ID; random by default.  64 bytes, or 8 on Turin (where a
                64-byte value must end in 56 zero bytes).
            reported_tcb: the TCB of the VCEK/VLEK; a plausible one for the product by
                default.  Its layout must be the product's.
            not_before: start of validity of all certificates; one day ago by default.
            csp_id: the cspID written into a VLEK (ignored for VCEKs).
            ark_key: reuse this RSA-4096 root key instead of generating one.
            ask_key: reuse this RSA-4096 ASK/ASVK key.
            leaf_key: reuse this P-384 VCEK/VLEK key.

        Returns:
            The simulator.

        Raises:
            ValueError: an argument does not fit the product.
        """
        chip = _normalise_chip_id(product, chip_id)
        tcb = reported_tcb if reported_tcb is not None else _DEFAULT_TCB[product]
        if tcb.layout is not product.tcb_layout:
            raise ValueError(
                f"reported_tcb must use the {product.tcb_layout.name} layout for {product.value}"
            )
        start = (not_before or datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
        ark_key = ark_key or _new_rsa_key()
        ask_key = ask_key or _new_rsa_key()
        leaf_key = leaf_key or ec.generate_private_key(ec.SECP384R1())
        vlek = key_kind is KeyKind.VLEK
        p = product.value

        ark_name = _amd_name(f"ARK-{p}")
        ark_builder = (
            x509.CertificateBuilder()
            .subject_name(ark_name)
            .issuer_name(ark_name)
            .public_key(ark_key.public_key())
            .serial_number(0x10000 * (list(ProductLine).index(product) + 1))
            .not_valid_before(start)
            .not_valid_after(start + _CA_LIFETIME)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ark_key.public_key()), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_crl_point("vcek", product), critical=False)
        )
        ark = _amd_resign(
            ark_builder.sign(ark_key, hashes.SHA384(), rsa_padding=_PSS), ark_key, serial=None
        )

        ask_name = _amd_name(f"SEV-VLEK-{p}" if vlek else f"SEV-{p}")
        ask_builder = (
            x509.CertificateBuilder()
            .subject_name(ask_name)
            .issuer_name(ark_name)
            .public_key(ask_key.public_key())
            .serial_number(
                0x10000 * (list(ProductLine).index(product) + 1) + (0x101 if vlek else 1)
            )
            .not_valid_before(start)
            .not_valid_after(start + _CA_LIFETIME)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ask_key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ark_key.public_key()),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(_crl_point("vlek" if vlek else "vcek", product), critical=False)
        )
        ask = _amd_resign(
            ask_builder.sign(ark_key, hashes.SHA384(), rsa_padding=_PSS), ark_key, serial=None
        )

        leaf_builder = (
            x509.CertificateBuilder()
            .subject_name(_amd_name("SEV-VLEK" if vlek else "SEV-VCEK"))
            .issuer_name(ask_name)
            .public_key(leaf_key.public_key())
            .serial_number(1)  # replaced by 0 below, as on every real VCEK/VLEK
            .not_valid_before(start)
            .not_valid_after(start + _LIFETIME[key_kind])
        )
        for oid, value in _leaf_extensions(product, key_kind, tcb, chip, csp_id):
            leaf_builder = leaf_builder.add_extension(
                x509.UnrecognizedExtension(oid, value), critical=False
            )
        leaf = _amd_resign(
            leaf_builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS), ask_key, serial=0
        )

        return cls(
            product=product,
            key_kind=key_kind,
            chip_id=chip,
            reported_tcb=tcb,
            csp_id=csp_id if vlek else None,
            ark=ark,
            ask=ask,
            leaf=leaf,
            ark_key=ark_key,
            ask_key=ask_key,
            leaf_key=leaf_key,
        )

    # --- identity -------------------------------------------------------------------------

    @property
    def ark_spki_sha256(self) -> bytes:
        """SHA-256 of the simulated ARK's SubjectPublicKeyInfo (what a verifier pins)."""
        return spki_sha256(self.ark)

    @property
    def leaf_public_key(self) -> ec.EllipticCurvePublicKey:
        """The VCEK/VLEK public key."""
        return self._leaf_key.public_key()

    def anchors(self) -> AmdTrustAnchors:
        """AMD's pinned roots plus this simulator's ARK, labelled ``"simulator"``."""
        return AmdTrustAnchors.default().with_extra(
            self.product, self.ark_spki_sha256, label="simulator", simulated=True
        )

    def chain_pem(self) -> bytes:
        """The chain as concatenated PEM: VCEK/VLEK, ASK/ASVK, ARK."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.leaf, self.ask, self.ark)
        )

    def cert_table(self) -> bytes:
        """The extended-report certificate table (GHCB GUID table) with leaf, ASK and ARK."""
        der = serialization.Encoding.DER
        leaf_guid = CERT_TABLE_GUID_VLEK if self.key_kind is KeyKind.VLEK else CERT_TABLE_GUID_VCEK
        return build_cert_table(
            [
                CertTableEntry(guid=leaf_guid, data=self.leaf.public_bytes(der)),
                CertTableEntry(guid=CERT_TABLE_GUID_ASK, data=self.ask.public_bytes(der)),
                CertTableEntry(guid=CERT_TABLE_GUID_ARK, data=self.ark.public_bytes(der)),
            ]
        )

    # --- reports --------------------------------------------------------------------------

    def sign_report(self, report: SnpReport, *, allow_inconsistent: bool = False) -> SnpReport:
        """Sign a report with the VCEK/VLEK (sets ``signature_r`` and ``signature_s``).

        Args:
            report: the report to sign; its signature fields are ignored.
            allow_inconsistent: sign even if the report disagrees with this key (wrong
                signing-key kind, REPORTED_TCB or CHIP_ID); for negative tests.

        Returns:
            The signed report.

        Raises:
            ValueError: the report disagrees with this key and ``allow_inconsistent`` is
                False.
        """
        return run_inline(self.sign_report_steps(report, allow_inconsistent=allow_inconsistent))

    def sign_report_steps(
        self, report: SnpReport, *, allow_inconsistent: bool = False
    ) -> Steps[SnpReport]:
        """:meth:`sign_report` as :mod:`ratls._steps`: the ECDSA signature is yielded.

        On real hardware the AMD-SP signs on its own processor; a driver may likewise make
        this signature on another core than the guest's event loop.
        """
        if not allow_inconsistent:
            self._check_consistent(report)
        r, s = yield from self._signature_steps(report.signed_bytes())
        return dataclasses.replace(report, signature_r=r, signature_s=s)

    def _signature_steps(self, signed: bytes) -> Steps[tuple[int, int]]:
        """The VCEK/VLEK's ECDSA P-384/SHA-384 signature (r, s) over ``signed``, yielded."""
        sign = functools.partial(self._leaf_key.sign, signed, ec.ECDSA(hashes.SHA384()))
        der = yield from offload(sign)
        return decode_dss_signature(der)

    def _check_consistent(self, report: SnpReport) -> None:
        want = SigningKey.VLEK if self.key_kind is KeyKind.VLEK else SigningKey.VCEK
        if report.signer_info.signing_key is not want:
            raise ValueError(
                f"report says SIGNING_KEY={report.signer_info.signing_key.name}, "
                f"but this simulator signs with a {self.key_kind.name}"
            )
        if report.product is not None and report.product is not self.product:
            raise ValueError(
                f"report is for {report.product.value}, simulator for {self.product.value}"
            )
        if report.reported_tcb.components() != self.reported_tcb.components():
            raise ValueError(
                f"REPORTED_TCB {report.reported_tcb} differs from the "
                f"{self.key_kind.name}'s TCB {self.reported_tcb}"
            )
        if report.signer_info.mask_chip_key:
            if any(report.chip_id):
                raise ValueError("MASK_CHIP_KEY is set but CHIP_ID is not zero")
        elif self.key_kind is KeyKind.VCEK and report.chip_id != self.chip_id:
            raise ValueError("CHIP_ID differs from the VCEK's hwID")

    def build_report(
        self,
        *,
        report_data: bytes,
        version: int = 3,
        vmpl: int = 0,
        measurement: bytes | None = None,
        policy: GuestPolicy | None = None,
        allow_inconsistent: bool = False,
        **fields: Any,  # noqa: ANN401 - any SnpReport field, checked by SnpReport itself
    ) -> SnpReport:
        """Build a realistic report for this product and sign it.

        :meth:`build_report_steps`, with the signature made here; see there.
        """
        return run_inline(
            self.build_report_steps(
                report_data=report_data,
                version=version,
                vmpl=vmpl,
                measurement=measurement,
                policy=policy,
                allow_inconsistent=allow_inconsistent,
                **fields,
            )
        )

    def build_report_steps(
        self,
        *,
        report_data: bytes,
        version: int = 3,
        vmpl: int = 0,
        measurement: bytes | None = None,
        policy: GuestPolicy | None = None,
        allow_inconsistent: bool = False,
        **fields: Any,  # noqa: ANN401 - any SnpReport field, checked by SnpReport itself
    ) -> Steps[SnpReport]:
        """Build a realistic report for this product and sign it (as :mod:`ratls._steps`).

        Defaults: CPUID family/model/stepping of a real part of the product (v3+),
        random REPORT_ID, REPORT_ID_MA all FF (no migration agent), CURRENT, COMMITTED and
        LAUNCH TCB equal to the reported TCB, firmware 1.55 build 21, PLATFORM_INFO with
        SMT and TSME enabled, guest policy with SMT allowed, zero mitigation vectors (v5).

        Args:
            report_data: the 64 bytes of REPORT_DATA.
            version: report version (2, 3, 4 or 5).
            vmpl: the VMPL the report is for.
            measurement: the launch digest (a fixed simulated one by default).
            policy: the guest policy.
            allow_inconsistent: passed to :meth:`sign_report`.
            **fields: any other :class:`SnpReport` field, overriding the defaults.

        Returns:
            The signed report.

        Raises:
            ValueError: a field is invalid, or the report would disagree with the key.
        """
        values = self._report_fields(
            report_data=report_data,
            version=version,
            vmpl=vmpl,
            measurement=measurement,
            policy=policy,
        )
        unknown = set(fields) - set(values)
        if unknown:
            raise ValueError(f"unknown report field(s): {', '.join(sorted(unknown))}")
        values.update(fields)
        return (
            yield from self.sign_report_steps(
                SnpReport(**values), allow_inconsistent=allow_inconsistent
            )
        )

    def _report_fields(
        self,
        *,
        report_data: bytes,
        version: int,
        vmpl: int,
        measurement: bytes | None,
        policy: GuestPolicy | None,
    ) -> dict[str, Any]:
        """The default fields of a report for this product (see build_report_steps)."""
        family, model, stepping = _CPUID[self.product]
        v2 = version == 2
        signing_key = SigningKey.VLEK if self.key_kind is KeyKind.VLEK else SigningKey.VCEK
        major, minor, build = _FIRMWARE
        return {
            "version": version,
            "guest_svn": 0,
            "policy": policy if policy is not None else GuestPolicy(smt=True),
            "family_id": bytes(16),
            "image_id": bytes(16),
            "vmpl": vmpl,
            "signature_algo": SignatureAlgorithm.ECDSA_P384_SHA384,
            "current_tcb": self.reported_tcb,
            "platform_info": PlatformInfo(smt_en=True, tsme_en=True),
            "signer_info": SignerInfo(signing_key=signing_key),
            "report_data": report_data,
            "measurement": measurement
            if measurement is not None
            else hashlib.sha384(b"ratls simulated guest launch").digest(),
            "host_data": bytes(32),
            "id_key_digest": bytes(48),
            "author_key_digest": bytes(48),
            "report_id": secrets.token_bytes(32),
            "report_id_ma": b"\xff" * 32,
            "reported_tcb": self.reported_tcb,
            "cpuid_fam_id": None if v2 else family,
            "cpuid_mod_id": None if v2 else model,
            "cpuid_step": None if v2 else stepping,
            "chip_id": self.chip_id,
            "committed_tcb": self.reported_tcb,
            "current_build": build,
            "current_minor": minor,
            "current_major": major,
            "committed_build": build,
            "committed_minor": minor,
            "committed_major": major,
            "launch_tcb": self.reported_tcb,
            "launch_mit_vector": 0 if version >= 5 else None,
            "current_mit_vector": 0 if version >= 5 else None,
            "signature_r": 0,
            "signature_s": 0,
            "product": self.product,
        }

    def report_bytes_steps(
        self,
        *,
        report_data: bytes,
        version: int = 3,
        vmpl: int = 0,
        measurement: bytes | None = None,
        policy: GuestPolicy | None = None,
    ) -> Steps[bytes]:
        """The raw signed report :meth:`build_report_steps` makes, without the objects.

        An attester that makes a report per connection only needs its bytes.  The
        report with every default field is built and checked by
        :meth:`build_report_steps`'s own path once per (version, vmpl, measurement,
        policy) and kept unsigned; each call then writes REPORT_DATA and a fresh random
        REPORT_ID into a copy and signs it, so the result is byte for byte what the full
        path gives for the same REPORT_ID.

        Args:
            report_data: the 64 bytes of REPORT_DATA.
            version: report version (2, 3, 4 or 5).
            vmpl: the VMPL the report is for.
            measurement: the launch digest (a fixed simulated one by default).
            policy: the guest policy.

        Returns:
            The 1184-byte signed report.

        Raises:
            ValueError: ``report_data`` is not 64 bytes, or a field is invalid.
        """
        if len(report_data) != _REPORT_DATA_SIZE:
            raise ValueError(f"REPORT_DATA must be {_REPORT_DATA_SIZE} bytes")
        key = (version, vmpl, measurement, policy)
        template = self._templates.get(key)
        if template is None:
            report = SnpReport(
                **self._report_fields(
                    report_data=bytes(_REPORT_DATA_SIZE),
                    version=version,
                    vmpl=vmpl,
                    measurement=measurement,
                    policy=policy,
                )
            )
            self._check_consistent(report)
            template = report.to_bytes()
            if len(self._templates) >= _TEMPLATES_KEPT:
                self._templates.clear()
            self._templates[key] = template
        raw = bytearray(template)
        raw[_REPORT_DATA] = report_data
        raw[_REPORT_ID] = secrets.token_bytes(32)
        r, s = yield from self._signature_steps(bytes(raw[:SNP_SIGNED_SIZE]))
        raw[_SIGNATURE_R] = r.to_bytes(_SIGNATURE_COMPONENT, "little")
        raw[_SIGNATURE_S] = s.to_bytes(_SIGNATURE_COMPONENT, "little")
        return bytes(raw)

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write keys, certificates and settings to ``directory`` (created if needed).

        Private keys are written unencrypted (PKCS#8 PEM) with mode 0600: they are
        simulator keys and protect nothing but the simulation's identity.

        Args:
            directory: where to write ``sp.json``, ``*.pem`` and ``*.key``.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for name, cert in (("ark", self.ark), ("ask", self.ask), ("leaf", self.leaf)):
            write_atomically(path / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        keys: tuple[tuple[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey], ...] = (
            ("ark", self._ark_key),
            ("ask", self._ask_key),
            ("leaf", self._leaf_key),
        )
        for name, key in keys:
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_atomically(path / f"{name}.key", pem, mode=0o600)
        settings = {
            "format": _SAVE_FORMAT,
            "product": self.product.value,
            "key_kind": self.key_kind.value,
            "chip_id": self.chip_id.hex(),
            "reported_tcb": self.reported_tcb.to_bytes().hex(),
            "csp_id": self.csp_id,
        }
        # Written last: a simulator whose save was cut short (a full disk) has no sp.json,
        # so load_or_generate makes a new one instead of loading half of this one.
        text = json.dumps(settings, indent=2) + "\n"
        write_atomically(path / "sp.json", text.encode("utf-8"))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SimulatedAmdSp:
        """Load a simulator saved with :meth:`save`.

        Args:
            directory: the directory :meth:`save` wrote.

        Returns:
            The simulator, with the same keys and certificates.

        Raises:
            ValueError: the directory's content is inconsistent or of another format.
            OSError: a file is missing or unreadable.
        """
        path = Path(directory)
        settings = json.loads((path / "sp.json").read_text(encoding="utf-8"))
        if not isinstance(settings, dict) or settings.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path / 'sp.json'}: not a saved simulator (format {_SAVE_FORMAT})")
        product = ProductLine(settings["product"])
        key_kind = KeyKind(settings["key_kind"])
        ark_key = _load_rsa_key(path / "ark.key")
        ask_key = _load_rsa_key(path / "ask.key")
        leaf_key = _load_ec_key(path / "leaf.key")
        certs = [
            load_amd_certificate((path / f"{n}.pem").read_bytes()) for n in ("ark", "ask", "leaf")
        ]
        public_keys: tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, ...] = (
            ark_key.public_key(),
            ask_key.public_key(),
            leaf_key.public_key(),
        )
        for cert, public_key in zip(certs, public_keys, strict=True):
            if spki_sha256(cert) != spki_sha256(public_key):
                raise ValueError(f"{path}: a certificate does not match its private key")
        csp_id = settings.get("csp_id")
        return cls(
            product=product,
            key_kind=key_kind,
            chip_id=bytes.fromhex(settings["chip_id"]),
            reported_tcb=TcbVersion.from_bytes(
                bytes.fromhex(settings["reported_tcb"]), product.tcb_layout
            ),
            csp_id=csp_id if isinstance(csp_id, str) else None,
            ark=certs[0],
            ask=certs[1],
            leaf=certs[2],
            ark_key=ark_key,
            ask_key=ask_key,
            leaf_key=leaf_key,
        )

    @classmethod
    def load_or_generate(
        cls,
        directory: str | os.PathLike[str],
        product: ProductLine,
        *,
        key_kind: KeyKind = KeyKind.VCEK,
    ) -> SimulatedAmdSp:
        """Load the simulator saved in ``directory``, or generate and save one there.

        Args:
            directory: the simulated machine's state directory.
            product: the product line (used when generating; checked when loading).
            key_kind: VCEK or VLEK (idem).

        Returns:
            The simulator.

        Raises:
            ValueError: the saved simulator is for another product or key kind.
        """
        if (Path(directory) / "sp.json").exists():
            sp = cls.load(directory)
            if sp.product is not product or sp.key_kind is not key_kind:
                raise ValueError(
                    f"{directory} holds a {sp.product.value} {sp.key_kind.name} simulator, "
                    f"not {product.value} {key_kind.name}"
                )
            return sp
        sp = cls.generate(product, key_kind=key_kind)
        sp.save(directory)
        return sp


def _load_rsa_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: expected an RSA private key")
    return key


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return key


def _normalise_chip_id(product: ProductLine, chip_id: bytes | None) -> bytes:
    turin = product.tcb_layout is TcbLayout.TURIN
    if chip_id is None:
        return secrets.token_bytes(8) + bytes(56) if turin else secrets.token_bytes(64)
    if turin and len(chip_id) == 8:
        return chip_id + bytes(56)
    if len(chip_id) != 64:
        raise ValueError("chip_id must be 64 bytes (or 8 on Turin)")
    if turin and any(chip_id[8:]):
        raise ValueError("a Turin chip ID has 8 significant bytes; bytes 8..63 must be zero")
    return chip_id


def _leaf_extensions(
    product: ProductLine, key_kind: KeyKind, tcb: TcbVersion, chip_id: bytes, csp_id: str
) -> list[tuple[x509.ObjectIdentifier, bytes]]:
    """The 3704.1.* extensions of a VCEK/VLEK, as (OID, extnValue contents)."""
    turin = product.tcb_layout is TcbLayout.TURIN
    out: list[tuple[x509.ObjectIdentifier, bytes]] = [
        (AmdOID.STRUCT_VERSION, der_integer(1 if turin else 0)),
        (AmdOID.PRODUCT_NAME, der_tlv(0x16, product.value.encode("ascii"))),
        (AmdOID.BL_SPL, _u8(tcb.bootloader)),
        (AmdOID.TEE_SPL, _u8(tcb.tee)),
        (AmdOID.SNP_SPL, _u8(tcb.snp)),
    ]
    if not turin:
        out += [(oid, _u8(0)) for oid in (AmdOID.SPL_4, AmdOID.SPL_5, AmdOID.SPL_6, AmdOID.SPL_7)]
    out.append((AmdOID.UCODE_SPL, _u8(tcb.microcode)))
    if turin:
        out.append((AmdOID.FMC_SPL, _u8(tcb.fmc or 0)))
    if key_kind is KeyKind.VCEK:
        out.append((AmdOID.HW_ID, chip_id[:8] if turin else chip_id))
    else:
        out.append((AmdOID.CSP_ID, der_tlv(0x16, csp_id.encode("ascii"))))
    return out


@functools.cache
def _cached_ca_keys(
    product: ProductLine,
) -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """One ARK, ASK and ASVK key per product for the whole process (RSA-4096 is slow)."""
    ark, ask, asvk = (_new_rsa_key() for _ in range(3))
    return ark, ask, asvk


def _new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)


@functools.cache
def simulated_amd_sp(product: ProductLine, key_kind: KeyKind = KeyKind.VCEK) -> SimulatedAmdSp:
    """A process-wide simulator for ``product`` and ``key_kind`` (for tests and demos).

    The VCEK and VLEK simulators of one product share their ARK key, as on real hardware.
    The instance is cached, so its identity (chip ID, keys) is stable within a process;
    use :meth:`SimulatedAmdSp.load_or_generate` to keep it across processes.

    Args:
        product: the product line.
        key_kind: VCEK (default) or VLEK.

    Returns:
        The shared simulator.
    """
    ark_key, ask_key, asvk_key = _cached_ca_keys(product)
    return SimulatedAmdSp.generate(
        product,
        key_kind=key_kind,
        ark_key=ark_key,
        ask_key=asvk_key if key_kind is KeyKind.VLEK else ask_key,
    )
