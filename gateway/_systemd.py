"""systemd service notifications (``sd_notify``), spoken directly on the socket.

With ``Type=notify`` or ``Type=notify-reload`` systemd passes ``$NOTIFY_SOCKET``, a
datagram socket that takes newline-separated ``KEY=VALUE`` assignments (sd_notify(3)).
The gateway says ``READY=1`` once its own evidence exists (the same moment /readyz turns
200), ``RELOADING=1`` with ``MONOTONIC_USEC`` around a SIGHUP reload, ``STOPPING=1`` when
it starts draining, and ``WATCHDOG=1`` at half the ``WatchdogSec`` interval from the
event loop, so a stuck loop gets the service restarted.  No libsystemd is needed: the
protocol is one ``sendto`` per message.

Notifications are best effort.  A failing send is logged once and never stops the
gateway; without ``$NOTIFY_SOCKET`` nothing is sent at all.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Final, final

from ._runtime import log_event

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["SystemdNotifier"]

# Longest STATUS= text sent; systemd shows it in `systemctl status`, one line.
_MAX_STATUS: Final = 200


@final
class SystemdNotifier:
    """Sends sd_notify messages to one socket address.

    Attributes:
        address: the socket address (a path, or ``"\\0name"`` in the abstract namespace).
        watchdog_interval: seconds between ``WATCHDOG=1`` pings (half of systemd's
            ``WATCHDOG_USEC``), or None when no watchdog is asked of this process.
    """

    def __init__(self, address: str, *, watchdog_interval: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_interval
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """The notifier systemd asked for, or None when not run as a notify service.

        ``$NOTIFY_SOCKET`` is a path (``/run/systemd/notify``) or an abstract name
        (``@name``).  ``$WATCHDOG_USEC`` turns on the watchdog unless ``$WATCHDOG_PID``
        names another process; values that are not positive integers are ignored.
        """
        env = os.environ if environ is None else environ
        target = env.get("NOTIFY_SOCKET", "")
        if target.startswith("@"):
            address = "\0" + target[1:]
        elif target.startswith("/"):
            address = target
        else:
            return None
        interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 2e6
        return cls(address, watchdog_interval=interval)

    def send(self, **fields: str | int) -> bool:
        """Send one message of ``KEY=VALUE`` lines; True if the socket took it."""
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")
            if key == "STATUS":
                text = text[:_MAX_STATUS]
            lines.append(f"{key}={text}")
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log_event(
                    "systemd notification failed (further failures are not logged)",
                    level=logging.WARNING,
                    error=str(exc),
                )
            return False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1``: the service is up (for the gateway: its own evidence exists)."""
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """``RELOADING=1``: a reload starts (``Type=notify-reload`` waits for READY=1)."""
        return self.send(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self, status: str) -> bool:
        """``STOPPING=1``: the service is shutting down (draining)."""
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the event loop is alive."""
        return self.send(WATCHDOG=1)

    def __repr__(self) -> str:
        shown = "@" + self.address[1:] if self.address.startswith("\0") else self.address
        return f"<SystemdNotifier {shown} watchdog={self.watchdog_interval}>"
