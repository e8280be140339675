"""Real AMD hardware evidence, verified end to end against AMD's pinned roots.

The Turin report (report version 5, 8-byte CHIP_ID, Turin TCB layout) and its VCEK were
published by other projects (tests/vectors/snp/SOURCES.md); the ARK and ASK are AMD's own
(certs/README.md).  Nothing here is produced by ratls, so these tests check the verifier
against hardware, not against our own simulator.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ratls._amd_certs import AmdTrustAnchors, load_amd_certificate
from ratls._errors import (
    CertificateChainError,
    MeasurementMismatch,
    NonceMismatch,
    SignatureMismatch,
)
from ratls._policy import Policy, SnpPolicy
from ratls._snp_report import ProductLine
from ratls._snp_verify import SnpEndorsements, verify_snp_report
from ratls._verify import verify_snp_attestation
from ratls.cli import main

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "tests" / "vectors" / "snp"
TURIN_ROOTS = REPO / "certs" / "amd" / "turin"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def turin_report() -> bytes:
    return bytes.fromhex((VECTORS / "turin-v5-oak-via-routex-client-lua.hex").read_text().strip())


def turin_endorsements() -> SnpEndorsements:
    return SnpEndorsements(
        leaf=load_amd_certificate(
            (VECTORS / "turin-v5-oak-via-routex-client-lua.vcek.pem").read_bytes()
        ),
        intermediate=load_amd_certificate((TURIN_ROOTS / "ask.pem").read_bytes()),
        root=load_amd_certificate((TURIN_ROOTS / "ark.pem").read_bytes()),
    )


def test_real_turin_report_verifies_against_the_pinned_amd_root() -> None:
    verified = verify_snp_report(
        turin_report(), turin_endorsements(), anchors=AmdTrustAnchors.default(), at=AT
    )
    assert verified.product is ProductLine.TURIN
    assert verified.trust_anchor == "AMD"
    report = verified.report
    assert report.version == 5
    assert report.reported_tcb.components() == {
        "bootloader": 1,
        "tee": 0,
        "snp": 2,
        "microcode": 71,
        "fmc": 0,
    }
    assert report.platform_info.to_int() == 0x67
    assert any(report.chip_id[:8])
    assert not any(report.chip_id[8:])


def test_real_turin_report_appraised() -> None:
    raw = turin_report()
    measurement = verify_snp_report(
        raw, turin_endorsements(), anchors=AmdTrustAnchors.default(), at=AT
    ).report.measurement
    policy = Policy(snp=SnpPolicy(measurements=frozenset({measurement}), vmpl=None))
    result = verify_snp_attestation(raw, turin_endorsements(), policy=policy, at=AT)
    assert result.trust_anchor == "AMD"
    assert result.appraised
    with pytest.raises(NonceMismatch):
        verify_snp_attestation(
            raw, turin_endorsements(), policy=policy, at=AT, expected_report_data=bytes(64)
        )
    strict = Policy(snp=SnpPolicy(measurements=frozenset({bytes(48)}), vmpl=None))
    with pytest.raises(MeasurementMismatch) as info:
        verify_snp_attestation(raw, turin_endorsements(), policy=strict, at=AT)
    assert "snp.measurement" in str(info.value)


def test_real_turin_report_with_one_bit_flipped_is_refused() -> None:
    raw = bytearray(turin_report())
    raw[0x90] ^= 0x01
    with pytest.raises(SignatureMismatch):
        verify_snp_report(
            bytes(raw), turin_endorsements(), anchors=AmdTrustAnchors.default(), at=AT
        )


def test_real_turin_chain_under_another_products_root_is_refused() -> None:
    genoa_ark = load_amd_certificate((REPO / "certs" / "amd" / "genoa" / "ark.pem").read_bytes())
    endorsements = turin_endorsements()
    mixed = SnpEndorsements(
        leaf=endorsements.leaf, intermediate=endorsements.intermediate, root=genoa_ark
    )
    with pytest.raises(CertificateChainError):
        verify_snp_report(turin_report(), mixed, anchors=AmdTrustAnchors.default(), at=AT)


def test_real_turin_report_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(turin_report())
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(VECTORS / "turin-v5-oak-via-routex-client-lua.vcek.pem", certs / "vcek.pem")
    shutil.copy(TURIN_ROOTS / "ask.pem", certs / "ask.pem")
    shutil.copy(TURIN_ROOTS / "ark.pem", certs / "ark.pem")
    args = ["snp", "verify", "--report", str(report), "--certs", str(certs), "--at", AT.isoformat()]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trust anchor   AMD" in out
    assert "Turin" in out


def test_kds_addresses_for_real_reports() -> None:
    from ratls._amd_certs import kds_chain_url, kds_vcek_url
    from ratls._snp_report import parse_snp_report

    turin = parse_snp_report(turin_report())
    assert kds_vcek_url(turin) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/3b42092f69c656d3"
        "?fmcSPL=0&blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71"
    )
    milan_raw = bytes.fromhex((VECTORS / "milan-v2-virtee-sev.hex").read_text().strip())
    milan = parse_snp_report(milan_raw, product=ProductLine.MILAN)
    url = kds_vcek_url(milan)
    assert url.startswith("https://kdsintf.amd.com/vcek/v1/Milan/" + milan.chip_id.hex() + "?")
    assert url.endswith("blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115")
    assert kds_chain_url(ProductLine.GENOA) == "https://kdsintf.amd.com/vcek/v1/Genoa/cert_chain"
    with pytest.raises(ValueError, match="product"):
        kds_vcek_url(parse_snp_report(milan_raw))


def test_display_prints_the_kds_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(turin_report())
    assert main(["snp", "display", str(report)]) == 0
    assert "kdsintf.amd.com/vcek/v1/Turin/3b42092f69c656d3" in capsys.readouterr().out
