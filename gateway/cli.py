"""``ratls-gateway``: check a gateway configuration, or run the gateway daemon.

::

    ratls-gateway check CONFIG     validate CONFIG; print every problem with its location
    ratls-gateway probe CONFIG     attest to each egress CONFIG names; explain the outcome
    ratls-gateway run CONFIG       run the gateway until SIGTERM/SIGINT (SIGHUP reloads)

Logs are JSON lines on standard error (one access line per tunnel).  Exit status: 0 on
success, 1 when the configuration is invalid, the gateway failed or a probed egress did
not pass attestation, 2 on usage errors.
Under systemd (``Type=notify-reload``) ``run`` reports readiness, reloads, stopping and
watchdog pings on ``$NOTIFY_SOCKET`` (gateway._systemd).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from ratls._errors import RatlsError

from ._activation import adopt_from_environment as adopt_passed_sockets
from ._activation import unclaimed as unclaimed_passed_sockets
from ._attestation import close_attestation, resolve_attestation
from ._config import ConfigError, load_config, parse_endpoint
from ._daemon import DEFAULT_DRAIN_TIMEOUT, RunningGateway, run_gateway
from ._probe import egresses_of, probe
from ._ratls_provider import register_ratls_providers
from ._runtime import LOGGER_NAME, JsonFormatter, log_event
from ._systemd import SystemdNotifier
from ._workers import WorkerReporter, adopt_shared_sockets, supervise, worker_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

__all__ = ["SUPERVISOR_CHECK", "main"]

#: Seconds between a worker's looks at whether its supervisor still runs.
SUPERVISOR_CHECK: Final = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratls-gateway", description="TEE network gateway over mutually attested TLS."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("config", type=Path)
    probe = sub.add_parser(
        "probe",
        help="attest to each egress the configuration names (or --egress), and explain",
    )
    probe.add_argument("config", type=Path)
    probe.add_argument(
        "--egress",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="an egress to probe instead of those of the ingress rules (repeatable)",
    )
    probe.add_argument("--json", action="store_true", help="one JSON object per egress")
    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("config", type=Path)
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT,
        help="seconds live tunnels may take to finish after SIGTERM (default %(default)s)",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    # Set by a supervisor ([process] workers > 1) on the workers it starts.
    run.add_argument("--worker", type=WorkerReporter.parse, help=argparse.SUPPRESS)
    return parser


def _print_problems(exc: ConfigError, path: Path) -> None:
    print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _probe(path: Path, egress_texts: Sequence[str], as_json: bool) -> int:
    try:
        config = load_config(path)
        egresses = [parse_endpoint(text) for text in egress_texts] or egresses_of(config)
    except ConfigError as exc:
        _print_problems(exc, path)
        return 1
    except ValueError as exc:
        print(f"--egress: {exc}", file=sys.stderr)
        return 2
    if not egresses:
        print(f"{path}: no ingress rule names an egress; give --egress HOST:PORT", file=sys.stderr)
        return 2
    try:
        results = trio.run(probe, config, egresses)
    except RatlsError as exc:
        print(f"{path}: attestation: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for result in results:
        if as_json:
            print(json.dumps(dataclasses.asdict(result), sort_keys=True, default=str))
        elif result.ok:
            print(f"egress {result.egress}: attested ({result.tls}, {result.seconds * 1e3:.1f} ms)")
            print(f"  peer: {result.peer}")
            print(f"  claims: {json.dumps(result.claims, sort_keys=True, default=str)}")
        else:
            print(f"egress {result.egress}: {result.result} ({result.seconds * 1e3:.1f} ms)")
            print(f"  {result.detail}")
    return 0 if all(result.ok for result in results) else 1


def _check(path: Path) -> int:
    try:
        config = load_config(path)
        close_attestation(resolve_attestation(config.attestation))
    except ConfigError as exc:
        _print_problems(exc, path)
        return 1
    except RatlsError as exc:
        print(f"{path}: attestation: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    ingress = len(config.ingress_rules)
    print(
        f"{path}: OK ({ingress} ingress rule(s), {len(config.listeners)} egress listener(s), "
        f"{len(config.routes)} route(s), attester {config.attestation.attester!r})"
    )
    return 0


async def _handle_signals(
    gateway: RunningGateway,
    path: Path,
    received: AsyncIterator[int],
    notifier: SystemdNotifier | None,
    worker: WorkerReporter | None,
) -> None:
    async for signum in received:
        if signum == signal.SIGHUP:
            if notifier is not None:
                notifier.reloading()
            try:
                config = load_config(path)
                gateway.reload(config if worker is None else worker_config(config))
                status = "configuration reloaded"
            except RatlsError as exc:
                log_event("reload refused", level=logging.ERROR, error=str(exc))
                status = f"reload refused, previous configuration in force: {exc}"
            if notifier is not None:
                notifier.ready(status)
        else:
            log_event("shutdown requested", signal=signal.Signals(signum).name)
            if notifier is not None:
                notifier.stopping("draining live tunnels")
            gateway.request_shutdown()
            return


async def _report_to_supervisor(
    gateway: RunningGateway, worker: WorkerReporter, run: trio.CancelScope
) -> None:
    supervisor = os.getppid()
    address = gateway.address("admin")
    if isinstance(address, tuple):
        worker.report(admin=address[1])
    await gateway.wait_ready()
    worker.report(ready=True)
    # A worker whose supervisor died (SIGKILL, a crash) drains and stops, instead of
    # holding the shared ports for good: its parent then changes.
    while os.getppid() == supervisor:  # noqa: ASYNC110 - a parent's death sends no event
        await trio.sleep(SUPERVISOR_CHECK)
    log_event("supervisor gone", level=logging.ERROR, supervisor=supervisor)
    gateway.request_shutdown()
    await gateway.wait_stopped()
    run.cancel()  # no signal will come to end the run


async def _notify_systemd(gateway: RunningGateway, notifier: SystemdNotifier) -> None:
    await gateway.wait_ready()
    notifier.ready(f"ready: {len(gateway.listeners)} listener(s), own evidence verified")
    interval = notifier.watchdog_interval
    if interval is None:
        return
    # Pinged from the event loop: if the loop stops turning, the pings stop too.
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


async def _run(path: Path, drain_timeout: float, worker: WorkerReporter | None = None) -> None:
    config = load_config(path)
    if worker is not None:
        config = worker_config(config)
    try:
        passed = adopt_passed_sockets() if worker is None else adopt_shared_sockets()
    except ValueError as exc:
        raise OSError(errno.EINVAL, f"systemd socket activation: {exc}") from exc
    if passed:
        log_event("sockets passed by systemd", names=passed)
    notifier = SystemdNotifier.from_environment()
    # Signals are caught before anything starts, so an early SIGHUP cannot kill us.
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as received:
        async with trio.open_nursery() as nursery:
            gateway: RunningGateway = await nursery.start(
                partial(run_gateway, config, drain_timeout=drain_timeout)
            )
            if worker is not None:
                nursery.start_soon(_report_to_supervisor, gateway, worker, nursery.cancel_scope)
            for name, count in unclaimed_passed_sockets().items():
                log_event(
                    "passed socket unused",
                    level=logging.WARNING,
                    name=name,
                    sockets=count,
                    hint=f'no listen = "systemd:{name}" in the configuration',
                )
            if notifier is not None:
                nursery.start_soon(_notify_systemd, gateway, notifier)
            await _handle_signals(gateway, path, received, notifier, worker)
            # The watchdog stays on while draining; it ends with the gateway.
            await gateway.wait_stopped()
            nursery.cancel_scope.cancel()


def _setup_logging(level: str, *, worker: WorkerReporter | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker=None if worker is None else worker.index))
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ratls-gateway``.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = _parser().parse_args(argv)
    register_ratls_providers()
    if args.command == "check":
        return _check(args.config)
    if args.command == "probe":
        return _probe(args.config, args.egress, args.json)
    _setup_logging(args.log_level, worker=args.worker)
    try:
        if args.worker is None:
            config = load_config(args.config)
            if config.process.workers > 1:
                return trio.run(
                    partial(
                        supervise,
                        args.config,
                        config,
                        drain_timeout=args.drain_timeout,
                        log_level=args.log_level,
                    )
                )
        trio.run(_run, args.config, args.drain_timeout, args.worker)
    except (ConfigError, OSError, BaseExceptionGroup) as exc:
        failure = _startup_failure(exc)
        if failure is None:
            raise
        if isinstance(failure, ConfigError):
            _print_problems(failure, args.config)
        else:
            log_event("gateway failed", level=logging.ERROR, error=str(failure))
        return 1
    return 0


def _startup_failure(exc: BaseException) -> ConfigError | OSError | None:
    """The configuration or OS error that stopped the gateway, out of trio's exception groups.

    A port already in use or a refused socket option arrives wrapped in one group per
    nursery; the operator should read one line, not a traceback.  None when anything
    else is in there (a bug: let it be seen whole).
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, ConfigError | OSError):
        return exc
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
