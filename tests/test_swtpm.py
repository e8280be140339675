"""Tests of the ephemeral swtpm vTPM and the simulated SVSM vTPM boot (ratls.sim._swtpm).

Every test here runs real swtpm processes, started and stopped by the tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import struct
import subprocess
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import ratls.sim._swtpm as swtpm_module
from ratls._errors import AttesterError, AttesterUnavailable, NonceMismatch
from ratls._tpm_credential import make_credential, parse_tpm2_tools_credential
from ratls._tpm_device import (
    EK_PERSISTENT_HANDLE,
    NV_INDEX_RSA2048_EK_CERT,
    Attestation,
    Tpm,
    TpmaNv,
    TpmCommandError,
)
from ratls._tpm_quote import verify_quote
from ratls._tpm_structs import (
    AK_REQUIRED_ATTRIBUTES,
    EK_TEMPLATE_RSA2048,
    TCG_EK_AUTH_POLICY_SHA256,
    ObjectAttributes,
    TpmAlgId,
    TpmsQuoteInfo,
    TpmSt,
    check_ek_public,
    parse_tpm2b_attest,
    parse_tpmt_public,
    parse_tpmt_signature,
)
from ratls.attesters._svsm_vtpm import QUOTE_ATTEMPTS, quote_and_pcrs
from ratls.sim._swtpm import (
    Swtpm,
    VtpmIdentity,
    activate_credential,
    manufacture_vtpm,
    open_swtpm,
    quote,
    store_report_in_nv,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed"),
]

SHA256 = TpmAlgId.SHA256
SELECTION = {SHA256: [0, 1, 2, 3, 7, 23]}


@pytest.fixture(scope="module")
def vtpm() -> Iterator[tuple[Tpm, VtpmIdentity]]:
    with Swtpm() as tpm:
        yield tpm, manufacture_vtpm(tpm)


# --------------------------------------------------------------------------------------
# Process lifecycle
# --------------------------------------------------------------------------------------


def test_process_and_state_dir_gone_after_exit() -> None:
    sw = Swtpm()
    assert sw.process is None
    assert sw.state_dir is None
    with sw as tpm:
        assert sw.process is not None
        assert sw.state_dir is not None
        assert sw.process.poll() is None
        assert sw.state_dir.is_dir()
        assert any(sw.state_dir.iterdir())
        assert sw.tpm is tpm
        assert f"pid={sw.process.pid}" in repr(sw)
        assert len(tpm.get_random(8)) == 8
    assert sw.process.poll() == 0  # graceful shutdown through the control channel
    assert not sw.state_dir.exists()
    with pytest.raises(AttesterError, match="not running"):
        _ = sw.tpm
    with pytest.raises(AttesterError, match="not running"):
        _ = sw.transport


def test_cleanup_after_exception_in_block() -> None:
    sw = Swtpm()
    with pytest.raises(KeyError), sw:
        raise KeyError("boom")
    assert sw.process is not None
    assert sw.process.poll() is not None
    assert sw.state_dir is not None
    assert not sw.state_dir.exists()


def test_cleanup_after_swtpm_was_killed() -> None:
    sw = Swtpm()
    with sw:
        assert sw.process is not None
        sw.process.kill()
        sw.process.wait()
    assert sw.state_dir is not None
    assert not sw.state_dir.exists()


def test_enter_only_once() -> None:
    sw = Swtpm()
    with sw:
        pass
    with pytest.raises(RuntimeError, match="only once"), sw:
        pass  # pragma: no cover


def test_missing_swtpm_is_unavailable() -> None:
    sw = Swtpm(swtpm="ratls-no-such-swtpm-binary")
    with pytest.raises(AttesterUnavailable, match="not found"), sw:
        pass  # pragma: no cover
    assert sw.state_dir is None


def test_swtpm_that_does_not_start(tmp_path: Path) -> None:
    fake = tmp_path / "swtpm"
    fake.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    sw = Swtpm(swtpm=str(fake))
    with pytest.raises(AttesterError, match="cannot start"), sw:
        pass  # pragma: no cover
    assert sw.state_dir is not None
    assert not sw.state_dir.exists()


def test_swtpm_that_cannot_be_executed(tmp_path: Path) -> None:
    fake = tmp_path / "swtpm"
    fake.write_bytes(b"\x00not an executable format")
    fake.chmod(0o755)
    sw = Swtpm(swtpm=str(fake))
    with pytest.raises(AttesterError, match="cannot run"), sw:
        pass  # pragma: no cover
    assert sw.state_dir is not None
    assert not sw.state_dir.exists()


def test_hung_swtpm_is_killed_on_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swtpm_module, "SHUTDOWN_TIMEOUT", 0.2)
    sw = Swtpm()
    with sw:
        assert sw.process is not None
        sw.process.send_signal(signal.SIGSTOP)  # ignores the graceful shutdown and SIGTERM
    assert sw.process.returncode == -signal.SIGKILL
    assert sw.state_dir is not None
    assert not sw.state_dir.exists()


def test_store_report_passes_on_unexpected_errors() -> None:
    class Refusing:
        def transmit(self, command: bytes) -> bytes:
            return struct.pack(">HII", 0x8001, 10, 0x149)  # TPM_RC_NV_AUTHORIZATION

        def close(self) -> None:
            pass

    with pytest.raises(TpmCommandError, match="NV_AUTHORIZATION"):
        store_report_in_nv(Tpm(Refusing()), bytes(16))


async def test_open_swtpm_async() -> None:
    async with open_swtpm() as tpm:
        data = await trio.to_thread.run_sync(tpm.get_random, 16)
        assert len(data) == 16


# --------------------------------------------------------------------------------------
# Manufacturing: EK and AK
# --------------------------------------------------------------------------------------


def test_ek_matches_tcg_template(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    ek = ident.ek()
    assert int(ek.object_attributes) == 0x000300B2
    assert ek.auth_policy == TCG_EK_AUTH_POLICY_SHA256
    assert ek.type is TpmAlgId.RSA
    check_ek_public(ek)
    assert dataclasses.replace(ek, unique=bytes(256)) == EK_TEMPLATE_RSA2048
    assert ident.ek_public != EK_TEMPLATE_RSA2048.to_tpm2b()  # a real modulus, not zeros
    assert ident.ek_handle == EK_PERSISTENT_HANDLE
    assert EK_PERSISTENT_HANDLE in tpm.get_handles(0x81000000)
    assert ident.ek_tpmt_public == ident.ek_public[2:]
    assert parse_tpmt_public(ident.ek_tpmt_public) == ek
    assert ident.ek_name == b"\x00\x0b" + hashlib.sha256(ident.ek_tpmt_public).digest()
    assert tpm.read_public(EK_PERSISTENT_HANDLE).public == ident.ek_public


def test_ak_is_restricted_signing_child(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    ak = ident.ak()
    assert ak.object_attributes & AK_REQUIRED_ATTRIBUTES == AK_REQUIRED_ATTRIBUTES
    assert not ak.object_attributes & ObjectAttributes.DECRYPT
    assert ak.type is TpmAlgId.ECC  # the default AK: P-256
    assert ak.name() == ident.ak_name
    public = tpm.read_public(ident.ak_handle)
    assert public.name == ident.ak_name
    # Qualified name: the AK's parent is the EK, a primary key of the endorsement hierarchy.
    ek_qn = tpm.read_public(EK_PERSISTENT_HANDLE).qualified_name
    assert public.qualified_name == b"\x00\x0b" + hashlib.sha256(ek_qn + ident.ak_name).digest()


def test_ek_differs_across_fresh_vtpms() -> None:
    names = []
    for _ in range(2):
        with Swtpm() as tpm:
            names.append(manufacture_vtpm(tpm).ek_name)
    assert names[0] != names[1]


def test_manufacture_twice_replaces_persistent_ek(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    with Swtpm() as tpm:
        first = manufacture_vtpm(tpm)
        second = manufacture_vtpm(tpm)
        assert first.ek_public == second.ek_public  # same seed, same template
        assert tpm.get_handles(0x81000000) == [EK_PERSISTENT_HANDLE]


def test_unknown_ak_type(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    with pytest.raises(ValueError, match="ak_type"):
        manufacture_vtpm(vtpm[0], ak_type="dsa")


def test_identity_value_type(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    ident = vtpm[1]
    same = dataclasses.replace(ident)
    other = dataclasses.replace(ident, ak_handle=ident.ak_handle + 1)
    assert ident == same
    assert hash(ident) == hash(same)
    assert ident != other
    assert ident != object()
    assert repr(ident).startswith(f"VtpmIdentity(ek_handle={EK_PERSISTENT_HANDLE}")


# --------------------------------------------------------------------------------------
# Quotes
# --------------------------------------------------------------------------------------


def test_rsa_quote_verifies_with_cryptography() -> None:
    with Swtpm() as tpm:
        ident = manufacture_vtpm(tpm, ak_type="rsa")
        nonce = os.urandom(32)
        result = quote(tpm, ident, nonce, SELECTION)
    attest = parse_tpm2b_attest(result.attest)
    assert attest.type is TpmSt.ATTEST_QUOTE
    assert attest.extra_data == nonce
    sig = parse_tpmt_signature(result.signature)
    assert sig.sig_alg is TpmAlgId.RSASSA
    key = ident.ak().public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    signed = result.attest[2:]
    key.verify(sig.sig, signed, padding.PKCS1v15(), hashes.SHA256())
    tampered = signed[:-1] + bytes([signed[-1] ^ 0xFF])  # always a change
    with pytest.raises(InvalidSignature):
        key.verify(sig.sig, tampered, padding.PKCS1v15(), hashes.SHA256())


def test_quote_pcr_digest_and_verify_quote(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    tpm.pcr_extend(23, {SHA256: hashlib.sha256(b"quote me").digest()})
    nonce = os.urandom(32)
    result = quote(tpm, ident, nonce, SELECTION)
    values = tpm.pcr_read(SELECTION)
    info = parse_tpm2b_attest(result.attest).attested
    assert isinstance(info, TpmsQuoteInfo)
    concatenated = b"".join(values[SHA256][i] for i in sorted(SELECTION[SHA256]))
    assert info.pcr_digest == hashlib.sha256(concatenated).digest()
    verified = verify_quote(
        attest=result.attest[2:],
        signature=result.signature,
        ak_public=ident.ak(),
        expected_extra_data=nonce,
        pcr_values=values,
    )
    assert verified.extra_data == nonce
    with pytest.raises(NonceMismatch):
        verify_quote(
            attest=result.attest[2:],
            signature=result.signature,
            ak_public=ident.ak(),
            expected_extra_data=os.urandom(32),
            pcr_values=values,
        )


def test_quote_with_ecc_ak() -> None:
    with Swtpm() as tpm:
        ident = manufacture_vtpm(tpm, ak_type="ecc")
        assert ident.ak().type is TpmAlgId.ECC
        result = quote(tpm, ident, b"ecc nonce", {SHA256: [0]})
    sig = parse_tpmt_signature(result.signature)
    assert sig.sig_alg is TpmAlgId.ECDSA
    key = ident.ak().public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(
        int.from_bytes(sig.signature_r, "big"), int.from_bytes(sig.signature_s, "big")
    )
    key.verify(der, result.attest[2:], ec.ECDSA(hashes.SHA256()))


def test_quote_with_oversized_qualifying_data(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    with pytest.raises(TpmCommandError) as info:
        quote(tpm, ident, bytes(67), SELECTION)
    assert info.value.code.parameter == 1


# --------------------------------------------------------------------------------------
# Credential activation
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tpm2_makecredential") is None, reason="tpm2-tools missing")
def test_activate_credential_from_tpm2_tools(
    vtpm: tuple[Tpm, VtpmIdentity], tmp_path: Path
) -> None:
    tpm, ident = vtpm
    secret = os.urandom(32)
    (tmp_path / "ek.pub").write_bytes(ident.ek_public)
    (tmp_path / "secret").write_bytes(secret)
    subprocess.run(  # noqa: S603 - fixed argv
        [  # noqa: S607 - tpm2-tools from PATH
            "tpm2_makecredential",
            "-T",
            "none",
            "-u",
            str(tmp_path / "ek.pub"),
            "-s",
            str(tmp_path / "secret"),
            "-n",
            ident.ak_name.hex(),
            "-o",
            str(tmp_path / "cred"),
        ],
        check=True,
        capture_output=True,
    )
    cred = parse_tpm2_tools_credential((tmp_path / "cred").read_bytes())
    assert activate_credential(tpm, ident, cred.id_object, cred.encrypted_secret) == secret


def test_activate_credential_from_make_credential(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    secret = os.urandom(16)
    cred = make_credential(ek_public=ident.ek(), ak_name=ident.ak_name, secret=secret)
    assert activate_credential(tpm, ident, cred.id_object, cred.encrypted_secret) == secret
    # activate_credential flushes its policy session
    assert tpm.get_handles(0x03000000) == []


def test_activate_credential_for_another_name_fails(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    wrong_name = b"\x00\x0b" + hashlib.sha256(b"some other key").digest()
    cred = make_credential(ek_public=ident.ek(), ak_name=wrong_name, secret=b"s" * 16)
    with pytest.raises(TpmCommandError) as info:
        activate_credential(tpm, ident, cred.id_object, cred.encrypted_secret)
    assert info.value.code.base == 0x09F  # TPM_RC_INTEGRITY
    assert tpm.get_handles(0x03000000) == []


def test_activate_credential_for_another_ek_fails(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    with Swtpm() as other_tpm:
        other_ek = manufacture_vtpm(other_tpm).ek()
    cred = make_credential(ek_public=other_ek, ak_name=ident.ak_name, secret=b"s" * 16)
    with pytest.raises(TpmCommandError):
        activate_credential(tpm, ident, cred.id_object, cred.encrypted_secret)


def test_activate_credential_refuses_unframed_blobs(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, ident = vtpm
    with pytest.raises(ValueError, match="id_object must be a TPM2B"):
        activate_credential(tpm, ident, b"\x00\x05abc", b"\x00\x01x")
    with pytest.raises(ValueError, match="encrypted_secret must be a TPM2B"):
        activate_credential(tpm, ident, b"\x00\x01x", b"")


# --------------------------------------------------------------------------------------
# NV: the SVSM-vTPM prototype keeps the VMPL0 SNP report at the EK certificate index
# --------------------------------------------------------------------------------------


def test_store_report_in_nv(vtpm: tuple[Tpm, VtpmIdentity]) -> None:
    tpm, _ = vtpm
    report = os.urandom(1184)
    store_report_in_nv(tpm, report)
    assert tpm.nv_read(NV_INDEX_RSA2048_EK_CERT) == report
    assert tpm.nv_read(NV_INDEX_RSA2048_EK_CERT, auth_handle=0x40000001) == report
    public = tpm.nv_read_public(NV_INDEX_RSA2048_EK_CERT)
    assert public.data_size == 1184
    assert public.attributes & TpmaNv.OWNERREAD
    replacement = os.urandom(1184)
    store_report_in_nv(tpm, replacement)  # redefines the index
    assert tpm.nv_read(NV_INDEX_RSA2048_EK_CERT) == replacement


# --------------------------------------------------------------------------------------
# Quotes with their PCR values (attesters' quote_and_pcrs)
# --------------------------------------------------------------------------------------


class _CountingTpm:
    """A real swtpm Tpm whose quote and PCR_Read calls are counted; ``after_quote`` and
    ``after_read`` run after each (to extend a PCR, as IMA would at any moment)."""

    def __init__(self, tpm: Tpm) -> None:
        self.tpm = tpm
        self.quotes = 0
        self.reads = 0
        self.after_quote: Callable[[], None] = lambda: None
        self.after_read: Callable[[], None] = lambda: None

    def quote(self, *args: Any, **kwargs: Any) -> Any:
        self.quotes += 1
        result = self.tpm.quote(*args, **kwargs)
        self.after_quote()
        return result

    def pcr_read(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        result = self.tpm.pcr_read(*args, **kwargs)
        self.after_read()
        return result


def _measure_into_pcr23(tpm: Tpm) -> Callable[[], None]:
    """Extend PCR 23 with a new random digest at each call (as IMA measures files)."""
    return lambda: tpm.pcr_extend(23, {SHA256: os.urandom(32)})


def _verifies(ident: VtpmIdentity, attestation: Attestation, values: Any, nonce: bytes) -> None:
    verify_quote(
        attest=attestation.attest[2:],
        signature=attestation.signature,
        ak_public=ident.ak(),
        expected_extra_data=nonce,
        pcr_values=values,
    )


def test_known_pcr_values_spare_the_read_only_while_current(
    vtpm: tuple[Tpm, VtpmIdentity],
) -> None:
    tpm, ident = vtpm
    counting = _CountingTpm(tpm)
    as_tpm = cast("Tpm", counting)
    nonce = os.urandom(32)
    first, values = quote_and_pcrs(as_tpm, ident, nonce, SELECTION)
    assert (counting.quotes, counting.reads) == (1, 1)
    _verifies(ident, first, values, nonce)

    second, again = quote_and_pcrs(as_tpm, ident, nonce, SELECTION, known=values)
    assert (counting.quotes, counting.reads) == (2, 1)  # the digest showed them current
    _verifies(ident, second, again, nonce)

    tpm.pcr_extend(7, {SHA256: hashlib.sha256(b"a new measurement").digest()})
    third, fresh = quote_and_pcrs(as_tpm, ident, nonce, SELECTION, known=values)
    assert (counting.quotes, counting.reads) == (3, 2)  # stale: read once more
    assert fresh[SHA256][7] != values[SHA256][7]
    _verifies(ident, third, fresh, nonce)

    # Values for another selection are never taken for these.
    other = {SHA256: {0: values[SHA256][0]}}
    fourth, read = quote_and_pcrs(as_tpm, ident, nonce, SELECTION, known=other)
    assert counting.reads == 3
    _verifies(ident, fourth, read, nonce)


def test_pcrs_changing_after_the_quote_mean_another_quote(
    vtpm: tuple[Tpm, VtpmIdentity],
) -> None:
    tpm, ident = vtpm
    counting = _CountingTpm(tpm)
    extensions = iter([b"between the first quote and its reading"])

    def measure_once() -> None:
        for data in extensions:
            tpm.pcr_extend(23, {SHA256: hashlib.sha256(data).digest()})
            return

    counting.after_quote = measure_once
    nonce = os.urandom(32)
    attestation, values = quote_and_pcrs(cast("Tpm", counting), ident, nonce, SELECTION)
    assert counting.quotes == 2
    _verifies(ident, attestation, values, nonce)

    # Measured after every quote: the values read after one quote are the next one's.
    counting = _CountingTpm(tpm)
    counting.after_quote = _measure_into_pcr23(tpm)
    attestation, values = quote_and_pcrs(cast("Tpm", counting), ident, nonce, SELECTION)
    assert (counting.quotes, counting.reads) == (2, 1)
    _verifies(ident, attestation, values, nonce)


def test_pcrs_that_never_hold_still_are_an_attester_error(
    vtpm: tuple[Tpm, VtpmIdentity],
) -> None:
    tpm, ident = vtpm
    counting = _CountingTpm(tpm)
    counting.after_quote = counting.after_read = _measure_into_pcr23(tpm)
    with pytest.raises(AttesterError, match="changed between each of 3 quotes"):
        quote_and_pcrs(cast("Tpm", counting), ident, os.urandom(32), SELECTION)
    assert counting.quotes == QUOTE_ATTEMPTS
