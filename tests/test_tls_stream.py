"""Tests for AttestedTLSStream (ratls._tls_stream) and its contexts (ratls._tls_context)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import os
import random
import re
import shutil
import socket
import subprocess
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from ratls._errors import (
    AttesterError,
    BindingMismatch,
    CertificateChainError,
    LocalProtocolError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyViolation,
    RemoteProtocolError,
    SignatureMismatch,
)
from ratls._exchange import (
    EXPORTER_LABEL,
    AttestationConfig,
    AttestationRefused,
    Challenge,
    Evidence,
    ExchangeEvent,
    ExchangeTruncated,
    NoEvidence,
    Response,
    UnexpectedExchangeMessage,
    Verdict,
    VerdictResult,
    compute_binder,
    decode_message,
    encode_message,
)
from ratls._steps import Steps, offload
from ratls._tls_context import (
    IdentityKey,
    check_peer_certificate,
    generate_ephemeral_identity,
    make_client_context,
    make_server_context,
)
from ratls._tls_stream import AttestedTLSStream

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TEST_KEY = b"ratls test evidence key"
AnyTLS = AttestedTLSStream[Any]
Pair = tuple[AnyTLS, AnyTLS]


# --------------------------------------------------------------------------- doubles


class HmacAttester:
    """Test double for real evidence: HMAC(TEST_KEY, binder), optionally tampered."""

    def __init__(self, binder_hook: Callable[[bytes], bytes] | None = None) -> None:
        self.binders: list[bytes] = []
        self._hook = binder_hook

    def evidence(self, binder: bytes) -> bytes:
        self.binders.append(binder)
        if self._hook is not None:
            binder = self._hook(binder)
        return hmac.new(TEST_KEY, binder, hashlib.sha256).digest()


class ReplayAttester:
    """Sends evidence captured on another connection."""

    def __init__(self, evidence: bytes) -> None:
        self._evidence = evidence

    def evidence(self, binder: bytes) -> bytes:
        return self._evidence


class FailingAttester:
    def evidence(self, binder: bytes) -> bytes:
        raise AttesterError("no /dev/sev-guest here")


class HmacVerifier:
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes]] = []

    def verify(self, evidence: bytes, binder: bytes) -> object:
        self.seen.append((evidence, binder))
        expected = hmac.new(TEST_KEY, binder, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, evidence):
            raise NonceMismatch("test.binder", expected=expected, actual=evidence)
        return ("verified", binder)


class MeasurementVerifier:
    def verify(self, evidence: bytes, binder: bytes) -> object:
        raise MeasurementMismatch("snp.measurement", expected="secret-allowlist", actual="x")


def mutual() -> AttestationConfig:
    return AttestationConfig(attester=HmacAttester(), verifier=HmacVerifier(), run_in_thread=False)


_IDENTITIES = [generate_ephemeral_identity() for _ in range(2)]


def contexts(
    *, attested: bool = True, tls: str = "1.3", require_client_certificate: bool = True
) -> tuple[SSL.Context, SSL.Context]:
    version = SSL.TLS1_3_VERSION if tls == "1.3" else SSL.TLS1_2_VERSION
    (ck, cc), (sk, sc) = _IDENTITIES
    client = make_client_context(
        ck, cc, attested=attested, minimum_version=version, maximum_version=version
    )
    server = make_server_context(
        sk,
        sc,
        attested=attested,
        minimum_version=version,
        maximum_version=version,
        require_client_certificate=require_client_certificate,
    )
    return client, server


def wrap(
    transports: tuple[trio.abc.Stream, trio.abc.Stream],
    *,
    client: AttestationConfig | None = None,
    server: AttestationConfig | None = None,
    attested: bool | None = None,
    tls: str = "1.3",
    require_client_certificate: bool = True,
) -> Pair:
    if attested is None:
        attested = client is not None or server is not None
    cctx, sctx = contexts(
        attested=attested, tls=tls, require_client_certificate=require_client_certificate
    )
    return (
        AttestedTLSStream(transports[0], cctx, server_side=False, attestation=client),
        AttestedTLSStream(transports[1], sctx, server_side=True, attestation=server),
    )


async def handshake_both(client: AnyTLS, server: AnyTLS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)


async def outcomes(
    client: AnyTLS, server: AnyTLS
) -> tuple[BaseException | None, BaseException | None]:
    """Run both handshakes to the end; return what each raised (None for success)."""
    results: list[BaseException | None] = [None, None]

    async def run(i: int, stream: AnyTLS) -> None:
        try:
            await stream.do_handshake()
        except Exception as exc:
            results[i] = exc

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, client)
            nursery.start_soon(run, 1, server)
    return results[0], results[1]


# --------------------------------------------------------------------------- conformance

CONFORMANCE_CASES = {
    # name: (TLS version, attested, attester/verifier in threads)
    "tls13-plain": ("1.3", False, False),
    "tls12-plain": ("1.2", False, False),
    "tls13-attested": ("1.3", True, False),
    "tls13-attested-threads": ("1.3", True, True),
}


@pytest.mark.parametrize("case", list(CONFORMANCE_CASES))
async def test_check_two_way_stream(case: str) -> None:
    tls, attested, threads = CONFORMANCE_CASES[case]

    def make(transports: tuple[trio.abc.Stream, trio.abc.Stream]) -> Pair:
        if not attested:
            return wrap(transports, tls=tls)
        return wrap(
            transports,
            client=AttestationConfig(
                attester=HmacAttester(), verifier=HmacVerifier(), run_in_thread=threads
            ),
            server=AttestationConfig(
                attester=HmacAttester(), verifier=HmacVerifier(), run_in_thread=threads
            ),
        )

    async def stream_maker() -> Pair:
        return make(trio.testing.memory_stream_pair())

    async def clogged_stream_maker() -> Pair:
        client, server = make(trio.testing.lockstep_stream_pair())
        # Handshake first: otherwise a receive_some meant to unclog the other side
        # would itself start the handshake and block (same reason as in trio's tests).
        await handshake_both(client, server)
        return client, server

    await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)


# --------------------------------------------------------------------------- attested happy path


async def test_mutual_attestation_results_and_binders() -> None:
    ccfg, scfg = mutual(), mutual()
    client, server = wrap(trio.testing.memory_stream_pair(), client=ccfg, server=scfg)
    await handshake_both(client, server)
    binding = client.channel_binding
    assert binding == server.channel_binding
    assert len(binding) == 32
    assert client.tls_version == server.tls_version == "TLSv1.3"
    (_, cc), (_, sc) = _IDENTITIES
    assert client.peer_certificate == sc
    assert server.peer_certificate == cc
    # Each side's evidence carries SHA-256(own SPKI) || exporter, and the peer checks
    # exactly that.
    assert isinstance(ccfg.attester, HmacAttester)
    assert isinstance(scfg.attester, HmacAttester)
    assert ccfg.attester.binders == [compute_binder(cc, binding)]
    assert scfg.attester.binders == [compute_binder(sc, binding)]
    assert client.peer_attestation == ("verified", compute_binder(sc, binding))
    assert server.peer_attestation == ("verified", compute_binder(cc, binding))
    # RFC 9266 says "empty context"; for TLS 1.3 that equals "no context".
    assert client.export_keying_material(EXPORTER_LABEL, 32, b"") == binding
    assert client.export_keying_material(EXPORTER_LABEL, 32, None) == binding
    await client.send_all(b"ping")
    assert await server.receive_some() == b"ping"
    await client.aclose()
    await server.aclose()


async def test_threads_are_used_by_default() -> None:
    config = AttestationConfig(attester=HmacAttester(), verifier=HmacVerifier())
    assert config.run_in_thread
    client, server = wrap(trio.testing.memory_stream_pair(), client=config, server=config)
    await handshake_both(client, server)
    assert client.peer_attestation is not None


async def test_exporters_differ_between_connections() -> None:
    first = wrap(trio.testing.memory_stream_pair(), client=mutual(), server=mutual())
    second = wrap(trio.testing.memory_stream_pair(), client=mutual(), server=mutual())
    await handshake_both(*first)
    await handshake_both(*second)
    assert first[0].channel_binding != second[0].channel_binding


async def test_one_way_server_attests_only() -> None:
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=AttestationConfig(verifier=HmacVerifier(), run_in_thread=False),
        server=AttestationConfig(attester=HmacAttester(), run_in_thread=False),
        require_client_certificate=False,
    )
    await handshake_both(client, server)
    assert client.peer_attestation is not None
    assert server.peer_attestation is None
    assert server.peer_certificate is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"x" * 5000)
        got = b""
        while len(got) < 5000:
            got += await client.receive_some(1000)
    assert got == b"x" * 5000


async def test_application_data_right_after_last_verdict_is_kept() -> None:
    # The server may send as soon as it has sent its verdict; here the verdict and the
    # first application bytes even share one TLS write.  The client must deliver those
    # bytes, in order, and respect max_bytes.
    client, server = wrap(trio.testing.memory_stream_pair(), client=mutual(), attested=True)

    async def server_side() -> None:
        await server.do_handshake()  # plain TLS 1.3 here; the exchange is run by hand
        binder = compute_binder(_IDENTITIES[1][1], server.channel_binding)
        evidence = hmac.new(TEST_KEY, binder, hashlib.sha256).digest()
        await server.send_all(
            encode_message(Evidence(media_type=AttestationConfig().media_type, evidence=evidence))
        )
        received = b""
        while len(received) < 10:  # the client's evidence and verdict
            received += await server.receive_some()
        await server.send_all(encode_message(Verdict.ok()) + b"hello")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        await client.do_handshake()
    assert await client.receive_some(2) == b"he"
    assert await client.receive_some() == b"llo"


async def test_concurrent_handshake_waiter_sees_failure() -> None:
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=mutual(),
        server=AttestationConfig(
            attester=HmacAttester(), verifier=MeasurementVerifier(), run_in_thread=False
        ),
    )
    errors: list[BaseException] = []

    async def attempt() -> None:
        try:
            await client.do_handshake()
        except Exception as exc:
            errors.append(exc)

    async def serve() -> None:
        with contextlib.suppress(MeasurementMismatch):
            await server.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt)
        nursery.start_soon(attempt)
        nursery.start_soon(serve)
    assert sorted(type(e).__name__ for e in errors) == [
        "AttestationRefused",
        "BrokenResourceError",
    ]


async def test_attester_without_own_certificate() -> None:
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    client_ctx.set_verify(SSL.VERIFY_NONE)
    _, server_ctx = contexts(require_client_certificate=False)
    a, b = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(a, client_ctx, server_side=False, attestation=mutual())
    server = AttestedTLSStream(
        b,
        server_ctx,
        server_side=True,
        attestation=AttestationConfig(attester=HmacAttester(), run_in_thread=False),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, LocalProtocolError)
    assert isinstance(server_error, AttestationRefused)


async def test_close_while_handshake_blocked_in_another_task() -> None:
    a, _b = trio.testing.memory_stream_pair()
    client, _ = wrap((a, _b), client=mutual(), server=mutual())
    errors: list[BaseException] = []

    async def attempt() -> None:
        try:
            await client.do_handshake()
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt)
        await trio.testing.wait_all_tasks_blocked()
        await trio.aclose_forcefully(client)
    assert len(errors) == 1
    assert isinstance(errors[0], trio.ClosedResourceError)
    assert repr(client).endswith("CLOSED>")


async def test_large_evidence_over_unbuffered_transport() -> None:
    class BigAttester(HmacAttester):
        def evidence(self, binder: bytes) -> bytes:
            return super().evidence(binder) + bytes(200_000)

    class BigVerifier(HmacVerifier):
        def verify(self, evidence: bytes, binder: bytes) -> object:
            assert evidence[32:] == bytes(200_000)
            return super().verify(evidence[:32], binder)

    def config() -> AttestationConfig:
        return AttestationConfig(
            attester=BigAttester(), verifier=BigVerifier(), run_in_thread=False
        )

    client, server = wrap(trio.testing.lockstep_stream_pair(), client=config(), server=config())
    with trio.fail_after(30):
        await handshake_both(client, server)
    assert client.peer_attestation is not None


# --------------------------------------------------------------------------- binding


async def test_replayed_evidence_refused_on_another_connection() -> None:
    # Connection 1: capture the server's evidence.
    capture = HmacAttester()
    first = wrap(
        trio.testing.memory_stream_pair(),
        client=mutual(),
        server=AttestationConfig(attester=capture, verifier=HmacVerifier(), run_in_thread=False),
    )
    await handshake_both(*first)
    captured = hmac.new(TEST_KEY, capture.binders[0], hashlib.sha256).digest()
    # Connection 2: a relay/replayer presents it again.
    verifier = HmacVerifier()
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=AttestationConfig(attester=HmacAttester(), verifier=verifier, run_in_thread=False),
        server=AttestationConfig(
            attester=ReplayAttester(captured), verifier=HmacVerifier(), run_in_thread=False
        ),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, NonceMismatch)
    assert isinstance(server_error, AttestationRefused)
    assert server_error.reason == "NonceMismatch: test.binder"
    # The binder the client expected is this connection's, not the captured one.
    assert verifier.seen[0][1][32:] != first[0].channel_binding
    for stream in (client, server):
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")


async def test_key_substitution_refused() -> None:
    # Evidence bound to another certificate's key (same connection's exporter).
    _, other_cert = generate_ephemeral_identity()

    def substitute(binder: bytes) -> bytes:
        return compute_binder(other_cert, binder[32:])

    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=AttestationConfig(
            attester=HmacAttester(substitute), verifier=HmacVerifier(), run_in_thread=False
        ),
        server=mutual(),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(server_error, BindingMismatch)
    assert isinstance(client_error, AttestationRefused)


async def test_no_application_byte_before_verdicts() -> None:
    # The client sends early (forcing the handshake); its evidence is wrong, so the
    # server's receive_some must raise, never return the client's bytes.
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=AttestationConfig(
            attester=HmacAttester(lambda b: b"\x00" * 64),
            verifier=HmacVerifier(),
            run_in_thread=False,
        ),
        server=mutual(),
    )
    results: dict[str, object] = {}

    async def send_early() -> None:
        try:
            await client.send_all(b"early secret")
        except Exception as exc:
            results["client"] = exc

    async def receive() -> None:
        try:
            results["server"] = await server.receive_some()
        except Exception as exc:
            results["server"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_early)
        nursery.start_soon(receive)
    assert isinstance(results["server"], NonceMismatch)
    assert isinstance(results["client"], AttestationRefused)


async def test_unattested_peer_sending_data_is_refused() -> None:
    # A peer that skips the exchange and just sends application data: its bytes are
    # parsed as an exchange frame and refused, never delivered.
    client, server = wrap(trio.testing.memory_stream_pair(), server=mutual(), attested=True)
    results: dict[str, object] = {}

    async def rogue_client() -> None:
        await client.do_handshake()
        await client.send_all(b"GET / HTTP/1.1\r\n\r\n")

    async def receive() -> None:
        try:
            results["server"] = await server.receive_some()
        except Exception as exc:
            results["server"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rogue_client)
        nursery.start_soon(receive)
    assert isinstance(results["server"], RemoteProtocolError)


async def test_server_data_before_its_verdict_is_refused() -> None:
    # A hostile server runs the exchange by hand but slips application data in before
    # its verdict: the client must raise, not deliver it.
    client, server = wrap(trio.testing.memory_stream_pair(), client=mutual(), attested=True)
    results: dict[str, object] = {}

    async def hostile_server() -> None:
        await server.do_handshake()  # plain TLS 1.3 on this side
        assert server.peer_certificate is not None
        binder = compute_binder(_IDENTITIES[1][1], server.channel_binding)
        evidence = hmac.new(TEST_KEY, binder, hashlib.sha256).digest()
        await server.send_all(
            encode_message(Evidence(media_type=AttestationConfig().media_type, evidence=evidence))
        )
        received = b""
        while len(received) < 10:  # the client's evidence and verdict
            received += await server.receive_some()
        await server.send_all(b"early data" + encode_message(Verdict.ok()))

    async def receive() -> None:
        try:
            results["client"] = await client.receive_some()
        except Exception as exc:
            results["client"] = exc

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile_server)
            nursery.start_soon(receive)
    assert isinstance(results["client"], RemoteProtocolError)


# --------------------------------------------------------------------------- refusals


async def test_verifier_error_raised_and_reason_sent_without_reference_values() -> None:
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=mutual(),
        server=AttestationConfig(
            attester=HmacAttester(), verifier=MeasurementVerifier(), run_in_thread=False
        ),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(server_error, MeasurementMismatch)
    assert isinstance(client_error, AttestationRefused)
    assert client_error.reason == "MeasurementMismatch: snp.measurement"
    assert "secret-allowlist" not in client_error.reason


async def test_client_refuses_server_before_showing_its_evidence() -> None:
    client_attester = HmacAttester()
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=AttestationConfig(
            attester=client_attester, verifier=MeasurementVerifier(), run_in_thread=False
        ),
        server=mutual(),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, MeasurementMismatch)
    assert isinstance(server_error, AttestationRefused)
    assert client_attester.binders == []  # never produced evidence for this server


async def test_client_evidence_made_early_is_never_sent_to_a_refused_server() -> None:
    # With threads the client makes its evidence while it judges the server's; the
    # server must still never receive it when the client refuses.
    server_verifier = HmacVerifier()
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=AttestationConfig(
            attester=HmacAttester(), verifier=MeasurementVerifier(), run_in_thread=True
        ),
        server=AttestationConfig(
            attester=HmacAttester(), verifier=server_verifier, run_in_thread=False
        ),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, MeasurementMismatch)
    assert isinstance(server_error, AttestationRefused)
    assert server_verifier.seen == []


class StepsHmacAttester(HmacAttester):
    """HmacAttester whose HMAC is a yielded step, like a simulated AMD-SP's signature."""

    def __init__(self) -> None:
        super().__init__()
        self.called = threading.Event()  # set from whichever thread makes the evidence

    def evidence(self, binder: bytes) -> bytes:
        self.called.set()
        return super().evidence(binder)

    def evidence_steps(self, binder: bytes) -> Steps[bytes]:
        return (yield from offload(partial(self.evidence, binder)))


class HeldSendStream(trio.abc.Stream):
    """Passes its first send through and holds the later ones until released."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self._inner = inner
        self._sends = 0
        self.holding = trio.Event()
        self.released = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._sends += 1
        if self._sends > 1:
            self.holding.set()
            await self.released.wait()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("threads", [False, True], ids=["steps", "thread"])
async def test_server_starts_its_evidence_before_the_client_finishes(threads: bool) -> None:
    # In TLS 1.3 the exporter is fixed once the server's Finished is written: the server
    # starts its evidence while the client's last flight is held back, and that early
    # evidence carries the binder the client checks.
    a, b = trio.testing.memory_stream_pair()
    held = HeldSendStream(a)
    server_attester = StepsHmacAttester()
    client_verifier = HmacVerifier()
    cctx, sctx = contexts()
    client = AttestedTLSStream(
        held,
        cctx,
        server_side=False,
        attestation=AttestationConfig(
            attester=HmacAttester(), verifier=client_verifier, run_in_thread=False
        ),
    )
    server = AttestedTLSStream(
        b,
        sctx,
        server_side=True,
        attestation=AttestationConfig(
            attester=server_attester, verifier=HmacVerifier(), run_in_thread=threads
        ),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
        await held.holding.wait()  # the client's Certificate..Finished flight
        assert await trio.to_thread.run_sync(server_attester.called.wait, 5)
        with pytest.raises(trio.NeedHandshakeError):
            server.peer_certificate  # noqa: B018 - the server's handshake is not done
        held.released.set()
    assert server_attester.binders == [client_verifier.seen[0][1]]
    assert client.peer_attestation == ("verified", server_attester.binders[0])


async def test_client_refused_after_the_server_evidence_started() -> None:
    # The server's evidence starts at its Finished; a client certificate refused after
    # that still fails the handshake with the certificate's own error, and the started
    # evidence is dropped with it.
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    expired = _certificate(
        key, not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(1)
    )
    client_ctx.use_privatekey(key)
    client_ctx.use_certificate(expired)
    client_ctx.set_verify(SSL.VERIFY_NONE)
    _, server_ctx = contexts()
    server_attester = StepsHmacAttester()
    a, b = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(a, client_ctx, server_side=False)
    server = AttestedTLSStream(
        b,
        server_ctx,
        server_side=True,
        attestation=AttestationConfig(
            attester=server_attester, verifier=HmacVerifier(), run_in_thread=False
        ),
    )
    _, server_error = await outcomes(client, server)
    assert isinstance(server_error, CertificateChainError)
    assert len(server_attester.binders) == 1  # started, then dropped


async def test_missing_evidence_refused() -> None:
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=AttestationConfig(verifier=HmacVerifier(), run_in_thread=False),
        server=mutual(),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(server_error, PolicyViolation)
    assert server_error.claim == "exchange.evidence"
    assert isinstance(client_error, AttestationRefused)


async def test_unaccepted_media_type_refused() -> None:
    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=mutual(),
        server=AttestationConfig(
            attester=HmacAttester(),
            verifier=HmacVerifier(),
            media_type="application/x-other",
            run_in_thread=False,
        ),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, PolicyViolation)
    assert client_error.claim == "exchange.media"
    assert isinstance(server_error, AttestationRefused)


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("side", ["client", "server"])
async def test_attester_failure(side: str, threads: bool) -> None:
    # With threads the client starts its evidence while it judges the server's; a
    # failure found then must still refuse with the reason, after that judgement.
    failing = AttestationConfig(
        attester=FailingAttester(), verifier=HmacVerifier(), run_in_thread=threads
    )
    configs = {"client": mutual(), "server": mutual(), side: failing}
    client, server = wrap(trio.testing.memory_stream_pair(), **configs)  # type: ignore[arg-type]
    client_error, server_error = await outcomes(client, server)
    errors = {"client": client_error, "server": server_error}
    assert isinstance(errors[side], AttesterError)
    other = errors["server" if side == "client" else "client"]
    assert isinstance(other, AttestationRefused)
    assert other.reason.startswith("AttesterError")


async def test_unexpected_verifier_exception_is_not_swallowed() -> None:
    class Buggy:
        def verify(self, evidence: bytes, binder: bytes) -> object:
            raise KeyError("bug")

    client, server = wrap(
        trio.testing.memory_stream_pair(),
        client=mutual(),
        server=AttestationConfig(attester=HmacAttester(), verifier=Buggy(), run_in_thread=False),
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(server_error, KeyError)
    assert isinstance(client_error, AttestationRefused)
    assert client_error.reason == "internal error (KeyError)"


async def test_tls12_refused_when_attested() -> None:
    (ck, cc), (sk, sc) = _IDENTITIES
    client_ctx = make_client_context(ck, cc, attested=False, minimum_version=SSL.TLS1_2_VERSION)
    server_ctx = make_server_context(
        sk,
        sc,
        attested=False,
        minimum_version=SSL.TLS1_2_VERSION,
        maximum_version=SSL.TLS1_2_VERSION,
    )
    a, b = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(a, client_ctx, server_side=False, attestation=mutual())
    server = AttestedTLSStream(b, server_ctx, server_side=True)
    client_error, _ = await outcomes(client, server)
    assert isinstance(client_error, PolicyViolation)
    assert client_error.claim == "tls.version"
    assert client_error.actual == "TLSv1.2"


def test_attested_contexts_are_tls13_only() -> None:
    key, cert = _IDENTITIES[0]
    with pytest.raises(ValueError, match=r"TLS 1\.3"):
        make_client_context(key, cert, minimum_version=SSL.TLS1_2_VERSION)
    with pytest.raises(ValueError, match=r"TLS 1\.3"):
        make_server_context(key, cert, maximum_version=SSL.TLS1_2_VERSION)


# --------------------------------------------------------------------------- failures


async def test_peer_vanishes_mid_exchange() -> None:
    client, server = wrap(trio.testing.memory_stream_pair(), client=mutual(), attested=True)

    async def vanishing_server() -> None:
        await server.do_handshake()
        await server.send_all(encode_message(NoEvidence())[:5])  # half a message
        await trio.aclose_forcefully(server.transport_stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(vanishing_server)
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.do_handshake()
    assert isinstance(info.value.__cause__, ExchangeTruncated)
    assert info.value.__cause__.buffered == 5
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()


async def test_peer_closes_cleanly_mid_exchange() -> None:
    client, server = wrap(trio.testing.memory_stream_pair(), client=mutual(), attested=True)

    async def closing_server() -> None:
        await server.do_handshake()
        await server.aclose()  # close_notify instead of evidence

    async with trio.open_nursery() as nursery:
        nursery.start_soon(closing_server)
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.do_handshake()
    assert isinstance(info.value.__cause__, ExchangeTruncated)


async def test_transport_eof_during_tls_handshake() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, _ = wrap((a, b), client=mutual(), server=mutual())
    await b.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await client.do_handshake()


async def test_silent_peer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    a, _b = trio.testing.memory_stream_pair()
    client, _ = wrap((a, _b), client=mutual(), server=mutual())
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(10):
            await client.do_handshake()
    assert trio.current_time() >= 10
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")


async def test_peer_stalls_after_tls_handshake(autojump_clock: trio.testing.MockClock) -> None:
    # TLS completes, but the peer never sends its evidence.
    client, server = wrap(trio.testing.memory_stream_pair(), client=mutual(), attested=True)

    async def stalling_server() -> None:
        await server.do_handshake()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalling_server)
        with pytest.raises(trio.TooSlowError), trio.fail_after(5):
            await client.do_handshake()
        nursery.cancel_scope.cancel()


async def test_garbage_from_peer_is_a_broken_stream() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, _ = wrap((a, b), client=mutual(), server=mutual())

    async def garbage() -> None:
        await b.receive_some()
        await b.send_all(b"this is not TLS at all" * 10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(garbage)
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.do_handshake()
    assert isinstance(info.value.__cause__, SSL.Error)


# --------------------------------------------------------------------------- certificates


def _certificate(
    key: IdentityKey | dsa.DSAPrivateKey,
    *,
    signer: IdentityKey | dsa.DSAPrivateKey | None = None,
    subject: str = "peer",
    issuer: str | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(hours=1))
        .not_valid_after(not_after or now + datetime.timedelta(hours=1))
        .sign(signer or key, hashes.SHA256())
    )


def test_check_peer_certificate_accepts_ephemeral() -> None:
    for key_type in ("ec-p256", "ec-p384", "ed25519"):
        _, cert = generate_ephemeral_identity(key_type)
        check_peer_certificate(cert)


def test_check_peer_certificate_validity() -> None:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    expired = _certificate(
        key, not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(days=1)
    )
    with pytest.raises(CertificateChainError) as info:
        check_peer_certificate(expired)
    assert info.value.claim == "tls.peer_certificate.validity"
    future = _certificate(
        key, not_before=now + datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=2)
    )
    with pytest.raises(CertificateChainError):
        check_peer_certificate(future)
    check_peer_certificate(future, now=now + datetime.timedelta(days=1, hours=1))


def test_a_remembered_certificate_is_still_checked_for_time() -> None:
    # A passed certificate is remembered by DER, its validity period with it: a later
    # check past the end of that period still refuses it.
    now = datetime.datetime.now(datetime.UTC)
    cert = _certificate(ec.generate_private_key(ec.SECP256R1()))
    check_peer_certificate(cert, now=now)
    with pytest.raises(CertificateChainError) as info:
        check_peer_certificate(cert, now=now + datetime.timedelta(hours=2))
    assert info.value.claim == "tls.peer_certificate.validity"


def test_check_peer_certificate_bad_self_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    forged = _certificate(key, signer=ec.generate_private_key(ec.SECP256R1()))
    for _ in range(2):  # a refusal is not remembered: the second check refuses again
        with pytest.raises(SignatureMismatch) as info:
            check_peer_certificate(forged)
        assert isinstance(info.value.__cause__, InvalidSignature)


def test_check_peer_certificate_not_self_issued() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CertificateChainError) as info:
        check_peer_certificate(_certificate(key, issuer="some CA"))
    assert info.value.claim == "tls.peer_certificate.issuer"


def test_check_peer_certificate_key_types() -> None:
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (must be refused)
    with pytest.raises(CertificateChainError, match="RSA 1024"):
        check_peer_certificate(_certificate(weak_rsa))
    k256 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(CertificateChainError, match="secp256k1"):
        check_peer_certificate(_certificate(k256))
    dsa_key = dsa.generate_private_key(key_size=2048)
    with pytest.raises(CertificateChainError, match="DSA"):
        check_peer_certificate(_certificate(dsa_key))
    check_peer_certificate(
        _certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )


def test_generate_ephemeral_identity() -> None:
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    key, cert = generate_ephemeral_identity(
        "ec-p384", lifetime=datetime.timedelta(hours=2), now=now, common_name="node-1"
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1)
    assert cert.public_key() == key.public_key()
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=node-1"
    assert cert.not_valid_after_utc == now + datetime.timedelta(hours=2)
    assert cert.not_valid_before_utc == now - datetime.timedelta(minutes=5)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    check_peer_certificate(cert, now=now)
    _, rsa_cert = generate_ephemeral_identity("rsa-3072")
    rsa_key = rsa_cert.public_key()
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    assert rsa_key.key_size == 3072
    with pytest.raises(ValueError, match="unknown key type"):
        generate_ephemeral_identity("ec-p192")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lifetime"):
        generate_ephemeral_identity(lifetime=datetime.timedelta(0))


def test_two_identities_differ() -> None:
    (_, c1), (_, c2) = generate_ephemeral_identity(), generate_ephemeral_identity()
    assert c1.serial_number != c2.serial_number
    assert c1.public_key() != c2.public_key()


@pytest.mark.parametrize("problem", ["expired", "ca-issued", "no-client-cert"])
async def test_handshake_refuses_bad_client_certificate(problem: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    chain: list[x509.Certificate] = []
    if problem == "expired":
        cert = _certificate(
            key,
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1),
        )
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(key, signer=ca_key, issuer="CA")
        chain = [_certificate(ca_key, subject="CA")]
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    if problem != "no-client-cert":
        client_ctx.use_privatekey(key)
        client_ctx.use_certificate(cert)
        for extra in chain:
            client_ctx.add_extra_chain_cert(extra)
    client_ctx.set_verify(SSL.VERIFY_NONE)
    _, server_ctx = contexts()
    a, b = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(a, client_ctx, server_side=False)
    server = AttestedTLSStream(b, server_ctx, server_side=True, attestation=mutual())
    _, server_error = await outcomes(client, server)
    if problem == "no-client-cert":
        assert isinstance(server_error, trio.BrokenResourceError)
    else:
        assert isinstance(server_error, CertificateChainError)
        assert isinstance(server_error.__cause__, SSL.Error)
        expected = "validity" if problem == "expired" else "chain"
        assert server_error.claim == f"tls.peer_certificate.{expected}"


# --------------------------------------------------------------------------- API details


async def test_properties_need_handshake() -> None:
    client, _ = wrap(trio.testing.memory_stream_pair(), client=mutual(), server=mutual())
    for name in ("peer_certificate", "peer_attestation", "tls_version", "channel_binding"):
        with pytest.raises(trio.NeedHandshakeError):
            getattr(client, name)
    with pytest.raises(trio.NeedHandshakeError):
        client.export_keying_material(b"x", 8)
    assert repr(client) == "<AttestedTLSStream client attested OK>"


async def test_aclose_before_handshake_runs_no_attestation() -> None:
    attester = HmacAttester()
    config = AttestationConfig(attester=attester, verifier=HmacVerifier(), run_in_thread=False)
    client, server = wrap(trio.testing.memory_stream_pair(), client=config, server=config)
    await client.aclose()
    await client.aclose()
    assert repr(client) == "<AttestedTLSStream client attested CLOSED>"
    with pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()
    assert attester.binders == []
    with pytest.raises(trio.ClosedResourceError):
        await client.do_handshake()


def test_server_hostname_only_on_client() -> None:
    _, server_ctx = contexts()
    a, _ = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="client side"):
        AttestedTLSStream(a, server_ctx, server_side=True, server_hostname="x")


async def test_sni_is_sent() -> None:
    cctx, sctx = contexts()
    seen: list[bytes | None] = []
    sctx.set_tlsext_servername_callback(lambda conn: seen.append(conn.get_servername()))
    a, b = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(a, cctx, server_side=False, server_hostname="node.example")
    server = AttestedTLSStream(b, sctx, server_side=True)
    await handshake_both(client, server)
    assert seen == [b"node.example"]


async def test_receive_some_argument_checks() -> None:
    client, _ = wrap(trio.testing.memory_stream_pair())
    with pytest.raises(ValueError, match=">= 1"):
        await client.receive_some(0)
    with pytest.raises(TypeError):
        await client.receive_some(1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- openssl

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


def _write_identity(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = _IDENTITIES[1]
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@needs_openssl
@pytest.mark.openssl
@pytest.mark.parametrize("tls", ["1.3", "1.2"])
async def test_openssl_s_client_against_our_server(tls: str) -> None:
    _, server_ctx = contexts(attested=False, tls=tls, require_client_certificate=False)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    results: dict[str, bytes] = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process = await trio.lowlevel.open_process(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    f"-tls1_{tls[-1]}",
                    "-keymatexport",
                    "EXPORTER-Channel-Binding",
                    "-keymatexportlen",
                    "32",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert process.stdin is not None
            assert process.stdout is not None
            stdout = process.stdout

            async def read_all() -> None:
                chunks = []
                while chunk := await stdout.receive_some():
                    chunks.append(chunk)
                results["out"] = b"".join(chunks)

            nursery.start_soon(read_all)
            transport = await listeners[0].accept()
            server = AttestedTLSStream(transport, server_ctx, server_side=True)
            await process.stdin.send_all(b"hello from openssl\n")
            received = b""
            while not received.endswith(b"\n"):
                received += await server.receive_some()
            assert received == b"hello from openssl\n"
            await server.send_all(b"reply from ratls\n")
            results["binding"] = server.channel_binding
            assert server.tls_version == f"TLSv{tls}"
            await server.aclose()
            await process.stdin.aclose()
            await process.wait()
    await listeners[0].aclose()
    out = results["out"]
    assert b"reply from ratls" in out
    match = re.search(rb"Keying material: ([0-9A-F]+)", out)
    assert match is not None
    if tls == "1.3":
        # Our RFC 9266 exporter (empty context) equals OpenSSL's (no context).
        assert bytes.fromhex(match.group(1).decode()) == results["binding"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@needs_openssl
@pytest.mark.openssl
@pytest.mark.parametrize("tls", ["1.3", "1.2"])
async def test_our_client_against_openssl_s_server(tmp_path: Path, tls: str) -> None:
    key_path, cert_path = _write_identity(tmp_path)
    client_ctx, _ = contexts(attested=False, tls=tls)
    port = _free_port()
    process = await trio.lowlevel.open_process(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(cert_path),
            "-key",
            str(key_path),
            f"-tls1_{tls[-1]}",
            "-rev",
            "-naccept",
            "1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            banner = b""
            while b"ACCEPT" not in banner:
                chunk = await process.stdout.receive_some()
                assert chunk, "s_server exited"
                banner += chunk
            transport = await trio.open_tcp_stream("127.0.0.1", port)
            client = AttestedTLSStream(transport, client_ctx, server_side=False)
            await client.send_all(b"hello\n")
            reply = b""
            while not reply.endswith(b"\n"):
                reply += await client.receive_some()
            assert reply == b"olleh\n"
            assert client.tls_version == f"TLSv{tls}"
            assert client.peer_certificate == _IDENTITIES[1][1]
            await client.aclose()
    finally:
        process.kill()
        await process.wait()


# --------------------------------------------------------------------------- choppy transport


class ChoppyStream(trio.abc.Stream):
    """A transport that returns data in random small pieces after random (virtual) sleeps.

    Exercises the odd paths of the retry loop: partial TLS records, several tasks waiting
    for the same bytes, sends interleaved with receives.
    """

    def __init__(self, inner: trio.abc.Stream, seed: int) -> None:
        self._inner = inner
        self._random = random.Random(seed)  # noqa: S311 (seeded, reproducible)

    async def _jitter(self) -> None:
        await trio.sleep(self._random.random() * 0.001)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._jitter()
        view = memoryview(data)
        while view:
            size = self._random.randint(1, 300)
            await self._inner.send_all(view[:size])
            view = view[size:]

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._jitter()
        limit = self._random.randint(1, 200)
        return await self._inner.receive_some(min(limit, max_bytes or limit))

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("seed", range(4))
async def test_choppy_transport_with_random_sleeps(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = wrap(
        (ChoppyStream(a, seed), ChoppyStream(b, seed + 100)), client=mutual(), server=mutual()
    )
    rng = random.Random(seed)  # noqa: S311 (seeded, reproducible)
    up = rng.randbytes(30_000)
    down = rng.randbytes(30_000)

    async def pump(sender: AnyTLS, receiver: AnyTLS, data: bytes) -> None:
        async def send() -> None:
            for i in range(0, len(data), 7000):
                await sender.send_all(data[i : i + 7000])

        async def receive() -> None:
            got = bytearray()
            while len(got) < len(data):
                got += await receiver.receive_some(rng.randint(1, 5000))
            assert got == data

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, client, server, up)
        nursery.start_soon(pump, server, client, down)
    assert client.peer_attestation is not None
    assert server.peer_attestation is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.aclose)
        nursery.start_soon(server.receive_some)
    await server.aclose()


# --------------------------------------------------------------------------- challenge round


def answer_for(challenge: bytes) -> bytes:
    return hmac.new(TEST_KEY, b"answer" + challenge, hashlib.sha256).digest()


class NonceState:
    """A pending test challenge: a fresh nonce, answered by answer_for(nonce)."""

    def __init__(self) -> None:
        self.nonce = os.urandom(16)

    def challenge_bytes(self) -> bytes:
        return self.nonce


class ChallengingVerifier(HmacVerifier):
    """HmacVerifier that challenges every evidence when ``asks`` is set."""

    def __init__(self, *, asks: bool = True) -> None:
        super().__init__()
        self.asks = asks
        self.states: list[NonceState] = []

    def activation_challenge(self, evidence: bytes) -> NonceState | None:
        if not self.asks:
            return None
        state = NonceState()
        self.states.append(state)
        return state

    def verify(
        self,
        evidence: bytes,
        binder: bytes,
        *,
        activation: object = None,
        response: bytes | None = None,
    ) -> object:
        result = super().verify(evidence, binder)
        if activation is None and response is None:
            return result
        assert isinstance(activation, NonceState)
        expected = answer_for(activation.nonce)
        if response is None or not hmac.compare_digest(expected, response):
            raise BindingMismatch("test.activation", expected=expected, actual=response)
        return ("activated", binder)


class RespondingAttester(HmacAttester):
    """HmacAttester that answers challenges (rightly, unless ``answer`` says otherwise)."""

    def __init__(self, answer: Callable[[bytes], bytes] = answer_for) -> None:
        super().__init__()
        self.challenges: list[bytes] = []
        self._answer = answer

    def respond(self, challenge: bytes) -> bytes:
        self.challenges.append(challenge)
        return self._answer(challenge)


def challenging(
    *, asks: bool = True, answer: Callable[[bytes], bytes] = answer_for, threads: bool = False
) -> AttestationConfig:
    return AttestationConfig(
        attester=RespondingAttester(answer),
        verifier=ChallengingVerifier(asks=asks),
        run_in_thread=threads,
    )


async def read_messages(stream: AnyTLS, count: int) -> list[ExchangeEvent]:
    """Read exactly ``count`` exchange messages from a stream run by hand."""
    buffer = b""
    messages: list[ExchangeEvent] = []
    while len(messages) < count:
        while len(buffer) < 4 or len(buffer) < 4 + int.from_bytes(buffer[:4], "big"):
            buffer += await stream.receive_some()
        end = 4 + int.from_bytes(buffer[:4], "big")
        messages.append(decode_message(buffer[4:end]))
        buffer = buffer[end:]
    assert buffer == b""
    return messages


def server_evidence(server: AnyTLS) -> Evidence:
    binder = compute_binder(_IDENTITIES[1][1], server.channel_binding)
    return Evidence(
        media_type=AttestationConfig().media_type,
        evidence=hmac.new(TEST_KEY, binder, hashlib.sha256).digest(),
    )


def client_evidence(client: AnyTLS) -> Evidence:
    binder = compute_binder(_IDENTITIES[0][1], client.channel_binding)
    return Evidence(
        media_type=AttestationConfig().media_type,
        evidence=hmac.new(TEST_KEY, binder, hashlib.sha256).digest(),
    )


@pytest.mark.parametrize(
    ("client_asks", "server_asks", "threads"),
    [
        (True, True, False),
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, False),
    ],
)
async def test_challenge_rounds(client_asks: bool, server_asks: bool, threads: bool) -> None:
    ccfg = challenging(asks=client_asks, threads=threads)
    scfg = challenging(asks=server_asks, threads=threads)
    client, server = wrap(trio.testing.memory_stream_pair(), client=ccfg, server=scfg)
    await handshake_both(client, server)
    (_, cc), (_, sc) = _IDENTITIES
    binding = client.channel_binding
    assert isinstance(ccfg.attester, RespondingAttester)
    assert isinstance(scfg.attester, RespondingAttester)
    assert isinstance(ccfg.verifier, ChallengingVerifier)
    assert isinstance(scfg.verifier, ChallengingVerifier)
    # Whoever asked got its own nonce answered, by the peer's attester, once.
    assert scfg.attester.challenges == [st.nonce for st in ccfg.verifier.states]
    assert ccfg.attester.challenges == [st.nonce for st in scfg.verifier.states]
    assert len(ccfg.verifier.states) == client_asks
    assert len(scfg.verifier.states) == server_asks
    assert client.peer_attestation == (
        "activated" if client_asks else "verified",
        compute_binder(sc, binding),
    )
    assert server.peer_attestation == (
        "activated" if server_asks else "verified",
        compute_binder(cc, binding),
    )
    await client.send_all(b"ping")
    assert await server.receive_some() == b"ping"
    await server.send_all(b"pong")
    assert await client.receive_some() == b"pong"


async def test_verifier_that_never_asks_sends_the_same_bytes() -> None:
    # A verifier with activation_challenge() that declines is on the wire exactly like
    # one without it: the three-flight exchange.
    client, server = wrap(
        trio.testing.memory_stream_pair(), client=challenging(asks=False), attested=True
    )
    seen: list[bytes] = []

    async def server_side() -> None:
        await server.do_handshake()
        await server.send_all(encode_message(server_evidence(server)))
        expected = encode_message(client_evidence(server)) + encode_message(Verdict.ok())
        received = b""
        while len(received) < len(expected):
            received += await server.receive_some()
        seen.append(received)
        assert received == expected
        await server.send_all(encode_message(Verdict.ok()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        await client.do_handshake()
    assert len(seen) == 1


async def test_client_challenge_on_the_wire() -> None:
    # The server is run by hand: the client's CHALLENGE comes right after our evidence
    # and before its own; our RESPONSE is checked before it shows its evidence.
    ccfg = challenging()
    client, server = wrap(trio.testing.memory_stream_pair(), client=ccfg, attested=True)

    async def server_side() -> None:
        await server.do_handshake()
        await server.send_all(encode_message(server_evidence(server)))
        (challenge,) = await read_messages(server, 1)
        assert isinstance(challenge, Challenge)
        await server.send_all(encode_message(Response(response=answer_for(challenge.challenge))))
        assert await read_messages(server, 2) == [client_evidence(server), Verdict.ok()]
        await server.send_all(encode_message(Verdict.ok()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        await client.do_handshake()
    assert isinstance(ccfg.verifier, ChallengingVerifier)
    assert [st.nonce for st in ccfg.verifier.states] != []
    assert client.peer_attestation == (
        "activated",
        compute_binder(_IDENTITIES[1][1], client.channel_binding),
    )


async def test_server_challenge_on_the_wire() -> None:
    # The client is run by hand: the server's CHALLENGE follows the client's verdict,
    # and the server's verdict follows our RESPONSE.
    scfg = challenging()
    client, server = wrap(trio.testing.memory_stream_pair(), server=scfg, attested=True)

    async def client_side() -> None:
        await client.do_handshake()
        (evidence,) = await read_messages(client, 1)
        assert isinstance(evidence, Evidence)
        await client.send_all(
            encode_message(client_evidence(client)) + encode_message(Verdict.ok())
        )
        (challenge,) = await read_messages(client, 1)
        assert isinstance(challenge, Challenge)
        await client.send_all(encode_message(Response(response=answer_for(challenge.challenge))))
        assert await read_messages(client, 1) == [Verdict.ok()]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        await server.do_handshake()
    assert server.peer_attestation == (
        "activated",
        compute_binder(_IDENTITIES[0][1], server.channel_binding),
    )


@pytest.mark.parametrize("challenged", ["client", "server"])
async def test_wrong_response_refused(challenged: str) -> None:
    wrong = challenging(answer=lambda challenge: b"\x00" * 32)
    configs = {"client": challenging(), "server": challenging(), challenged: wrong}
    client, server = wrap(trio.testing.memory_stream_pair(), **configs)  # type: ignore[arg-type]
    client_error, server_error = await outcomes(client, server)
    errors = {"client": client_error, "server": server_error}
    challenger = errors["server" if challenged == "client" else "client"]
    assert isinstance(challenger, BindingMismatch)
    assert challenger.claim == "test.activation"
    refused = errors[challenged]
    assert isinstance(refused, AttestationRefused)
    assert refused.reason == "BindingMismatch: test.activation"


async def test_response_replayed_from_another_connection_refused() -> None:
    # A response recorded on one connection answers a different nonce on the next.
    recorded: list[bytes] = []

    def replay(challenge: bytes) -> bytes:
        if not recorded:
            recorded.append(answer_for(challenge))
        return recorded[0]

    server_config = challenging(asks=False, answer=replay)
    client, server = wrap(
        trio.testing.memory_stream_pair(), client=challenging(), server=server_config
    )
    await handshake_both(client, server)  # first connection: the answer was right
    client, server = wrap(
        trio.testing.memory_stream_pair(), client=challenging(), server=server_config
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, BindingMismatch)
    assert isinstance(server_error, AttestationRefused)


@pytest.mark.parametrize("challenged", ["client", "server"])
async def test_attester_without_respond_refuses_cleanly(challenged: str) -> None:
    plain = AttestationConfig(
        attester=HmacAttester(), verifier=ChallengingVerifier(asks=False), run_in_thread=False
    )
    configs = {"client": challenging(), "server": challenging(), challenged: plain}
    client, server = wrap(trio.testing.memory_stream_pair(), **configs)  # type: ignore[arg-type]
    client_error, server_error = await outcomes(client, server)
    errors = {"client": client_error, "server": server_error}
    assert isinstance(errors[challenged], AttesterError)
    challenger = errors["server" if challenged == "client" else "client"]
    assert isinstance(challenger, AttestationRefused)
    assert challenger.reason.startswith("AttesterError: ")
    assert "cannot answer challenges" in challenger.reason


async def test_missing_response_times_out(autojump_clock: trio.testing.MockClock) -> None:
    # The server reads the client's CHALLENGE and never answers.
    client, server = wrap(trio.testing.memory_stream_pair(), client=challenging(), attested=True)

    async def stalling_server() -> None:
        await server.do_handshake()
        await server.send_all(encode_message(server_evidence(server)))
        assert [type(m) for m in await read_messages(server, 1)] == [Challenge]
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalling_server)
        with pytest.raises(trio.TooSlowError), trio.fail_after(5):
            await client.do_handshake()
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")


async def test_missing_response_to_server_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The client reads the server's CHALLENGE and never answers.
    client, server = wrap(trio.testing.memory_stream_pair(), server=challenging(), attested=True)

    async def stalling_client() -> None:
        await client.do_handshake()
        await read_messages(client, 1)
        await client.send_all(
            encode_message(client_evidence(client)) + encode_message(Verdict.ok())
        )
        assert [type(m) for m in await read_messages(client, 1)] == [Challenge]
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalling_client)
        with pytest.raises(trio.TooSlowError), trio.fail_after(5):
            await server.do_handshake()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("case", ["challenge-first", "challenge-of-none", "unasked-response"])
async def test_challenge_round_out_of_order_from_peer(case: str) -> None:
    # A hand-run server breaks the order; the client refuses and says why.
    client_config = (
        AttestationConfig(verifier=HmacVerifier(), run_in_thread=False)  # sends NONE
        if case == "challenge-of-none"
        else mutual()
    )
    client, server = wrap(trio.testing.memory_stream_pair(), client=client_config, attested=True)
    reasons: list[str] = []

    async def server_side() -> None:
        await server.do_handshake()
        if case == "challenge-first":
            await server.send_all(encode_message(Challenge(challenge=b"c")))
        else:
            await server.send_all(encode_message(server_evidence(server)))
            assert len(await read_messages(server, 2)) == 2  # evidence | none, verdict
            message = Challenge(challenge=b"c") if case == "challenge-of-none" else None
            await server.send_all(encode_message(message or Response(response=b"r")))
        (verdict,) = await read_messages(server, 1)
        assert isinstance(verdict, Verdict)
        assert verdict.result is VerdictResult.REFUSED
        reasons.append(verdict.reason)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        with pytest.raises(UnexpectedExchangeMessage) as info:
            await client.do_handshake()
    assert isinstance(info.value, RemoteProtocolError)
    assert len(reasons) == 1
    assert reasons[0].startswith("UnexpectedExchangeMessage: unexpected")


async def test_verifier_with_unusable_state_refuses() -> None:
    class NoBytes(ChallengingVerifier):
        def activation_challenge(self, evidence: bytes) -> Any:
            return object()

    client_config = AttestationConfig(
        attester=HmacAttester(), verifier=NoBytes(), run_in_thread=False
    )
    client, server = wrap(trio.testing.memory_stream_pair(), client=client_config, server=mutual())
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, LocalProtocolError)
    assert isinstance(server_error, AttestationRefused)
    assert "challenge_bytes" in server_error.reason


# --------------------------------------------------------------------------- certificate hook


async def test_certificate_attestation_hook_sets_peer_attestation() -> None:
    cctx, sctx = contexts(attested=False, tls="1.3", require_client_certificate=True)
    seen: list[object] = []

    def judge(certificate: object) -> object:
        seen.append(certificate)
        return ("judged", certificate)

    left, right = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(left, cctx, server_side=False, certificate_attestation=judge)
    server = AttestedTLSStream(right, sctx, server_side=True, certificate_attestation=judge)
    await handshake_both(client, server)
    assert client.peer_attestation == ("judged", client.peer_certificate)
    assert server.peer_attestation == ("judged", server.peer_certificate)
    assert len(seen) == 2
    assert all(certificate is not None for certificate in seen)


async def test_certificate_attestation_hook_refusal_fails_the_handshake() -> None:
    cctx, sctx = contexts(attested=False, tls="1.3", require_client_certificate=True)

    def refuse(certificate: object) -> object:
        raise MeasurementMismatch("snp.measurement", expected="a", actual="b")

    left, right = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(left, cctx, server_side=False, certificate_attestation=refuse)
    server = AttestedTLSStream(right, sctx, server_side=True)
    client_error, _ = await outcomes(client, server)
    assert isinstance(client_error, MeasurementMismatch)
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")


def test_certificate_attestation_and_exchange_exclude_each_other() -> None:
    cctx, _ = contexts(attested=True, tls="1.3", require_client_certificate=True)
    left, _right = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="exclude each other"):
        AttestedTLSStream(
            left,
            cctx,
            server_side=False,
            attestation=mutual(),
            certificate_attestation=lambda certificate: certificate,
        )
