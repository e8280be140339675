"""What the network-namespace scripts (``tests/netns_*.py``) share.

Those scripts run under ``unshare -rn`` (see ``gateway_helpers.run_in_network_namespace``)
and print JSON; this module gives them a command runner and the gateways' access lines.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import trio

from gateway._runtime import LOGGER_NAME

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["TunnelLines", "main_as_root", "run"]


def main_as_root(main: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Run a script's ``main`` under trio and print its results as JSON (as root only)."""
    if os.geteuid() != 0:  # pragma: no cover - unshare -r maps us to root
        sys.exit("run me under unshare -rn")
    print(json.dumps(trio.run(main)))


def run(*argv: str) -> None:
    """Run a setup command (``ip``, ``iptables``...); a failure ends the script."""
    subprocess.run(argv, check=True, capture_output=True, text=True)  # noqa: S603 - fixed argv


class TunnelLines(logging.Handler):
    """Keeps the access-log ``tunnel`` records (of one side, if given) as string maps."""

    def __init__(self, side: str | None = None) -> None:
        super().__init__()
        self.side = side
        self.lines: list[dict[str, Any]] = []
        logger = logging.getLogger(LOGGER_NAME)
        logger.addHandler(self)
        logger.setLevel(logging.INFO)

    async def wait_for(self, count: int) -> None:
        """Until ``count`` lines were kept (TooSlowError after 5 s: a tunnel that should
        log has failed to)."""
        with trio.fail_after(5):
            while len(self.lines) < count:  # noqa: ASYNC110 - waiting for log records
                await trio.sleep(0.01)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a ``tunnel`` record of the chosen side."""
        fields = getattr(record, "fields", None)
        if record.getMessage() != "tunnel" or not isinstance(fields, dict):
            return
        if self.side is None or fields.get("side") == self.side:
            self.lines.append({key: str(value) for key, value in fields.items()})
