"""`ratls cert create|inspect|verify`, driven through the real argument parser and main()."""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ratls import cli
from ratls._cli_cert import add_commands
from ratls._evidence_cert import RatlsOID

if TYPE_CHECKING:
    import argparse

VECTORS = Path(__file__).resolve().parent / "vectors" / "certs"


def build_parser() -> argparse.ArgumentParser:
    parser = cli._Parser(prog="ratls")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=cli._Parser)
    add_commands(verbs)
    return parser


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim")


def ratls(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """Run ``ratls`` with the cert verbs registered, through main()'s error mapping."""
    monkeypatch.setattr(cli, "build_parser", build_parser)
    return cli.main(list(argv))


def create(
    monkeypatch: pytest.MonkeyPatch, tmp: Path, sim_dir: Path, *extra: str
) -> tuple[Path, Path]:
    key, out = tmp / "key.pem", tmp / "cert.pem"
    code = ratls(
        monkeypatch,
        "cert",
        "create",
        "--sim",
        "--sim-dir",
        str(sim_dir),
        "--key",
        str(key),
        "--out",
        str(out),
        *extra,
    )
    assert code == 0
    return key, out


def test_create_inspect_verify(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, out = create(monkeypatch, tmp_path, sim_dir)
    assert "simulated Genoa" in capsys.readouterr().out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert ratls(monkeypatch, "cert", "inspect", str(out)) == 0
    shown = capsys.readouterr().out
    assert "evidence       amd-sev-snp-report" in shown
    assert "binding        verified" in shown
    assert "endorsements   vcek, ask, ark (id-pe-cmw)" in shown
    assert ratls(monkeypatch, "cert", "verify", str(out), "--trust-simulator") == 0
    shown = capsys.readouterr().out
    assert shown.startswith("PASS: SEV-SNP report verified (authenticity only)")
    assert "replayable" in shown


def test_json_outputs(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out = create(monkeypatch, tmp_path, sim_dir, "--product", "milan")
    capsys.readouterr()
    assert ratls(monkeypatch, "cert", "inspect", str(out), "--json") == 0
    described = json.loads(capsys.readouterr().out)
    assert described["binding"] == "verified"
    assert described["tag"] == 0x1A7504
    assert described["snp"]["vmpl"] == 0
    assert ratls(monkeypatch, "cert", "verify", str(out), "--trust-simulator", "--json") == 0
    claims = json.loads(capsys.readouterr().out)
    assert claims["replayable"] is True
    assert claims["snp"]["product"] == "Milan"


def test_verify_with_policy_file(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out = create(monkeypatch, tmp_path, sim_dir)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "max_evidence_age_seconds = 120\n"
        "[trust]\nsimulated_hardware = true\n[snp]\nallow_any_measurement = true\n"
    )
    assert ratls(monkeypatch, "cert", "verify", str(out), "--policy", str(policy)) == 0
    assert "verified and appraised" in capsys.readouterr().out
    strict = tmp_path / "strict.toml"
    strict.write_text(
        f'[trust]\nsimulated_hardware = true\n[snp]\nmeasurements = ["{"00" * 48}"]\n'
    )
    assert ratls(monkeypatch, "cert", "verify", str(out), "--policy", str(strict)) == 1
    assert capsys.readouterr().err.startswith("FAIL: snp.measurement")


def test_verify_failures_exit_1(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out = create(monkeypatch, tmp_path, sim_dir)
    capsys.readouterr()
    assert ratls(monkeypatch, "cert", "verify", str(out)) == 1
    assert "FAIL: snp.trust_anchor" in capsys.readouterr().err
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    code = ratls(monkeypatch, "cert", "verify", str(out), "--trust-simulator", "--at", later)
    assert code == 1
    assert "FAIL: cert." in capsys.readouterr().err


def test_nonce(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out = create(monkeypatch, tmp_path, sim_dir, "--nonce", "c0ffee")
    args = ("cert", "verify", str(out), "--trust-simulator", "--nonce")
    assert ratls(monkeypatch, *args, "c0ffee") == 0
    assert "nonce matched" in capsys.readouterr().out
    assert ratls(monkeypatch, *args, "c0ffef") == 1
    assert "FAIL: cert.claims.nonce" in capsys.readouterr().err


def test_existing_key_is_reused(
    tmp_path: Path, sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, first = create(monkeypatch, tmp_path, sim_dir)
    before = key.read_bytes()
    second = tmp_path / "second.pem"
    code = ratls(
        monkeypatch,
        "cert", "create", "--sim", "--sim-dir", str(sim_dir),
        "--key", str(key), "--out", str(second),
    )  # fmt: skip
    assert code == 0
    assert key.read_bytes() == before
    one = x509.load_pem_x509_certificate(first.read_bytes())
    two = x509.load_pem_x509_certificate(second.read_bytes())
    assert one.public_key() == two.public_key()


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [("p384", ec.EllipticCurvePublicKey), ("ed25519", ed25519.Ed25519PublicKey)],
)
def test_key_types(
    key_type: str,
    expected: type[object],
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, out = create(monkeypatch, tmp_path, sim_dir, "--key-type", key_type)
    made = x509.load_pem_x509_certificate(out.read_bytes())
    assert isinstance(made.public_key(), expected)
    assert ratls(monkeypatch, "cert", "verify", str(out), "--trust-simulator") == 0


def test_inspect_broken_binding_exits_1(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out = create(monkeypatch, tmp_path, sim_dir)
    original = x509.load_pem_x509_certificate(out.read_bytes())
    thief = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.issuer)
        .public_key(thief.public_key())
        .serial_number(1)
        .not_valid_before(original.not_valid_before_utc)
        .not_valid_after(original.not_valid_after_utc)
    )
    for extension in original.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    stolen = tmp_path / "stolen.pem"
    stolen.write_bytes(
        builder.sign(thief, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    capsys.readouterr()
    assert ratls(monkeypatch, "cert", "inspect", str(stolen)) == 1
    assert capsys.readouterr().err.startswith("FAIL: cert.claims.pubkey-hash")
    assert ratls(monkeypatch, "cert", "verify", str(stolen), "--trust-simulator") == 1


def test_inspect_foreign_sample(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = VECTORS / "intel-sgxsdk-cert.pem"
    assert ratls(monkeypatch, "cert", "inspect", str(sample)) == 0
    shown = capsys.readouterr().out
    assert "evidence       intel-sgx-quote" in shown
    assert "binding        verified" in shown
    assert "also present   intel-sgx-sdk-legacy" in shown
    assert "endorsements   none in the certificate" in shown
    # verify exits 0 only when everything passes: SGX evidence is not verified here.
    assert ratls(monkeypatch, "cert", "verify", str(sample)) == 1
    assert "FAIL: cert.evidence_type" in capsys.readouterr().err


def test_inspect_not_checked_is_said_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    now = datetime.now(UTC)
    made = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signing_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(RatlsOID.CONSTELLATION_QEMU_VTPM, b"{}"), critical=False
        )
        .sign(signing_key, hashes.SHA256())
    )
    path = tmp_path / "constellation.der"
    path.write_bytes(made.public_bytes(serialization.Encoding.DER))
    assert ratls(monkeypatch, "cert", "inspect", str(path)) == 0
    assert "binding        NOT CHECKED" in capsys.readouterr().out


def test_bad_input_exits_2(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    assert ratls(monkeypatch, "cert", "inspect", str(garbage)) == 2
    assert capsys.readouterr().err.startswith("error: X.509: not a certificate")
    assert ratls(monkeypatch, "cert", "inspect", str(tmp_path / "missing.pem")) == 2
    assert "cannot read certificate" in capsys.readouterr().err

    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    args = ["cert", "create", "--sim", "--sim-dir", str(sim_dir), "--out", str(tmp_path / "c")]
    assert ratls(monkeypatch, *args, "--key", str(rsa_key)) == 2
    assert "P-256/P-384 or Ed25519" in capsys.readouterr().err
    assert ratls(monkeypatch, *args, "--key", str(garbage)) == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
    assert ratls(monkeypatch, *args, "--key", str(tmp_path / "k"), "--nonce", "") == 2
    assert "--nonce" in capsys.readouterr().err


@pytest.mark.skipif(
    os.path.exists("/dev/sev-guest") or os.path.exists("/sys/kernel/config/tsm/report"),
    reason="this machine is an SEV-SNP guest",
)
def test_create_without_sim_needs_snp_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ratls(
        monkeypatch,
        "cert", "create", "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "c.pem"),
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "c.pem").exists()


@pytest.mark.swtpm
@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")
def test_create_with_simulated_vtpm(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out = create(monkeypatch, tmp_path, sim_dir, "--vtpm")
    assert "with an SVSM vTPM" in capsys.readouterr().out
    assert ratls(monkeypatch, "cert", "inspect", str(out)) == 0
    assert "vtpm           evidence bundle present (id-pe-cmw)" in capsys.readouterr().out
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "[trust]\nsimulated_hardware = true\n[snp]\nallow_any_measurement = true\n"
        "[vtpm]\nallow_unproven_ak = true\n"
    )
    assert ratls(monkeypatch, "cert", "verify", str(out), "--policy", str(policy), "--json") == 0
    claims = json.loads(capsys.readouterr().out)
    assert (claims["profile"], claims["ak_binding"]) == ("svsm", "unproven")
    # The default policy refuses an AK that no credential activation proved.
    strict = tmp_path / "strict.toml"
    strict.write_text("[trust]\nsimulated_hardware = true\n[snp]\nallow_any_measurement = true\n")
    assert ratls(monkeypatch, "cert", "verify", str(out), "--policy", str(strict)) == 1


def test_vtpm_needs_sim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ratls(
        monkeypatch,
        "cert", "create", "--vtpm", "--key", str(tmp_path / "k"), "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert code == 2
    assert "--vtpm needs --sim" in capsys.readouterr().err


def test_unwritable_output_and_bad_sim_state(
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = tmp_path / "k.pem"
    base = ["cert", "create", "--sim", "--key", str(key)]
    assert ratls(monkeypatch, *base, "--sim-dir", str(sim_dir), "--out", str(tmp_path)) == 2
    assert "cannot write" in capsys.readouterr().err
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code = ratls(monkeypatch, *base, "--sim-dir", str(not_a_dir), "--out", str(tmp_path / "c"))
    assert code == 2
    assert "cannot use the simulator state" in capsys.readouterr().err
