"""systemd notifications: the message format, and `ratls-gateway run` as a notify service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway_helpers import sim_egress_config, spawn_gateway_cli

from gateway._systemd import SystemdNotifier

if TYPE_CHECKING:
    import pytest

REPO = Path(__file__).resolve().parent.parent


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    return sock


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_from_environment() -> None:
    assert SystemdNotifier.from_environment({}) is None
    assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": "relative/path"}) is None
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "/run/systemd/notify"})
    assert notifier is not None
    assert notifier.address == "/run/systemd/notify"
    assert notifier.watchdog_interval is None
    abstract = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@sd-notify"})
    assert abstract is not None
    assert abstract.address == "\0sd-notify"
    assert repr(abstract) == "<SystemdNotifier @sd-notify watchdog=None>"
    base = {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000"}
    watched = SystemdNotifier.from_environment(base)
    assert watched is not None
    assert watched.watchdog_interval == 15.0
    mine = SystemdNotifier.from_environment({**base, "WATCHDOG_PID": str(os.getpid())})
    assert mine is not None
    assert mine.watchdog_interval == 15.0
    for env in (
        {**base, "WATCHDOG_PID": str(os.getpid() + 1)},  # meant for another process
        {**base, "WATCHDOG_USEC": "0"},
        {**base, "WATCHDOG_USEC": "-5"},
        {**base, "WATCHDOG_USEC": "soon"},
    ):
        other = SystemdNotifier.from_environment(env)
        assert other is not None
        assert other.watchdog_interval is None


def test_messages(tmp_path: Path) -> None:
    with _listen(tmp_path / "notify") as sock:
        notifier = SystemdNotifier(str(tmp_path / "notify"))
        assert notifier.ready("up\nand running")
        assert _fields(sock.recv(4096)) == {"READY": "1", "STATUS": "up and running"}
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        reloading = _fields(sock.recv(4096))
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"])
        assert notifier.watchdog()
        assert _fields(sock.recv(4096)) == {"WATCHDOG": "1"}
        assert notifier.stopping("x" * 1000)
        stopping = _fields(sock.recv(4096))
        assert stopping["STOPPING"] == "1"
        assert len(stopping["STATUS"]) == 200


def test_abstract_socket() -> None:
    name = f"ratls-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        assert notifier.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"


def test_failures_are_logged_once_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens"))
    assert not notifier.ready("up")
    assert not notifier.watchdog()
    failures = [r for r in caplog.records if "systemd notification failed" in r.getMessage()]
    assert len(failures) == 1


def test_gateway_run_as_a_notify_service(tmp_path: Path) -> None:
    config = sim_egress_config(tmp_path)
    with _listen(tmp_path / "notify") as sock:
        notify = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
        process = spawn_gateway_cli(config, env=notify, stderr=subprocess.DEVNULL)
        try:
            ready = _fields(sock.recv(4096))
            assert ready["READY"] == "1"
            assert "own evidence verified" in ready["STATUS"]
            assert (tmp_path / "egress.sock").exists()  # listeners are bound by then
            assert _fields(sock.recv(4096)) == {"WATCHDOG": "1"}
            assert _fields(sock.recv(4096)) == {"WATCHDOG": "1"}
            process.send_signal(signal.SIGHUP)
            seen = [_fields(sock.recv(4096)) for _ in range(2)]
            while "READY" not in seen[-1]:
                seen.append(_fields(sock.recv(4096)))
            reload_messages = [m for m in seen if m != {"WATCHDOG": "1"}]
            assert reload_messages[0]["RELOADING"] == "1"
            assert reload_messages[1] == {"READY": "1", "STATUS": "configuration reloaded"}
            process.send_signal(signal.SIGTERM)
            message = _fields(sock.recv(4096))
            while message == {"WATCHDOG": "1"}:
                message = _fields(sock.recv(4096))
            assert message == {"STOPPING": "1", "STATUS": "draining live tunnels"}
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:  # pragma: no cover - only when the test fails
                process.kill()
                process.wait()
