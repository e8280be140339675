"""SOCKS5 UDP ASSOCIATE on the ingress (RFC 1928 section 7), over attested UDP flows.

A client that asked for UDP ASSOCIATE on a rule with ``udp = true`` gets a UDP relay
socket of its own, bound to the address its control connection reached, and the reply
names it.  Each datagram it sends there starts with ``RSV FRAG ATYP DST.ADDR DST.PORT``;
every destination is a UDP flow (link version 2) through its own attested tunnel to the
egress, which decides with its ``allow_udp`` patterns what may be reached (names are
resolved there, as for CONNECT).  Answers come back with the same header naming the
destination.  The association, and every flow of it, ends when the control connection
closes, as RFC 1928 requires.

What the relay accepts: datagrams from the control connection's IP address only (RFC
1928: "MUST drop any datagrams arriving from any source IP address other than the one
recorded for the particular association"), and from the port the request named if it
named one; otherwise the first datagram's port is the client's from then on.  Fragments
(FRAG other than 0) and malformed headers are dropped and counted in
``ratls_gateway_udp_dropped_total``, as are datagrams beyond a full flow queue.  Flows
per association are bounded by ``limits.max_tunnels``; each flow is admitted, counted and
logged (``mode="socks5-udp"``) like any tunnel.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import trio

from ._datagram import FlowStream
from ._socks import SocksError, SocksReply, build_reply, parse_udp_datagram, udp_header
from ._udp import DatagramReader, bind_udp, run_flow

if TYPE_CHECKING:
    import socket

    from ._config import Endpoint, Socks5Rule
    from ._link import AddressTarget, Target
    from ._runtime import Runtime
    from ._socks import SocksRequest

__all__ = ["run_udp_association"]

_MODE: Final = "socks5-udp"


def _relay_socket(control: trio.SocketStream) -> socket.socket:
    """A UDP socket on the address the client's control connection reached, any port."""
    return bind_udp(control.socket.family, (control.socket.getsockname()[0], 0))


async def run_udp_association(
    runtime: Runtime,
    rule: Socks5Rule,
    control: trio.SocketStream,
    request: SocksRequest,
    fields: dict[str, Any],
) -> None:
    """Serve one UDP ASSOCIATE until its control connection closes.

    Args:
        runtime: the gateway's shared state.
        rule: the SOCKS5 rule (``udp`` is on).
        control: the client's TCP connection, after the request was read.
        request: the UDP ASSOCIATE request (its address: where the client will send
            from, or zeros for "not known yet").
        fields: the control connection's access-line fields.
    """
    try:
        sock = _relay_socket(control)
    except OSError as exc:
        fields.update(result="relay-failed", detail=f"UDP relay socket: {exc}")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await control.send_all(build_reply(SocksReply.GENERAL_FAILURE))
        return
    flows: dict[AddressTarget, FlowStream] = {}
    try:
        bound = sock.getsockname()
        try:
            await control.send_all(build_reply(SocksReply.SUCCEEDED, (bound[0], bound[1])))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            fields.update(result="client-reset")
            return
        fields["relay"] = (
            f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        )
        peer_ip = control.socket.getpeername()[0]
        async with trio.open_nursery() as flow_tasks:
            async with trio.open_nursery() as relay:
                relay.start_soon(
                    _relay, runtime, rule, sock, (peer_ip, request.port), flows, flow_tasks
                )
                await _until_closed(control)
                relay.cancel_scope.cancel()
            # The control connection closed: every flow ends (its tunnel sends EOF).
            for flow in flows.values():
                flow.end()
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def _until_closed(control: trio.SocketStream) -> None:
    """Wait for the control connection to end (it carries nothing more; bytes are ignored)."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await control.receive_some(4096):
            pass


def _destination(egress: Endpoint, target: AddressTarget) -> tuple[Endpoint, Target]:
    return egress, target


async def _relay(
    runtime: Runtime,
    rule: Socks5Rule,
    sock: socket.socket,
    expected: tuple[str, int],
    flows: dict[AddressTarget, FlowStream],
    flow_tasks: trio.Nursery,
) -> None:
    """Hand each client datagram to the flow of its destination (see the module docstring)."""
    peer_ip, port = expected
    client: tuple[Any, ...] | None = None
    dropped = runtime.metrics.udp_dropped
    reader = DatagramReader(sock)
    while True:
        data, source = await reader.receive()
        if source[0] != peer_ip or (port and source[1] != port):
            dropped.inc(rule=rule.name)  # not the association's client
            continue
        if client is None:
            client = source
        elif source[:2] != client[:2]:
            dropped.inc(rule=rule.name)  # another port of the client's host
            continue
        try:
            target, payload = parse_udp_datagram(data)
        except SocksError:
            dropped.inc(rule=rule.name)  # a fragment or a malformed header
            continue
        if not payload:
            continue  # an empty datagram cannot be carried
        flow = flows.get(target)
        if flow is None:
            if runtime.draining or len(flows) >= runtime.config.limits.max_tunnels:
                dropped.inc(rule=rule.name)
                continue
            idle = runtime.config.timeouts.udp_idle
            flow = flows[target] = FlowStream(
                sock, client, idle=idle, reply_prefix=udp_header(target)
            )
            destination = partial(_destination, runtime.current_rule(rule).egress, target)
            flow_tasks.start_soon(
                run_flow, runtime, rule.name, _MODE, flow, flows, target, destination
            )
        if not flow.deliver(payload):
            dropped.inc(rule=rule.name)
