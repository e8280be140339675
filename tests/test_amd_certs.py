"""Tests for the AMD endorsement chain layer: loading, DER values, extensions, anchors, chains.

Real AMD roots (certs/amd/) are used wherever the real profile matters; simulated
chains (ratls.sim) stand in for VCEKs/VLEKs, whose private keys only AMD holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._amd_certs import (
    PINNED_ARK_SPKI_SHA256,
    AmdKeyExtensions,
    AmdOID,
    AmdTrustAnchors,
    KeyKind,
    TrustedArk,
    VerifiedAmdChain,
    _der_oid_value,
    _load_amd_certificate,
    amd_certificate_serial,
    amd_pss_algorithm_identifier,
    der_integer,
    der_oid,
    der_tlv,
    load_amd_certificate,
    parse_amd_key_extensions,
    parse_der_ia5string,
    parse_der_integer,
    parse_der_octet_string,
    report_signature_steps,
    spki_sha256,
    verify_amd_ca_chain,
    verify_amd_chain,
    verify_report_signature,
)
from ratls._errors import (
    CertificateChainError,
    EvidenceFormatError,
    RatlsError,
    SignatureMismatch,
)
from ratls._snp_report import ProductLine, TcbLayout, TcbVersion
from ratls._steps import run_inline
from ratls.sim import simulated_amd_sp

if TYPE_CHECKING:
    from collections.abc import Callable

CERTS = Path(__file__).resolve().parent.parent / "certs" / "amd"
#: A time inside the validity of every real AMD ARK/ASK/ASVK (2020..2045 at the least).
REAL_AT = datetime(2026, 6, 1, tzinfo=UTC)

#: A real Milan VCEK (productName Milan-B0, TCB bl 3 / tee 0 / snp 8 / ucode 115, valid
#: 2022-11-29 .. 2029-11-29), as printed by a public Edgeless Systems test of an Azure CVM
#: attestation.  Its authenticity does not rest on where it was found: the tests below
#: verify it under AMD's Milan ASK and the pinned Milan ARK.
REAL_MILAN_VCEK_PEM = b"""\
-----BEGIN CERTIFICATE-----
MIIFTDCCAvugAwIBAgIBADBGBgkqhkiG9w0BAQowOaAPMA0GCWCGSAFlAwQCAgUA
oRwwGgYJKoZIhvcNAQEIMA0GCWCGSAFlAwQCAgUAogMCATCjAwIBATB7MRQwEgYD
VQQLDAtFbmdpbmVlcmluZzELMAkGA1UEBhMCVVMxFDASBgNVBAcMC1NhbnRhIENs
YXJhMQswCQYDVQQIDAJDQTEfMB0GA1UECgwWQWR2YW5jZWQgTWljcm8gRGV2aWNl
czESMBAGA1UEAwwJU0VWLU1pbGFuMB4XDTIyMTEyOTA2NDU0NloXDTI5MTEyOTA2
NDU0NlowejEUMBIGA1UECwwLRW5naW5lZXJpbmcxCzAJBgNVBAYTAlVTMRQwEgYD
VQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExHzAdBgNVBAoMFkFkdmFuY2Vk
IE1pY3JvIERldmljZXMxETAPBgNVBAMMCFNFVi1WQ0VLMHYwEAYHKoZIzj0CAQYF
K4EEACIDYgAE1JskoXxFff+fwjPMmWWOxy5oGfmdxltZMU2VHZ1XS6VkNpS1fmW/
IibUcKiig4HTf+ExbQFjzDVidnYbY1bMl1y/5GNAiI1oh/iBSwTRr1pTZgqd+YoC
x9q/522iJF/Bo4IBFjCCARIwEAYJKwYBBAGceAEBBAMCAQAwFwYJKwYBBAGceAEC
BAoWCE1pbGFuLUIwMBEGCisGAQQBnHgBAwEEAwIBAzARBgorBgEEAZx4AQMCBAMC
AQAwEQYKKwYBBAGceAEDBAQDAgEAMBEGCisGAQQBnHgBAwUEAwIBADARBgorBgEE
AZx4AQMGBAMCAQAwEQYKKwYBBAGceAEDBwQDAgEAMBEGCisGAQQBnHgBAwMEAwIB
CDARBgorBgEEAZx4AQMIBAMCAXMwTQYJKwYBBAGceAEEBECReB86zeQgVrN+iTCw
ZEvQZZ8TXHF7+HeAPyJREz05fjWLJziOfibHlpi+wTthY9deIHRLRI2sSKVocNga
tpYZMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAICBQChHDAaBgkqhkiG9w0B
AQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBA4ICAQAMxoEM1h7ZnGsobPq3j5Ze
rzqQclJQUc+iuwnj7DfG4vttAcLiCkQJmBFwu50cv2v8x62yWrbURrSURcRH5zwj
7woHN8XFcy5ArHvXt0HDFvuwwMYhnadKzNxHSXvSQmdTS7sr/S0aJGozK13YwHcq
mcIMocb39ly+wdeDuI3TxzygNlPGqilMwmgMdF2Le1SjnM9FCxSqNtWDGSLYZBAS
jmVNX/e1/j1Mzr1lQBJPWIJ8lDragBYPhw6Ptou40A9mXE67BCoQVyA9I7hFCSh6
MCEaI5onwQT61GFMOqotU0iPojxTptl/e1IzgNjUwX/Os9Jm4lMwlgfWxYF862cM
DYPhhFd9lyljpR8vgNxVESxlVZMscfvw2u/ZQtyJQVPiuUtZAVCCMDR02Vmh/SIF
zKhw3azVg2m8YTR4aaWby8JmyWOMz0a+2TBJZuFXx4isSgH3gpijw/c6o5pfRyHG
Nb/0RnxpDLtZ08UGnlRhnYwSCtPq0lg7LGbRohAW0r43Xg7qhYOcS8t4LxenE54v
P/naIYb9IwM/qMP4ozO/IbtKb0GYOy2msMeFzuhPfy/LxjfLA+vMAtw/hO2LUxvN
vpzlBD09rVHhBGvkE8AZQiWoB8Ye6CIyQj/tDD3r0BieK6AEWVcv2559Fa+jsVDr
2IDvCVQUpxHPT7moggwNWA==
-----END CERTIFICATE-----
"""
REAL_MILAN_HW_ID = bytes.fromhex(
    "91781f3acde42056b37e8930b0644bd0659f135c717bf877803f2251133d397e"
    "358b27388e7e26c79698bec13b6163d75e20744b448dac48a56870d81ab69619"
)


def _real(product: ProductLine, name: str) -> x509.Certificate:
    return load_amd_certificate((CERTS / product.value.lower() / f"{name}.pem").read_bytes())


@pytest.fixture(autouse=True)
def _fresh_certificate_memo() -> None:
    """Several tests replace cryptography's loaders; a remembered certificate would skip them."""
    _load_amd_certificate.cache_clear()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --- real AMD roots ---------------------------------------------------------------------------


@pytest.mark.parametrize("product", list(ProductLine))
def test_committed_ark_matches_its_pin(product: ProductLine) -> None:
    ark = _real(product, "ark")
    assert spki_sha256(ark) == PINNED_ARK_SPKI_SHA256[product]
    assert (
        ark.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"ARK-{product.value}"
    )


@pytest.mark.parametrize("product", list(ProductLine))
def test_real_ask_verifies_under_real_ark(product: ProductLine) -> None:
    anchor = verify_amd_ca_chain(
        intermediate=_real(product, "ask"),
        root=_real(product, "ark"),
        product=product,
        key_kind=KeyKind.VCEK,
        anchors=AmdTrustAnchors.default(),
        at=REAL_AT,
    )
    assert anchor.label == "AMD"
    assert anchor.simulated is False
    assert anchor.spki_sha256 == PINNED_ARK_SPKI_SHA256[product]


@pytest.mark.parametrize("product", [ProductLine.GENOA, ProductLine.TURIN])
def test_real_asvk_verifies_under_real_ark(product: ProductLine) -> None:
    anchor = verify_amd_ca_chain(
        intermediate=_real(product, "asvk"),
        root=_real(product, "ark"),
        product=product,
        key_kind=KeyKind.VLEK,
        anchors=AmdTrustAnchors.default(),
        at=REAL_AT,
    )
    assert anchor.product is product


@pytest.mark.parametrize("product", list(ProductLine))
@pytest.mark.parametrize("name", ["ark", "ask"])
def test_real_certificates_use_the_amd_algorithm_identifier(
    product: ProductLine, name: str
) -> None:
    # The simulator writes this encoding; here it is checked against AMD's own bytes.
    assert amd_pss_algorithm_identifier() in _der(_real(product, name))


def test_real_ask_on_the_vlek_path_is_refused() -> None:
    with pytest.raises(CertificateChainError) as info:
        verify_amd_ca_chain(
            intermediate=_real(ProductLine.GENOA, "ask"),
            root=_real(ProductLine.GENOA, "ark"),
            product=ProductLine.GENOA,
            key_kind=KeyKind.VLEK,
            anchors=AmdTrustAnchors.default(),
            at=REAL_AT,
        )
    assert info.value.claim == "amd.asvk.common_name"
    assert info.value.actual == "SEV-Genoa"


def test_real_ask_of_another_product_is_refused() -> None:
    with pytest.raises(CertificateChainError) as info:
        verify_amd_ca_chain(
            intermediate=_real(ProductLine.GENOA, "ask"),
            root=_real(ProductLine.MILAN, "ark"),
            product=ProductLine.MILAN,
            key_kind=KeyKind.VCEK,
            anchors=AmdTrustAnchors.default(),
            at=REAL_AT,
        )
    assert info.value.claim == "amd.ask.common_name"


def test_real_ark_claimed_for_another_product_is_not_trusted() -> None:
    with pytest.raises(CertificateChainError) as info:
        verify_amd_ca_chain(
            intermediate=_real(ProductLine.MILAN, "ask"),
            root=_real(ProductLine.MILAN, "ark"),
            product=ProductLine.GENOA,
            key_kind=KeyKind.VCEK,
            anchors=AmdTrustAnchors.default(),
            at=REAL_AT,
        )
    assert info.value.claim == "amd.ark.spki_sha256"
    assert info.value.actual == PINNED_ARK_SPKI_SHA256[ProductLine.MILAN]


def test_real_chain_after_expiry_is_refused() -> None:
    with pytest.raises(CertificateChainError) as info:
        verify_amd_ca_chain(
            intermediate=_real(ProductLine.MILAN, "ask"),
            root=_real(ProductLine.MILAN, "ark"),
            product=ProductLine.MILAN,
            key_kind=KeyKind.VCEK,
            anchors=AmdTrustAnchors.default(),
            at=datetime(2050, 1, 1, tzinfo=UTC),
        )
    assert info.value.claim == "amd.ark.validity"
    assert info.value.detail == "expired"


def _real_milan_chain(**overrides: object) -> VerifiedAmdChain:
    arguments: dict[str, object] = {
        "leaf": load_amd_certificate(REAL_MILAN_VCEK_PEM),
        "intermediate": _real(ProductLine.MILAN, "ask"),
        "root": _real(ProductLine.MILAN, "ark"),
        "product": ProductLine.MILAN,
        "key_kind": KeyKind.VCEK,
        "anchors": AmdTrustAnchors.default(),
        "at": REAL_AT,
    }
    arguments.update(overrides)
    return verify_amd_chain(**arguments)  # type: ignore[arg-type]


def test_real_milan_vcek_chain_verifies_end_to_end() -> None:
    chain = _real_milan_chain()
    assert chain.anchor_label == "AMD"
    assert chain.anchor_simulated is False
    assert chain.extensions == AmdKeyExtensions(
        struct_version=0,
        product_name="Milan-B0",
        bl_spl=3,
        tee_spl=0,
        snp_spl=8,
        ucode_spl=115,
        hw_id=REAL_MILAN_HW_ID,
    )
    assert chain.extensions.components(ProductLine.MILAN) == {
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }


def test_real_vcek_loads_under_warnings_as_errors() -> None:
    # Fails the day cryptography stops loading AMD's serial-0 VCEKs (or changes the warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vcek = load_amd_certificate(REAL_MILAN_VCEK_PEM)
        assert amd_certificate_serial(vcek) == 0
        assert parse_amd_key_extensions(vcek).hw_id == REAL_MILAN_HW_ID


@pytest.mark.parametrize("field", ["subject", "issuer"])
def test_malformed_names_are_refused_when_loading(field: str) -> None:
    # cryptography parses names on first use; a malformed one must be refused at load,
    # not surface later as a warning or a ValueError inside the chain checks.
    key = ec.generate_private_key(ec.SECP384R1())
    good = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "VCEK")])
    now = datetime.now(UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cryptography warns as it builds it
        bad = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "USA", _validate=False),
                x509.NameAttribute(NameOID.COMMON_NAME, "VCEK"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(bad if field == "subject" else good)
            .issuer_name(bad if field == "issuer" else good)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA384())
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(EvidenceFormatError, match="malformed subject or issuer"):
            load_amd_certificate(cert.public_bytes(serialization.Encoding.DER))


def test_real_vcek_on_the_vlek_path_is_refused() -> None:
    with pytest.raises(CertificateChainError) as info:
        _real_milan_chain(key_kind=KeyKind.VLEK)
    assert info.value.claim == "amd.asvk.common_name"


def test_real_vcek_after_its_seven_years_is_refused() -> None:
    with pytest.raises(CertificateChainError) as info:
        _real_milan_chain(at=datetime(2030, 1, 1, tzinfo=UTC))
    assert info.value.claim == "amd.vcek.validity"


def test_real_vcek_under_another_products_ask_is_refused() -> None:
    with pytest.raises(CertificateChainError) as info:
        _real_milan_chain(
            intermediate=_real(ProductLine.GENOA, "ask"),
            root=_real(ProductLine.GENOA, "ark"),
            product=ProductLine.GENOA,
        )
    assert info.value.claim == "amd.vcek.issuer"


# --- loading ----------------------------------------------------------------------------------


def test_load_pem_and_der_agree() -> None:
    ark = _real(ProductLine.MILAN, "ark")
    assert load_amd_certificate(_der(ark)) == ark
    assert load_amd_certificate(b"\n  " + ark.public_bytes(serialization.Encoding.PEM)) == ark


def test_serial_zero_certificate_loads_under_warnings_as_errors() -> None:
    # This is the test that fails the day cryptography stops loading serial-0 certificates
    # (or changes its warning): every real VCEK/VLEK has serial number 0.
    leaf_der = _der(simulated_amd_sp(ProductLine.MILAN).leaf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        leaf = load_amd_certificate(leaf_der)
        assert amd_certificate_serial(leaf) == 0
        leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
        assert load_amd_certificate(leaf_pem) == leaf


def _cryptography_warns_on_serial_zero(leaf_der: bytes) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x509.load_der_x509_certificate(leaf_der)
    return any("serial number" in str(w.message) for w in caught)


def test_serial_zero_suppression_is_not_global() -> None:
    leaf_der = _der(simulated_amd_sp(ProductLine.MILAN).leaf)
    warns_before = _cryptography_warns_on_serial_zero(leaf_der)
    load_amd_certificate(leaf_der)
    # Outside load_amd_certificate cryptography behaves exactly as before: whatever it said
    # about serial 0 (a deprecation warning since release 43-ish, nothing in older ones), it
    # still says; nothing was silenced globally.
    assert _cryptography_warns_on_serial_zero(leaf_der) == warns_before
    if warns_before:
        with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
            x509.load_der_x509_certificate(leaf_der)


def test_other_warnings_during_loading_still_surface(monkeypatch: pytest.MonkeyPatch) -> None:
    original = x509.load_der_x509_certificate

    def noisy(data: bytes) -> x509.Certificate:
        warnings.warn("another deprecation", CryptographyDeprecationWarning, stacklevel=2)
        warnings.warn("something else", UserWarning, stacklevel=2)
        return original(data)

    monkeypatch.setattr(x509, "load_der_x509_certificate", noisy)
    leaf_der = _der(simulated_amd_sp(ProductLine.MILAN).leaf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_amd_certificate(leaf_der)
    messages = [str(w.message) for w in caught]
    assert "another deprecation" in messages
    assert "something else" in messages
    assert not any("serial number" in m for m in messages)


def test_future_cryptography_refusing_serial_zero_gives_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def strict(
        original: Callable[[bytes], x509.Certificate],
    ) -> Callable[[bytes], x509.Certificate]:
        def load(data: bytes) -> x509.Certificate:
            # What a future cryptography would do: refuse serial 0 outright.  (Older
            # releases load it silently, newer ones warn; this stands for the next step.)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                cert = original(data)
            if cert.serial_number <= 0:
                raise ValueError("Parsed a serial number which wasn't positive")
            return cert

        return load

    monkeypatch.setattr(x509, "load_der_x509_certificate", strict(x509.load_der_x509_certificate))
    monkeypatch.setattr(x509, "load_pem_x509_certificate", strict(x509.load_pem_x509_certificate))
    leaf = simulated_amd_sp(ProductLine.MILAN).leaf
    with pytest.raises(EvidenceFormatError, match="serial number 0") as info:
        load_amd_certificate(_der(leaf))
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(EvidenceFormatError, match="serial number 0"):
        load_amd_certificate(leaf.public_bytes(serialization.Encoding.PEM))
    # Certificates with a positive serial are unaffected.
    assert load_amd_certificate(_der(_real(ProductLine.MILAN, "ark"))) is not None


def test_serial_zero_certificate_broken_otherwise_gets_the_generic_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(data: bytes) -> x509.Certificate:
        raise ValueError("error parsing asn1 value")

    monkeypatch.setattr(x509, "load_der_x509_certificate", refuse)
    with pytest.raises(EvidenceFormatError, match="not a certificate"):
        load_amd_certificate(_der(simulated_amd_sp(ProductLine.MILAN).leaf))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ],
)
def test_malformed_input_is_a_format_error(data: bytes) -> None:
    with pytest.raises(EvidenceFormatError) as info:
        load_amd_certificate(data)
    assert info.value.structure == "X.509 certificate"


def test_two_pem_certificates_are_refused() -> None:
    pem = _real(ProductLine.MILAN, "ark").public_bytes(serialization.Encoding.PEM)
    with pytest.raises(EvidenceFormatError, match="exactly one"):
        load_amd_certificate(pem + pem)


def test_every_truncation_and_a_trailing_byte_are_refused() -> None:
    der = _der(simulated_amd_sp(ProductLine.MILAN).leaf)
    assert load_amd_certificate(der) is not None
    for size in range(len(der)):
        with pytest.raises(EvidenceFormatError):
            load_amd_certificate(der[:size])
    with pytest.raises(EvidenceFormatError):
        load_amd_certificate(der + b"\x00")


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_load_arbitrary_bytes_raises_only_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        load_amd_certificate(data)


# --- DER values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "value"),
    [("020100", 0), ("02017f", 127), ("02020080", 128), ("020200d1", 209), ("020200ff", 255)],
)
def test_der_integer_values(encoded: str, value: int) -> None:
    assert parse_der_integer(bytes.fromhex(encoded), structure="t") == value
    assert der_integer(value) == bytes.fromhex(encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",  # nothing
        "02",  # no length
        "0200",  # empty integer
        "02020005",  # non-minimal (leading zero)
        "0202ff80",  # non-minimal (leading FF)
        "028105",  # truncated long form
        "02810105",  # non-minimal long-form length
        "028001",  # indefinite length
        "0201",  # truncated contents
        "02010500",  # trailing byte
        "040105",  # wrong tag
        "1f0105",  # multi-byte tag
    ],
)
def test_der_integer_refuses(encoded: str) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_der_integer(bytes.fromhex(encoded), structure="t")


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**200))
def test_der_integer_round_trip(value: int) -> None:
    encoded = der_integer(value)
    assert parse_der_integer(encoded, structure="t") == value
    for size in range(len(encoded)):
        with pytest.raises(EvidenceFormatError):
            parse_der_integer(encoded[:size], structure="t")
    with pytest.raises(EvidenceFormatError):
        parse_der_integer(encoded + b"\x00", structure="t")


def test_der_integer_writer_refuses_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        der_integer(-1)


def test_der_long_form_length_round_trips() -> None:
    payload = bytes(range(200)) * 2
    encoded = der_tlv(0x04, payload)
    assert encoded[:4] == bytes.fromhex("04820190")
    assert parse_der_octet_string(encoded, structure="t") == payload


@pytest.mark.parametrize(
    "dotted",
    ["1.3.6.1.4.1.3704.1.3.8", "2.16.840.1.101.3.4.2.2", "1.2.840.113549.1.1.10", "2.999.3"],
)
def test_der_oid_round_trip(dotted: str) -> None:
    encoded = der_oid(dotted)
    assert encoded[0] == 0x06
    assert _der_oid_value(encoded[2:], "t") == dotted


@pytest.mark.parametrize("contents", ["", "2b8f", "2b8001"])
def test_der_oid_refuses_malformed(contents: str) -> None:
    with pytest.raises(EvidenceFormatError):
        _der_oid_value(bytes.fromhex(contents), "t")


def test_ia5string() -> None:
    assert parse_der_ia5string(b"\x16\x05Milan", structure="t") == "Milan"
    with pytest.raises(EvidenceFormatError, match="non-ASCII"):
        parse_der_ia5string(b"\x16\x02\xc3\xa9", structure="t")
    with pytest.raises(EvidenceFormatError):
        parse_der_ia5string(b"\x0c\x05Milan", structure="t")  # UTF8String


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_der_readers_raise_only_ratls_errors(data: bytes) -> None:
    for reader in (parse_der_integer, parse_der_ia5string, parse_der_octet_string):
        with contextlib.suppress(RatlsError):
            reader(data, structure="t")


# --- VCEK / VLEK extensions -------------------------------------------------------------------

_HW_ID = bytes(range(64))
_MILAN_EXTS: list[tuple[x509.ObjectIdentifier, bytes]] = [
    (AmdOID.STRUCT_VERSION, der_integer(0)),
    (AmdOID.PRODUCT_NAME, der_tlv(0x16, b"Milan-B0")),
    (AmdOID.BL_SPL, der_integer(3)),
    (AmdOID.TEE_SPL, der_integer(0)),
    (AmdOID.SNP_SPL, der_integer(8)),
    (AmdOID.SPL_4, der_integer(0)),
    (AmdOID.SPL_5, der_integer(0)),
    (AmdOID.SPL_6, der_integer(0)),
    (AmdOID.SPL_7, der_integer(0)),
    (AmdOID.UCODE_SPL, der_integer(209)),
    (AmdOID.HW_ID, _HW_ID),
]


def _cert_with(extensions: list[tuple[x509.ObjectIdentifier, bytes]]) -> x509.Certificate:
    """A throwaway certificate carrying the given raw extensions."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(key, hashes.SHA384())


def _replace(
    oid: x509.ObjectIdentifier, value: bytes | None
) -> list[tuple[x509.ObjectIdentifier, bytes]]:
    out = [(o, v) for o, v in _MILAN_EXTS if o != oid]
    return out if value is None else [*out, (oid, value)]


def test_parse_milan_extensions() -> None:
    ext = parse_amd_key_extensions(_cert_with(_MILAN_EXTS))
    assert ext == AmdKeyExtensions(
        struct_version=0,
        product_name="Milan-B0",
        bl_spl=3,
        tee_spl=0,
        snp_spl=8,
        ucode_spl=209,
        hw_id=_HW_ID,
    )
    assert ext.components(ProductLine.MILAN) == {
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 209,
    }
    assert (
        ext.components(ProductLine.MILAN)
        == TcbVersion(bootloader=3, tee=0, snp=8, microcode=209).components()
    )


def test_components_on_turin_include_fmc() -> None:
    ext = parse_amd_key_extensions(_cert_with(_replace(AmdOID.FMC_SPL, der_integer(4))))
    tcb = TcbVersion(bootloader=3, tee=0, snp=8, microcode=209, fmc=4, layout=TcbLayout.TURIN)
    assert ext.components(ProductLine.TURIN) == tcb.components()
    without = dataclasses.replace(ext, fmc_spl=None)
    with pytest.raises(CertificateChainError) as info:
        without.components(ProductLine.TURIN)
    assert info.value.claim == "amd.leaf.fmc_spl"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_HW_ID, _HW_ID),
        (_HW_ID[:8], _HW_ID[:8]),
        (der_tlv(0x04, _HW_ID), _HW_ID),
        (der_tlv(0x04, _HW_ID[:8]), _HW_ID[:8]),
    ],
)
def test_hw_id_raw_or_octet_string(raw: bytes, expected: bytes) -> None:
    assert parse_amd_key_extensions(_cert_with(_replace(AmdOID.HW_ID, raw))).hw_id == expected


@pytest.mark.parametrize("raw", [_HW_ID[:32], der_tlv(0x04, _HW_ID[:32]), _HW_ID + b"\x00", b""])
def test_hw_id_of_wrong_size_is_refused(raw: bytes) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_amd_key_extensions(_cert_with(_replace(AmdOID.HW_ID, raw)))


def test_csp_id_and_no_hw_id() -> None:
    exts = [*_replace(AmdOID.HW_ID, None), (AmdOID.CSP_ID, der_tlv(22, b"CN=example-cloud"))]
    ext = parse_amd_key_extensions(_cert_with(exts))
    assert ext.csp_id == "CN=example-cloud"
    assert ext.hw_id is None


@pytest.mark.parametrize(
    "oid",
    [
        AmdOID.STRUCT_VERSION,
        AmdOID.PRODUCT_NAME,
        AmdOID.BL_SPL,
        AmdOID.TEE_SPL,
        AmdOID.SNP_SPL,
        AmdOID.UCODE_SPL,
    ],
)
def test_missing_required_extension_is_refused(oid: x509.ObjectIdentifier) -> None:
    with pytest.raises(EvidenceFormatError, match="missing"):
        parse_amd_key_extensions(_cert_with(_replace(oid, None)))


@pytest.mark.parametrize(
    ("oid", "value"),
    [
        (AmdOID.UCODE_SPL, "02020005"),  # non-minimal
        (AmdOID.UCODE_SPL, "020100d1"),  # 209 as a one-byte integer plus junk
        (AmdOID.UCODE_SPL, "0201d1"),  # 209 without the leading zero: negative
        (AmdOID.BL_SPL, "0202012c"),  # 300: beyond a byte
        (AmdOID.BL_SPL, "040103"),  # OCTET STRING, not INTEGER
        (AmdOID.SPL_4, "0400"),  # reserved SPL not an INTEGER
        (AmdOID.FMC_SPL, "0201ff"),  # negative
        (AmdOID.STRUCT_VERSION, "02020100"),  # 256
        (AmdOID.PRODUCT_NAME, "0c054d696c616e"),  # UTF8String, not IA5String
        (AmdOID.PRODUCT_NAME, "1602c3a9"),  # non-ASCII
        (AmdOID.CSP_ID, "0c0141"),  # UTF8String
    ],
)
def test_bad_extension_encodings_are_refused(oid: x509.ObjectIdentifier, value: str) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_amd_key_extensions(_cert_with(_replace(oid, bytes.fromhex(value))))


@pytest.mark.parametrize("index", range(len(_MILAN_EXTS) - 1))  # all but hwID (raw bytes)
def test_every_truncated_or_extended_extension_value_is_refused(index: int) -> None:
    oid, value = _MILAN_EXTS[index]
    for size in range(len(value)):
        with pytest.raises(EvidenceFormatError):
            parse_amd_key_extensions(_cert_with(_replace(oid, value[:size])))
    with pytest.raises(EvidenceFormatError):
        parse_amd_key_extensions(_cert_with(_replace(oid, value + b"\x00")))


def test_unknown_oid_in_the_amd_arc_is_ignored() -> None:
    extra = [*_MILAN_EXTS, (x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.9"), b"anything")]
    assert parse_amd_key_extensions(_cert_with(extra)) == parse_amd_key_extensions(
        _cert_with(_MILAN_EXTS)
    )


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([oid for oid, _ in _MILAN_EXTS]), st.binary(max_size=70))
def test_arbitrary_extension_values_raise_only_ratls_errors(
    oid: x509.ObjectIdentifier, value: bytes
) -> None:
    with contextlib.suppress(RatlsError):
        parse_amd_key_extensions(_cert_with(_replace(oid, value)))


def test_amd_key_extensions_value_semantics() -> None:
    a = AmdKeyExtensions(
        struct_version=0, product_name="Milan", bl_spl=1, tee_spl=0, snp_spl=2, ucode_spl=3
    )
    b = AmdKeyExtensions(
        struct_version=0, product_name="Milan", bl_spl=1, tee_spl=0, snp_spl=2, ucode_spl=3
    )
    c = dataclasses.replace(a, ucode_spl=4)
    assert a == b
    assert a != c
    assert a != object()
    assert hash(a) == hash(b)
    assert "ucode_spl=3" in repr(a)
    assert "Milan" in repr(a)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.bl_spl = 9  # type: ignore[misc]


# --- trust anchors ----------------------------------------------------------------------------


def test_default_anchors_are_amds_pins() -> None:
    anchors = AmdTrustAnchors.default()
    assert len(anchors.arks) == 3
    for product, digest in PINNED_ARK_SPKI_SHA256.items():
        assert anchors.digests(product) == frozenset({digest})
        found = anchors.find(product, digest)
        assert found is not None
        assert found.label == "AMD"
        assert found.simulated is False
    milan = PINNED_ARK_SPKI_SHA256[ProductLine.MILAN]
    assert anchors.find(ProductLine.GENOA, milan) is None


def test_with_extra_adds_a_labelled_anchor_for_one_product() -> None:
    digest = bytes(range(32))
    anchors = AmdTrustAnchors.default().with_extra(ProductLine.TURIN, digest, label="simulator")
    found = anchors.find(ProductLine.TURIN, digest)
    assert found == TrustedArk(
        product=ProductLine.TURIN, spki_sha256=digest, label="simulator", simulated=True
    )
    assert anchors.find(ProductLine.MILAN, digest) is None
    assert AmdTrustAnchors.default().find(ProductLine.TURIN, digest) is None
    assert len(anchors.digests(ProductLine.TURIN)) == 2


def test_a_pin_added_twice_resolves_to_the_non_simulated_anchor() -> None:
    digest = PINNED_ARK_SPKI_SHA256[ProductLine.MILAN]
    anchors = AmdTrustAnchors.default().with_extra(ProductLine.MILAN, digest, label="again")
    found = anchors.find(ProductLine.MILAN, digest)
    assert found is not None
    assert found.label == "AMD"


@pytest.mark.parametrize(("digest", "label"), [(b"short", "x"), (bytes(32), "")])
def test_invalid_anchor_is_refused(digest: bytes, label: str) -> None:
    with pytest.raises(ValueError, match=r"spki_sha256|label"):
        TrustedArk(product=ProductLine.MILAN, spki_sha256=digest, label=label, simulated=True)


def test_anchor_value_semantics() -> None:
    a = AmdTrustAnchors.default()
    b = AmdTrustAnchors.default()
    c = a.with_extra(ProductLine.MILAN, bytes(32), label="x")
    assert a == b
    assert a != c
    assert a != object()
    assert hash(a) == hash(b)
    assert "AMD" in repr(a)
    ark = next(iter(a.arks))
    assert ark == dataclasses.replace(ark)
    assert ark != dataclasses.replace(ark, label="other")
    assert hash(ark) == hash(dataclasses.replace(ark))
    assert "label='AMD'" in repr(ark)


# --- verified chains and report signatures ----------------------------------------------------


def test_verified_chain_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        VerifiedAmdChain()  # type: ignore[call-arg]


def test_verified_chain_value_semantics() -> None:
    sp = simulated_amd_sp(ProductLine.MILAN)
    at = datetime.now(UTC)

    def verify() -> VerifiedAmdChain:
        return verify_amd_chain(
            leaf=sp.leaf,
            intermediate=sp.ask,
            root=sp.ark,
            product=ProductLine.MILAN,
            key_kind=KeyKind.VCEK,
            anchors=sp.anchors(),
            at=at,
        )

    a, b = verify(), verify()
    assert a == b
    assert a != object()
    assert hash(a.extensions) == hash(b.extensions)
    assert "anchor_label='simulator'" in repr(a)


def test_report_signature_verifies_and_tampering_is_caught() -> None:
    sp = simulated_amd_sp(ProductLine.MILAN)
    report = sp.build_report(report_data=b"\x01" * 64)
    verify_report_signature(report, sp.leaf_public_key)
    tampered = dataclasses.replace(report, report_data=b"\x02" * 64)
    with pytest.raises(SignatureMismatch) as info:
        verify_report_signature(tampered, sp.leaf_public_key)
    assert isinstance(info.value.__cause__, InvalidSignature)
    assert info.value.claim == "snp.signature"


def test_report_signature_is_checked_over_the_bytes_received() -> None:
    # Given the raw report, the check covers its bytes as they arrived, not a new
    # encoding of the parsed fields.
    sp = simulated_amd_sp(ProductLine.MILAN)
    report = sp.build_report(report_data=b"\x01" * 64)
    raw = report.to_bytes()
    run_inline(report_signature_steps(report, sp.leaf_public_key, raw=raw))
    altered = bytearray(raw)
    altered[0x50] ^= 1  # inside REPORT_DATA, which the signature covers
    with pytest.raises(SignatureMismatch) as info:
        run_inline(report_signature_steps(report, sp.leaf_public_key, raw=bytes(altered)))
    assert info.value.claim == "snp.signature"


def test_report_signature_by_another_key_is_caught() -> None:
    report = simulated_amd_sp(ProductLine.MILAN).build_report(report_data=bytes(64))
    other = simulated_amd_sp(ProductLine.MILAN, KeyKind.VLEK).leaf_public_key
    with pytest.raises(SignatureMismatch):
        verify_report_signature(report, other)


def test_report_signature_needs_a_p384_key() -> None:
    report = simulated_amd_sp(ProductLine.MILAN).build_report(report_data=bytes(64))
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SignatureMismatch, match="P-384"):
        verify_report_signature(report, p256)
