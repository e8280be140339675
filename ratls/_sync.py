"""Small trio synchronisation primitives for objects kept by the thousand.

A ``trio.Lock`` or ``trio.StrictFIFOLock`` is about 340 bytes from the start (its parking
lot holds an ordered dict), and a stream or link keeps one or two of them for its whole
life although they are almost never contended.  A gateway holding 10,000 idle tunnels
keeps tens of thousands of them.  :class:`LightLock` is a FIFO lock of a few dozen bytes
that makes its parking lot only when a task must actually wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import trio

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["LightLock"]


@final
class LightLock:
    """A strict-FIFO trio lock that costs a parking lot only once contended.

    Like ``trio.StrictFIFOLock``, a release hands the lock straight to the task that has
    waited longest; unlike it, it does not record the owner (any task may release), so it
    is for internal sections that always release in a ``finally``.
    """

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot: trio.lowlevel.ParkingLot | None = None

    def locked(self) -> bool:
        """Whether some task holds the lock."""
        return self._held

    def acquire_nowait(self) -> None:
        """Take the lock at once.

        Raises:
            trio.WouldBlock: it is held.
        """
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        """Take the lock, waiting in line if it is held (a checkpoint either way)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._held:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        # release() hands the lock over while we are parked: we own it when woken.  If we
        # are cancelled while parked, the lot forgets us and we never owned it.
        await self._lot.park()

    def release(self) -> None:
        """Give the lock to the longest waiter, or free it.

        Raises:
            RuntimeError: it was not held.
        """
        if not self._held:
            raise RuntimeError("release of a LightLock that is not held")
        if self._lot is not None and self._lot.unpark(count=1):
            return  # handed over: still held, now by the woken task
        self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
