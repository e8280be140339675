"""Transparent capture for real: run inside a fresh network namespace, print JSON results.

``tests/test_gateway_transparent.py`` starts this script under ``unshare -rn`` (a new
user and network namespace, so no host rule or address is touched).  The script gives
the namespace's loopback two "remote" service addresses (10.77.0.5 and fd77::5), adds
netfilter REDIRECT rules for connections from the client's source addresses (127.0.0.2
and fd77::2), starts a backend, an egress and an ingress with a transparent
listener in this process, and reports what each client connection saw.

Only the client's connections match the rules (by source address), so the egress's own
connections to the same service addresses go straight to the backend, the way an
operator excludes the gateway's traffic (``-m owner ! --uid-owner``, or by address).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_helpers import (
    KEY,
    egress_doc,
    ingress_doc,
    listen_port,
    start_gateway,
)
from netns_support import TunnelLines, main_as_root, run

from gateway._config import parse_config
from gateway._testing import hmac_test_attestation

SERVICE_V4 = "10.77.0.5"
SERVICE_V6 = "fd77::5"
CLIENT_V4 = "127.0.0.2"
CLIENT_V6 = "fd77::2"
PORT = 5432
CLOSED_PORT = 5433  # redirected too, but not on the egress's allowlist
CAPTURE = 15001


def prepare_namespace() -> None:
    run("ip", "link", "set", "lo", "up")
    run("ip", "addr", "add", f"{SERVICE_V4}/32", "dev", "lo")
    run("ip", "-6", "addr", "add", f"{SERVICE_V6}/128", "dev", "lo", "nodad")
    run("ip", "-6", "addr", "add", f"{CLIENT_V6}/128", "dev", "lo", "nodad")
    for tool, client, service in (
        ("iptables", CLIENT_V4, SERVICE_V4),
        ("ip6tables", CLIENT_V6, SERVICE_V6),
    ):
        run(tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", client, "-d", service,
            "-m", "multiport", "--dports", f"{PORT},{CLOSED_PORT}",
            "-j", "REDIRECT", "--to-ports", str(CAPTURE))  # fmt: skip


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(b"echo:" + data)


async def client(source: str, host: str, port: int) -> dict[str, Any]:
    """Dial ``host:port`` from ``source`` (so the REDIRECT rule matches) and say hello."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    try:
        await sock.connect((host, port))
        stream = trio.SocketStream(sock)
        await stream.send_all(b"hello")
        answer = b""
        with trio.fail_after(5):
            while len(answer) < len(b"echo:hello"):
                data = await stream.receive_some(100)
                if not data:
                    break
                answer += data
        await stream.aclose()
    except (OSError, trio.BrokenResourceError) as exc:
        return {"answer": None, "error": type(exc).__name__}
    return {"answer": answer.decode(), "error": None}


async def main() -> dict[str, Any]:
    prepare_namespace()
    lines = TunnelLines("ingress")
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        listeners = [
            *await trio.open_tcp_listeners(PORT, host=SERVICE_V4),
            *await trio.open_tcp_listeners(PORT, host=SERVICE_V6),
        ]
        nursery.start_soon(trio.serve_listeners, echo, listeners)
        edoc = egress_doc({"db": PORT})
        edoc["egress"]["listener"][0]["allow"] = [f"{SERVICE_V4}:{PORT}", f"[{SERVICE_V6}]:{PORT}"]
        egress = await start_gateway(nursery, parse_config(edoc), hmac_test_attestation(KEY)[0])
        egress_address = f"127.0.0.1:{listen_port(egress, 'egress:main')}"
        idoc = ingress_doc(egress_address, {})
        idoc["ingress"] = {
            "transparent": [
                {"name": "capture", "listen": f"127.0.0.1:{CAPTURE}", "egress": egress_address},
                {"name": "capture6", "listen": f"[::1]:{CAPTURE}", "egress": egress_address},
            ]
        }
        await start_gateway(nursery, parse_config(idoc), hmac_test_attestation(KEY)[0])
        results["redirected_v4"] = await client(CLIENT_V4, SERVICE_V4, PORT)
        results["redirected_v6"] = await client(CLIENT_V6, SERVICE_V6, PORT)
        results["not_allowed"] = await client(CLIENT_V4, SERVICE_V4, CLOSED_PORT)
        results["direct"] = await client("127.0.0.1", "127.0.0.1", CAPTURE)
        results["unmatched"] = await client("127.0.0.1", SERVICE_V4, PORT)  # no rule: direct
        await lines.wait_for(4)
        results["tunnels"] = lines.lines
        nursery.cancel_scope.cancel()
    return results


if __name__ == "__main__":
    main_as_root(main)
