"""Tests for the sans-I/O attestation exchange (ratls._exchange)."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls import _exchange
from ratls._errors import (
    AttesterError,
    BindingMismatch,
    LocalProtocolError,
    NonceMismatch,
    PolicyViolation,
    RatlsError,
    RemoteProtocolError,
)
from ratls._exchange import (
    BINDER_LENGTH,
    DEFAULT_MEDIA_TYPE,
    MAX_CHALLENGE_SIZE,
    MAX_EXCHANGE_MESSAGE_SIZE,
    MAX_MEDIA_TYPE_LENGTH,
    MAX_REASON_LENGTH,
    MAX_RESPONSE_SIZE,
    NEED_DATA,
    PAUSED,
    ActivatingVerifier,
    ActivationState,
    AttestationConfig,
    AttestationExchange,
    AttestationRefused,
    Challenge,
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
    RespondingAttester,
    Response,
    UnexpectedExchangeMessage,
    UnsupportedExchangeVersion,
    Verdict,
    VerdictResult,
    appraise_peer_evidence,
    compute_binder,
    decode_message,
    encode_message,
    local_evidence_event,
    local_response_event,
    peer_activation_challenge,
)
from ratls._tls_context import generate_ephemeral_identity

SERVER = ExchangeRole.SERVER
CLIENT = ExchangeRole.CLIENT

EVIDENCE = Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"\x01\x02\x03")
CHALLENGE = Challenge(challenge=b"\xc0" * 5)
RESPONSE = Response(response=b"\x5e" * 4)


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


class State:
    def __init__(self, nonce: bytes) -> None:
        self.nonce = nonce

    def challenge_bytes(self) -> bytes:
        return self.nonce


class ChallengingVerifier:
    """Challenges evidence (or not); the right answer is b"re:" + nonce."""

    def __init__(self, state: object = None) -> None:
        self.state = state if state is not None else State(b"nonce")
        self.asked: list[bytes] = []

    def activation_challenge(self, evidence: bytes) -> object | None:
        self.asked.append(evidence)
        return self.state

    def verify(
        self,
        evidence: bytes,
        binder: bytes,
        *,
        activation: object = None,
        response: bytes | None = None,
    ) -> object:
        if not isinstance(activation, State) or response != b"re:" + activation.nonce:
            raise BindingMismatch("test.activation", expected="re:nonce", actual=response)
        return ("activated", evidence, binder)


class RespondingAttesterDouble(Attester):
    def respond(self, challenge: bytes) -> bytes:
        return b"re:" + challenge


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    "event",
    [
        EVIDENCE,
        NoEvidence(),
        Verdict.ok(),
        Verdict.refused("measurement not allowed"),
        CHALLENGE,
        RESPONSE,
        Challenge(challenge=bytes(MAX_CHALLENGE_SIZE)),
        Response(response=bytes(MAX_RESPONSE_SIZE)),
    ],
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


def test_challenge_and_response_golden_bytes() -> None:
    # {"type": "challenge", "version": 1, "challenge": h'01'}: keys sorted by encoded
    # length then bytes, so "type" (4) < "version" (7) < "challenge" (9).
    assert encode_message(Challenge(challenge=b"\x01")).hex() == (
        "00000025a3"
        + "6474797065"
        + "696368616c6c656e6765"
        + "6776657273696f6e"
        + "01"
        + "696368616c6c656e6765"
        + "4101"
    )
    assert encode_message(Response(response=b"\x02")).hex() == (
        "00000023a3"
        + "6474797065"
        + "68726573706f6e7365"
        + "6776657273696f6e"
        + "01"
        + "68726573706f6e7365"
        + "4102"
    )


_CODEC_EVENTS = [
    EVIDENCE,
    NoEvidence(),
    Verdict.ok(),
    Verdict.refused("x"),
    CHALLENGE,
    RESPONSE,
]


@pytest.mark.parametrize("event", _CODEC_EVENTS)
def test_every_truncation_refused(event: ExchangeEvent) -> None:
    payload = payload_of(event)
    for cut in range(len(payload)):
        with pytest.raises(MalformedExchangeMessage):
            decode_message(payload[:cut])


@pytest.mark.parametrize("event", _CODEC_EVENTS)
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
        {"version": 1, "type": "challenge"},  # no challenge
        {"version": 1, "type": "challenge", "challenge": b""},  # empty
        {"version": 1, "type": "challenge", "challenge": "text"},
        {"version": 1, "type": "challenge", "challenge": bytes(MAX_CHALLENGE_SIZE + 1)},
        {"version": 1, "type": "challenge", "challenge": b"x", "response": b"y"},
        {"version": 1, "type": "response"},  # no response
        {"version": 1, "type": "response", "response": b""},  # empty
        {"version": 1, "type": "response", "response": 5},
        {"version": 1, "type": "response", "response": bytes(MAX_RESPONSE_SIZE + 1)},
        {"version": 1, "type": "response", "response": b"x", "reason": "y"},
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
        st.sampled_from(
            ["type", "version", "media", "evidence", "result", "reason", "challenge", "response"]
        ),
        _cbor_values,
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


def test_challenge_response_eq_ne_hash_repr() -> None:
    assert Challenge(challenge=b"\xc0" * 5) == CHALLENGE
    assert hash(Challenge(challenge=b"\xc0" * 5)) == hash(CHALLENGE)
    assert Challenge(challenge=b"\xc1") != CHALLENGE
    assert object() != CHALLENGE
    assert repr(CHALLENGE) == "Challenge(challenge=<5 bytes>)"
    assert Response(response=b"\x5e" * 4) == RESPONSE
    assert hash(Response(response=b"\x5e" * 4)) == hash(RESPONSE)
    assert Response(response=b"\x5f") != RESPONSE
    assert object() != RESPONSE
    assert repr(RESPONSE) == "Response(response=<4 bytes>)"  # the secret stays out
    assert payload_of(CHALLENGE) != payload_of(Response(response=CHALLENGE.challenge))


def test_challenge_response_validation() -> None:
    for bad in (b"", bytes(MAX_CHALLENGE_SIZE + 1)):
        with pytest.raises(ValueError, match="challenge"):
            Challenge(challenge=bad)
    for bad in (b"", bytes(MAX_RESPONSE_SIZE + 1)):
        with pytest.raises(ValueError, match="response"):
            Response(response=bad)
    with pytest.raises(TypeError):
        Challenge(challenge="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Response(response=bytearray(b"x"))  # type: ignore[arg-type]


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
    assert isinstance(ChallengingVerifier(), ActivatingVerifier)
    assert not isinstance(Verifier(), ActivatingVerifier)
    assert isinstance(RespondingAttesterDouble(), RespondingAttester)
    assert not isinstance(Attester(), RespondingAttester)
    assert isinstance(State(b"x"), ActivationState)
    assert not isinstance(object(), ActivationState)


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


def test_peer_activation_challenge() -> None:
    binder = b"\x07" * 64
    good = Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"ev:" + binder)
    # Nothing to challenge: no verifier, a verifier that never challenges, or one that
    # declines for this evidence.
    assert peer_activation_challenge(AttestationConfig(), good, binder) is None
    assert peer_activation_challenge(AttestationConfig(verifier=Verifier()), good, binder) is None
    declining = ChallengingVerifier()
    declining.state = None
    assert peer_activation_challenge(AttestationConfig(verifier=declining), good, binder) is None
    verifier = ChallengingVerifier(State(b"n" * 16))
    config = AttestationConfig(verifier=verifier)
    pending = peer_activation_challenge(config, good, binder)
    assert pending is not None
    state, message = pending
    assert state is verifier.state
    assert message == Challenge(challenge=b"n" * 16)
    assert verifier.asked == [b"ev:" + binder]
    # Evidence that will be refused anyway is not challenged.
    with pytest.raises(PolicyViolation) as info:
        peer_activation_challenge(config, NoEvidence(), binder)
    assert info.value.claim == "exchange.evidence"
    with pytest.raises(PolicyViolation) as info:
        peer_activation_challenge(config, Evidence(media_type="x/y", evidence=b"e"), binder)
    assert info.value.claim == "exchange.media"
    with pytest.raises(PolicyViolation) as info:
        peer_activation_challenge(config, good, None)
    assert info.value.claim == "tls.peer_certificate"
    assert verifier.asked == [b"ev:" + binder]


@pytest.mark.parametrize("state", [object(), State(b""), State(bytes(MAX_CHALLENGE_SIZE + 1))])
def test_unusable_activation_state(state: object) -> None:
    config = AttestationConfig(verifier=ChallengingVerifier(state))
    good = Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"e")
    with pytest.raises(LocalProtocolError):
        peer_activation_challenge(config, good, b"\x07" * 64)


def test_local_response_event() -> None:
    config = AttestationConfig(attester=RespondingAttesterDouble())
    assert local_response_event(config, CHALLENGE) == Response(response=b"re:" + b"\xc0" * 5)
    # An attester without respond(), or none at all, cannot answer.
    for cannot in (AttestationConfig(attester=Attester()), AttestationConfig()):
        with pytest.raises(AttesterError, match="cannot answer challenges"):
            local_response_event(cannot, CHALLENGE)

    class Bad(Attester):
        def __init__(self, answer: object) -> None:
            super().__init__()
            self.answer = answer

        def respond(self, challenge: bytes) -> object:
            return self.answer

    for answer in (b"", bytes(MAX_RESPONSE_SIZE + 1), "text"):
        with pytest.raises(AttesterError, match="answer"):
            local_response_event(AttestationConfig(attester=Bad(answer)), CHALLENGE)


def test_appraise_with_activation() -> None:
    binder = b"\x07" * 64
    good = Evidence(media_type=DEFAULT_MEDIA_TYPE, evidence=b"ev:" + binder)
    verifier = ChallengingVerifier(State(b"n"))
    config = AttestationConfig(verifier=verifier)
    right = Response(response=b"re:n")
    result = appraise_peer_evidence(config, good, binder, activation=verifier.state, response=right)
    assert result == ("activated", b"ev:" + binder, binder)
    with pytest.raises(BindingMismatch):
        appraise_peer_evidence(
            config, good, binder, activation=verifier.state, response=Response(response=b"re:m")
        )
    with pytest.raises(LocalProtocolError, match="together"):
        appraise_peer_evidence(config, good, binder, activation=verifier.state)
    with pytest.raises(LocalProtocolError, match="together"):
        appraise_peer_evidence(config, good, binder, response=right)
    # The usual checks come first.
    with pytest.raises(PolicyViolation):
        appraise_peer_evidence(config, good, None, activation=verifier.state, response=right)


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


_ALL_EVENTS: list[ExchangeEvent] = [
    EVIDENCE,
    NoEvidence(),
    Verdict.ok(),
    Verdict.refused("r"),
    CHALLENGE,
    RESPONSE,
]
_ES = ExchangeState
# The protocol, written out independently of the module's table:
# (role, state, message kind) -> next state, for sends and for receipts.
_LEGAL_SENDS = {
    (SERVER, _ES.SEND_EVIDENCE, "evidence"): _ES.AWAIT_EVIDENCE,
    (SERVER, _ES.SEND_RESPONSE, "response"): _ES.AWAIT_EVIDENCE_AFTER_RESPONSE,
    (SERVER, _ES.SEND_VERDICT, "challenge"): _ES.AWAIT_RESPONSE,
    (SERVER, _ES.SEND_VERDICT, "verdict"): _ES.DONE,
    (SERVER, _ES.SEND_VERDICT_AFTER_RESPONSE, "verdict"): _ES.DONE,
    (CLIENT, _ES.SEND_EVIDENCE, "challenge"): _ES.AWAIT_RESPONSE,
    (CLIENT, _ES.SEND_EVIDENCE, "evidence"): _ES.SEND_VERDICT,
    (CLIENT, _ES.SEND_EVIDENCE_AFTER_RESPONSE, "evidence"): _ES.SEND_VERDICT,
    (CLIENT, _ES.SEND_VERDICT, "verdict"): _ES.AWAIT_VERDICT,
    (CLIENT, _ES.SEND_RESPONSE, "response"): _ES.AWAIT_VERDICT_AFTER_RESPONSE,
}
_LEGAL_RECEIPTS = {
    (SERVER, _ES.AWAIT_EVIDENCE, "challenge"): _ES.SEND_RESPONSE,
    (SERVER, _ES.AWAIT_EVIDENCE, "evidence"): _ES.AWAIT_VERDICT,
    (SERVER, _ES.AWAIT_EVIDENCE_AFTER_RESPONSE, "evidence"): _ES.AWAIT_VERDICT,
    (SERVER, _ES.AWAIT_VERDICT, "verdict"): _ES.SEND_VERDICT,
    (SERVER, _ES.AWAIT_RESPONSE, "response"): _ES.SEND_VERDICT_AFTER_RESPONSE,
    (CLIENT, _ES.AWAIT_EVIDENCE, "evidence"): _ES.SEND_EVIDENCE,
    (CLIENT, _ES.AWAIT_RESPONSE, "response"): _ES.SEND_EVIDENCE_AFTER_RESPONSE,
    (CLIENT, _ES.AWAIT_VERDICT, "challenge"): _ES.SEND_RESPONSE,
    (CLIENT, _ES.AWAIT_VERDICT, "verdict"): _ES.DONE,
    (CLIENT, _ES.AWAIT_VERDICT_AFTER_RESPONSE, "verdict"): _ES.DONE,
}
_TERMINAL_STATES = (_ES.DONE, _ES.REFUSED, _ES.PEER_REFUSED)


def kind_of(event: ExchangeEvent) -> str:
    if isinstance(event, Evidence | NoEvidence):
        return "evidence"
    return {Verdict: "verdict", Challenge: "challenge", Response: "response"}[type(event)]


@settings(max_examples=200)
@given(
    st.sampled_from(list(ExchangeRole)),
    st.sampled_from(list(ExchangeState)),
    st.sampled_from(_ALL_EVENTS),
    st.booleans(),
)
def test_send_table_every_state(
    role: ExchangeRole, state: ExchangeState, event: ExchangeEvent, peer_sent_evidence: bool
) -> None:
    machine = AttestationExchange(role)
    machine._state = state  # white-box: visit every (state, input) pair
    machine._received_evidence = peer_sent_evidence
    terminal = state in _TERMINAL_STATES
    if isinstance(event, Verdict) and event.result is VerdictResult.REFUSED:
        expected: ExchangeState | None = None if terminal else ExchangeState.REFUSED
    else:
        expected = _LEGAL_SENDS.get((role, state, kind_of(event)))
        if isinstance(event, Challenge) and not peer_sent_evidence:
            expected = None  # NONE cannot be challenged
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
    st.sampled_from(_ALL_EVENTS),
    st.booleans(),
)
def test_receive_table_every_state(
    role: ExchangeRole, state: ExchangeState, event: ExchangeEvent, we_sent_evidence: bool
) -> None:
    machine = AttestationExchange(role)
    machine._state = state  # white-box: visit every (state, input) pair
    machine._sent_evidence = we_sent_evidence
    machine.receive_data(encode_message(event))
    receiving = state.name.startswith("AWAIT_")
    if not receiving:
        assert machine.next_event() is PAUSED  # not the peer's turn: bytes wait
        assert state_of(machine) is state
        return
    if isinstance(event, Verdict) and event.result is VerdictResult.REFUSED:
        expected: ExchangeState | None = ExchangeState.PEER_REFUSED
    else:
        expected = _LEGAL_RECEIPTS.get((role, state, kind_of(event)))
        if isinstance(event, Challenge) and not we_sent_evidence:
            expected = None
    if expected is None:
        with pytest.raises(UnexpectedExchangeMessage) as info:
            machine.next_event()
        assert isinstance(info.value, RemoteProtocolError)
        assert info.value.state is state
        assert state_of(machine) is ExchangeState.ERROR
    else:
        assert machine.next_event() == event
        assert state_of(machine) is expected


def run_challenged_exchange(
    chunk: int, *, client_asks: bool, server_asks: bool
) -> tuple[AttestationExchange, AttestationExchange, list[tuple[str, ExchangeEvent]]]:
    """Drive both roles through a full exchange with optional challenges; log the wire."""
    server, client = AttestationExchange(SERVER), AttestationExchange(CLIENT)
    wire: list[tuple[str, ExchangeEvent]] = []

    def flight(
        sender: AttestationExchange, to: AttestationExchange, *events: ExchangeEvent
    ) -> None:
        data = b"".join(sender.send(event) for event in events)
        wire.extend((sender.role.value, event) for event in events)
        received: list[object] = []
        for i in range(0, len(data), chunk):
            to.receive_data(data[i : i + chunk])
            while (got := to.next_event()) not in (NEED_DATA, PAUSED):
                received.append(got)
        assert received == list(events)

    flight(server, client, EVIDENCE)
    if client_asks:
        flight(client, server, CHALLENGE)
        assert server.next_event() is PAUSED
        flight(server, client, RESPONSE)
        assert state_of(client) is ExchangeState.SEND_EVIDENCE_AFTER_RESPONSE
    flight(client, server, EVIDENCE, Verdict.ok())
    if server_asks:
        flight(server, client, CHALLENGE)
        assert client.next_event() is PAUSED
        flight(client, server, RESPONSE)
        assert state_of(server) is ExchangeState.SEND_VERDICT_AFTER_RESPONSE
    flight(server, client, Verdict.ok())
    return server, client, wire


@pytest.mark.parametrize("chunk", [1, 9, 10_000])
@pytest.mark.parametrize(
    ("client_asks", "server_asks"), [(True, True), (True, False), (False, True)]
)
def test_full_exchange_with_challenges(chunk: int, client_asks: bool, server_asks: bool) -> None:
    server, client, wire = run_challenged_exchange(
        chunk, client_asks=client_asks, server_asks=server_asks
    )
    assert state_of(server) is client.state is ExchangeState.DONE
    expected: list[tuple[str, ExchangeEvent]] = [("server", EVIDENCE)]
    if client_asks:
        expected += [("client", CHALLENGE), ("server", RESPONSE)]
    expected += [("client", EVIDENCE), ("client", Verdict.ok())]
    if server_asks:
        expected += [("server", CHALLENGE), ("client", RESPONSE)]
    expected += [("server", Verdict.ok())]
    assert wire == expected


def test_second_challenge_is_out_of_order() -> None:
    server = AttestationExchange(SERVER)
    server.send(EVIDENCE)
    server.receive_data(encode_message(CHALLENGE))
    assert server.next_event() == CHALLENGE
    server.send(RESPONSE)
    server.receive_data(encode_message(CHALLENGE))
    with pytest.raises(UnexpectedExchangeMessage) as info:
        server.next_event()
    assert info.value.state is ExchangeState.AWAIT_EVIDENCE_AFTER_RESPONSE
    client = AttestationExchange(CLIENT)
    client.receive_data(encode_message(EVIDENCE) + encode_message(RESPONSE))
    assert client.next_event() == EVIDENCE
    client.send(CHALLENGE)
    assert client.next_event() == RESPONSE
    with pytest.raises(LocalProtocolError):
        client.send(CHALLENGE)


def test_challenge_of_none_is_out_of_order() -> None:
    # The server sent NONE: a challenge of it is a protocol violation ...
    server = AttestationExchange(SERVER)
    server.send(NoEvidence())
    server.receive_data(encode_message(CHALLENGE))
    with pytest.raises(UnexpectedExchangeMessage) as info:
        server.next_event()
    assert info.value.message_type == "challenge"
    # ... and our side cannot send one for a peer's NONE either.
    client = AttestationExchange(CLIENT)
    client.receive_data(encode_message(NoEvidence()))
    assert client.next_event() == NoEvidence()
    with pytest.raises(LocalProtocolError, match="no evidence"):
        client.send(CHALLENGE)
    # Same for the server's challenge of a client that sent NONE.
    client.send(NoEvidence())
    client.send(Verdict.ok())
    client.receive_data(encode_message(CHALLENGE))
    with pytest.raises(UnexpectedExchangeMessage):
        client.next_event()


@pytest.mark.parametrize(
    ("role", "setup", "event"),
    [
        (CLIENT, [], CHALLENGE),  # a challenge before any evidence
        (CLIENT, [], RESPONSE),  # an answer to no challenge
        (SERVER, ["send-evidence"], RESPONSE),
        (SERVER, ["send-evidence", "receive-evidence"], CHALLENGE),  # wants the verdict
        (CLIENT, ["receive-evidence", "send-challenge"], EVIDENCE),  # wants the response
        (CLIENT, ["receive-evidence", "send-challenge"], Verdict.ok()),
        (CLIENT, ["receive-evidence", "send-challenge"], CHALLENGE),
    ],
)
def test_challenge_round_out_of_order(
    role: ExchangeRole, setup: list[str], event: ExchangeEvent
) -> None:
    machine = AttestationExchange(role)
    for step in setup:
        if step == "send-evidence":
            machine.send(EVIDENCE)
        elif step == "send-challenge":
            machine.send(CHALLENGE)
        else:
            machine.receive_data(encode_message(EVIDENCE))
            assert machine.next_event() == EVIDENCE
    machine.receive_data(encode_message(event))
    with pytest.raises(UnexpectedExchangeMessage):
        machine.next_event()
    assert state_of(machine) is ExchangeState.ERROR


@pytest.mark.parametrize("state", [ExchangeState.AWAIT_RESPONSE, ExchangeState.SEND_RESPONSE])
def test_refusal_replaces_challenge_round_messages(state: ExchangeState) -> None:
    client = AttestationExchange(CLIENT)
    client.receive_data(encode_message(EVIDENCE))
    client.next_event()
    client.send(CHALLENGE)
    assert state_of(client) is ExchangeState.AWAIT_RESPONSE
    server = AttestationExchange(SERVER)
    server.send(EVIDENCE)
    server.receive_data(encode_message(CHALLENGE))
    server.next_event()
    assert state_of(server) is ExchangeState.SEND_RESPONSE
    if state is ExchangeState.AWAIT_RESPONSE:  # the peer refuses instead of answering
        client.receive_data(encode_message(Verdict.refused("cannot answer")))
        assert client.next_event() == Verdict.refused("cannot answer")
        assert state_of(client) is ExchangeState.PEER_REFUSED
    else:  # we refuse instead of answering
        server.send(Verdict.refused("cannot answer"))
        assert state_of(server) is ExchangeState.REFUSED


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
    machine._sent_evidence = True
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
        # A client waiting for the server's evidence takes nothing else but a refusal.
        assert isinstance(event, Verdict | Challenge | Response)
        assert not (isinstance(event, Verdict) and event.result is VerdictResult.REFUSED)
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


def test_docs_table_matches_transitions() -> None:
    # docs/tls-stream.md prints the transition table; keep it in step with the code.
    docs = Path(__file__).resolve().parent.parent / "docs" / "tls-stream.md"
    kinds = {"evidence/none": "evidence", "verdict ok": "verdict"}
    rows = set()
    for line in docs.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("server", "client"):
            role, state, kind, direction, after = cells
            rows.add(
                (
                    ExchangeRole(role),
                    ExchangeState[state],
                    kinds.get(kind, kind),
                    direction,
                    ExchangeState[after],
                )
            )
    table = {(*key, after) for key, after in _exchange._TRANSITIONS.items()}
    assert rows == table
