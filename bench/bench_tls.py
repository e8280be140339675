"""How much does attestation cost a TLS connection?  Prints figures; asserts nothing.

Everything runs over loopback TCP in this process, on the same stack (trio + pyOpenSSL
memory BIOs, ``AttestedTLSStream``), so the ratios isolate what attestation adds:

* **handshakes per second**, sequential and with ``--in-flight`` connections at once:
  mutual TLS 1.3 with attestation off (fixed certificates) against mutual attested TLS
  through the public API (``serve_attested`` / ``open_attested_stream``), in four
  variants: ``bound`` mode with simulated SEV-SNP evidence made fresh for each side of
  each connection; ``cert`` mode; ``bound`` mode with simulated SNP + vTPM evidence
  (``svsm`` profile: a fresh VMPL-0 report and a swtpm quote per side and connection, the
  credential activation remembered after the first; each side has its own swtpm;
  skipped without swtpm); and ``cert`` mode with SNP + vTPM evidence (a guest report, a
  quote and a VMPL-0 report in each certificate; AKs unproven).  Cert-mode evidence is
  replayable by design: each side's evidence certificate is made once per attester and
  renewed every 60 s, and a verified certificate is remembered while its evidence is
  valid, so a cert-mode connection makes and checks no new evidence.  The variant
  "cert, SNP+vTPM, new certs" makes both sides' keys, evidence and certificates anew for
  every connection (the client passes each its own ``identity``; the server renews its
  certificate after a microsecond), so every connection also checks two fresh
  certificates: what cert mode costs when its evidence must be as fresh as bound
  mode's (it still carries no channel binding).  Evidence is verified and appraised on
  both sides;
* **throughput** of one established stream, plain against attested (after the exchange an
  attested stream is a plain TLS stream, so this should be ~1.0);
* the cost split: producing and verifying one side's evidence (both sides of every
  connection run in this one process, so an attested handshake here pays both);
* optionally (``--openssl``) ``openssl s_time`` against ``openssl s_server``, mutual TLS
  1.3, as a reference from outside Python measured in the same run.

Usage: .venv/bin/python bench/bench_tls.py [--seconds 3] [--in-flight 100] [--mib 64] [--openssl]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from cryptography.hazmat.primitives import serialization

from ratls._api import evidence_identity, open_attested_stream, serve_attested
from ratls._bound import BoundVerifier, SimulatedSnpAttester, SimulatedVtpmAttester
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._snp_report import ProductLine
from ratls._tls_context import (
    generate_ephemeral_identity,
    make_client_context,
    make_server_context,
)
from ratls._tls_stream import AttestedTLSStream
from ratls.sim import simulated_amd_sp

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ratls._api import Mode
    from ratls._exchange import LocalAttester

POLICY = Policy(
    snp=SnpPolicy(
        measurements=frozenset({hashlib.sha384(b"ratls simulated guest launch").digest()})
    ),
    trust=TrustPolicy(simulated_hardware=True),
)
# SNP + vTPM peers: the same measurement; the simulated vTPM's PCRs are not pinned here.
VTPM_POLICY = POLICY
# Cert mode cannot prove a vTPM's AK by activation: its policy accepts unproven AKs.
CERT_VTPM_POLICY = dataclasses.replace(POLICY, vtpm=VtpmPolicy(allow_unproven_ak=True))
CHUNK = 65536
#: The cert-mode variant that makes new certificates for every connection, both sides.
FRESH_CERT = "cert, SNP+vTPM, new certs"
#: Its server's certificate renewal: shorter than any handshake, so one per connection.
FRESH_RENEWAL = 1e-6


async def server_handler(stream: AttestedTLSStream[Any]) -> None:
    """Send one byte once the handshake is done, then sink whatever arrives."""
    await stream.do_handshake()
    await stream.send_all(b"!")
    while await stream.receive_some(CHUNK):
        pass


async def plain_server(
    port_box: list[int], task_status: trio.TaskStatus[list[trio.SocketListener]]
) -> None:
    key, cert = generate_ephemeral_identity()
    context = make_server_context(key, cert, attested=False)

    async def one(transport: trio.SocketStream) -> None:
        stream = AttestedTLSStream(transport, context, server_side=True)
        try:
            await server_handler(stream)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port_box.append(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(one, listeners, task_status=task_status)


def plain_client() -> Callable[[int], Awaitable[AttestedTLSStream[Any]]]:
    key, cert = generate_ephemeral_identity()
    context = make_client_context(key, cert, attested=False)

    async def connect(port: int) -> AttestedTLSStream[Any]:
        transport = await trio.open_tcp_stream("127.0.0.1", port)
        stream = AttestedTLSStream(transport, context, server_side=False)
        await stream.do_handshake()
        return stream

    return connect


def attested_client(
    attester: LocalAttester, *, mode: Mode = "bound", policy: Policy = POLICY
) -> Callable[[int], Awaitable[Any]]:
    async def connect(port: int) -> AttestedTLSStream[Any]:
        return await open_attested_stream(
            "127.0.0.1", port, attester=attester, policy=policy, mode=mode
        )

    return connect


def fresh_cert_client(
    attester: LocalAttester, *, policy: Policy
) -> Callable[[int], Awaitable[Any]]:
    """Cert mode with a new key and evidence certificate for every connection."""

    async def connect(port: int) -> AttestedTLSStream[Any]:
        identity = await trio.to_thread.run_sync(evidence_identity, attester)
        return await open_attested_stream(
            "127.0.0.1", port, attester=attester, policy=policy, mode="cert", identity=identity
        )

    return connect


async def one_connection(connect: Callable[[int], Awaitable[Any]], port: int) -> None:
    stream = await connect(port)
    assert await stream.receive_some(1) == b"!"
    await stream.aclose()


async def handshake_rate(
    connect: Callable[[int], Awaitable[Any]], port: int, seconds: float, in_flight: int
) -> float:
    count = 0
    deadline = trio.current_time() + seconds
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal count
        while trio.current_time() < deadline:
            await one_connection(connect, port)
            count += 1

    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - start)


async def throughput(connect: Callable[[int], Awaitable[Any]], port: int, mib: int) -> float:
    stream = await connect(port)
    await stream.receive_some(1)
    block = bytes(CHUNK)
    total = mib * 1024 * 1024
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        await stream.send_all(block)
    await stream.aclose()
    return total / (time.perf_counter() - start) / 1e6


def show(label: str, value: float, unit: str, reference: float | None = None) -> None:
    ratio = f"   {value / reference:5.2f}x plain" if reference else ""
    print(f"{label:<52} {value:>9.1f} {unit}{ratio}")


def openssl_rate(seconds: float) -> float | None:
    """Handshakes per second of openssl s_time against openssl s_server (mutual TLS 1.3)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        for name in ("server", "client"):
            key, cert = generate_ephemeral_identity()
            (directory / f"{name}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        port = free_port()
        server = subprocess.Popen(  # noqa: S603 - openssl from PATH, fixed arguments
            [
                openssl,
                "s_server",
                "-accept",
                f"127.0.0.1:{port}",
                "-tls1_3",
                "-quiet",
                "-www",
                "-cert",
                str(directory / "server.pem"),
                "-key",
                str(directory / "server.key"),
                "-Verify",
                "1",
                "-verify_return_error",
                "-CAfile",
                str(directory / "client.pem"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # let it bind; s_time retries nothing
            done = subprocess.run(  # noqa: S603 - openssl from PATH, fixed arguments
                [
                    openssl,
                    "s_time",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-new",
                    "-tls1_3",
                    "-time",
                    str(max(1, int(seconds))),
                    "-cert",
                    str(directory / "client.pem"),
                    "-key",
                    str(directory / "client.key"),
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=seconds + 60,
            )
        finally:
            server.terminate()
            server.wait()
    match = re.search(r"(\d+) connections in ([\d.]+)s", done.stdout)
    if match is None:
        return None
    return int(match.group(1)) / float(match.group(2))


def free_port() -> int:
    """A free loopback port (bound, then released for openssl to take)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def start_attested_server(
    nursery: trio.Nursery,
    attester: LocalAttester,
    *,
    mode: Mode = "bound",
    policy: Policy,
    cert_renewal: float | None = None,
) -> int:
    options: dict[str, Any] = {"attester": attester, "policy": policy, "mode": mode}
    if cert_renewal is not None:
        options["cert_renewal"] = cert_renewal
    listeners = await nursery.start(partial(serve_attested, server_handler, 0, **options))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def main(args: argparse.Namespace) -> None:
    sp = simulated_amd_sp(ProductLine.GENOA)  # made once, before any timing
    attester = SimulatedSnpAttester(sp)
    plain_connect = plain_client()
    attested_connect = attested_client(attester)
    with contextlib.ExitStack() as vms:
        variants: list[tuple[str, Callable[[int], Awaitable[Any]], LocalAttester, Mode, Policy]]
        variants = [
            ("bound, SNP", attested_connect, attester, "bound", POLICY),
            ("cert, SNP", attested_client(attester, mode="cert"), attester, "cert", POLICY),
        ]
        if shutil.which("swtpm") and shutil.which("swtpm_setup"):
            client_vm = vms.enter_context(SimulatedVtpmAttester(sp))
            server_vm = vms.enter_context(SimulatedVtpmAttester(sp))
            vtpm_connect = attested_client(client_vm, policy=VTPM_POLICY)
            variants.append(("bound, SNP+vTPM", vtpm_connect, server_vm, "bound", VTPM_POLICY))
            cert_vtpm = attested_client(client_vm, mode="cert", policy=CERT_VTPM_POLICY)
            variants.append(("cert, SNP+vTPM", cert_vtpm, server_vm, "cert", CERT_VTPM_POLICY))
            fresh = fresh_cert_client(client_vm, policy=CERT_VTPM_POLICY)
            variants.append((FRESH_CERT, fresh, server_vm, "cert", CERT_VTPM_POLICY))
        await run_all(args, plain_connect, variants)


async def run_all(
    args: argparse.Namespace,
    plain_connect: Callable[[int], Awaitable[Any]],
    variants: list[tuple[str, Callable[[int], Awaitable[Any]], LocalAttester, Mode, Policy]],
) -> None:
    attester = variants[0][2]
    attested_connect = variants[0][1]
    async with trio.open_nursery() as nursery:
        box: list[int] = []
        await nursery.start(plain_server, box)
        plain_port = box[0]
        ports = []
        for label, connect, server_attester, mode, policy in variants:
            # The per-connection variant's server renews its certificate for every one.
            renewal = FRESH_RENEWAL if label == FRESH_CERT else None
            port = await start_attested_server(
                nursery, server_attester, mode=mode, policy=policy, cert_renewal=renewal
            )
            await one_connection(connect, port)  # warm up: boots the VMs, remembers chains
            ports.append(port)
        attested_port = ports[0]
        await one_connection(plain_connect, plain_port)

        print(f"loopback, {args.seconds:g} s per figure, simulated evidence made per connection")
        for in_flight in (1, args.in_flight):
            plain = await handshake_rate(plain_connect, plain_port, args.seconds, in_flight)
            show(f"plain mutual TLS 1.3 handshakes, {in_flight} in flight", plain, "/s")
            for (label, connect, _, _, _), port in zip(variants, ports, strict=True):
                rate = await handshake_rate(connect, port, args.seconds, in_flight)
                show(f"attested ({label}), {in_flight} in flight", rate, "/s", plain)

        plain_mb = await throughput(plain_connect, plain_port, args.mib)
        attested_mb = await throughput(attested_connect, attested_port, args.mib)
        show(f"plain stream throughput ({args.mib} MiB)", plain_mb, "MB/s")
        show(f"attested stream throughput ({args.mib} MiB)", attested_mb, "MB/s", plain_mb)
        nursery.cancel_scope.cancel()

    # Where the attested handshake's extra time goes (per side, per connection).
    binder = bytes(64)
    evidence = attester.evidence(binder)
    verifier = BoundVerifier(POLICY)
    for label, fn in (
        ("  cost: produce simulated SNP evidence", lambda: attester.evidence(binder)),
        ("  cost: verify + appraise SNP evidence", lambda: verifier.verify(evidence, binder)),
    ):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds / 2:
            fn()
            count += 1
        show(label, (time.perf_counter() - start) / count * 1e3, "ms")

    await openssl_reference(args)


async def openssl_reference(args: argparse.Namespace) -> None:
    if args.openssl:
        rate = await trio.to_thread.run_sync(openssl_rate, args.seconds)
        if rate is None:
            print("openssl s_time: not available")
        else:
            print(f"{'openssl s_time -> s_server, mutual TLS 1.3':<52} {rate:>9.1f} /s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--openssl", action="store_true")
    trio.run(main, parser.parse_args())
