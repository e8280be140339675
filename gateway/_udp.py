"""UDP through attested tunnels: ``[[ingress.udp]]`` flows and the egress's UDP backends.

UDP has no connections, so the ingress makes them: each client address and port is a
*flow*, with its own attested link (link version 2, a datagram target) and its own
access line.  Each datagram travels as one DATA frame and leaves the far side as one
datagram, so boundaries are kept.  UDP has no FIN either: a flow ends after
``timeouts.udp_idle`` seconds without a datagram in either direction, and then ends
cleanly, with EOF both ways over the link.

Both ends are adapters that make datagrams look like a half-closeable stream to the
tunnel (:class:`~gateway._tunnel.Tunnel`), which then pumps, counts, re-attests and
logs them as it does bytes:

* :class:`~gateway._datagram.FlowStream` on the ingress: fed by the listener's one
  socket (a bounded queue per flow; a datagram that finds it full is dropped and
  counted, as a congested network would), answering with ``sendto`` the client's
  address.  Reading from it
  returns end of file once the flow has been quiet for ``udp_idle``;
* :class:`~gateway._datagram.ConnectedDatagramStream` on the egress: a UDP socket connected to the
  backend.  A backend that is not listening (ICMP port unreachable) loses datagrams, as
  UDP would, and the flow stays; the egress's end of file comes when the ingress's does.

Empty datagrams cannot be carried (a DATA frame has at least one byte, and an empty
read is end of file): both sides drop them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NoReturn, final

import trio

from ._datagram import MAX_DATAGRAM, DatagramListener, FlowStream
from ._ingress import IngressFailure, open_link, run_opened_tunnel
from ._runtime import describe_peer, log_event

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import Endpoint, UdpRule
    from ._link import Target
    from ._runtime import Runtime

__all__ = ["READS_PER_TURN", "DatagramReader", "bind_udp", "run_flow", "serve_udp"]

#: Datagrams the listener reads in a row before it lets other tasks run.
READS_PER_TURN: Final = 64


async def _bind(runtime: Runtime, rule: UdpRule) -> socket.socket:
    """The rule's UDP socket, bound and non-blocking (used without trio's wrapper)."""
    endpoint = rule.listen
    infos = await trio.socket.getaddrinfo(
        endpoint.host, endpoint.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )
    family, _kind, _proto, _name, address = infos[0]
    return bind_udp(family, address, reuse_port=runtime.config.process.reuse_port)


def bind_udp(family: int, address: tuple[Any, ...], *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to ``address`` (IPv6 sockets take IPv6 only).

    Used without trio's socket wrapper: a relay calls it once per datagram.
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_udp(
    runtime: Runtime,
    rule: UdpRule,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[DatagramListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve one UDP rule forever: a flow, and a tunnel, per client address.

    Raises:
        OSError: the address cannot be bound.
    """
    sock = await _bind(runtime, rule)
    flows: dict[Any, FlowStream] = {}
    try:
        log_event("listening", side="ingress", mode="udp", rule=rule.name, address=str(rule.listen))
        async with trio.open_nursery() as own:
            nursery = handler_nursery if handler_nursery is not None else own
            task_status.started([DatagramListener(sock)])
            try:
                await _receive_datagrams(runtime, rule, sock, flows, nursery)
            finally:
                # Stopping (a drain): no datagram will come, so end every flow now.
                for flow in flows.values():
                    flow.end()
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()
    raise AssertionError("unreachable")  # pragma: no cover - the loop ends only by raising


@final
class DatagramReader:
    """Reads a listener's datagrams: whatever has arrived before waiting again (a burst
    costs one wake-up), letting other tasks run every :data:`READS_PER_TURN` datagrams
    so that a flood cannot keep the event loop (and the tunnels that drain the flows)."""

    __slots__ = ("_reads", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reads = 0

    async def receive(self) -> tuple[bytes, Any]:
        """The next datagram and its source address."""
        sock = self._sock
        while True:
            self._reads += 1
            if self._reads >= READS_PER_TURN:
                self._reads = 0
                await trio.lowlevel.checkpoint()
            try:
                return sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                self._reads = 0
                await trio.lowlevel.wait_readable(sock)
            except OSError:
                pass  # an ICMP error for an earlier answer: nothing to do


async def _receive_datagrams(
    runtime: Runtime,
    rule: UdpRule,
    sock: socket.socket,
    flows: dict[Any, FlowStream],
    nursery: trio.Nursery,
) -> NoReturn:
    """Hand each datagram to its flow, starting a flow (and its tunnel) for a new client.

    Reads whatever has arrived before waiting again: a burst costs one wake-up.  Every
    :data:`READS_PER_TURN` datagrams it lets the other tasks run, so that a flood cannot
    keep the event loop (and the tunnels that drain the flows) to itself.
    """
    reader = DatagramReader(sock)
    while True:
        data, client = await reader.receive()
        if not data:
            continue  # an empty datagram cannot be carried
        flow = flows.get(client)
        if flow is None:
            if runtime.draining:
                continue
            if len(flows) >= runtime.config.limits.max_tunnels:
                # Refused flows hold no tunnel slot but do hold memory: a flood of new
                # (perhaps spoofed) source addresses must not grow this without bound.
                runtime.metrics.udp_dropped.inc(rule=rule.name)
                continue
            idle = runtime.config.timeouts.udp_idle
            flow = flows[client] = FlowStream(sock, client, idle=idle)
            nursery.start_soon(
                run_flow,
                runtime,
                rule.name,
                "udp",
                flow,
                flows,
                client,
                partial(_destination, runtime, rule),
            )
        if not flow.deliver(data):
            runtime.metrics.udp_dropped.inc(rule=rule.name)


def _destination(runtime: Runtime, rule: UdpRule) -> tuple[Endpoint, Target]:
    current = runtime.current_rule(rule)  # after a reload: the new egress and target
    return current.egress, current.target


async def run_flow(
    runtime: Runtime,
    rule: str,
    mode: str,
    flow: FlowStream,
    flows: dict[Any, FlowStream],
    key: object,
    destination: Callable[[], tuple[Endpoint, Target]],
) -> None:
    """One flow: admission, its tunnel, its access line; never raises for flow failures.

    A refused flow (by admission or by the egress) is logged at once and then drops the
    client's datagrams until it has been quiet for ``udp_idle``, holding no tunnel slot:
    a refusal costs one attempt per quiet period, not one handshake per datagram.

    Args:
        runtime: the gateway's shared state.
        rule: the rule's name (logs, metrics).
        mode: ``udp`` or ``socks5-udp`` (logs).
        flow: the flow.
        flows: the table the flow is in, under ``key``; it is removed when it ends.
        key: the flow's key in ``flows``.
        destination: the egress and the target, asked when the tunnel opens.
    """
    try:
        if await _tunnel_flow(runtime, rule, mode, flow, destination):
            while await flow.receive_some():  # refused: drop until quiet for udp_idle
                runtime.metrics.udp_dropped.inc(rule=rule)
    finally:
        if flows.get(key) is flow:
            del flows[key]
        with trio.CancelScope(shield=True), contextlib.suppress(trio.ClosedResourceError):
            await flow.aclose()


async def _tunnel_flow(
    runtime: Runtime,
    rule: str,
    mode: str,
    flow: FlowStream,
    destination: Callable[[], tuple[Endpoint, Target]],
) -> bool:
    """Admission, the flow's tunnel and its access line; True if the flow was refused."""
    client = describe_peer(flow.client)
    if runtime.admit_tunnel("ingress", rule, client, mode=mode) is not None:
        return True
    record = runtime.begin_tunnel("ingress", rule, client)
    started = trio.current_time()
    fields: dict[str, Any] = {"result": "ok"}
    refused = False
    try:
        egress, target = destination()
        record.target = str(target)
        opened = await open_link(runtime, egress, target, client)
        if isinstance(opened, IngressFailure):
            fields.update(result=opened.result, detail=opened.detail)
            refused = True
        else:
            await run_opened_tunnel(runtime, opened, flow, record, fields)
    except Exception as exc:  # a bug must not take the listener down
        fields.update(result="internal-error", detail=f"{type(exc).__name__}: {exc}")
        log_event("internal error", level=logging.ERROR, error=repr(exc))
    except BaseException:
        fields.update(result="shutting-down", detail="flow cut at shutdown")
        raise
    finally:
        runtime.finish_tunnel(record, started, {**fields, "dropped": flow.dropped}, mode=mode)
    return refused
