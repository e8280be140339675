"""Transparent capture: where a netfilter-diverted connection was originally going.

An ``iptables -t nat ... -j REDIRECT --to-ports P`` rule (or its nftables equivalent)
rewrites the destination of matching connections to a local port, where the ingress's
``[[ingress.transparent]]`` listener accepts them.  The kernel's connection tracking
remembers the destination the client dialled, and ``getsockopt(SO_ORIGINAL_DST)``
returns it as a ``struct sockaddr_in`` (``IP6T_SO_ORIGINAL_DST``: ``sockaddr_in6`` for
ip6tables).  That address becomes the tunnel's target, checked by the egress's
allowlist like any other.

The TPROXY target instead leaves addresses untouched and hands the connection to a
listener bound with ``IP_TRANSPARENT``: its local address is the original destination
(:func:`tproxy_destination`).

Parsing the kernel's answer is pure (:func:`parse_original_destination`); only
:func:`original_destination` and :func:`tproxy_destination` touch a socket.  A
connection with no diverted destination (one made to the capture port directly, which
would otherwise tunnel to the gateway itself) is refused with :class:`NotRedirected`.
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Final

from ratls._errors import RatlsError

from ._link import AddressTarget

if TYPE_CHECKING:
    from collections.abc import Collection

    import trio

__all__ = [
    "IP6T_SO_ORIGINAL_DST",
    "SO_ORIGINAL_DST",
    "NotRedirected",
    "original_destination",
    "parse_original_destination",
    "tproxy_destination",
]

#: ``SO_ORIGINAL_DST`` at level ``SOL_IP`` (linux/netfilter_ipv4.h).
SO_ORIGINAL_DST: Final = 80
#: ``IP6T_SO_ORIGINAL_DST`` at level ``IPPROTO_IPV6`` (linux/netfilter_ipv6/ip6_tables.h).
IP6T_SO_ORIGINAL_DST: Final = 80

# struct sockaddr_in: family (host order), port (network order), address, 8 zero bytes.
_SOCKADDR_IN_SIZE: Final = 16
# struct sockaddr_in6: family, port, flow info, address (16), scope id.
_SOCKADDR_IN6_SIZE: Final = 28


class NotRedirected(RatlsError):
    """The connection carries no translated destination to tunnel to."""


def parse_original_destination(raw: bytes, family: int) -> AddressTarget:
    """Decode the ``sockaddr_in``/``sockaddr_in6`` that ``SO_ORIGINAL_DST`` returns.

    Args:
        raw: the option's bytes.
        family: ``AF_INET`` or ``AF_INET6``, the socket's family.

    Returns:
        The original destination as a link target.

    Raises:
        NotRedirected: not a socket address of that family, of exactly its size, with
            a port and an address.
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise NotRedirected(f"address family {family} has no original destination")
    size = _SOCKADDR_IN_SIZE if family == socket.AF_INET else _SOCKADDR_IN6_SIZE
    if len(raw) != size:
        raise NotRedirected(f"original destination of {len(raw)} bytes, expected {size}")
    reported = int.from_bytes(raw[0:2], sys.byteorder)  # sa_family_t is in host order
    if reported != family:
        raise NotRedirected(f"original destination of family {reported}, expected {family}")
    port = int.from_bytes(raw[2:4], "big")
    address = raw[4:8] if family == socket.AF_INET else raw[8:24]
    if port == 0 or not any(address):
        raise NotRedirected("original destination without a port or an address")
    return AddressTarget(host=socket.inet_ntop(family, address), port=port)


def original_destination(sock: trio.socket.SocketType) -> AddressTarget:
    """Where the client of an accepted, REDIRECTed TCP connection was going.

    Raises:
        NotRedirected: the kernel knows no translated destination (no REDIRECT rule
            matched, connection tracking is off), or the destination is this very
            listener (a direct connection, which would loop through the gateway).
    """
    family = sock.family
    try:
        if family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_SIZE)
        elif family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_SIZE)
        else:
            raise NotRedirected(f"a {family!r} socket has no original destination")
        local = sock.getsockname()
    except OSError as exc:
        raise NotRedirected(f"no original destination: {exc.strerror or exc}") from exc
    target = parse_original_destination(raw, family)
    if (target.host, target.port) == (local[0], local[1]):
        raise NotRedirected(
            f"a direct connection to the capture port {target} (it would loop through "
            "the gateway; only REDIRECTed connections are tunnelled)"
        )
    return target


def tproxy_destination(
    sock: trio.socket.SocketType, capture_ports: Collection[int]
) -> AddressTarget:
    """Where the client of a connection diverted by netfilter's TPROXY target was going.

    TPROXY leaves the addresses as they were, so the accepted connection's local address
    is the destination the client dialled (the listener is bound with
    ``IP_TRANSPARENT``).  A local port that is one of the listener's own
    (``capture_ports``: one per bound address) means a direct connection to the capture
    port: choose one no captured service uses.

    Raises:
        NotRedirected: a direct connection, or no local address.
    """
    try:
        local = sock.getsockname()
    except OSError as exc:
        raise NotRedirected(f"no local address: {exc.strerror or exc}") from exc
    host, port = str(local[0]), int(local[1])
    if port in capture_ports:
        raise NotRedirected(
            f"a direct connection to the capture port {port} (it would loop through "
            "the gateway; only diverted connections are tunnelled)"
        )
    return AddressTarget(host=host, port=port)
