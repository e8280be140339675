"""The egress gateway: attested listener in front of the confidential backends.

For every connection accepted on an egress listener, in its own task (never inside
``accept``, so a slow peer stalls nobody else):

1. admission control (concurrent tunnels, per-source rate); over the limit the TCP
   connection is reset at once, before any TLS work;
2. under ``fail_after(handshake timeout)``: the TLS handshake, the mutual attestation
   exchange, and the ingress's OPEN;
3. the target is checked against this listener's routes and allowlist; a refusal is
   answered with REFUSED and a reason code;
4. only then is the backend connection opened (under ``fail_after(connect timeout)``),
   an optional PROXY v2 header with the verified claims written, and OPENED sent;
5. the tunnel runs until both directions end, and one access line is logged.

So no byte reaches a backend before the peer's attestation has passed and the target
was found allowed: fail closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, final

import trio

from ratls._errors import LocalProtocolError, RatlsError, RemoteProtocolError
from ratls._exchange import AttestationRefused
from ratls._tls_stream import AttestedTLSStream

from ._attestation import peer_claims, peer_summary
from ._datagram import connect_udp
from ._direct_socket import direct_if_socket
from ._http_inject import HeaderInjector, injecting_stream
from ._http_proxy import attestation_headers
from ._link import (
    REUSE_LINK_VERSION,
    SUPPORTED_VERSIONS,
    AddressTarget,
    LinkClosed,
    LinkReason,
    LinkRole,
    LinkState,
    Open,
    Opened,
    Ready,
    Refused,
    RouteTarget,
    UnsupportedLinkVersion,
    reason_name,
)
from ._proxy_protocol import build_proxy_header, claims_tlvs
from ._rewriting import RewritingStream
from ._runtime import (
    apply_tcp_settings,
    connect_endpoint,
    connect_error_kind,
    connect_tcp,
    describe_peer,
    log_event,
    open_endpoint_listeners,
)
from ._tunnel import (
    LinkChannel,
    TunnelAttestation,
    abort_stream,
    close_link,
    is_cancellation,
    refusal_text,
)

if TYPE_CHECKING:
    from ._attestation import GatewayIdentity
    from ._config import EgressListener, EgressRoute, Endpoint
    from ._runtime import Runtime, TunnelRecord

__all__ = ["EgressDecision", "decide_target", "serve_egress"]


@final
class EgressDecision:
    """Where an allowed OPEN leads.

    Attributes:
        backend: the endpoint to connect to (None: connect to the address target).
        target: the address target, when the OPEN named one.
        route: the route, when the target is (or equals) a configured route.
    """

    __slots__ = ("backend", "route", "target")

    def __init__(
        self, *, backend: Endpoint | None, target: AddressTarget | None, route: EgressRoute | None
    ) -> None:
        self.backend = backend
        self.target = target
        self.route = route


def decide_target(
    runtime: Runtime, listener: EgressListener, target: AddressTarget | RouteTarget
) -> EgressDecision | Refused:
    """Apply this listener's routes and allowlist to an OPEN target.

    Route targets must be among the listener's routes.  Address targets are allowed when
    they equal the TCP backend of one of the listener's routes (that route's options then
    apply) or match one of its allow patterns.  Everything else is refused.

    Returns:
        The decision, or the REFUSED to send.
    """
    protocol = "udp" if target.datagram else "tcp"
    routes = {name: runtime.config.routes[name] for name in listener.routes}
    if isinstance(target, RouteTarget):
        route = routes.get(target.name)
        if route is None:
            return Refused(
                code=LinkReason.UNKNOWN_ROUTE,
                reason=f"no route {target.name!r} on this listener",
            )
        if route.protocol != protocol:
            return Refused(
                code=LinkReason.NOT_ALLOWED,
                reason=f"route {target.name!r} carries {route.protocol.upper()}, "
                f"not {protocol.upper()}",
            )
        return EgressDecision(backend=route.backend, target=None, route=route)
    for route in routes.values():
        b = route.backend
        if (
            route.protocol == protocol
            and b.kind == "tcp"
            and b.port == target.port
            and _same_host(b.host, target.host)
        ):
            return EgressDecision(backend=route.backend, target=None, route=route)
    allow = listener.allow_udp if target.datagram else listener.allow
    if any(rule.matches(target) for rule in allow):
        return EgressDecision(backend=None, target=target, route=None)
    return Refused(code=LinkReason.NOT_ALLOWED, reason=f"{target} is not allowed")


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower().rstrip(".") == b.lower().rstrip(".")


#: Access-log results that are no failure: a clean tunnel, and a link an ingress made
#: ahead of need and closed unused (``[prewarm]``).
# What sending READY can meet when the ingress went away meanwhile.
_SEND_FAILURES: Final = (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError)


async def serve_egress(
    runtime: Runtime,
    listener: EgressListener,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve one egress listener forever.

    Args:
        runtime: the gateway's shared state.
        listener: which listener.
        handler_nursery: where connection tasks run (so that accepting can stop while
            tunnels drain); a private nursery by default.
        task_status: receives the bound listeners (so callers learn ephemeral ports).

    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await open_endpoint_listeners(
        listener.listen, reuse_port=runtime.config.process.reuse_port
    )
    log_event("listening", side="egress", rule=listener.name, address=str(listener.listen))

    async def handler(stream: trio.SocketStream) -> None:
        await handle_egress_connection(runtime, listener, stream)

    await trio.serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )
    raise AssertionError("unreachable")  # pragma: no cover - serve_listeners never returns


@final
@dataclass(frozen=True, slots=True)
class _KeptLink:
    """An attested link whose tunnel ended cleanly with READY: it waits for another OPEN."""

    stream: AttestedTLSStream[trio.abc.Stream]
    verified_at: float
    identity: GatewayIdentity


async def handle_egress_connection(
    runtime: Runtime, listener: EgressListener, raw: trio.SocketStream
) -> None:
    """Run one accepted connection to its end; never raises (errors are logged).

    A link whose ingress asked for reuse (link version 3) carries one tunnel after
    another: each is admitted, counted and logged as its own tunnel.
    """
    client = describe_peer(_peername(raw))
    kept: _KeptLink | None = None
    while True:
        kept = await _handle_tunnel(runtime, listener, raw, client, kept)
        if kept is None:
            return


async def _handle_tunnel(
    runtime: Runtime,
    listener: EgressListener,
    raw: trio.SocketStream,
    client: str,
    kept: _KeptLink | None,
) -> _KeptLink | None:
    """One tunnel of a connection: the first (with the handshake), or one more on a kept
    link.  Returns the link when it may carry another tunnel."""
    refusal = runtime.admit_tunnel("egress", listener.name, client)
    if refusal is not None:
        if kept is not None:
            # The ingress's OPEN on this link meets a closed link and it opens a new one.
            with trio.CancelScope(shield=True):
                await close_link(kept.stream, graceful=True)
        else:
            await abort_stream(raw)
        return None
    if kept is None:
        apply_tcp_settings(raw, runtime.config.tcp)
    record = runtime.begin_tunnel("egress", listener.name, client)
    started = trio.current_time()
    fields: dict[str, Any] = {"result": "ok"}
    if kept is not None:
        fields["reused_link"] = True
    next_link: _KeptLink | None = None
    try:
        next_link = await _serve(runtime, listener, raw, record, fields, kept)
    except Exception as exc:  # a bug must not take the listener down
        fields.update(result="internal-error", detail=f"{type(exc).__name__}: {exc}")
        log_event("internal error", level=logging.ERROR, exc_info_text=repr(exc))
    finally:
        runtime.finish_tunnel(record, started, fields)
    return next_link


def _peername(stream: trio.SocketStream) -> object:
    try:
        return stream.socket.getpeername()
    except OSError:
        return None


async def _serve(
    runtime: Runtime,
    listener: EgressListener,
    raw: trio.SocketStream,
    record: TunnelRecord,
    fields: dict[str, Any],
    kept: _KeptLink | None,
) -> _KeptLink | None:
    # The identity the link was attested under (a kept link keeps its first one).
    identity = runtime.identity if kept is None else kept.identity
    timeouts = runtime.config.timeouts
    stream: AttestedTLSStream[trio.abc.Stream]
    if kept is None:
        stream = AttestedTLSStream(
            direct_if_socket(raw),
            identity.server_context,
            server_side=True,
            attestation=identity.attestation,
        )
    else:
        stream = kept.stream
    channel = LinkChannel(stream, LinkRole.EGRESS, buffer_size=runtime.config.limits.buffer_size)
    backend: trio.SocketStream | None = None
    reusable: _KeptLink | None = None
    try:
        started = trio.current_time()
        try:
            if kept is None:
                with trio.fail_after(timeouts.handshake):
                    await stream.do_handshake()
                verified_at = trio.current_time()
                runtime.metrics.handshake_seconds.observe(verified_at - started, side="egress")
            else:
                verified_at = kept.verified_at
            record.peer = peer_summary(stream.peer_attestation)
            # An ingress may make links ahead of need, or keep them after a tunnel
            # ([prewarm]): OPEN can come later.  A drain ends the wait at once.
            with trio.move_on_after(timeouts.open_wait) as waiting:
                runtime.open_waits.add(waiting)
                try:
                    if runtime.draining:
                        waiting.cancel()
                    event = await channel.receive()
                finally:
                    runtime.open_waits.discard(waiting)
            if waiting.cancelled_caught:
                if runtime.draining:
                    fields.update(result="unused", detail="closed unused at shutdown")
                else:
                    detail = f"no OPEN in {timeouts.open_wait:g} s"
                    fields.update(result="open-timeout", detail=detail)
                return None
        except trio.TooSlowError:
            fields.update(result="handshake-timeout", detail=f"{timeouts.handshake:g} s")
            return None
        except AttestationRefused as exc:
            fields.update(result="attestation-failed", detail=f"peer refused us: {exc.reason}")
            return None
        except UnsupportedLinkVersion as exc:
            supported = ",".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
            await _refuse(
                channel,
                Refused(code=LinkReason.UNSUPPORTED_VERSION, reason=f"supported: {supported}"),
                fields,
                detail=str(exc),
            )
            return None
        except RemoteProtocolError as exc:
            fields.update(result="protocol-error", detail=str(exc))
            return None
        except RatlsError as exc:
            # Our verifier refused the ingress (the stream already told it why).
            fields.update(result="attestation-failed", detail=refusal_text(exc))
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            fields.update(result="handshake-failed", detail=str(exc) or type(exc).__name__)
            return None
        if isinstance(event, LinkClosed):
            # The ingress closed an attested link it made ahead of need (or kept after a
            # tunnel) without using it.
            fields.update(result="unused")
            return None
        if not isinstance(event, Open):
            fields.update(result="protocol-error", detail=f"expected OPEN, got {event!r}")
            return None
        if identity is not runtime.identity:
            # The configuration was reloaded (or the identity rotated) while this link
            # waited for OPEN: it was attested under the old policy.  Close it unanswered;
            # an ingress meeting that on a link it made ahead of need (or kept) opens a
            # new one, attested under the configuration in force now.
            fields.update(
                result="unused",
                detail="attested before the configuration was reloaded; closed at OPEN",
            )
            return None
        record.target = str(event.target)
        fields["ingress_client"] = event.client
        current = runtime.egress_listener(listener.name) or listener
        decision = decide_target(runtime, current, event.target)
        if isinstance(decision, Refused):
            await _refuse(channel, decision, fields)
            return None
        rules = (*current.require, *(decision.route.require if decision.route else ()))
        if rules:
            claims = peer_claims(stream.peer_attestation)
            failed = [rule.path for rule in rules if not rule.admits(claims)]
            if failed:
                # Name the claim, not the values this route accepts.
                await _refuse(
                    channel,
                    Refused(
                        code=LinkReason.NOT_ALLOWED,
                        reason=f"claim {failed[0]} is not admitted for {event.target}",
                    ),
                    fields,
                )
                return None
        if event.target.datagram:
            attestation = _tunnel_attestation(identity, stream, verified_at)
            await _serve_datagrams(runtime, channel, event, decision, record, fields, attestation)
            return None
        try:
            with trio.fail_after(timeouts.connect):
                mark = runtime.config.tcp.mark
                if decision.backend is not None:
                    backend = await connect_endpoint(decision.backend, mark=mark)
                else:
                    assert decision.target is not None  # noqa: S101 - decide_target's contract
                    target = decision.target
                    backend = await connect_tcp(target.host, target.port, mark=mark)
        except trio.TooSlowError:
            await _refuse(
                channel,
                Refused(
                    code=LinkReason.BACKEND_TIMEOUT,
                    reason=f"backend did not answer within {timeouts.connect:g} s",
                ),
                fields,
            )
            return None
        except OSError as exc:
            kind = connect_error_kind(exc)
            code = {
                "refused": LinkReason.BACKEND_REFUSED,
                "unreachable": LinkReason.BACKEND_UNREACHABLE,
            }.get(kind, LinkReason.BACKEND_UNREACHABLE)
            await _refuse(channel, Refused(code=code, reason=f"backend {kind}"), fields)
            return None
        apply_tcp_settings(backend, runtime.config.tcp)
        route = decision.route
        if route is not None and route.proxy_protocol:
            header = build_proxy_header(
                source=_address_pair(event.client),
                destination=_address_pair(_sockname(backend)),
                tlvs=claims_tlvs(
                    peer_claims(stream.peer_attestation), unique_id=f"tunnel-{record.id}"
                ),
            )
            try:
                await backend.send_all(header)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await _refuse(
                    channel,
                    Refused(code=LinkReason.BACKEND_RESET, reason="backend closed at once"),
                    fields,
                )
                return None
        if not await _send_opened(channel, event, fields):
            return None
        # verified_at: a link made ahead of need ([prewarm]) may have waited since.
        attestation = _tunnel_attestation(identity, stream, verified_at)
        local: trio.abc.Stream = backend
        if route is not None and route.http_headers:
            # The ingress side's verified claims go into every request head.
            injected = attestation_headers(stream.peer_attestation)
            local = injecting_stream(backend, HeaderInjector(injected))
        outcome = await runtime.run_tunnel(record, fields, channel, local, attestation=attestation)
        if isinstance(local, RewritingStream) and local.failure is not None:
            fields.update(result="bad-request", detail=local.failure)
        if outcome.aborted:
            await abort_stream(backend)
            backend = None
        elif (
            fields.get("result") == "ok"
            and channel.conn.version >= REUSE_LINK_VERSION
            and channel.conn.state is LinkState.DONE
            and not runtime.draining
        ):
            # Every byte reached the backend and both ways ended: say so, and keep the
            # link for the ingress's next OPEN (it asked for that with version 3).
            with contextlib.suppress(*_SEND_FAILURES):
                await channel.send(Ready())
                reusable = _KeptLink(stream, verified_at, identity)
    except BaseException as exc:
        if is_cancellation(exc):
            fields.update(result="shutting-down", detail="tunnel cut at shutdown")
            if backend is not None:
                with trio.CancelScope(shield=True):
                    await abort_stream(backend)
                backend = None
        raise
    finally:
        with trio.CancelScope(shield=True):
            if backend is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await backend.aclose()
            if reusable is None:
                await close_link(stream, graceful=fields.get("result") != "link-lost")
    return reusable


async def _serve_datagrams(
    runtime: Runtime,
    channel: LinkChannel,
    event: Open,
    decision: EgressDecision,
    record: TunnelRecord,
    fields: dict[str, Any],
    attestation: TunnelAttestation | None,
) -> None:
    """A UDP flow: a socket connected to the backend, then datagrams both ways."""
    if decision.backend is not None:
        host, port = decision.backend.host, decision.backend.port
    else:
        assert decision.target is not None  # noqa: S101 - decide_target's contract
        host, port = decision.target.host, decision.target.port
    try:
        backend = await connect_udp(host, port, mark=runtime.config.tcp.mark)
    except OSError as exc:
        kind = connect_error_kind(exc)
        await _refuse(
            channel,
            Refused(code=LinkReason.BACKEND_UNREACHABLE, reason=f"backend {kind}"),
            fields,
        )
        return
    async with backend:
        if await _send_opened(channel, event, fields):
            await runtime.run_tunnel(record, fields, channel, backend, attestation=attestation)


async def _send_opened(channel: LinkChannel, event: Open, fields: dict[str, Any]) -> bool:
    """Answer OPEN with OPENED (in its version); False if the ingress has gone."""
    try:
        await channel.send(Opened(version=event.version))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        fields.update(result="link-lost", detail="ingress left before OPENED")
        return False
    return True


def _tunnel_attestation(
    identity: GatewayIdentity, stream: AttestedTLSStream[trio.abc.Stream], verified_at: float
) -> TunnelAttestation | None:
    """What re-attestation of this tunnel needs: our identity, the ingress's certificate."""
    peer_cert = stream.peer_certificate
    if peer_cert is None:
        return None
    return TunnelAttestation(
        config=identity.attestation,
        own_certificate=identity.certificate,
        peer_certificate=peer_cert,
        peer_result=stream.peer_attestation,
        verified_at=verified_at,
    )


async def _refuse(
    channel: LinkChannel, refusal: Refused, fields: dict[str, Any], *, detail: str = ""
) -> None:
    """Record why, and tell the ingress (best effort, bounded in time)."""
    fields.update(result=reason_name(refusal.code), detail=detail or refusal.reason)
    with (
        trio.move_on_after(2.0),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await channel.send(refusal)


def _sockname(stream: trio.SocketStream) -> str:
    try:
        return describe_peer(stream.socket.getsockname())
    except OSError:
        return "unknown"


def _address_pair(text: str) -> tuple[str, int] | None:
    """``"1.2.3.4:5"`` / ``"[::1]:5"`` -> ``("1.2.3.4", 5)``; None if not an IP address."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host)
        return host, int(port)
    except ValueError:
        return None
