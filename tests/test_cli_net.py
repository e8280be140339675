"""Tests for ``ratls serve`` and ``ratls connect`` (ratls._cli_net), run as real processes."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import re
import shlex
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from ratls import cli
from ratls._cli_net import DEFAULT_EOF_WAIT, add_commands, main
from ratls._snp_report import ProductLine
from ratls.sim import SimulatedAmdSp

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SIM_MEASUREMENT = hashlib.sha384(b"ratls simulated guest launch").digest()


def _wired_into_ratls_cli() -> bool:
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.build_parser().parse_args(["connect", "localhost", "1"])
        except SystemExit:
            return False
    return True


# Run what users run (`ratls ...`) once the commands are registered there.
MODULE = "ratls.cli" if _wired_into_ratls_cli() else "ratls._cli_net"


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sim")
    SimulatedAmdSp.load_or_generate(directory, ProductLine.GENOA)  # once, before processes
    return directory


def _policy(directory: Path, name: str, measurement: bytes) -> Path:
    path = directory / name
    path.write_text(
        f'[trust]\nsimulated_hardware = true\n[snp]\nmeasurements = ["{measurement.hex()}"]\n'
    )
    return path


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _policy(tmp_path_factory.mktemp("policy"), "policy.toml", SIM_MEASUREMENT)


def command(sim_dir: Path, *args: str) -> list[str]:
    sim = ["--sim-dir", str(sim_dir)] if "--attester" in args else []
    return [sys.executable, "-bb", "-W", "error", "-m", MODULE, *args, *sim]


@contextlib.contextmanager
def server(sim_dir: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int, list[str]]]:
    """Start ``serve --port 0 ...``; yield the process, its port and its stderr so far."""
    proc = subprocess.Popen(  # noqa: S603 - our own entry point, fixed arguments
        command(sim_dir, "serve", "--port", "0", *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while True:
            line = proc.stderr.readline().decode()
            assert line, f"server exited early: {''.join(lines)}"
            lines.append(line)
            match = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                break
        yield proc, int(match.group(1)), lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


def run_connect(
    sim_dir: Path, port: int, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # noqa: S603 - our own entry point, fixed arguments
        command(sim_dir, "connect", "127.0.0.1", str(port), *args),
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


SIM = ("--attester", "sim")


def test_connect_pipes_a_line_and_gets_it_echoed(sim_dir: Path, policy: Path) -> None:
    with server(sim_dir, "--echo", *SIM, "--policy", str(policy)) as (srv, port, _):
        client = subprocess.Popen(  # noqa: S603 - our own entry point
            command(
                sim_dir,
                "connect",
                "127.0.0.1",
                str(port),
                *SIM,
                "--policy",
                str(policy),
                "--wait",
                "0",
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert client.stdin is not None
        assert client.stdout is not None
        client.stdin.write(b"hello attested world\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"hello attested world\n"
        client.stdin.close()
        assert client.wait(timeout=60) == 0
        assert client.stderr is not None
        err = client.stderr.read().decode()
        client.stdout.close()
        client.stderr.close()
        code, server_err = stop(srv)
    assert code == 0
    assert "server attested: snp Genoa VCEK anchor=simulator" in err
    assert f'"measurement": "{SIM_MEASUREMENT.hex()}"' in err
    assert "client attested: snp Genoa" in server_err
    assert "client closed the connection" in server_err


def test_piped_stdin_with_default_wait(sim_dir: Path, policy: Path) -> None:
    with server(sim_dir, "--echo", *SIM, "--policy", str(policy)) as (_, port, _):
        done = run_connect(sim_dir, port, *SIM, "--policy", str(policy), stdin=b"one shot\n")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"one shot\n"


def test_wrong_measurement_fails_on_both_sides(sim_dir: Path, policy: Path, tmp_path: Path) -> None:
    other = _policy(tmp_path, "other.toml", bytes(48))
    with server(sim_dir, "--echo", *SIM, "--policy", str(policy)) as (srv, port, _):
        done = run_connect(sim_dir, port, *SIM, "--policy", str(other), stdin=b"never sent\n")
        code, server_err = stop(srv)
    err = done.stderr.decode()
    assert done.returncode == cli.EXIT_VERIFICATION_FAILED
    assert "FAIL: snp.measurement" in err
    assert done.stdout == b""
    assert code == 0
    assert "FAIL: connection from" in server_err
    assert "MeasurementMismatch: snp.measurement" in server_err


def test_refused_client_exits_non_zero_with_reason(
    sim_dir: Path, policy: Path, tmp_path: Path
) -> None:
    other = _policy(tmp_path, "other.toml", bytes(48))
    with server(sim_dir, "--echo", *SIM, "--policy", str(other)) as (_, port, _):
        done = run_connect(sim_dir, port, *SIM, "--policy", str(policy), stdin=b"x\n")
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert "peer refused the attestation: MeasurementMismatch: snp.measurement" in (
        done.stderr.decode()
    )


def test_one_way_and_unattested_client(sim_dir: Path, policy: Path) -> None:
    with server(sim_dir, "--echo", *SIM, "--no-verify-peer") as (srv, port, _):
        done = run_connect(
            sim_dir, port, "--attester", "none", "--policy", str(policy), stdin=b"one-way\n"
        )
        _, server_err = stop(srv)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"one-way\n"
    assert "client not attested" in server_err


def test_unattested_client_refused_by_default(sim_dir: Path, policy: Path) -> None:
    with server(sim_dir, "--echo", *SIM, "--policy", str(policy)) as (_, port, _):
        done = run_connect(sim_dir, port, "--attester", "none", "--policy", str(policy))
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert "exchange.evidence" in done.stderr.decode()


def test_serve_without_echo_pipes_both_ways(sim_dir: Path, policy: Path) -> None:
    with server(sim_dir, *SIM, "--policy", str(policy)) as (srv, port, _):
        assert srv.stdin is not None
        srv.stdin.write(b"from the server\n")
        srv.stdin.flush()
        client = subprocess.Popen(  # noqa: S603 - our own entry point
            command(
                sim_dir,
                "connect",
                "127.0.0.1",
                str(port),
                *SIM,
                "--policy",
                str(policy),
                "--wait",
                "0",
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert client.stdin is not None
        assert client.stdout is not None
        assert client.stdout.readline() == b"from the server\n"
        client.stdin.write(b"from the client\n")
        client.stdin.flush()
        assert srv.stdout is not None
        assert srv.stdout.readline() == b"from the client\n"
        client.stdin.close()
        assert client.wait(timeout=60) == 0
        client.stdout.close()
        assert client.stderr is not None
        client.stderr.close()
        # The client went away: a one-connection server is done.
        assert srv.wait(timeout=60) == 0


def test_connect_without_policy(sim_dir: Path) -> None:
    done = run_connect(sim_dir, 9, *SIM)
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert "needs an appraisal policy" in done.stderr.decode()


def test_connect_to_closed_port(sim_dir: Path, policy: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_connect(sim_dir, port, *SIM, "--policy", str(policy))
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert f"cannot connect to 127.0.0.1:{port}" in done.stderr.decode()


def test_serve_with_real_attester_unavailable_here(sim_dir: Path, policy: Path) -> None:
    import os

    if os.path.exists("/dev/sev-guest") or os.path.isdir("/sys/kernel/config/tsm/report"):
        pytest.skip("this machine is an SEV-SNP guest")
    done = subprocess.run(  # noqa: S603 - our own entry point
        command(sim_dir, "serve", "--port", "0", "--policy", str(policy)),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert "not an SEV-SNP guest" in done.stderr.decode()


def test_serve_port_in_use(sim_dir: Path, policy: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(  # noqa: S603 - our own entry point
            command(sim_dir, "serve", "--port", str(port), *SIM, "--policy", str(policy)),
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr.decode()


# --------------------------------------------------------------------------- in process


def test_add_commands_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["connect", "example.org", "443"])
    assert (args.host, args.port, args.attester) == ("example.org", 443, "snp")
    assert args.verify_peer
    assert args.wait == DEFAULT_EOF_WAIT
    args = parser.parse_args(["serve", "--port", "8443", "--echo", "--attester", "sim+vtpm"])
    assert (args.port, args.host, args.echo, args.attester) == (8443, "127.0.0.1", True, "sim+vtpm")


@pytest.mark.parametrize(
    "argv",
    [
        ["connect", "host", "not-a-port"],
        ["serve"],
        ["serve", "--port", "1", "--attester", "tdx"],
        ["nothing"],
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == cli.EXIT_BAD_INPUT
    assert "usage" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    assert "--echo" in capsys.readouterr().out


UPPERCASE_ONE_LINE = (
    "import json, os, sys; "
    "claims = json.loads(os.environ['RATLS_PEER_CLAIMS']); "
    "sys.stdout.write(claims['profile'] + ':' + sys.stdin.readline().upper())"
)


def test_serve_exec_runs_a_command_per_connection(sim_dir: Path, policy: Path) -> None:
    exec_command = f"{sys.executable} -c {shlex.quote(UPPERCASE_ONE_LINE)}"
    with server(sim_dir, "--exec", exec_command, *SIM, "--policy", str(policy)) as (srv, port, _):
        for line in (b"first\n", b"second\n"):
            # The command exits after one line, which closes the connection: no --wait.
            done = run_connect(
                sim_dir, port, *SIM, "--policy", str(policy), "--wait", "60", stdin=line
            )
            assert done.returncode == 0, done.stderr.decode()
            assert done.stdout == b"snp:" + line.upper()
        _, server_err = stop(srv)
    assert server_err.count("exited with 0") == 2


def test_echo_and_exec_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "1", "--echo", "--exec", "cat"]) == cli.EXIT_BAD_INPUT
    assert "not allowed with" in capsys.readouterr().err


# --------------------------------------------------------------------------- cert mode


CERT = ("--mode", "cert")


def test_cert_mode_mutual_echo(sim_dir: Path, policy: Path) -> None:
    with server(sim_dir, "--echo", *SIM, *CERT, "--policy", str(policy)) as (srv, port, _):
        done = run_connect(sim_dir, port, *SIM, *CERT, "--policy", str(policy), stdin=b"cert\n")
        _, server_err = stop(srv)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert done.stdout == b"cert\n"
    assert "server attested: snp Genoa VCEK anchor=simulator" in err
    assert '"replayable": true' in err
    assert "client attested: snp Genoa" in server_err
    assert '"replayable": true' in server_err


def test_cert_mode_wrong_measurement_fails(sim_dir: Path, policy: Path, tmp_path: Path) -> None:
    other = _policy(tmp_path, "other.toml", bytes(48))
    with server(sim_dir, "--echo", *SIM, *CERT, "--no-verify-peer") as (_, port, _):
        done = run_connect(sim_dir, port, *SIM, *CERT, "--policy", str(other), stdin=b"x\n")
    assert done.returncode == cli.EXIT_VERIFICATION_FAILED
    assert "FAIL: snp.measurement" in done.stderr.decode()
    assert done.stdout == b""


def test_cert_mode_refuses_rsa_keys(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["connect", "127.0.0.1", "1", *SIM, *CERT, "--key-type", "rsa-3072"]
    assert main([*argv, "--policy", str(policy)]) == cli.EXIT_BAD_INPUT
    assert "ec-p256" in capsys.readouterr().err


def test_mode_option() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="verb"))
    assert parser.parse_args(["connect", "h", "1"]).mode == "bound"
    assert parser.parse_args(["serve", "--port", "1", "--mode", "cert"]).mode == "cert"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "1", "--mode", "other"])
