"""Tests for the SEV-SNP ATTESTATION_REPORT codec."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import EvidenceFormatError, RatlsError
from ratls._snp_report import (
    SNP_REPORT_SIZE,
    SNP_SIGNED_SIZE,
    SUPPORTED_REPORT_VERSIONS,
    GuestPolicy,
    PlatformInfo,
    ProductLine,
    SignatureAlgorithm,
    SignerInfo,
    SigningKey,
    SnpReport,
    TcbLayout,
    TcbVersion,
    parse_snp_report,
    product_from_cpuid,
)

# One representative CPUID (family, model, stepping) per product line.
CPUID = {
    ProductLine.MILAN: (0x19, 0x01, 0x01),
    ProductLine.GENOA: (0x19, 0x11, 0x01),
    ProductLine.TURIN: (0x1A, 0x02, 0x01),
}


def make_tcb(layout: TcbLayout, base: int = 0) -> TcbVersion:
    return TcbVersion(
        bootloader=base + 3,
        tee=base,
        snp=base + 8,
        microcode=base + 115,
        fmc=base + 1 if layout is TcbLayout.TURIN else None,
        layout=layout,
    )


def make_report(
    version: int = 3, product: ProductLine | None = ProductLine.MILAN, **changes: object
) -> SnpReport:
    layout = product.tcb_layout if product is not None else TcbLayout.LEGACY
    if version >= 3:
        assert product is not None
        fam, mod, step = CPUID[product]
        cpuid: dict[str, int | None] = {
            "cpuid_fam_id": fam,
            "cpuid_mod_id": mod,
            "cpuid_step": step,
        }
    else:
        cpuid = {"cpuid_fam_id": None, "cpuid_mod_id": None, "cpuid_step": None}
    report = SnpReport(
        version=version,
        guest_svn=7,
        policy=GuestPolicy(abi_major=1, abi_minor=55, smt=True),
        family_id=bytes(range(16)),
        image_id=bytes(range(16, 32)),
        vmpl=0,
        signature_algo=SignatureAlgorithm.ECDSA_P384_SHA384,
        current_tcb=make_tcb(layout, 1),
        platform_info=PlatformInfo(smt_en=True, tsme_en=True),
        signer_info=SignerInfo(signing_key=SigningKey.VCEK),
        report_data=b"\x11" * 64,
        measurement=b"\x22" * 48,
        host_data=b"\x33" * 32,
        id_key_digest=b"\x44" * 48,
        author_key_digest=bytes(48),
        report_id=b"\x55" * 32,
        report_id_ma=b"\xff" * 32,
        reported_tcb=make_tcb(layout),
        chip_id=b"\x66" * 64,
        committed_tcb=make_tcb(layout, 1),
        current_build=21,
        current_minor=55,
        current_major=1,
        committed_build=21,
        committed_minor=55,
        committed_major=1,
        launch_tcb=make_tcb(layout, 1),
        launch_mit_vector=0x5 if version >= 5 else None,
        current_mit_vector=0x7 if version >= 5 else None,
        signature_r=(1 << 383) | 0x1234,
        signature_s=(1 << 382) | 0x5678,
        product=product,
        **cpuid,
    )
    return dataclasses.replace(report, **changes) if changes else report  # type: ignore[arg-type]


ALL_CASES = [
    (version, product)
    for version in sorted(SUPPORTED_REPORT_VERSIONS)
    for product in ProductLine
    if not (version == 2 and product is ProductLine.TURIN)
] + [(2, ProductLine.TURIN), (2, None)]


def _id(case: tuple[int, ProductLine | None]) -> str:
    version, product = case
    return f"v{version}-{product.value if product else 'none'}"


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=_id)
def test_round_trip(case: tuple[int, ProductLine | None]) -> None:
    version, product = case
    report = make_report(version, product)
    raw = report.to_bytes()
    assert len(raw) == SNP_REPORT_SIZE
    parsed = parse_snp_report(raw, product=product if version == 2 else None)
    assert parsed == report
    assert parsed.to_bytes() == raw
    assert parsed.signed_bytes() == raw[:SNP_SIGNED_SIZE]
    assert parsed.product is product


def test_field_offsets() -> None:
    report = make_report(5, ProductLine.GENOA)
    raw = report.to_bytes()
    assert struct.unpack_from("<I", raw, 0)[0] == 5
    assert struct.unpack_from("<I", raw, 4)[0] == 7
    assert (
        struct.unpack_from("<Q", raw, 8)[0] == report.policy.to_int() == 0x1_37 | 1 << 17 | 1 << 16
    )
    assert raw[0x10:0x20] == bytes(range(16))
    assert raw[0x50:0x90] == b"\x11" * 64
    assert raw[0x90:0xC0] == b"\x22" * 48
    assert raw[0x180:0x188] == report.reported_tcb.to_bytes() == bytes([3, 0, 0, 0, 0, 0, 8, 115])
    assert raw[0x188:0x18B] == bytes(CPUID[ProductLine.GENOA])
    assert raw[0x1A0:0x1E0] == b"\x66" * 64
    assert raw[0x1E8:0x1EF] == bytes([21, 55, 1, 0, 21, 55, 1])
    assert struct.unpack_from("<QQ", raw, 0x1F8) == (5, 7)
    assert int.from_bytes(raw[0x2A0:0x2E8], "little") == report.signature_r
    assert int.from_bytes(raw[0x2E8:0x330], "little") == report.signature_s


def test_signature_der() -> None:
    report = make_report()
    assert decode_dss_signature(report.signature_der()) == (report.signature_r, report.signature_s)


def test_v4_is_parsed_like_v3() -> None:
    parsed = parse_snp_report(make_report(4, ProductLine.GENOA).to_bytes())
    assert parsed.version == 4
    assert parsed.cpuid_mod_id == 0x11
    assert parsed.launch_mit_vector is None


def test_v5_mitigation_vectors() -> None:
    parsed = parse_snp_report(make_report(5, ProductLine.TURIN).to_bytes())
    assert (parsed.launch_mit_vector, parsed.current_mit_vector) == (5, 7)


def test_v2_without_product_uses_legacy_layout() -> None:
    raw = make_report(2, ProductLine.MILAN).to_bytes()
    parsed = parse_snp_report(raw)
    assert parsed.product is None
    assert parsed.reported_tcb.layout is TcbLayout.LEGACY
    assert parsed.cpuid_fam_id is None
    assert parsed.to_bytes() == raw


def test_v2_with_turin_product_uses_turin_layout() -> None:
    raw = make_report(2, ProductLine.TURIN).to_bytes()
    parsed = parse_snp_report(raw, product=ProductLine.TURIN)
    assert parsed.reported_tcb.layout is TcbLayout.TURIN
    assert parsed.reported_tcb.fmc == 1


# --- strictness ---------------------------------------------------------------------------------


def _mbz_offsets(version: int) -> list[int]:
    ranges = [(0x04C, 0x050), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x2D0, 0x2E8), (0x318, 0x4A0)]
    ranges.append((0x188, 0x1A0) if version == 2 else (0x18B, 0x1A0))
    ranges.append((0x208, 0x2A0) if version >= 5 else (0x1F8, 0x2A0))
    return sorted(o for start, end in ranges for o in range(start, end))


@pytest.mark.parametrize("version", sorted(SUPPORTED_REPORT_VERSIONS))
def test_every_mbz_byte_is_checked(version: int) -> None:
    product = ProductLine.MILAN
    raw = make_report(version, product).to_bytes()
    offsets = _mbz_offsets(version)
    assert len(offsets) > 300
    for offset in offsets:
        bad = bytearray(raw)
        bad[offset] = 0x01
        with pytest.raises(EvidenceFormatError) as info:
            parse_snp_report(bytes(bad), product=product)
        assert info.value.offset == offset, hex(offset)
        assert info.value.structure == "ATTESTATION_REPORT"
        assert f"{offset:#x}" in str(info.value)


def test_v3_mitigation_vector_area_is_reserved_but_v5_is_not() -> None:
    raw = bytearray(make_report(3).to_bytes())
    raw[0x1F8] = 1
    with pytest.raises(EvidenceFormatError, match="0x1f8"):
        parse_snp_report(bytes(raw))
    raw[0] = 5
    assert parse_snp_report(bytes(raw)).launch_mit_vector == 1


def test_v2_cpuid_area_is_reserved() -> None:
    raw = bytearray(make_report(2, ProductLine.MILAN).to_bytes())
    raw[0x189] = 1
    with pytest.raises(EvidenceFormatError) as info:
        parse_snp_report(bytes(raw))
    assert info.value.offset == 0x189


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unsupported_version(version: int) -> None:
    raw = bytearray(make_report().to_bytes())
    struct.pack_into("<I", raw, 0, version)
    with pytest.raises(EvidenceFormatError, match="VERSION") as info:
        parse_snp_report(bytes(raw))
    assert info.value.offset == 0


@pytest.mark.parametrize("algo", [0, 2, 0x100])
def test_unknown_signature_algo(algo: int) -> None:
    raw = bytearray(make_report().to_bytes())
    struct.pack_into("<I", raw, 0x34, algo)
    with pytest.raises(EvidenceFormatError, match="SIGNATURE_ALGO") as info:
        parse_snp_report(bytes(raw))
    assert info.value.offset == 0x34


def test_policy_bit_17_clear() -> None:
    raw = bytearray(make_report().to_bytes())
    raw[0x0A] &= ~0x02
    with pytest.raises(EvidenceFormatError, match="bit 17") as info:
        parse_snp_report(bytes(raw))
    assert info.value.offset == 0x08


@pytest.mark.parametrize("bit", [26, 31, 40, 63])
def test_policy_high_bits(bit: int) -> None:
    raw = bytearray(make_report().to_bytes())
    value = struct.unpack_from("<Q", raw, 8)[0] | 1 << bit
    struct.pack_into("<Q", raw, 8, value)
    with pytest.raises(EvidenceFormatError, match="26-63") as info:
        parse_snp_report(bytes(raw))
    assert info.value.offset == 0x08


@pytest.mark.parametrize("key", [2, 3, 4, 5, 6])
def test_reserved_signing_key(key: int) -> None:
    raw = bytearray(make_report().to_bytes())
    struct.pack_into("<I", raw, 0x48, key << 2)
    with pytest.raises(EvidenceFormatError, match="SIGNING_KEY") as info:
        parse_snp_report(bytes(raw))
    assert info.value.offset == 0x48


def test_unsigned_report_refused() -> None:
    raw = make_report(signer_info=SignerInfo(signing_key=SigningKey.NONE)).to_bytes()
    with pytest.raises(EvidenceFormatError, match="unsigned report") as info:
        parse_snp_report(raw)
    assert info.value.offset == 0x48


@pytest.mark.parametrize("bit", [5, 8, 31])
def test_signer_info_high_bits(bit: int) -> None:
    raw = bytearray(make_report().to_bytes())
    struct.pack_into("<I", raw, 0x48, 1 << bit)
    with pytest.raises(EvidenceFormatError, match="5-31"):
        parse_snp_report(bytes(raw))


def test_vlek_report() -> None:
    report = make_report(signer_info=SignerInfo(signing_key=SigningKey.VLEK, author_key_en=True))
    parsed = parse_snp_report(report.to_bytes())
    assert parsed.signer_info.signing_key is SigningKey.VLEK
    assert parsed.signer_info.author_key_en


@pytest.mark.parametrize(
    ("family", "model"), [(0x19, 0x20), (0x19, 0x9F), (0x17, 0x31), (0x1A, 0x12)]
)
def test_unknown_cpuid_product(family: int, model: int) -> None:
    raw = bytearray(make_report().to_bytes())
    raw[0x188], raw[0x189] = family, model
    with pytest.raises(EvidenceFormatError, match=f"family {family:#x} model {model:#x}") as info:
        parse_snp_report(bytes(raw))
    assert info.value.offset == 0x188
    # With an out-of-band product the report parses, and CPUID is kept verbatim.
    parsed = parse_snp_report(bytes(raw), product=ProductLine.GENOA)
    assert parsed.product is ProductLine.GENOA
    assert parsed.to_bytes() == bytes(raw)


@pytest.mark.parametrize("given_product", [ProductLine.GENOA, ProductLine.TURIN])
def test_product_contradicts_cpuid(given_product: ProductLine) -> None:
    raw = make_report(3, ProductLine.MILAN).to_bytes()
    with pytest.raises(EvidenceFormatError, match="Milan") as info:
        parse_snp_report(raw, product=given_product)
    assert info.value.offset == 0x188


def test_product_agreeing_with_cpuid() -> None:
    raw = make_report(3, ProductLine.GENOA).to_bytes()
    assert parse_snp_report(raw, product=ProductLine.GENOA).product is ProductLine.GENOA


def test_every_truncation_raises() -> None:
    raw = make_report(5, ProductLine.TURIN).to_bytes()
    for length in range(len(raw)):
        with pytest.raises(EvidenceFormatError) as info:
            parse_snp_report(raw[:length])
        assert info.value.offset == length


def test_trailing_byte_raises() -> None:
    raw = make_report().to_bytes()
    with pytest.raises(EvidenceFormatError, match="1184"):
        parse_snp_report(raw + b"\x00")


def test_accepts_bytearray_and_memoryview() -> None:
    raw = make_report().to_bytes()
    assert parse_snp_report(bytearray(raw)).to_bytes() == raw  # type: ignore[arg-type]
    assert parse_snp_report(memoryview(raw)).to_bytes() == raw  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=SNP_REPORT_SIZE + 2))
def test_random_bytes_raise_only_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_snp_report(data)


@settings(max_examples=200)
@given(
    st.binary(min_size=SNP_REPORT_SIZE, max_size=SNP_REPORT_SIZE),
    st.sampled_from(sorted(SUPPORTED_REPORT_VERSIONS)),
    st.sampled_from([None, *ProductLine]),
)
def test_random_bodies_with_valid_header(
    data: bytes, version: int, product: ProductLine | None
) -> None:
    raw = bytearray(data)
    struct.pack_into("<I", raw, 0, version)
    struct.pack_into("<Q", raw, 8, struct.unpack_from("<Q", raw, 8)[0] & ((1 << 26) - 1) | 1 << 17)
    struct.pack_into("<II", raw, 0x34, 1, 0)
    struct.pack_into("<I", raw, 0x48, raw[0x48] & 0x3)
    if data[0] & 1:  # half the time, clear every reserved byte so the whole parser runs
        for offset in _mbz_offsets(version):
            raw[offset] = 0
    try:
        parsed = parse_snp_report(bytes(raw), product=product)
    except RatlsError:
        return
    assert parsed.to_bytes() == bytes(raw)


@settings(max_examples=200)
@given(st.integers(0, SNP_REPORT_SIZE - 1), st.integers(1, 255), st.sampled_from(ALL_CASES))
def test_mutated_reports_raise_only_ratls_errors(
    offset: int, value: int, case: tuple[int, ProductLine | None]
) -> None:
    version, product = case
    raw = bytearray(make_report(version, product).to_bytes())
    raw[offset] ^= value
    try:
        parsed = parse_snp_report(bytes(raw), product=product)
    except RatlsError:
        return
    assert parsed.to_bytes() == bytes(raw)


def _tcbs(layout: TcbLayout) -> st.SearchStrategy[TcbVersion]:
    byte = st.integers(0, 255)
    size = 4 if layout is TcbLayout.LEGACY else 3
    return st.builds(
        TcbVersion,
        bootloader=byte,
        tee=byte,
        snp=byte,
        microcode=byte,
        fmc=byte if layout is TcbLayout.TURIN else st.none(),
        layout=st.just(layout),
        reserved=st.binary(min_size=size, max_size=size),
    )


@st.composite
def valid_reports(draw: st.DrawFn) -> SnpReport:
    version = draw(st.sampled_from(sorted(SUPPORTED_REPORT_VERSIONS)))
    product = draw(st.sampled_from([None, *ProductLine] if version == 2 else list(ProductLine)))
    layout = product.tcb_layout if product is not None else TcbLayout.LEGACY
    byte = st.integers(0, 255)
    u32 = st.integers(0, (1 << 32) - 1)
    u64 = st.integers(0, (1 << 64) - 1)
    sig = st.integers(0, (1 << 384) - 1)

    def blob(size: int) -> bytes:
        return draw(st.binary(min_size=size, max_size=size))

    if version >= 3:
        assert product is not None
        fam, _mod, _step = CPUID[product]
        models = {
            ProductLine.MILAN: st.integers(0x00, 0x0F),
            ProductLine.GENOA: st.one_of(st.integers(0x10, 0x1F), st.integers(0xA0, 0xAF)),
            ProductLine.TURIN: st.integers(0x00, 0x11),
        }
        cpuid: tuple[int | None, ...] = (fam, draw(models[product]), draw(byte))
    else:
        cpuid = (None, None, None)
    return SnpReport(
        version=version,
        guest_svn=draw(u32),
        policy=GuestPolicy.from_int(draw(st.integers(0, (1 << 26) - 1)) | 1 << 17),
        family_id=blob(16),
        image_id=blob(16),
        vmpl=draw(u32),
        signature_algo=SignatureAlgorithm.ECDSA_P384_SHA384,
        current_tcb=draw(_tcbs(layout)),
        platform_info=PlatformInfo.from_int(draw(u64)),
        signer_info=SignerInfo(
            author_key_en=draw(st.booleans()),
            mask_chip_key=draw(st.booleans()),
            signing_key=draw(st.sampled_from([SigningKey.VCEK, SigningKey.VLEK])),
        ),
        report_data=blob(64),
        measurement=blob(48),
        host_data=blob(32),
        id_key_digest=blob(48),
        author_key_digest=blob(48),
        report_id=blob(32),
        report_id_ma=blob(32),
        reported_tcb=draw(_tcbs(layout)),
        cpuid_fam_id=cpuid[0],
        cpuid_mod_id=cpuid[1],
        cpuid_step=cpuid[2],
        chip_id=blob(64),
        committed_tcb=draw(_tcbs(layout)),
        current_build=draw(byte),
        current_minor=draw(byte),
        current_major=draw(byte),
        committed_build=draw(byte),
        committed_minor=draw(byte),
        committed_major=draw(byte),
        launch_tcb=draw(_tcbs(layout)),
        launch_mit_vector=draw(u64) if version >= 5 else None,
        current_mit_vector=draw(u64) if version >= 5 else None,
        signature_r=draw(sig),
        signature_s=draw(sig),
        product=product,
    )


@settings(max_examples=200)
@given(valid_reports())
def test_random_valid_reports_round_trip(report: SnpReport) -> None:
    raw = report.to_bytes()
    parsed = parse_snp_report(raw, product=report.product if report.version == 2 else None)
    assert parsed == report
    assert parsed.to_bytes() == raw


# --- CPUID -> product ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x00, ProductLine.MILAN),
        (0x19, 0x01, ProductLine.MILAN),
        (0x19, 0x0F, ProductLine.MILAN),
        (0x19, 0x10, ProductLine.GENOA),
        (0x19, 0x11, ProductLine.GENOA),
        (0x19, 0x1F, ProductLine.GENOA),
        (0x19, 0xA0, ProductLine.GENOA),
        (0x19, 0xAF, ProductLine.GENOA),
        (0x1A, 0x00, ProductLine.TURIN),
        (0x1A, 0x11, ProductLine.TURIN),
        (0x19, 0x20, None),
        (0x19, 0xB0, None),
        (0x1A, 0x12, None),
        (0x18, 0x01, None),
        (0x1B, 0x00, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: ProductLine | None) -> None:
    assert product_from_cpuid(family, model) is product


def test_product_layouts() -> None:
    assert ProductLine.MILAN.tcb_layout is TcbLayout.LEGACY
    assert ProductLine.GENOA.tcb_layout is TcbLayout.LEGACY
    assert ProductLine.TURIN.tcb_layout is TcbLayout.TURIN
    assert [p.value for p in ProductLine] == ["Milan", "Genoa", "Turin"]


# --- TCB_VERSION --------------------------------------------------------------------------------

OBSERVED_TURIN_TCB = bytes.fromhex("0001000200000047")


def test_observed_turin_tcb() -> None:
    tcb = TcbVersion.from_bytes(OBSERVED_TURIN_TCB, TcbLayout.TURIN)
    assert tcb.components() == {"bootloader": 1, "tee": 0, "snp": 2, "microcode": 71, "fmc": 0}
    assert str(tcb) == "bl=1 tee=0 snp=2 ucode=71 fmc=0"
    assert tcb.to_bytes() == OBSERVED_TURIN_TCB
    assert tcb.to_int() == int.from_bytes(OBSERVED_TURIN_TCB, "little")
    assert TcbVersion.from_int(tcb.to_int(), TcbLayout.TURIN) == tcb


def test_observed_turin_tcb_read_with_legacy_layout_differs() -> None:
    tcb = TcbVersion.from_bytes(OBSERVED_TURIN_TCB, TcbLayout.LEGACY)
    assert tcb.components() == {"bootloader": 0, "tee": 1, "snp": 0, "microcode": 0x47}
    assert tcb.reserved == bytes([0, 2, 0, 0])
    assert tcb.to_bytes() == OBSERVED_TURIN_TCB


def test_legacy_tcb() -> None:
    raw = bytes([3, 0, 0, 0, 0, 0, 8, 115])
    tcb = TcbVersion.from_bytes(raw, TcbLayout.LEGACY)
    assert str(tcb) == "bl=3 tee=0 snp=8 ucode=115"
    assert tcb.fmc is None
    assert "fmc" not in tcb.components()
    assert tcb.to_int() == 0x7308_0000_0000_0003


@settings(max_examples=200)
@given(st.binary(min_size=8, max_size=8), st.sampled_from(list(TcbLayout)))
def test_tcb_round_trip(raw: bytes, layout: TcbLayout) -> None:
    tcb = TcbVersion.from_bytes(raw, layout)
    assert tcb.to_bytes() == raw
    assert TcbVersion.from_int(tcb.to_int(), layout) == tcb


def test_tcb_reserved_bytes_kept() -> None:
    raw = bytearray(make_report(3, ProductLine.MILAN).to_bytes())
    raw[0x183] = 0x42
    parsed = parse_snp_report(bytes(raw))
    assert parsed.reported_tcb.reserved == bytes([0, 0x42, 0, 0])
    assert parsed.to_bytes() == bytes(raw)


@pytest.mark.parametrize("length", [0, 7, 9])
def test_tcb_wrong_length(length: int) -> None:
    with pytest.raises(EvidenceFormatError):
        TcbVersion.from_bytes(bytes(length), TcbLayout.LEGACY)


def test_tcb_from_int_out_of_range() -> None:
    with pytest.raises(ValueError, match="64 bits"):
        TcbVersion.from_int(1 << 64, TcbLayout.LEGACY)
    with pytest.raises(ValueError, match="64 bits"):
        TcbVersion.from_int(-1, TcbLayout.LEGACY)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bootloader": 256, "tee": 0, "snp": 0, "microcode": 0},
        {"bootloader": 0, "tee": -1, "snp": 0, "microcode": 0},
        {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0, "fmc": 1},
        {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0, "layout": TcbLayout.TURIN},
        {
            "bootloader": 0,
            "tee": 0,
            "snp": 0,
            "microcode": 0,
            "fmc": 300,
            "layout": TcbLayout.TURIN,
        },
        {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0, "reserved": b"\x00"},
    ],
)
def test_tcb_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        TcbVersion(**kwargs)  # type: ignore[arg-type]


def test_tcb_rejects_bad_layout_type() -> None:
    with pytest.raises(TypeError):
        TcbVersion(bootloader=0, tee=0, snp=0, microcode=0, layout="turin")  # type: ignore[arg-type]


# --- GuestPolicy / PlatformInfo / SignerInfo -----------------------------------------------------


@settings(max_examples=200)
@given(st.integers(0, (1 << 26) - 1))
def test_policy_round_trip(raw: int) -> None:
    raw |= 1 << 17
    policy = GuestPolicy.from_int(raw)
    assert policy.to_int() == raw


def test_policy_bits() -> None:
    policy = GuestPolicy.from_int(0x1_0000 | 1 << 17 | 1 << 19 | 1 << 25 | 0x0203)
    assert policy.abi_major == 2
    assert policy.abi_minor == 3
    assert policy.smt
    assert policy.debug
    assert policy.page_swap_disable
    assert not policy.migrate_ma
    assert policy.flag_names() == ["smt", "debug", "page_swap_disable"]


@pytest.mark.parametrize("raw", [0, 1 << 26 | 1 << 17, 1 << 63 | 1 << 17, 1 << 64 | 1 << 17, -1])
def test_policy_from_int_rejects(raw: int) -> None:
    with pytest.raises(EvidenceFormatError):
        GuestPolicy.from_int(raw)


def test_policy_rejects_abi_out_of_range() -> None:
    with pytest.raises(ValueError, match="abi_major"):
        GuestPolicy(abi_major=256)


@settings(max_examples=200)
@given(st.integers(0, (1 << 64) - 1))
def test_platform_info_round_trip(raw: int) -> None:
    info = PlatformInfo.from_int(raw)
    assert info.to_int() == raw
    assert info.unknown_bits == raw & ~0xFF


def test_platform_info_bits() -> None:
    info = PlatformInfo.from_int(0x67)  # observed on a real Turin host
    assert info.flag_names() == [
        "smt_en",
        "tsme_en",
        "ecc_en",
        "alias_check_complete",
        "iommu_write_safe",
    ]
    assert not info.sev_tio_en
    assert PlatformInfo.from_int(0x80).sev_tio_en
    assert PlatformInfo.from_int(1 << 40).unknown_bits == 1 << 40


@pytest.mark.parametrize("raw", [-1, 1 << 64])
def test_platform_info_out_of_range(raw: int) -> None:
    with pytest.raises(EvidenceFormatError):
        PlatformInfo.from_int(raw)


def test_platform_info_rejects_known_bits_in_unknown() -> None:
    with pytest.raises(ValueError, match="unknown_bits"):
        PlatformInfo(unknown_bits=1)


@pytest.mark.parametrize("key", list(SigningKey))
@pytest.mark.parametrize("low", range(4))
def test_signer_info_round_trip(key: SigningKey, low: int) -> None:
    raw = low | key << 2
    info = SignerInfo.from_int(raw)
    assert info.signing_key is key
    assert info.author_key_en == bool(low & 1)
    assert info.mask_chip_key == bool(low & 2)
    assert info.to_int() == raw


@pytest.mark.parametrize("raw", [2 << 2, 6 << 2, 1 << 5, 1 << 31, 1 << 32, -1])
def test_signer_info_rejects(raw: int) -> None:
    with pytest.raises(EvidenceFormatError):
        SignerInfo.from_int(raw)


def test_signer_info_requires_enum() -> None:
    with pytest.raises(TypeError):
        SignerInfo(signing_key=0)  # type: ignore[arg-type]


# --- building by hand ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"report_data": b"\x00" * 63},
        {"measurement": b"\x00" * 49},
        {"chip_id": b"\x00" * 8},
        {"family_id": "x" * 16},
        {"version": 6},
        {"vmpl": -1},
        {"guest_svn": 1 << 32},
        {"current_build": 256},
        {"cpuid_step": None},
        {"cpuid_fam_id": 0x1A},
        {"launch_mit_vector": 1},
        {"signature_r": 1 << 384},
        {"signature_s": -1},
        {"reported_tcb": make_tcb(TcbLayout.TURIN)},
        {"product": ProductLine.GENOA},
        {"product": None},
    ],
)
def test_post_init_rejects_unserializable(changes: dict[str, object]) -> None:
    report = make_report(3, ProductLine.MILAN)
    with pytest.raises(ValueError):  # noqa: PT011
        dataclasses.replace(report, **changes)  # type: ignore[arg-type]


def test_post_init_v2_rejects_cpuid_and_v5_needs_vectors() -> None:
    with pytest.raises(ValueError, match="CPUID"):
        make_report(2, None, cpuid_fam_id=0x19)
    with pytest.raises(ValueError, match="u64"):
        make_report(5, ProductLine.MILAN, current_mit_vector=None)


@pytest.mark.parametrize(
    "changes",
    [
        {"policy": 0x30000},
        {"platform_info": 0},
        {"signer_info": 0},
        {"signature_algo": 1},
        {"product": "Milan"},
    ],
)
def test_post_init_rejects_wrong_types(changes: dict[str, object]) -> None:
    report = make_report(3, ProductLine.MILAN)
    with pytest.raises(TypeError, match="must be"):
        dataclasses.replace(report, **changes)  # type: ignore[arg-type]


def test_unknown_cpuid_with_product_can_be_built() -> None:
    report = make_report(3, ProductLine.GENOA, cpuid_mod_id=0x50)
    assert parse_snp_report(report.to_bytes(), product=ProductLine.GENOA) == report


# --- value-type behaviour -----------------------------------------------------------------------


def test_eq_ne_hash() -> None:
    a = make_report()
    b = make_report()
    c = make_report(vmpl=1)
    assert a == b
    assert a != c
    assert a != object()
    assert hash(a) == hash(b)
    assert hash(a.reported_tcb) == hash(make_tcb(TcbLayout.LEGACY))
    assert a.policy == GuestPolicy(abi_major=1, abi_minor=55, smt=True)
    assert a.policy != GuestPolicy()
    assert a.platform_info != object()
    assert hash(a.signer_info) == hash(SignerInfo())


def test_frozen() -> None:
    report = make_report()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.vmpl = 2  # type: ignore[misc]


def test_repr() -> None:
    text = repr(make_report(5, ProductLine.TURIN))
    assert text.startswith("<SnpReport v5 Turin vmpl=0 key=VCEK")
    assert "11" * 64 in text
    assert "fmc=" in text
    assert "unknown product" in repr(make_report(2, None))
    assert "bootloader=3" in repr(make_tcb(TcbLayout.LEGACY))
    assert "smt=True" in repr(GuestPolicy(smt=True))


def test_describe_is_json_friendly() -> None:
    described = make_report(5, ProductLine.TURIN).describe()
    decoded = json.loads(json.dumps(described))
    assert decoded["version"] == 5
    assert decoded["product"] == "Turin"
    assert decoded["policy"]["flags"] == ["smt"]
    assert decoded["policy"]["abi"] == "1.55"
    assert decoded["signer_info"]["signing_key"] == "VCEK"
    assert decoded["reported_tcb"]["fmc"] == 1
    assert decoded["reported_tcb"]["raw"] == make_tcb(TcbLayout.TURIN).to_bytes().hex()
    assert decoded["report_data"] == "11" * 64
    assert decoded["current_mit_vector"] == "0x0000000000000007"
    assert decoded["platform_info"]["flags"] == ["smt_en", "tsme_en"]
    v2 = make_report(2, None).describe()
    assert v2["product"] is None
    assert v2["launch_mit_vector"] is None


# --- real reports -------------------------------------------------------------------------------

VECTORS = Path(__file__).parent / "vectors" / "snp"


def _vector_names() -> list[str]:
    return sorted(p.stem for p in VECTORS.glob("*.hex"))


@pytest.mark.parametrize("name", _vector_names())
def test_real_report_vectors(name: str) -> None:
    raw = bytes.fromhex((VECTORS / f"{name}.hex").read_text())
    product = None
    for candidate in ProductLine:
        if candidate.value.lower() in name.lower():
            product = candidate
    parsed = parse_snp_report(raw, product=product)
    assert parsed.to_bytes() == raw
    assert parsed.signer_info.signing_key in (SigningKey.VCEK, SigningKey.VLEK)
    if parsed.version >= 3:
        assert parsed.product is not None


def _load_vector(name: str, product: ProductLine | None = None) -> SnpReport:
    return parse_snp_report(bytes.fromhex((VECTORS / f"{name}.hex").read_text()), product=product)


def test_real_turin_v5_report() -> None:
    report = _load_vector("turin-v5-oak-via-routex-client-lua")
    assert report.version == 5
    assert report.product is ProductLine.TURIN
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0x1A, 0x02, 0x01)
    assert report.reported_tcb.to_bytes() == OBSERVED_TURIN_TCB
    assert report.reported_tcb.components() == {
        "bootloader": 1,
        "tee": 0,
        "snp": 2,
        "microcode": 71,
        "fmc": 0,
    }
    assert report.platform_info.to_int() == 0x67
    assert report.platform_info.iommu_write_safe
    assert report.chip_id[:8] == bytes.fromhex("3b42092f69c656d3")
    assert not any(report.chip_id[8:])
    assert (report.launch_mit_vector, report.current_mit_vector) == (0, 0)
    assert report.report_id_ma == b"\xff" * 32


def test_real_turin_v5_report_signature() -> None:
    report = _load_vector("turin-v5-oak-via-routex-client-lua")
    pem = (VECTORS / "turin-v5-oak-via-routex-client-lua.vcek.pem").read_bytes()
    with warnings.catch_warnings():
        # Every real VCEK has serial number 0, which cryptography warns about.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        vcek = x509.load_pem_x509_certificate(pem)
    key = vcek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(report.signature_der(), report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    tampered = bytearray(report.signed_bytes())
    tampered[0x50] ^= 1
    with pytest.raises(InvalidSignature):
        key.verify(report.signature_der(), bytes(tampered), ec.ECDSA(hashes.SHA384()))


@pytest.mark.parametrize(
    ("name", "product", "tcb", "firmware"),
    [
        ("milan-v2-virtee-sev", ProductLine.MILAN, "bl=3 tee=0 snp=8 ucode=115", (1, 52, 4)),
        (
            "genoa-v2-routex-client-lua",
            ProductLine.GENOA,
            "bl=7 tee=0 snp=14 ucode=68",
            (1, 55, 21),
        ),
    ],
)
def test_real_v2_reports(
    name: str, product: ProductLine, tcb: str, firmware: tuple[int, int, int]
) -> None:
    without = _load_vector(name)
    assert without.version == 2
    assert without.product is None
    assert without.cpuid_fam_id is None
    assert str(without.reported_tcb) == tcb
    assert (without.current_major, without.current_minor, without.current_build) == firmware
    assert without.policy.smt
    assert without.policy.to_int() == 0x30000
    with_product = _load_vector(name, product)
    assert with_product.product is product
    assert with_product.to_bytes() == without.to_bytes()
