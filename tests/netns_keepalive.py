"""TCP keepalive for real: a client vanishes, and the ingress finds out (JSON on stdout).

``tests/test_gateway_tcp.py`` runs this script under ``unshare -rn``.  In the fresh
network namespace it opens a tunnel (client -> ingress -> egress -> echo backend) with
short keepalive settings on the ingress, then drops every packet of the client's
connection with iptables, as a client host that lost power or a firewall that forgot
the flow would.  No FIN or RST ever arrives, so only the keepalive probes, left
unanswered, can end the tunnel; the script reports the ingress's access line and how
long it took.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_helpers import KEY, egress_doc, ingress_doc, listen_port, start_gateway
from netns_support import TunnelLines, main_as_root, run

from gateway._config import parse_config
from gateway._testing import hmac_test_attestation

# First probe after 1 s of silence, then every second; 2 unanswered probes end it.
TCP = {"keepalive_idle": 1, "keepalive_interval": 1, "keepalive_count": 2}


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the egress resets the backend when the tunnel is cut


async def main() -> dict[str, Any]:
    run("ip", "link", "set", "lo", "up")
    lines = TunnelLines()
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        backend_port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, echo, listeners)
        egress = await start_gateway(
            nursery, parse_config(egress_doc({"app": backend_port})), hmac_test_attestation(KEY)[0]
        )
        idoc = ingress_doc(
            f"127.0.0.1:{listen_port(egress, 'egress:main')}", {"app": "127.0.0.1:0"}, tcp=TCP
        )
        ingress = await start_gateway(nursery, parse_config(idoc), hmac_test_attestation(KEY)[0])
        client = await trio.open_tcp_stream("127.0.0.1", listen_port(ingress, "mapping:app"))
        await client.send_all(b"ping")
        assert await client.receive_some(10) == b"ping"
        client_port = client.socket.getsockname()[1]
        # The client's host is gone: nothing reaches it, nothing comes from it.
        for direction in ("--sport", "--dport"):
            run("iptables", "-A", "INPUT", "-p", "tcp", direction, str(client_port), "-j", "DROP")
        vanished = time.monotonic()
        with trio.fail_after(30):
            while not any(line["side"] == "ingress" for line in lines.lines):  # noqa: ASYNC110
                await trio.sleep(0.05)
        found_after = time.monotonic() - vanished
        client.socket.close()
        nursery.cancel_scope.cancel()
    [line] = [line for line in lines.lines if line["side"] == "ingress"]
    return {"line": line, "seconds": found_after}


if __name__ == "__main__":
    main_as_root(main)
