"""A TLS failure sends OpenSSL's alert, so the peer learns why instead of seeing an EOF."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from der_surgery import self_signed
from OpenSSL import SSL

from ratls._errors import CertificateChainError
from ratls._tls_context import (
    generate_ephemeral_identity,
    make_client_context,
    make_server_context,
)
from ratls._tls_stream import AttestedTLSStream

_SERVER = generate_ephemeral_identity()


async def test_refused_client_certificate_reaches_the_client_as_an_alert() -> None:
    left, right = trio.testing.memory_stream_pair()
    client_context = SSL.Context(SSL.TLS_METHOD)
    client_context.set_min_proto_version(SSL.TLS1_3_VERSION)
    key, cert = self_signed("expired", valid_from_hours=-48, valid_to_hours=-24)
    client_context.use_privatekey(key)
    client_context.use_certificate(cert)
    client = AttestedTLSStream(left, client_context, server_side=False)
    server = AttestedTLSStream(right, make_server_context(*_SERVER), server_side=True)

    async def serve() -> None:
        with pytest.raises(CertificateChainError):
            await server.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        # A TLS 1.3 client finishes before the server judges its certificate...
        await client.do_handshake()
        # ...and learns the verdict from the server's alert on its next read.
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError, match="alert") as info:
            await client.receive_some()
        assert "transport ended" not in str(info.value)


async def test_alert_is_given_up_when_the_peer_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A peer that sent its ClientHello and then never reads: on a lockstep transport the
    # alert cannot leave, and the failing side must not hang on it.  The hello offers
    # TLS 1.2 only, which an attested server refuses (with a protocol_version alert).
    ours, theirs = trio.testing.lockstep_stream_pair()
    tls12 = make_client_context(
        *generate_ephemeral_identity(),
        attested=False,
        minimum_version=SSL.TLS1_2_VERSION,
        maximum_version=SSL.TLS1_2_VERSION,
    )
    hello_maker = SSL.Connection(tls12, None)
    hello_maker.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        hello_maker.do_handshake()
    client_hello = hello_maker.bio_read(65536)
    server = AttestedTLSStream(ours, make_server_context(*_SERVER), server_side=True)

    async def peer() -> None:
        await theirs.send_all(client_hello)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer)
        started = trio.current_time()
        with trio.fail_after(30), pytest.raises(trio.BrokenResourceError, match="protocol"):
            await server.do_handshake()
        assert trio.current_time() - started >= 1.0
        nursery.cancel_scope.cancel()
