"""Two-hop tunnels compared: raw TCP relays, stunnel, and the ratls gateways.  No asserts.

Each topology carries the same traffic along the same path::

    driver ──TCP──▶ hop A ══ link ══▶ hop B ──TCP──▶ backend

* **raw**: two plain trio relays (64 KiB reads), no TLS: the floor for a Python relay;
* **tls**: two bare TLS relays over ratls's ``AttestedTLSStream`` (mutual TLS 1.3,
  64 KiB reads, no attestation, no link protocol): the gateway's data path without the
  gateway, i.e. how much the tunnel machinery itself costs;
* **stunnel**: Debian's stunnel4 as client and server, mutual TLS 1.3 with a throw-away
  P-256 PKI made in a temporary directory (chain verified both ways);
* **ratls**: ``ratls-gateway run`` as ingress (port mapping) and egress, both with the
  simulated SEV-SNP attester and the example policy that trusts the simulator: every
  tunnel is a mutually attested TLS 1.3 connection with fresh evidence both ways;
* **ratls-prewarm** (only with ``--only``): the same, with ``[prewarm] links = 4`` on
  the ingress, so a tunnel takes a link attested ahead of need and the handshake moves
  out of its setup;
* **ratls-reuse** (only with ``--only``): ``ratls-prewarm`` with ``reuse = true``: a
  tunnel that ended cleanly gives its link back to the ready ones, so tunnels made one
  after another share attested links instead of a handshake each;
* **ratls-workers** (only with ``--only``): the same, with ``[process] workers = 2`` on
  both gateways (a supervisor and two worker processes each; CPU and memory are those
  of the whole process tree).

Key exchange differs unless ``--groups`` aligns it: stunnel uses the system's OpenSSL
(on Debian 12, 3.0, without ML-KEM: X25519), the Python topologies use the OpenSSL
inside ``cryptography`` (3.5 and later prefer the hybrid X25519MLKEM768, which costs
about 10 KiB more per idle connection).  ``--groups X25519`` gives the ratls gateways
stunnel's key exchange.

Hop A, hop B and the backend are separate processes; the driver is this process.  For
each topology, in rounds that alternate between topologies (so drift hits all alike):

* **setup latency**: connect, send one byte, get it echoed by the backend; the first
  tunnel after start ("cold": for ratls the AMD chain is not yet remembered), the
  median of later ones made back to back ("warm"), and the median of as many made
  ``SPACING`` apart ("spaced": what a client arriving alone sees; back to back, a
  topology that does work in the background, such as refilling ``ratls-prewarm``'s
  ready links, meets that work in the next tunnel);
* **tunnels per second**: that same exchange, ``--conc`` at once, ``--tunnels`` in all;
* **memory per idle tunnel**: VmRSS of both hops before and after ``--idle`` tunnels
  are open and idle, per tunnel (kernel socket buffers not included); after closing
  them the bench waits until both hops are idle again;
* **throughput**: ``--mib`` MiB from the driver to the backend, timed at the backend
  from the first byte to EOF; **CPU per GB** is user+system time of both hops from
  /proc over that transfer;
* **memory after a burst** (only with ``--burst N``): VmRSS of both hops per tunnel
  after N tunnels each echoed 1 MiB and then stayed open and quiet for 11 s (the ratls
  gateways give back what a burst grew once a tunnel is quiet for 5 s);
* **throughput, N streams**: the same number of bytes split over ``--streams`` tunnels
  (8) sending at once, timed at the driver from the start of sending until the backend
  confirmed every byte (not for ``tls``, whose relay passes no half-close).  A ratls
  gateway is one process on one core; stunnel runs a thread per connection.

Every figure is also printed as a ratio to stunnel's in the same round; the summary is
the median over rounds (ratios: median of per-round ratios).

Usage: .venv/bin/python bench/bench_gateway.py [--mib 256 | --gib] [--rounds 3]
       [--tunnels 200] [--conc 8] [--idle 300] [--burst 0] [--streams 8]
       [--only raw,tls,stunnel,ratls,ratls-prewarm,ratls-reuse,ratls-workers]
       [--groups X25519]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import resource
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway._daemon import BUFFER_RELEASE_INTERVAL

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["main"]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
RELAY_CHUNK = 65536
SOURCE_CHUNK = 1 << 20
SINK_CHUNK = 256 * 1024
TICK = os.sysconf("SC_CLK_TCK")
TOPOLOGIES = ("raw", "tls", "stunnel", "ratls")
#: Seconds between the tunnels of the "spaced" setup latency.
SPACING = 0.05
#: Ready links of the ingress in the optional ``ratls-prewarm`` topology.
PREWARM_LINKS = 4
# Bytes each tunnel echoes in the burst-memory figure, and the wait before reading RSS
# (longer than two of the gateway's buffer-release intervals).
BURST_BYTES = 1 << 20
BURST_BLOCK = os.urandom(1 << 16)
BURST_SETTLE = 2 * BUFFER_RELEASE_INTERVAL + 1.0
# Worker processes per gateway in the ratls-workers topology.
WORKERS = 2


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor's workers), from /proc."""
    tree, index = [pid], 0
    while index < len(tree):
        for task in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                tree.extend(int(child) for child in task.read_text().split())
        index += 1
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (all threads)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{member}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_kib(pid: int) -> int:
    """Resident set size in KiB of a process and its descendants, from /proc."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def wait_port(port: int, deadline: float) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def echo_once(port: int) -> float:
    """Connect, send one byte, wait for its echo; seconds from connect to echo."""
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(b"Ex")
        if s.recv(1) != b"x":
            raise RuntimeError("no echo through the tunnel")
        elapsed = time.perf_counter() - start
    return elapsed


# --------------------------------------------------------------------------- processes


def run_relay(listen: int, target: int) -> None:
    """A plain trio relay: what one hop costs in Python with no TLS (role ``relay``)."""
    import trio

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some(RELAY_CHUNK):
                await dst.send_all(data)
            await dst.send_eof()

    async def handle(client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream(HOST, target)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)

    async def serve() -> None:
        await trio.serve_tcp(handle, listen, host=HOST, backlog=1024)

    trio.run(serve)


def run_tls_relay(listen: int, target: int, *, server_side: bool) -> None:
    """A bare TLS relay over ratls's stream (roles ``tls-in`` and ``tls-out``).

    Mutual TLS 1.3 between the hops (fresh self-signed P-256 identities, each side's
    certificate checked as ratls checks peers), no attestation and no link protocol:
    what the gateway's data path costs without the gateway.  ``tls-in`` accepts plain
    TCP and connects with TLS; ``tls-out`` accepts TLS and connects plain TCP.
    """
    import trio

    from ratls._tls_context import (
        generate_ephemeral_identity,
        make_client_context,
        make_server_context,
    )
    from ratls._tls_stream import AttestedTLSStream

    key, cert = generate_ephemeral_identity()
    if server_side:
        context = make_server_context(key, cert, attested=False)
    else:
        context = make_client_context(key, cert, attested=False)

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some(RELAY_CHUNK):
                await dst.send_all(data)
            if isinstance(dst, trio.SocketStream):
                await dst.send_eof()
            else:
                await dst.aclose()

    async def handle(accepted: trio.SocketStream) -> None:
        try:
            onward = await trio.open_tcp_stream(HOST, target)
        except OSError:
            await accepted.aclose()
            return
        outer: trio.abc.Stream
        inner: trio.abc.Stream
        if server_side:
            outer = AttestedTLSStream(accepted, context, server_side=True)
            inner = onward
        else:
            outer = accepted
            inner = AttestedTLSStream(onward, context, server_side=False)
        async with outer, inner, trio.open_nursery() as nursery:
            nursery.start_soon(pump, outer, inner)
            nursery.start_soon(pump, inner, outer)

    async def serve() -> None:
        await trio.serve_tcp(handle, listen, host=HOST, backlog=1024)

    trio.run(serve)


class _Backend(socketserver.BaseRequestHandler):
    """First byte ``E``: echo until EOF.  ``S``: sink until EOF, reply ``bytes seconds``."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        mode = sock.recv(1)
        if mode == b"E":
            while data := sock.recv(65536):
                sock.sendall(data)
        elif mode == b"N":
            # Sized sink, for relays that cannot pass a half-close on (the bare TLS relay):
            # an 8-byte length, that many bytes, then the same reply as "S".
            header = b""
            while len(header) < 8 and (part := sock.recv(8 - len(header))):
                header += part
            left = int.from_bytes(header, "big")
            buf = bytearray(SINK_CHUNK)
            total = sock.recv_into(buf, min(left, SINK_CHUNK))
            start = time.perf_counter()
            while total < left and (n := sock.recv_into(buf, min(left - total, SINK_CHUNK))):
                total += n
            elapsed = time.perf_counter() - start
            sock.sendall(f"{total} {elapsed:.6f}\n".encode())
        elif mode == b"S":
            buf = bytearray(SINK_CHUNK)
            total = sock.recv_into(buf)
            start = time.perf_counter()
            while n := sock.recv_into(buf):
                total += n
            elapsed = time.perf_counter() - start
            sock.sendall(f"{total} {elapsed:.6f}".encode())


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def run_backend(port: int) -> None:
    """The backend process (role ``backend``): echo or sink per connection."""
    threading.stack_size(256 * 1024)
    with _Server((HOST, port), _Backend) as server:
        server.serve_forever()


def spawn(
    argv: list[str], *, stderr: int | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child process with stdin and stdout discarded."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and stunnel
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd
    )


def self_argv(*args: str) -> list[str]:
    """This script run again in a child role."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


# --------------------------------------------------------------------------- topologies


@dataclass
class Topology:
    """A running two-hop path: the entry port and the two hop processes."""

    name: str
    entry: int
    hops: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.hops:
            proc.terminate()
        for proc in self.hops:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_pki(directory: Path) -> None:
    """A P-256 CA with a server and a client leaf (PEM files in ``directory``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bench CA"))
        .issuer_name(name("bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"{role}.bench.test"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{role}.bench.test")]), False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{role}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def start_raw(backend: int, _work: Path) -> Topology:
    a, b = free_port(), free_port()
    topo = Topology("raw", a)
    topo.hops.append(
        spawn(self_argv("--role", "relay", "--listen", str(b), "--target", str(backend)))
    )
    topo.hops.append(spawn(self_argv("--role", "relay", "--listen", str(a), "--target", str(b))))
    deadline = time.monotonic() + 20
    wait_port(b, deadline)
    wait_port(a, deadline)
    return topo


def start_tls(backend: int, _work: Path) -> Topology:
    a, b = free_port(), free_port()
    topo = Topology("tls", a)
    topo.hops.append(
        spawn(self_argv("--role", "tls-out", "--listen", str(b), "--target", str(backend)))
    )
    topo.hops.append(spawn(self_argv("--role", "tls-in", "--listen", str(a), "--target", str(b))))
    deadline = time.monotonic() + 20
    wait_port(b, deadline)
    wait_port(a, deadline)
    return topo


def start_stunnel(backend: int, work: Path) -> Topology:
    a, b = free_port(), free_port()
    common = "foreground = yes\npid =\ndebug = 3\nsslVersionMin = TLSv1.3\n"
    server = (
        f"{common}[server]\naccept = {HOST}:{b}\nconnect = {HOST}:{backend}\n"
        f"cert = {work / 'server.pem'}\nkey = {work / 'server.key'}\n"
        f"CAfile = {work / 'ca.pem'}\nverifyChain = yes\nrequireCert = yes\n"
    )
    client = (
        f"{common}[client]\nclient = yes\naccept = {HOST}:{a}\nconnect = {HOST}:{b}\n"
        f"cert = {work / 'client.pem'}\nkey = {work / 'client.key'}\n"
        f"CAfile = {work / 'ca.pem'}\nverifyChain = yes\ncheckHost = server.bench.test\n"
    )
    (work / "stunnel-server.conf").write_text(server)
    (work / "stunnel-client.conf").write_text(client)
    binary = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
    topo = Topology("stunnel", a)
    for conf in ("stunnel-server.conf", "stunnel-client.conf"):
        topo.hops.append(spawn([binary, str(work / conf)], stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 20
    wait_port(b, deadline)
    wait_port(a, deadline)
    return topo


def start_ratls(
    backend: int,
    work: Path,
    *,
    groups: str = "",
    prewarm: int = 0,
    workers: int = 1,
    reuse: bool = False,
) -> Topology:
    a, b = free_port(), free_port()
    admin_a, admin_b = free_port(), free_port()
    policy = REPO / "examples" / "policy.toml"
    att = f'[attestation]\nattester = "sim"\npolicy = "{policy}"\nproduct = "Genoa"\n'
    limits = "[limits]\nmax_tunnels = 20000\n"
    if workers > 1:
        limits += f"[process]\nworkers = {workers}\n"
    if groups:
        names = ", ".join(f'"{g}"' for g in groups.split(","))
        limits += f"[tls]\ngroups = [{names}]\n"
    egress = (
        f'{att}{limits}[admin]\nlisten = "{HOST}:{admin_b}"\n'
        f'[[egress.listener]]\nname = "main"\nlisten = "{HOST}:{b}"\nroutes = ["sink"]\n'
        f'allow = ["{HOST}:{backend}"]\n'
        f'[[egress.route]]\nname = "sink"\nbackend = "{HOST}:{backend}"\n'
    )
    if prewarm:
        limits += f"[prewarm]\nlinks = {prewarm}\nreuse = {'true' if reuse else 'false'}\n"
    ingress = (
        f'{att}{limits}[admin]\nlisten = "{HOST}:{admin_a}"\n'
        f'[[ingress.mapping]]\nname = "sink"\nlisten = "{HOST}:{a}"\n'
        f'egress = "{HOST}:{b}"\ntarget = "sink"\n'
    )
    (work / "egress.toml").write_text(egress)
    (work / "ingress.toml").write_text(ingress)
    name = "ratls"
    if prewarm:
        name = "ratls-reuse" if reuse else "ratls-prewarm"
    elif workers > 1:
        name = "ratls-workers"
    topo = Topology(name, a)
    for conf in ("egress.toml", "ingress.toml"):
        argv = [sys.executable, "-m", "gateway.cli", "run", str(work / conf)]
        topo.hops.append(
            spawn([*argv, "--log-level", "warning"], stderr=subprocess.DEVNULL, cwd=work)
        )
    deadline = time.monotonic() + 60
    for port in (admin_b, admin_a):
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in topo.hops):
                topo.stop()
                raise RuntimeError("the ratls gateways did not become ready")
            time.sleep(0.05)
    return topo


STARTERS: dict[str, Callable[[int, Path], Topology]] = {
    "raw": start_raw,
    "tls": start_tls,
    "stunnel": start_stunnel,
    "ratls": start_ratls,
    "ratls-prewarm": functools.partial(start_ratls, prewarm=PREWARM_LINKS),
    "ratls-workers": functools.partial(start_ratls, workers=WORKERS),
    "ratls-reuse": functools.partial(start_ratls, prewarm=PREWARM_LINKS, reuse=True),
}


# --------------------------------------------------------------------------- measurements


def throughput(topo: Topology, size: int) -> tuple[float, float]:
    """MB/s at the backend and hop CPU seconds per GB for ``size`` bytes."""
    block = os.urandom(SOURCE_CHUNK)
    cpu0 = sum(cpu_seconds(p.pid) for p in topo.hops)
    sized = topo.name == "tls"  # it has no half-close to carry the driver's EOF
    with socket.create_connection((HOST, topo.entry), timeout=120) as s:
        s.sendall(b"N" + size.to_bytes(8, "big") if sized else b"S")
        left = size
        view = memoryview(block)
        while left > 0:
            n = min(left, SOURCE_CHUNK)
            s.sendall(view[:n])
            left -= n
        if not sized:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while not (sized and reply.endswith(b"\n")) and (data := s.recv(100)):
            reply += data
    cpu1 = sum(cpu_seconds(p.pid) for p in topo.hops)
    got, seconds = reply.split()
    if int(got) != size:
        raise RuntimeError(f"{topo.name}: the backend got {int(got)} of {size} bytes")
    return size / float(seconds) / 1e6, (cpu1 - cpu0) / (size / 1e9)


def parallel_throughput(topo: Topology, size: int, streams: int) -> float:
    """MB/s for ``size`` bytes split over ``streams`` tunnels at once (wall clock).

    The tunnels are opened first (and given a moment to finish their handshakes); the
    clock runs from the moment all start sending until the backend has confirmed every
    byte on every tunnel.
    """
    if topo.name == "tls":
        return float("nan")  # the bare TLS relay passes no half-close: sized sinks only
    share = size // streams
    block = memoryview(os.urandom(SOURCE_CHUNK))
    sockets = [socket.create_connection((HOST, topo.entry), timeout=120) for _ in range(streams)]
    try:
        for s in sockets:
            s.sendall(b"S")
        time.sleep(0.2)
        barrier = threading.Barrier(streams + 1)

        def send(s: socket.socket) -> int:
            barrier.wait()
            left = share
            while left > 0:
                n = min(left, SOURCE_CHUNK)
                s.sendall(block[:n])
                left -= n
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while data := s.recv(100):
                reply += data
            return int(reply.split()[0])

        with ThreadPoolExecutor(streams) as pool:
            pending = [pool.submit(send, s) for s in sockets]
            barrier.wait()
            start = time.perf_counter()
            got = sum(f.result() for f in pending)
            elapsed = time.perf_counter() - start
    finally:
        for s in sockets:
            s.close()
    if got != share * streams:
        raise RuntimeError(f"{topo.name}: the backend got {got} of {share * streams} bytes")
    return got / elapsed / 1e6


def setup_latency(topo: Topology, count: int) -> tuple[float, float, float]:
    """Setup-to-echo seconds: first tunnel, median of ``count`` back to back, median of
    ``count`` made :data:`SPACING` apart."""
    cold = echo_once(topo.entry)
    warm = [echo_once(topo.entry) for _ in range(count)]
    spaced = []
    for _ in range(count):
        time.sleep(SPACING)
        spaced.append(echo_once(topo.entry))
    return cold, statistics.median(warm), statistics.median(spaced)


def tunnel_rate(topo: Topology, total: int, conc: int) -> float:
    """Tunnels per second, each: connect, echo one byte, close; ``conc`` at once."""
    start = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(lambda _: echo_once(topo.entry), range(total)))
    return total / (time.perf_counter() - start)


def held_memory(
    topo: Topology, count: int, exchange: Callable[[socket.socket], None], settle: float
) -> float:
    """KiB of hop RSS (both hops) per tunnel while ``count`` tunnels are held open.

    Each tunnel runs ``exchange`` once opened; RSS is read ``settle`` seconds after the
    last one.  Afterwards the bench waits until the hops have torn the tunnels down.
    """
    before = sum(rss_kib(p.pid) for p in topo.hops)
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, topo.entry), timeout=30)
            held.append(s)
            exchange(s)
        time.sleep(settle)
        after = sum(rss_kib(p.pid) for p in topo.hops)
    finally:
        for s in held:
            s.close()
    # Let the hops finish tearing the tunnels down before anything else is measured.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = sum(cpu_seconds(p.pid) for p in topo.hops)
        time.sleep(0.2)
        if sum(cpu_seconds(p.pid) for p in topo.hops) - busy < 0.02:
            break
    return (after - before) / count


def _echo_one_byte(s: socket.socket) -> None:
    s.sendall(b"Ex")
    if s.recv(1) != b"x":
        raise RuntimeError("no echo through the tunnel")


def _echo_a_burst(s: socket.socket) -> None:
    block = BURST_BLOCK
    s.sendall(b"E")
    for _ in range(BURST_BYTES // len(block)):  # in lockstep: no echo deadlock
        s.sendall(block)
        got = 0
        while got < len(block):
            data = s.recv(len(block) - got)
            if not data:
                raise RuntimeError("the tunnel closed during the burst")
            got += len(data)


def idle_memory(topo: Topology, count: int) -> float:
    """KiB of hop RSS (both hops) per idle tunnel, ``count`` tunnels held open."""
    return held_memory(topo, count, _echo_one_byte, 0.5)


def burst_memory(topo: Topology, count: int) -> float:
    """KiB of hop RSS per tunnel after each of ``count`` tunnels echoed 1 MiB and went quiet.

    The tunnels stay open; the figure is taken :data:`BURST_SETTLE` seconds after the
    last burst, when the ratls gateways have given back what the bursts grew (tunnels
    quiet for ``BUFFER_RELEASE_INTERVAL`` do).  0 tunnels: not measured (NaN).
    """
    if count <= 0:
        return float("nan")
    return held_memory(topo, count, _echo_a_burst, BURST_SETTLE)


@contextlib.contextmanager
def backend_process() -> Iterator[int]:
    port = free_port()
    proc = spawn(self_argv("--role", "backend", "--listen", str(port)))
    try:
        wait_port(port, time.monotonic() + 20)
        yield port
    finally:
        proc.terminate()
        proc.wait()


def fmt(value: float, ref: float | None) -> str:
    ratio = f"{value / ref:6.2f}x" if ref else "     - "
    return f"{value:10.2f}  ({ratio})"


METRICS = (
    ("MB/s", "mbps"),
    ("MB/s, N streams", "mbps_n"),
    ("hop CPU s/GB", "cpu"),
    ("setup cold ms", "cold"),
    ("setup warm ms", "warm"),
    ("setup spaced ms", "spaced"),
    ("tunnels/s", "rate"),
    ("KiB/idle tunnel", "mem"),
    ("KiB/tunnel, burst", "burst"),
)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--role", choices=["driver", "relay", "tls-in", "tls-out", "backend"], default="driver"
    )
    parser.add_argument("--listen", type=int)
    parser.add_argument("--target", type=int)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--gib", action="store_true", help="move 1 GiB per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=int, default=30, help="warm setups timed per round")
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--conc", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="tunnels for 'MB/s, N streams'")
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="tunnels for 'KiB/tunnel, burst' (each echoes 1 MiB, then idles; 0 = skip)",
    )
    parser.add_argument("--only", default=",".join(TOPOLOGIES))
    parser.add_argument(
        "--groups",
        default="",
        help="key exchange groups for the ratls gateways, e.g. X25519 (default: OpenSSL's)",
    )
    args = parser.parse_args(argv)
    if args.role == "relay":
        run_relay(args.listen, args.target)
        return 0
    if args.role in ("tls-in", "tls-out"):
        run_tls_relay(args.listen, args.target, server_side=args.role == "tls-out")
        return 0
    if args.role == "backend":
        run_backend(args.listen)
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    size = (1 << 30) if args.gib else args.mib << 20
    names = [n for n in STARTERS if n in args.only.split(",")]
    starters = dict(STARTERS)
    starters["ratls"] = functools.partial(start_ratls, groups=args.groups)
    starters["ratls-prewarm"] = functools.partial(
        start_ratls, groups=args.groups, prewarm=PREWARM_LINKS
    )
    starters["ratls-workers"] = functools.partial(start_ratls, groups=args.groups, workers=WORKERS)
    starters["ratls-reuse"] = functools.partial(
        start_ratls, groups=args.groups, prewarm=PREWARM_LINKS, reuse=True
    )
    print(
        f"bench_gateway: {os.cpu_count()} CPUs, {size / (1 << 20):.0f} MiB per transfer, "
        f"{args.rounds} rounds, {args.tunnels} tunnels ({args.conc} at once), "
        f"{args.idle} idle tunnels, {args.latency} warm setups, "
        f"ratls key exchange: {args.groups or 'OpenSSL default'}"
    )
    results: dict[str, dict[str, list[float]]] = {n: {k: [] for _, k in METRICS} for n in names}
    ratios: dict[str, dict[str, list[float]]] = {n: {k: [] for _, k in METRICS} for n in names}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, backend_process() as port:
        work = Path(tmp)
        make_pki(work)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            this: dict[str, dict[str, float]] = {}
            for name in order:
                topo = starters[name](port, work)
                try:
                    cold, warm, spaced = setup_latency(topo, args.latency)
                    rate = tunnel_rate(topo, args.tunnels, args.conc)
                    mem = idle_memory(topo, args.idle)
                    burst = burst_memory(topo, args.burst)
                    mbps, cpu = throughput(topo, size)
                    mbps_n = parallel_throughput(topo, size, args.streams)
                finally:
                    topo.stop()
                this[name] = {
                    "mbps": mbps,
                    "mbps_n": mbps_n,
                    "cpu": cpu,
                    "cold": cold * 1e3,
                    "warm": warm * 1e3,
                    "spaced": spaced * 1e3,
                    "rate": rate,
                    "mem": mem,
                    "burst": burst,
                }
            print(f"\nround {rnd + 1} (order {', '.join(order)})")
            print(f"  {'':14s}" + "".join(f"{label:>22s}" for label, _ in METRICS))
            ref = this.get("stunnel")
            for name in names:
                row = this[name]
                cells = []
                for _, key in METRICS:
                    base = ref[key] if ref else None
                    cells.append(f"{fmt(row[key], base):>22s}")
                    results[name][key].append(row[key])
                    if base and not math.isnan(base) and not math.isnan(row[key]):
                        ratios[name][key].append(row[key] / base)
                print(f"  {name:14s}" + "".join(cells))
    print(f"\nsummary: median of {args.rounds} rounds (ratio to stunnel: median per-round ratio)")
    print(f"  {'':14s}" + "".join(f"{label:>22s}" for label, _ in METRICS))
    for name in names:
        cells = []
        for _, key in METRICS:
            value = statistics.median(results[name][key])
            ratio = (
                f"{statistics.median(ratios[name][key]):6.2f}x" if ratios[name][key] else "  -    "
            )
            cells.append(f"{value:10.2f}  ({ratio})".rjust(22))
        print(f"  {name:14s}" + "".join(cells))
    print(f"\n(wall time {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
