"""The gateway process: reload, drain, admin edge cases, a hand-driven link peer, the CLI."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from gateway_helpers import POLICY, sim_egress_config, spawn_gateway_cli
from OpenSSL import SSL

from gateway._admin import handle_admin_request
from gateway._attestation import make_identity, reattest_binder
from gateway._config import ConfigError, parse_config
from gateway._daemon import IDENTITY_ROTATION, RunningGateway, run_gateway
from gateway._link import (
    REUSE_LINK_VERSION,
    Data,
    Eof,
    Error,
    EvidenceFrame,
    LinkReason,
    Open,
    Opened,
    Ready,
    Reattest,
    Refused,
    RouteTarget,
    decode_frame,
    encode_frame,
)
from gateway._runtime import LOGGER_NAME
from gateway._testing import hmac_test_attestation
from gateway._tunnel import MIN_REATTEST_ANSWER_INTERVAL
from ratls._errors import NonceMismatch
from ratls._tls_context import key_exchange_groups_settable
from ratls._tls_stream import AttestedTLSStream

KEY = b"gateway-daemon-test-key"
REPO = Path(__file__).resolve().parent.parent


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some():
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the gateway resets backends of aborted tunnels
    finally:
        await stream.aclose()


async def _start_echo(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def _egress_doc(port: int, allow: list[str] | None = None) -> dict[str, Any]:
    return {
        "attestation": {"attester": "test"},
        "egress": {
            "listener": [{"name": "main", "listen": "127.0.0.1:0", "allow": allow or []}],
            "route": [{"name": "web", "backend": f"127.0.0.1:{port}"}],
        },
    }


async def _start(nursery: trio.Nursery, doc: dict[str, Any], **kwargs: Any) -> RunningGateway:
    gateway: RunningGateway = await nursery.start(
        partial(run_gateway, parse_config(doc), attestation=hmac_test_attestation(KEY)[0], **kwargs)
    )
    await gateway.wait_ready()
    return gateway


class LinkPeer:
    """A hand-driven ingress: an attested stream on which the test writes frames."""

    def __init__(self, stream: AttestedTLSStream[trio.abc.Stream]) -> None:
        self.stream = stream
        self._buffer = b""

    @classmethod
    async def connect(cls, gateway: RunningGateway) -> LinkPeer:
        address = gateway.address("egress:main")
        assert isinstance(address, tuple)
        identity = make_identity(hmac_test_attestation(KEY)[0])
        raw = await trio.open_tcp_stream(*address)
        stream: AttestedTLSStream[trio.abc.Stream] = AttestedTLSStream(
            raw, identity.client_context, server_side=False, attestation=identity.attestation
        )
        await stream.do_handshake()
        return cls(stream)

    async def frame(self) -> bytes | None:
        while True:
            if len(self._buffer) >= 5:
                size = 5 + int.from_bytes(self._buffer[1:5], "big")
                if len(self._buffer) >= size:
                    frame, self._buffer = self._buffer[:size], self._buffer[size:]
                    return frame
            data = await self.stream.receive_some()
            if not data:
                return None
            self._buffer += data


async def test_egress_answers_an_unsupported_version(nursery: trio.Nursery) -> None:
    egress = await _start(nursery, _egress_doc(await _start_echo(nursery)))
    peer = await LinkPeer.connect(egress)
    frame = bytearray(encode_frame(Open(target=RouteTarget(name="web"))))
    frame[5] = 9
    await peer.stream.send_all(bytes(frame))
    answer = await peer.frame()
    assert answer is not None
    refusal = decode_frame(answer)
    assert refusal == Refused(code=LinkReason.UNSUPPORTED_VERSION, reason="supported: 1,2,3")
    assert await peer.frame() is None  # then close_notify
    await peer.stream.aclose()


async def test_egress_reports_a_protocol_error_in_the_tunnel(nursery: trio.Nursery) -> None:
    egress = await _start(nursery, _egress_doc(await _start_echo(nursery)))
    peer = await LinkPeer.connect(egress)
    await peer.stream.send_all(encode_frame(Open(target=RouteTarget(name="web"))))
    assert await peer.frame() == encode_frame(Opened())
    await peer.stream.send_all(encode_frame(Data(data=b"ok")))
    assert await peer.frame() == encode_frame(Data(data=b"ok"))
    await peer.stream.send_all(encode_frame(Opened()))  # not allowed in a tunnel
    answer = await peer.frame()
    assert answer is not None
    error = decode_frame(answer)
    assert isinstance(error, Error)
    assert error.code is LinkReason.PROTOCOL_ERROR
    assert "OPENED" in error.reason
    await peer.stream.aclose()


async def test_egress_keeps_a_version_3_link_for_the_next_open(nursery: trio.Nursery) -> None:
    egress = await _start(nursery, _egress_doc(await _start_echo(nursery)))
    peer = await LinkPeer.connect(egress)
    for i in range(3):
        opening = Open(target=RouteTarget(name="web"), version=REUSE_LINK_VERSION)
        await peer.stream.send_all(encode_frame(opening))
        assert await peer.frame() == encode_frame(Opened(version=REUSE_LINK_VERSION))
        message = b"tunnel %d on one link" % i
        await peer.stream.send_all(encode_frame(Data(data=message)))
        assert await peer.frame() == encode_frame(Data(data=message))
        await peer.stream.send_all(encode_frame(Eof()))
        assert await peer.frame() == encode_frame(Eof())  # the echo backend closed its side
        assert await peer.frame() == encode_frame(Ready())  # everything delivered
    assert egress.runtime.metrics.handshake_seconds.count(side="egress") == 1
    # Without version 3 the egress closes the link after the tunnel, as before.
    await peer.stream.send_all(encode_frame(Open(target=RouteTarget(name="web"))))
    assert await peer.frame() == encode_frame(Opened())
    await peer.stream.send_all(encode_frame(Eof()))
    assert await peer.frame() == encode_frame(Eof())
    assert await peer.frame() is None
    await peer.stream.aclose()


async def test_egress_refuses_data_before_open(nursery: trio.Nursery) -> None:
    egress = await _start(nursery, _egress_doc(await _start_echo(nursery)))
    peer = await LinkPeer.connect(egress)
    await peer.stream.send_all(encode_frame(Data(data=b"sneaky")))
    assert await peer.frame() is None  # closed without opening anything
    await peer.stream.aclose()


async def test_reload_applies_new_allowlists_and_refuses_new_listeners(
    nursery: trio.Nursery,
) -> None:
    port = await _start_echo(nursery)
    egress = await _start(nursery, _egress_doc(port))
    peer = await LinkPeer.connect(egress)
    target = f"127.0.0.1:{port + 0}"
    from gateway._link import AddressTarget

    await peer.stream.send_all(
        encode_frame(Open(target=AddressTarget(host="localhost", port=port)))
    )
    answer = await peer.frame()
    assert answer is not None
    assert decode_frame(answer) == Refused(
        code=LinkReason.NOT_ALLOWED, reason=f"localhost:{port} is not allowed"
    )
    await peer.stream.aclose()
    new = _egress_doc(port, allow=["localhost:*"])
    egress.reload(parse_config(new), attestation=hmac_test_attestation(KEY)[0])
    peer = await LinkPeer.connect(egress)
    await peer.stream.send_all(
        encode_frame(Open(target=AddressTarget(host="localhost", port=port)))
    )
    assert await peer.frame() == encode_frame(Opened())
    await peer.stream.aclose()
    moved = _egress_doc(port)
    moved["egress"]["listener"][0]["listen"] = "127.0.0.1:1"
    with pytest.raises(ConfigError, match="listen addresses cannot change") as info:
        egress.reload(parse_config(moved), attestation=hmac_test_attestation(KEY)[0])
    assert info.value.location == "egress:main"
    assert target  # the old config stays in force
    assert egress.runtime.config.listeners[0].allow[0].host == "localhost"


@pytest.mark.skipif(
    not key_exchange_groups_settable() or not hasattr(SSL.Connection, "get_group_name"),
    reason="this cryptography or pyOpenSSL cannot set or name TLS groups",
)
async def test_reload_with_new_tls_groups_makes_a_new_identity(nursery: trio.Nursery) -> None:
    port = await _start_echo(nursery)
    egress = await _start(nursery, _egress_doc(port))
    first = egress.runtime.identity
    egress.reload(parse_config(_egress_doc(port)), attestation=hmac_test_attestation(KEY)[0])
    assert egress.runtime.identity.certificate == first.certificate  # TLS unchanged
    doc = _egress_doc(port)
    doc["tls"] = {"groups": ["P-256"]}
    egress.reload(parse_config(doc), attestation=hmac_test_attestation(KEY)[0])
    assert egress.runtime.identity.certificate != first.certificate
    peer = await LinkPeer.connect(egress)  # offers OpenSSL's default groups
    assert peer.stream.key_exchange_group == "secp256r1"
    await peer.stream.aclose()


async def test_drain_deadline_cuts_remaining_tunnels(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    port = await _start_echo(nursery)
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[RunningGateway]) -> None:
        await run_gateway(
            parse_config(_egress_doc(port)),
            attestation=hmac_test_attestation(KEY)[0],
            drain_timeout=10.0,
            task_status=task_status,
        )
        done.set()

    egress: RunningGateway = await nursery.start(run)
    peer = await LinkPeer.connect(egress)
    await peer.stream.send_all(encode_frame(Open(target=RouteTarget(name="web"))))
    assert await peer.frame() == encode_frame(Opened())
    start = trio.current_time()
    egress.request_shutdown()
    await done.wait()
    assert trio.current_time() - start >= 10.0
    assert egress.runtime.admission.active == 0
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "tunnel"]
    assert [line["result"] for line in lines] == ["shutting-down"]
    assert await peer.frame() is None  # the link was closed
    await peer.stream.aclose()


def test_admin_request_edge_cases() -> None:
    class FakeRuntime:
        draining = False
        ready = False

    runtime: Any = FakeRuntime()
    assert handle_admin_request(runtime, "POST", "/livez")[0] == 405
    assert handle_admin_request(runtime, "GET", "/livez?x=1")[0] == 200
    assert handle_admin_request(runtime, "GET", "/readyz") == (
        503,
        "text/plain; charset=utf-8",
        b"not ready: no own evidence yet\n",
    )
    runtime.draining = True
    assert handle_admin_request(runtime, "GET", "/readyz")[2] == b"draining\n"


async def test_admin_bad_request(nursery: trio.Nursery) -> None:
    doc = _egress_doc(1)
    doc["admin"] = {"listen": "127.0.0.1:0"}
    egress = await _start(nursery, doc)
    address = egress.address("admin")
    assert isinstance(address, tuple)
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(b"garbage\r\n\r\n")
    response = b""
    while data := await stream.receive_some():
        response += data
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    await stream.aclose()


async def test_not_ready_until_the_attester_works(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    config, attester, _ = hmac_test_attestation(KEY)
    attester.broken = True
    egress: RunningGateway = await nursery.start(
        partial(run_gateway, parse_config(_egress_doc(1)), attestation=config)
    )
    await trio.sleep(5)
    assert not egress.runtime.ready
    attester.broken = False
    await egress.wait_ready()
    assert egress.runtime.ready
    assert egress.runtime.own_evidence_at is not None
    egress.request_shutdown()


# --------------------------------------------------------------------------- CLI run


def _unix_get(path: Path, url: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_cli_run_reload_and_sigterm(tmp_path: Path) -> None:
    config = sim_egress_config(tmp_path, admin=True)
    admin = tmp_path / "admin.sock"
    process = spawn_gateway_cli(config)
    try:
        for _ in range(600):  # wait for the admin socket (no timing is asserted)
            if admin.exists():
                try:
                    if b"200 OK" in _unix_get(admin, "/readyz"):
                        break
                except OSError:
                    pass
            time.sleep(0.05)
        status = json.loads(_unix_get(admin, "/status").partition(b"\r\n\r\n")[2])
        assert status["ready"] is True
        assert status["egress"][0]["routes"] == ["web"]
        process.send_signal(signal.SIGHUP)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # pragma: no cover - only when the test fails
            process.kill()
            process.communicate()
    assert process.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "ready" in messages
    assert "shutdown requested" in messages
    assert messages[-1] == "stopped"


def test_cli_run_says_plainly_why_it_cannot_start(tmp_path: Path) -> None:
    # A port taken by someone else: one error line, no traceback.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "egress.toml"
        config.write_text(
            sim_egress_config(tmp_path)
            .read_text()
            .replace('listen = "unix:egress.sock"', f'listen = "127.0.0.1:{port}"')
        )
        process = spawn_gateway_cli(config)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    text = stderr.decode()
    assert "Traceback" not in text
    [line] = [json.loads(line) for line in text.splitlines() if '"gateway failed"' in line]
    assert "Address already in use" in line["error"]


def test_cli_run_names_the_capability_tproxy_needs(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:  # pragma: no cover - util-linux is everywhere
        pytest.skip("unshare is not installed")
    config = tmp_path / "ingress.toml"
    config.write_text(
        '[attestation]\nattester = "sim"\n'
        f'policy = "{POLICY}"\n'
        "[[ingress.transparent]]\n"
        'listen = "127.0.0.1:0"\negress = "127.0.0.1:9443"\nmode = "tproxy"\n'
    )
    # In a user namespace of its own the process lacks CAP_NET_ADMIN over this network.
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        ["unshare", "-r", sys.executable, "-m", "gateway.cli", "run", str(config)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "needs CAP_NET_ADMIN to set IP_TRANSPARENT" in done.stderr


async def test_vanishing_ingress_resets_the_backend(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    outcome: list[str] = []

    async def backend(stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some():
                pass
            outcome.append("eof")
        except trio.BrokenResourceError:
            outcome.append("reset")
        finally:
            await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, backend, 0, host="127.0.0.1"))
    egress = await _start(nursery, _egress_doc(listeners[0].socket.getsockname()[1]))
    peer = await LinkPeer.connect(egress)
    await peer.stream.send_all(encode_frame(Open(target=RouteTarget(name="web"))))
    assert await peer.frame() == encode_frame(Opened())
    await peer.stream.send_all(encode_frame(Data(data=b"half a request")))
    raw = peer.stream.transport_stream
    assert isinstance(raw, trio.SocketStream)
    raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(raw)
    while not outcome:  # noqa: ASYNC110 - the backend task reports through a list
        await trio.sleep(0.01)
    assert outcome == ["reset"]  # not a clean EOF: the request was cut short
    while egress.runtime.admission.active:  # noqa: ASYNC110 - polling a counter
        await trio.sleep(0.01)
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "tunnel"]
    assert lines[-1]["result"] == "link-lost"
    await trio.aclose_forcefully(peer.stream)  # its transport is already gone


async def test_reattest_answers_are_bound_and_spaced(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    egress = await _start(nursery, _egress_doc(await _start_echo(nursery)))
    peer = await LinkPeer.connect(egress)
    await peer.stream.send_all(encode_frame(Open(target=RouteTarget(name="web"))))
    assert await peer.frame() == encode_frame(Opened())
    _, _, verifier = hmac_test_attestation(KEY)  # same key: it checks the egress's evidence
    egress_cert = peer.stream.peer_certificate
    assert egress_cert is not None
    answered_at = []
    for nonce in (b"\x01" * 32, b"\x02" * 32):
        await peer.stream.send_all(encode_frame(Reattest(nonce=nonce)))
        frame = await peer.frame()
        assert frame is not None
        answered_at.append(trio.current_time())
        evidence = decode_frame(frame)
        assert isinstance(evidence, EvidenceFrame)
        assert evidence.nonce == nonce
        binder = reattest_binder(peer.stream, egress_cert, nonce)
        assert verifier.verify(evidence.evidence, binder).identity == "good"
        with pytest.raises(NonceMismatch):  # bound to its nonce: no reuse for another
            verifier.verify(
                evidence.evidence, reattest_binder(peer.stream, egress_cert, b"\x03" * 32)
            )
    assert answered_at[1] - answered_at[0] >= MIN_REATTEST_ANSWER_INTERVAL
    await peer.stream.aclose()


async def test_identity_rotates_and_new_tunnels_use_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    doc = _egress_doc(await _start_echo(nursery))
    doc["timeouts"] = {"max_attestation_age": 0}  # this hand-driven peer does not re-attest
    egress = await _start(nursery, doc)
    first = egress.runtime.identity
    peer = await LinkPeer.connect(egress)
    assert peer.stream.peer_certificate == first.certificate
    await peer.stream.send_all(encode_frame(Open(target=RouteTarget(name="web"))))
    assert await peer.frame() == encode_frame(Opened())
    await trio.sleep(IDENTITY_ROTATION + 1)
    second = egress.runtime.identity
    assert second.certificate != first.certificate
    assert second.attestation is first.attestation
    # The old tunnel lives on; a new connection sees the new certificate.
    await peer.stream.send_all(encode_frame(Data(data=b"still here")))
    assert await peer.frame() == encode_frame(Data(data=b"still here"))
    fresh = await LinkPeer.connect(egress)
    assert fresh.stream.peer_certificate == second.certificate
    await fresh.stream.aclose()
    await peer.stream.aclose()
