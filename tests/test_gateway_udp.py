"""UDP through attested tunnels (``[[ingress.udp]]``, UDP routes, link version 2).

Both gateways run in the test process on the HMAC test attestation, over real loopback
sockets, with a real UDP backend.  What is checked is what a UDP user relies on:
datagram boundaries survive (from one byte to 60,000), each client address is its own
flow with its own tunnel, a flow ends after ``udp_idle`` of silence and a new datagram
starts a new one, the egress reaches only what its UDP routes and ``allow_udp`` name
(never what TCP rules allow), and a backend that is not (yet) listening loses datagrams
without ending the flow.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio
import trio.testing
from gateway_helpers import (
    KEY,
    LOCALHOST,
    egress_doc,
    free_port,
    ingress_doc,
    listen_port,
    start_gateway,
    tunnel_lines,
    wait_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._config import ConfigError, UdpRule, parse_config
from gateway._datagram import ConnectedDatagramStream, FlowStream
from gateway._link import (
    DATAGRAM_LINK_VERSION,
    AddressTarget,
    LinkConnection,
    LinkRole,
    MalformedLinkFrame,
    Open,
    RouteTarget,
    decode_frame,
    encode_frame,
)
from gateway._testing import hmac_test_attestation
from gateway._udp import _receive_datagrams

if TYPE_CHECKING:
    from gateway._daemon import RunningGateway
    from gateway._runtime import Runtime

SIZES = (1, 1200, 60_000)


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    from gateway_helpers import capture_gateway_logs

    capture_gateway_logs(caplog)


# --------------------------------------------------------------------------- link


def test_datagram_targets_need_link_version_2() -> None:
    for target in (
        AddressTarget(host="10.0.0.5", port=53, datagram=True),
        RouteTarget(name="dns", datagram=True),
    ):
        with pytest.raises(ValueError, match="version 2"):
            Open(target=target)
        frame = encode_frame(Open(target=target, version=DATAGRAM_LINK_VERSION))
        assert decode_frame(frame) == Open(target=target, version=DATAGRAM_LINK_VERSION)
        # The same kind under version 1 is malformed (an old ingress cannot mean it).
        downgraded = bytearray(frame)
        downgraded[5] = 1
        with pytest.raises(MalformedLinkFrame, match="needs version 2"):
            decode_frame(bytes(downgraded))
    assert str(AddressTarget(host="::1", port=53, datagram=True)) == "udp:[::1]:53"
    assert str(RouteTarget(name="dns", datagram=True)) == "udp:route:dns"


def test_a_stream_open_keeps_version_1_for_old_egresses() -> None:
    ingress = LinkConnection(LinkRole.INGRESS)
    frame = ingress.send(Open(target=RouteTarget(name="web")))
    assert frame[5] == 1


# --------------------------------------------------------------------------- config


def test_udp_rules_routes_and_allowlists_are_checked() -> None:
    idoc = ingress_doc("127.0.0.1:9443", {})
    idoc["ingress"] = {
        "udp": [
            {"name": "dns", "listen": "127.0.0.1:5353", "egress": "127.0.0.1:9443", "target": "dns"}
        ]
    }
    (rule,) = parse_config(idoc).udp
    assert rule == UdpRule(
        name="dns",
        listen=rule.listen,
        egress=rule.egress,
        target=RouteTarget(name="dns", datagram=True),
    )
    assert parse_config(idoc).ingress_rules == (rule,)
    edoc = egress_doc({})
    edoc["egress"]["route"] = [{"name": "dns", "backend": "10.0.0.5:53", "protocol": "udp"}]
    edoc["egress"]["listener"][0]["allow_udp"] = ["10.0.0.0/8:123"]
    config = parse_config(edoc)
    assert config.routes["dns"].protocol == "udp"
    assert config.listeners[0].allow_udp[0].port_low == 123
    bad: list[tuple[dict[str, Any], str]] = [
        ({"name": "d", "backend": "unix:/run/d.sock", "protocol": "udp"}, "backend"),
        ({"name": "d", "backend": "10.0.0.5:53", "protocol": "sctp"}, "protocol"),
        (
            {"name": "d", "backend": "10.0.0.5:53", "protocol": "udp", "proxy_protocol": True},
            "proxy_protocol",
        ),
    ]
    for route, key in bad:
        edoc["egress"]["route"] = [route]
        with pytest.raises(ConfigError) as caught:
            parse_config(edoc)
        assert caught.value.problems[0].location == f"egress.route[0].{key}"
    idoc["ingress"]["udp"][0]["listen"] = "unix:/run/dns.sock"
    with pytest.raises(ConfigError) as caught:
        parse_config(idoc)
    assert caught.value.problems[0].message == "UDP listens on host:port"


# --------------------------------------------------------------------------- end to end


async def udp_echo(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A UDP backend that answers each datagram with ``echo:`` + it."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind((LOCALHOST, 0))
        task_status.started(sock.getsockname()[1])
        while True:
            data, peer = await sock.recvfrom(65535)
            await sock.sendto(b"echo:" + data, peer)


async def start_pair(
    nursery: trio.Nursery,
    backend: int,
    *,
    route_protocol: str = "udp",
    target: str = "dns",
    timeouts: dict[str, float] | None = None,
    allow_udp: tuple[str, ...] = (),
    drain_timeout: float = 1.0,
    listen: str = "127.0.0.1:0",
    extra: dict[str, Any] | None = None,
) -> tuple[RunningGateway, RunningGateway]:
    edoc = egress_doc({})
    edoc["egress"]["route"] = [
        {"name": "dns", "backend": f"{LOCALHOST}:{backend}", "protocol": route_protocol}
    ]
    edoc["egress"]["listener"][0]["allow"] = [f"{LOCALHOST}:*"]  # TCP only: admits no UDP
    edoc["egress"]["listener"][0]["allow_udp"] = list(allow_udp)
    egress = await start_gateway(nursery, parse_config(edoc), hmac_test_attestation(KEY)[0])
    address = f"{LOCALHOST}:{listen_port(egress, 'egress:main')}"
    idoc = ingress_doc(address, {}, timeouts=timeouts or {}, **(extra or {}))
    idoc["ingress"] = {
        "udp": [{"name": "dns", "listen": listen, "egress": address, "target": target}]
    }
    ingress = await start_gateway(
        nursery, parse_config(idoc), hmac_test_attestation(KEY)[0], drain_timeout=drain_timeout
    )
    return egress, ingress


async def client_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((LOCALHOST, 0))
    return sock


async def ask(sock: trio.socket.SocketType, port: int, payload: bytes) -> bytes:
    await sock.sendto(payload, (LOCALHOST, port))
    with trio.fail_after(10):
        data, _ = await sock.recvfrom(65535)
    return data


def udp_port(gateway: RunningGateway) -> int:
    address = gateway.address("udp:dns")
    assert isinstance(address, tuple)
    return address[1]


async def test_datagrams_keep_their_boundaries_and_each_client_is_a_flow(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await nursery.start(udp_echo)
    egress, ingress = await start_pair(nursery, backend)
    port = udp_port(ingress)
    with await client_socket() as first, await client_socket() as second:
        for size in SIZES:
            payload = bytes([size % 251]) * size
            assert await ask(first, port, payload) == b"echo:" + payload
        assert await ask(second, port, b"other") == b"echo:other"
        # Three datagrams sent at once arrive as three datagrams.
        for text in (b"a", b"bb", b"ccc"):
            await first.sendto(text, (LOCALHOST, port))
        with trio.fail_after(10):
            answers = [(await first.recvfrom(100))[0] for _ in range(3)]
        assert sorted(answers) == [b"echo:a", b"echo:bb", b"echo:ccc"]
    assert len(ingress.runtime.live) == 2  # a flow (and a tunnel) per client address
    ingress.request_shutdown()
    egress.request_shutdown()


async def test_a_flow_takes_a_link_made_ahead_of_need(nursery: trio.Nursery) -> None:
    backend = await nursery.start(udp_echo)
    egress, ingress = await start_pair(nursery, backend, extra={"prewarm": {"links": 1}})
    pool = ingress.runtime.link_pool
    assert pool is not None
    egress_address = ingress.runtime.config.udp[0].egress
    await wait_for(lambda: pool.ready(egress_address) == 1)
    with await client_socket() as sock:
        assert await ask(sock, udp_port(ingress), b"warm") == b"echo:warm"
    counts = ingress.runtime.metrics.prewarm_links.values
    assert counts[("used",)] == 1  # the ready link carried the version-2 OPEN
    ingress.request_shutdown()
    egress.request_shutdown()


async def test_udp_over_ipv6(nursery: trio.Nursery) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    backend = await nursery.start(udp_echo)
    egress, ingress = await start_pair(nursery, backend, listen="[::1]:0")
    sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("::1", 0))
        await sock.sendto(b"six", ("::1", udp_port(ingress)))
        with trio.fail_after(10):
            data, _ = await sock.recvfrom(100)
        assert data == b"echo:six"
    ingress.request_shutdown()
    egress.request_shutdown()


async def test_a_quiet_flow_ends_cleanly_and_the_next_datagram_opens_another(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await nursery.start(udp_echo)
    egress, ingress = await start_pair(nursery, backend, timeouts={"udp_idle": 5})
    port = udp_port(ingress)
    with await client_socket() as sock:
        assert await ask(sock, port, b"one") == b"echo:one"
        await trio.sleep(6)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
        assert await ask(sock, port, b"two") == b"echo:two"
    (line,) = tunnel_lines(caplog, "ingress")
    assert line["mode"] == "udp"
    assert line["result"] == "ok"  # silence is how a UDP flow ends
    assert line["target"] == "udp:route:dns"
    assert (line["bytes_up"], line["bytes_down"]) == (3, 8)
    await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
    assert tunnel_lines(caplog, "egress")[0]["result"] == "ok"
    ingress.request_shutdown()
    egress.request_shutdown()


async def test_flows_are_bounded_by_max_tunnels_even_when_refused(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two slots, five sources: two flows get tunnels; while the table holds two flows,
    # datagrams from new sources are dropped before any flow (or log line) is made.
    backend = await nursery.start(udp_echo)
    egress, ingress = await start_pair(nursery, backend, extra={"limits": {"max_tunnels": 2}})
    port = udp_port(ingress)
    sockets = [await client_socket() for _ in range(5)]
    try:
        for sock in sockets[:2]:
            assert await ask(sock, port, b"in") == b"echo:in"
        for sock in sockets[2:]:
            await sock.sendto(b"out", (LOCALHOST, port))
        await trio.sleep(1)
        assert tunnel_lines(caplog, "ingress") == []
        assert len(ingress.runtime.live) == 2
        assert ingress.runtime.metrics.udp_dropped.get(rule="dns") == 3
    finally:
        for sock in sockets:
            sock.close()
    ingress.request_shutdown()
    egress.request_shutdown()


async def test_a_draining_ingress_ends_its_flows_at_once_and_cleanly(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No datagram can arrive once the listener stops, so waiting for udp_idle (or the
    # drain deadline) would only delay the stop: flows end with EOF both ways at once.
    backend = await nursery.start(udp_echo)
    egress, ingress = await start_pair(nursery, backend, drain_timeout=300)
    with await client_socket() as sock:
        assert await ask(sock, udp_port(ingress), b"before") == b"echo:before"
        started = trio.current_time()
        ingress.request_shutdown()
        await ingress.wait_stopped()
        assert trio.current_time() - started < 5
    (line,) = tunnel_lines(caplog, "ingress")
    assert line["result"] == "ok"
    egress.request_shutdown()


async def test_the_egress_admits_udp_only_by_udp_routes_and_allow_udp(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await nursery.start(udp_echo)
    # A TCP route of that name, and TCP allow patterns for every port: no UDP admitted.
    egress, ingress = await start_pair(nursery, backend, route_protocol="tcp")
    with await client_socket() as sock:
        await sock.sendto(b"hello", (LOCALHOST, udp_port(ingress)))
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
        # The refused flow drops what follows, holding no slot: one attempt, not one per
        # datagram, until it has been quiet for udp_idle.
        for _ in range(5):
            await sock.sendto(b"again", (LOCALHOST, udp_port(ingress)))
        await trio.sleep(1)
        assert not ingress.runtime.tunnels
        assert ingress.runtime.metrics.udp_dropped.get(rule="dns") == 6  # "hello" too
        await trio.sleep(60)  # quiet for udp_idle: the next datagram tries again
        await sock.sendto(b"later", (LOCALHOST, udp_port(ingress)))
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 2)
    assert [line["result"] for line in tunnel_lines(caplog, "ingress")] == ["not-allowed"] * 2
    await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 2)
    assert "carries TCP, not UDP" in tunnel_lines(caplog, "egress")[0]["detail"]
    ingress.request_shutdown()
    egress.request_shutdown()


async def test_an_address_target_needs_allow_udp(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await nursery.start(udp_echo)
    target = f"{LOCALHOST}:{backend}"
    egress, ingress = await start_pair(
        nursery, free_port(), target=target, allow_udp=(f"{LOCALHOST}:{backend}",)
    )
    with await client_socket() as sock:
        assert await ask(sock, udp_port(ingress), b"by address") == b"echo:by address"
    ingress.request_shutdown()
    egress.request_shutdown()


async def test_a_backend_that_is_not_listening_yet_loses_datagrams_not_the_flow(
    nursery: trio.Nursery,
) -> None:
    port = free_port()
    egress, ingress = await start_pair(nursery, port)
    with await client_socket() as sock:
        await sock.sendto(b"lost", (LOCALHOST, udp_port(ingress)))
        await wait_for(lambda: len(egress.runtime.live) == 1)
        await trio.sleep(0.2)  # the ICMP port unreachable has come back
        backend = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with backend:
            await backend.bind((LOCALHOST, port))
            await sock.sendto(b"found", (LOCALHOST, udp_port(ingress)))
            with trio.fail_after(10):
                data, peer = await backend.recvfrom(100)
            assert data == b"found"
            await backend.sendto(b"answer", peer)
            with trio.fail_after(10):
                assert (await sock.recvfrom(100))[0] == b"answer"
    assert len(ingress.runtime.live) == 1  # the same flow all along
    ingress.request_shutdown()
    egress.request_shutdown()


# --------------------------------------------------------------------------- adapters


async def test_a_flow_drops_what_its_queue_cannot_hold() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flow = FlowStream(sock, (LOCALHOST, 9), idle=60)
        accepted = [flow.deliver(b"x") for _ in range(300)]
        assert accepted.count(True) == 256
        assert flow.dropped == 44
        assert await flow.receive_some() == b"x"
        await flow.aclose()
        assert not flow.deliver(b"late")
        with pytest.raises(trio.ClosedResourceError):
            await flow.receive_some()


async def test_the_egress_side_ends_when_told_and_skips_empty_datagrams() -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.setblocking(False)
    a.bind((LOCALHOST, 0))
    await b.bind((LOCALHOST, 0))
    a.connect(b.getsockname())
    stream = ConnectedDatagramStream(a)
    async with stream:
        with b:
            await b.sendto(b"", a.getsockname())
            await b.sendto(b"data", a.getsockname())
            assert await stream.receive_some() == b"data"
            # A burst is handed over at once, each datagram whole.
            for text in (b"1", b"22", b"333"):
                await b.sendto(text, a.getsockname())
            await trio.sleep(0.05)
            assert await stream.receive_batch(65536) == [b"1", b"22", b"333"]

            async def end_soon() -> None:
                await trio.sleep(0.05)
                await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(end_soon)
                assert await stream.receive_some() == b""


@given(
    datagrams=st.lists(st.binary(min_size=1, max_size=2000), min_size=1, max_size=40),
    max_bytes=st.integers(1, 8000),
)
@settings(max_examples=60, deadline=None)
def test_batches_keep_every_datagram_whole_and_in_order(
    datagrams: list[bytes], max_bytes: int
) -> None:
    async def read_all() -> list[list[bytes]]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            flow = FlowStream(sock, (LOCALHOST, 9), idle=60)
            for datagram in datagrams:
                assert flow.deliver(datagram)
            flow.end()
            batches = []
            while batch := await flow.receive_batch(max_bytes):
                batches.append(batch)
            return batches

    batches = trio.run(read_all)
    assert [d for batch in batches for d in batch] == datagrams
    for batch in batches:
        # A batch stops at max_bytes, overshooting by at most its last datagram.
        assert sum(map(len, batch[:-1])) < max_bytes


@given(datagrams=st.lists(st.binary(max_size=3000), min_size=1, max_size=30))
@settings(max_examples=30, deadline=None)
def test_the_egress_side_reads_bursts_whole_and_in_order(datagrams: list[bytes]) -> None:
    # Real sockets: what the kernel queued comes out datagram by datagram, empty ones
    # dropped, however the reads fall.
    async def read_all() -> list[bytes]:
        near = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        near.setblocking(False)
        near.bind((LOCALHOST, 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as far:
            far.bind((LOCALHOST, 0))
            near.connect(far.getsockname())
            for datagram in datagrams:
                far.sendto(datagram, near.getsockname())
            stream = ConnectedDatagramStream(near)
            wanted = sum(1 for d in datagrams if d)
            received: list[bytes] = []
            async with stream:
                with trio.fail_after(10):
                    while len(received) < wanted:
                        received += await stream.receive_batch(4000)
            return received

    assert trio.run(read_all) == [d for d in datagrams if d]


async def test_a_flood_does_not_keep_the_event_loop() -> None:
    # 200 datagrams wait in the listener's socket: it reads READS_PER_TURN of them, then
    # lets other tasks (the tunnels that drain the flows) run before reading on.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        listener.setblocking(False)
        listener.bind((LOCALHOST, 0))
        client.bind((LOCALHOST, 0))
        for _ in range(200):
            client.sendto(b"x", listener.getsockname())
        flow = FlowStream(listener, client.getsockname(), idle=60)
        flows = {client.getsockname(): flow}
        doc = ingress_doc("127.0.0.1:9", {})
        doc["ingress"] = {
            "udp": [
                {"name": "flood", "listen": "127.0.0.1:0", "egress": "127.0.0.1:9", "target": "dns"}
            ]
        }
        config = parse_config(doc)
        runtime = cast("Runtime", SimpleNamespace(draining=False, config=config))
        (rule,) = config.udp
        seen: list[int] = []

        async def other_task() -> None:
            seen.append(len(await flow.receive_batch(1 << 20)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_receive_datagrams, runtime, rule, listener, flows, nursery)
            nursery.start_soon(other_task)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    assert seen
    assert seen[0] < 200  # it ran while datagrams were still waiting to be read
