"""`[process] workers`: a supervisor, worker processes on shared ports, one admin endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from gateway_helpers import (
    AS_SYSTEMD,
    LOCALHOST,
    GatewayProcess,
    admin_get,
    connect,
    egress_doc,
    ingress_doc,
    metric_value,
    receive_exactly,
    sim_attestation,
    stable_port,
    start_backend,
    start_gateway,
    to_toml,
    wait_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._config import MAX_WORKERS, ConfigError, parse_config
from gateway._ratls_provider import register_ratls_providers
from gateway._workers import WorkerReporter, merge_metrics, worker_config

REPO = Path(__file__).resolve().parent.parent


def _egress(workers: int, listen: str = f"{LOCALHOST}:9443", **extra: Any) -> dict[str, Any]:
    return egress_doc({"web": 8080}, listen=listen, process={"workers": workers}, **extra)


# --------------------------------------------------------------------------- configuration


def test_workers_default_to_one_and_are_bounded() -> None:
    assert parse_config(egress_doc({"web": 8080})).process.workers == 1
    assert parse_config(_egress(4)).process.workers == 4
    for bad in (0, MAX_WORKERS + 1, "2", True):
        with pytest.raises(ConfigError) as info:
            parse_config(_egress(bad))  # type: ignore[arg-type]
        assert info.value.problems[0].location == "process.workers"


def test_workers_need_fixed_tcp_ports() -> None:
    with pytest.raises(ConfigError, match="port 0 gives each worker another port") as info:
        parse_config(_egress(2, listen=f"{LOCALHOST}:0"))
    assert info.value.problems[0].location == "egress.listener[0].listen"
    parse_config(_egress(1, listen=f"{LOCALHOST}:0"))  # one process may take any port
    # UNIX and systemd sockets are bound (or adopted) once, by the supervisor.
    for listen in ("unix:egress.sock", "systemd:main"):
        assert parse_config(_egress(2, listen=listen)).process.workers == 2


def test_the_admin_endpoint_stays_with_the_supervisor() -> None:
    # The supervisor alone binds [admin]; so it may be a UNIX socket even with workers.
    config = parse_config(_egress(2, admin={"listen": "unix:admin.sock"}))
    seen = worker_config(config)
    assert seen.process.reuse_port
    assert seen.process.workers == 1
    assert seen.admin is not None
    assert str(seen.admin.listen) == "127.0.0.1:0"  # its own, reported to the supervisor
    assert seen.listeners == config.listeners


def test_worker_argument() -> None:
    reporter = WorkerReporter.parse("3:17")
    assert reporter.index == 3
    for bad in ("3", "a:1", "1:-2", ":", "3:17:1"):
        with pytest.raises(ValueError, match="INDEX:FD"):
            WorkerReporter.parse(bad)


def test_reporter_writes_json_lines_and_survives_a_gone_reader() -> None:
    read, write = os.pipe()
    reporter = WorkerReporter(0, write)
    reporter.report(admin=1234)
    reporter.report(ready=True)
    assert os.read(read, 100).splitlines() == [b'{"admin": 1234}', b'{"ready": true}']
    os.close(read)
    reporter.report(ready=True)  # EPIPE: the supervisor is gone; nothing is raised
    os.close(write)


# --------------------------------------------------------------------------- metrics


WORKER_TEXT = """# HELP ratls_gateway_tunnels_total Tunnels opened.
# TYPE ratls_gateway_tunnels_total counter
ratls_gateway_tunnels_total{side="egress",rule="main"} 3
# HELP ratls_gateway_up Whether it runs.
# TYPE ratls_gateway_up gauge
ratls_gateway_up 1
# HELP ratls_gateway_seconds Latency.
# TYPE ratls_gateway_seconds histogram
ratls_gateway_seconds_bucket{le="0.1"} 2
ratls_gateway_seconds_bucket{le="+Inf"} 2
ratls_gateway_seconds_sum 0.05
ratls_gateway_seconds_count 2
"""


def test_merge_metrics_labels_every_sample_and_keeps_families_whole() -> None:
    merged = merge_metrics([('worker="0"', WORKER_TEXT), ('worker="1"', WORKER_TEXT)])
    lines = merged.splitlines()
    assert lines[:5] == [
        "# HELP ratls_gateway_tunnels_total Tunnels opened.",
        "# TYPE ratls_gateway_tunnels_total counter",
        'ratls_gateway_tunnels_total{worker="0",side="egress",rule="main"} 3',
        'ratls_gateway_tunnels_total{worker="1",side="egress",rule="main"} 3',
        "# HELP ratls_gateway_up Whether it runs.",
    ]
    assert 'ratls_gateway_up{worker="1"} 1' in lines
    assert 'ratls_gateway_seconds_bucket{worker="0",le="+Inf"} 2' in lines
    assert 'ratls_gateway_seconds_count{worker="1"} 2' in lines
    # A family's samples stay together after its one TYPE line (the text format's rule).
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert families == ["ratls_gateway_tunnels_total", "ratls_gateway_up", "ratls_gateway_seconds"]
    assert merge_metrics([]) == ""


def test_merge_metrics_of_real_gateway_metrics() -> None:
    from gateway._metrics import GatewayMetrics

    metrics = GatewayMetrics()
    metrics.tunnels_total.inc(side="ingress", rule="web")
    text = metrics.render()
    merged = merge_metrics([('worker="0"', text), ('worker="1"', text)])
    assert (
        metric_value(merged, "ratls_gateway_tunnels_total", worker="1", side="ingress", rule="web")
        == 1
    )
    assert merged.count("# TYPE ratls_gateway_tunnels_total ") == 1


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
            st.dictionaries(
                st.from_regex(r"[a-z]{1,5}", fullmatch=True),
                st.from_regex(r"[ -~]{0,8}"),
                max_size=3,
            ),
            st.integers(0, 10**6),
        ),
        max_size=6,
    ),
    st.integers(1, 4),
)
def test_merge_metrics_property(
    series: list[tuple[str, dict[str, str], int]], processes: int
) -> None:
    # Every sample of every process comes out once, with its process label first.
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    text = ""
    for name, labels, value in series:
        inner = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        text += f"# HELP m_{name} help\n# TYPE m_{name} gauge\n"
        text += f"m_{name}{{{inner}}} {value}\n" if inner else f"m_{name} {value}\n"
    merged = merge_metrics([(f'p="{i}"', text) for i in range(processes)]).split("\n")[:-1]
    samples = [line for line in merged if not line.startswith("#")]
    assert len(samples) == len(series) * processes
    for i in range(processes):
        for name, labels, value in series:
            rest = "".join(f',{k}="{escape(v)}"' for k, v in labels.items())
            assert f'm_{name}{{p="{i}"{rest}}} {value}' in samples


# --------------------------------------------------------------------------- processes


async def _status(port: int) -> dict[str, Any]:
    code, body = await admin_get(port, "/status")
    assert code == 200
    document = json.loads(body)
    assert isinstance(document, dict)
    return document


async def _tunnels_through(ingress_port: int, count: int) -> None:
    """``count`` tunnels one after another, each echoing one message."""
    for i in range(count):
        client = await connect(LOCALHOST, ingress_port)
        message = b"tunnel %d" % i
        await client.send_all(message)
        assert await receive_exactly(client, len(message)) == message
        await client.aclose()


def _sim_egress(tmp_path: Path, backend: int, listen: str) -> GatewayProcess:
    """An egress process of two workers (simulated SNP), one route to ``backend``."""
    doc = egress_doc(
        {"web": backend},
        attestation=sim_attestation(),
        listen=listen,
        admin={"listen": f"{LOCALHOST}:{stable_port()}"},
        process={"workers": 2},
    )
    return GatewayProcess(tmp_path, "egress", doc)


def _sim_ingress(tmp_path: Path, egress: str, listen: str) -> GatewayProcess:
    """An ingress process (simulated SNP) mapping ``listen`` to the egress's route."""
    doc = ingress_doc(
        egress,
        {"web": listen},
        attestation=sim_attestation(),
        admin={"listen": f"{LOCALHOST}:{stable_port()}"},
    )
    return GatewayProcess(tmp_path, "ingress", doc)


async def _wait_for_worker(port: int, index: int, key: str, value: object) -> None:
    """Until the supervisor's /status shows ``value`` under ``key`` for worker ``index``."""
    with trio.fail_after(20):
        while True:
            if (await _status(port))["workers"][index][key] == value:
                return
            await trio.sleep(0.02)


async def test_workers_share_the_ports_restart_and_stop_together(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    egress_port, ingress_port = stable_port(), stable_port()
    egress = _sim_egress(tmp_path, backend.port, f"{LOCALHOST}:{egress_port}")
    ingress = _sim_ingress(tmp_path, f"{LOCALHOST}:{egress_port}", f"{LOCALHOST}:{ingress_port}")
    try:
        async with trio.open_nursery() as starting:
            starting.start_soon(egress.start)  # /readyz: 200 once both workers are ready
            starting.start_soon(ingress.start)
        status = await _status(egress.admin_port)
        pids = [worker["pid"] for worker in status["workers"]]
        assert len(set(pids)) == 2
        assert all(worker["status"]["ready"] for worker in status["workers"])

        await _tunnels_through(ingress_port, 16)
        # The kernel spread the ingress's links over both workers (16 connections all
        # landing on one of two has odds of 1 in 32,768).
        code, text = await admin_get(egress.admin_port, "/metrics")
        assert code == 200
        served = [
            metric_value(
                text.decode(),
                "ratls_gateway_tunnels_total",
                worker=str(w),
                side="egress",
                rule="main",
            )
            for w in (0, 1)
        ]
        assert all(served), served
        assert sum(s or 0 for s in served) == 16

        # A worker that dies is started again; the others serve meanwhile.  (Connections
        # the kernel had queued on the dying worker's socket are lost with it, as with any
        # process that crashes: the tunnels below start once the supervisor saw it go.)
        os.kill(pids[0], signal.SIGKILL)
        await _wait_for_worker(egress.admin_port, 0, "restarts", 1)
        await _tunnels_through(ingress_port, 4)
        await _wait_for_worker(egress.admin_port, 0, "ready", True)
        await _tunnels_through(ingress_port, 8)

        # SIGHUP reaches every worker; each reloads as a gateway alone would.
        assert egress.process is not None
        egress.process.send_signal(signal.SIGHUP)
        await wait_for(
            lambda: len([r for r in egress.log() if r.get("msg") == "configuration reloaded"]) == 2
        )
        # SIGTERM: every worker drains and exits, then the supervisor.
        assert await egress.stop() == 0
        log = egress.log()
        stopped = {r["worker"] for r in log if r.get("msg") == "worker stopped"}
        assert stopped == {0, 1}
        for pid in pids[1:]:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        await ingress.aclose()
        await egress.aclose()


async def test_a_worker_that_cannot_start_stops_the_gateway(tmp_path: Path) -> None:
    taken = trio.socket.socket()
    await taken.bind((LOCALHOST, 0))
    taken.listen()
    port = taken.getsockname()[1]
    with taken:
        egress = _sim_egress(tmp_path, 9, f"{LOCALHOST}:{port}")
        with pytest.raises(RuntimeError, match="gateway exited early"):
            await egress.start()
        assert egress.process is not None
        assert await egress.process.wait() == 1
        failures = [r for r in egress.log() if r.get("msg") == "gateway failed"]
        assert any("before ready" in str(r.get("error")) for r in failures)


async def test_workers_share_a_unix_socket_listener_the_supervisor_bound(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    link = tmp_path / "egress.sock"
    egress = _sim_egress(tmp_path, backend.port, f"unix:{link}")
    ingress_port = stable_port()
    ingress = _sim_ingress(tmp_path, f"unix:{link}", f"{LOCALHOST}:{ingress_port}")
    try:
        await egress.start()
        await ingress.start()
        await _tunnels_through(ingress_port, 8)
        status = await _status(egress.admin_port)
        assert [w["ready"] for w in status["workers"]] == [True, True]
        # Both workers accept on the one socket the supervisor bound.
        listens = [w["status"]["egress"][0]["listen"] for w in status["workers"]]
        assert listens == [f"unix:{link}"] * 2
        log = egress.log()
        ok = [r for r in log if r.get("msg") == "tunnel" and r.get("result") == "ok"]
        assert len(ok) == 8
        assert {r["worker"] for r in log if r.get("msg") == "listening" and "worker" in r} == {0, 1}
    finally:
        await ingress.aclose()
        await egress.aclose()


async def test_workers_share_the_sockets_systemd_passed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    link_socket = socket.socket()
    admin_socket = socket.socket()
    for sock in (link_socket, admin_socket):
        sock.bind((LOCALHOST, 0))
        sock.listen(16)
    config = tmp_path / "egress.toml"
    config.write_text(
        to_toml(
            egress_doc(
                {"web": backend.port},
                attestation=sim_attestation(),
                listen="systemd:link",
                admin={"listen": "systemd:admin"},
                process={"workers": 2},
            )
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LISTEN_FDNAMES": "link:admin",
    }
    log = tmp_path / "egress.log"
    with link_socket, admin_socket, log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [
                *(sys.executable, "-c", AS_SYSTEMD),
                *(str(link_socket.fileno()), str(admin_socket.fileno())),
                *(sys.executable, "-m", "gateway.cli", "run", str(config)),
                *("--drain-timeout", "1"),
            ],
            pass_fds=(link_socket.fileno(), admin_socket.fileno()),
            stdin=subprocess.DEVNULL,
            stderr=log_file,
            env=env,
            cwd=str(tmp_path),
        )
        try:
            admin_port = admin_socket.getsockname()[1]
            with trio.fail_after(60):
                while True:
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        if (await admin_get(admin_port, "/readyz"))[0] == 200:
                            break
                    assert process.poll() is None, log.read_text()
                    await trio.sleep(0.05)
            register_ratls_providers()  # the ingress runs here, with the "sim" attester
            ingress_port = stable_port()
            ingress = await start_gateway(
                nursery,
                parse_config(
                    ingress_doc(
                        f"{LOCALHOST}:{link_socket.getsockname()[1]}",
                        {"web": f"{LOCALHOST}:{ingress_port}"},
                        attestation=sim_attestation(),
                    )
                ),
            )
            await _tunnels_through(ingress_port, 6)
            ingress.request_shutdown()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:  # pragma: no cover - only when the test fails
                process.kill()
                await process.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(r.get("msg") == "sockets passed by systemd" for r in lines)
    served = [r for r in lines if r.get("msg") == "tunnel" and r.get("result") == "ok"]
    assert len(served) == 6


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie left for init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def test_workers_stop_when_their_supervisor_dies(tmp_path: Path) -> None:
    egress = _sim_egress(tmp_path, 9, f"{LOCALHOST}:{stable_port()}")
    try:
        await egress.start()
        pids = [w["pid"] for w in (await _status(egress.admin_port))["workers"]]
        assert egress.process is not None
        egress.process.kill()  # no chance to pass anything on
        await egress.process.wait()
        with trio.fail_after(20):
            while any(_running(pid) for pid in pids):  # noqa: ASYNC110 - no event for it
                await trio.sleep(0.05)
        gone = [r for r in egress.log() if r.get("msg") == "supervisor gone"]
        assert sorted(r["worker"] for r in gone) == [0, 1]
    finally:
        await egress.aclose()
