"""Tests of the TPM 2.0 structure parsers and encoders (ratls._tpm_structs)."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import TYPE_CHECKING, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import EvidenceFormatError, EvidenceVerificationError, RatlsError
from ratls._tpm_structs import (
    AK_REQUIRED_ATTRIBUTES,
    AK_TEMPLATE_ECC_P256,
    AK_TEMPLATE_RSA2048,
    EK_TEMPLATE_ECC_P256,
    EK_TEMPLATE_RSA2048,
    TPM_GENERATED_VALUE,
    TPM_RH_ENDORSEMENT,
    ObjectAttributes,
    TpmAlgId,
    TpmEccCurve,
    TpmlPcrSelection,
    TpmsAttest,
    TpmsCertifyInfo,
    TpmsClockInfo,
    TpmsEccParms,
    TpmsEccPoint,
    TpmsPcrSelection,
    TpmsQuoteInfo,
    TpmsRsaParms,
    TpmSt,
    TpmtPublic,
    TpmtScheme,
    TpmtSignature,
    TpmtSymDefObject,
    check_ek_public,
    digest_size,
    hash_algorithm,
    hierarchy_name,
    parse_tpm2b,
    parse_tpm2b_attest,
    parse_tpm2b_name,
    parse_tpm2b_public,
    parse_tpml_pcr_selection,
    parse_tpms_attest,
    parse_tpms_certify_info,
    parse_tpms_clock_info,
    parse_tpms_pcr_selection,
    parse_tpms_quote_info,
    parse_tpmt_public,
    parse_tpmt_signature,
    qualified_name,
    tpm2b,
)

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


def tr(parser: Callable[[bytes], T], data: bytes) -> T:
    """Parse whole input; every truncation and one trailing byte must be refused."""
    value = parser(data)
    for cut in range(len(data)):
        with pytest.raises(EvidenceFormatError):
            parser(data[:cut])
    with pytest.raises(EvidenceFormatError, match="trailing"):
        parser(data + b"\x00")
    return value


# An SHA-256 Name (nameAlg || digest) to use as qualifiedSigner and so on.
NAME = b"\x00\x0b" + hashlib.sha256(b"signer").digest()

CLOCK = TpmsClockInfo(clock=123456789, reset_count=3, restart_count=7, safe=True)
SELECTION = TpmlPcrSelection.from_mapping({TpmAlgId.SHA256: [0, 1, 7, 23], TpmAlgId.SHA1: [2, 16]})
QUOTE_INFO = TpmsQuoteInfo(pcr_select=SELECTION, pcr_digest=b"\x11" * 32)
ATTEST_QUOTE = TpmsAttest(
    type=TpmSt.ATTEST_QUOTE,
    qualified_signer=NAME,
    extra_data=b"nonce-" + bytes(26),
    clock_info=CLOCK,
    firmware_version=0x2023_0101_0000_0001,
    attested=QUOTE_INFO,
)
ATTEST_CERTIFY = TpmsAttest(
    type=TpmSt.ATTEST_CERTIFY,
    qualified_signer=NAME,
    extra_data=b"",
    clock_info=CLOCK,
    firmware_version=1,
    attested=TpmsCertifyInfo(name=NAME, qualified_name=NAME),
)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _ek_rsa() -> TpmtPublic:
    return TpmtPublic.from_public_key(
        RSA_KEY.public_key(),
        object_attributes=EK_TEMPLATE_RSA2048.object_attributes,
        auth_policy=EK_TEMPLATE_RSA2048.auth_policy,
        symmetric=TpmtSymDefObject(algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CFB),
    )


def _ek_ecc() -> TpmtPublic:
    return TpmtPublic.from_public_key(
        EC_KEY.public_key(),
        object_attributes=EK_TEMPLATE_ECC_P256.object_attributes,
        auth_policy=EK_TEMPLATE_ECC_P256.auth_policy,
        symmetric=TpmtSymDefObject(algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CFB),
    )


# ---------------------------------------------------------------------------------------
# Enums and constants
# ---------------------------------------------------------------------------------------


def test_wire_constants() -> None:
    assert TPM_GENERATED_VALUE == 0xFF544347
    assert int(TpmSt.ATTEST_QUOTE) == 0x8018
    assert int(TpmSt.ATTEST_CERTIFY) == 0x8017
    assert int(TpmAlgId.RSASSA) == 0x0014
    assert int(TpmAlgId.CFB) == 0x0043
    assert int(TpmEccCurve.NIST_P384) == 0x0004
    assert int(AK_REQUIRED_ATTRIBUTES) == 0x2 | 0x10 | 0x20 | 0x10000 | 0x40000


def test_ek_template_rsa_matches_tcg_l1() -> None:
    raw = EK_TEMPLATE_RSA2048.to_bytes()
    assert raw[:8] == bytes.fromhex("0001000b000300b2")
    assert raw[8:42] == bytes.fromhex(
        "0020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
    )
    # AES-128-CFB, NULL scheme, 2048 bits, exponent 0, unique = 256 zero bytes
    assert raw[42:58] == bytes.fromhex("00060080004300100800000000000100")
    assert raw[58:] == bytes(256)
    assert parse_tpmt_public(raw) == EK_TEMPLATE_RSA2048


def test_ek_template_ecc_matches_tcg_l2() -> None:
    raw = EK_TEMPLATE_ECC_P256.to_bytes()
    assert raw[:8] == bytes.fromhex("0023000b000300b2")
    # AES-128-CFB, NULL scheme, NIST P-256, NULL kdf, two 32-byte zero coordinates
    assert raw[42:54] == bytes.fromhex("000600800043001000030010")
    assert raw[54:] == b"\x00\x20" + bytes(32) + b"\x00\x20" + bytes(32)
    assert parse_tpmt_public(raw) == EK_TEMPLATE_ECC_P256


def test_ak_templates() -> None:
    for template in (AK_TEMPLATE_RSA2048, AK_TEMPLATE_ECC_P256):
        attrs = template.object_attributes
        assert attrs & AK_REQUIRED_ATTRIBUTES == AK_REQUIRED_ATTRIBUTES
        assert attrs & ObjectAttributes.USER_WITH_AUTH
        assert not attrs & ObjectAttributes.DECRYPT
        assert parse_tpmt_public(template.to_bytes()) == template
    assert int(AK_TEMPLATE_RSA2048.object_attributes) == 0x00050072
    assert isinstance(AK_TEMPLATE_RSA2048.parameters, TpmsRsaParms)
    assert AK_TEMPLATE_RSA2048.parameters.scheme == TpmtScheme(
        scheme=TpmAlgId.RSASSA, hash_alg=TpmAlgId.SHA256
    )


def test_hash_helpers() -> None:
    assert digest_size(TpmAlgId.SHA384) == 48
    assert hash_algorithm(TpmAlgId.SHA1).name == "sha1"
    with pytest.raises(EvidenceFormatError, match="not a supported hash"):
        hash_algorithm(TpmAlgId.SM3_256)
    with pytest.raises(EvidenceFormatError, match="TPM_ALG_RSA is not"):
        digest_size(TpmAlgId.RSA)
    with pytest.raises(EvidenceFormatError, match="algorithm 0x7777 is not"):
        digest_size(0x7777)
    assert digest_size(0x000B) == 32


# ---------------------------------------------------------------------------------------
# TPM2B and names
# ---------------------------------------------------------------------------------------


def test_tpm2b() -> None:
    assert tpm2b(b"abc") == b"\x00\x03abc"
    assert tr(parse_tpm2b, b"\x00\x03abc") == b"abc"
    with pytest.raises(ValueError, match="65535"):
        tpm2b(bytes(0x10000))
    with pytest.raises(EvidenceFormatError, match="at most 2"):
        parse_tpm2b(b"\x00\x03abc", max_size=2)


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"\x40\x00\x00\x0b",
        NAME,
        b"\x00\x04" + bytes(20),
        b"\x00\x0c" + bytes(48),
        b"\x00\x0d" + bytes(64),
    ],
)
def test_name_ok(name: bytes) -> None:
    assert tr(parse_tpm2b_name, tpm2b(name)) == name


@pytest.mark.parametrize(
    ("name", "match"),
    [
        (b"\x00", "neither a handle"),
        (b"\x00\x0b" + bytes(20), "digest length"),
        (b"\x00\x0b" + bytes(31), "digest length"),
        (b"\x00\x01" + bytes(32), "unknown name algorithm"),
        (b"\x12\x34" + bytes(32), "unknown name algorithm"),
        (b"\x00\x0d" + bytes(65), "at most"),
    ],
)
def test_name_bad(name: bytes, match: str) -> None:
    with pytest.raises(EvidenceFormatError, match=match):
        parse_tpm2b_name(tpm2b(name))


def test_qualified_name() -> None:
    parent = hierarchy_name(TPM_RH_ENDORSEMENT)
    assert parent == b"\x40\x00\x00\x0b"
    qn = qualified_name(parent, NAME)
    assert qn == b"\x00\x0b" + hashlib.sha256(parent + NAME).digest()
    sha1_name = b"\x00\x04" + bytes(20)
    assert (
        qualified_name(parent, sha1_name)
        == b"\x00\x04"
        + hashlib.sha1(  # noqa: S324
            parent + sha1_name
        ).digest()
    )
    for bad in (b"", parent, b"\x00\x0b" + bytes(5), bytes(100)):
        with pytest.raises(EvidenceFormatError):
            qualified_name(parent, bad)


# ---------------------------------------------------------------------------------------
# Clock info and PCR selections
# ---------------------------------------------------------------------------------------


def test_clock_info() -> None:
    raw = CLOCK.to_bytes()
    assert raw == struct.pack(">QIIB", 123456789, 3, 7, 1)
    assert tr(parse_tpms_clock_info, raw) == CLOCK
    unsafe = TpmsClockInfo(clock=1, reset_count=0, restart_count=0, safe=False)
    assert parse_tpms_clock_info(unsafe.to_bytes()) == unsafe
    with pytest.raises(EvidenceFormatError, match="safe") as info:
        parse_tpms_clock_info(raw[:-1] + b"\x02")
    assert info.value.offset == 16
    assert info.value.structure == "TPMS_CLOCK_INFO"


def test_pcr_selection_bitmap_order() -> None:
    sel = TpmsPcrSelection(hash=TpmAlgId.SHA256, pcr_select=bytes([0b1000_0001, 0, 0b0000_0010]))
    assert sel.indices() == [0, 7, 17]
    assert tr(parse_tpms_pcr_selection, sel.to_bytes()) == sel
    assert sel.to_bytes() == bytes.fromhex("000b0381" + "0002")


def test_pcr_selection_list() -> None:
    raw = SELECTION.to_bytes()
    assert raw[:4] == b"\x00\x00\x00\x02"
    assert tr(parse_tpml_pcr_selection, raw) == SELECTION
    assert SELECTION.selected() == [
        (TpmAlgId.SHA256, 0),
        (TpmAlgId.SHA256, 1),
        (TpmAlgId.SHA256, 7),
        (TpmAlgId.SHA256, 23),
        (TpmAlgId.SHA1, 2),
        (TpmAlgId.SHA1, 16),
    ]
    empty = TpmlPcrSelection()
    assert tr(parse_tpml_pcr_selection, empty.to_bytes()) == empty
    assert empty.selected() == []


def test_pcr_selection_from_mapping_errors() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        TpmlPcrSelection.from_mapping({TpmAlgId.SHA256: [24]})
    with pytest.raises(ValueError, match="does not fit"):
        TpmlPcrSelection.from_mapping({TpmAlgId.SHA256: [-1]})
    with pytest.raises(ValueError, match="not a PCR bank"):
        TpmlPcrSelection.from_mapping({TpmAlgId.RSA: [1]})
    wide = TpmlPcrSelection.from_mapping({TpmAlgId.SHA384: [31]}, sizeof_select=4)
    assert wide.pcr_selections[0].pcr_select == b"\x00\x00\x00\x80"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (bytes.fromhex("00000001" + "0001" + "03000000"), "hash"),
        (bytes.fromhex("00000001" + "00ff" + "03000000"), "unknown hash"),
        (bytes.fromhex("00000001" + "000b" + "09" + "00" * 9), "sizeofSelect"),
        (bytes.fromhex("00000011"), "count"),
    ],
)
def test_pcr_selection_list_bad(raw: bytes, match: str) -> None:
    with pytest.raises(EvidenceFormatError, match=match):
        parse_tpml_pcr_selection(raw)


# ---------------------------------------------------------------------------------------
# TPMS_ATTEST
# ---------------------------------------------------------------------------------------


def test_quote_info() -> None:
    assert tr(parse_tpms_quote_info, QUOTE_INFO.to_bytes()) == QUOTE_INFO
    with pytest.raises(EvidenceFormatError, match="pcrDigest"):
        parse_tpms_quote_info(SELECTION.to_bytes() + tpm2b(bytes(65)))


def test_certify_info() -> None:
    info = TpmsCertifyInfo(name=NAME, qualified_name=NAME)
    assert tr(parse_tpms_certify_info, info.to_bytes()) == info


def test_attest_quote_layout() -> None:
    raw = ATTEST_QUOTE.to_bytes()
    assert raw[:6] == bytes.fromhex("ff5443478018")
    assert raw[6:8] == b"\x00\x22"
    assert raw[8:42] == NAME
    assert tr(parse_tpms_attest, raw) == ATTEST_QUOTE
    assert tr(parse_tpm2b_attest, tpm2b(raw)) == ATTEST_QUOTE


def test_attest_certify() -> None:
    raw = ATTEST_CERTIFY.to_bytes()
    assert raw[4:6] == b"\x80\x17"
    assert tr(parse_tpms_attest, raw) == ATTEST_CERTIFY


def test_attest_wrong_magic_checked_first() -> None:
    raw = bytearray(ATTEST_QUOTE.to_bytes())
    raw[0] = 0xFE
    with pytest.raises(EvidenceFormatError, match="magic") as info:
        parse_tpms_attest(bytes(raw))
    assert info.value.offset == 0
    # Even a 4-byte input with the wrong magic is refused for its magic.
    with pytest.raises(EvidenceFormatError, match="magic"):
        parse_tpms_attest(b"\x00\x00\x00\x00")


@pytest.mark.parametrize(
    "st_value",
    [TpmSt.ATTEST_NV, TpmSt.ATTEST_TIME, TpmSt.ATTEST_CREATION, TpmSt.NULL, 0x1234],
)
def test_attest_unsupported_type(st_value: int) -> None:
    raw = bytearray(ATTEST_QUOTE.to_bytes())
    raw[4:6] = st_value.to_bytes(2, "big")
    with pytest.raises(EvidenceFormatError, match="attestation type") as info:
        parse_tpms_attest(bytes(raw))
    assert info.value.offset == 4
    assert info.value.structure == "TPMS_ATTEST"


def test_attest_certify_type_with_quote_body_refused() -> None:
    raw = bytearray(ATTEST_QUOTE.to_bytes())
    raw[4:6] = b"\x80\x17"
    with pytest.raises(EvidenceFormatError):
        parse_tpms_attest(bytes(raw))


def test_attest_extra_data_too_long() -> None:
    bad = TpmsAttest(
        type=TpmSt.ATTEST_QUOTE,
        qualified_signer=NAME,
        extra_data=bytes(65),
        clock_info=CLOCK,
        firmware_version=0,
        attested=QUOTE_INFO,
    )
    with pytest.raises(EvidenceFormatError, match="extraData"):
        parse_tpms_attest(bad.to_bytes())


def test_tpm2b_attest_size_mismatch() -> None:
    raw = ATTEST_QUOTE.to_bytes()
    with pytest.raises(EvidenceFormatError, match="TPM2B_ATTEST"):
        parse_tpm2b_attest(struct.pack(">H", len(raw) + 1) + raw)


# ---------------------------------------------------------------------------------------
# TPMT_SIGNATURE
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig",
    [
        TpmtSignature(sig_alg=TpmAlgId.RSASSA, hash=TpmAlgId.SHA256, sig=b"\x01" * 256),
        TpmtSignature(sig_alg=TpmAlgId.RSAPSS, hash=TpmAlgId.SHA384, sig=b"\x02" * 384),
        TpmtSignature(
            sig_alg=TpmAlgId.ECDSA,
            hash=TpmAlgId.SHA256,
            signature_r=b"\x03" * 32,
            signature_s=b"\x04" * 32,
        ),
    ],
)
def test_signature_roundtrip(sig: TpmtSignature) -> None:
    assert tr(parse_tpmt_signature, sig.to_bytes()) == sig


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (bytes.fromhex("0005000b0020") + bytes(32), "sigAlg TPM_ALG_HMAC"),
        (bytes.fromhex("001c000b000101000101"), "sigAlg"),
        (bytes.fromhex("0099000b"), "unknown sigAlg"),
        (bytes.fromhex("00140006000101"), "hash"),
        (bytes.fromhex("0014000b0000"), "sig is empty"),
        (bytes.fromhex("0018000b0000000101"), "signatureR is empty"),
        (bytes.fromhex("0018000b000101" + "0000"), "signatureS is empty"),
        (bytes.fromhex("0018000b0043") + bytes(67) + bytes.fromhex("000101"), "at most 66"),
        (bytes.fromhex("0014000b0201") + bytes(513), "at most 512"),
    ],
)
def test_signature_bad(raw: bytes, match: str) -> None:
    with pytest.raises(EvidenceFormatError, match=match):
        parse_tpmt_signature(raw)


def test_signature_unmarshallable_scheme() -> None:
    with pytest.raises(ValueError, match="HMAC"):
        TpmtSignature(sig_alg=TpmAlgId.HMAC, hash=TpmAlgId.SHA256).to_bytes()


# ---------------------------------------------------------------------------------------
# TPMT_PUBLIC
# ---------------------------------------------------------------------------------------


def test_public_rsa_roundtrip_and_key() -> None:
    pub = TpmtPublic.from_public_key(
        RSA_KEY.public_key(),
        object_attributes=AK_TEMPLATE_RSA2048.object_attributes,
        scheme=TpmtScheme(scheme=TpmAlgId.RSASSA, hash_alg=TpmAlgId.SHA256),
    )
    assert isinstance(pub.parameters, TpmsRsaParms)
    assert pub.parameters.exponent == 0
    raw = pub.to_bytes()
    assert tr(parse_tpmt_public, raw) == pub
    assert tr(parse_tpm2b_public, pub.to_tpm2b()) == pub
    key = pub.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.public_numbers() == RSA_KEY.public_key().public_numbers()
    assert pub.name() == b"\x00\x0b" + hashlib.sha256(raw).digest()


def test_public_rsa_explicit_exponent() -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=1024).public_key()  # noqa: S505
    pub = TpmtPublic.from_public_key(key, object_attributes=ObjectAttributes.SIGN)
    assert isinstance(pub.parameters, TpmsRsaParms)
    assert pub.parameters.exponent == 3
    got = pub.public_key()
    assert isinstance(got, rsa.RSAPublicKey)
    assert got.public_numbers().e == 3
    keep = TpmtPublic.from_public_key(
        RSA_KEY.public_key(), object_attributes=ObjectAttributes.SIGN, default_exponent=False
    )
    assert isinstance(keep.parameters, TpmsRsaParms)
    assert keep.parameters.exponent == 65537


@pytest.mark.parametrize(
    ("curve", "tpm_curve", "size"),
    [
        (ec.SECP256R1(), TpmEccCurve.NIST_P256, 32),
        (ec.SECP384R1(), TpmEccCurve.NIST_P384, 48),
        (ec.SECP521R1(), TpmEccCurve.NIST_P521, 66),
    ],
)
def test_public_ecc_roundtrip_and_key(
    curve: ec.EllipticCurve, tpm_curve: TpmEccCurve, size: int
) -> None:
    key = ec.generate_private_key(curve).public_key()
    pub = TpmtPublic.from_public_key(
        key,
        object_attributes=AK_TEMPLATE_ECC_P256.object_attributes,
        name_alg=TpmAlgId.SHA384,
        scheme=TpmtScheme(scheme=TpmAlgId.ECDSA, hash_alg=TpmAlgId.SHA384),
    )
    assert isinstance(pub.parameters, TpmsEccParms)
    assert pub.parameters.curve_id is tpm_curve
    assert isinstance(pub.unique, TpmsEccPoint)
    assert len(pub.unique.x) == size
    raw = pub.to_bytes()
    assert tr(parse_tpmt_public, raw) == pub
    got = pub.public_key()
    assert isinstance(got, ec.EllipticCurvePublicKey)
    assert got.public_numbers() == key.public_numbers()
    assert pub.name() == b"\x00\x0c" + hashlib.sha384(raw).digest()


def test_public_ecc_short_coordinates_are_padded() -> None:
    pub = TpmtPublic.from_public_key(EC_KEY.public_key(), object_attributes=ObjectAttributes.SIGN)
    assert isinstance(pub.unique, TpmsEccPoint)
    numbers = EC_KEY.public_key().public_numbers()
    short = TpmsEccPoint(
        x=pub.unique.x.lstrip(b"\0") or b"\0", y=pub.unique.y.lstrip(b"\0") or b"\0"
    )
    stripped = TpmtPublic(
        type=pub.type,
        name_alg=pub.name_alg,
        object_attributes=pub.object_attributes,
        parameters=pub.parameters,
        unique=short,
    )
    got = stripped.public_key()
    assert isinstance(got, ec.EllipticCurvePublicKey)
    assert got.public_numbers() == numbers


def test_public_ecdaa_and_kdf_schemes_roundtrip() -> None:
    pub = TpmtPublic(
        type=TpmAlgId.ECC,
        name_alg=TpmAlgId.SHA256,
        object_attributes=ObjectAttributes.SIGN,
        parameters=TpmsEccParms(
            scheme=TpmtScheme(scheme=TpmAlgId.ECDAA, hash_alg=TpmAlgId.SHA256, count=5),
            curve_id=TpmEccCurve.BN_P256,
            kdf=TpmtScheme(scheme=TpmAlgId.KDF1_SP800_56A, hash_alg=TpmAlgId.SHA256),
        ),
        unique=TpmsEccPoint(),
    )
    assert tr(parse_tpmt_public, pub.to_bytes()) == pub
    with pytest.raises(EvidenceFormatError, match="unsupported curve"):
        pub.public_key()
    rsaes = TpmtPublic(
        type=TpmAlgId.RSA,
        name_alg=TpmAlgId.SHA256,
        object_attributes=ObjectAttributes.DECRYPT,
        parameters=TpmsRsaParms(scheme=TpmtScheme(scheme=TpmAlgId.RSAES)),
        unique=b"",
    )
    assert tr(parse_tpmt_public, rsaes.to_bytes()) == rsaes


def _public_bytes(
    *,
    obj_type: int = 0x0001,
    name_alg: int = 0x000B,
    sym: bytes = b"\x00\x10",
    scheme: bytes = b"\x00\x10",
    tail: bytes = b"\x08\x00\x00\x00\x00\x00\x00\x00",
) -> bytes:
    return struct.pack(">HHI", obj_type, name_alg, 0x00050072) + b"\x00\x00" + sym + scheme + tail


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_public_bytes(obj_type=0x0008), "type TPM_ALG_KEYEDHASH"),
        (_public_bytes(obj_type=0x0025), "type TPM_ALG_SYMCIPHER"),
        (_public_bytes(obj_type=0x0777), "unknown type"),
        (_public_bytes(name_alg=0x0010), "nameAlg"),
        (_public_bytes(sym=b"\x00\x0a"), "symmetric.algorithm"),
        (_public_bytes(sym=b"\x00\x06\x00\x80\x00\x14"), "symmetric.mode"),
        (_public_bytes(scheme=b"\x00\x18\x00\x0b"), "scheme.scheme TPM_ALG_ECDSA"),
        (_public_bytes(scheme=b"\x00\x14\x00\x01"), "scheme.hashAlg"),
        (_public_bytes(tail=b"\x07\xff\x00\x00\x00\x00\x00\x00"), "keyBits"),
        (_public_bytes(tail=b"\x08\x00\x00\x00\x00\x00\x02\x01" + bytes(513)), "at most 512"),
        (
            _public_bytes(obj_type=0x0023, tail=b"\x00\x99\x00\x10\x00\x00\x00\x00"),
            "curveID",
        ),
        (
            _public_bytes(obj_type=0x0023, tail=b"\x00\x03\x00\x14\x00\x0b\x00\x00\x00\x00"),
            "kdf.scheme",
        ),
    ],
)
def test_public_bad(raw: bytes, match: str) -> None:
    with pytest.raises(EvidenceFormatError, match=match):
        parse_tpmt_public(raw)


def test_public_good_minimal() -> None:
    pub = tr(parse_tpmt_public, _public_bytes())
    assert pub.object_attributes == AK_TEMPLATE_RSA2048.object_attributes
    with pytest.raises(EvidenceFormatError, match="modulus"):
        pub.public_key()


def test_public_key_invalid_material() -> None:
    bad_point = TpmtPublic(
        type=TpmAlgId.ECC,
        name_alg=TpmAlgId.SHA256,
        object_attributes=ObjectAttributes.SIGN,
        parameters=TpmsEccParms(curve_id=TpmEccCurve.NIST_P256),
        unique=TpmsEccPoint(x=b"\x01" * 32, y=b"\x01" * 32),
    )
    with pytest.raises(EvidenceFormatError, match="invalid ECC"):
        bad_point.public_key()
    long_coord = TpmtPublic(
        type=TpmAlgId.ECC,
        name_alg=TpmAlgId.SHA256,
        object_attributes=ObjectAttributes.SIGN,
        parameters=TpmsEccParms(curve_id=TpmEccCurve.NIST_P256),
        unique=TpmsEccPoint(x=b"\x01" * 33, y=b"\x01" * 32),
    )
    with pytest.raises(EvidenceFormatError, match="longer"):
        long_coord.public_key()
    mismatched = TpmtPublic(
        type=TpmAlgId.RSA,
        name_alg=TpmAlgId.SHA256,
        object_attributes=ObjectAttributes.SIGN,
        parameters=TpmsRsaParms(),
        unique=TpmsEccPoint(),
    )
    with pytest.raises(EvidenceFormatError, match="do not match"):
        mismatched.public_key()
    even_exponent = TpmtPublic(
        type=TpmAlgId.RSA,
        name_alg=TpmAlgId.SHA256,
        object_attributes=ObjectAttributes.SIGN,
        parameters=TpmsRsaParms(key_bits=1024, exponent=2),
        unique=b"\x81" + bytes(126) + b"\x01",
    )
    with pytest.raises(EvidenceFormatError, match="invalid RSA"):
        even_exponent.public_key()


def test_from_public_key_unsupported_curve() -> None:
    key = ec.generate_private_key(ec.SECP256K1()).public_key()
    with pytest.raises(ValueError, match="secp256k1"):
        TpmtPublic.from_public_key(key, object_attributes=ObjectAttributes.SIGN)


# ---------------------------------------------------------------------------------------
# EK template check
# ---------------------------------------------------------------------------------------


def test_check_ek_public_accepts_template_keys() -> None:
    check_ek_public(_ek_rsa())
    check_ek_public(_ek_ecc())


def _replace_public(pub: TpmtPublic, **changes: object) -> TpmtPublic:
    values: dict[str, object] = {
        "type": pub.type,
        "name_alg": pub.name_alg,
        "object_attributes": pub.object_attributes,
        "auth_policy": pub.auth_policy,
        "parameters": pub.parameters,
        "unique": pub.unique,
    }
    values.update(changes)
    return TpmtPublic(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        ({"name_alg": TpmAlgId.SHA384}, "tpm.ek.name_alg"),
        (
            {"object_attributes": EK_TEMPLATE_RSA2048.object_attributes | ObjectAttributes.SIGN},
            "tpm.ek.object_attributes",
        ),
        (
            {
                "object_attributes": EK_TEMPLATE_RSA2048.object_attributes
                & ~ObjectAttributes.FIXED_TPM
            },
            "tpm.ek.object_attributes",
        ),
        ({"auth_policy": bytes(32)}, "tpm.ek.auth_policy"),
        ({"auth_policy": b""}, "tpm.ek.auth_policy"),
        (
            {"parameters": TpmsRsaParms(key_bits=2048, exponent=0)},
            "tpm.ek.parameters",
        ),
        (
            {
                "parameters": TpmsRsaParms(
                    symmetric=TpmtSymDefObject(
                        algorithm=TpmAlgId.AES, key_bits=256, mode=TpmAlgId.CFB
                    ),
                    key_bits=2048,
                )
            },
            "tpm.ek.parameters",
        ),
        (
            {
                "parameters": TpmsRsaParms(
                    symmetric=TpmtSymDefObject(
                        algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CFB
                    ),
                    key_bits=3072,
                )
            },
            "tpm.ek.parameters",
        ),
        (
            {
                "parameters": TpmsRsaParms(
                    symmetric=TpmtSymDefObject(
                        algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CFB
                    ),
                    scheme=TpmtScheme(scheme=TpmAlgId.OAEP, hash_alg=TpmAlgId.SHA256),
                )
            },
            "tpm.ek.parameters",
        ),
        ({"unique": bytes(128)}, "tpm.ek.unique"),
        ({"unique": TpmsEccPoint()}, "tpm.ek.unique"),
    ],
)
def test_check_ek_public_rsa_mismatch(changes: dict[str, object], claim: str) -> None:
    with pytest.raises(EvidenceVerificationError) as info:
        check_ek_public(_replace_public(_ek_rsa(), **changes))
    assert info.value.claim == claim


def test_check_ek_public_attribute_values_named() -> None:
    pub = _replace_public(_ek_rsa(), object_attributes=ObjectAttributes(0x000300B0))
    with pytest.raises(EvidenceVerificationError) as info:
        check_ek_public(pub)
    assert info.value.expected == "0x000300b2"
    assert info.value.actual == "0x000300b0"


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        (
            {"parameters": TpmsEccParms(curve_id=TpmEccCurve.NIST_P384)},
            "tpm.ek.parameters",
        ),
        ({"unique": TpmsEccPoint(x=bytes(32), y=bytes(31))}, "tpm.ek.unique"),
        ({"unique": bytes(64)}, "tpm.ek.unique"),
    ],
)
def test_check_ek_public_ecc_mismatch(changes: dict[str, object], claim: str) -> None:
    with pytest.raises(EvidenceVerificationError) as info:
        check_ek_public(_replace_public(_ek_ecc(), **changes))
    assert info.value.claim == claim


def test_check_ek_public_refuses_ak() -> None:
    ak = TpmtPublic.from_public_key(
        RSA_KEY.public_key(), object_attributes=AK_TEMPLATE_RSA2048.object_attributes
    )
    with pytest.raises(EvidenceVerificationError):
        check_ek_public(ak)


# ---------------------------------------------------------------------------------------
# Value semantics
# ---------------------------------------------------------------------------------------

VALUES: list[tuple[object, object]] = [
    (CLOCK, TpmsClockInfo(clock=1, reset_count=3, restart_count=7, safe=True)),
    (SELECTION.pcr_selections[0], SELECTION.pcr_selections[1]),
    (SELECTION, TpmlPcrSelection()),
    (QUOTE_INFO, TpmsQuoteInfo(pcr_select=SELECTION, pcr_digest=bytes(32))),
    (ATTEST_CERTIFY.attested, TpmsCertifyInfo(name=b"", qualified_name=b"")),
    (ATTEST_QUOTE, ATTEST_CERTIFY),
    (
        TpmtSignature(sig_alg=TpmAlgId.RSASSA, hash=TpmAlgId.SHA256, sig=b"x"),
        TpmtSignature(sig_alg=TpmAlgId.RSAPSS, hash=TpmAlgId.SHA256, sig=b"x"),
    ),
    (EK_TEMPLATE_RSA2048, EK_TEMPLATE_ECC_P256),
    (EK_TEMPLATE_RSA2048.parameters, AK_TEMPLATE_RSA2048.parameters),
    (EK_TEMPLATE_ECC_P256.parameters, AK_TEMPLATE_ECC_P256.parameters),
    (EK_TEMPLATE_ECC_P256.unique, AK_TEMPLATE_ECC_P256.unique),
    (TpmtSymDefObject(), TpmtSymDefObject(algorithm=TpmAlgId.AES, key_bits=128)),
    (TpmtScheme(), TpmtScheme(scheme=TpmAlgId.RSASSA, hash_alg=TpmAlgId.SHA256)),
]


@pytest.mark.parametrize(("value", "other"), VALUES)
def test_value_semantics(value: object, other: object) -> None:
    assert dataclasses.is_dataclass(value)
    assert not isinstance(value, type)
    clone = dataclasses.replace(value)
    assert clone is not value
    assert value == clone
    assert not value != clone  # noqa: SIM202
    assert hash(value) == hash(clone)
    assert value != other
    assert value != object()
    assert repr(value).startswith(type(value).__name__ + "(")
    first = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, first, None)


# ---------------------------------------------------------------------------------------
# Fuzzing: on arbitrary bytes only RatlsError subclasses escape
# ---------------------------------------------------------------------------------------

PARSERS: list[Callable[[bytes], object]] = [
    parse_tpm2b,
    parse_tpm2b_name,
    parse_tpms_clock_info,
    parse_tpms_pcr_selection,
    parse_tpml_pcr_selection,
    parse_tpms_quote_info,
    parse_tpms_certify_info,
    parse_tpms_attest,
    parse_tpm2b_attest,
    parse_tpmt_signature,
    parse_tpmt_public,
    parse_tpm2b_public,
]

SEEDS = [
    ATTEST_QUOTE.to_bytes(),
    ATTEST_CERTIFY.to_bytes(),
    EK_TEMPLATE_RSA2048.to_bytes(),
    EK_TEMPLATE_ECC_P256.to_bytes(),
    SELECTION.to_bytes(),
    TpmtSignature(
        sig_alg=TpmAlgId.ECDSA, hash=TpmAlgId.SHA256, signature_r=b"r", signature_s=b"s"
    ).to_bytes(),
]


def _octets(max_size: int) -> st.SearchStrategy[bytes]:
    """Byte strings drawn as integer lists.

    ``st.binary`` mixes bytes and integers in hypothesis' internal cache keys, which
    ``python -bb`` turns into a BytesWarning (an error here), so bytes are built from ints.
    """
    return st.lists(st.integers(0, 255), max_size=max_size).map(bytes)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """Mostly-valid inputs: a seed with a few bytes flipped, cut or extended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(_octets(4))


@pytest.mark.parametrize("parser", PARSERS)
@settings(max_examples=150, deadline=None)
@given(data=st.one_of(_octets(400), _mutated()))
def test_fuzz_only_ratls_errors(parser: Callable[[bytes], object], data: bytes) -> None:
    try:
        value = parser(data)
    except RatlsError:
        return
    to_bytes = getattr(value, "to_bytes", None)
    if to_bytes is not None and parser not in (parse_tpm2b_attest, parse_tpm2b_public):
        assert to_bytes() == data
