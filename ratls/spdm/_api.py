"""Open an SPDM secured session to a CPU-TEE responder and move application data.

What and why
------------
The requester's conversation (VCA, certificate, CHALLENGE, signed MEASUREMENTS with TEE
evidence, KEY_EXCHANGE, FINISH, then session requests) is the same whether the socket is
trio's or a blocking one.  It is written once, as generators that *yield* the transport
message to send and are *sent* the answer (sans-I/O, like the machines themselves); a
small driver runs them over :class:`~ratls.spdm.TrioSpdmChannel` (:func:`open_spdm_session`)
or :class:`~ratls.spdm.BlockingSpdmChannel` (:func:`connect_spdm_session`).

Trust: with ``trust_anchor`` the responder is authenticated as a plain SPDM device
against that root; otherwise its slot-0 chain must be one self-signed evidence
certificate that verifies and meets ``policy``, and every signed MEASUREMENTS must carry
fresh TEE evidence bound to this requester's nonce (:mod:`ratls.spdm._tee`).  Every step
reports to an optional ``trace`` callback, which the CLI prints.

Application data travels in the session's records as type-0x7F application messages
(see :data:`~ratls.spdm.APPLICATION_MESSAGE_TYPE`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar, cast, final

from ratls._errors import LocalProtocolError, RatlsError, RemoteProtocolError

from ._codec import (
    Certificate,
    Challenge,
    EndSession,
    Error,
    GetDigests,
    GetMeasurements,
    GetVersion,
    Heartbeat,
    KeyUpdate,
    Measurements,
    SpdmMessage,
)
from ._constants import (
    NONCE_SIZE,
    AeadAlgorithm,
    AlgType,
    BaseAsymAlgo,
    BaseHashAlgo,
    DheGroup,
    KeyUpdateOperation,
    MeasurementSummaryHashType,
    SpdmErrorCode,
)
from ._io import (
    BlockingSpdmChannel,
    TransportKind,
    TrioSpdmChannel,
    connect_spdm_channel,
    open_spdm_channel,
    unwrap_application_payload,
    wrap_application_payload,
)
from ._requester import (
    Requester,
    RequesterConfig,
    get_capabilities_request,
    negotiate_algorithms_request,
)
from ._tee import (
    VerifiedResponderIdentity,
    VerifiedTeeMeasurements,
    verify_responder_chain,
    verify_tee_measurements,
)
from ._transport import EmuCommand

if TYPE_CHECKING:
    from ratls._policy import Policy

    from ._codec import MeasurementBlock

__all__ = [
    "BlockingSpdmSession",
    "SpdmSession",
    "SpdmTrust",
    "Trace",
    "connect_spdm_session",
    "open_spdm_session",
]

#: Receives one line per protocol step (and, when verbose, per message).
Trace = Callable[[str], None]
_T = TypeVar("_T")
#: A step of the conversation: yields transport messages, is sent the answers.
_Step = Generator[bytes, bytes, _T]
#: CERTIFICATE's header before the portion: GET_CERTIFICATE asks for DataTransferSize
#: minus this, as libspdm does, so each portion fills one message.
_CERTIFICATE_HEADER: Final = 8
_REPR_LIMIT: Final = 160


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SpdmTrust:
    """How the requester decides to trust a responder.

    Attributes:
        policy: appraisal policy for TEE evidence (None: authenticity and binding only).
        trust_simulator: accept evidence signed by the simulated AMD root.
        trust_anchor: DER of a root certificate: plain SPDM device authentication,
            no TEE evidence required.
        clock: the time source for certificate validity and evidence age.
    """

    policy: Policy | None = None
    trust_simulator: bool = False
    trust_anchor: bytes | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def _names(
    value: int, enum_type: type[BaseAsymAlgo | BaseHashAlgo | DheGroup | AeadAlgorithm]
) -> str:
    try:
        name = enum_type(value).name
    except ValueError:
        return f"{value:#x}"
    return name or f"{value:#x}"


def _short(message: object) -> str:
    text = repr(message)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


@final
class _Conversation:
    """The requester's side of one connection, as generator steps."""

    def __init__(
        self,
        requester: Requester,
        config: RequesterConfig,
        trust: SpdmTrust,
        trace: Trace | None,
        verbose: bool,
    ) -> None:
        self.requester = requester
        self.config = config
        self.trust = trust
        self._trace = trace
        self._verbose = verbose
        self.identity: VerifiedResponderIdentity | None = None
        self.last_measurements: VerifiedTeeMeasurements | None = None

    def step(self, name: str, detail: str) -> None:
        if self._trace is not None:
            self._trace(f"{name:<22} ok  {detail}")

    def _detail(self, line: str) -> None:
        if self._trace is not None and self._verbose:
            self._trace(f"    {line}")

    def ask(self, label: str, out: bytes) -> _Step[SpdmMessage]:
        """Send one request (already encoded by the machine) and return the checked answer."""
        self._detail(f"-> {label}")
        self._detail(f"   {len(out)} bytes: {out[:48].hex()}{'...' if len(out) > 48 else ''}")
        answer = yield out
        self._detail(
            f"<- {len(answer)} bytes: {answer[:48].hex()}{'...' if len(answer) > 48 else ''}"
        )
        self.requester.receive_data(answer)
        event = self.requester.next_event()
        self._detail(f"   {_short(event)}")
        if isinstance(event, Error):
            try:
                code = SpdmErrorCode(event.error_code).name
            except ValueError:
                code = f"{event.error_code:#x}"
            raise RemoteProtocolError(
                f"the responder refused {label.split('(', 1)[0]}: ERROR {code} "
                f"(data {event.error_data:#x})"
            )
        if not isinstance(event, SpdmMessage):  # pragma: no cover - answers are whole
            raise RemoteProtocolError("no response decoded")
        return event

    def send(self, request: SpdmMessage, **kwargs: bool) -> _Step[SpdmMessage]:
        out = self.requester.send(request, **kwargs)
        return (yield from self.ask(_short(request), out))

    # -------------------------------------------------------------- authentication

    def connect(self) -> _Step[None]:
        req, config = self.requester, self.config
        yield from self.send(GetVersion())
        yield from self.send(get_capabilities_request(config))
        yield from self.send(negotiate_algorithms_request(config))
        n = req.negotiated
        assert n is not None  # noqa: S101 - ALGORITHMS was accepted
        algs = n.algorithms
        self.step(
            "VCA",
            f"SPDM 1.2, {_names(algs.base_asym_sel, BaseAsymAlgo)}, "
            f"{_names(algs.base_hash_sel, BaseHashAlgo)}, "
            f"{_names(algs.selected(AlgType.DHE), DheGroup)}, "
            f"{_names(algs.selected(AlgType.AEAD), AeadAlgorithm)}",
        )
        digests = yield from self.send(GetDigests())
        self.step("DIGESTS", f"slot mask {getattr(digests, 'slot_mask', 0):#04x}")
        offset, rounds = 0, 0
        while True:
            answer = yield from self.send(
                _get_certificate(
                    offset=offset, length=config.data_transfer_size - _CERTIFICATE_HEADER
                )
            )
            assert isinstance(answer, Certificate)  # noqa: S101 - paired by the machine
            offset += answer.portion_length
            rounds += 1
            if not answer.remainder_length:
                break
        chain = req.certificate_chain(0)
        assert chain is not None  # noqa: S101 - the last portion completed it
        identity = verify_responder_chain(
            chain,
            base_asym_algo=algs.base_asym_sel,
            at=self.trust.clock(),
            policy=self.trust.policy,
            trust_simulator=self.trust.trust_simulator,
            trust_anchor=self.trust.trust_anchor,
        )
        self.identity = identity
        subject = identity.leaf.subject.rfc4514_string()
        if identity.result is not None:
            how = f"evidence verified: {identity.result.summary()}"
        else:
            how = "chain verified against the trust anchor"
        self.step("CERTIFICATE", f"{offset} bytes in {rounds} portion(s), {subject}; {how}")
        yield from self.send(
            Challenge(
                slot_id=0,
                nonce=os.urandom(NONCE_SIZE),
                measurement_summary_hash_type=MeasurementSummaryHashType.ALL,
            )
        )
        self.step("CHALLENGE", "CHALLENGE_AUTH signature verified over M1")
        yield from self.measurements(in_session=False)

    def measurements(self, *, in_session: bool) -> _Step[tuple[MeasurementBlock, ...]]:
        nonce = os.urandom(NONCE_SIZE)
        answer = yield from self.send(
            GetMeasurements(
                measurement_operation=0xFF,
                signature_requested=True,
                raw_bit_stream_requested=True,
                nonce=nonce,
            ),
            in_session=in_session,
        )
        assert isinstance(answer, Measurements)  # noqa: S101 - paired by the machine
        blocks = answer.measurement_record
        name = "MEASUREMENTS (session)" if in_session else "MEASUREMENTS"
        for block in blocks:
            self._detail(
                f"   block {block.index:#04x} type {block.value_type:#04x} "
                f"{len(block.value)} bytes {block.value[:16].hex()}"
                f"{'...' if len(block.value) > 16 else ''}"
            )
        identity = self.identity
        assert identity is not None  # noqa: S101 - connect() set it
        if identity.mode == "evidence":
            verified = verify_tee_measurements(
                blocks,
                nonce=nonce,
                leaf=identity.leaf,
                at=self.trust.clock(),
                policy=self.trust.policy,
                trust_simulator=self.trust.trust_simulator,
            )
            self.last_measurements = verified
            vtpm = f", vTPM quote of {len(verified.pcrs)} PCRs" if verified.vtpm else ""
            self.step(
                name,
                f"{len(blocks)} blocks signed; fresh evidence bound to the nonce: "
                f"{verified.result.summary()}{vtpm}, debug "
                f"{'on' if verified.device_mode.invasive_debug else 'off'}",
            )
        else:
            self.step(name, f"{len(blocks)} blocks signed (no TEE appraisal with a trust anchor)")
        return blocks

    def key_exchange(self) -> _Step[None]:
        req = self.requester
        yield from self.ask(
            "KeyExchange(measurement_summary_hash_type=ALL)",
            req.key_exchange(measurement_summary_hash_type=MeasurementSummaryHashType.ALL),
        )
        self.step("KEY_EXCHANGE", f"session {req.session_id:#010x}, KEY_EXCHANGE_RSP signed")
        yield from self.ask("Finish(requester_verify_data=...)", req.finish())
        self.step("FINISH", "verify data checked, session established")

    def heartbeat(self) -> _Step[None]:
        yield from self.send(Heartbeat())
        self.step("HEARTBEAT", "HEARTBEAT_ACK in session")

    def key_update(self) -> _Step[None]:
        yield from self.send(KeyUpdate(key_operation=KeyUpdateOperation.UPDATE_ALL_KEYS, tag=1))
        yield from self.send(KeyUpdate(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=2))
        self.step("KEY_UPDATE", "both directions rekeyed and verified")

    def end_session(self) -> _Step[None]:
        yield from self.send(EndSession())
        self.step("END_SESSION", "END_SESSION_ACK")


def _get_certificate(*, offset: int, length: int) -> SpdmMessage:
    from ._codec import GetCertificate

    return GetCertificate(slot_id=0, offset=offset, length=length)


def _drive_blocking(channel: BlockingSpdmChannel, step: _Step[_T]) -> _T:
    try:
        out = next(step)
        while True:
            out = step.send(channel.exchange(out))
    except StopIteration as done:
        return cast("_T", done.value)


async def _drive_trio(channel: TrioSpdmChannel, step: _Step[_T]) -> _T:
    try:
        out = next(step)
        while True:
            out = step.send(await channel.exchange(out))
    except StopIteration as done:
        return cast("_T", done.value)


class _SessionBase:
    """What both session flavours share: the machine, the conversation, the binding."""

    def __init__(self, conversation: _Conversation, kind: TransportKind) -> None:
        self._conversation = conversation
        self._kind = kind
        self._closed = False
        self._broken = False

    @property
    def requester(self) -> Requester:
        """The requester machine (for inspection)."""
        return self._conversation.requester

    @property
    def identity(self) -> VerifiedResponderIdentity:
        """How the responder was authenticated (and its certificate evidence result)."""
        identity = self._conversation.identity
        assert identity is not None  # noqa: S101 - set while connecting
        return identity

    @property
    def measurements(self) -> VerifiedTeeMeasurements | None:
        """The last verified TEE measurements (None with a trust anchor)."""
        return self._conversation.last_measurements

    @property
    def session_id(self) -> int | None:
        """The secured session's ID, None when no session was established."""
        return self.requester.session_id if self.established else None

    @property
    def established(self) -> bool:
        """True while the secured session is open (False after any failed step)."""
        from ._state import State

        return not self._broken and self.requester.state is State.ESTABLISHED

    def _need_session(self) -> None:
        if not self.established:
            raise LocalProtocolError("no secured session is open")

    def _seal(self, data: bytes) -> bytes:
        self._need_session()
        binding = self._kind.binding
        return self.requester.send_application_data(wrap_application_payload(binding, data))

    def _open(self, message: bytes) -> bytes:
        self._need_session()
        inner = self.requester.receive_application_data(message)
        return unwrap_application_payload(self._kind.binding, inner)


def _new_conversation(
    kind: TransportKind,
    trust: SpdmTrust,
    config: RequesterConfig | None,
    trace: Trace | None,
    verbose: bool,
) -> _Conversation:
    if config is None:
        config = RequesterConfig(binding=kind.binding)
    elif type(config.binding) is not type(kind.binding):
        raise LocalProtocolError(f"the requester's binding does not fit {kind.value}")
    return _Conversation(Requester(config), config, trust, trace, verbose)


@final
class SpdmSession(_SessionBase):
    """An authenticated SPDM connection (and secured session) over trio.

    Create with :func:`open_spdm_session`; use as an async context manager or call
    :meth:`aclose`.  Methods are not safe to call concurrently from several tasks.
    """

    def __init__(
        self, channel: TrioSpdmChannel, conversation: _Conversation, kind: TransportKind
    ) -> None:
        super().__init__(conversation, kind)
        self._channel = channel

    async def _run(self, step: _Step[_T]) -> _T:
        try:
            return await _drive_trio(self._channel, step)
        except BaseException:
            self._broken = True
            raise

    async def __aenter__(self) -> SpdmSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def send(self, data: bytes) -> None:
        """Send application data in the session.

        Raises:
            LocalProtocolError: no session is open.
            RemoteProtocolError: the connection ended.
        """
        message = self._seal(data)
        try:
            await self._channel.send_frame(EmuCommand.NORMAL, message)
        except BaseException:
            self._broken = True
            raise

    async def receive(self) -> bytes:
        """Receive the next application message of the session.

        Raises:
            LocalProtocolError: no session is open.
            RemoteProtocolError: the connection ended, or the record is not
                authentic application data of this session.
        """
        self._need_session()
        try:
            return self._open(await self._channel.receive_message())
        except BaseException:
            self._broken = True
            raise

    async def get_measurements(self) -> tuple[MeasurementBlock, ...]:
        """Signed MEASUREMENTS inside the session, verified like the first ones."""
        self._need_session()
        return await self._run(self._conversation.measurements(in_session=True))

    async def heartbeat(self) -> None:
        """HEARTBEAT in the session."""
        self._need_session()
        await self._run(self._conversation.heartbeat())

    async def key_update(self) -> None:
        """KEY_UPDATE (UpdateAllKeys, then VerifyNewKey)."""
        self._need_session()
        await self._run(self._conversation.key_update())

    async def aclose(self, *, end: EmuCommand = EmuCommand.CONTINUE) -> None:
        """END_SESSION (if open), then CONTINUE or SHUTDOWN, then close the socket.

        Args:
            end: CONTINUE (the responder serves the next connection) or SHUTDOWN.

        Never raises for a peer that is gone or misbehaves: the socket is closed anyway.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.established:
                await _drive_trio(self._channel, self._conversation.end_session())
            await self._channel.finish(end)
        except RatlsError:
            pass  # the peer is gone or broke the protocol: there is nobody to say goodbye to
        finally:
            await self._channel.aclose()


@final
class BlockingSpdmSession(_SessionBase):
    """An authenticated SPDM connection (and secured session) over a blocking socket.

    Create with :func:`connect_spdm_session`; use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self, channel: BlockingSpdmChannel, conversation: _Conversation, kind: TransportKind
    ) -> None:
        super().__init__(conversation, kind)
        self._channel = channel

    def _run(self, step: _Step[_T]) -> _T:
        try:
            return _drive_blocking(self._channel, step)
        except BaseException:
            self._broken = True
            raise

    def __enter__(self) -> BlockingSpdmSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        """Send application data in the session (see :meth:`SpdmSession.send`)."""
        message = self._seal(data)
        try:
            self._channel.send_frame(EmuCommand.NORMAL, message)
        except BaseException:
            self._broken = True
            raise

    def receive(self) -> bytes:
        """Receive the next application message (see :meth:`SpdmSession.receive`)."""
        self._need_session()
        try:
            return self._open(self._channel.receive_message())
        except BaseException:
            self._broken = True
            raise

    def get_measurements(self) -> tuple[MeasurementBlock, ...]:
        """Signed MEASUREMENTS inside the session, verified like the first ones."""
        self._need_session()
        return self._run(self._conversation.measurements(in_session=True))

    def heartbeat(self) -> None:
        """HEARTBEAT in the session."""
        self._need_session()
        self._run(self._conversation.heartbeat())

    def key_update(self) -> None:
        """KEY_UPDATE (UpdateAllKeys, then VerifyNewKey)."""
        self._need_session()
        self._run(self._conversation.key_update())

    def close(self, *, end: EmuCommand = EmuCommand.CONTINUE) -> None:
        """END_SESSION (if open), then CONTINUE or SHUTDOWN, then close the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.established:
                _drive_blocking(self._channel, self._conversation.end_session())
            self._channel.finish(end)
        except RatlsError:
            pass  # the peer is gone or broke the protocol: there is nobody to say goodbye to
        finally:
            self._channel.close()


async def open_spdm_session(
    host: str,
    port: int,
    *,
    transport: TransportKind = TransportKind.MCTP,
    trust: SpdmTrust | None = None,
    config: RequesterConfig | None = None,
    establish: bool = True,
    trace: Trace | None = None,
    verbose: bool = False,
) -> SpdmSession:
    """Connect, authenticate the responder and (by default) open a secured session.

    Runs VCA, DIGESTS, CERTIFICATE (then the trust decision), CHALLENGE and signed
    MEASUREMENTS (with TEE evidence checks), then KEY_EXCHANGE and FINISH.

    Args:
        host: the responder's address.
        port: its port.
        transport: how SPDM travels (NONE cannot carry a session).
        trust: how to trust the responder (default: evidence, no policy).
        config: the requester configuration (its binding must fit ``transport``).
        establish: open the secured session (False: authenticate only).
        trace: receives one line per step.
        verbose: also trace every message.

    Returns:
        The session.

    Raises:
        LocalProtocolError: a session was asked for on the NONE transport.
        RemoteProtocolError: the connection or the responder misbehaved.
        EvidenceError: the responder's certificate or evidence failed a check.
    """
    if establish and not transport.supports_sessions:
        raise LocalProtocolError("the NONE transport cannot carry a secured session")
    conversation = _new_conversation(transport, trust or SpdmTrust(), config, trace, verbose)
    channel = await open_spdm_channel(host, port, transport)
    try:
        await _drive_trio(channel, conversation.connect())
        if establish:
            await _drive_trio(channel, conversation.key_exchange())
    except BaseException:
        await channel.aclose()
        raise
    return SpdmSession(channel, conversation, transport)


def connect_spdm_session(
    host: str,
    port: int,
    *,
    transport: TransportKind = TransportKind.MCTP,
    trust: SpdmTrust | None = None,
    config: RequesterConfig | None = None,
    establish: bool = True,
    trace: Trace | None = None,
    verbose: bool = False,
    timeout: float | None = None,
) -> BlockingSpdmSession:
    """The blocking twin of :func:`open_spdm_session` (same arguments, plus ``timeout``).

    Args:
        host: the responder's address.
        port: its port.
        transport: how SPDM travels (NONE cannot carry a session).
        trust: how to trust the responder.
        config: the requester configuration.
        establish: open the secured session.
        trace: receives one line per step.
        verbose: also trace every message.
        timeout: socket timeout in seconds for each operation.

    Returns:
        The session.

    Raises:
        LocalProtocolError: a session was asked for on the NONE transport.
        RemoteProtocolError: the connection or the responder misbehaved.
        EvidenceError: the responder's certificate or evidence failed a check.
    """
    if establish and not transport.supports_sessions:
        raise LocalProtocolError("the NONE transport cannot carry a secured session")
    conversation = _new_conversation(transport, trust or SpdmTrust(), config, trace, verbose)
    channel = connect_spdm_channel(host, port, transport, timeout=timeout)
    try:
        _drive_blocking(channel, conversation.connect())
        if establish:
            _drive_blocking(channel, conversation.key_exchange())
    except BaseException:
        channel.close()
        raise
    return BlockingSpdmSession(channel, conversation, transport)
