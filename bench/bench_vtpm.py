"""How fast is vTPM evidence?  Prints figures; asserts nothing.

Measures, with a real vTPM (swtpm) in a simulated SVSM VM:

* quotes verified per second (``verify_quote``: AK attributes, RSASSA-2048 signature,
  qualifying data, PCR digest over 8 SHA-256 PCRs), against the raw RSA-2048 PKCS#1 v1.5
  verification it is built on (the floor) and, when installed, ``tpm2_checkquote`` run on
  the same files (what a shell-script verifier pays per quote);
* the full SNP -> EK -> AK -> quote chain (``verify_vtpm_evidence`` with a policy and an
  activation), cold (the first verification in this process, bundle decoding included) and
  warm (the same bundle again and again);
* the cost of producing evidence with swtpm: one quote plus reading its PCRs, one
  credential activation, and booting a VM (swtpm start, EK and AK creation).

Usage: .venv/bin/python bench/bench_vtpm.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ratls._cli_tpm import encode_tpm2_tools_pcrs
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._snp_report import ProductLine
from ratls._tpm_quote import verify_quote
from ratls._tpm_structs import TpmlPcrSelection, parse_tpm2b_public, parse_tpmt_signature
from ratls._vtpm_evidence import begin_activation, parse_vtpm_evidence, verify_vtpm_evidence
from ratls.sim import simulated_amd_sp
from ratls.sim._svsm import DEFAULT_PCR_SELECTION, SimulatedSvsm

if TYPE_CHECKING:
    from collections.abc import Callable

MEASUREMENT = hashlib.sha384(b"bench launch").digest()
BINDER = hashlib.sha256(b"bench binder").digest()


def rate(label: str, fn: Callable[[], object], seconds: float) -> float:
    """Run fn repeatedly for about `seconds`; print and return calls per second."""
    fn()  # warm up
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        fn()
        count += 1
    per_second = count / (time.perf_counter() - start)
    print(f"{label:<52} {per_second:>10.1f} /s   {1e6 / per_second:>10.1f} us each")
    return per_second


def timed(label: str, fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` calls, printed in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    median = statistics.median(samples)
    print(f"{label:<52} {median * 1e3:>10.2f} ms (median of {repeat})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if shutil.which("swtpm") is None:
        print("swtpm is not installed; nothing to measure")
        return

    sp = simulated_amd_sp(ProductLine.GENOA)
    boot_start = time.perf_counter()
    with SimulatedSvsm(sp, measurement=MEASUREMENT) as vm:
        boot = time.perf_counter() - boot_start
        evidence = vm.collect_evidence(binder=BINDER)
        challenge = begin_activation(evidence)
        evidence = evidence.with_activation_proof(vm.activate(challenge.credential))
        encoded = evidence.to_bytes()
        policy = Policy(
            snp=SnpPolicy(measurements=frozenset({MEASUREMENT})),
            vtpm=VtpmPolicy(pcrs={"sha256": {7: frozenset({bytes(32)})}}),
            trust=TrustPolicy(simulated_hardware=True),
        )
        now = datetime.now(UTC)

        def chain() -> object:
            return verify_vtpm_evidence(
                parse_vtpm_evidence(encoded),
                policy=policy,
                at=now,
                expected_binder=BINDER,
                activation=challenge,
            )

        print("== full chain (SNP report -> EK -> AK -> quote, policy, activation) ==")
        cold_start = time.perf_counter()
        chain()
        cold = time.perf_counter() - cold_start
        print(f"{'cold: first verification in this process':<52} {cold * 1e3:>10.2f} ms")
        warm = rate("warm: the same bundle again", chain, args.seconds)
        print(f"{'cold / warm':<52} {cold * warm:>10.1f} x")

        print("== quote verification ==")
        ak = parse_tpm2b_public(evidence.ak_public)
        pcrs = evidence.pcr_mapping()

        def one_quote() -> object:
            return verify_quote(
                attest=evidence.quote_attest,
                signature=evidence.quote_signature,
                ak_public=ak,
                expected_extra_data=BINDER,
                pcr_values=pcrs,
            )

        quotes = rate("verify_quote", one_quote, args.seconds)
        key = ak.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        sig = parse_tpmt_signature(evidence.quote_signature).sig

        def raw_rsa() -> None:
            key.verify(sig, evidence.quote_attest, padding.PKCS1v15(), hashes.SHA256())

        floor = rate("reference: raw RSA-2048 PKCS#1 v1.5 verify", raw_rsa, args.seconds)
        print(f"{'verify_quote / raw RSA verify':<52} {quotes / floor:>10.2f}")
        tool = shutil.which("tpm2_checkquote")
        if tool is not None:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                (d / "ak.pem").write_bytes(
                    key.public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                )
                (d / "q.msg").write_bytes(evidence.quote_attest)
                (d / "q.sig").write_bytes(evidence.quote_signature)
                selection = TpmlPcrSelection.from_mapping(DEFAULT_PCR_SELECTION)
                (d / "q.pcrs").write_bytes(encode_tpm2_tools_pcrs(selection, pcrs))
                argv = [tool, "-u", str(d / "ak.pem"), "-m", str(d / "q.msg")]
                argv += ["-s", str(d / "q.sig"), "-f", str(d / "q.pcrs"), "-g", "sha256"]
                argv += ["-q", BINDER.hex()]

                def checkquote() -> None:
                    subprocess.run(argv, check=True, capture_output=True)  # noqa: S603

                reference = rate("reference: tpm2_checkquote (one process each)", checkquote, 1.0)
                print(f"{'verify_quote / tpm2_checkquote':<52} {quotes / reference:>10.1f}")

        print("== producing evidence with swtpm ==")
        print(f"{'boot: swtpm start, EK + AK creation':<52} {boot * 1e3:>10.2f} ms")
        timed("quote + PCR read (8 SHA-256 PCRs)", lambda: vm.quote(BINDER), 50)
        timed(
            "collect_evidence (quote, PCRs, SVSM report)",
            lambda: vm.collect_evidence(binder=BINDER),
            20,
        )

        def activation() -> None:
            fresh = begin_activation(evidence)
            vm.activate(fresh.credential)

        timed("begin_activation + TPM2_ActivateCredential", activation, 20)


if __name__ == "__main__":
    main()
