"""The gateway link protocol: frame codec and the sans-I/O LinkConnection."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._link import (
    DATAGRAM_LINK_VERSION,
    FRAME_HEADER_SIZE,
    LINK_VERSION,
    MAX_FRAME_PAYLOAD,
    MAX_REASON_BYTES,
    NEED_DATA,
    REUSE_LINK_VERSION,
    AddressTarget,
    Data,
    Eof,
    Error,
    EvidenceFrame,
    FrameType,
    LinkClosed,
    LinkConnection,
    LinkEvent,
    LinkFrameTooLarge,
    LinkReason,
    LinkRole,
    LinkState,
    LinkTruncated,
    MalformedLinkFrame,
    Open,
    Opened,
    Ready,
    Reattest,
    Refused,
    RouteTarget,
    UnexpectedLinkFrame,
    UnsupportedLinkVersion,
    decode_frame,
    encode_frame,
    open_version,
    reason_name,
    safe_reason,
)
from ratls._errors import LocalProtocolError, RatlsError, RemoteProtocolError

NONCE = bytes(range(32))

EVENTS: list[LinkEvent] = [
    Open(target=AddressTarget(host="backend.internal", port=5432), client="192.0.2.1:40000"),
    Open(target=AddressTarget(host="2001:db8::1", port=443), client="[2001:db8::2]:1"),
    Open(target=RouteTarget(name="web"), client=""),
    Opened(),
    Refused(code=LinkReason.NOT_ALLOWED, reason="10.0.0.1:22 is not allowed"),
    Refused(code=999, reason=""),
    Data(data=b"hello"),
    Data(data=bytes(MAX_FRAME_PAYLOAD)),
    Eof(),
    Error(code=LinkReason.BACKEND_RESET, reason="ECONNRESET"),
    Reattest(nonce=NONCE),
    EvidenceFrame(nonce=NONCE, media_type="application/x-test", evidence=b"\x01\x02"),
    EvidenceFrame(nonce=NONCE, media_type="a/b", evidence=b""),
]


def _ids(event: LinkEvent) -> str:
    return type(event).__name__


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize("event", EVENTS, ids=_ids)
def test_roundtrip_whole(event: LinkEvent) -> None:
    data = encode_frame(event)
    assert decode_frame(data) == event
    assert encode_frame(decode_frame(data)) == data


@pytest.mark.parametrize("event", [e for e in EVENTS if not isinstance(e, Data)], ids=_ids)
def test_every_truncation_is_refused(event: LinkEvent) -> None:
    data = encode_frame(event)
    for cut in range(len(data)):
        with pytest.raises(MalformedLinkFrame):
            decode_frame(data[:cut])


def test_data_truncations_are_refused() -> None:
    data = encode_frame(Data(data=b"0123456789"))
    for cut in range(len(data)):
        with pytest.raises(MalformedLinkFrame):
            decode_frame(data[:cut])


@pytest.mark.parametrize("event", EVENTS[:-2], ids=_ids)
def test_trailing_byte_is_refused(event: LinkEvent) -> None:
    with pytest.raises(MalformedLinkFrame, match="trailing"):
        decode_frame(encode_frame(event) + b"\0")


def test_open_wire_layout() -> None:
    frame = encode_frame(Open(target=AddressTarget(host="h", port=80), client="c"))
    assert frame == b"\x01\x00\x00\x00\x08" + b"\x01\x01\x00\x50" + b"\x01h" + b"\x01c"
    route = encode_frame(Open(target=RouteTarget(name="web"), client=""))
    assert route == b"\x01\x00\x00\x00\x09" + b"\x01\x02\x00\x00" + b"\x03web" + b"\x00"


def test_header_layout_and_types() -> None:
    assert encode_frame(Eof()) == b"\x11\x00\x00\x00\x00"
    assert encode_frame(Opened()) == b"\x02\x00\x00\x00\x01\x01"
    assert encode_frame(Data(data=b"x")) == b"\x10\x00\x00\x00\x01x"
    assert encode_frame(Error(code=LinkReason.IDLE_TIMEOUT, reason="")) == (
        b"\x12\x00\x00\x00\x02\x00\x0e"
    )
    assert [t.value for t in FrameType] == [1, 2, 3, 0x10, 0x11, 0x12, 0x20, 0x21, 0x30]


def test_unknown_frame_type() -> None:
    with pytest.raises(MalformedLinkFrame, match="unknown frame type 0x7f"):
        decode_frame(b"\x7f\x00\x00\x00\x00")


def test_frame_too_large() -> None:
    header = struct.pack(">BI", FrameType.DATA, MAX_FRAME_PAYLOAD + 1)
    with pytest.raises(LinkFrameTooLarge) as info:
        decode_frame(header)
    assert info.value.size == MAX_FRAME_PAYLOAD + 1
    assert info.value.limit == MAX_FRAME_PAYLOAD


def test_unsupported_version_is_named() -> None:
    frame = bytearray(encode_frame(Open(target=RouteTarget(name="web"))))
    frame[5] = 7
    with pytest.raises(UnsupportedLinkVersion) as info:
        decode_frame(bytes(frame))
    assert info.value.version == 7
    assert "supported: 1" in str(info.value)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\x10\x00\x00\x00\x00", "empty DATA"),
        (b"\x11\x00\x00\x00\x01x", "EOF carries no payload"),
        (b"\x02\x00\x00\x00\x02\x01\x01", "1 byte"),
        (b"\x20\x00\x00\x00\x01x", "nonce"),
        (b"\x03\x00\x00\x00\x01x", "reason code"),
        (b"\x03\x00\x00\x00\x03\x00\x01\xff", "UTF-8"),
        (b"\x12\x00\x00\x00\x03\x00\x01\x07", "printable"),
        (b"\x01\x00\x00\x00\x08\x01\x03\x00\x50\x01h\x01c", "target kind"),
        (b"\x01\x00\x00\x00\x07\x01\x02\x00\x50\x01h\x00", "port 0"),
        (b"\x01\x00\x00\x00\x07\x01\x01\x00\x00\x01h\x00", "bad target"),
        (b"\x01\x00\x00\x00\x07\x01\x01\x00\x50\x01 \x00", "bad target"),
        (b"\x01\x00\x00\x00\x07\x01\x02\x00\x00\x01-\x00", "bad target"),
        (b"\x21\x00\x00\x00\x21" + NONCE + b"\x00", "media type"),
        (b"\x21\x00\x00\x00\x22" + NONCE + b"\x01\x80", "media type"),
    ],
)
def test_malformed_fields(frame: bytes, match: str) -> None:
    with pytest.raises(MalformedLinkFrame, match=match):
        decode_frame(frame)


def test_reason_too_long() -> None:
    payload = b"\x00\x01" + b"x" * 1025
    with pytest.raises(MalformedLinkFrame, match="too long"):
        decode_frame(struct.pack(">BI", FrameType.ERROR, len(payload)) + payload)


def test_unknown_reason_codes_pass_through() -> None:
    assert decode_frame(encode_frame(Refused(code=4242))) == Refused(code=4242)
    assert LinkReason.from_int(1) is LinkReason.NOT_ALLOWED
    assert LinkReason.from_int(4242) == 4242
    assert reason_name(LinkReason.BACKEND_TIMEOUT) == "backend-timeout"
    assert reason_name(4242) == "code-4242"


@pytest.mark.parametrize(
    "build",
    [
        lambda: AddressTarget(host="", port=1),
        lambda: AddressTarget(host="a b", port=1),
        lambda: AddressTarget(host="h", port=0),
        lambda: AddressTarget(host="h", port=65536),
        lambda: RouteTarget(name="-x"),
        lambda: RouteTarget(name="x" * 65),
        lambda: Open(target=RouteTarget(name="x"), client="\n"),
        lambda: Open(target=RouteTarget(name="x"), client="x" * 256),
        lambda: Open(target=RouteTarget(name="x"), version=256),
        lambda: Opened(version=-1),
        lambda: Refused(code=70000),
        lambda: Error(code=1, reason="x" * 1025),
        lambda: Error(code=1, reason="\x00"),
        lambda: Data(data=b""),
        lambda: Reattest(nonce=b"short"),
        lambda: EvidenceFrame(nonce=b"short", media_type="a/b", evidence=b""),
        lambda: EvidenceFrame(nonce=NONCE, media_type="", evidence=b""),
        lambda: EvidenceFrame(nonce=NONCE, media_type="a/b", evidence=bytes(MAX_FRAME_PAYLOAD)),
    ],
)
def test_events_validate_their_fields(build: object) -> None:
    assert callable(build)
    with pytest.raises(ValueError, match=r"."):
        build()


def test_open_requires_a_target_type() -> None:
    with pytest.raises(TypeError):
        Open(target="web")  # type: ignore[arg-type]


def test_encode_rejects_non_events() -> None:
    with pytest.raises(TypeError):
        encode_frame(object())  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_only_raises_ours(data: bytes) -> None:
    try:
        event = decode_frame(data)
    except RatlsError:
        return
    assert encode_frame(event) == data


@settings(max_examples=200)
@given(st.binary(max_size=300), st.sampled_from(list(LinkRole)))
def test_machine_arbitrary_bytes_only_raises_ours(data: bytes, role: LinkRole) -> None:
    conn = LinkConnection(role)
    conn.receive_data(data)
    conn.receive_data(b"")
    for _ in range(len(data) + 2):
        try:
            event = conn.next_event()
        except RatlsError:
            return
        if isinstance(event, LinkClosed):
            return
        assert event is not NEED_DATA


targets = st.one_of(
    st.builds(
        AddressTarget,
        host=st.from_regex(r"[a-z0-9.:-]{1,40}", fullmatch=True),
        port=st.integers(1, 65535),
        datagram=st.booleans(),
    ),
    st.builds(
        RouteTarget,
        name=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True),
        datagram=st.booleans(),
    ),
)
events = st.one_of(
    targets.flatmap(
        lambda target: st.builds(
            Open,
            target=st.just(target),
            client=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
            version=st.sampled_from(
                sorted({open_version(target), open_version(target, reuse=True)})
            ),
        )
    ),
    st.builds(Opened, version=st.integers(0, 255)),
    st.builds(
        Refused,
        code=st.integers(0, 0xFFFF),
        reason=st.text(
            st.characters(categories=("L", "N", "P"), include_characters=" "), max_size=50
        ),
    ),
    st.builds(Data, data=st.binary(min_size=1, max_size=100)),
    st.just(Eof()),
    st.builds(Error, code=st.integers(0, 0xFFFF), reason=st.just("why")),
    st.builds(Reattest, nonce=st.binary(min_size=32, max_size=32)),
    st.builds(
        EvidenceFrame,
        nonce=st.binary(min_size=32, max_size=32),
        media_type=st.just("a/b"),
        evidence=st.binary(max_size=50),
    ),
    st.just(Ready()),
)


@settings(max_examples=200)
@given(events)
def test_roundtrip_property(event: LinkEvent) -> None:
    assert decode_frame(encode_frame(event)) == event


@settings(max_examples=150)
@given(st.lists(st.tuples(st.booleans(), events), max_size=12), st.integers(1, 7))
def test_two_machines_agree(script: list[tuple[bool, LinkEvent]], chunk: int) -> None:
    """Whatever one side may send, the other side accepts (h2's invariant)."""
    ingress, egress = LinkConnection(LinkRole.INGRESS), LinkConnection(LinkRole.EGRESS)
    for from_ingress, event in script:
        sender, receiver = (ingress, egress) if from_ingress else (egress, ingress)
        try:
            data = sender.send(event)
        except LocalProtocolError:
            continue
        for i in range(0, len(data), chunk):
            receiver.receive_data(data[i : i + chunk])
        got = receiver.next_event()
        while got is NEED_DATA:  # pragma: no cover - the whole frame was fed
            got = receiver.next_event()
        assert got == event
        assert receiver.next_event() is NEED_DATA


# --------------------------------------------------------------------------- machine


def _pair() -> tuple[LinkConnection, LinkConnection]:
    return LinkConnection(LinkRole.INGRESS), LinkConnection(LinkRole.EGRESS)


def _deliver(sender: LinkConnection, receiver: LinkConnection, event: LinkEvent) -> object:
    receiver.receive_data(sender.send(event))
    return receiver.next_event()


def _open(ingress: LinkConnection, egress: LinkConnection) -> None:
    assert _deliver(ingress, egress, Open(target=RouteTarget(name="web"))) == Open(
        target=RouteTarget(name="web")
    )
    assert _state(ingress) is LinkState.AWAIT_ANSWER
    assert _state(egress) is LinkState.SEND_ANSWER
    assert _deliver(egress, ingress, Opened()) == Opened()
    assert _state(ingress) is _state(egress) is LinkState.OPEN


def _state(conn: LinkConnection) -> LinkState:
    return conn.state


def test_full_conversation_with_half_close() -> None:
    ingress, egress = _pair()
    assert ingress.role is LinkRole.INGRESS
    _open(ingress, egress)
    assert _deliver(ingress, egress, Data(data=b"request")) == Data(data=b"request")
    assert _deliver(ingress, egress, Eof()) == Eof()
    assert ingress.our_eof
    assert egress.their_eof
    assert ingress.state is LinkState.OPEN
    # The reply still flows after the request direction finished.
    assert _deliver(egress, ingress, Data(data=b"reply")) == Data(data=b"reply")
    assert _deliver(egress, ingress, Eof()) == Eof()
    assert ingress.state is egress.state is LinkState.DONE
    egress.receive_data(b"")
    assert isinstance(egress.next_event(), LinkClosed)
    assert egress.state is LinkState.DONE


def test_refused_ends_the_link() -> None:
    ingress, egress = _pair()
    _deliver(ingress, egress, Open(target=RouteTarget(name="x")))
    refusal = Refused(code=LinkReason.UNKNOWN_ROUTE, reason="no route")
    assert _deliver(egress, ingress, refusal) == refusal
    assert ingress.state is egress.state is LinkState.CLOSED
    with pytest.raises(LocalProtocolError):
        ingress.send(Data(data=b"x"))


def test_data_before_opened_is_refused_both_ways() -> None:
    ingress, egress = _pair()
    with pytest.raises(LocalProtocolError, match="can't send DATA in state SEND_OPEN"):
        ingress.send(Data(data=b"x"))
    egress.receive_data(encode_frame(Data(data=b"early")))
    with pytest.raises(UnexpectedLinkFrame) as info:
        egress.next_event()
    assert info.value.state is LinkState.AWAIT_OPEN
    assert info.value.frame_type is FrameType.DATA
    assert egress.state is LinkState.ERROR
    with pytest.raises(UnexpectedLinkFrame):  # the same error again
        egress.next_event()


def test_ingress_cannot_answer_and_egress_cannot_open() -> None:
    ingress, egress = _pair()
    with pytest.raises(LocalProtocolError):
        ingress.send(Opened())
    with pytest.raises(LocalProtocolError):
        egress.send(Open(target=RouteTarget(name="x")))
    ingress.send(Open(target=RouteTarget(name="x")))
    with pytest.raises(LocalProtocolError):
        ingress.send(Open(target=RouteTarget(name="x")))
    ingress.receive_data(encode_frame(Open(target=RouteTarget(name="x"))))
    with pytest.raises(UnexpectedLinkFrame):
        ingress.next_event()


@pytest.mark.parametrize("event", [Data(data=b"x"), Eof()], ids=_ids)
def test_nothing_after_eof(event: LinkEvent) -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    _deliver(ingress, egress, Eof())
    with pytest.raises(LocalProtocolError, match="after EOF"):
        ingress.send(event)
    egress.receive_data(encode_frame(event))
    with pytest.raises(UnexpectedLinkFrame, match="after EOF"):
        egress.next_event()


@given(payload=st.binary(min_size=1, max_size=4096))
@settings(max_examples=60)
def test_data_header_in_place_makes_the_same_frame(payload: bytes) -> None:
    # A DATA frame assembled in place (header written in front of the payload) is the
    # very frame send() makes, and the receiver sees the same event.
    ingress, egress = _pair()
    _open(ingress, egress)
    header = ingress.send_data_header(len(payload))
    assert len(header) == FRAME_HEADER_SIZE
    assert header + payload == encode_frame(Data(data=payload))
    egress.receive_data(header + payload)
    assert egress.next_event() == Data(data=payload)


def test_data_header_obeys_the_state_machine() -> None:
    ingress, egress = _pair()
    with pytest.raises(LocalProtocolError, match="can't send DATA in state SEND_OPEN"):
        ingress.send_data_header(1)
    _open(ingress, egress)
    for bad in (0, MAX_FRAME_PAYLOAD + 1):
        with pytest.raises(ValueError, match="DATA carries"):
            ingress.send_data_header(bad)
    assert ingress.state is LinkState.OPEN  # a refused length changes nothing
    ingress.send_data_header(MAX_FRAME_PAYLOAD)
    _deliver(ingress, egress, Eof())
    with pytest.raises(LocalProtocolError, match="after EOF"):
        ingress.send_data_header(1)
    # The egress may still send while the ingress's direction is finished.
    egress.send_data_header(1)


def _done(version: int) -> tuple[LinkConnection, LinkConnection]:
    ingress, egress = _pair()
    opening = Open(target=RouteTarget(name="web"), version=version)
    assert _deliver(ingress, egress, opening) == opening
    assert _deliver(egress, ingress, Opened(version=version)) == Opened(version=version)
    _deliver(ingress, egress, Eof())
    _deliver(egress, ingress, Eof())
    assert ingress.state is egress.state is LinkState.DONE
    assert ingress.version == egress.version == version
    return ingress, egress


def test_ready_ends_a_version_3_link_for_the_next_open() -> None:
    ingress, egress = _done(REUSE_LINK_VERSION)
    assert encode_frame(Ready()) == b"\x30\x00\x00\x00\x00"
    assert _deliver(egress, ingress, Ready()) == Ready()
    assert ingress.state is egress.state is LinkState.CLOSED
    assert ingress.buffered == 0
    # The same stream then carries another OPEN, under new machines.
    _open(*_pair())


@pytest.mark.parametrize("version", [LINK_VERSION, DATAGRAM_LINK_VERSION])
def test_ready_is_refused_before_version_3(version: int) -> None:
    ingress, egress = _done(version)
    with pytest.raises(LocalProtocolError, match="can't send READY"):
        egress.send(Ready())
    ingress.receive_data(encode_frame(Ready()))
    with pytest.raises(UnexpectedLinkFrame, match="READY"):
        ingress.next_event()


def test_ready_only_from_the_egress_and_only_after_both_eofs() -> None:
    ingress, egress = _pair()
    opening = Open(target=RouteTarget(name="web"), version=REUSE_LINK_VERSION)
    _deliver(ingress, egress, opening)
    _deliver(egress, ingress, Opened(version=REUSE_LINK_VERSION))
    with pytest.raises(LocalProtocolError, match="READY"):
        egress.send(Ready())  # both directions still open
    _deliver(ingress, egress, Eof())
    with pytest.raises(LocalProtocolError, match="READY"):
        egress.send(Ready())  # the egress has not sent its EOF
    _deliver(egress, ingress, Eof())
    with pytest.raises(LocalProtocolError, match="READY"):
        ingress.send(Ready())  # never from the ingress
    egress.receive_data(encode_frame(Ready()))
    with pytest.raises(UnexpectedLinkFrame):
        egress.next_event()


def test_ready_carries_no_payload() -> None:
    with pytest.raises(MalformedLinkFrame, match="READY carries no payload"):
        decode_frame(b"\x30\x00\x00\x00\x01x")
    assert open_version(RouteTarget(name="web"), reuse=True) == REUSE_LINK_VERSION
    assert open_version(RouteTarget(name="web", datagram=True), reuse=True) == (
        DATAGRAM_LINK_VERSION
    )


def test_error_closes_from_any_live_state() -> None:
    for prepare in (lambda i, e: None, _open):
        ingress, egress = _pair()
        prepare(ingress, egress)
        error = Error(code=LinkReason.CLIENT_RESET, reason="rst")
        assert _deliver(ingress, egress, error) == error
        assert ingress.state is egress.state is LinkState.CLOSED
        with pytest.raises(LocalProtocolError):
            egress.send(Data(data=b"x"))


def test_error_may_follow_a_protocol_violation() -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    egress.receive_data(encode_frame(Opened()))
    with pytest.raises(UnexpectedLinkFrame):
        egress.next_event()
    frame = egress.send(Error(code=LinkReason.PROTOCOL_ERROR, reason="bad"))
    assert decode_frame(frame) == Error(code=LinkReason.PROTOCOL_ERROR, reason="bad")
    assert egress.state is LinkState.CLOSED


def test_refused_may_answer_an_unsupported_version() -> None:
    egress = LinkConnection(LinkRole.EGRESS)
    frame = bytearray(encode_frame(Open(target=RouteTarget(name="web"))))
    frame[5] = 4  # not a version this module speaks
    egress.receive_data(bytes(frame))
    with pytest.raises(UnsupportedLinkVersion):
        egress.next_event()
    answer = egress.send(Refused(code=LinkReason.UNSUPPORTED_VERSION, reason="supported: 1, 2, 3"))
    ingress = LinkConnection(LinkRole.INGRESS)
    ingress.send(Open(target=RouteTarget(name="web")))
    ingress.receive_data(answer)
    event = ingress.next_event()
    assert isinstance(event, Refused)
    assert event.code is LinkReason.UNSUPPORTED_VERSION


def test_ingress_cannot_refuse_after_a_violation() -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    ingress.receive_data(encode_frame(Opened()))
    with pytest.raises(UnexpectedLinkFrame):
        ingress.next_event()
    with pytest.raises(LocalProtocolError):
        ingress.send(Refused(code=1))


def test_reattest_round_trip_and_rules() -> None:
    ingress, egress = _pair()
    with pytest.raises(LocalProtocolError):
        ingress.send(Reattest(nonce=NONCE))
    _open(ingress, egress)
    assert _deliver(ingress, egress, Reattest(nonce=NONCE)) == Reattest(nonce=NONCE)
    assert ingress.pending_reattest == NONCE
    assert egress.peer_reattest == NONCE
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        ingress.send(Reattest(nonce=NONCE))
    with pytest.raises(LocalProtocolError, match="nonce does not match"):
        egress.send(EvidenceFrame(nonce=bytes(32), media_type="a/b", evidence=b""))
    # After our EOF, control frames still flow.
    _deliver(egress, ingress, Eof())
    answer = EvidenceFrame(nonce=NONCE, media_type="a/b", evidence=b"ev")
    assert _deliver(egress, ingress, answer) == answer
    assert ingress.pending_reattest is None
    assert egress.peer_reattest is None
    with pytest.raises(LocalProtocolError, match="no REATTEST is outstanding"):
        egress.send(answer)


def test_unrequested_or_mismatched_evidence_is_refused() -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    ingress.receive_data(encode_frame(EvidenceFrame(nonce=NONCE, media_type="a/b", evidence=b"")))
    with pytest.raises(UnexpectedLinkFrame, match="no REATTEST"):
        ingress.next_event()
    ingress, egress = _pair()
    _open(ingress, egress)
    _deliver(ingress, egress, Reattest(nonce=NONCE))
    ingress.receive_data(
        encode_frame(EvidenceFrame(nonce=bytes(32), media_type="a/b", evidence=b""))
    )
    with pytest.raises(UnexpectedLinkFrame, match="nonce does not match"):
        ingress.next_event()


def test_peer_cannot_stack_reattest_requests() -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    _deliver(ingress, egress, Reattest(nonce=NONCE))
    egress.receive_data(encode_frame(Reattest(nonce=NONCE)))
    with pytest.raises(UnexpectedLinkFrame, match="already outstanding"):
        egress.next_event()


def test_only_a_peer_error_after_done_then_nothing() -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    _deliver(ingress, egress, Eof())
    _deliver(egress, ingress, Eof())
    assert _state(ingress) is LinkState.DONE
    with pytest.raises(LocalProtocolError):
        ingress.send(Error(code=1))
    with pytest.raises(LocalProtocolError):
        ingress.send(Data(data=b"late"))
    # The peer may still report that it could not deliver our last bytes (its ERROR may
    # also have crossed our EOF): the tunnel then ends as failed.
    ingress.receive_data(encode_frame(Error(code=1)))
    assert isinstance(ingress.next_event(), Error)
    assert _state(ingress) is LinkState.CLOSED
    ingress.receive_data(encode_frame(Error(code=1)))
    with pytest.raises(UnexpectedLinkFrame):
        ingress.next_event()
    # Anything but ERROR after DONE is a protocol error.
    ingress, egress = _pair()
    _open(ingress, egress)
    _deliver(ingress, egress, Eof())
    _deliver(egress, ingress, Eof())
    ingress.receive_data(encode_frame(Data(data=b"late")))
    with pytest.raises(UnexpectedLinkFrame):
        ingress.next_event()


def test_stream_end_between_frames_and_inside_one() -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    egress.receive_data(b"")
    assert isinstance(egress.next_event(), LinkClosed)
    assert egress.state is LinkState.ERROR  # abortive: no EOF both ways
    with pytest.raises(LocalProtocolError):
        egress.receive_data(b"late")
    ingress, egress = _pair()
    _open(ingress, egress)
    egress.receive_data(encode_frame(Data(data=b"abc"))[:6])
    assert egress.next_event() is NEED_DATA
    egress.receive_data(b"")
    with pytest.raises(LinkTruncated) as info:
        egress.next_event()
    assert info.value.buffered == 6


def test_machine_refuses_oversized_frames_before_buffering() -> None:
    egress = LinkConnection(LinkRole.EGRESS, max_frame_payload=16)
    egress.receive_data(struct.pack(">BI", FrameType.DATA, 17))
    with pytest.raises(LinkFrameTooLarge):
        egress.next_event()


def test_many_frames_in_one_chunk_and_byte_by_byte() -> None:
    ingress, egress = _pair()
    _open(ingress, egress)
    blob = b"".join(ingress.send(Data(data=bytes([i]) * (i + 1))) for i in range(5))
    egress.receive_data(blob)
    got = [egress.next_event() for _ in range(5)]
    assert got == [Data(data=bytes([i]) * (i + 1)) for i in range(5)]
    assert egress.next_event() is NEED_DATA
    for byte in ingress.send(Data(data=b"zz")):
        assert egress.next_event() is NEED_DATA
        egress.receive_data(bytes([byte]))
    assert egress.next_event() == Data(data=b"zz")


@settings(max_examples=100)
@given(
    st.lists(st.integers(1, 70000), min_size=1, max_size=8),
    st.lists(st.integers(1, 150000), min_size=1, max_size=8),
    st.booleans(),
)
def test_data_frames_survive_any_chunking(
    sizes: list[int], cuts: list[int], read_between: bool
) -> None:
    # A relay hands over whatever one TLS read brought: whole frames, several frames,
    # a frame's end and the next one's start.  Payloads come out whole and in order,
    # whether or not events are pulled between chunks.
    ingress, egress = _pair()
    _open(ingress, egress)
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    wire = b"".join(ingress.send(Data(data=p)) for p in payloads) + ingress.send(Eof())
    got: list[LinkEvent] = []

    def pull() -> None:
        while (event := egress.next_event()) is not NEED_DATA:
            assert isinstance(event, (Data, Eof))
            got.append(event)

    position, turn = 0, 0
    while position < len(wire):
        step = cuts[turn % len(cuts)]
        egress.receive_data(wire[position : position + step])
        position += step
        turn += 1
        if read_between:
            pull()
    pull()
    assert got == [*(Data(data=p) for p in payloads), Eof()]
    assert "buffered=0" in repr(egress)


# --------------------------------------------------------------------------- values


def test_value_types_eq_ne_hash_repr() -> None:
    a1 = AddressTarget(host="h", port=1)
    a2 = AddressTarget(host="h", port=1)
    assert a1 == a2
    assert hash(a1) == hash(a2)
    assert a1 != AddressTarget(host="h", port=2)
    assert a1 != object()
    assert str(a1) == "h:1"
    assert str(AddressTarget(host="::1", port=5)) == "[::1]:5"
    assert str(RouteTarget(name="web")) == "route:web"
    assert repr(a1) == "AddressTarget(host='h', port=1, datagram=False)"
    data = Data(data=b"secret-bytes")
    assert repr(data) == "Data(<12 bytes>)"
    assert data == Data(data=b"secret-bytes")
    assert data != Data(data=b"other")
    assert hash(data) == hash(Data(data=b"secret-bytes"))
    ev = EvidenceFrame(nonce=NONCE, media_type="a/b", evidence=b"xyz")
    assert "3 bytes" in repr(ev)
    assert "xyz" not in repr(ev)
    assert Eof() == Eof()
    other: object = Opened()
    assert Eof() != other
    assert Open(target=RouteTarget(name="x")).version == LINK_VERSION
    conn = LinkConnection(LinkRole.EGRESS)
    assert "role=egress" in repr(conn)
    assert "AWAIT_OPEN" in repr(conn)


def test_errors_are_remote_protocol_errors() -> None:
    for cls in (MalformedLinkFrame, UnexpectedLinkFrame, LinkTruncated, UnsupportedLinkVersion):
        assert issubclass(cls, RemoteProtocolError)
    err = MalformedLinkFrame("bad", frame_type=0x10, offset=5)
    assert str(err) == "DATA at offset 5: bad"
    assert err.frame_type == 0x10
    assert err.offset == 5
    assert str(MalformedLinkFrame("x", frame_type=0x99)) == "frame type 0x99: x"


def test_safe_reason_always_builds_a_valid_frame() -> None:
    nasty = "line\nbreak\x00" + "é" * 2000
    reason = safe_reason(nasty)
    assert "\n" not in reason
    assert len(reason.encode()) <= MAX_REASON_BYTES
    error = Error(code=LinkReason.INTERNAL_ERROR, reason=reason)
    assert decode_frame(encode_frame(error)) == error


@settings(max_examples=200)
@given(st.text(max_size=3000))
def test_safe_reason_property(text: str) -> None:
    Refused(code=1, reason=safe_reason(text))
