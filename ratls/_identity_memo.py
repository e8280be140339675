"""Remember a pure function's results per argument *object*, in front of a memo by value.

Verification memos are keyed by certificates, which hash and compare by their DER
encoding: exact, but a lookup costs several microseconds per certificate (``cryptography``
hashes and compares the encoding every time), and a verification made several such
lookups.  The certificates that come with evidence are themselves remembered per DER
(:func:`ratls._amd_certs.load_amd_certificate`), so the same objects come back on every
connection from the same machine: an identity check answers those in well under a
microsecond and leaves everything else to the memo by value behind it.

An entry holds a strong reference to its argument, so the ``id`` it is filed under cannot
be reused by another object while the entry exists.  Only results that were returned are
remembered; an exception is raised again every time.

This module is pure (no I/O).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final, Generic, NamedTuple, TypeVar, final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["IdentityMemo", "MemoInfo"]

_A = TypeVar("_A")
_R = TypeVar("_R")


class MemoInfo(NamedTuple):
    """The shape of ``functools.lru_cache``'s ``cache_info()``, for the statistics."""

    hits: int
    misses: int
    maxsize: int | None
    currsize: int


@final
class IdentityMemo(Generic[_A, _R]):
    """``function(argument)``, remembered per argument object (at most ``size`` of them).

    Args:
        function: a pure function of one argument (typically an ``lru_cache`` by value).
        size: how many argument objects to remember; all are forgotten when it is full
            (the few roots and signing keys a verifier meets fit many times over).
    """

    __slots__ = ("_entries", "_function", "_hits", "_lock", "_misses", "_size")

    def __init__(self, function: Callable[[_A], _R], size: int) -> None:
        self._function = function
        self._size = size
        self._entries: dict[int, tuple[_A, _R]] = {}
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def __call__(self, argument: _A) -> _R:
        entry = self._entries.get(id(argument))
        if entry is not None and entry[0] is argument:
            self._hits += 1  # a statistic: a lost increment under threads is harmless
            return entry[1]
        result = self._function(argument)
        with self._lock:
            self._misses += 1
            if len(self._entries) >= self._size:
                self._entries.clear()
            self._entries[id(argument)] = (argument, result)
        return result

    def cache_info(self) -> MemoInfo:
        """Hits here and in the function's own memo (if it has one), and that memo's size."""
        inner = getattr(self._function, "cache_info", None)
        if inner is None:
            return MemoInfo(self._hits, self._misses, self._size, len(self._entries))
        info = inner()
        return MemoInfo(self._hits + info.hits, info.misses, info.maxsize, info.currsize)

    def cache_clear(self) -> None:
        """Forget everything, here and in the function's own memo."""
        with self._lock:
            self._entries.clear()
        inner_clear = getattr(self._function, "cache_clear", None)
        if inner_clear is not None:
            inner_clear()


#: How many argument objects an identity memo in front of a certificate memo keeps.
CERTIFICATE_OBJECTS: Final = 64
