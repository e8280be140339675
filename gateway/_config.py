"""Gateway configuration: one TOML file, parsed into frozen dataclasses and fully validated.

A gateway process can hold any number of ingress rules (port mappings, HTTP CONNECT
proxies, SOCKS5 proxies) and egress listeners with their routes.  The loader checks
everything before anything starts and reports *every* problem it finds, each with its
location in the file (``ingress.mapping[1].listen``), so that ``ratls-gateway check``
can explain a broken file in one go.  Unknown keys are errors: a misspelt timeout must
not silently fall back to its default.  Timeouts and limits have defaults chosen for
long-lived TCP (idle timeout off, generous half-close drain), see :class:`Timeouts`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, final

from OpenSSL import SSL

from ratls._errors import RatlsError
from ratls._tls_context import set_key_exchange_groups

from ._activation import check_socket_name
from ._link import AddressTarget, RouteTarget

__all__ = [
    "AdminConfig",
    "AllowRule",
    "AttestationSettings",
    "ClaimRule",
    "ConfigError",
    "ConfigProblem",
    "EgressListener",
    "EgressRoute",
    "Endpoint",
    "GatewayConfig",
    "HttpConnectRule",
    "Limits",
    "MappingRule",
    "PrewarmSettings",
    "ProcessSettings",
    "Socks5Rule",
    "SocksUser",
    "TcpSettings",
    "Timeouts",
    "TlsSettings",
    "TransparentRule",
    "UdpRule",
    "load_config",
    "parse_config",
    "parse_endpoint",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigProblem:
    """One thing wrong with a configuration.

    Attributes:
        location: dotted path of the offending key, e.g. ``"ingress.mapping[0].listen"``.
        message: what is wrong.
    """

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class ConfigError(RatlsError):
    """A gateway configuration is invalid.

    Attributes:
        problems: every problem found, in file order.
        location: the location of the first problem.
    """

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        self.location = problems[0].location if problems else ""
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the gateway configuration:\n{lines}")


# --------------------------------------------------------------------------- values


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A listen or connect address: TCP (IPv4, IPv6, DNS name) or a UNIX socket; or, to
    listen only, the sockets systemd passed under a name (socket activation).

    Attributes:
        kind: ``"tcp"``, ``"unix"`` or ``"systemd"``.
        host: for tcp, an IP literal (IPv6 without brackets) or a DNS name.
        port: for tcp, 0-65535 (0 = any free port, for listeners in tests).
        path: for unix, the socket path; for systemd, the sockets' name
            (``FileDescriptorName=``).
    """

    kind: Literal["tcp", "unix", "systemd"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "systemd":
            return f"systemd:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def as_target(self) -> AddressTarget:
        """This tcp endpoint as a link target.

        Raises:
            ValueError: a UNIX endpoint, or port 0.
        """
        if self.kind != "tcp":
            raise ValueError("a UNIX endpoint is not an address target")
        return AddressTarget(host=self.host, port=self.port)


_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected [IPv6]:port")
        host = text[1:close]
        ipaddress.IPv6Address(host)  # raises ValueError
        return host, text[close + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port, [IPv6]:port or unix:PATH")
    if ":" in host:
        raise ValueError("IPv6 addresses go in brackets: [::1]:port")
    return host, port


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None


def parse_endpoint(text: str, *, base_dir: Path | None = None) -> Endpoint:
    """Parse ``host:port``, ``[v6]:port``, ``unix:PATH`` or ``systemd:NAME``.

    Args:
        text: the endpoint as written in the config.
        base_dir: relative UNIX paths are taken relative to this directory.

    Returns:
        The endpoint.

    Raises:
        ValueError: the text is not a valid endpoint.
    """
    if not isinstance(text, str):
        raise ValueError("an endpoint is a string")
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise ValueError("unix: needs a socket path")
        if base_dir is not None and not Path(path).is_absolute():
            path = str(base_dir / path)
        if len(path.encode()) > 107:
            raise ValueError("UNIX socket path longer than 107 bytes")
        return Endpoint(kind="unix", path=path)
    if text.startswith("systemd:"):
        name = text[len("systemd:") :]
        check_socket_name(name)
        return Endpoint(kind="systemd", path=name)
    host, port_text = _split_host_port(text)
    _check_host(host)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not 0..65535")
    return Endpoint(kind="tcp", host=host, port=int(port_text))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AllowRule:
    """One egress allowlist entry for address targets (``host:port`` patterns).

    Hosts: an exact name (case-insensitive), ``*.suffix`` (any name under suffix), an
    IP address, or a CIDR network (matches IP literals only; names are not resolved for
    matching).  Ports: a number, ``a-b`` or ``*``.

    Attributes:
        host: the host pattern.
        port_low: lowest port allowed.
        port_high: highest port allowed.
    """

    host: str
    port_low: int
    port_high: int

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        """Parse a pattern such as ``"10.0.0.0/8:5432"`` or ``"*.internal:8000-8010"``.

        Raises:
            ValueError: not a valid pattern.
        """
        if not isinstance(text, str):
            raise ValueError("an allow pattern is a string")
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise ValueError("expected [IPv6 or CIDR]:ports")
            host, ports = text[1:close], text[close + 2 :]
            ipaddress.ip_network(host, strict=True)
        else:
            host, sep, ports = text.rpartition(":")
            if not sep or not host:
                raise ValueError("expected HOST:PORTS")
            if "/" in host:
                ipaddress.ip_network(host, strict=True)
            elif host.startswith("*."):
                _check_host(host[2:])
            else:
                _check_host(host)
        if ports == "*":
            low, high = 1, 65535
        else:
            first, dash, last = ports.partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise ValueError(f"ports {ports!r}: expected N, N-M or *")
            low, high = int(first), int(last) if dash else int(first)
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"ports {ports!r}: expected 1 <= N <= M <= 65535")
        return cls(host=host.lower(), port_low=low, port_high=high)

    def matches(self, target: AddressTarget) -> bool:
        """Whether ``target`` is allowed by this rule."""
        if not self.port_low <= target.port <= self.port_high:
            return False
        host = target.host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if "/" in self.host:
            return address is not None and address in ipaddress.ip_network(self.host)
        if address is not None:
            try:
                return address == ipaddress.ip_address(self.host)
            except ValueError:
                return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host.rstrip(".")

    def __str__(self) -> str:
        ports = "*" if (self.port_low, self.port_high) == (1, 65535) else str(self.port_low)
        if self.port_high != self.port_low and ports != "*":
            ports += f"-{self.port_high}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{ports}"


# Defaults.  Each is a module constant with the reason for its value.

# A backend on the same network answers a SYN in milliseconds; 10 s covers a loaded host
# and a lost SYN (the first retransmission is after 1 s) without holding a client long.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# TLS handshake plus both sides' attestation: evidence production (a vTPM quote is ~50 ms,
# an SNP report a few ms) and verification (a chain and two signatures), plus round
# trips.  10 s is generous for that and still bounds a slowloris during the handshake.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
# Idle timeout: off.  Long-lived connections (database sessions, long queries) must not
# be cut just because nothing moved (the Envoy 1 h default is a known pain point).
DEFAULT_IDLE_TIMEOUT: Final = 0.0
# After one direction finished, how long the other may stay silent before the tunnel is
# closed.  The timer restarts whenever bytes move, so long replies are never cut.
DEFAULT_HALF_CLOSE_TIMEOUT: Final = 60.0
# Maximum tunnel lifetime: off.
DEFAULT_MAX_LIFETIME: Final = 0.0
# How long an egress lets an attested link wait for its OPEN.  A fresh link sends OPEN
# at once; a link an ingress made ahead of need (``[prewarm]``) waits for a client, up to
# the ingress's ``prewarm.max_idle`` (20 s by default), which must stay below this.  The
# peer has passed attestation and holds a tunnel slot (``limits.max_tunnels``) meanwhile.
DEFAULT_OPEN_WAIT: Final = 30.0
# A UDP flow (one client address and port) ends after this long without a datagram in
# either direction: UDP has no FIN, so silence is its end.  60 s outlasts DNS retries,
# NTP polls at their shortest and QUIC's default idle timeout (30 s).
DEFAULT_UDP_IDLE: Final = 60.0
# Links an ingress keeps ready per egress: off by default (every tunnel attests afresh).
DEFAULT_PREWARM_LINKS: Final = 0
# A ready link older than this is closed and replaced: below the egress's default
# ``timeouts.open_wait`` with margin, and short enough that a client's tunnel starts with
# evidence at most this old (re-attestation counts from when the link was made).
DEFAULT_PREWARM_MAX_IDLE: Final = 20.0
#: Most ready links per egress: each is a TLS connection on both gateways.
MAX_PREWARM_LINKS: Final = 64
# A tunnel's peer is re-attested when its last verified evidence is this old; one hour
# keeps a policy change or a compromised peer from living on in old tunnels for long.
DEFAULT_MAX_ATTESTATION_AGE: Final = 3600.0
# Concurrent tunnels per process.  An idle tunnel costs a gateway about 60-70 KiB (its
# TLS connection, two sockets, the tunnel's tasks; see docs/performance.md), so 1024
# tunnels are well under 100 MiB: safe on a small VM.
DEFAULT_MAX_TUNNELS: Final = 1024
# Per-source rate limit: off by default; a token bucket when set.
DEFAULT_RATE_PER_SOURCE: Final = 0.0
DEFAULT_RATE_BURST: Final = 20
# Read size per pump step; one read becomes one DATA frame.  Every chunk costs a
# scheduler round, a frame header and a few Python calls per hop whatever its size, so
# bigger reads move more bytes per CPU second: 128 KiB measured 1.2-1.3x stunnel's
# throughput against 1.1x for 64 KiB (docs/performance.md, change 13).
DEFAULT_BUFFER_SIZE: Final = 128 * 1024
# Largest configurable read size: a DATA frame must stay below the link's frame limit.
MAX_BUFFER_SIZE: Final = 256 * 1024
#: Most ``[process] workers`` accepted.
MAX_WORKERS: Final = 256
#: Most ports one port-mapping rule may listen on (``listen = "host:first-last"``); each
#: is a listening socket (two for a name with IPv4 and IPv6 addresses).
MAX_MAPPING_PORTS: Final = 1024


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Timeouts in seconds; 0 switches a timeout off (not allowed for connect/handshake).

    Attributes:
        connect: opening a TCP/UNIX connection (backend, or egress from the ingress).
        handshake: TLS handshake plus attestation, and each re-attestation round trip.
        idle: close a tunnel when no byte moved this long (0 = off, the default).
        half_close: after one direction's EOF, close when the other is silent this long.
        max_lifetime: close any tunnel this old (0 = off).
        max_attestation_age: re-attest the peer of a tunnel this often (0 = never).
        proxy_request: time a proxy client (HTTP CONNECT, SOCKS5) has to say where to go.
        open_wait: (egress) how long an attested link may wait for its OPEN; links an
            ingress made ahead of need (``[prewarm]``) wait this long for a client.
        udp_idle: (ingress) a UDP flow ends after this long without a datagram either way.
    """

    connect: float = DEFAULT_CONNECT_TIMEOUT
    handshake: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle: float = DEFAULT_IDLE_TIMEOUT
    half_close: float = DEFAULT_HALF_CLOSE_TIMEOUT
    max_lifetime: float = DEFAULT_MAX_LIFETIME
    max_attestation_age: float = DEFAULT_MAX_ATTESTATION_AGE
    proxy_request: float = DEFAULT_HANDSHAKE_TIMEOUT
    open_wait: float = DEFAULT_OPEN_WAIT
    udp_idle: float = DEFAULT_UDP_IDLE


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PrewarmSettings:
    """Attested links an ingress makes ahead of need (see :mod:`gateway._prewarm`).

    Attributes:
        links: links kept ready for each egress that an ingress rule names (0 = off).
            A client's tunnel takes one and skips the TCP connect, the TLS handshake and
            both attestations: only OPEN's round trip is left.
        max_idle: close and replace a ready link idle this long; keep it below the
            egress's ``timeouts.open_wait``, after which the egress closes a link without
            OPEN.
        reuse: after a tunnel over TCP ends cleanly, put its link back among the ready
            ones (link version 3: the egress confirms with READY that it delivered
            everything), so back-to-back tunnels skip the handshake too.  A link is
            kept no longer than ``timeouts.max_attestation_age`` after its attestation.
            Needs ``links`` > 0 and egresses that speak link version 3 (an older egress
            refuses such OPENs as an unsupported version).
    """

    links: int = DEFAULT_PREWARM_LINKS
    max_idle: float = DEFAULT_PREWARM_MAX_IDLE
    reuse: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSettings:
    """How this process shares its listening ports.

    Attributes:
        reuse_port: bind TCP listeners (the admin endpoint's too) with ``SO_REUSEPORT``,
            so that several gateway processes of the same user can listen on the same
            ports and the kernel spreads new connections among them: start a new
            process, then stop the old one with SIGTERM (it drains) for an upgrade
            without refused connections, or run one process per core.  Off by default:
            a second gateway started by mistake should fail with "address in use", not
            quietly take half the traffic.  UNIX-socket listeners are taken over by the
            newest process either way.
        workers: gateway processes serving this configuration (default 1).  More than
            one makes ``run`` a supervisor: it starts that many workers, each a whole
            gateway with its own event loop, identity and tunnels on the same ports
            (``SO_REUSEPORT``: the kernel spreads connections and UDP flows among them),
            restarts a worker that dies, passes SIGHUP and SIGTERM on, and answers the
            admin endpoint for all of them.  TCP and UDP listeners then need a fixed
            port; UNIX-socket and ``systemd:`` listeners are bound (or adopted) by the
            supervisor and shared by the workers.
    """

    reuse_port: bool = False
    workers: int = 1


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """TLS choices for the link between gateways.

    Attributes:
        groups: key exchange groups offered and accepted, most preferred first, by
            their OpenSSL names; None keeps OpenSSL's default (with OpenSSL 3.5 and
            later the hybrid post-quantum X25519MLKEM768 first).  ``["X25519"]`` saves
            about 10 KiB per tunnel and gateway (docs/performance.md) and gives up
            post-quantum protection of recorded traffic.  Both gateways of a tunnel
            need a group in common.
    """

    groups: tuple[str, ...] | None = None


#: TCP keepalive: the first probe after a minute without a packet, then one every 10 s;
#: a peer that answers none of 6 probes is taken for gone (about two minutes in all).
DEFAULT_KEEPALIVE_IDLE: Final = 60
DEFAULT_KEEPALIVE_INTERVAL: Final = 10
DEFAULT_KEEPALIVE_COUNT: Final = 6
# Linux's bounds for TCP_KEEPIDLE / TCP_KEEPINTVL (seconds) and TCP_KEEPCNT.
_MAX_KEEPALIVE_SECONDS: Final = 32767
_MAX_KEEPALIVE_COUNT: Final = 127


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSettings:
    """TCP keepalive on every TCP connection a gateway accepts or opens; a firewall mark.

    Clients, the link between the gateways and backends alike.  With the idle timeout
    off (the default), a peer that vanished without a FIN or RST (a host that lost
    power, a NAT or firewall that forgot the flow) would otherwise hold its tunnel open
    until ``max_lifetime``.  Keepalive probes find it: the kernel resets the connection
    after ``keepalive_count`` unanswered probes, and the tunnel ends with an access line
    that says the peer stopped answering.  A live peer answers the probes, so quiet but
    healthy tunnels stay open.  Changes apply to connections made after a reload.

    Attributes:
        keepalive: send keepalive probes (``SO_KEEPALIVE``).
        keepalive_idle: seconds without a packet before the first probe (``TCP_KEEPIDLE``).
        keepalive_interval: seconds between probes (``TCP_KEEPINTVL``).
        keepalive_count: unanswered probes before the connection is reset
            (``TCP_KEEPCNT``).
        mark: the firewall mark (``SO_MARK``) of every connection the gateway opens
            (to the egress, to TCP and UDP backends), set before the first packet;
            0 = none.  A netfilter
            rule for transparent capture excludes the gateway's own traffic with
            ``-m mark ! --mark N``, so a broad capture rule cannot loop.  Needs
            ``CAP_NET_ADMIN``.
    """

    keepalive: bool = True
    keepalive_idle: int = DEFAULT_KEEPALIVE_IDLE
    keepalive_interval: int = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count: int = DEFAULT_KEEPALIVE_COUNT
    mark: int = 0


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Resource limits.

    Attributes:
        max_tunnels: concurrent tunnels per process; more are refused.
        rate_per_source: new tunnels per second per client address (0 = unlimited).
        rate_burst: how many tunnels a source may open at once before the rate applies.
        buffer_size: bytes read per pump step (the bound on buffered data per direction).
    """

    max_tunnels: int = DEFAULT_MAX_TUNNELS
    rate_per_source: float = DEFAULT_RATE_PER_SOURCE
    rate_burst: int = DEFAULT_RATE_BURST
    buffer_size: int = DEFAULT_BUFFER_SIZE


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationSettings:
    """How this gateway proves itself and judges its peers.

    Attributes:
        attester: the name of a registered attestation provider.
        policy: the appraisal policy file for peers (resolved path), if any.
        options: any other keys of the ``[attestation]`` table, for the provider.
        base_dir: the configuration file's directory (for relative paths in options).
    """

    attester: str
    policy: Path | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    base_dir: Path | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The health/metrics HTTP endpoint.

    Attributes:
        listen: where it listens.
    """

    listen: Endpoint


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MappingRule:
    """Port mapping: every connection to ``listen`` goes to ``target`` through ``egress``.

    Attributes:
        name: a label for logs and metrics.
        listen: where clients connect.
        egress: the egress gateway's attested listener.
        target: a route name on the egress, or an address it is allowed to reach; for a
            port range, the address of the first target port.
        ports: how many consecutive ports, from ``listen.port`` on, this rule listens
            on (``listen = "host:first-last"``); each maps to the target port at the
            same offset (``target = "host:first-last"``, a range of the same length).
    """

    name: str
    listen: Endpoint
    egress: Endpoint
    target: AddressTarget | RouteTarget
    ports: int = 1

    @property
    def listen_ports(self) -> range:
        """The ports this rule listens on: ``listen.port`` and the ``ports - 1`` after it."""
        return range(self.listen.port, self.listen.port + self.ports)

    @property
    def listen_text(self) -> str:
        """``listen`` as written: ``host:first-last`` for a port range."""
        if self.ports == 1:
            return str(self.listen)
        return f"{self.listen}-{self.listen.port + self.ports - 1}"

    def target_for(self, local_port: int) -> AddressTarget | RouteTarget:
        """The target of a connection that arrived on ``local_port``.

        In a port range the n-th listening port maps to the n-th target port.

        Raises:
            ValueError: ``local_port`` is not one of this rule's ports.
        """
        if self.ports == 1:
            return self.target
        if local_port not in self.listen_ports or not isinstance(self.target, AddressTarget):
            raise ValueError(f"port {local_port} is not in {self.listen_text}")
        offset = local_port - self.listen.port
        return AddressTarget(host=self.target.host, port=self.target.port + offset)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConnectRule:
    """An HTTP proxy (CONNECT and absolute-form http://); the target comes from each request.

    Attributes:
        name: a label for logs and metrics.
        listen: where proxy clients connect.
        egress: the egress gateway's attested listener.
        attestation_headers: add the egress's verified attestation summary
            (``X-Ratls-Peer-*``) to responses of absolute-form requests.
    """

    name: str
    listen: Endpoint
    egress: Endpoint
    attestation_headers: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SocksUser:
    """A SOCKS5 username/password pair (RFC 1929).

    Attributes:
        username: 1-255 bytes.
        password: 1-255 bytes; never logged or shown in reprs.
    """

    username: str
    password: str = field(repr=False)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Socks5Rule:
    """A SOCKS5 proxy (CONNECT, and UDP ASSOCIATE when ``udp``); the egress resolves names.

    Attributes:
        name: a label for logs and metrics.
        listen: where proxy clients connect.
        egress: the egress gateway's attested listener.
        users: accepted username/password pairs; empty means no authentication.
        udp: also serve UDP ASSOCIATE: each destination a client sends datagrams to is a
            UDP flow through its own attested tunnel (the egress's ``allow_udp`` decides
            what it may reach).  Needs a TCP ``listen`` address.
    """

    name: str
    listen: Endpoint
    egress: Endpoint
    users: tuple[SocksUser, ...] = ()
    udp: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TransparentRule:
    """Transparent capture: connections that netfilter diverted to ``listen``.

    Each connection goes to the address the client originally dialled through
    ``egress``, whose allowlist decides as for any address target.  With ``redirect``
    (iptables/nftables REDIRECT) the kernel's connection tracking names that address
    (``SO_ORIGINAL_DST``); with ``tproxy`` (the TPROXY target, which leaves addresses
    untouched) the listener is bound with ``IP_TRANSPARENT`` and the connection's own
    local address is the original destination.  A connection made to ``listen``
    directly has no other destination and is refused.

    Attributes:
        name: a label for logs and metrics.
        listen: the TCP address the netfilter rules send connections to.
        egress: the egress gateway's attested listener.
        mode: ``redirect`` or ``tproxy``.
    """

    name: str
    listen: Endpoint
    egress: Endpoint
    mode: Literal["redirect", "tproxy"] = "redirect"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class UdpRule:
    """UDP mapping: datagrams to ``listen`` go to ``target`` through ``egress``.

    Each client address and port is a flow with its own attested tunnel (link version
    2); datagrams keep their boundaries, and a flow ends after ``timeouts.udp_idle``
    without a datagram either way.

    Attributes:
        name: a label for logs and metrics.
        listen: the UDP address (``host:port``) clients send to.
        egress: the egress gateway's attested listener.
        target: a UDP route on the egress, or a UDP address its ``allow_udp`` admits.
    """

    name: str
    listen: Endpoint
    egress: Endpoint
    target: AddressTarget | RouteTarget


#: Any ingress rule: every kind names a listener, an egress and a name.
IngressRule = MappingRule | HttpConnectRule | Socks5Rule | TransparentRule | UdpRule


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRule:
    """An access rule on a verified peer's claims: ``path`` must be one of ``allowed``.

    ``path`` is a dotted path into the verifier result's ``claims()`` mapping, e.g.
    ``"snp.measurement"`` or ``"profile"``.  A claim value compares as its text (strings
    as they are; numbers and booleans as JSON: ``1``, ``true``).  A missing claim never
    matches.

    Attributes:
        path: the dotted claim path.
        allowed: the accepted values, as text.
    """

    path: str
    allowed: frozenset[str]

    def admits(self, claims: Mapping[str, object]) -> bool:
        """Whether ``claims`` satisfies this rule."""
        value: object = claims
        for part in self.path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return False
            value = value[part]
        if isinstance(value, str):
            text = value
        elif isinstance(value, bool | int | float) or value is None:
            text = json.dumps(value)
        else:
            return False
        return text in self.allowed


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EgressRoute:
    """A named backend an egress may open.

    Attributes:
        name: the route name used in OPEN.
        backend: where the backend listens (TCP or UNIX).
        proxy_protocol: send a PROXY protocol v2 header with the verified peer claims.
        http_headers: the route carries HTTP/1.x: add the verified peer claims to every
            request as ``X-Ratls-Peer-*`` fields, after removing any the client sent
            (:mod:`gateway._http_inject`).
        require: claim rules the peer must satisfy to use this route (all of them).
        protocol: ``tcp`` (streams, the default) or ``udp`` (datagrams, to a
            ``host:port`` backend; only UDP tunnels may use it, and they no other route).
    """

    name: str
    backend: Endpoint
    proxy_protocol: bool = False
    http_headers: bool = False
    require: tuple[ClaimRule, ...] = ()
    protocol: Literal["tcp", "udp"] = "tcp"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EgressListener:
    """An attested listener of the egress and what its tunnels may reach.

    Attributes:
        name: a label for logs and metrics.
        listen: where ingress gateways connect.
        routes: names of the routes reachable through this listener.
        allow: TCP address targets reachable through this listener (beyond routes).
        require: claim rules every peer of this listener must satisfy.
        allow_udp: UDP address targets reachable through this listener (beyond UDP
            routes); ``allow`` admits none.
    """

    name: str
    listen: Endpoint
    routes: tuple[str, ...]
    allow: tuple[AllowRule, ...] = ()
    require: tuple[ClaimRule, ...] = ()
    allow_udp: tuple[AllowRule, ...] = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """A whole gateway configuration.

    Attributes:
        attestation: attester and policy.
        tls: TLS choices for the link.
        process: how listening ports are shared with other gateway processes.
        timeouts: timeouts.
        limits: limits.
        prewarm: links the ingress makes ahead of need.
        admin: the health/metrics endpoint, if any.
        mappings: port-mapping ingress rules.
        http_connect: HTTP CONNECT ingress rules.
        socks5: SOCKS5 ingress rules.
        transparent: transparent-capture ingress rules.
        udp: UDP mapping ingress rules.
        listeners: egress listeners.
        routes: egress routes, by name.
        source: the file it came from, if any.
    """

    attestation: AttestationSettings
    tls: TlsSettings = field(default_factory=TlsSettings)
    tcp: TcpSettings = field(default_factory=TcpSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    prewarm: PrewarmSettings = field(default_factory=PrewarmSettings)
    admin: AdminConfig | None = None
    mappings: tuple[MappingRule, ...] = ()
    http_connect: tuple[HttpConnectRule, ...] = ()
    socks5: tuple[Socks5Rule, ...] = ()
    transparent: tuple[TransparentRule, ...] = ()
    udp: tuple[UdpRule, ...] = ()
    listeners: tuple[EgressListener, ...] = ()
    routes: Mapping[str, EgressRoute] = field(default_factory=dict)
    source: Path | None = None

    @property
    def ingress_rules(
        self,
    ) -> tuple[IngressRule, ...]:
        """Every ingress rule, of every kind, in configuration order within each kind."""
        return (*self.mappings, *self.http_connect, *self.socks5, *self.transparent, *self.udp)

    @property
    def has_ingress(self) -> bool:
        """Whether any ingress rule is configured."""
        return bool(self.ingress_rules)


# --------------------------------------------------------------------------- loader


class _Checker:
    """Walks the TOML tables, collecting problems instead of stopping at the first."""

    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []

    def problem(self, location: str, message: str) -> None:
        self.problems.append(ConfigProblem(location=location, message=message))

    def table(self, parent: Mapping[str, object], key: str, where: str) -> dict[str, object]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.problem(where, "must be a table")
            return {}
        return value

    def array(self, parent: Mapping[str, object], key: str, where: str) -> list[dict[str, object]]:
        value = parent.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.problem(where, f"must be an array of tables ([[{where}]])")
            return []
        return value

    def unknown(self, table: Mapping[str, object], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.problem(f"{where}.{key}" if where else key, f"unknown key (known: {hint})")

    def string(
        self, table: Mapping[str, object], key: str, where: str, *, required: bool = True
    ) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                self.problem(f"{where}.{key}", "missing")
            return None
        if not isinstance(value, str) or not value:
            self.problem(f"{where}.{key}", "must be a non-empty string")
            return None
        return value

    def endpoint(
        self, table: Mapping[str, object], key: str, where: str, *, listen: bool
    ) -> Endpoint | None:
        text = self.string(table, key, where)
        if text is None:
            return None
        try:
            endpoint = parse_endpoint(text, base_dir=self.base_dir)
        except ValueError as exc:
            self.problem(f"{where}.{key}", str(exc))
            return None
        if not listen and endpoint.kind == "tcp" and endpoint.port == 0:
            self.problem(f"{where}.{key}", "port 0 is only for listeners")
            return None
        if not listen and endpoint.kind == "systemd":
            self.problem(
                f"{where}.{key}",
                "systemd: names listening sockets passed to us; give host:port or unix:PATH",
            )
            return None
        return endpoint

    def number(
        self,
        table: Mapping[str, object],
        key: str,
        where: str,
        default: float,
        *,
        minimum: float = 0.0,
        allow_zero: bool = True,
    ) -> float:
        value = table.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.problem(f"{where}.{key}", "must be a number")
            return default
        if value < minimum or (value == 0 and not allow_zero):
            bound = f"> {minimum}" if not allow_zero else f">= {minimum}"
            self.problem(f"{where}.{key}", f"must be {bound}")
            return default
        return float(value)

    def integer(
        self,
        table: Mapping[str, object],
        key: str,
        where: str,
        default: int,
        *,
        low: int,
        high: int,
    ) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{where}.{key}", "must be an integer")
            return default
        if not low <= value <= high:
            self.problem(f"{where}.{key}", f"must be {low}..{high}")
            return default
        return value

    def boolean(self, table: Mapping[str, object], key: str, where: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            self.problem(f"{where}.{key}", "must be true or false")
            return False
        return value

    def unique(self, first: dict[str, str], name: str, where: str) -> None:
        """Names key listeners, their metrics and reloads: unique within each kind."""
        if name in first:
            self.problem(f"{where}.name", f"duplicate name {name!r} (also {first[name]})")
        first.setdefault(name, where)

    def claim_rules(self, table: Mapping[str, object], where: str) -> tuple[ClaimRule, ...]:
        value = table.get("require", {})
        if not isinstance(value, dict):
            self.problem(f"{where}.require", 'must be a table: { "claim.path" = ["value", ...] }')
            return ()
        rules: list[ClaimRule] = []
        for path, allowed in value.items():
            location = f'{where}.require."{path}"'
            if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", path):
                self.problem(location, "a claim path is dotted names, e.g. snp.measurement")
                continue
            values = [allowed] if isinstance(allowed, str) else allowed
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, str) for v in values)
            ):
                self.problem(location, "must be a string or a non-empty array of strings")
                continue
            rules.append(ClaimRule(path=path, allowed=frozenset(values)))
        return tuple(rules)

    def name(self, table: Mapping[str, object], where: str, default: str) -> str:
        value = table.get("name", default)
        if not isinstance(value, str) or not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value
        ):
            self.problem(f"{where}.name", "must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
            return default
        return value


_PORT_RANGE: Final = re.compile(r"(?P<host>.+):(?P<low>[0-9]{1,5})-(?P<high>[0-9]{1,5})")


def _port_range(
    checker: _Checker, table: Mapping[str, object], key: str, where: str
) -> tuple[dict[str, object], int] | None:
    """``host:first-last`` at ``table[key]``: the table with ``host:first`` there, and the count.

    Anything else comes back unchanged with a count of 1; None after a problem.
    """
    text = table.get(key)
    match = _PORT_RANGE.fullmatch(text) if isinstance(text, str) else None
    if match is None or not isinstance(text, str) or text.startswith("unix:"):
        return dict(table), 1
    low, high = int(match["low"]), int(match["high"])
    if not 1 <= low <= high <= 65535:
        checker.problem(f"{where}.{key}", f"port range {low}-{high} is not first-last in 1..65535")
        return None
    if high - low + 1 > MAX_MAPPING_PORTS:
        checker.problem(
            f"{where}.{key}", f"{high - low + 1} ports; a rule maps {MAX_MAPPING_PORTS} at most"
        )
        return None
    return {**table, key: f"{match['host']}:{low}"}, high - low + 1


def _mapping(c: _Checker, t: Mapping[str, object], where: str, name: str) -> MappingRule | None:
    listen_span = _port_range(c, t, "listen", where)
    target_span = _port_range(c, t, "target", where)
    listen = c.endpoint(listen_span[0], "listen", where, listen=True) if listen_span else None
    egress = c.endpoint(t, "egress", where, listen=False)
    target = _target(c, target_span[0], where) if target_span else None
    if not (listen and egress and target and listen_span and target_span):
        return None
    ports, target_ports = listen_span[1], target_span[1]
    if ports == 1 and target_ports == 1:
        return MappingRule(name=name, listen=listen, egress=egress, target=target)
    if listen.kind != "tcp":  # pragma: no cover - a unix: path never matches a port range
        return None
    if not isinstance(target, AddressTarget):
        c.problem(
            f"{where}.target",
            "a port range maps port by port: give the target as host:first-last",
        )
        return None
    if target_ports != ports:
        c.problem(
            f"{where}.target",
            f"{target_ports} target port(s) for {ports} listening port(s): "
            "the ranges must have the same length",
        )
        return None
    return MappingRule(name=name, listen=listen, egress=egress, target=target, ports=ports)


def _target(
    checker: _Checker, table: Mapping[str, object], where: str
) -> AddressTarget | RouteTarget | None:
    text = checker.string(table, "target", where)
    if text is None:
        return None
    try:
        if ":" in text:
            endpoint = parse_endpoint(text)
            if endpoint.kind != "tcp" or endpoint.port == 0:
                raise ValueError("a target address needs host:port with port 1..65535")
            return endpoint.as_target()
        return RouteTarget(name=text)
    except ValueError as exc:
        checker.problem(f"{where}.target", f"neither a route name nor host:port ({exc})")
        return None


def _timeouts(c: _Checker, root: Mapping[str, object]) -> Timeouts:
    t = c.table(root, "timeouts", "timeouts")
    keys = {
        "connect",
        "handshake",
        "idle",
        "half_close",
        "max_lifetime",
        "max_attestation_age",
        "proxy_request",
        "open_wait",
        "udp_idle",
    }
    c.unknown(t, keys, "timeouts")
    d = Timeouts()
    return Timeouts(
        connect=c.number(t, "connect", "timeouts", d.connect, allow_zero=False),
        handshake=c.number(t, "handshake", "timeouts", d.handshake, allow_zero=False),
        idle=c.number(t, "idle", "timeouts", d.idle),
        half_close=c.number(t, "half_close", "timeouts", d.half_close),
        max_lifetime=c.number(t, "max_lifetime", "timeouts", d.max_lifetime),
        max_attestation_age=c.number(t, "max_attestation_age", "timeouts", d.max_attestation_age),
        proxy_request=c.number(t, "proxy_request", "timeouts", d.proxy_request, allow_zero=False),
        open_wait=c.number(t, "open_wait", "timeouts", d.open_wait, allow_zero=False),
        udp_idle=c.number(t, "udp_idle", "timeouts", d.udp_idle, allow_zero=False),
    )


def _prewarm(c: _Checker, root: Mapping[str, object]) -> PrewarmSettings:
    t = c.table(root, "prewarm", "prewarm")
    c.unknown(t, {"links", "max_idle", "reuse"}, "prewarm")
    d = PrewarmSettings()
    settings = PrewarmSettings(
        links=c.integer(t, "links", "prewarm", d.links, low=0, high=MAX_PREWARM_LINKS),
        max_idle=c.number(t, "max_idle", "prewarm", d.max_idle, allow_zero=False),
        reuse=c.boolean(t, "reuse", "prewarm") if "reuse" in t else d.reuse,
    )
    if settings.reuse and settings.links == 0:
        c.problem("prewarm.reuse", "kept links go to the ready ones: set prewarm.links too")
    return settings


def _limits(c: _Checker, root: Mapping[str, object]) -> Limits:
    t = c.table(root, "limits", "limits")
    c.unknown(t, {"max_tunnels", "rate_per_source", "rate_burst", "buffer_size"}, "limits")
    d = Limits()
    return Limits(
        max_tunnels=c.integer(t, "max_tunnels", "limits", d.max_tunnels, low=1, high=1_000_000),
        rate_per_source=c.number(t, "rate_per_source", "limits", d.rate_per_source),
        rate_burst=c.integer(t, "rate_burst", "limits", d.rate_burst, low=1, high=1_000_000),
        buffer_size=c.integer(
            t, "buffer_size", "limits", d.buffer_size, low=1024, high=MAX_BUFFER_SIZE
        ),
    )


def _process(c: _Checker, root: Mapping[str, object]) -> ProcessSettings:
    t = c.table(root, "process", "process")
    c.unknown(t, {"reuse_port", "workers"}, "process")
    d = ProcessSettings()
    return ProcessSettings(
        reuse_port=c.boolean(t, "reuse_port", "process") if "reuse_port" in t else d.reuse_port,
        workers=c.integer(t, "workers", "process", d.workers, low=1, high=MAX_WORKERS),
    )


def _tcp(c: _Checker, root: Mapping[str, object]) -> TcpSettings:
    t = c.table(root, "tcp", "tcp")
    c.unknown(
        t, {"keepalive", "keepalive_idle", "keepalive_interval", "keepalive_count", "mark"}, "tcp"
    )
    d = TcpSettings()
    seconds = {"low": 1, "high": _MAX_KEEPALIVE_SECONDS}
    return TcpSettings(
        keepalive=c.boolean(t, "keepalive", "tcp") if "keepalive" in t else d.keepalive,
        keepalive_idle=c.integer(t, "keepalive_idle", "tcp", d.keepalive_idle, **seconds),
        keepalive_interval=c.integer(
            t, "keepalive_interval", "tcp", d.keepalive_interval, **seconds
        ),
        keepalive_count=c.integer(
            t, "keepalive_count", "tcp", d.keepalive_count, low=1, high=_MAX_KEEPALIVE_COUNT
        ),
        mark=c.integer(t, "mark", "tcp", d.mark, low=0, high=0xFFFFFFFF),
    )


def _tls(c: _Checker, root: Mapping[str, object]) -> TlsSettings:
    t = c.table(root, "tls", "tls")
    c.unknown(t, {"groups"}, "tls")
    if "groups" not in t:
        return TlsSettings()
    value = t["groups"]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        c.problem("tls.groups", "must be a non-empty array of group names")
        return TlsSettings()
    groups = tuple(str(v) for v in value)
    # Ask OpenSSL now, so that `check` catches a name it does not know.
    try:
        set_key_exchange_groups(SSL.Context(SSL.TLS_METHOD), groups)
    except (ValueError, NotImplementedError) as exc:
        c.problem("tls.groups", f"{exc} (OpenSSL names such as X25519MLKEM768, X25519, P-256)")
        return TlsSettings()
    return TlsSettings(groups=groups)


def _attestation(c: _Checker, root: Mapping[str, object]) -> AttestationSettings:
    t = c.table(root, "attestation", "attestation")
    if "attestation" not in root:
        c.problem("attestation", "missing: every gateway attests and verifies its peers")
    attester = c.string(t, "attester", "attestation") if "attestation" in root else None
    policy_text = c.string(t, "policy", "attestation", required=False)
    policy: Path | None = None
    if policy_text is not None:
        policy = Path(policy_text)
        if c.base_dir is not None and not policy.is_absolute():
            policy = c.base_dir / policy
    options = {k: v for k, v in t.items() if k not in {"attester", "policy"}}
    return AttestationSettings(
        attester=attester or "", policy=policy, options=options, base_dir=c.base_dir
    )


def _ingress(
    c: _Checker, root: Mapping[str, object]
) -> tuple[
    tuple[MappingRule, ...],
    tuple[HttpConnectRule, ...],
    tuple[Socks5Rule, ...],
    tuple[TransparentRule, ...],
]:
    ingress = c.table(root, "ingress", "ingress")
    c.unknown(ingress, {"mapping", "http_connect", "socks5", "transparent", "udp"}, "ingress")
    mapping_names: dict[str, str] = {}
    proxy_names: dict[str, str] = {}
    socks_names: dict[str, str] = {}
    mappings: list[MappingRule] = []
    for i, t in enumerate(c.array(ingress, "mapping", "ingress.mapping")):
        where = f"ingress.mapping[{i}]"
        c.unknown(t, {"name", "listen", "egress", "target"}, where)
        name = c.name(t, where, f"mapping-{i}")
        c.unique(mapping_names, name, where)
        rule = _mapping(c, t, where, name)
        if rule is not None:
            mappings.append(rule)
    proxies: list[HttpConnectRule] = []
    for i, t in enumerate(c.array(ingress, "http_connect", "ingress.http_connect")):
        where = f"ingress.http_connect[{i}]"
        c.unknown(t, {"name", "listen", "egress", "attestation_headers"}, where)
        name = c.name(t, where, f"http-connect-{i}")
        c.unique(proxy_names, name, where)
        listen = c.endpoint(t, "listen", where, listen=True)
        egress = c.endpoint(t, "egress", where, listen=False)
        headers = c.boolean(t, "attestation_headers", where)
        if listen and egress:
            proxies.append(
                HttpConnectRule(
                    name=name, listen=listen, egress=egress, attestation_headers=headers
                )
            )
    socks: list[Socks5Rule] = []
    for i, t in enumerate(c.array(ingress, "socks5", "ingress.socks5")):
        where = f"ingress.socks5[{i}]"
        c.unknown(t, {"name", "listen", "egress", "users", "udp"}, where)
        name = c.name(t, where, f"socks5-{i}")
        c.unique(socks_names, name, where)
        listen = c.endpoint(t, "listen", where, listen=True)
        egress = c.endpoint(t, "egress", where, listen=False)
        users: list[SocksUser] = []
        for j, u in enumerate(c.array(t, "users", f"{where}.users")):
            uwhere = f"{where}.users[{j}]"
            c.unknown(u, {"username", "password"}, uwhere)
            username = c.string(u, "username", uwhere)
            password = c.string(u, "password", uwhere)
            for key, value in (("username", username), ("password", password)):
                if value is not None and len(value.encode()) > 255:
                    c.problem(f"{uwhere}.{key}", "longer than 255 bytes (RFC 1929)")
            if username and password:
                users.append(SocksUser(username=username, password=password))
        udp = c.boolean(t, "udp", where) if "udp" in t else False
        if udp and listen is not None and listen.kind != "tcp":
            c.problem(f"{where}.udp", "UDP ASSOCIATE relays on the listen address: give host:port")
        if listen and egress:
            socks.append(
                Socks5Rule(name=name, listen=listen, egress=egress, users=tuple(users), udp=udp)
            )
    transparent: list[TransparentRule] = []
    transparent_names: dict[str, str] = {}
    for i, t in enumerate(c.array(ingress, "transparent", "ingress.transparent")):
        where = f"ingress.transparent[{i}]"
        c.unknown(t, {"name", "listen", "egress", "mode"}, where)
        name = c.name(t, where, f"transparent-{i}")
        c.unique(transparent_names, name, where)
        listen = c.endpoint(t, "listen", where, listen=True)
        egress = c.endpoint(t, "egress", where, listen=False)
        mode = t.get("mode", "redirect")
        if mode not in ("redirect", "tproxy"):
            c.problem(f"{where}.mode", 'must be "redirect" or "tproxy"')
        elif listen is not None and listen.kind != "tcp":
            c.problem(f"{where}.listen", "netfilter diverts TCP: give host:port")
        elif listen and egress:
            transparent.append(
                TransparentRule(
                    name=name,
                    listen=listen,
                    egress=egress,
                    mode="tproxy" if mode == "tproxy" else "redirect",
                )
            )
    return tuple(mappings), tuple(proxies), tuple(socks), tuple(transparent)


def _egress(
    c: _Checker, root: Mapping[str, object]
) -> tuple[tuple[EgressListener, ...], dict[str, EgressRoute]]:
    egress = c.table(root, "egress", "egress")
    c.unknown(egress, {"listener", "route"}, "egress")
    routes: dict[str, EgressRoute] = {}
    for i, t in enumerate(c.array(egress, "route", "egress.route")):
        where = f"egress.route[{i}]"
        c.unknown(
            t, {"name", "backend", "proxy_protocol", "http_headers", "require", "protocol"}, where
        )
        if "name" not in t:
            c.problem(f"{where}.name", "missing")
            continue
        name = c.name(t, where, "")
        backend = c.endpoint(t, "backend", where, listen=False)
        proxy = c.boolean(t, "proxy_protocol", where)
        http_headers = c.boolean(t, "http_headers", where)
        require = c.claim_rules(t, where)
        protocol = t.get("protocol", "tcp")
        if protocol not in ("tcp", "udp"):
            c.problem(f"{where}.protocol", 'must be "tcp" or "udp"')
            continue
        if protocol == "udp":
            if backend is not None and backend.kind != "tcp":
                c.problem(f"{where}.backend", "a UDP route needs host:port")
                continue
            for key in ("proxy_protocol", "http_headers"):
                if t.get(key):
                    c.problem(f"{where}.{key}", "only for TCP routes")
        if name in routes:
            c.problem(f"{where}.name", f"duplicate route name {name!r}")
        elif name and backend:
            routes[name] = EgressRoute(
                name=name,
                backend=backend,
                proxy_protocol=proxy,
                http_headers=http_headers,
                require=require,
                protocol="udp" if protocol == "udp" else "tcp",
            )
    listener_names: dict[str, str] = {}
    listeners: list[EgressListener] = []
    for i, t in enumerate(c.array(egress, "listener", "egress.listener")):
        where = f"egress.listener[{i}]"
        c.unknown(t, {"name", "listen", "routes", "allow", "allow_udp", "require"}, where)
        name = c.name(t, where, f"listener-{i}")
        c.unique(listener_names, name, where)
        listen = c.endpoint(t, "listen", where, listen=True)
        names = t.get("routes", list(routes))
        chosen: list[str] = []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            c.problem(f"{where}.routes", "must be an array of route names")
        else:
            for j, n in enumerate(names):
                if n not in routes:
                    c.problem(f"{where}.routes[{j}]", f"no route named {n!r}")
                else:
                    chosen.append(n)
        allow = _allow_patterns(c, t, "allow", where)
        allow_udp = _allow_patterns(c, t, "allow_udp", where)
        require = c.claim_rules(t, where)
        if listen:
            listeners.append(
                EgressListener(
                    name=name,
                    listen=listen,
                    routes=tuple(chosen),
                    allow=allow,
                    require=require,
                    allow_udp=allow_udp,
                )
            )
    return tuple(listeners), routes


def _udp_rules(c: _Checker, root: Mapping[str, object]) -> tuple[UdpRule, ...]:
    ingress = c.table(root, "ingress", "ingress")
    names: dict[str, str] = {}
    rules: list[UdpRule] = []
    for i, t in enumerate(c.array(ingress, "udp", "ingress.udp")):
        where = f"ingress.udp[{i}]"
        c.unknown(t, {"name", "listen", "egress", "target"}, where)
        name = c.name(t, where, f"udp-{i}")
        c.unique(names, name, where)
        listen = c.endpoint(t, "listen", where, listen=True)
        egress = c.endpoint(t, "egress", where, listen=False)
        target = _target(c, t, where)
        if listen is not None and listen.kind != "tcp":
            c.problem(f"{where}.listen", "UDP listens on host:port")
        elif listen and egress and target:
            datagram = dataclasses.replace(target, datagram=True)
            rules.append(UdpRule(name=name, listen=listen, egress=egress, target=datagram))
    return tuple(rules)


def _allow_patterns(
    c: _Checker, table: Mapping[str, object], key: str, where: str
) -> tuple[AllowRule, ...]:
    allow: list[AllowRule] = []
    patterns = table.get(key, [])
    if not isinstance(patterns, list):
        c.problem(f"{where}.{key}", "must be an array of HOST:PORTS patterns")
        patterns = []
    for j, p in enumerate(patterns):
        try:
            allow.append(AllowRule.parse(p))
        except ValueError as exc:
            c.problem(f"{where}.{key}[{j}]", str(exc))
    return tuple(allow)


def _admin(c: _Checker, root: Mapping[str, object]) -> AdminConfig | None:
    if "admin" not in root:
        return None
    t = c.table(root, "admin", "admin")
    c.unknown(t, {"listen"}, "admin")
    listen = c.endpoint(t, "listen", "admin", listen=True)
    return AdminConfig(listen=listen) if listen else None


def parse_config(data: Mapping[str, object], *, source: Path | None = None) -> GatewayConfig:
    """Validate a decoded TOML document.

    Args:
        data: the document (as from :func:`tomllib.loads`).
        source: the file it came from; relative paths are taken relative to its directory.

    Returns:
        The configuration.

    Raises:
        ConfigError: listing every problem, each with its location.
    """
    c = _Checker(source.parent if source is not None else None)
    c.unknown(
        data,
        {
            "attestation",
            "tls",
            "tcp",
            "process",
            "timeouts",
            "limits",
            "prewarm",
            "admin",
            "ingress",
            "egress",
        },
        "",
    )
    attestation = _attestation(c, data)
    tls = _tls(c, data)
    tcp = _tcp(c, data)
    process = _process(c, data)
    timeouts = _timeouts(c, data)
    limits = _limits(c, data)
    prewarm = _prewarm(c, data)
    admin = _admin(c, data)
    mappings, proxies, socks, transparent = _ingress(c, data)
    udp = _udp_rules(c, data)
    listeners, routes = _egress(c, data)
    if not (mappings or proxies or socks or transparent or udp or listeners) and not c.problems:
        c.problem("", "nothing to do: no [[ingress.*]] rule and no [[egress.listener]]")
    seen: dict[str, str] = {}
    for where, endpoint in (
        *(
            (f"ingress.mapping[{i}].listen", dataclasses.replace(r.listen, port=port))
            for i, r in enumerate(mappings)
            for port in r.listen_ports
        ),
        *((f"ingress.http_connect[{i}].listen", r.listen) for i, r in enumerate(proxies)),
        *((f"ingress.socks5[{i}].listen", r.listen) for i, r in enumerate(socks)),
        *((f"ingress.transparent[{i}].listen", r.listen) for i, r in enumerate(transparent)),
        *((f"ingress.udp[{i}].listen", _udp_key(r.listen)) for i, r in enumerate(udp)),
        *((f"egress.listener[{i}].listen", r.listen) for i, r in enumerate(listeners)),
        *((("admin.listen", admin.listen),) if admin else ()),
    ):
        key = str(endpoint)
        if (endpoint.kind != "tcp" or endpoint.port != 0) and key in seen:
            c.problem(where, f"{key} is already used by {seen[key]}")
        seen.setdefault(key, where)
        # Workers each bind TCP and UDP listeners with SO_REUSEPORT (UNIX and systemd
        # sockets the supervisor binds or adopts and passes on; it alone binds [admin]).
        shared_port = endpoint.kind == "tcp" and where != "admin.listen"
        if process.workers > 1 and shared_port and endpoint.port == 0:
            c.problem(where, "port 0 gives each worker another port: give a fixed port")
    if c.problems:
        raise ConfigError(c.problems)
    return GatewayConfig(
        attestation=attestation,
        tls=tls,
        tcp=tcp,
        process=process,
        timeouts=timeouts,
        limits=limits,
        prewarm=prewarm,
        admin=admin,
        mappings=mappings,
        http_connect=proxies,
        socks5=socks,
        transparent=transparent,
        udp=udp,
        listeners=listeners,
        routes=routes,
        source=source,
    )


def _udp_key(endpoint: Endpoint) -> Endpoint:
    """A UDP listen address, kept apart from TCP ones on the same port (no conflict)."""
    return dataclasses.replace(endpoint, host=f"udp/{endpoint.host}")


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway TOML file.

    Args:
        path: the file.

    Returns:
        The configuration.

    Raises:
        ConfigError: unreadable file, TOML syntax error (with line and column), or every
            validation problem with its location.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(location=str(path), message=str(exc))]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(location=str(path), message=str(exc))]) from exc
    return parse_config(data, source=path.resolve())
