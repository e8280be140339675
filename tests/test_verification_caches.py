"""The verifier's memos: what they count, and that failures are never remembered."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway._metrics import GatewayMetrics
from ratls._bound import BoundVerifier, SimulatedSnpAttester, SimulatedVtpmAttester
from ratls._caches import CacheStats, verification_cache_stats
from ratls._errors import CertificateChainError, EvidenceFormatError
from ratls._policy import Policy, SnpPolicy, TrustPolicy
from ratls._snp_report import ProductLine
from ratls._tpm_structs import ObjectAttributes, TpmtPublic, parse_tpmt_public
from ratls.sim import SimulatedAmdSp, simulated_amd_sp

POLICY = Policy(
    snp=SnpPolicy(
        measurements=frozenset({hashlib.sha384(b"ratls simulated guest launch").digest()})
    ),
    trust=TrustPolicy(simulated_hardware=True),
)


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    # A chain of its own, so earlier tests cannot have remembered it.
    return SimulatedAmdSp.generate(ProductLine.MILAN)


def _verify(sp: SimulatedAmdSp, verifier: BoundVerifier) -> None:
    binder = os.urandom(64)
    verifier.verify(SimulatedSnpAttester(sp).evidence(binder), binder)


def test_second_verification_of_a_chain_is_a_hit(sp: SimulatedAmdSp) -> None:
    verifier = BoundVerifier(POLICY)
    before = verification_cache_stats()["amd_chain"]
    _verify(sp, verifier)
    middle = verification_cache_stats()["amd_chain"]
    _verify(sp, verifier)
    after = verification_cache_stats()["amd_chain"]
    assert middle.misses == before.misses + 1
    assert after.misses == middle.misses
    assert after.hits == middle.hits + 1
    assert 0 < after.entries <= after.capacity
    assert 0.0 < after.hit_ratio < 1.0


def test_a_failed_chain_is_never_remembered(sp: SimulatedAmdSp) -> None:
    # The same chain judged after it expired: refused every time, and each time in full.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365 * 40)
    verifier = BoundVerifier(POLICY, clock=lambda: later)
    counts = []
    for _ in range(2):
        with pytest.raises(CertificateChainError):
            _verify(sp, verifier)
        counts.append(verification_cache_stats()["amd_chain"])
    assert counts[1].misses == counts[0].misses + 1
    assert counts[1].hits == counts[0].hits


def test_every_memo_is_reported() -> None:
    stats = verification_cache_stats()
    assert set(stats) == {
        "amd_chain",
        "amd_certificate",
        "amd_extensions",
        "tls_self_signature",
        "tpm_public",
        "vtpm_activation",
    }
    assert all(isinstance(s, CacheStats) and s.capacity > 0 for s in stats.values())
    assert CacheStats(hits=0, misses=0, entries=0, capacity=1).hit_ratio == 0.0
    assert CacheStats(hits=3, misses=1, entries=1, capacity=1).hit_ratio == 0.75


def test_gateway_metrics_export_the_memos() -> None:
    _verify(simulated_amd_sp(ProductLine.GENOA), BoundVerifier(POLICY))
    _verify(simulated_amd_sp(ProductLine.GENOA), BoundVerifier(POLICY))
    text = GatewayMetrics().render()
    assert "# TYPE ratls_gateway_verify_cache_hits_total counter" in text
    assert "# TYPE ratls_gateway_verify_cache_hit_ratio gauge" in text
    hits = verification_cache_stats()["amd_chain"].hits
    assert f'ratls_gateway_verify_cache_hits_total{{cache="amd_chain"}} {hits}' in text
    assert 'ratls_gateway_verify_cache_misses_total{cache="tls_self_signature"}' in text


def test_mirrored_counter_cannot_go_down() -> None:
    metrics = GatewayMetrics()
    metrics.verify_cache_hits.set_total(5, cache="amd_chain")
    with pytest.raises(ValueError, match="only goes up"):
        metrics.verify_cache_hits.set_total(4, cache="amd_chain")


@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")
def test_remembered_activations_are_counted(sp: SimulatedAmdSp) -> None:
    verifier = BoundVerifier(POLICY)
    before = verification_cache_stats()["vtpm_activation"]
    with SimulatedVtpmAttester(sp) as attester:
        binder = os.urandom(64)
        data = attester.evidence(binder)
        activation = verifier.activation_challenge(data)  # a miss: challenged
        assert activation is not None
        response = attester.respond(activation.challenge_bytes())
        verifier.verify(data, binder, activation=activation, response=response)
        assert verifier.activation_challenge(attester.evidence(os.urandom(64))) is None  # a hit
    after = verification_cache_stats()["vtpm_activation"]
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 1)
    assert after.entries >= 1


def test_public_areas_are_parsed_once_and_their_names_and_keys_kept() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    attributes = ObjectAttributes.SIGN | ObjectAttributes.FIXED_TPM
    area = TpmtPublic.from_public_key(key, object_attributes=attributes).to_bytes()
    before = verification_cache_stats()["tpm_public"]
    first = parse_tpmt_public(area)
    again = parse_tpmt_public(bytes(bytearray(area)))  # equal bytes, the same object
    assert again is first
    after = verification_cache_stats()["tpm_public"]
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 1)
    assert first.name() is first.name()  # computed once
    assert first.public_key() is first.public_key()
    assert first.public_key().public_numbers() == key.public_numbers()
    # A copy has its own memo and the same values; the memo is not part of equality.
    copy = dataclasses.replace(first)
    assert copy == first
    assert copy.name() == first.name()
    # Failures are not remembered: the same bad bytes fail every time, as misses.
    bad = area[:-1]
    for _ in range(2):
        with pytest.raises(EvidenceFormatError):
            parse_tpmt_public(bad)
    final = verification_cache_stats()["tpm_public"]
    assert final.misses - after.misses == 2
