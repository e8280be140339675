"""Certificates edited below the X.509 builders, for inputs no builder will make.

``cryptography`` refuses to build (or load) some certificates that peers can still send:
other versions, repeated extensions.  These helpers cut a DER certificate apart, let a
test edit its TBSCertificate and put it back together, re-signed when a key is given.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from collections.abc import Callable


def self_signed(
    common_name: str, *, valid_from_hours: float = -1, valid_to_hours: float = 1
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new P-256 key and a plain self-signed certificate for it (validity relative to now)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(hours=valid_from_hours))
        .not_valid_after(now + datetime.timedelta(hours=valid_to_hours))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def tlv(tag: int, body: bytes) -> bytes:
    """One DER element."""
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def element(data: bytes, offset: int) -> tuple[int, int]:
    """(start of the value, end of the element) of the DER element at ``offset``."""
    first = data[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    size = first & 0x7F
    length = int.from_bytes(data[offset + 2 : offset + 2 + size], "big")
    return offset + 2 + size, offset + 2 + size + length


def children(body: bytes) -> list[bytes]:
    """The whole elements one after another in ``body``."""
    items = []
    offset = 0
    while offset < len(body):
        _, end = element(body, offset)
        items.append(body[offset:end])
        offset = end
    return items


def edit_tbs(
    der: bytes,
    edit: Callable[[list[bytes]], list[bytes]],
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """``der`` with its TBSCertificate's fields replaced by ``edit(fields)``.

    With ``key`` the result is signed again (ECDSA with SHA-256 or SHA-384 as the
    original signature algorithm says); without, the old signature stays (and is wrong).
    """
    value_start, _ = element(der, 0)
    tbs_start, tbs_end = element(der, value_start)
    fields = children(der[tbs_start:tbs_end])
    tbs = tlv(0x30, b"".join(edit(fields)))
    _, algorithm_end = element(der, tbs_end)
    algorithm = der[tbs_end:algorithm_end]
    if key is None:
        signature = der[algorithm_end:]
        return tlv(0x30, tbs + algorithm + signature)
    digest = (
        hashes.SHA384() if b"\x2a\x86\x48\xce\x3d\x04\x03\x03" in algorithm else hashes.SHA256()
    )
    signed = key.sign(tbs, ec.ECDSA(digest))
    return tlv(0x30, tbs + algorithm + tlv(0x03, b"\x00" + signed))
