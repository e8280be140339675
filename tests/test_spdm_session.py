"""Our requester against our responder: a full SPDM 1.2 session over a fake link."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ratls._errors import (
    BindingMismatch,
    CertificateChainError,
    SignatureMismatch,
)
from ratls.spdm._codec import (
    Algorithms,
    AlgStruct,
    Certificate,
    Challenge,
    ChallengeAuth,
    Digests,
    EndSession,
    EndSessionAck,
    Error,
    Finish,
    FinishRsp,
    GetCapabilities,
    GetCertificate,
    GetDigests,
    GetMeasurements,
    GetVersion,
    Heartbeat,
    HeartbeatAck,
    KeyExchange,
    KeyExchangeRsp,
    KeyUpdate,
    KeyUpdateAck,
    MeasurementBlock,
    Measurements,
    OpaqueData,
    RespondIfReady,
    ResponseNotReadyData,
    SecuredMessageSupportedVersions,
    SecuredMessageVersionSelection,
    SpdmMessage,
    Version,
    decode_message,
)
from ratls.spdm._constants import (
    BaseAsymAlgo,
    CapabilityFlag,
    KeyUpdateOperation,
    MeasurementSummaryHashType,
    SpdmErrorCode,
)
from ratls.spdm._crypto import measurement_summary_hash
from ratls.spdm._errors import (
    SpdmDecryptError,
    SpdmLocalProtocolError,
    SpdmRemoteProtocolError,
    SpdmUnexpectedMessage,
)
from ratls.spdm._requester import (
    Requester,
    RequesterConfig,
    get_capabilities_request,
    negotiate_algorithms_request,
)
from ratls.spdm._responder import (
    DEFAULT_RESPONDER_FLAGS,
    ApplicationData,
    MeasurementContext,
    RequestRejected,
    Responder,
    ResponderConfig,
)
from ratls.spdm._state import NEED_DATA, NeedData, State
from ratls.spdm._transport import MctpBinding, TcpBinding

NONCE = bytes(range(32))
DMTF_RESPONDER_AUTH = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.3")


def make_leaf(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A self-signed ECDSA P-384 leaf fit for an SPDM responder (CA:FALSE, digitalSignature)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ratls spdm test responder")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([DMTF_RESPONDER_AUTH]), critical=False)
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(Encoding.DER)


def state_of(conn: Requester | Responder) -> State:
    """The connection state (a call, so type checkers do not narrow it across sends)."""
    return conn.state


class MeasurementSource:
    """Opaque measurement blocks; records the nonces it was asked to bind."""

    def __init__(self) -> None:
        self.contexts: list[MeasurementContext] = []
        self.blocks = (
            MeasurementBlock(index=1, value_type=0x00, value=bytes(range(48))),
            MeasurementBlock(index=2, value_type=0x01, value=bytes(48)),
            MeasurementBlock(index=0xFD, value_type=0x84, value=b"evidence bundle"),
        )

    def __call__(self, context: MeasurementContext) -> tuple[MeasurementBlock, ...]:
        self.contexts.append(context)
        return self.blocks


class ConnectionPair:
    """Our requester and our responder joined by an in-memory link."""

    def __init__(
        self,
        *,
        binding: MctpBinding | TcpBinding | None = None,
        requester_config: RequesterConfig | None = None,
        **responder_kwargs: Any,
    ) -> None:
        binding = binding if binding is not None else MctpBinding()
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.leaf = make_leaf(self.key)
        self.measurements = MeasurementSource()
        config: dict[str, Any] = {
            "certificate_chain": (self.leaf,),
            "private_key": self.key,
            "base_asym_algo": BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384,
            "measurements": self.measurements,
            "binding": binding,
        }
        config.update(responder_kwargs)
        self.responder = Responder(ResponderConfig(**config))
        req_config = requester_config or RequesterConfig(binding=binding)
        self.requester = Requester(req_config)
        self.config = req_config
        self.wire: list[tuple[str, bytes]] = []

    def deliver(self, request_bytes: bytes) -> SpdmMessage:
        """Carry one request to the responder and its answer back; return the event."""
        self.wire.append(("req", request_bytes))
        self.responder.receive_data(request_bytes)
        answer = self.responder.data_to_send()
        assert answer
        assert self.responder.data_to_send() == b""
        self.wire.append(("rsp", answer))
        self.requester.receive_data(answer)
        event = self.requester.next_event()
        assert event is not NEED_DATA
        assert not isinstance(event, NeedData)
        return event

    def request(self, message: SpdmMessage, **kwargs: Any) -> SpdmMessage:
        return self.deliver(self.requester.send(message, **kwargs))

    def vca(self) -> None:
        assert isinstance(self.request(GetVersion()), Version)
        assert state_of(self.requester) is State.AFTER_VERSION
        assert isinstance(self.request(get_capabilities_request(self.config)), object)
        assert state_of(self.requester) is State.AFTER_CAPABILITIES
        self.request(negotiate_algorithms_request(self.config))
        assert state_of(self.requester) is State.NEGOTIATED
        assert state_of(self.responder) is State.NEGOTIATED

    def read_certificate(self, chunk: int = 0x200) -> None:
        digests = self.request(GetDigests())
        assert isinstance(digests, Digests)
        offset = 0
        while True:
            cert = self.request(GetCertificate(slot_id=0, offset=offset, length=chunk))
            assert isinstance(cert, Certificate)
            offset += cert.portion_length
            if cert.remainder_length == 0:
                break
        chain = self.requester.certificate_chain(0)
        assert chain is not None
        assert chain.leaf == self.leaf

    def open_session(self) -> None:
        self.vca()
        self.read_certificate()
        rsp = self.deliver(
            self.requester.key_exchange(
                measurement_summary_hash_type=MeasurementSummaryHashType.ALL
            )
        )
        assert isinstance(rsp, KeyExchangeRsp)
        assert state_of(self.requester) is State.HANDSHAKING
        assert isinstance(self.deliver(self.requester.finish()), FinishRsp)
        assert state_of(self.requester) is State.ESTABLISHED
        assert state_of(self.responder) is State.ESTABLISHED

    def drain_responder_events(self) -> list[SpdmMessage | RequestRejected | ApplicationData]:
        out: list[SpdmMessage | RequestRejected | ApplicationData] = []
        while (event := self.responder.next_event()) is not NEED_DATA:
            assert not isinstance(event, NeedData)
            out.append(event)
        return out


@pytest.mark.parametrize("binding", [MctpBinding(), TcpBinding()], ids=["mctp", "tcp"])
def test_full_session(binding: MctpBinding | TcpBinding) -> None:
    pair = ConnectionPair(binding=binding)
    pair.vca()
    pair.read_certificate(chunk=0x100)
    n = pair.requester.negotiated
    assert n is not None
    assert n.algorithms.base_asym_sel == BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384
    assert n.algorithms.base_hash_sel == 0x2

    auth = pair.request(
        Challenge(
            slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.ALL, nonce=NONCE
        )
    )
    assert isinstance(auth, ChallengeAuth)
    expected_summary = measurement_summary_hash(
        hashes.SHA384(), pair.measurements.blocks, MeasurementSummaryHashType.ALL
    )
    assert auth.measurement_summary_hash == expected_summary

    # Two unsigned requests accumulate into L1; the signed one covers them all.
    for index in (1, 2):
        single = pair.request(GetMeasurements(measurement_operation=index))
        assert isinstance(single, Measurements)
        assert single.measurement_record == (pair.measurements.blocks[index - 1],)
    signed = pair.request(
        GetMeasurements(
            measurement_operation=0xFF,
            signature_requested=True,
            raw_bit_stream_requested=True,
            nonce=NONCE,
        )
    )
    assert isinstance(signed, Measurements)
    assert signed.measurement_record == pair.measurements.blocks
    assert pair.measurements.contexts[-1] == MeasurementContext(
        nonce=NONCE, raw_bit_stream_requested=True, measurement_hash_algo=0x4
    )
    assert pair.measurements.contexts[0].nonce is None  # the CHALLENGE summary hash
    count = pair.request(GetMeasurements(measurement_operation=0))
    assert isinstance(count, Measurements)
    assert count.number_of_measurement_indices == 3

    rsp = pair.deliver(
        pair.requester.key_exchange(measurement_summary_hash_type=MeasurementSummaryHashType.TCB)
    )
    assert isinstance(rsp, KeyExchangeRsp)
    assert rsp.measurement_summary_hash == measurement_summary_hash(
        hashes.SHA384(), pair.measurements.blocks, MeasurementSummaryHashType.TCB
    )
    assert pair.requester.session_id == pair.responder.session_id == 0xFFFFFFFF
    assert pair.requester.export_master_secret is None
    assert isinstance(pair.deliver(pair.requester.finish()), FinishRsp)
    assert pair.requester.export_master_secret is not None
    assert pair.requester.export_master_secret == pair.responder.export_master_secret

    # In-session messages travel as secured records.
    request_bytes = pair.requester.send(
        GetMeasurements(measurement_operation=0xFF, signature_requested=True, nonce=NONCE)
    )
    assert binding.decode(request_bytes).secured
    assert isinstance(pair.deliver(request_bytes), Measurements)
    assert isinstance(pair.request(Heartbeat()), HeartbeatAck)
    for operation in (
        KeyUpdateOperation.UPDATE_KEY,
        KeyUpdateOperation.VERIFY_NEW_KEY,
        KeyUpdateOperation.UPDATE_ALL_KEYS,
        KeyUpdateOperation.VERIFY_NEW_KEY,
    ):
        ack = pair.request(KeyUpdate(key_operation=operation, tag=7))
        assert isinstance(ack, KeyUpdateAck)
        assert ack.key_operation == operation
    assert isinstance(pair.request(Heartbeat()), HeartbeatAck)
    assert isinstance(pair.request(EndSession()), EndSessionAck)
    assert state_of(pair.requester) is State.NEGOTIATED
    assert state_of(pair.responder) is State.NEGOTIATED
    assert pair.requester.session_id is None
    assert pair.responder.session_id is None
    events = pair.drain_responder_events()
    assert not [e for e in events if isinstance(e, RequestRejected)]
    assert type(events[0]) is GetVersion
    assert type(events[-1]) is EndSession


def test_second_session_and_restart() -> None:
    pair = ConnectionPair()
    pair.open_session()
    pair.request(EndSession())
    rsp = pair.deliver(pair.requester.key_exchange())
    assert isinstance(rsp, KeyExchangeRsp)
    assert rsp.measurement_summary_hash == b""
    pair.deliver(pair.requester.finish())
    assert state_of(pair.requester) is State.ESTABLISHED
    # GET_VERSION restarts everything, even with a session open.
    assert isinstance(pair.request(GetVersion(), in_session=False), Version)
    assert pair.requester.session_id is None
    assert pair.responder.session_id is None
    assert state_of(pair.requester) is State.AFTER_VERSION


# --------------------------------------------------------------------------- recorded peer


def test_requester_accepts_the_recorded_libspdm_responder() -> None:
    """Feed libspdm's recorded responses to our requester, sending the recorded requests.

    Every response is checked by the requester as if live: the chain against
    DIGESTS and RootHash, CHALLENGE_AUTH and the signed MEASUREMENTS against
    the leaf key over M1 and L1.  KEY_EXCHANGE is left out: its DHE share came
    from libspdm's private key.
    """
    vector = json.loads((Path(__file__).parent / "vectors" / "spdm12-session.json").read_text())
    raw = [bytes.fromhex(m["hex"]) for m in vector["messages"]][:22]
    requester = Requester(RequesterConfig(capability_flags=CapabilityFlag(0x62C6)))
    mctp = MctpBinding()
    sizes = None
    for request_bytes, response_bytes in zip(raw[0::2], raw[1::2], strict=True):
        request = decode_message(request_bytes, sizes=sizes)
        assert requester.send(request) == mctp.encode(request_bytes)
        requester.receive_data(mctp.encode(response_bytes))
        event = requester.next_event()
        assert not isinstance(event, NeedData)
        assert event.encode() == response_bytes
        negotiated = requester.negotiated
        sizes = None if negotiated is None else negotiated.sizes
    assert state_of(requester) is State.NEGOTIATED
    chain = requester.certificate_chain(0)
    assert chain is not None
    assert len(chain.certificates) == 3


def test_requester_rejects_a_tampered_recorded_challenge_auth() -> None:
    vector = json.loads((Path(__file__).parent / "vectors" / "spdm12-session.json").read_text())
    raw = [bytes.fromhex(m["hex"]) for m in vector["messages"]][:14]
    raw[13] = raw[13][:-1] + bytes([raw[13][-1] ^ 1])
    requester = Requester(RequesterConfig(capability_flags=CapabilityFlag(0x62C6)))
    mctp = MctpBinding()
    sizes = None
    for index, (request_bytes, response_bytes) in enumerate(zip(raw[0::2], raw[1::2], strict=True)):
        requester.send(decode_message(request_bytes, sizes=sizes))
        requester.receive_data(mctp.encode(response_bytes))
        if index == 6:
            with pytest.raises(SignatureMismatch):
                requester.next_event()
            assert state_of(requester) is State.ERROR
            return
        requester.next_event()
        negotiated = requester.negotiated
        sizes = None if negotiated is None else negotiated.sizes
    raise AssertionError("CHALLENGE_AUTH was not reached")  # pragma: no cover


# --------------------------------------------------------------------------- responder refusals


def refusal(pair: ConnectionPair, data: bytes) -> Error:
    """Send raw transport bytes to the responder; return the ERROR it answers."""
    state = pair.responder.state
    pair.responder.receive_data(data)
    answer = pair.responder.data_to_send()
    message = MctpBinding().decode(answer)
    assert not message.secured
    error = decode_message(message.body)
    assert isinstance(error, Error)
    events = pair.drain_responder_events()
    assert isinstance(events[-1], RequestRejected)
    assert events[-1].error_code == error.error_code
    if error.error_code != SpdmErrorCode.DECRYPT_ERROR:
        assert state_of(pair.responder) is state
    return error


def clear(message: SpdmMessage | bytes) -> bytes:
    return MctpBinding().encode(message if isinstance(message, bytes) else message.encode())


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (GetDigests().encode(), SpdmErrorCode.UNEXPECTED_REQUEST),
        (GetCapabilities().encode(), SpdmErrorCode.UNEXPECTED_REQUEST),
        (b"\x12\xe6\x00\x00", SpdmErrorCode.UNSUPPORTED_REQUEST),
        (b"\x12\x01\x00\x00", SpdmErrorCode.UNSUPPORTED_REQUEST),
        (b"\x11\x84\x00\x00", SpdmErrorCode.VERSION_MISMATCH),
        (b"\x10\x84\x00\x01", SpdmErrorCode.INVALID_REQUEST),
        (b"\x10\x84", SpdmErrorCode.INVALID_REQUEST),
        (Heartbeat().encode(), SpdmErrorCode.SESSION_REQUIRED),
        (EndSession().encode(), SpdmErrorCode.SESSION_REQUIRED),
    ],
)
def test_responder_refuses_before_vca(data: bytes, code: SpdmErrorCode) -> None:
    pair = ConnectionPair()
    error = refusal(pair, clear(data))
    assert error.error_code == code
    assert error.version == 0x10
    if code == SpdmErrorCode.UNSUPPORTED_REQUEST:
        assert error.error_data == data[1]


def test_responder_refuses_bad_transport_header() -> None:
    pair = ConnectionPair()
    assert refusal(pair, b"\x07\x10\x84\x00\x00").error_code == SpdmErrorCode.INVALID_REQUEST
    assert refusal(pair, b"").error_code == SpdmErrorCode.INVALID_REQUEST


def test_responder_refuses_secured_record_without_session() -> None:
    pair = ConnectionPair()
    pair.vca()
    error = refusal(pair, b"\x06" + bytes(24))
    assert error.error_code == SpdmErrorCode.DECRYPT_ERROR


def test_responder_refuses_inconsistent_requester_capabilities() -> None:
    pair = ConnectionPair()
    pair.request(GetVersion())
    for flags, dts, max_size in (
        (0x200, 0x1200, 0x1200),  # KEY_EX without MAC/ENCRYPT
        (0x10, 0x1200, 0x1200),  # a requester with MEAS bits
        (0x2C0, 41, 41),  # DataTransferSize below 42
        (0x2C0, 0x1200, 0x100),  # MaxSPDMmsgSize below DataTransferSize
    ):
        bad = GetCapabilities(
            flags=CapabilityFlag(flags), data_transfer_size=dts, max_spdm_msg_size=max_size
        )
        assert refusal(pair, clear(bad)).error_code == SpdmErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    "change",
    [
        {"other_params_support": 0x1},
        {"measurement_specification": 0},
        {"base_asym_algo": 0x10},
        {"base_hash_algo": 0x4},
    ],
)
def test_responder_refuses_algorithms(change: dict[str, Any]) -> None:
    pair = ConnectionPair()
    pair.request(GetVersion())
    pair.request(get_capabilities_request(pair.config))
    offer = dataclasses.replace(negotiate_algorithms_request(pair.config), **change)
    assert refusal(pair, clear(offer)).error_code == SpdmErrorCode.INVALID_REQUEST


def test_responder_refuses_empty_or_uncommon_alg_tables() -> None:
    pair = ConnectionPair()
    pair.request(GetVersion())
    pair.request(get_capabilities_request(pair.config))
    offer = negotiate_algorithms_request(pair.config)
    empty = dataclasses.replace(
        offer, req_alg_struct=(AlgStruct(alg_type=2, alg_supported=0), *offer.req_alg_struct[1:])
    )
    assert refusal(pair, clear(empty)).error_code == SpdmErrorCode.INVALID_REQUEST
    ffdhe_only = dataclasses.replace(
        offer, req_alg_struct=(AlgStruct(alg_type=2, alg_supported=0x1), *offer.req_alg_struct[1:])
    )
    assert refusal(pair, clear(ffdhe_only)).error_code == SpdmErrorCode.INVALID_REQUEST


def test_responder_refusals_after_vca() -> None:
    pair = ConnectionPair()
    pair.vca()
    for data, code in (
        (GetCapabilities().encode(), SpdmErrorCode.UNEXPECTED_REQUEST),
        (GetCertificate(slot_id=1, offset=0, length=16).encode(), SpdmErrorCode.INVALID_REQUEST),
        (
            GetCertificate(slot_id=0, offset=0xFFF0, length=16).encode(),
            SpdmErrorCode.INVALID_REQUEST,
        ),
        (
            Challenge(
                slot_id=2,
                measurement_summary_hash_type=MeasurementSummaryHashType.NONE,
                nonce=NONCE,
            ).encode(),
            SpdmErrorCode.INVALID_REQUEST,
        ),
        (GetMeasurements(measurement_operation=9).encode(), SpdmErrorCode.INVALID_REQUEST),
        (
            GetMeasurements(
                measurement_operation=1, signature_requested=True, nonce=NONCE, slot_id_param=3
            ).encode(),
            SpdmErrorCode.INVALID_REQUEST,
        ),
        (b"\x13\x81\x00\x00", SpdmErrorCode.VERSION_MISMATCH),
        (b"\x12\x81\x00\x00\x00", SpdmErrorCode.INVALID_REQUEST),
        (
            KeyUpdate(key_operation=KeyUpdateOperation.UPDATE_KEY, tag=1).encode(),
            SpdmErrorCode.SESSION_REQUIRED,
        ),
    ):
        error = refusal(pair, clear(data))
        assert error.error_code == code, data.hex()
        assert error.version == 0x12


def test_responder_refuses_bad_key_exchange() -> None:
    pair = ConnectionPair()
    pair.vca()
    pair.read_certificate()
    negotiated = pair.requester.negotiated
    assert negotiated is not None
    good = MctpBinding().decode(_fresh_key_exchange()).body
    message = decode_message(good, sizes=negotiated.sizes)
    assert isinstance(message, KeyExchange)
    selection = SecuredMessageVersionSelection(selected_version=0x1200)
    for bad in (
        dataclasses.replace(message, exchange_data=bytes(96)),
        dataclasses.replace(message, slot_id=1),
        dataclasses.replace(message, opaque_data=selection.to_opaque_data().encode()),
        dataclasses.replace(message, opaque_data=_versions_opaque((0x2000,))),
        dataclasses.replace(message, opaque_data=OpaqueData(elements=()).encode()),
    ):
        assert refusal(pair, clear(bad)).error_code == SpdmErrorCode.INVALID_REQUEST
    pair.responder.receive_data(clear(message))  # the unmodified request is accepted
    answer = MctpBinding().decode(pair.responder.data_to_send()).body
    assert answer[1] == KeyExchangeRsp.CODE


def _versions_opaque(versions: tuple[int, ...]) -> bytes:
    return SecuredMessageSupportedVersions(versions=versions).to_opaque_data().encode()


def _fresh_key_exchange() -> bytes:
    """A valid KEY_EXCHANGE from a second requester on the same negotiated parameters."""
    other = ConnectionPair()
    other.vca()
    other.read_certificate()
    return other.requester.key_exchange()


def test_responder_refuses_bad_finish_and_drops_session() -> None:
    pair = ConnectionPair()
    pair.vca()
    pair.read_certificate()
    pair.deliver(pair.requester.key_exchange())
    session = pair.requester._session
    assert session is not None
    forged = session.seal(Finish(requester_verify_data=bytes(48)).encode(), request=True)
    assert refusal(pair, forged).error_code == SpdmErrorCode.DECRYPT_ERROR
    assert pair.responder.session_id is None
    assert state_of(pair.responder) is State.NEGOTIATED


def test_responder_refuses_tampered_record_and_ends_session() -> None:
    pair = ConnectionPair()
    pair.open_session()
    record = bytearray(pair.requester.send(Heartbeat()))
    record[-1] ^= 1
    error = refusal(pair, bytes(record))
    assert error.error_code == SpdmErrorCode.DECRYPT_ERROR
    assert pair.responder.session_id is None
    assert state_of(pair.responder) is State.NEGOTIATED


def test_responder_refuses_out_of_place_session_messages() -> None:
    pair = ConnectionPair()
    pair.open_session()
    session = pair.requester._session
    assert session is not None
    challenge = Challenge(
        slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
    )
    pair.responder.receive_data(session.seal(challenge.encode(), request=True))
    answer = MctpBinding().decode(pair.responder.data_to_send())
    error = decode_message(session.open(answer.body, request=False))
    assert isinstance(error, Error)
    assert error.error_code == SpdmErrorCode.UNEXPECTED_REQUEST


def test_responder_without_heartbeat_capability() -> None:
    pair = ConnectionPair(capability_flags=DEFAULT_RESPONDER_FLAGS & ~CapabilityFlag.HBEAT_CAP)
    pair.open_session()
    event = pair.request(Heartbeat())
    assert isinstance(event, Error)
    assert event.error_code == SpdmErrorCode.UNSUPPORTED_REQUEST
    assert event.error_data == 0xE8
    assert state_of(pair.requester) is State.ESTABLISHED


def test_responder_config_validation() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    base: dict[str, Any] = {
        "certificate_chain": (make_leaf(key),),
        "private_key": key,
        "base_asym_algo": 0x80,
        "measurements": MeasurementSource(),
    }
    for change in (
        {"certificate_chain": ()},
        {
            "capability_flags": CapabilityFlag.CERT_CAP
            | CapabilityFlag.MUT_AUTH_CAP
            | CapabilityFlag.CHAL_CAP
        },
        {"capability_flags": CapabilityFlag.CERT_CAP},
        {"data_transfer_size": 41},
        {"base_asym_algo": 0x90},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - one message per field
            ResponderConfig(**{**base, **change})
    assert "private_key" not in repr(ResponderConfig(**base))


# --------------------------------------------------------------------------- requester checks


def test_requester_local_errors() -> None:
    pair = ConnectionPair()
    with pytest.raises(SpdmLocalProtocolError, match="can't handle GetDigests"):
        pair.requester.send(GetDigests())
    with pytest.raises(SpdmLocalProtocolError, match="not a request"):
        pair.requester.send(Version(version_number_entries=(0x1200,)))
    with pytest.raises(SpdmLocalProtocolError, match="version"):
        pair.requester.send(GetVersion(version=0x12))
    with pytest.raises(SpdmLocalProtocolError, match="RESPOND_IF_READY"):
        pair.requester.send(RespondIfReady(request_code=0x84, token=0))
    pair.requester.send(GetVersion())
    with pytest.raises(SpdmLocalProtocolError, match="outstanding"):
        pair.requester.send(GetVersion())
    assert pair.requester.next_event() is NEED_DATA


def test_requester_refuses_key_exchange_and_finish_objects() -> None:
    pair = ConnectionPair()
    pair.vca()
    with pytest.raises(SpdmLocalProtocolError, match="certificate chain first"):
        pair.requester.key_exchange()
    with pytest.raises(SpdmLocalProtocolError, match="FINISH needs"):
        pair.requester.finish()
    pair.read_certificate()
    with pytest.raises(SpdmLocalProtocolError, match="key_exchange"):
        pair.requester.send(
            KeyExchange(
                measurement_summary_hash_type=MeasurementSummaryHashType.NONE,
                slot_id=0,
                req_session_id=1,
                random_data=NONCE,
                exchange_data=bytes(96),
                opaque_data=b"",
            )
        )
    with pytest.raises(SpdmLocalProtocolError, match="finish"):
        pair.requester.send(Finish(requester_verify_data=bytes(48)))
    with pytest.raises(SpdmLocalProtocolError, match="can't handle Heartbeat"):
        pair.requester.send(Heartbeat())
    with pytest.raises(SpdmLocalProtocolError, match="session"):
        pair.requester.send(GetDigests(), in_session=True)


def test_requester_config_validation() -> None:
    changes: tuple[dict[str, Any], ...] = (
        {"capability_flags": CapabilityFlag.MUT_AUTH_CAP},
        {"capability_flags": CapabilityFlag.KEY_EX_CAP},
        {"data_transfer_size": 41},
    )
    for change in changes:
        with pytest.raises(ValueError):  # noqa: PT011 - one message per field
            RequesterConfig(**change)


def answer_with(pair: ConnectionPair, request: SpdmMessage, response: bytes) -> SpdmMessage:
    pair.requester.send(request)
    pair.requester.receive_data(MctpBinding().encode(response))
    event = pair.requester.next_event()
    assert not isinstance(event, NeedData)
    return event


def test_requester_unsolicited_and_mismatched_responses() -> None:
    pair = ConnectionPair()
    pair.requester.receive_data(MctpBinding().encode(b"\x10\x04\x00\x00\x00\x01\x00\x12"))
    with pytest.raises(SpdmUnexpectedMessage, match="without an outstanding"):
        pair.requester.next_event()
    assert state_of(pair.requester) is State.ERROR
    pair = ConnectionPair()
    with pytest.raises(SpdmUnexpectedMessage):
        answer_with(pair, GetVersion(), b"\x12\x68\x00\x00")
    pair = ConnectionPair()
    with pytest.raises(SpdmRemoteProtocolError, match="no common SPDM version"):
        answer_with(pair, GetVersion(), b"\x10\x04\x00\x00\x00\x01\x00\x11")
    pair = ConnectionPair()
    pair.requester.send(GetVersion())
    pair.requester.receive_data(b"\x06" + bytes(24))
    with pytest.raises(SpdmUnexpectedMessage, match="secured response"):
        pair.requester.next_event()


def test_requester_returns_error_events_and_keeps_state() -> None:
    pair = ConnectionPair()
    pair.vca()
    busy = Error(error_code=SpdmErrorCode.BUSY).encode()
    event = answer_with(pair, GetDigests(), busy)
    assert isinstance(event, Error)
    assert event.error_code == SpdmErrorCode.BUSY
    assert state_of(pair.requester) is State.NEGOTIATED
    # ResponseNotReady keeps the request pending for RESPOND_IF_READY.
    not_ready = Error(
        error_code=SpdmErrorCode.RESPONSE_NOT_READY,
        extended_error_data=ResponseNotReadyData(
            rd_exponent=1, request_code=0x81, token=9, rdtm=1
        ).encode(),
    ).encode()
    assert isinstance(answer_with(pair, GetDigests(), not_ready), Error)
    retry = pair.requester.send(RespondIfReady(request_code=0x81, token=9))
    assert MctpBinding().decode(retry).body == b"\x12\xff\x81\x09"
    # The real responder does not implement RESPOND_IF_READY; answer as if it did.
    pair.responder.receive_data(clear(GetDigests()))
    digests = pair.responder.data_to_send()
    pair.requester.receive_data(digests)
    assert isinstance(pair.requester.next_event(), Digests)


def test_requester_rejects_bad_algorithms() -> None:
    def algorithms(**change: Any) -> bytes:
        fields: dict[str, Any] = {
            "measurement_specification_sel": 1,
            "other_params_selection": 2,
            "measurement_hash_algo": 4,
            "base_asym_sel": 0x80,
            "base_hash_sel": 2,
            "resp_alg_struct": (
                AlgStruct(alg_type=2, alg_supported=0x10),
                AlgStruct(alg_type=3, alg_supported=0x2),
                AlgStruct(alg_type=5, alg_supported=0x1),
            ),
        }
        fields.update(change)
        return Algorithms(**fields).encode()

    for bad in (
        algorithms(base_asym_sel=0x90),
        algorithms(base_asym_sel=0x1),
        algorithms(base_hash_sel=0x3),
        algorithms(other_params_selection=1),
        algorithms(measurement_hash_algo=6),
        algorithms(resp_alg_struct=(AlgStruct(alg_type=4, alg_supported=0x10),)),
        algorithms(resp_alg_struct=(AlgStruct(alg_type=2, alg_supported=0x18),)),
        algorithms(resp_alg_struct=(AlgStruct(alg_type=2, alg_supported=0x10),)),
    ):
        pair = ConnectionPair()
        pair.request(GetVersion())
        pair.request(get_capabilities_request(pair.config))
        with pytest.raises(SpdmRemoteProtocolError):
            answer_with(pair, negotiate_algorithms_request(pair.config), bad)
        assert state_of(pair.requester) is State.ERROR
    pair = ConnectionPair()
    pair.request(GetVersion())
    with pytest.raises(SpdmRemoteProtocolError, match="capability flags"):
        answer_with(
            pair,
            get_capabilities_request(pair.config),
            b"\x12\x61\x00\x00\x00\x00\x00\x00" + (0x200).to_bytes(4, "little") + bytes(8),
        )


def tamper(pair: ConnectionPair, request_bytes: bytes, mutate: Any) -> SpdmMessage:
    """Deliver a request, mutate the clear response, and hand it to the requester."""
    pair.responder.receive_data(request_bytes)
    answer = MctpBinding().decode(pair.responder.data_to_send()).body
    pair.requester.receive_data(MctpBinding().encode(mutate(answer)))
    event = pair.requester.next_event()
    assert not isinstance(event, NeedData)
    return event


def flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def test_requester_rejects_tampered_signatures() -> None:
    pair = ConnectionPair()
    pair.vca()
    pair.read_certificate()
    challenge = Challenge(
        slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
    )
    with pytest.raises(SignatureMismatch):
        tamper(pair, pair.requester.send(challenge), flip_last)
    assert state_of(pair.requester) is State.ERROR

    pair = ConnectionPair()
    pair.vca()
    pair.read_certificate()
    signed = GetMeasurements(measurement_operation=0xFF, signature_requested=True, nonce=NONCE)
    with pytest.raises(SignatureMismatch):
        tamper(pair, pair.requester.send(signed), lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:])

    pair = ConnectionPair()
    pair.vca()
    pair.read_certificate()
    with pytest.raises(SignatureMismatch):  # ResponderVerifyData
        tamper(pair, pair.requester.key_exchange(), flip_last)
    assert pair.requester.session_id is None


def test_requester_rejects_wrong_chain_hash_and_digest() -> None:
    pair = ConnectionPair()
    pair.vca()
    pair.read_certificate()
    challenge = Challenge(
        slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
    )
    with pytest.raises(BindingMismatch):
        tamper(pair, pair.requester.send(challenge), lambda b: b[:4] + bytes(48) + b[52:])

    pair = ConnectionPair()
    pair.vca()
    tamper(pair, pair.requester.send(GetDigests()), lambda b: b[:4] + bytes(48))
    with pytest.raises(CertificateChainError):
        pair.request(GetCertificate(slot_id=0, offset=0, length=0x1000))


def test_requester_rejects_measurement_mismatches() -> None:
    pair = ConnectionPair()
    pair.vca()
    pair.read_certificate()
    with pytest.raises(SpdmRemoteProtocolError, match="exactly index 2"):
        tamper(
            pair,
            pair.requester.send(GetMeasurements(measurement_operation=2)),
            lambda b: b[:8] + b"\x01" + b[9:],
        )


def test_requester_rejects_a_forged_secured_response() -> None:
    pair = ConnectionPair()
    pair.open_session()
    request_bytes = pair.requester.send(Heartbeat())
    pair.responder.receive_data(request_bytes)
    answer = bytearray(pair.responder.data_to_send())
    answer[-1] ^= 1
    pair.requester.receive_data(bytes(answer))
    with pytest.raises(SpdmDecryptError):
        pair.requester.next_event()
    assert state_of(pair.requester) is State.ERROR


def test_requester_rejects_clear_answer_to_session_request() -> None:
    pair = ConnectionPair()
    pair.open_session()
    pair.requester.send(Heartbeat())
    pair.requester.receive_data(clear(HeartbeatAck()))
    with pytest.raises(SpdmUnexpectedMessage, match="clear"):
        pair.requester.next_event()


# --------------------------------------------------------------------------- algorithm suites


@pytest.mark.parametrize(
    ("curve", "asym", "hash_bits", "dhe", "aead"),
    [
        (ec.SECP256R1(), BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256, 0x1, 0x8, 0x1),
        (ec.SECP384R1(), BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384, 0x4, 0x20, 0x4),
        (ec.SECP521R1(), BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P521, 0x10, 0x10, 0x2),
    ],
    ids=["p256-sha256-aes128", "p384-sha512-chacha", "p521-sha3_384-aes256"],
)
def test_algorithm_suites(
    curve: ec.EllipticCurve, asym: int, hash_bits: int, dhe: int, aead: int
) -> None:
    key = ec.generate_private_key(curve)
    config = RequesterConfig(
        base_asym_algo=asym, base_hash_algo=hash_bits, dhe_groups=dhe, aead_algorithms=aead
    )
    pair = ConnectionPair(
        requester_config=config,
        certificate_chain=(make_leaf(key),),
        private_key=key,
        base_asym_algo=asym,
        base_hash_algo=hash_bits,
        dhe_groups=dhe,
        aead_algorithms=aead,
    )
    pair.leaf = pair.responder._config.certificate_chain[0]
    pair.open_session()
    n = pair.requester.negotiated
    assert n is not None
    assert (n.algorithms.base_asym_sel, n.algorithms.base_hash_sel, n.dhe, n.aead) == (
        asym,
        hash_bits,
        dhe,
        aead,
    )
    signed = GetMeasurements(measurement_operation=0xFF, signature_requested=True, nonce=NONCE)
    assert isinstance(pair.request(signed), Measurements)
    assert isinstance(pair.request(Heartbeat()), HeartbeatAck)


def test_in_session_heartbeat_ends_the_measurement_transcript() -> None:
    """Unsigned MEASUREMENTS, HEARTBEAT, then a signed one: both sides restart L2 alike."""
    pair = ConnectionPair()
    pair.open_session()
    assert isinstance(pair.request(GetMeasurements(measurement_operation=1)), Measurements)
    assert isinstance(pair.request(Heartbeat()), HeartbeatAck)
    signed = GetMeasurements(measurement_operation=2, signature_requested=True, nonce=NONCE)
    assert isinstance(pair.request(signed), Measurements)
