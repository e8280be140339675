"""systemd socket activation: listening sockets passed in, named ``systemd:NAME`` in a config.

With a ``.socket`` unit, systemd binds the listening sockets itself (privileged ports
without privileges, sockets that outlive a restart, so no connection is refused while
the gateway restarts) and passes them to the service as file descriptors 3, 4, ... with
``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` in the environment
(sd_listen_fds(3)).  Each socket's name is its unit's ``FileDescriptorName=`` (by
default the socket unit's name); a listen endpoint ``systemd:NAME`` takes every socket
of that name (a unit with an IPv4 and an IPv6 ``ListenStream=`` passes two).

``ratls-gateway run`` adopts the passed sockets at start (:func:`adopt_from_environment`,
which also removes the variables, so that no child process takes them for its own);
listeners then :func:`take` them by name.  Embedders and tests may :func:`register`
sockets themselves.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

__all__ = [
    "LISTEN_FDS_START",
    "adopt_from_environment",
    "check_socket_name",
    "close_unclaimed",
    "register",
    "take",
    "take_if_registered",
    "unclaimed",
]

#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START: Final = 3
#: Longest name systemd accepts for ``FileDescriptorName=``.
MAX_NAME: Final = 255

_lock = threading.Lock()
_sockets: dict[str, list[socket.socket]] = {}


def check_socket_name(name: str) -> None:
    """Refuse a name systemd could not have given a socket.

    Raises:
        ValueError: empty, longer than 255 characters, or not printable ASCII without ``:``.
    """
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"a socket name has 1 to {MAX_NAME} characters")
    if not all(" " < ch <= "~" and ch != ":" for ch in name):
        raise ValueError("a socket name is printable ASCII without spaces or ':'")


def adopt_from_environment(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    first_fd: int = LISTEN_FDS_START,
) -> list[str]:
    """Adopt the sockets systemd passed this process, and clear the variables.

    Nothing happens without ``LISTEN_PID``, or when it names another process (the
    variables were meant for a parent).

    Args:
        environ: the environment (``os.environ`` by default); the three variables are
            removed from it.
        pid: this process's id (tests).
        first_fd: the first descriptor (tests; systemd always uses 3).

    Returns:
        The names adopted, one per socket.

    Raises:
        ValueError: the variables are malformed (not numbers, or more or fewer names
            than descriptors), or a descriptor is not open.
    """
    env = os.environ if environ is None else environ
    listen_pid = env.pop("LISTEN_PID", None)
    listen_fds = env.pop("LISTEN_FDS", None)
    listen_names = env.pop("LISTEN_FDNAMES", None)
    if listen_pid is None or listen_fds is None:
        return []
    if not listen_pid.isdigit() or not listen_fds.isdigit():
        raise ValueError(f"LISTEN_PID={listen_pid!r} and LISTEN_FDS={listen_fds!r}: not numbers")
    if int(listen_pid) != (os.getpid() if pid is None else pid):
        return []
    count = int(listen_fds)
    names = listen_names.split(":") if listen_names is not None else ["unknown"] * count
    if len(names) != count:
        raise ValueError(f"LISTEN_FDNAMES has {len(names)} names for {count} descriptors")
    adopted: list[tuple[str, socket.socket]] = []
    try:
        for offset, name in enumerate(names):
            fd = first_fd + offset
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
                fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
                adopted.append((name, socket.socket(fileno=fd)))
            except OSError as exc:
                raise ValueError(f"descriptor {fd} ({name}) is not an open socket: {exc}") from exc
    except ValueError:
        for _name, sock in adopted:
            sock.detach()  # not ours to close
        raise
    with _lock:
        for name, sock in adopted:
            _sockets.setdefault(name, []).append(sock)
    return [name for name, _sock in adopted]


def register(name: str, sockets: list[socket.socket]) -> None:
    """Offer listening ``sockets`` under ``name``, as if systemd had passed them."""
    with _lock:
        _sockets.setdefault(name, []).extend(sockets)


def take_if_registered(name: str) -> list[socket.socket]:
    """Every socket registered under ``name``, once; ``[]`` when there is none.

    For sockets a supervisor bound and passed on (``[process] workers``), registered as
    ``unix:PATH``: a name systemd cannot give, since its names have no ``:``.
    """
    with _lock:
        return _sockets.pop(name, [])


def take(name: str) -> list[socket.socket]:
    """Every passed socket called ``name``, once; each is a listening stream socket.

    Raises:
        OSError: no socket of that name was passed (or it was taken already), or one is
            not a listening stream socket.
    """
    with _lock:
        sockets = _sockets.pop(name, [])
        others = sorted(_sockets)
    if not sockets:
        passed = ", ".join(others) if others else "none"
        raise OSError(
            errno.ENOENT,
            f"systemd passed no socket named {name!r} (left: {passed}); "
            "see FileDescriptorName= in the .socket unit",
        )
    for sock in sockets:
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            for each in sockets:
                each.close()
            raise OSError(
                errno.EINVAL,
                f"the socket named {name!r} is not a listening stream socket "
                "(ListenStream= in the .socket unit)",
            )
    return sockets


def unclaimed() -> Mapping[str, int]:
    """Names of passed sockets no listener took, with how many there are of each."""
    with _lock:
        return {name: len(sockets) for name, sockets in _sockets.items()}


def close_unclaimed() -> list[str]:
    """Close the passed sockets no listener took; their names, one per socket."""
    with _lock:
        left = list(_sockets.items())
        _sockets.clear()
    closed = []
    for name, sockets in left:
        for sock in sockets:
            sock.close()
            closed.append(name)
    return closed
