"""How fast is SEV-SNP verification?  Prints figures; asserts nothing.

Measures, on the simulator's evidence (same formats and algorithms as AMD's):

* reports verified per second with a cold chain (every verification re-checks the whole
  ARK -> ASK -> VCEK chain, as a one-shot CLI does) and with a cached chain (the chain is
  verified once and only the report signature and consistency checks run per report, as a
  long-running verifier does);
* the cost split: parsing, one ECDSA P-384 report signature, one RSA-4096 PSS certificate
  signature, and the policy appraisal.

Usage: .venv/bin/python bench/bench_snp.py [--seconds 2] [--product genoa]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ratls import _snp_verify as snp_verify
from ratls._amd_certs import verify_amd_chain, verify_report_signature
from ratls._policy import Policy, SnpPolicy, TrustPolicy
from ratls._snp_report import ProductLine, parse_snp_report
from ratls._snp_verify import SnpEndorsements, appraise_snp_report, verify_snp_report
from ratls.sim import simulated_amd_sp

if TYPE_CHECKING:
    from collections.abc import Callable


def rate(label: str, fn: Callable[[], object], seconds: float) -> float:
    """Run fn repeatedly for about `seconds`; print and return calls per second."""
    fn()  # warm up
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        fn()
        count += 1
    elapsed = time.perf_counter() - start
    per_second = count / elapsed
    print(f"{label:<48} {per_second:>10.1f} /s   {1e6 / per_second:>9.1f} us each")
    return per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--product", default="Genoa", choices=[p.value for p in ProductLine])
    args = parser.parse_args()

    product = ProductLine(args.product)
    sim = simulated_amd_sp(product)
    report = sim.build_report(report_data=bytes(64))
    raw = report.to_bytes()
    endorsements = SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)
    anchors = sim.anchors()
    now = datetime.now(UTC)
    policy = Policy(
        trust=TrustPolicy(simulated_hardware=True),
        snp=SnpPolicy(measurements=frozenset({report.measurement})),
    )
    verified = verify_snp_report(raw, endorsements, anchors=anchors, at=now)
    chain = verified.chain

    print(f"SEV-SNP verification, simulated {product.value}, report version {report.version}")

    def cold_verification() -> None:
        snp_verify._chain_cache.clear()  # as a one-shot CLI does: the whole chain each time
        verify_snp_report(raw, endorsements, anchors=anchors, at=now)

    cold = rate("full verification, cold chain", cold_verification, args.seconds)
    warm = rate(
        "full verification, remembered chain",
        lambda: verify_snp_report(raw, endorsements, anchors=anchors, at=now),
        args.seconds,
    )
    print(f"{'remembered / cold':<48} {warm / cold:>10.1f} x")

    def floor() -> None:
        parsed = parse_snp_report(raw)
        verify_report_signature(parsed, chain.leaf_public_key)

    rate("floor: parse + report ECDSA only", floor, args.seconds)
    print()
    print("cost split")
    rate("  parse_snp_report", lambda: parse_snp_report(raw), args.seconds)
    signature = report.signature_der()
    signed = report.signed_bytes()
    public_key = chain.leaf_public_key
    rate(
        "  ECDSA P-384 verify (report signature)",
        lambda: public_key.verify(signature, signed, ec.ECDSA(hashes.SHA384())),
        args.seconds,
    )
    ask_key = sim.ask.public_key()
    assert isinstance(ask_key, rsa.RSAPublicKey)
    leaf = sim.leaf
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    rate(
        "  RSA-4096 PSS verify (one certificate)",
        lambda: ask_key.verify(leaf.signature, leaf.tbs_certificate_bytes, pss, hashes.SHA384()),
        args.seconds,
    )
    rate(
        "  verify_amd_chain (3 certificates)",
        lambda: verify_amd_chain(
            leaf=sim.leaf,
            intermediate=sim.ask,
            root=sim.ark,
            product=product,
            key_kind=chain.key_kind,
            anchors=anchors,
            at=now,
        ),
        args.seconds,
    )
    rate("  appraise_snp_report", lambda: appraise_snp_report(verified, policy.snp), args.seconds)


if __name__ == "__main__":
    main()
