"""``ratls tpm|azure|vtpm``: the tpm2-tools PCR file format, the verbs, and tpm2-tools interop.

Interop runs the real tpm2-tools: ``tpm2_checkquote`` must accept a quote our swtpm path made,
``ratls tpm checkquote`` must accept what ``tpm2_quote`` wrote, and credentials must pass
between ``ratls tpm makecredential`` / ``tpm2_makecredential`` and TPM2_ActivateCredential.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls import cli
from ratls._azure_hcl import HclReport, build_runtime_claims
from ratls._cli_tpm import (
    TPM2_TOOLS_PCRS_DIGEST_BLOCK_SIZE,
    TPM2_TOOLS_PCRS_SELECTION_SIZE,
    Tpm2ToolsPcrs,
    add_commands,
    encode_tpm2_tools_pcrs,
    parse_tpm2_tools_pcrs,
)
from ratls._errors import EvidenceFormatError, RatlsError
from ratls._snp_report import ProductLine
from ratls._tpm_credential import parse_tpm2_tools_credential
from ratls._tpm_structs import TpmAlgId, TpmlPcrSelection, parse_tpm2b_public
from ratls._vtpm_evidence import VtpmProfile
from ratls.sim import simulated_amd_sp
from ratls.sim._svsm import SimulatedSvsm

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from ratls.sim import SimulatedAmdSp

needs_swtpm = pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")
needs_tpm2_tools = pytest.mark.skipif(
    shutil.which("tpm2_checkquote") is None, reason="tpm2-tools not installed"
)

SHA1, SHA256 = TpmAlgId.SHA1, TpmAlgId.SHA256
BINDER = hashlib.sha256(b"cli binder").digest()
MEASUREMENT = hashlib.sha384(b"cli simulated launch").digest()


def _with_our_commands() -> argparse.ArgumentParser:
    parser = _original_build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and "tpm" not in action.choices:
            add_commands(action)
    return parser


_original_build_parser = cli.build_parser


def ratls(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run ``ratls ...`` through the real ``main`` (our verbs added if not wired yet)."""
    monkeypatch.setattr(cli, "build_parser", _with_our_commands)
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)


# --------------------------------------------------------------------------------------
# The serialized PCR file
# --------------------------------------------------------------------------------------


def handmade_pcr_file() -> bytes:
    """sha256:0,7,16 + sha1:1, laid out byte by byte as tpm2_quote -o writes it."""
    selection = struct.pack("<I", 2)
    selection += struct.pack("<HB", 0x000B, 3) + bytes([0x81, 0x00, 0x01, 0x00]) + b"\0"
    selection += struct.pack("<HB", 0x0004, 3) + bytes([0x02, 0x00, 0x00, 0x00]) + b"\0"
    selection += bytes(8 * 14)
    values = [b"\x00" * 32, b"\x07" * 32, b"\x16" * 32, b"\x01" * 20]
    block = struct.pack("<I", 4)
    for value in values:
        block += struct.pack("<H", len(value)) + value.ljust(64, b"\0")
    block += bytes(66 * 4)
    return selection + struct.pack("<I", 1) + block


PCR_FILE = handmade_pcr_file()


def test_pcr_file_layout() -> None:
    assert TPM2_TOOLS_PCRS_SELECTION_SIZE == 132
    assert TPM2_TOOLS_PCRS_DIGEST_BLOCK_SIZE == 532
    assert len(PCR_FILE) == 668  # what tpm2_quote wrote for this selection
    parsed = parse_tpm2_tools_pcrs(PCR_FILE)
    assert parsed.selection.selected() == [(SHA256, 0), (SHA256, 7), (SHA256, 16), (SHA1, 1)]
    assert parsed.mapping() == {
        SHA256: {0: b"\x00" * 32, 7: b"\x07" * 32, 16: b"\x16" * 32},
        SHA1: {1: b"\x01" * 20},
    }
    assert parsed.block_sizes == (4,)
    assert parsed.to_bytes() == PCR_FILE


def test_pcr_file_every_truncation_and_trailing() -> None:
    for end in range(len(PCR_FILE)):
        with pytest.raises(EvidenceFormatError):
            parse_tpm2_tools_pcrs(PCR_FILE[:end])
    with pytest.raises(EvidenceFormatError, match="trailing"):
        parse_tpm2_tools_pcrs(PCR_FILE + b"\0")


def test_pcr_file_encoder() -> None:
    values = {SHA256: {i: bytes([i]) * 32 for i in range(24)}}
    selection = TpmlPcrSelection.from_mapping({SHA256: range(24)})
    data = encode_tpm2_tools_pcrs(selection, values)
    assert len(data) == 136 + 3 * 532  # 24 digests in blocks of 8
    parsed = parse_tpm2_tools_pcrs(data)
    assert parsed.mapping() == values
    assert parsed.block_sizes == (8, 8, 8)
    with pytest.raises(ValueError, match="no value"):
        encode_tpm2_tools_pcrs(selection, {SHA256: {0: bytes(32)}})
    with pytest.raises(ValueError, match="block sizes"):
        encode_tpm2_tools_pcrs(selection, values, block_sizes=(8, 8))
    too_wide = TpmlPcrSelection.from_mapping({SHA256: [0]}, sizeof_select=5)
    with pytest.raises(ValueError, match="4 select bytes"):
        encode_tpm2_tools_pcrs(too_wide, {SHA256: {0: bytes(32)}})


def _patch(offset: int, data: bytes) -> bytes:
    out = bytearray(PCR_FILE)
    out[offset : offset + len(data)] = data
    return bytes(out)


def _three_of_four() -> bytes:
    data = bytearray(PCR_FILE)
    struct.pack_into("<I", data, 136, 3)
    data[140 + 66 * 3 : 140 + 66 * 4] = bytes(66)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_patch(0, struct.pack("<I", 17)), "17 banks"),
        (_patch(4 + 16, b"\x01"), "unused selection slot"),
        (_patch(4, struct.pack("<H", 0x0012)), "unsupported bank"),
        (_patch(6, b"\x05"), "sizeofSelect"),
        (_patch(10, b"\x01"), "sizeofSelect 3 or padding"),
        (_patch(12, struct.pack("<H", 0x000B)), "selected twice"),
        (_patch(132, struct.pack("<I", 97)), "97 digest blocks"),
        (_patch(136, struct.pack("<I", 9)), "count 9"),
        (_patch(136, struct.pack("<I", 3)), "unused digest slot"),
        (_patch(136 + 4 + 66 * 4 + 5, b"\x01"), "unused digest slot"),
        (_patch(136 + 4, struct.pack("<H", 65)), "digest size 65"),
        (_patch(136 + 4 + 66, struct.pack("<H", 31)), "digest size 31 or padding"),
        (_patch(136 + 4, struct.pack("<H", 20)), "sha256 PCR 0 has a 20-byte value"),
        (_three_of_four(), "3 digests for 4 selected PCRs"),
    ],
)
def test_pcr_file_malformed(data: bytes, words: str) -> None:
    with pytest.raises(EvidenceFormatError, match=words):
        parse_tpm2_tools_pcrs(data)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=len(PCR_FILE) - 1), st.integers(1, 255))
def test_pcr_file_fuzz_mutations(position: int, flip: int) -> None:
    data = bytearray(PCR_FILE)
    data[position] ^= flip
    with contextlib.suppress(RatlsError):
        assert parse_tpm2_tools_pcrs(bytes(data)).to_bytes() == bytes(data)


@settings(max_examples=200)
@given(st.binary(max_size=800))
def test_pcr_file_fuzz(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        parse_tpm2_tools_pcrs(data)


def test_pcr_file_value_type() -> None:
    a = parse_tpm2_tools_pcrs(PCR_FILE)
    b = parse_tpm2_tools_pcrs(PCR_FILE)
    c = parse_tpm2_tools_pcrs(_patch(136 + 4 + 2, b"\x09"))
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert repr(a).startswith("Tpm2ToolsPcrs(selection=TpmlPcrSelection(")
    assert isinstance(a, Tpm2ToolsPcrs)


# --------------------------------------------------------------------------------------
# A quote from the simulated SVSM vTPM, written as tpm2-tools files
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


@pytest.fixture(scope="module")
def vm(sp: SimulatedAmdSp) -> Iterator[SimulatedSvsm]:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm not installed")
    with SimulatedSvsm(sp, measurement=MEASUREMENT) as running:
        yield running


@pytest.fixture
def quote_files(vm: SimulatedSvsm, tmp_path: Path) -> Path:
    selection = {SHA256: [0, 7, 16], SHA1: [1]}
    attestation, values = vm.quote(BINDER, selection)
    signed = TpmlPcrSelection.from_mapping(selection)
    ak = parse_tpm2b_public(vm.identity.ak_public)
    (tmp_path / "ak.tpm2b").write_bytes(vm.identity.ak_public)
    (tmp_path / "ak.pem").write_bytes(
        ak.public_key().public_bytes(Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "quote.msg").write_bytes(attestation.attest[2:])
    (tmp_path / "quote.sig").write_bytes(attestation.signature)
    (tmp_path / "quote.pcrs").write_bytes(encode_tpm2_tools_pcrs(signed, values))
    return tmp_path


def checkquote_args(d: Path, ak: str = "ak.tpm2b", **override: str) -> list[str]:
    args = {
        "-u": str(d / ak),
        "-m": str(d / "quote.msg"),
        "-s": str(d / "quote.sig"),
        "-f": str(d / "quote.pcrs"),
        "-g": "sha256",
        "-q": BINDER.hex(),
    }
    args.update(override)
    return ["tpm", "checkquote", *[x for kv in args.items() for x in kv]]


@pytest.mark.swtpm
@needs_swtpm
@pytest.mark.parametrize("ak", ["ak.tpm2b", "ak.pem"])
def test_checkquote_pass(
    quote_files: Path, ak: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ratls(checkquote_args(quote_files, ak), monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS: quote signature, qualification and PCR digest verified")
    assert "sha256:16" in out
    assert ("unknown: the AK was given as a bare key" in out) == (ak == "ak.pem")


@pytest.mark.swtpm
@needs_swtpm
def test_checkquote_failures(
    quote_files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    d = quote_files

    def fails(argv: list[str], code: int, words: str) -> None:
        assert ratls(argv, monkeypatch) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert words in err[-1], err

    fails(checkquote_args(d, **{"-q": "00"}), 1, "FAIL: tpm.quote.extra_data")
    fails(checkquote_args(d, **{"-g": "sha384"}), 1, "FAIL: tpm.quote.signature.hash")
    fails(checkquote_args(d, "ak.pem", **{"-g": "sha384"}), 1, "FAIL: tpm.quote.signature.hash")
    pcrs = parse_tpm2_tools_pcrs((d / "quote.pcrs").read_bytes())
    changed = dict(pcrs.mapping())
    changed[SHA256] = {**changed[SHA256], 7: b"\x01" * 32}
    (d / "changed.pcrs").write_bytes(encode_tpm2_tools_pcrs(pcrs.selection, changed))
    fails(checkquote_args(d, **{"-f": str(d / "changed.pcrs")}), 1, "FAIL: tpm.quote.pcr_digest")
    other = TpmlPcrSelection.from_mapping({SHA256: [0, 7, 17], SHA1: [1]})
    (d / "other.pcrs").write_bytes(
        encode_tpm2_tools_pcrs(
            other, {SHA256: {0: bytes(32), 7: bytes(32), 17: bytes(32)}, SHA1: {1: bytes(20)}}
        )
    )
    fails(checkquote_args(d, **{"-f": str(d / "other.pcrs")}), 1, "FAIL: tpm.pcr_selection")
    fails(checkquote_args(d, **{"-m": str(d / "quote.sig")}), 2, "error: TPMS_ATTEST")
    fails(checkquote_args(d, **{"-m": str(d / "missing")}), 2, "error: cannot read")
    fails(checkquote_args(d, **{"-g": "md5"}), 2, "error: unknown hash")
    fails(checkquote_args(d, **{"-q": "xyz"}), 2, "error: -q is not a hex string")
    assert ratls(["tpm", "checkquote", "-u", str(d / "ak.tpm2b")], monkeypatch) == 2


@pytest.mark.swtpm
@needs_swtpm
def test_makecredential_round_trip(
    vm: SimulatedSvsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ek.pub").write_bytes(vm.identity.ek_public)
    (tmp_path / "secret").write_bytes(b"a secret for the AK")
    argv = ["tpm", "makecredential", "-u", str(tmp_path / "ek.pub"), "-s", str(tmp_path / "secret")]
    argv += ["-n", vm.identity.ak_name.hex(), "-o", str(tmp_path / "cred")]
    assert ratls(argv, monkeypatch) == 0
    credential = parse_tpm2_tools_credential((tmp_path / "cred").read_bytes())
    assert vm.activate(credential) == b"a secret for the AK"
    (tmp_path / "long").write_bytes(bytes(33))
    argv[5] = str(tmp_path / "long")
    assert ratls(argv, monkeypatch) == 2


# --------------------------------------------------------------------------------------
# Interop with tpm2-tools
# --------------------------------------------------------------------------------------


def _exe(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed"
    return path


def run_tool(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(  # noqa: S603 - fixed tool names, arguments from the test
        [_exe(argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"{argv[0]} failed: {result.stderr}"
    return result.stdout


@pytest.mark.swtpm
@needs_swtpm
@needs_tpm2_tools
def test_tpm2_checkquote_accepts_our_quote(quote_files: Path) -> None:
    d = quote_files
    run_tool(
        "tpm2_checkquote", "-u", str(d / "ak.pem"), "-m", str(d / "quote.msg"),
        "-s", str(d / "quote.sig"), "-f", str(d / "quote.pcrs"), "-g", "sha256",
        "-q", BINDER.hex(),
    )  # fmt: skip
    # ... and it really reads our PCR file: a changed value is refused.
    pcrs = parse_tpm2_tools_pcrs((d / "quote.pcrs").read_bytes())
    changed = dict(pcrs.mapping())
    changed[SHA1] = {1: b"\x01" * 20}
    (d / "bad.pcrs").write_bytes(encode_tpm2_tools_pcrs(pcrs.selection, changed))
    refused = subprocess.run(  # noqa: S603 - tpm2-tools from PATH
        [_exe("tpm2_checkquote"), "-u", str(d / "ak.pem"), "-m", str(d / "quote.msg"),
         "-s", str(d / "quote.sig"), "-f", str(d / "bad.pcrs"), "-g", "sha256",
         "-q", BINDER.hex()],
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0


@pytest.mark.swtpm
@needs_swtpm
@needs_tpm2_tools
def test_tpm2_makecredential_output_activates(vm: SimulatedSvsm, tmp_path: Path) -> None:
    (tmp_path / "ek.pub").write_bytes(vm.identity.ek_public)
    (tmp_path / "secret").write_bytes(b"from tpm2-tools")
    run_tool(
        "tpm2_makecredential", "-T", "none", "-u", str(tmp_path / "ek.pub"),
        "-s", str(tmp_path / "secret"), "-n", vm.identity.ak_name.hex(),
        "-o", str(tmp_path / "cred"),
    )  # fmt: skip
    credential = parse_tpm2_tools_credential((tmp_path / "cred").read_bytes())
    assert vm.activate(credential) == b"from tpm2-tools"


def _two_free_ports() -> int:
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    pytest.skip("no two consecutive free ports")


@pytest.fixture
def tools_tpm(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A swtpm laid out for tpm2-tools' swtpm TCTI (control port = command port + 1)."""
    if shutil.which("swtpm") is None or shutil.which("tpm2_quote") is None:
        pytest.skip("swtpm or tpm2-tools not installed")
    state = tmp_path / "state"
    state.mkdir()
    port = _two_free_ports()
    process = subprocess.Popen(  # noqa: S603 - swtpm from PATH
        [_exe("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state}",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:host=127.0.0.1,port={port}")
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.swtpm
@needs_swtpm
@needs_tpm2_tools
def test_ratls_checkquote_accepts_tpm2_quote_output(
    tools_tpm: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, d = tools_tpm, tmp_path
    run_tool("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", env=env, cwd=d)
    run_tool("tpm2_flushcontext", "-t", env=env, cwd=d)
    run_tool(
        "tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256",
        "-s", "rsassa", "-u", "ak.pem", "-f", "pem", "-n", "ak.name", env=env, cwd=d,
    )  # fmt: skip
    run_tool("tpm2_flushcontext", "-t", env=env, cwd=d)
    run_tool("tpm2_flushcontext", "-s", env=env, cwd=d)
    run_tool("tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.tpm2b", env=env, cwd=d)
    run_tool("tpm2_flushcontext", "-t", env=env, cwd=d)
    run_tool(
        "tpm2_quote", "-c", "ak.ctx", "-l", "sha256:0,7,16+sha1:1", "-q", BINDER.hex(),
        "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256",
        env=env, cwd=d,
    )  # fmt: skip
    run_tool("tpm2_flushcontext", "-t", env=env, cwd=d)
    assert len((d / "quote.pcrs").read_bytes()) == 668
    for ak in ("ak.tpm2b", "ak.pem"):
        assert ratls(checkquote_args(d, ak), monkeypatch) == 0
    assert ratls(checkquote_args(d, **{"-q": "00"}), monkeypatch) == 1

    # Our credential file, activated by tpm2_activatecredential in that TPM.
    (d / "secret").write_bytes(b"sealed by ratls")
    name = (d / "ak.name").read_bytes().hex()
    argv = ["tpm", "makecredential", "-u", str(d / "ek.pub"), "-s", str(d / "secret")]
    assert ratls([*argv, "-n", name, "-o", str(d / "cred")], monkeypatch) == 0
    run_tool("tpm2_startauthsession", "--policy-session", "-S", "session.ctx", env=env, cwd=d)
    run_tool("tpm2_policysecret", "-S", "session.ctx", "-c", "e", env=env, cwd=d)
    run_tool(
        "tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred",
        "-o", "recovered", "-P", "session:session.ctx", env=env, cwd=d,
    )  # fmt: skip
    assert (d / "recovered").read_bytes() == b"sealed by ratls"


# --------------------------------------------------------------------------------------
# azure verify
# --------------------------------------------------------------------------------------


def _azure_setup(sp: SimulatedAmdSp, d: Path, *, claims_key_same: bool = True) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from ratls._tpm_quote import compute_pcr_digest
    from ratls._tpm_structs import (
        AK_REQUIRED_ATTRIBUTES,
        ObjectAttributes,
        TpmsAttest,
        TpmsClockInfo,
        TpmsQuoteInfo,
        TpmSt,
        TpmtPublic,
        TpmtScheme,
        TpmtSignature,
    )

    ak_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims_key = ak_key if claims_key_same else rsa.generate_private_key(65537, 2048)
    claims = build_runtime_claims(ak_public=claims_key.public_key())
    report = sp.build_report(
        report_data=hashlib.sha256(claims).digest() + bytes(32), vmpl=0, measurement=MEASUREMENT
    )
    hcl = HclReport(
        version=2,
        report_size=0x4A0,
        snp_report=report.to_bytes(),
        data_size=20 + len(claims),
        igvm_version=1,
        variable_data=claims,
    )
    (d / "hcl.bin").write_bytes(hcl.to_bytes() + bytes(500))  # as read from the NV index
    certs = d / "certs"
    certs.mkdir()
    (certs / "vcek.der").write_bytes(sp.leaf.public_bytes(Encoding.DER))
    (certs / "ask.pem").write_bytes(sp.ask.public_bytes(Encoding.PEM))
    (certs / "ark.pem").write_bytes(sp.ark.public_bytes(Encoding.PEM))
    pcrs = {0: bytes(32), 7: b"\x07" * 32}
    selection = TpmlPcrSelection.from_mapping({SHA256: sorted(pcrs)})
    digest, _ = compute_pcr_digest(selection, {SHA256: pcrs}, SHA256)
    ak = TpmtPublic.from_public_key(
        ak_key.public_key(),
        object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
        scheme=TpmtScheme(scheme=TpmAlgId.RSASSA, hash_alg=SHA256),
    )
    attest = TpmsAttest(
        type=TpmSt.ATTEST_QUOTE,
        qualified_signer=ak.name(),
        extra_data=BINDER,
        clock_info=TpmsClockInfo(clock=1, reset_count=1, restart_count=0, safe=True),
        firmware_version=1,
        attested=TpmsQuoteInfo(pcr_select=selection, pcr_digest=digest),
    ).to_bytes()
    signature = TpmtSignature(
        sig_alg=TpmAlgId.RSASSA,
        hash=SHA256,
        sig=ak_key.sign(attest, padding.PKCS1v15(), hashes.SHA256()),
    ).to_bytes()
    (d / "ak.tpm2b").write_bytes(ak.to_tpm2b())
    (d / "quote.msg").write_bytes(attest)
    (d / "quote.sig").write_bytes(signature)
    (d / "quote.pcrs").write_bytes(encode_tpm2_tools_pcrs(selection, {SHA256: pcrs}))


def azure_args(d: Path, *extra: str) -> list[str]:
    return [
        "azure", "verify", "--hcl-report", str(d / "hcl.bin"), "--certs", str(d / "certs"),
        "-m", str(d / "quote.msg"), "-s", str(d / "quote.sig"), "-f", str(d / "quote.pcrs"),
        "-q", BINDER.hex(), *extra,
    ]  # fmt: skip


def test_azure_verify(
    sp: SimulatedAmdSp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _azure_setup(sp, tmp_path)
    assert ratls(azure_args(tmp_path, "--trust-simulator"), monkeypatch) == 0
    out = capsys.readouterr().out
    assert "PASS: vTPM chain verified (azure)" in out
    assert "vmpl0-bound" in out
    assert ratls(azure_args(tmp_path, "--trust-simulator", "--json"), monkeypatch) == 0
    claims = json.loads(capsys.readouterr().out)
    assert claims["profile"] == "azure"
    assert claims["ak_binding"] == "vmpl0-bound"
    assert claims["vtpm"]["quote"]["extra_data"] == BINDER.hex()
    args = azure_args(tmp_path, "--trust-simulator", "-u", str(tmp_path / "ak.tpm2b"))
    assert ratls(args, monkeypatch) == 0
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[trust]\nsimulated_hardware = true\n[snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n'
        f'[vtpm.pcrs.sha256]\n7 = ["{"07" * 32}"]\n'
    )
    assert ratls(azure_args(tmp_path, "--policy", str(policy)), monkeypatch) == 0


def test_azure_verify_failures(
    sp: SimulatedAmdSp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _azure_setup(sp, tmp_path, claims_key_same=False)
    capsys.readouterr()
    # Without -u the AK is HCLAkPub, which did not sign this quote ...
    assert ratls(azure_args(tmp_path, "--trust-simulator"), monkeypatch) == 1
    assert "FAIL: tpm.quote.signature" in capsys.readouterr().err
    # ... and the key that did sign it is not the one the HCL report binds.
    args = azure_args(tmp_path, "--trust-simulator", "-u", str(tmp_path / "ak.tpm2b"))
    assert ratls(args, monkeypatch) == 1
    assert "FAIL: azure.hcl_ak_pub" in capsys.readouterr().err
    good = tmp_path / "good"
    good.mkdir()
    _azure_setup(sp, good)
    assert ratls(azure_args(good), monkeypatch) == 1
    assert "FAIL: snp.trust_anchor" in capsys.readouterr().err
    data = (good / "hcl.bin").read_bytes()
    assert data.count(b'"sign"') == 1
    (good / "hcl.bin").write_bytes(data.replace(b'"sign"', b'"Sign"'))  # still valid claims
    assert ratls(azure_args(good, "--trust-simulator"), monkeypatch) == 1
    assert "FAIL: azure.report_data" in capsys.readouterr().err
    (good / "hcl.bin").write_bytes(b"HCLA")
    assert ratls(azure_args(good, "--trust-simulator"), monkeypatch) == 2


# --------------------------------------------------------------------------------------
# vtpm attest / verify
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim")


@pytest.mark.swtpm
@needs_swtpm
@pytest.mark.parametrize("profile", ["svsm", "svsm-paper"])
def test_vtpm_attest_and_verify(
    profile: str,
    sim_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RATLS_SIM_DIR", str(sim_dir))
    out = tmp_path / "evidence"
    argv = ["vtpm", "attest", "--sim", "--profile", profile, "--out", str(out), "-q", BINDER.hex()]
    assert ratls(argv, monkeypatch) == 0
    assert (out / "evidence.cbor").is_file()
    assert (out / ("manifest.bin" if profile == "svsm" else "ek.pub")).is_file()
    capsys.readouterr()
    assert ratls(["vtpm", "verify", str(out), "--trust-simulator"], monkeypatch) == 0
    text = capsys.readouterr().out
    assert f"PASS: vTPM chain verified ({profile})" in text
    assert "ak binding     unproven" in text
    # The parts are tpm2-tools files: ratls tpm checkquote takes them as they are.
    parts = checkquote_args(out, "ak.pub", **{"-f": str(out / "quote.pcrs")})
    assert ratls(parts, monkeypatch) == 0
    # A policy that wants the AK activated refuses the non-interactive bundle.
    measurement = (out / "report.bin").read_bytes()[0x90:0xC0].hex()
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[trust]\nsimulated_hardware = true\n[snp]\nmeasurements = ["{measurement}"]\n'
    )
    capsys.readouterr()
    assert ratls(["vtpm", "verify", str(out), "--policy", str(policy)], monkeypatch) == 1
    assert "FAIL: vtpm.ak_binding" in capsys.readouterr().err
    lenient = tmp_path / "lenient.toml"
    lenient.write_text(policy.read_text() + "[vtpm]\nallow_unproven_ak = true\n")
    assert ratls(["vtpm", "verify", str(out), "--policy", str(lenient), "--json"], monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["vtpm"]["profile"] == profile
    assert ratls(["vtpm", "verify", str(out), "--trust-simulator", "-q", "00"], monkeypatch) == 1
    (out / "evidence.cbor").write_bytes(b"\xa0")
    assert ratls(["vtpm", "verify", str(out), "--trust-simulator"], monkeypatch) == 2


def test_vtpm_attest_needs_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ratls(["vtpm", "attest", "--out", str(tmp_path)], monkeypatch) == 2
    assert ratls(["vtpm", "verify", str(tmp_path / "nothing")], monkeypatch) == 2
    assert VtpmProfile.SVSM.value == "svsm"


def test_unusable_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric import rsa

    from ratls._tpm_structs import EK_TEMPLATE_RSA2048

    d = tmp_path
    (d / "bad.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    (d / "quote.msg").write_bytes(b"\xff\x54\x43\x47")
    (d / "quote.sig").write_bytes(b"\x00\x14")
    (d / "quote.pcrs").write_bytes(PCR_FILE)
    (d / "huge").write_bytes(bytes((1 << 20) + 1))
    capsys.readouterr()

    def unusable(argv: list[str], words: str) -> None:
        assert ratls(argv, monkeypatch) == 2
        assert words in capsys.readouterr().err

    unusable(checkquote_args(d, "bad.pem"), "not a PEM public key")
    unusable(checkquote_args(d, **{"-m": str(d / "huge")}), "larger than")
    unusable(["vtpm", "verify", str(d), "--at", "yesterday"], "not an ISO 8601 time")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = key.public_key().public_numbers().n.to_bytes(256, "big")
    (d / "ek.pub").write_bytes(dataclasses.replace(EK_TEMPLATE_RSA2048, unique=n).to_tpm2b())
    (d / "secret").write_bytes(b"s")
    argv = ["tpm", "makecredential", "-u", str(d / "ek.pub"), "-s", str(d / "secret")]
    argv += ["-n", "0x000b" + "00" * 32, "-o", str(d / "secret" / "cred")]
    unusable(argv, "cannot write")
    argv[-1] = str(d / "cred")
    assert ratls(argv, monkeypatch) == 0
    assert parse_tpm2_tools_credential((d / "cred").read_bytes()).id_object
