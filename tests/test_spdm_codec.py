"""The SPDM 1.2 codec: recorded messages round-trip, malformed ones are refused."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import RatlsError
from ratls.spdm._codec import (
    MAX_SPDM_MESSAGE_SIZE,
    Algorithms,
    AlgStruct,
    Capabilities,
    CertChain,
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
    NegotiateAlgorithms,
    NegotiatedSizes,
    OpaqueData,
    OpaqueElement,
    RespondIfReady,
    ResponseNotReadyData,
    SecuredMessageSupportedVersions,
    SecuredMessageVersionSelection,
    SpdmMessage,
    Version,
    decode_message,
    decode_opaque_data,
    decode_secured_message_opaque,
    dhe_exchange_size,
    hash_size,
    parse_cert_chain,
    parse_header,
    parse_measurement_record,
    parse_response_not_ready,
    signature_size,
)
from ratls.spdm._constants import (
    AlgType,
    CapabilityFlag,
    KeyUpdateOperation,
    MeasurementSummaryHashType,
    SpdmErrorCode,
)
from ratls.spdm._errors import (
    SpdmDecodeError,
    SpdmMessageTooLarge,
    SpdmUnexpectedMessage,
    SpdmUnsupportedRequest,
    SpdmVersionMismatch,
)

VECTOR = Path(__file__).parent / "vectors" / "spdm12-session.json"
SIZES = NegotiatedSizes(hash_size=48, signature_size=96, dhe_size=96)
CLEAR = dataclasses.replace(SIZES, handshake_in_the_clear=True, req_signature_size=64)
NONCE = bytes(range(32))
H = bytes(range(48))
SIG = bytes(range(96))
SIG64 = bytes(64)


def load_vector() -> dict[str, Any]:
    with VECTOR.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def recorded() -> list[tuple[str, bytes, SpdmMessage | None]]:
    """(name, bytes, request answered) for every recorded message."""
    out: list[tuple[str, bytes, SpdmMessage | None]] = []
    request: SpdmMessage | None = None
    for m in load_vector()["messages"]:
        data = bytes.fromhex(m["hex"])
        if m["dir"] == "req":
            request = decode_message(data, sizes=SIZES)
            out.append((m["name"], data, None))
        else:
            out.append((m["name"], data, request))
    return out


RECORDED = recorded()

BLOCKS = (
    MeasurementBlock(index=1, value_type=0x00, value=H),
    MeasurementBlock(index=0xFD, value_type=0x84, value=b"manifest"),
)

# One instance of every message, each with the context its decoding needs.
SAMPLES: list[tuple[SpdmMessage, NegotiatedSizes | None, SpdmMessage | None]] = [
    (GetVersion(), None, None),
    (Version(version_number_entries=(0x1100, 0x1200)), None, None),
    (
        GetCapabilities(ct_exponent=12, flags=CapabilityFlag.CERT_CAP | CapabilityFlag.MAC_CAP),
        None,
        None,
    ),
    (Capabilities(flags=CapabilityFlag(0x80000000 | 0x2)), None, None),
    (
        NegotiateAlgorithms(
            measurement_specification=1,
            other_params_support=2,
            base_asym_algo=0x90,
            base_hash_algo=3,
            ext_asym=(b"\x01\x00\x02\x00",),
            ext_hash=(b"\x01\x00\x03\x00",),
            req_alg_struct=(
                AlgStruct(alg_type=AlgType.DHE, alg_supported=0x18),
                AlgStruct(
                    alg_type=AlgType.AEAD, alg_supported=0x6, alg_external=(b"\xaa\xbb\xcc\xdd",)
                ),
            ),
        ),
        None,
        None,
    ),
    (
        Algorithms(
            measurement_specification_sel=1,
            other_params_selection=2,
            measurement_hash_algo=4,
            base_asym_sel=0x80,
            base_hash_sel=2,
            resp_alg_struct=(AlgStruct(alg_type=AlgType.KEY_SCHEDULE, alg_supported=1),),
        ),
        None,
        None,
    ),
    (GetDigests(), None, None),
    (Digests(slot_mask=0b101, digests=(H, H[::-1])), SIZES, None),
    (GetCertificate(slot_id=3, offset=0x200, length=0x400), None, None),
    (Certificate(slot_id=3, remainder_length=7, cert_chain=b"chain"), None, None),
    (
        Challenge(
            slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.TCB, nonce=NONCE
        ),
        None,
        None,
    ),
    (
        ChallengeAuth(
            slot_id=1,
            slot_mask=3,
            basic_mut_auth_req=True,
            cert_chain_hash=H,
            nonce=NONCE,
            measurement_summary_hash=H,
            opaque_data=b"op",
            signature=SIG,
        ),
        SIZES,
        Challenge(
            slot_id=1, measurement_summary_hash_type=MeasurementSummaryHashType.ALL, nonce=NONCE
        ),
    ),
    (
        ChallengeAuth(
            slot_id=0,
            slot_mask=1,
            cert_chain_hash=H,
            nonce=NONCE,
            measurement_summary_hash=b"",
            opaque_data=b"",
            signature=SIG,
        ),
        SIZES,
        Challenge(
            slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
        ),
    ),
    (GetMeasurements(measurement_operation=0), None, None),
    (
        GetMeasurements(
            measurement_operation=0xFF,
            signature_requested=True,
            raw_bit_stream_requested=True,
            nonce=NONCE,
            slot_id_param=2,
        ),
        None,
        None,
    ),
    (
        Measurements(
            measurement_record=BLOCKS,
            nonce=NONCE,
            opaque_data=b"xyz",
            signature=SIG,
            slot_id_param=2,
            content_changed=1,
        ),
        SIZES,
        GetMeasurements(measurement_operation=0xFF, signature_requested=True, nonce=NONCE),
    ),
    (
        Measurements(measurement_record=(), nonce=NONCE, number_of_measurement_indices=5),
        SIZES,
        GetMeasurements(measurement_operation=0),
    ),
    (
        KeyExchange(
            measurement_summary_hash_type=MeasurementSummaryHashType.ALL,
            slot_id=0,
            req_session_id=0xFFFE,
            session_policy=1,
            random_data=NONCE,
            exchange_data=SIG,
            opaque_data=b"opaque",
        ),
        SIZES,
        None,
    ),
    (
        KeyExchangeRsp(
            heartbeat_period=5,
            rsp_session_id=0xFFFF,
            mut_auth_requested=0,
            req_slot_id_param=0,
            random_data=NONCE,
            exchange_data=SIG,
            measurement_summary_hash=H,
            opaque_data=b"opaque",
            signature=SIG,
            responder_verify_data=H,
        ),
        SIZES,
        KeyExchange(
            measurement_summary_hash_type=MeasurementSummaryHashType.ALL,
            slot_id=0,
            req_session_id=1,
            random_data=NONCE,
            exchange_data=SIG,
            opaque_data=b"",
        ),
    ),
    (
        KeyExchangeRsp(
            rsp_session_id=1,
            random_data=NONCE,
            exchange_data=SIG,
            measurement_summary_hash=b"",
            opaque_data=b"",
            signature=SIG,
            responder_verify_data=b"",
        ),
        CLEAR,
        KeyExchange(
            measurement_summary_hash_type=MeasurementSummaryHashType.NONE,
            slot_id=0,
            req_session_id=1,
            random_data=NONCE,
            exchange_data=SIG,
            opaque_data=b"",
        ),
    ),
    (Finish(requester_verify_data=H, req_slot_id=1), SIZES, None),
    (Finish(requester_verify_data=H, signature=SIG64), CLEAR, None),
    (FinishRsp(), SIZES, None),
    (FinishRsp(responder_verify_data=H), CLEAR, None),
    (Heartbeat(), None, None),
    (HeartbeatAck(), None, None),
    (KeyUpdate(key_operation=KeyUpdateOperation.UPDATE_ALL_KEYS, tag=9), None, None),
    (KeyUpdateAck(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=9), None, None),
    (EndSession(preserve_negotiated_state_clear=True), None, None),
    (EndSessionAck(), None, None),
    (
        Error(
            error_code=SpdmErrorCode.RESPONSE_NOT_READY, error_data=0, extended_error_data=bytes(32)
        ),
        None,
        None,
    ),
    (Error(error_code=SpdmErrorCode.VERSION_MISMATCH, version=0x10), None, None),
    (RespondIfReady(request_code=0xE0, token=4), None, None),
]

# ERROR's ExtendedErrorData has no length field: a shorter or longer ERROR is
# still an ERROR, so only the sample with the full 32 bytes refuses trailing data.
VARIABLE_TAIL = (Error,)


def sample_id(sample: tuple[SpdmMessage, NegotiatedSizes | None, SpdmMessage | None]) -> str:
    return type(sample[0]).__name__


@pytest.mark.parametrize(("name", "data", "request_"), RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_message_round_trips(name: str, data: bytes, request_: SpdmMessage | None) -> None:
    message = decode_message(data, sizes=SIZES, request=request_)
    assert message.encode() == data
    assert re.sub(r"(?<!^)(?=[A-Z])", "_", type(message).__name__).upper() == name


@pytest.mark.parametrize(("name", "data", "request_"), RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_message_truncations_and_trailing_byte(
    name: str, data: bytes, request_: SpdmMessage | None
) -> None:
    for size in range(len(data)):
        with pytest.raises(SpdmDecodeError):
            decode_message(data[:size], sizes=SIZES, request=request_)
    with pytest.raises(SpdmDecodeError):
        decode_message(data + b"\0", sizes=SIZES, request=request_)


@pytest.mark.parametrize("sample", SAMPLES, ids=sample_id)
def test_sample_three_ways(
    sample: tuple[SpdmMessage, NegotiatedSizes | None, SpdmMessage | None],
) -> None:
    message, sizes, request = sample
    data = message.encode()
    assert decode_message(data, sizes=sizes, request=request) == message
    variable = isinstance(message, VARIABLE_TAIL)
    for size in range(4 if variable else len(data)):
        with pytest.raises(SpdmDecodeError):
            decode_message(data[:size], sizes=sizes, request=request)
    if not variable or len(data) == 4 + 32:
        with pytest.raises(SpdmDecodeError):
            decode_message(data + b"\x01", sizes=sizes, request=request)


@pytest.mark.parametrize("sample", SAMPLES, ids=sample_id)
def test_value_semantics(
    sample: tuple[SpdmMessage, NegotiatedSizes | None, SpdmMessage | None],
) -> None:
    message, sizes, request = sample
    same = decode_message(message.encode(), sizes=sizes, request=request)
    assert message == same
    assert hash(message) == hash(same)
    other = dataclasses.replace(message, version=0x11)
    assert message != other
    assert message != object()
    assert repr(message).startswith(type(message).__name__ + "(")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.version = 0x13  # type: ignore[misc]


def test_every_sample_kind_is_covered() -> None:
    kinds = {type(s[0]) for s in SAMPLES}
    assert kinds == set(SpdmMessage.__args__)


# --------------------------------------------------------------------------- negatives


def test_header() -> None:
    hdr = parse_header(b"\x12\xe0\x01\xff")
    assert (hdr.spdm_version, hdr.request_response_code, hdr.param1, hdr.param2) == (
        0x12,
        0xE0,
        1,
        0xFF,
    )
    assert hdr.is_request
    assert not parse_header(b"\x12\x60\x00\x00").is_request
    with pytest.raises(SpdmDecodeError):
        parse_header(b"\x12\xe0\x01")


@pytest.mark.parametrize(
    "data",
    [
        b"\x12\x84\x00\x00",  # GET_VERSION must be 1.0
        b"\x10\x81\x00\x00",  # GET_DIGESTS at 1.0
        b"\x13\x81\x00\x00",  # 1.3 layouts are not implemented
        b"\x11\x7f\x01\x00",  # ERROR at 1.1
    ],
)
def test_version_mismatch(data: bytes) -> None:
    with pytest.raises(SpdmVersionMismatch) as info:
        decode_message(data)
    assert info.value.error_code == SpdmErrorCode.VERSION_MISMATCH


@pytest.mark.parametrize("code", [0xE6, 0xEA, 0xFE, 0x90, 0xC0])
def test_unsupported_request_names_its_code(code: int) -> None:
    with pytest.raises(SpdmUnsupportedRequest) as info:
        decode_message(bytes((0x12, code, 0, 0)))
    assert info.value.error_data == code
    assert info.value.error_code == SpdmErrorCode.UNSUPPORTED_REQUEST


@pytest.mark.parametrize("code", [0x66, 0x7E, 0x00, 0x05])
def test_unsupported_response(code: int) -> None:
    with pytest.raises(SpdmDecodeError):
        decode_message(bytes((0x12, code, 0, 0)))


def test_too_large() -> None:
    with pytest.raises(SpdmMessageTooLarge) as info:
        decode_message(b"\x12\x7f\x01\x00" + bytes(MAX_SPDM_MESSAGE_SIZE))
    assert info.value.error_code == SpdmErrorCode.REQUEST_TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        b"\x12\x81\x01\x00",  # GET_DIGESTS reserved Param1
        b"\x12\x81\x00\x01",  # GET_DIGESTS reserved Param2
        b"\x10\x84\x00\x01",  # GET_VERSION reserved Param2
        b"\x10\x04\x00\x00\x01\x01\x00\x12",  # VERSION reserved byte
        b"\x10\x04\x00\x00\x00\x00",  # VERSION without entries
        b"\x12\x82\x10\x00\x00\x00\x00\x00",  # GET_CERTIFICATE SlotID upper bits
        b"\x12\x02\x10\x00\x00\x00\x00\x00",  # CERTIFICATE SlotID upper bits
        b"\x12\xe0\x04\xff",  # GET_MEASUREMENTS reserved attribute
        b"\x12\xe0\x01\xff" + NONCE + b"\x10",  # SlotIDParam upper bits
        b"\x12\x83\x00\x02" + NONCE,  # unknown MeasurementSummaryHashType
        b"\x12\xe9\x04\x00",  # unknown KeyOperation
        b"\x12\x69\x00\x00",  # KEY_UPDATE_ACK operation 0
        b"\x12\xec\x02\x00",  # END_SESSION reserved bit
        b"\x12\xec\x00\x01",  # END_SESSION reserved Param2
        b"\x12\xe5\x02\x00" + H,  # FINISH reserved bit
        b"\x12\xe5\x01\x00" + SIG64 + H,  # FINISH signature without req algorithm
        b"\x12\x65\x00\x01",  # FINISH_RSP reserved Param2
        b"\x12\x7f\x01\x00" + bytes(33),  # ERROR extended data too long
        b"\x12\xe1\x00\x00\x00\x00\x01\x00" + bytes(12),  # GET_CAPABILITIES reserved
    ],
)
def test_malformed_requests_and_fields(data: bytes) -> None:
    with pytest.raises(SpdmDecodeError) as info:
        decode_message(data, sizes=SIZES)
    assert info.value.error_code == SpdmErrorCode.INVALID_REQUEST


def _algorithms_bytes() -> bytes:
    return next(d for n, d, _ in RECORDED if n == "NEGOTIATE_ALGORITHMS")


def test_negotiate_algorithms_length_must_match() -> None:
    data = bytearray(_algorithms_bytes())
    data[4] += 1
    with pytest.raises(SpdmDecodeError, match="Length"):
        decode_message(bytes(data))


def test_alg_count_fixed_nibble_must_be_two() -> None:
    data = bytearray(_algorithms_bytes())
    data[33] = 0x30
    with pytest.raises(SpdmDecodeError, match="AlgCount"):
        decode_message(bytes(data))


def test_alg_types_must_increase() -> None:
    data = bytearray(_algorithms_bytes())
    data[36] = 0x02  # second table DHE again
    with pytest.raises(SpdmDecodeError, match="increase"):
        decode_message(bytes(data))


def test_algorithms_response_length_must_match() -> None:
    data = bytearray(next(d for n, d, _ in RECORDED if n == "ALGORITHMS"))
    data[4] -= 1
    with pytest.raises(SpdmDecodeError, match="Length"):
        decode_message(bytes(data))


def test_algorithms_reserved_bytes() -> None:
    data = bytearray(next(d for n, d, _ in RECORDED if n == "ALGORITHMS"))
    data[20] = 1
    with pytest.raises(SpdmDecodeError, match="Reserved"):
        decode_message(bytes(data))


def test_responses_need_sizes_and_the_right_request() -> None:
    digests = Digests(slot_mask=1, digests=(H,)).encode()
    with pytest.raises(SpdmUnexpectedMessage):
        decode_message(digests)
    auth, _, challenge = SAMPLES[11]
    with pytest.raises(SpdmUnexpectedMessage):
        decode_message(auth.encode(), sizes=SIZES)
    with pytest.raises(SpdmUnexpectedMessage):
        decode_message(auth.encode(), sizes=SIZES, request=GetDigests())
    assert challenge is not None
    assert isinstance(decode_message(auth.encode(), sizes=SIZES, request=challenge), ChallengeAuth)


def test_challenge_auth_reserved_param1_bits() -> None:
    message, sizes, request = SAMPLES[11]
    data = bytearray(message.encode())
    data[2] |= 0x10
    with pytest.raises(SpdmDecodeError):
        decode_message(bytes(data), sizes=sizes, request=request)


def test_measurements_reserved_param2_bits() -> None:
    message, sizes, request = SAMPLES[15]
    data = bytearray(message.encode())
    data[3] |= 0x40
    with pytest.raises(SpdmDecodeError):
        decode_message(bytes(data), sizes=sizes, request=request)


def test_measurement_record_errors() -> None:
    good = b"".join(b.encode() for b in BLOCKS)
    assert parse_measurement_record(good, 2) == BLOCKS
    with pytest.raises(SpdmDecodeError):
        parse_measurement_record(good, 1)  # trailing block
    with pytest.raises(SpdmDecodeError):
        parse_measurement_record(good, 3)  # missing block
    bad_index = b"\x00" + good[1:]
    with pytest.raises(SpdmDecodeError, match="index"):
        parse_measurement_record(bad_index, 2)
    bad_spec = good[:1] + b"\x02" + good[2:]
    with pytest.raises(SpdmDecodeError, match="DMTF"):
        parse_measurement_record(bad_spec, 2)
    block = BLOCKS[0].encode()
    longer = block[:2] + (len(block) - 4 + 1).to_bytes(2, "little") + block[4:] + b"\0"
    with pytest.raises(SpdmDecodeError, match="MeasurementSize"):
        parse_measurement_record(longer, 1)


def test_measurement_error_inside_message_reports_offset() -> None:
    message, sizes, request = SAMPLES[15]
    data = bytearray(message.encode())
    data[8] = 0  # first block's index
    with pytest.raises(SpdmDecodeError) as info:
        decode_message(bytes(data), sizes=sizes, request=request)
    assert info.value.offset == 8


def test_measurement_block_properties() -> None:
    raw = MeasurementBlock(index=0x10, value_type=0x87, value=bytes(8))
    assert raw.is_raw_bit_stream
    assert raw.dmtf_type == 7
    assert not BLOCKS[0].is_raw_bit_stream


def test_response_not_ready() -> None:
    data = ResponseNotReadyData(rd_exponent=5, request_code=0xE0, token=7, rdtm=2).encode()
    parsed = parse_response_not_ready(data)
    assert (parsed.rd_exponent, parsed.request_code, parsed.token, parsed.rdtm) == (5, 0xE0, 7, 2)
    for bad in (data[:3], data + b"\0"):
        with pytest.raises(SpdmDecodeError):
            parse_response_not_ready(bad)


# --------------------------------------------------------------------------- cert chain


def _chain_bytes() -> bytes:
    data = next(d for n, d, _ in RECORDED if n == "CERTIFICATE")
    message = decode_message(
        data, sizes=SIZES, request=GetCertificate(slot_id=0, offset=0, length=1)
    )
    assert isinstance(message, Certificate)
    assert message.remainder_length == 0
    return message.cert_chain


def test_cert_chain_round_trip() -> None:
    data = _chain_bytes()
    chain = parse_cert_chain(data, 48)
    assert len(chain.certificates) == 3
    assert chain.encode() == data
    assert chain.length == len(data)
    assert chain.leaf == chain.certificates[-1]
    for size in range(len(data)):
        with pytest.raises(SpdmDecodeError):
            parse_cert_chain(data[:size], 48)
    with pytest.raises(SpdmDecodeError):
        parse_cert_chain(data + b"\0", 48)


def test_cert_chain_errors() -> None:
    data = _chain_bytes()
    with pytest.raises(SpdmDecodeError, match="Reserved"):
        parse_cert_chain(data[:2] + b"\x01" + data[3:], 48)
    no_certs = (52).to_bytes(2, "little") + bytes(50)
    with pytest.raises(SpdmDecodeError, match="no certificate"):
        parse_cert_chain(no_certs, 48)
    not_der = (4 + 48 + 2).to_bytes(2, "little") + bytes(50) + b"\x31\x00"
    with pytest.raises(SpdmDecodeError, match="SEQUENCE"):
        parse_cert_chain(not_der, 48)
    non_minimal = (4 + 48 + 3).to_bytes(2, "little") + bytes(50) + b"\x30\x81\x05"
    with pytest.raises(SpdmDecodeError, match="non-minimal"):
        parse_cert_chain(non_minimal, 48)
    long_form = (4 + 48 + 2).to_bytes(2, "little") + bytes(50) + b"\x30\x85"
    with pytest.raises(SpdmDecodeError, match="length form"):
        parse_cert_chain(long_form, 48)
    with pytest.raises(ValueError, match="at least one"):
        CertChain(root_hash=H, certificates=())


def test_cert_chain_short_der_lengths() -> None:
    tiny = b"\x30\x03\x02\x01\x00"
    data = (4 + 48 + 2 * len(tiny)).to_bytes(2, "little") + bytes(50) + tiny * 2
    chain = parse_cert_chain(data, 48)
    assert chain.certificates == (tiny, tiny)
    assert chain.encode() == data


# --------------------------------------------------------------------------- opaque data


def test_secured_message_opaque_data_from_recording() -> None:
    messages = {n: decode_message(d, sizes=SIZES, request=r) for n, d, r in RECORDED}
    ke = messages["KEY_EXCHANGE"]
    rsp = messages["KEY_EXCHANGE_RSP"]
    assert isinstance(ke, KeyExchange)
    assert isinstance(rsp, KeyExchangeRsp)
    supported = decode_secured_message_opaque(ke.opaque_data)
    assert supported == SecuredMessageSupportedVersions(versions=(0x1000, 0x1100, 0x1200))
    assert supported.to_opaque_data().encode() == ke.opaque_data
    selection = decode_secured_message_opaque(rsp.opaque_data)
    assert selection == SecuredMessageVersionSelection(selected_version=0x1200)
    assert selection.to_opaque_data().encode() == rsp.opaque_data


def test_opaque_data_three_ways() -> None:
    data = OpaqueData(
        elements=(
            OpaqueElement(data=b"abc", registry_id=3, vendor_id=b"\x01\x02"),
            OpaqueElement(data=b"defgh"),
        )
    ).encode()
    assert len(data) % 4 == 0
    parsed = decode_opaque_data(data)
    assert parsed.encode() == data
    for size in range(len(data)):
        with pytest.raises(SpdmDecodeError):
            decode_opaque_data(data[:size])
    with pytest.raises(SpdmDecodeError):
        decode_opaque_data(data + b"\0")


def test_opaque_padding_must_be_zero() -> None:
    data = bytearray(OpaqueData(elements=(OpaqueElement(data=b"abc"),)).encode())
    data[-1] = 1
    with pytest.raises(SpdmDecodeError, match="AlignPadding"):
        decode_opaque_data(bytes(data))


@pytest.mark.parametrize(
    ("elements", "match"),
    [
        ((), "exactly one"),
        ((OpaqueElement(data=b"\x01\x00\x00\x12"),) * 2, "exactly one"),
        ((OpaqueElement(data=b"\x01\x00\x00\x12", registry_id=1),), "DMTF"),
        ((OpaqueElement(data=b"\x01\x00\x00\x12", vendor_id=b"v"),), "DMTF"),
        ((OpaqueElement(data=b"\x02\x00\x00\x12"),), "SMDataVersion"),
        ((OpaqueElement(data=b"\x01\x07\x00\x12"),), "SMDataID"),
        ((OpaqueElement(data=b"\x01\x00\x00\x12\x00"),), "trailing"),
        ((OpaqueElement(data=b"\x01\x01\x02\x00\x12"),), "VersionsList"),
    ],
)
def test_secured_message_opaque_errors(elements: tuple[OpaqueElement, ...], match: str) -> None:
    with pytest.raises(SpdmDecodeError, match=match):
        decode_secured_message_opaque(OpaqueData(elements=elements).encode())


# --------------------------------------------------------------------------- sizes and encoders


def test_sizes_from_recorded_algorithms() -> None:
    algorithms = decode_message(next(d for n, d, _ in RECORDED if n == "ALGORITHMS"))
    assert isinstance(algorithms, Algorithms)
    sizes = NegotiatedSizes.from_algorithms(algorithms)
    assert sizes == dataclasses.replace(SIZES, req_signature_size=384)  # RSAPSS-3072
    assert algorithms.selected(AlgType.DHE) == 0x10
    assert algorithms.selected(AlgType.REQ_BASE_ASYM_ALG) == 0x08
    no_req = dataclasses.replace(
        algorithms, resp_alg_struct=(AlgStruct(alg_type=AlgType.AEAD, alg_supported=2),)
    )
    assert no_req.selected(AlgType.REQ_BASE_ASYM_ALG) == 0
    assert NegotiatedSizes.from_algorithms(no_req).dhe_size == 0


def test_size_tables() -> None:
    assert (hash_size(1), hash_size(2), hash_size(4)) == (32, 48, 64)
    assert (signature_size(0x10), signature_size(0x80), signature_size(0x8)) == (64, 96, 384)
    assert (dhe_exchange_size(0x8), dhe_exchange_size(0x10), dhe_exchange_size(0x2)) == (
        64,
        96,
        384,
    )
    for fn in (hash_size, signature_size, dhe_exchange_size):
        with pytest.raises(ValueError, match="not a single"):
            fn(0x3)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Version(version_number_entries=()),
        lambda: Version(version_number_entries=(0x10000,)),
        lambda: GetCapabilities(ct_exponent=256),
        lambda: AlgStruct(alg_type=2, alg_supported=0x10000),
        lambda: AlgStruct(alg_type=2, alg_supported=1, alg_external=(b"\0" * 4,) * 16),
        lambda: AlgStruct(alg_type=2, alg_supported=1, alg_external=(b"\0",)),
        lambda: NegotiateAlgorithms(
            measurement_specification=1,
            other_params_support=0,
            base_asym_algo=0,
            base_hash_algo=0,
            req_alg_struct=(
                AlgStruct(alg_type=3, alg_supported=1),
                AlgStruct(alg_type=2, alg_supported=1),
            ),
        ),
        lambda: NegotiateAlgorithms(
            measurement_specification=1,
            other_params_support=0,
            base_asym_algo=0,
            base_hash_algo=0,
            ext_asym=(b"\0",),
        ),
        lambda: Algorithms(
            measurement_specification_sel=1,
            other_params_selection=0,
            measurement_hash_algo=0,
            base_asym_sel=0,
            base_hash_sel=0,
            ext_hash_sel=(b"\0" * 4,) * 256,
        ),
        lambda: NegotiateAlgorithms(
            measurement_specification=1,
            other_params_support=0,
            base_asym_algo=0,
            base_hash_algo=0,
            req_alg_struct=(
                *tuple(AlgStruct(alg_type=i, alg_supported=1) for i in range(256)),
                AlgStruct(alg_type=255, alg_supported=1),
            ),
        ),
        lambda: NegotiateAlgorithms(
            measurement_specification=1,
            other_params_support=0,
            base_asym_algo=0,
            base_hash_algo=0,
            ext_hash=(b"\0" * 4,) * 256,
        ),
        lambda: Digests(slot_mask=3, digests=(H,)),
        lambda: Digests(slot_mask=3, digests=(H, H[:32])),
        lambda: GetCertificate(slot_id=16, offset=0, length=0),
        lambda: Certificate(slot_id=0, remainder_length=0, cert_chain=bytes(0x10000)),
        lambda: Challenge(
            slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.ALL, nonce=b"x"
        ),
        lambda: MeasurementBlock(index=0, value_type=0, value=b""),
        lambda: MeasurementBlock(index=1, value_type=0, value=b"", measurement_specification=2),
        lambda: GetMeasurements(measurement_operation=1, signature_requested=True),
        lambda: GetMeasurements(measurement_operation=1, nonce=NONCE),
        lambda: Measurements(measurement_record=(), nonce=NONCE, content_changed=4),
        lambda: KeyExchange(
            measurement_summary_hash_type=MeasurementSummaryHashType.NONE,
            slot_id=0,
            req_session_id=0x10000,
            random_data=NONCE,
            exchange_data=b"",
            opaque_data=b"",
        ),
        lambda: KeyUpdate(key_operation=KeyUpdateOperation.UPDATE_KEY, tag=256),
        lambda: Error(error_code=1, extended_error_data=bytes(33)),
        lambda: ResponseNotReadyData(rd_exponent=256, request_code=0, token=0, rdtm=0),
        lambda: RespondIfReady(request_code=0, token=300),
        lambda: OpaqueElement(data=b"", vendor_id=bytes(256)),
        lambda: SecuredMessageVersionSelection(selected_version=-1),
        lambda: SecuredMessageSupportedVersions(versions=(0x10000,)),
    ],
)
def test_constructors_refuse_bad_fields(build: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - messages differ per field
        build()


def test_certificate_portion_length() -> None:
    assert Certificate(slot_id=0, remainder_length=0, cert_chain=b"abc").portion_length == 3


def test_finish_signature_included() -> None:
    assert Finish(requester_verify_data=H, signature=SIG64).signature_included
    assert not Finish(requester_verify_data=H).signature_included


def test_version_spdm_versions() -> None:
    assert Version(version_number_entries=(0x1000, 0x1200)).spdm_versions == (0x10, 0x12)


# --------------------------------------------------------------------------- fuzz


CONTEXTS: list[tuple[NegotiatedSizes | None, SpdmMessage | None]] = [
    (None, None),
    (SIZES, None),
    (CLEAR, None),
    *[(s[1] or SIZES, s[2]) for s in SAMPLES if s[2] is not None],
]


@settings(max_examples=200)
@given(data=st.binary(max_size=300), context=st.sampled_from(CONTEXTS))
def test_fuzz_only_ratls_errors(
    data: bytes, context: tuple[NegotiatedSizes | None, SpdmMessage | None]
) -> None:
    sizes, request = context
    try:
        message = decode_message(data, sizes=sizes, request=request)
    except RatlsError:
        return
    assert message.encode() == data


@settings(max_examples=200)
@given(
    code=st.sampled_from(sorted({m.CODE for m, _, _ in SAMPLES})),
    version=st.sampled_from([0x10, 0x12]),
    body=st.binary(max_size=200),
    context=st.sampled_from(CONTEXTS),
)
def test_fuzz_known_codes(
    code: int,
    version: int,
    body: bytes,
    context: tuple[NegotiatedSizes | None, SpdmMessage | None],
) -> None:
    sizes, request = context
    data = bytes((version, code)) + body
    try:
        message = decode_message(data, sizes=sizes, request=request)
    except RatlsError:
        return
    assert message.encode() == data


@settings(max_examples=200)
@given(
    index=st.integers(0, len(RECORDED) - 1),
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
)
def test_fuzz_mutated_recorded_messages(index: int, position: int, value: int) -> None:
    _, data, request = RECORDED[index]
    mutated = bytearray(data)
    mutated[position % len(data)] = value
    try:
        message = decode_message(bytes(mutated), sizes=SIZES, request=request)
    except RatlsError:
        return
    assert message.encode() == bytes(mutated)


@settings(max_examples=200)
@given(data=st.binary(max_size=200), count=st.integers(0, 4))
def test_fuzz_structure_parsers(data: bytes, count: int) -> None:
    for call in (
        lambda: parse_cert_chain(data, 32),
        lambda: parse_measurement_record(data, count),
        lambda: decode_opaque_data(data),
        lambda: decode_secured_message_opaque(data),
    ):
        with contextlib.suppress(RatlsError):
            call()
