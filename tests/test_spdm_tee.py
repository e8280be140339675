"""The CPU-TEE mapping of SPDM: measurement blocks, responder identity, requester checks.

Requester and responder machines talk in memory here; tests/test_spdm_io.py puts them on
sockets.  Tests marked ``swtpm`` quote a real swtpm vTPM through the simulated SVSM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from der_surgery import children, edit_tbs, element, tlv
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import (
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyViolation,
    RatlsError,
)
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._snp_report import ProductLine
from ratls.sim import SimulatedAmdSp, simulated_amd_sp
from ratls.spdm import (
    BINDER_LABEL,
    DMTF_EKU_RESPONDER_AUTH,
    BaseAsymAlgo,
    CertChain,
    DeviceMode,
    GetCertificate,
    GetDigests,
    GetMeasurements,
    GetVersion,
    MctpBinding,
    MeasurementBlock,
    MeasurementContext,
    MeasurementHashAlgo,
    MeasurementIndex,
    Measurements,
    Requester,
    RequesterConfig,
    Responder,
    SimulatedSnpAttester,
    SimulatedSvsmAttester,
    TeeEvidence,
    TeeResponderIdentity,
    VerifiedResponderIdentity,
    VerifiedTeeMeasurements,
    check_leaf_profile,
    get_capabilities_request,
    negotiate_algorithms_request,
    parse_device_mode,
    tee_binder,
    tee_measurement_blocks,
    verify_responder_chain,
    verify_tee_measurements,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

NOW = datetime.now(UTC)
P384 = BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384
P256 = BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256


def sim_policy(**snp: object) -> Policy:
    """A policy that trusts the simulator, waives the allowlist unless given one."""
    options: dict[str, object] = {"allow_any_measurement": True}
    options.update(snp)
    return Policy(
        snp=SnpPolicy(**options),  # type: ignore[arg-type]
        vtpm=VtpmPolicy(allow_unproven_ak=True),
        trust=TrustPolicy(simulated_hardware=True),
    )


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


@pytest.fixture(scope="module")
def identity(sp: SimulatedAmdSp) -> TeeResponderIdentity:
    return TeeResponderIdentity.create(SimulatedSnpAttester(sp), now=NOW)


@dataclasses.dataclass
class Exchange:
    """What the requester saw: its machine, the slot-0 chain, and one signed MEASUREMENTS."""

    requester: Requester
    chain: CertChain
    nonce: bytes
    blocks: tuple[MeasurementBlock, ...]


def run_pair(identity: TeeResponderIdentity) -> Exchange:
    """VCA, DIGESTS, CERTIFICATE and one signed, raw MEASUREMENTS, in memory."""
    responder = Responder(identity.responder_config(binding=MctpBinding()))
    config = RequesterConfig()
    requester = Requester(config)

    def ask(data: bytes) -> object:
        responder.receive_data(data)
        requester.receive_data(responder.data_to_send())
        return requester.next_event()

    ask(requester.send(GetVersion()))
    ask(requester.send(get_capabilities_request(config)))
    ask(requester.send(negotiate_algorithms_request(config)))
    ask(requester.send(GetDigests()))
    offset = 0
    while True:
        cert = ask(requester.send(GetCertificate(slot_id=0, offset=offset, length=0x1000)))
        offset += cert.portion_length  # type: ignore[attr-defined]
        if not cert.remainder_length:  # type: ignore[attr-defined]
            break
    nonce = os.urandom(32)
    answer = ask(
        requester.send(
            GetMeasurements(
                measurement_operation=0xFF,
                signature_requested=True,
                raw_bit_stream_requested=True,
                nonce=nonce,
            )
        )
    )
    assert isinstance(answer, Measurements)
    chain = requester.certificate_chain(0)
    assert chain is not None
    return Exchange(requester=requester, chain=chain, nonce=nonce, blocks=answer.measurement_record)


def leaf_of(identity: TeeResponderIdentity) -> x509.Certificate:
    return identity.certificate


def replace_block(
    blocks: tuple[MeasurementBlock, ...],
    index: int,
    **changes: Any,
) -> tuple[MeasurementBlock, ...]:
    return tuple(dataclasses.replace(b, **changes) if b.index == index else b for b in blocks)


# --------------------------------------------------------------------------- binder


def test_binder_is_sha512_over_label_nonce_and_spki_hash() -> None:
    import hashlib

    nonce, spki = bytes(range(32)), b"spki"
    expected = hashlib.sha512(
        BINDER_LABEL + b"\x00" + nonce + hashlib.sha256(spki).digest()
    ).digest()
    assert tee_binder(nonce, spki) == expected
    assert len(expected) == 64
    assert tee_binder(bytes(32), spki) != expected
    assert tee_binder(nonce, b"other") != expected


def test_binder_refuses_a_nonce_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        tee_binder(bytes(31), b"spki")


# --------------------------------------------------------------------------- device mode

DEVICE_MODE = DeviceMode.for_debug(True)


def test_device_mode_whole_input_round_trips() -> None:
    data = DEVICE_MODE.to_bytes()
    assert len(data) == 16
    assert parse_device_mode(data) == DEVICE_MODE
    assert parse_device_mode(data).to_bytes() == data


def test_device_mode_every_truncation_raises() -> None:
    data = DEVICE_MODE.to_bytes()
    for size in range(len(data)):
        with pytest.raises(EvidenceFormatError):
            parse_device_mode(data[:size])


def test_device_mode_trailing_byte_raises() -> None:
    with pytest.raises(EvidenceFormatError):
        parse_device_mode(DEVICE_MODE.to_bytes() + b"\x00")


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_device_mode_arbitrary_bytes_raise_only_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_device_mode(data)


def test_device_mode_debug_bits_follow_dsp0274() -> None:
    on, off = DeviceMode.for_debug(True), DeviceMode.for_debug(False)
    assert on.device_mode_state == 0b1010  # InvasiveDebugModeIsActive | HasBeenActive
    assert off.device_mode_state == 0
    assert on.invasive_debug
    assert not off.invasive_debug
    assert on.operational_mode_state == 0b100  # NormalMode
    with pytest.raises(ValueError, match="u32"):
        dataclasses.replace(on, device_mode_state=1 << 32)


# --------------------------------------------------------------------------- blocks


def test_snp_only_blocks_follow_the_mapping(sp: SimulatedAmdSp) -> None:
    report = sp.build_report(report_data=bytes(64)).to_bytes()
    blocks = tee_measurement_blocks(
        TeeEvidence(snp_report=report),
        measurement_hash_algo=MeasurementHashAlgo.TPM_ALG_SHA_384,
    )
    assert [(b.index, b.value_type) for b in blocks] == [(0x01, 0x00), (0x02, 0x84), (0xFE, 0x85)]
    assert blocks[1].value == report
    assert blocks[0].value == report[0x90:0xC0]  # MEASUREMENT
    assert parse_device_mode(blocks[2].value) == DeviceMode.for_debug(False)


def test_digests_under_sha384_and_raw_otherwise(sp: SimulatedAmdSp) -> None:
    evidence = TeeEvidence(
        snp_report=sp.build_report(report_data=bytes(64)).to_bytes(),
        ek_public=b"ek",
        ak_public=b"ak",
        quote_attest=b"attest",
        quote_signature=b"sig",
        pcrs=((0, bytes(48)), (1, b"\x01" * 48)),
    )
    digest = tee_measurement_blocks(
        evidence, measurement_hash_algo=MeasurementHashAlgo.TPM_ALG_SHA_384
    )
    assert [(b.index, b.value_type) for b in digest] == [
        (0x01, 0x00),
        (0x02, 0x84),
        (0x03, 0x84),
        (0x04, 0x84),
        (0x05, 0x84),
        (0x06, 0x84),
        (0x10, 0x01),
        (0x11, 0x03),
        (0xFE, 0x85),
    ]
    raw = tee_measurement_blocks(
        evidence, measurement_hash_algo=MeasurementHashAlgo.TPM_ALG_SHA_256
    )
    assert [b.value_type for b in raw if b.index in (0x01, 0x10, 0x11)] == [0x80, 0x81, 0x83]
    assert [b.value for b in raw] == [b.value for b in digest]


def test_nonce_less_requests_get_one_cached_set(identity: TeeResponderIdentity) -> None:
    context = MeasurementContext(
        nonce=None,
        raw_bit_stream_requested=False,
        measurement_hash_algo=MeasurementHashAlgo.TPM_ALG_SHA_384,
    )
    assert identity(context) == identity(context)
    fresh = dataclasses.replace(context, nonce=bytes(32))
    assert identity(fresh) != identity(dataclasses.replace(fresh, nonce=b"\x01" * 32))


# --------------------------------------------------------------------------- identity


def test_identity_create_and_repr(sp: SimulatedAmdSp) -> None:
    p256 = TeeResponderIdentity.create(SimulatedSnpAttester(sp), curve="p256", now=NOW)
    assert p256.base_asym_algo == P256
    assert "PrivateKey" not in repr(p256)
    assert "secp256r1" in repr(p256)
    assert x509.load_der_x509_certificate(p256.certificate_der) == p256.certificate
    with pytest.raises(ValueError, match="unknown curve"):
        TeeResponderIdentity.create(SimulatedSnpAttester(sp), curve="p521")


def test_evidence_chain_is_accepted_and_bound(identity: TeeResponderIdentity) -> None:
    exchange = run_pair(identity)
    verified = verify_responder_chain(
        exchange.chain, base_asym_algo=P384, at=NOW, policy=sim_policy()
    )
    assert verified.mode == "evidence"
    assert verified.leaf == identity.certificate
    assert verified.result is not None
    assert verified.result.trust_anchor == "simulator"
    with pytest.raises(TypeError):
        VerifiedResponderIdentity(mode="evidence", leaf=verified.leaf, result=None)


def test_evidence_chain_refused_when_the_simulator_is_not_trusted(
    identity: TeeResponderIdentity,
) -> None:
    exchange = run_pair(identity)
    policy = Policy(snp=SnpPolicy(allow_any_measurement=True))
    with pytest.raises(CertificateChainError, match="simulator"):
        verify_responder_chain(exchange.chain, base_asym_algo=P384, at=NOW, policy=policy)


def test_trust_anchor_pins_the_certificate(identity: TeeResponderIdentity) -> None:
    exchange = run_pair(identity)
    verified = verify_responder_chain(
        exchange.chain, base_asym_algo=P384, at=NOW, trust_anchor=identity.certificate_der
    )
    assert verified.mode == "trust-anchor"
    assert verified.result is None


def test_trust_anchor_refuses_another_root(
    sp: SimulatedAmdSp,
    identity: TeeResponderIdentity,
) -> None:
    other = TeeResponderIdentity.create(SimulatedSnpAttester(sp), now=NOW)
    exchange = run_pair(identity)
    with pytest.raises(CertificateChainError, match="root"):
        verify_responder_chain(
            exchange.chain, base_asym_algo=P384, at=NOW, trust_anchor=other.certificate_der
        )


def _cert(
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    name: str = "leaf",
    issuer: str | None = None,
    ca: bool | None = False,
    usage: bool | None = True,
    eku: list[x509.ObjectIdentifier] | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=1))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if usage is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=usage,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=bool(ca),
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), False)
    return builder.sign(issuer_key or key, hashes.SHA384())


KEY = ec.generate_private_key(ec.SECP384R1())
REQUESTER_AUTH = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.4")


def test_the_evidence_leaf_passes_libspdms_leaf_rules(identity: TeeResponderIdentity) -> None:
    check_leaf_profile(identity.certificate, base_asym_algo=P384, at=NOW)


@pytest.mark.parametrize(
    ("cert", "algo", "claim"),
    [
        (_cert(KEY, ca=True), P384, "basic_constraints"),
        (_cert(KEY, usage=None), P384, "key_usage"),
        (_cert(KEY, usage=False), P384, "key_usage"),
        (_cert(KEY, eku=[REQUESTER_AUTH]), P384, "eku"),
        (_cert(KEY, not_after=NOW - timedelta(seconds=1)), P384, "validity"),
        (_cert(KEY), P256, "spki"),
        (_cert(KEY), BaseAsymAlgo.TPM_ALG_RSASSA_2048, "spki"),
    ],
    ids=[
        "ca-true",
        "no-key-usage",
        "no-digital-signature",
        "requester-eku",
        "expired",
        "wrong-curve",
        "not-ecdsa",
    ],
)
def test_leaf_rules_refuse(cert: x509.Certificate, algo: int, claim: str) -> None:
    with pytest.raises(CertificateChainError) as info:
        check_leaf_profile(cert, base_asym_algo=algo, at=NOW)
    assert info.value.claim == f"spdm.leaf.{claim}"


def test_leaf_with_a_repeated_extension_is_refused_in_our_terms() -> None:
    # cryptography parses extensions on first use; a repeated one raises there, and that
    # must come out as a refusal of the leaf, not as x509.DuplicateExtension.
    def repeat_first_extension(fields: list[bytes]) -> list[bytes]:
        wrapper = fields[-1]  # [3] EXPLICIT Extensions
        assert wrapper[0] == 0xA3
        start, _ = element(wrapper, 0)
        sequence = wrapper[start:]
        inner_start, _ = element(sequence, 0)
        extensions = children(sequence[inner_start:])
        doubled = tlv(0x30, b"".join([extensions[0], *extensions]))
        return [*fields[:-1], tlv(0xA3, doubled)]

    der = edit_tbs(_cert(KEY).public_bytes(serialization.Encoding.DER), repeat_first_extension)
    cert = x509.load_der_x509_certificate(der)
    with pytest.raises(CertificateChainError) as info:
        check_leaf_profile(cert, base_asym_algo=P384, at=NOW)
    assert info.value.claim == "spdm.leaf.extensions"
    assert isinstance(info.value.__cause__, x509.DuplicateExtension)


def test_leaf_rules_accept_the_usual_variants() -> None:
    for cert in (
        _cert(KEY, ca=None),
        _cert(KEY, eku=[REQUESTER_AUTH, DMTF_EKU_RESPONDER_AUTH]),
        _cert(KEY, eku=[DMTF_EKU_RESPONDER_AUTH]),
    ):
        check_leaf_profile(cert, base_asym_algo=P384, at=NOW)


def test_provisioned_chain_with_trust_anchor() -> None:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert(root_key, name="root", ca=True)
    leaf = _cert(KEY, root_key, issuer="root")
    der = [c.public_bytes(serialization.Encoding.DER) for c in (root, leaf)]
    chain = CertChain(root_hash=bytes(48), certificates=tuple(der))
    verified = verify_responder_chain(chain, base_asym_algo=P384, at=NOW, trust_anchor=der[0])
    assert verified.leaf == leaf
    # The same chain without an anchor: more than one certificate is not ours to judge.
    with pytest.raises(CertificateChainError, match="length"):
        verify_responder_chain(chain, base_asym_algo=P384, at=NOW, policy=sim_policy())
    # A leaf signed by someone else breaks the chain.
    forged = _cert(KEY, ec.generate_private_key(ec.SECP384R1()), issuer="root")
    bad = CertChain(
        root_hash=bytes(48),
        certificates=(der[0], forged.public_bytes(serialization.Encoding.DER)),
    )
    with pytest.raises(CertificateChainError, match=r"chain\[1\]"):
        verify_responder_chain(bad, base_asym_algo=P384, at=NOW, trust_anchor=der[0])


def test_a_chain_that_is_not_der_is_a_format_error() -> None:
    chain = CertChain(root_hash=bytes(48), certificates=(b"not a certificate",))
    with pytest.raises(EvidenceFormatError):
        verify_responder_chain(chain, base_asym_algo=P384, at=NOW)


# --------------------------------------------------------------------------- measurements


def test_fresh_snp_measurements_verify(identity: TeeResponderIdentity) -> None:
    exchange = run_pair(identity)
    verified = verify_tee_measurements(
        exchange.blocks,
        nonce=exchange.nonce,
        leaf=identity.certificate,
        at=NOW,
        policy=sim_policy(),
    )
    assert verified.result.profile == "snp"
    assert verified.result.snp.report.report_data == tee_binder(
        exchange.nonce,
        identity.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    assert verified.launch_measurement == verified.result.snp.report.measurement
    assert not verified.device_mode.invasive_debug
    assert verified.vtpm is None
    assert verified.pcrs == ()
    with pytest.raises(TypeError):
        VerifiedTeeMeasurements(
            result=verified.result,
            launch_measurement=b"",
            device_mode=verified.device_mode,
            pcrs=(),
            vtpm=None,
        )


def test_stale_nonce_is_refused(identity: TeeResponderIdentity) -> None:
    """Blocks replayed from an earlier exchange do not fit a new nonce."""
    old = run_pair(identity)
    with pytest.raises(NonceMismatch):
        verify_tee_measurements(
            old.blocks,
            nonce=os.urandom(32),
            leaf=identity.certificate,
            at=NOW,
            policy=sim_policy(),
        )


def test_blocks_relayed_from_another_responder_are_refused(
    sp: SimulatedAmdSp,
    identity: TeeResponderIdentity,
) -> None:
    other = TeeResponderIdentity.create(SimulatedSnpAttester(sp), now=NOW)
    exchange = run_pair(other)
    with pytest.raises(NonceMismatch):
        verify_tee_measurements(
            exchange.blocks,
            nonce=exchange.nonce,
            leaf=identity.certificate,
            at=NOW,
            policy=sim_policy(),
        )


def test_wrong_launch_measurement_fails_the_policy(identity: TeeResponderIdentity) -> None:
    exchange = run_pair(identity)
    with pytest.raises(MeasurementMismatch):
        verify_tee_measurements(
            exchange.blocks,
            nonce=exchange.nonce,
            leaf=identity.certificate,
            at=NOW,
            policy=sim_policy(allow_any_measurement=False, measurements=frozenset({bytes(48)})),
        )


def test_debug_guest_is_refused(sp: SimulatedAmdSp) -> None:
    debug = TeeResponderIdentity.create(SimulatedSnpAttester(sp, debug=True), now=NOW)
    exchange = run_pair(debug)
    found = {b.index: b for b in exchange.blocks}
    assert parse_device_mode(found[MeasurementIndex.DEVICE_MODE].value).invasive_debug
    with pytest.raises(PolicyViolation) as info:
        verify_tee_measurements(
            exchange.blocks,
            nonce=exchange.nonce,
            leaf=debug.certificate,
            at=NOW,
            policy=sim_policy(),
        )
    assert info.value.claim == "snp.policy.debug"
    # A policy that allows debugging accepts it, and the device mode says so.
    verified = verify_tee_measurements(
        exchange.blocks,
        nonce=exchange.nonce,
        leaf=debug.certificate,
        at=NOW,
        policy=sim_policy(allow_debug=True),
    )
    assert verified.device_mode.invasive_debug


def test_device_mode_that_hides_debugging_is_refused(identity: TeeResponderIdentity) -> None:
    exchange = run_pair(identity)
    lying = replace_block(
        exchange.blocks, MeasurementIndex.DEVICE_MODE, value=DeviceMode.for_debug(True).to_bytes()
    )
    with pytest.raises(BindingMismatch, match="device_mode"):
        verify_tee_measurements(
            lying, nonce=exchange.nonce, leaf=identity.certificate, at=NOW, policy=sim_policy()
        )


def test_launch_block_that_differs_from_the_report_is_refused(
    identity: TeeResponderIdentity,
) -> None:
    exchange = run_pair(identity)
    lying = replace_block(exchange.blocks, MeasurementIndex.LAUNCH_MEASUREMENT, value=bytes(48))
    with pytest.raises(MeasurementMismatch, match="launch"):
        verify_tee_measurements(
            lying, nonce=exchange.nonce, leaf=identity.certificate, at=NOW, policy=sim_policy()
        )


def test_fresh_report_of_another_guest_is_refused(
    sp: SimulatedAmdSp,
    identity: TeeResponderIdentity,
) -> None:
    """Right nonce and key, but a report of a guest with another launch digest."""
    exchange = run_pair(identity)
    spki = identity.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other = sp.build_report(
        report_data=tee_binder(exchange.nonce, spki), measurement=b"\x42" * 48
    ).to_bytes()
    swapped = replace_block(exchange.blocks, MeasurementIndex.SNP_REPORT, value=other)
    swapped = replace_block(swapped, MeasurementIndex.LAUNCH_MEASUREMENT, value=b"\x42" * 48)
    with pytest.raises(BindingMismatch, match="certificate"):
        verify_tee_measurements(
            swapped, nonce=exchange.nonce, leaf=identity.certificate, at=NOW, policy=sim_policy()
        )


def test_simulator_not_trusted(identity: TeeResponderIdentity) -> None:
    exchange = run_pair(identity)
    with pytest.raises(CertificateChainError, match="simulator"):
        verify_tee_measurements(
            exchange.blocks,
            nonce=exchange.nonce,
            leaf=identity.certificate,
            at=NOW,
            policy=Policy(snp=SnpPolicy(allow_any_measurement=True)),
        )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda blocks: tuple(b for b in blocks if b.index != MeasurementIndex.SNP_REPORT),
        lambda blocks: tuple(b for b in blocks if b.index != MeasurementIndex.DEVICE_MODE),
        lambda blocks: (*blocks, blocks[0]),
        lambda blocks: replace_block(blocks, MeasurementIndex.SNP_REPORT, value_type=0x04),
        lambda blocks: replace_block(blocks, MeasurementIndex.SNP_REPORT, value=b"short"),
        lambda blocks: replace_block(blocks, MeasurementIndex.DEVICE_MODE, value=bytes(15)),
        lambda blocks: (*blocks, MeasurementBlock(index=0x10, value_type=0x01, value=bytes(32))),
        lambda blocks: (*blocks, MeasurementBlock(index=0x03, value_type=0x84, value=b"ek")),
    ],
    ids=[
        "no-report",
        "no-device-mode",
        "duplicate",
        "report-not-raw",
        "short-report",
        "short-device-mode",
        "pcr-without-quote",
        "partial-vtpm",
    ],
)
def test_malformed_measurement_sets_are_format_errors(
    identity: TeeResponderIdentity, mutate: object
) -> None:
    exchange = run_pair(identity)
    blocks = mutate(exchange.blocks)  # type: ignore[operator]
    with pytest.raises(EvidenceFormatError):
        verify_tee_measurements(
            blocks, nonce=exchange.nonce, leaf=identity.certificate, at=NOW, policy=sim_policy()
        )


def test_a_certificate_without_evidence_cannot_verify_measurements(
    identity: TeeResponderIdentity,
) -> None:
    exchange = run_pair(identity)
    with pytest.raises(EvidenceFormatError, match="no evidence extension"):
        verify_tee_measurements(
            exchange.blocks, nonce=exchange.nonce, leaf=_cert(KEY), at=NOW, policy=sim_policy()
        )


# --------------------------------------------------------------------------- vTPM (swtpm)

swtpm = pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")


@pytest.fixture(scope="module")
def vtpm_identity(sp: SimulatedAmdSp) -> Iterator[TeeResponderIdentity]:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm not installed")
    from ratls.sim._svsm import SimulatedSvsm

    with SimulatedSvsm(sp) as svsm:
        yield TeeResponderIdentity.create(SimulatedSvsmAttester(svsm), now=NOW)


@pytest.mark.swtpm
@swtpm
def test_vtpm_measurements_verify(vtpm_identity: TeeResponderIdentity) -> None:
    exchange = run_pair(vtpm_identity)
    indexes = [b.index for b in exchange.blocks]
    assert indexes == [1, 2, 3, 4, 5, 6, *range(0x10, 0x18), 0xFE]
    assert all(b.value_type in (0x01, 0x03) for b in exchange.blocks if 0x10 <= b.index < 0xFE)
    verified = verify_tee_measurements(
        exchange.blocks,
        nonce=exchange.nonce,
        leaf=vtpm_identity.certificate,
        at=NOW,
        policy=sim_policy(),
    )
    assert verified.result.profile == "svsm"
    assert verified.vtpm is not None
    assert [i for i, _ in verified.pcrs] == list(range(8))


@pytest.mark.swtpm
@swtpm
def test_vtpm_replayed_quote_is_refused(vtpm_identity: TeeResponderIdentity) -> None:
    first, second = run_pair(vtpm_identity), run_pair(vtpm_identity)
    # Keep the fresh report of the second exchange but the quote of the first.
    mixed = tuple(
        next(b for b in first.blocks if b.index == x.index)
        if x.index in (MeasurementIndex.VTPM_QUOTE_ATTEST, MeasurementIndex.VTPM_QUOTE_SIGNATURE)
        else x
        for x in second.blocks
    )
    with pytest.raises(NonceMismatch):
        verify_tee_measurements(
            mixed,
            nonce=second.nonce,
            leaf=vtpm_identity.certificate,
            at=NOW,
            policy=sim_policy(),
        )


@pytest.mark.swtpm
@swtpm
def test_vtpm_pcr_block_that_was_not_quoted_is_refused(
    vtpm_identity: TeeResponderIdentity,
) -> None:
    exchange = run_pair(vtpm_identity)
    lying = replace_block(exchange.blocks, 0x10, value=b"\x55" * 48)
    with pytest.raises(BindingMismatch):
        verify_tee_measurements(
            lying,
            nonce=exchange.nonce,
            leaf=vtpm_identity.certificate,
            at=NOW,
            policy=sim_policy(),
        )


@pytest.mark.swtpm
@swtpm
def test_vtpm_pcr_reference_values_apply(vtpm_identity: TeeResponderIdentity) -> None:
    exchange = run_pair(vtpm_identity)
    policy = dataclasses.replace(
        sim_policy(),
        vtpm=VtpmPolicy(allow_unproven_ak=True, pcrs={"sha384": {0: frozenset({b"\x01" * 48})}}),
    )
    with pytest.raises(MeasurementMismatch):
        verify_tee_measurements(
            exchange.blocks,
            nonce=exchange.nonce,
            leaf=vtpm_identity.certificate,
            at=NOW,
            policy=policy,
        )


def test_svsm_attester_checks_its_arguments() -> None:
    class FakeSvsm:
        profile = "svsm-paper"

    with pytest.raises(ValueError, match="svsm profile"):
        SimulatedSvsmAttester(FakeSvsm())  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0xFE]),
            st.sampled_from([0x00, 0x01, 0x03, 0x80, 0x84, 0x85]),
            st.binary(max_size=64),
        ),
        max_size=10,
    )
)
def test_arbitrary_blocks_raise_only_ratls_errors(
    identity: TeeResponderIdentity, raw: list[tuple[int, int, bytes]]
) -> None:
    blocks = [MeasurementBlock(index=i, value_type=t, value=v) for i, t, v in raw]
    with contextlib.suppress(RatlsError):
        verify_tee_measurements(
            blocks, nonce=bytes(32), leaf=identity.certificate, at=NOW, policy=sim_policy()
        )
