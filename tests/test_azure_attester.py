"""The Azure attester against swtpm provisioned the way Azure's paravisor provisions its vTPM.

Each vTPM here is a real swtpm process: an EK and a restricted signing AK persisted at
0x81000003, and an HCL report (signed by the simulated AMD-SP, runtime claims naming that
AK as HCLAkPub) written to NV index 0x01400001 with the index's zero padding.  The
attester then talks to it over the TPM transport, and its evidence goes through the
existing azure-profile verifier.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ratls._api import open_attested_stream, serve_attested
from ratls._attesters_registry import make_attester
from ratls._azure_hcl import HCL_NV_INDEX, HclReport, build_runtime_claims
from ratls._bound import BoundVerifier, VtpmBoundAttester
from ratls._errors import (
    AttesterError,
    AttesterUnavailable,
    BindingMismatch,
    EvidenceFormatError,
    NonceMismatch,
)
from ratls._policy import Policy, SnpPolicy, TrustPolicy
from ratls._result import AttestationResult
from ratls._snp_report import ProductLine
from ratls._tpm_device import TpmaNv
from ratls._tpm_structs import TpmAlgId
from ratls._vtpm_evidence import AkBinding, VtpmProfile, parse_vtpm_evidence, verify_vtpm_evidence
from ratls.attesters import AZURE_AK_HANDLE, AZURE_PCR_SELECTION, AzureVtpmAttester
from ratls.sim import SimulatedAmdSp, Swtpm, manufacture_vtpm, simulated_amd_sp

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ratls._tpm_device import Tpm

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed"),
]

SIM_MEASUREMENT = hashlib.sha384(b"ratls simulated guest launch").digest()
POLICY = Policy(
    snp=SnpPolicy(measurements=frozenset({SIM_MEASUREMENT})),
    trust=TrustPolicy(simulated_hardware=True),
)
NV_PADDING = 64


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


def certs_of(sp: SimulatedAmdSp) -> tuple[bytes, bytes, bytes]:
    return (
        sp.leaf.public_bytes(Encoding.DER),
        sp.ask.public_bytes(Encoding.DER),
        sp.ark.public_bytes(Encoding.DER),
    )


def hcl_report(sp: SimulatedAmdSp, ak_public: rsa.RSAPublicKey, **report: Any) -> bytes:
    """An HCL report as the paravisor makes it at boot, naming ``ak_public``."""
    claims = build_runtime_claims(
        ak_public=ak_public, vm_configuration={"secure-boot": True, "tpm-enabled": True}
    )
    report_data = hashlib.sha256(claims).digest() + bytes(32)
    snp = sp.build_report(report_data=report_data, vmpl=0, **report)
    return HclReport(
        version=2,
        report_size=len(claims),
        snp_report=snp.to_bytes(),
        data_size=len(claims) + 20,
        igvm_version=1,
        variable_data=claims,
    ).to_bytes()


def write_nv(tpm: Tpm, blob: bytes) -> None:
    size = len(blob) + NV_PADDING
    tpm.nv_define(
        HCL_NV_INDEX,
        size,
        TpmaNv.OWNERWRITE | TpmaNv.AUTHWRITE | TpmaNv.OWNERREAD | TpmaNv.AUTHREAD | TpmaNv.NO_DA,
    )
    tpm.nv_write(HCL_NV_INDEX, blob + bytes(NV_PADDING))


def provision(tpm: Tpm, sp: SimulatedAmdSp, *, hcl: bool = True, ak: bool = True) -> None:
    """Do what the Azure paravisor does at boot: persist the AK, store the HCL report."""
    identity = manufacture_vtpm(tpm, ak_type="rsa")
    if ak:
        tpm.evict_control(identity.ak_handle, AZURE_AK_HANDLE)
    tpm.flush_context(identity.ak_handle)
    key = identity.ak().public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    if hcl:
        write_nv(tpm, hcl_report(sp, key))


@pytest.fixture(scope="module")
def azure_tpm(sp: SimulatedAmdSp) -> Iterator[Tpm]:
    with Swtpm() as tpm:
        provision(tpm, sp)
        yield tpm


@pytest.fixture
def fresh_tpm() -> Iterator[Tpm]:
    with Swtpm() as tpm:
        yield tpm


def verify(evidence: Any, binder: bytes) -> Any:
    return verify_vtpm_evidence(
        evidence,
        policy=POLICY,
        at=datetime.datetime.now(datetime.UTC),
        expected_binder=binder,
    )


# --------------------------------------------------------------------------- success


def test_evidence_verifies_end_to_end(azure_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=azure_tpm)
    binder = os.urandom(32)
    evidence = attester.collect_evidence(binder=binder)
    assert evidence.profile is VtpmProfile.AZURE
    assert parse_vtpm_evidence(evidence.to_bytes()) == evidence
    assert {bank for bank, _, _ in evidence.pcrs} == {TpmAlgId.SHA256}
    assert len(evidence.pcrs) == len(AZURE_PCR_SELECTION[TpmAlgId.SHA256])
    verified = verify(evidence, binder)
    assert verified.ak_binding is AkBinding.VMPL0_BOUND
    assert verified.runtime_claims is not None
    assert verified.snp.report.measurement == SIM_MEASUREMENT
    assert verified.snp.report.vmpl == 0


def test_hcl_report_read_without_nv_padding(azure_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=azure_tpm)
    blob = attester.hcl_report()
    padded = azure_tpm.nv_read(HCL_NV_INDEX)
    assert padded == blob + bytes(NV_PADDING)


def test_bound_attester_and_verifier(azure_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    attester = VtpmBoundAttester(AzureVtpmAttester(certs=certs_of(sp), tpm=azure_tpm))
    verifier = BoundVerifier(POLICY)
    binder = os.urandom(64)
    evidence = attester.evidence(binder)
    assert verifier.activation_challenge(evidence) is None
    result = verifier.verify(evidence, binder)
    assert result.ak_binding == "vmpl0-bound"
    assert result.profile == "azure"
    with pytest.raises(NonceMismatch):
        verifier.verify(evidence, os.urandom(64))


async def test_attested_tls_with_the_azure_attester(azure_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    attester = VtpmBoundAttester(AzureVtpmAttester(certs=certs_of(sp), tpm=azure_tpm))

    async def echo(stream: Any) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_attested, echo, 0, attester=attester, policy=None, verify_peer=False)
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await open_attested_stream("127.0.0.1", port, attester="none", policy=POLICY)
        await stream.send_all(b"azure")
        assert await stream.receive_some() == b"azure"
        result = stream.peer_attestation
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert isinstance(result, AttestationResult)
    assert result.profile == "azure"
    assert result.ak_binding == "vmpl0-bound"


# --------------------------------------------------------------------------- negative


def test_wrong_binder_refused(azure_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=azure_tpm)
    evidence = attester.collect_evidence(binder=bytes(32))
    with pytest.raises(NonceMismatch):
        verify(evidence, bytes([1]) * 32)


def test_hcl_naming_another_ak_refused(fresh_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    identity = manufacture_vtpm(fresh_tpm, ak_type="rsa")
    fresh_tpm.evict_control(identity.ak_handle, AZURE_AK_HANDLE)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    write_nv(fresh_tpm, hcl_report(sp, other))
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=fresh_tpm)
    evidence = attester.collect_evidence(binder=bytes(32))
    with pytest.raises(BindingMismatch) as info:
        verify(evidence, bytes(32))
    assert "hcl_ak_pub" in info.value.claim


def test_no_hcl_report_is_unavailable(fresh_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    provision(fresh_tpm, sp, hcl=False)
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=fresh_tpm)
    with pytest.raises(AttesterUnavailable, match="no HCL report"):
        attester.collect_evidence(binder=bytes(32))


def test_no_ak_is_unavailable(fresh_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    provision(fresh_tpm, sp, ak=False)
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=fresh_tpm)
    with pytest.raises(AttesterUnavailable, match="0x81000003"):
        attester.collect_evidence(binder=bytes(32))


def test_garbage_in_nv_is_a_format_error(fresh_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    write_nv(fresh_tpm, b"NOPE" + bytes(0x600))
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=fresh_tpm)
    with pytest.raises(EvidenceFormatError, match="HCL"):
        attester.hcl_report()


def test_needs_the_vcek_chain(azure_tpm: Tpm) -> None:
    attester = AzureVtpmAttester(certs=None, tpm=azure_tpm)
    with pytest.raises(AttesterError, match="VCEK"):
        attester.collect_evidence(binder=bytes(32))


def test_argument_checks(azure_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    with pytest.raises(ValueError, match="three"):
        AzureVtpmAttester(certs=(b"a", b"b"), tpm=azure_tpm)  # type: ignore[arg-type]
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=azure_tpm)
    with pytest.raises(ValueError, match="activation"):
        attester.collect_evidence(binder=bytes(32), activation_proof=b"x")
    with pytest.raises(AttesterError, match="activation"):
        attester.activate(None)  # type: ignore[arg-type]
    assert "0x81000003" in repr(attester)


def test_close_leaves_a_borrowed_tpm_open(azure_tpm: Tpm, sp: SimulatedAmdSp) -> None:
    attester = AzureVtpmAttester(certs=certs_of(sp), tpm=azure_tpm)
    attester.close()
    attester.close()
    assert azure_tpm.get_random(4)  # still usable


# --------------------------------------------------------------------------- registry


def test_registry_without_a_tpm(tmp_path: Any) -> None:
    with pytest.raises(AttesterUnavailable, match="no vTPM"):
        make_attester("azure", tpm_device=str(tmp_path / "tpmrm0"))


def test_registry_needs_certs(tmp_path: Any) -> None:
    device = tmp_path / "tpmrm0"
    device.write_bytes(b"")
    with pytest.raises(AttesterUnavailable, match="certs"):
        make_attester("azure", tpm_device=str(device))
