"""``ratls-gateway``: check a gateway configuration, or run the gateway daemon.

::

    ratls-gateway check CONFIG     validate CONFIG; print every problem with its location
    ratls-gateway run CONFIG       run the gateway until SIGTERM/SIGINT (SIGHUP reloads)

Logs are JSON lines on standard error (one access line per tunnel).  Exit status: 0 on
success, 1 when the configuration is invalid or the gateway failed, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ratls._errors import RatlsError

from ._attestation import close_attestation, resolve_attestation
from ._config import ConfigError, load_config
from ._daemon import DEFAULT_DRAIN_TIMEOUT, RunningGateway, run_gateway
from ._ratls_provider import register_ratls_providers
from ._runtime import LOGGER_NAME, JsonFormatter, log_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratls-gateway", description="TEE network gateway over mutually attested TLS."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("config", type=Path)
    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("config", type=Path)
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT,
        help="seconds live tunnels may take to finish after SIGTERM (default %(default)s)",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def _print_problems(exc: ConfigError, path: Path) -> None:
    print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


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
    ingress = len(config.mappings) + len(config.http_connect) + len(config.socks5)
    print(
        f"{path}: OK ({ingress} ingress rule(s), {len(config.listeners)} egress listener(s), "
        f"{len(config.routes)} route(s), attester {config.attestation.attester!r})"
    )
    return 0


async def _handle_signals(
    gateway: RunningGateway, path: Path, received: AsyncIterator[int]
) -> None:
    async for signum in received:
        if signum == signal.SIGHUP:
            try:
                gateway.reload(load_config(path))
            except RatlsError as exc:
                log_event("reload refused", level=logging.ERROR, error=str(exc))
        else:
            log_event("shutdown requested", signal=signal.Signals(signum).name)
            gateway.request_shutdown()
            return


async def _run(path: Path, drain_timeout: float) -> None:
    config = load_config(path)
    # Signals are caught before anything starts, so an early SIGHUP cannot kill us.
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as received:
        async with trio.open_nursery() as nursery:
            gateway: RunningGateway = await nursery.start(
                partial(run_gateway, config, drain_timeout=drain_timeout)
            )
            await _handle_signals(gateway, path, received)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
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
    _setup_logging(args.log_level)
    try:
        trio.run(_run, args.config, args.drain_timeout)
    except ConfigError as exc:
        _print_problems(exc, args.config)
        return 1
    except OSError as exc:
        log_event("gateway failed", level=logging.ERROR, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
