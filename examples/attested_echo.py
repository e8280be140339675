"""Mutual attested TLS on the simulator: an echo server and a client, both verified.

Run it with ``python examples/attested_echo.py``.  It starts an attested echo server on
127.0.0.1 (a free port), connects to it, and prints what each side verified about the
other before a single application byte moved: the simulated SEV-SNP report's claims,
whose REPORT_DATA binds the peer's TLS key and this very connection.  Then it exits.

The policy is ``examples/policy.toml``: it accepts the simulated guest's launch digest and,
because it says so in plain words, the simulator's roots.  Real deployments use
``attester="snp"`` (or ``"snp+vtpm"``) and a policy without ``simulated_hardware``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ratls import AttestationResult, load_policy
from ratls._api import open_attested_stream, serve_attested

if TYPE_CHECKING:
    from ratls._tls_stream import AttestedTLSStream

POLICY = load_policy(Path(__file__).resolve().parent / "policy.toml")


async def echo(stream: AttestedTLSStream[trio.SocketStream]) -> None:
    """Server side: runs only after both sides' evidence verified."""
    peer = stream.peer_attestation
    if not isinstance(peer, AttestationResult):
        raise SystemExit("the server must not run its handler for an unverified client")
    print(f"server: client verified: {peer.summary()}")
    while data := await stream.receive_some():
        await stream.send_all(data)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = partial(serve_attested, echo, 0, attester="sim", policy=POLICY)
        listeners = await nursery.start(server)
        port = listeners[0].socket.getsockname()[1]
        print(f"server: listening on 127.0.0.1:{port} (simulated SEV-SNP)")

        stream = await open_attested_stream("127.0.0.1", port, attester="sim", policy=POLICY)
        peer = stream.peer_attestation
        if not isinstance(peer, AttestationResult):
            raise SystemExit("open_attested_stream returns only verified streams")
        print(f"client: server verified: {peer.summary()}")
        print("client: the server's verified claims:")
        print(json.dumps(peer.claims(), indent=2, sort_keys=True, default=str))

        await stream.send_all(b"hello, attested world")
        print(f"client: echoed back: {(await stream.receive_some()).decode()}")
        await stream.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
