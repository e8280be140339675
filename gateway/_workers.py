"""``[process] workers = N``: one supervisor, N gateway processes on the same ports.

A gateway is one trio event loop, so one process uses one core.  With ``workers`` above
one, ``ratls-gateway run`` becomes a supervisor and starts that many workers: each is
``ratls-gateway run`` itself on the same configuration, a whole gateway with its own
identity, evidence, links and tunnels, binding every listener with ``SO_REUSEPORT`` so
that the kernel spreads new connections (and UDP flows, by their addresses) among them.

The supervisor:

* starts the workers and starts a worker again one second after it dies (logged, and
  counted in ``ratls_gateway_worker_restarts_total``);
* passes SIGHUP on (each worker reloads and reports as it would alone) and, on SIGTERM
  or SIGINT, passes SIGTERM on and exits once every worker has drained and exited;
* answers the admin endpoint for all of them: each worker serves its own admin endpoint
  on a loopback port it reports to the supervisor, and the supervisor asks every worker
  and merges: ``/readyz`` is 200 only when every worker is ready, ``/status`` lists the
  workers with their own status documents, and ``/metrics`` is every worker's series
  with a ``worker`` label added, plus the supervisor's own;
* alone speaks to systemd (``READY=1`` once every worker is ready), so that
  ``NotifyAccess=main`` units work unchanged.

A worker reports to the supervisor on a pipe the supervisor passes it (``--worker
INDEX:FD``): one JSON line with its admin port once its listeners are bound, and one
when it is ready.  The pipe carries no secrets and nothing the supervisor acts on
except these two facts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from typing import TYPE_CHECKING, Final, final

import trio

from ratls._errors import RatlsError

from ._activation import adopt_from_environment as adopt_passed_sockets
from ._activation import register as register_socket
from ._activation import take as take_passed_sockets
from ._admin import serve_admin_answers
from ._config import AdminConfig, Endpoint, GatewayConfig, load_config
from ._reader import StreamReader
from ._runtime import bind_unix_listener, log_event
from ._systemd import SystemdNotifier

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, MutableMapping, Sequence
    from pathlib import Path

__all__ = [
    "RESTART_DELAY",
    "SHARED_SOCKETS_ENV",
    "WorkerReporter",
    "adopt_shared_sockets",
    "merge_metrics",
    "supervise",
    "worker_config",
]

#: Seconds before a worker that died is started again.
RESTART_DELAY: Final = 1.0
# Accept queue of the UNIX-socket listeners the supervisor binds (as a gateway alone).
_BACKLOG: Final = 128
# How long the supervisor waits for one worker's admin answer.
_ASK_TIMEOUT: Final = 3.0
# Largest admin answer taken from a worker (a /status with thousands of tunnels is big).
_MAX_ANSWER: Final = 64 * 1024 * 1024
# Environment a worker must not inherit: systemd talks to the supervisor alone.
_SUPERVISOR_ONLY_ENV: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: Environment variable naming the listening sockets a worker inherits from its
#: supervisor: ``FD=NAME`` pairs separated by ``;`` (NAME a systemd socket name, or
#: ``unix:PATH`` for a UNIX-socket listener the supervisor bound).
SHARED_SOCKETS_ENV: Final = "RATLS_GATEWAY_SHARED_SOCKETS"
_TEXT: Final = "text/plain; charset=utf-8"


def worker_config(config: GatewayConfig) -> GatewayConfig:
    """The configuration as a worker runs it: shared ports, a private admin port.

    Applied to the configuration at start and on every reload, so a reload compares
    like with like.
    """
    process = dataclasses.replace(config.process, reuse_port=True, workers=1)
    admin = AdminConfig(listen=Endpoint(kind="tcp", host="127.0.0.1", port=0))
    return dataclasses.replace(config, process=process, admin=admin)


@final
class WorkerReporter:
    """A worker's side of the report pipe (``--worker INDEX:FD``)."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd = fd

    @classmethod
    def parse(cls, text: str) -> WorkerReporter:
        """``INDEX:FD`` as given on the command line.

        Raises:
            ValueError: not two non-negative integers.
        """
        index, _, fd = text.partition(":")
        if not (index.isdigit() and fd.isdigit()):
            raise ValueError(f"--worker takes INDEX:FD, not {text!r}")
        return cls(int(index), int(fd))

    def report(self, **facts: object) -> None:
        """Send one fact to the supervisor (best effort: a gone supervisor is ignored)."""
        line = json.dumps(facts, sort_keys=True).encode() + b"\n"
        with contextlib.suppress(OSError):
            os.write(self._fd, line)


# --------------------------------------------------------------------------- sockets


def _stream_listen_endpoints(config: GatewayConfig) -> list[Endpoint]:
    """Every listen endpoint that may be a UNIX or systemd socket (stream listeners)."""
    return [
        *(x.listen for x in config.listeners),
        *(r.listen for r in config.mappings),
        *(r.listen for r in config.http_connect),
        *(r.listen for r in config.socks5),
    ]


def _shared_sockets(config: GatewayConfig) -> list[tuple[str, socket.socket]]:
    """The listening sockets every worker shares: UNIX ones bound here, systemd's passed.

    (TCP and UDP ports are bound by each worker with ``SO_REUSEPORT`` instead, so that
    the kernel spreads connections and flows evenly.)

    Raises:
        OSError: a UNIX socket cannot be bound, or systemd passed no socket of a name.
    """
    shared: list[tuple[str, socket.socket]] = []
    try:
        for endpoint in dict.fromkeys(_stream_listen_endpoints(config)):
            if endpoint.kind == "unix":
                sock = bind_unix_listener(endpoint.path, _BACKLOG)
                shared.append((f"unix:{endpoint.path}", sock))
            elif endpoint.kind == "systemd":
                shared.extend((endpoint.path, s) for s in take_passed_sockets(endpoint.path))
    except BaseException:
        for _name, sock in shared:
            sock.close()
        raise
    return shared


def adopt_shared_sockets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """In a worker: register the listening sockets the supervisor passed (and forget the
    variable, so that nothing started later takes them).

    Returns:
        The names registered, one per socket.

    Raises:
        ValueError: the variable is malformed or names a descriptor that is not open.
    """
    env = os.environ if environ is None else environ
    text = env.pop(SHARED_SOCKETS_ENV, "")
    names: list[str] = []
    for item in filter(None, text.split(";")):
        fd, sep, name = item.partition("=")
        if not sep or not fd.isdigit() or not name:
            raise ValueError(f"{SHARED_SOCKETS_ENV}: {item!r} is not FD=NAME")
        try:
            sock = socket.socket(fileno=int(fd))
        except OSError as exc:
            raise ValueError(f"{SHARED_SOCKETS_ENV}: descriptor {fd} ({name}): {exc}") from exc
        register_socket(name, [sock])
        names.append(name)
    return names


# --------------------------------------------------------------------------- metrics


def _with_label(sample: str, label: str) -> str:
    """``name{a="b"} 1`` -> ``name{label,a="b"} 1``; ``name 1`` -> ``name{label} 1``."""
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = sample[brace + 1 :]
        return f"{sample[:brace]}{{{label}{'' if rest.startswith('}') else ','}{rest}"
    if space == -1:
        return sample  # not a sample line; left as it is
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def merge_metrics(texts: Sequence[tuple[str, str]]) -> str:
    """Several processes' Prometheus text, as one: each family once, a label per process.

    Args:
        texts: ``(label, exposition)`` pairs, e.g. ``('worker="0"', "...")``.

    Returns:
        The merged exposition: families in order of first appearance, each with its
        HELP and TYPE lines once and then every process's samples, labelled.
    """
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for label, text in texts:
        family = ""
        for line in text.split("\n"):  # the format's only line break (no splitlines())
            if not line:
                continue
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    head = heads.setdefault(family, [])
                    samples.setdefault(family, [])
                    if not any(h.split(" ", 2)[1] == parts[1] for h in head):
                        head.append(line)
                continue
            samples.setdefault(family, []).append(_with_label(line, label))
            heads.setdefault(family, [])
    out: list[str] = []
    for family, head in heads.items():
        out.extend(head)
        out.extend(samples.get(family, []))
    return "\n".join(out) + "\n" if out else ""


# --------------------------------------------------------------------------- workers


@final
class _Worker:
    """One worker process, started again whenever it dies until the supervisor stops."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: trio.Process | None = None
        self.admin_port: int | None = None
        self.ready = False
        self.ever_ready = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.returncode is None else None

    def signal(self, signum: int) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def _read_reports(self, fd: int, supervisor: _Supervisor) -> None:
        # Facts the worker reports, one JSON line each, until it exits (EOF).
        async with trio.lowlevel.FdStream(fd) as stream:
            reader = StreamReader(stream, limit=4096)
            while True:
                try:
                    line = await reader.read_until(b"\n")
                except (RatlsError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the worker exited (or wrote a line too long to be ours)
                try:
                    facts = json.loads(line)
                except ValueError:
                    continue
                if isinstance(facts, dict):
                    port = facts.get("admin")
                    if isinstance(port, int) and not isinstance(port, bool):
                        self.admin_port = port
                    if facts.get("ready") is True:
                        self.ready = self.ever_ready = True
                        log_event("worker ready", worker=self.index, pid=self.pid)
                        supervisor.note_ready()

    async def run(self, argv: Sequence[str], supervisor: _Supervisor) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _SUPERVISOR_ONLY_ENV}
        shared = supervisor.shared
        if shared:
            env[SHARED_SOCKETS_ENV] = ";".join(f"{s.fileno()}={name}" for name, s in shared)
        while not supervisor.stopping:
            report_read, report_write = os.pipe()
            try:
                process = await trio.lowlevel.open_process(
                    [*argv, "--worker", f"{self.index}:{report_write}"],
                    pass_fds=(report_write, *(s.fileno() for _name, s in shared)),
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            except BaseException:
                os.close(report_read)
                raise
            finally:
                os.close(report_write)
            self.process = process
            log_event("worker started", worker=self.index, pid=process.pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports, report_read, supervisor)
                code = await process.wait()
            self.ready = False
            self.admin_port = None
            if supervisor.stopping:
                log_event("worker stopped", worker=self.index, exit_code=code)
                return
            if not self.ever_ready:
                # It never got going (a port in use, a broken attester...): starting it
                # again would fail the same way, every second.  Stop, as one gateway would.
                supervisor.fail(f"worker {self.index} exited with code {code} before ready")
                return
            self.restarts += 1
            log_event(
                "worker died",
                level=logging.ERROR,
                worker=self.index,
                exit_code=code,
                restart_in=RESTART_DELAY,
            )
            await trio.sleep(RESTART_DELAY)


# --------------------------------------------------------------------------- admin


async def _ask(port: int, path: str) -> tuple[int, bytes] | None:
    """GET ``path`` from a worker's admin endpoint: (status, body), or None if it failed."""
    try:
        with trio.fail_after(_ASK_TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
                reader = StreamReader(stream, limit=_MAX_ANSWER)
                head = await reader.read_until(b"\r\n\r\n")
                answer = bytearray(reader.leftover())
                while len(answer) <= _MAX_ANSWER and (chunk := await stream.receive_some()):
                    answer += chunk
    except (OSError, RatlsError, trio.TooSlowError, trio.BrokenResourceError):
        return None
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(status_line) < 2 or not status_line[1].isdigit():
        return None
    return int(status_line[1]), bytes(answer)


@final
class _Supervisor:
    def __init__(self, count: int, shared: list[tuple[str, socket.socket]]) -> None:
        self.workers = [_Worker(index) for index in range(count)]
        #: Listening sockets the workers inherit (``SHARED_SOCKETS_ENV``).
        self.shared = shared
        self.stopping = False
        self.failure: str | None = None
        self.first_ready = trio.Event()

    def note_ready(self) -> None:
        """A worker became ready; the first time all are, :attr:`first_ready` is set."""
        if self.all_ready:
            self.first_ready.set()

    def fail(self, reason: str) -> None:
        """Stop every worker: the gateway cannot run (reported as the exit status)."""
        log_event("gateway failed", level=logging.ERROR, error=reason)
        if self.failure is None:
            self.failure = reason
        self.stop()

    def stop(self) -> None:
        """Drain and stop every worker; restart none."""
        self.stopping = True
        self.signal_all(signal.SIGTERM)

    @property
    def all_ready(self) -> bool:
        return all(worker.ready for worker in self.workers)

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            worker.signal(signum)

    async def _ask_all(self, path: str) -> list[tuple[_Worker, tuple[int, bytes] | None]]:
        answers: list[tuple[_Worker, tuple[int, bytes] | None]] = []

        async def one(worker: _Worker) -> None:
            port = worker.admin_port
            answers.append((worker, await _ask(port, path) if port is not None else None))

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)
        answers.sort(key=lambda item: item[0].index)
        return answers

    async def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """The admin endpoint of the whole gateway (see the module docstring)."""
        if method != "GET":
            return 405, _TEXT, b"only GET\n"
        path = path.split("?", 1)[0]
        running = sum(worker.pid is not None for worker in self.workers)
        if path == "/livez":
            return 200, _TEXT, f"ok: {running} of {len(self.workers)} workers running\n".encode()
        if path == "/readyz":
            if self.stopping:
                return 503, _TEXT, b"draining\n"
            ready = sum(worker.ready for worker in self.workers)
            if ready < len(self.workers):
                return 503, _TEXT, f"not ready: {ready} of {len(self.workers)} workers\n".encode()
            return 200, _TEXT, b"ready\n"
        if path == "/status":
            documents = []
            for worker, answer in await self._ask_all("/status"):
                status: object = None
                if answer is not None:
                    with contextlib.suppress(ValueError):
                        status = json.loads(answer[1])
                documents.append(
                    {
                        "worker": worker.index,
                        "pid": worker.pid,
                        "ready": worker.ready,
                        "restarts": worker.restarts,
                        "status": status,
                    }
                )
            body = {
                "ready": self.all_ready and not self.stopping,
                "draining": self.stopping,
                "workers": documents,
            }
            return 200, "application/json", json.dumps(body, indent=2, sort_keys=True).encode()
        if path == "/metrics":
            texts = [
                (f'worker="{worker.index}"', answer[1].decode("utf-8", "replace"))
                for worker, answer in await self._ask_all("/metrics")
                if answer is not None and answer[0] == 200
            ]
            own = [
                "# HELP ratls_gateway_workers Worker processes by state.",
                "# TYPE ratls_gateway_workers gauge",
                f'ratls_gateway_workers{{state="running"}} {running}',
                f'ratls_gateway_workers{{state="ready"}} {sum(w.ready for w in self.workers)}',
                "# HELP ratls_gateway_worker_restarts_total Workers started again after dying.",
                "# TYPE ratls_gateway_worker_restarts_total counter",
                *(
                    f'ratls_gateway_worker_restarts_total{{worker="{w.index}"}} {w.restarts}'
                    for w in self.workers
                ),
            ]
            body_text = merge_metrics(texts) + "\n".join(own) + "\n"
            return 200, "text/plain; version=0.0.4; charset=utf-8", body_text.encode()
        return 404, _TEXT, b"not found\n"


async def _notify_when_ready(supervisor: _Supervisor, notifier: SystemdNotifier) -> None:
    await supervisor.first_ready.wait()
    notifier.ready(f"ready: {len(supervisor.workers)} workers")
    interval = notifier.watchdog_interval
    while interval is not None:
        notifier.watchdog()
        await trio.sleep(interval)


async def _handle_signals(
    supervisor: _Supervisor,
    path: Path,
    received: AsyncIterator[int],
    notifier: SystemdNotifier | None,
) -> None:
    async for signum in received:
        if signum == signal.SIGHUP:
            try:
                load_config(path)
            except RatlsError as exc:  # the workers refuse it too, each saying why
                log_event("reload refused", level=logging.ERROR, error=str(exc))
            log_event("reload passed to workers", workers=len(supervisor.workers))
            supervisor.signal_all(signal.SIGHUP)
            continue
        log_event("shutdown requested", signal=signal.Signals(signum).name)
        if notifier is not None:
            notifier.stopping("draining the workers")
        supervisor.stop()
        return


async def supervise(
    path: Path, config: GatewayConfig, *, drain_timeout: float, log_level: str
) -> int:
    """Run ``config.process.workers`` workers on the configuration at ``path`` until
    SIGTERM or SIGINT, then until every worker has drained and exited.

    Returns:
        The exit status: 0 after a requested stop, 1 when a worker could not start.

    Raises:
        OSError: the admin endpoint cannot be bound.
    """
    argv = [
        sys.executable,
        "-m",
        "gateway.cli",
        "run",
        str(path),
        "--drain-timeout",
        repr(drain_timeout),
        "--log-level",
        log_level,
    ]
    try:
        passed = adopt_passed_sockets()
    except ValueError as exc:
        raise OSError(errno.EINVAL, f"systemd socket activation: {exc}") from exc
    if passed:
        log_event("sockets passed by systemd", names=passed)
    shared = _shared_sockets(config)
    try:
        return await _supervise(path, config, argv, shared)
    finally:
        for _name, sock in shared:
            sock.close()


async def _supervise(
    path: Path, config: GatewayConfig, argv: list[str], shared: list[tuple[str, socket.socket]]
) -> int:
    supervisor = _Supervisor(config.process.workers, shared)
    notifier = SystemdNotifier.from_environment()
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as received:
        async with trio.open_nursery() as nursery:
            if config.admin is not None:
                await nursery.start(
                    partial(
                        serve_admin_answers,
                        supervisor.answer,
                        config.admin.listen,
                        reuse_port=config.process.reuse_port,
                    )
                )
            nursery.start_soon(_handle_signals, supervisor, path, received, notifier)
            if notifier is not None:
                nursery.start_soon(_notify_when_ready, supervisor, notifier)
            log_event("supervising", workers=len(supervisor.workers))
            async with trio.open_nursery() as workers:
                for worker in supervisor.workers:
                    workers.start_soon(worker.run, argv, supervisor)
            # Every worker has exited, and none will be started again.
            nursery.cancel_scope.cancel()
    log_event("stopped")
    return 1 if supervisor.failure is not None else 0
