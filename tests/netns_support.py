"""What the network-namespace scripts (``tests/netns_*.py``) share.

Those scripts run under ``unshare -rn`` (see ``gateway_helpers.run_in_network_namespace``)
and print JSON; this module gives them a command runner and the gateways' access lines.
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from gateway._runtime import LOGGER_NAME

__all__ = ["TunnelLines", "run"]


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

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a ``tunnel`` record of the chosen side."""
        fields = getattr(record, "fields", None)
        if record.getMessage() != "tunnel" or not isinstance(fields, dict):
            return
        if self.side is None or fields.get("side") == self.side:
            self.lines.append({key: str(value) for key, value in fields.items()})
