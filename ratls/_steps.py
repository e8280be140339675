"""Computations that name their GIL-free crypto calls, so a caller may run those elsewhere.

Producing and checking bound evidence is mostly Python (parsing, building, appraising)
around one ECDSA P-384 call: the simulated AMD-SP's report signature, or a verifier's
check of it.  Those calls release the interpreter lock, so a worker thread can run them
on another core while the event loop goes on with other connections.  A computation that
wants to allow that is written as a generator of *steps*: it yields each such call as a
zero-argument callable and receives its return value (or its exception, thrown in at the
``yield``) back, then goes on.  :func:`offload` is the one way to yield a call.

Who runs the calls is the driver's choice and does not change the result:
:func:`run_inline` calls them right here (the synchronous APIs are this), and
:mod:`ratls._offload` sends them to worker threads.  Everything other than the yielded
calls always runs in the driver's thread, in the same order.

This module is pure (no I/O, no trio) so that sans-I/O modules can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar, cast

__all__ = ["Steps", "offload", "run_inline"]

_T = TypeVar("_T")

#: A computation whose GIL-free calls may run elsewhere; its return value is ``_T``.
Steps = Generator[Callable[[], object], object, _T]


def offload(call: Callable[[], _T]) -> Steps[_T]:
    """Yield one GIL-free call to the driver and return its result (``yield from``).

    Args:
        call: a zero-argument callable that only computes and holds the interpreter
            lock for little of its time (e.g. an ECDSA sign or verify).

    Returns:
        What ``call`` returned; its exception is raised here instead.
    """
    value = yield call
    return cast("_T", value)


def run_inline(steps: Steps[_T]) -> _T:
    """Drive ``steps`` to the end in this thread, making every yielded call here.

    Args:
        steps: the computation.

    Returns:
        Its return value.

    Raises:
        Exception: whatever the computation raises.
    """
    try:
        call = next(steps)
        while True:
            try:
                value = call()
            except Exception as exc:  # handed back to the computation, which may handle it
                call = steps.throw(exc)
            else:
                call = steps.send(value)
    except StopIteration as stop:
        return cast("_T", stop.value)
    finally:
        steps.close()
