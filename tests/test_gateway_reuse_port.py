"""`[process] reuse_port`: two gateway processes on one port, one drains, no refusal."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import pytest
from gateway_helpers import (
    KEY,
    LOCALHOST,
    close_clients,
    connect,
    egress_doc,
    free_port,
    ingress_doc,
    listen_port,
    receive_exactly,
    start_backend,
    start_gateway,
)

from gateway._config import ConfigError, ProcessSettings, parse_config
from gateway._testing import hmac_test_attestation

if TYPE_CHECKING:
    import trio

    from gateway._daemon import RunningGateway


def test_config() -> None:
    doc = egress_doc({"web": 8080})
    assert parse_config(doc).process == ProcessSettings(reuse_port=False)
    assert parse_config({**doc, "process": {"reuse_port": True}}).process.reuse_port
    with pytest.raises(ConfigError) as info:
        parse_config({**doc, "process": {"reuse_port": "yes", "threads": 2}})
    assert [str(p) for p in info.value.problems] == [
        "process.threads: unknown key (known: reuse_port, workers)",
        "process.reuse_port: must be true or false",
    ]


async def _echo_through(port: int, payload: bytes) -> None:
    client = await connect(LOCALHOST, port)
    await client.send_all(payload)
    assert await receive_exactly(client, len(payload)) == payload
    await client.aclose()


async def test_a_second_egress_takes_over_while_the_first_drains(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    port, admin = free_port(), free_port()
    doc = egress_doc(
        {"web": backend.port},
        listen=f"{LOCALHOST}:{port}",
        process={"reuse_port": True},
        admin={"listen": f"{LOCALHOST}:{admin}"},
    )
    attestation = hmac_test_attestation(KEY)[0]
    old = await start_gateway(nursery, parse_config(doc), attestation)
    new = await start_gateway(nursery, parse_config(doc), attestation)  # same ports
    assert listen_port(old, "egress:main") == listen_port(new, "egress:main") == port
    ingress = await start_gateway(
        nursery,
        parse_config(ingress_doc(f"{LOCALHOST}:{port}", {"web": f"{LOCALHOST}:0"})),
        attestation,
    )
    entry = listen_port(ingress, "mapping:web")
    for i in range(8):
        await _echo_through(entry, b"before %d" % i)
    # The old process drains and stops; the kernel sends every new connection to the new.
    old.request_shutdown()
    await old.wait_stopped()

    def served(gateway: RunningGateway) -> float:
        return gateway.runtime.metrics.tunnels_total.get(side="egress", rule="main")

    after_drain = served(old)
    for i in range(8):
        await _echo_through(entry, b"more %d" % i)
    assert served(old) == after_drain  # the stopped one took nothing new
    assert served(old) + served(new) == 16
    assert served(new) > 0
    await close_clients()


async def test_without_reuse_port_a_second_gateway_cannot_bind(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    port = free_port()
    doc = egress_doc({"web": backend.port}, listen=f"{LOCALHOST}:{port}")
    attestation = hmac_test_attestation(KEY)[0]
    await start_gateway(nursery, parse_config(doc), attestation)
    with pytest.raises(BaseExceptionGroup) as info:  # from the gateway's nurseries
        await start_gateway(nursery, parse_config(doc), attestation)
    assert [e.errno for e in _leaves(info.value) if isinstance(e, OSError)] == [errno.EADDRINUSE]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def test_reload_cannot_change_reuse_port(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery)
    doc = egress_doc({"web": backend.port})
    attestation = hmac_test_attestation(KEY)[0]
    gateway = await start_gateway(nursery, parse_config(doc), attestation)
    changed = parse_config({**doc, "process": {"reuse_port": True}})
    with pytest.raises(ConfigError) as info:
        gateway.reload(changed, attestation=attestation)
    assert info.value.location == "process.reuse_port"
    assert not gateway.runtime.config.process.reuse_port  # the old configuration stays
