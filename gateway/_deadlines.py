"""One task that runs callbacks at their deadlines, for every tunnel of a gateway.

A tunnel is re-attested every ``max_attestation_age`` seconds (an hour by default), so
an idle tunnel would otherwise keep a trio task asleep for that hour, and a waiting task
costs 2-3.6 KiB: 10,000 idle tunnels, 10,000 tasks.  :class:`Deadlines` keeps the
deadlines in a heap instead, and its one :meth:`~Deadlines.run` task calls each callback
when its time comes.  Callbacks run in that task, so they must not block: a tunnel's
callback starts its re-attestation round as a task of its own.

Cancelled entries stay in the heap until their time (lazy deletion); a tunnel has at
most one entry, so the heap never holds more entries than tunnels that lived in the
last interval.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, NoReturn, final

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Deadline", "Deadlines"]


@final
class Deadline:
    """A scheduled callback; :meth:`cancel` stops it from running."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback

    @property
    def pending(self) -> bool:
        """Whether the callback has neither run nor been cancelled."""
        return self._callback is not None

    def cancel(self) -> None:
        """Do not run the callback (idempotent; nothing happens if it already ran)."""
        self._callback = None

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


@final
class Deadlines:
    """Callbacks run at trio times, all from the one :meth:`run` task."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._changed = trio.Event()

    def __len__(self) -> int:
        """Entries in the heap, cancelled ones not yet dropped included."""
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Run ``callback()`` at trio time ``when`` (at once if that has passed).

        Args:
            when: the trio time (:func:`trio.current_time`).
            callback: a plain function; it runs in the :meth:`run` task and must not
                block or raise.

        Returns:
            The entry, to cancel it.
        """
        entry = Deadline(callback)
        heapq.heappush(self._heap, (when, next(self._order), entry))
        if self._heap[0][2] is entry:
            self._changed.set()  # a new earliest deadline: wake the runner
        return entry

    async def run(self) -> NoReturn:
        """Run callbacks as they fall due, for ever (cancel the task to stop)."""
        heap = self._heap
        while True:
            now = trio.current_time()
            due: list[Deadline] = []
            while heap and (heap[0][0] <= now or not heap[0][2].pending):
                due.append(heapq.heappop(heap)[2])
            # Fired after the heap was read: an entry a callback adds for a time already
            # past waits for the next round, after a checkpoint (never a loop that
            # starves the other tasks).
            for entry in due:
                entry._fire()
            wake = heap[0][0] if heap else float("inf")
            with trio.move_on_at(wake):
                await self._changed.wait()
            if self._changed.is_set():
                self._changed = trio.Event()
