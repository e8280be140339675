"""Output files are written all or nothing: a full disk leaves the previous file intact."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from ratls import cli
from ratls._cli_cert import add_commands
from ratls._files import write_atomically
from ratls._snp_report import ProductLine
from ratls.sim import SimulatedAmdSp


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, allowed: int) -> None:
    """Make writes fail with ENOSPC once ``allowed`` bytes were written.

    No test may fill a real filesystem, so the kernel's answer is imitated at the one
    call that meets it; /dev/full gives the real one below.
    """
    real_write = os.write
    left = [allowed]

    def write(fd: int, data: bytes | memoryview) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data)[: left[0]])
        left[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)  # the call ratls._files makes


def test_write_creates_replaces_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "out.pem"
    write_atomically(target, b"first")
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomically(target, b"second, longer", mode=0o600)
    assert target.read_bytes() == b"second, longer"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.pem"]


def test_a_symlinked_target_keeps_its_link(tmp_path: Path) -> None:
    real = tmp_path / "store" / "cert.pem"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "cert.pem"
    link.symlink_to(real)
    write_atomically(link, b"new")
    assert link.is_symlink()
    assert real.read_bytes() == b"new"


@pytest.mark.parametrize("allowed", [0, 3, 4096])
def test_full_disk_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: int
) -> None:
    target = tmp_path / "cert.pem"
    target.write_bytes(b"the old certificate")
    _disk_full_after(monkeypatch, allowed)
    with pytest.raises(OSError, match="No space left") as info:
        write_atomically(target, b"x" * 10_000)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the old certificate"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem"]  # no temporary left


def test_full_disk_without_a_previous_file_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _disk_full_after(monkeypatch, 10)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(tmp_path / "new.pem", b"y" * 100)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_special_files_are_written_directly() -> None:
    # /dev/full cannot be renamed over; writing to it is a real ENOSPC.
    with pytest.raises(OSError, match="No space left") as info:
        write_atomically("/dev/full", b"data")
    assert info.value.errno == errno.ENOSPC
    write_atomically("/dev/null", b"data")
    assert Path("/dev/null").is_char_device()


def _ratls(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    def build_parser() -> cli._Parser:
        parser = cli._Parser(prog="ratls")
        verbs = parser.add_subparsers(dest="verb", required=True, parser_class=cli._Parser)
        add_commands(verbs)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)
    return cli.main(list(argv))


def test_cert_create_on_a_full_disk_reports_it_and_keeps_the_old_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["cert", "create", "--sim", "--sim-dir", str(tmp_path / "sim")]
    key, out = tmp_path / "key.pem", tmp_path / "cert.pem"
    assert _ratls(monkeypatch, *args, "--key", str(key), "--out", str(out)) == 0
    old = out.read_bytes()
    capsys.readouterr()
    _disk_full_after(monkeypatch, 100)
    assert _ratls(monkeypatch, *args, "--key", str(key), "--out", str(out)) == 2
    assert f"cannot write {out}: No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == old
    x509.load_pem_x509_certificate(old)  # still a whole certificate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem", "sim"]
    # The real device gives the same answer, through the same path.
    code = _ratls(monkeypatch, *args, "--key", str(key), "--out", "/dev/full")
    assert code == 2


def test_simulator_saved_on_a_full_disk_is_made_anew_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "milan"
    with monkeypatch.context() as patch:
        _disk_full_after(patch, 5000)  # some files fit, the rest do not
        with pytest.raises(OSError, match="No space left"):
            SimulatedAmdSp.load_or_generate(state, ProductLine.MILAN)
    assert not (state / "sp.json").exists()  # the marker of a whole save is written last
    sp = SimulatedAmdSp.load_or_generate(state, ProductLine.MILAN)
    again = SimulatedAmdSp.load_or_generate(state, ProductLine.MILAN)
    assert again.ark == sp.ark  # loaded, not made a third time
