"""Socket readiness for many mostly idle sockets, with a small cost per waiting socket.

The gateway may hold 10,000 tunnels, each with two sockets per process, and nearly all of
them idle.  ``trio.lowlevel.wait_readable`` costs about 1.8 KiB of Python objects per
waiting socket (a registration record, an abort closure, three coroutine frames) and an
``epoll_ctl`` call per wait.  :class:`ReadinessPoller` watches sockets in an epoll set of
its own, registered once per socket and edge-triggered, with one system task that sleeps
on that set through trio:

* a task waits with :meth:`SocketWatch.park_reader` / :meth:`SocketWatch.park_writer` and
  ``trio.lowlevel.wait_task_rescheduled``: one parked coroutine, and no system call;
* or no task waits at all: :meth:`ReadinessPoller.call_when_readable` runs a callback at
  the next readiness, so an idle tunnel direction needs no task (see ``gateway._tunnel``).

Edge-triggered readiness is safe here because a caller only waits after the kernel said
the call would block (``EAGAIN``): any data or room that arrives after that raises a new
event, which the poller's task handles after the caller has parked (one thread).  A
stale event only wakes a caller early, and it tries again.

Sockets must be closed through their owner (:class:`~gateway._direct_socket.DirectSocketStream`),
which calls :meth:`ReadinessPoller.forget` first: a parked task then raises
:class:`trio.ClosedResourceError`, as trio's own waits do when a socket is closed.

Linux only (epoll); elsewhere :func:`current_poller` returns None and callers use trio's
waits.
"""

from __future__ import annotations

import contextlib
import logging
import select
from typing import TYPE_CHECKING, Final, final

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ReadinessPoller", "SocketWatch", "current_poller"]

_log = logging.getLogger(__name__)

_HAS_EPOLL: Final = hasattr(select, "epoll")
#: Events taken from the kernel per round; more simply stay ready for the next round.
_MAX_EVENTS: Final = 1024
if _HAS_EPOLL:
    _READ_EVENTS: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
    _WRITE_EVENTS: Final = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
    _WATCHED: Final = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


@final
class SocketWatch:
    """One socket in a poller's set: who waits for it, and whether it was forgotten."""

    __slots__ = (
        "_abort_reader",
        "_abort_writer",
        "closed",
        "fd",
        "on_readable",
        "poller",
        "reader",
        "writer",
    )

    def __init__(self, fd: int, poller: ReadinessPoller) -> None:
        self.fd = fd
        self.poller = poller
        self.reader: trio.lowlevel.Task | None = None
        self.writer: trio.lowlevel.Task | None = None
        self.on_readable: Callable[[], None] | None = None
        self.closed = False
        # Bound once: a wait then allocates nothing of its own for cancellation.
        self._abort_reader = self._cancel_reader
        self._abort_writer = self._cancel_writer

    def park_reader(self) -> Callable[[object], trio.lowlevel.Abort]:
        """Make the current task this socket's reader; returns the abort function to wait with.

        Call only after the socket said EAGAIN, then
        ``await trio.lowlevel.wait_task_rescheduled(abort)`` and :meth:`raise_if_closed`
        (no coroutine of our own in between: a parked wait is a few frames, times 10,000).

        Raises:
            trio.BusyResourceError: something already waits to read it.
            trio.ClosedResourceError: the socket was forgotten (closed).
        """
        self.raise_if_closed()
        if self.reader is not None or self.on_readable is not None:
            raise trio.BusyResourceError("something already waits to read this socket")
        self.reader = trio.lowlevel.current_task()
        return self._abort_reader

    def park_writer(self) -> Callable[[object], trio.lowlevel.Abort]:
        """As :meth:`park_reader`, for room to write."""
        self.raise_if_closed()
        if self.writer is not None:
            raise trio.BusyResourceError("another task already waits to write this socket")
        self.writer = trio.lowlevel.current_task()
        return self._abort_writer

    def raise_if_closed(self) -> None:
        """Raise trio.ClosedResourceError if the socket was forgotten (closed)."""
        if self.closed:
            raise trio.ClosedResourceError("the socket was closed")

    def _cancel_reader(self, _: object) -> trio.lowlevel.Abort:
        self.reader = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _cancel_writer(self, _: object) -> trio.lowlevel.Abort:
        self.writer = None
        return trio.lowlevel.Abort.SUCCEEDED


@final
class ReadinessPoller:
    """An edge-triggered epoll set for one trio run, served by one system task."""

    __slots__ = ("_epoll", "_watches")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watches: dict[int, SocketWatch] = {}

    # ------------------------------------------------------------ registration

    def watch(self, fd: int) -> SocketWatch:
        """Add ``fd`` to the set.  A forgotten registration of a reused number is dropped."""
        stale = self._watches.get(fd)
        if stale is not None:
            # The descriptor was closed without forget() and its number reused: whoever
            # still waits on the old socket learns that it is closed.
            self.forget(stale)
        watch = SocketWatch(fd, self)
        try:
            self._epoll.register(fd, _WATCHED)
        except FileExistsError:
            self._epoll.modify(fd, _WATCHED)
        self._watches[fd] = watch
        return watch

    def forget(self, watch: SocketWatch) -> None:
        """Remove ``watch`` (before its socket closes); its waiters get ClosedResourceError."""
        if watch.closed:
            return
        watch.closed = True
        watch.on_readable = None
        if self._watches.get(watch.fd) is watch:
            del self._watches[watch.fd]
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(watch.fd)
        for task in (watch.reader, watch.writer):
            if task is not None:
                trio.lowlevel.reschedule(task)
        watch.reader = watch.writer = None

    # ------------------------------------------------------------ waiting

    def call_when_readable(self, watch: SocketWatch, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, from the poller's task, when the socket may be readable.

        Call only after the socket said EAGAIN.  The callback must not raise or block;
        :meth:`forget` drops it unrun.
        """
        watch.raise_if_closed()
        if watch.reader is not None or watch.on_readable is not None:
            raise trio.BusyResourceError("something already waits to read this socket")
        watch.on_readable = callback

    # ------------------------------------------------------------ the task

    async def _serve(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, events in self._epoll.poll(0, _MAX_EVENTS):
                    watch = self._watches.get(fd)
                    if watch is None:
                        continue
                    if events & _READ_EVENTS:
                        if watch.reader is not None:
                            trio.lowlevel.reschedule(watch.reader)
                            watch.reader = None
                        elif watch.on_readable is not None:
                            callback, watch.on_readable = watch.on_readable, None
                            try:
                                callback()
                            except Exception:  # a bug in a callback must not stop the poller
                                _log.exception("readiness callback failed")
                    if events & _WRITE_EVENTS and watch.writer is not None:
                        trio.lowlevel.reschedule(watch.writer)
                        watch.writer = None
        finally:
            self._epoll.close()


_POLLER: Final[trio.lowlevel.RunVar[ReadinessPoller | None]] = trio.lowlevel.RunVar(
    "ratls_gateway_readiness_poller"
)


def current_poller() -> ReadinessPoller | None:
    """This trio run's poller, started on first use; None where epoll is missing."""
    if not _HAS_EPOLL:
        return None
    try:
        return _POLLER.get()
    except LookupError:
        pass
    poller = ReadinessPoller()
    trio.lowlevel.spawn_system_task(poller._serve, name="gateway readiness poller")
    _POLLER.set(poller)
    return poller
