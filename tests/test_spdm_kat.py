"""Known-answer test: replay a recorded libspdm SPDM 1.2 session byte for byte.

tests/vectors/spdm12-session.json holds the 30 messages of a session between
libspdm's requester and responder emulators (SHA-384, ECDSA P-384, secp384r1,
AES-256-GCM, MCTP), every key-schedule intermediate libspdm logged, and the
encrypted MCTP frames.  Every value is recomputed here from the messages alone
(plus the DHE secret, since the ephemeral private keys were not recorded).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ratls._errors import SignatureMismatch
from ratls.spdm._codec import (
    Algorithms,
    Certificate,
    ChallengeAuth,
    Digests,
    Finish,
    KeyExchange,
    KeyExchangeRsp,
    Measurements,
    NegotiatedSizes,
    SpdmMessage,
    decode_message,
    parse_cert_chain,
)
from ratls.spdm._constants import AlgType, MeasurementSummaryHashType
from ratls.spdm._crypto import (
    CONTEXT_RESPONDER_CHALLENGE_AUTH,
    CONTEXT_RESPONDER_KEY_EXCHANGE_RSP,
    CONTEXT_RESPONDER_MEASUREMENTS,
    Transcript,
    check_verify_data,
    derive_data_secrets,
    derive_handshake_secrets,
    derive_traffic_keys,
    hash_algorithm,
    measurement_summary_hash,
    verify_data,
    verify_signature,
)
from ratls.spdm._secured import SecuredChannel
from ratls.spdm._transport import MctpBinding

VECTOR = Path(__file__).parent / "vectors" / "spdm12-session.json"


def load_vector() -> dict[str, Any]:
    with VECTOR.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


V = load_vector()
I = V["intermediates"]  # noqa: E741
RAW = [bytes.fromhex(m["hex"]) for m in V["messages"]]
ALG = hash_algorithm(0x2)
VERSION = 0x12


def iv(name: str, index: int = 0) -> bytes:
    return bytes.fromhex(I[name][index])


def decode_all() -> list[SpdmMessage]:
    sizes: NegotiatedSizes | None = None
    request: SpdmMessage | None = None
    out: list[SpdmMessage] = []
    for meta, data in zip(V["messages"], RAW, strict=True):
        message = decode_message(data, sizes=sizes, request=request)
        if isinstance(message, Algorithms):
            sizes = NegotiatedSizes.from_algorithms(message)
        if meta["dir"] == "req":
            request = message
        out.append(message)
    return out


MESSAGES = decode_all()


def vca() -> Transcript:
    t = Transcript(ALG)
    for data in RAW[:6]:
        t.update(data)
    return t


def msg(index: int) -> Any:
    return MESSAGES[index]


def slot0_chain() -> bytes:
    cert = msg(9)
    assert isinstance(cert, Certificate)
    assert cert.slot_id == 0
    assert cert.remainder_length == 0
    return cert.cert_chain


def responder_key() -> ec.EllipticCurvePublicKey:
    leaf = x509.load_der_x509_certificate(parse_cert_chain(slot0_chain(), 48).leaf)
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def algorithms() -> Algorithms:
    a = msg(5)
    assert isinstance(a, Algorithms)
    return a


def test_every_message_decodes_and_reencodes() -> None:
    assert len(MESSAGES) == 30
    for message, data in zip(MESSAGES, RAW, strict=True):
        assert message.encode() == data


def test_negotiated_algorithms() -> None:
    a = algorithms()
    assert a.base_hash_sel == 0x2  # SHA-384
    assert a.base_asym_sel == 0x80  # ECDSA P-384
    assert a.measurement_hash_algo == 0x4  # SHA-384
    assert a.selected(AlgType.DHE) == 0x10  # secp384r1
    assert a.selected(AlgType.AEAD) == 0x2  # AES-256-GCM


def test_digests_and_root_hash() -> None:
    chain0 = slot0_chain()
    cert1 = msg(11)
    assert isinstance(cert1, Certificate)
    assert cert1.slot_id == 1
    digests = msg(7)
    assert isinstance(digests, Digests)
    assert digests.slot_mask == 0b11
    assert digests.digests == (
        hashlib.sha384(chain0).digest(),
        hashlib.sha384(cert1.cert_chain).digest(),
    )
    for chain in (chain0, cert1.cert_chain):
        parsed = parse_cert_chain(chain, 48)
        assert parsed.root_hash == hashlib.sha384(parsed.certificates[0]).digest()


def m1_hash() -> bytes:
    t = vca()
    for data in RAW[6:13]:  # B (all digests and certificate chunks) and CHALLENGE
        t.update(data)
    auth = msg(13)
    assert isinstance(auth, ChallengeAuth)
    t.update(auth.encode_unsigned())
    return t.digest()


def test_challenge_auth_signature_and_summary_hash() -> None:
    auth = msg(13)
    assert isinstance(auth, ChallengeAuth)
    assert auth.cert_chain_hash == hashlib.sha384(slot0_chain()).digest()
    assert auth.nonce != msg(12).nonce  # the responder's own nonce
    verify_signature(
        responder_key(),
        auth.signature,
        base_asym_algo=0x80,
        base_hash_algo=0x2,
        spdm_version=VERSION,
        context=CONTEXT_RESPONDER_CHALLENGE_AUTH,
        transcript_hash=m1_hash(),
    )
    measurements = msg(21)
    assert isinstance(measurements, Measurements)
    assert auth.measurement_summary_hash == measurement_summary_hash(
        ALG, measurements.measurement_record, MeasurementSummaryHashType.ALL
    )


def test_challenge_auth_signature_fails_without_b() -> None:
    auth = msg(13)
    t = vca()
    t.update(RAW[12])
    t.update(auth.encode_unsigned())
    with pytest.raises(SignatureMismatch) as info:
        verify_signature(
            responder_key(),
            auth.signature,
            base_asym_algo=0x80,
            base_hash_algo=0x2,
            spdm_version=VERSION,
            context=CONTEXT_RESPONDER_CHALLENGE_AUTH,
            transcript_hash=t.digest(),
        )
    assert isinstance(info.value.__cause__, InvalidSignature)


@pytest.mark.parametrize(("request_index", "vector_index"), [(20, 0), (26, 1)])
def test_measurements_transcript_and_signature(request_index: int, vector_index: int) -> None:
    l1 = vca()
    l1.update(RAW[request_index])
    response = msg(request_index + 1)
    assert isinstance(response, Measurements)
    l1.update(response.encode_unsigned())
    assert l1.digest().hex() == I["l1l2 hash"][vector_index]
    verify_signature(
        responder_key(),
        response.signature,
        base_asym_algo=0x80,
        base_hash_algo=0x2,
        spdm_version=VERSION,
        context=CONTEXT_RESPONDER_MEASUREMENTS,
        transcript_hash=l1.digest(),
    )


def test_measurement_signature_under_the_wrong_context_fails() -> None:
    l1 = vca()
    l1.update(RAW[20])
    response = msg(21)
    l1.update(response.encode_unsigned())
    with pytest.raises(SignatureMismatch):
        verify_signature(
            responder_key(),
            response.signature,
            base_asym_algo=0x80,
            base_hash_algo=0x2,
            spdm_version=VERSION,
            context=CONTEXT_RESPONDER_CHALLENGE_AUTH,
            transcript_hash=l1.digest(),
        )


def session_transcript() -> tuple[Transcript, KeyExchangeRsp]:
    t = vca()
    t.update(hashlib.sha384(slot0_chain()).digest())
    ke = msg(22)
    rsp = msg(23)
    assert isinstance(ke, KeyExchange)
    assert isinstance(rsp, KeyExchangeRsp)
    t.update(ke.encode())
    t.update(rsp.encode_unsigned())
    return t, rsp


def handshake() -> tuple[bytes, bytes, Any]:
    t, rsp = session_transcript()
    t.update(rsp.signature)
    th1 = t.digest()
    secrets = derive_handshake_secrets(
        ALG, spdm_version=VERSION, shared_secret=iv("[DHE Secret]"), th1_hash=th1
    )
    return th1, rsp.responder_verify_data, secrets


def test_key_exchange_signature_and_th1() -> None:
    t, rsp = session_transcript()
    assert t.digest().hex() == I["th_curr hash"][0]
    verify_signature(
        responder_key(),
        rsp.signature,
        base_asym_algo=0x80,
        base_hash_algo=0x2,
        spdm_version=VERSION,
        context=CONTEXT_RESPONDER_KEY_EXCHANGE_RSP,
        transcript_hash=t.digest(),
    )
    assert rsp.rsp_session_id << 16 | msg(22).req_session_id == 0xFFFFFFFF
    th1, _, _ = handshake()
    assert th1.hex() == I["th1 hash"][0]


def test_key_exchange_summary_hash() -> None:
    rsp = msg(23)
    measurements = msg(21)
    assert rsp.measurement_summary_hash == measurement_summary_hash(
        ALG, measurements.measurement_record, MeasurementSummaryHashType.ALL
    )


def test_handshake_secrets() -> None:
    _, _, secrets = handshake()
    assert secrets.handshake_secret.hex() == I["handshake_secret (0x30)"][0]
    assert secrets.request_handshake_secret.hex() == I["request_handshake_secret (0x30)"][0]
    assert secrets.response_handshake_secret.hex() == I["response_handshake_secret (0x30)"][0]
    assert secrets.request_finished_key.hex() == I["finished_key (0x30)"][0]
    assert secrets.response_finished_key.hex() == I["finished_key (0x30)"][1]


def test_handshake_keys() -> None:
    _, _, secrets = handshake()
    req = derive_traffic_keys(
        ALG, spdm_version=VERSION, secret=secrets.request_handshake_secret, key_size=32
    )
    rsp = derive_traffic_keys(
        ALG, spdm_version=VERSION, secret=secrets.response_handshake_secret, key_size=32
    )
    assert (req.key.hex(), req.iv.hex()) == (I["key (0x20)"][0], I["iv (0xc)"][0])
    assert (rsp.key.hex(), rsp.iv.hex()) == (I["key (0x20)"][1], I["iv (0xc)"][1])


def test_verify_data() -> None:
    th1, responder_verify_data, secrets = handshake()
    expected = verify_data(ALG, secrets.response_finished_key, th1)
    assert expected.hex() == I["th_curr hmac"][0]
    check_verify_data(expected, responder_verify_data, claim="rsp")
    t, rsp = session_transcript()
    t.update(rsp.signature)
    t.update(rsp.responder_verify_data)
    finish = msg(24)
    assert isinstance(finish, Finish)
    t.update(finish.encode_header())
    requester = verify_data(ALG, secrets.request_finished_key, t.digest())
    assert requester.hex() == I["th_curr hmac"][1]
    check_verify_data(requester, finish.requester_verify_data, claim="req")
    with pytest.raises(SignatureMismatch):
        check_verify_data(requester, bytes(48), claim="req")


def th2() -> bytes:
    t, rsp = session_transcript()
    t.update(rsp.signature + rsp.responder_verify_data)
    t.update(RAW[24])
    t.update(RAW[25])
    return t.digest()


def test_th2_and_data_secrets() -> None:
    assert th2().hex() == I["th2 hash"][0]
    _, _, secrets = handshake()
    data = derive_data_secrets(
        ALG, spdm_version=VERSION, handshake_secret=secrets.handshake_secret, th2_hash=th2()
    )
    assert data.master_secret.hex() == I["master_secret (0x30)"][0]
    assert data.request_data_secret.hex() == I["request_data_secret (0x30)"][0]
    assert data.response_data_secret.hex() == I["response_data_secret (0x30)"][0]
    assert data.export_master_secret.hex() == I["export_master_secret (0x30)"][0]
    req = derive_traffic_keys(
        ALG, spdm_version=VERSION, secret=data.request_data_secret, key_size=32
    )
    rsp = derive_traffic_keys(
        ALG, spdm_version=VERSION, secret=data.response_data_secret, key_size=32
    )
    assert (req.key.hex(), req.iv.hex()) == (I["key (0x20)"][2], I["iv (0xc)"][2])
    assert (rsp.key.hex(), rsp.iv.hex()) == (I["key (0x20)"][3], I["iv (0xc)"][3])


def test_secured_frames_decrypt_to_the_recorded_messages() -> None:
    binding = MctpBinding()
    keys = [bytes.fromhex(k) for k in I["key (0x20)"]]
    ivs = [bytes.fromhex(v) for v in I["iv (0xc)"]]
    channels = {
        "req": SecuredChannel(
            session_id=0xFFFFFFFF, aead=0x2, key=keys[0], iv=ivs[0], sequence_number_size=2
        ),
        "rsp": SecuredChannel(
            session_id=0xFFFFFFFF, aead=0x2, key=keys[1], iv=ivs[1], sequence_number_size=2
        ),
    }
    in_session = [i for i, m in enumerate(V["messages"]) if m["session"] != "0"]
    assert len(in_session) == len(V["secured_mctp_frames"]) == 6
    for position, (index, frame) in enumerate(
        zip(in_session, V["secured_mctp_frames"], strict=True)
    ):
        if position == 2:  # after FINISH_RSP the data keys take over
            channels["req"].rekey(keys[2], ivs[2])
            channels["rsp"].rekey(keys[3], ivs[3])
        decoded = binding.decode(bytes.fromhex(frame["hex"]))
        assert decoded.secured
        plain = channels[frame["dir"]].open(decoded.body)
        assert binding.unwrap_application_data(plain) == RAW[index]
    assert channels["req"].sequence_number == 2
    assert channels["rsp"].sequence_number == 2


def test_secured_frame_reencrypts_byte_for_byte() -> None:
    """Seal FINISH again with the recorded padding: the frame is identical."""
    binding = MctpBinding()
    frame = bytes.fromhex(V["secured_mctp_frames"][0]["hex"])
    key = bytes.fromhex(I["key (0x20)"][0])
    nonce_iv = bytes.fromhex(I["iv (0xc)"][0])
    reader = SecuredChannel(
        session_id=0xFFFFFFFF, aead=0x2, key=key, iv=nonce_iv, sequence_number_size=2
    )
    inner = binding.wrap_application_data(RAW[24])
    assert reader.open(binding.decode(frame).body) == inner
    # Recover the padding by decrypting with the AEAD directly.
    body = frame[1:]
    plaintext = AESGCM(key).decrypt(nonce_iv, body[8:], body[:8])
    padding = plaintext[2 + len(inner) :]
    writer = SecuredChannel(
        session_id=0xFFFFFFFF, aead=0x2, key=key, iv=nonce_iv, sequence_number_size=2
    )
    assert binding.encode(writer.seal(inner, padding=padding), secured=True) == frame
