"""``ratls spdm responder|requester`` through a parser built with ``add_commands``.

The responder command runs in a thread (it serves until SHUTDOWN); the requester talks to
it over 127.0.0.1.  Exit codes follow ``ratls.cli.main``: EvidenceVerificationError is
"FAIL:" and 1, any other RatlsError 2.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ratls._cli_spdm import add_commands
from ratls._errors import EvidenceVerificationError, RatlsError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SIM_POLICY = """
[snp]
allow_any_measurement = true
[vtpm]
allow_unproven_ak = true
"""
TRUSTED_SIM_POLICY = SIM_POLICY + "[trust]\nsimulated_hardware = true\n"


def run(argv: list[str]) -> int:
    """Parse and run like ``ratls.cli.main`` does."""
    parser = argparse.ArgumentParser(prog="ratls")
    verbs: Any = parser.add_subparsers(dest="verb", required=True)
    add_commands(verbs)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except EvidenceVerificationError as exc:
        print(f"FAIL: {exc}")
        return 1
    except RatlsError as exc:
        print(f"error: {exc}")
        return 2
    return code


class Responder:
    """``ratls spdm responder`` running in a thread."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        self.port_file = tmp_path / "port"
        self.cert = tmp_path / "responder.der"
        self.code: int | None = None
        self.transport = (
            options[options.index("--transport") + 1] if "--transport" in options else "mctp"
        )
        argv = [
            "spdm",
            "responder",
            "--sim",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            "--cert-out",
            str(self.cert),
            *options,
        ]
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self.thread.start()
        for _ in range(3000):  # the simulator and swtpm start within seconds
            if self.port_file.exists() and self.port_file.read_text().endswith("\n"):
                break
            if not self.thread.is_alive():
                raise AssertionError("the responder command ended early")
            time.sleep(0.01)
        self.port = int(self.port_file.read_text())

    def _run(self, argv: list[str]) -> None:
        self.code = run(argv)

    def shutdown(self) -> None:
        """Stop it (as a requester would with SHUTDOWN) unless it already stopped."""
        if self.thread.is_alive():
            from ratls.spdm import EmuCommand, TransportKind, connect_spdm_channel

            kind = TransportKind(self.transport)
            channel = connect_spdm_channel("127.0.0.1", self.port, kind)
            channel.finish(EmuCommand.SHUTDOWN)
            channel.close()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    rsp = Responder(tmp_path, "--no-vtpm")
    yield rsp
    rsp.shutdown()


def requester(port: int, *options: str) -> list[str]:
    return ["spdm", "requester", "--host", "127.0.0.1", "--port", str(port), *options]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


def test_requester_runs_every_step(
    responder: Responder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, TRUSTED_SIM_POLICY)
    assert run(requester(responder.port, "--policy", policy, "--echo", "hello")) == 0
    out = capsys.readouterr().out
    steps = [line.split()[0] for line in out.splitlines() if " ok " in line]
    assert steps == [
        "VCA",
        "DIGESTS",
        "CERTIFICATE",
        "CHALLENGE",
        "MEASUREMENTS",
        "KEY_EXCHANGE",
        "FINISH",
        "MEASUREMENTS",
        "HEARTBEAT",
        "KEY_UPDATE",
        "APPLICATION",
        "END_SESSION",
    ]
    assert out.rstrip().endswith("all steps passed")
    assert "fresh evidence bound to the nonce" in out


def test_shutdown_stops_the_responder(
    responder: Responder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, TRUSTED_SIM_POLICY)
    assert run(requester(responder.port, "--policy", policy, "--end", "shutdown")) == 0
    responder.thread.join(timeout=60)
    assert responder.code == 0
    out = capsys.readouterr().out
    assert "SHUTDOWN received" in out
    assert "connection from 127.0.0.1" in out


def test_continue_keeps_the_responder_serving(responder: Responder, tmp_path: Path) -> None:
    policy = write(tmp_path, TRUSTED_SIM_POLICY)
    assert run(requester(responder.port, "--policy", policy)) == 0
    assert run(requester(responder.port, "--policy", policy)) == 0
    assert responder.thread.is_alive()


def test_trust_anchor_pins_the_written_certificate(
    responder: Responder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(requester(responder.port, "--trust-anchor", str(responder.cert))) == 0
    assert "chain verified against the trust anchor" in capsys.readouterr().out


def test_another_trust_anchor_fails(
    responder: Responder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    now = datetime.now(UTC)
    other = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    anchor = tmp_path / "other.der"
    anchor.write_bytes(other.public_bytes(serialization.Encoding.DER))
    assert run(requester(responder.port, "--trust-anchor", str(anchor))) == 1
    assert "FAIL: spdm.chain.root" in capsys.readouterr().out


def test_simulator_not_trusted_fails(
    responder: Responder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, SIM_POLICY)
    assert run(requester(responder.port, "--policy", policy)) == 1
    assert "FAIL: snp.trust_anchor" in capsys.readouterr().out
    # The same policy with --trust-simulator passes.
    assert run(requester(responder.port, "--policy", policy, "--trust-simulator")) == 0


def test_wrong_measurement_fails(
    responder: Responder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(
        tmp_path,
        TRUSTED_SIM_POLICY.replace(
            "allow_any_measurement = true", f'measurements = ["{"00" * 48}"]'
        ),
    )
    assert run(requester(responder.port, "--policy", policy)) == 1
    assert "FAIL: snp.measurement" in capsys.readouterr().out


def test_debug_guest_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rsp = Responder(tmp_path, "--debug-guest", "--key", "p256", "--transport", "tcp")
    try:
        policy = write(tmp_path, TRUSTED_SIM_POLICY)
        code = run(requester(rsp.port, "--policy", policy, "--transport", "tcp"))
    finally:
        rsp.shutdown()
    assert code == 1
    assert "FAIL: snp.policy.debug" in capsys.readouterr().out


def test_verbose_trace_shows_every_message(
    responder: Responder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, TRUSTED_SIM_POLICY)
    assert run(requester(responder.port, "--policy", policy, "--verbose")) == 0
    out = capsys.readouterr().out
    assert "    -> GetVersion(version=16)" in out
    assert "       5 bytes: 0510840000" in out  # MCTP type 5, then GET_VERSION
    assert "    <- " in out
    assert "Capabilities(" in out
    assert "block 0x02 type 0x84 1184 bytes" in out  # the SNP report, raw
    assert "block 0xfe type 0x85 16 bytes" in out  # the device mode
    assert "KeyUpdate(key_operation=<KeyUpdateOperation.VERIFY_NEW_KEY" in out


def test_none_transport_skips_the_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rsp = Responder(tmp_path, "--no-vtpm", "--transport", "none")
    policy = write(tmp_path, TRUSTED_SIM_POLICY)
    code = run(requester(rsp.port, "--policy", policy, "--transport", "none", "--end", "shutdown"))
    rsp.thread.join(timeout=60)
    assert code == 0
    assert rsp.code == 0
    out = capsys.readouterr().out
    assert "skipped: the none transport has no sessions" in out
    assert "KEY_EXCHANGE" not in out


def test_responder_needs_sim(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["spdm", "responder"]) == 2
    assert "--sim" in capsys.readouterr().out


def test_requester_to_nobody_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert run(requester(port, "--policy", write(tmp_path, TRUSTED_SIM_POLICY))) == 2
    assert "cannot connect" in capsys.readouterr().out


def test_requester_needs_a_trust_decision() -> None:
    with pytest.raises(SystemExit):
        run(requester(1))


def test_unreadable_trust_anchor_is_an_error(tmp_path: Path) -> None:
    assert run(requester(1, "--trust-anchor", str(tmp_path / "missing.der"))) == 2


@pytest.mark.swtpm
@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")
def test_vtpm_responder_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rsp = Responder(tmp_path, "--transport", "mctp")
    policy = write(tmp_path, TRUSTED_SIM_POLICY)
    code = run(requester(rsp.port, "--policy", policy, "--end", "shutdown"))
    rsp.thread.join(timeout=60)
    assert code == 0
    out = capsys.readouterr().out
    assert "SNP + vTPM evidence" in out
    assert "vTPM quote of 8 PCRs" in out


def test_launch_measurement_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = "ab" * 48
    rsp = Responder(tmp_path, "--no-vtpm", "--measurement", digest)
    try:
        policy = write(
            tmp_path,
            TRUSTED_SIM_POLICY.replace(
                "allow_any_measurement = true", f'measurements = ["{digest}"]'
            ),
        )
        assert run(requester(rsp.port, "--policy", policy)) == 0
    finally:
        rsp.shutdown()
    assert "measurement=abababab" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["zz", "ab" * 47])
def test_launch_measurement_must_be_48_hex_bytes(value: str) -> None:
    with pytest.raises(SystemExit):
        run(["spdm", "responder", "--sim", "--measurement", value])
