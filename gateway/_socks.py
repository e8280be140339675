"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929): CONNECT, and UDP
ASSOCIATE where a rule allows it.

The pure parsers take one whole message each and follow the house rules (exact length,
trailing bytes refused, only :class:`SocksError` escapes); :func:`negotiate` drives them
over a client stream.  Domain names are not resolved here: they travel in the OPEN to
the egress, which resolves them on the backend network (``socks5h`` semantics), so the
client network never needs to know backend names.

Reply codes sent for tunnel outcomes (:func:`reply_for`):

===========================================  ==========================================
outcome                                      REP
===========================================  ==========================================
tunnel opened                                0x00 succeeded
not-allowed, unknown-route                   0x02 connection not allowed by ruleset
backend-refused                              0x05 connection refused
backend-unreachable                          0x04 host unreachable
backend-timeout, egress/handshake timeout    0x06 TTL expired (the closest "timed out")
attestation-failed, limits, anything else    0x01 general SOCKS server failure
BIND (and UDP ASSOCIATE unless allowed)      0x07 command not supported
unknown address type                         0x08 address type not supported
===========================================  ==========================================

SOCKS replies cannot carry text, so the reason is in the access log of the ingress.

UDP ASSOCIATE datagrams carry ``RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA``
(:func:`parse_udp_datagram`); fragments (FRAG other than 0) are not supported and are
dropped, as RFC 1928 allows.  Answers carry the same header naming the destination as the
client gave it (:func:`udp_header`), so a client matches them with what it sent.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

from ratls._errors import RemoteProtocolError

from ._link import AddressTarget, LinkReason

if TYPE_CHECKING:
    import trio

    from ._config import SocksUser
    from ._reader import StreamReader

__all__ = [
    "SOCKS_VERSION",
    "SocksAddressType",
    "SocksCommand",
    "SocksCredentials",
    "SocksError",
    "SocksGreeting",
    "SocksMethod",
    "SocksReply",
    "SocksRequest",
    "build_reply",
    "negotiate",
    "parse_credentials",
    "parse_greeting",
    "parse_request",
    "parse_udp_datagram",
    "reply_for",
    "udp_header",
]

#: The protocol version byte of SOCKS5 messages.
SOCKS_VERSION: Final = 5
_AUTH_VERSION: Final = 1


class SocksMethod(enum.IntEnum):
    """Authentication methods (RFC 1928 section 3)."""

    #: No authentication required.
    NO_AUTH = 0x00
    #: GSSAPI (not offered).
    GSSAPI = 0x01
    #: Username/password (RFC 1929).
    USERNAME_PASSWORD = 0x02
    #: No acceptable methods.
    NO_ACCEPTABLE = 0xFF


class SocksCommand(enum.IntEnum):
    """Request commands (RFC 1928 section 4)."""

    #: Open a TCP connection.
    CONNECT = 0x01
    #: Accept an inbound connection (not supported).
    BIND = 0x02
    #: UDP relay (not supported).
    UDP_ASSOCIATE = 0x03


class SocksAddressType(enum.IntEnum):
    """Address types (RFC 1928 section 5)."""

    #: 4-byte IPv4 address.
    IPV4 = 0x01
    #: Length-prefixed domain name.
    DOMAIN = 0x03
    #: 16-byte IPv6 address.
    IPV6 = 0x04


class SocksReply(enum.IntEnum):
    """Reply codes (RFC 1928 section 6)."""

    #: Succeeded.
    SUCCEEDED = 0x00
    #: General SOCKS server failure.
    GENERAL_FAILURE = 0x01
    #: Connection not allowed by ruleset.
    NOT_ALLOWED = 0x02
    #: Network unreachable.
    NETWORK_UNREACHABLE = 0x03
    #: Host unreachable.
    HOST_UNREACHABLE = 0x04
    #: Connection refused.
    CONNECTION_REFUSED = 0x05
    #: TTL expired.
    TTL_EXPIRED = 0x06
    #: Command not supported.
    COMMAND_NOT_SUPPORTED = 0x07
    #: Address type not supported.
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksError(RemoteProtocolError):
    """A SOCKS message is malformed or asks for something unsupported.

    Attributes:
        reply: the reply code to answer with, when the failure is at the request stage.
        offset: byte offset of the problem within the message, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        reply: SocksReply = SocksReply.GENERAL_FAILURE,
        offset: int | None = None,
    ) -> None:
        self.reply = reply
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"SOCKS5{where}: {message}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SocksGreeting:
    """The client's method selection message.

    Attributes:
        methods: the methods offered, in the client's order.
    """

    methods: tuple[int, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SocksCredentials:
    """An RFC 1929 username/password request.

    Attributes:
        username: 1-255 bytes.
        password: 1-255 bytes (not shown in repr).
    """

    username: bytes
    password: bytes = field(repr=False)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SocksRequest:
    """A SOCKS5 request.

    Attributes:
        command: the command (CONNECT; UDP ASSOCIATE where allowed).
        address_type: how the address was given.
        host: the address as given (IP text or domain).
        port: the port as given (0 is allowed only in UDP ASSOCIATE: "any port").
    """

    command: SocksCommand
    address_type: SocksAddressType
    host: str
    port: int

    @property
    def target(self) -> AddressTarget:
        """The CONNECT target.

        Raises:
            SocksError: not a usable target (port 0, or a bad host).
        """
        try:
            return AddressTarget(host=self.host, port=self.port)
        except ValueError as exc:
            raise SocksError(f"bad target: {exc}", offset=4) from None


def parse_greeting(data: bytes) -> SocksGreeting:
    """Parse ``VER NMETHODS METHODS...``.

    Raises:
        SocksError: wrong version, no methods, wrong length.
    """
    data = bytes(data)
    if len(data) < 2:
        raise SocksError("greeting truncated", offset=len(data))
    if data[0] != SOCKS_VERSION:
        raise SocksError(f"version {data[0]} is not 5", offset=0)
    count = data[1]
    if count == 0:
        raise SocksError("no authentication methods offered", offset=1)
    if len(data) != 2 + count:
        raise SocksError(f"expected {2 + count} bytes, got {len(data)}", offset=len(data))
    return SocksGreeting(methods=tuple(data[2:]))


def parse_credentials(data: bytes) -> SocksCredentials:
    """Parse ``VER ULEN UNAME PLEN PASSWD`` (RFC 1929).

    Raises:
        SocksError: wrong version, empty fields, wrong length.
    """
    data = bytes(data)
    if len(data) < 2:
        raise SocksError("credentials truncated", offset=len(data))
    if data[0] != _AUTH_VERSION:
        raise SocksError(f"auth version {data[0]} is not 1", offset=0)
    ulen = data[1]
    if ulen == 0:
        raise SocksError("empty username", offset=1)
    if len(data) < 3 + ulen:
        raise SocksError("credentials truncated", offset=len(data))
    plen = data[2 + ulen]
    if plen == 0:
        raise SocksError("empty password", offset=2 + ulen)
    if len(data) != 3 + ulen + plen:
        raise SocksError(f"expected {3 + ulen + plen} bytes, got {len(data)}", offset=len(data))
    return SocksCredentials(username=data[2 : 2 + ulen], password=data[3 + ulen :])


def _request_size(prefix: bytes) -> int:
    """Total request size given at least its first 5 bytes."""
    atyp = prefix[3]
    if atyp == SocksAddressType.IPV4:
        return 4 + 4 + 2
    if atyp == SocksAddressType.IPV6:
        return 4 + 16 + 2
    if atyp == SocksAddressType.DOMAIN:
        return 4 + 1 + prefix[4] + 2
    raise SocksError(
        f"address type {atyp:#04x}", reply=SocksReply.ADDRESS_TYPE_NOT_SUPPORTED, offset=3
    )


def parse_request(data: bytes) -> SocksRequest:
    """Parse ``VER CMD RSV ATYP DST.ADDR DST.PORT``.

    Raises:
        SocksError: with the reply code to answer (07 unknown command, 08 unknown address
            type, 01 malformed).
    """
    data = bytes(data)
    if len(data) < 5:
        raise SocksError("request truncated", offset=len(data))
    if data[0] != SOCKS_VERSION:
        raise SocksError(f"version {data[0]} is not 5", offset=0)
    if data[2] != 0:
        raise SocksError("reserved byte is not zero", offset=2)
    size = _request_size(data)
    if len(data) != size:
        raise SocksError(f"expected {size} bytes, got {len(data)}", offset=len(data))
    try:
        command = SocksCommand(data[1])
    except ValueError:
        raise SocksError(
            f"unknown command {data[1]:#04x}", reply=SocksReply.COMMAND_NOT_SUPPORTED, offset=1
        ) from None
    atyp, host, port = _parse_address(data, 3)
    request = SocksRequest(command=command, address_type=atyp, host=host, port=port)
    if command is not SocksCommand.UDP_ASSOCIATE:
        request.target  # noqa: B018 - raises SocksError for a target no tunnel can have
    return request


def _parse_address(data: bytes, offset: int) -> tuple[SocksAddressType, str, int]:
    """``ATYP ADDR PORT`` at ``offset``, its length already checked by the caller."""
    atyp = SocksAddressType(data[offset])
    start = offset + 1
    if atyp is SocksAddressType.IPV4:
        host, end = str(ipaddress.IPv4Address(data[start : start + 4])), start + 4
    elif atyp is SocksAddressType.IPV6:
        host, end = str(ipaddress.IPv6Address(data[start : start + 16])), start + 16
    else:
        raw = data[start + 1 : start + 1 + data[start]]
        end = start + 1 + data[start]
        if not raw:
            raise SocksError("empty domain name", offset=start)
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SocksError("domain name is not ASCII", offset=start + 1) from None
    (port,) = struct.unpack_from(">H", data, end)
    return atyp, host, port


def parse_udp_datagram(data: bytes) -> tuple[AddressTarget, bytes]:
    """Split a UDP ASSOCIATE datagram into its destination and payload.

    Raises:
        SocksError: a fragment, a malformed header, or a destination no tunnel can have
            (port 0, a bad host).
    """
    data = bytes(data)
    if len(data) < 4:
        raise SocksError("datagram header truncated", offset=len(data))
    if data[0] or data[1]:
        raise SocksError("reserved bytes are not zero", offset=0)
    if data[2]:
        raise SocksError(f"fragment {data[2]} (fragmentation is not supported)", offset=2)
    size = _request_size(data[:5]) if len(data) >= 5 else 5
    if len(data) < size:
        raise SocksError("datagram header truncated", offset=len(data))
    _atyp, host, port = _parse_address(data, 3)
    try:
        target = AddressTarget(host=host, port=port, datagram=True)
    except ValueError as exc:
        raise SocksError(f"bad destination: {exc}", offset=4) from None
    return target, data[size:]


def udp_header(target: AddressTarget) -> bytes:
    """The header of an answer from ``target``, naming it as the client gave it."""
    try:
        address = ipaddress.ip_address(target.host)
    except ValueError:
        name = target.host.encode("ascii")
        encoded = bytes([SocksAddressType.DOMAIN, len(name)]) + name
    else:
        atyp = SocksAddressType.IPV4 if address.version == 4 else SocksAddressType.IPV6
        encoded = bytes([atyp]) + address.packed
    return b"\0\0\0" + encoded + struct.pack(">H", target.port)


def build_reply(reply: SocksReply, bound: tuple[str, int] | None = None) -> bytes:
    """A reply; BND.ADDR is 0.0.0.0:0 (the egress's bound address is not exposed) except
    for UDP ASSOCIATE, whose reply names the relay socket the client must send to."""
    if bound is None:
        return bytes([SOCKS_VERSION, reply, 0, SocksAddressType.IPV4]) + b"\0" * 6
    address = ipaddress.ip_address(bound[0])
    atyp = SocksAddressType.IPV4 if address.version == 4 else SocksAddressType.IPV6
    return bytes([SOCKS_VERSION, reply, 0, atyp]) + address.packed + struct.pack(">H", bound[1])


def reply_for(result: str, code: LinkReason | int | None) -> SocksReply:
    """The SOCKS reply code for a failed tunnel (see the module table)."""
    if code in (LinkReason.NOT_ALLOWED, LinkReason.UNKNOWN_ROUTE):
        return SocksReply.NOT_ALLOWED
    if code is LinkReason.BACKEND_REFUSED:
        return SocksReply.CONNECTION_REFUSED
    if code is LinkReason.BACKEND_TIMEOUT or result.endswith("timeout"):
        return SocksReply.TTL_EXPIRED
    if code is LinkReason.BACKEND_UNREACHABLE:
        return SocksReply.HOST_UNREACHABLE
    return SocksReply.GENERAL_FAILURE


def _check_user(users: tuple[SocksUser, ...], credentials: SocksCredentials) -> bool:
    ok = False
    for user in users:
        # Compare every entry in constant time so timing reveals neither name nor password.
        name_ok = hmac.compare_digest(user.username.encode(), credentials.username)
        password_ok = hmac.compare_digest(user.password.encode(), credentials.password)
        ok |= name_ok & password_ok
    return ok


async def negotiate(
    reader: StreamReader,
    stream: trio.abc.SendStream,
    users: tuple[SocksUser, ...],
    *,
    udp: bool = False,
) -> SocksRequest:
    """Run method selection, authentication and the request; do not reply to it yet.

    Args:
        reader: reads the client's bytes.
        stream: the client's stream, for our answers.
        users: accepted credentials; empty means no authentication.
        udp: accept UDP ASSOCIATE as well as CONNECT.

    Returns:
        The request (the caller replies once the outcome is known).

    Raises:
        SocksError: bad messages (after answering what SOCKS allows), failed
            authentication, or a request other than CONNECT (after replying 07/08).
        TruncatedRequest: the client closed mid-negotiation.
    """
    head = await reader.read_exactly(2)
    greeting = parse_greeting(head + await reader.read_exactly(head[1]))
    wanted = SocksMethod.USERNAME_PASSWORD if users else SocksMethod.NO_AUTH
    if wanted not in greeting.methods:
        await stream.send_all(bytes([SOCKS_VERSION, SocksMethod.NO_ACCEPTABLE]))
        raise SocksError(f"client offers no {wanted.name} method")
    await stream.send_all(bytes([SOCKS_VERSION, wanted]))
    if users:
        part = await reader.read_exactly(2)
        part += await reader.read_exactly(part[1] + 1)
        part += await reader.read_exactly(part[-1])
        credentials = parse_credentials(part)
        if not _check_user(users, credentials):
            await stream.send_all(bytes([_AUTH_VERSION, 0x01]))
            raise SocksError("authentication failed")
        await stream.send_all(bytes([_AUTH_VERSION, 0x00]))
    prefix = await reader.read_exactly(5)
    try:
        if prefix[0] != SOCKS_VERSION:
            raise SocksError(f"version {prefix[0]} is not 5", offset=0)
        size = _request_size(prefix)
        request = parse_request(prefix + await reader.read_exactly(size - 5))
    except SocksError as exc:
        await stream.send_all(build_reply(exc.reply))
        raise
    allowed = {SocksCommand.CONNECT, SocksCommand.UDP_ASSOCIATE} if udp else {SocksCommand.CONNECT}
    if request.command not in allowed:
        await stream.send_all(build_reply(SocksReply.COMMAND_NOT_SUPPORTED))
        raise SocksError(
            f"{request.command.name} is not supported", reply=SocksReply.COMMAND_NOT_SUPPORTED
        )
    return request
