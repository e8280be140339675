"""Computations in steps (ratls._steps) and the offload pool that runs their ECDSA calls."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from test_tls_stream import outcomes

import ratls._offload as offload_module
from ratls._bound import BoundVerifier, SimulatedSnpAttester, parse_snp_evidence
from ratls._errors import AttesterError, MeasurementMismatch, SignatureMismatch
from ratls._exchange import AttestationConfig, AttestationRefused
from ratls._offload import OffloadedCall, StartedSteps, drive, pool_threads
from ratls._policy import Policy, SnpPolicy, TrustPolicy
from ratls._snp_report import ProductLine
from ratls._steps import offload, run_inline
from ratls._tls_context import (
    generate_ephemeral_identity,
    make_client_context,
    make_server_context,
)
from ratls._tls_stream import AttestedTLSStream
from ratls.sim import SimulatedAmdSp, simulated_amd_sp

if TYPE_CHECKING:
    from ratls._exchange import PeerVerifier
    from ratls._steps import Steps

MEASUREMENT = hashlib.sha384(b"ratls simulated guest launch").digest()
POLICY = Policy(
    snp=SnpPolicy(measurements=frozenset({MEASUREMENT})),
    trust=TrustPolicy(simulated_hardware=True),
)
OTHER_POLICY = Policy(
    snp=SnpPolicy(measurements=frozenset({bytes(48)})),
    trust=TrustPolicy(simulated_hardware=True),
)
BINDER = bytes(range(64))


@pytest.fixture(scope="module")
def sp() -> SimulatedAmdSp:
    return simulated_amd_sp(ProductLine.GENOA)


def counted(calls: list[str], name: str, value: int) -> Steps[int]:
    """Python, one offloaded call, Python: records which thread ran what."""
    calls.append(f"{name} before in {threading.current_thread().name}")
    result = yield from offload(lambda: threading.current_thread().name)
    calls.append(f"{name} call in {result}")
    return value


# --------------------------------------------------------------------------- steps


def test_run_inline_makes_the_calls_here() -> None:
    calls: list[str] = []
    assert run_inline(counted(calls, "a", 7)) == 7
    here = threading.current_thread().name
    assert calls == [f"a before in {here}", f"a call in {here}"]


def test_run_inline_throws_call_errors_into_the_computation() -> None:
    def failing() -> Steps[str]:
        try:
            yield from offload(partial(int, "not a number"))
        except ValueError as exc:
            return f"handled {type(exc).__name__}"
        return "not reached"

    assert run_inline(failing()) == "handled ValueError"


async def test_drive_makes_the_call_on_a_worker() -> None:
    calls: list[str] = []
    assert await drive(counted(calls, "a", 7), offload=True) == 7
    here = threading.current_thread().name
    assert calls[0] == f"a before in {here}"
    assert calls[1] == "a call in ratls-offload"


async def test_loop_load_says_whether_other_tasks_are_ready() -> None:
    assert offload_module._loop_has_work() is False  # installs the instrument
    await trio.sleep(0.01)
    assert offload_module._loop_has_work() is False  # nothing else to run: the loop slept
    done = False

    async def spin() -> None:
        while not done:
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spin)
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        assert offload_module._loop_has_work() is True
        done = True


async def test_loop_load_instrument_leaves_when_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload_module, "LOAD_WATCH_SECONDS", 0.01)
    offload_module._loop_has_work()
    load = offload_module._LOOP_LOAD.get()
    assert load.installed
    await trio.sleep(0.05)
    await trio.lowlevel.checkpoint()
    assert not load.installed  # removed itself from the run
    assert offload_module._loop_has_work() is False  # and comes back when asked
    assert load.installed


@pytest.mark.parametrize("busy", [False, True])
async def test_drive_offloads_only_when_the_loop_has_other_work(
    monkeypatch: pytest.MonkeyPatch, busy: bool
) -> None:
    monkeypatch.setattr(offload_module, "_loop_has_work", lambda: busy)
    calls: list[str] = []
    assert await drive(counted(calls, "a", 7)) == 7
    here = threading.current_thread().name
    assert calls[1] == ("a call in ratls-offload" if busy else f"a call in {here}")


async def test_overlap_offloads_the_first_call_of_an_idle_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(offload_module, "_loop_has_work", lambda: False)
    calls: list[str] = []
    started = StartedSteps(counted(calls, "a", 7), overlap=True)
    assert await started.finish() == 7
    assert calls[1] == "a call in ratls-offload"


async def test_drive_without_calls_is_a_checkpoint() -> None:
    def nothing() -> Steps[int]:
        return 3
        yield  # pragma: no cover - makes this a generator

    with trio.testing.assert_checkpoints():
        assert await drive(nothing()) == 3


async def test_drive_raises_what_the_computation_raises() -> None:
    def failing() -> Steps[None]:
        yield from offload(partial(int, "not a number"))

    with pytest.raises(ValueError, match="not a number"):
        await drive(failing())


# --------------------------------------------------------------------------- evidence


async def test_offloaded_evidence_verifies_like_inline(sp: SimulatedAmdSp) -> None:
    attester = SimulatedSnpAttester(sp)
    verifier = BoundVerifier(POLICY)
    made_in_pool = await drive(attester.evidence_steps(BINDER), offload=True)
    made_here = attester.evidence(BINDER)
    for evidence in (made_in_pool, made_here):
        inline = verifier.verify(evidence, BINDER)
        pooled = await drive(verifier.verify_steps(evidence, BINDER), offload=True)
        assert pooled.snp is not None
        assert inline.snp is not None
        assert pooled.snp.report == inline.snp.report
        assert pooled.policy_digest == inline.policy_digest
        assert pooled.trust_anchor == inline.trust_anchor


async def test_offloaded_verification_refuses_a_bad_signature(sp: SimulatedAmdSp) -> None:
    evidence = parse_snp_evidence(SimulatedSnpAttester(sp).evidence(BINDER))
    report = bytearray(evidence.snp_report)
    report[0x2A0] ^= 1  # a bit of the signature's R
    forged = dataclasses.replace(evidence, snp_report=bytes(report)).to_bytes()
    verifier = BoundVerifier(POLICY)
    with pytest.raises(SignatureMismatch) as inline:
        verifier.verify(forged, BINDER)
    with pytest.raises(SignatureMismatch) as pooled:
        await drive(verifier.verify_steps(forged, BINDER), offload=True)
    assert pooled.value.claim == inline.value.claim == "snp.signature"


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_wait_abandons_the_call_and_closes_the_computation() -> None:
    release = threading.Event()
    closed: list[bool] = []

    def slow() -> Steps[str]:
        try:
            yield from offload(partial(release.wait, 30))
            return "finished"
        finally:
            closed.append(True)

    with trio.move_on_after(0.05) as scope:
        await drive(slow(), offload=True)
    assert scope.cancelled_caught
    assert closed == [True]
    release.set()  # the running call ends; its result goes nowhere


async def test_abandoned_call_not_started_is_skipped() -> None:
    release = threading.Event()
    ran: list[str] = []
    # Keep every worker busy, so the next call stays queued until abandoned.
    blockers = [OffloadedCall.start(partial(release.wait, 30)) for _ in range(8)]
    queued = OffloadedCall.start(lambda: ran.append("queued"))
    queued.abandon()
    release.set()
    for blocker in blockers:
        assert await blocker.wait() is True
    after = OffloadedCall.start(lambda: ran.append("after"))
    await after.wait()
    assert ran == ["after"]


async def test_started_steps_abandoned_before_finishing() -> None:
    calls: list[str] = []
    started = StartedSteps(counted(calls, "a", 1), overlap=True)
    started.abandon()
    started.abandon()  # idempotent
    await trio.sleep(0.01)
    assert len(calls) == 1  # the part after the call never runs


async def test_started_steps_keeps_an_early_error_for_finish() -> None:
    def broken() -> Steps[int]:
        raise AttesterError("no evidence today")
        yield  # pragma: no cover - makes this a generator

    started = StartedSteps(broken())
    with pytest.raises(AttesterError, match="no evidence today"):
        await started.finish()


async def test_idle_workers_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload_module, "IDLE_SECONDS", 0.01)
    pool = offload_module._Pool(2)
    job = OffloadedCall(lambda: "done", trio.lowlevel.current_trio_token())
    pool.submit(job)
    assert await job.wait() == "done"
    for _ in range(1000):  # the worker leaves after its idle timeout
        if pool.threads == 0:
            break
        await trio.sleep(0.01)
    assert pool.threads == 0
    job = OffloadedCall(lambda: "again", trio.lowlevel.current_trio_token())
    pool.submit(job)  # a new worker starts
    assert await job.wait() == "again"


async def test_pool_threads_are_bounded() -> None:
    release = threading.Event()
    blockers = [OffloadedCall.start(partial(release.wait, 30)) for _ in range(6)]
    assert pool_threads() <= offload_module.WORKERS
    release.set()
    for blocker in blockers:
        await blocker.wait()


# --------------------------------------------------------------------------- streams


_IDENTITIES = [generate_ephemeral_identity() for _ in range(2)]


def snp_pair(
    client: AttestationConfig, server: AttestationConfig
) -> tuple[AttestedTLSStream[trio.abc.Stream], AttestedTLSStream[trio.abc.Stream]]:
    (ck, cc), (sk, sc) = _IDENTITIES
    a, b = trio.testing.memory_stream_pair()
    return (
        AttestedTLSStream(
            a, make_client_context(ck, cc, attested=True), server_side=False, attestation=client
        ),
        AttestedTLSStream(
            b, make_server_context(sk, sc, attested=True), server_side=True, attestation=server
        ),
    )


def snp_config(
    sp: SimulatedAmdSp, *, policy: Policy = POLICY, verifier: PeerVerifier | None = None
) -> AttestationConfig:
    return AttestationConfig(
        attester=SimulatedSnpAttester(sp),
        verifier=verifier if verifier is not None else BoundVerifier(policy),
        media_type="application/vnd.ratls.snp+cbor",
        accepted_media_types=frozenset({"application/vnd.ratls.snp+cbor"}),
        run_in_thread=False,
    )


class RecordingVerifier:
    """A BoundVerifier that records the evidence it is asked to judge."""

    blocking = False

    def __init__(self, policy: Policy) -> None:
        self.inner = BoundVerifier(policy)
        self.seen: list[bytes] = []

    def verify(self, evidence: bytes, binder: bytes) -> object:
        self.seen.append(evidence)
        return self.inner.verify(evidence, binder)

    def verify_steps(self, evidence: bytes, binder: bytes) -> Steps[object]:
        self.seen.append(evidence)
        result = yield from self.inner.verify_steps(evidence, binder)
        return result


@pytest.mark.parametrize("busy", [False, True])
async def test_bound_snp_stream_with_offloaded_signatures(
    monkeypatch: pytest.MonkeyPatch, sp: SimulatedAmdSp, busy: bool
) -> None:
    monkeypatch.setattr(offload_module, "_loop_has_work", lambda: busy)
    client, server = snp_pair(snp_config(sp), snp_config(sp))
    assert await outcomes(client, server) == (None, None)
    for stream in (client, server):
        result = stream.peer_attestation
        assert result.snp.report.measurement == MEASUREMENT  # type: ignore[attr-defined]


async def test_client_never_sends_early_evidence_to_a_refused_server(sp: SimulatedAmdSp) -> None:
    server_verifier = RecordingVerifier(POLICY)
    client, server = snp_pair(
        snp_config(sp, policy=OTHER_POLICY), snp_config(sp, verifier=server_verifier)
    )
    client_error, server_error = await outcomes(client, server)
    assert isinstance(client_error, MeasurementMismatch)
    assert isinstance(server_error, AttestationRefused)
    assert server_verifier.seen == []


class FailingStepsAttester:
    """Fails inside its offloaded call."""

    blocking = False
    media_type = "application/vnd.ratls.snp+cbor"

    def evidence(self, binder: bytes) -> bytes:
        return run_inline(self.evidence_steps(binder))

    def evidence_steps(self, binder: bytes) -> Steps[bytes]:
        def fail() -> bytes:
            raise AttesterError("the AMD-SP is on fire")

        evidence = yield from offload(fail)
        return evidence


@pytest.mark.parametrize("side", ["client", "server"])
async def test_offloaded_attester_failure_refuses_with_reason(
    sp: SimulatedAmdSp, side: str
) -> None:
    failing = dataclasses.replace(snp_config(sp), attester=FailingStepsAttester())
    good = snp_config(sp)
    client, server = snp_pair(*(failing, good) if side == "client" else (good, failing))
    client_error, server_error = await outcomes(client, server)
    ours, theirs = (
        (client_error, server_error) if side == "client" else (server_error, client_error)
    )
    assert isinstance(ours, AttesterError)
    assert isinstance(theirs, AttestationRefused)
    assert theirs.reason.startswith("AttesterError")


class BlockingSignatureAttester:
    """SNP evidence whose offloaded signature waits for an event first."""

    blocking = False
    media_type = "application/vnd.ratls.snp+cbor"

    def __init__(self, sp: SimulatedAmdSp) -> None:
        self.inner = SimulatedSnpAttester(sp)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.finished: list[bool] = []

    def evidence(self, binder: bytes) -> bytes:
        return run_inline(self.evidence_steps(binder))

    def evidence_steps(self, binder: bytes) -> Steps[bytes]:
        def wait() -> None:
            self.entered.set()
            self.release.wait(30)

        try:
            yield from offload(wait)
            evidence = yield from self.inner.evidence_steps(binder)
            return evidence
        finally:
            self.finished.append(True)


async def test_cancelled_handshake_abandons_its_offloaded_call(
    monkeypatch: pytest.MonkeyPatch, sp: SimulatedAmdSp
) -> None:
    monkeypatch.setattr(offload_module, "_loop_has_work", lambda: True)
    attester = BlockingSignatureAttester(sp)
    client, server = snp_pair(
        snp_config(sp), dataclasses.replace(snp_config(sp), attester=attester)
    )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
            await trio.to_thread.run_sync(attester.entered.wait, 30)
            nursery.cancel_scope.cancel()
    assert attester.finished == [True]  # the computation was closed, not left suspended
    attester.release.set()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")
