"""The SNP -> EK -> AK -> quote chain: bundle codec, simulated SVSM, verifier, negatives.

The chain tests run a real vTPM (swtpm) inside a simulated SVSM VM whose reports are signed
by the simulated AMD-SP; every way the evidence can be wrong has its own test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratls._errors import (
    AttesterError,
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    EvidenceVerificationError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyViolation,
    RatlsError,
    SignatureMismatch,
)
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._result import AttestationResult
from ratls._snp_report import ProductLine
from ratls._tpm_device import TpmCommandError
from ratls._tpm_quote import QuoteSequenceChecker
from ratls._tpm_structs import (
    TpmAlgId,
    TpmtSignature,
    parse_tpm2b_public,
    parse_tpmt_signature,
)
from ratls._vtpm_evidence import (
    MAX_VTPM_EVIDENCE_SIZE,
    ActivationChallenge,
    ActivationProof,
    AkBinding,
    VerifiedVtpmEvidence,
    VtpmEvidence,
    VtpmProfile,
    begin_activation,
    expected_report_data,
    finish_activation,
    parse_vtpm_evidence,
    to_attestation_result,
    verify_vtpm_attestation,
    verify_vtpm_evidence,
)
from ratls.attesters import GuestVtpmAttester
from ratls.attesters._snp_guest import SVSM_VTPM_SERVICE_GUID, SnpGuestAttester
from ratls.sim import simulated_amd_sp
from ratls.sim._svsm import (
    SVSM_ATTEST_SINGLE_SERVICE,
    SimulatedSvsm,
    SvsmAttestation,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ratls.sim import SimulatedAmdSp

needs_swtpm = pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")

MEASUREMENT = hashlib.sha384(b"simulated SVSM + vTPM + OVMF launch").digest()
BINDER = hashlib.sha256(b"the verifier's binder").digest()
NONCE = bytes(range(64))
ZERO_PCR = bytes(32)
NOW = datetime.now(UTC)


def make_policy(**vtpm: object) -> Policy:
    """A policy for the simulated VM: its measurement, PCR 7 at zero, simulator trusted."""
    return Policy(
        snp=SnpPolicy(measurements=frozenset({MEASUREMENT})),
        vtpm=VtpmPolicy(pcrs={"sha256": {7: frozenset({ZERO_PCR})}}, **vtpm),  # type: ignore[arg-type]
        trust=TrustPolicy(simulated_hardware=True),
    )


POLICY = make_policy()


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


@pytest.fixture(scope="module")
def svsm_vm(sp: SimulatedAmdSp) -> Iterator[SimulatedSvsm]:
    with SimulatedSvsm(sp, profile=VtpmProfile.SVSM, measurement=MEASUREMENT) as vm:
        yield vm


@pytest.fixture(scope="module")
def paper_vm(sp: SimulatedAmdSp) -> Iterator[SimulatedSvsm]:
    with SimulatedSvsm(sp, profile=VtpmProfile.SVSM_PAPER, measurement=MEASUREMENT) as vm:
        yield vm


@pytest.fixture(scope="module")
def other_vm(sp: SimulatedAmdSp) -> Iterator[SimulatedSvsm]:
    """A second VM: another vTPM with its own EK and AK."""
    with SimulatedSvsm(sp, profile=VtpmProfile.SVSM, measurement=MEASUREMENT) as vm:
        yield vm


@pytest.fixture(scope="module")
def svsm_evidence(svsm_vm: SimulatedSvsm) -> VtpmEvidence:
    return svsm_vm.collect_evidence(binder=BINDER, nonce=NONCE)


@pytest.fixture(scope="module")
def rsa_evidence(sp: SimulatedAmdSp) -> Iterator[VtpmEvidence]:
    """Evidence from a VM whose AK is RSA-2048 (the default AK is P-256)."""
    with SimulatedSvsm(sp, measurement=MEASUREMENT, ak_type="rsa") as vm:
        yield vm.collect_evidence(binder=BINDER, nonce=NONCE)


@pytest.fixture(scope="module")
def paper_evidence(paper_vm: SimulatedSvsm) -> VtpmEvidence:
    return paper_vm.collect_evidence(binder=BINDER)


def activated(
    vm: SimulatedSvsm, evidence: VtpmEvidence
) -> tuple[VtpmEvidence, ActivationChallenge]:
    challenge = begin_activation(evidence)
    return evidence.with_activation_proof(vm.activate(challenge.credential)), challenge


def verify(evidence: VtpmEvidence, **kwargs: object) -> VerifiedVtpmEvidence:
    options: dict[str, object] = {"policy": POLICY, "at": NOW, "expected_binder": BINDER}
    options.update(kwargs)
    return verify_vtpm_evidence(evidence, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# A bundle without a TPM (for the codec tests)
# --------------------------------------------------------------------------------------


def static_bundle(**overrides: object) -> VtpmEvidence:
    fields: dict[str, object] = {
        "profile": VtpmProfile.SVSM,
        "snp_report": bytes(0x4A0),
        "certs": (b"leaf", b"ask", b"ark"),
        "svsm_nonce": NONCE,
        "svsm_manifest": b"\x00\x01manifest",
        "ak_public": b"\x00\x02ak",
        "quote_attest": b"\xff\x54\x43\x47attest",
        "quote_signature": b"\x00\x14sig",
        "pcrs": ((TpmAlgId.SHA1, 0, bytes(20)), (TpmAlgId.SHA256, 7, ZERO_PCR)),
    }
    fields.update(overrides)
    return VtpmEvidence(**fields)  # type: ignore[arg-type]


BUNDLE = static_bundle()
ENCODED = BUNDLE.to_bytes()


def test_bundle_round_trip() -> None:
    assert parse_vtpm_evidence(ENCODED) == BUNDLE
    assert parse_vtpm_evidence(ENCODED).to_bytes() == ENCODED
    document = cbor2.loads(ENCODED)
    assert document[0] == 1
    assert document[1] == "svsm"
    assert document[12] == {4: {0: bytes(20)}, 11: {7: ZERO_PCR}}


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "profile": VtpmProfile.SVSM_PAPER,
            "svsm_nonce": None,
            "svsm_manifest": None,
            "ek_public": b"\x00\x01e",
        },
        {
            "profile": VtpmProfile.AZURE,
            "snp_report": None,
            "svsm_nonce": None,
            "svsm_manifest": None,
            "hcl_report": bytes(0x4D4 + 2),
        },
        {"certs": (), "cert_table": b"table"},
        {"activation_proof": b"s" * 32},
    ],
)
def test_bundle_variants_round_trip(overrides: dict[str, object]) -> None:
    bundle = static_bundle(**overrides)
    assert parse_vtpm_evidence(bundle.to_bytes()) == bundle


def test_every_truncation_refused() -> None:
    for end in range(len(ENCODED)):
        with pytest.raises(EvidenceFormatError):
            parse_vtpm_evidence(ENCODED[:end])


def test_trailing_byte_refused() -> None:
    with pytest.raises(EvidenceFormatError, match="canonical"):
        parse_vtpm_evidence(ENCODED + b"\x00")


def _reencode(mutate: dict[object, object] | None = None, drop: int | None = None) -> bytes:
    document = cbor2.loads(ENCODED)
    if drop is not None:
        del document[drop]
    document.update(mutate or {})
    return bytes(cbor2.dumps(document, canonical=True))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_reencode({0: 2}), "version"),
        (_reencode({0: True}), "version"),
        (_reencode({1: "tdx"}), "profile"),
        (_reencode({1: 7}), "profile"),
        (_reencode({14: b""}), "unknown key"),
        (_reencode({"x": 1}), "unknown key"),
        (_reencode(drop=9), "missing"),
        (_reencode(drop=6), "needs svsm_manifest"),
        (_reencode({7: b"ek"}), "must not carry ek_public"),
        (_reencode({4: b"table"}), "exactly one of certs and cert_table"),
        (_reencode(drop=3), "exactly one of certs and cert_table"),
        (_reencode({3: []}), "certs"),
        (_reencode({3: [b"a", b"b"]}), "3 DER"),
        (_reencode({3: [b"a", b"b", "c"]}), "byte string"),
        (_reencode({5: bytes(63)}), "svsm_nonce is 63 bytes"),
        (_reencode({2: bytes(0x49F)}), "snp_report"),
        (_reencode({9: b""}), "ak_public is 0 bytes"),
        (_reencode({10: bytes(0x401)}), "quote_attest"),
        (_reencode({13: bytes(65)}), "activation_proof"),
        (_reencode({12: {}}), "non-empty map"),
        (_reencode({12: {5: {0: bytes(20)}}}), "unsupported PCR bank"),
        (_reencode({12: {11: {24: ZERO_PCR}}}), "outside 0-23"),
        (_reencode({12: {11: {-1: ZERO_PCR}}}), "outside 0-23"),
        (_reencode({12: {11: {7: bytes(20)}}}), "expected 32"),
        (_reencode({12: {11: {}}}), "non-empty map"),
        (_reencode({12: {11: {"7": ZERO_PCR}}}), "unsigned integers"),
        (_reencode({12: [1]}), "non-empty map"),
        (bytes(cbor2.dumps([1, 2])), "not a CBOR map"),
        (bytes(cbor2.dumps(dict(reversed(cbor2.loads(ENCODED).items())))), "canonical"),
        (b"\xff", "not CBOR|not a CBOR map"),  # a lone break code: cbor2 6 vs 5 differ
        (bytes(MAX_VTPM_EVIDENCE_SIZE + 1), "limit"),
    ],
)
def test_malformed_bundles_refused(data: bytes, words: str) -> None:
    with pytest.raises(EvidenceFormatError, match=words):
        parse_vtpm_evidence(data)


def test_constructor_checks() -> None:
    with pytest.raises(EvidenceFormatError, match="sorted"):
        static_bundle(pcrs=((TpmAlgId.SHA256, 7, ZERO_PCR), (TpmAlgId.SHA1, 0, bytes(20))))
    with pytest.raises(EvidenceFormatError, match="sorted"):
        static_bundle(pcrs=((TpmAlgId.SHA256, 7, ZERO_PCR), (TpmAlgId.SHA256, 7, ZERO_PCR)))
    with pytest.raises(EvidenceFormatError, match="unknown profile"):
        static_bundle(profile="svsm")
    with pytest.raises(EvidenceFormatError, match="entry"):
        static_bundle(pcrs=((TpmAlgId.SHA256, 7),))
    with pytest.raises(EvidenceFormatError, match="non-empty tuple"):
        static_bundle(pcrs=())


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_only_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_vtpm_evidence(data)


@settings(max_examples=200)
@given(
    st.integers(min_value=0, max_value=len(ENCODED) - 1), st.integers(min_value=1, max_value=255)
)
def test_fuzz_mutated_bundle(position: int, flip: int) -> None:
    data = bytearray(ENCODED)
    data[position] ^= flip
    with contextlib.suppress(RatlsError):
        assert parse_vtpm_evidence(bytes(data)).to_bytes() == bytes(data)


_CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.lists(st.integers(min_value=0, max_value=255), max_size=80).map(bytes)
    | st.text(max_size=12)
    | st.sampled_from(["svsm", "svsm-paper", "azure"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(min_value=0, max_value=30), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.integers(min_value=0, max_value=15), _CBOR_VALUES, max_size=14))
def test_fuzz_structured_maps(document: dict[int, object]) -> None:
    base = cbor2.loads(ENCODED)
    base.update(document)
    with contextlib.suppress(RatlsError):
        parse_vtpm_evidence(cbor2.dumps(base, canonical=True))


def test_bundle_value_type() -> None:
    same = static_bundle()
    other = static_bundle(svsm_nonce=bytes(64))
    assert same == BUNDLE
    assert hash(same) == hash(BUNDLE)
    assert other != BUNDLE
    assert object() != BUNDLE
    assert len({same, BUNDLE, other}) == 2
    assert repr(BUNDLE) == (
        "VtpmEvidence(profile='svsm', ak_public=<4 bytes>, quote_attest=<10 bytes>, "
        "quote_signature=<5 bytes>, snp_report=<1184 bytes>, certs=<3 certificates>, "
        "svsm_nonce=<64 bytes>, svsm_manifest=<10 bytes>, pcrs=sha1:0+sha256:7)"
    )
    assert BUNDLE.pcr_mapping() == {TpmAlgId.SHA1: {0: bytes(20)}, TpmAlgId.SHA256: {7: ZERO_PCR}}


def test_enums() -> None:
    assert [p.value for p in VtpmProfile] == ["svsm", "svsm-paper", "azure"]
    assert [b.value for b in AkBinding] == ["activated", "vmpl0-bound", "unproven"]


def test_expected_report_data_formulas() -> None:
    assert expected_report_data(BUNDLE) == (
        hashlib.sha512(NONCE + b"\x00\x01manifest").digest(),
        64,
    )
    paper = static_bundle(
        profile=VtpmProfile.SVSM_PAPER, svsm_nonce=None, svsm_manifest=None, ek_public=b"\x00\x01e"
    )
    assert expected_report_data(paper) == (hashlib.sha512(b"\x00\x01e").digest(), 64)


# --------------------------------------------------------------------------------------
# The full chain, per profile
# --------------------------------------------------------------------------------------


@pytest.mark.swtpm
@needs_swtpm
@pytest.mark.parametrize("profile", [VtpmProfile.SVSM, VtpmProfile.SVSM_PAPER])
def test_full_chain_activated(
    profile: VtpmProfile, svsm_vm: SimulatedSvsm, paper_vm: SimulatedSvsm
) -> None:
    vm = svsm_vm if profile is VtpmProfile.SVSM else paper_vm
    evidence, challenge = activated(vm, vm.collect_evidence(binder=BINDER))
    decoded = parse_vtpm_evidence(evidence.to_bytes())
    verified = verify(decoded, activation=challenge)
    assert verified.profile is profile
    assert verified.ak_binding is AkBinding.ACTIVATED
    assert verified.trust_anchor == "simulator"
    assert verified.appraised
    assert verified.snp.report.vmpl == 0
    assert verified.snp.report.measurement == MEASUREMENT
    assert verified.ek_public is not None
    assert verified.ek_public.name() == vm.identity.ek_name
    assert verified.quote.ak_name == vm.identity.ak_name
    assert verified.quote.extra_data == BINDER
    assert verified.quote.pcr(TpmAlgId.SHA256, 7) == ZERO_PCR
    claims = verified.claims()
    assert claims["profile"] == profile.value
    assert claims["ak_binding"] == "activated"
    result = to_attestation_result(verified)
    assert isinstance(result, AttestationResult)
    assert result.profile == profile.value
    assert result.ak_binding == "activated"
    assert result.trust_anchor == "simulator"
    assert result.appraised
    assert not result.replayable
    assert result.policy_digest == POLICY.digest()


@pytest.mark.swtpm
@needs_swtpm
def test_activation_proof_object(svsm_vm: SimulatedSvsm, svsm_evidence: VtpmEvidence) -> None:
    challenge = begin_activation(svsm_evidence)
    proof = finish_activation(challenge, svsm_vm.activate(challenge.credential))
    assert proof.ek_name == svsm_vm.identity.ek_name
    assert proof.ak_name == svsm_vm.identity.ak_name
    assert verify(svsm_evidence, activation=proof).ak_binding is AkBinding.ACTIVATED


@pytest.mark.swtpm
@needs_swtpm
def test_verify_from_bytes_returns_attestation_result(
    svsm_vm: SimulatedSvsm, svsm_evidence: VtpmEvidence
) -> None:
    evidence, challenge = activated(svsm_vm, svsm_evidence)
    result = verify_vtpm_attestation(
        evidence.to_bytes(),
        policy=POLICY,
        at=NOW,
        expected_binder=BINDER,
        expected_nonce=NONCE,
        activation=challenge,
    )
    assert result.profile == "svsm"
    assert result.ak_binding == "activated"


@pytest.mark.swtpm
@needs_swtpm
def test_ecc_ak_chain(sp: SimulatedAmdSp) -> None:
    with SimulatedSvsm(sp, measurement=MEASUREMENT, ak_type="ecc") as vm:
        evidence, challenge = activated(vm, vm.collect_evidence(binder=BINDER))
    verified = verify(evidence, activation=challenge)
    assert verified.ak_public.type is TpmAlgId.ECC
    assert verified.ak_binding is AkBinding.ACTIVATED


@pytest.mark.swtpm
@needs_swtpm
def test_cert_table_endorsements(sp: SimulatedAmdSp, svsm_vm: SimulatedSvsm) -> None:
    evidence = dataclasses.replace(
        svsm_vm.collect_evidence(binder=BINDER), certs=(), cert_table=sp.cert_table()
    )
    assert verify(evidence, policy=None, trust_simulator=True).ak_binding is AkBinding.UNPROVEN


@pytest.mark.swtpm
@needs_swtpm
def test_unproven_ak(svsm_evidence: VtpmEvidence) -> None:
    with pytest.raises(PolicyViolation, match=r"vtpm\.ak_binding") as info:
        verify(svsm_evidence)
    assert info.value.actual == "unproven"
    lenient = verify(svsm_evidence, policy=make_policy(allow_unproven_ak=True))
    assert lenient.ak_binding is AkBinding.UNPROVEN
    unappraised = verify(svsm_evidence, policy=None, trust_simulator=True)
    assert unappraised.ak_binding is AkBinding.UNPROVEN
    assert not unappraised.appraised
    assert unappraised.policy_digest is None
    assert not to_attestation_result(unappraised).appraised


@pytest.mark.swtpm
@needs_swtpm
def test_new_ek_each_boot(sp: SimulatedAmdSp, svsm_vm: SimulatedSvsm) -> None:
    with SimulatedSvsm(sp) as rebooted:
        assert rebooted.identity.ek_public != svsm_vm.identity.ek_public


# --------------------------------------------------------------------------------------
# Negative tests: each way the evidence can be wrong
# --------------------------------------------------------------------------------------


@pytest.mark.swtpm
@needs_swtpm
def test_wrong_ak(svsm_evidence: VtpmEvidence, other_vm: SimulatedSvsm) -> None:
    forged = dataclasses.replace(svsm_evidence, ak_public=other_vm.identity.ak_public)
    with pytest.raises(SignatureMismatch) as info:
        verify(forged, policy=make_policy(allow_unproven_ak=True))
    assert info.value.claim == "tpm.quote.signature"
    assert info.value.__cause__ is not None


@pytest.mark.swtpm
@needs_swtpm
def test_wrong_binder(svsm_evidence: VtpmEvidence) -> None:
    with pytest.raises(NonceMismatch) as info:
        verify(svsm_evidence, policy=make_policy(allow_unproven_ak=True), expected_binder=bytes(32))
    assert info.value.claim == "tpm.quote.extra_data"


@pytest.mark.swtpm
@needs_swtpm
def test_wrong_svsm_nonce(svsm_evidence: VtpmEvidence) -> None:
    with pytest.raises(NonceMismatch) as info:
        verify(svsm_evidence, expected_nonce=bytes(64))
    assert info.value.claim == "svsm.nonce"


@pytest.mark.swtpm
@needs_swtpm
def test_nonce_swapped_in_bundle(svsm_evidence: VtpmEvidence) -> None:
    forged = dataclasses.replace(svsm_evidence, svsm_nonce=bytes(64))
    with pytest.raises(BindingMismatch) as info:
        verify(forged)
    assert info.value.claim == "svsm.report_data"


@pytest.mark.swtpm
@needs_swtpm
def test_pcr_value_changed(svsm_evidence: VtpmEvidence) -> None:
    pcrs = list(svsm_evidence.pcrs)
    bank, index, _ = pcrs[0]
    pcrs[0] = (bank, index, b"\x01" * 32)
    forged = dataclasses.replace(svsm_evidence, pcrs=tuple(pcrs))
    with pytest.raises(BindingMismatch) as info:
        verify(forged, policy=make_policy(allow_unproven_ak=True))
    assert info.value.claim == "tpm.quote.pcr_digest"


@pytest.mark.swtpm
@needs_swtpm
def test_pcr_not_the_reference_value(sp: SimulatedAmdSp) -> None:
    with SimulatedSvsm(sp, measurement=MEASUREMENT) as vm:
        vm.extend_pcr(7, b"a Secure Boot variable the policy does not expect")
        evidence, challenge = activated(vm, vm.collect_evidence(binder=BINDER))
    with pytest.raises(MeasurementMismatch) as info:
        verify(evidence, activation=challenge)
    assert info.value.claim == "tpm.pcr.sha256.7"
    # The same evidence passes a policy that knows the new value.
    value = evidence.pcr_mapping()[TpmAlgId.SHA256][7]
    known = Policy(
        snp=POLICY.snp,
        vtpm=VtpmPolicy(pcrs={"sha256": {7: frozenset({value})}}),
        trust=POLICY.trust,
    )
    assert verify(evidence, activation=challenge, policy=known).quote.pcr(TpmAlgId.SHA256, 7)


@pytest.mark.swtpm
@needs_swtpm
def test_pcr_selection_mismatch(svsm_evidence: VtpmEvidence) -> None:
    lenient = make_policy(allow_unproven_ak=True)
    fewer = dataclasses.replace(svsm_evidence, pcrs=svsm_evidence.pcrs[1:])
    with pytest.raises(EvidenceVerificationError, match="missing"):
        verify(fewer, policy=lenient)
    extra = dataclasses.replace(
        svsm_evidence, pcrs=(*svsm_evidence.pcrs, (TpmAlgId.SHA256, 23, ZERO_PCR))
    )
    with pytest.raises(BindingMismatch) as info:
        verify(extra, policy=lenient)
    assert info.value.claim == "tpm.pcr.sha256.23"


def _refused_quote_claim(evidence: VtpmEvidence, signature: TpmtSignature) -> str:
    """The claim a verifier names when ``evidence`` carries ``signature`` instead."""
    forged = dataclasses.replace(evidence, quote_signature=signature.to_bytes())
    with pytest.raises(SignatureMismatch) as info:
        verify(forged, policy=make_policy(allow_unproven_ak=True))
    return info.value.claim


@pytest.mark.swtpm
@needs_swtpm
@pytest.mark.parametrize(
    ("sig_alg", "hash_alg", "claim"),
    [
        (TpmAlgId.RSAPSS, TpmAlgId.SHA256, "tpm.quote.signature.sig_alg"),
        (TpmAlgId.RSASSA, TpmAlgId.SHA1, "tpm.quote.signature.hash"),
    ],
)
def test_scheme_downgrade(
    rsa_evidence: VtpmEvidence, sig_alg: TpmAlgId, hash_alg: TpmAlgId, claim: str
) -> None:
    sig = parse_tpmt_signature(rsa_evidence.quote_signature)
    assert sig.sig_alg is TpmAlgId.RSASSA
    forged = TpmtSignature(sig_alg=sig_alg, hash=hash_alg, sig=sig.sig)
    assert _refused_quote_claim(rsa_evidence, forged) == claim


@pytest.mark.swtpm
@needs_swtpm
@pytest.mark.parametrize(
    ("sig_alg", "hash_alg", "claim"),
    [
        (TpmAlgId.RSASSA, TpmAlgId.SHA256, "tpm.quote.signature.sig_alg"),
        (TpmAlgId.ECDSA, TpmAlgId.SHA1, "tpm.quote.signature.hash"),
        (TpmAlgId.ECDSA, TpmAlgId.SHA384, "tpm.quote.signature.hash"),
    ],
)
def test_ecdsa_scheme_downgrade(
    svsm_evidence: VtpmEvidence, sig_alg: TpmAlgId, hash_alg: TpmAlgId, claim: str
) -> None:
    sig = parse_tpmt_signature(svsm_evidence.quote_signature)
    assert sig.sig_alg is TpmAlgId.ECDSA  # the default AK
    if sig_alg is TpmAlgId.RSASSA:
        forged = TpmtSignature(
            sig_alg=sig_alg, hash=hash_alg, sig=sig.signature_r + sig.signature_s
        )
    else:
        forged = dataclasses.replace(sig, hash=hash_alg)
    assert _refused_quote_claim(svsm_evidence, forged) == claim


@pytest.mark.swtpm
@needs_swtpm
def test_ek_of_another_vtpm(
    svsm_evidence: VtpmEvidence,
    paper_evidence: VtpmEvidence,
    other_vm: SimulatedSvsm,
) -> None:
    forged = dataclasses.replace(svsm_evidence, svsm_manifest=other_vm.identity.ek_tpmt_public)
    with pytest.raises(BindingMismatch) as info:
        verify(forged)
    assert info.value.claim == "svsm.report_data"
    assert "SHA-512(nonce" in str(info.value)
    forged_paper = dataclasses.replace(paper_evidence, ek_public=other_vm.identity.ek_public)
    with pytest.raises(BindingMismatch) as info:
        verify(forged_paper)
    assert info.value.claim == "svsm-paper.report_data"


@pytest.mark.swtpm
@needs_swtpm
def test_activation_for_another_vtpm(svsm_evidence: VtpmEvidence, other_vm: SimulatedSvsm) -> None:
    # A challenge sealed to this bundle's EK cannot be opened by another vTPM ...
    challenge = begin_activation(svsm_evidence)
    with pytest.raises(TpmCommandError):
        other_vm.activate(challenge.credential)
    # ... and a proof about other keys does not count for this bundle.
    other = other_vm.collect_evidence(binder=BINDER)
    other_challenge = begin_activation(other)
    proof = finish_activation(other_challenge, other_vm.activate(other_challenge.credential))
    with pytest.raises(BindingMismatch) as info:
        verify(svsm_evidence, activation=proof)
    assert info.value.claim == "tpm.ak.activation.ek_name"


@pytest.mark.swtpm
@needs_swtpm
def test_ek_attributes_not_ek_like(sp: SimulatedAmdSp, svsm_vm: SimulatedSvsm) -> None:
    # A (compromised) VMPL-0 component binds a signing key instead of an EK.
    manifest = parse_tpm2b_public(svsm_vm.identity.ak_public).to_bytes()
    report = sp.build_report(
        report_data=hashlib.sha512(NONCE + manifest).digest(), vmpl=0, measurement=MEASUREMENT
    )
    evidence = dataclasses.replace(
        svsm_vm.collect_evidence(binder=BINDER, nonce=NONCE),
        svsm_manifest=manifest,
        snp_report=report.to_bytes(),
    )
    with pytest.raises(EvidenceVerificationError) as info:
        verify(evidence)
    assert info.value.claim == "tpm.ek.object_attributes"
    with pytest.raises(EvidenceVerificationError, match=r"tpm\.ek"):
        begin_activation(evidence)


@pytest.mark.swtpm
@needs_swtpm
def test_activation_wrong_secret(svsm_evidence: VtpmEvidence) -> None:
    challenge = begin_activation(svsm_evidence)
    with pytest.raises(BindingMismatch) as info:
        verify(svsm_evidence.with_activation_proof(b"\x00" * 32), activation=challenge)
    assert info.value.claim == "tpm.ak.activation"
    with pytest.raises(BindingMismatch, match="no activation proof"):
        verify(svsm_evidence, activation=challenge)
    with pytest.raises(BindingMismatch):
        finish_activation(challenge, b"\x01" * 32)


@pytest.mark.swtpm
@needs_swtpm
def test_reset_counter_going_back(sp: SimulatedAmdSp) -> None:
    with SimulatedSvsm(sp, measurement=MEASUREMENT) as vm:
        before = vm.collect_evidence(binder=BINDER, nonce=NONCE)
        vm.power_cycle()
        after = vm.collect_evidence(binder=BINDER, nonce=NONCE)
    lenient = make_policy(allow_unproven_ak=True)
    in_order = QuoteSequenceChecker()
    first = verify(before, policy=lenient, sequence=in_order)
    second = verify(after, policy=lenient, sequence=in_order)
    assert second.quote.clock_info.reset_count > first.quote.clock_info.reset_count
    replayed = QuoteSequenceChecker()
    verify(after, policy=lenient, sequence=replayed)
    with pytest.raises(EvidenceVerificationError) as info:
        verify(before, policy=lenient, sequence=replayed)
    assert info.value.claim == "tpm.clock_info.reset_count"


@pytest.mark.swtpm
@needs_swtpm
def test_vmpl1_report_refused(svsm_vm: SimulatedSvsm, svsm_evidence: VtpmEvidence) -> None:
    # The guest OS (VMPL 1) can request a report with any REPORT_DATA, including the
    # binding of an EK of its choosing: only VMPL 0 speaks for the vTPM.
    report = svsm_vm.guest_report(expected_report_data(svsm_evidence)[0], vmpl=1)
    forged = dataclasses.replace(svsm_evidence, snp_report=report)
    lax = Policy(
        snp=SnpPolicy(measurements=frozenset({MEASUREMENT}), vmpl=None),
        vtpm=VtpmPolicy(allow_unproven_ak=True),
        trust=TrustPolicy(simulated_hardware=True),
    )
    with pytest.raises(PolicyViolation) as info:
        verify(forged, policy=lax)
    assert info.value.claim == "snp.vmpl"
    assert info.value.actual == 1
    with pytest.raises(PolicyViolation, match="VMPL 0"):
        verify(forged, policy=None, trust_simulator=True)


@pytest.mark.swtpm
@needs_swtpm
def test_simulator_not_trusted(svsm_evidence: VtpmEvidence) -> None:
    untrusting = Policy(snp=POLICY.snp, vtpm=POLICY.vtpm)
    with pytest.raises(CertificateChainError) as info:
        verify(svsm_evidence, policy=untrusting)
    assert info.value.claim == "snp.trust_anchor"
    with pytest.raises(CertificateChainError):
        verify(svsm_evidence, policy=None)


@pytest.mark.swtpm
@needs_swtpm
def test_measurement_not_allowed(svsm_evidence: VtpmEvidence) -> None:
    other = Policy(
        snp=SnpPolicy(measurements=frozenset({bytes(48)})),
        vtpm=POLICY.vtpm,
        trust=POLICY.trust,
    )
    with pytest.raises(MeasurementMismatch, match=r"snp\.measurement"):
        verify(svsm_evidence, policy=other)


@pytest.mark.swtpm
@needs_swtpm
def test_report_signature_broken(svsm_evidence: VtpmEvidence) -> None:
    assert svsm_evidence.snp_report is not None
    report = bytearray(svsm_evidence.snp_report)
    report[0x90] ^= 1  # a measurement bit, inside the signed area
    with pytest.raises(SignatureMismatch):
        verify(dataclasses.replace(svsm_evidence, snp_report=bytes(report)))


@pytest.mark.swtpm
@needs_swtpm
def test_verified_types_have_no_public_constructor(svsm_evidence: VtpmEvidence) -> None:
    verified = verify(svsm_evidence, policy=None, trust_simulator=True)
    with pytest.raises(TypeError, match="no public constructor"):
        VerifiedVtpmEvidence(
            **{f.name: getattr(verified, f.name) for f in dataclasses.fields(verified)}
        )
    with pytest.raises(TypeError, match="no public constructor"):
        ActivationProof(ek_name=b"", ak_name=b"")


@pytest.mark.swtpm
@needs_swtpm
def test_verified_value_type(
    svsm_vm: SimulatedSvsm, other_vm: SimulatedSvsm, svsm_evidence: VtpmEvidence
) -> None:
    a = verify(svsm_evidence, policy=None, trust_simulator=True)
    b = verify(svsm_evidence, policy=None, trust_simulator=True)
    c = verify(svsm_evidence, policy=make_policy(allow_unproven_ak=True))
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert repr(a).startswith("VerifiedVtpmEvidence(profile=<VtpmProfile.SVSM: 'svsm'>")
    challenge = begin_activation(svsm_evidence)
    secret = svsm_vm.activate(challenge.credential)
    p1, p2 = finish_activation(challenge, secret), finish_activation(challenge, secret)
    assert p1 == p2
    assert hash(p1) == hash(p2)
    assert p1 != object()
    other = begin_activation(other_vm.collect_evidence(binder=BINDER))
    assert p1 != finish_activation(other, other_vm.activate(other.credential))
    assert "ActivationProof(ek_name=" in repr(p1)
    answer = svsm_vm.attest_single_service(service_guid=SVSM_VTPM_SERVICE_GUID, nonce=NONCE)
    assert answer == dataclasses.replace(answer)
    assert hash(answer) == hash(dataclasses.replace(answer))
    assert answer != dataclasses.replace(answer, certs=None)
    assert answer != object()


@pytest.mark.swtpm
@needs_swtpm
def test_challenge_value_type(svsm_evidence: VtpmEvidence) -> None:
    a = begin_activation(svsm_evidence, rng=lambda n: b"\x07" * n)
    b = dataclasses.replace(a)
    c = dataclasses.replace(a, secret=b"\x08" * 32)
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert a.secret.hex() not in repr(a)
    assert "ActivationChallenge(ek_name=" in repr(a)


def test_activation_needs_an_ek() -> None:
    azure = static_bundle(
        profile=VtpmProfile.AZURE,
        snp_report=None,
        svsm_nonce=None,
        svsm_manifest=None,
        hcl_report=bytes(0x4D4 + 2),
    )
    with pytest.raises(EvidenceVerificationError, match=r"vtpm\.activation"):
        begin_activation(azure)


# --------------------------------------------------------------------------------------
# The simulated SVSM itself
# --------------------------------------------------------------------------------------


@pytest.mark.swtpm
@needs_swtpm
def test_svsm_single_service(svsm_vm: SimulatedSvsm, sp: SimulatedAmdSp) -> None:
    answer = svsm_vm.attest_single_service(service_guid=SVSM_VTPM_SERVICE_GUID, nonce=NONCE)
    assert answer.manifest == svsm_vm.identity.ek_tpmt_public
    assert answer.certs == sp.cert_table()
    assert answer.report[0x30:0x34] == bytes(4)  # VMPL 0
    assert answer.report[0x50:0x90] == hashlib.sha512(NONCE + answer.manifest).digest()
    assert "report=<1184 bytes>" in repr(answer)
    assert SVSM_ATTEST_SINGLE_SERVICE == 0x1_0000_0001


@pytest.mark.swtpm
@needs_swtpm
@pytest.mark.parametrize(
    ("guid", "nonce", "version", "words"),
    [
        (uuid.UUID(int=0), NONCE, 0, "unknown service"),
        (SVSM_VTPM_SERVICE_GUID, NONCE, 1, "manifest version"),
        (SVSM_VTPM_SERVICE_GUID, NONCE[:32], 0, "nonce of 32 bytes"),
    ],
)
def test_svsm_invalid_parameters(
    svsm_vm: SimulatedSvsm, guid: uuid.UUID, nonce: bytes, version: int, words: str
) -> None:
    with pytest.raises(AttesterError, match=f"SVSM_ERR_INVALID_PARAMETER: {words}"):
        svsm_vm.attest_single_service(service_guid=guid, nonce=nonce, manifest_version=version)


@pytest.mark.swtpm
@needs_swtpm
def test_svsm_paper_report_in_nv(paper_vm: SimulatedSvsm) -> None:
    report = paper_vm.read_nv_report()
    assert len(report) == 0x4A0
    assert report[0x50:0x90] == hashlib.sha512(paper_vm.identity.ek_public).digest()


def test_simulator_arguments(sp: SimulatedAmdSp) -> None:
    with pytest.raises(ValueError, match="azure"):
        SimulatedSvsm(sp, profile=VtpmProfile.AZURE)
    vm = SimulatedSvsm(sp)
    assert "off" in repr(vm)
    with pytest.raises(AttesterError, match="not running"):
        _ = vm.tpm
    with pytest.raises(AttesterError, match="not running"):
        _ = vm.identity
    with pytest.raises(ValueError, match="VMPL 1-3"):
        vm.guest_report(bytes(64), vmpl=0)
    assert vm.sp is sp
    assert vm.profile is VtpmProfile.SVSM


@pytest.mark.swtpm
@needs_swtpm
def test_simulator_boots_once(sp: SimulatedAmdSp) -> None:
    vm = SimulatedSvsm(sp)
    with vm:
        assert "running" in repr(vm)
    with pytest.raises(RuntimeError, match="boots once"), vm:
        pass


# --------------------------------------------------------------------------------------
# The real-guest attester, over a simulated kernel and swtpm
# --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_vm(sp: SimulatedAmdSp) -> Iterator[SimulatedSvsm]:
    with SimulatedSvsm(sp, measurement=MEASUREMENT) as vm:
        yield vm


class SvsmKernel:
    """configfs-tsm with an SVSM behind it, answered by a SimulatedSvsm."""

    def __init__(self, base: Path, vm: SimulatedSvsm, *, certs: bool = True) -> None:
        self.root = base / "tsm" / "report"
        self.root.mkdir(parents=True)
        self.vm = vm
        self.certs = certs
        self.answer: SvsmAttestation | None = None

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def mkdir(self, path: str) -> None:
        entry = Path(path)
        entry.mkdir()
        for name in ("provider", "generation", "privlevel_floor"):
            (entry / name).write_bytes({"provider": b"sev_guest\n"}.get(name, b"0\n"))
        for name in ("service_provider", "service_guid", "service_manifest_version"):
            (entry / name).write_bytes(b"")

    def rmdir(self, path: str) -> None:
        shutil.rmtree(path)

    def write(self, path: str, data: bytes) -> None:
        Path(path).write_bytes(data)

    def read(self, path: str) -> bytes:
        attr = Path(path)
        if attr.name in ("outblob", "auxblob", "manifestblob"):
            if attr.name == "outblob":
                entry = attr.parent
                self.answer = self.vm.attest_single_service(
                    service_guid=uuid.UUID((entry / "service_guid").read_text()),
                    nonce=(entry / "inblob").read_bytes(),
                    manifest_version=int((entry / "service_manifest_version").read_text()),
                )
            assert self.answer is not None
            if attr.name == "auxblob":
                if not self.certs:
                    raise FileNotFoundError(errno.ENOENT, "no auxblob", path)
                return self.answer.certs or b""
            return self.answer.report if attr.name == "outblob" else self.answer.manifest
        return attr.read_bytes()


@pytest.mark.swtpm
@needs_swtpm
def test_guest_attester_svsm(tmp_path: Path, fresh_vm: SimulatedSvsm) -> None:
    svsm_vm = fresh_vm
    kernel = SvsmKernel(tmp_path, svsm_vm)
    snp = SnpGuestAttester(tsm_root=str(kernel.root), filesystem=kernel)
    guest = GuestVtpmAttester(snp=snp, tpm=svsm_vm.tpm)
    assert "svsm" in repr(guest)
    evidence = guest.collect_evidence(binder=BINDER, nonce=NONCE)
    assert evidence.cert_table is not None
    challenge = begin_activation(evidence)
    evidence = evidence.with_activation_proof(guest.activate(challenge.credential))
    verified = verify(evidence, activation=challenge, expected_nonce=NONCE)
    assert verified.ak_binding is AkBinding.ACTIVATED
    # The guest re-created the same EK as the SVSM's manifest (same seed), with its own AK.
    assert verified.ek_public is not None
    assert verified.ek_public.name() == svsm_vm.identity.ek_name


@pytest.mark.swtpm
@needs_swtpm
def test_guest_attester_manifest_of_another_tpm(
    tmp_path: Path, fresh_vm: SimulatedSvsm, other_vm: SimulatedSvsm
) -> None:
    svsm_vm = fresh_vm
    kernel = SvsmKernel(tmp_path, other_vm)
    snp = SnpGuestAttester(tsm_root=str(kernel.root), filesystem=kernel)
    guest = GuestVtpmAttester(snp=snp, tpm=svsm_vm.tpm)
    with pytest.raises(AttesterError, match="not this TPM's EK"):
        guest.collect_evidence(binder=BINDER)


@pytest.mark.swtpm
@needs_swtpm
def test_guest_attester_without_certificates(
    tmp_path: Path, fresh_vm: SimulatedSvsm, sp: SimulatedAmdSp
) -> None:
    svsm_vm = fresh_vm
    kernel = SvsmKernel(tmp_path, svsm_vm, certs=False)
    snp = SnpGuestAttester(tsm_root=str(kernel.root), filesystem=kernel)
    with pytest.raises(AttesterError, match="no certificate table"):
        GuestVtpmAttester(snp=snp, tpm=svsm_vm.tpm).collect_evidence(binder=BINDER)
    certs = tuple(c.public_bytes(Encoding.DER) for c in (sp.leaf, sp.ask, sp.ark))
    with SimulatedSvsm(sp, measurement=MEASUREMENT) as vm:
        kernel = SvsmKernel(tmp_path / "second", vm, certs=False)
        snp = SnpGuestAttester(tsm_root=str(kernel.root), filesystem=kernel)
        guest = GuestVtpmAttester(snp=snp, tpm=vm.tpm, certs=certs)  # type: ignore[arg-type]
        assert guest.collect_evidence(binder=BINDER).certs == certs


@pytest.mark.swtpm
@needs_swtpm
def test_guest_attester_svsm_paper(sp: SimulatedAmdSp) -> None:
    with SimulatedSvsm(sp, profile=VtpmProfile.SVSM_PAPER, measurement=MEASUREMENT) as vm:
        _guest_paper(vm)


def _guest_paper(paper_vm: SimulatedSvsm) -> None:
    guest = GuestVtpmAttester(
        profile=VtpmProfile.SVSM_PAPER,
        tpm_factory=lambda: paper_vm.tpm,
        certs=tuple(paper_vm.collect_evidence(binder=BINDER).certs),  # type: ignore[arg-type]
    )
    evidence = guest.collect_evidence(binder=BINDER)
    challenge = begin_activation(evidence)
    evidence = evidence.with_activation_proof(guest.activate(challenge.credential))
    assert verify(evidence, activation=challenge).profile is VtpmProfile.SVSM_PAPER


def test_guest_attester_refuses_azure() -> None:
    with pytest.raises(ValueError, match="azure"):
        GuestVtpmAttester(profile=VtpmProfile.AZURE)
