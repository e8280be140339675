"""PROXY protocol version 2 headers carrying the verified peer's attestation claims.

An egress route with ``proxy_protocol = true`` writes one PROXY v2 header (HAProxy's
proxy-protocol.txt, section 2.2) to the backend before any tunnelled byte, so the
backend learns who the original client was and what the attestation of the ingress
side proved, without linking an attestation library.  Layout::

    signature[12] = 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
    ver_cmd:u8    = 0x21 (version 2, PROXY) or 0x20 (version 2, LOCAL)
    fam:u8        = 0x11 TCP/IPv4, 0x21 TCP/IPv6, 0x00 UNSPEC
    len:u16       = bytes that follow (addresses + TLVs)
    addresses     = IPv4: src[4] dst[4] sport:u16 dport:u16; IPv6: 16 16 2 2; UNSPEC: none
    TLVs          = type:u8 | length:u16 | value

Our TLVs use the application-specific range 0xE0-0xEF, which the PROXY protocol
reserves and will never assign (:class:`ProxyTlv`), plus the standard PP2_TYPE_UNIQUE_ID
(0x05, at most 128 bytes) for the tunnel id.  The values are the claims of the *verified*
result, never the raw evidence.  A backend must only trust these TLVs on a connection
that comes from the egress (it listens on loopback or a UNIX socket the egress owns).

The parser exists for backends written in Python and for tests; it follows the house
rules for parsers (exact length, trailing bytes refused, only our errors escape).
"""

from __future__ import annotations

import enum
import ipaddress
import json
import struct
from dataclasses import dataclass
from typing import Final, final

from ratls._errors import RemoteProtocolError

__all__ = [
    "PROXY_V2_SIGNATURE",
    "MalformedProxyHeader",
    "ProxyCommand",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyTlv",
    "build_proxy_header",
    "claims_tlvs",
    "parse_proxy_header",
]

#: The 12-byte signature every PROXY v2 header starts with.
PROXY_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

_FIXED: Final = struct.Struct(">12sBBH")
_TLV: Final = struct.Struct(">BH")
_MAX_UNIQUE_ID: Final = 128


class ProxyCommand(enum.IntEnum):
    """The low nibble of ver_cmd."""

    #: A health check or the proxy's own connection: use the real addresses.
    LOCAL = 0x0
    #: Relayed on behalf of the client in the address block.
    PROXY = 0x1


class ProxyFamily(enum.IntEnum):
    """The fam byte (address family << 4 | transport)."""

    #: Unknown or unsupported family; no address block.
    UNSPEC = 0x00
    #: TCP over IPv4.
    TCP4 = 0x11
    #: TCP over IPv6.
    TCP6 = 0x21


class ProxyTlv(enum.IntEnum):
    """TLV types written by the gateway."""

    #: PP2_TYPE_UNIQUE_ID: the tunnel id (ASCII).
    UNIQUE_ID = 0x05
    #: The verified claims as compact JSON (UTF-8), sorted keys.
    RATLS_CLAIMS = 0xE0
    #: The verification profile (e.g. ``svsm``, ``snp``), ASCII.
    RATLS_PROFILE = 0xE1
    #: The launch measurement, lowercase hex.
    RATLS_MEASUREMENT = 0xE2
    #: The reported TCB, as text.
    RATLS_TCB = 0xE3
    #: SHA-256 of the policy that admitted the peer, lowercase hex.
    RATLS_POLICY = 0xE4


class MalformedProxyHeader(RemoteProtocolError):
    """A PROXY v2 header does not follow the format.

    Attributes:
        offset: byte offset of the problem.
    """

    def __init__(self, message: str, *, offset: int) -> None:
        self.offset = offset
        super().__init__(f"PROXY v2 header at offset {offset}: {message}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """A PROXY v2 header.

    Attributes:
        command: LOCAL or PROXY.
        family: UNSPEC, TCP4 or TCP6.
        source: client address (None for UNSPEC).
        destination: address the client connected to (None for UNSPEC).
        source_port: client port (0 for UNSPEC).
        destination_port: destination port (0 for UNSPEC).
        tlvs: ``(type, value)`` pairs in wire order.
    """

    command: ProxyCommand
    family: ProxyFamily
    source: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    source_port: int = 0
    destination_port: int = 0
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, tlv_type: int) -> bytes | None:
        """The value of the first TLV of ``tlv_type``, or None."""
        for t, value in self.tlvs:
            if t == tlv_type:
                return value
        return None

    def claims(self) -> dict[str, object] | None:
        """The RATLS_CLAIMS TLV decoded, or None when absent.

        Raises:
            MalformedProxyHeader: the TLV is not a JSON object.
        """
        raw = self.tlv(ProxyTlv.RATLS_CLAIMS)
        if raw is None:
            return None
        try:
            value = json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise MalformedProxyHeader(f"claims TLV is not JSON: {exc}", offset=0) from None
        if not isinstance(value, dict):
            raise MalformedProxyHeader("claims TLV is not a JSON object", offset=0)
        return value


def claims_tlvs(claims: dict[str, object], *, unique_id: str = "") -> tuple[tuple[int, bytes], ...]:
    """The gateway's TLVs for a verified peer's claims (see :class:`ProxyTlv`).

    Args:
        claims: a JSON-safe claims mapping (as :func:`~gateway._attestation.peer_claims`).
        unique_id: the tunnel id (at most 128 bytes; longer ids are cut).

    Returns:
        ``(type, value)`` pairs.
    """
    tlvs: list[tuple[int, bytes]] = []
    if unique_id:
        tlvs.append((ProxyTlv.UNIQUE_ID, unique_id.encode("ascii", "replace")[:_MAX_UNIQUE_ID]))
    blob = json.dumps(claims, sort_keys=True, separators=(",", ":"), default=str).encode()
    tlvs.append((ProxyTlv.RATLS_CLAIMS, blob))
    snp = claims.get("snp")
    nested = snp if isinstance(snp, dict) else {}
    for tlv_type, key in (
        (ProxyTlv.RATLS_PROFILE, "profile"),
        (ProxyTlv.RATLS_MEASUREMENT, "measurement"),
        (ProxyTlv.RATLS_TCB, "reported_tcb"),
        (ProxyTlv.RATLS_POLICY, "policy_digest"),
    ):
        value = claims.get(key, nested.get(key))
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            tlvs.append((tlv_type, text.encode()))
    return tuple(tlvs)


def build_proxy_header(
    *,
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
    command: ProxyCommand = ProxyCommand.PROXY,
) -> bytes:
    """Encode a PROXY v2 header.

    Args:
        source: the client's ``(ip, port)``, or None when unknown (e.g. a UNIX client):
            the header then uses the UNSPEC family.
        destination: the ``(ip, port)`` the client connected to, or None.
        tlvs: ``(type, value)`` pairs.
        command: PROXY (default) or LOCAL.

    Returns:
        The header bytes.

    Raises:
        ValueError: a bad address, mixed families, or more than 65535 bytes after the
            fixed part.
    """
    body = b""
    family = ProxyFamily.UNSPEC
    if source is not None and destination is not None:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(destination[0])
        if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
            src = src.ipv4_mapped
        if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
            dst = dst.ipv4_mapped
        if src.version != dst.version:
            # Mixed families cannot be expressed; promote the IPv4 side to mapped IPv6.
            src = ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src
            dst = ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
        family = ProxyFamily.TCP4 if src.version == 4 else ProxyFamily.TCP6
        body = src.packed + dst.packed + struct.pack(">HH", source[1], destination[1])
    for tlv_type, value in tlvs:
        if not 0 <= tlv_type <= 0xFF or len(value) > 0xFFFF:
            raise ValueError("TLV type must be a byte and its value at most 65535 bytes")
        body += _TLV.pack(tlv_type, len(value)) + value
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 header longer than 65535 bytes")
    return _FIXED.pack(PROXY_V2_SIGNATURE, 0x20 | command, family, len(body)) + body


def parse_proxy_header(data: bytes) -> ProxyHeader:
    """Decode exactly one PROXY v2 header.

    Args:
        data: the header and nothing after it.

    Returns:
        The header.

    Raises:
        MalformedProxyHeader: bad signature/version/command/family, truncation, a broken
            TLV, or trailing bytes.
    """
    data = bytes(data)
    if len(data) < _FIXED.size:
        raise MalformedProxyHeader("truncated fixed part", offset=len(data))
    signature, ver_cmd, fam, length = _FIXED.unpack_from(data)
    if signature != PROXY_V2_SIGNATURE:
        raise MalformedProxyHeader("bad signature", offset=0)
    if ver_cmd >> 4 != 2:
        raise MalformedProxyHeader(f"version {ver_cmd >> 4} is not 2", offset=12)
    try:
        command = ProxyCommand(ver_cmd & 0x0F)
    except ValueError:
        raise MalformedProxyHeader(f"unknown command {ver_cmd & 0x0F}", offset=12) from None
    try:
        family = ProxyFamily(fam)
    except ValueError:
        raise MalformedProxyHeader(f"unsupported family {fam:#04x}", offset=13) from None
    end = _FIXED.size + length
    if len(data) != end:
        what = "truncated" if len(data) < end else "trailing bytes after"
        raise MalformedProxyHeader(f"{what} the announced {length} bytes", offset=len(data))
    pos = _FIXED.size
    source: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    sport = dport = 0
    if family is not ProxyFamily.UNSPEC:
        size = 4 if family is ProxyFamily.TCP4 else 16
        if length < 2 * size + 4:
            raise MalformedProxyHeader("address block truncated", offset=pos)
        raw_src, raw_dst = data[pos : pos + size], data[pos + size : pos + 2 * size]
        if size == 4:
            source, destination = ipaddress.IPv4Address(raw_src), ipaddress.IPv4Address(raw_dst)
        else:
            source, destination = ipaddress.IPv6Address(raw_src), ipaddress.IPv6Address(raw_dst)
        sport, dport = struct.unpack_from(">HH", data, pos + 2 * size)
        pos += 2 * size + 4
    tlvs: list[tuple[int, bytes]] = []
    while pos < end:
        if end - pos < _TLV.size:
            raise MalformedProxyHeader("TLV header truncated", offset=pos)
        tlv_type, tlv_len = _TLV.unpack_from(data, pos)
        value = data[pos + _TLV.size : pos + _TLV.size + tlv_len]
        if len(value) != tlv_len or pos + _TLV.size + tlv_len > end:
            raise MalformedProxyHeader("TLV value truncated", offset=pos)
        tlvs.append((tlv_type, value))
        pos += _TLV.size + tlv_len
    return ProxyHeader(
        command=command,
        family=family,
        source=source,
        destination=destination,
        source_port=sport,
        destination_port=dport,
        tlvs=tuple(tlvs),
    )
