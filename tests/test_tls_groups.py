"""Key exchange groups chosen for attested TLS contexts (``groups=``)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from ratls._tls_context import (
    generate_ephemeral_identity,
    key_exchange_groups_settable,
    make_client_context,
    make_server_context,
    set_key_exchange_groups,
)
from ratls._tls_stream import AttestedTLSStream

_CLIENT, _SERVER = generate_ephemeral_identity(), generate_ephemeral_identity()

# The oldest supported cryptography (43) has no groups call in its binding, and
# pyOpenSSL before 25 cannot name the negotiated group; CI runs both.
needs_groups = pytest.mark.skipif(
    not key_exchange_groups_settable(), reason="this cryptography cannot set TLS groups"
)
needs_group_name = pytest.mark.skipif(
    not hasattr(SSL.Connection, "get_group_name"),
    reason="this pyOpenSSL cannot name the negotiated group",
)


def _pair(
    client_groups: list[str] | None, server_groups: list[str] | None
) -> tuple[AttestedTLSStream[trio.abc.Stream], AttestedTLSStream[trio.abc.Stream]]:
    left, right = trio.testing.memory_stream_pair()
    client = make_client_context(*_CLIENT, groups=client_groups)
    server = make_server_context(*_SERVER, groups=server_groups)
    return (
        AttestedTLSStream(left, client, server_side=False),
        AttestedTLSStream(right, server, server_side=True),
    )


def _group(stream: AttestedTLSStream[trio.abc.Stream]) -> str | None:
    return stream.key_exchange_group


async def _handshake(
    client: AttestedTLSStream[trio.abc.Stream], server: AttestedTLSStream[trio.abc.Stream]
) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None, None]

    async def run(i: int, stream: AttestedTLSStream[trio.abc.Stream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            errors[i] = exc
            await stream.aclose()  # as every caller does: the peer then sees the end

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, client)
            nursery.start_soon(run, 1, server)
    return errors


@needs_groups
@needs_group_name
@pytest.mark.parametrize(
    ("groups", "negotiated"), [(["X25519"], "x25519"), (["P-256"], "secp256r1")]
)
async def test_chosen_group_is_negotiated(groups: list[str], negotiated: str) -> None:
    client, server = _pair(groups, groups)
    assert await _handshake(client, server) == [None, None]
    assert _group(client) == _group(server) == negotiated
    await client.send_all(b"ping")
    assert await server.receive_some(4) == b"ping"


async def test_group_needs_the_handshake() -> None:
    client, _ = _pair(None, None)
    with pytest.raises(trio.NeedHandshakeError):
        _group(client)


@needs_groups
@needs_group_name
async def test_server_list_limits_what_the_client_may_use() -> None:
    client, server = _pair(None, ["P-256"])
    assert await _handshake(client, server) == [None, None]
    assert _group(server) == "secp256r1"


@needs_groups
async def test_no_group_in_common_fails_the_handshake() -> None:
    client, server = _pair(["X25519"], ["P-256"])
    client_error, server_error = await _handshake(client, server)
    assert isinstance(server_error, trio.BrokenResourceError)
    # The server's alert reaches the client, which reports it (not a bare end of stream).
    assert isinstance(client_error, trio.BrokenResourceError)
    assert "alert" in str(client_error)
    assert "transport ended" not in str(client_error)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([], "no key exchange group"),
        ([""], "not a key exchange group name"),
        (["X25519:P-256"], "not a key exchange group name"),
        (["X25519\n"], "not a key exchange group name"),
    ],
)
def test_malformed_group_lists_are_refused(groups: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_client_context(*_CLIENT, groups=groups)


@needs_groups
@pytest.mark.parametrize("groups", [["no-such-group"], ["X25519", "no-such-group"]])
async def test_unknown_groups_are_refused_and_leave_no_error_behind(groups: list[str]) -> None:
    with pytest.raises(ValueError, match="OpenSSL refuses"):
        make_client_context(*_CLIENT, groups=groups)
    with pytest.raises(ValueError, match="OpenSSL refuses"):
        set_key_exchange_groups(SSL.Context(SSL.TLS_METHOD), groups)
    # A refusal must not leave a stale OpenSSL error for the next call to report.
    client, server = _pair(["X25519"], ["X25519"])
    assert await _handshake(client, server) == [None, None]


@pytest.mark.skipif(key_exchange_groups_settable(), reason="this cryptography can set groups")
def test_without_the_binding_groups_are_refused_plainly() -> None:
    with pytest.raises(NotImplementedError, match="cannot choose key exchange groups"):
        make_client_context(*_CLIENT, groups=["X25519"])


async def test_group_is_named_when_pyopenssl_can() -> None:
    client, server = _pair(None, None)
    assert await _handshake(client, server) == [None, None]
    name = _group(client)
    if hasattr(SSL.Connection, "get_group_name"):
        assert name
        assert name == _group(server)
    else:
        assert name is None
