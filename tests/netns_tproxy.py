"""TPROXY capture for real: a client in another network namespace, JSON on stdout.

``tests/test_gateway_transparent.py`` starts this script under ``unshare -rn``.  It
makes a second network namespace for the client, joined to this one by a veth pair,
and routes the client's connections to a service address (10.77.0.5:5432) here, where
an iptables TPROXY rule hands them to the ingress's ``mode = "tproxy"`` listener with
their addresses untouched.  The ingress tunnels each one through the egress to the
backend listening on that very address.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_helpers import KEY, egress_doc, ingress_doc, listen_port, start_gateway
from netns_support import TunnelLines, main_as_root, run

from gateway._config import parse_config
from gateway._testing import hmac_test_attestation

SERVICE = "10.77.0.5"
PORT = 5432
CAPTURE = 15001
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.sendall(b"hello")
    data = b""
    while len(data) < len(b"echo:hello"):
        chunk = c.recv(100)
        if not chunk:
            break
        data += chunk
    print(data.decode())
except OSError as exc:
    print(type(exc).__name__)
"""


def client_namespace() -> subprocess.Popen[bytes]:
    """A process in a new network namespace, joined to ours by veth0 (10.88.0.1) / veth1."""
    holder = subprocess.Popen(["unshare", "-n", "sleep", "60"])  # noqa: S607 - on PATH
    pid = str(holder.pid)
    for _ in range(100):  # until it has its own namespace
        if os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"):
            break
        subprocess.run(["sleep", "0.01"], check=True)  # noqa: S607
    run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", pid)
    run("ip", "addr", "add", "10.88.0.1/24", "dev", "veth0")
    run("ip", "link", "set", "veth0", "up")
    for command in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", "10.88.0.2/24", "dev", "veth1"],
        ["ip", "link", "set", "veth1", "up"],
        ["ip", "route", "add", "default", "via", "10.88.0.1"],
    ):
        run("nsenter", "-t", pid, "-n", *command)
    return holder


async def main() -> dict[str, Any]:
    run("ip", "link", "set", "lo", "up")
    run("ip", "addr", "add", f"{SERVICE}/32", "dev", "lo")
    holder = client_namespace()
    # TPROXY: packets of the client's connections to the service go to the capture port.
    run("ip", "rule", "add", "fwmark", "1", "lookup", "100")
    run("ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    run("iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "veth0", "-p", "tcp",
        "-d", SERVICE, "--dport", str(PORT),
        "-j", "TPROXY", "--on-port", str(CAPTURE), "--tproxy-mark", "1")  # fmt: skip
    lines = TunnelLines("ingress")
    results: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:

            async def echo(stream: trio.SocketStream) -> None:
                async with stream:
                    while data := await stream.receive_some(65536):
                        await stream.send_all(b"echo:" + data)

            nursery.start_soon(
                trio.serve_listeners, echo, await trio.open_tcp_listeners(PORT, host=SERVICE)
            )
            edoc = egress_doc({"db": PORT})
            edoc["egress"]["listener"][0]["allow"] = [f"{SERVICE}:{PORT}"]
            egress = await start_gateway(nursery, parse_config(edoc), hmac_test_attestation(KEY)[0])
            idoc = ingress_doc(f"127.0.0.1:{listen_port(egress, 'egress:main')}", {})
            idoc["ingress"] = {
                "transparent": [
                    {
                        "name": "capture",
                        "listen": f"0.0.0.0:{CAPTURE}",
                        "egress": f"127.0.0.1:{listen_port(egress, 'egress:main')}",
                        "mode": "tproxy",
                    }
                ]
            }
            await start_gateway(nursery, parse_config(idoc), hmac_test_attestation(KEY)[0])
            for label, host, port, where in (
                ("diverted", SERVICE, PORT, str(holder.pid)),
                ("direct", "127.0.0.1", CAPTURE, None),
            ):
                argv = [sys.executable, "-c", CLIENT, host, str(port)]
                if where is not None:
                    argv = ["nsenter", "-t", where, "-n", *argv]
                done = await trio.run_process(argv, capture_stdout=True, check=True)
                results[label] = done.stdout.decode().strip()
            await lines.wait_for(2)
            results["tunnels"] = lines.lines
            nursery.cancel_scope.cancel()
    finally:
        holder.kill()
        holder.wait()
    return results


if __name__ == "__main__":
    main_as_root(main)
