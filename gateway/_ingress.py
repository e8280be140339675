"""The ingress gateway: client-side listeners that open attested tunnels to an egress.

Three ways in, one way through.  A port mapping sends every client connection to a
fixed target; an HTTP CONNECT proxy and a SOCKS5 proxy take the target from each
client's request.  Then, in every mode (:func:`open_link`):

1. connect to the egress (``fail_after(connect timeout)``);
2. TLS handshake plus mutual attestation (``fail_after(handshake timeout)``): the egress
   proves it is a confidential VM running what our policy admits, and we prove ourselves;
3. OPEN the target and wait for OPENED or REFUSED.

The client's bytes are read only after OPENED (for the proxies, only after their reply),
so nothing leaves the client network before the egress passed attestation.  A refused
client learns why: an HTTP status with a reason body, a SOCKS5 reply code, or, for a raw
port mapping (where TCP has no words), a TCP RST plus the reason in the access log.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, NoReturn, final

import trio

from ratls._errors import RatlsError, RemoteProtocolError
from ratls._exchange import AttestationRefused
from ratls._tls_stream import AttestedTLSStream

from ._direct_socket import direct_if_socket
from ._http_connect import (
    build_response,
    status_for,
)
from ._link import (
    AddressTarget,
    LinkClosed,
    LinkReason,
    LinkRole,
    Open,
    Opened,
    Refused,
    RouteTarget,
    open_version,
    reason_name,
)
from ._reader import StreamReader
from ._runtime import (
    apply_tcp_settings,
    connect_endpoint,
    connect_error_kind,
    describe_peer,
    log_event,
    open_endpoint_listeners,
)
from ._socks import SocksCommand, SocksError, SocksReply, build_reply, negotiate, reply_for
from ._transparent import NotRedirected, original_destination, tproxy_destination
from ._tunnel import (
    LinkChannel,
    TunnelAttestation,
    abort_stream,
    close_link,
    is_cancellation,
    refusal_text,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._attestation import GatewayIdentity
    from ._config import Endpoint, MappingRule, Socks5Rule, TransparentRule
    from ._runtime import Runtime, TunnelRecord
    from ._tunnel import TunnelOutcome

    Handler = Callable[
        [Runtime, trio.SocketStream, str, TunnelRecord, dict[str, Any]], Awaitable[None]
    ]

__all__ = [
    "IngressFailure",
    "OpenedLink",
    "attest_egress",
    "open_link",
    "serve_mapping",
    "serve_socks5",
    "serve_transparent",
]

# Largest SOCKS5 message: a request with a 255-byte domain name is 262 bytes.
_MAX_SOCKS_MESSAGE: Final = 600


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class IngressFailure:
    """Why a tunnel could not be opened.

    Attributes:
        result: a label for logs and metrics (``"attestation-failed"``,
            ``"egress-unreachable"``, ``"handshake-timeout"``, or a reason name from the
            egress's REFUSED such as ``"not-allowed"``).
        code: the link reason code (drives the HTTP status / SOCKS reply).
        detail: human-readable detail (safe to show the client).
    """

    result: str
    code: LinkReason | int
    detail: str
    #: The error behind it, for the operator (``ratls-gateway probe``); may name
    #: reference values of our own policy, so it is never sent to a client or peer.
    cause: BaseException | None = field(default=None, compare=False, repr=False)


@final
@dataclass(slots=True, kw_only=True)
class OpenedLink:
    """An open tunnel to the egress, ready for :class:`~gateway._tunnel.Tunnel`.

    Attributes:
        channel: the link channel (OPENED received).
        attestation: what re-attestation needs, with the egress's verified result.
        egress: the egress the link goes to.
        identity: our identity the link was attested under.
        reused: whether the link carried a tunnel before this one.
    """

    channel: LinkChannel
    attestation: TunnelAttestation
    egress: Endpoint
    identity: GatewayIdentity
    reused: bool = False


async def attest_egress(
    runtime: Runtime, egress: Endpoint, *, identity: GatewayIdentity | None = None
) -> AttestedTLSStream[trio.abc.Stream] | IngressFailure:
    """Connect to the egress and run the attested TLS handshake, both ways.

    Never raises for network or attestation failures: they come back as
    :class:`IngressFailure` (the stream is then already closed).  The stream returned
    has passed attestation; the caller sends OPEN on it or closes it.

    Args:
        runtime: the gateway's shared state.
        egress: the egress's attested listener.
        identity: ours to use (the runtime's current one by default); a caller that
            records which identity a link has passes it, since a reload may replace
            the runtime's during the handshake.
    """
    timeouts = runtime.config.timeouts
    if identity is None:
        identity = runtime.identity
    try:
        with trio.fail_after(timeouts.connect):
            raw = await connect_endpoint(egress, mark=runtime.config.tcp.mark)
        apply_tcp_settings(raw, runtime.config.tcp)
    except trio.TooSlowError as exc:
        return IngressFailure(
            result="egress-timeout",
            code=LinkReason.BACKEND_TIMEOUT,
            detail=f"egress gateway did not answer within {timeouts.connect:g} s",
            cause=exc,
        )
    except OSError as exc:
        return IngressFailure(
            result="egress-unreachable",
            code=LinkReason.BACKEND_UNREACHABLE,
            detail=f"egress gateway {connect_error_kind(exc)}",
            cause=exc,
        )
    stream: AttestedTLSStream[trio.abc.Stream] = AttestedTLSStream(
        direct_if_socket(raw),
        identity.client_context,
        server_side=False,
        attestation=identity.attestation,
    )
    failure: IngressFailure | None = None
    attested = False
    try:
        started = trio.current_time()
        try:
            with trio.fail_after(timeouts.handshake):
                await stream.do_handshake()
        except trio.TooSlowError as exc:
            failure = IngressFailure(
                result="handshake-timeout",
                code=LinkReason.BACKEND_TIMEOUT,
                detail=f"attested handshake took over {timeouts.handshake:g} s",
                cause=exc,
            )
            return failure
        except AttestationRefused as exc:
            failure = IngressFailure(
                result="attestation-failed",
                code=LinkReason.ATTESTATION_FAILED,
                detail=f"the egress refused our attestation: {exc.reason}",
                cause=exc,
            )
            return failure
        except RatlsError as exc:
            failure = IngressFailure(
                result="attestation-failed",
                code=LinkReason.ATTESTATION_FAILED,
                detail=f"the egress failed attestation: {refusal_text(exc)}",
                cause=exc,
            )
            return failure
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = IngressFailure(
                result="handshake-failed",
                code=LinkReason.BACKEND_UNREACHABLE,
                detail="the egress closed the connection during the handshake",
                cause=exc,
            )
            return failure
        runtime.metrics.handshake_seconds.observe(trio.current_time() - started, side="ingress")
        attested = True
        return stream
    finally:
        if failure is not None:
            await close_link(stream, graceful=True)
        elif not attested:  # cancelled (shutdown) or a bug: never leave the socket open
            await trio.aclose_forcefully(stream)


async def open_link(
    runtime: Runtime, egress: Endpoint, target: AddressTarget | RouteTarget, client: str
) -> OpenedLink | IngressFailure:
    """Connect to the egress, attest both ways, and OPEN ``target``.

    With ``[prewarm]`` on, a link made ahead of need (already attested) is used when one
    is ready; if its egress closed it before reading OPEN, a fresh link is opened.

    Never raises for network or attestation failures: they come back as
    :class:`IngressFailure` (the stream is then already closed).

    Args:
        runtime: the gateway's shared state.
        egress: the egress's attested listener.
        target: what to open.
        client: the client's address, for the egress's logs and PROXY headers.
    """
    pool = runtime.link_pool
    reuse = pool is not None and pool.reusing(target)
    ready = pool.take(egress) if pool is not None else None
    if ready is not None:
        opened = await _open_target(
            runtime,
            egress,
            ready.stream,
            ready.identity,
            ready.made_at,
            target,
            client,
            ready=True,
            reuse=reuse,
            reused=ready.reused,
        )
        runtime.metrics.prewarm_links.inc(outcome="used" if opened is not None else "dead")
        if opened is not None:
            return opened
        # The egress closed the link before it read OPEN (it restarted, or its
        # open_wait ran out): nothing of the client's was sent, so open afresh.
    # A fresh link closed unanswered at OPEN: the egress reloaded its configuration
    # between our handshake and our OPEN.  Nothing of the client's was sent, so one more
    # fresh link is tried; a second such close is a failure.
    for last in (False, True):
        identity = runtime.identity
        attested = await attest_egress(runtime, egress, identity=identity)
        if isinstance(attested, IngressFailure):
            return attested
        opened = await _open_target(
            runtime,
            egress,
            attested,
            identity,
            trio.current_time(),
            target,
            client,
            ready=not last,
            reuse=reuse,
        )
        if opened is not None:
            return opened
    raise AssertionError("unreachable")  # pragma: no cover - the last try never gives None


async def _open_target(
    runtime: Runtime,
    egress: Endpoint,
    stream: AttestedTLSStream[trio.abc.Stream],
    identity: GatewayIdentity,
    verified_at: float,
    target: AddressTarget | RouteTarget,
    client: str,
    *,
    ready: bool,
    reuse: bool,
    reused: bool = False,
) -> OpenedLink | IngressFailure | None:
    """Send OPEN on an attested link and read the answer; the stream is closed on failure.

    Returns None, for a ``ready`` (made ahead or kept) link only, when the link turned out
    closed before any answer: the caller may open a fresh one.  ``reuse`` sends OPEN as
    link version 3, asking the egress to keep the link after a clean end.
    """
    timeouts = runtime.config.timeouts
    channel = LinkChannel(stream, LinkRole.INGRESS, buffer_size=runtime.config.limits.buffer_size)
    failure: IngressFailure | None = None
    opened: OpenedLink | None = None
    gone = False
    try:
        try:
            with trio.fail_after(timeouts.connect + timeouts.handshake):
                version = open_version(target, reuse=reuse)
                await channel.send(Open(target=target, client=client, version=version))
                answer = await channel.receive()
        except trio.TooSlowError:
            failure = IngressFailure(
                result="egress-timeout",
                code=LinkReason.BACKEND_TIMEOUT,
                detail="the egress did not answer OPEN in time",
            )
            return failure
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if ready:
                gone = True
                return None
            failure = IngressFailure(
                result="protocol-error",
                code=LinkReason.PROTOCOL_ERROR,
                detail=f"bad answer to OPEN: {type(exc).__name__}",
            )
            return failure
        except RemoteProtocolError as exc:
            failure = IngressFailure(
                result="protocol-error",
                code=LinkReason.PROTOCOL_ERROR,
                detail=f"bad answer to OPEN: {type(exc).__name__}",
            )
            return failure
        if isinstance(answer, LinkClosed) and ready:
            gone = True
            return None
        if isinstance(answer, Refused):
            failure = IngressFailure(
                result=reason_name(answer.code), code=answer.code, detail=answer.reason
            )
            return failure
        if not isinstance(answer, Opened):
            what = "closed" if isinstance(answer, LinkClosed) else type(answer).__name__
            failure = IngressFailure(
                result="protocol-error",
                code=LinkReason.PROTOCOL_ERROR,
                detail=f"expected OPENED, got {what}",
            )
            return failure
        peer_cert = stream.peer_certificate
        if peer_cert is None:  # pragma: no cover - the client context requires one
            failure = IngressFailure(
                result="attestation-failed",
                code=LinkReason.ATTESTATION_FAILED,
                detail="the egress sent no certificate",
            )
            return failure
        opened = OpenedLink(
            channel=channel,
            attestation=TunnelAttestation(
                config=identity.attestation,
                own_certificate=identity.certificate,
                peer_certificate=peer_cert,
                peer_result=stream.peer_attestation,
                verified_at=verified_at,
            ),
            egress=egress,
            identity=identity,
            reused=reused,
        )
        return opened
    finally:
        if failure is not None or gone:
            await close_link(stream, graceful=not gone)
        elif opened is None:  # cancelled (shutdown) or a bug: never leave the socket open
            await trio.aclose_forcefully(stream)


async def run_opened_tunnel(
    runtime: Runtime,
    opened: OpenedLink,
    client_stream: trio.abc.Stream,
    record: TunnelRecord,
    fields: dict[str, Any],
    *,
    initial_data: bytes = b"",
) -> TunnelOutcome:
    """Carry ``client_stream`` through an opened link to its end.

    The link is closed after, or, when it may carry another tunnel (``[prewarm] reuse``
    and a clean end), handed back to the link pool.
    """
    if opened.reused:
        fields["reused_link"] = True
    kept = False
    try:
        outcome = await runtime.run_tunnel(
            record,
            fields,
            opened.channel,
            client_stream,
            attestation=opened.attestation,
            initial_data=initial_data,
        )
        pool = runtime.link_pool
        if pool is not None and outcome.result == "ok":
            kept = pool.keep(opened)
    finally:
        if not kept:
            await close_link(opened.channel.stream, graceful=True)
    if outcome.aborted:
        fields["abort_client"] = True
    return outcome


async def _handle(
    runtime: Runtime, mode: str, rule: str, raw: trio.SocketStream, handler: Handler
) -> None:
    """Admission, bookkeeping, exception safety and the access line, around ``handler``."""
    client = describe_peer(_peername(raw))
    refusal = runtime.admit_tunnel("ingress", rule, client, mode=mode)
    if refusal is not None:
        await _refuse_client(mode, raw, refusal)
        return
    apply_tcp_settings(raw, runtime.config.tcp)
    record = runtime.begin_tunnel("ingress", rule, client)
    started = trio.current_time()
    fields: dict[str, Any] = {"result": "ok"}
    try:
        await handler(runtime, raw, client, record, fields)
    except Exception as exc:  # a bug must not take the listener down
        fields.update(result="internal-error", detail=f"{type(exc).__name__}: {exc}")
        fields["abort_client"] = True
        log_event("internal error", level=logging.ERROR, error=repr(exc))
    except BaseException as exc:
        if is_cancellation(exc):
            # The drain deadline passed (or the gateway stops): cut the client abortively.
            fields.update(result="shutting-down", detail="tunnel cut at shutdown")
            fields["abort_client"] = True
        raise
    finally:
        abort_client = fields.pop("abort_client", False)
        runtime.finish_tunnel(record, started, fields, mode=mode)
        with trio.CancelScope(shield=True):
            if abort_client:
                await abort_stream(raw)
            else:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await raw.aclose()


async def _refuse_client(mode: str, raw: trio.SocketStream, result: str) -> None:
    """Refuse before any work (limits, drain): a short answer where the protocol has one."""
    if mode == "http-connect":
        # Answer, half-close and drain what the client already sent, so that closing
        # with unread input does not reset the connection before the answer is read.
        with trio.move_on_after(1.0 + _LINGER_TIME):
            await _answer_and_close(
                raw,
                build_response(
                    status_for(result, None), reason_code=result, detail="try again later"
                ),
            )
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await raw.aclose()
        return
    await abort_stream(raw)


def _peername(stream: trio.SocketStream) -> object:
    try:
        return stream.socket.getpeername()
    except OSError:
        return None


async def _listen(
    runtime: Runtime, endpoint: Endpoint, *, ports: int = 1, transparent: bool = False
) -> list[trio.SocketListener]:
    """Bind ``endpoint`` (and the ``ports - 1`` ports after it); all or nothing."""
    endpoints = [endpoint]
    if ports > 1:
        endpoints = [replace(endpoint, port=p) for p in range(endpoint.port, endpoint.port + ports)]
    listeners: list[trio.SocketListener] = []
    try:
        for each in endpoints:
            listeners += await open_endpoint_listeners(
                each, reuse_port=runtime.config.process.reuse_port, transparent=transparent
            )
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def _serve(
    runtime: Runtime,
    endpoint: Endpoint,
    mode: str,
    rule: str,
    handler: Handler,
    handler_nursery: trio.Nursery | None,
    task_status: trio.TaskStatus[list[trio.SocketListener]],
    *,
    ports: int = 1,
    listeners: list[trio.SocketListener] | None = None,
) -> NoReturn:
    """Listen on ``endpoint`` (and the ``ports - 1`` ports after it) and run ``handler``.

    ``listeners`` bound by the caller are used instead (transparent capture binds its own).
    """
    if listeners is None:
        listeners = await _listen(runtime, endpoint, ports=ports)
    address = str(endpoint) if ports == 1 else f"{endpoint}-{endpoint.port + ports - 1}"
    log_event("listening", side="ingress", mode=mode, rule=rule, address=address)

    async def accept(raw: trio.SocketStream) -> None:
        await _handle(runtime, mode, rule, raw, handler)

    await trio.serve_listeners(
        accept, listeners, handler_nursery=handler_nursery, task_status=task_status
    )
    raise AssertionError("unreachable")  # pragma: no cover - serve_listeners never returns


# --------------------------------------------------------------------------- mapping


async def serve_mapping(
    runtime: Runtime,
    rule: MappingRule,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve one port-mapping rule forever.

    Raises:
        OSError: the listen address cannot be bound.
    """

    async def handler(
        runtime: Runtime,
        raw: trio.SocketStream,
        client: str,
        record: TunnelRecord,
        fields: dict[str, Any],
    ) -> None:
        current = runtime.current_rule(rule)  # after a reload: the new target and egress
        # In a port range, the port the client chose picks the target port.
        port = raw.socket.getsockname()[1] if current.ports > 1 else current.listen.port
        target = current.target_for(port)
        await _raw_tunnel(runtime, current.egress, target, raw, client, record, fields)

    await _serve(
        runtime,
        rule.listen,
        "mapping",
        rule.name,
        handler,
        handler_nursery,
        task_status,
        ports=rule.ports,
    )


async def _raw_tunnel(
    runtime: Runtime,
    egress: Endpoint,
    target: AddressTarget | RouteTarget,
    raw: trio.SocketStream,
    client: str,
    record: TunnelRecord,
    fields: dict[str, Any],
) -> None:
    """Open ``target`` through ``egress`` for a raw TCP client, and carry its bytes."""
    record.target = str(target)
    opened = await open_link(runtime, egress, target, client)
    if isinstance(opened, IngressFailure):
        # Raw TCP has no words: the client gets a RST, the reason goes to the log.
        fields.update(result=opened.result, detail=opened.detail, abort_client=True)
        return
    await run_opened_tunnel(runtime, opened, raw, record, fields)


async def serve_transparent(
    runtime: Runtime,
    rule: TransparentRule,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve one transparent-capture listener forever (see :mod:`gateway._transparent`).

    Raises:
        OSError: the listen address cannot be bound.
    """

    async def handler(
        runtime: Runtime,
        raw: trio.SocketStream,
        client: str,
        record: TunnelRecord,
        fields: dict[str, Any],
    ) -> None:
        current = runtime.current_rule(rule)  # after a reload: the new egress
        try:
            if rule.mode == "tproxy":
                target = tproxy_destination(raw.socket, capture_ports)
            else:
                target = original_destination(raw.socket)
        except NotRedirected as exc:
            fields.update(result="not-redirected", detail=str(exc), abort_client=True)
            return
        await _raw_tunnel(runtime, current.egress, target, raw, client, record, fields)

    listeners = await _listen(runtime, rule.listen, transparent=rule.mode == "tproxy")
    capture_ports = frozenset(listener.socket.getsockname()[1] for listener in listeners)
    await _serve(
        runtime,
        rule.listen,
        "transparent",
        rule.name,
        handler,
        handler_nursery,
        task_status,
        listeners=listeners,
    )


# --------------------------------------------------------------------------- HTTP


# After an error answer, how long and how much unread request we swallow before closing.
# Closing a socket with unread input makes the kernel send a RST, which can destroy our
# answer before the client reads it (the classic HTTP "lingering close" problem).
_LINGER_TIME: Final = 1.0
_LINGER_BYTES: Final = 256 * 1024


async def _answer_and_close(stream: trio.SocketStream, data: bytes) -> None:
    """Send an error answer, half-close, and drain the client's input for a moment."""
    if not await _send_quietly(stream, data):
        return
    with trio.move_on_after(_LINGER_TIME):
        try:
            await stream.send_eof()
            drained = 0
            while drained < _LINGER_BYTES:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _send_quietly(stream: trio.abc.SendStream, data: bytes) -> bool:
    try:
        with trio.fail_after(5.0):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return False
    return True


# --------------------------------------------------------------------------- SOCKS5


async def serve_socks5(
    runtime: Runtime,
    rule: Socks5Rule,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve one SOCKS5 proxy forever.

    Raises:
        OSError: the listen address cannot be bound.
    """

    async def handler(
        runtime: Runtime,
        raw: trio.SocketStream,
        client: str,
        record: TunnelRecord,
        fields: dict[str, Any],
    ) -> None:
        current = runtime.current_rule(rule)  # after a reload: the new users and egress
        reader = StreamReader(raw, limit=_MAX_SOCKS_MESSAGE)
        try:
            with trio.fail_after(runtime.config.timeouts.proxy_request):
                request = await negotiate(reader, raw, current.users, udp=current.udp)
        except trio.TooSlowError:
            fields.update(result="request-timeout")
            return
        except SocksError as exc:
            fields.update(result="bad-request", detail=str(exc))
            return
        except RemoteProtocolError as exc:
            fields.update(result="bad-request", detail=str(exc))
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            fields.update(result="client-reset")
            return
        if request.command is SocksCommand.UDP_ASSOCIATE:
            from ._socks_udp import run_udp_association

            record.target = "udp-associate"
            await run_udp_association(runtime, current, raw, request, fields)
            return
        record.target = str(request.target)
        opened = await open_link(runtime, current.egress, request.target, client)
        if isinstance(opened, IngressFailure):
            fields.update(result=opened.result, detail=opened.detail)
            await _send_quietly(raw, build_reply(reply_for(opened.result, opened.code)))
            return
        if not await _send_quietly(raw, build_reply(SocksReply.SUCCEEDED)):
            await close_link(opened.channel.stream, graceful=True)
            fields.update(result="client-reset")
            return
        await run_opened_tunnel(
            runtime, opened, raw, record, fields, initial_data=reader.leftover()
        )

    await _serve(runtime, rule.listen, "socks5", rule.name, handler, handler_nursery, task_status)
