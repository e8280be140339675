"""UDP through the ratls gateways against UDP straight to the backend.  No asserts.

Topology: driver (this process) → ingress (``ratls-gateway run``, ``[[ingress.udp]]``)
══ attested link ══▶ egress (a ``protocol = "udp"`` route) → backend, a UDP echo server
in its own process.  Both gateways use the simulated SEV-SNP attester and the example
policy, so every flow is a mutually attested TLS 1.3 link with fresh evidence both ways.
The reference is the same driver talking to the backend directly, in the same run
(stunnel carries no UDP).

Figures, for datagrams of ``--size`` bytes:

* **new flow**: the first datagram's round trip from a new client port (the ingress
  makes a flow, and its tunnel, on it), the median of ``--flows`` new ports;
* **round trip**: ping-pong on an established flow, the median of ``--pings``;
* **datagrams per second**: ``--count`` datagrams sent with up to ``--window``
  unanswered, answers counted (UDP may drop: the loss is printed);
* **hop CPU per datagram**: user + system time of both gateway processes.

Usage: .venv/bin/python bench/bench_udp.py [--size 1200] [--flows 30] [--pings 500]
       [--count 50000] [--window 64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["main"]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A loopback port of ``kind`` nobody uses (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_echo(port: int) -> None:
    """The backend process (role ``echo``): answer each datagram with itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((HOST, port))
        while True:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)


@contextlib.contextmanager
def processes(work: Path, backend: int) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """The echo backend and both gateways; yields the ingress's UDP port and the hops."""
    link, entry = free_port(socket.SOCK_STREAM), free_port()
    admin_in, admin_out = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    policy = REPO / "examples" / "policy.toml"
    att = f'[attestation]\nattester = "sim"\npolicy = "{policy}"\nproduct = "Genoa"\n'
    (work / "egress.toml").write_text(
        f'{att}[admin]\nlisten = "{HOST}:{admin_out}"\n'
        f'[[egress.listener]]\nname = "main"\nlisten = "{HOST}:{link}"\nroutes = ["echo"]\n'
        f'[[egress.route]]\nname = "echo"\nbackend = "{HOST}:{backend}"\nprotocol = "udp"\n'
    )
    (work / "ingress.toml").write_text(
        f'{att}[admin]\nlisten = "{HOST}:{admin_in}"\n'
        f'[[ingress.udp]]\nname = "echo"\nlisten = "{HOST}:{entry}"\n'
        f'egress = "{HOST}:{link}"\ntarget = "echo"\n'
    )
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "echo", "--port"]
    started = [subprocess.Popen([*argv, str(backend)])]  # noqa: S603 - this script
    try:
        for name in ("egress.toml", "ingress.toml"):
            run = [sys.executable, "-m", "gateway.cli", "run", str(work / name)]
            started.append(
                subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [*run, "--log-level", "warning"], stderr=subprocess.DEVNULL, cwd=work
                )
            )
        deadline = time.monotonic() + 60
        for port in (admin_out, admin_in):
            while True:
                url = f"http://{HOST}:{port}/readyz"
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateways did not become ready")
                time.sleep(0.05)
        yield entry, started[1:]
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.wait(10)


def round_trip(sock: socket.socket, port: int, payload: bytes) -> float:
    start = time.perf_counter()
    sock.sendto(payload, (HOST, port))
    sock.settimeout(30)
    data = sock.recv(65535)
    if data != payload:
        raise RuntimeError("the echo differs from what was sent")
    return time.perf_counter() - start


def new_flows(port: int, payload: bytes, count: int) -> float:
    """Median first round trip from ``count`` new client ports."""
    times = []
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            times.append(round_trip(sock, port, payload))
    return statistics.median(times)


def pings(port: int, payload: bytes, count: int) -> float:
    """Median round trip on one flow (after a first datagram opened it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        round_trip(sock, port, payload)
        return statistics.median(round_trip(sock, port, payload) for _ in range(count))


def blast(port: int, payload: bytes, count: int, window: int) -> tuple[float, int]:
    """(answers per second, answers) for ``count`` datagrams, ``window`` unanswered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        round_trip(sock, port, payload)  # the flow exists before timing
        sock.setblocking(False)
        sent = received = 0
        start = time.perf_counter()
        quiet_since = start
        while received < count:
            while sent < count and sent - received < window:
                sock.sendto(payload, (HOST, port))
                sent += 1
            ready, _, _ = select.select([sock], [], [], 0.2)
            now = time.perf_counter()
            if not ready:
                if now - quiet_since > 1.0:
                    break  # what is still unanswered was lost
                continue
            quiet_since = now
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(65535)
                    received += 1
        seconds = quiet_since - start
    return received / seconds, received


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["driver", "echo"], default="driver")
    parser.add_argument("--port", type=int)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--flows", type=int, default=30)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args(argv)
    if args.role == "echo":
        run_echo(args.port)
        return 0
    payload = os.urandom(args.size)
    backend = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="bench-udp-") as tmp,
        processes(Path(tmp), backend) as (entry, hops),
    ):
        rows = {}
        for name, port in (("direct", backend), ("ratls", entry)):
            cpu0 = sum(cpu_seconds(p.pid) for p in hops)
            rate, answered = blast(port, payload, args.count, args.window)
            cpu = sum(cpu_seconds(p.pid) for p in hops) - cpu0
            rows[name] = {
                "flow": new_flows(port, payload, args.flows) * 1e3,
                "rtt": pings(port, payload, args.pings) * 1e3,
                "rate": rate,
                "loss": 1 - answered / args.count,
                "cpu": cpu / max(answered, 1) * 1e6,
            }
    print(
        f"bench_udp: {os.cpu_count()} CPUs, {args.size}-byte datagrams, {args.flows} new "
        f"flows, {args.pings} pings, {args.count} datagrams {args.window} in flight"
    )
    print(f"  {'':8s}{'new flow ms':>14s}{'round trip ms':>16s}{'datagrams/s':>14s}"
          f"{'loss':>8s}{'hop CPU us/dgram':>18s}")  # fmt: skip
    ref = rows["direct"]
    for name, row in rows.items():
        print(
            f"  {name:8s}{row['flow']:14.3f}{row['rtt']:16.3f}{row['rate']:14.0f}"
            f"{row['loss']:8.1%}{row['cpu']:18.1f}"
            + (f"   ({row['rate'] / ref['rate']:.2f}x direct's rate)" if name != "direct" else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
