"""Tests for the extended-report certificate table codec."""

from __future__ import annotations

import contextlib
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import EvidenceFormatError, RatlsError
from ratls._snp_certtable import (
    CERT_TABLE_ENTRY_SIZE,
    CERT_TABLE_GUID_ARK,
    CERT_TABLE_GUID_ASK,
    CERT_TABLE_GUID_ASVK,
    CERT_TABLE_GUID_CRL,
    CERT_TABLE_GUID_VCEK,
    CERT_TABLE_GUID_VLEK,
    CertTable,
    CertTableEntry,
    build_cert_table,
    parse_cert_table,
)

VCEK = CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"vcek-der" * 10)
ASK = CertTableEntry(guid=CERT_TABLE_GUID_ASK, data=b"ask-der" * 20)
ARK = CertTableEntry(guid=CERT_TABLE_GUID_ARK, data=b"ark-der" * 20)
TABLE = CertTable(entries=(VCEK, ASK, ARK))


def entry_bytes(guid: uuid.UUID, offset: int, length: int) -> bytes:
    return guid.bytes + struct.pack("<II", offset, length)


def test_guid_constants_in_rfc4122_byte_order() -> None:
    # The first table entry of a real host starts with these bytes for the VCEK.
    assert CERT_TABLE_GUID_VCEK.bytes[:4] == bytes.fromhex("63da758d")
    assert str(CERT_TABLE_GUID_VLEK) == "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
    assert str(CERT_TABLE_GUID_ASK) == "4ab7b379-bbac-4fe4-a02f-05aef327c782"
    assert CERT_TABLE_GUID_ASVK == CERT_TABLE_GUID_ASK
    assert str(CERT_TABLE_GUID_ARK) == "c0b406a4-a803-4952-9743-3fb6014cd0ae"
    assert str(CERT_TABLE_GUID_CRL) == "92f81bc3-5811-4d3d-97ff-d19f88dc67ea"


def test_layout() -> None:
    raw = build_cert_table(TABLE)
    header = 4 * CERT_TABLE_ENTRY_SIZE
    assert raw[:16] == CERT_TABLE_GUID_VCEK.bytes
    assert struct.unpack_from("<II", raw, 16) == (header, len(VCEK.data))
    assert struct.unpack_from("<II", raw, 24 + 16) == (header + len(VCEK.data), len(ASK.data))
    assert raw[3 * 24 : 4 * 24] == bytes(24)
    assert raw[header : header + len(VCEK.data)] == VCEK.data
    assert len(raw) == header + len(VCEK.data) + len(ASK.data) + len(ARK.data)


def test_round_trip() -> None:
    raw = build_cert_table(TABLE)
    parsed = parse_cert_table(raw)
    assert parsed == TABLE
    assert build_cert_table(parsed) == raw
    assert build_cert_table(parsed.entries) == raw


def test_round_trip_with_kernel_padding() -> None:
    raw = build_cert_table(TABLE, size=0x4000)
    assert len(raw) == 0x4000
    assert parse_cert_table(raw) == TABLE
    assert build_cert_table(parse_cert_table(raw), size=0x4000) == raw


def test_empty_table() -> None:
    assert build_cert_table([]) == bytes(24)
    assert parse_cert_table(bytes(24)) == CertTable()
    assert parse_cert_table(bytes(4096)) == CertTable()


def test_get() -> None:
    parsed = parse_cert_table(build_cert_table(TABLE))
    assert parsed.get(CERT_TABLE_GUID_VCEK) == VCEK.data
    assert parsed.get(CERT_TABLE_GUID_ASVK) == ASK.data
    assert parsed.get(CERT_TABLE_GUID_VLEK) is None
    assert CERT_TABLE_GUID_ARK in parsed
    assert CERT_TABLE_GUID_CRL not in parsed
    assert len(parsed) == 3


def test_unknown_guid_kept() -> None:
    other = CertTableEntry(guid=uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6"), data=b"x")
    table = CertTable(entries=(VCEK, other))
    assert parse_cert_table(build_cert_table(table)).get(other.guid) == b"x"


def test_blobs_in_any_order_with_gaps_of_zero() -> None:
    header = 3 * 24
    raw = (
        entry_bytes(CERT_TABLE_GUID_VCEK, header + 16, 4)
        + entry_bytes(CERT_TABLE_GUID_ARK, header, 3)
        + bytes(24)
        + b"ark"
        + bytes(13)
        + b"vcek"
        + bytes(10)
    )
    parsed = parse_cert_table(raw)
    assert parsed.entries == (
        CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"vcek"),
        CertTableEntry(guid=CERT_TABLE_GUID_ARK, data=b"ark"),
    )


def test_zero_length_entry() -> None:
    table = CertTable(entries=(CertTableEntry(guid=CERT_TABLE_GUID_CRL, data=b""), VCEK))
    assert parse_cert_table(build_cert_table(table)) == table


def test_missing_terminator() -> None:
    raw = build_cert_table(TABLE)
    header_only = entry_bytes(CERT_TABLE_GUID_VCEK, 48, 0)
    with pytest.raises(EvidenceFormatError, match="terminat") as info:
        parse_cert_table(header_only)
    assert info.value.offset == 24
    # A table whose entries fill the whole buffer has no room for a terminator.
    with pytest.raises(EvidenceFormatError, match="terminat"):
        parse_cert_table(raw[: 3 * 24])
    with pytest.raises(EvidenceFormatError, match="terminat"):
        parse_cert_table(b"")


def test_every_truncation_raises() -> None:
    raw = build_cert_table(TABLE)
    for length in range(len(raw)):
        with pytest.raises(EvidenceFormatError):
            parse_cert_table(raw[:length])


def test_trailing_nonzero_byte_raises() -> None:
    raw = build_cert_table(TABLE)
    with pytest.raises(EvidenceFormatError, match="non-zero") as info:
        parse_cert_table(raw + b"\x01")
    assert info.value.offset == len(raw)
    assert info.value.structure == "CERT_TABLE"


def test_nonzero_padding_raises() -> None:
    raw = bytearray(build_cert_table(TABLE, size=8192))
    raw[5000] = 0xAA
    with pytest.raises(EvidenceFormatError, match="non-zero") as info:
        parse_cert_table(bytes(raw))
    assert info.value.offset == 5000


def test_nonzero_gap_between_table_and_blob_raises() -> None:
    header = 2 * 24
    raw = entry_bytes(CERT_TABLE_GUID_VCEK, header + 2, 4) + bytes(24) + b"\x00\x07vcek"
    with pytest.raises(EvidenceFormatError, match="non-zero") as info:
        parse_cert_table(raw)
    assert info.value.offset == header + 1


def test_overlap() -> None:
    header = 3 * 24
    raw = (
        entry_bytes(CERT_TABLE_GUID_VCEK, header, 8)
        + entry_bytes(CERT_TABLE_GUID_ASK, header + 4, 8)
        + bytes(24)
        + b"A" * 12
    )
    with pytest.raises(EvidenceFormatError, match="overlap") as info:
        parse_cert_table(raw)
    assert info.value.offset == header + 4


def test_identical_ranges_overlap() -> None:
    header = 3 * 24
    raw = (
        entry_bytes(CERT_TABLE_GUID_VCEK, header, 8)
        + entry_bytes(CERT_TABLE_GUID_ASK, header, 8)
        + bytes(24)
        + b"A" * 8
    )
    with pytest.raises(EvidenceFormatError, match="overlap"):
        parse_cert_table(raw)


@pytest.mark.parametrize(
    ("offset", "length"),
    [(48, 100), (48, 0xFFFFFFFF), (0xFFFFFFFF, 1), (0xFFFFFFFF, 0xFFFFFFFF), (60, 0)],
)
def test_out_of_range(offset: int, length: int) -> None:
    raw = entry_bytes(CERT_TABLE_GUID_VCEK, offset, length) + bytes(24) + b"V" * 10
    with pytest.raises(EvidenceFormatError, match="past the end") as info:
        parse_cert_table(raw)
    assert info.value.offset == 0


@pytest.mark.parametrize("offset", [0, 10, 47])
def test_offset_into_entry_array(offset: int) -> None:
    raw = entry_bytes(CERT_TABLE_GUID_VCEK, offset, 4) + bytes(24) + b"V" * 10
    with pytest.raises(EvidenceFormatError, match="entry array"):
        parse_cert_table(raw)


def test_duplicate_guid() -> None:
    header = 3 * 24
    raw = (
        entry_bytes(CERT_TABLE_GUID_VCEK, header, 4)
        + entry_bytes(CERT_TABLE_GUID_VCEK, header + 4, 4)
        + bytes(24)
        + b"AAAABBBB"
    )
    with pytest.raises(EvidenceFormatError, match="duplicate") as info:
        parse_cert_table(raw)
    assert info.value.offset == 24


def test_null_guid_with_offset_is_not_a_terminator() -> None:
    raw = entry_bytes(uuid.UUID(int=0), 48, 1) + bytes(24) + b"x"
    with pytest.raises(EvidenceFormatError, match="null GUID"):
        parse_cert_table(raw)


def test_builder_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        build_cert_table([VCEK, VCEK])
    with pytest.raises(ValueError, match="size"):
        build_cert_table(TABLE, size=10)
    with pytest.raises(ValueError, match="null GUID"):
        CertTableEntry(guid=uuid.UUID(int=0), data=b"")
    with pytest.raises(TypeError):
        CertTableEntry(guid=str(CERT_TABLE_GUID_VCEK), data=b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CertTable(entries=(b"x",))  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_cert_table(data)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.uuids().filter(lambda u: u.int != 0), st.binary(max_size=64)),
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    st.integers(0, 64),
)
def test_random_tables_round_trip(items: list[tuple[uuid.UUID, bytes]], padding: int) -> None:
    table = CertTable(entries=tuple(CertTableEntry(guid=g, data=d) for g, d in items))
    raw = build_cert_table(table)
    padded = build_cert_table(table, size=len(raw) + padding)
    assert parse_cert_table(padded) == table
    assert build_cert_table(parse_cert_table(raw)) == raw


@settings(max_examples=200)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_mutated_tables_raise_only_ratls_errors(index: int, value: int) -> None:
    raw = bytearray(build_cert_table(TABLE, size=600))
    raw[index % len(raw)] ^= value
    with contextlib.suppress(RatlsError):
        parse_cert_table(bytes(raw))


def test_value_types() -> None:
    a = CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"x")
    b = CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"x")
    c = CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"y")
    assert a == b
    assert a != c
    assert a != object()
    assert hash(a) == hash(b)
    assert repr(a) == "CertTableEntry(guid=63da758d-e664-4564-adc5-f4b93be8accd, data=<1 bytes>)"
    assert CertTable(entries=(a,)) == CertTable(entries=(b,))
    assert CertTable(entries=(a,)) != CertTable(entries=(c,))
    assert CertTable(entries=(a,)) != object()
    assert hash(CertTable(entries=(a,))) == hash(CertTable(entries=(b,)))
    assert "63da758d" in repr(CertTable(entries=(a,)))
