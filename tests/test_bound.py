"""Tests for bound-mode evidence (ratls._bound) and named attesters (ratls._attesters_registry)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._attesters_registry import (
    ATTESTER_NAMES,
    attester_names,
    make_attestation_config,
    make_attester,
    make_verifier,
    register_attester,
    unregister_attester,
)
from ratls._bound import (
    MAX_SNP_EVIDENCE_SIZE,
    SNP_EVIDENCE_VERSION,
    SNP_MEDIA_TYPE,
    VTPM_MEDIA_TYPE,
    BoundActivation,
    BoundVerifier,
    GuestSnpAttester,
    SimulatedSnpAttester,
    SimulatedVtpmAttester,
    SnpEvidence,
    VtpmBoundAttester,
    parse_snp_evidence,
    quote_qualifying_data,
)
from ratls._errors import (
    AttesterError,
    AttesterUnavailable,
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyError,
    PolicyViolation,
    RatlsError,
    SignatureMismatch,
)
from ratls._exchange import DEFAULT_MEDIA_TYPE, ActivationState
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._result import AttestationResult
from ratls._snp_report import GuestPolicy, ProductLine, parse_snp_report
from ratls.attesters import GuestReport
from ratls.sim import SimulatedAmdSp, simulated_amd_sp

if TYPE_CHECKING:
    from pathlib import Path

    from ratls._vtpm_evidence import VtpmEvidence

SIM_MEASUREMENT = hashlib.sha384(b"ratls simulated guest launch").digest()
OTHER_MEASUREMENT = bytes(range(48))

needs_swtpm = pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")


def sim_policy(**snp: Any) -> Policy:
    return Policy(
        snp=SnpPolicy(measurements=frozenset({SIM_MEASUREMENT}), **snp),
        trust=TrustPolicy(simulated_hardware=True),
    )


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


def certs_of(sp: SimulatedAmdSp) -> tuple[bytes, bytes, bytes]:
    der = Encoding.DER
    return (sp.leaf.public_bytes(der), sp.ask.public_bytes(der), sp.ark.public_bytes(der))


@pytest.fixture(scope="module")
def evidence(sp: SimulatedAmdSp) -> SnpEvidence:
    report = sp.build_report(report_data=bytes(range(64)))
    return SnpEvidence(snp_report=report.to_bytes(), certs=certs_of(sp))


# --------------------------------------------------------------------------- the format


def test_round_trip_certs(evidence: SnpEvidence) -> None:
    data = evidence.to_bytes()
    assert parse_snp_evidence(data) == evidence
    decoded = cbor2.loads(data)
    assert decoded[0] == 1
    assert decoded[1] == "snp"
    assert set(decoded) == {0, 1, 2, 3}


def test_round_trip_cert_table(sp: SimulatedAmdSp, evidence: SnpEvidence) -> None:
    table = SnpEvidence(snp_report=evidence.snp_report, cert_table=sp.cert_table())
    data = table.to_bytes()
    assert parse_snp_evidence(data) == table
    assert set(cbor2.loads(data)) == {0, 1, 2, 4}
    assert table.endorsements().leaf == sp.leaf
    assert evidence.endorsements().root == sp.ark


def test_every_truncation_refused(evidence: SnpEvidence) -> None:
    data = evidence.to_bytes()
    for end in range(len(data)):
        with pytest.raises(EvidenceFormatError):
            parse_snp_evidence(data[:end])


def test_trailing_byte_refused(evidence: SnpEvidence) -> None:
    with pytest.raises(EvidenceFormatError, match="canonical"):
        parse_snp_evidence(evidence.to_bytes() + b"\x00")


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_snp_evidence(data)


@settings(max_examples=100)
@given(st.dictionaries(st.integers(0, 6), st.one_of(st.integers(), st.binary(), st.text())))
def test_arbitrary_maps_only_raise_ratls_errors(document: dict[int, object]) -> None:
    with contextlib.suppress(RatlsError):
        parse_snp_evidence(cbor2.dumps(document, canonical=True))


def _encode(document: dict[int, object]) -> bytes:
    return cbor2.dumps(document, canonical=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({0: 2}, "version"),
        ({0: True}, "version"),
        ({1: "svsm"}, "profile"),
        ({9: b"x"}, "unknown key"),
        ({2: "text"}, "snp_report must be a byte string"),
        ({2: b"short"}, "snp_report is 5 bytes"),
        ({3: []}, "non-empty array"),
        ({3: b"notalist"}, "non-empty array"),
        ({3: [b"a", b"b"]}, "3 DER"),
        ({3: [b"a", b"b", "c"]}, "certs\\[2\\] must be a byte string"),
        ({3: [b"a", b"b", b""]}, "certs\\[2\\] is 0 bytes"),
        ({4: b"table"}, "exactly one"),
    ],
)
def test_malformed_maps(evidence: SnpEvidence, change: dict[int, object], message: str) -> None:
    document = cbor2.loads(evidence.to_bytes())
    document.update(change)
    with pytest.raises(EvidenceFormatError, match=message):
        parse_snp_evidence(_encode(document))


def test_missing_report_and_certs(evidence: SnpEvidence) -> None:
    document = cbor2.loads(evidence.to_bytes())
    del document[2]
    with pytest.raises(EvidenceFormatError, match="missing snp_report"):
        parse_snp_evidence(_encode(document))
    document = cbor2.loads(evidence.to_bytes())
    del document[3]
    with pytest.raises(EvidenceFormatError, match="exactly one"):
        parse_snp_evidence(_encode(document))


def test_cert_table_must_be_bytes(evidence: SnpEvidence) -> None:
    document = cbor2.loads(evidence.to_bytes())
    del document[3]
    document[4] = 7
    with pytest.raises(EvidenceFormatError, match="cert_table must be a byte string"):
        parse_snp_evidence(_encode(document))


def test_not_a_map_and_not_cbor() -> None:
    with pytest.raises(EvidenceFormatError, match="not a CBOR map"):
        parse_snp_evidence(cbor2.dumps([1, 2]))
    # cbor2 >= 6 calls a lone break code malformed; 5.x decodes it to a marker object.
    with pytest.raises(EvidenceFormatError, match=r"not CBOR|not a CBOR map"):
        parse_snp_evidence(b"\xff")


def test_non_canonical_encoding_refused(evidence: SnpEvidence) -> None:
    document = cbor2.loads(evidence.to_bytes())
    # Same map, keys in descending order: valid CBOR, not the canonical form.
    reordered = cbor2.dumps(dict(sorted(document.items(), reverse=True)))
    assert cbor2.loads(reordered) == document
    with pytest.raises(EvidenceFormatError, match="canonical"):
        parse_snp_evidence(reordered)


def test_size_limit(evidence: SnpEvidence) -> None:
    with pytest.raises(EvidenceFormatError, match="limit"):
        parse_snp_evidence(bytes(MAX_SNP_EVIDENCE_SIZE + 1))


def test_constructor_checks(evidence: SnpEvidence) -> None:
    with pytest.raises(EvidenceFormatError, match="exactly one"):
        SnpEvidence(snp_report=evidence.snp_report)
    with pytest.raises(EvidenceFormatError, match="must be a tuple"):
        SnpEvidence(snp_report=evidence.snp_report, certs=cast("Any", list(evidence.certs)))
    with pytest.raises(EvidenceFormatError, match="cert_table is 0 bytes"):
        SnpEvidence(snp_report=evidence.snp_report, cert_table=b"")


def test_value_semantics(sp: SimulatedAmdSp, evidence: SnpEvidence) -> None:
    same = parse_snp_evidence(evidence.to_bytes())
    other = SnpEvidence(snp_report=evidence.snp_report, cert_table=sp.cert_table())
    assert evidence == same
    assert hash(evidence) == hash(same)
    assert evidence != other
    assert evidence != object()
    assert repr(evidence) == "SnpEvidence(snp_report=<1184 bytes>, certs=<3 certificates>)"
    assert repr(other).endswith(f"cert_table=<{len(sp.cert_table())} bytes>)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        evidence.snp_report = b""  # type: ignore[misc]


def test_quote_qualifying_data() -> None:
    assert quote_qualifying_data(b"b" * 64) == hashlib.sha256(b"b" * 64).digest()


# --------------------------------------------------------------------------- attesters


def test_simulated_attester_binds_binder(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    attester = SimulatedSnpAttester(sp)
    assert attester.media_type == SNP_MEDIA_TYPE
    parsed = parse_snp_evidence(attester.evidence(binder))
    report = parse_snp_report(parsed.snp_report)
    assert report.report_data == binder
    assert report.measurement == SIM_MEASUREMENT
    assert parsed.certs == certs_of(sp)
    assert "Genoa" in repr(attester)


def test_simulated_attester_options(sp: SimulatedAmdSp) -> None:
    attester = SimulatedSnpAttester(
        sp, measurement=OTHER_MEASUREMENT, vmpl=2, guest_policy=GuestPolicy(smt=True, debug=True)
    )
    report = parse_snp_report(parse_snp_evidence(attester.evidence(bytes(64))).snp_report)
    assert report.measurement == OTHER_MEASUREMENT
    assert report.vmpl == 2
    assert report.policy.debug


def test_simulated_attester_default_simulator(sp: SimulatedAmdSp) -> None:
    attester = SimulatedSnpAttester(product=ProductLine.GENOA)
    parsed = parse_snp_evidence(attester.evidence(bytes(64)))
    assert parsed.certs == certs_of(sp)  # the process-wide simulator


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_attesters_refuse_wrong_binder_length(sp: SimulatedAmdSp, size: int) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        SimulatedSnpAttester(sp).evidence(bytes(size))


class FakeGuest:
    """Stands in for the kernel interface (configfs-tsm / sev-guest)."""

    def __init__(self, sp: SimulatedAmdSp, table: bytes | None) -> None:
        self.sp = sp
        self.table = table
        self.calls: list[tuple[bytes, int]] = []

    def get_report(self, report_data: bytes, *, vmpl: int = 0) -> GuestReport:
        self.calls.append((report_data, vmpl))
        report = self.sp.build_report(report_data=report_data, vmpl=vmpl).to_bytes()
        return GuestReport(report=report, certs=self.table, manifest=None, provider="sev_guest")


def test_guest_attester_with_cert_table(sp: SimulatedAmdSp) -> None:
    guest = FakeGuest(sp, sp.cert_table())
    attester = GuestSnpAttester(cast("Any", guest), vmpl=1)
    binder = os.urandom(64)
    parsed = parse_snp_evidence(attester.evidence(binder))
    assert parsed.cert_table == sp.cert_table()
    assert guest.calls == [(binder, 1)]
    assert attester.media_type == SNP_MEDIA_TYPE
    assert repr(attester) == "GuestSnpAttester(vmpl=1)"


def test_guest_attester_with_configured_certs(sp: SimulatedAmdSp) -> None:
    attester = GuestSnpAttester(cast("Any", FakeGuest(sp, None)), certs=certs_of(sp))
    assert parse_snp_evidence(attester.evidence(bytes(64))).certs == certs_of(sp)


def test_guest_attester_without_any_certs(sp: SimulatedAmdSp) -> None:
    attester = GuestSnpAttester(cast("Any", FakeGuest(sp, None)))
    with pytest.raises(AttesterError, match="no certificate table"):
        attester.evidence(bytes(64))


def test_guest_attester_default_interface_is_unavailable_here() -> None:
    if os.path.exists("/dev/sev-guest") or os.path.isdir("/sys/kernel/config/tsm/report"):
        pytest.skip("this machine is an SEV-SNP guest")
    with pytest.raises(AttesterUnavailable, match="SEV-SNP guest"):
        GuestSnpAttester().evidence(bytes(64))


class FakeVtpmSource:
    def __init__(self, bundle: VtpmEvidence | None = None) -> None:
        self.calls: list[dict[str, object]] = []
        self.bundle = bundle
        self.activated: list[object] = []

    def collect_evidence(self, **kwargs: object) -> VtpmEvidence:
        self.calls.append(kwargs)
        assert self.bundle is not None
        return self.bundle

    def activate(self, credential: object) -> bytes:
        self.activated.append(credential)
        return b"secret"


def test_vtpm_bound_attester_passes_binder(vtpm_bundle: VtpmEvidence) -> None:
    source = FakeVtpmSource(vtpm_bundle)
    binder = os.urandom(64)
    attester = VtpmBoundAttester(cast("Any", source))
    assert attester.evidence(binder) == vtpm_bundle.to_bytes()
    assert source.calls == [{"binder": hashlib.sha256(binder).digest(), "nonce": binder}]
    assert attester.media_type == VTPM_MEDIA_TYPE
    assert attester.activate(cast("Any", "credential")) == b"secret"
    assert source.activated == ["credential"]
    assert "VtpmBoundAttester" in repr(attester)


def test_vtpm_bound_attester_selection(vtpm_bundle: VtpmEvidence) -> None:
    from ratls._tpm_structs import TpmAlgId

    source = FakeVtpmSource(vtpm_bundle)
    selection = {TpmAlgId.SHA256: (0, 1)}
    VtpmBoundAttester(cast("Any", source), selection=selection).evidence(bytes(64))
    assert source.calls[0]["selection"] == selection
    with pytest.raises(ValueError, match="64 bytes"):
        VtpmBoundAttester(cast("Any", source)).evidence(bytes(63))


# --------------------------------------------------------------------------- verifier


def verify(
    data: bytes, binder: bytes, policy: Policy | None = None, **kw: Any
) -> AttestationResult:
    return BoundVerifier(policy or sim_policy(), **kw).verify(data, binder)


def test_verifier_accepts_bound_evidence(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    policy = sim_policy()
    result = verify(SimulatedSnpAttester(sp).evidence(binder), binder, policy)
    assert isinstance(result, AttestationResult)
    assert result.profile == "snp"
    assert result.appraised
    assert not result.replayable
    assert result.trust_anchor == "simulator"
    assert result.policy_digest == policy.digest()
    assert result.snp.report.report_data == binder


def test_verifier_with_cert_table(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    guest = GuestSnpAttester(cast("Any", FakeGuest(sp, sp.cert_table())))
    assert verify(guest.evidence(binder), binder).snp.report.report_data == binder


def test_verifier_requires_a_policy() -> None:
    with pytest.raises(PolicyError, match="policy"):
        BoundVerifier(None)
    with pytest.raises(PolicyError):
        make_verifier(None)


def test_verifier_refuses_other_binder(sp: SimulatedAmdSp) -> None:
    # Relay and replay: evidence made for another connection's binder.
    data = SimulatedSnpAttester(sp).evidence(os.urandom(64))
    with pytest.raises(NonceMismatch, match=r"snp\.report_data") as info:
        verify(data, os.urandom(64))
    assert info.value.claim == "snp.report_data"


def test_verifier_refuses_key_substitution(sp: SimulatedAmdSp) -> None:
    # Same exporter, another TLS key's SPKI hash in the first half.
    binder = os.urandom(64)
    substituted = hashlib.sha256(b"another key").digest() + binder[32:]
    with pytest.raises(NonceMismatch):
        verify(SimulatedSnpAttester(sp).evidence(substituted), binder)


def test_verifier_refuses_wrong_measurement(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    data = SimulatedSnpAttester(sp, measurement=OTHER_MEASUREMENT).evidence(binder)
    with pytest.raises(MeasurementMismatch) as info:
        verify(data, binder)
    assert info.value.claim == "snp.measurement"
    assert info.value.actual == OTHER_MEASUREMENT


def test_verifier_refuses_debug_guest(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    data = SimulatedSnpAttester(sp, guest_policy=GuestPolicy(smt=True, debug=True)).evidence(binder)
    with pytest.raises(PolicyViolation, match="debug"):
        verify(data, binder)


def test_verifier_refuses_wrong_vmpl(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    data = SimulatedSnpAttester(sp, vmpl=3).evidence(binder)
    with pytest.raises(PolicyViolation, match="vmpl"):
        verify(data, binder)


def test_verifier_refuses_untrusted_simulator(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    data = SimulatedSnpAttester(sp).evidence(binder)
    policy = Policy(snp=SnpPolicy(measurements=frozenset({SIM_MEASUREMENT})))
    with pytest.raises(CertificateChainError, match="simulator"):
        verify(data, binder, policy)
    # ... unless the caller says so explicitly.
    assert verify(data, binder, policy, trust_simulator=True).trust_anchor == "simulator"


def test_verifier_refuses_forged_signature(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    parsed = parse_snp_evidence(SimulatedSnpAttester(sp).evidence(binder))
    report = bytearray(parsed.snp_report)
    report[0x90] ^= 1  # a byte of MEASUREMENT, under the signature
    forged = SnpEvidence(snp_report=bytes(report), certs=parsed.certs).to_bytes()
    with pytest.raises(SignatureMismatch):
        verify(forged, binder)


def test_verifier_refuses_foreign_chain(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    parsed = parse_snp_evidence(SimulatedSnpAttester(sp).evidence(binder))
    other = simulated_amd_sp(ProductLine.MILAN)
    swapped = SnpEvidence(snp_report=parsed.snp_report, certs=certs_of(other)).to_bytes()
    with pytest.raises(RatlsError):
        verify(swapped, binder)


def test_verifier_refuses_expired_chain(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    data = SimulatedSnpAttester(sp).evidence(binder)
    later = datetime.now(UTC) + timedelta(days=365 * 40)
    with pytest.raises(CertificateChainError):
        verify(data, binder, clock=lambda: later)


def test_verifier_refuses_garbage_and_wrong_binder_length(sp: SimulatedAmdSp) -> None:
    with pytest.raises(EvidenceFormatError):
        verify(b"\x00garbage", bytes(64))
    with pytest.raises(ValueError, match="64 bytes"):
        verify(SimulatedSnpAttester(sp).evidence(bytes(64)), bytes(32))


def test_verifier_accept_restricts_kinds(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    data = SimulatedSnpAttester(sp).evidence(binder)
    verifier = BoundVerifier(sim_policy(), accept=("snp+vtpm",))
    assert verifier.media_types == frozenset({VTPM_MEDIA_TYPE})
    with pytest.raises(PolicyViolation, match=r"evidence\.kind"):
        verifier.verify(data, binder)
    with pytest.raises(ValueError, match="accept"):
        BoundVerifier(sim_policy(), accept=())
    with pytest.raises(ValueError, match="accept"):
        BoundVerifier(sim_policy(), accept=("tdx",))


def test_verifier_repr_and_properties() -> None:
    policy = sim_policy()
    verifier = BoundVerifier(policy)
    assert verifier.policy is policy
    assert verifier.media_types == frozenset({SNP_MEDIA_TYPE, VTPM_MEDIA_TYPE})
    assert policy.digest()[:16] in repr(verifier)


# --------------------------------------------------------------------------- SNP + vTPM


@pytest.fixture(scope="module")
def vtpm_attester(sp: SimulatedAmdSp) -> Any:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm not installed")
    with SimulatedVtpmAttester(sp) as attester:
        yield attester


@pytest.fixture(scope="module")
def vtpm_bundle(vtpm_attester: SimulatedVtpmAttester) -> VtpmEvidence:
    from ratls._vtpm_evidence import parse_vtpm_evidence

    return parse_vtpm_evidence(vtpm_attester.evidence(bytes(64)))


def unproven_ok() -> Policy:
    return dataclasses.replace(sim_policy(), vtpm=VtpmPolicy(allow_unproven_ak=True))


@needs_swtpm
def test_vtpm_evidence_binds_binder(vtpm_attester: SimulatedVtpmAttester) -> None:
    from ratls._tpm_structs import parse_tpms_attest
    from ratls._vtpm_evidence import parse_vtpm_evidence

    binder = os.urandom(64)
    bundle = parse_vtpm_evidence(vtpm_attester.evidence(binder))
    assert bundle.svsm_nonce == binder
    assert parse_tpms_attest(bundle.quote_attest).extra_data == hashlib.sha256(binder).digest()


@needs_swtpm
def test_vtpm_unproven_ak_refused_by_default(vtpm_attester: SimulatedVtpmAttester) -> None:
    binder = os.urandom(64)
    with pytest.raises(PolicyViolation, match="unproven") as info:
        verify(vtpm_attester.evidence(binder), binder)
    assert info.value.claim == "vtpm.ak_binding"


@needs_swtpm
def test_vtpm_accepted_when_policy_allows_unproven(vtpm_attester: SimulatedVtpmAttester) -> None:
    binder = os.urandom(64)
    result = verify(vtpm_attester.evidence(binder), binder, unproven_ok())
    assert result.profile == "svsm"
    assert result.ak_binding == "unproven"
    assert result.appraised


@needs_swtpm
def test_vtpm_verification_yields_the_two_signature_checks(
    vtpm_attester: SimulatedVtpmAttester,
) -> None:
    # The calls a stream may make on a worker thread are the SNP report's ECDSA P-384
    # check and the quote's signature check; forged signatures still fail there.
    binder = os.urandom(64)
    evidence = vtpm_attester.evidence(binder)
    steps = BoundVerifier(unproven_ok()).verify_steps(evidence, binder)
    calls = 0
    try:
        call = next(steps)
        while True:
            calls += 1
            call = steps.send(call())
    except StopIteration as stop:
        result = stop.value
    assert calls == 2
    assert isinstance(result, AttestationResult)
    inline = verify(evidence, binder, unproven_ok())
    assert result.profile == inline.profile == "svsm"
    assert result.snp is not None
    assert inline.snp is not None
    assert result.snp.report == inline.snp.report
    assert result.ak_binding == inline.ak_binding


@needs_swtpm
def test_vtpm_report_with_a_forged_signature_refused(
    vtpm_attester: SimulatedVtpmAttester,
) -> None:
    from ratls._vtpm_evidence import parse_vtpm_evidence

    binder = os.urandom(64)
    bundle = parse_vtpm_evidence(vtpm_attester.evidence(binder))
    assert bundle.snp_report is not None
    report = bytearray(bundle.snp_report)
    report[0x2A0] ^= 1  # a bit of the signature's R
    forged = dataclasses.replace(bundle, snp_report=bytes(report)).to_bytes()
    with pytest.raises(SignatureMismatch) as info:
        verify(forged, binder, unproven_ok())
    assert info.value.claim == "snp.signature"


@needs_swtpm
async def test_vtpm_quote_with_a_forged_signature_refused_on_a_worker(
    vtpm_attester: SimulatedVtpmAttester,
) -> None:
    from ratls._offload import drive
    from ratls._vtpm_evidence import parse_vtpm_evidence

    binder = os.urandom(64)
    bundle = parse_vtpm_evidence(vtpm_attester.evidence(binder))
    signature = bytearray(bundle.quote_signature)
    signature[-1] ^= 1  # the last byte of the ECDSA S
    forged = dataclasses.replace(bundle, quote_signature=bytes(signature)).to_bytes()
    for offload in (False, True):  # made here, and made on the worker pool
        steps = BoundVerifier(unproven_ok()).verify_steps(forged, binder)
        with pytest.raises(SignatureMismatch) as info:
            await drive(steps, offload=offload)
        assert info.value.claim == "tpm.quote.signature"
        assert isinstance(info.value.__cause__, InvalidSignature)


@needs_swtpm
def test_vtpm_other_binder_refused(vtpm_attester: SimulatedVtpmAttester) -> None:
    data = vtpm_attester.evidence(os.urandom(64))
    with pytest.raises(NonceMismatch):
        verify(data, os.urandom(64), unproven_ok())


@needs_swtpm
def test_vtpm_quote_for_other_binder_refused(
    vtpm_attester: SimulatedVtpmAttester, vtpm_bundle: VtpmEvidence
) -> None:
    # The SVSM nonce is right, but the quote was made for another connection.
    binder = os.urandom(64)
    from ratls._vtpm_evidence import parse_vtpm_evidence

    current = parse_vtpm_evidence(vtpm_attester.evidence(binder))
    mixed = dataclasses.replace(
        current,
        quote_attest=vtpm_bundle.quote_attest,
        quote_signature=vtpm_bundle.quote_signature,
        pcrs=vtpm_bundle.pcrs,
    )
    with pytest.raises(NonceMismatch):
        verify(mixed.to_bytes(), binder, unproven_ok())


@needs_swtpm
def test_vtpm_wrong_measurement(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    with SimulatedVtpmAttester(sp, measurement=OTHER_MEASUREMENT) as attester:
        data = attester.evidence(binder)
        assert "running" in repr(attester)
    assert "closed" in repr(attester)
    with pytest.raises(MeasurementMismatch):
        verify(data, binder, unproven_ok())
    with pytest.raises(AttesterError, match="shut down"):
        attester.evidence(binder)


@needs_swtpm
def test_vtpm_svsm_paper_profile(sp: SimulatedAmdSp) -> None:
    from ratls._vtpm_evidence import VtpmProfile

    binder = os.urandom(64)
    with SimulatedVtpmAttester(sp, profile=VtpmProfile.SVSM_PAPER) as attester:
        data = attester.evidence(binder)
        other = attester.evidence(os.urandom(64))
    result = verify(data, binder, unproven_ok())
    assert result.profile == "svsm-paper"
    with pytest.raises(NonceMismatch):  # the boot-time report is fine; the quote is not
        verify(other, binder, unproven_ok())


def test_simulated_vtpm_attester_refuses_azure() -> None:
    from ratls._vtpm_evidence import VtpmProfile

    with pytest.raises(ValueError, match="azure"):
        SimulatedVtpmAttester(profile=VtpmProfile.AZURE)
    attester = SimulatedVtpmAttester()
    assert "off" in repr(attester)
    attester.close()
    attester.close()


# --------------------------------------------------------------------------- registry


def test_attester_names() -> None:
    assert ATTESTER_NAMES == ("sim", "sim+vtpm", "snp", "snp+vtpm", "azure", "none")
    assert attester_names()[: len(ATTESTER_NAMES)] == ATTESTER_NAMES


def test_make_attester_sim_and_none(tmp_path: Path) -> None:
    assert make_attester("none") is None
    sim = make_attester("sim")
    assert isinstance(sim, SimulatedSnpAttester)
    assert make_attester("sim", unrelated_option=1) is not None
    saved = make_attester("sim", sim_dir=tmp_path / "sim", product=ProductLine.MILAN)
    assert isinstance(saved, SimulatedSnpAttester)
    binder = os.urandom(64)
    again = make_attester("sim", sim_dir=tmp_path / "sim", product=ProductLine.MILAN)
    assert again is not None
    first = parse_snp_evidence(saved.evidence(binder)).certs
    assert parse_snp_evidence(again.evidence(binder)).certs == first  # same saved machine


def test_make_attester_unknown() -> None:
    with pytest.raises(ValueError, match=r"unknown attester 'tdx'.*sim"):
        make_attester("tdx")


def test_real_attesters_unavailable_here(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(AttesterUnavailable, match="not an SEV-SNP guest"):
        make_attester("snp", tsm_root=missing, sev_guest_device=missing)
    with pytest.raises(AttesterUnavailable, match="no SVSM vTPM"):
        make_attester("snp+vtpm", tsm_root=missing, tpm_device=missing)
    with pytest.raises(AttesterUnavailable, match="no vTPM here"):
        make_attester("azure", tpm_device=missing)
    device = tmp_path / "tpmrm0"
    device.touch()
    # A vTPM is there, but the VCEK chain (served by Azure's metadata service) was not given.
    with pytest.raises(AttesterUnavailable, match="pass certs="):
        make_attester("azure", tpm_device=str(device))


def test_real_attesters_created_when_interfaces_exist(tmp_path: Path) -> None:
    tsm = tmp_path / "tsm"
    tsm.mkdir()
    device = tmp_path / "tpmrm0"
    device.touch()
    missing = str(tmp_path / "missing")
    assert isinstance(
        make_attester("snp", tsm_root=str(tsm), sev_guest_device=missing), GuestSnpAttester
    )
    assert isinstance(
        make_attester("snp+vtpm", tsm_root=str(tsm), tpm_device=str(device)), VtpmBoundAttester
    )


@needs_swtpm
def test_make_attester_sim_vtpm() -> None:
    attester = make_attester("sim+vtpm")
    assert isinstance(attester, SimulatedVtpmAttester)
    attester.close()


def test_make_attester_sim_vtpm_without_swtpm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(AttesterUnavailable, match="swtpm"):
        make_attester("sim+vtpm")


def test_register_attester(sp: SimulatedAmdSp) -> None:
    seen: list[dict[str, object]] = []

    def factory(**options: object) -> SimulatedSnpAttester:
        seen.append(options)
        return SimulatedSnpAttester(sp)

    register_attester("test-sim", factory)
    try:
        assert "test-sim" in attester_names()
        assert isinstance(make_attester("test-sim", product=1), SimulatedSnpAttester)
        assert seen == [{"product": 1}]
        with pytest.raises(ValueError, match="taken"):
            register_attester("test-sim", factory)
    finally:
        unregister_attester("test-sim")
    assert "test-sim" not in attester_names()
    for name in ("sim", "none", ""):
        with pytest.raises(ValueError, match="taken"):
            register_attester(name, factory)
    with pytest.raises(ValueError, match="built in"):
        unregister_attester("sim")
    with pytest.raises(KeyError):
        unregister_attester("never-registered")


def test_make_attestation_config(sp: SimulatedAmdSp) -> None:
    verifier = make_verifier(sim_policy(), accept=("snp",))
    config = make_attestation_config(SimulatedSnpAttester(sp), verifier)
    assert config.media_type == SNP_MEDIA_TYPE
    assert config.accepted_media_types == frozenset({SNP_MEDIA_TYPE})
    # Both only compute: called in the event loop unless the caller asks for threads.
    assert not config.run_in_thread
    assert make_attestation_config(
        SimulatedSnpAttester(sp), verifier, run_in_thread=True
    ).run_in_thread

    class Unknown:  # says nothing about blocking: assumed to block
        def evidence(self, binder: bytes) -> bytes:
            return binder

    assert make_attestation_config(Unknown(), verifier).run_in_thread
    assert make_attestation_config(None, verifier).run_in_thread is False
    vtpm = make_attestation_config(SimulatedVtpmAttester(sp), verifier)
    assert vtpm.run_in_thread  # the swtpm is I/O: its thread stays
    assert not vtpm.verifier_in_thread  # verification only computes
    forced = make_attestation_config(SimulatedVtpmAttester(sp), verifier, run_in_thread=True)
    assert forced.run_in_thread
    assert forced.verifier_in_thread  # an explicit choice applies to both
    bare = make_attestation_config(None, None, run_in_thread=False)
    assert bare.media_type == DEFAULT_MEDIA_TYPE
    assert bare.accepted_media_types == frozenset({SNP_MEDIA_TYPE, VTPM_MEDIA_TYPE})
    assert not bare.run_in_thread


# --------------------------------------------------------------------------- activation


@needs_swtpm
def test_activation_round_trip_makes_ak_activated(vtpm_attester: SimulatedVtpmAttester) -> None:
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    verifier = BoundVerifier(sim_policy())  # the default policy: unproven AKs refused
    challenge = verifier.activation_challenge(data)
    assert challenge is not None
    response = vtpm_attester.respond(challenge.challenge_bytes())
    result = verifier.verify(data, binder, activation=challenge, response=response)
    assert result.ak_binding == "activated"
    assert result.profile == "svsm"


@needs_swtpm
def test_activation_wrong_secret_refused(vtpm_attester: SimulatedVtpmAttester) -> None:
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    verifier = BoundVerifier(sim_policy())
    challenge = verifier.activation_challenge(data)
    assert challenge is not None
    with pytest.raises(BindingMismatch):
        verifier.verify(data, binder, activation=challenge, response=os.urandom(32))


@needs_swtpm
def test_activation_for_other_evidence_refused(
    sp: SimulatedAmdSp, vtpm_attester: SimulatedVtpmAttester
) -> None:
    # A challenge answered by another VM (another EK and AK) does not prove this AK.
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    verifier = BoundVerifier(sim_policy())
    with SimulatedVtpmAttester(sp) as other:
        other_data = other.evidence(binder)
        other_challenge = verifier.activation_challenge(other_data)
        assert other_challenge is not None
        response = other.respond(other_challenge.challenge_bytes())
    with pytest.raises(BindingMismatch, match="activation"):
        verifier.verify(data, binder, activation=other_challenge, response=response)
    # ... and this VM's vTPM cannot answer a challenge sealed to the other EK.
    with pytest.raises(AttesterError):
        vtpm_attester.respond(other_challenge.challenge_bytes())


@needs_swtpm
def test_activation_halves_must_come_together(vtpm_attester: SimulatedVtpmAttester) -> None:
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    verifier = BoundVerifier(sim_policy())
    challenge = verifier.activation_challenge(data)
    assert challenge is not None
    with pytest.raises(BindingMismatch, match="without a response"):
        verifier.verify(data, binder, activation=challenge)
    with pytest.raises(BindingMismatch, match="without a challenge"):
        verifier.verify(data, binder, response=b"secret")


@needs_swtpm
def test_bound_activation_is_an_activation_state(vtpm_attester: SimulatedVtpmAttester) -> None:
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    verifier = BoundVerifier(sim_policy())
    first = verifier.activation_challenge(data)
    second = verifier.activation_challenge(data)
    assert first is not None
    assert second is not None
    assert isinstance(first, ActivationState)
    # What goes on the wire is the tpm2-tools credential file; every call seals anew.
    assert first.challenge_bytes() == first.challenge.credential.to_tpm2_tools_file()
    assert first.challenge_bytes() != second.challenge_bytes()
    # Value semantics; the secret never shows.
    same = BoundActivation(challenge=first.challenge)
    assert same == first
    assert hash(same) == hash(first)
    assert first != second
    assert object() != first
    assert repr(first).startswith("BoundActivation(challenge=ActivationChallenge(ek_name=")
    assert first.challenge.secret.hex() not in repr(first)
    # The answer to one challenge does not fit another of the same evidence.
    answer = vtpm_attester.respond(first.challenge_bytes())
    with pytest.raises(BindingMismatch):
        verifier.verify(data, binder, activation=second, response=answer)
    # A bare ActivationChallenge (made out of band) is accepted as well.
    result = verifier.verify(data, binder, activation=first.challenge, response=answer)
    assert result.ak_binding == "activated"
    with pytest.raises(TypeError):
        verifier.verify(data, binder, activation=cast("Any", object()), response=answer)


def test_no_activation_for_bare_snp(sp: SimulatedAmdSp) -> None:
    binder = os.urandom(64)
    data = SimulatedSnpAttester(sp).evidence(binder)
    verifier = BoundVerifier(sim_policy())
    assert verifier.activation_challenge(data) is None
    with pytest.raises(BindingMismatch, match="no vTPM"):
        verifier.verify(data, binder, response=b"secret")


def test_respond_refuses_malformed_challenge(vtpm_bundle: VtpmEvidence) -> None:
    attester = VtpmBoundAttester(cast("Any", FakeVtpmSource(vtpm_bundle)))
    with pytest.raises(EvidenceFormatError):
        attester.respond(b"not a credential")


# --------------------------------------------------------------------------- remembered activation


def _activated(verifier: BoundVerifier, attester: SimulatedVtpmAttester) -> AttestationResult:
    """One connection's worth: evidence, challenge, response, verification."""
    binder = os.urandom(64)
    data = attester.evidence(binder)
    activation = verifier.activation_challenge(data)
    assert activation is not None
    response = attester.respond(activation.challenge_bytes())
    return verifier.verify(data, binder, activation=activation, response=response)


@needs_swtpm
def test_passed_activation_is_remembered_per_ek_and_ak(
    vtpm_attester: SimulatedVtpmAttester,
) -> None:
    verifier = BoundVerifier(sim_policy())
    assert _activated(verifier, vtpm_attester).ak_binding == "activated"
    # The same vTPM again: no challenge, and the AK still counts as activated.
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    assert verifier.activation_challenge(data) is None
    assert verifier.verify(data, binder).ak_binding == "activated"
    # Another verifier knows nothing of it.
    fresh = BoundVerifier(sim_policy())
    assert fresh.activation_challenge(data) is not None
    with pytest.raises(PolicyViolation, match="unproven"):
        fresh.verify(data, binder)


@needs_swtpm
def test_remembered_activation_does_not_cover_another_vtpm(
    sp: SimulatedAmdSp, vtpm_attester: SimulatedVtpmAttester
) -> None:
    verifier = BoundVerifier(sim_policy())
    _activated(verifier, vtpm_attester)
    with SimulatedVtpmAttester(sp) as other:
        binder = os.urandom(64)
        data = other.evidence(binder)
        assert verifier.activation_challenge(data) is not None
        with pytest.raises(PolicyViolation, match="unproven"):
            verifier.verify(data, binder)


@needs_swtpm
def test_activation_memory_off_and_expiry(
    vtpm_attester: SimulatedVtpmAttester, monkeypatch: pytest.MonkeyPatch
) -> None:
    never = BoundVerifier(sim_policy(), activation_ttl=0)
    _activated(never, vtpm_attester)
    assert never.activation_challenge(vtpm_attester.evidence(os.urandom(64))) is not None

    verifier = BoundVerifier(sim_policy(), activation_ttl=60)
    _activated(verifier, vtpm_attester)
    data = vtpm_attester.evidence(os.urandom(64))
    assert verifier.activation_challenge(data) is None
    later = time.monotonic() + 61
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert verifier.activation_challenge(data) is not None


@needs_swtpm
def test_failed_verification_remembers_nothing(vtpm_attester: SimulatedVtpmAttester) -> None:
    # The activation itself succeeds, but the evidence fails the policy: not remembered.
    strict = dataclasses.replace(
        sim_policy(), snp=dataclasses.replace(sim_policy().snp, measurements=frozenset({bytes(48)}))
    )
    verifier = BoundVerifier(strict)
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    activation = verifier.activation_challenge(data)
    assert activation is not None
    response = vtpm_attester.respond(activation.challenge_bytes())
    with pytest.raises(MeasurementMismatch):
        verifier.verify(data, binder, activation=activation, response=response)
    assert verifier.activation_challenge(vtpm_attester.evidence(os.urandom(64))) is not None


@needs_swtpm
def test_wrong_response_is_not_remembered(vtpm_attester: SimulatedVtpmAttester) -> None:
    verifier = BoundVerifier(sim_policy())
    binder = os.urandom(64)
    data = vtpm_attester.evidence(binder)
    activation = verifier.activation_challenge(data)
    assert activation is not None
    with pytest.raises(BindingMismatch):
        verifier.verify(data, binder, activation=activation, response=bytes(32))
    assert verifier.activation_challenge(vtpm_attester.evidence(os.urandom(64))) is not None


@pytest.mark.parametrize("profile", [b"snp", 1, None])
def test_a_profile_that_is_not_text_is_refused_without_comparing_types(profile: object) -> None:
    # Under python -bb comparing bytes with str raises; a peer's non-text profile must
    # be refused as a format error all the same.
    with pytest.raises(EvidenceFormatError, match="profile"):
        parse_snp_evidence(_encode({0: SNP_EVIDENCE_VERSION, 1: profile, 2: bytes(1184)}))
