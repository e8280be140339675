"""Building blocks for gateway tests that stress a whole tunnel: backends, gateways, bytes.

The end-to-end tests of single features keep their fixtures to themselves; the
reliability tests (``tests/test_gateway_reliability.py``) need more moving parts, and
need them in more than one shape:

* gateways **in the test process** (:func:`gateway_pair`, HMAC test attestation, or any
  provider through :func:`start_gateway`), whose runtime, metrics and access log the
  test reads directly;
* gateways **in their own process** (:class:`GatewayProcess`: the real ``ratls-gateway
  run`` entry point on a configuration file), which a test can kill with a signal, and
  which run on another core than the test, so bulk transfers are not limited by one
  Python thread doing everything;
* backends that echo, stream a known pattern, or talk full duplex with their own write
  pattern (:class:`Backend`), and one that can be switched off and on again on the same
  port (:class:`FlappingBackend`);
* :class:`Pattern`, a deterministic byte stream, so that "what arrived is a prefix of
  what was sent" can be checked without keeping what was sent.

Addresses a test must reuse after a restart come from :func:`stable_port`, which picks a
free port *below* the kernel's ephemeral range: an outgoing connection of any process on
the machine can take an ephemeral port while our listener is down, and the restart would
then fail to bind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
import trio

from gateway._config import parse_config
from gateway._daemon import RunningGateway, run_gateway
from gateway._testing import HmacTestAttester, HmacTestVerifier, hmac_test_attestation

if TYPE_CHECKING:
    from gateway._config import GatewayConfig
    from ratls._exchange import AttestationConfig

__all__ = [
    "KEY",
    "LOCALHOST",
    "POLICY",
    "REPO",
    "Backend",
    "BackendHandler",
    "FlappingBackend",
    "GatewayProcess",
    "HmacPair",
    "Pattern",
    "abort",
    "admin_get",
    "capture_gateway_logs",
    "close_clients",
    "connect",
    "duplex_handler",
    "echo_handler",
    "egress_doc",
    "free_port",
    "gateway_pair",
    "gateway_processes",
    "http_connect",
    "ingress_doc",
    "listen_port",
    "metric_value",
    "random_sizes",
    "receive_all",
    "receive_exactly",
    "sim_attestation",
    "stable_port",
    "start_backend",
    "start_gateway",
    "stream_handler",
    "to_toml",
    "tunnel_lines",
    "wait_for",
]

#: The repository root (computed, so nothing here names a machine's paths).
REPO: Final = Path(__file__).resolve().parent.parent
#: The example policy, which trusts the simulator in plain words.
POLICY: Final = REPO / "examples" / "policy.toml"
#: Every socket of these tests is on loopback.
LOCALHOST: Final = "127.0.0.1"
#: Shared key of the HMAC test attestation.
KEY: Final = b"gateway-reliability-test-key"

_READ_SIZE: Final = 65536


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on loopback with nobody listening (bound, then released)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(x) for x in text.split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def stable_port(count: int = 1) -> int:
    """A free loopback port outside the ephemeral range, for listeners that restart.

    Args:
        count: how many consecutive ports must be free (the first is returned), for
            port-range listeners.

    Raises:
        OSError: no free port (block) was found below the ephemeral range.
    """
    low, _ = _ephemeral_range()
    first = 10000 if low > 12000 else 1024
    rng = random.Random()  # noqa: S311 - spreading ports, not secrets
    for _ in range(200):
        port = rng.randrange(first, low - count)
        block = range(port, port + count)
        # Free now is not enough: a port handed out before may not be bound yet (a
        # test asks for its listen and admin ports before starting the gateway).
        if _HANDED_OUT.intersection(block):
            continue
        with contextlib.ExitStack() as held:
            try:
                for each in block:
                    s = held.enter_context(socket.socket())
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((LOCALHOST, each))
            except OSError:
                continue
            _HANDED_OUT.update(block)
            return port
    raise OSError("no free port below the ephemeral range")


#: Ports :func:`stable_port` has returned in this test run; it never returns one twice.
_HANDED_OUT: set[int] = set()


# --------------------------------------------------------------------------- namespaces


def run_in_network_namespace(script: str, *, tools: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``tests/<script>`` in a fresh user and network namespace; return its JSON.

    Such a script may add addresses and iptables rules without touching this machine.
    Skips where namespaces or ``tools`` are missing, except under CI (``CI`` set), where
    that is a failure: CI installs them (.ci/setup).
    """
    reason = None
    # iptables and ip live in /usr/sbin, which a non-root user's PATH may leave out.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    env = {**os.environ, "PATH": search}
    for tool in ("unshare", "ip", "iptables", *tools):
        if shutil.which(tool, path=search) is None:
            reason = f"{tool} is not installed"
            break
    else:
        probe = subprocess.run(
            ["unshare", "-rn", "iptables", "-t", "nat", "-L", "OUTPUT"],  # noqa: S607 - on PATH
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if probe.returncode != 0:
            reason = f"no user and network namespace with netfilter: {probe.stderr.strip()}"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the network-namespace tests: {reason}")
        pytest.skip(reason)
    program = Path(__file__).resolve().parent / script
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        ["unshare", "-rn", sys.executable, str(program)],  # noqa: S607 - unshare is on PATH
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --------------------------------------------------------------------------- bytes


@dataclass(frozen=True, slots=True)
class Pattern:
    """A deterministic byte stream: a seeded random block, rotated differently per chunk.

    Chunk ``i`` is the block rotated left by ``i * 4099`` bytes, so consecutive chunks
    differ (a duplicated or dropped chunk changes the digest) while generating them costs
    one slice each.

    Attributes:
        seed: the random seed of the block.
        block: chunk size in bytes.
    """

    seed: int
    block: int = 1 << 20
    _base: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = random.Random(self.seed).randbytes(self.block)  # noqa: S311 - test data
        object.__setattr__(self, "_base", base)

    def chunk(self, index: int) -> bytes:
        """Chunk ``index`` (``block`` bytes)."""
        shift = (index * 4099) % self.block
        return self._base[shift:] + self._base[:shift]

    def chunks(self, total: int) -> Iterator[bytes]:
        """The first ``total`` bytes of the stream, chunk by chunk."""
        index = 0
        while total > 0:
            chunk = self.chunk(index)[:total]
            yield chunk
            total -= len(chunk)
            index += 1

    def prefix(self, size: int) -> bytes:
        """The first ``size`` bytes of the stream."""
        return b"".join(self.chunks(size))

    def digest(self, size: int) -> bytes:
        """SHA-256 of the first ``size`` bytes."""
        h = hashlib.sha256()
        for chunk in self.chunks(size):
            h.update(chunk)
        return h.digest()


def random_sizes(seed: int, count: int, low: int = 1, high: int = 200) -> list[int]:
    """``count`` write sizes drawn uniformly from ``[low, high]`` with a seeded generator."""
    rng = random.Random(seed)  # noqa: S311 - test data
    return [rng.randint(low, high) for _ in range(count)]


# --------------------------------------------------------------------------- streams


_OPENED: list[trio.SocketStream] = []


async def connect(host: str, port: int) -> trio.SocketStream:
    """Open a client connection; :func:`close_clients` closes whatever is left."""
    stream = await trio.open_tcp_stream(host, port)
    _OPENED.append(stream)
    return stream


async def close_clients() -> None:
    """Close every client connection opened with :func:`connect`."""
    while _OPENED:
        await trio.aclose_forcefully(_OPENED.pop())


async def abort(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a TCP RST (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def receive_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until EOF (raises what the stream raises)."""
    chunks = bytearray()
    while data := await stream.receive_some(_READ_SIZE):
        chunks += data
    return bytes(chunks)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Exactly ``size`` bytes; an EOF before that fails the test."""
    buf = bytearray()
    while len(buf) < size:
        data = await stream.receive_some(size - len(buf))
        assert data, f"EOF after {len(buf)} of {size} bytes"
        buf += data
    return bytes(buf)


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds (state no event reports: counters, log records)."""
    while not predicate():  # noqa: ASYNC110 - polling counters and log records
        await trio.sleep(0.01)


async def http_connect(
    port: int, target: str, extra: bytes = b""
) -> tuple[trio.SocketStream, bytes]:
    """Send an HTTP CONNECT; return the stream and the response head (up to CRLF CRLF)."""
    stream = await connect(LOCALHOST, port)
    await stream.send_all(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + extra)
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(1)
        if not data:
            break
        head += data
    return stream, head


async def admin_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from an admin endpoint: ``(status, body)``."""
    stream = await trio.open_tcp_stream(LOCALHOST, port)
    try:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
        response = await receive_all(stream)
    finally:
        await trio.aclose_forcefully(stream)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text (labels in any order), or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, rest = sample.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        if {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return None


def tunnel_lines(caplog: pytest.LogCaptureFixture, side: str) -> list[dict[str, Any]]:
    """The access-log ``tunnel`` records of one side, from an in-process gateway."""
    lines = []
    for record in caplog.records:
        fields = getattr(record, "fields", None)
        if record.getMessage() == "tunnel" and isinstance(fields, dict) and fields["side"] == side:
            lines.append(fields)
    return lines


# --------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """A backend server in the test process, with what it saw.

    Attributes:
        port: its TCP port on loopback.
        connections: connections accepted.
        eof_seen: connections whose client direction ended cleanly.
        resets: connections that broke (reset, or closed under a pending write).
        received: bytes received, over all connections.
        digest: SHA-256 of what the last finished connection received.
        sent: bytes sent, over all connections.
        open: connections not yet finished.
        crashing: close connections with a TCP RST (a backend that dies).
        keep: keep every received byte in :attr:`data` (small transfers only).
        data: what was received, when :attr:`keep` is set.
        streams: the connections not yet finished.
    """

    port: int
    connections: int = 0
    eof_seen: int = 0
    resets: int = 0
    received: int = 0
    digest: bytes = b""
    sent: int = 0
    open: int = 0
    crashing: bool = False
    keep: bool = False
    data: bytearray = field(default_factory=bytearray)
    streams: set[trio.SocketStream] = field(default_factory=set)


BackendHandler = Callable[[Backend, trio.SocketStream], Awaitable[None]]


async def echo_handler(backend: Backend, stream: trio.SocketStream) -> None:
    """Echo every byte; half-close after the client's EOF."""
    h = hashlib.sha256()
    try:
        while data := await stream.receive_some(_READ_SIZE):
            backend.received += len(data)
            h.update(data)
            if backend.keep:
                backend.data += data
            await stream.send_all(data)
            backend.sent += len(data)
        backend.eof_seen += 1
        backend.digest = h.digest()
        await stream.send_eof()
    except trio.BrokenResourceError:
        backend.resets += 1


def duplex_handler(
    pattern: Pattern, total: int, sizes: Sequence[int] | None = None
) -> BackendHandler:
    """A handler that sends ``total`` bytes of ``pattern`` while it reads to EOF.

    Args:
        pattern: what to send.
        total: how much.
        sizes: write sizes (default: whole chunks); they must add up to ``total``.
    """

    async def handler(backend: Backend, stream: trio.SocketStream) -> None:
        h = hashlib.sha256()
        broken = False

        async def send() -> None:
            nonlocal broken
            try:
                if sizes is None:
                    for chunk in pattern.chunks(total):
                        await stream.send_all(chunk)
                        backend.sent += len(chunk)
                else:
                    data = pattern.prefix(total)
                    offset = 0
                    for n in sizes:
                        await stream.send_all(data[offset : offset + n])
                        offset += n
                        backend.sent += n
                await stream.send_eof()
            except trio.BrokenResourceError:
                broken = True

        async def receive() -> None:
            nonlocal broken
            try:
                while data := await stream.receive_some(_READ_SIZE):
                    backend.received += len(data)
                    h.update(data)
                    if backend.keep:
                        backend.data += data
                backend.eof_seen += 1
            except trio.BrokenResourceError:
                broken = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)
        backend.resets += broken
        backend.digest = h.digest()

    return handler


def stream_handler(pattern: Pattern) -> BackendHandler:
    """A handler that sends ``pattern`` until the connection breaks (ignores input)."""

    async def handler(backend: Backend, stream: trio.SocketStream) -> None:
        index = 0
        try:
            while True:
                chunk = pattern.chunk(index)
                backend.sent += len(chunk)  # counted when offered: a cut may take part of it
                await stream.send_all(chunk)
                index += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            backend.resets += 1

    return handler


async def _run_handler(
    backend: Backend, handler: BackendHandler, stream: trio.SocketStream
) -> None:
    backend.connections += 1
    backend.open += 1
    backend.streams.add(stream)
    try:
        await handler(backend, stream)
    finally:
        backend.streams.discard(stream)
        backend.open -= 1
        if backend.crashing:
            await abort(stream)
        else:
            await trio.aclose_forcefully(stream)


async def start_backend(nursery: trio.Nursery, handler: BackendHandler = echo_handler) -> Backend:
    """Serve ``handler`` on a fresh loopback port until ``nursery`` ends."""
    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
    backend = Backend(port=listeners[0].socket.getsockname()[1])
    nursery.start_soon(
        partial(trio.serve_listeners, partial(_run_handler, backend, handler), listeners)
    )
    return backend


class FlappingBackend:
    """A backend that goes down (listener closed, live connections reset) and up again.

    While down, the port stays bound by a socket that does not listen, so nobody else can
    take it and connections to it are refused (the kernel answers RST).

    Args:
        nursery: where the serving task runs.
        handler: the connection handler.
    """

    def __init__(self, nursery: trio.Nursery, handler: BackendHandler = echo_handler) -> None:
        self._nursery = nursery
        self._handler = handler
        self._reserve = trio.socket.socket()
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self.backend = Backend(port=0)
        self.flips = 0

    @property
    def port(self) -> int:
        """The backend's port (fixed across restarts)."""
        return self.backend.port

    async def bind(self) -> None:
        """Take a port (down until :meth:`up`)."""
        await self._reserve.bind((LOCALHOST, 0))
        self.backend.port = self._reserve.getsockname()[1]

    async def up(self) -> None:
        """Start listening on the port."""
        assert self._scope is None, "already up"
        sock, self._reserve = self._reserve, trio.socket.socket()
        sock.listen(64)
        listener = trio.SocketListener(sock)
        self._stopped = trio.Event()
        self._scope = await self._nursery.start(self._serve, listener)
        self.flips += 1

    async def _serve(
        self, listener: trio.SocketListener, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as handlers:
                    task_status.started(scope)
                    await trio.serve_listeners(
                        partial(_run_handler, self.backend, self._handler),
                        [listener],
                        handler_nursery=handlers,
                    )
        finally:
            await trio.aclose_forcefully(listener)
            self._stopped.set()

    async def down(self) -> None:
        """Stop listening and reset every live connection, like a crashed backend."""
        assert self._scope is not None, "already down"
        self.backend.crashing = True
        self._scope.cancel()
        self._scope = None
        await self._stopped.wait()  # listener closed, every connection reset
        self.backend.crashing = False
        # Hold the port (bound, not listening) until the next up().
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await self._reserve.bind((LOCALHOST, self.backend.port))
        self.flips += 1

    def close(self) -> None:
        """Release the port."""
        if self._scope is not None:
            self._scope.cancel()
        self._reserve.close()


# --------------------------------------------------------------------------- gateways


def egress_doc(
    routes: Mapping[str, int],
    *,
    attestation: Mapping[str, Any] | None = None,
    listen: str = "127.0.0.1:0",
    **extra: Any,
) -> dict[str, Any]:
    """An egress configuration: one listener ``main`` with a route per backend port."""
    doc: dict[str, Any] = {
        "attestation": dict(attestation or {"attester": "test"}),
        "egress": {
            "listener": [
                {
                    "name": "main",
                    "listen": listen,
                    "allow": [f"{LOCALHOST}:{port}" for port in routes.values()],
                }
            ],
            "route": [
                {"name": name, "backend": f"{LOCALHOST}:{port}"} for name, port in routes.items()
            ],
        },
    }
    doc.update(extra)
    return doc


def ingress_doc(
    egress: str,
    mappings: Mapping[str, str],
    *,
    attestation: Mapping[str, Any] | None = None,
    http_connect: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """An ingress configuration with an admin endpoint and a mapping per route.

    Args:
        egress: the egress's ``host:port``.
        mappings: ``{route: listen address}``; each mapping is named after its route.
        attestation: the ``[attestation]`` table (default: the HMAC test double).
        http_connect: also serve an HTTP CONNECT proxy ``proxy`` on an ephemeral port.
        extra: more top-level tables (``admin`` is set unless given).
    """
    ingress: dict[str, Any] = {
        "mapping": [
            {"name": route, "listen": listen, "egress": egress, "target": route}
            for route, listen in mappings.items()
        ]
    }
    if http_connect:
        ingress["http_connect"] = [{"name": "proxy", "listen": "127.0.0.1:0", "egress": egress}]
    doc: dict[str, Any] = {
        "attestation": dict(attestation or {"attester": "test"}),
        "admin": {"listen": "127.0.0.1:0"},
        "ingress": ingress,
    }
    doc.update(extra)
    return doc


async def start_gateway(
    nursery: trio.Nursery,
    config: GatewayConfig,
    attestation: AttestationConfig | None = None,
    *,
    drain_timeout: float = 1.0,
) -> RunningGateway:
    """Run a gateway in the test process (``attestation`` None: its own provider)."""
    gateway: RunningGateway = await nursery.start(
        partial(run_gateway, config, attestation=attestation, drain_timeout=drain_timeout)
    )
    await gateway.wait_ready()
    return gateway


def listen_port(gateway: RunningGateway, key: str) -> int:
    """The bound TCP port of one listener of an in-process gateway."""
    address = gateway.address(key)
    assert isinstance(address, tuple)
    return address[1]


@dataclass
class HmacPair:
    """An in-process egress and ingress on the HMAC test attestation."""

    egress: RunningGateway
    ingress: RunningGateway
    egress_att: tuple[AttestationConfig, HmacTestAttester, HmacTestVerifier]
    ingress_att: tuple[AttestationConfig, HmacTestAttester, HmacTestVerifier]

    def port(self, key: str) -> int:
        """The ingress's port for listener ``key`` (``"mapping:NAME"``, ``"admin"``...)."""
        return listen_port(self.ingress, key)


@asynccontextmanager
async def gateway_pair(
    routes: Mapping[str, int],
    *,
    http_connect: bool = False,
    egress_extra: Mapping[str, Any] | None = None,
    ingress_extra: Mapping[str, Any] | None = None,
) -> AsyncIterator[HmacPair]:
    """An egress with a route per backend and an ingress with a mapping per route."""
    egress_att = hmac_test_attestation(KEY)
    ingress_att = hmac_test_attestation(KEY)
    async with trio.open_nursery() as nursery:
        egress = await start_gateway(
            nursery, parse_config(egress_doc(routes, **(egress_extra or {}))), egress_att[0]
        )
        idoc = ingress_doc(
            f"{LOCALHOST}:{listen_port(egress, 'egress:main')}",
            dict.fromkeys(routes, "127.0.0.1:0"),
            http_connect=http_connect,
            **(ingress_extra or {}),
        )
        ingress = await start_gateway(nursery, parse_config(idoc), ingress_att[0])
        try:
            yield HmacPair(egress, ingress, egress_att, ingress_att)
        finally:
            await close_clients()
        nursery.cancel_scope.cancel()


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"no TOML for {type(value).__name__}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """Render a gateway configuration document (tables, arrays of tables, scalars) as TOML."""
    lines: list[str] = []

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        subtables: list[tuple[str, Mapping[str, Any]]] = []
        arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
        for key, value in table.items():
            if isinstance(value, dict):
                subtables.append((key, value))
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                arrays.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, sub in subtables:
            name = f"{prefix}.{key}" if prefix else key
            if all(isinstance(v, dict | list) for v in sub.values()):
                emit(name, sub)  # only a container of tables: no header of its own
            else:
                lines.append(f"\n[{name}]")
                emit(name, sub)
        for key, items in arrays:
            name = f"{prefix}.{key}" if prefix else key
            for item in items:
                lines.append(f"\n[[{name}]]")
                emit(name, item)

    emit("", doc)
    return "\n".join(lines).lstrip("\n") + "\n"


class GatewayProcess:
    """``ratls-gateway run CONFIG`` in its own process, with its log in a file.

    Args:
        workdir: where the configuration and the log go.
        name: file name stem (``egress`` -> ``egress.toml``, ``egress.log``).
        doc: the configuration document; it needs an ``[admin]`` listener on a fixed port.
        drain_timeout: ``--drain-timeout``.
    """

    def __init__(
        self, workdir: Path, name: str, doc: Mapping[str, Any], *, drain_timeout: float = 1.0
    ) -> None:
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(to_toml(doc))
        admin = str(doc["admin"]["listen"])
        self.admin_port = int(admin.rpartition(":")[2])
        assert self.admin_port != 0, "a gateway process needs a fixed admin port"
        self.drain_timeout = drain_timeout
        self.process: trio.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start the process and wait until /readyz answers 200.

        Raises:
            RuntimeError: the process exited before it was ready.
        """
        assert self.process is None or self.process.returncode is not None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "run",
                    str(self.config_path),
                    "--drain-timeout",
                    str(self.drain_timeout),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=str(self.config_path.parent),
            )
        self.starts += 1
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError, IndexError, ValueError):
                status, _ = await admin_get(self.admin_port, "/readyz")
                if status == 200:
                    return
            await trio.sleep(0.05)

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the exit; returns the exit status."""
        process = self.process
        assert process is not None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        return await process.wait()

    async def aclose(self) -> None:
        """Make sure the process is gone (SIGTERM, then SIGKILL after a grace period)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with trio.move_on_after(10) as scope:
            scope.shield = True
            await self.stop(signal.SIGTERM)
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                await self.stop(signal.SIGKILL)

    def log(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far, over all starts."""
        if not self.log_path.exists():
            return []
        lines = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    lines.append(record)
        return lines

    def tunnel_lines(self, side: str) -> list[dict[str, Any]]:
        """The access-log ``tunnel`` lines of ``side``."""
        return [r for r in self.log() if r.get("msg") == "tunnel" and r.get("side") == side]


@asynccontextmanager
async def gateway_processes(*processes: GatewayProcess) -> AsyncIterator[None]:
    """Stop every process on the way out, whatever happened."""
    try:
        yield
    finally:
        for process in processes:
            await process.aclose()


def sim_attestation(**options: Any) -> dict[str, Any]:
    """The ``[attestation]`` table of the simulated SEV-SNP attester and the example policy."""
    return {"attester": "sim", "policy": str(POLICY), "product": "Genoa", **options}


def capture_gateway_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Record the gateway logger's INFO records (access lines) in ``caplog``."""
    from gateway._runtime import LOGGER_NAME

    caplog.set_level(logging.INFO, logger=LOGGER_NAME)


def sim_egress_config(directory: Path, *, admin: bool = False) -> Path:
    """Write ``egress.toml`` in ``directory``: the simulated attester, a UNIX listener.

    The listener is ``egress.sock`` (and the admin endpoint ``admin.sock`` when asked),
    relative to the file; the one route goes to the discard port, which nothing uses.
    """
    config = directory / "egress.toml"
    config.write_text(
        "[attestation]\n"
        'attester = "sim"\n'
        f'policy = "{POLICY}"\n'
        + ('[admin]\nlisten = "unix:admin.sock"\n' if admin else "")
        + "[[egress.listener]]\n"
        'name = "main"\n'
        'listen = "unix:egress.sock"\n'
        "[[egress.route]]\n"
        'name = "web"\n'
        'backend = "127.0.0.1:9"\n'
    )
    return config


# Moves the descriptors named in argv[1:3] to 3 and 4 and execs argv[3:] with LISTEN_PID
# and LISTEN_FDS set, the way systemd starts a socket-activated service.
AS_SYSTEMD = """
import fcntl, os, sys
moved = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1:3]]
for target, fd in enumerate(moved, start=3):
    os.dup2(fd, target)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(moved)))
os.execv(sys.argv[3], sys.argv[3:])
"""


def spawn_gateway_cli(
    config: Path, *, env: Mapping[str, str] | None = None, stderr: int = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """Start ``ratls-gateway run CONFIG --drain-timeout 1`` in the config's directory."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gateway.cli", "run", str(config), "--drain-timeout", "1"],
        stderr=stderr,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=config.parent,
    )
