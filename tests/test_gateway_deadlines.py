"""Tests for the shared deadline timer (gateway._deadlines)."""

from __future__ import annotations

import trio
import trio.testing

from gateway._deadlines import Deadlines


async def test_callbacks_run_in_order_at_their_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadlines = Deadlines()
    fired: list[tuple[str, float]] = []
    start = trio.current_time()

    def note(name: str) -> None:
        fired.append((name, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        deadlines.call_at(start + 30, lambda: note("c"))
        deadlines.call_at(start + 10, lambda: note("a"))
        cancelled = deadlines.call_at(start + 20, lambda: note("never"))
        await trio.sleep(5)
        # Added while the runner waits for a later one: it must wake for this.
        deadlines.call_at(start + 15, lambda: note("b"))
        cancelled.cancel()
        assert cancelled.pending is False
        await trio.sleep(40)
        # A time already past runs at once.
        deadlines.call_at(start, lambda: note("late"))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in fired] == ["a", "b", "c", "late"]
    assert [round(at) for _, at in fired] == [10, 15, 30, 45]
    assert len(deadlines) == 0  # fired and cancelled entries are dropped


async def test_cancelled_entries_do_not_pile_up(autojump_clock: trio.testing.MockClock) -> None:
    deadlines = Deadlines()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        for _ in range(1000):  # a tunnel rescheduling itself: cancel, then a new entry
            deadlines.call_at(trio.current_time() + 3600, lambda: None).cancel()
        keep = deadlines.call_at(trio.current_time() + 3600, lambda: None)
        await trio.sleep(1)
        assert len(deadlines) == 1
        assert keep.pending
        nursery.cancel_scope.cancel()
