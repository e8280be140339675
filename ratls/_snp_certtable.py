"""The SEV-SNP extended-report certificate table (formats layer: no I/O).

When a guest asks for an *extended* report (GHCB MSG_REPORT_REQ through
SNP_GET_EXT_REPORT, or the configfs-tsm ``auxblob``), the host hands back the
endorsement certificates with it in a GUID table:

* a run of 24-byte entries ``{GUID (16 bytes), offset (u32 LE), length (u32 LE)}``,
  offsets counted from the start of the table,
* one all-zero entry that ends the run,
* the certificate blobs the entries point to.

The GUID bytes are in RFC 4122 ("string") order, which is what the Linux tooling,
go-sev-guest and virtee use, so ``uuid.UUID(bytes=...)`` reads them.  The kernel
returns a buffer larger than the table; whatever follows the last blob must be
zero padding.

The parser is strict: entries may not point into the entry array, past the
buffer, or into each other's data; a GUID may appear only once; every byte that
is neither table nor blob must be zero.  :func:`build_cert_table` lays a table out
canonically (entries in order, blobs back to back right after the terminator), so
``parse_cert_table(build_cert_table(t)) == t``.
"""

from __future__ import annotations

import itertools
import struct
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from ._errors import EvidenceFormatError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "CERT_TABLE_ENTRY_SIZE",
    "CERT_TABLE_GUID_ARK",
    "CERT_TABLE_GUID_ASK",
    "CERT_TABLE_GUID_ASVK",
    "CERT_TABLE_GUID_CRL",
    "CERT_TABLE_GUID_VCEK",
    "CERT_TABLE_GUID_VLEK",
    "CertTable",
    "CertTableEntry",
    "build_cert_table",
    "parse_cert_table",
]

#: Size of one table entry: GUID (16), offset (4), length (4).
CERT_TABLE_ENTRY_SIZE: Final = 24

#: The chip's VCEK certificate (DER).
CERT_TABLE_GUID_VCEK: Final = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
#: A cloud provider's VLEK certificate (DER).
CERT_TABLE_GUID_VLEK: Final = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
#: The AMD SEV Key (ASK), or the ASVK on the VLEK path: the same GUID serves both.
CERT_TABLE_GUID_ASK: Final = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
#: Alias of :data:`CERT_TABLE_GUID_ASK` for the VLEK path.
CERT_TABLE_GUID_ASVK: Final = CERT_TABLE_GUID_ASK
#: The AMD Root Key (ARK).  Never trusted because it arrived here: pin it.
CERT_TABLE_GUID_ARK: Final = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
#: A certificate revocation list.
CERT_TABLE_GUID_CRL: Final = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")

_STRUCTURE: Final = "CERT_TABLE"
_NULL_GUID: Final = uuid.UUID(int=0)
_TERMINATOR: Final = bytes(CERT_TABLE_ENTRY_SIZE)
_U32_MAX: Final = (1 << 32) - 1


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CertTableEntry:
    """One blob of the table.

    Attributes:
        guid: what the blob is (see the ``CERT_TABLE_GUID_*`` constants).
        data: the blob, usually a DER certificate.
    """

    guid: uuid.UUID
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.guid, uuid.UUID):
            raise TypeError(f"guid must be a uuid.UUID, got {self.guid!r}")
        if self.guid == _NULL_GUID:
            raise ValueError("the null GUID marks the end of the table and cannot name an entry")
        if not isinstance(self.data, bytes):
            raise TypeError("data must be bytes")

    def __repr__(self) -> str:
        return f"CertTableEntry(guid={self.guid}, data=<{len(self.data)} bytes>)"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CertTable:
    """A parsed certificate table: entries in table order, GUIDs unique.

    Attributes:
        entries: the entries, in the order the table lists them.
    """

    entries: tuple[CertTableEntry, ...] = ()

    def __post_init__(self) -> None:
        seen: set[uuid.UUID] = set()
        for entry in self.entries:
            if not isinstance(entry, CertTableEntry):
                raise TypeError(f"entries must be CertTableEntry objects, got {entry!r}")
            if entry.guid in seen:
                raise ValueError(f"duplicate GUID {entry.guid}")
            seen.add(entry.guid)

    def get(self, guid: uuid.UUID) -> bytes | None:
        """The blob stored under ``guid``, or None.

        Args:
            guid: the GUID to look up.

        Returns:
            The blob, or None when the table has no such entry.
        """
        for entry in self.entries:
            if entry.guid == guid:
                return entry.data
        return None

    def __contains__(self, guid: object) -> bool:
        return any(entry.guid == guid for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _fail(message: str, offset: int | None) -> EvidenceFormatError:
    return EvidenceFormatError(message, structure=_STRUCTURE, offset=offset)


def parse_cert_table(data: bytes) -> CertTable:
    """Parse a GHCB extended-report certificate table.

    Args:
        data: the buffer the kernel or host returned (table, blobs, then zero
            padding up to the buffer's end).

    Returns:
        The table.

    Raises:
        EvidenceFormatError: no terminating all-zero entry, an entry with the null
            GUID but a non-zero offset or length, a duplicate GUID, an offset or
            length outside the buffer or inside the entry array, overlapping
            blobs, or non-zero bytes outside the table and the blobs.
    """
    data = bytes(data)
    raw_entries: list[tuple[uuid.UUID, int, int, int]] = []
    position = 0
    while True:
        if position + CERT_TABLE_ENTRY_SIZE > len(data):
            raise _fail("no terminating all-zero entry", position)
        chunk = data[position : position + CERT_TABLE_ENTRY_SIZE]
        if chunk == _TERMINATOR:
            break
        guid = uuid.UUID(bytes=chunk[:16])
        offset, length = struct.unpack_from("<II", chunk, 16)
        if guid == _NULL_GUID:
            raise _fail("entry with the null GUID is not an all-zero terminator", position)
        raw_entries.append((guid, offset, length, position))
        position += CERT_TABLE_ENTRY_SIZE
    table_end = position + CERT_TABLE_ENTRY_SIZE

    seen: set[uuid.UUID] = set()
    for guid, offset, length, where in raw_entries:
        if guid in seen:
            raise _fail(f"duplicate GUID {guid}", where)
        seen.add(guid)
        if offset < table_end and length:
            raise _fail(f"entry {guid} points into the entry array (offset {offset:#x})", where)
        if offset + length > len(data):
            raise _fail(
                f"entry {guid} (offset {offset:#x}, length {length:#x}) runs past the "
                f"end of the {len(data)}-byte buffer",
                where,
            )

    covered = sorted((offset, offset + length, guid) for guid, offset, length, _ in raw_entries)
    for (_, end_a, guid_a), (start_b, _, guid_b) in itertools.pairwise(covered):
        # Sorted by start: any overlap shows up between neighbours.
        if start_b < end_a:
            raise _fail(f"entries {guid_a} and {guid_b} overlap", start_b)

    # Every byte that is neither table nor blob must be zero padding.
    cursor = table_end
    for start, end, _ in [*covered, (len(data), len(data), _NULL_GUID)]:
        if start > cursor:
            gap = data[cursor:start]
            if any(gap):
                first = next(i for i, b in enumerate(gap) if b)
                raise _fail("non-zero byte outside the table and its blobs", cursor + first)
        cursor = max(cursor, end)

    return CertTable(
        entries=tuple(
            CertTableEntry(guid=guid, data=data[offset : offset + length])
            for guid, offset, length, _ in raw_entries
        )
    )


def build_cert_table(
    entries: CertTable | Iterable[CertTableEntry], *, size: int | None = None
) -> bytes:
    """Serialize a certificate table in the canonical layout.

    Args:
        entries: a table, or entries in the order to list them.
        size: pad the result with zeros to exactly this many bytes (as the kernel's
            buffer would be); None for no padding.

    Returns:
        The table bytes.

    Raises:
        ValueError: duplicate GUIDs, offsets beyond 32 bits, or a table larger than
            ``size``.
    """
    table = entries if isinstance(entries, CertTable) else CertTable(entries=tuple(entries))
    header_size = (len(table.entries) + 1) * CERT_TABLE_ENTRY_SIZE
    header = bytearray()
    blobs = bytearray()
    for entry in table.entries:
        offset = header_size + len(blobs)
        if offset + len(entry.data) > _U32_MAX:
            raise ValueError("certificate table too large for 32-bit offsets")
        header += entry.guid.bytes + struct.pack("<II", offset, len(entry.data))
        blobs += entry.data
    out = bytes(header) + _TERMINATOR + bytes(blobs)
    if size is not None:
        if size < len(out):
            raise ValueError(f"table needs {len(out)} bytes, more than size={size}")
        out += bytes(size - len(out))
    return out
