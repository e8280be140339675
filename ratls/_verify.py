"""Top-level verification recipes: parse, verify, appraise, and return an AttestationResult.

These combine the hazmat pieces (report parser, AMD chain, signature checks, policy
appraisal) so that a caller has little left to decide: pass the evidence, the policy and
the time, get an :class:`~ratls._result.AttestationResult` or an exception naming the
failed claim.
"""

from __future__ import annotations

import functools
import hmac
from typing import TYPE_CHECKING

from ._amd_certs import AmdTrustAnchors, is_simulated_root
from ._errors import CertificateChainError, NonceMismatch
from ._identity_memo import CERTIFICATE_OBJECTS, IdentityMemo
from ._result import AttestationResult
from ._snp_verify import appraise_snp_report, verify_snp_report_steps
from ._steps import run_inline

if TYPE_CHECKING:
    from datetime import datetime

    from cryptography import x509

    from ._policy import Policy
    from ._snp_report import ProductLine, SnpReport
    from ._snp_verify import SnpEndorsements
    from ._steps import Steps

__all__ = ["trust_anchors", "verify_snp_attestation", "verify_snp_attestation_steps"]


def trust_anchors(*, trust_simulator: bool, presented_root: x509.Certificate) -> AmdTrustAnchors:
    """The roots to accept: AMD's pinned ARKs, plus the presented simulator root if allowed.

    Trusting simulated hardware means trusting *any* root made by ratls's simulated AMD-SP:
    the simulator's keys live in plain files, so pinning one of them would add no security,
    only the illusion of it.  The result still records ``trust_anchor == "simulator"``.

    Raises:
        CertificateChainError: the presented root is a simulator root but simulated hardware
            is not trusted (a clearer message than "root not pinned").
    """
    if _is_simulated_root(presented_root):
        if not trust_simulator:
            raise CertificateChainError(
                "snp.trust_anchor",
                expected="an AMD root (pinned ARK)",
                actual="the ratls simulator root",
                detail="simulated hardware is trusted only when the policy says "
                "[trust] simulated_hardware = true (or --trust-simulator)",
            )
        return _with_simulator_root(presented_root)
    return AmdTrustAnchors.default()


# Both are pure functions of one certificate (hashed and compared by its DER), asked for
# on every verification with the same few roots, so answered first by object (see
# ratls._identity_memo).  Exceptions are not remembered.
_is_simulated_root = IdentityMemo(
    functools.lru_cache(maxsize=64)(is_simulated_root), CERTIFICATE_OBJECTS
)


@functools.lru_cache(maxsize=64)
def _with_simulator_root_by_value(root: x509.Certificate) -> AmdTrustAnchors:
    return AmdTrustAnchors.default().with_simulator_root(root)


_with_simulator_root = IdentityMemo(_with_simulator_root_by_value, CERTIFICATE_OBJECTS)


def verify_snp_attestation(
    report: bytes | SnpReport,
    endorsements: SnpEndorsements,
    *,
    policy: Policy | None,
    at: datetime,
    expected_report_data: bytes | None = None,
    product: ProductLine | None = None,
    trust_simulator: bool = False,
) -> AttestationResult:
    """Verify an SNP report and, if a policy is given, appraise it.

    Args:
        report: the raw report (or a parsed one).
        endorsements: VCEK/VLEK, ASK/ASVK and ARK.
        policy: the appraisal policy; None checks authenticity only (the result then says
            ``appraised=False``, which attested connections never accept).
        at: verification time (certificate validity).
        expected_report_data: the 64 bytes REPORT_DATA must equal, if the caller knows them.
        product: product line for version-2 reports that do not name it.
        trust_simulator: accept the simulator root even without a policy that says so
            (the CLI's ``--trust-simulator``); a policy's own setting also counts.

    Raises:
        RatlsError: any subclass, naming the failed check.
    """
    return run_inline(
        verify_snp_attestation_steps(
            report,
            endorsements,
            policy=policy,
            at=at,
            expected_report_data=expected_report_data,
            product=product,
            trust_simulator=trust_simulator,
        )
    )


def verify_snp_attestation_steps(
    report: bytes | SnpReport,
    endorsements: SnpEndorsements,
    *,
    policy: Policy | None,
    at: datetime,
    expected_report_data: bytes | None = None,
    product: ProductLine | None = None,
    trust_simulator: bool = False,
) -> Steps[AttestationResult]:
    """:func:`verify_snp_attestation` as :mod:`ratls._steps` (the ECDSA call is yielded)."""
    simulator_ok = trust_simulator or (policy is not None and policy.trust.simulated_hardware)
    anchors = trust_anchors(trust_simulator=simulator_ok, presented_root=endorsements.root)
    verified = yield from verify_snp_report_steps(
        report, endorsements, anchors=anchors, at=at, product=product
    )
    if policy is not None:
        appraise_snp_report(verified, policy.snp, expected_report_data=expected_report_data)
    elif expected_report_data is not None:
        _check_report_data(verified.report, expected_report_data)
    return AttestationResult._create(
        profile="snp",
        snp=verified,
        trust_anchor=verified.trust_anchor,
        appraised=policy is not None,
        policy_digest=policy.digest() if policy is not None else None,
        verified_at=at,
    )


def _check_report_data(report: SnpReport, expected: bytes) -> None:
    """Check only the REPORT_DATA binding (used when no policy is given)."""
    if not hmac.compare_digest(report.report_data, expected):
        raise NonceMismatch("snp.report_data", expected=expected, actual=report.report_data)
