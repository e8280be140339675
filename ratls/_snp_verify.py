"""SEV-SNP evidence verification: authenticity first, then appraisal against a policy.

Two steps, kept apart on purpose:

1. :func:`verify_snp_report` establishes that a report is *authentic*: strict format,
   the AMD chain to a pinned root (ARK -> ASK/ASVK -> VCEK/VLEK), the report signature,
   and the consistency between the report and the key that signed it (REPORTED_TCB equals
   the VCEK's TCB extensions, CHIP_ID equals its hwID, the signing-key kind matches the
   certificate).  The result, :class:`VerifiedSnpReport`, can only be created here.
2. :func:`appraise_snp_report` decides whether authentic claims are *acceptable* under an
   :class:`~ratls._policy.SnpPolicy`, raising an error that names the claim, the expected
   value and the actual one for the first check that fails.

Nothing here does I/O: certificates and the verification time are passed in.
"""

from __future__ import annotations

import functools
import hmac
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from cryptography import x509

from ._amd_certs import (
    AmdKeyExtensions,
    AmdTrustAnchors,
    KeyKind,
    VerifiedAmdChain,
    load_amd_certificate,
    parse_amd_key_extensions,
    report_signature_steps,
    verify_amd_chain,
)
from ._errors import (
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    EvidenceVerificationError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyViolation,
    TcbTooLow,
)
from ._identity_memo import CERTIFICATE_OBJECTS, IdentityMemo
from ._nopublic import NoPublicConstructor
from ._snp_certtable import (
    CERT_TABLE_GUID_ARK,
    CERT_TABLE_GUID_ASK,
    CERT_TABLE_GUID_VCEK,
    CERT_TABLE_GUID_VLEK,
    parse_cert_table,
)
from ._snp_report import ProductLine, SigningKey, SnpReport, TcbVersion, parse_snp_report
from ._steps import run_inline

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from ._policy import SnpPolicy, TcbMinimum
    from ._steps import Steps

__all__ = [
    "SnpEndorsements",
    "VerifiedSnpReport",
    "appraise_snp_report",
    "chain_cache_counts",
    "product_from_name",
    "verify_snp_report",
    "verify_snp_report_steps",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SnpEndorsements:
    """The certificates that endorse a report's signing key.

    Attributes:
        leaf: the VCEK or VLEK that signed the report.
        intermediate: the ASK (VCEK path) or ASVK (VLEK path).
        root: the ARK as supplied with the evidence.  It is only a convenience: the
            verifier accepts it only if its public key is pinned (or explicitly trusted).
    """

    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate

    @classmethod
    def from_cert_table(
        cls, table: bytes, *, root: x509.Certificate | None = None
    ) -> SnpEndorsements:
        """Pick the chain out of an extended-report certificate table (GHCB GUID table).

        Args:
            table: the raw table, as returned by the kernel's auxblob / SNP_GET_EXT_REPORT.
            root: an ARK to use when the table carries none.

        Raises:
            EvidenceFormatError: the table is malformed or lacks a certificate.
        """
        parsed = parse_cert_table(table)
        leaf = parsed.get(CERT_TABLE_GUID_VCEK) or parsed.get(CERT_TABLE_GUID_VLEK)
        intermediate = parsed.get(CERT_TABLE_GUID_ASK)
        root_der = parsed.get(CERT_TABLE_GUID_ARK)
        if leaf is None:
            raise EvidenceFormatError("no VCEK or VLEK entry", structure="certificate table")
        if intermediate is None:
            raise EvidenceFormatError("no ASK/ASVK entry", structure="certificate table")
        if root_der is not None:
            root = load_amd_certificate(root_der)
        if root is None:
            raise EvidenceFormatError("no ARK entry", structure="certificate table")
        return cls(
            leaf=load_amd_certificate(leaf),
            intermediate=load_amd_certificate(intermediate),
            root=root,
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedSnpReport(metaclass=NoPublicConstructor):
    """An SNP report whose signature and endorsement chain were verified.

    Only :func:`verify_snp_report` creates these.  Holding one means: the report is
    well-formed, it was signed by a VCEK/VLEK that chains to a trusted ARK for its product,
    and its TCB and chip identity agree with that key.  It says nothing yet about whether
    the claims are acceptable; see :func:`appraise_snp_report`.
    """

    report: SnpReport
    chain: VerifiedAmdChain
    product: ProductLine

    @property
    def key_kind(self) -> KeyKind:
        """Which kind of key signed the report (VCEK or VLEK)."""
        return self.chain.key_kind

    @property
    def trust_anchor(self) -> str:
        """Label of the root the chain ends in: ``"AMD"`` or ``"simulator"``."""
        return self.chain.anchor_label


def product_from_name(name: str) -> ProductLine:
    """Map a VCEK productName or user-supplied name ("Milan-B0", "genoa") to a product line.

    Raises:
        EvidenceFormatError: the name is not a known product.
    """
    base = name.split("-", 1)[0].strip().lower()
    for product in ProductLine:
        if product.value.lower() == base:
            return product
    raise EvidenceFormatError(
        f"unknown product name {name!r}; expected Milan, Genoa or Turin",
        structure="productName",
    )


def verify_snp_report(
    report: bytes | SnpReport,
    endorsements: SnpEndorsements,
    *,
    anchors: AmdTrustAnchors,
    at: datetime,
    product: ProductLine | None = None,
) -> VerifiedSnpReport:
    """Verify that an SNP attestation report is authentic.

    :func:`verify_snp_report_steps`, with every call made here; see there.
    """
    return run_inline(
        verify_snp_report_steps(report, endorsements, anchors=anchors, at=at, product=product)
    )


def verify_snp_report_steps(
    report: bytes | SnpReport,
    endorsements: SnpEndorsements,
    *,
    anchors: AmdTrustAnchors,
    at: datetime,
    product: ProductLine | None = None,
) -> Steps[VerifiedSnpReport]:
    """Verify that an SNP attestation report is authentic (as :mod:`ratls._steps`).

    The report signature's ECDSA verification is yielded, so a driver may make it on
    another core; the checks and their order are those of :func:`verify_snp_report`.

    Args:
        report: the raw 1184-byte report, or an already parsed one.
        endorsements: the VCEK/VLEK, ASK/ASVK and ARK certificates.
        anchors: the trusted ARKs per product (AMD's pins, plus the simulator's only if the
            caller's policy trusts simulated hardware).
        at: the time at which certificate validity is judged.
        product: the product line, needed only for version-2 reports that do not name it
            (otherwise taken from the VCEK's productName).

    Returns:
        The verified report.

    Raises:
        EvidenceFormatError: the report or a certificate is malformed.
        CertificateChainError: the chain does not lead to a trusted root.
        SignatureMismatch: the report signature does not verify.
        EvidenceVerificationError: TCB, chip ID or key kind disagree with the certificate.
    """
    extensions = _leaf_extensions(endorsements.leaf)
    named_product = product_from_name(extensions.product_name)
    if product is not None and product is not named_product:
        raise CertificateChainError(
            "vcek.product_name",
            expected=product.value,
            actual=extensions.product_name,
            detail="the signing key belongs to another product line",
        )
    raw = report.to_bytes() if isinstance(report, SnpReport) else report
    # Version-2 reports do not name their product; the signing key's productName does.  For
    # later versions the CPUID fields name it, and must agree with the key (checked below).
    is_v2 = raw[:4] == (2).to_bytes(4, "little")
    parsed = parse_snp_report(raw, product=product or (named_product if is_v2 else None))
    report_product = parsed.product or named_product
    if report_product is not named_product:
        raise CertificateChainError(
            "vcek.product_name",
            expected=report_product.value,
            actual=extensions.product_name,
            detail="the report's CPUID names another product line than its signing key",
        )

    key_kind = _key_kind(parsed.signer_info.signing_key)
    chain = _verified_chain(endorsements, report_product, key_kind, anchors, at)
    yield from report_signature_steps(parsed, chain.leaf_public_key, raw=raw)
    _check_tcb_matches_key(parsed.reported_tcb, chain, report_product)
    _check_chip_id(parsed, chain)
    return VerifiedSnpReport._create(report=parsed, chain=chain, product=report_product)


#: How many verified endorsement chains to remember.  A verifier talks to a handful of
#: machines (one VCEK per chip and TCB version); 64 covers a fleet of gateways' peers while
#: keeping the memo small.  Failures are never remembered.
CHAIN_CACHE_SIZE: Final = 64

_ChainKey = tuple[
    x509.Certificate, x509.Certificate, x509.Certificate, ProductLine, KeyKind, AmdTrustAnchors
]
_chain_cache: OrderedDict[_ChainKey, tuple[VerifiedAmdChain, datetime, datetime]] = OrderedDict()
_chain_cache_lock = threading.Lock()
_chain_cache_counts = [0, 0]  # hits, misses (under _chain_cache_lock)
# The same chains filed by the ids of their objects (see _verified_chain).
_chain_by_object: dict[
    tuple[object, ...],
    tuple[
        x509.Certificate,
        x509.Certificate,
        x509.Certificate,
        AmdTrustAnchors,
        VerifiedAmdChain,
        datetime,
        datetime,
    ],
] = {}


def chain_cache_counts() -> tuple[int, int, int]:
    """(hits, misses, entries) of the verified-chain memo since the process started."""
    with _chain_cache_lock:
        return _chain_cache_counts[0], _chain_cache_counts[1], len(_chain_cache)


@functools.lru_cache(maxsize=CHAIN_CACHE_SIZE)
def _leaf_extensions_by_value(leaf: x509.Certificate) -> AmdKeyExtensions:
    """parse_amd_key_extensions, remembered per certificate (errors are not remembered)."""
    return parse_amd_key_extensions(leaf)


#: The same, answered first by certificate object (see ratls._identity_memo).
_leaf_extensions: Final = IdentityMemo(_leaf_extensions_by_value, CERTIFICATE_OBJECTS)


def _verified_chain(
    endorsements: SnpEndorsements,
    product: ProductLine,
    key_kind: KeyKind,
    anchors: AmdTrustAnchors,
    at: datetime,
) -> VerifiedAmdChain:
    """verify_amd_chain, remembered per exact certificates, product, key kind and anchors.

    Only the three RSA-PSS signatures and the certificate checks are remembered; the time
    is not: a remembered chain is used only while ``at`` lies inside the validity of all
    three certificates, so expiry is still enforced.  The report signature and everything
    else are verified every time.
    """
    leaf, intermediate, root = endorsements.leaf, endorsements.intermediate, endorsements.root
    # First by object: evidence from the same machine brings the same certificate objects
    # (load_amd_certificate remembers them per DER), and an identity check is far cheaper
    # than hashing and comparing three encodings.  The entry holds the objects, so their
    # ids stay theirs while it exists.
    fast_key = (id(leaf), id(intermediate), id(root), product, key_kind, id(anchors))
    fast = _chain_by_object.get(fast_key) if at.tzinfo is not None else None
    if (
        fast is not None
        and fast[0] is leaf
        and fast[1] is intermediate
        and fast[2] is root
        and fast[3] is anchors
        and fast[5] <= at <= fast[6]
    ):
        with _chain_cache_lock:
            _chain_cache_counts[0] += 1
        return fast[4]
    # Then by value: certificates compare and hash by their DER encoding, cheaper than
    # three SHA-256 fingerprints per verification, and just as exact.
    key: _ChainKey = (leaf, intermediate, root, product, key_kind, anchors)
    with _chain_cache_lock:
        hit = _chain_cache.get(key) if at.tzinfo is not None else None
        if hit is not None and hit[1] <= at <= hit[2]:
            _chain_cache.move_to_end(key)
            _chain_cache_counts[0] += 1
            _remember_by_object(fast_key, leaf, intermediate, root, anchors, hit)
            return hit[0]
        _chain_cache_counts[1] += 1
    chain = verify_amd_chain(
        leaf=endorsements.leaf,
        intermediate=endorsements.intermediate,
        root=endorsements.root,
        product=product,
        key_kind=key_kind,
        anchors=anchors,
        at=at,
    )
    certificates = (endorsements.leaf, endorsements.intermediate, endorsements.root)
    valid_from = max(c.not_valid_before_utc for c in certificates)
    valid_until = min(c.not_valid_after_utc for c in certificates)
    with _chain_cache_lock:
        entry = _chain_cache[key] = (chain, valid_from, valid_until)
        while len(_chain_cache) > CHAIN_CACHE_SIZE:
            _chain_cache.popitem(last=False)
        _remember_by_object(fast_key, leaf, intermediate, root, anchors, entry)
    return chain


def _remember_by_object(
    fast_key: tuple[object, ...],
    leaf: x509.Certificate,
    intermediate: x509.Certificate,
    root: x509.Certificate,
    anchors: AmdTrustAnchors,
    entry: tuple[VerifiedAmdChain, datetime, datetime],
) -> None:
    """File a verified chain under its objects too (call with _chain_cache_lock held)."""
    if len(_chain_by_object) >= CHAIN_CACHE_SIZE:
        _chain_by_object.clear()
    _chain_by_object[fast_key] = (leaf, intermediate, root, anchors, *entry)


def _key_kind(signing_key: SigningKey) -> KeyKind:
    if signing_key is SigningKey.VCEK:
        return KeyKind.VCEK
    if signing_key is SigningKey.VLEK:
        return KeyKind.VLEK
    raise EvidenceFormatError(
        "unsigned report (SIGNING_KEY = NONE)", structure="ATTESTATION_REPORT"
    )


def _check_tcb_matches_key(
    reported: TcbVersion, chain: VerifiedAmdChain, product: ProductLine
) -> None:
    """REPORTED_TCB must equal the TCB the VCEK/VLEK was derived for (checklist A10)."""
    in_cert = chain.extensions.components(product)
    in_report = reported.components()
    for name, value in in_report.items():
        cert_value = in_cert.get(name)
        if cert_value != value:
            raise EvidenceVerificationError(
                f"snp.reported_tcb.{name}",
                expected=f"{cert_value} (from the {chain.key_kind.name} certificate)",
                actual=value,
                detail="REPORTED_TCB must equal the TCB the signing key was issued for",
            )


def _check_chip_id(report: SnpReport, chain: VerifiedAmdChain) -> None:
    """CHIP_ID must equal the VCEK's hwID (checklist A11); VLEKs carry no hwID."""
    if chain.key_kind is KeyKind.VLEK:
        return
    if report.signer_info.mask_chip_key or not any(report.chip_id):
        # The chip ID was masked by the guest policy; the VCEK signature itself still binds
        # the report to one chip, and the policy can refuse masked IDs via chip_ids.
        return
    hw_id = chain.extensions.hw_id
    if hw_id is None:
        raise CertificateChainError(
            "vcek.hw_id", expected="a hwID extension", actual="none", detail="VCEK without hwID"
        )
    width = len(hw_id)
    if not hmac.compare_digest(report.chip_id[:width], hw_id) or any(report.chip_id[width:]):
        raise BindingMismatch(
            "snp.chip_id",
            expected=hw_id,
            actual=report.chip_id,
            detail="the report's CHIP_ID differs from the hwID of the VCEK that signed it",
        )


# --- appraisal ---------------------------------------------------------------------------------


def appraise_snp_report(
    verified: VerifiedSnpReport,
    policy: SnpPolicy,
    *,
    expected_report_data: bytes | None = None,
) -> None:
    """Check a verified report's claims against a policy.

    Args:
        verified: output of :func:`verify_snp_report`.
        policy: the SNP part of the appraisal policy.
        expected_report_data: the exact 64 bytes REPORT_DATA must hold (the binding to a key,
            channel or nonce), or None when the caller checks the binding itself.

    Raises:
        NonceMismatch: REPORT_DATA differs from the expected binding.
        MeasurementMismatch: the launch measurement is not in the allowlist.
        TcbTooLow: a TCB component or firmware version is below the minimum.
        PolicyViolation: any other claim the policy does not accept.
    """
    report = verified.report
    if expected_report_data is not None and not hmac.compare_digest(
        report.report_data, expected_report_data
    ):
        raise NonceMismatch(
            "snp.report_data", expected=expected_report_data, actual=report.report_data
        )
    _appraise_origin(verified, policy)
    _appraise_guest_policy(report, policy)
    _appraise_reference_values(report, policy)
    _appraise_tcb(report, policy)
    _appraise_platform(report, policy)
    _appraise_keys(report, policy)
    _appraise_mitigations(report, policy)


def _appraise_origin(verified: VerifiedSnpReport, policy: SnpPolicy) -> None:
    if verified.product.value not in policy.products:
        raise PolicyViolation(
            "snp.product", expected=sorted(policy.products), actual=verified.product.value
        )
    kind = verified.key_kind.name.lower()
    if kind not in policy.signing_keys:
        raise PolicyViolation("snp.signing_key", expected=sorted(policy.signing_keys), actual=kind)
    if policy.vmpl is not None and verified.report.vmpl != policy.vmpl:
        raise PolicyViolation("snp.vmpl", expected=policy.vmpl, actual=verified.report.vmpl)


def _appraise_guest_policy(report: SnpReport, policy: SnpPolicy) -> None:
    guest = report.policy
    forbidden = (
        ("debug", guest.debug, policy.allow_debug),
        ("migrate_ma", guest.migrate_ma, policy.allow_migration_agent),
        ("smt", guest.smt, policy.allow_smt),
        ("cxl_allow", guest.cxl_allow, policy.allow_cxl),
    )
    for name, is_set, allowed in forbidden:
        if is_set and not allowed:
            raise PolicyViolation(
                f"snp.policy.{name}",
                expected=False,
                actual=True,
                detail=f"the guest policy grants {name.upper()}, which this policy refuses",
            )
    required = (
        ("single_socket", guest.single_socket, policy.require_single_socket),
        ("mem_aes_256_xts", guest.mem_aes_256_xts, policy.require_mem_aes_256_xts),
        ("rapl_dis", guest.rapl_dis, policy.require_rapl_disabled),
        ("ciphertext_hiding", guest.ciphertext_hiding, policy.require_ciphertext_hiding),
        ("page_swap_disable", guest.page_swap_disable, policy.require_page_swap_disabled),
    )
    for name, is_set, needed in required:
        if needed and not is_set:
            raise PolicyViolation(f"snp.policy.{name}", expected=True, actual=False)
    abi = (guest.abi_major, guest.abi_minor)
    minimum = (policy.minimum_abi_major, policy.minimum_abi_minor)
    if abi < minimum:
        raise PolicyViolation(
            "snp.policy.abi", expected=f">= {minimum[0]}.{minimum[1]}", actual=f"{abi[0]}.{abi[1]}"
        )


def _appraise_reference_values(report: SnpReport, policy: SnpPolicy) -> None:
    if not policy.allow_any_measurement and not _member(report.measurement, policy.measurements):
        raise MeasurementMismatch(
            "snp.measurement",
            expected=" or ".join(sorted(m.hex() for m in policy.measurements)),
            actual=report.measurement,
        )
    exact = (
        ("host_data", report.host_data, policy.host_data),
        ("family_id", report.family_id, policy.family_id),
        ("image_id", report.image_id, policy.image_id),
    )
    for name, actual, expected in exact:
        if expected is not None and not hmac.compare_digest(actual, expected):
            raise PolicyViolation(f"snp.{name}", expected=expected, actual=actual)
    allowlists = (
        ("report_id", report.report_id, policy.report_ids),
        ("report_id_ma", report.report_id_ma, policy.report_ids_ma),
        ("chip_id", report.chip_id, policy.chip_ids),
    )
    for name, actual, accepted in allowlists:
        if accepted and not _member(actual, accepted):
            raise PolicyViolation(
                f"snp.{name}",
                expected=" or ".join(sorted(a.hex() for a in accepted)),
                actual=actual,
            )
    if report.guest_svn < policy.minimum_guest_svn:
        raise PolicyViolation(
            "snp.guest_svn", expected=f">= {policy.minimum_guest_svn}", actual=report.guest_svn
        )


def _appraise_tcb(report: SnpReport, policy: SnpPolicy) -> None:
    _tcb_at_least("snp.reported_tcb", report.reported_tcb, policy.minimum_tcb)
    _tcb_at_least("snp.launch_tcb", report.launch_tcb, policy.minimum_launch_tcb)
    # The TCB the key was issued for may lag the running firmware, never lead it.
    _tcb_not_above("snp.reported_tcb", report.reported_tcb, report.current_tcb, "CURRENT_TCB")
    current_fw = (report.current_major, report.current_minor)
    committed_fw = (report.committed_major, report.committed_minor)
    if policy.allow_provisional_firmware:
        _tcb_not_above("snp.committed_tcb", report.committed_tcb, report.current_tcb, "CURRENT_TCB")
        if (committed_fw, report.committed_build) > (current_fw, report.current_build):
            raise PolicyViolation(
                "snp.committed_version",
                expected=f"<= {_fw(current_fw, report.current_build)}",
                actual=_fw(committed_fw, report.committed_build),
            )
    else:
        if report.committed_tcb.components() != report.current_tcb.components():
            raise PolicyViolation(
                "snp.committed_tcb",
                expected=str(report.current_tcb),
                actual=str(report.committed_tcb),
                detail="provisional firmware is running; set allow_provisional_firmware to accept",
            )
        if (committed_fw, report.committed_build) != (current_fw, report.current_build):
            raise PolicyViolation(
                "snp.committed_version",
                expected=_fw(current_fw, report.current_build),
                actual=_fw(committed_fw, report.committed_build),
                detail="provisional firmware is running; set allow_provisional_firmware to accept",
            )
    if current_fw < policy.minimum_version:
        raise TcbTooLow(
            "snp.current_version",
            expected=f">= {policy.minimum_version[0]}.{policy.minimum_version[1]}",
            actual=f"{current_fw[0]}.{current_fw[1]}",
        )
    if report.current_build < policy.minimum_build:
        raise TcbTooLow(
            "snp.current_build", expected=f">= {policy.minimum_build}", actual=report.current_build
        )


def _fw(version: tuple[int, int], build: int) -> str:
    return f"{version[0]}.{version[1]} build {build}"


def _tcb_at_least(claim: str, tcb: TcbVersion, minimum: TcbMinimum) -> None:
    components = tcb.components()
    for name, floor in minimum.items():
        if name not in components:
            if name == "fmc":
                continue  # pre-Turin parts have no FMC component; the minimum does not apply
            raise PolicyViolation(f"{claim}.{name}", expected=f">= {floor}", actual="absent")
        if components[name] < floor:
            raise TcbTooLow(f"{claim}.{name}", expected=f">= {floor}", actual=components[name])


def _tcb_not_above(claim: str, tcb: TcbVersion, ceiling: TcbVersion, ceiling_name: str) -> None:
    ceilings: Mapping[str, int] = ceiling.components()
    for name, value in tcb.components().items():
        if value > ceilings[name]:
            raise PolicyViolation(
                f"{claim}.{name}",
                expected=f"<= {ceilings[name]} ({ceiling_name})",
                actual=value,
            )


def _appraise_platform(report: SnpReport, policy: SnpPolicy) -> None:
    info = report.platform_info
    rules = policy.platform
    forbidden = (
        ("smt_en", info.smt_en, rules.allow_smt),
        ("tsme_en", info.tsme_en, rules.allow_tsme),
        ("sev_tio_en", info.sev_tio_en, rules.allow_sev_tio),
    )
    for name, is_set, allowed in forbidden:
        if is_set and not allowed:
            raise PolicyViolation(f"snp.platform_info.{name}", expected=False, actual=True)
    required = (
        ("ecc_en", info.ecc_en, rules.require_ecc),
        ("rapl_dis", info.rapl_dis, rules.require_rapl_disabled),
        ("ciphertext_hiding_en", info.ciphertext_hiding_en, rules.require_ciphertext_hiding),
        ("alias_check_complete", info.alias_check_complete, rules.require_alias_check_complete),
    )
    for name, is_set, needed in required:
        if needed and not is_set:
            raise PolicyViolation(f"snp.platform_info.{name}", expected=True, actual=False)


def _appraise_keys(report: SnpReport, policy: SnpPolicy) -> None:
    author_trusted = report.signer_info.author_key_en and _member(
        report.author_key_digest, policy.trusted_author_key_digests
    )
    if policy.require_author_key and not author_trusted:
        raise PolicyViolation(
            "snp.author_key_digest",
            expected=" or ".join(sorted(d.hex() for d in policy.trusted_author_key_digests)),
            actual=report.author_key_digest
            if report.signer_info.author_key_en
            else "no author key",
        )
    if policy.require_id_block:
        id_trusted = _member(report.id_key_digest, policy.trusted_id_key_digests)
        if not (id_trusted or author_trusted):
            raise PolicyViolation(
                "snp.id_key_digest",
                expected=" or ".join(sorted(d.hex() for d in policy.trusted_id_key_digests))
                or "an ID key signed by a trusted author key",
                actual=report.id_key_digest,
            )


def _appraise_mitigations(report: SnpReport, policy: SnpPolicy) -> None:
    vectors = (
        ("launch_mit_vector", report.launch_mit_vector, policy.required_launch_mit_vector),
        ("current_mit_vector", report.current_mit_vector, policy.required_current_mit_vector),
    )
    for name, actual, required in vectors:
        if not required:
            continue
        if actual is None:
            raise PolicyViolation(
                f"snp.{name}",
                expected=f"bits {required:#x} set",
                actual=f"absent (report version {report.version})",
            )
        if actual & required != required:
            raise PolicyViolation(
                f"snp.{name}", expected=f"bits {required:#x} set", actual=f"{actual:#x}"
            )


def _member(value: bytes, accepted: frozenset[bytes]) -> bool:
    """Constant-time membership: compares against every accepted value."""
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(value, candidate)
    return found
