"""SPDM over loopback: time to a secured session and session messages per second.

A ratls SPDM responder (simulated Genoa confidential VM, ECDSA P-384 key in an evidence
certificate) serves on 127.0.0.1; a requester connects, authenticates it (VCA, DIGESTS,
CERTIFICATE, CHALLENGE, signed MEASUREMENTS with fresh SNP evidence), opens a secured
session (KEY_EXCHANGE, FINISH) and then exchanges messages inside it.  Prints figures;
asserts nothing.  The reference measured in the same run is the same connection setup
without the TEE evidence checks (trust anchor mode, i.e. plain SPDM device
authentication), so the ratio shows what the TEE part costs.

Usage: .venv/bin/python bench/bench_spdm.py [--sessions 20] [--messages 500]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import trio

from ratls._policy import Policy, SnpPolicy, TrustPolicy
from ratls._snp_report import ProductLine
from ratls.sim import simulated_amd_sp
from ratls.spdm import (
    Responder,
    SimulatedSnpAttester,
    SpdmTrust,
    TeeResponderIdentity,
    TransportKind,
    open_spdm_session,
    serve_spdm_responder,
)


async def run(sessions: int, messages: int) -> None:
    sp = simulated_amd_sp(ProductLine.GENOA)
    identity = TeeResponderIdentity.create(SimulatedSnpAttester(sp), now=datetime.now(UTC))
    kind = TransportKind.MCTP
    evidence_trust = SpdmTrust(
        policy=Policy(
            trust=TrustPolicy(simulated_hardware=True),
            snp=SnpPolicy(allow_any_measurement=True),
        )
    )
    anchor_trust = SpdmTrust(trust_anchor=identity.certificate_der)

    def make() -> Responder:
        return Responder(identity.responder_config(binding=kind.binding))

    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_spdm_responder(
                make, kind=kind, port=0, task_status=task_status
            )
        )
        print(f"SPDM 1.2 over 127.0.0.1 ({kind.value} framing), responder ECDSA P-384")
        timings: dict[str, float] = {}
        for label, trust in (("TEE evidence", evidence_trust), ("trust anchor", anchor_trust)):
            start = time.perf_counter()
            for _ in range(sessions):
                session = await open_spdm_session("127.0.0.1", port, transport=kind, trust=trust)
                await session.aclose()
            per = (time.perf_counter() - start) / sessions
            timings[label] = per
            print(f"  time to a secured session, {label:<13} {per * 1e3:8.2f} ms")
        ratio = timings["trust anchor"] / timings["TEE evidence"]
        print(f"  TEE evidence / trust anchor (rate)    {ratio:8.2f} x")

        session = await open_spdm_session("127.0.0.1", port, transport=kind, trust=evidence_trust)
        payload = b"x" * 64
        start = time.perf_counter()
        for _ in range(messages):
            await session.send(payload)
            await session.receive()
        elapsed = time.perf_counter() - start
        print(f"  application data round trips          {messages / elapsed:8.0f} /s (64 B)")
        start = time.perf_counter()
        for _ in range(messages):
            await session.heartbeat()
        elapsed = time.perf_counter() - start
        print(f"  HEARTBEAT round trips                 {messages / elapsed:8.0f} /s")
        await session.aclose()
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    trio.run(run, args.sessions, args.messages)


if __name__ == "__main__":
    main()
