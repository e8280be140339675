"""Links made ahead of need (``[prewarm]``): used, refilled, expired, found dead, dropped.

Both gateways run in the test process on the HMAC test attestation, over real loopback
sockets.  What each test checks is what the user relies on: a tunnel that takes a ready
link works like any other, a link the egress has closed never costs a client its
connection, and links of an old identity or an egress no rule names are not kept.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Any

import pytest
import trio
from gateway_helpers import (
    LOCALHOST,
    HmacPair,
    admin_get,
    capture_gateway_logs,
    connect,
    egress_doc,
    free_port,
    gateway_pair,
    ingress_doc,
    listen_port,
    metric_value,
    receive_exactly,
    start_backend,
    start_gateway,
    tunnel_lines,
    wait_for,
)

from gateway import _prewarm
from gateway._config import ConfigError, PrewarmSettings, parse_config
from gateway._testing import hmac_test_attestation

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway._config import Endpoint
    from gateway._daemon import RunningGateway
    from gateway._runtime import Runtime

KEY = b"gateway-prewarm-test-key"


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    capture_gateway_logs(caplog)


def egress_of(gateway: RunningGateway) -> Endpoint:
    """The only egress an ingress's rules name."""
    (egress,) = {rule.egress for rule in gateway.runtime.config.ingress_rules}
    return egress


def pool_ready(gateway: RunningGateway) -> int:
    """Ready links of the ingress's only egress."""
    pool = gateway.runtime.link_pool
    assert pool is not None
    return pool.ready(egress_of(gateway))


def outcomes(runtime: Runtime) -> dict[str, float]:
    """The prewarm link counters, by outcome."""
    counter = runtime.metrics.prewarm_links
    return {key[0]: value for key, value in counter.values.items()}


async def echo_once(port: int, payload: bytes) -> None:
    client = await connect(LOCALHOST, port)
    await client.send_all(payload)
    assert await receive_exactly(client, len(payload)) == payload
    await client.aclose()


def prewarm(links: int = 2, max_idle: float = 20.0) -> dict[str, Any]:
    return {"prewarm": {"links": links, "max_idle": max_idle}}


async def test_a_tunnel_takes_a_ready_link_and_the_pool_refills(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair({"echo": backend.port}, ingress_extra=prewarm(2)) as pair:
        await wait_for(lambda: pool_ready(pair.ingress) == 2)
        assert backend.connections == 0  # a ready link has opened nothing yet
        status, body = await admin_get(pair.port("admin"), "/status")
        assert status == 200
        assert json.loads(body)["prewarm"]["ready"] == {str(egress_of(pair.ingress)): 2}
        _, metrics = await admin_get(pair.port("admin"), "/metrics")
        ready = metric_value(
            metrics.decode(), "ratls_gateway_prewarm_ready", egress=str(egress_of(pair.ingress))
        )
        assert ready == 2
        await echo_once(pair.port("mapping:echo"), b"ahead of need")
        assert outcomes(pair.ingress.runtime)["used"] == 1
        await wait_for(lambda: pool_ready(pair.ingress) == 2)
        assert outcomes(pair.ingress.runtime)["made"] == 3
        # The egress attested each link once: three handshakes, one tunnel so far.
        assert pair.egress.runtime.metrics.handshake_seconds.count(side="egress") == 3
        await echo_once(pair.port("mapping:echo"), b"and again")
        assert outcomes(pair.ingress.runtime)["used"] == 2
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 2)
        # The ingress stops: its ready links close, and the egress logs them "unused",
        # which is no failure.
        pair.ingress.request_shutdown()
        await pair.ingress.wait_stopped()
        made = outcomes(pair.ingress.runtime)["made"]
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == made)
        egress_results = [line["result"] for line in tunnel_lines(caplog, "egress")]
        assert sorted(egress_results) == ["ok", "ok", *["unused"] * (int(made) - 2)]
        assert not pair.egress.runtime.metrics.tunnels_failed.values
    ingress_lines = tunnel_lines(caplog, "ingress")
    assert [line["result"] for line in ingress_lines] == ["ok", "ok"]


async def test_links_are_replaced_when_they_reach_max_idle(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair({"echo": backend.port}, ingress_extra=prewarm(1, 5.0)) as pair:
        runtime = pair.ingress.runtime
        await wait_for(lambda: outcomes(runtime).get("made") == 1)
        await trio.sleep(12)
        assert outcomes(runtime).get("expired") == 2
        assert outcomes(runtime)["made"] == 3
        assert pool_ready(pair.ingress) == 1
        await echo_once(pair.port("mapping:echo"), b"fresh enough")


async def test_links_the_egress_closed_are_skipped_and_the_client_is_served(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair(
        {"echo": backend.port},
        egress_extra={"timeouts": {"open_wait": 0.2}},
        ingress_extra=prewarm(2),
    ) as pair:
        runtime = pair.ingress.runtime
        await wait_for(lambda: pool_ready(pair.ingress) == 2)
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) >= 2)  # both timed out
        await echo_once(pair.port("mapping:echo"), b"served anyway")
        assert outcomes(runtime)["dead"] >= 2
        assert "used" not in outcomes(runtime)
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    results = [line["result"] for line in tunnel_lines(caplog, "egress")]
    assert results[:2] == ["open-timeout", "open-timeout"]
    assert "ok" in results
    assert [line["result"] for line in tunnel_lines(caplog, "ingress")] == ["ok"]


async def test_a_link_closed_after_the_check_is_replaced_by_a_fresh_one(
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The egress closes the link between our look at it and our OPEN: nothing of the
    # client's was sent, so the tunnel opens a fresh link and the client never knows.
    monkeypatch.setattr(_prewarm, "link_is_dead", lambda stream: False)
    backend = await start_backend(nursery)
    async with gateway_pair(
        {"echo": backend.port},
        egress_extra={"timeouts": {"open_wait": 0.2}},
        ingress_extra=prewarm(1),
    ) as pair:
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) >= 1)
        await trio.sleep(0.1)  # the close_notify has arrived
        await echo_once(pair.port("mapping:echo"), b"second try")
        assert outcomes(pair.ingress.runtime)["dead"] == 1
        await wait_for(lambda: len(tunnel_lines(caplog, "ingress")) == 1)
    assert [line["result"] for line in tunnel_lines(caplog, "ingress")] == ["ok"]


async def test_a_reload_drops_links_of_the_old_identity(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair({"echo": backend.port}, ingress_extra=prewarm(2)) as pair:
        runtime = pair.ingress.runtime
        await wait_for(lambda: pool_ready(pair.ingress) == 2)
        pair.ingress.reload(runtime.config, attestation=pair.ingress_att[0])
        await wait_for(lambda: outcomes(runtime).get("dropped") == 2)
        await wait_for(lambda: pool_ready(pair.ingress) == 2)
        assert outcomes(runtime)["made"] == 4
        # Turned off by a reload: every ready link goes, none is made.
        off = parse_config({**ingress_doc_of(runtime), **prewarm(0)})
        pair.ingress.reload(off, attestation=pair.ingress_att[0])
        await wait_for(lambda: pool_ready(pair.ingress) == 0)
        assert outcomes(runtime)["dropped"] == 4
        await echo_once(pair.port("mapping:echo"), b"without a pool")


def ingress_doc_of(runtime: Runtime) -> dict[str, Any]:
    """The ingress document the pair started from (its egress, one mapping)."""
    rule = runtime.config.mappings[0]
    return ingress_doc(str(rule.egress), {"echo": str(rule.listen)})


async def test_an_unreachable_egress_is_retried_with_backoff(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = ingress_doc(f"{LOCALHOST}:{free_port()}", {"echo": "127.0.0.1:0"}, **prewarm(2))
    ingress = await start_gateway(nursery, parse_config(doc), hmac_test_attestation(KEY)[0])
    await trio.sleep(60)
    failed = outcomes(ingress.runtime)["failed"]
    # Two at once, then one per backoff step (1, 2, 4, 8, 16, 30 s): not one per tick.
    assert 4 <= failed <= 10
    warnings = [r for r in caplog.records if r.getMessage() == "prewarm failed"]
    assert warnings
    assert warnings[0].fields["result"] == "egress-unreachable"  # type: ignore[attr-defined]
    # A client meanwhile gets a fresh attempt, refused for the real reason.
    client = await connect(LOCALHOST, listen_port(ingress, "mapping:echo"))
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some(1)
    assert tunnel_lines(caplog, "ingress")[-1]["result"] == "egress-unreachable"
    ingress.request_shutdown()


async def test_an_egress_no_rule_names_after_a_reload_is_dropped(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    egress_att = hmac_test_attestation(KEY)
    first = await start_gateway(
        nursery, parse_config(egress_doc({"echo": backend.port})), egress_att[0]
    )
    second = await start_gateway(
        nursery, parse_config(egress_doc({"echo": backend.port})), egress_att[0]
    )
    ingress_att = hmac_test_attestation(KEY)

    def doc_for(egress: RunningGateway) -> dict[str, Any]:
        address = f"{LOCALHOST}:{listen_port(egress, 'egress:main')}"
        return ingress_doc(address, {"echo": "127.0.0.1:0"}, **prewarm(1))

    ingress = await start_gateway(nursery, parse_config(doc_for(first)), ingress_att[0])
    await wait_for(lambda: pool_ready(ingress) == 1)
    port = listen_port(ingress, "mapping:echo")
    ingress.reload(parse_config(doc_for(second)), attestation=ingress_att[0])
    await wait_for(lambda: pool_ready(ingress) == 1)  # now to the second egress
    assert outcomes(ingress.runtime)["dropped"] == 1
    await echo_once(port, b"to the second egress")
    for gateway in (ingress, first, second):
        gateway.request_shutdown()


def test_the_prewarm_table_is_checked() -> None:
    base: Mapping[str, Any] = ingress_doc("127.0.0.1:9443", {"echo": "127.0.0.1:8000"})
    assert parse_config(dict(base)).prewarm == PrewarmSettings(links=0, max_idle=20.0)
    config = parse_config({**base, "prewarm": {"links": 4, "max_idle": 5}})
    assert config.prewarm == PrewarmSettings(links=4, max_idle=5.0)
    for table, location in (
        ({"links": 65}, "prewarm.links"),
        ({"links": -1}, "prewarm.links"),
        ({"max_idle": 0}, "prewarm.max_idle"),
        ({"pool": 1}, "prewarm.pool"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config({**base, "prewarm": table})
        assert [p.location for p in caught.value.problems] == [location]
    egress = egress_doc({"echo": 8080})
    assert parse_config({**egress, "timeouts": {"open_wait": 3}}).timeouts.open_wait == 3.0
    with pytest.raises(ConfigError):
        parse_config({**egress, "timeouts": {"open_wait": 0}})


# --------------------------------------------------------------------------- reuse


def reuse(links: int = 1, **extra: Any) -> dict[str, Any]:
    return {"prewarm": {"links": links, "reuse": True, **extra}}


async def use_a_link_and_see_it_kept(pair: HmacPair, links: int) -> None:
    """Wait for ``links`` ready links, run one tunnel, and wait until its link is kept."""
    await wait_for(lambda: pool_ready(pair.ingress) == links)
    await echo_once(pair.port("mapping:echo"), b"first")
    await wait_for(lambda: outcomes(pair.ingress.runtime).get("kept") == 1)


def test_reuse_is_off_by_default_and_checked() -> None:
    base: Mapping[str, Any] = ingress_doc("127.0.0.1:9443", {"echo": "127.0.0.1:8000"})
    assert not parse_config(dict(base)).prewarm.reuse
    assert parse_config({**base, **reuse(2)}).prewarm.reuse
    for table in ({"links": 1, "reuse": "yes"}, {"reuse": True}):
        with pytest.raises(ConfigError) as caught:
            parse_config({**base, "prewarm": table})
        assert [p.location for p in caught.value.problems] == ["prewarm.reuse"]


async def test_back_to_back_tunnels_reuse_one_attested_link(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair({"echo": backend.port}, ingress_extra=reuse(1)) as pair:
        await wait_for(lambda: pool_ready(pair.ingress) == 1)
        for i in range(6):
            await echo_once(pair.port("mapping:echo"), b"tunnel %d" % i)
            # The egress confirms with READY; the link is back before the next client.
            await wait_for(lambda: pool_ready(pair.ingress) == 1)
        runtime = pair.ingress.runtime
        assert outcomes(runtime)["made"] == 1  # one handshake for six tunnels
        assert outcomes(runtime)["kept"] == 6
        assert pair.egress.runtime.metrics.handshake_seconds.count(side="egress") == 1
        assert backend.connections == 6  # each tunnel its own backend connection
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 6)
        for side in ("ingress", "egress"):
            lines = tunnel_lines(caplog, side)
            assert [line["result"] for line in lines] == ["ok"] * 6
            # Every tunnel after the first ran on a link that had carried one before.
            assert [bool(line.get("reused_link")) for line in lines] == [False] + [True] * 5
        assert not pair.egress.runtime.metrics.tunnels_failed.values


async def test_a_tunnel_that_fails_is_not_followed_on_its_link(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_backend(nursery)
    async with gateway_pair({"echo": backend.port}, ingress_extra=reuse(1)) as pair:
        await wait_for(lambda: pool_ready(pair.ingress) == 1)
        # The client resets its connection: the tunnel aborts, and its link is closed
        # instead of kept (the pool makes a new one).
        client = await connect(LOCALHOST, pair.port("mapping:echo"))
        await client.send_all(b"x")
        assert await receive_exactly(client, 1) == b"x"
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 1)
        await wait_for(lambda: outcomes(pair.ingress.runtime).get("made") == 2)
        assert "kept" not in outcomes(pair.ingress.runtime)
        assert tunnel_lines(caplog, "egress")[0]["result"] != "ok"
        await echo_once(pair.port("mapping:echo"), b"on a fresh link")


async def test_a_kept_link_is_not_used_after_the_egress_reloaded(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # A kept link was attested under the egress's old configuration: at the next OPEN
    # the egress closes it unanswered, and the client's tunnel opens a fresh link,
    # attested under the configuration in force now.
    backend = await start_backend(nursery)
    async with gateway_pair({"echo": backend.port}, ingress_extra=reuse(1)) as pair:
        await use_a_link_and_see_it_kept(pair, 1)
        pair.egress.reload(pair.egress.runtime.config, attestation=pair.egress_att[0])
        await echo_once(pair.port("mapping:echo"), b"second")
        assert outcomes(pair.ingress.runtime)["dead"] == 1
        assert pair.egress.runtime.metrics.handshake_seconds.count(side="egress") == 2
        await wait_for(lambda: len(tunnel_lines(caplog, "egress")) == 3)
        results = [line["result"] for line in tunnel_lines(caplog, "egress")]
        assert results == ["ok", "unused", "ok"]


async def test_kept_links_stop_at_the_attestation_age(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    extra = {**reuse(1), "timeouts": {"max_attestation_age": 0.5}}
    async with gateway_pair({"echo": backend.port}, ingress_extra=extra) as pair:
        await use_a_link_and_see_it_kept(pair, 1)
        # Past the age, the pool closes the link rather than hand it to a tunnel that
        # would have to re-attest at once, and makes a fresh one.
        await wait_for(lambda: outcomes(pair.ingress.runtime).get("aged", 0) >= 1)
        await echo_once(pair.port("mapping:echo"), b"second")


async def test_a_draining_egress_closes_links_waiting_for_open_at_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # A link made ahead of need (or kept) carries no tunnel: the egress's drain does not
    # wait for it (drain deadline 25 s here) but closes it and stops.
    backend = await start_backend(nursery)
    async with gateway_pair({"echo": backend.port}, ingress_extra=reuse(2)) as pair:
        await use_a_link_and_see_it_kept(pair, 2)
        pair.egress.request_shutdown()
        with trio.fail_after(5):
            await pair.egress.wait_stopped()
        lines = tunnel_lines(caplog, "egress")
        assert [line["result"] for line in lines].count("ok") == 1
        closed = [line for line in lines if line["result"] == "unused"]
        assert len(closed) == 2
        assert {line.get("detail") for line in closed} == {"closed unused at shutdown"}
