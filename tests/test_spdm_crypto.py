"""SPDM signing rule, transcripts, key schedule, DHE, secured records and transport framing."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import RatlsError, SignatureMismatch
from ratls.spdm._codec import MeasurementBlock
from ratls.spdm._constants import AeadAlgorithm, BaseAsymAlgo, MeasurementSummaryHashType
from ratls.spdm._crypto import (
    CONTEXT_REQUESTER_FINISH,
    CONTEXT_RESPONDER_CHALLENGE_AUTH,
    CONTEXT_RESPONDER_KEY_EXCHANGE_RSP,
    DataSecrets,
    HandshakeSecrets,
    TrafficKeys,
    Transcript,
    bin_concat,
    dhe_generate,
    dhe_shared_secret,
    hash_algorithm,
    hkdf_expand,
    hkdf_extract,
    measurement_hash_algorithm,
    measurement_summary_hash,
    sign,
    signing_prefix,
    update_traffic_secret,
    verify_signature,
)
from ratls.spdm._errors import (
    SpdmDecodeError,
    SpdmDecryptError,
    SpdmMessageTooLarge,
    SpdmSequenceOverflow,
)
from ratls.spdm._secured import (
    MAX_SEQUENCE_NUMBER,
    SecuredChannel,
    SecuredRecord,
    aead_key_size,
    aead_nonce,
    decode_secured_record,
)
from ratls.spdm._transport import (
    EmuCommand,
    EmuFrame,
    EmuStreamDecoder,
    EmuTransportType,
    MctpBinding,
    TcpBinding,
    TcpStreamDecoder,
    decode_emu_header,
)

TH = bytes(range(48))

# --------------------------------------------------------------------------- signing


def test_signing_prefix_layout() -> None:
    prefix = signing_prefix(0x12, CONTEXT_RESPONDER_CHALLENGE_AUTH)
    assert len(prefix) == 100
    assert prefix[:64] == b"dmtf-spdm-v1.2.*" * 4
    assert prefix[64:68] == bytes(4)
    assert prefix[68:] == b"responder-challenge_auth signing"
    assert signing_prefix(0x13, CONTEXT_REQUESTER_FINISH)[:16] == b"dmtf-spdm-v1.3.*"
    assert signing_prefix(0x12, CONTEXT_REQUESTER_FINISH)[64:] == (
        bytes(36 - 24) + b"requester-finish signing"
    )


def test_signing_prefix_refuses() -> None:
    with pytest.raises(ValueError, match=r"1\.2"):
        signing_prefix(0x11, CONTEXT_REQUESTER_FINISH)
    with pytest.raises(ValueError, match="36"):
        signing_prefix(0x12, bytes(37))


def _keys() -> list[tuple[int, int, object]]:
    return [
        (BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256, 0x1, ec.generate_private_key(ec.SECP256R1())),
        (BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384, 0x2, ec.generate_private_key(ec.SECP384R1())),
        (
            BaseAsymAlgo.TPM_ALG_RSAPSS_2048,
            0x1,
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ),
        (
            BaseAsymAlgo.TPM_ALG_RSASSA_2048,
            0x4,
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ),
        (BaseAsymAlgo.EDDSA_ED25519, 0x4, ed25519.Ed25519PrivateKey.generate()),
    ]


KEYS = _keys()


@pytest.mark.parametrize(("asym", "hash_bit", "key"), KEYS, ids=lambda v: str(v)[:20])
def test_sign_verify_round_trip(asym: int, hash_bit: int, key: object) -> None:
    assert isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    )
    kwargs = {
        "base_asym_algo": asym,
        "base_hash_algo": hash_bit,
        "spdm_version": 0x12,
        "context": CONTEXT_RESPONDER_KEY_EXCHANGE_RSP,
        "transcript_hash": TH,
    }
    signature = sign(key, **kwargs)  # type: ignore[arg-type]
    verify_signature(key.public_key(), signature, **kwargs)  # type: ignore[arg-type]
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(SignatureMismatch) as info:
        verify_signature(key.public_key(), bad, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value.__cause__, InvalidSignature)
    other = dict(kwargs, transcript_hash=bytes(48))
    with pytest.raises(SignatureMismatch):
        verify_signature(key.public_key(), signature, **other)  # type: ignore[arg-type]
    other = dict(kwargs, spdm_version=0x13)
    with pytest.raises(SignatureMismatch):
        verify_signature(key.public_key(), signature, **other)  # type: ignore[arg-type]


def test_ecdsa_signature_is_raw_r_s() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    signature = sign(
        key,
        base_asym_algo=0x80,
        base_hash_algo=0x2,
        spdm_version=0x12,
        context=CONTEXT_RESPONDER_CHALLENGE_AUTH,
        transcript_hash=TH,
    )
    assert len(signature) == 96
    with pytest.raises(SignatureMismatch, match="96 bytes"):
        verify_signature(
            key.public_key(),
            signature[:-1],
            base_asym_algo=0x80,
            base_hash_algo=0x2,
            spdm_version=0x12,
            context=CONTEXT_RESPONDER_CHALLENGE_AUTH,
            transcript_hash=TH,
        )


def test_signature_key_algorithm_mismatch() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    common = {
        "base_hash_algo": 0x2,
        "spdm_version": 0x12,
        "context": CONTEXT_RESPONDER_CHALLENGE_AUTH,
        "transcript_hash": TH,
    }
    for asym, key in ((0x80, p256), (0x2, p256), (0x400, p256), (0x10, ed)):
        with pytest.raises(ValueError, match="does not match"):
            sign(key, base_asym_algo=asym, **common)  # type: ignore[arg-type]
        with pytest.raises(SignatureMismatch, match="does not match"):
            verify_signature(key.public_key(), bytes(96), base_asym_algo=asym, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported"):
        sign(p256, base_asym_algo=0x800, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported"):
        verify_signature(p256.public_key(), b"", base_asym_algo=0x800, **common)  # type: ignore[arg-type]


def test_hash_tables() -> None:
    assert isinstance(hash_algorithm(0x2), hashes.SHA384)
    assert isinstance(hash_algorithm(0x8), hashes.SHA3_256)
    with pytest.raises(ValueError, match="unsupported"):
        hash_algorithm(0x40)
    assert measurement_hash_algorithm(0x1) is None
    assert isinstance(measurement_hash_algorithm(0x8), hashes.SHA512)
    with pytest.raises(ValueError, match="unsupported"):
        measurement_hash_algorithm(0x80)


# --------------------------------------------------------------------------- transcripts


def test_transcript_forks_are_independent() -> None:
    vca = Transcript(hashes.SHA256())
    vca.update(b"vca")
    m1 = vca.copy()
    m1.update(b"challenge")
    ref = hashes.Hash(hashes.SHA256())
    ref.update(b"vcachallenge")
    assert m1.digest() == ref.finalize()
    ref = hashes.Hash(hashes.SHA256())
    ref.update(b"vca")
    assert vca.digest() == ref.finalize()
    assert vca.digest() == vca.digest()  # digest does not end the transcript
    assert (vca.length, m1.length) == (3, 12)
    assert repr(m1) == "Transcript(sha256, length=12)"
    assert isinstance(m1.algorithm, hashes.SHA256)


def test_measurement_summary_hash_selects_blocks() -> None:
    rom = MeasurementBlock(index=1, value_type=0x00, value=bytes(32))
    fw = MeasurementBlock(index=2, value_type=0x01, value=bytes(32))
    alg = hashes.SHA256()

    def digest(data: bytes) -> bytes:
        h = hashes.Hash(hashes.SHA256())
        h.update(data)
        return h.finalize()

    assert measurement_summary_hash(alg, [rom, fw], MeasurementSummaryHashType.NONE) == b""
    assert measurement_summary_hash(alg, [rom, fw], MeasurementSummaryHashType.TCB) == digest(
        rom.encode()
    )
    assert measurement_summary_hash(alg, [rom, fw], MeasurementSummaryHashType.ALL) == digest(
        rom.encode() + fw.encode()
    )


# --------------------------------------------------------------------------- key schedule


def test_hkdf_rfc5869_case_1() -> None:
    alg = hashes.SHA256()
    prk = hkdf_extract(alg, bytes(range(13)), b"\x0b" * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = hkdf_expand(alg, prk, bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    with pytest.raises(ValueError, match="too long"):
        hkdf_expand(alg, prk, b"", 255 * 32 + 1)


def test_bin_concat() -> None:
    assert bin_concat(48, b"finished", spdm_version=0x12) == b"\x30\x00spdm1.2 finished"
    assert bin_concat(12, b"iv", b"ctx", spdm_version=0x13) == b"\x0c\x00spdm1.3 ivctx"


def test_traffic_update_changes_secret() -> None:
    alg = hashes.SHA384()
    secret = bytes(48)
    updated = update_traffic_secret(alg, spdm_version=0x12, secret=secret)
    assert updated == hkdf_expand(alg, secret, b"\x30\x00spdm1.2 traffic upd", 48)
    assert updated != secret


def test_secret_reprs_hide_secrets() -> None:
    secret = b"\xaa" * 48
    values: list[HandshakeSecrets | DataSecrets | TrafficKeys] = [
        HandshakeSecrets(
            handshake_secret=secret,
            request_handshake_secret=secret,
            response_handshake_secret=secret,
            request_finished_key=secret,
            response_finished_key=secret,
        ),
        DataSecrets(
            master_secret=secret,
            request_data_secret=secret,
            response_data_secret=secret,
            export_master_secret=secret,
        ),
        TrafficKeys(key=secret[:32], iv=secret[:12]),
    ]
    for value in values:
        assert "aa" not in repr(value)
        assert "\\xaa" not in repr(value)
        assert value == dataclasses.replace(value)
        assert hash(value) == hash(dataclasses.replace(value))
        assert value != object()
    assert values[2] != TrafficKeys(key=bytes(32), iv=bytes(12))


# --------------------------------------------------------------------------- DHE


@pytest.mark.parametrize("group", [0x8, 0x10, 0x20])
def test_dhe_agreement(group: int) -> None:
    a, a_data = dhe_generate(group)
    b, b_data = dhe_generate(group)
    assert len(a_data) == {0x8: 64, 0x10: 96, 0x20: 132}[group]
    assert dhe_shared_secret(a, b_data, group) == dhe_shared_secret(b, a_data, group)


def test_dhe_refuses_bad_points_and_groups() -> None:
    key, data = dhe_generate(0x10)
    with pytest.raises(SpdmDecodeError, match="96 bytes"):
        dhe_shared_secret(key, data[:-1], 0x10)
    with pytest.raises(SpdmDecodeError, match="not a point"):
        dhe_shared_secret(key, data[:-1] + bytes([data[-1] ^ 1]), 0x10)
    with pytest.raises(ValueError, match="unsupported"):
        dhe_generate(0x2)


# --------------------------------------------------------------------------- secured records


def test_libspdm_aead_vector() -> None:
    """DMTF libspdm's encode/decode unit test vector (AES-256-GCM, 8-byte sequence)."""
    channel = SecuredChannel(
        session_id=0x00112233,
        aead=AeadAlgorithm.AES_256_GCM,
        key=bytes(range(32)),
        iv=bytes(2 * i for i in range(12)),
        sequence_number_size=8,
    )
    record = channel.seal(bytes(range(16)), padding=b"")
    assert record[:14] == bytes.fromhex("33221100" + "0000000000000000" + "2200")
    assert record[14:-16].hex() == "9bfed3b7043d3286603d861733d67f959a20"
    assert record[-16:].hex() == "3d4fac58cb706cf5a0270af673f0fe36"


def _pair(aead: int, width: int = 2) -> tuple[SecuredChannel, SecuredChannel]:
    size = aead_key_size(aead)

    def make() -> SecuredChannel:
        return SecuredChannel(
            session_id=0xFFFE0001,
            aead=aead,
            key=bytes(range(size)),
            iv=bytes(range(12)),
            sequence_number_size=width,
            padding_range=(1, 32),
        )

    return make(), make()


@pytest.mark.parametrize("aead", [0x1, 0x2, 0x4])
@pytest.mark.parametrize("width", [0, 2, 8])
def test_seal_open_round_trip(aead: int, width: int) -> None:
    writer, reader = _pair(aead, width)
    for i in range(3):
        message = bytes([i]) * (10 + i)
        record = writer.seal(message)
        assert reader.open(record) == message
    assert writer.sequence_number == reader.sequence_number == 3


def test_open_refuses_tampering_and_does_not_advance() -> None:
    writer, reader = _pair(0x2)
    record = bytearray(writer.seal(b"hello"))
    record[-1] ^= 1
    with pytest.raises(SpdmDecryptError) as info:
        reader.open(bytes(record))
    assert isinstance(info.value.__cause__, InvalidTag)
    assert reader.sequence_number == 0
    record[-1] ^= 1
    assert reader.open(bytes(record)) == b"hello"


def test_open_refuses_wrong_session_and_sequence() -> None:
    writer, reader = _pair(0x2)
    first = writer.seal(b"one")
    second = writer.seal(b"two")
    with pytest.raises(SpdmDecryptError, match="sequence number 1, expected 0"):
        reader.open(second)
    other = SecuredChannel(
        session_id=1, aead=0x2, key=bytes(32), iv=bytes(12), sequence_number_size=2
    )
    with pytest.raises(SpdmDecryptError, match="session"):
        other.open(first)
    assert reader.open(first) == b"one"
    with pytest.raises(SpdmDecryptError):
        reader.open(first)  # replay


def test_open_refuses_bad_inner_length() -> None:
    writer, reader = _pair(0x2)
    # A record whose plaintext claims more application data than it holds.
    record = writer.seal(b"", padding=b"")
    assert reader.open(record) == b""
    evil_writer, evil_reader = _pair(0x2)
    sealed = evil_writer._cipher().encrypt(
        aead_nonce(evil_writer.iv, 0), b"\x05\x00ab", b"\x01\x00\xfe\xff\x00\x00\x14\x00"
    )
    forged = b"\x01\x00\xfe\xff\x00\x00\x14\x00" + sealed
    with pytest.raises(SpdmDecryptError, match="exceeds"):
        evil_reader.open(forged)
    short = evil_writer._cipher().encrypt(
        aead_nonce(evil_writer.iv, 0), b"\x05", b"\x01\x00\xfe\xff\x00\x00\x11\x00"
    )
    with pytest.raises(SpdmDecryptError, match="no ApplicationDataLength"):
        evil_reader.open(b"\x01\x00\xfe\xff\x00\x00\x11\x00" + short)


def test_sequence_overflow() -> None:
    writer, reader = _pair(0x2, 8)
    writer.sequence_number = MAX_SEQUENCE_NUMBER
    last = writer.seal(b"last")
    reader.sequence_number = MAX_SEQUENCE_NUMBER
    assert reader.open(last) == b"last"
    with pytest.raises(SpdmSequenceOverflow):
        writer.seal(b"one more")
    with pytest.raises(SpdmSequenceOverflow):
        reader.open(last)


def test_rekey_restarts_sequence() -> None:
    writer, reader = _pair(0x4)
    reader.open(writer.seal(b"a"))
    writer.rekey(bytes(32), bytes(12))
    reader.rekey(bytes(32), bytes(12))
    assert writer.sequence_number == 0
    assert reader.open(writer.seal(b"b")) == b"b"
    with pytest.raises(ValueError, match="size"):
        writer.rekey(bytes(16), bytes(12))


def test_channel_refuses_bad_keys() -> None:
    with pytest.raises(ValueError, match="key size"):
        SecuredChannel(session_id=0, aead=0x2, key=bytes(16), iv=bytes(12), sequence_number_size=2)
    with pytest.raises(ValueError, match="iv"):
        SecuredChannel(session_id=0, aead=0x2, key=bytes(32), iv=bytes(8), sequence_number_size=2)
    with pytest.raises(ValueError, match="unsupported"):
        aead_key_size(0x8)
    with pytest.raises(ValueError, match="too large"):
        _pair(0x2)[0].seal(bytes(0x10000))
    assert "key" not in repr(_pair(0x2)[0]).replace("key=", "")


def test_record_three_ways_and_value_semantics() -> None:
    record = SecuredRecord(
        session_id=0x01020304,
        sequence_number=7,
        sequence_number_size=2,
        encrypted_data=b"cipher",
        mac=bytes(range(16)),
    )
    data = record.encode()
    assert data[:8] == bytes.fromhex("0403020107001600")
    assert decode_secured_record(data, sequence_number_size=2) == record
    for size in range(len(data)):
        with pytest.raises(SpdmDecodeError):
            decode_secured_record(data[:size], sequence_number_size=2)
    with pytest.raises(SpdmDecodeError):
        decode_secured_record(data + b"\0", sequence_number_size=2)
    assert hash(record) == hash(dataclasses.replace(record))
    assert record != dataclasses.replace(record, sequence_number=8)
    assert record != object()
    assert repr(record).startswith("SecuredRecord(")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequence_number_size": 9},
        {"sequence_number": 0x10000},
        {"session_id": 1 << 32},
        {"mac": bytes(15)},
        {"encrypted_data": bytes(0xFFF0)},
    ],
)
def test_record_refuses_bad_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "session_id": 1,
        "sequence_number": 0,
        "sequence_number_size": 2,
        "encrypted_data": b"",
        "mac": bytes(16),
    }
    fields.update(kwargs)
    with pytest.raises(ValueError):  # noqa: PT011 - one message per field
        SecuredRecord(**fields)  # type: ignore[arg-type]


def test_record_length_shorter_than_mac() -> None:
    with pytest.raises(SpdmDecodeError, match="MAC"):
        decode_secured_record(b"\0\0\0\0\0\0\x0f\x00" + bytes(15), sequence_number_size=2)


@settings(max_examples=200)
@given(data=st.binary(max_size=80), width=st.sampled_from([0, 2, 8]))
def test_fuzz_records_only_ratls_errors(data: bytes, width: int) -> None:
    _, reader = _pair(0x2, width)
    try:
        reader.open(data)
    except RatlsError:
        return
    raise AssertionError("random bytes authenticated")  # pragma: no cover


# --------------------------------------------------------------------------- transports


def test_mctp_binding() -> None:
    mctp = MctpBinding()
    assert mctp.encode(b"\x10\x84\x00\x00") == b"\x05\x10\x84\x00\x00"
    assert mctp.encode(b"rec", secured=True) == b"\x06rec"
    decoded = mctp.decode(b"\x06rec")
    assert decoded.secured
    assert decoded.body == b"rec"
    assert not mctp.decode(b"\x05").secured
    assert mctp.unwrap_application_data(mctp.wrap_application_data(b"m")) == b"m"
    for bad in (b"", b"\x07abc"):
        with pytest.raises(SpdmDecodeError):
            mctp.decode(bad)
    for bad in (b"", b"\x06m"):
        with pytest.raises(SpdmDecodeError):
            mctp.unwrap_application_data(bad)


def test_tcp_binding() -> None:
    tcp = TcpBinding()
    frame = tcp.encode(b"\x10\x84\x00\x00")
    assert frame == bytes.fromhex("06000105") + b"\x10\x84\x00\x00"
    assert tcp.decode(frame).body == b"\x10\x84\x00\x00"
    assert tcp.decode(tcp.encode(b"r", secured=True)).secured
    assert tcp.unwrap_application_data(tcp.wrap_application_data(b"m")) == b"m"
    for size in range(4):
        with pytest.raises(SpdmDecodeError):
            tcp.decode(frame[:size])
    with pytest.raises(SpdmDecodeError, match="PayloadLength"):
        tcp.decode(frame + b"\0")
    with pytest.raises(SpdmDecodeError, match="BindingVersion"):
        tcp.decode(frame[:2] + b"\x02" + frame[3:])
    with pytest.raises(SpdmDecodeError, match="MessageType"):
        tcp.decode(frame[:3] + b"\xbf" + frame[4:])
    with pytest.raises(SpdmDecodeError, match="inner"):
        tcp.unwrap_application_data(tcp.encode(b"m", secured=True))
    with pytest.raises(ValueError, match="too large"):
        tcp.encode(bytes(0xFFFE))
    assert (TcpBinding.sequence_number_size, MctpBinding.sequence_number_size) == (0, 2)


def test_emu_header() -> None:
    frame = EmuFrame(
        command=EmuCommand.NORMAL, transport_type=EmuTransportType.MCTP, payload_size=5
    )
    data = frame.encode()
    assert data == bytes.fromhex("000000010000000100000005")
    assert decode_emu_header(data) == frame
    for bad in (data[:11], data + b"\0"):
        with pytest.raises(SpdmDecodeError):
            decode_emu_header(bad)


# --------------------------------------------------------------------------- stream decoders


def _emu_frames() -> list[tuple[EmuFrame, bytes]]:
    hello = b"Client Hello!\0"
    return [
        (EmuFrame(command=EmuCommand.TEST, transport_type=1, payload_size=len(hello)), hello),
        (
            EmuFrame(command=EmuCommand.NORMAL, transport_type=1, payload_size=5),
            b"\x05\x10\x84\0\0",
        ),
        (EmuFrame(command=EmuCommand.SHUTDOWN, transport_type=1, payload_size=0), b""),
    ]


@settings(max_examples=100)
@given(cuts=st.lists(st.integers(0, 60), max_size=8))
def test_emu_stream_decoder_any_chunking(cuts: list[int]) -> None:
    frames = _emu_frames()
    stream = b"".join(frame.encode() + payload for frame, payload in frames)
    decoder = EmuStreamDecoder()
    out = []
    position = 0
    for cut in [*sorted(cuts), len(stream)]:
        decoder.receive_data(stream[position:cut] if cut > position else b"")
        position = max(position, cut)
        while (item := decoder.next_frame()) is not None:
            out.append(item)
    assert out == frames
    assert decoder.buffered == 0


def test_emu_stream_decoder_limits() -> None:
    decoder = EmuStreamDecoder(max_payload=4)
    decoder.receive_data(EmuFrame(command=1, transport_type=1, payload_size=5).encode())
    with pytest.raises(SpdmMessageTooLarge):
        decoder.next_frame()
    decoder = EmuStreamDecoder()
    decoder.receive_data(bytes(11))
    assert decoder.next_frame() is None
    assert decoder.buffered == 11


@settings(max_examples=100)
@given(cuts=st.lists(st.integers(0, 40), max_size=8))
def test_tcp_stream_decoder_any_chunking(cuts: list[int]) -> None:
    tcp = TcpBinding()
    frames = [tcp.encode(b"\x10\x84\0\0"), tcp.encode(b"record-bytes", secured=True)]
    stream = b"".join(frames)
    decoder = TcpStreamDecoder()
    out = []
    position = 0
    for cut in [*sorted(cuts), len(stream)]:
        decoder.receive_data(stream[position:cut] if cut > position else b"")
        position = max(position, cut)
        while (item := decoder.next_frame()) is not None:
            out.append(item)
    assert out == frames
    assert [tcp.decode(f).secured for f in out] == [False, True]
    assert decoder.buffered == 0


def test_tcp_stream_decoder_limits() -> None:
    decoder = TcpStreamDecoder(max_payload=16)
    decoder.receive_data((17).to_bytes(2, "little"))
    with pytest.raises(SpdmMessageTooLarge):
        decoder.next_frame()
    decoder = TcpStreamDecoder()
    decoder.receive_data(b"\x01\x00")
    with pytest.raises(SpdmDecodeError, match="PayloadLength"):
        decoder.next_frame()
    decoder = TcpStreamDecoder()
    decoder.receive_data(b"\x06")
    assert decoder.next_frame() is None
    assert decoder.buffered == 1
