"""Requester against responder over real loopback sockets, for every algorithm set both offer.

The requester offers one choice per algorithm type; the responder (P-256 or P-384 key in
an evidence certificate) must negotiate exactly that choice, and the whole session (TEE
evidence checks, KEY_EXCHANGE, FINISH, application data, HEARTBEAT, KEY_UPDATE) must work.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
import trio

from ratls._policy import Policy, SnpPolicy, TrustPolicy
from ratls._snp_report import ProductLine
from ratls.sim import simulated_amd_sp
from ratls.spdm import (
    AeadAlgorithm,
    BaseAsymAlgo,
    BaseHashAlgo,
    DheGroup,
    RequesterConfig,
    Responder,
    SimulatedSnpAttester,
    SpdmTrust,
    TeeResponderIdentity,
    TransportKind,
    open_spdm_session,
    serve_spdm_responder,
)

TRUST = SpdmTrust(
    policy=Policy(
        trust=TrustPolicy(simulated_hardware=True), snp=SnpPolicy(allow_any_measurement=True)
    )
)
CURVES = {
    "p256": BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256,
    "p384": BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384,
}
HASHES = [BaseHashAlgo.TPM_ALG_SHA_256, BaseHashAlgo.TPM_ALG_SHA_384]
DHE = [DheGroup.SECP_256_R1, DheGroup.SECP_384_R1]
AEADS = [AeadAlgorithm.AES_256_GCM, AeadAlgorithm.CHACHA20_POLY1305]
SETS = list(itertools.product(CURVES, HASHES, DHE, AEADS))


@pytest.fixture(scope="module")
def identities() -> dict[str, TeeResponderIdentity]:
    attester = SimulatedSnpAttester(simulated_amd_sp(ProductLine.GENOA))
    now = datetime.now(UTC)
    return {curve: TeeResponderIdentity.create(attester, curve=curve, now=now) for curve in CURVES}


@pytest.mark.parametrize(
    ("curve", "hash_algo", "dhe", "aead"),
    SETS,
    ids=[f"{c}-{h.name}-{d.name}-{a.name}" for c, h, d, a in SETS],
)
async def test_session_for_each_algorithm_set(
    identities: dict[str, TeeResponderIdentity],
    curve: str,
    hash_algo: BaseHashAlgo,
    dhe: DheGroup,
    aead: AeadAlgorithm,
) -> None:
    identity = identities[curve]
    kind = TransportKind.MCTP

    def make() -> Responder:
        return Responder(identity.responder_config(binding=kind.binding))

    config = RequesterConfig(
        base_asym_algo=CURVES[curve],
        base_hash_algo=hash_algo,
        dhe_groups=dhe,
        aead_algorithms=aead,
        binding=kind.binding,
    )
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_spdm_responder(
                make, kind=kind, port=0, task_status=task_status
            )
        )
        async with await open_spdm_session(
            "127.0.0.1", port, transport=kind, trust=TRUST, config=config
        ) as session:
            assert session.established
            await session.send(b"ping")
            assert await session.receive() == b"ping"
            await session.heartbeat()
            await session.key_update()
            await session.send(b"after key update")
            assert await session.receive() == b"after key update"
        nursery.cancel_scope.cancel()
