"""Run the GIL-free calls of :mod:`ratls._steps` computations on a small worker pool.

The stream runs non-blocking attesters and verifiers in the event loop, because their
Python code would hold the interpreter lock in a worker thread anyway, and a thread
hand-off per call costs more than it saves.  Their ECDSA P-384 calls are different: they
release the lock for nearly all of their time, so a worker can run them on another core
while the event loop goes on with other connections.  This module does only that:

* a process-wide pool of at most :data:`WORKERS` threads takes calls from one queue.
  Threads start when work arrives and none is idle, and leave after
  :data:`IDLE_SECONDS` without work, so an idle process keeps none;
* a finished call wakes its trio task through the run's token (no thread limiter, no
  task or context copy per call: cheaper than ``trio.to_thread.run_sync``);
* a call goes to the pool only when that can save time: when other tasks are ready to
  run meanwhile (a small trio instrument counts wake-ups), or when the caller has its
  own waiting to do.  An idle loop makes the call itself: a hand-off there only adds two
  thread wake-ups (about 60 µs on a small VM), a third of an ECDSA signature;
* :class:`StartedSteps` runs a computation's Python part in the event loop up to its
  first offloaded call and leaves that call running, so that a client can make its own
  evidence while it waits for and judges the server's.

Cancellation: a cancelled wait abandons its call.  A call not yet started is skipped; one
already running (one ECDSA operation, under a millisecond) finishes and its result is
dropped.  Offloaded calls only compute on bytes and keys they were given; they never
touch a connection, so nothing is left acting on a cancelled handshake.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Final, Generic, TypeVar, cast, final

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._steps import Steps

__all__ = [
    "IDLE_SECONDS",
    "LOAD_WATCH_SECONDS",
    "WORKERS",
    "OffloadedCall",
    "StartedSteps",
    "drive",
    "pool_threads",
]

_T = TypeVar("_T")


def _cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


#: Worker threads at most: the cores besides the event loop's (at least one, at most four).
#: On two cores one worker measured better than two, which compete with the loop.
WORKERS: Final = max(1, min(4, _cores() - 1))
#: Seconds an idle worker waits for work before it leaves.
IDLE_SECONDS: Final = 10.0


@final
class OffloadedCall(Generic[_T]):
    """One call running (or queued) on the pool, whose result a trio task awaits later.

    Create it with :meth:`start` in a trio thread; await :meth:`wait` once, or
    :meth:`abandon` it.
    """

    __slots__ = ("_abandoned", "_call", "_done", "_error", "_token", "_value", "_waiter")

    def __init__(self, call: Callable[[], _T], token: trio.lowlevel.TrioToken) -> None:
        self._call = call
        self._token = token
        self._done = False
        self._abandoned = False
        self._value: _T | None = None
        self._error: Exception | None = None
        self._waiter: trio.lowlevel.Task | None = None

    @classmethod
    def start(cls, call: Callable[[], _T]) -> OffloadedCall[_T]:
        """Queue ``call`` on the pool (from a trio thread; does not yield)."""
        job = cls(call, trio.lowlevel.current_trio_token())
        _POOL.submit(job)
        return job

    def run(self) -> None:
        """Make the call and report back to the trio run (in a worker thread)."""
        if self._abandoned:  # read without a lock: at worst an abandoned call still runs
            return
        try:
            self._value = self._call()
        except Exception as exc:  # handed to the awaiting task by wait()
            self._error = exc
        with contextlib.suppress(trio.RunFinishedError):  # the run ended; nobody waits
            self._token.run_sync_soon(self._finish)

    def _finish(self) -> None:  # in the trio thread
        self._done = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    def abandon(self) -> None:
        """Drop the call: skipped if not started, its result ignored otherwise."""
        self._abandoned = True
        self._waiter = None

    async def wait(self) -> _T:
        """The call's return value, or its exception raised here (a cancellation abandons it)."""
        if self._done:
            await trio.lowlevel.checkpoint()
        else:
            self._waiter = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self.abandon()
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self._error is not None:
            raise self._error
        return cast("_T", self._value)


@final
class _LoopLoad(trio.abc.Instrument):
    """Counts the tasks trio makes ready to run, to tell whether the loop is busy.

    ``batch`` is how many tasks were ready when trio last finished looking for I/O, and
    ``scheduled`` how many became ready since (deadlines, tasks waking others).
    (``current_statistics().tasks_runnable`` would tell part of this too, but that call
    counts every registered file descriptor, too slow per call for a server with many
    idle connections.)  The hooks cost about half a microsecond per task wake-up, so the
    instrument removes itself after :data:`LOAD_WATCH_SECONDS` without a question: an
    established connection's data path does not pay for it.
    """

    __slots__ = ("asked", "batch", "installed", "scheduled")

    def __init__(self) -> None:
        self.batch = 0
        self.scheduled = 0
        self.asked = time.monotonic()
        self.installed = False

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        """Called by trio whenever a task becomes ready to run."""
        self.scheduled += 1

    def after_io_wait(self, timeout: float) -> None:
        """Called by trio after each look for I/O: the tasks ready now make the next round."""
        self.batch, self.scheduled = self.scheduled, 0
        if time.monotonic() - self.asked > LOAD_WATCH_SECONDS:
            trio.lowlevel.remove_instrument(self)
            self.installed = False


#: Seconds the loop-load instrument stays installed after the last offload decision.
LOAD_WATCH_SECONDS: Final = 0.02

_LOOP_LOAD: Final[trio.lowlevel.RunVar[_LoopLoad]] = trio.lowlevel.RunVar("ratls_loop_load")


def _loop_has_work() -> bool:
    """Whether the event loop had other tasks ready, i.e. can use a hand-off's time.

    Installs the counting instrument in this trio run if it is not there (it leaves
    again after 20 ms without questions); just installed, it answers no.
    """
    try:
        load = _LOOP_LOAD.get()
    except LookupError:
        load = _LoopLoad()
        _LOOP_LOAD.set(load)
    load.asked = time.monotonic()
    if not load.installed:
        load.batch = load.scheduled = 0
        trio.lowlevel.add_instrument(load)
        load.installed = True
        return False
    # Tasks made ready since the loop last looked for I/O: the caller is one of them
    # (in this round, or woken by a deadline since); any other means there is work.
    return load.batch + load.scheduled > 1


@final
class StartedSteps(Generic[_T]):
    """A computation run in the event loop up to its first offloaded call, now running.

    The constructor runs the Python part (in this thread, at once) and queues the first
    call; :meth:`finish` awaits the calls and runs the rest; :meth:`abandon` stops it.
    An exception of the first part is kept and raised by :meth:`finish`, so callers see
    errors where they ask for the result.

    A call goes to the pool only when that can save time: when other tasks are ready to
    run in the meantime, or, with ``overlap=True``, for the first call (the caller has
    its own waiting to do meanwhile, e.g. a client waiting for the server's evidence);
    ``always=True`` sends every call.  Otherwise it is made right here: handing a call
    to a worker and waking the idle loop again costs two thread wake-ups (about 60 µs on
    a small VM), a third of an ECDSA signature.  Where a call runs never changes what the
    computation does.
    """

    __slots__ = ("_always", "_call", "_error", "_finished", "_steps", "_value")

    def __init__(self, steps: Steps[_T], *, overlap: bool = False, always: bool = False) -> None:
        self._steps = steps
        self._always = always
        self._call: OffloadedCall[object] | None = None
        self._error: Exception | None = None
        self._value: _T | None = None
        self._finished = False
        try:
            self._call = self._place(next(steps), offload=overlap)
        except StopIteration as stop:
            self._value, self._finished = cast("_T", stop.value), True
        except Exception as exc:
            self._error, self._finished = exc, True

    def _place(self, call: Callable[[], object], *, offload: bool) -> OffloadedCall[object]:
        """Queue ``call`` on the pool, or make it here and go on to the next call to queue.

        Raises:
            StopIteration: the computation finished (with its value).
            Exception: whatever the computation raises.
        """
        while not (offload or self._always or _loop_has_work()):
            try:
                value = call()
            except Exception as exc:  # handed back to the computation
                call = self._steps.throw(exc)
            else:
                call = self._steps.send(value)
        return OffloadedCall.start(call)

    async def finish(self) -> _T:
        """Await the offloaded calls, run the Python in between here, and return the result.

        Raises:
            Exception: whatever the computation raises.
        """
        try:
            call = self._call
            while call is not None:
                self._call = None
                try:
                    value = await call.wait()
                except Exception as exc:
                    call = self._place(self._steps.throw(exc), offload=False)
                else:
                    call = self._place(self._steps.send(value), offload=False)
                self._call = call
            if self._finished:
                await trio.lowlevel.checkpoint()  # a computation that offloaded nothing
        except StopIteration as stop:
            self._finished = True
            return cast("_T", stop.value)
        finally:
            self.abandon()
        if self._error is not None:
            raise self._error
        return cast("_T", self._value)

    def abandon(self) -> None:
        """Stop: drop a pending call and close the computation (idempotent)."""
        call, self._call = self._call, None
        if call is not None:
            call.abandon()
        self._steps.close()


async def drive(steps: Steps[_T], *, offload: bool = False) -> _T:
    """Run ``steps`` here, in the event loop, with their calls on the pool when it pays.

    Args:
        steps: the computation.
        offload: send every call to the pool, even when the loop has nothing else to do.

    A checkpoint, like any trio operation: cancellation abandons the computation.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    return await StartedSteps(steps, overlap=offload, always=offload).finish()


def pool_threads() -> int:
    """How many worker threads the pool has now (started and not yet left)."""
    return _POOL.threads


@final
class _Pool:
    """At most ``size`` threads taking calls from one queue; idle ones leave."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: queue.SimpleQueue[OffloadedCall[object]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.threads = 0
        self._idle = 0

    def submit(self, job: OffloadedCall[_T]) -> None:
        self._queue.put(cast("OffloadedCall[object]", job))
        with self._lock:
            # More calls waiting than idle threads to take them: start one more thread.
            start = self.threads < self._size and self._queue.qsize() > self._idle
            if start:
                self.threads += 1
                self._idle += 1
        if start:
            try:
                threading.Thread(target=self._work, name="ratls-offload", daemon=True).start()
            except BaseException:  # pragma: no cover - no thread could be started
                with self._lock:
                    self.threads -= 1
                    self._idle -= 1
                raise

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # A submit that found this thread idle put its job first: take it.
                    if not self._queue.empty():
                        continue
                    self._idle -= 1
                    self.threads -= 1
                    return
            with self._lock:
                self._idle -= 1
            job.run()
            with self._lock:
                self._idle += 1


_POOL: Final = _Pool(WORKERS)
