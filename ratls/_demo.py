"""``ratls demo``: the end-to-end demonstration on the simulator.

It boots a simulated confidential VM (a software AMD-SP with its own ARK/ASK/VCEK chain),
lets a verifier challenge it with a fresh nonce, verifies the report against the pinned
root and appraises it under examples/policy.toml's rules, prints the verified claims, and
then shows the ways a bad peer is refused: an untrusted root, a tampered image, a debug
guest and a replayed report.  Every refusal names the claim, the expected and the actual
value.
"""

from __future__ import annotations

import secrets
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from ._errors import EvidenceVerificationError
from ._policy import Policy, SnpPolicy, TrustPolicy
from ._snp_report import GuestPolicy, ProductLine
from ._snp_verify import SnpEndorsements
from ._verify import verify_snp_attestation

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._result import AttestationResult
    from ._snp_report import SnpReport
    from .sim import SimulatedAmdSp

__all__ = ["run_demo"]

_STEP: Final = "==>"


def _say(message: str) -> None:
    print(f"{_STEP} {message}", flush=True)


def _show_result(result: AttestationResult) -> None:
    report = result.snp.report
    rows = (
        ("trust anchor", f"{result.trust_anchor} (the policy trusts simulated hardware)"),
        ("product", f"{result.snp.product.value}, report version {report.version}"),
        ("signing key", f"{result.snp.key_kind.name}, chip {report.chip_id.hex()[:16]}..."),
        ("vmpl", str(report.vmpl)),
        ("measurement", report.measurement.hex()),
        ("reported tcb", str(report.reported_tcb)),
        ("debug", str(report.policy.debug)),
        ("report data", report.report_data.hex()[:32] + "... (the verifier's nonce)"),
        ("policy", f"sha256:{result.policy_digest}"),
    )
    for name, value in rows:
        print(f"      {name:<13} {value}")


def run_demo(*, product_name: str = "Genoa") -> int:
    """Run the demo; returns 0 when every step behaved as expected."""
    from .sim import SimulatedAmdSp

    product = ProductLine(product_name)
    started = time.monotonic()
    _say(f"booting a simulated {product.value} confidential VM (software AMD-SP, new chip keys)")
    sim = SimulatedAmdSp.generate(product)
    endorsements = SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)
    print(f"      ARK {sim.ark_spki_sha256.hex()[:32]}... (simulator, not an AMD root)")

    trusted_measurement = sim.build_report(report_data=bytes(64)).measurement
    policy = Policy(
        trust=TrustPolicy(simulated_hardware=True),
        snp=SnpPolicy(measurements=frozenset({trusted_measurement}), minimum_version=(1, 55)),
    )

    nonce = secrets.token_bytes(64)
    _say("verifier sends a fresh 64-byte nonce; the guest asks its AMD-SP for a report")
    report = sim.build_report(report_data=nonce)
    now = datetime.now(UTC)
    result = verify_snp_attestation(
        report.to_bytes(), endorsements, policy=policy, at=now, expected_report_data=nonce
    )
    _say("PASS: report verified (VCEK -> ASK -> ARK, ECDSA P-384) and appraised")
    _show_result(result)

    failures = 0
    failures += _expect_refusal(
        "the same evidence under a policy that does not trust simulated hardware",
        lambda: verify_snp_attestation(
            report.to_bytes(),
            endorsements,
            policy=Policy(snp=SnpPolicy(measurements=frozenset({trusted_measurement}))),
            at=now,
            expected_report_data=nonce,
        ),
    )
    failures += _expect_refusal(
        "a guest launched from a tampered image",
        lambda: _verify(
            sim, sim.build_report(report_data=nonce, measurement=bytes(48)), policy, nonce
        ),
    )
    failures += _expect_refusal(
        "a guest whose policy allows debugging",
        lambda: _verify(
            sim, sim.build_report(report_data=nonce, policy=GuestPolicy(debug=True)), policy, nonce
        ),
    )
    failures += _expect_refusal(
        "the first report replayed against a new nonce",
        lambda: _verify(sim, report, policy, secrets.token_bytes(64)),
    )
    elapsed = time.monotonic() - started
    if failures:
        _say(f"demo FAILED: {failures} bad peer(s) were not refused")
        return 1
    _say(f"demo complete in {elapsed:.1f} s: 1 peer admitted, 4 refused with their reasons")
    return 0


def _verify(sim: SimulatedAmdSp, report: SnpReport, policy: Policy, nonce: bytes) -> object:
    endorsements = SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)
    return verify_snp_attestation(
        report.to_bytes(),
        endorsements,
        policy=policy,
        at=datetime.now(UTC),
        expected_report_data=nonce,
    )


def _expect_refusal(what: str, attempt: Callable[[], object]) -> int:
    _say(f"trying {what}")
    try:
        attempt()
    except EvidenceVerificationError as exc:
        print(f"      REFUSED {exc}")
        return 0
    print(f"      NOT REFUSED: {what} was accepted", file=sys.stderr)
    return 1
