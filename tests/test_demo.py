"""`ratls demo`, the README's main job: traffic through attested gateways, a tampered VM refused."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from ratls.cli import main

if TYPE_CHECKING:
    import pytest


def swtpm_processes() -> set[str]:
    """PIDs of swtpm processes that ratls started (their state dirs are named ratls-swtpm-*)."""
    done = subprocess.run(
        ["pgrep", "-f", "ratls-swtpm-"],  # noqa: S607 - procps, installed everywhere we run
        capture_output=True,
        text=True,
        check=False,
    )
    return set(done.stdout.split())


def test_demo_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    before = swtpm_processes()
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    # Traffic flowed through ingress -> attested tunnel -> egress -> backend, twice.
    assert out.count("response: HTTP/1.0 200 OK | hello from the confidential backend") == 2
    # The backend learned the client side's verified launch measurement from a header.
    assert out.count("the gateway vouches for the client side: 37449dfda6861d66...") == 2
    # The verified attestation is shown: SNP + vTPM, AK proven in the connection.
    assert "profile       svsm" in out
    assert "ak binding    activated" in out
    assert "trust anchor  simulator root" in out
    assert out.count("ak=activated") >= 2
    assert out.count("link = TLSv1.3 ") == 4  # both access lines of both requests
    # The tampered VM is refused, the client is told why, and its backend saw nothing.
    assert "REFUSED: HTTP/1.1 502 Bad Gateway (reason: attestation-failed)" in out
    assert "MeasurementMismatch: snp.measurement" in out
    assert "backend received 0 bytes (fail closed)" in out
    # Every swtpm it started is gone.
    assert swtpm_processes() <= before
