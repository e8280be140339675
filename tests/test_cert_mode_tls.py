"""Cert mode (interoperable RA-TLS) over real loopback sockets, and openssl s_client interop."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import types
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ratls._api import (
    CERT_RENEWAL,
    connect_attested,
    evidence_identity,
    open_attested_stream,
    serve_attested,
    start_attested_server,
)
from ratls._bound import VTPM_MEDIA_TYPE, SimulatedSnpAttester, SimulatedVtpmAttester
from ratls._errors import (
    BindingMismatch,
    CertificateChainError,
    MeasurementMismatch,
    PolicyError,
    PolicyViolation,
    RatlsError,
)
from ratls._evidence_cert import (
    AttestedCertificateBuilder,
    BindingStatus,
    EvidenceType,
    RatlsOID,
    endpoint_certificate_builder,
    inspect_evidence_certificate,
)
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._result import AttestationResult
from ratls._snp_report import ProductLine
from ratls._snp_verify import SnpEndorsements
from ratls._tls_context import generate_ephemeral_identity
from ratls.sim import SimulatedAmdSp, simulated_amd_sp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from ratls._tls_stream import AttestedTLSStream

    Stream = AttestedTLSStream[trio.SocketStream]

SIM_MEASUREMENT = hashlib.sha384(b"ratls simulated guest launch").digest()
OTHER_MEASUREMENT = bytes(range(48))
POLICY = Policy(
    snp=SnpPolicy(measurements=frozenset({SIM_MEASUREMENT})),
    trust=TrustPolicy(simulated_hardware=True),
)
STRICT = Policy(snp=SnpPolicy(measurements=frozenset({SIM_MEASUREMENT})))
CERT_OPTIONS: dict[str, Any] = {"mode": "cert"}


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


class Failures:
    """What serve_attested reports about connections it refused."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.event = trio.Event()

    def __call__(self, exc: BaseException, peer: object) -> None:
        self.errors.append(exc)
        self.event.set()


@asynccontextmanager
async def cert_server(
    handler: Callable[[Stream], Awaitable[object]], **options: Any
) -> AsyncIterator[int]:
    options.setdefault("attester", "sim")
    options.setdefault("policy", POLICY)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(serve_attested, handler, 0, mode="cert", **options))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


def _snp_source(
    sp: SimulatedAmdSp, measurement: bytes | None = None
) -> Callable[[bytes], tuple[bytes, SnpEndorsements | None]]:
    chain = SnpEndorsements(leaf=sp.leaf, intermediate=sp.ask, root=sp.ark)

    def attest(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        report = sp.build_report(report_data=report_data, measurement=measurement)
        return report.to_bytes(), chain

    return attest


# --------------------------------------------------------------------------- success


async def test_mutual_cert_mode_echo() -> None:
    seen: list[object] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_attestation)
        await echo(stream)

    async with cert_server(handler) as port:
        stream = await open_attested_stream(
            "127.0.0.1", port, attester="sim", policy=POLICY, **CERT_OPTIONS
        )
        result = stream.peer_attestation
        await stream.send_all(b"attested by certificate")
        assert await stream.receive_some() == b"attested by certificate"
        peer = stream.peer_certificate
        await stream.aclose()
    assert isinstance(result, AttestationResult)
    assert result.replayable is True
    assert result.snp is not None
    assert result.snp.report.measurement == SIM_MEASUREMENT
    assert result.trust_anchor == "simulator"
    assert peer is not None
    assert inspect_evidence_certificate(peer).binding is BindingStatus.VERIFIED
    assert len(seen) == 1
    assert isinstance(seen[0], AttestationResult)
    assert seen[0].replayable is True


async def test_one_way_cert_mode_without_client_evidence() -> None:
    seen: list[object] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_attestation)
        await echo(stream)

    async with cert_server(handler, verify_peer=False, policy=None) as port:
        stream = await open_attested_stream(
            "127.0.0.1", port, attester="none", policy=POLICY, **CERT_OPTIONS
        )
        await stream.send_all(b"one-way")
        assert await stream.receive_some() == b"one-way"
        assert isinstance(stream.peer_attestation, AttestationResult)
        await stream.aclose()
    assert seen == [None]


async def test_client_not_verifying_sees_no_result() -> None:
    async with cert_server(echo, verify_peer=False, policy=None) as port:
        stream = await open_attested_stream(
            "127.0.0.1", port, attester="none", policy=None, verify_peer=False, **CERT_OPTIONS
        )
        assert stream.peer_attestation is None
        await stream.aclose()


async def test_server_renews_its_certificate(mock_clock: trio.testing.MockClock) -> None:
    certs: list[x509.Certificate] = []
    async with cert_server(echo, verify_peer=False, policy=None) as port:
        for _ in range(3):
            stream = await open_attested_stream(
                "127.0.0.1", port, attester="none", policy=POLICY, **CERT_OPTIONS
            )
            assert stream.peer_certificate is not None
            certs.append(stream.peer_certificate)
            await stream.aclose()
            if len(certs) == 2:
                mock_clock.jump(CERT_RENEWAL + 1)
    assert certs[0] == certs[1]
    assert certs[2] != certs[1]
    assert certs[2].public_key() != certs[1].public_key()


async def test_caller_identity_is_presented_as_is(sp: SimulatedAmdSp) -> None:
    identity = evidence_identity(SimulatedSnpAttester(sp), "ec-p384")
    async with cert_server(echo, verify_peer=False, policy=None, identity=identity) as port:
        stream = await open_attested_stream(
            "127.0.0.1", port, attester="none", policy=POLICY, **CERT_OPTIONS
        )
        assert stream.peer_certificate == identity[1]
        await stream.aclose()


def test_blocking_api_in_cert_mode() -> None:
    def handler(sock: Any) -> None:
        sock.sendall(sock.recv(100))

    with start_attested_server(handler, 0, attester="sim", policy=POLICY, mode="cert") as server:
        sock = connect_attested(
            "127.0.0.1", server.port, attester="sim", policy=POLICY, mode="cert"
        )
        with sock:
            sock.sendall(b"blocking")
            assert sock.recv(100) == b"blocking"
            assert isinstance(sock.peer_attestation, AttestationResult)
            assert sock.peer_attestation.replayable


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "ed25519"])
def test_evidence_identity_key_types(sp: SimulatedAmdSp, key_type: Any) -> None:
    key, cert = evidence_identity(SimulatedSnpAttester(sp), key_type)
    assert cert.public_key() == key.public_key()
    found = inspect_evidence_certificate(cert)
    assert found.evidence_type is EvidenceType.SNP_REPORT
    assert found.binding is BindingStatus.VERIFIED
    assert found.cmw is not None


def test_evidence_identity_without_attester_is_plain() -> None:
    _, cert = evidence_identity(None)
    extensions = {ext.oid for ext in cert.extensions}
    assert RatlsOID.TCG_DICE_TAGGED_EVIDENCE not in extensions


class BundleOnly:
    """SNP + vTPM evidence without guest reports (like an Azure CVM, whose guest has none)."""

    media_type = VTPM_MEDIA_TYPE

    def evidence(self, binder: bytes) -> bytes:  # pragma: no cover - refused before use
        raise AssertionError("not called")


def test_evidence_identity_refuses_rsa_and_vtpm_without_guest_reports(
    sp: SimulatedAmdSp,
) -> None:
    with pytest.raises(ValueError, match="ec-p256"):
        evidence_identity(SimulatedSnpAttester(sp), "rsa-3072")
    with pytest.raises(ValueError, match="use mode='bound'"):
        evidence_identity(BundleOnly())


@pytest.fixture(scope="module")
def cvms(sp: SimulatedAmdSp) -> Iterator[tuple[SimulatedVtpmAttester, SimulatedVtpmAttester]]:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm not installed")
    with SimulatedVtpmAttester(sp) as server_vm, SimulatedVtpmAttester(sp) as client_vm:
        yield server_vm, client_vm


def test_vtpm_evidence_certificate_carries_both(
    cvms: tuple[SimulatedVtpmAttester, SimulatedVtpmAttester],
) -> None:
    _key, cert = evidence_identity(cvms[0])
    found = inspect_evidence_certificate(cert)
    assert found.binding is BindingStatus.VERIFIED  # the tagged report binds the key
    assert found.cmw is not None
    assert found.cmw.vtpm is not None  # and the bundle rides in id-pe-cmw


async def test_mutual_cert_mode_with_vtpm_evidence(
    cvms: tuple[SimulatedVtpmAttester, SimulatedVtpmAttester],
) -> None:
    server_vm, client_vm = cvms
    seen: list[object] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_attestation)
        await echo(stream)

    # A certificate cannot answer a credential challenge: the AKs stay unproven, which
    # the policy must accept in so many words.
    unproven_ok = dataclasses.replace(POLICY, vtpm=VtpmPolicy(allow_unproven_ak=True))
    async with cert_server(handler, attester=server_vm, policy=unproven_ok) as port:
        stream = await open_attested_stream(
            "127.0.0.1", port, attester=client_vm, policy=unproven_ok, mode="cert"
        )
        async with stream:
            await stream.send_all(b"quote me")
            assert await stream.receive_some() == b"quote me"
            result = stream.peer_attestation
    for peer in (result, seen[0]):
        assert isinstance(peer, AttestationResult)
        assert (peer.profile, peer.ak_binding, peer.replayable) == ("svsm", "unproven", True)
    # Under the default, the server's unproven AK is refused by name.
    async with cert_server(echo, attester=server_vm, policy=unproven_ok) as port:
        refused = await _client_refuses(port, POLICY)
    assert isinstance(refused, PolicyViolation)
    assert refused.claim == "vtpm.ak_binding"


# --------------------------------------------------------------------------- negative


async def _client_refuses(port: int, policy: Policy, **options: Any) -> BaseException:
    with pytest.raises(RatlsError) as info:
        await open_attested_stream(
            "127.0.0.1", port, attester="none", policy=policy, **CERT_OPTIONS, **options
        )
    return info.value


async def test_stale_certificate_refused(sp: SimulatedAmdSp) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    stale = (
        AttestedCertificateBuilder()
        .private_key(key)
        .snp_evidence(_snp_source(sp))
        .validity(now - datetime.timedelta(seconds=400), now + datetime.timedelta(minutes=10))
        .sign()
    )
    failures = Failures()
    async with cert_server(
        echo, verify_peer=False, policy=None, identity=(key, stale), on_handshake_error=failures
    ) as port:
        error = await _client_refuses(port, POLICY)
        # The same certificate passes a policy that allows older evidence.
        lenient = Policy(snp=POLICY.snp, trust=POLICY.trust, max_evidence_age_seconds=3600)
        stream = await open_attested_stream(
            "127.0.0.1", port, attester="none", policy=lenient, **CERT_OPTIONS
        )
        await stream.aclose()
        await failures.event.wait()
    assert isinstance(error, PolicyViolation)
    assert error.claim == "cert.evidence_age"
    assert failures.errors  # the server saw the client's alert


async def test_evidence_bound_to_another_key_refused(sp: SimulatedAmdSp) -> None:
    _, donor = evidence_identity(SimulatedSnpAttester(sp))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = endpoint_certificate_builder(
        donor.subject, key.public_key(), donor.not_valid_before_utc, donor.not_valid_after_utc
    )
    for oid in (RatlsOID.TCG_DICE_TAGGED_EVIDENCE, RatlsOID.CMW):
        value = donor.extensions.get_extension_for_oid(oid).value
        assert isinstance(value, x509.UnrecognizedExtension)
        builder = builder.add_extension(value, critical=False)
    forged = builder.sign(key, hashes.SHA256())
    async with cert_server(echo, verify_peer=False, policy=None, identity=(key, forged)) as port:
        error = await _client_refuses(port, POLICY)
    assert isinstance(error, BindingMismatch)


async def test_wrong_server_measurement_refused() -> None:
    options = {"attester_options": {"measurement": OTHER_MEASUREMENT}}
    async with cert_server(echo, verify_peer=False, policy=None, **options) as port:
        error = await _client_refuses(port, POLICY)
    assert isinstance(error, MeasurementMismatch)
    assert error.claim == "snp.measurement"


async def test_simulator_not_trusted_without_saying_so() -> None:
    async with cert_server(echo, verify_peer=False, policy=None) as port:
        error = await _client_refuses(port, STRICT)
        stream = await open_attested_stream(
            "127.0.0.1", port, attester="none", policy=STRICT, trust_simulator=True, mode="cert"
        )
        await stream.aclose()
    assert isinstance(error, CertificateChainError)
    assert "simulator" in str(error)


async def test_server_without_evidence_refused() -> None:
    identity = generate_ephemeral_identity()
    async with cert_server(echo, verify_peer=False, policy=None, identity=identity) as port:
        error = await _client_refuses(port, POLICY)
    assert isinstance(error, RatlsError)
    assert "evidence" in str(error)


async def _refused_by_server(port: int, **options: Any) -> None:
    async def attempt() -> None:
        stream = await open_attested_stream(
            "127.0.0.1", port, policy=POLICY, **CERT_OPTIONS, **options
        )
        try:
            # TLS 1.3: the client's handshake ends before the server judges its
            # certificate; the refusal arrives as an alert on the first read.
            await stream.receive_some()
        finally:
            await trio.aclose_forcefully(stream)

    with pytest.raises((RatlsError, trio.BrokenResourceError)):
        await attempt()


async def test_client_without_evidence_refused_by_server() -> None:
    failures = Failures()
    async with cert_server(echo, on_handshake_error=failures) as port:
        await _refused_by_server(port, attester="none")
        await failures.event.wait()
    assert isinstance(failures.errors[0], RatlsError)


async def test_wrong_client_measurement_named_by_server() -> None:
    failures = Failures()
    async with cert_server(echo, on_handshake_error=failures) as port:
        await _refused_by_server(
            port, attester="sim", attester_options={"measurement": OTHER_MEASUREMENT}
        )
        await failures.event.wait()
    error = failures.errors[0]
    assert isinstance(error, MeasurementMismatch)


async def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="mode"):
        await open_attested_stream("127.0.0.1", 1, attester="none", policy=POLICY, mode="x")  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        await open_attested_stream("127.0.0.1", 1, attester="none", policy=None, mode="cert")
    with pytest.raises(ValueError, match="bound mode"):
        await open_attested_stream(
            "127.0.0.1",
            1,
            attester="none",
            policy=POLICY,
            verifier=object(),  # type: ignore[arg-type]
            mode="cert",
        )
    with pytest.raises(ValueError, match="ec-p256"):
        await serve_attested(
            echo, 0, attester="sim", policy=POLICY, key_type="rsa-3072", mode="cert"
        )
    with pytest.raises(ValueError, match="cert_renewal"):
        await serve_attested(echo, 0, attester="sim", policy=POLICY, mode="cert", cert_renewal=0)


# --------------------------------------------------------------------------- openssl interop


@contextmanager
def ratls_serve(sim_dir: Path, *args: str) -> Iterator[int]:
    proc = subprocess.Popen(  # noqa: S603 - our own entry point, fixed arguments
        [sys.executable, "-bb", "-W", "error", "-m", "ratls.cli", "serve", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
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
        yield int(match.group(1))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")
def test_openssl_s_client_reads_the_evidence(tmp_path: Path) -> None:
    sim_dir = tmp_path / "sim"
    SimulatedAmdSp.load_or_generate(sim_dir, ProductLine.GENOA)
    serve_args = ("--mode", "cert", "--no-verify-peer", "--echo", "--attester", "sim")
    with ratls_serve(sim_dir, *serve_args, "--sim-dir", str(sim_dir)) as port:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts"],  # noqa: S607
            input=b"",
            capture_output=True,
            timeout=60,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "TLSv1.3" in out
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", out, re.S)
    assert len(pems) == 1
    pem_path = tmp_path / "server.pem"
    pem_path.write_text(pems[0])
    text = subprocess.run(  # noqa: S603 - fixed arguments
        ["openssl", "x509", "-in", str(pem_path), "-noout", "-text"],  # noqa: S607
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    assert "2.23.133.5.4.9" in text
    assert "1.3.6.1.5.5.7.1.35" in text
    cert = x509.load_pem_x509_certificate(pems[0].encode())
    found = inspect_evidence_certificate(cert)
    assert found.evidence_type is EvidenceType.SNP_REPORT
    assert found.binding is BindingStatus.VERIFIED
    sim = SimulatedAmdSp.load_or_generate(sim_dir, ProductLine.GENOA)
    assert found.cmw is not None
    assert found.cmw.endorsements().root == sim.ark


# --------------------------------------------------------------------------- reuse


async def test_client_evidence_certificate_is_reused_per_attester(sp: SimulatedAmdSp) -> None:
    seen: list[x509.Certificate | None] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_certificate)
        await echo(stream)

    first, second = SimulatedSnpAttester(sp), SimulatedSnpAttester(sp)
    async with cert_server(handler) as port:
        for attester in (first, first, second):
            stream = await open_attested_stream(
                "127.0.0.1", port, attester=attester, policy=POLICY, **CERT_OPTIONS
            )
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
            await stream.aclose()
    assert len(seen) == 3
    assert seen[0] == seen[1]  # the same attester: its certificate is renewed on a timer
    assert seen[2] != seen[0]  # another attester: its own certificate


def test_verified_certificate_result_is_reused_only_while_its_evidence_is_valid(
    sp: SimulatedAmdSp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ratls import _api

    key, certificate = evidence_identity(SimulatedSnpAttester(sp))
    checker = _api._CertChecker(POLICY, trust_simulator=False)
    start = datetime.datetime.now(datetime.UTC)
    clock = [start]

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Clock:
            moment = clock[0]
            return cls.fromtimestamp(moment.timestamp(), tz)

    fake = types.SimpleNamespace(datetime=Clock, UTC=datetime.UTC, timedelta=datetime.timedelta)
    monkeypatch.setattr(_api, "datetime", fake)
    result = checker.verify(certificate)
    clock[0] = start + datetime.timedelta(seconds=POLICY.max_evidence_age_seconds / 2)
    assert checker.verify(certificate) is result  # remembered, still within the age bound
    clock[0] = start + datetime.timedelta(seconds=POLICY.max_evidence_age_seconds + 5)
    with pytest.raises(PolicyViolation) as info:  # judged again, and refused as too old
        checker.verify(certificate)
    assert info.value.claim == "cert.evidence_age"
    with pytest.raises(PolicyViolation):  # and again: nothing passed was served instead
        checker.verify(certificate)
    assert key is not None
