"""Shared run-time state of a gateway process: limits, live tunnels, logs, sockets.

Everything the ingress and egress handlers share lives in one :class:`Runtime`: the
configuration, this gateway's identity, metrics, the admission control (concurrent
tunnel limit and per-source rate limit), the table of live tunnels shown by /status, the
structured logger and the drain flag.  It also holds the small socket helpers that turn
a configured :class:`~gateway._config.Endpoint` into listeners or a connection (TCP
over IPv4/IPv6, or UNIX).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, TypeVar, final

import trio

from ._activation import take as take_passed_sockets
from ._activation import take_if_registered
from ._attestation import peer_summary
from ._config import HttpConnectRule, MappingRule, Socks5Rule, TransparentRule, UdpRule
from ._deadlines import Deadlines
from ._metrics import GatewayMetrics
from ._tunnel import Tunnel, TunnelSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._attestation import GatewayIdentity
    from ._config import EgressListener, Endpoint, GatewayConfig, TcpSettings
    from ._prewarm import LinkPool
    from ._tunnel import LinkChannel, TunnelAttestation, TunnelOutcome

__all__ = [
    "LOGGER_NAME",
    "AdmissionControl",
    "JsonFormatter",
    "Runtime",
    "TunnelRecord",
    "apply_tcp_settings",
    "bind_unix_listener",
    "check_mark",
    "connect_endpoint",
    "connect_error_kind",
    "connect_tcp",
    "describe_peer",
    "log_event",
    "log_tunnel",
    "open_endpoint_listeners",
    "source_of",
]

_IngressRule = TypeVar(
    "_IngressRule", MappingRule, HttpConnectRule, Socks5Rule, TransparentRule, UdpRule
)


def _named(rules: tuple[_IngressRule, ...], name: str) -> _IngressRule | None:
    for rule in rules:
        if rule.name == name:
            return rule
    return None


#: Name of the logger every gateway record goes to.
LOGGER_NAME: Final = "ratls.gateway"

# Buckets of the per-source rate limiter are dropped once this many sources are tracked
# and the oldest are full again, so a flood of spoofed-looking sources cannot grow the
# table without bound.
_MAX_TRACKED_SOURCES: Final = 10_000

_logger = logging.getLogger(LOGGER_NAME)


@final
class JsonFormatter(logging.Formatter):
    """Formats records as one JSON object per line (fields from ``extra={"fields": ...}``).

    Args:
        worker: this process's worker index under a supervisor (``[process] workers``),
            added to every line as ``"worker"``; None for a gateway on its own.
    """

    def __init__(self, *, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        body: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            body["worker"] = self._worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body.update(fields)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, sort_keys=True)


def log_event(message: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one structured record (never pass secrets: fields are written as they are)."""
    _logger.log(level, message, extra={"fields": fields})


#: Tunnel results that are no failure: "unused" is a link made ahead of need (or kept
#: after a tunnel) that its ingress closed without an OPEN.
NOT_FAILED: Final = frozenset({"ok", "unused"})


def log_tunnel(
    record: TunnelRecord, started: float, fields: Mapping[str, object], *, mode: str | None = None
) -> None:
    """The access line of a tunnel that ended (``fields``: its result, detail and more)."""
    line: dict[str, object] = {"side": record.side}
    if mode is not None:
        line["mode"] = mode
    line.update(
        rule=record.rule,
        id=record.id,
        client=record.client,
        target=record.target,
        peer=record.peer,
        tls=record.tls,
        duration=round(trio.current_time() - started, 6),
        bytes_up=record.bytes_up,
        bytes_down=record.bytes_down,
    )
    line.update(fields)
    _logger.info("tunnel", extra={"fields": line})


def describe_peer(address: object) -> str:
    """A socket peer address as text: ``"192.0.2.1:5555"``, ``"[::1]:5555"`` or ``"unix"``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, str | bytes):
        return "unix"
    return "unknown"


def source_of(client: str) -> str:
    """The rate-limiting key of a client address text: its host part."""
    if client.startswith("["):
        return client[1 : client.find("]")]
    return client.rpartition(":")[0] or client


@final
class AdmissionControl:
    """Concurrent-tunnel limit plus a per-source token bucket.

    Args:
        max_tunnels: how many tunnels may be open at once.
        rate: new tunnels per second per source (0 = unlimited).
        burst: bucket size.
    """

    def __init__(self, max_tunnels: int, rate: float, burst: int) -> None:
        self.max_tunnels = max_tunnels
        self.rate = rate
        self.burst = burst
        self.active = 0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._idle: trio.Event | None = None

    def admit(self, source: str, now: float) -> str | None:
        """Try to admit a new tunnel from ``source``.

        Returns:
            None when admitted (call :meth:`release` later), else ``"limit-reached"`` or
            ``"rate-limited"``.
        """
        if self.active >= self.max_tunnels:
            return "limit-reached"
        if self.rate > 0:
            tokens, last = self._buckets.get(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[source] = (tokens, now)
                return "rate-limited"
            self._buckets[source] = (tokens - 1.0, now)
            if len(self._buckets) > _MAX_TRACKED_SOURCES:
                self._prune(now)
        self.active += 1
        return None

    def _prune(self, now: float) -> None:
        full = [
            s
            for s, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for source in full:
            del self._buckets[source]

    def release(self) -> None:
        """A tunnel admitted earlier has ended."""
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Wait until no admitted tunnel is left."""
        if self.active == 0:
            await trio.lowlevel.checkpoint()
            return
        if self._idle is None:
            self._idle = trio.Event()
        await self._idle.wait()


@final
@dataclass(slots=True, kw_only=True)
class TunnelRecord:
    """A live tunnel, as /status shows it (no secrets).

    Attributes:
        id: process-unique tunnel id.
        side: ``"ingress"`` or ``"egress"``.
        rule: the ingress rule or egress listener name.
        client: the client's address (as told by the ingress on the egress side).
        target: the OPEN target.
        started: wall-clock start (seconds since the epoch).
        peer: one-line summary of the verified peer.
        tls: protocol version and key exchange group of the link, e.g.
            ``"TLSv1.3 X25519MLKEM768"`` (shows whether the tunnel is post-quantum).
        bytes_up: bytes from client to backend so far.
        bytes_down: bytes from backend to client so far.
    """

    id: int
    side: str
    rule: str
    client: str
    target: str = ""
    started: float = field(default_factory=time.time)
    peer: str = ""
    tls: str = ""
    bytes_up: int = 0
    bytes_down: int = 0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly view."""
        return {
            "id": self.id,
            "side": self.side,
            "rule": self.rule,
            "client": self.client,
            "target": self.target,
            "age": round(time.time() - self.started, 3),
            "peer": self.peer,
            "tls": self.tls,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


@final
class Runtime:
    """The state shared by every listener and tunnel of one gateway process.

    Args:
        config: the configuration.
        identity: this gateway's TLS identity and attestation configuration.
        metrics: where metrics go (a fresh set by default).
    """

    def __init__(
        self,
        config: GatewayConfig,
        identity: GatewayIdentity,
        *,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        limits = config.limits
        self.admission = AdmissionControl(
            limits.max_tunnels, limits.rate_per_source, limits.rate_burst
        )
        self.tunnels: dict[int, TunnelRecord] = {}
        self.live: dict[int, Tunnel] = {}
        # Re-attestation deadlines of every tunnel, run by one task of the daemon.
        self.deadlines = Deadlines()
        self._ids = itertools.count(1)
        self.ready = False
        self.own_evidence_at: float | None = None
        self.draining = False
        #: Egress links waiting for their (next) OPEN: a drain ends these waits at once,
        #: since such a link carries no tunnel yet.
        self.open_waits: set[trio.CancelScope] = set()
        self.started = time.time()
        #: Links made ahead of need (``[prewarm]``), while the daemon runs its pool.
        self.link_pool: LinkPool | None = None

    def start_draining(self) -> None:
        """Refuse new tunnels from now on, and close links still waiting for OPEN."""
        self.draining = True
        for scope in self.open_waits:
            scope.cancel()

    def current_rule(self, rule: _IngressRule) -> _IngressRule:
        """The configuration now in force for the ingress rule ``rule`` (same kind and name).

        Listeners capture their rule when they start; a reload replaces the configuration
        (with the same listen addresses), and every new connection must follow the new
        one: another target or egress, other SOCKS users, attestation headers on or off.
        """
        if isinstance(rule, MappingRule):
            current = _named(self.config.mappings, rule.name)
        elif isinstance(rule, HttpConnectRule):
            current = _named(self.config.http_connect, rule.name)
        elif isinstance(rule, Socks5Rule):
            current = _named(self.config.socks5, rule.name)
        elif isinstance(rule, TransparentRule):
            current = _named(self.config.transparent, rule.name)
        else:
            current = _named(self.config.udp, rule.name)
        if current is not None:
            return current
        return rule  # pragma: no cover - a reload cannot remove a listener's rule

    def egress_listener(self, name: str) -> EgressListener | None:
        """The current configuration of the egress listener called ``name``."""
        for listener in self.config.listeners:
            if listener.name == name:
                return listener
        return None

    def admit_tunnel(
        self, side: str, rule: str, client: str, *, mode: str | None = None
    ) -> str | None:
        """Count a new tunnel and admit it (not draining, within the limits).

        Returns:
            None when admitted (then :meth:`begin_tunnel` follows); else the refusal,
            already counted and logged as the tunnel's access line.
        """
        metrics = self.metrics
        metrics.tunnels_total.inc(side=side, rule=rule)
        refusal = "shutting-down" if self.draining else None
        refusal = refusal or self.admission.admit(source_of(client), trio.current_time())
        if refusal is not None:
            metrics.tunnels_failed.inc(side=side, rule=rule, reason=refusal)
            line: dict[str, object] = {"side": side, "rule": rule, "client": client}
            if mode is not None:
                line["mode"] = mode
            line["result"] = refusal
            _logger.info("tunnel", extra={"fields": line})
        return refusal

    def begin_tunnel(self, side: str, rule: str, client: str) -> TunnelRecord:
        """Register an admitted tunnel as live (``/status``, the active gauge)."""
        record = TunnelRecord(id=next(self._ids), side=side, rule=rule, client=client)
        self.tunnels[record.id] = record
        self.metrics.tunnels_active.add(1, side=side, rule=rule)
        return record

    def finish_tunnel(
        self,
        record: TunnelRecord,
        started: float,
        fields: Mapping[str, object],
        *,
        mode: str | None = None,
    ) -> None:
        """Release a tunnel's admission slot, forget it, count a failure, log its line."""
        self.admission.release()
        self.tunnels.pop(record.id, None)
        side, rule = record.side, record.rule
        self.metrics.tunnels_active.add(-1, side=side, rule=rule)
        result = str(fields["result"])
        if result not in NOT_FAILED:
            self.metrics.tunnels_failed.inc(side=side, rule=rule, reason=result)
        log_tunnel(record, started, fields, mode=mode)

    def tunnel_settings(self) -> TunnelSettings:
        """The tunnel timers and sizes the current configuration asks for."""
        t = self.config.timeouts
        return TunnelSettings(
            buffer_size=self.config.limits.buffer_size,
            idle=t.idle,
            half_close=t.half_close,
            max_lifetime=t.max_lifetime,
            reattest_interval=t.max_attestation_age,
            reattest_timeout=t.handshake,
        )

    def release_idle_buffers(self, quiet_since: float) -> int:
        """Let every live tunnel quiet since ``quiet_since`` give back its burst buffers.

        Returns:
            How many tunnels released buffers.
        """
        return sum(tunnel.release_idle_buffers(quiet_since) for tunnel in self.live.values())

    async def run_tunnel(
        self,
        record: TunnelRecord,
        fields: dict[str, object],
        channel: LinkChannel,
        local: trio.abc.Stream,
        *,
        attestation: TunnelAttestation | None,
        initial_data: bytes = b"",
    ) -> TunnelOutcome:
        """Run one opened tunnel with this gateway's settings, metrics and bookkeeping.

        The side (ingress or egress) and the rule come from ``record``; bytes and
        re-attestations are counted in ``record`` and the metrics, the tunnel is listed in
        :attr:`live` while it runs (a policy reload re-attests it), and the access-log
        ``fields`` get its result.  Closing the streams stays with the caller.
        """
        side, rule, metrics = record.side, record.rule, self.metrics
        if attestation is not None:
            record.peer = peer_summary(attestation.peer_result)
        stream = channel.stream
        # Interned: thousands of tunnels share a handful of these strings.
        record.tls = sys.intern(f"{stream.tls_version} {stream.key_exchange_group or '?'}")

        def on_bytes(direction: Literal["up", "down"], n: int) -> None:
            if direction == "up":
                record.bytes_up += n
            else:
                record.bytes_down += n
            metrics.bytes.inc(n, side=side, rule=rule, direction=direction)

        def on_reattest(ok: bool, seconds: float) -> None:
            metrics.reattest_total.inc(side=side, outcome="ok" if ok else "failed")
            metrics.reattest_seconds.observe(seconds, side=side)

        tunnel = Tunnel(
            channel,
            local,
            settings=self.tunnel_settings(),
            local_is_client=side == "ingress",
            attestation=attestation,
            on_bytes=on_bytes,
            on_reattest=on_reattest,
            initial_data=initial_data,
            deadlines=self.deadlines,
        )
        self.live[record.id] = tunnel
        try:
            outcome = await tunnel.run()
        finally:
            self.live.pop(record.id, None)
        fields.update(result=outcome.result, reattestations=outcome.reattestations)
        if outcome.detail:
            fields["detail"] = outcome.detail
        return outcome


# --------------------------------------------------------------------------- sockets


def bind_unix_listener(path: str, backlog: int) -> socket.socket:
    """A listening UNIX stream socket at ``path``, replacing a stale socket file there."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def _unix_listener(path: str, backlog: int) -> trio.SocketListener:
    await trio.lowlevel.checkpoint()
    return trio.SocketListener(trio.socket.from_stdlib_socket(bind_unix_listener(path, backlog)))


async def open_endpoint_listeners(
    endpoint: Endpoint, *, backlog: int = 128, reuse_port: bool = False, transparent: bool = False
) -> list[trio.SocketListener]:
    """Listeners for ``endpoint`` (one per address family for a TCP name; every socket
    systemd passed under the name for ``systemd:NAME``).

    Args:
        endpoint: where to listen.
        backlog: the accept queue length.
        reuse_port: bind TCP sockets with ``SO_REUSEPORT`` (``[process] reuse_port``).
        transparent: bind TCP sockets with ``IP_TRANSPARENT``/``IPV6_TRANSPARENT``, so
            that they accept connections netfilter's TPROXY target diverts to them
            (needs ``CAP_NET_ADMIN``).

    Raises:
        OSError: the address cannot be bound, or an option is refused (``EPERM`` for
            ``transparent`` without ``CAP_NET_ADMIN``).
    """
    if endpoint.kind == "unix":
        # A worker ([process] workers) accepts on the socket its supervisor bound.
        shared = take_if_registered(f"unix:{endpoint.path}")
        if shared:
            return [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in shared]
        return [await _unix_listener(endpoint.path, backlog)]
    if endpoint.kind == "systemd":
        # Bound (and configured) by systemd; ours to accept on.
        return [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            for sock in take_passed_sockets(endpoint.path)
        ]
    if reuse_port or transparent:
        return await _tcp_listeners(
            endpoint.host, endpoint.port, backlog, reuse_port=reuse_port, transparent=transparent
        )
    return await trio.open_tcp_listeners(endpoint.port, host=endpoint.host, backlog=backlog)


# SO_MARK (asm-generic/socket.h), named by Python on Linux.
_SO_MARK: Final = getattr(socket, "SO_MARK", 36)
# IP_TRANSPARENT (linux/in.h) and IPV6_TRANSPARENT (linux/in6.h); Python names only the first.
_IP_TRANSPARENT: Final = getattr(socket, "IP_TRANSPARENT", 19)
_IPV6_TRANSPARENT: Final = getattr(socket, "IPV6_TRANSPARENT", 75)


def _set_transparent(sock: trio.socket.SocketType, family: int) -> None:
    """Let ``sock`` accept connections for any address (TPROXY), or say what it needs."""
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_TRANSPARENT, 1)
    except PermissionError as exc:
        raise PermissionError(
            exc.errno,
            'a TPROXY listener (mode = "tproxy") needs CAP_NET_ADMIN to set IP_TRANSPARENT',
        ) from exc


async def _tcp_listeners(
    host: str | None, port: int, backlog: int, *, reuse_port: bool, transparent: bool
) -> list[trio.SocketListener]:
    # trio.open_tcp_listeners, plus options that must be set before bind (SO_REUSEPORT,
    # IP_TRANSPARENT), which trio offers no way to set: one socket per address the name has.
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this system")
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _name, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if transparent:
                    _set_transparent(sock, family)
                await sock.bind(address)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def apply_tcp_settings(stream: trio.SocketStream, tcp: TcpSettings) -> None:
    """Set TCP keepalive on one connection as ``[tcp]`` says; UNIX sockets are left alone.

    A connection the peer reset in the meantime may refuse the options: that is ignored
    here, because the first read or write reports the reset where it is handled.
    """
    sock = stream.socket
    if not tcp.keepalive or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", tcp.keepalive_idle),
            ("TCP_KEEPINTVL", tcp.keepalive_interval),
            ("TCP_KEEPCNT", tcp.keepalive_count),
        ):
            option = getattr(socket, name, None)
            if option is not None:  # all three exist on Linux
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def connect_endpoint(endpoint: Endpoint, *, mark: int = 0) -> trio.SocketStream:
    """Connect to ``endpoint`` (TCP with happy eyeballs, or UNIX); TCP_NODELAY is on.

    Args:
        endpoint: where to.
        mark: for TCP, the firewall mark (``[tcp] mark``) to set before connecting.

    Raises:
        OSError: the connection failed.
    """
    if endpoint.kind == "unix":
        return await trio.open_unix_socket(endpoint.path)
    if endpoint.kind == "systemd":  # pragma: no cover - the config refuses it
        raise OSError(errno.EINVAL, f"cannot connect to {endpoint}: it names listening sockets")
    return await connect_tcp(endpoint.host, endpoint.port, mark=mark)


async def connect_tcp(host: str, port: int, *, mark: int = 0) -> trio.SocketStream:
    """Connect to ``host:port``; ``host`` may be a name (resolved here) or an IP literal.

    With a ``mark``, every packet of the connection, its SYN included, carries it
    (``SO_MARK``); the addresses of a name are then tried one after the other, since
    trio's happy eyeballs offers no way to set an option before connecting.

    Raises:
        OSError: the connection failed (``socket.gaierror`` when the name did not resolve).
    """
    if not mark:
        return await trio.open_tcp_stream(host, port)
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _name, address in infos:
        sock = trio.socket.socket(family, kind, proto)
        try:
            set_mark(sock, mark)
            await sock.connect(address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)
    raise OSError(f"all connection attempts to {host}:{port} failed") from ExceptionGroup(
        "connection attempts", errors
    )


def set_mark(sock: trio.socket.SocketType | socket.socket, mark: int) -> None:
    """Set ``SO_MARK`` on ``sock``, or say plainly that it needs ``CAP_NET_ADMIN``.

    Raises:
        PermissionError: the process lacks ``CAP_NET_ADMIN``.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, mark)
    except PermissionError as exc:
        raise PermissionError(
            exc.errno, "[tcp] mark needs CAP_NET_ADMIN to set SO_MARK on connections"
        ) from exc


def check_mark(mark: int) -> None:
    """Fail now, not at the first tunnel, when ``mark`` cannot be set.

    Raises:
        PermissionError: the process lacks ``CAP_NET_ADMIN``.
    """
    if mark:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            set_mark(probe, mark)


def connect_error_kind(exc: BaseException) -> str:
    """Classify a connect failure: ``"refused"``, ``"unreachable"`` or ``"failed"``.

    trio's happy-eyeballs connect raises one OSError whose cause holds every attempt's
    error; any refusal among them counts as refused.
    """
    seen: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        if current.__cause__ is not None:
            stack.append(current.__cause__)
    if any(isinstance(e, ConnectionRefusedError) for e in seen):
        return "refused"
    if any(isinstance(e, FileNotFoundError) for e in seen):
        return "refused"  # a UNIX socket path with nobody listening
    unreachable = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}
    if any(isinstance(e, socket.gaierror) for e in seen) or any(
        isinstance(e, OSError) and e.errno in unreachable for e in seen
    ):
        return "unreachable"
    return "failed"
