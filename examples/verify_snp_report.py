"""Verify and appraise an SEV-SNP report with the ratls Python API.

Run it as it is to see it work on the simulator:

    .venv/bin/python examples/verify_snp_report.py

On a real verifier you would receive the report and its certificates from the guest
(``ratls snp report`` writes both) and load a policy file instead of building one here.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import ratls
from ratls.sim import simulated_amd_sp


def main() -> None:
    # The guest side: a simulated Genoa confidential VM answers a fresh challenge.
    guest = simulated_amd_sp(ratls.ProductLine.GENOA)
    nonce = secrets.token_bytes(64)
    report = guest.build_report(report_data=nonce).to_bytes()
    endorsements = ratls.SnpEndorsements(leaf=guest.leaf, intermediate=guest.ask, root=guest.ark)

    # The verifier side: which launch digests it accepts, and (for this demo only) that it
    # trusts simulated hardware.  A real policy would come from ratls.load_policy("...").
    policy = ratls.Policy(
        trust=ratls.TrustPolicy(simulated_hardware=True),
        snp=ratls.SnpPolicy(
            measurements=frozenset(
                {
                    bytes.fromhex(
                        "37449dfda6861d669f841026270024b89c5ae776be50b38abc9c01379f182628"
                        "ec68b3cf0c5e64f12916029daf4dc3da"
                    )
                }
            ),
        ),
    )
    result = ratls.verify_snp_attestation(
        report, endorsements, policy=policy, at=datetime.now(UTC), expected_report_data=nonce
    )
    print("admitted:", result.summary())

    # A replay of the same report against a new challenge is refused, with the reason.
    try:
        ratls.verify_snp_attestation(
            report,
            endorsements,
            policy=policy,
            at=datetime.now(UTC),
            expected_report_data=secrets.token_bytes(64),
        )
    except ratls.EvidenceVerificationError as exc:
        print(f"refused: {exc.claim} differs from the challenge")


if __name__ == "__main__":
    main()
