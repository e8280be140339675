"""Evidence in X.509 certificates: builder, parsers, binding checks and verification."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import struct
import subprocess
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from der_surgery import edit_tbs
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import crypto

from ratls._amd_certs import der_tlv
from ratls._errors import (
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyViolation,
    RatlsError,
    SignatureMismatch,
)
from ratls._evidence_cert import (
    CLOCK_SKEW_MARGIN,
    DEFAULT_LIFETIME,
    MAX_EVIDENCE_EXTENSION_SIZE,
    AttestedCertificateBuilder,
    BindingStatus,
    CmwEvidenceBundle,
    EvidenceClaims,
    EvidenceTag,
    EvidenceType,
    HashAlgorithm,
    RatlsOID,
    TaggedEvidence,
    default_validity,
    encode_cmw_extension,
    inspect_evidence_certificate,
    load_evidence_certificate,
    parse_claims,
    parse_cmw_extension,
    parse_tagged_evidence,
    report_data_for_claims,
    spki_der,
    verify_evidence_certificate,
)
from ratls._policy import (
    DEFAULT_MAX_EVIDENCE_AGE_SECONDS,
    Policy,
    SnpPolicy,
    TrustPolicy,
    VtpmPolicy,
)
from ratls._snp_report import ProductLine
from ratls._snp_verify import SnpEndorsements
from ratls._vtpm_evidence import VtpmProfile
from ratls.sim import SimulatedAmdSp
from ratls.sim._amd_sp import _cached_ca_keys, simulated_amd_sp
from ratls.sim._svsm import SimulatedSvsm

VECTORS = Path(__file__).resolve().parent / "vectors" / "certs"
NOW = datetime.now(UTC).replace(microsecond=0)
Attester = Callable[[bytes], tuple[bytes, SnpEndorsements | None]]


# --- fixtures and building blocks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


@pytest.fixture(scope="module")
def chain(sim: SimulatedAmdSp) -> SnpEndorsements:
    return SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)


@pytest.fixture(scope="module")
def attester(sim: SimulatedAmdSp, chain: SnpEndorsements) -> Attester:
    def attest(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return sim.build_report(report_data=report_data).to_bytes(), chain

    return attest


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def cert(key: ec.EllipticCurvePrivateKey, attester: Attester) -> x509.Certificate:
    return AttestedCertificateBuilder().private_key(key).snp_evidence(attester).sign(now=NOW)


def simulator_policy(**snp: object) -> Policy:
    return Policy(
        snp=SnpPolicy(allow_any_measurement=True, **snp),  # type: ignore[arg-type]
        trust=TrustPolicy(simulated_hardware=True),
    )


def ext_value(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    value = certificate.extensions.get_extension_for_oid(oid).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def rebuild(
    source: x509.Certificate,
    signing_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None = None,
    replace: dict[x509.ObjectIdentifier, bytes] | None = None,
    add: Iterable[tuple[x509.ObjectIdentifier, bytes]] = (),
    drop: Iterable[x509.ObjectIdentifier] = (),
    critical: Iterable[x509.ObjectIdentifier] = (),
    issuer: x509.Name | None = None,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """Copy ``source`` with changes, signed by ``signing_key`` (a forger's tool)."""
    replace = replace or {}
    dropped, made_critical = set(drop), set(critical)
    builder = (
        x509.CertificateBuilder()
        .subject_name(source.subject)
        .issuer_name(issuer or source.issuer)
        .public_key(public_key or signing_key.public_key())
        .serial_number(source.serial_number)
        .not_valid_before(not_before or source.not_valid_before_utc)
        .not_valid_after(source.not_valid_after_utc)
    )
    for extension in source.extensions:
        if extension.oid in dropped:
            continue
        value = extension.value
        if extension.oid in replace:
            value = x509.UnrecognizedExtension(extension.oid, replace[extension.oid])
        builder = builder.add_extension(
            value, critical=extension.critical or extension.oid in made_critical
        )
    for oid, raw in add:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, raw), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def plain_cert(
    signing_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    extensions: Iterable[tuple[x509.ObjectIdentifier, bytes]],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other project")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signing_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=365))
    )
    for oid, raw in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, raw), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def sgx_quote(report_data: bytes, *, version: int = 3, tee_type: int = 0) -> bytes:
    """An ECDSA quote laid out per the facts: 48-byte header, report body, signature data."""
    body_size = 584 if tee_type == 0x81 else 384
    offset = 520 if tee_type == 0x81 else 320
    body = bytearray(body_size)
    body[offset : offset + 64] = report_data
    signature_data = bytes(range(64))
    header = struct.pack("<HHI", version, 2, tee_type) + bytes(40)
    return header + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


def tagged_ext(tag: int, evidence: bytes, claims: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, [evidence, claims]))


def claims_for(signing_key: ec.EllipticCurvePrivateKey, **extra: bytes) -> bytes:
    digest = hashlib.sha256(spki_der(signing_key.public_key())).digest()
    return cbor2.dumps({"pubkey-hash": cbor2.dumps([1, digest]), **extra})


def check_three_ways(data: bytes, parser: Callable[[bytes], object]) -> None:
    """Whole input parses; every truncation and a trailing byte raise EvidenceFormatError."""
    parser(data)
    for end in range(len(data)):
        with pytest.raises(EvidenceFormatError):
            parser(data[:end])
    with pytest.raises(EvidenceFormatError):
        parser(data + b"\x00")


# --- OIDs and enums ----------------------------------------------------------------------------


def test_oids_match_the_registered_values() -> None:
    assert RatlsOID.TCG_DICE_TAGGED_EVIDENCE.dotted_string == "2.23.133.5.4.9"
    assert RatlsOID.TCG_DICE_ENDORSEMENT_MANIFEST.dotted_string == "2.23.133.5.4.2"
    assert RatlsOID.CMW.dotted_string == "1.3.6.1.5.5.7.1.35"
    assert RatlsOID.RATS_TLS_LEGACY.dotted_string == "1.2.840.113741.1337.6"


def test_gramine_legacy_oid_is_the_nested_der_encoding() -> None:
    # Gramine writes 06 09 2A 86 48 86 F8 4D 8A 39 06 as the OID contents.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    signing_key = ec.generate_private_key(ec.SECP256R1())
    der = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signing_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(RatlsOID.GRAMINE_LEGACY, b"x"), critical=False)
        .sign(signing_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    assert bytes.fromhex("060b06092a864886f84d8a3906") in der


def test_tags_and_hash_ids() -> None:
    # 0x1A7504 is 1733892 (the decimal 1734916 quoted in some notes is 0x1A7904).
    assert int(EvidenceTag.AMD_SEV_SNP_REPORT) == 0x1A7504 == 1733892
    assert [int(t) for t in (EvidenceTag.INTEL_TEE_QUOTE, EvidenceTag.SGX_EREPORT)] == [
        60000,
        60002,
    ]
    assert [int(h) for h in HashAlgorithm] == [1, 7, 8]
    assert [h.digest_size for h in HashAlgorithm] == [32, 48, 64]
    assert HashAlgorithm.SHA384.digest(b"a") == hashlib.sha384(b"a").digest()


# --- round trip ----------------------------------------------------------------------------------


def test_round_trip_build_inspect_verify(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    found = inspect_evidence_certificate(cert)
    assert found.evidence_type is EvidenceType.SNP_REPORT
    assert found.tag is EvidenceTag.AMD_SEV_SNP_REPORT
    assert found.binding is BindingStatus.VERIFIED
    assert found.claims is not None
    assert found.claims.pubkey_hash == hashlib.sha256(spki_der(key.public_key())).digest()
    assert found.claims.pubkey_hash_alg is HashAlgorithm.SHA256
    assert found.claims.nonce is None
    assert found.claims_bytes is not None
    assert found.report_data == report_data_for_claims(found.claims_bytes)
    assert found.cmw is not None
    assert found.cmw.leaf_label == "vcek"
    assert found.also_present == ("id-pe-cmw",)

    result = verify_evidence_certificate(cert, policy=simulator_policy(), at=NOW)
    assert result.replayable is True
    assert result.appraised is True
    assert result.trust_anchor == "simulator"
    assert result.snp.report.report_data == found.report_data


def test_authenticity_only_without_policy(cert: x509.Certificate) -> None:
    result = verify_evidence_certificate(cert, policy=None, at=NOW, trust_simulator=True)
    assert result.appraised is False
    assert result.replayable is True


def test_claims_encoding_is_the_documented_one(cert: x509.Certificate) -> None:
    raw = ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE)
    assert raw[:5] == bytes.fromhex("da001a7504")  # tag 0x1A7504
    decoded = cbor2.loads(raw)
    report, claims = decoded.value
    assert len(report) == 0x4A0
    claims_map = cbor2.loads(claims)
    assert list(claims_map) == ["pubkey-hash"]
    alg, digest = cbor2.loads(claims_map["pubkey-hash"])
    assert alg == 1
    assert digest == hashlib.sha256(spki_der(cert)).digest()
    # REPORT_DATA at 0x50 holds SHA-256(claims) and 32 zero bytes.
    assert report[0x50:0x90] == hashlib.sha256(claims).digest() + bytes(32)


def test_cmw_extension_is_a_der_octet_string_of_a_cbor_collection(cert: x509.Certificate) -> None:
    raw = ext_value(cert, RatlsOID.CMW)
    assert raw[0] == 0x04
    bundle = parse_cmw_extension(raw)
    collection = cbor2.loads(bundle.to_cbor())
    assert collection["snp-report"][0] == "application/vnd.amd.sev-snp.attestation-report"
    assert collection["snp-report"][2] == 4
    assert [collection[k][2] for k in ("vcek", "ask", "ark")] == [2, 2, 2]


@pytest.mark.parametrize(
    ("curve_key", "algorithm"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA256),
        (lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384),
        (ed25519.Ed25519PrivateKey.generate, type(None)),
    ],
    ids=["p256", "p384", "ed25519"],
)
def test_key_types(
    curve_key: Callable[[], ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey],
    algorithm: type[object],
    attester: Attester,
) -> None:
    signing_key = curve_key()
    built = (
        AttestedCertificateBuilder().private_key(signing_key).snp_evidence(attester).sign(now=NOW)
    )
    assert isinstance(built.signature_hash_algorithm, algorithm)
    assert verify_evidence_certificate(built, policy=None, at=NOW, trust_simulator=True)


# --- the certificate profile -----------------------------------------------------------------


def test_profile(cert: x509.Certificate) -> None:
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW_MARGIN
    assert cert.not_valid_after_utc == NOW + DEFAULT_LIFETIME
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    for oid in (RatlsOID.TCG_DICE_TAGGED_EVIDENCE, RatlsOID.CMW):
        assert cert.extensions.get_extension_for_oid(oid).critical is False
    cert.verify_directly_issued_by(cert)
    assert timedelta(seconds=DEFAULT_MAX_EVIDENCE_AGE_SECONDS) > CLOCK_SKEW_MARGIN


def test_default_validity() -> None:
    assert default_validity(NOW) == (NOW - CLOCK_SKEW_MARGIN, NOW + DEFAULT_LIFETIME)


def test_explicit_validity_and_subject(key: ec.EllipticCurvePrivateKey, attester: Attester) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend-7")])
    start = NOW - timedelta(seconds=5)
    built = (
        AttestedCertificateBuilder()
        .subject(subject)
        .validity(start, start + timedelta(minutes=2))
        .snp_evidence(attester)
        .private_key(key)
        .sign()
    )
    assert built.subject == subject
    assert built.not_valid_before_utc == start
    assert built.not_valid_after_utc == start + timedelta(minutes=2)


# --- builder rules -----------------------------------------------------------------------------


def test_setters_return_new_builders(key: ec.EllipticCurvePrivateKey) -> None:
    empty = AttestedCertificateBuilder()
    with_key = empty.private_key(key)
    assert with_key is not empty
    assert "private_key" in repr(with_key)
    assert "private_key" not in repr(empty)
    with pytest.raises(ValueError, match="private_key"):
        empty.sign(now=NOW)


SETTERS: dict[str, Callable[[AttestedCertificateBuilder], AttestedCertificateBuilder]] = {
    "private_key": lambda b: b.private_key(ec.generate_private_key(ec.SECP256R1())),
    "snp_evidence": lambda b: b.snp_evidence(lambda rd: (rd, None)),
    "nonce": lambda b: b.nonce(b"n"),
    "validity": lambda b: b.validity(NOW, NOW + timedelta(minutes=1)),
    "subject": lambda b: b.subject(x509.Name([])),
}


@pytest.mark.parametrize("name", sorted(SETTERS))
def test_each_field_is_set_once(name: str) -> None:
    builder = SETTERS[name](AttestedCertificateBuilder())
    with pytest.raises(ValueError, match="only be set once"):
        SETTERS[name](builder)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda b: b.private_key(rsa.generate_private_key(65537, 2048)), TypeError),
        (lambda b: b.private_key("key"), TypeError),
        (lambda b: b.private_key(ec.generate_private_key(ec.SECP521R1())), ValueError),
        (lambda b: b.snp_evidence("report"), TypeError),
        (lambda b: b.snp_evidence((b"r",)), TypeError),
        (lambda b: b.snp_evidence(("r", None)), TypeError),
        (lambda b: b.nonce("n"), TypeError),
        (lambda b: b.nonce(b""), ValueError),
        (lambda b: b.validity("now", NOW), TypeError),
        (lambda b: b.validity(NOW.replace(tzinfo=None), NOW.replace(tzinfo=None)), ValueError),
        (lambda b: b.validity(NOW, NOW), ValueError),
        (lambda b: b.subject("CN=x"), TypeError),
    ],
)
def test_setters_check_types_and_values(
    call: Callable[[AttestedCertificateBuilder], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(AttestedCertificateBuilder())


def test_sign_checks_completeness(key: ec.EllipticCurvePrivateKey, attester: Attester) -> None:
    with pytest.raises(ValueError, match="snp_evidence"):
        AttestedCertificateBuilder().private_key(key).sign(now=NOW)
    with pytest.raises(ValueError, match="validity"):
        AttestedCertificateBuilder().private_key(key).snp_evidence(attester).sign()


def test_ready_made_evidence(
    key: ec.EllipticCurvePrivateKey, sim: SimulatedAmdSp, chain: SnpEndorsements
) -> None:
    claims = EvidenceClaims.for_key(key.public_key(), nonce=b"abc").to_bytes()
    report = sim.build_report(report_data=report_data_for_claims(claims)).to_bytes()
    built = (
        AttestedCertificateBuilder()
        .private_key(key)
        .nonce(b"abc")
        .snp_evidence((report, chain))
        .sign(now=NOW)
    )
    found = inspect_evidence_certificate(built)
    assert found.claims is not None
    assert found.claims.nonce == b"abc"


def test_builder_refuses_report_data_not_matching_claims(
    key: ec.EllipticCurvePrivateKey, sim: SimulatedAmdSp, chain: SnpEndorsements
) -> None:
    def careless(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return sim.build_report(report_data=bytes(64)).to_bytes(), chain

    with pytest.raises(BindingMismatch) as info:
        AttestedCertificateBuilder().private_key(key).snp_evidence(careless).sign(now=NOW)
    assert info.value.claim == "snp.report_data"


def test_builder_refuses_malformed_report(key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(EvidenceFormatError):
        AttestedCertificateBuilder().private_key(key).snp_evidence((b"short", None)).sign(now=NOW)


# --- freshness and validity ------------------------------------------------------------------


def test_nonce_claim_makes_the_result_not_replayable(
    key: ec.EllipticCurvePrivateKey, attester: Attester
) -> None:
    built = (
        AttestedCertificateBuilder()
        .private_key(key)
        .snp_evidence(attester)
        .nonce(b"n1")
        .sign(now=NOW)
    )
    result = verify_evidence_certificate(
        built, policy=None, at=NOW, trust_simulator=True, expected_nonce=b"n1"
    )
    assert result.replayable is False
    with pytest.raises(NonceMismatch):
        verify_evidence_certificate(
            built, policy=None, at=NOW, trust_simulator=True, expected_nonce=b"n2"
        )


def test_missing_nonce_claim_is_refused(cert: x509.Certificate) -> None:
    with pytest.raises(NonceMismatch):
        verify_evidence_certificate(
            cert, policy=None, at=NOW, trust_simulator=True, expected_nonce=b"n"
        )


def test_evidence_too_old(cert: x509.Certificate) -> None:
    policy = simulator_policy()
    limit = cert.not_valid_before_utc + timedelta(seconds=policy.max_evidence_age_seconds)
    verify_evidence_certificate(cert, policy=policy, at=limit)
    with pytest.raises(PolicyViolation) as info:
        verify_evidence_certificate(cert, policy=policy, at=limit + timedelta(seconds=1))
    assert info.value.claim == "cert.evidence_age"


def test_evidence_age_override(cert: x509.Certificate) -> None:
    with pytest.raises(PolicyViolation):
        verify_evidence_certificate(
            cert, policy=None, at=NOW, trust_simulator=True, max_evidence_age_seconds=10
        )


def test_not_yet_valid(cert: x509.Certificate) -> None:
    with pytest.raises(CertificateChainError) as info:
        verify_evidence_certificate(
            cert, policy=simulator_policy(), at=cert.not_valid_before_utc - timedelta(seconds=1)
        )
    assert info.value.claim == "cert.not_before"


def test_expired(cert: x509.Certificate) -> None:
    with pytest.raises(CertificateChainError) as info:
        verify_evidence_certificate(
            cert,
            policy=None,
            at=cert.not_valid_after_utc + timedelta(seconds=1),
            trust_simulator=True,
            max_evidence_age_seconds=10**6,
        )
    assert info.value.claim == "cert.not_after"


def test_simulator_not_trusted(cert: x509.Certificate) -> None:
    with pytest.raises(CertificateChainError) as info:
        verify_evidence_certificate(cert, policy=None, at=NOW)
    assert info.value.claim == "snp.trust_anchor"
    with pytest.raises(CertificateChainError):
        verify_evidence_certificate(
            cert, policy=Policy(snp=SnpPolicy(allow_any_measurement=True)), at=NOW
        )


def test_policy_is_applied(cert: x509.Certificate) -> None:
    policy = Policy(
        snp=SnpPolicy(measurements=frozenset({bytes(48)})),
        trust=TrustPolicy(simulated_hardware=True),
    )
    with pytest.raises(MeasurementMismatch):
        verify_evidence_certificate(cert, policy=policy, at=NOW)


# --- the ways evidence can be wrong --------------------------------------------------------------


def test_key_swapped_into_another_certificate(cert: x509.Certificate) -> None:
    thief = ec.generate_private_key(ec.SECP256R1())
    stolen = rebuild(cert, thief)
    with pytest.raises(BindingMismatch) as info:
        inspect_evidence_certificate(stolen)
    assert info.value.claim == "cert.claims.pubkey-hash"


def test_claims_altered(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    tagged = parse_tagged_evidence(ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE))
    claims = claims_for(key, nonce=b"added later")
    forged = dataclasses.replace(tagged, claims=claims)
    altered = rebuild(cert, key, replace={RatlsOID.TCG_DICE_TAGGED_EVIDENCE: forged.to_bytes()})
    with pytest.raises(BindingMismatch) as info:
        inspect_evidence_certificate(altered)
    assert info.value.claim == "cert.report_data"


def test_report_data_not_matching_claims(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    sim: SimulatedAmdSp,
    chain: SnpEndorsements,
) -> None:
    tagged = parse_tagged_evidence(ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE))
    other = sim.build_report(report_data=hashlib.sha256(tagged.claims).digest() + b"\x01" * 32)
    forged = dataclasses.replace(tagged, evidence=other.to_bytes())
    bundle = CmwEvidenceBundle.from_endorsements(other.to_bytes(), chain)
    altered = rebuild(
        cert,
        key,
        replace={
            RatlsOID.TCG_DICE_TAGGED_EVIDENCE: forged.to_bytes(),
            RatlsOID.CMW: encode_cmw_extension(bundle),
        },
    )
    with pytest.raises(BindingMismatch) as info:
        inspect_evidence_certificate(altered)
    assert info.value.claim == "cert.report_data"


def test_cmw_report_differs_from_tagged_report(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    sim: SimulatedAmdSp,
    chain: SnpEndorsements,
) -> None:
    other = sim.build_report(report_data=bytes(64)).to_bytes()
    bundle = CmwEvidenceBundle.from_endorsements(other, chain)
    altered = rebuild(cert, key, replace={RatlsOID.CMW: encode_cmw_extension(bundle)})
    with pytest.raises(BindingMismatch) as info:
        inspect_evidence_certificate(altered)
    assert info.value.claim == "cert.cmw.snp-report"


def test_report_from_another_key(key: ec.EllipticCurvePrivateKey, sim: SimulatedAmdSp) -> None:
    ark_key, ask_key, _ = _cached_ca_keys(ProductLine.GENOA)
    impostor = SimulatedAmdSp.generate(
        ProductLine.GENOA, chip_id=sim.chip_id, ark_key=ark_key, ask_key=ask_key
    )
    chain = SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)

    def attest(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return impostor.build_report(report_data=report_data).to_bytes(), chain

    built = AttestedCertificateBuilder().private_key(key).snp_evidence(attest).sign(now=NOW)
    assert inspect_evidence_certificate(built).binding is BindingStatus.VERIFIED
    with pytest.raises(SignatureMismatch) as info:
        verify_evidence_certificate(built, policy=None, at=NOW, trust_simulator=True)
    assert isinstance(info.value.__cause__, InvalidSignature)


def test_certificate_not_signed_by_its_key(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    resigned = rebuild(cert, other, public_key=key.public_key())
    assert inspect_evidence_certificate(resigned).binding is BindingStatus.VERIFIED
    with pytest.raises(SignatureMismatch) as info:
        verify_evidence_certificate(resigned, policy=None, at=NOW, trust_simulator=True)
    assert isinstance(info.value.__cause__, InvalidSignature)


def test_ca_signed_certificate_is_not_verified(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    issued = rebuild(
        cert,
        ca,
        public_key=key.public_key(),
        issuer=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some CA")]),
    )
    with pytest.raises(SignatureMismatch):
        verify_evidence_certificate(issued, policy=None, at=NOW, trust_simulator=True)


def test_backdated_not_before_breaks_the_signature(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    # An attacker without the key cannot refresh the age: changing notBefore needs the key.
    forged = rebuild(
        cert, ec.generate_private_key(ec.SECP256R1()), public_key=key.public_key(), not_before=NOW
    )
    with pytest.raises(SignatureMismatch):
        verify_evidence_certificate(forged, policy=None, at=NOW, trust_simulator=True)


def test_unknown_tag(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    tagged = parse_tagged_evidence(ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE))
    raw = tagged_ext(60003, tagged.evidence, tagged.claims)
    with pytest.raises(EvidenceFormatError, match="unknown evidence tag 60003"):
        parse_tagged_evidence(raw)
    altered = rebuild(cert, key, replace={RatlsOID.TCG_DICE_TAGGED_EVIDENCE: raw})
    with pytest.raises(EvidenceFormatError):
        inspect_evidence_certificate(altered)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes.fromhex("d9ea60"),  # tag without content
        bytes.fromhex("d9ea609f4040ff"),  # indefinite-length array
        bytes.fromhex("d9ea6083404040"),  # three elements
        bytes.fromhex("d9ea60824040") + b"\x00",  # trailing byte
        bytes.fromhex("d9ea6082400a"),  # claims not a byte string
        bytes.fromhex("d9ea6082580040"),  # non-shortest length
        bytes.fromhex("d9ea60a0"),  # map instead of array
        bytes.fromhex("824040"),  # untagged
        bytes.fromhex("d9ea6082fb3ff000000000000040"),  # float
        bytes.fromhex("d9ea60825bffffffffffffffff40"),  # absurd length
        bytes.fromhex("d9ea6082"),  # truncated
        bytes.fromhex("d9ea60827f40"),  # indefinite text
        bytes.fromhex("d9ea6082fc40"),  # reserved additional info
    ],
)
def test_malformed_cbor(raw: bytes) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_tagged_evidence(raw)


def test_trailing_data_in_the_extension(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    raw = ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE) + b"\x00"
    altered = rebuild(cert, key, replace={RatlsOID.TCG_DICE_TAGGED_EVIDENCE: raw})
    with pytest.raises(EvidenceFormatError, match="trailing"):
        inspect_evidence_certificate(altered)


def test_duplicate_extension(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    # Build with a twin OID of the same encoded length, then patch it to the real one (the
    # signature breaks, but the parser must refuse before anyone looks at it).
    twin = x509.ObjectIdentifier("2.23.133.5.4.8")
    raw = ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE)
    der = rebuild(cert, key, add=[(twin, raw)]).public_bytes(serialization.Encoding.DER)
    twin_der, real_der = bytes.fromhex("0606678105050408"), bytes.fromhex("0606678105050409")
    assert der.count(twin_der) == 1
    doubled = x509.load_der_x509_certificate(der.replace(twin_der, real_der))
    with pytest.raises(EvidenceFormatError, match="more than once"):
        inspect_evidence_certificate(doubled)


def test_critical_evidence_extension_is_refused(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    for oid in (RatlsOID.TCG_DICE_TAGGED_EVIDENCE, RatlsOID.CMW):
        altered = rebuild(cert, key, critical=[oid])
        with pytest.raises(EvidenceFormatError, match="critical"):
            inspect_evidence_certificate(altered)


def _openssl_verify(certificate: x509.Certificate) -> None:
    store = crypto.X509Store()
    loaded = crypto.X509.from_cryptography(certificate)
    store.add_cert(loaded)
    crypto.X509StoreContext(store, loaded).verify_certificate()


def test_why_non_critical_openssl_refuses_unknown_critical_extensions(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    # The certificate as built passes OpenSSL's chain verification (trusted as itself)...
    _openssl_verify(cert)
    # ...the same one with the evidence extension marked critical does not: OpenSSL does
    # not know 2.23.133.5.4.9 and must refuse ("unhandled critical extension").
    critical = rebuild(cert, key, critical=[RatlsOID.TCG_DICE_TAGGED_EVIDENCE])
    with pytest.raises(crypto.X509StoreContextError, match="unhandled critical extension"):
        _openssl_verify(critical)


def test_missing_pubkey_hash_claim(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, sim: SimulatedAmdSp
) -> None:
    claims = cbor2.dumps({"nonce": b"x"})
    report = sim.build_report(report_data=report_data_for_claims(claims)).to_bytes()
    raw = TaggedEvidence(tag=EvidenceTag.AMD_SEV_SNP_REPORT, evidence=report, claims=claims)
    altered = rebuild(
        cert, key, replace={RatlsOID.TCG_DICE_TAGGED_EVIDENCE: raw.to_bytes()}, drop=[RatlsOID.CMW]
    )
    with pytest.raises(BindingMismatch) as info:
        inspect_evidence_certificate(altered)
    assert info.value.expected == "a pubkey-hash claim"


@pytest.mark.parametrize(
    "entry",
    [
        cbor2.dumps([0, bytes(32)]),  # reserved id
        cbor2.dumps([2, bytes(16)]),  # truncated sha-256-128: not accepted
        cbor2.dumps([1, bytes(31)]),  # wrong digest length
        cbor2.dumps([1]),
        cbor2.dumps(["sha-256", bytes(32)]),
        cbor2.dumps([True, bytes(32)]),
        cbor2.dumps({1: bytes(32)}),
    ],
)
def test_malformed_pubkey_hash(entry: bytes) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_claims(cbor2.dumps({"pubkey-hash": entry}))


@pytest.mark.parametrize(
    "claims",
    [
        cbor2.dumps([b"x"]),
        cbor2.dumps({"key": "text value"}),
        cbor2.dumps({1: b"int key"}),
        bytes.fromhex("a2616140616140"),  # duplicate key "a"
        bytes.fromhex("a1616180"),  # array value
        bytes.fromhex("a161ff40"),  # key not UTF-8
    ],
)
def test_malformed_claims(claims: bytes) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_claims(claims)


def test_cbor_reader_limits() -> None:
    nested = bytes.fromhex("81" * 12 + "40")
    with pytest.raises(EvidenceFormatError, match="deeply"):
        parse_claims(nested)
    with pytest.raises(EvidenceFormatError, match="map key"):
        parse_claims(bytes.fromhex("a1414140"))  # byte-string key
    assert parse_claims(bytes.fromhex("a0")).entries == ()


def test_cbor_writer_refuses_what_it_cannot_encode() -> None:
    from ratls._evidence_cert import _cbor_encode

    with pytest.raises(TypeError):
        _cbor_encode(1.5)
    with pytest.raises(TypeError):
        _cbor_encode(True)
    with pytest.raises(ValueError, match="too large"):
        _cbor_encode(2**64)
    assert _cbor_encode(-1) == b"\x20"


def test_malformed_standard_extension_is_a_format_error() -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    made = plain_cert(signing_key, [(x509.oid.ExtensionOID.BASIC_CONSTRAINTS, b"garbage")])
    with pytest.raises(EvidenceFormatError, match="malformed extensions"):
        inspect_evidence_certificate(made)


def test_other_hash_algorithms_are_accepted(key: ec.EllipticCurvePrivateKey) -> None:
    for algorithm in HashAlgorithm:
        claims = EvidenceClaims.for_key(key.public_key(), algorithm=algorithm)
        parsed = parse_claims(claims.to_bytes())
        assert parsed.pubkey_hash_alg is algorithm
        assert parsed.pubkey_hash == algorithm.digest(spki_der(key.public_key()))


def test_no_evidence_extension() -> None:
    with pytest.raises(EvidenceFormatError, match="no evidence extension"):
        inspect_evidence_certificate(plain_cert(ec.generate_private_key(ec.SECP256R1()), []))


def test_cmw_without_tagged_evidence(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    altered = rebuild(cert, key, drop=[RatlsOID.TCG_DICE_TAGGED_EVIDENCE])
    with pytest.raises(EvidenceFormatError, match="id-pe-cmw"):
        inspect_evidence_certificate(altered)


def test_oversized_extension(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    raw = cbor2.dumps(cbor2.CBORTag(0x1A7504, [bytes(MAX_EVIDENCE_EXTENSION_SIZE), b""]))
    with pytest.raises(EvidenceFormatError, match="MAX_EVIDENCE_EXTENSION_SIZE"):
        parse_tagged_evidence(raw)
    with pytest.raises(EvidenceFormatError, match="MAX_EVIDENCE_EXTENSION_SIZE"):
        parse_cmw_extension(der_tlv(0x04, raw))


def test_no_endorsements(
    key: ec.EllipticCurvePrivateKey, sim: SimulatedAmdSp, chain: SnpEndorsements
) -> None:
    def bare(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return sim.build_report(report_data=report_data).to_bytes(), None

    built = AttestedCertificateBuilder().private_key(key).snp_evidence(bare).sign(now=NOW)
    found = inspect_evidence_certificate(built)
    assert found.cmw is None
    with pytest.raises(CertificateChainError) as info:
        verify_evidence_certificate(built, policy=None, at=NOW, trust_simulator=True)
    assert info.value.claim == "snp.endorsements"
    result = verify_evidence_certificate(
        built, policy=None, at=NOW, trust_simulator=True, endorsements=chain
    )
    assert result.replayable


# --- CMW parser ------------------------------------------------------------------------------


def _cmw(members: dict[object, object]) -> bytes:
    return der_tlv(0x04, cbor2.dumps(members))


def test_cmw_bad_members(cert: x509.Certificate) -> None:
    good = cbor2.loads(parse_cmw_extension(ext_value(cert, RatlsOID.CMW)).to_cbor())
    cases: list[dict[object, object]] = [
        {k: v for k, v in good.items() if k != "ark"},
        {k: v for k, v in good.items() if k != "snp-report"},
        {k: v for k, v in good.items() if k != "vcek"},
        {**good, "vlek": good["vcek"]},
        {**good, "ark": ["text/plain", good["ark"][1], 2]},
        {**good, "ark": [good["ark"][0], good["ark"][1], 4]},
        {**good, "ark": [good["ark"][0], "not bytes", 2]},
        {**good, "ark": good["ark"][:2]},
    ]
    for members in cases:
        with pytest.raises(EvidenceFormatError):
            parse_cmw_extension(_cmw(members))
    with pytest.raises(EvidenceFormatError):
        parse_cmw_extension(der_tlv(0x04, cbor2.dumps([1, 2])))
    with pytest.raises(EvidenceFormatError, match="JSON"):
        parse_cmw_extension(der_tlv(0x0C, b'["application/json", "e30"]'))
    extended = parse_cmw_extension(_cmw({**good, "future": [1, b"", 4], 7: [1, b"", 4]}))
    assert extended.unknown_labels == ("future", "7")


def test_cmw_vtpm_member_round_trips(cert: x509.Certificate) -> None:
    bundle = parse_cmw_extension(ext_value(cert, RatlsOID.CMW))
    grown = dataclasses.replace(bundle, vtpm=b"\xa0")
    assert parse_cmw_extension(encode_cmw_extension(grown)) == grown


def test_cmw_malformed_certificate(cert: x509.Certificate) -> None:
    bundle = parse_cmw_extension(ext_value(cert, RatlsOID.CMW))
    broken = dataclasses.replace(bundle, ark=b"not a certificate")
    with pytest.raises(EvidenceFormatError):
        parse_cmw_extension(encode_cmw_extension(broken)).endorsements()


# --- parsers three ways, round trips, fuzzing -----------------------------------------------


def test_tagged_evidence_three_ways(cert: x509.Certificate) -> None:
    raw = ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE)
    check_three_ways(raw, parse_tagged_evidence)
    assert parse_tagged_evidence(raw).to_bytes() == raw


def test_claims_three_ways(cert: x509.Certificate) -> None:
    found = inspect_evidence_certificate(cert)
    assert found.claims_bytes is not None
    check_three_ways(found.claims_bytes, parse_claims)
    assert parse_claims(found.claims_bytes).to_bytes() == found.claims_bytes


def test_cmw_three_ways(cert: x509.Certificate) -> None:
    raw = ext_value(cert, RatlsOID.CMW)
    check_three_ways(raw, parse_cmw_extension)
    assert encode_cmw_extension(parse_cmw_extension(raw)) == raw


def test_claims_round_trip_preserves_order_and_custom_claims() -> None:
    raw = cbor2.dumps({"key_0": b"v0", "pubkey-hash": cbor2.dumps([7, bytes(48)]), "nonce": b"n"})
    parsed = parse_claims(raw)
    assert [k for k, _ in parsed.entries] == ["key_0", "pubkey-hash", "nonce"]
    assert parsed.to_bytes() == raw
    assert parsed.nonce == b"n"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parsers_raise_only_ratls_errors(data: bytes) -> None:
    for parser in (parse_tagged_evidence, parse_claims, parse_cmw_extension):
        with contextlib.suppress(RatlsError):
            parser(data)


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 30), children, max_size=4)
        | st.builds(
            cbor2.CBORTag, st.sampled_from([60000, 60001, 60002, 0x1A7504, 0x1A7505, 5]), children
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_cbor_values)
def test_fuzz_structured_cbor(value: object) -> None:
    data = cbor2.dumps(value)
    for parser in (parse_tagged_evidence, parse_claims):
        with contextlib.suppress(RatlsError):
            parser(data)
    with contextlib.suppress(RatlsError):
        parse_cmw_extension(der_tlv(0x04, data))


_FUZZ_KEY = ec.generate_private_key(ec.SECP256R1())


@settings(max_examples=60, deadline=None)
@given(
    st.binary(max_size=200),
    st.sampled_from(
        [
            RatlsOID.TCG_DICE_TAGGED_EVIDENCE,
            RatlsOID.CMW,
            RatlsOID.GRAMINE_LEGACY,
            RatlsOID.CONTRAST_SNP_REPORT,
        ]
    ),
)
def test_fuzz_inspect_raises_only_ratls_errors(data: bytes, oid: x509.ObjectIdentifier) -> None:
    certificate = plain_cert(_FUZZ_KEY, [(oid, data)])
    with contextlib.suppress(RatlsError):
        inspect_evidence_certificate(certificate)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_certificates(cert: x509.Certificate, data: st.DataObject) -> None:
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(der) - 1))
        der[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(RatlsError):
        inspect_evidence_certificate(load_evidence_certificate(bytes(der)))


def test_serial_number_zero_loads_and_inspects_quietly(cert: x509.Certificate) -> None:
    # Other RA-TLS stacks may use serial number 0, which means nothing here: it must not
    # surface as cryptography's deprecation warning (an error where warnings are).
    def serial_zero(fields: list[bytes]) -> list[bytes]:
        assert fields[1][0] == 0x02  # serialNumber after the [0] version
        return [fields[0], b"\x02\x01\x00", *fields[2:]]

    der = edit_tbs(cert.public_bytes(serialization.Encoding.DER), serial_zero)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_evidence_certificate(der)
        inspect_evidence_certificate(loaded)


# --- certificates of the other formats ------------------------------------------------------


def test_real_rats_tls_sample() -> None:
    sample = load_evidence_certificate((VECTORS / "rats-tls-cert.pem").read_bytes())
    found = inspect_evidence_certificate(sample)
    assert found.evidence_type is EvidenceType.SGX_QUOTE
    assert found.tag is EvidenceTag.INTEL_TEE_QUOTE
    assert found.binding is BindingStatus.VERIFIED
    assert found.claims is not None
    assert dict(found.claims.entries)["key_0"] == b"value_0\x00"
    with pytest.raises(PolicyViolation) as info:
        verify_evidence_certificate(sample, policy=None, at=NOW)
    assert info.value.actual == "intel-sgx-quote"


def test_real_intel_sgx_sdk_sample() -> None:
    sample = load_evidence_certificate((VECTORS / "intel-sgxsdk-cert.pem").read_bytes())
    found = inspect_evidence_certificate(sample)
    assert found.evidence_type is EvidenceType.SGX_QUOTE
    assert found.binding is BindingStatus.VERIFIED
    assert found.also_present == ("intel-sgx-sdk-legacy",)
    # The legacy extension carries the same quote.
    assert ext_value(sample, RatlsOID.INTEL_SGX_QUOTE_LEGACY) == found.evidence


@pytest.mark.parametrize("name", ["rats-tls-cert.pem", "intel-sgxsdk-cert.pem"])
def test_real_sample_evidence_moved_to_another_key(name: str) -> None:
    sample = load_evidence_certificate((VECTORS / name).read_bytes())
    raw = ext_value(sample, RatlsOID.TCG_DICE_TAGGED_EVIDENCE)
    moved = plain_cert(
        ec.generate_private_key(ec.SECP384R1()), [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, raw)]
    )
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(moved)


@pytest.mark.parametrize("name", ["rats-tls-cert.pem", "intel-sgxsdk-cert.pem"])
def test_real_sample_der_round_trip(name: str) -> None:
    sample = load_evidence_certificate((VECTORS / name).read_bytes())
    der = sample.public_bytes(serialization.Encoding.DER)
    assert inspect_evidence_certificate(
        load_evidence_certificate(der)
    ) == inspect_evidence_certificate(sample)


def test_load_refuses_garbage() -> None:
    with pytest.raises(EvidenceFormatError):
        load_evidence_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(EvidenceFormatError):
        load_evidence_certificate(b"\x30\x03\x02\x01\x01")


def test_constructed_tdx_quote() -> None:
    signing_key = ec.generate_private_key(ec.SECP384R1())
    claims = claims_for(signing_key)
    quote = sgx_quote(report_data_for_claims(claims), version=4, tee_type=0x81)
    made = plain_cert(
        signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(60000, quote, claims))]
    )
    found = inspect_evidence_certificate(made)
    assert found.evidence_type is EvidenceType.TDX_QUOTE
    assert found.binding is BindingStatus.VERIFIED
    assert found.report_data == report_data_for_claims(claims)

    wrong = sgx_quote(bytes(64), version=4, tee_type=0x81)
    made = plain_cert(
        signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(60000, wrong, claims))]
    )
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(made)


def test_constructed_sgx_v4_quote_and_quote_errors() -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    claims = claims_for(signing_key)
    quote = sgx_quote(report_data_for_claims(claims), version=4, tee_type=0)
    made = plain_cert(
        signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(60000, quote, claims))]
    )
    assert inspect_evidence_certificate(made).evidence_type is EvidenceType.SGX_QUOTE
    for bad in (
        quote[:40],
        quote[:450],
        quote + b"\x00",
        sgx_quote(bytes(64), version=4, tee_type=7),
        sgx_quote(bytes(64), version=2),
    ):
        made = plain_cert(
            signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(60000, bad, claims))]
        )
        with pytest.raises(EvidenceFormatError):
            inspect_evidence_certificate(made)


def test_quote_v5_is_named_not_checked() -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    claims = claims_for(signing_key)
    quote = struct.pack("<HHI", 5, 2, 0x81) + bytes(40) + struct.pack("<HI", 2, 0) + bytes(10)
    made = plain_cert(
        signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(60000, quote, claims))]
    )
    found = inspect_evidence_certificate(made)
    assert found.evidence_type is EvidenceType.TDX_QUOTE
    assert found.binding is BindingStatus.NOT_CHECKED
    assert "not located" in found.binding_detail


@pytest.mark.parametrize(
    ("tag", "size", "offset", "kind"),
    [
        (60002, 432, 320, EvidenceType.SGX_EREPORT),
        (60001, 1024, 128, EvidenceType.INTEL_TEE_REPORT),
    ],
)
def test_intel_reports(tag: int, size: int, offset: int, kind: EvidenceType) -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    claims = claims_for(signing_key)
    report = bytearray(size)
    report[offset : offset + 64] = report_data_for_claims(claims)
    made = plain_cert(
        signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(tag, bytes(report), claims))]
    )
    found = inspect_evidence_certificate(made)
    assert (found.evidence_type, found.binding) == (kind, BindingStatus.VERIFIED)
    report[offset] ^= 1
    made = plain_cert(
        signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(tag, bytes(report), claims))]
    )
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(made)


@pytest.mark.parametrize(
    ("tag", "kind"),
    [
        (0x1A7505, EvidenceType.SEV_REPORT),
        (0x1A7506, EvidenceType.CSV_REPORT),
        (60001, EvidenceType.INTEL_TEE_REPORT),
    ],
)
def test_reports_we_only_name(tag: int, kind: EvidenceType) -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    claims = claims_for(signing_key)
    made = plain_cert(
        signing_key, [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(tag, bytes(100), claims))]
    )
    found = inspect_evidence_certificate(made)
    assert (found.evidence_type, found.binding) == (kind, BindingStatus.NOT_CHECKED)
    # The pubkey-hash claim is still checked.
    moved = plain_cert(
        ec.generate_private_key(ec.SECP256R1()),
        [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, tagged_ext(tag, bytes(100), claims))],
    )
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(moved)


def test_gramine_legacy() -> None:
    signing_key = ec.generate_private_key(ec.SECP384R1())
    quote = sgx_quote(hashlib.sha256(spki_der(signing_key.public_key())).digest() + bytes(32))
    made = plain_cert(signing_key, [(RatlsOID.GRAMINE_LEGACY, quote)])
    found = inspect_evidence_certificate(made)
    assert (found.carrier, found.binding) == ("gramine-legacy", BindingStatus.VERIFIED)
    assert found.evidence_type is EvidenceType.SGX_QUOTE
    other = plain_cert(ec.generate_private_key(ec.SECP384R1()), [(RatlsOID.GRAMINE_LEGACY, quote)])
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(other)


def test_gramine_with_both_extensions_checks_both() -> None:
    signing_key = ec.generate_private_key(ec.SECP384R1())
    claims = claims_for(signing_key)
    dice = tagged_ext(60000, sgx_quote(report_data_for_claims(claims)), claims)
    good_legacy = sgx_quote(hashlib.sha256(spki_der(signing_key.public_key())).digest() + bytes(32))
    made = plain_cert(
        signing_key,
        [(RatlsOID.TCG_DICE_TAGGED_EVIDENCE, dice), (RatlsOID.GRAMINE_LEGACY, good_legacy)],
    )
    found = inspect_evidence_certificate(made)
    assert found.carrier == "tcg-dice-tagged-evidence"
    assert found.also_present == ("gramine-legacy",)
    bad = plain_cert(
        signing_key,
        [
            (RatlsOID.TCG_DICE_TAGGED_EVIDENCE, dice),
            (RatlsOID.GRAMINE_LEGACY, sgx_quote(bytes(64))),
        ],
    )
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(bad)


def test_rats_tls_legacy_binds_the_pkcs1_key() -> None:
    signing_key = rsa.generate_private_key(65537, 2048)
    pkcs1 = signing_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    quote = sgx_quote(hashlib.sha256(pkcs1).digest() + bytes(32))
    found = inspect_evidence_certificate(
        plain_cert(signing_key, [(RatlsOID.RATS_TLS_LEGACY, quote)])
    )
    assert (found.carrier, found.binding) == ("rats-tls-legacy", BindingStatus.VERIFIED)
    spki_bound = sgx_quote(hashlib.sha256(spki_der(signing_key.public_key())).digest() + bytes(32))
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(
            plain_cert(signing_key, [(RatlsOID.RATS_TLS_LEGACY, spki_bound)])
        )
    with pytest.raises(BindingMismatch):
        inspect_evidence_certificate(
            plain_cert(ec.generate_private_key(ec.SECP256R1()), [(RatlsOID.RATS_TLS_LEGACY, quote)])
        )


def test_legacy_v5_quote_is_not_checked() -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    quote = struct.pack("<HHI", 5, 2, 0) + bytes(40) + struct.pack("<HI", 1, 0)
    found = inspect_evidence_certificate(
        plain_cert(signing_key, [(RatlsOID.GRAMINE_LEGACY, quote)])
    )
    assert (found.evidence_type, found.binding) == (
        EvidenceType.SGX_QUOTE,
        BindingStatus.NOT_CHECKED,
    )


def test_intel_sdk_legacy_alone_is_not_checked() -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    found = inspect_evidence_certificate(
        plain_cert(signing_key, [(RatlsOID.INTEL_SGX_QUOTE_LEGACY, sgx_quote(bytes(64)))])
    )
    assert found.binding is BindingStatus.NOT_CHECKED


@pytest.mark.parametrize(
    ("oid", "kind"),
    [
        (RatlsOID.ENARX_SNP, EvidenceType.ENARX_STEWARD),
        (RatlsOID.CONSTELLATION_AZURE_SEV_SNP, EvidenceType.CONSTELLATION),
        (RatlsOID.CONSTELLATION_QEMU_TDX, EvidenceType.CONSTELLATION),
        (RatlsOID.CONTRAST_SNP_REPORT, EvidenceType.CONTRAST_SNP_REPORT),
    ],
)
def test_named_only_formats(oid: x509.ObjectIdentifier, kind: EvidenceType) -> None:
    found = inspect_evidence_certificate(
        plain_cert(ec.generate_private_key(ec.SECP256R1()), [(oid, b"{}")])
    )
    assert found.evidence_type is kind
    assert found.binding is BindingStatus.NOT_CHECKED
    assert found.carrier_oid == oid.dotted_string


def test_endorsement_manifest_is_named(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    altered = rebuild(cert, key, add=[(RatlsOID.TCG_DICE_ENDORSEMENT_MANIFEST, b"\xa0")])
    assert "tcg-dice-endorsement-manifest" in inspect_evidence_certificate(altered).also_present


def test_cmw_next_to_non_snp_evidence(cert: x509.Certificate) -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    claims = claims_for(signing_key)
    made = plain_cert(
        signing_key,
        [
            (
                RatlsOID.TCG_DICE_TAGGED_EVIDENCE,
                tagged_ext(60000, sgx_quote(report_data_for_claims(claims)), claims),
            ),
            (RatlsOID.CMW, ext_value(cert, RatlsOID.CMW)),
        ],
    )
    with pytest.raises(EvidenceFormatError):
        inspect_evidence_certificate(made)


# --- value types -------------------------------------------------------------------------------


def test_value_types_eq_ne_hash_repr(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    first, second = inspect_evidence_certificate(cert), inspect_evidence_certificate(cert)
    assert first == second
    assert hash(first) == hash(second)
    assert first != dataclasses.replace(first, binding_detail="other")
    assert first != object()
    assert (
        repr(first)
        == "<CertificateEvidence amd-sev-snp-report via tcg-dice-tagged-evidence binding=verified>"
    )

    tagged = parse_tagged_evidence(ext_value(cert, RatlsOID.TCG_DICE_TAGGED_EVIDENCE))
    assert tagged == parse_tagged_evidence(tagged.to_bytes())
    assert hash(tagged) == hash(parse_tagged_evidence(tagged.to_bytes()))
    assert tagged != dataclasses.replace(tagged, claims=b"")
    assert tagged != object()
    assert "TaggedEvidence(tag=<EvidenceTag.AMD_SEV_SNP_REPORT" in repr(tagged)

    claims = EvidenceClaims.for_key(key.public_key())
    assert claims == parse_claims(claims.to_bytes())
    assert hash(claims) == hash(parse_claims(claims.to_bytes()))
    assert claims != EvidenceClaims.for_key(key.public_key(), nonce=b"n")
    assert claims != object()
    assert "pubkey-hash" in repr(claims)

    assert first.cmw is not None
    bundle = first.cmw
    assert bundle == parse_cmw_extension(encode_cmw_extension(bundle))
    assert hash(bundle) == hash(parse_cmw_extension(encode_cmw_extension(bundle)))
    assert bundle != dataclasses.replace(bundle, vtpm=b"")
    assert bundle != object()
    assert "CmwEvidenceBundle(snp_report=" in repr(bundle)


def test_builder_repr_never_shows_the_key(key: ec.EllipticCurvePrivateKey) -> None:
    text = repr(AttestedCertificateBuilder().private_key(key))
    assert text == "<AttestedCertificateBuilder set=['private_key']>"


def test_describe_is_json_friendly(cert: x509.Certificate) -> None:
    import json

    described = inspect_evidence_certificate(cert).describe()
    assert json.loads(json.dumps(described))["binding"] == "verified"
    assert described["endorsements_in_cmw"] is True


# --- a real OpenSSL parses our certificate -----------------------------------------------------


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_openssl_x509_parses_our_certificate(cert: x509.Certificate, tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shown = subprocess.run(  # noqa: S603 - fixed arguments
        ["openssl", "x509", "-in", str(path), "-noout", "-text"],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "2.23.133.5.4.9:" in shown
    assert "1.3.6.1.5.5.7.1.35:" in shown
    assert "CA:FALSE" in shown
    assert "critical" not in shown.split("2.23.133.5.4.9")[1].splitlines()[0]


# --- SNP + vTPM: the bundle in id-pe-cmw ---------------------------------------------------------

needs_swtpm = pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")


@pytest.fixture(scope="module")
def svsm_vm(sim: SimulatedAmdSp) -> Iterator[SimulatedSvsm]:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm not installed")
    with SimulatedSvsm(sim, profile=VtpmProfile.SVSM) as vm:
        yield vm


def vtpm_cert(
    vm: SimulatedSvsm,
    key: ec.EllipticCurvePrivateKey,
    chain: SnpEndorsements,
    producer: Callable[[bytes, bytes], bytes] | None = None,
) -> x509.Certificate:
    def attest(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return vm.guest_report(report_data), chain  # the guest's own report, VMPL 1

    def collect(binder: bytes, nonce: bytes) -> bytes:
        return vm.collect_evidence(binder=binder, nonce=nonce).to_bytes()

    return (
        AttestedCertificateBuilder()
        .private_key(key)
        .snp_evidence(attest)
        .vtpm_evidence(producer or collect)
        .sign(now=NOW)
    )


def vtpm_policy(*, allow_unproven_ak: bool = True) -> Policy:
    return Policy(
        snp=SnpPolicy(allow_any_measurement=True),
        vtpm=VtpmPolicy(allow_unproven_ak=allow_unproven_ak),
        trust=TrustPolicy(simulated_hardware=True),
    )


@pytest.mark.swtpm
@needs_swtpm
def test_vtpm_round_trip(
    svsm_vm: SimulatedSvsm, key: ec.EllipticCurvePrivateKey, chain: SnpEndorsements
) -> None:
    built = vtpm_cert(svsm_vm, key, chain)
    found = inspect_evidence_certificate(built)
    assert found.cmw is not None
    assert found.cmw.vtpm is not None
    assert found.describe()["vtpm_in_cmw"] is True
    assert found.binding is BindingStatus.VERIFIED
    result = verify_evidence_certificate(built, policy=vtpm_policy(), at=NOW)
    assert (result.profile, result.ak_binding, result.replayable) == ("svsm", "unproven", True)
    assert result.snp.report.vmpl == 0  # the result speaks for the VMPL-0 (SVSM) report
    bare = verify_evidence_certificate(built, policy=None, at=NOW, trust_simulator=True)
    assert bare.appraised is False


@pytest.mark.swtpm
@needs_swtpm
def test_vtpm_unproven_ak_refused_by_default(
    svsm_vm: SimulatedSvsm, key: ec.EllipticCurvePrivateKey, chain: SnpEndorsements
) -> None:
    # No credential activation is possible for a certificate, so svsm AKs stay unproven.
    built = vtpm_cert(svsm_vm, key, chain)
    with pytest.raises(PolicyViolation):
        verify_evidence_certificate(built, policy=vtpm_policy(allow_unproven_ak=False), at=NOW)


@pytest.mark.swtpm
@needs_swtpm
def test_vtpm_quote_bound_to_other_claims(
    svsm_vm: SimulatedSvsm, key: ec.EllipticCurvePrivateKey, chain: SnpEndorsements
) -> None:
    def other_binder(binder: bytes, nonce: bytes) -> bytes:
        return svsm_vm.collect_evidence(binder=bytes(32), nonce=nonce).to_bytes()

    built = vtpm_cert(svsm_vm, key, chain, other_binder)
    with pytest.raises(NonceMismatch):
        verify_evidence_certificate(built, policy=vtpm_policy(), at=NOW)


@pytest.mark.swtpm
@needs_swtpm
def test_vtpm_svsm_nonce_not_bound_to_the_key(
    svsm_vm: SimulatedSvsm, key: ec.EllipticCurvePrivateKey, chain: SnpEndorsements
) -> None:
    def own_nonce(binder: bytes, nonce: bytes) -> bytes:
        return svsm_vm.collect_evidence(binder=binder, nonce=bytes(64)).to_bytes()

    built = vtpm_cert(svsm_vm, key, chain, own_nonce)
    with pytest.raises(NonceMismatch) as info:
        verify_evidence_certificate(built, policy=vtpm_policy(), at=NOW)
    assert info.value.claim == "svsm.nonce"


@pytest.mark.swtpm
@needs_swtpm
def test_vtpm_from_another_guest(
    svsm_vm: SimulatedSvsm,
    sim: SimulatedAmdSp,
    key: ec.EllipticCurvePrivateKey,
    chain: SnpEndorsements,
) -> None:
    with SimulatedSvsm(sim, measurement=b"\x07" * 48) as other:

        def elsewhere(binder: bytes, nonce: bytes) -> bytes:
            return other.collect_evidence(binder=binder, nonce=nonce).to_bytes()

        built = vtpm_cert(svsm_vm, key, chain, elsewhere)
    with pytest.raises(BindingMismatch) as info:
        verify_evidence_certificate(built, policy=vtpm_policy(), at=NOW)
    assert info.value.claim == "cert.vtpm.snp.measurement"


@pytest.mark.swtpm
@needs_swtpm
def test_vtpm_tagged_report_still_appraised(
    svsm_vm: SimulatedSvsm, key: ec.EllipticCurvePrivateKey, chain: SnpEndorsements
) -> None:
    built = vtpm_cert(svsm_vm, key, chain)
    policy = dataclasses.replace(vtpm_policy(), snp=SnpPolicy(measurements=frozenset({bytes(48)})))
    with pytest.raises(MeasurementMismatch):
        verify_evidence_certificate(built, policy=policy, at=NOW)


def test_vtpm_builder_rules(
    key: ec.EllipticCurvePrivateKey, sim: SimulatedAmdSp, chain: SnpEndorsements
) -> None:
    builder = AttestedCertificateBuilder().vtpm_evidence(lambda b, n: b"")
    with pytest.raises(ValueError, match="only be set once"):
        builder.vtpm_evidence(lambda b, n: b"")
    with pytest.raises(TypeError):
        AttestedCertificateBuilder().vtpm_evidence(b"bundle")  # type: ignore[arg-type]

    def bare(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return sim.build_report(report_data=report_data).to_bytes(), None

    with pytest.raises(ValueError, match="endorsements"):
        builder.private_key(key).snp_evidence(bare).sign(now=NOW)

    def attest(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return sim.build_report(report_data=report_data).to_bytes(), chain

    with pytest.raises(EvidenceFormatError):
        builder.private_key(key).snp_evidence(attest).sign(now=NOW)
