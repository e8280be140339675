"""Evidence from real machines, published by other projects, verified end to end.

Every vector here was produced by real hardware or a real TPM and published as text in
another project's test suite (provenance and licences in ``tests/vectors/*/SOURCES.md``):

* two Azure confidential-VM evidence bundles (Milan and Genoa): the HCL report read from
  vTPM NV index 0x01400001 (SNP report + runtime claims), a TPM2_Quote over all 24 SHA-256
  PCRs signed by the vTPM's AK, and the VCEK that signed the SNP report;
* bare SNP reports with the VCEK that signed them: Milan v3 and v5, Genoa v3 and v5, from
  Azure, Google Cloud and bare-metal hosts (plus one VLEK-signed Milan v5 report whose VLEK
  was not published, used as a parser vector);
* TPM 2.0 quotes with the AK that signed them: from keylime's test suite, and from a Google
  Cloud Shielded VM's vTPM (go-attestation's test data, SHA-1 PCRs);
* two TPM2_Certify structures (TPMS_ATTEST + TPMT_PUBLIC) from physical Intel and Nuvoton
  TPMs, from WebAuthn "tpm" attestations.

Nothing is produced by ratls, so these tests check our parsers and verifiers against what
AMD firmware, the Azure paravisor and a TPM actually emit.  Each vector is verified whole,
then refused after a one-bit flip in each part that carries a signature or a binding.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import ssl
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._amd_certs import AmdTrustAnchors, load_amd_certificate
from ratls._azure_hcl import IgvmHashType, parse_hcl_report, parse_runtime_claims
from ratls._cli_tpm import encode_tpm2_tools_pcrs, parse_tpm2_tools_pcrs
from ratls._errors import (
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
from ratls._policy import Policy, SnpPolicy
from ratls._snp_report import ProductLine, SigningKey, parse_snp_report
from ratls._snp_verify import SnpEndorsements, verify_snp_report
from ratls._tpm_quote import DEFAULT_QUOTE_HASHES, VerifiedQuote, verify_quote
from ratls._tpm_structs import (
    AK_REQUIRED_ATTRIBUTES,
    ObjectAttributes,
    TpmAlgId,
    TpmlPcrSelection,
    TpmsCertifyInfo,
    TpmsQuoteInfo,
    TpmsRsaParms,
    TpmSt,
    TpmtPublic,
    TpmtScheme,
    parse_tpms_attest,
    parse_tpmt_public,
    parse_tpmt_signature,
)
from ratls._verify import verify_snp_attestation
from ratls._vtpm_evidence import (
    AkBinding,
    VtpmEvidence,
    VtpmProfile,
    verify_vtpm_evidence,
)
from ratls.cli import main

if TYPE_CHECKING:
    from collections.abc import Callable

REPO = Path(__file__).resolve().parent.parent
AZURE = REPO / "tests" / "vectors" / "azure"
TPM = REPO / "tests" / "vectors" / "tpm"
AMD = REPO / "certs" / "amd"
#: Inside the validity of both VCEKs (2025-01 .. 2032-01) and of AMD's ASKs/ARKs.
AT = datetime(2026, 1, 1, tzinfo=UTC)
#: Offsets inside an HCL report (header 0x20, SNP report 0x4A0, IGVM request data 0x14).
HCL_SNP = 0x20
HCL_CLAIMS = 0x4D4
#: Offsets inside an SNP report.
SNP_REPORT_DATA = 0x50
SNP_MEASUREMENT = 0x90
SNP_SIGNATURE = 0x2A0
#: RSASSA-PKCS1-v1_5 with SHA-256, as a TPMT_SIGNATURE header (TPM 2.0 Part 2, 11.3.4).
_RSASSA_SHA256 = struct.pack(">HH", TpmAlgId.RSASSA, TpmAlgId.SHA256)


# --------------------------------------------------------------------------------------
# Loading the vectors (decoding only: the bytes are the published ones)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AzureVector:
    """One Azure CVM evidence bundle as published."""

    name: str
    product: ProductLine
    hcl_blob: bytes  # as read from the NV index, zero padding included
    vcek_der: bytes
    quote_attest: bytes
    quote_signature_raw: bytes  # the bare RSA signature the source publishes
    pcrs: tuple[bytes, ...]  # SHA-256 PCR 0..23

    @property
    def quote_signature(self) -> bytes:
        """The raw signature marshalled as the TPMT_SIGNATURE the TPM returned."""
        raw = self.quote_signature_raw
        return _RSASSA_SHA256 + struct.pack(">H", len(raw)) + raw

    @property
    def extra_data(self) -> bytes:
        return parse_tpms_attest(self.quote_attest).extra_data


def _milan_azure() -> AzureVector:
    doc = json.loads((AZURE / "trustee-az-snp-vtpm-milan-evidence-v1.json").read_text())
    quote = doc["tpm_quote"]
    return AzureVector(
        name="milan",
        product=ProductLine.MILAN,
        hcl_blob=base64.urlsafe_b64decode(doc["hcl_report"]),
        vcek_der=base64.urlsafe_b64decode(doc["vcek"]),
        quote_attest=bytes.fromhex(quote["message"]),
        quote_signature_raw=bytes.fromhex(quote["signature"]),
        pcrs=tuple(bytes.fromhex(v) for v in quote["pcrs"]),
    )


def _genoa_azure() -> AzureVector:
    doc = json.loads((AZURE / "trustee-az-snp-vtpm-genoa-evidence.json").read_text())
    quote = doc["quote"]
    return AzureVector(
        name="genoa",
        product=ProductLine.GENOA,
        hcl_blob=bytes(doc["report"]),
        # Real VCEKs have serial number 0, which cryptography warns about: decode the PEM
        # armour without building a certificate object.
        vcek_der=ssl.PEM_cert_to_DER_cert(doc["vcek"]),
        quote_attest=bytes(quote["message"]),
        quote_signature_raw=bytes(quote["signature"]),
        pcrs=tuple(bytes(v) for v in quote["pcrs"]),
    )


AZURE_VECTORS: dict[str, Callable[[], AzureVector]] = {
    "milan": _milan_azure,
    "genoa": _genoa_azure,
}


@pytest.fixture(params=sorted(AZURE_VECTORS))
def azure(request: pytest.FixtureRequest) -> AzureVector:
    loader = AZURE_VECTORS[request.param]
    return loader()


def _amd_der(product: ProductLine, name: str) -> bytes:
    pem = (AMD / product.value.lower() / f"{name}.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _endorsements(vector: AzureVector, *, vcek_der: bytes | None = None) -> SnpEndorsements:
    return SnpEndorsements(
        leaf=load_amd_certificate(vcek_der or vector.vcek_der),
        intermediate=load_amd_certificate(_amd_der(vector.product, "ask")),
        root=load_amd_certificate(_amd_der(vector.product, "ark")),
    )


def _snp_report(vector: AzureVector) -> bytes:
    return parse_hcl_report(vector.hcl_blob, nv_padding=True).snp_report


def _ak_from_claims(hcl_blob: bytes) -> TpmtPublic:
    """The AK as a TPMT_PUBLIC built from HCLAkPub (the source publishes only the JWK).

    The Azure vTPM's AK is an RSA-2048 restricted signing key with RSASSA/SHA-256; only
    the modulus, exponent and scheme matter to the signature check.
    """
    jwk = parse_hcl_report(hcl_blob, nv_padding=True).runtime_claims().ak_pub
    return TpmtPublic.from_public_key(
        jwk.public_key(),
        object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
        scheme=TpmtScheme(scheme=TpmAlgId.RSASSA, hash_alg=TpmAlgId.SHA256),
    )


def _bundle(
    vector: AzureVector,
    *,
    hcl_blob: bytes | None = None,
    vcek_der: bytes | None = None,
    quote_attest: bytes | None = None,
    quote_signature: bytes | None = None,
    pcrs: tuple[bytes, ...] | None = None,
    ak: TpmtPublic | None = None,
) -> VtpmEvidence:
    blob = hcl_blob if hcl_blob is not None else vector.hcl_blob
    values = pcrs if pcrs is not None else vector.pcrs
    return VtpmEvidence(
        profile=VtpmProfile.AZURE,
        hcl_report=parse_hcl_report(blob, nv_padding=True).to_bytes(),
        certs=(
            vcek_der or vector.vcek_der,
            _amd_der(vector.product, "ask"),
            _amd_der(vector.product, "ark"),
        ),
        ak_public=(ak or _ak_from_claims(blob)).to_tpm2b(),
        quote_attest=quote_attest or vector.quote_attest,
        quote_signature=quote_signature or vector.quote_signature,
        pcrs=tuple((TpmAlgId.SHA256, i, v) for i, v in enumerate(values)),
    )


def _selection(attested: object) -> TpmlPcrSelection:
    assert isinstance(attested, TpmsQuoteInfo)
    return attested.pcr_select


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


# --------------------------------------------------------------------------------------
# Azure: the HCL report as a format
# --------------------------------------------------------------------------------------


EXPECTED_AZURE = {
    # name: (HCL version, runtime-claims size, NV blob size, reported TCB)
    "milan": (1, 1110, 2600, {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}),
    "genoa": (2, 1200, 2600, {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 84}),
}


def test_hcl_report_parses_with_its_nv_padding(azure: AzureVector) -> None:
    version, claims_size, blob_size, _ = EXPECTED_AZURE[azure.name]
    assert len(azure.hcl_blob) == blob_size
    hcl = parse_hcl_report(azure.hcl_blob, nv_padding=True)
    assert hcl.version == version
    assert hcl.report_data_hash_type is IgvmHashType.SHA256
    assert len(hcl.variable_data) == claims_size
    # The padding the NV index adds is zero, and to_bytes() gives back the report without it.
    end = HCL_CLAIMS + claims_size
    assert not any(azure.hcl_blob[end:])
    assert hcl.to_bytes() == azure.hcl_blob[:end]
    assert parse_hcl_report(hcl.to_bytes()) == hcl


def test_hcl_report_strict_parse_refuses_the_padding(azure: AzureVector) -> None:
    with pytest.raises(EvidenceFormatError, match="trailing"):
        parse_hcl_report(azure.hcl_blob)


def test_hcl_report_every_truncation_and_a_trailing_byte_are_refused(
    azure: AzureVector,
) -> None:
    exact = parse_hcl_report(azure.hcl_blob, nv_padding=True).to_bytes()
    for n in range(len(exact)):
        with pytest.raises(EvidenceFormatError):
            parse_hcl_report(exact[:n])
    with pytest.raises(EvidenceFormatError):
        parse_hcl_report(exact + b"\x00")
    with pytest.raises(EvidenceFormatError):
        parse_hcl_report(azure.hcl_blob[:-1] + b"\x01", nv_padding=True)


def test_hcl_runtime_claims_bind_the_report(azure: AzureVector) -> None:
    hcl = parse_hcl_report(azure.hcl_blob, nv_padding=True)
    report_data = hcl.snp_report[SNP_REPORT_DATA : SNP_REPORT_DATA + 64]
    assert report_data[:32] == hashlib.sha256(hcl.variable_data).digest()
    assert report_data[32:] == bytes(32)
    claims = parse_runtime_claims(hcl.variable_data)
    assert claims == hcl.runtime_claims()
    assert {key.kid for key in claims.keys} == {"HCLAkPub", "HCLEkPub"}
    assert isinstance(claims.ak_pub.public_key(), rsa.RSAPublicKey)
    assert claims.ak_pub.public_key().key_size == 2048
    assert claims.user_data == "0" * 128
    assert claims.vm_configuration is not None
    assert '"secure-boot":true' in claims.vm_configuration


# --------------------------------------------------------------------------------------
# Azure: the SNP report inside, against AMD's pinned roots
# --------------------------------------------------------------------------------------


def test_azure_snp_report_verifies_against_the_pinned_amd_root(azure: AzureVector) -> None:
    verified = verify_snp_report(
        _snp_report(azure), _endorsements(azure), anchors=AmdTrustAnchors.default(), at=AT
    )
    assert verified.product is azure.product
    assert verified.trust_anchor == "AMD"
    report = verified.report
    assert report.version == 3
    assert report.vmpl == 0
    assert report.reported_tcb.components() == EXPECTED_AZURE[azure.name][3]
    assert report.chip_id == verified.chain.extensions.hw_id


def test_azure_snp_report_appraised(azure: AzureVector) -> None:
    raw = _snp_report(azure)
    measurement = parse_snp_report(raw, product=azure.product).measurement
    policy = Policy(snp=SnpPolicy(measurements=frozenset({measurement})))
    result = verify_snp_attestation(raw, _endorsements(azure), policy=policy, at=AT)
    assert result.appraised
    assert result.trust_anchor == "AMD"
    other = Policy(snp=SnpPolicy(measurements=frozenset({bytes(48)})))
    with pytest.raises(MeasurementMismatch):
        verify_snp_attestation(raw, _endorsements(azure), policy=other, at=AT)


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (SNP_REPORT_DATA, "report_data"),
        (SNP_MEASUREMENT, "measurement"),
        (0x08, "guest policy"),
        (0x180, "reported_tcb"),
        (SNP_SIGNATURE, "signature R"),
    ],
)
def test_azure_snp_report_with_one_bit_flipped_is_refused(
    azure: AzureVector, offset: int, what: str
) -> None:
    del what
    flipped = _flip(_snp_report(azure), offset)
    with pytest.raises((SignatureMismatch, CertificateChainError)) as info:
        verify_snp_report(flipped, _endorsements(azure), anchors=AmdTrustAnchors.default(), at=AT)
    # A flipped TCB byte may already disagree with the VCEK's TCB extensions; everything
    # else must fail on the ECDSA signature itself.
    if offset != 0x180:
        assert isinstance(info.value, SignatureMismatch)


def test_azure_vcek_with_one_bit_flipped_is_refused(azure: AzureVector) -> None:
    # The last byte of the DER is inside the ASK's RSASSA-PSS signature over the VCEK.
    flipped = _flip(azure.vcek_der, len(azure.vcek_der) - 1)
    with pytest.raises(CertificateChainError):
        verify_snp_report(
            _snp_report(azure),
            _endorsements(azure, vcek_der=flipped),
            anchors=AmdTrustAnchors.default(),
            at=AT,
        )


def test_azure_vcek_outside_its_validity_is_refused(azure: AzureVector) -> None:
    with pytest.raises(CertificateChainError):
        verify_snp_report(
            _snp_report(azure),
            _endorsements(azure),
            anchors=AmdTrustAnchors.default(),
            at=datetime(2024, 6, 1, tzinfo=UTC),
        )


def test_azure_vcek_of_the_other_product_is_refused() -> None:
    milan, genoa = _milan_azure(), _genoa_azure()
    with pytest.raises((CertificateChainError, SignatureMismatch)):
        verify_snp_report(
            _snp_report(milan),
            _endorsements(genoa),
            anchors=AmdTrustAnchors.default(),
            at=AT,
            product=ProductLine.MILAN,
        )
    with pytest.raises(CertificateChainError):
        verify_snp_report(
            _snp_report(milan),
            _endorsements(milan, vcek_der=genoa.vcek_der),
            anchors=AmdTrustAnchors.default(),
            at=AT,
        )


# --------------------------------------------------------------------------------------
# Azure: the whole chain SNP report -> runtime claims -> HCLAkPub -> quote -> PCRs
# --------------------------------------------------------------------------------------


def test_azure_evidence_verifies_end_to_end(azure: AzureVector) -> None:
    verified = verify_vtpm_evidence(
        _bundle(azure), policy=None, at=AT, expected_binder=azure.extra_data
    )
    assert verified.profile is VtpmProfile.AZURE
    assert verified.ak_binding is AkBinding.VMPL0_BOUND
    assert verified.trust_anchor == "AMD"
    assert verified.snp.product is azure.product
    assert not verified.appraised
    quoted = verified.quote.pcrs()
    assert quoted[TpmAlgId.SHA256] == dict(enumerate(azure.pcrs))


def test_azure_quote_facts() -> None:
    milan = parse_tpms_attest(_milan_azure().quote_attest)
    assert milan.extra_data == b"challenge"
    genoa = parse_tpms_attest(_genoa_azure().quote_attest)
    assert len(genoa.extra_data) == 48
    for attest in (milan, genoa):
        (selection,) = _selection(attest.attested).pcr_selections
        assert selection.hash is TpmAlgId.SHA256
        assert selection.pcr_select == b"\xff\xff\xff"


def test_azure_wrong_binder_is_refused(azure: AzureVector) -> None:
    with pytest.raises(NonceMismatch):
        verify_vtpm_evidence(
            _bundle(azure), policy=None, at=AT, expected_binder=_flip(azure.extra_data, 0)
        )


def test_azure_runtime_claims_with_one_bit_flipped_are_refused(azure: AzureVector) -> None:
    # The last character of the user-data string: still valid JSON, no longer the hashed one.
    claims_size = EXPECTED_AZURE[azure.name][1]
    end = HCL_CLAIMS + claims_size
    hcl = parse_hcl_report(azure.hcl_blob, nv_padding=True)
    offset = HCL_CLAIMS + hcl.variable_data.rindex(b"0")
    assert offset < end
    with pytest.raises(BindingMismatch) as info:
        verify_vtpm_evidence(
            _bundle(azure, hcl_blob=_flip(azure.hcl_blob, offset)),
            policy=None,
            at=AT,
            expected_binder=azure.extra_data,
        )
    assert info.value.claim == "azure.report_data"


def test_azure_snp_report_flipped_inside_the_hcl_is_refused(azure: AzureVector) -> None:
    with pytest.raises(SignatureMismatch):
        verify_vtpm_evidence(
            _bundle(azure, hcl_blob=_flip(azure.hcl_blob, HCL_SNP + SNP_MEASUREMENT)),
            policy=None,
            at=AT,
            expected_binder=azure.extra_data,
        )


def test_azure_quote_with_one_bit_flipped_is_refused(azure: AzureVector) -> None:
    # Byte 0x30 lies in the qualified signer/extraData area, covered by the AK signature.
    with pytest.raises(SignatureMismatch) as info:
        verify_vtpm_evidence(
            _bundle(azure, quote_attest=_flip(azure.quote_attest, 0x30)),
            policy=None,
            at=AT,
            expected_binder=azure.extra_data,
        )
    assert info.value.__cause__ is not None


def test_azure_quote_signature_with_one_bit_flipped_is_refused(azure: AzureVector) -> None:
    sig = azure.quote_signature
    with pytest.raises(SignatureMismatch):
        verify_vtpm_evidence(
            _bundle(azure, quote_signature=_flip(sig, len(sig) - 1)),
            policy=None,
            at=AT,
            expected_binder=azure.extra_data,
        )


@pytest.mark.parametrize("index", [0, 7, 23])
def test_azure_pcr_with_one_bit_flipped_is_refused(azure: AzureVector, index: int) -> None:
    pcrs = list(azure.pcrs)
    pcrs[index] = _flip(pcrs[index], 31)
    with pytest.raises(BindingMismatch) as info:
        verify_vtpm_evidence(
            _bundle(azure, pcrs=tuple(pcrs)),
            policy=None,
            at=AT,
            expected_binder=azure.extra_data,
        )
    assert info.value.claim == "tpm.quote.pcr_digest"


def test_azure_quote_under_another_ak_is_refused() -> None:
    milan, genoa = _milan_azure(), _genoa_azure()
    # Genoa's quote with Genoa's AK in the bundle, but Milan's runtime claims: HCLAkPub
    # is not the quoting key.
    with pytest.raises((BindingMismatch, SignatureMismatch)):
        verify_vtpm_evidence(
            _bundle(milan, ak=_ak_from_claims(genoa.hcl_blob)),
            policy=None,
            at=AT,
            expected_binder=milan.extra_data,
        )


def test_azure_evidence_through_the_cli(
    azure: AzureVector, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hcl = tmp_path / "hcl.bin"
    hcl.write_bytes(azure.hcl_blob)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "vcek.der").write_bytes(azure.vcek_der)
    for name in ("ask", "ark"):
        (certs / f"{name}.pem").write_bytes(
            (AMD / azure.product.value.lower() / f"{name}.pem").read_bytes()
        )
    message = tmp_path / "quote.msg"
    message.write_bytes(azure.quote_attest)
    signature = tmp_path / "quote.sig"
    signature.write_bytes(azure.quote_signature)
    selection = _selection(parse_tpms_attest(azure.quote_attest).attested)
    pcrs = tmp_path / "quote.pcrs"
    pcrs.write_bytes(
        encode_tpm2_tools_pcrs(selection, {TpmAlgId.SHA256: dict(enumerate(azure.pcrs))})
    )
    args = [
        "azure",
        "verify",
        "--hcl-report",
        str(hcl),
        "--certs",
        str(certs),
        "-m",
        str(message),
        "-s",
        str(signature),
        "-f",
        str(pcrs),
        "-q",
        azure.extra_data.hex(),
        "--at",
        AT.isoformat(),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vmpl0-bound" in out
    signature.write_bytes(_flip(azure.quote_signature, len(azure.quote_signature) - 1))
    assert main(args) == 1


# --------------------------------------------------------------------------------------
# Bare SNP reports with the VCEK that signed them (tests/vectors/snp/)
# --------------------------------------------------------------------------------------

SNP = REPO / "tests" / "vectors" / "snp"


@dataclass(frozen=True, slots=True, kw_only=True)
class SnpVector:
    stem: str
    vcek: str
    product: ProductLine
    version: int
    tcb: dict[str, int]


SNP_VECTORS = [
    SnpVector(
        stem="milan-v3-azure-trustee",
        vcek="milan-v3-azure-trustee.vcek.pem",
        product=ProductLine.MILAN,
        version=3,
        tcb=EXPECTED_AZURE["milan"][3],
    ),
    SnpVector(
        stem="genoa-v3-azure-trustee",
        vcek="genoa-v3-azure-trustee.vcek.pem",
        product=ProductLine.GENOA,
        version=3,
        tcb=EXPECTED_AZURE["genoa"][3],
    ),
    SnpVector(
        stem="milan-v5-gcp-teekit",
        vcek="milan-v5-gcp-teekit.vcek.pem",
        product=ProductLine.MILAN,
        version=5,
        tcb={"bootloader": 4, "tee": 0, "snp": 27, "microcode": 222},
    ),
    SnpVector(
        stem="milan-v3-routex-client-lua",
        vcek="milan-v3-routex-client-lua.vcek.pem",
        product=ProductLine.MILAN,
        version=3,
        tcb={"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
    ),
    SnpVector(
        stem="genoa-v3-routex-client-lua",
        vcek="genoa-v3-routex-client-lua.vcek.pem",
        product=ProductLine.GENOA,
        version=3,
        tcb={"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72},
    ),
    SnpVector(
        stem="genoa-v5-routex-client-lua",
        vcek="genoa-v5-routex-client-lua.vcek.pem",
        product=ProductLine.GENOA,
        version=5,
        tcb={"bootloader": 10, "tee": 0, "snp": 27, "microcode": 88},
    ),
    # The same chip and TCB, its VCEK fetched from AMD's KDS a second time: another
    # certificate (other validity, other signature) over the same key.
    SnpVector(
        stem="milan-v5-gcp-teekit",
        vcek="milan-v5-gcp-teekit.vcek-reissued.pem",
        product=ProductLine.MILAN,
        version=5,
        tcb={"bootloader": 4, "tee": 0, "snp": 27, "microcode": 222},
    ),
]


def _snp_raw(vector: SnpVector) -> bytes:
    return bytes.fromhex((SNP / f"{vector.stem}.hex").read_text().strip())


def _snp_endorsements(vector: SnpVector) -> SnpEndorsements:
    product_dir = AMD / vector.product.value.lower()
    return SnpEndorsements(
        leaf=load_amd_certificate((SNP / vector.vcek).read_bytes()),
        intermediate=load_amd_certificate((product_dir / "ask.pem").read_bytes()),
        root=load_amd_certificate((product_dir / "ark.pem").read_bytes()),
    )


@pytest.fixture(params=SNP_VECTORS, ids=lambda v: v.vcek.removesuffix(".pem"))
def snp(request: pytest.FixtureRequest) -> SnpVector:
    vector: SnpVector = request.param
    return vector


def test_snp_report_verifies_against_the_pinned_amd_root(snp: SnpVector) -> None:
    verified = verify_snp_report(
        _snp_raw(snp), _snp_endorsements(snp), anchors=AmdTrustAnchors.default(), at=AT
    )
    assert verified.product is snp.product
    assert verified.trust_anchor == "AMD"
    assert verified.report.version == snp.version
    assert verified.report.vmpl == 0
    assert verified.report.reported_tcb.components() == snp.tcb
    assert verified.report.to_bytes() == _snp_raw(snp)


def test_snp_report_parses_three_ways(snp: SnpVector) -> None:
    raw = _snp_raw(snp)
    assert parse_snp_report(raw, product=snp.product).to_bytes() == raw
    for n in range(len(raw)):
        with pytest.raises(EvidenceFormatError):
            parse_snp_report(raw[:n], product=snp.product)
    with pytest.raises(EvidenceFormatError):
        parse_snp_report(raw + b"\x00", product=snp.product)


@pytest.mark.parametrize("offset", [SNP_REPORT_DATA, SNP_MEASUREMENT, 0x1A0, SNP_SIGNATURE + 47])
def test_snp_report_with_one_bit_flipped_is_refused(snp: SnpVector, offset: int) -> None:
    # report_data, measurement, chip_id, the last byte of signature R.
    with pytest.raises((SignatureMismatch, EvidenceVerificationError)) as info:
        verify_snp_report(
            _flip(_snp_raw(snp), offset, 7),
            _snp_endorsements(snp),
            anchors=AmdTrustAnchors.default(),
            at=AT,
        )
    # A flipped CHIP_ID already disagrees with the VCEK's hwID; the rest fails on ECDSA.
    if offset != 0x1A0:
        assert isinstance(info.value, SignatureMismatch)
        assert info.value.__cause__ is not None


def test_snp_report_before_its_vcek_was_issued_is_refused(snp: SnpVector) -> None:
    with pytest.raises(CertificateChainError):
        verify_snp_report(
            _snp_raw(snp),
            _snp_endorsements(snp),
            anchors=AmdTrustAnchors.default(),
            at=datetime(2024, 6, 1, tzinfo=UTC),
        )


def test_snp_vectors_from_azure_are_the_reports_inside_the_hcl(azure: AzureVector) -> None:
    stem = f"{azure.name}-v3-azure-trustee"
    assert bytes.fromhex((SNP / f"{stem}.hex").read_text().strip()) == _snp_report(azure)
    pem = (SNP / f"{stem}.vcek.pem").read_text()
    assert ssl.PEM_cert_to_DER_cert(pem) == azure.vcek_der


def _snp_vector(stem: str) -> SnpVector:
    return next(v for v in SNP_VECTORS if v.stem == stem)


def test_routex_reports_committed_firmware() -> None:
    # The committed firmware versions routex-client-lua's own tests assert for these reports.
    expected = {
        "milan-v3-routex-client-lua": (1, 55, 29),
        "genoa-v3-routex-client-lua": (1, 55, 39),
        "genoa-v5-routex-client-lua": (1, 55, 49),
    }
    for stem, version in expected.items():
        report = parse_snp_report(_snp_raw(_snp_vector(stem)))
        assert (report.committed_major, report.committed_minor, report.committed_build) == version


def test_vlek_signed_report_parses() -> None:
    # A real VLEK-signed report (an AWS-style Milan host: VLEK key, CHIP_ID zero).  Its VLEK
    # was not published, so it is a parser vector only.
    raw = bytes.fromhex((SNP / "milan-v5-vlek-confidior.hex").read_text().strip())
    report = parse_snp_report(raw)
    assert report.to_bytes() == raw
    assert report.version == 5
    assert report.product is ProductLine.MILAN
    assert report.signer_info.signing_key is SigningKey.VLEK
    assert report.chip_id == bytes(64)
    assert report.vmpl == 1
    assert report.reported_tcb.components() == {
        "bootloader": 4,
        "tee": 0,
        "snp": 29,
        "microcode": 222,
    }
    for n in range(len(raw)):
        with pytest.raises(EvidenceFormatError):
            parse_snp_report(raw[:n])


def test_vlek_signed_report_under_a_vcek_chain_is_refused() -> None:
    raw = bytes.fromhex((SNP / "milan-v5-vlek-confidior.hex").read_text().strip())
    with pytest.raises(CertificateChainError):
        verify_snp_report(
            raw,
            _snp_endorsements(_snp_vector("milan-v3-azure-trustee")),
            anchors=AmdTrustAnchors.default(),
            at=AT,
        )


def test_gcp_report_facts() -> None:
    report = parse_snp_report(_snp_raw(_snp_vector("milan-v5-gcp-teekit")))
    assert report.product is ProductLine.MILAN
    assert report.report_data == bytes(64)
    assert report.platform_info.smt_en
    assert not report.policy.debug


# --------------------------------------------------------------------------------------
# A real TPM 2.0 quote (keylime's test suite)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeylimeQuote:
    ak_pem: bytes
    nonce: bytes
    attest: bytes
    signature: bytes
    pcr_file: bytes


def _keylime() -> KeylimeQuote:
    doc = json.loads((TPM / "keylime-checkquote.json").read_text())
    return KeylimeQuote(
        ak_pem=doc["aik_pem"].encode(),
        nonce=doc["nonce"].encode(),
        attest=base64.b64decode("".join(doc["quote_b64"])),
        signature=base64.b64decode("".join(doc["signature_b64"])),
        pcr_file=base64.b64decode("".join(doc["pcrs_b64"])),
    )


def _keylime_ak(vector: KeylimeQuote) -> TpmtPublic:
    key = serialization.load_pem_public_key(vector.ak_pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return TpmtPublic.from_public_key(
        key,
        object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
        scheme=TpmtScheme(scheme=TpmAlgId.RSASSA, hash_alg=TpmAlgId.SHA256),
    )


#: The AK's Name as keylime's own test of MakeCredential gives it for this AK.  Our public
#: area rebuilt from the PEM key has the same Name, so it is byte for byte the TPM's.
KEYLIME_AK_NAME = bytes.fromhex(
    "000b9601163463aacdb45be7ad1f6d11ad3dae0578d5aeeb5125e1075c5601b7c7fa"
)


def _keylime_verify(
    vector: KeylimeQuote,
    *,
    attest: bytes | None = None,
    signature: bytes | None = None,
    pcr_file: bytes | None = None,
    nonce: bytes | None = None,
) -> None:
    pcrs = parse_tpm2_tools_pcrs(pcr_file or vector.pcr_file)
    verify_quote(
        attest=attest or vector.attest,
        signature=signature or vector.signature,
        ak_public=_keylime_ak(vector),
        expected_extra_data=nonce or vector.nonce,
        pcr_values=pcrs.mapping(),
    )


def test_keylime_quote_verifies() -> None:
    vector = _keylime()
    ak = _keylime_ak(vector)
    assert ak.name() == KEYLIME_AK_NAME
    quote = verify_quote(
        attest=vector.attest,
        signature=vector.signature,
        ak_public=ak,
        expected_extra_data=vector.nonce,
        pcr_values=parse_tpm2_tools_pcrs(vector.pcr_file).mapping(),
    )
    assert quote.extra_data == b"Ai5M5SjYjnkyv4P7itH1"
    assert quote.pcrs() == {
        TpmAlgId.SHA256: {
            16: bytes.fromhex("d471c0674951f0ef075aecdd42fbefa6eca6019820add0bd222d1c4e6242ce6f")
        }
    }
    assert quote.clock_info.reset_count == 3


def test_keylime_quote_structures_parse_three_ways() -> None:
    vector = _keylime()
    parsers: list[tuple[Callable[[bytes], object], bytes]] = [
        (parse_tpms_attest, vector.attest),
        (parse_tpmt_signature, vector.signature),
        (parse_tpm2_tools_pcrs, vector.pcr_file),
    ]
    for parser, data in parsers:
        parser(data)
        for n in range(len(data)):
            with pytest.raises(EvidenceFormatError):
                parser(data[:n])
        with pytest.raises(EvidenceFormatError):
            parser(data + b"\x00")
    assert parse_tpmt_signature(vector.signature).to_bytes() == vector.signature


def test_keylime_quote_with_one_bit_flipped_is_refused() -> None:
    vector = _keylime()
    # The same byte keylime's own test flips (inside the magic/type/qualified signer).
    with pytest.raises(RatlsError):
        _keylime_verify(vector, attest=_flip(vector.attest, 5))
    # A byte of the clock, which only the signature protects.
    with pytest.raises(SignatureMismatch) as info:
        _keylime_verify(vector, attest=_flip(vector.attest, len(vector.attest) - 50))
    assert info.value.__cause__ is not None


def test_keylime_signature_with_one_bit_flipped_is_refused() -> None:
    vector = _keylime()
    with pytest.raises(SignatureMismatch):
        _keylime_verify(vector, signature=_flip(vector.signature, len(vector.signature) - 1))


def test_keylime_wrong_nonce_is_refused() -> None:
    vector = _keylime()
    with pytest.raises(NonceMismatch):
        _keylime_verify(vector, nonce=b"a" + vector.nonce[1:])


def test_keylime_pcr_with_one_bit_flipped_is_refused() -> None:
    vector = _keylime()
    pcrs = parse_tpm2_tools_pcrs(vector.pcr_file)
    ((bank, index, value),) = pcrs.values
    flipped = encode_tpm2_tools_pcrs(pcrs.selection, ((bank, index, _flip(value, 0)),))
    with pytest.raises(BindingMismatch):
        _keylime_verify(vector, pcr_file=flipped)


def test_keylime_quote_under_another_ak_is_refused() -> None:
    vector = _keylime()
    genoa_ak = _ak_from_claims(_genoa_azure().hcl_blob)
    with pytest.raises(SignatureMismatch):
        verify_quote(
            attest=vector.attest,
            signature=vector.signature,
            ak_public=genoa_ak,
            expected_extra_data=vector.nonce,
            pcr_values=parse_tpm2_tools_pcrs(vector.pcr_file).mapping(),
        )


# --------------------------------------------------------------------------------------
# A Google Cloud Shielded VM's vTPM quote (go-attestation's test data)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GcpQuote:
    ak_public: bytes
    attest: bytes
    signature: bytes
    pcrs: dict[int, bytes]
    creation_attest: bytes


def _gcp_quote() -> GcpQuote:
    doc = json.loads((TPM / "go-attestation-windows-gcp-shielded-vm.json").read_text())
    assert doc["Quote"]["Alg"] == 4  # TPM_ALG_SHA1
    assert doc["Quote"]["Nonce"] == ""
    return GcpQuote(
        ak_public=base64.b64decode(doc["AK"]["Public"]),
        attest=base64.b64decode(doc["Quote"]["Quote"]),
        signature=base64.b64decode(doc["Quote"]["Signature"]),
        pcrs={p["Index"]: base64.b64decode(p["Digest"]) for p in doc["Log"]["PCRs"]},
        creation_attest=base64.b64decode(doc["AK"]["CreateAttestation"]),
    )


def _gcp_verify(
    vector: GcpQuote,
    *,
    attest: bytes | None = None,
    signature: bytes | None = None,
    pcrs: dict[int, bytes] | None = None,
    allowed: frozenset[TpmAlgId] = frozenset({TpmAlgId.SHA1}),
) -> VerifiedQuote:
    return verify_quote(
        attest=attest or vector.attest,
        signature=signature or vector.signature,
        ak_public=parse_tpmt_public(vector.ak_public),
        expected_extra_data=b"",
        pcr_values={TpmAlgId.SHA1: pcrs or vector.pcrs},
        allowed_hashes=allowed,
    )


def test_gcp_vtpm_quote_verifies() -> None:
    vector = _gcp_quote()
    ak = parse_tpmt_public(vector.ak_public)
    assert ak.to_bytes() == vector.ak_public
    assert ak.parameters.scheme.scheme is TpmAlgId.RSASSA
    assert ak.parameters.scheme.hash_alg is TpmAlgId.SHA1
    quote = _gcp_verify(vector)
    assert quote.extra_data == b""
    assert set(quote.pcrs()[TpmAlgId.SHA1]) == set(range(24))
    assert quote.pcr(TpmAlgId.SHA1, 17) == b"\xff" * 20


def test_gcp_vtpm_sha1_quote_is_refused_by_default() -> None:
    with pytest.raises(PolicyViolation):
        _gcp_verify(_gcp_quote(), allowed=DEFAULT_QUOTE_HASHES)


def test_gcp_vtpm_quote_with_one_bit_flipped_is_refused() -> None:
    vector = _gcp_quote()
    with pytest.raises(SignatureMismatch):
        _gcp_verify(vector, attest=_flip(vector.attest, len(vector.attest) - 1))
    with pytest.raises(SignatureMismatch):
        _gcp_verify(vector, signature=_flip(vector.signature, len(vector.signature) - 1))
    pcrs = dict(vector.pcrs)
    pcrs[0] = _flip(pcrs[0], 0)
    with pytest.raises(BindingMismatch):
        _gcp_verify(vector, pcrs=pcrs)
    with pytest.raises(NonceMismatch):
        verify_quote(
            attest=vector.attest,
            signature=vector.signature,
            ak_public=parse_tpmt_public(vector.ak_public),
            expected_extra_data=b"\x00",
            pcr_values={TpmAlgId.SHA1: vector.pcrs},
            allowed_hashes={TpmAlgId.SHA1},
        )


def test_gcp_vtpm_structures_parse_three_ways() -> None:
    vector = _gcp_quote()
    parsers: list[tuple[Callable[[bytes], object], bytes]] = [
        (parse_tpms_attest, vector.attest),
        (parse_tpmt_signature, vector.signature),
        (parse_tpmt_public, vector.ak_public),
    ]
    for parser, data in parsers:
        for n in range(len(data)):
            with pytest.raises(EvidenceFormatError):
                parser(data[:n])
        with pytest.raises(EvidenceFormatError):
            parser(data + b"\x00")
    # TPM_ST_ATTEST_CREATION is not a supported attestation type: refused, not mis-parsed.
    with pytest.raises(EvidenceFormatError, match="unsupported attestation type"):
        parse_tpms_attest(vector.creation_attest)


# --------------------------------------------------------------------------------------
# TPM2_Certify structures from physical TPMs (WebAuthn "tpm" attestations)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifyVector:
    name: str
    cert_info: bytes
    pub_area: bytes
    signature: bytes
    aik_der: bytes
    intermediate_der: bytes


def _certify_vectors() -> list[CertifyVector]:
    doc = json.loads((TPM / "webauthn-tpm-certify.json").read_text())
    out = []
    for name, entry in sorted(doc.items()):
        text = entry["attestationObject"]
        statement = cbor2.loads(base64.b64decode(text + "=" * (-len(text) % 4)))["attStmt"]
        out.append(
            CertifyVector(
                name=name,
                cert_info=statement["certInfo"],
                pub_area=statement["pubArea"],
                signature=statement["sig"],
                aik_der=statement["x5c"][0],
                intermediate_der=statement["x5c"][1],
            )
        )
    return out


@pytest.fixture(params=["dell-xps-13-nuvoton", "surface-pro-4-intel"])
def certify(request: pytest.FixtureRequest) -> CertifyVector:
    return next(v for v in _certify_vectors() if v.name == request.param)


def _check_aik_signature(vector: CertifyVector, cert_info: bytes) -> None:
    key = x509.load_der_x509_certificate(vector.aik_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    # COSE alg -65535 (RS1): RSASSA-PKCS1-v1_5 with SHA-1, as Windows Hello's AIKs sign.
    key.verify(vector.signature, cert_info, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303


def test_certify_vector_is_authentic(certify: CertifyVector) -> None:
    _check_aik_signature(certify, certify.cert_info)
    aik = x509.load_der_x509_certificate(certify.aik_der)
    intermediate = x509.load_der_x509_certificate(certify.intermediate_der)
    issuer_key = intermediate.public_key()
    assert isinstance(issuer_key, rsa.RSAPublicKey)
    assert aik.signature_hash_algorithm is not None
    issuer_key.verify(
        aik.signature, aik.tbs_certificate_bytes, padding.PKCS1v15(), aik.signature_hash_algorithm
    )


def test_certify_structures_parse_and_bind(certify: CertifyVector) -> None:
    attest = parse_tpms_attest(certify.cert_info)
    assert attest.type is TpmSt.ATTEST_CERTIFY
    assert isinstance(attest.attested, TpmsCertifyInfo)
    assert len(attest.extra_data) == 20  # SHA-1(authenticatorData || clientDataHash)
    public = parse_tpmt_public(certify.pub_area)
    assert public.to_bytes() == certify.pub_area
    assert public.type is TpmAlgId.RSA
    assert public.name_alg is TpmAlgId.SHA256
    assert isinstance(public.parameters, TpmsRsaParms)
    assert public.parameters.key_bits == 2048
    # The TPM certified exactly this public area: its Name, computed by us, is the signed one.
    assert public.name() == attest.attested.name


def test_certify_structures_parse_three_ways(certify: CertifyVector) -> None:
    parsers: list[tuple[Callable[[bytes], object], bytes]] = [
        (parse_tpms_attest, certify.cert_info),
        (parse_tpmt_public, certify.pub_area),
    ]
    for parser, data in parsers:
        for n in range(len(data)):
            with pytest.raises(EvidenceFormatError):
                parser(data[:n])
        with pytest.raises(EvidenceFormatError):
            parser(data + b"\x00")


def test_certify_with_one_bit_flipped_is_refused(certify: CertifyVector) -> None:
    with pytest.raises(InvalidSignature):
        _check_aik_signature(certify, _flip(certify.cert_info, len(certify.cert_info) - 1))
    # A flipped modulus bit gives another key, whose Name is not the certified one.
    attest = parse_tpms_attest(certify.cert_info)
    assert isinstance(attest.attested, TpmsCertifyInfo)
    other = parse_tpmt_public(_flip(certify.pub_area, len(certify.pub_area) - 1))
    assert other.name() != attest.attested.name


def test_surface_pro_certify_fields_match_the_published_parse() -> None:
    vector = next(v for v in _certify_vectors() if v.name == "surface-pro-4-intel")
    attest = parse_tpms_attest(vector.cert_info)
    assert attest.qualified_signer.hex() == (
        "000b5722667b4a355f392215094c01d565bc72c6c903bc23b56deeb579492b6ae6ce"
    )
    assert attest.extra_data.hex() == "600b44284199f3d312495b041ff4e7fb29c8028f"
    assert attest.clock_info.clock == 0x1A30295A
    assert attest.clock_info.reset_count == 380665265
    assert attest.clock_info.restart_count == 1378317304
    assert attest.clock_info.safe
    assert attest.firmware_version == int.from_bytes(bytes.fromhex("9767314bfa666054"), "big")


# --------------------------------------------------------------------------------------
# Fuzzing the parsers with mutations of real evidence
# --------------------------------------------------------------------------------------


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out)


_EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(edits=_EDITS, cut=st.integers(0, 3000))
def test_mutated_real_hcl_reports_raise_only_ratls_errors(
    edits: list[tuple[int, int]], cut: int
) -> None:
    blob = _mutate(_genoa_azure().hcl_blob, edits)[: 2600 - cut % 2600]
    try:
        hcl = parse_hcl_report(blob, nv_padding=True)
        hcl.runtime_claims()
        parse_snp_report(hcl.snp_report, product=ProductLine.GENOA)
    except RatlsError:
        pass


@settings(max_examples=150, deadline=None)
@given(edits=_EDITS)
def test_mutated_real_quotes_raise_only_ratls_errors(edits: list[tuple[int, int]]) -> None:
    vector = _keylime()
    with contextlib.suppress(RatlsError):
        _keylime_verify(
            vector,
            attest=_mutate(vector.attest, edits),
            signature=_mutate(vector.signature, edits[::-1]),
        )
