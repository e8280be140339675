"""Tests for the high-level attested-TLS API (ratls._api) over real loopback sockets."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import threading
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ratls._api import (
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    AttestedSocket,
    connect_attested,
    forget_shared_verifiers,
    open_attested_stream,
    serve_attested,
    serve_attested_blocking,
    start_attested_server,
)
from ratls._bound import VTPM_MEDIA_TYPE, BoundVerifier, SimulatedSnpAttester, SimulatedVtpmAttester
from ratls._errors import (
    AttesterError,
    AttesterUnavailable,
    BindingMismatch,
    MeasurementMismatch,
    NonceMismatch,
    PolicyError,
    PolicyViolation,
)
from ratls._exchange import AttestationRefused
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._result import AttestationResult
from ratls._snp_report import ProductLine
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


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")),
]


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


class Failures:
    """Collects what serve_attested reports about connections it refused."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.event = trio.Event()

    def __call__(self, exc: BaseException, peer: object) -> None:
        self.errors.append(exc)
        self.event.set()


@asynccontextmanager
async def running_server(
    handler: Callable[[Stream], Awaitable[object]], **options: Any
) -> AsyncIterator[tuple[str, int]]:
    options.setdefault("attester", "sim")
    options.setdefault("policy", POLICY)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(serve_attested, handler, 0, **options))
        host, port = listeners[0].socket.getsockname()[:2]
        yield host, port
        nursery.cancel_scope.cancel()


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


def spki_sha256(stream: Stream, *, own: bool) -> bytes:
    cert = stream._conn.get_certificate(as_cryptography=True) if own else stream.peer_certificate
    assert cert is not None
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


# --------------------------------------------------------------------------- mutual


def test_timeouts_are_sane() -> None:
    assert 0 < CLOSE_TIMEOUT < CONNECT_TIMEOUT < HANDSHAKE_TIMEOUT


@pytest.mark.parametrize("host", HOSTS)
async def test_mutual_attested_echo(host: str) -> None:
    seen: list[object] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_attestation)
        # The client's evidence carries the client's key and this connection's exporter.
        result = stream.peer_attestation
        assert isinstance(result, AttestationResult)
        expected = spki_sha256(stream, own=False) + stream.channel_binding
        assert result.snp.report.report_data == expected
        await echo(stream)

    async with running_server(handler, host=host) as (_, port):
        stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
        result = stream.peer_attestation
        assert isinstance(result, AttestationResult)
        assert result.appraised
        assert result.profile == "snp"
        assert result.snp.report.report_data == (
            spki_sha256(stream, own=False) + stream.channel_binding
        )
        await stream.send_all(b"ping over attested TLS")
        assert await stream.receive_some() == b"ping over attested TLS"
        await stream.aclose()
    assert len(seen) == 1
    assert isinstance(seen[0], AttestationResult)


async def test_policy_from_file_and_key_type(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        f'[trust]\nsimulated_hardware = true\n[snp]\nmeasurements = ["{SIM_MEASUREMENT.hex()}"]\n'
    )
    async with running_server(echo, policy=str(policy_file), key_type="ec-p384") as (host, port):
        stream = await open_attested_stream(
            host, port, attester="sim", policy=policy_file, key_type="ed25519"
        )
        assert stream.peer_certificate is not None
        assert stream.peer_certificate.public_key().key_size == 384  # type: ignore[union-attr]
        await stream.aclose()


async def test_attester_objects_and_identity(sp: SimulatedAmdSp) -> None:
    identity = generate_ephemeral_identity()
    async with running_server(echo, attester=SimulatedSnpAttester(sp), identity=identity) as (
        host,
        port,
    ):
        stream = await open_attested_stream(
            host, port, attester=SimulatedSnpAttester(sp), policy=POLICY
        )
        assert stream.peer_certificate == identity[1]
        await stream.aclose()


# --------------------------------------------------------------------------- attacks


class RecordingVerifier:
    """Accepts anything and keeps it (what a relaying attacker would do)."""

    def __init__(self) -> None:
        self.evidence: list[bytes] = []

    def verify(self, evidence: bytes, binder: bytes) -> object:
        self.evidence.append(evidence)
        return "recorded"


class ReplayAttester:
    media_type = "application/vnd.ratls.snp+cbor"

    def __init__(self, evidence: bytes) -> None:
        self._evidence = evidence

    def evidence(self, binder: bytes) -> bytes:
        return self._evidence


async def test_replayed_server_evidence_refused() -> None:
    recorder = RecordingVerifier()
    async with running_server(echo) as (host, port):
        first = await open_attested_stream(
            host, port, attester="sim", verifier=recorder, policy=None
        )
        await first.aclose()
    (captured,) = recorder.evidence
    # A fake server replays the real server's evidence on a new connection.
    async with running_server(echo, attester=ReplayAttester(captured)) as (host, port):
        with pytest.raises(NonceMismatch) as info:
            await open_attested_stream(host, port, attester="sim", policy=POLICY)
    assert info.value.claim == "snp.report_data"


async def test_replayed_client_evidence_refused() -> None:
    recorder = RecordingVerifier()
    async with running_server(echo, verifier=recorder, policy=None) as (host, port):
        first = await open_attested_stream(host, port, attester="sim", policy=POLICY)
        await first.send_all(b"x")
        assert await first.receive_some() == b"x"
        await first.aclose()
    (captured,) = recorder.evidence
    failures = Failures()
    async with running_server(echo, on_handshake_error=failures) as (host, port):
        with pytest.raises(AttestationRefused, match="NonceMismatch"):
            await open_attested_stream(host, port, attester=ReplayAttester(captured), policy=POLICY)
        await failures.event.wait()
    (error,) = failures.errors
    assert isinstance(error, NonceMismatch)


async def test_relayed_server_evidence_refused() -> None:
    """A relay forwards the real server's fresh evidence from its own live connection."""
    async with running_server(echo) as (real_host, real_port):
        upstream: list[Stream] = []
        recorder = RecordingVerifier()

        class RelayAttester:
            media_type = "application/vnd.ratls.snp+cbor"

            def evidence(self, binder: bytes) -> bytes:
                # Runs in a worker thread: open connection A to the real server now.
                stream = trio.from_thread.run(
                    partial(
                        open_attested_stream,
                        real_host,
                        real_port,
                        attester="sim",
                        verifier=recorder,
                        policy=None,
                    )
                )
                upstream.append(stream)
                return recorder.evidence[-1]

        async with running_server(echo, attester=RelayAttester()) as (host, port):
            with pytest.raises(NonceMismatch):
                await open_attested_stream(host, port, attester="sim", policy=POLICY)
        assert len(upstream) == 1  # connection A was live and its evidence genuine
        await upstream[0].aclose()


class SubstitutingAttester:
    """Genuine fresh evidence, but bound to another TLS key than the one in use."""

    media_type = "application/vnd.ratls.snp+cbor"

    def __init__(self, sp: SimulatedAmdSp) -> None:
        self._inner = SimulatedSnpAttester(sp)
        _key, cert = generate_ephemeral_identity()
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self._other = hashlib.sha256(spki).digest()

    def evidence(self, binder: bytes) -> bytes:
        return self._inner.evidence(self._other + binder[32:])


async def test_key_substitution_refused(sp: SimulatedAmdSp) -> None:
    async with running_server(echo, attester=SubstitutingAttester(sp)) as (host, port):
        with pytest.raises(NonceMismatch):
            await open_attested_stream(host, port, attester="sim", policy=POLICY)


async def test_wrong_server_measurement_named_on_both_sides(sp: SimulatedAmdSp) -> None:
    failures = Failures()
    bad = SimulatedSnpAttester(sp, measurement=OTHER_MEASUREMENT)
    async with running_server(echo, attester=bad, on_handshake_error=failures) as (host, port):
        with pytest.raises(MeasurementMismatch) as info:
            await open_attested_stream(host, port, attester="sim", policy=POLICY)
        await failures.event.wait()
    assert info.value.claim == "snp.measurement"
    assert info.value.actual == OTHER_MEASUREMENT
    (told,) = failures.errors
    assert isinstance(told, AttestationRefused)
    assert "snp.measurement" in told.reason
    assert SIM_MEASUREMENT.hex() not in told.reason  # reference values stay private


async def test_wrong_client_measurement_named_on_both_sides(sp: SimulatedAmdSp) -> None:
    failures = Failures()
    handled: list[bytes] = []

    async def recording(stream: Stream) -> None:
        handled.append(await stream.receive_some())

    bad = SimulatedSnpAttester(sp, measurement=OTHER_MEASUREMENT)
    async with running_server(recording, on_handshake_error=failures) as (host, port):
        with pytest.raises(AttestationRefused) as info:
            await open_attested_stream(host, port, attester=bad, policy=POLICY)
        await failures.event.wait()
    assert "MeasurementMismatch: snp.measurement" in info.value.reason
    (error,) = failures.errors
    assert isinstance(error, MeasurementMismatch)
    assert error.claim == "snp.measurement"
    assert handled == []  # the handler never ran: no application byte moved


async def test_no_application_byte_before_both_verdicts(sp: SimulatedAmdSp) -> None:
    """The client refuses the server; the server's handler must see nothing at all."""
    handled: list[bytes] = []
    failures = Failures()

    async def recording(stream: Stream) -> None:
        handled.append(await stream.receive_some())

    bad = SimulatedSnpAttester(sp, measurement=OTHER_MEASUREMENT)
    async with running_server(recording, attester=bad, on_handshake_error=failures) as (
        host,
        port,
    ):
        with pytest.raises(MeasurementMismatch):
            await open_attested_stream(host, port, attester="sim", policy=POLICY)
        await failures.event.wait()
    assert handled == []
    assert isinstance(failures.errors[0], AttestationRefused)


async def test_simulator_not_trusted_without_saying_so() -> None:
    async with running_server(echo, policy=POLICY) as (host, port):
        with pytest.raises(Exception, match="simulator") as info:
            await open_attested_stream(host, port, attester="sim", policy=STRICT)
        assert info.type.__name__ == "CertificateChainError"
        stream = await open_attested_stream(
            host, port, attester="sim", policy=STRICT, trust_simulator=True
        )
        await stream.aclose()


# --------------------------------------------------------------------------- one-way


async def test_one_way_server_attests_only() -> None:
    seen: list[object] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_attestation)
        await echo(stream)

    async with running_server(handler, verify_peer=False, policy=None) as (host, port):
        stream = await open_attested_stream(host, port, attester="none", policy=POLICY)
        assert isinstance(stream.peer_attestation, AttestationResult)
        await stream.send_all(b"one-way")
        assert await stream.receive_some() == b"one-way"
        await stream.aclose()
    assert seen == [None]


async def test_unattested_client_refused_unless_asked() -> None:
    failures = Failures()
    async with running_server(echo, on_handshake_error=failures) as (host, port):
        with pytest.raises(AttestationRefused, match=r"exchange\.evidence"):
            await open_attested_stream(host, port, attester=None, policy=POLICY)
        await failures.event.wait()
    (error,) = failures.errors
    assert isinstance(error, PolicyViolation)
    assert error.claim == "exchange.evidence"


async def test_unattested_server_refused_unless_asked() -> None:
    async with running_server(echo, attester="none") as (host, port):
        with pytest.raises(PolicyViolation) as info:
            await open_attested_stream(host, port, attester="sim", policy=POLICY)
        assert info.value.claim == "exchange.evidence"
        # Asked explicitly: the client accepts a server without evidence.
        stream = await open_attested_stream(
            host, port, attester="sim", policy=None, verify_peer=False
        )
        assert stream.peer_attestation is None
        await stream.aclose()


async def test_verifying_without_policy_is_refused_before_connecting() -> None:
    with pytest.raises(PolicyError, match="verify_peer=False"):
        await open_attested_stream("127.0.0.1", 9, attester="sim", policy=None)
    with pytest.raises(PolicyError):
        await serve_attested(echo, 0, attester="sim", policy=None)


async def test_verify_peer_argument_checks() -> None:
    with pytest.raises(TypeError, match="True or False"):
        await open_attested_stream(
            "127.0.0.1",
            9,
            attester="sim",
            policy=POLICY,
            verify_peer="no",  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="verify_peer is False"):
        await open_attested_stream(
            "127.0.0.1",
            9,
            attester="sim",
            policy=None,
            verify_peer=False,
            verifier=BoundVerifier(POLICY),
        )


async def test_unavailable_attester_fails_before_listening() -> None:
    with pytest.raises(AttesterUnavailable):
        await serve_attested(
            echo,
            0,
            attester="snp",
            policy=POLICY,
            attester_options={"tsm_root": "/nonexistent", "sev_guest_device": "/nonexistent"},
        )


async def test_connection_refused_is_an_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match="connect"):
        await open_attested_stream("127.0.0.1", port, attester="sim", policy=POLICY)


# --------------------------------------------------------------------------- timeouts


async def test_silent_client_times_out(autojump_clock: trio.testing.MockClock) -> None:
    failures = Failures()
    async with running_server(echo, on_handshake_error=failures, handshake_timeout=5) as (
        host,
        port,
    ):
        silent = await trio.open_tcp_stream(host, port)
        await failures.event.wait()
        await silent.aclose()
    (error,) = failures.errors
    assert isinstance(error, trio.TooSlowError)


async def test_silent_server_times_out(autojump_clock: trio.testing.MockClock) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    with pytest.raises(trio.TooSlowError):
        await open_attested_stream(
            "127.0.0.1", port, attester="sim", policy=POLICY, handshake_timeout=5
        )
    await listener.aclose()


async def test_handler_peer_vanishing_does_not_stop_server() -> None:
    async with running_server(echo) as (host, port):
        for _ in range(2):
            stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
            await stream.send_all(b"a")
            assert await stream.receive_some() == b"a"
            await trio.aclose_forcefully(stream)  # no close_notify: the handler breaks
        stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
        await stream.aclose()


# --------------------------------------------------------------------------- SNP + vTPM


needs_swtpm = pytest.mark.skipif(
    os.environ.get("RATLS_SKIP_SWTPM") == "1" or shutil.which("swtpm") is None,
    reason="swtpm disabled or not installed",
)


@pytest.fixture(scope="module")
def cvm(sp: SimulatedAmdSp) -> Iterator[SimulatedVtpmAttester]:
    with SimulatedVtpmAttester(sp) as vm:
        yield vm


@pytest.fixture(scope="module")
def other_cvm(sp: SimulatedAmdSp) -> Iterator[SimulatedVtpmAttester]:
    with SimulatedVtpmAttester(sp) as vm:
        yield vm


class Answering:
    """A CVM's evidence, with challenges answered by ``answer`` instead of its vTPM."""

    media_type = VTPM_MEDIA_TYPE

    def __init__(self, vm: SimulatedVtpmAttester, answer: Callable[[bytes], bytes]) -> None:
        self._vm = vm
        self._answer = answer

    def evidence(self, binder: bytes) -> bytes:
        return self._vm.evidence(binder)

    def respond(self, challenge: bytes) -> bytes:
        return self._answer(challenge)


class NoChallenge:
    """Verifies like BoundVerifier but never challenges (the exchange before activation)."""

    def __init__(self, policy: Policy) -> None:
        self._inner = BoundVerifier(policy)
        self.media_types = self._inner.media_types

    def verify(self, evidence: bytes, binder: bytes) -> object:
        return self._inner.verify(evidence, binder)


class AlwaysChallenge:
    """Challenges any evidence, even a bare SNP report (which has no vTPM to answer)."""

    class State:
        def challenge_bytes(self) -> bytes:
            return b"\x01" * 32

    def __init__(self, policy: Policy) -> None:
        self._inner = BoundVerifier(policy)
        self.media_types = self._inner.media_types

    def activation_challenge(self, evidence: bytes) -> object:
        return self.State()

    def verify(
        self, evidence: bytes, binder: bytes, *, activation: object = None, response: object = None
    ) -> object:  # pragma: no cover - the peer refuses before answering
        return self._inner.verify(evidence, binder)


@needs_swtpm
async def test_sim_vtpm_mutual_activation_under_default_policy() -> None:
    # Both sides are simulated SNP + vTPM CVMs (each its own swtpm); the default policy
    # refuses unproven AKs, so both AKs must be proven by activation over the connection.
    assert POLICY.vtpm.allow_unproven_ak is False
    seen: list[object] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_attestation)
        await echo(stream)

    async with running_server(handler, attester="sim+vtpm") as (host, port):
        stream = await open_attested_stream(host, port, attester="sim+vtpm", policy=POLICY)
        await stream.send_all(b"activated")
        assert await stream.receive_some() == b"activated"
        result = stream.peer_attestation
        await stream.aclose()
    assert isinstance(result, AttestationResult)
    assert (result.profile, result.ak_binding) == ("svsm", "activated")
    (server_view,) = seen
    assert isinstance(server_view, AttestationResult)
    assert (server_view.profile, server_view.ak_binding) == ("svsm", "activated")


@needs_swtpm
async def test_sim_vtpm_without_challenge_stays_unproven(cvm: SimulatedVtpmAttester) -> None:
    # A verifier that does not challenge leaves the AK unproven: refused by default,
    # accepted only when the policy allows it.
    async with running_server(echo, attester=cvm) as (host, port):
        with pytest.raises(PolicyViolation) as info:
            await open_attested_stream(
                host, port, attester="sim", policy=POLICY, verifier=NoChallenge(POLICY)
            )
        assert info.value.claim == "vtpm.ak_binding"
        allowing = dataclasses.replace(POLICY, vtpm=VtpmPolicy(allow_unproven_ak=True))
        stream = await open_attested_stream(
            host, port, attester="sim", policy=allowing, verifier=NoChallenge(allowing)
        )
        result = stream.peer_attestation
        await stream.aclose()
    assert isinstance(result, AttestationResult)
    assert result.ak_binding == "unproven"


async def refused_by_client(attester: Answering, *, expect: type[Exception]) -> Exception:
    """Connect to a server using ``attester``; return the client's error."""
    failures = Failures()
    async with running_server(echo, attester=attester, on_handshake_error=failures) as (
        host,
        port,
    ):
        with pytest.raises(expect) as info:
            await open_attested_stream(host, port, attester="sim", policy=POLICY)
        await failures.event.wait()
    (server_error,) = failures.errors
    if expect is BindingMismatch:
        assert isinstance(server_error, AttestationRefused)
        assert server_error.reason == "BindingMismatch: tpm.ak.activation"
    return info.value


@needs_swtpm
async def test_wrong_activation_response_refused(cvm: SimulatedVtpmAttester) -> None:
    error = await refused_by_client(
        Answering(cvm, lambda challenge: os.urandom(32)), expect=BindingMismatch
    )
    assert isinstance(error, BindingMismatch)


@needs_swtpm
async def test_response_for_another_challenge_refused(cvm: SimulatedVtpmAttester) -> None:
    # The first connection's (correct) answer, replayed to the second connection's
    # challenge: every challenge seals a new secret.
    recorded: list[bytes] = []

    def replay(challenge: bytes) -> bytes:
        if not recorded:
            recorded.append(cvm.respond(challenge))
        return recorded[0]

    attester = Answering(cvm, replay)
    async with running_server(echo, attester=attester) as (host, port):
        stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
        result = stream.peer_attestation
        assert isinstance(result, AttestationResult)
        assert result.ak_binding == "activated"
        await stream.aclose()
    forget_shared_verifiers()  # else the proven AK is remembered and not challenged again
    error = await refused_by_client(attester, expect=BindingMismatch)
    assert isinstance(error, BindingMismatch)


@needs_swtpm
async def test_challenge_relayed_to_another_cvm_refused(
    cvm: SimulatedVtpmAttester, other_cvm: SimulatedVtpmAttester
) -> None:
    # Evidence from one CVM, the challenge relayed to another: the other vTPM holds
    # neither the EK the credential is sealed to nor the AK it names, so it cannot
    # activate it, and the server gives up with a reason.
    failures = Failures()
    relay = Answering(cvm, other_cvm.respond)
    async with running_server(echo, attester=relay, on_handshake_error=failures) as (host, port):
        with pytest.raises(AttestationRefused) as info:
            await open_attested_stream(host, port, attester="sim", policy=POLICY)
        await failures.event.wait()
    assert "TPM2_ACTIVATE_CREDENTIAL failed" in info.value.reason
    (server_error,) = failures.errors
    assert isinstance(server_error, AttesterError)  # the other vTPM's command error


@needs_swtpm
async def test_response_from_another_vtpm_refused(
    cvm: SimulatedVtpmAttester, other_cvm: SimulatedVtpmAttester
) -> None:
    # Evidence from one CVM, the answer from another vTPM (to a challenge it can
    # answer): the secret differs.
    binder = os.urandom(64)
    verifier = BoundVerifier(POLICY)

    def other_answer(challenge: bytes) -> bytes:
        own = verifier.activation_challenge(other_cvm.evidence(binder))
        assert own is not None
        return other_cvm.respond(own.challenge_bytes())

    error = await refused_by_client(Answering(cvm, other_answer), expect=BindingMismatch)
    assert isinstance(error, BindingMismatch)


@needs_swtpm
async def test_missing_activation_response_times_out(cvm: SimulatedVtpmAttester) -> None:
    # The server never answers the challenge: the client's handshake timeout ends it.
    release = threading.Event()

    def never(challenge: bytes) -> bytes:
        release.wait()
        raise AttesterError("released at the end of the test")

    try:
        async with running_server(echo, attester=Answering(cvm, never)) as (host, port):
            with pytest.raises(trio.TooSlowError):
                await open_attested_stream(
                    host, port, attester="sim", policy=POLICY, handshake_timeout=1.0
                )
    finally:
        release.set()


async def test_challenge_to_plain_snp_peer_refused_cleanly() -> None:
    # A bare SNP attester cannot answer a challenge: it refuses, saying why, instead of
    # hanging or breaking the connection without a word.
    failures = Failures()
    async with running_server(echo, attester="sim", on_handshake_error=failures) as (host, port):
        with pytest.raises(AttestationRefused) as info:
            await open_attested_stream(
                host, port, attester="sim", policy=POLICY, verifier=AlwaysChallenge(POLICY)
            )
        await failures.event.wait()
    assert info.value.reason.startswith("AttesterError: ")
    assert "cannot answer challenges" in info.value.reason
    (server_error,) = failures.errors
    assert isinstance(server_error, AttesterError)


# --------------------------------------------------------------------------- blocking


def blocking_echo(sock: AttestedSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def test_blocking_api_end_to_end() -> None:
    seen: list[object] = []

    def handler(sock: AttestedSocket) -> None:
        seen.append(sock.peer_attestation)
        blocking_echo(sock)

    with start_attested_server(handler, 0, attester="sim", policy=POLICY) as server:
        assert server.port > 0
        assert str(server.port) in repr(server)
        with connect_attested("127.0.0.1", server.port, attester="sim", policy=POLICY) as sock:
            assert isinstance(sock.peer_attestation, AttestationResult)
            assert sock.peer_certificate is not None
            assert len(sock.channel_binding) == 32
            assert "open" in repr(sock)
            sock.sendall(b"blocking hello")
            received = b""
            while len(received) < len(b"blocking hello"):
                received += sock.recv(100)
            assert received == b"blocking hello"
        assert "closed" in repr(sock)
        sock.close()  # idempotent
        with pytest.raises(OSError, match="closed"):
            sock.recv(1)
    assert len(seen) == 1
    assert isinstance(seen[0], AttestationResult)


def test_blocking_timeout_and_failure() -> None:
    release = threading.Event()

    def silent(sock: AttestedSocket) -> None:
        release.wait(30)

    with start_attested_server(silent, 0, attester="sim", policy=POLICY) as server:
        sock = connect_attested("127.0.0.1", server.port, attester="sim", policy=POLICY)
        assert sock.gettimeout() is None
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        with pytest.raises(ValueError, match="non-negative"):
            sock.settimeout(-1)
        release.set()
        sock.close()
        with pytest.raises(MeasurementMismatch):
            connect_attested(
                "127.0.0.1",
                server.port,
                attester="sim",
                policy=Policy(
                    snp=SnpPolicy(measurements=frozenset({OTHER_MEASUREMENT})),
                    trust=TrustPolicy(simulated_hardware=True),
                ),
            )


def test_blocking_server_handler_sees_failures_only_as_absence() -> None:
    handled: list[object] = []
    with (
        start_attested_server(handled.append, 0, attester="sim", policy=POLICY) as server,
        pytest.raises(AttestationRefused),
    ):
        connect_attested("127.0.0.1", server.port, attester="none", policy=POLICY)
    assert handled == []


def test_server_stops_with_blocked_handler() -> None:
    entered = threading.Event()

    def stuck(sock: AttestedSocket) -> None:
        entered.set()
        sock.recv(10)  # the client never sends; stopping the server must cancel this

    server = start_attested_server(stuck, 0, attester="sim", policy=POLICY)
    sock = connect_attested("127.0.0.1", server.port, attester="sim", policy=POLICY)
    assert entered.wait(30)
    server.close()
    sock.close()


async def test_blocking_socket_refuses_trio_thread() -> None:
    async with running_server(echo) as (host, port):
        stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
        sock = AttestedSocket(stream, trio.lowlevel.current_trio_token())
        with pytest.raises(RuntimeError, match="blocks"):
            sock.recv(1)
        await stream.aclose()


def test_start_server_failure_is_raised() -> None:
    with pytest.raises(PolicyError):
        start_attested_server(blocking_echo, 0, attester="sim", policy=None)


class StopServing(Exception):
    """Raised by a handler to end serve_attested_blocking (handler errors propagate)."""


def test_serve_attested_blocking_in_a_thread() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome: list[BaseException] = []
    listening = threading.Event()

    def handler(sock: AttestedSocket) -> None:
        blocking_echo(sock)
        raise StopServing

    def run() -> None:
        try:
            serve_attested_blocking(handler, port, attester="sim", policy=POLICY)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        sock = None
        for _ in range(200):
            try:
                sock = connect_attested("127.0.0.1", port, attester="sim", policy=POLICY)
                break
            except OSError:
                listening.wait(0.05)  # the server thread is still starting
        assert sock is not None
        with sock:
            sock.sendall(b"served blocking")
            assert sock.recv(100) == b"served blocking"
    finally:
        thread.join(60)
    (error,) = outcome
    assert isinstance(error, BaseExceptionGroup)
    assert error.subgroup(StopServing) is not None


async def test_clients_share_an_ephemeral_identity_until_renewal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ratls import _api

    seen: list[object] = []
    four = trio.Event()

    async def handler(stream: Stream) -> None:
        seen.append(stream.peer_certificate)
        if len(seen) == 4:
            four.set()

    async with running_server(handler) as (host, port):
        for _ in range(2):
            stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
            await stream.aclose()
        monkeypatch.setattr(_api, "CLIENT_IDENTITY_RENEWAL", 0.0)
        stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
        await stream.aclose()
        own = generate_ephemeral_identity()
        stream = await open_attested_stream(host, port, attester="sim", policy=POLICY, identity=own)
        await stream.aclose()
        await four.wait()  # the last handler may still be starting
    first, second, renewed, chosen = seen
    assert first == second
    assert renewed != first
    assert chosen == own[1]


# --------------------------------------------------------------------------- modes


async def test_unknown_mode_refused_before_listening() -> None:
    with pytest.raises(ValueError, match="mode"):
        await serve_attested(echo, 0, attester="sim", policy=POLICY, mode="tls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        await open_attested_stream("127.0.0.1", 1, attester="sim", policy=POLICY, mode="")  # type: ignore[arg-type]


async def test_bound_is_the_default_mode() -> None:
    async with running_server(echo) as (host, port):
        stream = await open_attested_stream(host, port, attester="sim", policy=POLICY)
        result = stream.peer_attestation
        await stream.aclose()
    assert isinstance(result, AttestationResult)
    assert result.replayable is False
