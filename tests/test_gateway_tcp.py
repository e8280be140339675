"""TCP keepalive on the gateway's connections (``[tcp]``), and the reasons a reset is logged.

Every connection a gateway accepts or opens must carry the configured keepalive options
(read back from the kernel). Loopback peers never vanish silently, since the kernel
answers keepalive probes for any socket that exists, so the behaviour itself is tested
in a network namespace (``tests/netns_keepalive.py``) where iptables drops an open
tunnel's client packets: the ingress must find the client gone by its probes alone and
log it as a peer that stopped answering.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import trio
from gateway_helpers import (
    LOCALHOST,
    REPO,
    connect,
    egress_doc,
    gateway_pair,
    receive_exactly,
    run_in_network_namespace,
    start_backend,
    to_toml,
    wait_for,
)

from gateway._config import ConfigError, TcpSettings, parse_config
from gateway._http_connect import HttpRequestError
from gateway._runtime import apply_tcp_settings
from gateway._tunnel import reset_detail

if TYPE_CHECKING:
    from pathlib import Path

SETTINGS = TcpSettings(keepalive_idle=321, keepalive_interval=7, keepalive_count=4)


def keepalive_of(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int, int]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) as the kernel has them."""
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host=LOCALHOST))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream(LOCALHOST, port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_keepalive_is_set_on_a_tcp_connection() -> None:
    client, server = await tcp_pair()
    async with client, server:
        assert keepalive_of(server.socket)[0] == 0  # the kernel's default: off
        apply_tcp_settings(server, SETTINGS)
        assert keepalive_of(server.socket) == (1, 321, 7, 4)
        apply_tcp_settings(client, TcpSettings(keepalive=False))
        assert keepalive_of(client.socket)[0] == 0


async def test_unix_sockets_and_dead_sockets_are_left_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    with listener:
        unix = await trio.open_unix_socket(path)
        async with unix:
            apply_tcp_settings(unix, SETTINGS)  # nothing to set, nothing raised
            assert unix.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    client, server = await tcp_pair()
    async with server:
        client.socket.close()
        apply_tcp_settings(client, SETTINGS)  # EBADF is left for the next read to report


def tcp_sockets_of_this_process() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """{(local port, peer port): keepalive options} of every connected TCP socket here."""
    found: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # closed meanwhile, or the directory's own descriptor
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.type != socket.SOCK_STREAM:
                continue
            try:
                peer = sock.getpeername()
            except OSError:
                continue  # a listener
            found[sock.getsockname()[1], peer[1]] = keepalive_of(sock)
    return found


async def test_every_gateway_connection_carries_the_configured_keepalive(
    nursery: trio.Nursery,
) -> None:
    backend = await start_backend(nursery)
    tcp = {"keepalive_idle": 321, "keepalive_interval": 7, "keepalive_count": 4}
    async with gateway_pair(
        {"web": backend.port}, egress_extra={"tcp": tcp}, ingress_extra={"tcp": tcp}
    ) as pair:
        ingress_port = pair.port("mapping:web")
        egress_address = pair.egress.address("egress:main")
        assert isinstance(egress_address, tuple)
        egress_port = egress_address[1]
        client = await connect(LOCALHOST, ingress_port)
        await client.send_all(b"ping")
        assert await receive_exactly(client, 4) == b"ping"  # the whole path is open
        await wait_for(lambda: backend.open == 1)
        sockets = tcp_sockets_of_this_process()
        client_port = client.socket.getsockname()[1]

        def one(local: int | None = None, peer: int | None = None) -> tuple[int, int, int, int]:
            [options] = [
                options
                for (lport, pport), options in sockets.items()
                if local in (None, lport) and peer in (None, pport)
            ]
            return options

        configured = (1, 321, 7, 4)
        assert one(local=ingress_port, peer=client_port) == configured  # client, accepted
        assert one(peer=egress_port) == configured  # link, at the ingress
        assert one(local=egress_port) == configured  # link, at the egress
        assert one(peer=backend.port) == configured  # backend, at the egress
        # The test's own client and backend sockets are not the gateway's business.
        assert one(local=client_port, peer=ingress_port)[0] == 0
        assert one(local=backend.port)[0] == 0


def test_reset_details_name_the_socket_error() -> None:
    def broken(code: int) -> trio.BrokenResourceError:
        error = trio.BrokenResourceError("receiving")
        error.__cause__ = OSError(code, os.strerror(code))
        return error

    assert (
        reset_detail(broken(errno.ETIMEDOUT))
        == "the peer stopped answering (TCP keepalive or retransmission timed out)"
    )
    assert reset_detail(broken(errno.ECONNRESET)) == (
        f"BrokenResourceError: {os.strerror(errno.ECONNRESET)}"
    )
    assert reset_detail(ConnectionResetError(errno.ECONNRESET, "reset")) == (
        f"ConnectionResetError: {os.strerror(errno.ECONNRESET)}"
    )
    assert reset_detail(trio.ClosedResourceError()) == "ClosedResourceError"
    refused = trio.BrokenResourceError("an Upgrade")
    refused.__cause__ = HttpRequestError(501, "an Upgrade would end HTTP on this connection")
    assert reset_detail(refused) == (
        "HttpRequestError: 501: an Upgrade would end HTTP on this connection"
    )
    assert reset_detail(ConnectionResetError("no errno")) == "ConnectionResetError"


async def test_keepalive_on_ipv6() -> None:
    try:
        listener = (await trio.open_tcp_listeners(0, host="::1"))[0]
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    async with listener:
        assert listener.socket.family == socket.AF_INET6
        client = await trio.open_tcp_stream("::1", listener.socket.getsockname()[1])
        server = await listener.accept()
        async with client, server:
            apply_tcp_settings(server, SETTINGS)
            assert keepalive_of(server.socket) == (1, 321, 7, 4)


def test_a_vanished_client_is_found_by_keepalive_probes() -> None:
    # In a network namespace, iptables drops every packet of an open tunnel's client
    # connection: no FIN, no RST, only unanswered keepalive probes (1 s idle, 1 s apart,
    # 2 probes) can end it.
    result = run_in_network_namespace("netns_keepalive.py")
    line = result["line"]
    assert line["result"] == "client-reset"
    assert (
        line["detail"] == "the peer stopped answering (TCP keepalive or retransmission timed out)"
    )
    assert 2.5 < result["seconds"] < 20  # idle + probes; not some other timeout


# --------------------------------------------------------------------------- [tcp] mark


def test_the_mark_is_a_32_bit_number() -> None:
    doc = egress_doc({"web": 8080})
    assert parse_config({**doc, "tcp": {"mark": 0x235}}).tcp.mark == 0x235
    assert parse_config(doc).tcp.mark == 0
    for bad in (-1, 1 << 32, "0x235", True):
        with pytest.raises(ConfigError) as caught:
            parse_config({**doc, "tcp": {"mark": bad}})
        assert [p.location for p in caught.value.problems] == ["tcp.mark"]


def test_gateway_connections_carry_the_mark_past_a_capture_rule() -> None:
    # Every TCP connection to the service address is captured unless marked; the egress
    # and the backend live at that address, so the tunnel works only if the ingress's
    # link and the egress's backend connection carry the mark from their SYN on.
    results = run_in_network_namespace("netns_mark.py")
    assert results["captured"] == {"answer": "echo:hello", "error": None}
    sides = sorted((line["side"], line["result"]) for line in results["tunnels"])
    assert sides == [("egress", "ok"), ("ingress", "ok")]
    assert results["marked_syns"] == {"9443": 1, "5432": 1}


def test_a_mark_without_cap_net_admin_stops_the_gateway_with_the_reason(tmp_path: Path) -> None:
    # In a new user namespace (no -n) we hold CAP_NET_ADMIN only over namespaces we do
    # not use: setting SO_MARK on this machine's network is refused, as for any user.
    if shutil.which("unshare") is None:  # pragma: no cover - CI installs util-linux
        if os.environ.get("CI"):
            pytest.fail("CI must have unshare (util-linux, installed by .ci/setup)")
        pytest.skip("unshare is not installed")
    config = tmp_path / "egress.toml"
    config.write_text(to_toml({**egress_doc({"web": 8080}), "tcp": {"mark": 565}}))
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        ["unshare", "-r", sys.executable, "-m", "gateway.cli", "run", str(config)],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if "unshare failed" in done.stderr:  # pragma: no cover - no user namespaces here
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the user-namespace tests: {done.stderr.strip()}")
        pytest.skip(done.stderr.strip())
    assert done.returncode == 1, done.stderr
    failed = json.loads(done.stderr.splitlines()[-1])
    assert failed["msg"] == "gateway failed"
    assert "[tcp] mark needs CAP_NET_ADMIN" in failed["error"]
