"""SEV-SNP verification and appraisal: one positive path per product/version/key, and a
negative test for every way evidence can be wrong."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from ratls._amd_certs import KeyKind
from ratls._errors import (
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    EvidenceVerificationError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyViolation,
    SignatureMismatch,
    TcbTooLow,
)
from ratls._policy import Policy, SnpPlatformRequirements, SnpPolicy, TcbMinimum, TrustPolicy
from ratls._result import AttestationResult
from ratls._snp_report import (
    SNP_SIGNED_SIZE,
    GuestPolicy,
    PlatformInfo,
    ProductLine,
    SignerInfo,
    SigningKey,
    TcbVersion,
)
from ratls._snp_verify import SnpEndorsements, VerifiedSnpReport, verify_snp_report
from ratls._verify import verify_snp_attestation
from ratls.sim import simulated_amd_sp

if TYPE_CHECKING:
    from ratls._snp_report import SnpReport
    from ratls.sim import SimulatedAmdSp

NONCE = bytes(range(64))
NOW = datetime.now(UTC)


def endorsements_of(sim: SimulatedAmdSp) -> SnpEndorsements:
    return SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)


def policy_for(sim: SimulatedAmdSp, **snp: object) -> Policy:
    measurement = sim.build_report(report_data=NONCE).measurement
    settings: dict[str, object] = {"measurements": frozenset({measurement})}
    settings.update(snp)
    return Policy(trust=TrustPolicy(simulated_hardware=True), snp=SnpPolicy(**settings))  # type: ignore[arg-type]


def attest(
    sim: SimulatedAmdSp,
    report: SnpReport | bytes,
    policy: Policy | None = None,
    *,
    nonce: bytes | None = NONCE,
    at: datetime = NOW,
    endorsements: SnpEndorsements | None = None,
) -> AttestationResult:
    raw = report if isinstance(report, bytes) else report.to_bytes()
    return verify_snp_attestation(
        raw,
        endorsements or endorsements_of(sim),
        policy=policy if policy is not None else policy_for(sim),
        at=at,
        expected_report_data=nonce,
    )


@pytest.fixture(scope="module")
def genoa() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA, KeyKind.VCEK)


@pytest.fixture(scope="module")
def milan() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.MILAN, KeyKind.VCEK)


# --- accepted evidence -------------------------------------------------------------------------


@pytest.mark.parametrize("product", list(ProductLine))
@pytest.mark.parametrize("version", [2, 3, 5])
@pytest.mark.parametrize("key_kind", list(KeyKind))
def test_valid_evidence_is_accepted(product: ProductLine, version: int, key_kind: KeyKind) -> None:
    sim = simulated_amd_sp(product, key_kind)
    report = sim.build_report(report_data=NONCE, version=version)
    result = attest(sim, report)
    assert result.snp.product is product
    assert result.snp.key_kind is key_kind
    assert result.trust_anchor == "simulator"
    assert result.appraised
    assert result.policy_digest == policy_for(sim).digest()
    assert result.snp.report.report_data == NONCE
    assert result.claims()["snp"]["product"] == product.value  # type: ignore[index]


def test_authenticity_only_without_policy(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    result = verify_snp_attestation(
        report.to_bytes(), endorsements_of(genoa), policy=None, at=NOW, trust_simulator=True
    )
    assert not result.appraised
    assert result.policy_digest is None


def test_results_cannot_be_forged(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    with pytest.raises(TypeError, match="no public constructor"):
        VerifiedSnpReport(report=report, chain=None, product=ProductLine.GENOA)  # type: ignore[arg-type]
    verified = attest(genoa, report)
    with pytest.raises(TypeError, match="no public constructor"):
        AttestationResult(
            profile="snp",
            snp=verified.snp,
            trust_anchor="AMD",
            appraised=True,
            policy_digest=None,
            verified_at=NOW,
        )
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.trust_anchor = "AMD"  # type: ignore[misc]


# --- authenticity failures ---------------------------------------------------------------------

#: (field, offset, size) of every signed field that is free-form data: flipping any of its
#: bits must break the signature (and nothing else first).
SIGNED_DATA_FIELDS = [
    ("guest_svn", 0x004, 4),
    ("family_id", 0x010, 16),
    ("image_id", 0x020, 16),
    ("vmpl", 0x030, 4),
    ("current_tcb", 0x038, 8),
    ("report_data", 0x050, 64),
    ("measurement", 0x090, 48),
    ("host_data", 0x0C0, 32),
    ("id_key_digest", 0x0E0, 48),
    ("author_key_digest", 0x110, 48),
    ("report_id", 0x140, 32),
    ("report_id_ma", 0x160, 32),
    ("reported_tcb", 0x180, 8),
    ("chip_id", 0x1A0, 64),
    ("committed_tcb", 0x1E0, 8),
    ("current_build", 0x1E8, 1),
    ("committed_build", 0x1EC, 1),
    ("launch_tcb", 0x1F0, 8),
]


@pytest.mark.parametrize(("name", "offset", "size"), SIGNED_DATA_FIELDS)
def test_every_signed_field_is_covered_by_the_signature(
    genoa: SimulatedAmdSp, name: str, offset: int, size: int
) -> None:
    raw = bytearray(genoa.build_report(report_data=NONCE).to_bytes())
    for position in (offset, offset + size - 1):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        with pytest.raises(SignatureMismatch) as info:
            attest(genoa, bytes(tampered), nonce=None)
        assert info.value.claim.startswith("snp.signature"), name


def test_policy_bits_are_signed(genoa: SimulatedAmdSp) -> None:
    raw = bytearray(genoa.build_report(report_data=NONCE).to_bytes())
    raw[0x008 + 2] ^= 0x08  # DEBUG (bit 19)
    with pytest.raises(SignatureMismatch):
        attest(genoa, bytes(raw), nonce=None)


@pytest.mark.parametrize("component", ["r", "s"])
def test_altered_signature_is_refused(genoa: SimulatedAmdSp, component: str) -> None:
    raw = bytearray(genoa.build_report(report_data=NONCE).to_bytes())
    raw[SNP_SIGNED_SIZE + (0 if component == "r" else 72)] ^= 0x01
    with pytest.raises(SignatureMismatch) as info:
        attest(genoa, bytes(raw))
    assert info.value.__cause__ is not None


def test_report_signed_by_another_chip_is_refused(genoa: SimulatedAmdSp) -> None:
    other = simulated_amd_sp(ProductLine.GENOA, KeyKind.VLEK)
    foreign = other.build_report(report_data=NONCE)
    # A VLEK-signed report presented with this chip's VCEK chain.
    with pytest.raises(EvidenceVerificationError):
        attest(genoa, foreign)


def test_wrong_vcek_for_the_chain_is_refused(genoa: SimulatedAmdSp, milan: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    mixed = SnpEndorsements(leaf=milan.leaf, intermediate=genoa.ask, root=genoa.ark)
    with pytest.raises(CertificateChainError):
        attest(genoa, report, endorsements=mixed)


def test_swapped_ask_and_ark_are_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    swapped = SnpEndorsements(leaf=genoa.leaf, intermediate=genoa.ark, root=genoa.ask)
    with pytest.raises(CertificateChainError):
        attest(genoa, report, endorsements=swapped)


def test_chain_of_another_product_is_refused(genoa: SimulatedAmdSp, milan: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    with pytest.raises((CertificateChainError, EvidenceFormatError)):
        attest(genoa, report, endorsements=endorsements_of(milan))


def test_simulator_root_is_not_trusted_by_default(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    strict = Policy(snp=SnpPolicy(measurements=frozenset({report.measurement})))
    with pytest.raises(CertificateChainError, match="simulat") as info:
        attest(genoa, report, strict)
    assert info.value.claim == "snp.trust_anchor"


def test_expired_and_not_yet_valid_chains_are_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    with pytest.raises(CertificateChainError):
        attest(genoa, report, at=NOW + timedelta(days=365 * 30))
    with pytest.raises(CertificateChainError):
        attest(genoa, report, at=NOW - timedelta(days=30))


def test_reported_tcb_must_match_the_vcek(genoa: SimulatedAmdSp) -> None:
    tcb = genoa.reported_tcb
    higher = dataclasses.replace(tcb, snp=tcb.snp + 1)
    report = genoa.build_report(
        report_data=NONCE,
        reported_tcb=higher,
        current_tcb=higher,
        committed_tcb=higher,
        launch_tcb=higher,
        allow_inconsistent=True,
    )
    with pytest.raises(EvidenceVerificationError) as info:
        attest(genoa, report)
    assert info.value.claim == "snp.reported_tcb.snp"
    assert info.value.actual == tcb.snp + 1


def test_chip_id_must_match_the_vcek_hwid(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(
        report_data=NONCE, chip_id=bytes(range(1, 65)), allow_inconsistent=True
    )
    with pytest.raises(BindingMismatch) as info:
        attest(genoa, report)
    assert info.value.claim == "snp.chip_id"


def test_turin_chip_id_is_compared_on_its_eight_bytes() -> None:
    turin = simulated_amd_sp(ProductLine.TURIN, KeyKind.VCEK)
    good = turin.build_report(report_data=NONCE)
    assert attest(turin, good).snp.product is ProductLine.TURIN
    bad_tail = good.chip_id[:8] + b"\x01" + bytes(55)
    report = turin.build_report(report_data=NONCE, chip_id=bad_tail, allow_inconsistent=True)
    with pytest.raises(BindingMismatch):
        attest(turin, report)


def test_unsigned_report_is_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(
        report_data=NONCE,
        signer_info=SignerInfo(signing_key=SigningKey.NONE),
        allow_inconsistent=True,
    )
    with pytest.raises(EvidenceFormatError, match="unsigned"):
        attest(genoa, report)


def test_truncated_and_padded_reports_are_refused(genoa: SimulatedAmdSp) -> None:
    raw = genoa.build_report(report_data=NONCE).to_bytes()
    for candidate in (raw[:-1], raw + b"\0", b""):
        with pytest.raises(EvidenceFormatError):
            attest(genoa, candidate)


def test_v2_report_takes_its_product_from_the_vcek(milan: SimulatedAmdSp) -> None:
    report = milan.build_report(report_data=NONCE, version=2)
    verified = verify_snp_report(
        report.to_bytes(), endorsements_of(milan), anchors=milan.anchors(), at=NOW
    )
    assert verified.product is ProductLine.MILAN
    with pytest.raises(CertificateChainError):
        verify_snp_report(
            report.to_bytes(),
            endorsements_of(milan),
            anchors=milan.anchors(),
            at=NOW,
            product=ProductLine.GENOA,
        )


# --- appraisal failures ------------------------------------------------------------------------


def test_wrong_nonce_is_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    with pytest.raises(NonceMismatch) as info:
        attest(genoa, report, nonce=bytes(64))
    assert info.value.claim == "snp.report_data"
    assert info.value.actual == NONCE


def test_unknown_measurement_is_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE, measurement=b"\x42" * 48)
    with pytest.raises(MeasurementMismatch) as info:
        attest(genoa, report)
    assert info.value.actual == b"\x42" * 48
    assert "42424242" in str(info.value)


@pytest.mark.parametrize(
    ("guest_policy", "claim"),
    [
        (GuestPolicy(debug=True), "snp.policy.debug"),
        (GuestPolicy(migrate_ma=True), "snp.policy.migrate_ma"),
        (GuestPolicy(cxl_allow=True), "snp.policy.cxl_allow"),
    ],
)
def test_dangerous_guest_policies_are_refused(
    genoa: SimulatedAmdSp, guest_policy: GuestPolicy, claim: str
) -> None:
    report = genoa.build_report(report_data=NONCE, policy=guest_policy)
    with pytest.raises(PolicyViolation) as info:
        attest(genoa, report)
    assert info.value.claim == claim


def test_debug_is_accepted_only_when_allowed(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE, policy=GuestPolicy(debug=True))
    assert attest(genoa, report, policy_for(genoa, allow_debug=True)).snp.report.policy.debug


def test_smt_refused_when_policy_forbids(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE, policy=GuestPolicy(smt=True))
    with pytest.raises(PolicyViolation, match=r"snp\.policy\.smt"):
        attest(genoa, report, policy_for(genoa, allow_smt=False))


def test_required_guest_policy_bits(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    with pytest.raises(PolicyViolation, match="single_socket"):
        attest(genoa, report, policy_for(genoa, require_single_socket=True))
    with pytest.raises(PolicyViolation, match=r"snp\.policy\.abi"):
        attest(genoa, report, policy_for(genoa, minimum_abi_major=1))


def test_wrong_vmpl_is_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE, vmpl=1)
    with pytest.raises(PolicyViolation) as info:
        attest(genoa, report)
    assert (info.value.claim, info.value.expected, info.value.actual) == ("snp.vmpl", 0, 1)
    assert attest(genoa, report, policy_for(genoa, vmpl=None)).snp.report.vmpl == 1


def test_tcb_below_minimum_is_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    floor = report.reported_tcb.microcode + 1
    with pytest.raises(TcbTooLow) as info:
        attest(genoa, report, policy_for(genoa, minimum_tcb=TcbMinimum(microcode=floor)))
    assert info.value.claim == "snp.reported_tcb.microcode"


def test_launch_tcb_below_minimum_is_refused(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    floor = report.launch_tcb.snp + 1
    with pytest.raises(TcbTooLow, match=r"snp\.launch_tcb\.snp"):
        attest(genoa, report, policy_for(genoa, minimum_launch_tcb=TcbMinimum(snp=floor)))


def test_firmware_version_and_build_minimums(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    with pytest.raises(TcbTooLow, match=r"snp\.current_version"):
        attest(genoa, report, policy_for(genoa, minimum_version=(report.current_major + 1, 0)))
    with pytest.raises(TcbTooLow, match=r"snp\.current_build"):
        attest(genoa, report, policy_for(genoa, minimum_build=report.current_build + 1))


def test_provisional_firmware_needs_permission(genoa: SimulatedAmdSp) -> None:
    tcb = genoa.reported_tcb
    newer = dataclasses.replace(tcb, snp=tcb.snp + 1)
    report = genoa.build_report(report_data=NONCE, current_tcb=newer)
    with pytest.raises(PolicyViolation, match=r"snp\.committed_tcb"):
        attest(genoa, report)
    assert attest(genoa, report, policy_for(genoa, allow_provisional_firmware=True))


def test_reported_tcb_above_current_is_refused(genoa: SimulatedAmdSp) -> None:
    tcb = genoa.reported_tcb
    older = dataclasses.replace(tcb, snp=max(tcb.snp - 1, 0), tee=max(tcb.tee - 1, 0))
    if older == tcb:  # pragma: no cover - the simulator's default TCB is above zero
        pytest.fail("simulator TCB too low for this test")
    report = genoa.build_report(
        report_data=NONCE, current_tcb=older, committed_tcb=older, launch_tcb=older
    )
    with pytest.raises(PolicyViolation, match="CURRENT_TCB"):
        attest(genoa, report)


def test_reference_values_are_exact(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE, host_data=b"\x01" * 32)
    with pytest.raises(PolicyViolation, match=r"snp\.host_data"):
        attest(genoa, report, policy_for(genoa, host_data=b"\x02" * 32))
    assert attest(genoa, report, policy_for(genoa, host_data=b"\x01" * 32))
    with pytest.raises(PolicyViolation, match=r"snp\.chip_id"):
        attest(genoa, report, policy_for(genoa, chip_ids=frozenset({b"\x09" * 64})))
    with pytest.raises(PolicyViolation, match=r"snp\.guest_svn"):
        attest(genoa, report, policy_for(genoa, minimum_guest_svn=1))
    with pytest.raises(PolicyViolation, match=r"snp\.image_id"):
        attest(genoa, report, policy_for(genoa, image_id=b"\x05" * 16))
    with pytest.raises(PolicyViolation, match=r"snp\.report_id"):
        attest(genoa, report, policy_for(genoa, report_ids=frozenset({b"\x05" * 32})))


def test_platform_info_requirements(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE, platform_info=PlatformInfo(smt_en=True))
    with pytest.raises(PolicyViolation, match=r"snp\.platform_info\.smt_en"):
        attest(genoa, report, policy_for(genoa, platform=SnpPlatformRequirements(allow_smt=False)))
    with pytest.raises(PolicyViolation, match=r"snp\.platform_info\.ecc_en"):
        attest(genoa, report, policy_for(genoa, platform=SnpPlatformRequirements(require_ecc=True)))


def test_id_block_and_author_key(genoa: SimulatedAmdSp) -> None:
    digest = b"\x07" * 48
    report = genoa.build_report(report_data=NONCE, id_key_digest=digest)
    accepted = policy_for(genoa, require_id_block=True, trusted_id_key_digests=frozenset({digest}))
    assert attest(genoa, report, accepted)
    with pytest.raises(PolicyViolation, match=r"snp\.id_key_digest"):
        attest(
            genoa,
            report,
            policy_for(genoa, require_id_block=True, trusted_id_key_digests=frozenset({bytes(48)})),
        )
    with pytest.raises(PolicyViolation, match=r"snp\.author_key_digest"):
        attest(
            genoa,
            report,
            policy_for(
                genoa, require_author_key=True, trusted_author_key_digests=frozenset({digest})
            ),
        )


def test_mitigation_vectors(genoa: SimulatedAmdSp) -> None:
    v5 = genoa.build_report(report_data=NONCE, version=5, launch_mit_vector=0b101)
    assert attest(genoa, v5, policy_for(genoa, required_launch_mit_vector=0b001))
    with pytest.raises(PolicyViolation, match=r"snp\.launch_mit_vector"):
        attest(genoa, v5, policy_for(genoa, required_launch_mit_vector=0b010))
    v3 = genoa.build_report(report_data=NONCE, version=3)
    with pytest.raises(PolicyViolation, match="absent"):
        attest(genoa, v3, policy_for(genoa, required_current_mit_vector=1))


def test_product_and_signing_key_restrictions(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    with pytest.raises(PolicyViolation, match=r"snp\.product"):
        attest(genoa, report, policy_for(genoa, products=frozenset({"Milan"})))
    with pytest.raises(PolicyViolation, match=r"snp\.signing_key"):
        attest(genoa, report, policy_for(genoa, signing_keys=frozenset({"vlek"})))


def test_tcb_version_is_reexported_for_policies() -> None:
    assert TcbVersion is not None


def test_endorsements_from_the_extended_report_certificate_table(genoa: SimulatedAmdSp) -> None:
    from ratls._snp_certtable import (
        CERT_TABLE_GUID_ARK,
        CERT_TABLE_GUID_VCEK,
        CertTableEntry,
        build_cert_table,
        parse_cert_table,
    )

    table = genoa.cert_table()
    endorsements = SnpEndorsements.from_cert_table(table)
    assert endorsements.leaf == genoa.leaf
    assert endorsements.root == genoa.ark
    report = genoa.build_report(report_data=NONCE)
    assert attest(genoa, report, endorsements=endorsements)

    entries = parse_cert_table(table).entries
    without_ark = build_cert_table([e for e in entries if e.guid != CERT_TABLE_GUID_ARK])
    with pytest.raises(EvidenceFormatError, match="no ARK"):
        SnpEndorsements.from_cert_table(without_ark)
    # The ARK may come from elsewhere (e.g. certs/amd/): it is checked against the pins anyway.
    assert SnpEndorsements.from_cert_table(without_ark, root=genoa.ark).root == genoa.ark
    without_vcek = build_cert_table([e for e in entries if e.guid != CERT_TABLE_GUID_VCEK])
    with pytest.raises(EvidenceFormatError, match="no VCEK or VLEK"):
        SnpEndorsements.from_cert_table(without_vcek)
    only_vcek = build_cert_table([CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"\x30\x00")])
    with pytest.raises(EvidenceFormatError):
        SnpEndorsements.from_cert_table(only_vcek)


def test_product_names() -> None:
    from ratls._snp_verify import product_from_name

    assert product_from_name("Milan-B0") is ProductLine.MILAN
    assert product_from_name("genoa") is ProductLine.GENOA
    assert product_from_name("Turin") is ProductLine.TURIN
    with pytest.raises(EvidenceFormatError, match="Naples"):
        product_from_name("Naples")


def test_masked_chip_id_is_accepted_but_policy_can_require_one(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(
        report_data=NONCE,
        signer_info=SignerInfo(signing_key=SigningKey.VCEK, mask_chip_key=True),
        chip_id=bytes(64),
    )
    assert attest(genoa, report).snp.report.chip_id == bytes(64)
    with pytest.raises(PolicyViolation, match=r"snp\.chip_id"):
        attest(genoa, report, policy_for(genoa, chip_ids=frozenset({genoa.chip_id})))


def test_committed_firmware_version_must_match_unless_provisional(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE, committed_build=genoa_build(genoa) - 1)
    with pytest.raises(PolicyViolation, match=r"snp\.committed_version"):
        attest(genoa, report)
    assert attest(genoa, report, policy_for(genoa, allow_provisional_firmware=True))
    ahead = genoa.build_report(report_data=NONCE, committed_build=genoa_build(genoa) + 1)
    with pytest.raises(PolicyViolation, match=r"snp\.committed_version"):
        attest(genoa, ahead, policy_for(genoa, allow_provisional_firmware=True))


def genoa_build(sim: SimulatedAmdSp) -> int:
    return sim.build_report(report_data=NONCE).current_build


def test_fmc_minimum_applies_only_where_there_is_an_fmc(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE)
    assert attest(genoa, report, policy_for(genoa, minimum_tcb=TcbMinimum(fmc=200)))
    turin = simulated_amd_sp(ProductLine.TURIN, KeyKind.VCEK)
    turin_report = turin.build_report(report_data=NONCE)
    with pytest.raises(TcbTooLow, match=r"snp\.reported_tcb\.fmc"):
        attest(turin, turin_report, policy_for(turin, minimum_tcb=TcbMinimum(fmc=200)))


def test_verified_chains_are_remembered_but_expiry_still_applies(
    genoa: SimulatedAmdSp, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ratls._snp_verify as snp_verify

    calls: list[object] = []
    real = snp_verify.verify_amd_chain  # type: ignore[attr-defined]

    def counting(**kwargs: object) -> object:
        calls.append(kwargs)
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snp_verify, "verify_amd_chain", counting)
    monkeypatch.setattr(snp_verify, "_chain_cache", type(snp_verify._chain_cache)())
    monkeypatch.setattr(snp_verify, "_chain_by_object", {})
    report = genoa.build_report(report_data=NONCE)
    attest(genoa, report)
    attest(genoa, report)
    assert len(calls) == 1
    # Outside the certificates' validity the memo is not used, and the chain fails.
    with pytest.raises(CertificateChainError):
        attest(genoa, report, at=NOW + timedelta(days=365 * 30))
    assert len(calls) == 2
    # Other anchors (AMD's only) are another key: the simulator root is refused again.
    strict = Policy(snp=SnpPolicy(measurements=frozenset({report.measurement})))
    with pytest.raises(CertificateChainError):
        attest(genoa, report, strict)
    # A tampered report still fails its own signature check with a remembered chain.
    raw = bytearray(report.to_bytes())
    raw[0x90] ^= 1
    with pytest.raises(SignatureMismatch):
        attest(genoa, bytes(raw), nonce=None)


def test_report_data_is_checked_without_a_policy_too(genoa: SimulatedAmdSp) -> None:
    report = genoa.build_report(report_data=NONCE).to_bytes()
    endorsements = endorsements_of(genoa)
    result = verify_snp_attestation(
        report, endorsements, policy=None, at=NOW, expected_report_data=NONCE, trust_simulator=True
    )
    assert not result.appraised
    with pytest.raises(NonceMismatch):
        verify_snp_attestation(
            report,
            endorsements,
            policy=None,
            at=NOW,
            expected_report_data=bytes(64),
            trust_simulator=True,
        )
