"""Tests for the sans-I/O attestation exchange (ratls._exchange)."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import (
    LocalProtocolError,
    NonceMismatch,
    PolicyViolation,
    RatlsError,
    RemoteProtocolError,
)
from ratls._exchange import (
    BINDER_LENGTH,
    DEFAULT_MEDIA_TYPE,
    MAX_EXCHANGE_MESSAGE_SIZE,
    MAX_MEDIA_TYPE_LENGTH,
    MAX_REASON_LENGTH,
    NEED_DATA,
    PAUSED,
    AttestationConfig,
    AttestationExchange,
    AttestationRefused,
    Evidence,
    ExchangeEvent,
    ExchangeMessageTooLarge,
    ExchangeRole,
    ExchangeState,
    ExchangeTruncated,
    LocalAttester,
    MalformedExchangeMessage,
    NoEvidence,
    PeerVerifier,
    UnexpectedExchangeMessage,
    UnsupportedExchangeVersion,
    Verdict,
    VerdictResult,
    appraise_peer_evidence,
    compute_binder,
    decode_message,
    encode_message,
    local_evidence_event,
)
from ratls._tls_context import generate_ephemeral_identity

SERVER = ExchangeRole.SERVER
CLIENT = ExchangeRole.CLIENT

EVIDENCE = Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"\x01\x02\x03")


def frame(body: object) -> bytes:
    payload = cbor2.dumps(body, canonical=True)
    return struct.pack(">I", len(payload)) + payload


def state_of(machine: AttestationExchange) -> ExchangeState:
    # A function call, so that mypy does not narrow the state between two asserts.
    return machine.state


def payload_of(event: ExchangeEvent) -> bytes:
    return encode_message(event)[4:]


class Attester:
    def __init__(self) -> None:
        self.binders: list[bytes] = []

    def evidence(self, binder: bytes) -> bytes:
        self.binders.append(binder)
        return b"ev:" + binder


class Verifier:
    def verify(self, evidence: bytes, binder: bytes) -> object:
        if evidence != b"ev:" + binder:
            raise NonceMismatch("test.binder", expected=binder, actual=evidence)
        return ("verified", binder)


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    "event",
    [EVIDENCE, NoEvidence(), Verdict.ok(), Verdict.refused("measurement not allowed")],
)
def test_round_trip(event: ExchangeEvent) -> None:
    data = encode_message(event)
    (size,) = struct.unpack(">I", data[:4])
    assert size == len(data) - 4
    assert decode_message(data[4:]) == event
    assert encode_message(decode_message(data[4:])) == data


def test_none_message_golden_bytes() -> None:
    # {"type": "none", "version": 1} in deterministic CBOR: shorter key first.
    assert encode_message(NoEvidence()).hex() == (
        "00000014" + "a2" + "6474797065" + "646e6f6e65" + "6776657273696f6e" + "01"
    )


@pytest.mark.parametrize("event", [EVIDENCE, NoEvidence(), Verdict.ok(), Verdict.refused("x")])
def test_every_truncation_refused(event: ExchangeEvent) -> None:
    payload = payload_of(event)
    for cut in range(len(payload)):
        with pytest.raises(MalformedExchangeMessage):
            decode_message(payload[:cut])


@pytest.mark.parametrize("event", [EVIDENCE, NoEvidence(), Verdict.ok(), Verdict.refused("x")])
def test_trailing_byte_refused(event: ExchangeEvent) -> None:
    with pytest.raises(MalformedExchangeMessage):
        decode_message(payload_of(event) + b"\x00")


@pytest.mark.parametrize(
    "body",
    [
        [1, "none"],  # not a map
        {"version": 1},  # no type
        {"version": 1, "type": 5},  # type not text
        {"version": 1, "type": "hello"},  # unknown type
        {"type": "none"},  # no version
        {"version": "1", "type": "none"},  # version not an integer
        {"version": True, "type": "none"},  # a boolean is not a version
        {"version": 1, "type": "none", "extra": 0},  # unknown key
        {"version": 1, "type": "evidence", "media": "a/b"},  # no evidence
        {"version": 1, "type": "evidence", "media": "a/b", "evidence": "text"},
        {"version": 1, "type": "evidence", "media": "", "evidence": b""},
        {"version": 1, "type": "evidence", "media": 7, "evidence": b""},
        {"version": 1, "type": "evidence", "media": "a" * 256, "evidence": b""},
        {"version": 1, "type": "verdict"},  # no result
        {"version": 1, "type": "verdict", "result": "maybe"},
        {"version": 1, "type": "verdict", "result": "ok", "reason": "why"},
        {"version": 1, "type": "verdict", "result": "refused"},  # no reason
        {"version": 1, "type": "verdict", "result": "refused", "reason": "x" * 1025},
        {"version": 1, "type": "verdict", "result": "refused", "reason": b"bytes"},
    ],
)
def test_malformed_shapes(body: object) -> None:
    with pytest.raises(MalformedExchangeMessage):
        decode_message(cbor2.dumps(body, canonical=True))


def test_not_cbor() -> None:
    with pytest.raises(MalformedExchangeMessage):
        decode_message(b"\xff\xff")


def test_unsupported_version() -> None:
    with pytest.raises(UnsupportedExchangeVersion) as info:
        decode_message(cbor2.dumps({"version": 2, "type": "none"}))
    assert info.value.version == 2


def test_non_deterministic_encoding_refused() -> None:
    # Same content, keys in the wrong order.
    unsorted = cbor2.dumps({"version": 1, "type": "none"})
    assert cbor2.loads(unsorted) == {"version": 1, "type": "none"}
    with pytest.raises(MalformedExchangeMessage, match="deterministic"):
        decode_message(unsorted)
    # Non-minimal integer for the version (0x18 0x01 instead of 0x01).
    minimal = payload_of(NoEvidence())
    assert minimal.endswith(b"\x01")
    with pytest.raises(MalformedExchangeMessage):
        decode_message(minimal[:-1] + b"\x18\x01")


def test_tagged_message_refused() -> None:
    with pytest.raises(MalformedExchangeMessage):
        decode_message(cbor2.dumps(cbor2.CBORTag(55799, {"version": 1, "type": "none"})))


def test_encode_limits() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(Evidence(media_type="", evidence=b""))
    with pytest.raises(LocalProtocolError):
        encode_message(Evidence(media_type="a" * (MAX_MEDIA_TYPE_LENGTH + 1), evidence=b""))
    with pytest.raises(LocalProtocolError):
        encode_message(Evidence(media_type="a/b", evidence=bytes(MAX_EXCHANGE_MESSAGE_SIZE)))


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_only_ratls_errors(data: bytes) -> None:
    with contextlib.suppress(RatlsError):
        decode_message(data)


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 5), children, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(
    _cbor_values,
    st.dictionaries(
        st.sampled_from(["type", "version", "media", "evidence", "result", "reason"]), _cbor_values
    ),
)
def test_decode_arbitrary_cbor_only_ratls_errors(value: object, fields: dict[str, object]) -> None:
    for candidate in (value, fields):
        try:
            event = decode_message(cbor2.dumps(candidate, canonical=True))
        except RatlsError:
            continue
        assert encode_message(event)[4:] == cbor2.dumps(candidate, canonical=True)


# --------------------------------------------------------------------------- values


def test_event_eq_ne_hash_repr() -> None:
    same = Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"\x01\x02\x03")
    assert same == EVIDENCE
    assert hash(same) == hash(EVIDENCE)
    assert Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"\x01") != EVIDENCE
    assert Evidence(media_type="a/b", evidence=b"\x01\x02\x03") != EVIDENCE
    assert object() != EVIDENCE
    assert repr(EVIDENCE) == f"Evidence(media_type={DEFAULT_MEDIA_TYPE!r}, evidence=<3 bytes>)"
    assert NoEvidence() == NoEvidence()
    assert hash(NoEvidence()) == hash(NoEvidence())
    assert NoEvidence() != object()
    assert repr(NoEvidence()) == "NoEvidence()"
    assert Verdict.ok() == Verdict(result=VerdictResult.OK)
    assert hash(Verdict.ok()) == hash(Verdict(result=VerdictResult.OK))
    assert Verdict.ok() != Verdict.refused("x")
    assert Verdict.refused("x") != Verdict.refused("y")
    assert Verdict.ok() != object()
    assert repr(Verdict.refused("x")) == (
        "Verdict(result=<VerdictResult.REFUSED: 'refused'>, reason='x')"
    )


def test_verdict_validation() -> None:
    with pytest.raises(ValueError, match="no reason"):
        Verdict(result=VerdictResult.OK, reason="x")
    with pytest.raises(ValueError, match="longer"):
        Verdict(result=VerdictResult.REFUSED, reason="x" * (MAX_REASON_LENGTH + 1))
    assert Verdict.refused("").reason == "refused"
    assert len(Verdict.refused("y" * 5000).reason) == MAX_REASON_LENGTH


def test_config_eq_ne_hash_repr() -> None:
    attester, verifier = Attester(), Verifier()
    config = AttestationConfig(attester=attester, verifier=verifier)
    same = AttestationConfig(attester=attester, verifier=verifier)
    assert config == same
    assert hash(config) == hash(same)
    assert config != AttestationConfig(attester=attester)
    assert config != AttestationConfig(attester=attester, verifier=verifier, run_in_thread=False)
    assert config != object()
    assert repr(config).startswith("AttestationConfig(attester=")
    assert "media_type='application/vnd.ratls.snp-vtpm+cbor'" in repr(config)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="media_type"):
        AttestationConfig(media_type="")
    with pytest.raises(TypeError):
        AttestationConfig(accepted_media_types={"a/b"})  # type: ignore[arg-type]


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(Attester(), LocalAttester)
    assert isinstance(Verifier(), PeerVerifier)
    assert not isinstance(object(), LocalAttester)
    assert not isinstance(object(), PeerVerifier)


def test_error_attributes() -> None:
    big = ExchangeMessageTooLarge(10, 5)
    assert (big.size, big.limit) == (10, 5)
    assert isinstance(big, RemoteProtocolError)
    unexpected = UnexpectedExchangeMessage(ExchangeState.AWAIT_EVIDENCE, "verdict")
    assert unexpected.state is ExchangeState.AWAIT_EVIDENCE
    assert unexpected.message_type == "verdict"
    truncated = ExchangeTruncated(ExchangeState.AWAIT_VERDICT, 3)
    assert (truncated.state, truncated.buffered) == (ExchangeState.AWAIT_VERDICT, 3)
    refused = AttestationRefused("because")
    assert refused.reason == "because"
    assert "because" in str(refused)


# --------------------------------------------------------------------------- binder


def test_compute_binder() -> None:
    _, cert = generate_ephemeral_identity()
    exporter = bytes(range(32))
    binder = compute_binder(cert, exporter)
    assert len(binder) == BINDER_LENGTH == 64
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert binder == hashlib.sha256(spki).digest() + exporter
    _, other = generate_ephemeral_identity()
    assert compute_binder(other, exporter) != binder
    with pytest.raises(ValueError, match="32"):
        compute_binder(cert, exporter[:31])


def test_local_evidence_event() -> None:
    assert local_evidence_event(AttestationConfig(), b"b" * 64) == NoEvidence()
    attester = Attester()
    event = local_evidence_event(AttestationConfig(attester=attester, media_type="x/y"), b"b" * 64)
    assert event == Evidence(media_type="x/y", evidence=b"ev:" + b"b" * 64)
    assert attester.binders == [b"b" * 64]


def test_appraise_peer_evidence() -> None:
    binder = b"\x07" * 64
    good = Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"ev:" + binder)
    # No verifier: nothing is required and nothing is looked at.
    assert appraise_peer_evidence(AttestationConfig(), NoEvidence(), None) is None
    assert appraise_peer_evidence(AttestationConfig(), good, binder) is None
    config = AttestationConfig(verifier=Verifier())
    assert appraise_peer_evidence(config, good, binder) == ("verified", binder)
    with pytest.raises(PolicyViolation) as info:
        appraise_peer_evidence(config, NoEvidence(), binder)
    assert info.value.claim == "exchange.evidence"
    with pytest.raises(PolicyViolation) as info:
        appraise_peer_evidence(config, Evidence(media_type="x/y", evidence=b""), binder)
    assert info.value.claim == "exchange.media"
    with pytest.raises(PolicyViolation) as info:
        appraise_peer_evidence(config, good, None)
    assert info.value.claim == "tls.peer_certificate"
    with pytest.raises(NonceMismatch):
        appraise_peer_evidence(config, good, b"\x08" * 64)


# --------------------------------------------------------------------------- machine


def run_exchange(chunk: int) -> tuple[AttestationExchange, AttestationExchange]:
    """Drive both roles through a full successful exchange, delivering in chunks."""
    server, client = AttestationExchange(SERVER), AttestationExchange(CLIENT)

    def deliver(data: bytes, to: AttestationExchange) -> list[object]:
        events: list[object] = []
        for i in range(0, len(data), chunk):
            to.receive_data(data[i : i + chunk])
            while (event := to.next_event()) not in (NEED_DATA, PAUSED):
                events.append(event)
        return events

    assert client.next_event() is NEED_DATA
    assert server.next_event() is PAUSED
    assert deliver(server.send(EVIDENCE), client) == [EVIDENCE]
    assert state_of(client) is ExchangeState.SEND_EVIDENCE
    flight2 = client.send(NoEvidence()) + client.send(Verdict.ok())
    assert state_of(client) is ExchangeState.AWAIT_VERDICT
    assert deliver(flight2, server) == [NoEvidence(), Verdict.ok()]
    assert state_of(server) is ExchangeState.SEND_VERDICT
    assert deliver(server.send(Verdict.ok()) + b"app data", client) == [Verdict.ok()]
    return server, client


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_full_exchange(chunk: int) -> None:
    server, client = run_exchange(chunk)
    assert state_of(server) is client.state is ExchangeState.DONE
    assert client.trailing_data == b"app data"
    assert server.trailing_data == b""
    assert client.next_event() is PAUSED
    assert server.role is SERVER
    assert "state=DONE" in repr(server)


def test_trailing_data_before_done() -> None:
    with pytest.raises(LocalProtocolError):
        _ = AttestationExchange(CLIENT).trailing_data


def test_oversize_refused_from_header_alone() -> None:
    client = AttestationExchange(CLIENT)
    client.receive_data(struct.pack(">I", MAX_EXCHANGE_MESSAGE_SIZE + 1))
    with pytest.raises(ExchangeMessageTooLarge) as info:
        client.next_event()
    assert info.value.size == MAX_EXCHANGE_MESSAGE_SIZE + 1
    assert state_of(client) is ExchangeState.ERROR


def test_custom_limit() -> None:
    client = AttestationExchange(CLIENT, max_message_size=10)
    client.receive_data(encode_message(EVIDENCE))
    with pytest.raises(ExchangeMessageTooLarge):
        client.next_event()


def test_largest_message_accepted() -> None:
    overhead = len(encode_message(Evidence(media_type="a/b", evidence=bytes(1000)))) - 4 - 1000
    big = Evidence(media_type="a/b", evidence=bytes(MAX_EXCHANGE_MESSAGE_SIZE - overhead - 2))
    data = encode_message(big)
    assert len(data) - 4 <= MAX_EXCHANGE_MESSAGE_SIZE
    client = AttestationExchange(CLIENT)
    client.receive_data(data)
    assert client.next_event() == big


def test_empty_frame_refused() -> None:
    client = AttestationExchange(CLIENT)
    client.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(MalformedExchangeMessage):
        client.next_event()


def test_error_is_sticky_and_refusal_still_possible() -> None:
    client = AttestationExchange(CLIENT)
    client.receive_data(frame({"version": 9, "type": "none"}))
    with pytest.raises(UnsupportedExchangeVersion) as first:
        client.next_event()
    with pytest.raises(UnsupportedExchangeVersion) as second:
        client.next_event()
    assert first.value is second.value
    assert state_of(client) is ExchangeState.ERROR
    data = client.send(Verdict.refused("bad version"))
    assert decode_message(data[4:]) == Verdict.refused("bad version")
    assert state_of(client) is ExchangeState.REFUSED


@pytest.mark.parametrize("cut", [0, 2, 4, 9])
def test_eof_mid_exchange(cut: int) -> None:
    client = AttestationExchange(CLIENT)
    client.receive_data(encode_message(EVIDENCE)[:cut])
    client.receive_data(b"")
    with pytest.raises(ExchangeTruncated) as info:
        client.next_event()
    assert info.value.buffered == cut
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"more")


def test_client_receiving_verdict_first_is_out_of_order() -> None:
    client = AttestationExchange(CLIENT)
    client.receive_data(encode_message(Verdict.ok()))
    with pytest.raises(UnexpectedExchangeMessage) as info:
        client.next_event()
    assert info.value.message_type == "verdict"
    assert info.value.state is ExchangeState.AWAIT_EVIDENCE


def test_server_receiving_second_evidence_is_out_of_order() -> None:
    server = AttestationExchange(SERVER)
    server.send(NoEvidence())
    server.receive_data(encode_message(EVIDENCE) + encode_message(NoEvidence()))
    assert server.next_event() == EVIDENCE
    with pytest.raises(UnexpectedExchangeMessage) as info:
        server.next_event()
    assert info.value.message_type == "none"


def test_server_ignores_bytes_until_its_turn() -> None:
    server = AttestationExchange(SERVER)
    server.receive_data(encode_message(EVIDENCE))
    assert server.next_event() is PAUSED
    server.send(NoEvidence())
    assert server.next_event() == EVIDENCE


@pytest.mark.parametrize("state", [ExchangeState.AWAIT_EVIDENCE, ExchangeState.AWAIT_VERDICT])
def test_peer_refusal_in_any_receiving_state(state: ExchangeState) -> None:
    machine = AttestationExchange(SERVER)
    machine.send(EVIDENCE)
    if state is ExchangeState.AWAIT_VERDICT:
        machine.receive_data(encode_message(NoEvidence()))
        assert machine.next_event() == NoEvidence()
    assert state_of(machine) is state
    machine.receive_data(encode_message(Verdict.refused("nope")))
    assert machine.next_event() == Verdict.refused("nope")
    assert state_of(machine) is ExchangeState.PEER_REFUSED
    assert machine.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        machine.send(Verdict.refused("too late"))


def test_refusal_in_terminal_state_refused() -> None:
    server, client = run_exchange(100)
    for machine in (server, client):
        with pytest.raises(LocalProtocolError):
            machine.send(Verdict.refused("x"))


_ALL_EVENTS: list[ExchangeEvent] = [EVIDENCE, NoEvidence(), Verdict.ok(), Verdict.refused("r")]
_LEGAL_SENDS = {
    (SERVER, ExchangeState.SEND_EVIDENCE, "evidence"): ExchangeState.AWAIT_EVIDENCE,
    (SERVER, ExchangeState.SEND_VERDICT, "verdict"): ExchangeState.DONE,
    (CLIENT, ExchangeState.SEND_EVIDENCE, "evidence"): ExchangeState.SEND_VERDICT,
    (CLIENT, ExchangeState.SEND_VERDICT, "verdict"): ExchangeState.AWAIT_VERDICT,
}


@settings(max_examples=200)
@given(
    st.sampled_from(list(ExchangeRole)),
    st.sampled_from(list(ExchangeState)),
    st.sampled_from(_ALL_EVENTS),
)
def test_send_table_every_state(
    role: ExchangeRole, state: ExchangeState, event: ExchangeEvent
) -> None:
    machine = AttestationExchange(role)
    machine._state = state  # white-box: visit every (state, input) pair
    terminal = state in (ExchangeState.DONE, ExchangeState.REFUSED, ExchangeState.PEER_REFUSED)
    if isinstance(event, Verdict) and event.result is VerdictResult.REFUSED:
        expected: ExchangeState | None = None if terminal else ExchangeState.REFUSED
    else:
        kind = "verdict" if isinstance(event, Verdict) else "evidence"
        expected = _LEGAL_SENDS.get((role, state, kind))
    if expected is None:
        with pytest.raises(LocalProtocolError):
            machine.send(event)
        assert state_of(machine) is state
    else:
        assert decode_message(machine.send(event)[4:]) == event
        assert state_of(machine) is expected


@settings(max_examples=200)
@given(
    st.sampled_from(list(ExchangeRole)),
    st.sampled_from(list(ExchangeState)),
    st.lists(st.binary(min_size=1, max_size=40), max_size=5),
    st.booleans(),
)
def test_arbitrary_bytes_only_ratls_errors(
    role: ExchangeRole, state: ExchangeState, chunks: list[bytes], eof: bool
) -> None:
    machine = AttestationExchange(role)
    machine._state = state
    for chunk in [*chunks, *([b""] if eof else [])]:
        machine.receive_data(chunk)
        try:
            while machine.next_event() not in (NEED_DATA, PAUSED):
                pass
        except RatlsError:
            assert state_of(machine) is ExchangeState.ERROR
            return


@settings(max_examples=100)
@given(st.sampled_from(_ALL_EVENTS), st.binary(max_size=8), st.integers(0, 3))
def test_valid_frames_with_noise(event: ExchangeEvent, noise: bytes, where: int) -> None:
    # A valid message followed by garbage: the message is delivered, the garbage is
    # then either incomplete (NEED_DATA) or refused, never anything else.
    machine = AttestationExchange(CLIENT)
    machine.receive_data(encode_message(event) + noise)
    try:
        first = machine.next_event()
    except UnexpectedExchangeMessage:
        assert isinstance(event, Verdict)
        assert event.result is VerdictResult.OK
        return
    assert first == event
    with contextlib.suppress(RatlsError):
        machine.next_event()


@pytest.mark.parametrize("event", _ALL_EVENTS)
def test_every_framed_truncation_needs_data_then_fails_at_eof(event: ExchangeEvent) -> None:
    data = encode_message(event)
    for cut in range(len(data)):
        machine = AttestationExchange(SERVER)
        machine.send(EVIDENCE)
        if cut:  # receive_data(b"") would mean end of stream
            machine.receive_data(data[:cut])
        assert machine.next_event() is NEED_DATA
        machine.receive_data(b"")
        with pytest.raises(ExchangeTruncated):
            machine.next_event()
