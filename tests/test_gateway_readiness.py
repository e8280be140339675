"""Tests for the gateway's readiness poller (gateway._readiness) through DirectSocketStream.

Real socket pairs: edge-triggered epoll is only right if no readiness is ever lost, so
the last test moves random traffic over many sockets whose readers keep no task.
"""

from __future__ import annotations

import os
import random
import socket

import pytest
import trio
import trio.testing

from gateway._direct_socket import DirectSocketStream
from gateway._readiness import current_poller


def _pair() -> tuple[DirectSocketStream, trio.SocketStream]:
    ours, theirs = socket.socketpair()
    return (
        DirectSocketStream(trio.SocketStream(trio.socket.from_stdlib_socket(ours))),
        trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
    )


async def test_receive_nowait_says_none_data_or_end() -> None:
    direct, theirs = _pair()
    assert direct.receive_nowait(10) is None
    await theirs.send_all(b"abc")
    assert direct.receive_nowait(2) == b"ab"
    assert direct.receive_nowait(10) == b"c"
    assert direct.receive_nowait(10) is None
    await theirs.send_eof()
    assert direct.receive_nowait(10) == b""
    await direct.aclose()
    with pytest.raises(trio.ClosedResourceError):
        direct.receive_nowait(10)
    await theirs.aclose()


async def test_a_callback_runs_once_when_bytes_arrive() -> None:
    direct, theirs = _pair()
    calls: list[bytes | None] = []
    assert direct.receive_nowait(10) is None
    assert direct.call_when_readable(lambda: calls.append(direct.receive_nowait(10)))
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    assert calls == []  # nothing to read: not called
    await theirs.send_all(b"one")
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    assert calls == [b"one"]
    await theirs.send_all(b"two")  # not re-armed: not called again
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    assert calls == [b"one"]
    assert direct.receive_nowait(10) == b"two"
    await direct.aclose()
    await theirs.aclose()


async def test_one_reader_at_a_time_and_release_drops_the_callback() -> None:
    direct, theirs = _pair()
    calls: list[str] = []
    assert direct.call_when_readable(lambda: calls.append("first"))
    with pytest.raises(trio.BusyResourceError):
        direct.call_when_readable(lambda: calls.append("second"))
    with pytest.raises(trio.BusyResourceError):
        await direct.receive_some(10)
    direct.release()  # forgets the callback: the socket stays usable
    await theirs.send_all(b"x")
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    assert calls == []
    assert await direct.receive_some(10) == b"x"

    # A cancelled wait leaves no reader behind.
    with trio.move_on_after(0.02):
        await direct.receive_some(10)
    await theirs.send_all(b"y")
    assert await direct.receive_some(10) == b"y"
    await direct.aclose()
    await theirs.aclose()


async def test_a_reused_descriptor_number_frees_the_forgotten_waiter() -> None:
    # A socket closed behind the wrapper's back (not through it) cannot tell the poller;
    # when its number is reused, whoever still waits on the old socket learns it closed
    # instead of reading the new connection's bytes or waiting forever.
    old, old_peer = _pair()
    old_fd = old.socket.fileno()
    outcome: list[str] = []

    async def wait_on_old() -> None:
        try:
            await old.receive_some(10)
        except trio.ClosedResourceError:
            outcome.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_on_old)
        await trio.testing.wait_all_tasks_blocked()
        fresh, fresh_peer = socket.socketpair()
        old.socket.detach()  # its descriptor is closed and reused, unknown to trio or us
        os.dup2(fresh.fileno(), old_fd)
        fresh.close()
        reused = DirectSocketStream(
            trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=old_fd)))
        )
        got: list[bytes] = []

        async def read_reused() -> None:
            got.append(await reused.receive_some(10))

        nursery.start_soon(read_reused)  # nothing there yet: it registers the number
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["closed"]
        fresh_peer.sendall(b"new")
    assert got == [b"new"]
    await reused.aclose()
    fresh_peer.close()
    await old_peer.aclose()


async def test_many_sockets_without_waiting_tasks_lose_nothing() -> None:
    # Each reader drains what the kernel has and then only leaves a callback, like an
    # idle tunnel direction; writers send random amounts at random moments.
    rng = random.Random(11)  # noqa: S311 - test data
    count = 64
    pairs = [_pair() for _ in range(count)]
    payloads = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(count)]
    received = [bytearray() for _ in range(count)]
    done = trio.Event()
    finished = 0

    def drain(index: int) -> None:
        nonlocal finished
        direct = pairs[index][0]
        while (chunk := direct.receive_nowait(rng.randrange(1, 70_000))) is not None:
            if not chunk:
                finished += 1
                if finished == count:
                    done.set()
                return
            received[index] += chunk
        assert direct.call_when_readable(lambda: drain(index))

    async def write(index: int) -> None:
        theirs = pairs[index][1]
        data = memoryview(payloads[index])
        while data:
            size = rng.randrange(1, 40_000)
            await theirs.send_all(data[:size])
            data = data[size:]
            if rng.random() < 0.3:
                await trio.sleep(rng.random() / 200)
        await theirs.send_eof()

    for index in range(count):
        drain(index)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(write, index)
        await done.wait()
    assert [bytes(r) for r in received] == payloads
    for direct, theirs in pairs:
        await direct.aclose()
        await theirs.aclose()


async def test_one_poller_per_run() -> None:
    first = current_poller()
    assert first is not None
    assert current_poller() is first


def test_a_stream_outliving_its_trio_run_waits_in_the_next_one() -> None:
    # Each run has its own poller; a watch from an earlier run is dropped, not used.
    ours, theirs = socket.socketpair()
    direct = DirectSocketStream(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))

    async def one_round(message: bytes) -> bytes:
        with trio.fail_after(5):
            return await read_one(message)

    async def read_one(message: bytes) -> bytes:
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def read() -> None:
                got.append(await direct.receive_some(100))

            nursery.start_soon(read)  # nothing there yet: it parks with this run's poller
            await trio.testing.wait_all_tasks_blocked()
            theirs.sendall(message)
        return got[0]

    assert trio.run(one_round, b"first run") == b"first run"
    assert trio.run(one_round, b"second run") == b"second run"
    ours.close()  # outside a run: the plain socket (trio's close needs a run)
    theirs.close()
