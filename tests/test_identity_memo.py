"""Tests for ratls._identity_memo: results remembered per argument object."""

from __future__ import annotations

import functools
import gc

import pytest

from ratls._identity_memo import IdentityMemo


class Key:
    """Equal by value, like certificates (which compare by their DER)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def test_the_same_object_is_answered_without_calling_the_function_again() -> None:
    calls: list[int] = []

    def double(key: Key) -> int:
        calls.append(key.value)
        return key.value * 2

    memo = IdentityMemo(double, 8)
    key = Key(3)
    assert memo(key) == memo(key) == 6
    assert calls == [3]
    assert memo.cache_info().hits == 1


def test_an_equal_object_goes_to_the_memo_by_value_behind() -> None:
    calls: list[int] = []

    @functools.lru_cache(maxsize=8)
    def double(key: Key) -> int:
        calls.append(key.value)
        return key.value * 2

    memo = IdentityMemo(double, 8)
    assert memo(Key(3)) == memo(Key(3)) == 6
    assert calls == [3]  # the second object was answered by the lru_cache
    info = memo.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)
    memo.cache_clear()
    assert double.cache_info().currsize == 0


def test_an_id_is_never_answered_for_another_object() -> None:
    # The entry keeps its object alive, so a new object cannot take over its id; and
    # the check is by identity, so even a recycled id would not match.
    memo: IdentityMemo[Key, int] = IdentityMemo(lambda key: key.value, 8)
    first = Key(1)
    assert memo(first) == 1
    del first
    gc.collect()
    assert all(memo(Key(n)) == n for n in range(2, 6))


def test_failures_are_not_remembered_and_a_full_memo_starts_over() -> None:
    calls: list[int] = []

    def check(key: Key) -> int:
        calls.append(key.value)
        if key.value < 0:
            raise ValueError("negative")
        return key.value

    memo = IdentityMemo(check, 2)
    bad = Key(-1)
    for _ in range(2):
        with pytest.raises(ValueError, match="negative"):
            memo(bad)
    keys = [Key(n) for n in range(3)]
    for key in keys:
        memo(key)
    assert memo(keys[2]) == 2  # kept after the memo started over at its size
    assert calls == [-1, -1, 0, 1, 2]
    assert memo.cache_info().currsize == 1
