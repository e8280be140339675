"""``ratls demo``: the end-to-end demonstration on the simulator.

What it shows, in one process and on loopback sockets only:

1. an ordinary backend service (plain HTTP, knows nothing about attestation, but reads
   the ``X-Ratls-Peer-*`` headers in which the egress passes on what it verified about
   the client side's gateway);
2. a simulated confidential VM in front of it: a software AMD-SP (its own ARK/ASK/VCEK
   chain), a simulated SVSM at VMPL0 and a fresh swtpm vTPM, running the **egress
   gateway** with the ``sim+vtpm`` attester;
3. the **ingress gateway** in the client network (attester ``sim``), with a port mapping
   and an HTTP CONNECT proxy;
4. an unchanged client sending requests through ingress -> attested TLS -> egress ->
   backend, and the attestation each gateway verified for the tunnel (SNP report chained to
   the simulated AMD root, vTPM quote, AK proven by credential activation);
5. a tampered confidential VM (another launch measurement) being refused: no byte reaches
   its backend, and the client is told why.

Every gateway reads a TOML configuration written to a temporary directory, exactly as
``ratls-gateway run`` would, and every swtpm process is stopped on the way out.
"""

from __future__ import annotations

import logging
import secrets
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from gateway import RunningGateway

__all__ = ["run_demo"]

#: How long any one step of the demo may take before it is reported as stuck.  Booting a
#: simulated VM (RSA-4096 keys, swtpm manufacture) takes about a second here.
STEP_TIMEOUT: Final = 60.0

_STEP: Final = "==>"


def _say(message: str) -> None:
    print(f"{_STEP} {message}", flush=True)


def _detail(message: str) -> None:
    print(f"      {message}", flush=True)


class _Events(logging.Handler):
    """Collects the gateways' structured log records (for the refusal reasons)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[dict[str, object]] = []
        self._changed = trio.Event()

    def changed(self) -> trio.Event:
        """An event that is set when the next record arrives."""
        if self._changed.is_set():
            self._changed = trio.Event()
        return self._changed

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        entry: dict[str, object] = {"message": record.getMessage()}
        if isinstance(fields, dict):
            entry.update(fields)
        self.records.append(entry)
        self._changed.set()


def _policy_toml(measurement: bytes) -> str:
    return (
        "# What each gateway demands of the other.  The simulator's roots are trusted\n"
        "# only because this file says so in plain words.\n"
        "[trust]\nsimulated_hardware = true\n\n"
        f'[snp]\nmeasurements = ["{measurement.hex()}"]\nvmpl = "any"\n'
        "# [vtpm] allow_unproven_ak stays false: the egress must prove its AK lives in\n"
        "# the attested vTPM (credential activation inside the attestation exchange).\n"
    )


def _egress_toml(name: str, policy: Path, backend: tuple[str, int], measurement: str) -> str:
    extra = f'measurement = "{measurement}"\n' if measurement else ""
    return (
        f"# egress gateway of {name}: runs inside the (simulated) confidential VM\n"
        f'[attestation]\nattester = "sim+vtpm"\npolicy = "{policy}"\n{extra}\n'
        f'[[egress.listener]]\nname = "main"\nlisten = "127.0.0.1:0"\nroutes = ["web"]\n'
        f'allow = ["{backend[0]}:{backend[1]}"]\n\n'
        f'[[egress.route]]\nname = "web"\nbackend = "{backend[0]}:{backend[1]}"\n'
        "http_headers = true\n"
    )


def _ingress_toml(policy: Path, good: tuple[str, int], bad: tuple[str, int]) -> str:
    return (
        "# ingress gateway: runs in the client network\n"
        f'[attestation]\nattester = "sim"\npolicy = "{policy}"\n\n'
        f'[[ingress.mapping]]\nname = "web"\nlisten = "127.0.0.1:0"\n'
        f'egress = "{good[0]}:{good[1]}"\ntarget = "web"\n\n'
        f'[[ingress.http_connect]]\nname = "proxy-to-tampered-vm"\nlisten = "127.0.0.1:0"\n'
        f'egress = "{bad[0]}:{bad[1]}"\n'
    )


class _Backend:
    """A plain HTTP/1.0 service that records every byte it receives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = bytearray()

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = bytearray()
            with trio.move_on_after(STEP_TIMEOUT):
                while b"\r\n\r\n" not in request:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    request += chunk
            self.received += request
            lines = bytes(request).split(b"\r\n\r\n", 1)[0].decode("latin-1", "replace")
            line, *fields = lines.split("\r\n")
            vouched = [
                value.strip()
                for name, _, value in (field.partition(":") for field in fields)
                if name.strip().lower() == "x-ratls-peer-measurement"
            ]
            said = (
                f"; the gateway vouches for the client side: {vouched[0][:16]}..."
                if vouched
                else ""
            )
            body = f"hello from the {self.name}; you asked: {line}{said}\n".encode()
            head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            await stream.send_all(head + body)


async def _start_gateway(nursery: trio.Nursery, path: Path, events: _Events) -> RunningGateway:
    from gateway import load_config, run_gateway
    from gateway._ratls_provider import register_ratls_providers

    register_ratls_providers()
    config = load_config(path)
    gateway: RunningGateway = await nursery.start(run_gateway, config)
    with trio.fail_after(STEP_TIMEOUT):
        await gateway.wait_ready()
    return gateway


async def _http_get(address: tuple[str, int] | str, path: str) -> bytes:
    assert isinstance(address, tuple)  # noqa: S101 - the demo configures TCP listeners only
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: backend\r\n\r\n".encode())
        response = bytearray()
        with trio.fail_after(STEP_TIMEOUT):
            while chunk := await stream.receive_some(65536):
                response += chunk
    return bytes(response)


async def _http_connect(address: tuple[str, int] | str, target: str) -> bytes:
    assert isinstance(address, tuple)  # noqa: S101 - the demo configures TCP listeners only
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        response = bytearray()
        with trio.fail_after(STEP_TIMEOUT):
            while chunk := await stream.receive_some(65536):
                response += chunk
    return bytes(response)


async def _tunnel_lines(
    events: _Events, start: int, count: int, *, routed: bool = False
) -> list[dict[str, object]]:
    """The access-log lines logged since record ``start``, once ``count`` of them are there.

    With ``routed``, only tunnels that opened a route (not bare attestation checks).
    """

    def lines() -> list[dict[str, object]]:
        return [
            entry
            for entry in events.records[start:]
            if entry.get("message") == "tunnel"
            and (not routed or str(entry.get("target", "")).startswith("route:"))
        ]

    with trio.move_on_after(STEP_TIMEOUT):
        while len(lines()) < count:
            await events.changed().wait()
    return lines()


async def _show_direct_attestation(address: tuple[str, int] | str, policy: Path) -> None:
    """Open one attested connection to the egress and print every verified claim."""
    from ._api import open_attested_stream
    from ._result import AttestationResult

    assert isinstance(address, tuple)  # noqa: S101 - the demo configures TCP listeners only
    stream = await open_attested_stream(address[0], address[1], attester="sim", policy=policy)
    async with stream:
        result = stream.peer_attestation
    if not isinstance(result, AttestationResult):  # pragma: no cover - the verifier's type
        return
    report = result.snp.report
    rows = [
        ("profile", f"{result.profile} (SNP report at VMPL0 binds the vTPM's EK)"),
        ("trust anchor", f"{result.trust_anchor} root (trusted because policy.toml says so)"),
        (
            "product",
            f"{result.snp.product.value}, report version {report.version}, "
            f"signed by {result.snp.key_kind.name}",
        ),
        ("measurement", report.measurement.hex()),
        ("reported tcb", str(report.reported_tcb)),
        ("vmpl / debug", f"{report.vmpl} / {report.policy.debug}"),
        ("ak binding", f"{result.ak_binding} (credential activation in this connection)"),
    ]
    if result.vtpm is not None:
        claims = result.vtpm.claims()
        rows.append(("ek name", str(claims["ek_name"])))
        pcrs = claims["pcrs"]
        quoted = sorted(pcrs.get("sha256", {}), key=int) if isinstance(pcrs, dict) else []
        rows.append(
            (
                "quote",
                f"qualifying data bound to this TLS session; PCRs {', '.join(quoted)} (sha256)",
            )
        )
    rows.append(("policy", f"sha256:{result.policy_digest}"))
    for name, value in rows:
        _detail(f"{name:<13} {value}")


async def _demo(workdir: Path, product: str) -> int:
    from ratls.sim import simulated_amd_sp

    from ._snp_report import ProductLine

    events = _Events()
    gateway_logger = logging.getLogger("ratls.gateway")
    gateway_logger.addHandler(events)
    gateway_logger.setLevel(logging.INFO)
    gateway_logger.propagate = False
    started = time.monotonic()
    failures = 0
    try:
        sim = simulated_amd_sp(ProductLine(product))
        good_measurement = sim.build_report(report_data=bytes(64)).measurement
        tampered_measurement = secrets.token_bytes(48)
        policy = workdir / "policy.toml"
        policy.write_text(_policy_toml(good_measurement), encoding="utf-8")

        async with trio.open_nursery() as nursery, AsyncExitStack():
            good_backend = _Backend("confidential backend")
            bad_backend = _Backend("backend of the tampered VM")
            backends = []
            for backend in (good_backend, bad_backend):
                listeners = await nursery.start(
                    partial(trio.serve_tcp, backend.handle, 0, host="127.0.0.1")
                )
                backends.append(listeners[0].socket.getsockname()[:2])
            _say(f"backend service listening on {backends[0][0]}:{backends[0][1]} (plain HTTP)")

            _say(
                f"booting a simulated {product} confidential VM: software AMD-SP, SVSM at "
                "VMPL0, fresh swtpm vTPM; egress gateway in front of the backend"
            )
            egress_path = workdir / "egress.toml"
            egress_path.write_text(
                _egress_toml("the confidential VM", policy, backends[0], ""), encoding="utf-8"
            )
            egress = await _start_gateway(nursery, egress_path, events)
            egress_address = egress.address("egress:main")
            _detail(f"egress ready, attested listener on {egress_address}")

            _say("booting a second VM from a tampered image (another launch measurement)")
            bad_path = workdir / "tampered-egress.toml"
            bad_path.write_text(
                _egress_toml("the tampered VM", policy, backends[1], tampered_measurement.hex()),
                encoding="utf-8",
            )
            bad_egress = await _start_gateway(nursery, bad_path, events)
            bad_address = bad_egress.address("egress:main")

            _say("starting the ingress gateway in the client network")
            assert isinstance(egress_address, tuple)  # noqa: S101
            assert isinstance(bad_address, tuple)  # noqa: S101
            ingress_path = workdir / "ingress.toml"
            ingress_path.write_text(
                _ingress_toml(policy, egress_address, bad_address), encoding="utf-8"
            )
            ingress = await _start_gateway(nursery, ingress_path, events)
            mapping = ingress.address("mapping:web")
            proxy = ingress.address("http-connect:proxy-to-tampered-vm")
            _detail(f"port mapping {mapping} -> egress route 'web'")

            _say("a verifier checks the confidential VM directly (what the ingress checks too)")
            await _show_direct_attestation(egress_address, policy)

            for path in ("/", "/balance"):
                _say(f"client sends GET {path} to the ingress, unchanged (plain HTTP)")
                seen = len(events.records)
                response = await _http_get(mapping, path)
                status, _, body = response.partition(b"\r\n\r\n")
                _detail(f"response: {status.splitlines()[0].decode()} | {body.decode().strip()}")
                if b"200 OK" not in status:
                    failures += 1
                for entry in await _tunnel_lines(events, seen, 2, routed=True):
                    _detail(
                        f"{entry.get('side')} access log: peer = {entry.get('peer')}, "
                        f"link = {entry.get('tls')}"
                    )

            _say("client asks the ingress proxy for the tampered VM's backend")
            seen = len(events.records)
            refusal = await _http_connect(proxy, f"{backends[1][0]}:{backends[1][1]}")
            first_line = refusal.split(b"\r\n", 1)[0].decode("latin-1")
            reason = next(
                (
                    line.split(b":", 1)[1].strip().decode("latin-1")
                    for line in refusal.split(b"\r\n")
                    if line.lower().startswith(b"ratls-gateway-reason:")
                ),
                "",
            )
            _detail(f"REFUSED: {first_line} (reason: {reason or 'none given'})")
            for entry in await _tunnel_lines(events, seen, 2):
                if entry.get("side") == "ingress" and entry.get("result") != "ok":
                    _detail(f"ingress access log: {entry.get('result')}: {entry.get('detail')}")
            if b" 502 " not in refusal.split(b"\r\n", 1)[0] + b" ":
                failures += 1
            if bad_backend.received:
                _detail("NOT FAIL-CLOSED: the tampered VM's backend received bytes")
                failures += 1
            else:
                _detail("the tampered VM's backend received 0 bytes (fail closed)")

            _say("stopping the gateways (each stops its swtpm vTPM) and the backends")
            for gateway in (ingress, bad_egress, egress):
                gateway.request_shutdown()
            for gateway in (ingress, bad_egress, egress):
                with trio.move_on_after(STEP_TIMEOUT):
                    await gateway.wait_stopped()
            nursery.cancel_scope.cancel()
    finally:
        gateway_logger.removeHandler(events)
        gateway_logger.propagate = True
    elapsed = time.monotonic() - started
    if failures:
        _say(f"demo FAILED: {failures} step(s) did not behave as expected")
        return 1
    _say(
        f"demo complete in {elapsed:.1f} s: traffic flowed through an attested tunnel to the "
        "confidential VM; the tampered VM was refused and its backend saw nothing"
    )
    return 0


def run_demo(*, product_name: str = "Genoa") -> int:
    """Run the demo; returns 0 when every step behaved as expected."""
    with tempfile.TemporaryDirectory(prefix="ratls-demo-") as workdir:
        try:
            return trio.run(_demo, Path(workdir), product_name)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
