"""Tests for LightLock (ratls._sync): FIFO hand-over, cancellation, misuse."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ratls._sync import LightLock


async def test_free_lock_is_taken_at_once_and_held_lock_refuses_nowait() -> None:
    lock = LightLock()
    assert not lock.locked()
    lock.acquire_nowait()
    assert lock.locked()
    with pytest.raises(trio.WouldBlock):
        lock.acquire_nowait()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


async def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = LightLock()
    order: list[int] = []

    async def worker(index: int) -> None:
        async with lock:
            order.append(index)
            await trio.sleep(0.001)

    await lock.acquire()
    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(worker, index)
            await trio.testing.wait_all_tasks_blocked()
        lock.release()  # handed to worker 0, which hands on to 1, ...
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


async def test_a_cancelled_waiter_never_owns_the_lock() -> None:
    lock = LightLock()
    await lock.acquire()
    got: list[str] = []

    async def waiter(name: str) -> None:
        await lock.acquire()
        got.append(name)
        lock.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "second")
        await trio.testing.wait_all_tasks_blocked()
        cancelled = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with cancelled:
                await waiter("cancelled")

        nursery.start_soon(cancelled_waiter)
        await trio.testing.wait_all_tasks_blocked()
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        lock.release()
    assert got == ["second"]
    assert not lock.locked()


async def test_acquire_checks_cancellation_even_when_free() -> None:
    lock = LightLock()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await lock.acquire()
    assert not lock.locked()
