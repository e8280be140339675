"""Edge cases of the SPDM state machines: each check the requester and responder make."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_spdm_session import NONCE, ConnectionPair, clear, refusal, state_of, tamper

from ratls._errors import CertificateChainError, RatlsError
from ratls.spdm._codec import (
    Algorithms,
    AlgStruct,
    Capabilities,
    Certificate,
    Challenge,
    ChallengeAuth,
    Error,
    GetCertificate,
    GetDigests,
    GetMeasurements,
    GetVersion,
    Heartbeat,
    HeartbeatAck,
    KeyExchangeRsp,
    KeyUpdate,
    KeyUpdateAck,
    MeasurementBlock,
    Measurements,
    SpdmMessage,
    decode_message,
)
from ratls.spdm._constants import (
    AlgType,
    CapabilityFlag,
    KeyUpdateOperation,
    MeasurementHashAlgo,
    MeasurementSummaryHashType,
    SpdmErrorCode,
)
from ratls.spdm._crypto import Transcript, digest_measurement_block
from ratls.spdm._errors import (
    SpdmLocalProtocolError,
    SpdmMessageTooLarge,
    SpdmRemoteProtocolError,
    SpdmUnexpectedMessage,
)
from ratls.spdm._requester import (
    Requester,
    RequesterConfig,
    get_capabilities_request,
    negotiate_algorithms_request,
)
from ratls.spdm._responder import DEFAULT_RESPONDER_FLAGS, RequestRejected
from ratls.spdm._secured import SecuredChannel
from ratls.spdm._state import (
    NEED_DATA,
    NeedData,
    Negotiated,
    Session,
    State,
    Transcripts,
    check_capability_flags,
)
from ratls.spdm._transport import MctpBinding

MCTP = MctpBinding()
VECTOR = Path(__file__).parent / "vectors" / "spdm12-session.json"


def answer(pair: ConnectionPair, request_bytes: bytes, response: bytes) -> SpdmMessage:
    """Hand the requester a crafted clear response to the request it just sent."""
    del request_bytes
    pair.requester.receive_data(MCTP.encode(response))
    event = pair.requester.next_event()
    assert not isinstance(event, NeedData)
    return event


def negotiated_pair(**kwargs: Any) -> ConnectionPair:
    pair = ConnectionPair(**kwargs)
    pair.vca()
    return pair


# --------------------------------------------------------------------------- requester


def test_requester_properties() -> None:
    pair = ConnectionPair()
    assert pair.requester.responder_capabilities is None
    assert pair.responder.negotiated is None
    assert pair.responder.export_master_secret is None
    pair.vca()
    caps = pair.requester.responder_capabilities
    assert isinstance(caps, Capabilities)
    assert caps.flags == DEFAULT_RESPONDER_FLAGS
    assert pair.responder.negotiated == pair.requester.negotiated
    assert repr(NEED_DATA) == "NEED_DATA"


def test_requester_prerequisites() -> None:
    pair = ConnectionPair()
    with pytest.raises(SpdmLocalProtocolError, match="not negotiated"):
        pair.requester.key_exchange()
    pair.vca()
    challenge = Challenge(
        slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
    )
    with pytest.raises(SpdmLocalProtocolError, match="certificate chain first"):
        pair.requester.send(challenge)
    signed = GetMeasurements(measurement_operation=1, signature_requested=True, nonce=NONCE)
    with pytest.raises(SpdmLocalProtocolError, match="certificate chain first"):
        pair.requester.send(signed)
    with pytest.raises(SpdmLocalProtocolError, match="does not follow"):
        pair.requester.send(GetCertificate(slot_id=0, offset=0x100, length=0x100))
    # Unsigned measurements need no chain.
    assert isinstance(pair.request(GetMeasurements(measurement_operation=1)), Measurements)


def test_requester_session_only_request_in_clear() -> None:
    pair = ConnectionPair()
    pair.open_session()
    with pytest.raises(SpdmLocalProtocolError, match="only travels in a session"):
        pair.requester.send(Heartbeat(), in_session=False)


def test_requester_clear_errors_to_session_requests() -> None:
    pair = ConnectionPair()
    pair.open_session()
    sent = pair.requester.send(Heartbeat())
    with pytest.raises(SpdmUnexpectedMessage, match="clear ERROR"):
        answer(pair, sent, Error(error_code=SpdmErrorCode.BUSY).encode())

    pair = ConnectionPair()
    pair.open_session()
    sent = pair.requester.send(Heartbeat())
    event = answer(pair, sent, Error(error_code=SpdmErrorCode.DECRYPT_ERROR).encode())
    assert isinstance(event, Error)
    assert pair.requester.session_id is None
    assert state_of(pair.requester) is State.NEGOTIATED


def test_requester_refuses_small_data_transfer_size() -> None:
    pair = ConnectionPair()
    pair.request(GetVersion())
    sent = pair.requester.send(get_capabilities_request(pair.config))
    bad = Capabilities(flags=DEFAULT_RESPONDER_FLAGS, data_transfer_size=41, max_spdm_msg_size=41)
    with pytest.raises(SpdmRemoteProtocolError, match="DataTransferSize"):
        answer(pair, sent, bad.encode())


def test_requester_refuses_unusable_algorithm() -> None:
    config = RequesterConfig(base_hash_algo=0x40 | 0x2)  # offers SM3, which we cannot compute
    pair = ConnectionPair(requester_config=config)
    pair.request(GetVersion())
    pair.request(get_capabilities_request(config))
    sent = pair.requester.send(negotiate_algorithms_request(config))
    sm3 = Algorithms(
        measurement_specification_sel=1,
        other_params_selection=2,
        measurement_hash_algo=4,
        base_asym_sel=0x80,
        base_hash_sel=0x40,
        resp_alg_struct=(
            AlgStruct(alg_type=2, alg_supported=0x10),
            AlgStruct(alg_type=3, alg_supported=0x2),
            AlgStruct(alg_type=5, alg_supported=0x1),
        ),
    )
    with pytest.raises(SpdmRemoteProtocolError, match="unusable"):
        answer(pair, sent, sm3.encode())


def test_requester_certificate_checks() -> None:
    pair = negotiated_pair()
    sent = pair.requester.send(GetCertificate(slot_id=0, offset=0, length=0x100))
    with pytest.raises(SpdmRemoteProtocolError, match="another slot"):
        tamper(pair, sent, lambda b: b[:2] + b"\x01" + b[3:])

    pair = negotiated_pair()
    sent = pair.requester.send(GetCertificate(slot_id=0, offset=0, length=0x10))
    with pytest.raises(SpdmRemoteProtocolError, match="PortionLength"):
        answer(
            pair, sent, b"\x12\x02\x00\x00" + (0x20).to_bytes(2, "little") + b"\0\0" + bytes(0x20)
        )

    pair = negotiated_pair()  # no GET_DIGESTS: only the RootHash can catch this
    sent = pair.requester.send(GetCertificate(slot_id=0, offset=0, length=0x1000))
    with pytest.raises(CertificateChainError, match="root_hash"):
        tamper(pair, sent, lambda b: b[:12] + bytes([b[12] ^ 1]) + b[13:])


def _cert(subject_key: Any, signing_key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(subject_key)
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(signing_key, hashes.SHA384())
        .public_bytes(Encoding.DER)
    )


@pytest.mark.parametrize("kind", ["not-x509", "ed448"])
def test_requester_refuses_unusable_leaf(kind: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    if kind == "not-x509":
        leaf = b"\x30\x03\x02\x01\x00"
    else:
        leaf = _cert(ed448.Ed448PrivateKey.generate().public_key(), key)
    pair = ConnectionPair(certificate_chain=(leaf,), private_key=key)
    pair.vca()
    pair.request(GetDigests())
    pair.request(GetCertificate(slot_id=0, offset=0, length=0x1000))
    challenge = Challenge(
        slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
    )
    with pytest.raises(CertificateChainError, match="leaf"):
        pair.request(challenge)


def test_requester_challenge_auth_for_another_slot() -> None:
    pair = negotiated_pair()
    pair.read_certificate()
    challenge = Challenge(
        slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
    )
    with pytest.raises(SpdmRemoteProtocolError, match="another slot"):
        tamper(pair, pair.requester.send(challenge), lambda b: b[:2] + b"\x01" + b[3:])


def _measurements(*indexes: int, count: int = 0) -> bytes:
    return Measurements(
        measurement_record=tuple(
            MeasurementBlock(index=i, value_type=0x84, value=b"x") for i in indexes
        ),
        nonce=NONCE,
        number_of_measurement_indices=count,
    ).encode()


def test_requester_measurement_consistency() -> None:
    pair = negotiated_pair()
    sent = pair.requester.send(GetMeasurements(measurement_operation=0))
    with pytest.raises(SpdmRemoteProtocolError, match="count-only"):
        answer(pair, sent, _measurements(1))
    pair = negotiated_pair()
    sent = pair.requester.send(GetMeasurements(measurement_operation=0xFF))
    with pytest.raises(SpdmRemoteProtocolError, match="duplicate"):
        answer(pair, sent, _measurements(1, 1))


def test_in_session_unsigned_then_signed_measurements() -> None:
    pair = ConnectionPair()
    pair.open_session()
    for index in (1, 2):
        assert isinstance(pair.request(GetMeasurements(measurement_operation=index)), Measurements)
    signed = GetMeasurements(measurement_operation=0xFD, signature_requested=True, nonce=NONCE)
    event = pair.request(signed)
    assert isinstance(event, Measurements)
    assert event.signature


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (6, 1, "mutual authentication"),  # MutAuthRequested
        (4 + 4 + 32 + 96 + 48 + 2 + 4, 0x02, "opaque data"),  # SMDataVersion byte
        (4 + 4 + 32 + 96 + 48 + 2 + 11, 0x20, "not offered"),  # SelectedVersion high byte
    ],
)
def test_requester_key_exchange_rsp_checks(offset: int, value: int, match: str) -> None:
    pair = negotiated_pair()
    pair.read_certificate()
    sent = pair.requester.key_exchange(measurement_summary_hash_type=MeasurementSummaryHashType.ALL)

    def mutate(body: bytes) -> bytes:
        return body[:offset] + bytes([value]) + body[offset + 1 :]

    with pytest.raises(SpdmRemoteProtocolError, match=match):
        tamper(pair, sent, mutate)


def test_requester_key_update_ack_must_echo() -> None:
    pair = ConnectionPair()
    pair.open_session()
    sent = pair.requester.send(KeyUpdate(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=5))
    del sent
    session = pair.requester._session
    assert session is not None
    receiving = session.response
    assert receiving is not None
    forger = SecuredChannel(
        session_id=receiving.session_id,
        aead=receiving.aead,
        key=receiving.key,
        iv=receiving.iv,
        sequence_number_size=receiving.sequence_number_size,
        sequence_number=receiving.sequence_number,
    )
    wrong = KeyUpdateAck(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=6).encode()
    record = forger.seal(MCTP.wrap_application_data(wrong))
    pair.requester.receive_data(MCTP.encode(record, secured=True))
    with pytest.raises(SpdmRemoteProtocolError, match="echo"):
        pair.requester.next_event()


# --------------------------------------------------------------------------- responder


def _rejected(pair: ConnectionPair) -> RequestRejected:
    events = pair.drain_responder_events()
    assert isinstance(events[-1], RequestRejected)
    return events[-1]


def test_responder_without_measurements() -> None:
    flags = DEFAULT_RESPONDER_FLAGS & ~(CapabilityFlag.MEAS_CAP_SIG | CapabilityFlag.MEAS_FRESH_CAP)
    pair = negotiated_pair(capability_flags=flags)
    n = pair.requester.negotiated
    assert n is not None
    assert n.algorithms.measurement_hash_algo == 0
    event = pair.request(GetMeasurements(measurement_operation=1))
    assert isinstance(event, Error)
    assert event.error_code == SpdmErrorCode.UNSUPPORTED_REQUEST
    assert event.error_data == 0xE0
    pair.read_certificate()
    challenge = Challenge(
        slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.ALL, nonce=NONCE
    )
    event = pair.request(challenge)
    assert isinstance(event, Error)
    assert event.error_code == SpdmErrorCode.INVALID_REQUEST
    assert "summary hash" in _rejected(pair).reason


def test_responder_unsigned_measurements_only() -> None:
    flags = (
        DEFAULT_RESPONDER_FLAGS & ~(CapabilityFlag.MEAS_CAP_SIG | CapabilityFlag.MEAS_FRESH_CAP)
        | CapabilityFlag.MEAS_CAP_NO_SIG
    )
    pair = negotiated_pair(capability_flags=flags)
    pair.read_certificate()
    assert isinstance(pair.request(GetMeasurements(measurement_operation=2)), Measurements)
    signed = GetMeasurements(measurement_operation=2, signature_requested=True, nonce=NONCE)
    event = pair.request(signed)
    assert isinstance(event, Error)
    assert event.error_code == SpdmErrorCode.INVALID_REQUEST


def test_responder_answers_libspdm_requester() -> None:
    """libspdm's recorded requests, sent to our responder, are all answered.

    The requests come from a requester that announced CERT and CHAL and offered a
    ReqBaseAsymAlg table; our responder selects no requester algorithm.  Its
    KEY_EXCHANGE carries a real secp384r1 share, so our responder completes the
    exchange too (FINISH would need libspdm's private key).
    """
    vector = json.loads(VECTOR.read_text())
    requests = [bytes.fromhex(m["hex"]) for m in vector["messages"][:23] if m["dir"] == "req"]
    pair = ConnectionPair()
    responses = []
    for data in requests:
        pair.responder.receive_data(MCTP.encode(data))
        transport = MCTP.decode(pair.responder.data_to_send())
        assert not transport.secured
        responses.append(transport.body)
    events = pair.drain_responder_events()
    # libspdm's responder had two slots, so its requester also read slot 1; ours has one.
    rejected = [e for e in events if isinstance(e, RequestRejected)]
    assert [r.reason for r in rejected] == ["slot 1 is empty"]
    algorithms = decode_message(responses[2])
    assert isinstance(algorithms, Algorithms)
    assert algorithms.selected(AlgType.REQ_BASE_ASYM_ALG) == 0  # no requester signing algorithm
    assert algorithms.base_asym_sel == 0x80
    assert responses[-1][1] == KeyExchangeRsp.CODE
    assert state_of(pair.responder) is State.HANDSHAKING
    challenge_auth = responses[6]
    assert challenge_auth[1] == ChallengeAuth.CODE


# --------------------------------------------------------------------------- shared pieces


@pytest.mark.parametrize(
    ("flags", "responder", "problem"),
    [
        (0x200, False, "MAC or ENCRYPT"),
        (0x80, False, "without KEY_EX"),
        (0x10002 | 0x4, True, "exclusive"),
        (0x2, True, "CHAL or KEY_EX"),
        (0x4, True, "need CERT"),
        (0xC00 | 0x80, True, "reserved"),
        (0x8, False, "no CACHE or MEAS"),
        (0x18 | 0x6, True, "MEAS_CAP value"),
        (0x62F6, True, None),
        (0x62C6, False, None),
    ],
)
def test_capability_flag_rules(flags: int, responder: bool, problem: str | None) -> None:
    result = check_capability_flags(flags, responder=responder)
    if problem is None:
        assert result is None
    else:
        assert result is not None
        assert problem in result


def test_transcripts_and_session_refuse_misuse() -> None:
    transcripts = Transcripts()
    with pytest.raises(SpdmLocalProtocolError, match="before VCA"):
        transcripts.restart_m1()
    pair = negotiated_pair()
    negotiated = pair.requester.negotiated
    assert isinstance(negotiated, Negotiated)
    assert not negotiated.handshake_in_the_clear
    session = Session(
        session_id=1, negotiated=negotiated, binding=MCTP, th=Transcript(negotiated.hash)
    )
    with pytest.raises(SpdmLocalProtocolError, match="before handshake"):
        session.start_data_phase(bytes(48))
    with pytest.raises(SpdmLocalProtocolError, match="KEY_UPDATE"):
        session.roll_keys(request=True)
    with pytest.raises(SpdmLocalProtocolError, match="no session keys"):
        session.seal(b"", request=True)
    with pytest.raises(SpdmLocalProtocolError, match="no session keys"):
        session.open(b"", request=False)


def test_heartbeat_after_key_updates_in_both_directions() -> None:
    pair = ConnectionPair()
    pair.open_session()
    for operation in (KeyUpdateOperation.UPDATE_ALL_KEYS, KeyUpdateOperation.UPDATE_KEY) * 2:
        ack = pair.request(KeyUpdate(key_operation=operation, tag=1))
        assert isinstance(ack, KeyUpdateAck)
        verify = pair.request(KeyUpdate(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=2))
        assert isinstance(verify, KeyUpdateAck)
        assert isinstance(pair.request(Heartbeat()), HeartbeatAck)


def test_key_update_must_be_verified_before_the_next() -> None:
    pair = ConnectionPair()
    pair.open_session()
    early = pair.request(KeyUpdate(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=1))
    assert isinstance(early, Error)
    assert early.error_code == SpdmErrorCode.INVALID_REQUEST
    all_keys = KeyUpdate(key_operation=KeyUpdateOperation.UPDATE_ALL_KEYS, tag=3)
    assert isinstance(pair.request(all_keys), KeyUpdateAck)
    # A second update before VERIFY_NEW_KEY is refused; the ERROR travels under the
    # old response key, so the requester falls back to it and the session goes on.
    refused = pair.request(all_keys)
    assert isinstance(refused, Error)
    assert refused.error_code == SpdmErrorCode.INVALID_REQUEST
    assert isinstance(pair.request(Heartbeat()), HeartbeatAck)
    verify = KeyUpdate(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=4)
    assert isinstance(pair.request(verify), KeyUpdateAck)
    assert isinstance(pair.request(Heartbeat()), HeartbeatAck)


def test_responder_ignores_unknown_alg_tables() -> None:
    pair = ConnectionPair()
    pair.request(GetVersion())
    pair.request(get_capabilities_request(pair.config))
    offer = negotiate_algorithms_request(pair.config)
    with_pqc = dataclasses.replace(
        offer, req_alg_struct=(*offer.req_alg_struct, AlgStruct(alg_type=6, alg_supported=1))
    )
    event = pair.request(with_pqc)
    assert isinstance(event, Algorithms)
    assert [t.alg_type for t in event.resp_alg_struct] == [2, 3, 5]


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=120), state=st.sampled_from(["fresh", "negotiated"]))
def test_fuzz_responder_always_answers(data: bytes, state: str) -> None:
    pair = FRESH if state == "fresh" else NEGOTIATED
    before = state_of(pair.responder)
    pair.responder.receive_data(data)
    out = pair.responder.data_to_send()
    assert out
    assert pair.responder.data_to_send() == b""
    event = pair.responder.next_event()
    assert not isinstance(event, NeedData)
    if isinstance(event, RequestRejected):
        assert state_of(pair.responder) in (before, State.NEGOTIATED)


@settings(max_examples=150)
@given(data=st.binary(max_size=120), prefix=st.integers(0, 2))
def test_fuzz_requester_only_ratls_errors(data: bytes, prefix: int) -> None:
    requester = Requester()
    requester.send(GetVersion())
    requester.receive_data((b"", b"\x05", b"\x05\x10")[prefix] + data)
    try:
        requester.next_event()
    except RatlsError:
        assert state_of(requester) is State.ERROR


FRESH = ConnectionPair()
NEGOTIATED = ConnectionPair()
NEGOTIATED.vca()


# --------------------------------------------------------------------------- sizes


def test_certificate_portions_fit_the_requester_transfer_size() -> None:
    config = RequesterConfig(data_transfer_size=0x100)
    pair = ConnectionPair(requester_config=config)
    pair.vca()
    pair.request(GetDigests())
    offset = 0
    portions = []
    while True:
        cert = pair.request(GetCertificate(slot_id=0, offset=offset, length=0xFFFF))
        assert isinstance(cert, Certificate)
        portions.append(cert.portion_length)
        offset += cert.portion_length
        if not cert.remainder_length:
            break
    assert max(portions) == 0x100 - 8
    assert pair.requester.certificate_chain(0) is not None


def test_responder_refuses_oversized_requests_and_responses() -> None:
    pair = ConnectionPair(data_transfer_size=64)
    pair.vca()
    assert refusal(pair, clear(b"\x12\x81\x00\x00" + bytes(61))).error_code == (
        SpdmErrorCode.REQUEST_TOO_LARGE
    )
    event = pair.request(GetMeasurements(measurement_operation=0xFF))
    assert isinstance(event, Error)
    assert event.error_code == SpdmErrorCode.RESPONSE_TOO_LARGE


def test_requester_refuses_oversized_responses() -> None:
    config = RequesterConfig(data_transfer_size=64)
    pair = ConnectionPair(requester_config=config)
    sent = pair.requester.send(GetVersion())
    with pytest.raises(SpdmMessageTooLarge):
        answer(pair, sent, b"\x10\x04\x00\x00\x00\x1e" + b"\x00\x12" * 30)


def test_digest_measurement_block() -> None:
    raw = MeasurementBlock(index=3, value_type=0x84, value=b"manifest")
    digest = digest_measurement_block(raw, MeasurementHashAlgo.TPM_ALG_SHA_256)
    assert digest == MeasurementBlock(
        index=3, value_type=0x04, value=hashlib.sha256(b"manifest").digest()
    )
    assert digest_measurement_block(digest, MeasurementHashAlgo.TPM_ALG_SHA_384) is digest
    assert digest_measurement_block(raw, MeasurementHashAlgo.RAW_BIT_STREAM_ONLY) is raw
