"""``[tcp] mark`` for real: a capture rule that excludes the gateway's marked traffic.

``tests/test_gateway_tcp.py`` starts this script under ``unshare -rn``.  One netfilter
rule REDIRECTs every TCP connection to the service address 10.77.0.5 to the ingress's
capture port, unless its packets carry the mark 0x235: the way an operator captures a
whole network without listing the gateway's own connections.  The egress listens on
that same address, and the backend too, so the ingress's link and the egress's backend
connection reach them only if the gateways mark them; unmarked, they would be captured
again and loop.  The script prints what the client saw, the access lines, and how many
marked packets netfilter counted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_helpers import KEY, egress_doc, ingress_doc, start_gateway
from netns_support import TunnelLines, main_as_root, run
from netns_transparent import client, echo

from gateway._config import parse_config
from gateway._testing import hmac_test_attestation

SERVICE = "10.77.0.5"
PORT = 5432
EGRESS_PORT = 9443
CAPTURE = 15001
MARK = 0x235


def prepare_namespace() -> None:
    run("ip", "link", "set", "lo", "up")
    run("ip", "addr", "add", f"{SERVICE}/32", "dev", "lo")
    run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", SERVICE,
        "-m", "mark", "!", "--mark", hex(MARK),
        "-j", "REDIRECT", "--to-ports", str(CAPTURE))  # fmt: skip
    # Counts the marked SYNs to the egress and to the backend.
    for port in (EGRESS_PORT, PORT):
        run("iptables", "-A", "OUTPUT", "-p", "tcp", "--syn", "-d", SERVICE,
            "--dport", str(port), "-m", "mark", "--mark", hex(MARK))  # fmt: skip


def marked_syns() -> dict[str, int]:
    listing = subprocess.run(
        ["iptables", "-L", "OUTPUT", "-n", "-v", "-x"],  # noqa: S607 - found on PATH
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts: dict[str, int] = {}
    for line in listing.splitlines():
        fields = line.split()
        if "dpt:" in line and fields[0].isdigit():
            port = next(f for f in fields if f.startswith("dpt:"))[4:]
            counts[port] = int(fields[0])
    return counts


async def main() -> dict[str, Any]:
    prepare_namespace()
    lines = TunnelLines()
    results: dict[str, Any] = {}
    mark: dict[str, Any] = {"tcp": {"mark": MARK}}
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(PORT, host=SERVICE)
        nursery.start_soon(trio.serve_listeners, echo, listeners)
        edoc = egress_doc({"db": PORT}, listen=f"{SERVICE}:{EGRESS_PORT}", **mark)
        edoc["egress"]["listener"][0]["allow"] = [f"{SERVICE}:{PORT}"]
        await start_gateway(nursery, parse_config(edoc), hmac_test_attestation(KEY)[0])
        egress_address = f"{SERVICE}:{EGRESS_PORT}"
        idoc = ingress_doc(egress_address, {}, **mark)
        idoc["ingress"] = {
            "transparent": [
                {"name": "capture", "listen": f"127.0.0.1:{CAPTURE}", "egress": egress_address}
            ]
        }
        await start_gateway(nursery, parse_config(idoc), hmac_test_attestation(KEY)[0])
        results["captured"] = await client("127.0.0.1", SERVICE, PORT)
        await lines.wait_for(2)
        results["tunnels"] = lines.lines
        results["marked_syns"] = marked_syns()
        nursery.cancel_scope.cancel()
    return results


if __name__ == "__main__":
    main_as_root(main)
