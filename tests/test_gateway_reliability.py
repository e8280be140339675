"""Reliability of gateway tunnels: integrity under volume, and faults mid-stream.

Everything runs on loopback with real components: the gateways' own listeners, TLS and
link protocol, real TCP backends in the test process and, where a test kills a gateway
or moves a lot of data, the ``ratls-gateway run`` entry point in its own process with the
simulated SEV-SNP attester and the example policy (the real evidence and verification
path).  Gateways in the test process use the HMAC test attestation unless said otherwise.

* Integrity: 1 GiB each way at once through one tunnel, SHA-256 and byte counts compared
  at both ends; tens of thousands of tiny writes both ways; write patterns from
  hypothesis.
* Faults: the egress killed (or stopped) while a tunnel moves data, then started again
  on the same address; a backend going down and up while clients keep connecting; the
  ingress process killed while a tunnel moves data.

The only time bound in these tests is :data:`HANG_GUARD`, which turns a hang into a
failure instead of a stuck run; nothing asserts how fast anything is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final, Literal

import pytest
import trio
import trio.testing
from gateway_helpers import (
    KEY,
    LOCALHOST,
    Backend,
    FlappingBackend,
    GatewayProcess,
    Pattern,
    admin_get,
    capture_gateway_logs,
    close_clients,
    connect,
    duplex_handler,
    egress_doc,
    gateway_pair,
    gateway_processes,
    ingress_doc,
    listen_port,
    metric_value,
    random_sizes,
    receive_all,
    sim_attestation,
    stable_port,
    start_backend,
    start_gateway,
    stream_handler,
    tunnel_lines,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._attestation import make_identity
from gateway._config import parse_config
from gateway._link import LINK_VERSION, Data, LinkRole, Open, Opened, encode_frame
from gateway._ratls_provider import register_ratls_providers
from gateway._testing import hmac_test_attestation
from gateway._tunnel import LinkChannel
from ratls._tls_stream import AttestedTLSStream

if TYPE_CHECKING:
    from pathlib import Path

GIB: Final = 1 << 30
MIB: Final = 1 << 20

#: Generous bound on any single client exchange: only there so that a hang fails the test
#: (with a traceback showing where) instead of blocking the run.
HANG_GUARD: Final = 60.0

#: How a gateway labels a tunnel whose peer gateway vanished.  "protocol-error" is what
#: it says today when the link breaks in the middle of a frame, which is a mislabel (the
#: peer broke no rule, the transport went away): see
#: test_link_ending_inside_a_frame_is_link_lost.  Drop it from here once that passes.
LINK_LOST: Final = frozenset({"link-lost"})


@pytest.fixture(scope="module", autouse=True)
def _providers() -> None:
    register_ratls_providers()


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    capture_gateway_logs(caplog)


def _admin(port: int) -> dict[str, str]:
    return {"listen": f"{LOCALHOST}:{port}"}


# --------------------------------------------------------------------------- integrity


async def test_one_gib_each_way_full_duplex_with_checksums(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Both gateways in their own process (real CLI, simulated SNP evidence both ways);
    # the client and the backend in this one.  Each end sends its own 1 GiB pattern while
    # it reads the other's, so both directions are loaded at the same time.
    size = GIB
    up, down = Pattern(1), Pattern(2)
    backend = await start_backend(nursery, duplex_handler(down, size))
    egress_port, ingress_port = stable_port(), stable_port()
    egress = GatewayProcess(
        tmp_path,
        "egress",
        egress_doc(
            {"bulk": backend.port},
            attestation=sim_attestation(),
            listen=f"{LOCALHOST}:{egress_port}",
            admin=_admin(stable_port()),
        ),
    )
    ingress = GatewayProcess(
        tmp_path,
        "ingress",
        ingress_doc(
            f"{LOCALHOST}:{egress_port}",
            {"bulk": f"{LOCALHOST}:{ingress_port}"},
            attestation=sim_attestation(),
            admin=_admin(stable_port()),
        ),
    )
    async with gateway_processes(egress, ingress):
        async with trio.open_nursery() as starting:
            starting.start_soon(egress.start)
            starting.start_soon(ingress.start)
        client = await connect(LOCALHOST, ingress_port)
        sent = hashlib.sha256()
        got = hashlib.sha256()
        received = 0

        async def send() -> None:
            for chunk in up.chunks(size):
                sent.update(chunk)
                await client.send_all(chunk)
            await client.send_eof()

        async def receive() -> None:
            nonlocal received
            while data := await client.receive_some(1 << 18):
                got.update(data)
                received += len(data)

        began = time.monotonic()
        with trio.fail_after(10 * HANG_GUARD):
            async with trio.open_nursery() as inner:
                inner.start_soon(send)
                inner.start_soon(receive)
            await wait_for(lambda: backend.open == 0)  # the backend read to EOF too
        elapsed = time.monotonic() - began
        await close_clients()
        print(f"\n1 GiB each way, full duplex, through two gateway processes: {elapsed:.1f} s")

        assert received == size
        assert got.digest() == down.digest(size)
        assert backend.received == size
        assert backend.digest == sent.digest()
        assert (backend.eof_seen, backend.resets) == (1, 0)
        for process, side, rule in ((ingress, "ingress", "bulk"), (egress, "egress", "main")):
            _, body = await admin_get(process.admin_port, "/metrics")
            text = body.decode()
            for direction in ("up", "down"):
                labels = {"side": side, "rule": rule, "direction": direction}
                assert metric_value(text, "ratls_gateway_bytes_total", **labels) == size
        await trio_wait_lines(ingress, "ingress", 1)
        [line] = ingress.tunnel_lines("ingress")
        assert line["result"] == "ok"
        assert line["bytes_up"] == line["bytes_down"] == size
        assert line["peer"].startswith("snp ")  # verified simulator evidence, not a test double


async def trio_wait_lines(process: GatewayProcess, side: str, count: int) -> None:
    """Wait until a gateway process has logged ``count`` access lines for ``side``."""
    with trio.fail_after(HANG_GUARD):
        await wait_for(lambda: len(process.tunnel_lines(side)) >= count)


async def _duplex_exchange(
    port: int,
    up: Pattern,
    up_sizes: list[int],
    *,
    pause_every: int = 0,
    eof_after_peer: bool = False,
) -> tuple[bytes, int]:
    """Write ``up`` in ``up_sizes`` pieces while reading to EOF: ``(digest, count)``.

    The client half-closes as soon as it has written everything, so both EOFs may cross
    in the gateways, unless ``eof_after_peer``: then it waits for the backend's EOF.
    """
    client = await connect(LOCALHOST, port)
    data = up.prefix(sum(up_sizes))
    got = hashlib.sha256()
    received = 0
    peer_done = trio.Event()

    async def send() -> None:
        offset = 0
        for i, n in enumerate(up_sizes):
            await client.send_all(data[offset : offset + n])
            offset += n
            if pause_every and i % pause_every == 0:
                await trio.lowlevel.checkpoint()
        if eof_after_peer:
            await peer_done.wait()
        await client.send_eof()

    async def receive() -> None:
        nonlocal received
        while chunk := await client.receive_some(65536):
            got.update(chunk)
            received += len(chunk)
        peer_done.set()

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            inner.start_soon(receive)
    await client.aclose()
    return got.digest(), received


async def test_tens_of_thousands_of_small_writes_both_ways(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    writes = 30_000
    up_sizes = random_sizes(seed=101, count=writes)  # 1..200 bytes each
    down_sizes = random_sizes(seed=202, count=writes)
    up, down = Pattern(11, block=1 << 16), Pattern(12, block=1 << 16)
    backend = await start_backend(nursery, duplex_handler(down, sum(down_sizes), down_sizes))
    async with gateway_pair({"web": backend.port}) as pair:
        digest, received = await _duplex_exchange(pair.port("mapping:web"), up, up_sizes)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert received == sum(down_sizes)
    assert digest == down.digest(sum(down_sizes))
    assert backend.received == sum(up_sizes)
    assert backend.digest == up.digest(sum(up_sizes))
    [line] = tunnel_lines(caplog, "ingress")
    assert line["result"] == "ok"
    assert (line["bytes_up"], line["bytes_down"]) == (sum(up_sizes), sum(down_sizes))


async def _pattern_example(
    up_sizes: list[int], down_sizes: list[int], pause_every: int, *, eof_after_peer: bool = False
) -> None:
    up, down = Pattern(21, block=1 << 17), Pattern(22, block=1 << 17)
    async with trio.open_nursery() as nursery:
        backend = await start_backend(nursery, duplex_handler(down, sum(down_sizes), down_sizes))
        async with gateway_pair({"web": backend.port}) as pair:
            digest, received = await _duplex_exchange(
                pair.port("mapping:web"),
                up,
                up_sizes,
                pause_every=pause_every,
                eof_after_peer=eof_after_peer,
            )
            with trio.fail_after(HANG_GUARD):
                await wait_for(lambda: backend.open == 0)
                await wait_for(lambda: pair.egress.runtime.admission.active == 0)
        nursery.cancel_scope.cancel()
    assert received == sum(down_sizes)
    assert digest == down.digest(sum(down_sizes))
    assert (backend.eof_seen, backend.resets) == (1, 0)
    assert backend.received == sum(up_sizes)
    assert backend.digest == up.digest(sum(up_sizes))


_SIZES = st.lists(
    st.one_of(st.integers(1, 300), st.integers(60_000, 140_000)), min_size=0, max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    up_sizes=_SIZES,
    down_sizes=_SIZES,
    pause_every=st.integers(0, 5),
    eof_after_peer=st.booleans(),
)
def test_write_patterns_arrive_intact(
    up_sizes: list[int], down_sizes: list[int], pause_every: int, eof_after_peer: bool
) -> None:
    # Empty directions, single bytes, writes larger than a DATA frame, bursts, yields
    # between writes, EOFs crossing or in turn: both ends get exactly the bytes sent.
    trio.run(
        partial(_pattern_example, eof_after_peer=eof_after_peer),
        up_sizes,
        down_sizes,
        pause_every,
    )


async def test_eofs_crossing_in_the_gateway_end_the_tunnel_cleanly() -> None:
    # Both ends half-close as soon as they have written, so the two EOF frames cross in
    # the gateways.  test_write_patterns_arrive_intact found this pattern: the tunnel
    # used to count its EOF as sent before the frame had left, and the peer's EOF then
    # cancelled the write about every second run (the egress logged link-lost and reset
    # the backend, the ingress logged ok).  Forty runs would show it for certain.
    up = [8, 93, 93737, 130227, 90514, 129, 84, 139999, 91884, 93737, 201]
    down = [8, 93, 190, 130227, 90514, 129, 84, 139999, 91884, 93737, 201]
    for _ in range(40):
        await _pattern_example(up, down, 2)


# --------------------------------------------------------------------------- after one EOF


async def test_backend_reset_after_its_eof_resets_the_client(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # The backend answers and half-closes, keeps reading, then dies (RST).  The egress
    # sees the reset when it writes the client's next bytes and sends ERROR; the ingress
    # must pass it on as a reset (the link protocol allows ERROR at any time).
    crash = trio.Event()

    async def answer_then_crash(backend: Backend, stream: trio.SocketStream) -> None:
        await stream.send_all(b"banner")
        await stream.send_eof()
        await crash.wait()
        backend.crashing = True  # _run_handler closes with a RST

    backend = await start_backend(nursery, answer_then_crash)
    async with gateway_pair({"web": backend.port}) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        with trio.fail_after(HANG_GUARD):
            assert await receive_all(client) == b"banner"
            crash.set()
            await wait_for(lambda: backend.open == 0)
            await client.send_all(b"more")
            await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
        assert tunnel_lines(caplog, "egress")[0]["result"] == "backend-reset"
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_eof()  # without the ERROR, only this would end the tunnel
        with trio.fail_after(HANG_GUARD):
            await wait_for(lambda: pair.ingress.runtime.admission.active == 0)
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "peer-backend-reset"


async def test_reattestation_after_the_clients_eof_keeps_the_tunnel(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A download: the client sends its request and half-closes; the backend streams the
    # answer for longer than max_attestation_age.  The egress re-attests the ingress
    # meanwhile, which must still work after the ingress's EOF.
    async def slow_download(backend: Backend, stream: trio.SocketStream) -> None:
        backend.received += len(await receive_all(stream))
        for _ in range(20):
            await stream.send_all(b"chunk")
            await trio.sleep(10)
        await stream.send_eof()

    backend = await start_backend(nursery, slow_download)
    async with gateway_pair(
        {"web": backend.port}, egress_extra={"timeouts": {"max_attestation_age": 60}}
    ) as pair:
        client = await connect(LOCALHOST, pair.port("mapping:web"))
        await client.send_all(b"GET /big")
        await client.send_eof()
        try:
            answer = await receive_all(client)
        except trio.BrokenResourceError:
            answer = b"(reset)"
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    egress_line = tunnel_lines(caplog, "egress")[0]
    assert egress_line["result"] == "ok", egress_line.get("detail")
    assert egress_line["reattestations"] >= 2
    assert answer == b"chunk" * 20


# --------------------------------------------------------------------------- egress restart


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_egress_restarted_mid_stream(
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    signum: signal.Signals,
) -> None:
    # The egress (own process, simulated SNP evidence) dies while a tunnel streams a
    # known pattern towards the client; the ingress runs here with the same attester.
    pattern = Pattern(3)
    streamer = await start_backend(nursery, stream_handler(pattern))
    echo = await start_backend(nursery)
    egress_port = stable_port()
    egress = GatewayProcess(
        tmp_path,
        "egress",
        egress_doc(
            {"stream": streamer.port, "echo": echo.port},
            attestation=sim_attestation(),
            listen=f"{LOCALHOST}:{egress_port}",
            admin=_admin(stable_port()),
        ),
        drain_timeout=0.2,
    )
    async with gateway_processes(egress):
        await egress.start()
        ingress = await start_gateway(
            nursery,
            parse_config(
                ingress_doc(
                    f"{LOCALHOST}:{egress_port}",
                    {"stream": "127.0.0.1:0", "echo": "127.0.0.1:0"},
                    attestation=sim_attestation(),
                )
            ),
        )
        client = await connect(LOCALHOST, listen_port(ingress, "mapping:stream"))
        received = bytearray()
        with trio.fail_after(HANG_GUARD):
            while len(received) < 4 * MIB:  # data is flowing
                received += await client.receive_some(65536)
        await egress.stop(signum)
        ended = "eof"
        with trio.fail_after(HANG_GUARD):
            try:
                while data := await client.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:
                ended = "reset"
        # Whatever arrived is exactly the start of what the backend sent: nothing lost
        # in the middle, nothing duplicated, nothing corrupted.
        assert len(received) <= streamer.sent
        assert bytes(received) == pattern.prefix(len(received))
        assert ended == "reset"  # the ingress cuts the client abortively, not with a FIN

        # The ingress stays up and logs the failed tunnel with its reason.
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
        [line] = tunnel_lines(caplog, "ingress")
        assert line["result"] in LINK_LOST, json.dumps(line, default=str)
        assert line["detail"]
        assert line["bytes_down"] >= len(received)
        metrics = ingress.runtime.metrics
        failed = metrics.tunnels_failed.get(side="ingress", rule="stream", reason=line["result"])
        assert failed == 1
        assert metrics.tunnels_active.get(side="ingress", rule="stream") == 0
        admin = listen_port(ingress, "admin")
        assert await admin_get(admin, "/livez") == (200, b"ok\n")
        status, body = await admin_get(admin, "/status")
        assert status == 200
        assert json.loads(body)["tunnels_active"] == 0
        await wait_for(lambda: streamer.open == 0)  # the backend connection is gone too

        # While the egress is away, a new client is cut and the reason is logged.
        refused = await connect(LOCALHOST, listen_port(ingress, "mapping:echo"))
        with pytest.raises(trio.BrokenResourceError):
            await receive_all(refused)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 2)
        assert tunnel_lines(caplog, "ingress")[1]["result"] == "egress-unreachable"

        # The egress comes back on the same address: new tunnels work again.
        await egress.start()
        again = await connect(LOCALHOST, listen_port(ingress, "mapping:echo"))
        await again.send_all(b"after the restart")
        await again.send_eof()
        with trio.fail_after(HANG_GUARD):
            assert await receive_all(again) == b"after the restart"
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 3)
        assert tunnel_lines(caplog, "ingress")[2]["result"] == "ok"
        assert metrics.tunnels_active.get(side="ingress", rule="echo") == 0
        await trio_wait_lines(egress, "egress", 1 if signum == signal.SIGKILL else 2)
        egress_results = [x["result"] for x in egress.tunnel_lines("egress")]
    if signum == signal.SIGKILL:
        assert egress_results == ["ok"]  # the killed process wrote nothing more
    else:
        assert egress_results == ["shutting-down", "ok"]
    await close_clients()
    ingress.request_shutdown()


async def test_link_ending_inside_a_frame_is_link_lost(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # A stand-in egress (HMAC attestation, real TLS and link protocol) opens the tunnel,
    # sends half a DATA frame and ends TCP without close_notify: a killed egress, made
    # deterministic.
    identity = make_identity(hmac_test_attestation(KEY)[0])

    async def dying_egress(raw: trio.SocketStream) -> None:
        stream: AttestedTLSStream[trio.abc.Stream] = AttestedTLSStream(
            raw, identity.server_context, server_side=True, attestation=identity.attestation
        )
        await stream.do_handshake()
        channel = LinkChannel(stream, LinkRole.EGRESS, buffer_size=65536)
        assert isinstance(await channel.receive(), Open)
        await channel.send(Opened(version=LINK_VERSION))
        frame = encode_frame(Data(data=b"x" * 1000))
        await stream.send_all(frame[:500])
        await raw.aclose()  # FIN without close_notify

    listeners = await nursery.start(partial(trio.serve_tcp, dying_egress, 0, host=LOCALHOST))
    egress_port = listeners[0].socket.getsockname()[1]
    ingress = await start_gateway(
        nursery,
        parse_config(ingress_doc(f"{LOCALHOST}:{egress_port}", {"web": "127.0.0.1:0"})),
        hmac_test_attestation(KEY)[0],
    )
    client = await connect(LOCALHOST, listen_port(ingress, "mapping:web"))
    with pytest.raises(trio.BrokenResourceError), trio.fail_after(HANG_GUARD):
        await receive_all(client)
    await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    await close_clients()
    ingress.request_shutdown()
    assert tunnel_lines(caplog, "ingress")[0]["result"] == "link-lost"


# --------------------------------------------------------------------------- ingress vanishing


async def test_ingress_killed_mid_stream_egress_releases_the_tunnel(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The ingress runs in its own process (simulated SNP evidence) and is killed while a
    # tunnel carries data both ways; the egress runs here with the same attester.
    backend = await start_backend(nursery)
    backend.keep = True
    egress = await start_gateway(
        nursery,
        parse_config(
            egress_doc(
                {"echo": backend.port},
                attestation=sim_attestation(),
                admin={"listen": "127.0.0.1:0"},
            )
        ),
    )
    ingress_port = stable_port()
    ingress = GatewayProcess(
        tmp_path,
        "ingress",
        ingress_doc(
            f"{LOCALHOST}:{listen_port(egress, 'egress:main')}",
            {"echo": f"{LOCALHOST}:{ingress_port}"},
            attestation=sim_attestation(),
            admin=_admin(stable_port()),
        ),
    )
    pattern = Pattern(4, block=1 << 16)
    async with gateway_processes(ingress):
        await ingress.start()
        client = await connect(LOCALHOST, ingress_port)
        echoed = bytearray()
        ends: list[str] = []

        async def keep_sending() -> None:
            index = 0
            try:
                while True:
                    await client.send_all(pattern.chunk(index))
                    index += 1
            except trio.BrokenResourceError:
                ends.append("send broken")

        async def keep_reading() -> None:
            try:
                while data := await client.receive_some(65536):
                    echoed.extend(data)
                ends.append("eof")
            except trio.BrokenResourceError:
                ends.append("receive broken")

        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as inner:
                inner.start_soon(keep_sending)
                inner.start_soon(keep_reading)
                await wait_for(lambda: backend.received >= 2 * MIB and len(echoed) >= MIB)
                await ingress.stop(signal.SIGKILL)
        assert ends  # the client saw its connection end (and nothing hung)

        # The egress closes the backend connection, abortively, and releases the tunnel.
        with trio.fail_after(HANG_GUARD):
            await wait_for(lambda: backend.open == 0)
            await wait_for(lambda: egress.runtime.admission.active == 0)
        assert (backend.resets, backend.eof_seen) == (1, 0)
        assert egress.runtime.tunnels == {}
        assert egress.runtime.live == {}
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
        [line] = tunnel_lines(caplog, "egress")
        assert line["result"] in LINK_LOST, json.dumps(line, default=str)
        assert line["detail"]
        metrics = egress.runtime.metrics
        assert metrics.tunnels_active.get(side="egress", rule="main") == 0
        failed = metrics.tunnels_failed.get(side="egress", rule="main", reason=line["result"])
        assert failed == 1
        status, body = await admin_get(listen_port(egress, "admin"), "/status")
        assert status == 200
        assert json.loads(body)["tunnels_active"] == 0
        # Neither direction was corrupted up to the cut.
        assert bytes(backend.data) == pattern.prefix(len(backend.data))
        assert bytes(echoed) == pattern.prefix(len(echoed))
        assert len(echoed) <= len(backend.data)
    await close_clients()
    egress.request_shutdown()


# --------------------------------------------------------------------------- backend flapping


@dataclass
class ClientResult:
    """What one client of the flapping test saw.

    Attributes:
        mode: how it reached the ingress.
        client: its address as the ingress logs it (unique per client).
        outcome: ``completed`` (every byte echoed, EOF both ways), ``refused`` (an HTTP
            error answer), or ``ended`` (the connection ended, by a reset or an EOF,
            before the exchange was complete).
        status: the HTTP status, for HTTP CONNECT clients.
        reason: the ``Ratls-Gateway-Reason`` header of an HTTP refusal.
        echoed: how many bytes came back before the end.
    """

    mode: Literal["mapping", "http"]
    client: str
    outcome: Literal["completed", "refused", "ended"]
    status: int = 0
    reason: str = ""
    echoed: int = 0


def _source_address(index: int) -> str:
    """A loopback source address of its own for client ``index`` (all of 127/8 is ours)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


async def _flapping_client(
    mode: Literal["mapping", "http"], ingress: int, backend_port: int, index: int
) -> ClientResult:
    """One exchange: several echoed messages, then EOF both ways; or a clean refusal."""
    rng = random.Random(index)  # noqa: S311 - test data
    messages = [rng.randbytes(rng.randint(1, 3000)) for _ in range(8)]
    source = _source_address(index)
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream(LOCALHOST, ingress, local_address=source)
        client = f"{source}:{stream.socket.getsockname()[1]}"
        try:
            if mode == "http":
                target = f"{LOCALHOST}:{backend_port}"
                await stream.send_all(
                    f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
                )
                head = b""
                while b"\r\n\r\n" not in head:
                    data = await stream.receive_some(1)
                    assert data, "the proxy always answers a CONNECT"
                    head += data
                status_line, *headers = head.decode("latin-1").split("\r\n")
                status = int(status_line.split(" ")[1])
                if status != 200:
                    fields = dict(h.split(": ", 1) for h in headers if ": " in h)
                    assert await receive_all(stream), "a refusal explains itself in the body"
                    return ClientResult(
                        mode,
                        client,
                        "refused",
                        status=status,
                        reason=fields.get("Ratls-Gateway-Reason", ""),
                    )
            sent = bytearray()
            echoed = bytearray()
            try:
                for message in messages:
                    await stream.send_all(message)
                    sent += message
                    while len(echoed) < len(sent):
                        data = await stream.receive_some(65536)
                        if not data:
                            raise trio.BrokenResourceError("EOF in the middle of the exchange")
                        echoed += data
                await stream.send_eof()
                rest = await receive_all(stream)
            except trio.BrokenResourceError:
                assert bytes(echoed) == bytes(sent[: len(echoed)])  # a prefix, never garbage
                return ClientResult(mode, client, "ended", echoed=len(echoed))
        finally:
            await trio.aclose_forcefully(stream)
    assert rest == b""
    assert echoed == sent
    return ClientResult(mode, client, "completed", echoed=len(echoed))


#: Why the egress refuses to open a backend that is down (the connect was refused, or
#: reset while the listener went away).
BACKEND_DOWN: Final = frozenset({"backend-refused", "backend-unreachable"})


async def test_backend_flapping_every_client_completes_or_is_refused_with_a_reason(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    flapping = FlappingBackend(nursery)
    await flapping.bind()
    results: list[tuple[str, ClientResult]] = []
    indexes = iter(range(10_000))
    try:
        async with gateway_pair({"web": flapping.port}, http_connect=True) as pair:
            mapping, proxy = pair.port("mapping:web"), pair.port("http-connect:proxy")

            async def batch(phase: str, count: int) -> None:
                async def one(i: int) -> None:
                    mode: Literal["mapping", "http"] = "http" if i % 2 else "mapping"
                    port = proxy if mode == "http" else mapping
                    result = await _flapping_client(mode, port, flapping.port, next(indexes))
                    results.append((phase, result))

                async with trio.open_nursery() as clients:
                    for i in range(count):
                        clients.start_soon(one, i)

            for _ in range(4):
                await flapping.up()
                await batch("up", 6)
                # Down while clients are connecting and exchanging.
                async with trio.open_nursery() as transition:
                    transition.start_soon(batch, "flip", 10)
                    seen = flapping.backend.connections
                    await wait_for(lambda: flapping.backend.connections >= seen + 3)  # noqa: B023
                    await flapping.down()
                await batch("down", 6)
            await flapping.up()
            await batch("up", 6)

            # No tunnel is left open on either side.
            with trio.fail_after(HANG_GUARD):
                await wait_for(lambda: pair.ingress.runtime.admission.active == 0)
                await wait_for(lambda: pair.egress.runtime.admission.active == 0)
            for gateway in (pair.ingress, pair.egress):
                assert gateway.runtime.tunnels == {}
                assert gateway.runtime.live == {}
            status, body = await admin_get(pair.port("admin"), "/status")
            assert status == 200
            assert json.loads(body)["tunnels_active"] == 0
            _, body = await admin_get(pair.port("admin"), "/metrics")
            for rule in ("web", "proxy"):
                active = metric_value(
                    body.decode(), "ratls_gateway_tunnels_active", side="ingress", rule=rule
                )
                assert active == 0
            await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == len(results))
    finally:
        flapping.close()

    lines = {str(x["client"]): x for x in tunnel_lines(caplog, "ingress")}
    assert len(lines) == len(results)
    counts: dict[tuple[str, str], int] = {}
    for phase, result in results:
        line = lines[result.client]
        outcome: str = result.outcome
        if outcome == "completed":
            assert line["result"] == "ok", json.dumps(line)
        elif outcome == "refused":
            # HTTP CONNECT: refused before any byte moved, with the reason in the status,
            # the reason header and the log.
            assert line["result"] in BACKEND_DOWN, json.dumps(line)
            assert (result.status, result.reason) == (502, line["result"])
        elif line["result"] in BACKEND_DOWN:
            # Port mapping refused: the connection is closed and the log says why.
            assert result.echoed == 0
            outcome = "refused"
        elif line["result"] == "peer-backend-reset":
            outcome = "cut"  # the backend crashed mid-exchange: reset, reason logged
        else:
            raise AssertionError(f"unexpected outcome: {json.dumps(line)}")
        if line["result"] != "ok":
            assert line.get("detail"), json.dumps(line)  # every failure says why
        counts[phase, outcome] = counts.get((phase, outcome), 0) + 1
    # Steady phases are deterministic: all through while up, all refused while down.
    assert counts.get(("up", "completed")) == 5 * 6
    assert counts.get(("down", "refused")) == 4 * 6
    assert sum(n for (phase, _), n in counts.items() if phase == "flip") == 4 * 10
    metrics = pair.ingress.runtime.metrics
    refused = sum(
        metrics.tunnels_failed.get(side="ingress", rule=rule, reason=reason)
        for rule in ("web", "proxy")
        for reason in BACKEND_DOWN
    )
    assert refused == sum(n for (_, outcome), n in counts.items() if outcome == "refused")
    print(f"\nflapping outcomes: {sorted(counts.items())}")
