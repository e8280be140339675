"""Tests of the TPM 2.0 command path (ratls._tpm_device).

Pure tests (marshalling, response-code decoding, strict response parsing, transport
failure handling against fake peers on loopback or a pseudo-terminal) run everywhere;
the tests marked ``swtpm`` drive a real swtpm started by the fixtures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import shutil
import signal
import socket
import struct
import subprocess
import threading
import tty
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ratls._tpm_device as dev
from ratls._errors import AttesterError, AttesterUnavailable, RatlsError
from ratls._tpm_device import (
    MAX_RESPONSE_SIZE,
    NV_INDEX_RSA2048_EK_CERT,
    Attestation,
    AuthSession,
    CreatedObject,
    CreatedPrimary,
    DeviceTransport,
    LoadedObject,
    NvPublic,
    PublicArea,
    SigScheme,
    SwtpmSocketTransport,
    Tpm,
    TpmaNv,
    TpmCc,
    TpmCommandError,
    TpmResponseCode,
    TpmResponseFormatError,
    TpmRh,
    TpmSe,
    decode_response_code,
)
from ratls._tpm_structs import (
    AK_TEMPLATE_RSA2048,
    TCG_EK_AUTH_POLICY_SHA256,
    ObjectAttributes,
    TpmAlgId,
    TpmsCertifyInfo,
    TpmsRsaParms,
    TpmtPublic,
    TpmtScheme,
    TpmtSymDefObject,
    parse_tpm2b_attest,
    parse_tpm2b_public,
)
from ratls.sim._swtpm import Swtpm

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SHA1 = TpmAlgId.SHA1
SHA256 = TpmAlgId.SHA256

needs_swtpm = pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def response(rc: int = 0, body: bytes = b"", *, tag: int = 0x8001) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), rc) + body


class ScriptedTransport:
    """Answers each command with the next scripted response and records the commands."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self.commands: list[bytes] = []

    def transmit(self, command: bytes) -> bytes:
        self.commands.append(command)
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]

    def close(self) -> None:
        pass


class RecordingTransport:
    """Passes commands through and keeps the last response."""

    def __init__(self, inner: dev.TpmTransport) -> None:
        self.inner = inner
        self.last = b""

    def transmit(self, command: bytes) -> bytes:
        self.last = self.inner.transmit(command)
        return self.last

    def close(self) -> None:
        self.inner.close()


STORAGE_TEMPLATE = TpmtPublic(
    type=TpmAlgId.RSA,
    name_alg=TpmAlgId.SHA256,
    object_attributes=ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.USER_WITH_AUTH
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.DECRYPT,
    parameters=TpmsRsaParms(
        symmetric=TpmtSymDefObject(algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CFB),
        scheme=TpmtScheme(),
        key_bits=2048,
        exponent=0,
    ),
    unique=b"",
)


# --------------------------------------------------------------------------------------
# Response codes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rc", "name", "parameter", "handle", "session", "warning"),
    [
        (0x000, "TPM_RC_SUCCESS", None, None, None, False),
        (0x100, "TPM_RC_INITIALIZE", None, None, None, False),
        (0x101, "TPM_RC_FAILURE", None, None, None, False),
        (0x14C, "TPM_RC_NV_DEFINED", None, None, None, False),
        (0x18B, "TPM_RC_HANDLE", None, 1, None, False),
        (0x28B, "TPM_RC_HANDLE", None, 2, None, False),
        (0x08B, "TPM_RC_HANDLE", None, None, None, False),
        (0x9A2, "TPM_RC_BAD_AUTH", None, None, 1, False),
        (0x98E, "TPM_RC_AUTH_FAIL", None, None, 1, False),
        (0x1D5, "TPM_RC_SIZE", 1, None, None, False),
        (0x2C4, "TPM_RC_VALUE", 2, None, None, False),
        (0xFC4, "TPM_RC_VALUE", 15, None, None, False),
        (0x922, "TPM_RC_RETRY", None, None, None, True),
        (0x902, "TPM_RC_OBJECT_MEMORY", None, None, None, True),
        (0x911, "TPM_RC_REFERENCE_H1", None, None, None, True),
        (0x918, "TPM_RC_REFERENCE_S0", None, None, None, True),
    ],
)
def test_decode_response_code(
    rc: int,
    name: str,
    parameter: int | None,
    handle: int | None,
    session: int | None,
    warning: bool,
) -> None:
    code = decode_response_code(rc)
    assert code.rc == rc
    assert code.name == name
    assert (code.parameter, code.handle, code.session) == (parameter, handle, session)
    assert code.warning is warning
    assert code.format_one is bool(rc & 0x80)
    assert name in str(code)
    assert f"{rc:#x}" in str(code)


def test_decode_base_strips_position() -> None:
    assert decode_response_code(0x18B).base == decode_response_code(0x48B).base == 0x08B
    assert decode_response_code(0x9A2).base == 0x0A2
    assert decode_response_code(0x2C4).base == 0x084


@pytest.mark.parametrize(
    ("rc", "name"),
    [
        (0x0000001E, "TPM 1.2 response code"),
        (0x00000500, "vendor response code"),
        (0x000A0009, "non-TPM response code"),
        (0x0000017F, "error 0x17f"),
        (0x0000097F, "warning 0x97f"),
        (0x000000BF, "format-one error 0x0bf"),
    ],
)
def test_decode_unusual_codes(rc: int, name: str) -> None:
    assert decode_response_code(rc).name == name


@pytest.mark.parametrize("rc", [-1, 1 << 32])
def test_decode_out_of_range(rc: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        decode_response_code(rc)


@pytest.mark.skipif(shutil.which("tpm2_rc_decode") is None, reason="tpm2-tools not installed")
@pytest.mark.parametrize(
    "rc", [0x100, 0x18B, 0x28B, 0x9A2, 0x1D5, 0x3C4, 0x98E, 0x922, 0x14C, 0x5D5]
)
def test_decode_agrees_with_tpm2_tools(rc: int) -> None:
    out = subprocess.run(  # noqa: S603 - fixed argv
        ["tpm2_rc_decode", f"{rc:#x}"],  # noqa: S607 - looked up on PATH on purpose
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    code = decode_response_code(rc)
    if code.parameter is not None:
        assert f"parameter({code.parameter})" in out
    elif code.handle is not None:
        assert f"handle({code.handle})" in out
    elif code.session is not None:
        assert f"session({code.session})" in out
    elif code.warning:
        assert "warn" in out
    else:
        assert "error" in out


def test_command_error() -> None:
    exc = TpmCommandError(0x18B, TpmCc.READ_PUBLIC)
    assert isinstance(exc, AttesterError)
    assert exc.rc == 0x18B
    assert exc.command_code == TpmCc.READ_PUBLIC
    assert exc.code.name == "TPM_RC_HANDLE"
    assert exc.code.handle == 1
    assert "TPM2_READ_PUBLIC" in str(exc)
    assert "TPM_RC_HANDLE" in str(exc)
    assert "command 0x999" in str(TpmCommandError(0x100, 0x999))


def test_response_code_value_type() -> None:
    a, b, c = decode_response_code(0x18B), decode_response_code(0x18B), decode_response_code(0x28B)
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert "TpmResponseCode(rc=395" in repr(a)
    assert isinstance(a, TpmResponseCode)


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (CreatedPrimary, (0x80000000, b"\x00\x01p", b"\x00\x0bn")),
        (CreatedObject, (b"priv", b"pub")),
        (LoadedObject, (0x80000001, b"name")),
        (PublicArea, (b"pub", b"name", b"qn")),
        (Attestation, (b"attest", b"sig")),
        (AuthSession, (0x03000000, b"nonce")),
        (NvPublic, (0x01C00002, 0x000B, TpmaNv.AUTHREAD, b"", 1184, b"name")),
        (SigScheme, (0x0014, 0x000B)),
    ],
)
def test_result_value_types(
    cls: Callable[..., tuple[object, ...]], args: tuple[object, ...]
) -> None:
    a, b = cls(*args), cls(*args)
    last = args[-1]
    other = cls(*args[:-1], last + 1 if isinstance(last, int) else b"other")
    assert a == b
    assert hash(a) == hash(b)
    assert a != other
    assert a != object()
    assert repr(a).startswith(cls.__name__ + "(")


# --------------------------------------------------------------------------------------
# Marshalling (byte-exact commands)
# --------------------------------------------------------------------------------------


def test_get_random_command_bytes() -> None:
    t = ScriptedTransport(response(body=b"\x00\x04abcd"))
    assert Tpm(t).get_random(4) == b"abcd"
    assert t.commands == [bytes.fromhex("80010000000c0000017b0004")]


def test_get_random_loops_and_zero() -> None:
    t = ScriptedTransport(response(body=b"\x00\x02ab"), response(body=b"\x00\x01c"))
    assert Tpm(t).get_random(3) == b"abc"
    assert [c[-2:] for c in t.commands] == [b"\x00\x03", b"\x00\x01"]
    assert Tpm(t).get_random(0) == b""
    with pytest.raises(ValueError, match="negative"):
        Tpm(t).get_random(-1)


def test_get_random_refuses_empty_or_excess() -> None:
    with pytest.raises(TpmResponseFormatError, match="random bytes"):
        Tpm(ScriptedTransport(response(body=b"\x00\x00"))).get_random(4)
    with pytest.raises(TpmResponseFormatError, match="random bytes"):
        Tpm(ScriptedTransport(response(body=b"\x00\x05abcde"))).get_random(4)


def test_quote_command_bytes() -> None:
    sig = struct.pack(">HHH", 0x0014, 0x000B, 2) + b"ss"
    attest = b"\x00\x03att"
    body = struct.pack(">I", len(attest) + len(sig)) + attest + sig + b"\x00\x00\x01\x00\x00"
    t = ScriptedTransport(response(body=body, tag=0x8002))
    result = Tpm(t).quote(0x80000001, b"nonce", {SHA256: [0, 23]}, SigScheme(0x0014, 0x000B))
    assert result == Attestation(attest, sig)
    expected_params = (
        b"\x00\x05nonce"
        + bytes.fromhex("0014000b")
        + bytes.fromhex("00000001" + "000b" + "03" + "010080")
    )
    auth = bytes.fromhex("40000009" + "0000" + "00" + "0000")
    expected_body = bytes.fromhex("80000001") + struct.pack(">I", len(auth)) + auth
    expected_body += expected_params
    expected = struct.pack(">HII", 0x8002, 10 + len(expected_body), 0x158) + expected_body
    assert t.commands == [expected]


def test_create_primary_accepts_bytes_or_structure() -> None:
    t = ScriptedTransport(response(rc=0x2C4))
    tpm = Tpm(t)
    for template in (STORAGE_TEMPLATE, STORAGE_TEMPLATE.to_bytes()):
        with pytest.raises(TpmCommandError):
            tpm.create_primary(TpmRh.OWNER, template)
    assert t.commands[0] == t.commands[1]
    assert STORAGE_TEMPLATE.to_tpm2b() in t.commands[0]


def test_pcr_selection_marshalling() -> None:
    assert dev._pcr_selection({SHA256: [0, 1, 2, 23], SHA1: []}) == bytes.fromhex(
        "00000002" + "000b03070080" + "000403000000"
    )
    assert dev._pcr_selection({SHA256: [31]}) == bytes.fromhex("00000001000b0400000080")
    with pytest.raises(ValueError, match="out of range"):
        dev._pcr_selection({SHA256: [256]})


def test_pcr_extend_refuses_wrong_digest_size() -> None:
    t = ScriptedTransport(response(tag=0x8002, body=b"\x00\x00\x00\x00" + b"\x00\x00\x01\x00\x00"))
    with pytest.raises(ValueError, match="32 bytes"):
        Tpm(t).pcr_extend(23, {SHA256: bytes(20)})
    assert t.commands == []


@pytest.mark.parametrize("command", [b"", b"\x80\x01\x00\x00\x00\x0b\x00\x00\x01\x7b"])
def test_transports_refuse_misframed_commands(command: bytes) -> None:
    with pytest.raises(ValueError, match="command"):
        SwtpmSocketTransport("127.0.0.1", 1).transmit(command)


# --------------------------------------------------------------------------------------
# Strict response parsing
# --------------------------------------------------------------------------------------


def test_error_response_raises_command_error() -> None:
    with pytest.raises(TpmCommandError) as info:
        Tpm(ScriptedTransport(response(rc=0x18B))).read_public(0x81000000)
    assert info.value.code.name == "TPM_RC_HANDLE"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (response(rc=0x18B, body=b"\x00"), "header alone"),
        (response(body=b"\x00\x01a")[:-1], "size field"),
        (response(body=b"\x00\x01a") + b"x", "size field"),
        (response(body=b"\x00\x01a", tag=0x00C4), "unknown tag"),
        (response(body=b"\x00\x01a", tag=0x8002), "does not match"),
        (b"\x80\x01\x00", "need"),
    ],
)
def test_malformed_headers(raw: bytes, match: str) -> None:
    with pytest.raises(TpmResponseFormatError, match=match):
        Tpm(ScriptedTransport(raw)).get_random(1)


def test_session_response_auth_area_must_be_consumed_exactly() -> None:
    good = b"\x00\x00\x00\x00" + b"\x00\x00\x01\x00\x00"
    Tpm(ScriptedTransport(response(tag=0x8002, body=good))).pcr_extend(23, {SHA256: bytes(32)})
    for bad in (good + b"\x00", good[:-1], b"\x00\x00\x00\x01" + good[4:]):
        with pytest.raises(TpmResponseFormatError):
            Tpm(ScriptedTransport(response(tag=0x8002, body=bad))).pcr_extend(
                23, {SHA256: bytes(32)}
            )


def test_pcr_read_refuses_inconsistent_answers() -> None:
    selection = bytes.fromhex("00000001000b03010000")
    one = b"\x00\x20" + bytes(32)
    ok = response(body=b"\x00\x00\x00\x01" + selection + b"\x00\x00\x00\x01" + one)
    assert Tpm(ScriptedTransport(ok)).pcr_read({SHA256: [0]}) == {SHA256: {0: bytes(32)}}
    two = response(body=b"\x00\x00\x00\x01" + selection + b"\x00\x00\x00\x02" + one + one)
    with pytest.raises(TpmResponseFormatError, match="digests"):
        Tpm(ScriptedTransport(two)).pcr_read({SHA256: [0]})
    other = response(
        body=b"\x00\x00\x00\x01" + bytes.fromhex("00000001000b03020000") + b"\x00\x00\x00\x01" + one
    )
    with pytest.raises(TpmResponseFormatError, match="not requested"):
        Tpm(ScriptedTransport(other)).pcr_read({SHA256: [0]})
    empty = response(body=b"\x00\x00\x00\x01" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00")
    with pytest.raises(AttesterError, match="none of the requested"):
        Tpm(ScriptedTransport(empty)).pcr_read({SHA256: [0]})


def test_pcr_read_refuses_unknown_bank_in_answer() -> None:
    selection = bytes.fromhex("00000001009903010000")
    raw = response(body=b"\x00\x00\x00\x01" + selection + b"\x00\x00\x00\x01\x00\x00")
    with pytest.raises(TpmResponseFormatError, match="not a PCR bank"):
        Tpm(ScriptedTransport(raw)).pcr_read({SHA256: [0]})


def test_nv_answers_are_checked() -> None:
    nv_public = struct.pack(">IHI", 0x01C00003, 0x000B, 0) + b"\x00\x00" + b"\x00\x10"
    raw = response(body=struct.pack(">H", len(nv_public)) + nv_public + b"\x00\x00")
    with pytest.raises(TpmResponseFormatError, match="asked for index"):
        Tpm(ScriptedTransport(raw)).nv_read_public(0x01C00002)
    property_answer = response(
        body=bytes.fromhex("00" + "00000006" + "00000001" + "0000012c00000400")
    )
    short = response(tag=0x8002, body=b"\x00\x00\x00\x03\x00\x01a" + b"\x00\x00\x01\x00\x00")
    with pytest.raises(TpmResponseFormatError, match="NV bytes"):
        Tpm(ScriptedTransport(property_answer, short)).nv_read(0x01C00002, 4)


def test_tpm2b_too_long() -> None:
    with pytest.raises(ValueError, match="too long"):
        Tpm(ScriptedTransport(response())).quote(1, bytes(0x10000), {})


def test_signature_walk_refuses_unknown_algorithms() -> None:
    for sig in (b"\x00\x99\x00\x0b", b"\x00\x05\x00\x99" + bytes(32)):
        body = struct.pack(">I", 2 + len(sig)) + b"\x00\x00" + sig + b"\x00\x00\x01\x00\x00"
        with pytest.raises(TpmResponseFormatError, match="unknown"):
            Tpm(ScriptedTransport(response(tag=0x8002, body=body))).quote(1, b"", {})


@pytest.mark.parametrize(
    "sig",
    [
        b"\x00\x10",
        b"\x00\x05\x00\x0b" + bytes(32),
        b"\x00\x18\x00\x0b\x00\x01r\x00\x01s",
        b"\x00\x16\x00\x0b\x00\x01s",
    ],
)
def test_signature_walk_accepts_every_known_shape(sig: bytes) -> None:
    body = struct.pack(">I", 2 + len(sig)) + b"\x00\x00" + sig + b"\x00\x00\x01\x00\x00"
    assert Tpm(ScriptedTransport(response(tag=0x8002, body=body))).quote(1, b"", {}) == (
        b"\x00\x00",
        sig,
    )


def test_retry_warnings_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "_RETRY_DELAY", 0.0)
    t = ScriptedTransport(response(rc=0x922), response(rc=0x908), response(body=b"\x00\x01z"))
    assert Tpm(t).get_random(1) == b"z"
    assert len(t.commands) == 3
    t = ScriptedTransport(response(rc=0x922))
    with pytest.raises(TpmCommandError, match="TPM_RC_RETRY"):
        Tpm(t).get_random(1)
    assert len(t.commands) == dev._RETRIES + 1


COMMANDS: list[Callable[[Tpm], object]] = [
    lambda tpm: tpm.get_random(8),
    lambda tpm: tpm.read_public(0x81010001),
    lambda tpm: tpm.pcr_read({SHA256: [0, 1]}),
    lambda tpm: tpm.quote(0x80000000, b"n", {SHA256: [0]}),
    lambda tpm: tpm.create_primary(TpmRh.OWNER, b"\x00\x01"),
    lambda tpm: tpm.create(0x81010001, b"\x00\x01"),
    lambda tpm: tpm.nv_read_public(0x01C00002),
    lambda tpm: tpm.nv_read(0x01C00002, 4),
    lambda tpm: tpm.start_auth_session(),
    lambda tpm: tpm.activate_credential(1, 2, b"\x00\x01a", b"\x00\x01b"),
    lambda tpm: tpm.get_property(0x12C),
    lambda tpm: tpm.get_handles(0x81000000),
    lambda tpm: tpm.policy_secret(TpmRh.ENDORSEMENT, 0x03000000),
    lambda tpm: tpm.certify(1, 2, b""),
]


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, len(COMMANDS) - 1),
    tag=st.sampled_from([0x8001, 0x8002]),
    body=st.binary(max_size=300),
)
def test_arbitrary_responses_only_raise_ratls_errors(index: int, tag: int, body: bytes) -> None:
    tpm = Tpm(ScriptedTransport(response(body=body, tag=tag)))
    with contextlib.suppress(RatlsError):
        COMMANDS[index](tpm)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_arbitrary_raw_bytes_only_raise_ratls_errors(raw: bytes) -> None:
    with contextlib.suppress(RatlsError):
        Tpm(ScriptedTransport(raw)).get_random(4)


# --------------------------------------------------------------------------------------
# DeviceTransport against a pseudo-terminal standing in for /dev/tpmrm0
# --------------------------------------------------------------------------------------


@pytest.fixture
def fake_device() -> Iterator[tuple[int, str]]:
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(master)
        os.close(slave)


def _serve_once(master: int, reply: list[bytes]) -> threading.Thread:
    def run() -> None:
        got = b""
        while len(got) < 10 or len(got) < int.from_bytes(got[2:6], "big"):
            got += os.read(master, 4096)
        for part in reply:
            os.write(master, part)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_device_transport_round_trip(fake_device: tuple[int, str]) -> None:
    master, path = fake_device
    answer = response(body=b"\x00\x04abcd")
    thread = _serve_once(master, [answer[:3], answer[3:11], answer[11:]])
    with DeviceTransport(path, timeout=30) as transport:
        assert Tpm(transport).get_random(4) == b"abcd"
        assert "DeviceTransport(" in repr(transport)
    thread.join()


def test_device_transport_times_out_then_reopens(fake_device: tuple[int, str]) -> None:
    master, path = fake_device
    transport = DeviceTransport(path, timeout=0.2)
    with pytest.raises(AttesterError, match="did not answer"):
        transport.transmit(response())
    assert transport._fd is None  # the device was closed after the failure
    answer = response(body=b"\x00\x01z")
    thread = _serve_once(master, [answer])
    transport._timeout = 30
    assert transport.transmit(response()) == answer
    thread.join()
    transport.close()
    transport.close()
    with pytest.raises(AttesterError, match="closed"):
        transport.transmit(response())


def test_device_transport_refuses_oversized_header(fake_device: tuple[int, str]) -> None:
    master, path = fake_device
    thread = _serve_once(master, [struct.pack(">HII", 0x8001, MAX_RESPONSE_SIZE + 1, 0)])
    with DeviceTransport(path, timeout=30) as transport, pytest.raises(AttesterError, match="size"):
        transport.transmit(response())
    thread.join()


def test_device_transport_refuses_extra_bytes(fake_device: tuple[int, str]) -> None:
    master, path = fake_device
    thread = _serve_once(master, [response(body=b"\x00\x01z") + b"extra"])
    with DeviceTransport(path, timeout=30) as transport, pytest.raises(AttesterError, match="says"):
        transport.transmit(response())
    thread.join()


def test_device_transport_peer_gone_mid_response() -> None:
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    transport = DeviceTransport(path, timeout=30)
    os.close(slave)
    try:
        os.write(master, response(body=b"\x00\x04abcd")[:7])
        os.close(master)  # the "device" goes away after half a header
        with pytest.raises(AttesterError):
            transport.transmit(response())
    finally:
        transport.close()


def test_device_transport_missing_device(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(AttesterUnavailable, match="not usable"):
        DeviceTransport(os.path.join(tmp_path, "tpmrm0"))
    with pytest.raises(AttesterUnavailable):
        DeviceTransport(os.fspath(tmp_path))


# --------------------------------------------------------------------------------------
# SwtpmSocketTransport against fake TCP peers on loopback
# --------------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    try:
        yield sock
    finally:
        sock.close()


def _peer(listener: socket.socket, reply: bytes, *, close: bool = True) -> threading.Thread:
    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(reply)
            if not close:
                conn.recv(4096)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_socket_transport_peer_closes_mid_response(listener: socket.socket) -> None:
    thread = _peer(listener, response(body=b"\x00\x04abcd")[:12])
    port = listener.getsockname()[1]
    with SwtpmSocketTransport("127.0.0.1", port, timeout=30) as transport:
        with pytest.raises(AttesterError, match="connection closed"):
            transport.transmit(response())
        assert "SwtpmSocketTransport(" in repr(transport)
    thread.join()


def test_socket_transport_peer_never_answers(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with (
        SwtpmSocketTransport("127.0.0.1", port, timeout=0.2) as transport,
        pytest.raises(AttesterError, match="no response"),
    ):
        transport.transmit(response())


def test_socket_transport_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = SwtpmSocketTransport("127.0.0.1", port, ctrl_port=port)
    with pytest.raises(AttesterUnavailable, match="no swtpm server"):
        transport.transmit(response())
    with pytest.raises(AttesterUnavailable, match="no swtpm control"):
        transport.ctrl_init()


def test_socket_transport_without_control_port() -> None:
    with pytest.raises(AttesterError, match="no control channel"):
        SwtpmSocketTransport("127.0.0.1", 1).ctrl_get_capability()


def test_socket_transport_control_failure(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    thread = _peer(listener, struct.pack(">I", 0x0A))
    with (
        SwtpmSocketTransport("127.0.0.1", 1, ctrl_port=port, timeout=30) as transport,
        pytest.raises(AttesterError, match="INIT failed: result 0xa"),
    ):
        transport.ctrl_init()
    thread.join()
    thread = _peer(listener, b"\x00\x00")
    with (
        SwtpmSocketTransport("127.0.0.1", 1, ctrl_port=port, timeout=30) as transport,
        pytest.raises(AttesterError, match="connection closed"),
    ):
        transport.ctrl_shutdown()
    thread.join()
    with (
        SwtpmSocketTransport("127.0.0.1", 1, ctrl_port=port, timeout=0.2) as transport,
        pytest.raises(AttesterError, match="no answer"),
    ):
        transport.ctrl_stop()


# --------------------------------------------------------------------------------------
# Against a real swtpm
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swtpm() -> Iterator[Swtpm]:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm not installed")
    sw = Swtpm()
    with sw:
        yield sw


@pytest.fixture
def tpm(swtpm: Swtpm) -> Tpm:
    return swtpm.tpm


@pytest.mark.swtpm
class TestSwtpmCommands:
    def test_startup_twice_is_initialize_error(self, tpm: Tpm) -> None:
        with pytest.raises(TpmCommandError) as info:
            tpm.startup(clear=True)
        assert info.value.code.name == "TPM_RC_INITIALIZE"
        assert info.value.rc == 0x100

    def test_get_random(self, tpm: Tpm) -> None:
        a, b = tpm.get_random(100), tpm.get_random(100)
        assert len(a) == len(b) == 100
        assert a != b

    def test_control_channel_capabilities(self, swtpm: Swtpm) -> None:
        caps = swtpm.transport.ctrl_get_capability()
        assert caps & 0x1  # PTM_CAP_INIT
        assert caps & 0x2  # PTM_CAP_SHUTDOWN

    def test_pcr_read_many(self, tpm: Tpm) -> None:
        values = tpm.pcr_read({SHA256: range(24), SHA1: range(24)})
        assert list(values) == [SHA256, SHA1]
        assert sorted(values[SHA256]) == list(range(24))
        assert all(len(v) == 32 for v in values[SHA256].values())
        assert all(len(v) == 20 for v in values[SHA1].values())
        assert values[SHA256][0] == bytes(32)

    def test_pcr_extend(self, tpm: Tpm) -> None:
        old = tpm.pcr_read({SHA256: [16], SHA1: [16]})
        d256, d1 = hashlib.sha256(b"event").digest(), hashlib.sha1(b"event").digest()  # noqa: S324
        tpm.pcr_extend(16, {SHA256: d256, SHA1: d1})
        new = tpm.pcr_read({SHA256: [16], SHA1: [16]})
        assert new[SHA256][16] == hashlib.sha256(old[SHA256][16] + d256).digest()
        assert new[SHA1][16] == hashlib.sha1(old[SHA1][16] + d1).digest()  # noqa: S324

    def test_pcr_read_unknown_bank(self, tpm: Tpm) -> None:
        with pytest.raises(AttesterError):
            tpm.pcr_read({TpmAlgId.SHA3_512: [0]})  # not a bank swtpm allocates

    def test_bad_handle_is_decoded(self, tpm: Tpm) -> None:
        with pytest.raises(TpmCommandError) as info:
            tpm.read_public(0x81FFFFFF)
        assert info.value.code.base == 0x08B
        assert info.value.code.handle == 1
        assert info.value.command_code == TpmCc.READ_PUBLIC
        with pytest.raises(TpmCommandError) as info:
            tpm.flush_context(0x80FFFFFF)
        assert info.value.code.format_one

    def test_ek_policy_digest(self, tpm: Tpm) -> None:
        session = tpm.start_auth_session(TpmSe.TRIAL)
        try:
            assert len(session.nonce_tpm) >= 16
            assert tpm.policy_get_digest(session.handle) == bytes(32)
            tpm.policy_secret(TpmRh.ENDORSEMENT, session.handle)
            assert tpm.policy_get_digest(session.handle) == TCG_EK_AUTH_POLICY_SHA256
        finally:
            tpm.flush_context(session.handle)

    def test_wrong_endorsement_auth(self, tpm: Tpm) -> None:
        with (
            pytest.raises(TpmCommandError) as info,
            tpm.endorsement_policy_session(endorsement_auth=b"wrong"),
        ):
            pass  # pragma: no cover - the session cannot be satisfied
        assert info.value.code.base in (0x08E, 0x0A2)
        assert info.value.code.session == 1
        # the failed session was flushed: a handle listing shows no leak
        assert tpm.get_handles(0x03000000) == []

    def test_primary_is_deterministic_and_create_load_certify(self, tpm: Tpm) -> None:
        p1 = tpm.create_primary(TpmRh.OWNER, STORAGE_TEMPLATE)
        p2 = tpm.create_primary(TpmRh.OWNER, STORAGE_TEMPLATE.to_bytes())
        try:
            assert p1.name == p2.name
            assert p1.handle != p2.handle
            assert parse_tpm2b_public(p1.public).name() == p1.name
            assert tpm.read_public(p1.handle).name == p1.name
            created = tpm.create(p1.handle, AK_TEMPLATE_RSA2048)
            ak = tpm.load(p1.handle, created.private, created.public)
            try:
                assert parse_tpm2b_public(created.public).name() == ak.name
                cert = tpm.certify(ak.handle, ak.handle, b"qualify")
                info = parse_tpm2b_attest(cert.attest)
                assert info.extra_data == b"qualify"
                assert isinstance(info.attested, TpmsCertifyInfo)
                assert info.attested.name == ak.name
            finally:
                tpm.flush_context(ak.handle)
            # One byte of the encrypted sensitive area flipped (always a change; setting
            # it to zero was none when it already was): the integrity check refuses it.
            tampered = created.private[:-1] + bytes([created.private[-1] ^ 0xFF])
            with pytest.raises(TpmCommandError):
                tpm.load(p1.handle, tampered, created.public)
        finally:
            tpm.flush_context(p1.handle)
            tpm.flush_context(p2.handle)

    def test_evict_control_and_handles(self, tpm: Tpm) -> None:
        primary = tpm.create_primary(TpmRh.OWNER, STORAGE_TEMPLATE)
        try:
            tpm.evict_control(primary.handle, 0x81000123)
            assert 0x81000123 in tpm.get_handles(0x81000000)
            with pytest.raises(TpmCommandError) as info:
                tpm.evict_control(primary.handle, 0x81000123)
            assert info.value.code.name == "TPM_RC_NV_DEFINED"
            tpm.evict_control(0x81000123, 0x81000123)
            assert 0x81000123 not in tpm.get_handles(0x81000000)
        finally:
            tpm.flush_context(primary.handle)

    def test_nv_round_trip(self, tpm: Tpm) -> None:
        blob = os.urandom(1184)
        index = NV_INDEX_RSA2048_EK_CERT
        tpm.nv_define(index, len(blob))
        try:
            public = tpm.nv_read_public(index)
            assert public.nv_index == index
            assert public.data_size == 1184
            assert public.attributes & TpmaNv.AUTHREAD
            assert not public.attributes & TpmaNv.WRITTEN
            with pytest.raises(TpmCommandError) as info:
                tpm.nv_read(index)
            assert info.value.code.name == "TPM_RC_NV_UNINITIALIZED"
            tpm.nv_write(index, blob)
            assert tpm.nv_read(index) == blob
            assert tpm.nv_read(index, 10, 1000, auth_handle=TpmRh.OWNER) == blob[1000:1010]
            assert tpm.nv_read_public(index).attributes & TpmaNv.WRITTEN
            with pytest.raises(TpmCommandError) as info:
                tpm.nv_define(index, 16)
            assert info.value.code.name == "TPM_RC_NV_DEFINED"
            with pytest.raises(TpmCommandError) as info:
                tpm.nv_write(index, b"x", 1184)
            assert info.value.code.name == "TPM_RC_NV_RANGE"
        finally:
            tpm.nv_undefine(index)
        with pytest.raises(TpmCommandError) as info:
            tpm.nv_read_public(index)
        assert info.value.code.base == 0x08B

    def test_property(self, tpm: Tpm) -> None:
        assert tpm.get_property(0x12C) >= 512  # TPM_PT_NV_BUFFER_MAX
        with pytest.raises(AttesterError, match="does not report"):
            tpm.get_property(0x7FFFFFF0)


@pytest.mark.swtpm
def test_three_way_on_recorded_responses(swtpm: Swtpm) -> None:
    """Whole response parses; every truncation and a trailing byte are refused."""
    recorder = RecordingTransport(swtpm.transport)
    tpm = Tpm(recorder)
    calls: list[Callable[[Tpm], object]] = [
        lambda t: t.pcr_read({SHA256: [0, 1, 2]}),
        lambda t: t.get_handles(0x01000000),
        lambda t: t.get_random(16),
        lambda t: t.nv_read_public(0x01C0FFFF),
    ]
    tpm.nv_define(0x01C0FFFF, 8)
    try:
        for call in calls:
            call(tpm)
            recorded = recorder.last
            replay = Tpm(ScriptedTransport(recorded))
            call(replay)
            body = recorded[10:]
            for cut in range(len(body)):
                with pytest.raises(TpmResponseFormatError):
                    call(Tpm(ScriptedTransport(response(body=body[:cut]))))
            with pytest.raises(TpmResponseFormatError):
                call(Tpm(ScriptedTransport(response(body=body + b"\x00"))))
    finally:
        tpm.nv_undefine(0x01C0FFFF)


@pytest.mark.swtpm
@needs_swtpm
def test_swtpm_stopped_mid_command_times_out() -> None:
    sw = Swtpm(command_timeout=0.5)
    with sw as tpm:
        assert sw.process is not None
        sw.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(AttesterError, match="no response"):
                tpm.get_random(8)
        finally:
            sw.process.send_signal(signal.SIGCONT)
        assert len(tpm.get_random(8)) == 8  # reconnects after the failure
        sw.process.kill()
        sw.process.wait()
        with pytest.raises(AttesterError):
            tpm.get_random(8)
    assert sw.state_dir is not None
    assert not sw.state_dir.exists()


@pytest.mark.swtpm
@needs_swtpm
def test_power_cycle_keeps_persistent_objects_and_seeds() -> None:
    sw = Swtpm()
    with sw as tpm:
        primary = tpm.create_primary(TpmRh.OWNER, STORAGE_TEMPLATE)
        tpm.evict_control(primary.handle, 0x81000001)
        tpm.pcr_extend(23, {SHA256: bytes(range(32))})
        tpm.shutdown(clear=True)
        sw.transport.ctrl_stop()
        with pytest.raises(AttesterError):
            tpm.get_random(1)  # the TPM is stopped: swtpm answers with an error or not at all
        sw.transport.ctrl_init()
        tpm.startup(clear=True)
        assert tpm.pcr_read({SHA256: [23]})[SHA256][23] == bytes(32)  # PCRs reset
        assert 0x81000001 in tpm.get_handles(0x81000000)  # persistent objects stay
        again = tpm.create_primary(TpmRh.OWNER, STORAGE_TEMPLATE)
        assert again.name == primary.name  # same seeds: same primary key
        tpm.flush_context(again.handle)


@pytest.mark.swtpm
@needs_swtpm
def test_resume_with_saved_state() -> None:
    # PC Client PCRs 0-15 are saved by Shutdown(STATE) and restored on resume.
    with Swtpm() as tpm:
        tpm.pcr_extend(10, {SHA256: bytes(range(32))})
        before = tpm.pcr_read({SHA256: [10]})
        assert before[SHA256][10] != bytes(32)
        tpm.shutdown(clear=False)
        swtpm_transport = tpm.transport
        assert isinstance(swtpm_transport, SwtpmSocketTransport)
        swtpm_transport.ctrl_init()
        tpm.startup(clear=False)
        assert tpm.pcr_read({SHA256: [10]}) == before


def test_tpm_closes_its_transport() -> None:
    closed: list[bool] = []

    class Closing(ScriptedTransport):
        def close(self) -> None:
            closed.append(True)

    with Tpm(Closing(response())) as tpm:
        assert "Tpm(" in repr(tpm)
        assert isinstance(tpm.transport, Closing)
    assert closed == [True]


@pytest.mark.skipif(
    not os.access("/dev/tpmrm0", os.R_OK | os.W_OK), reason="no accessible /dev/tpmrm0 here"
)
def test_real_device_random() -> None:  # pragma: no cover - only on machines with a TPM
    with DeviceTransport("/dev/tpmrm0") as transport:
        assert len(Tpm(transport).get_random(16)) == 16
