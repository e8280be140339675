"""SPDM on real loopback sockets: spdm-emu framing, plain DSP0287 TCP, the session API.

Every socket here is on 127.0.0.1; servers are started on port 0 and stopped by the
tests (SHUTDOWN, or cancellation for plain TCP).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import (
    LocalProtocolError,
    NonceMismatch,
    RatlsError,
    RemoteProtocolError,
)
from ratls._policy import Policy, SnpPolicy, TrustPolicy, VtpmPolicy
from ratls._snp_report import ProductLine
from ratls.sim import simulated_amd_sp
from ratls.spdm import (
    APPLICATION_MESSAGE_TYPE,
    CLIENT_HELLO,
    SERVER_HELLO,
    ApplicationData,
    Certificate,
    EmuCommand,
    EmuTransportType,
    Frame,
    GetCertificate,
    GetDigests,
    GetVersion,
    Heartbeat,
    HeartbeatAck,
    MctpBinding,
    MeasurementContext,
    NeedData,
    Requester,
    RequesterConfig,
    Responder,
    SimulatedSnpAttester,
    SpdmFramer,
    SpdmLocalProtocolError,
    SpdmTrust,
    SpdmUnexpectedMessage,
    TcpBinding,
    TeeResponderIdentity,
    TransportKind,
    TrioSpdmChannel,
    connect_spdm_channel,
    connect_spdm_session,
    get_capabilities_request,
    negotiate_algorithms_request,
    open_spdm_channel,
    open_spdm_session,
    serve_spdm_responder,
    unwrap_application_payload,
    wrap_application_payload,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ratls.spdm import MeasurementBlock

POLICY = Policy(
    snp=SnpPolicy(allow_any_measurement=True),
    vtpm=VtpmPolicy(allow_unproven_ak=True),
    trust=TrustPolicy(simulated_hardware=True),
)
TRUST = SpdmTrust(policy=POLICY)
EMU_KINDS = [TransportKind.NONE, TransportKind.MCTP, TransportKind.TCP]
SESSION_KINDS = [TransportKind.MCTP, TransportKind.TCP, TransportKind.PLAIN_TCP]


@pytest.fixture(scope="module")
def identity() -> TeeResponderIdentity:
    sp = simulated_amd_sp(ProductLine.GENOA)
    return TeeResponderIdentity.create(SimulatedSnpAttester(sp), now=datetime.now(UTC))


def factory(identity: TeeResponderIdentity, kind: TransportKind) -> Callable[[], Responder]:
    def make() -> Responder:
        return Responder(identity.responder_config(binding=kind.binding))

    return make


# --------------------------------------------------------------------------- framing


def emu(command: int, transport: int, payload: bytes) -> bytes:
    return struct.pack(">III", command, transport, len(payload)) + payload


@pytest.mark.parametrize("kind", EMU_KINDS)
def test_emu_frames_round_trip(kind: TransportKind) -> None:
    framer = SpdmFramer(kind)
    message = b"\x05\x10\x84\x00\x00"
    wire = framer.encode(EmuCommand.NORMAL, message)
    expected_payload = message[1:] if kind is TransportKind.NONE else message
    assert wire == emu(1, int(kind.emu_transport_type or 0), expected_payload)
    for byte in wire[:-1]:  # fed one byte at a time: nothing until the frame is whole
        framer.receive_data(bytes((byte,)))
        assert framer.next_frame() is None
    framer.receive_data(wire[-1:])
    assert framer.next_frame() == Frame(command=EmuCommand.NORMAL, payload=message)
    assert framer.buffered == 0


def test_emu_commands_keep_their_payload() -> None:
    framer = SpdmFramer(TransportKind.NONE)
    wire = framer.encode(EmuCommand.TEST, CLIENT_HELLO)
    assert wire == emu(0xDEAD, 0, CLIENT_HELLO)
    framer.receive_data(wire + emu(0xFFFE, 0, b""))
    assert framer.next_frame() == Frame(command=EmuCommand.TEST, payload=CLIENT_HELLO)
    assert framer.next_frame() == Frame(command=EmuCommand.SHUTDOWN, payload=b"")


def test_none_transport_cannot_carry_records() -> None:
    with pytest.raises(LocalProtocolError, match="NONE"):
        SpdmFramer(TransportKind.NONE).encode(EmuCommand.NORMAL, b"\x06record")


def test_a_frame_of_another_transport_type_is_refused() -> None:
    framer = SpdmFramer(TransportKind.MCTP)
    framer.receive_data(emu(1, EmuTransportType.TCP, b"\x05x"))
    with pytest.raises(RemoteProtocolError, match="TransportType"):
        framer.next_frame()


def test_plain_tcp_carries_binding_frames_and_no_commands() -> None:
    framer = SpdmFramer(TransportKind.PLAIN_TCP)
    frame = TcpBinding().encode(b"\x10\x84\x00\x00")
    assert framer.encode(EmuCommand.NORMAL, frame) == frame
    with pytest.raises(LocalProtocolError, match="plain TCP"):
        framer.encode(EmuCommand.SHUTDOWN)
    framer.receive_data(frame + frame[:3])
    assert framer.next_frame() == Frame(command=EmuCommand.NORMAL, payload=frame)
    assert framer.next_frame() is None
    assert framer.buffered == 3


@settings(max_examples=200)
@given(st.sampled_from(list(TransportKind)), st.binary(max_size=64))
def test_framer_on_arbitrary_bytes_raises_only_ratls_errors(
    kind: TransportKind, data: bytes
) -> None:
    framer = SpdmFramer(kind)
    framer.receive_data(data)
    with contextlib.suppress(RatlsError):
        while framer.next_frame() is not None:
            pass


@pytest.mark.parametrize("binding", [MctpBinding(), TcpBinding()], ids=["mctp", "tcp"])
def test_application_payloads_are_not_spdm(binding: MctpBinding | TcpBinding) -> None:
    inner = wrap_application_payload(binding, b"data")
    assert APPLICATION_MESSAGE_TYPE in inner[:4]
    assert unwrap_application_payload(binding, inner) == b"data"
    with pytest.raises(RemoteProtocolError):
        unwrap_application_payload(binding, binding.wrap_application_data(b"\x12\x84\x00\x00"))
    with pytest.raises(RemoteProtocolError):
        unwrap_application_payload(binding, b"")


def test_transport_kinds() -> None:
    assert isinstance(TransportKind.NONE.binding, MctpBinding)
    assert isinstance(TransportKind.TCP.binding, TcpBinding)
    assert TransportKind.PLAIN_TCP.emu_transport_type is None
    assert not TransportKind.NONE.supports_sessions
    assert TransportKind.MCTP.supports_sessions


# --------------------------------------------------------------------------- sockets


async def start_server(
    nursery: trio.Nursery,
    identity: TeeResponderIdentity,
    kind: TransportKind,
    **kwargs: object,
) -> int:
    port: int = await nursery.start(
        lambda task_status: serve_spdm_responder(
            factory(identity, kind),
            kind=kind,
            port=0,
            task_status=task_status,
            **kwargs,  # type: ignore[arg-type]
        )
    )
    return port


@pytest.mark.parametrize("kind", SESSION_KINDS, ids=lambda k: k.value)
async def test_session_over_loopback(identity: TeeResponderIdentity, kind: TransportKind) -> None:
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, kind)
        session = await open_spdm_session(
            "127.0.0.1", port, transport=kind, trust=TRUST, trace=lines.append
        )
        assert session.established
        assert session.session_id is not None
        assert session.identity.mode == "evidence"
        first = session.measurements
        assert first is not None
        await session.send(b"ping")
        assert await session.receive() == b"ping"
        blocks = await session.get_measurements()
        assert session.measurements is not first
        assert [b.index for b in blocks] == [1, 2, 0xFE]
        await session.heartbeat()
        await session.key_update()
        await session.send(b"after key update")
        assert await session.receive() == b"after key update"
        if kind is TransportKind.PLAIN_TCP:
            await session.aclose()
            nursery.cancel_scope.cancel()
        else:
            await session.aclose(end=EmuCommand.SHUTDOWN)  # the server returns by itself
        assert not session.established
    steps = [line.split()[0] for line in lines]
    assert steps == [
        "VCA",
        "DIGESTS",
        "CERTIFICATE",
        "CHALLENGE",
        "MEASUREMENTS",
        "KEY_EXCHANGE",
        "FINISH",
        "MEASUREMENTS",
        "HEARTBEAT",
        "KEY_UPDATE",
        "END_SESSION",
    ]


async def test_none_transport_authenticates_without_a_session(
    identity: TeeResponderIdentity,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, TransportKind.NONE)
        with pytest.raises(LocalProtocolError, match="NONE"):
            await open_spdm_session("127.0.0.1", port, transport=TransportKind.NONE)
        session = await open_spdm_session(
            "127.0.0.1", port, transport=TransportKind.NONE, trust=TRUST, establish=False
        )
        assert not session.established
        assert session.measurements is not None
        with pytest.raises(LocalProtocolError, match="no secured session"):
            await session.send(b"x")
        await session.aclose(end=EmuCommand.SHUTDOWN)


async def test_continue_serves_the_next_connection_with_a_fresh_machine(
    identity: TeeResponderIdentity,
) -> None:
    made: list[Responder] = []
    peers: list[tuple[str, int]] = []

    def make() -> Responder:
        made.append(factory(identity, TransportKind.MCTP)())
        return made[-1]

    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_spdm_responder(
                make, port=0, on_connection=peers.append, task_status=task_status
            )
        )
        for end in (EmuCommand.CONTINUE, EmuCommand.CONTINUE, EmuCommand.SHUTDOWN):
            session = await open_spdm_session("127.0.0.1", port, trust=TRUST)
            await session.aclose(end=end)
    assert len(made) == 3
    assert len(peers) == 3
    assert made[0] is not made[1]


async def test_emu_commands_on_the_wire(identity: TeeResponderIdentity) -> None:
    """TEST is echoed, an unknown command gets UNKNOWN, CONTINUE and SHUTDOWN echo."""
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, TransportKind.MCTP)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        channel = TrioSpdmChannel(stream, TransportKind.MCTP)
        await channel.send_frame(EmuCommand.TEST, CLIENT_HELLO)
        assert await channel.receive_frame() == Frame(command=0xDEAD, payload=SERVER_HELLO)
        await channel.send_frame(0x1234)
        assert (await channel.receive_frame()).command == EmuCommand.UNKNOWN
        await channel.send_frame(EmuCommand.CONTINUE)
        assert (await channel.receive_frame()).command == EmuCommand.CONTINUE
        with pytest.raises(RemoteProtocolError, match="closed"):
            await channel.receive_frame()
        await channel.aclose()
        other = await open_spdm_channel("127.0.0.1", port, TransportKind.MCTP)
        await other.finish(EmuCommand.SHUTDOWN)
        await other.aclose()


async def test_a_frame_of_the_wrong_transport_drops_the_link(
    identity: TeeResponderIdentity,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, TransportKind.MCTP)
        wrong = await open_spdm_channel("127.0.0.1", port, TransportKind.NONE)
        await wrong.send_frame(EmuCommand.TEST, CLIENT_HELLO)
        with pytest.raises(RemoteProtocolError, match="closed"):
            await wrong.receive_frame()
        await wrong.aclose()
        # The server went on to the next connection.
        session = await open_spdm_session("127.0.0.1", port, trust=TRUST)
        await session.aclose(end=EmuCommand.SHUTDOWN)


async def test_blocking_session_over_loopback(identity: TeeResponderIdentity) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, TransportKind.TCP)

        def client() -> bytes:
            with connect_spdm_session(
                "127.0.0.1", port, transport=TransportKind.TCP, trust=TRUST, timeout=30
            ) as session:
                session.heartbeat()
                session.key_update()
                session.get_measurements()
                session.send(b"blocking")
                answer = session.receive()
                session.close(end=EmuCommand.SHUTDOWN)
            return answer

        assert await trio.to_thread.run_sync(client) == b"blocking"


async def test_blocking_channel_sets_nodelay(identity: TeeResponderIdentity) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, TransportKind.MCTP)

        def client() -> int:
            channel = connect_spdm_channel("127.0.0.1", port, TransportKind.MCTP, timeout=30)
            sock: socket.socket = channel._sock
            value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            channel.finish(EmuCommand.SHUTDOWN)
            channel.close()
            return value

        assert await trio.to_thread.run_sync(client) != 0


async def test_connection_refused_is_a_protocol_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there any more
    with pytest.raises(RemoteProtocolError, match="cannot connect"):
        await open_spdm_session("127.0.0.1", port)
    with pytest.raises(RemoteProtocolError, match="cannot connect"):
        connect_spdm_channel("127.0.0.1", port, TransportKind.MCTP, timeout=5)


async def vanishing_responder(
    identity: TeeResponderIdentity,
    answers: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A responder that answers ``answers`` NORMAL frames, then drops the connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    stream = await listeners[0].accept()
    channel = TrioSpdmChannel(stream, TransportKind.MCTP)
    responder = factory(identity, TransportKind.MCTP)()
    while answers:
        frame = await channel.receive_frame()
        if frame.command == EmuCommand.TEST:
            await channel.send_frame(EmuCommand.TEST, SERVER_HELLO)
            continue
        responder.receive_data(frame.payload)
        await channel.send_frame(EmuCommand.NORMAL, responder.data_to_send())
        answers -= 1
    await channel.aclose()
    await listeners[0].aclose()


@pytest.mark.parametrize("answers", [2, 5, 10])
async def test_responder_vanishing_mid_session(
    identity: TeeResponderIdentity, answers: int
) -> None:
    """During VCA, during the certificate, and after the session was established."""
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(vanishing_responder, identity, answers)
        if answers < 10:
            with pytest.raises(RemoteProtocolError, match="closed the connection"):
                await open_spdm_session("127.0.0.1", port, trust=TRUST)
            return
        session = await open_spdm_session("127.0.0.1", port, trust=TRUST)
        with pytest.raises(RemoteProtocolError, match="closed the connection"):
            await session.heartbeat()
        await session.aclose()  # quietly: nobody is left to say goodbye to


class ReplayingIdentity:
    """A responder's measurement provider that serves the first fresh set forever."""

    def __init__(self, inner: TeeResponderIdentity) -> None:
        self.inner = inner
        self.saved: tuple[MeasurementBlock, ...] | None = None

    def __call__(self, context: MeasurementContext) -> tuple[MeasurementBlock, ...]:
        if context.nonce is None:
            return self.inner(context)
        if self.saved is None:
            self.saved = self.inner(context)
        return self.saved


async def test_replayed_measurements_in_the_session_are_refused(
    identity: TeeResponderIdentity,
) -> None:
    import dataclasses

    replaying = ReplayingIdentity(identity)

    def make() -> Responder:
        config = identity.responder_config(binding=MctpBinding())
        return Responder(dataclasses.replace(config, measurements=replaying))

    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_spdm_responder(make, port=0, task_status=task_status)
        )
        session = await open_spdm_session("127.0.0.1", port, trust=TRUST)
        with pytest.raises(NonceMismatch):
            await session.get_measurements()  # signed afresh, but the evidence is stale
        assert not session.established  # the requester machine is in its ERROR state
        await session.aclose(end=EmuCommand.SHUTDOWN)


async def test_application_data_handler(identity: TeeResponderIdentity) -> None:
    seen: list[bytes] = []

    def handler(data: bytes) -> bytes | None:
        seen.append(data)
        return None if data == b"quiet" else data.upper()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, TransportKind.MCTP, app_handler=handler)
        session = await open_spdm_session("127.0.0.1", port, trust=TRUST)
        await session.send(b"quiet")
        await session.send(b"loud")
        assert await session.receive() == b"LOUD"
        await session.aclose(end=EmuCommand.SHUTDOWN)
    assert seen == [b"quiet", b"loud"]


async def test_events_are_reported(identity: TeeResponderIdentity) -> None:
    events: list[object] = []
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, identity, TransportKind.MCTP, on_event=events.append)
        session = await open_spdm_session("127.0.0.1", port, trust=TRUST)
        await session.aclose(end=EmuCommand.SHUTDOWN)
    names = [type(e).__name__ for e in events]
    assert names[:3] == ["GetVersion", "GetCapabilities", "NegotiateAlgorithms"]
    assert names[-1] == "EndSession"


# --------------------------------------------------------------------------- machines


def established_pair(identity: TeeResponderIdentity) -> tuple[Requester, Responder]:
    """Our two machines joined in memory, through FINISH."""
    responder = factory(identity, TransportKind.MCTP)()
    config = RequesterConfig()
    requester = Requester(config)

    def ask(data: bytes) -> object:
        responder.receive_data(data)
        requester.receive_data(responder.data_to_send())
        return requester.next_event()

    ask(requester.send(GetVersion()))
    ask(requester.send(get_capabilities_request(config)))
    ask(requester.send(negotiate_algorithms_request(config)))
    ask(requester.send(GetDigests()))
    offset, remainder = 0, 1
    while remainder:
        cert = ask(requester.send(GetCertificate(slot_id=0, offset=offset, length=0x1000)))
        assert isinstance(cert, Certificate)
        offset, remainder = offset + cert.portion_length, cert.remainder_length
    ask(requester.key_exchange())
    with pytest.raises(SpdmLocalProtocolError, match="established"):
        requester.send_application_data(b"\x7fearly")
    with pytest.raises(SpdmLocalProtocolError, match="established"):
        responder.send_application_data(b"\x7fearly")
    ask(requester.finish())
    while not isinstance(responder.next_event(), NeedData):
        pass  # the answered requests
    return requester, responder


def test_machines_carry_application_data(identity: TeeResponderIdentity) -> None:
    requester, responder = established_pair(identity)
    responder.receive_data(requester.send_application_data(b"\x7fhello"))
    assert responder.next_event() == ApplicationData(data=b"\x7fhello")
    assert responder.data_to_send() == b""  # nothing is answered on its own
    reply = responder.send_application_data(b"\x7fworld")
    assert requester.receive_application_data(reply) == b"\x7fworld"
    # SPDM keeps working in the same session, with the same sequence numbers.
    responder.receive_data(requester.send(Heartbeat()))
    requester.receive_data(responder.data_to_send())
    assert isinstance(requester.next_event(), HeartbeatAck)


def test_machines_refuse_spdm_as_application_data(identity: TeeResponderIdentity) -> None:
    requester, responder = established_pair(identity)
    spdm = b"\x05\x12\xe8\x00\x00"  # MCTP SPDM, HEARTBEAT
    with pytest.raises(SpdmLocalProtocolError, match="SPDM"):
        requester.send_application_data(spdm)
    with pytest.raises(SpdmLocalProtocolError, match="SPDM"):
        responder.send_application_data(spdm)
    # Application data cannot interleave with an outstanding request.
    requester.send(Heartbeat())
    with pytest.raises(SpdmLocalProtocolError, match="outstanding"):
        requester.send_application_data(b"\x7fdata")


def test_requester_needs_a_record_for_application_data(identity: TeeResponderIdentity) -> None:
    requester, _ = established_pair(identity)
    with pytest.raises(SpdmUnexpectedMessage, match="secured record"):
        requester.receive_application_data(MctpBinding().encode(b"\x12\x68\x00\x00"))


async def test_blocking_timeout_is_a_protocol_error() -> None:
    """A responder that accepts and never answers the hello."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    def client() -> None:
        with pytest.raises(RemoteProtocolError, match="did not answer in time"):
            connect_spdm_channel("127.0.0.1", port, TransportKind.MCTP, timeout=0.2)

    async def accept_and_wait() -> None:
        async with await listeners[0].accept():
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_wait)
        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    await listeners[0].aclose()


async def test_a_refusal_names_the_request_and_the_error(
    identity: TeeResponderIdentity,
) -> None:
    """A responder whose messages are too small for the evidence answers ResponseTooLarge."""
    import dataclasses

    def make() -> Responder:
        config = identity.responder_config(binding=MctpBinding())
        return Responder(dataclasses.replace(config, data_transfer_size=1024))

    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_spdm_responder(make, port=0, task_status=task_status)
        )
        with pytest.raises(
            RemoteProtocolError, match="refused GetMeasurements: ERROR RESPONSE_TOO"
        ):
            await open_spdm_session("127.0.0.1", port, trust=TRUST)
        nursery.cancel_scope.cancel()
