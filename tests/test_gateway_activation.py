"""systemd socket activation: ``systemd:NAME`` endpoints take the sockets systemd passed.

The environment protocol is checked against sd_listen_fds(3) with real sockets on spare
descriptors; then a gateway in this process accepts its link on a passed socket, and
``ratls-gateway run`` is started the way systemd starts a service (the socket on
descriptor 3, ``LISTEN_PID`` naming the process) and answers on it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from gateway_helpers import (
    AS_SYSTEMD,
    LOCALHOST,
    REPO,
    connect,
    egress_doc,
    gateway_pair,
    receive_exactly,
    sim_egress_config,
    start_backend,
)

from gateway import _activation
from gateway._config import ConfigError, Endpoint, parse_config, parse_endpoint

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import trio


@pytest.fixture(autouse=True)
def _no_sockets_left() -> Iterator[None]:
    """Each test starts with no passed sockets and leaves none behind."""
    yield
    _activation.close_unclaimed()


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOCALHOST, 0))
    sock.listen(8)
    return sock


def test_systemd_endpoints_are_for_listening_only() -> None:
    assert parse_endpoint("systemd:web") == Endpoint(kind="systemd", path="web")
    assert str(parse_endpoint("systemd:web.socket")) == "systemd:web.socket"
    for bad in ("systemd:", "systemd:a:b", "systemd:two words", "systemd:" + "x" * 256):
        with pytest.raises(ValueError, match="socket name"):
            parse_endpoint(bad)
    doc = egress_doc({"web": 8080}, listen="systemd:link")
    assert parse_config(doc).listeners[0].listen == Endpoint(kind="systemd", path="link")
    doc["egress"]["route"][0]["backend"] = "systemd:web"
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert [p.location for p in caught.value.problems] == ["egress.route[0].backend"]
    assert "listening sockets passed to us" in caught.value.problems[0].message
    twice = egress_doc({"web": 8080}, listen="systemd:link", admin={"listen": "systemd:link"})
    with pytest.raises(ConfigError) as caught:
        parse_config(twice)
    assert caught.value.problems[0].message.startswith("systemd:link is already used")


def adopt(env: dict[str, str], sockets: list[socket.socket]) -> list[str]:
    """Place ``sockets`` on consecutive spare descriptors and adopt them from ``env``.

    The adopted socket objects own those descriptors from then on.
    """
    first = 900
    for offset, sock in enumerate(sockets):
        os.dup2(sock.fileno(), first + offset)
    return _activation.adopt_from_environment(env, pid=4242, first_fd=first)


def test_the_environment_is_read_as_sd_listen_fds_does() -> None:
    with listening_socket() as a, listening_socket() as b:
        env = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin", "X": "1"}
        assert adopt(env, [a, b]) == ["web", "admin"]
        assert env == {"X": "1"}  # the variables are gone, so no child takes them
        assert _activation.unclaimed() == {"web": 1, "admin": 1}
        (web,) = _activation.take("web")
        assert web.getsockname() == a.getsockname()
        assert os.get_inheritable(web.fileno()) is False
        web.close()
        with pytest.raises(OSError, match=r"no socket named 'web' \(left: admin\)"):
            _activation.take("web")  # taken already
        # Without LISTEN_FDNAMES every socket is "unknown", as systemd documents.
        env = {"LISTEN_PID": "4242", "LISTEN_FDS": "1"}
        assert adopt(env, [a]) == ["unknown"]


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"}, "1 names for 2"),
        ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "not numbers"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "gone"}, "not an open"),
    ],
)
def test_a_malformed_environment_is_refused(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _activation.adopt_from_environment(env, pid=4242, first_fd=950)
    assert not _activation.unclaimed()


def test_variables_for_another_process_are_ignored() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert _activation.adopt_from_environment(env, pid=4242, first_fd=950) == []
    assert _activation.adopt_from_environment({}, pid=4242) == []


def test_only_a_listening_stream_socket_is_taken() -> None:
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _activation.register("udp", [datagram])
    with pytest.raises(OSError, match="not a listening stream socket"):
        _activation.take("udp")
    assert datagram.fileno() == -1  # closed, not left for the garbage collector
    unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _activation.register("quiet", [unbound])
    with pytest.raises(OSError, match="not a listening stream socket"):
        _activation.take("quiet")


async def test_an_egress_accepts_its_link_on_a_passed_socket(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    passed = listening_socket()
    port = passed.getsockname()[1]
    _activation.register("link", [passed])
    async with gateway_pair(
        {"echo": backend.port}, egress_extra={"listen": "systemd:link"}
    ) as pair:
        assert pair.egress.address("egress:main") == (LOCALHOST, port)
        client = await connect(LOCALHOST, pair.port("mapping:echo"))
        await client.send_all(b"through a passed socket")
        assert await receive_exactly(client, 23) == b"through a passed socket"


def test_gateway_run_takes_the_socket_systemd_passed(tmp_path: Path) -> None:
    config = sim_egress_config(tmp_path)
    text = config.read_text() + '[admin]\nlisten = "systemd:admin"\n'
    config.write_text(text)
    with listening_socket() as admin, listening_socket() as spare:
        # As systemd does it: the sockets on descriptors 3 and 4, LISTEN_PID naming the
        # process that runs the gateway (the wrapper's, which exec keeps).
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                *(sys.executable, "-c", AS_SYSTEMD, str(admin.fileno()), str(spare.fileno())),
                *(sys.executable, "-m", "gateway.cli", "run", str(config)),
            ],
            pass_fds=(admin.fileno(), spare.fileno()),
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO), "LISTEN_FDNAMES": "admin:extra"},
            cwd=tmp_path,
        )
        try:
            port = admin.getsockname()[1]
            deadline = time.monotonic() + 90
            while not (status := _get(port, "/readyz")).startswith(b"HTTP/1.1 200 "):
                assert time.monotonic() < deadline, status  # 503 until its evidence works
                time.sleep(0.1)
            process.terminate()
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:  # pragma: no cover - only when the test fails
                process.kill()
                process.wait()
        assert process.stderr is not None
        with process.stderr:
            lines = [json.loads(line) for line in process.stderr.read().splitlines()]
    messages = {line["msg"]: line for line in lines}
    assert messages["sockets passed by systemd"]["names"] == ["admin", "extra"]
    assert messages["passed socket unused"]["name"] == "extra"


def test_gateway_run_says_which_socket_is_missing(tmp_path: Path) -> None:
    config = sim_egress_config(tmp_path)
    config.write_text(config.read_text() + '[admin]\nlisten = "systemd:admin"\n')
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gateway.cli", "run", str(config)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    failed = json.loads(result.stderr.splitlines()[-1])
    assert failed["msg"] == "gateway failed"
    assert "systemd passed no socket named 'admin' (left: none)" in failed["error"]


def _get(port: int, path: str) -> bytes:
    """GET over loopback (a passed socket queues us even before the gateway accepts)."""
    with socket.create_connection((LOCALHOST, port), timeout=60) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(4096):
            chunks.append(data)
    return b"".join(chunks)
