"""Azure HCL reports: the strict parser, the runtime claims, and the azure chain profile.

No Azure evidence is needed: the simulated AMD-SP signs an SNP report whose REPORT_DATA
binds a runtime-claims document built here, and a software "AK" signs TPM quotes in the
exact TPMS_ATTEST / TPMT_SIGNATURE format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import struct
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._azure_hcl import (
    HCL_AK_KID,
    HCL_NV_INDEX,
    HCL_VARIABLE_DATA_OFFSET,
    HclJwk,
    HclReport,
    IgvmHashType,
    IgvmReportType,
    RuntimeClaims,
    build_runtime_claims,
    parse_hcl_report,
    parse_runtime_claims,
)
from ratls._errors import (
    BindingMismatch,
    EvidenceFormatError,
    EvidenceVerificationError,
    NonceMismatch,
    PolicyViolation,
    RatlsError,
)
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._snp_report import ProductLine
from ratls._tpm_quote import compute_pcr_digest
from ratls._tpm_structs import (
    AK_REQUIRED_ATTRIBUTES,
    ObjectAttributes,
    TpmAlgId,
    TpmlPcrSelection,
    TpmsAttest,
    TpmsClockInfo,
    TpmsQuoteInfo,
    TpmSt,
    TpmtPublic,
    TpmtScheme,
    TpmtSignature,
)
from ratls._vtpm_evidence import (
    AkBinding,
    VerifiedVtpmEvidence,
    VtpmEvidence,
    VtpmProfile,
    begin_activation,
    parse_vtpm_evidence,
    verify_vtpm_evidence,
)
from ratls.sim import SimulatedAmdSp, simulated_amd_sp

MEASUREMENT = hashlib.sha384(b"Azure paravisor + guest firmware").digest()
BINDER = hashlib.sha256(b"azure verifier nonce").digest()
PCRS = {0: bytes(32), 7: b"\x07" * 32}
NOW = datetime.now(UTC)
POLICY = Policy(
    snp=SnpPolicy(measurements=frozenset({MEASUREMENT})),
    vtpm=VtpmPolicy(pcrs={"sha256": {7: frozenset({b"\x07" * 32})}}),
    trust=TrustPolicy(simulated_hardware=True),
)

AK_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EK_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLAIMS = build_runtime_claims(
    ak_public=AK_KEY.public_key(),
    ek_public=EK_KEY.public_key(),
    user_data="00" * 64,
    vm_configuration={"secure-boot": True, "tpm-enabled": True, "console-enabled": False},
)


def ak_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> TpmtPublic:
    scheme = TpmAlgId.RSASSA if isinstance(key, rsa.RSAPrivateKey) else TpmAlgId.ECDSA
    return TpmtPublic.from_public_key(
        key.public_key(),
        object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
        scheme=TpmtScheme(scheme=scheme, hash_alg=TpmAlgId.SHA256),
    )


def software_quote(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    binder: bytes = BINDER,
    pcrs: dict[int, bytes] = PCRS,
) -> tuple[bytes, bytes]:
    """A quote in the TPM's exact formats, signed by a software key."""
    selection = TpmlPcrSelection.from_mapping({TpmAlgId.SHA256: sorted(pcrs)})
    digest, _ = compute_pcr_digest(selection, {TpmAlgId.SHA256: pcrs}, TpmAlgId.SHA256)
    attest = TpmsAttest(
        type=TpmSt.ATTEST_QUOTE,
        qualified_signer=ak_public(key).name(),
        extra_data=binder,
        clock_info=TpmsClockInfo(clock=5000, reset_count=3, restart_count=0, safe=True),
        firmware_version=0x20191023,
        attested=TpmsQuoteInfo(pcr_select=selection, pcr_digest=digest),
    ).to_bytes()
    if isinstance(key, rsa.RSAPrivateKey):
        sig = TpmtSignature(
            sig_alg=TpmAlgId.RSASSA,
            hash=TpmAlgId.SHA256,
            sig=key.sign(attest, padding.PKCS1v15(), hashes.SHA256()),
        )
    else:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(key.sign(attest, ec.ECDSA(hashes.SHA256())))
        sig = TpmtSignature(
            sig_alg=TpmAlgId.ECDSA,
            hash=TpmAlgId.SHA256,
            signature_r=r.to_bytes(32, "big"),
            signature_s=s.to_bytes(32, "big"),
        )
    return attest, sig.to_bytes()


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.MILAN)


def hcl_report(
    sp: SimulatedAmdSp,
    claims: bytes = CLAIMS,
    *,
    vmpl: int = 0,
    bound: bytes | None = None,
    hash_type: IgvmHashType = IgvmHashType.SHA256,
) -> HclReport:
    binding = hash_type.digest(bound if bound is not None else claims)
    report = sp.build_report(
        report_data=binding.ljust(64, b"\0"), vmpl=vmpl, measurement=MEASUREMENT
    )
    return HclReport(
        version=2,
        report_size=0x4A0,
        snp_report=report.to_bytes(),
        data_size=20 + len(claims),
        igvm_version=1,
        report_data_hash_type=hash_type,
        variable_data=claims,
    )


def azure_bundle(
    sp: SimulatedAmdSp,
    hcl: HclReport,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = AK_KEY,
    binder: bytes = BINDER,
) -> VtpmEvidence:
    attest, signature = software_quote(key, binder)
    return VtpmEvidence.with_pcr_mapping(
        pcrs={TpmAlgId.SHA256: PCRS},
        profile=VtpmProfile.AZURE,
        hcl_report=hcl.to_bytes(),
        certs=tuple(c.public_bytes(Encoding.DER) for c in (sp.leaf, sp.ask, sp.ark)),
        ak_public=ak_public(key).to_tpm2b(),
        quote_attest=attest,
        quote_signature=signature,
    )


def verify(evidence: VtpmEvidence, **kwargs: object) -> VerifiedVtpmEvidence:
    options: dict[str, object] = {"policy": POLICY, "at": NOW, "expected_binder": BINDER}
    options.update(kwargs)
    return verify_vtpm_evidence(evidence, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# The HCL report parser
# --------------------------------------------------------------------------------------

STATIC = HclReport(
    version=1,
    report_size=0x4A0,
    snp_report=bytes(range(256)) * 4 + bytes(0x4A0 - 1024),
    data_size=20 + len(CLAIMS),
    igvm_version=1,
    variable_data=CLAIMS,
)
RAW = STATIC.to_bytes()


def test_layout() -> None:
    assert RAW[:4] == b"HCLA"
    assert RAW[0x20 : 0x20 + 0x4A0] == STATIC.snp_report
    assert struct.unpack_from("<IIIII", RAW, 0x4C0) == (20 + len(CLAIMS), 1, 2, 1, len(CLAIMS))
    assert RAW[HCL_VARIABLE_DATA_OFFSET:] == CLAIMS
    assert HCL_VARIABLE_DATA_OFFSET == 0x4D4
    assert HCL_NV_INDEX == 0x01400001


def test_parse_whole() -> None:
    parsed = parse_hcl_report(RAW)
    assert parsed == STATIC
    assert parsed.to_bytes() == RAW
    assert parsed.report_type is IgvmReportType.SNP
    assert parsed.report_data_binding() == hashlib.sha256(CLAIMS).digest()


def test_every_truncation_refused() -> None:
    for end in range(len(RAW)):
        with pytest.raises(EvidenceFormatError):
            parse_hcl_report(RAW[:end])


def test_trailing_bytes() -> None:
    with pytest.raises(EvidenceFormatError, match="trailing"):
        parse_hcl_report(RAW + b"\x00")
    # A blob read whole from the NV index ends in zero padding, accepted only on request.
    assert parse_hcl_report(RAW + bytes(300), nv_padding=True) == STATIC
    with pytest.raises(EvidenceFormatError, match="non-zero padding"):
        parse_hcl_report(RAW + bytes(10) + b"\x01", nv_padding=True)


def _patched(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(RAW)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"HCLB" + RAW[4:], "signature"),
        (_patched(4, "<I", 3), "unsupported version 3"),
        (_patched(12, "<I", 1), "request type"),
        (_patched(16, "<I", 0x80000001), "status"),
        (_patched(0x4C8, "<I", 4), "TDX is not supported"),
        (_patched(0x4C8, "<I", 9), "unknown report type"),
        (_patched(0x4CC, "<I", 0), "hash type 0"),
        (_patched(0x4CC, "<I", 4), "hash type 4"),
        (_patched(0x4D0, "<I", 0x4001), "exceeds"),
        (_patched(0x4D0, "<I", len(CLAIMS) + 1), "truncated"),
    ],
)
def test_malformed_reports(data: bytes, words: str) -> None:
    with pytest.raises(EvidenceFormatError, match=words):
        parse_hcl_report(data)


@settings(max_examples=200)
@given(st.binary(max_size=0x600))
def test_fuzz_only_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_hcl_report(data)
        parse_hcl_report(b"HCLA" + data)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=len(RAW) - 1), st.integers(min_value=1, max_value=255))
def test_fuzz_mutations(position: int, flip: int) -> None:
    data = bytearray(RAW)
    data[position] ^= flip
    with contextlib.suppress(RatlsError):
        report = parse_hcl_report(bytes(data))
        assert report.to_bytes() == bytes(data)
        report.runtime_claims()


def test_encoder_refuses_bad_fields() -> None:
    with pytest.raises(ValueError, match="0x4A0"):
        dataclasses.replace(STATIC, snp_report=b"short").to_bytes()
    with pytest.raises(ValueError, match="wire size"):
        dataclasses.replace(STATIC, version=1 << 32).to_bytes()


def test_hcl_value_type() -> None:
    same = parse_hcl_report(RAW)
    other = dataclasses.replace(STATIC, version=2)
    assert same == STATIC
    assert hash(same) == hash(STATIC)
    assert other != STATIC
    assert object() != STATIC
    assert repr(STATIC).startswith("HclReport(version=1, report_size=1184")


# --------------------------------------------------------------------------------------
# Runtime claims
# --------------------------------------------------------------------------------------


def test_runtime_claims() -> None:
    claims = parse_runtime_claims(CLAIMS)
    assert [k.kid for k in claims.keys] == ["HCLAkPub", "HCLEkPub"]
    assert claims.ak_pub.public_key().public_numbers() == AK_KEY.public_key().public_numbers()
    assert claims.key("HCLEkPub").key_ops == ("encrypt",)
    assert claims.user_data == "00" * 64
    assert claims.vm_configuration is not None
    assert json.loads(claims.vm_configuration)["secure-boot"] is True
    assert parse_hcl_report(RAW).runtime_claims() == claims
    with pytest.raises(EvidenceFormatError, match="no key with kid"):
        claims.key("nope")
    minimal = parse_runtime_claims(build_runtime_claims(ak_public=AK_KEY.public_key()))
    assert minimal.user_data is None
    assert minimal.vm_configuration is None


def test_runtime_claims_value_types() -> None:
    a = parse_runtime_claims(CLAIMS)
    b = parse_runtime_claims(CLAIMS)
    c = parse_runtime_claims(build_runtime_claims(ak_public=OTHER_KEY.public_key()))
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert a.ak_pub == b.ak_pub
    assert hash(a.ak_pub) == hash(b.ak_pub)
    assert a.ak_pub != c.ak_pub
    assert "HclJwk(kid='HCLAkPub'" in repr(a.ak_pub)
    assert "RuntimeClaims(keys=" in repr(a)


def _claims_with(
    key: dict[str, object] | None = None, members: dict[str, object] | None = None
) -> bytes:
    document = json.loads(CLAIMS)
    if key is not None:
        document["keys"][0].update(key)
    document.update(members or {})
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"keys": [], "keys": []}', "duplicate member"),
        (b'{"a": 1}', "non-empty array"),
        (_claims_with(members={"keys": []}), "non-empty array"),
        (_claims_with(members={"keys": ["x"]}), "not an object"),
        (_claims_with({"kid": ""}), "kid must be"),
        (_claims_with({"kty": "EC"}), "kty must be 'RSA'"),
        (_claims_with({"n": 5}), "base64url string"),
        (_claims_with({"n": "AQAB=="}), "unpadded"),
        (_claims_with({"n": "AR"}), "canonical"),
        (_claims_with({"n": "A"}), "base64url"),
        (_claims_with({"n": "AAEB"}), "leading zero"),
        (_claims_with({"e": "AQABAQABAQAB"}), "implausibly long"),
        (_claims_with({"key_ops": "sign"}), "key_ops"),
        (_claims_with({"kid": "HCLEkPub"}), "duplicate kid"),
        (_claims_with({"kid": "Other"}), "no HCLAkPub"),
        (_claims_with(members={"user-data": 5}), "user-data"),
        (_claims_with(members={"vm-configuration": []}), "vm-configuration"),
        (b"[" * 100000 + b"]" * 100000, "JSON"),
    ],
)
def test_malformed_claims(data: bytes, words: str) -> None:
    with pytest.raises(EvidenceFormatError, match=words):
        parse_runtime_claims(data)


@settings(max_examples=200)
@given(st.binary(max_size=512))
def test_fuzz_claims(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_runtime_claims(data)


def test_invalid_rsa_numbers() -> None:
    jwk = HclJwk(kid=HCL_AK_KID, n=b"\x01" * 256, e=2)
    with pytest.raises(EvidenceFormatError, match="not a valid RSA public key"):
        jwk.public_key()


# --------------------------------------------------------------------------------------
# The azure chain
# --------------------------------------------------------------------------------------


def test_azure_chain(sp: SimulatedAmdSp) -> None:
    evidence = azure_bundle(sp, hcl_report(sp))
    verified = verify(parse_vtpm_evidence(evidence.to_bytes()))
    assert verified.profile is VtpmProfile.AZURE
    assert verified.ak_binding is AkBinding.VMPL0_BOUND
    assert verified.ek_public is None
    assert isinstance(verified.runtime_claims, RuntimeClaims)
    assert verified.runtime_claims.ak_pub.kid == HCL_AK_KID
    assert verified.snp.report.report_data[32:] == bytes(32)
    assert verified.quote.pcr(TpmAlgId.SHA256, 7) == b"\x07" * 32
    assert verified.claims()["ek_name"] is None


def test_azure_sha384_binding(sp: SimulatedAmdSp) -> None:
    hcl = hcl_report(sp, hash_type=IgvmHashType.SHA384)
    assert verify(azure_bundle(sp, hcl)).ak_binding is AkBinding.VMPL0_BOUND


def test_azure_json_altered(sp: SimulatedAmdSp) -> None:
    # The report binds the original claims; the bundle carries an edited copy.
    edited = CLAIMS.replace(b'"console-enabled":false', b'"console-enabled":true ')
    assert edited != CLAIMS
    hcl = dataclasses.replace(hcl_report(sp), variable_data=edited)
    with pytest.raises(BindingMismatch) as info:
        verify(azure_bundle(sp, hcl))
    assert info.value.claim == "azure.report_data"


def test_azure_ak_not_the_quote_signer(sp: SimulatedAmdSp) -> None:
    # The claims name one AK, the quote is signed by another (with a matching AK public).
    with pytest.raises(BindingMismatch) as info:
        verify(azure_bundle(sp, hcl_report(sp), key=OTHER_KEY))
    assert info.value.claim == "azure.hcl_ak_pub"
    ecc = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BindingMismatch, match="an RSA AK"):
        verify(azure_bundle(sp, hcl_report(sp), key=ecc))


def test_azure_vmpl1(sp: SimulatedAmdSp) -> None:
    with pytest.raises(PolicyViolation) as info:
        verify(azure_bundle(sp, hcl_report(sp, vmpl=1)))
    assert info.value.claim == "snp.vmpl"


def test_azure_wrong_binder(sp: SimulatedAmdSp) -> None:
    with pytest.raises(NonceMismatch):
        verify(azure_bundle(sp, hcl_report(sp)), expected_binder=bytes(32))


def test_azure_refuses_activation(sp: SimulatedAmdSp) -> None:
    evidence = azure_bundle(sp, hcl_report(sp))
    other = azure_bundle(sp, hcl_report(sp))
    with pytest.raises(EvidenceVerificationError, match="azure"):
        begin_activation(other)
    from ratls._tpm_credential import Credential
    from ratls._vtpm_evidence import ActivationChallenge

    challenge = ActivationChallenge(
        ek_name=b"",
        ak_name=b"",
        credential=Credential(id_object=b"", encrypted_secret=b""),
        secret=b"s",
    )
    with pytest.raises(EvidenceVerificationError) as info:
        verify(evidence, activation=challenge)
    assert info.value.claim == "vtpm.activation"


def test_azure_pcr_policy(sp: SimulatedAmdSp) -> None:
    strict = dataclasses.replace(
        POLICY, vtpm=VtpmPolicy(pcrs={"sha256": {7: frozenset({bytes(32)})}})
    )
    from ratls._errors import MeasurementMismatch

    with pytest.raises(MeasurementMismatch):
        verify(azure_bundle(sp, hcl_report(sp)), policy=strict)
