"""`ratls snp report|display|verify` and `ratls demo`, driven as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ratls.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_POLICY = REPO / "examples" / "policy.toml"


@pytest.fixture
def sim_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the simulator's identity inside the test's temporary directory."""
    monkeypatch.setenv("RATLS_SIM_DIR", str(tmp_path / "sim"))
    return tmp_path


def make_report(tmp: Path, *extra: str) -> tuple[Path, Path]:
    report = tmp / "report.bin"
    certs = tmp / "certs"
    code = main(["snp", "report", "--sim", "--out", str(report), "--certs-dir", str(certs), *extra])
    assert code == 0
    return report, certs


def test_report_writes_report_and_chain(sim_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, certs = make_report(sim_env, "--product", "turin", "--version", "5")
    assert report.stat().st_size == 0x4A0
    assert sorted(p.name for p in certs.iterdir()) == ["ark.pem", "ask.pem", "vcek.der"]
    assert "simulated Turin" in capsys.readouterr().out


def test_report_with_vlek(sim_env: Path) -> None:
    _, certs = make_report(sim_env, "--vlek")
    assert sorted(p.name for p in certs.iterdir()) == ["ark.pem", "asvk.pem", "vlek.der"]


def test_display_shows_fields(sim_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, _ = make_report(sim_env, "--report-data", "c0ffee")
    capsys.readouterr()
    assert main(["snp", "display", str(report), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["version"] == 3
    assert str(described["report_data"]).startswith("c0ffee")
    assert main(["snp", "display", str(report)]) == 0
    assert "measurement" in capsys.readouterr().out


def test_verify_needs_trust_in_the_simulator(
    sim_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, certs = make_report(sim_env)
    capsys.readouterr()
    assert main(["snp", "verify", "--report", str(report), "--certs", str(certs)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL: snp.trust_anchor")
    assert len(err.strip().splitlines()) == 1
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs), "--trust-simulator"]
    assert main(args) == 0
    assert "PASS: SEV-SNP report verified (authenticity only)" in capsys.readouterr().out


def test_verify_with_the_example_policy(sim_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, certs = make_report(sim_env, "--report-data", "00112233")
    capsys.readouterr()
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs)]
    assert main([*args, "--policy", str(EXAMPLE_POLICY), "--json"]) == 0
    claims = json.loads(capsys.readouterr().out)
    assert claims["appraised"] is True
    assert claims["trust_anchor"] == "simulator"
    assert main([*args, "--policy", str(EXAMPLE_POLICY), "--report-data", "00112233"]) == 0
    assert main([*args, "--policy", str(EXAMPLE_POLICY), "--report-data", "ffff"]) == 1
    assert "snp.report_data" in capsys.readouterr().err


def test_verify_refuses_a_debug_guest_under_policy(
    sim_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, certs = make_report(sim_env, "--vmpl", "1")
    capsys.readouterr()
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs)]
    assert main([*args, "--policy", str(EXAMPLE_POLICY)]) == 1
    assert "snp.vmpl: expected 0, got 1" in capsys.readouterr().err


def test_verify_refuses_a_tampered_report(
    sim_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, certs = make_report(sim_env)
    raw = bytearray(report.read_bytes())
    raw[0x90] ^= 0xFF  # measurement
    report.write_bytes(bytes(raw))
    capsys.readouterr()
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs), "--trust-simulator"]
    assert main(args) == 1
    assert "signature" in capsys.readouterr().err


def test_verify_at_a_time_outside_validity(
    sim_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, certs = make_report(sim_env)
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs), "--trust-simulator"]
    assert main([*args, "--at", "2001-01-01T00:00:00"]) == 1
    assert main([*args, "--at", "not-a-time"]) == 2


def test_der_and_pem_are_both_accepted(sim_env: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    report, certs = make_report(sim_env)
    ask = x509.load_pem_x509_certificate((certs / "ask.pem").read_bytes())
    (certs / "ask.pem").unlink()
    (certs / "ask.der").write_bytes(ask.public_bytes(Encoding.DER))
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs), "--trust-simulator"]
    assert main(args) == 0


def test_unusable_input_exits_2(sim_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, certs = make_report(sim_env)
    base = ["snp", "verify", "--certs", str(certs), "--trust-simulator"]
    assert main([*base, "--report", str(sim_env / "absent.bin")]) == 2
    assert "cannot read report" in capsys.readouterr().err
    short = sim_env / "short.bin"
    short.write_bytes(report.read_bytes()[:100])
    assert main([*base, "--report", str(short)]) == 2
    assert "ATTESTATION_REPORT" in capsys.readouterr().err
    (certs / "ark.pem").unlink()
    assert main([*base, "--report", str(report)]) == 2
    assert "lacks ark" in capsys.readouterr().err
    bad_policy = sim_env / "policy.toml"
    bad_policy.write_text("[snp]\nalow_debug = true\n")
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs), "--policy"]
    assert main([*args, str(bad_policy)]) == 2
    assert (
        main(["snp", "report", "--sim", "--product", "naples", "--out", "x", "--certs-dir", "y"])
        == 2
    )
    assert "unknown product 'naples'" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_report_without_hardware_says_what_is_missing(
    sim_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import ratls.attesters

    absent = functools.partial(
        ratls.attesters.SnpGuestAttester,
        tsm_root=str(sim_env / "no-configfs"),
        device=str(sim_env / "no-sev-guest"),
    )
    monkeypatch.setattr(ratls.attesters, "SnpGuestAttester", absent)
    code = main(["snp", "report", "--out", str(sim_env / "r"), "--certs-dir", str(sim_env / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert "configfs" in err or "tsm" in err
    assert "sev-guest" in err


def test_console_script_runs(sim_env: Path) -> None:
    script = shutil.which("ratls", path=str(Path(sys.executable).parent))
    assert script is not None, "the ratls console script is not installed in this environment"
    env = dict(os.environ, RATLS_SIM_DIR=str(sim_env / "sim"))
    done = subprocess.run(  # noqa: S603 - fixed argv, our own entry point
        [
            script,
            "snp",
            "report",
            "--sim",
            "--out",
            str(sim_env / "r.bin"),
            "--certs-dir",
            str(sim_env / "c"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (sim_env / "r.bin").stat().st_size == 0x4A0
