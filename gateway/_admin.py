"""Health, status and metrics over plain HTTP/1.1 (one request per connection).

==========  ===============================================================================
path        answer
==========  ===============================================================================
/livez      200 while the process runs.
/readyz     200 once this gateway produced its own evidence and its listeners are bound;
            503 before that and while draining.
/status     JSON: identity fingerprint, readiness, own-evidence time, listeners, live
            tunnels with their peers' attestation summaries and byte counts.
/metrics    Prometheus text format 0.0.4 (see :class:`~gateway._metrics.GatewayMetrics`).
==========  ===============================================================================

The admin endpoint shows no secrets (no evidence, no keys), but it does show tunnels and
peers: bind it to loopback or a management network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Final, NoReturn, TypeAlias

import trio
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._reader import StreamReader
from ._runtime import log_event, open_endpoint_listeners

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._config import Endpoint
    from ._runtime import Runtime

__all__ = [
    "AdminAnswer",
    "handle_admin_request",
    "serve_admin",
    "serve_admin_answers",
    "status_document",
]

# A request head larger than this is not a health probe.
_MAX_HEAD: Final = 4096
# Probes are tiny; a client that takes longer than this to send one is dropped.
_REQUEST_TIMEOUT: Final = 5.0

_REQUEST_LINE: Final = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r\n")
_PHRASES: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def status_document(runtime: Runtime) -> dict[str, object]:
    """The /status JSON document."""
    spki = runtime.identity.certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    config = runtime.config
    return {
        "ready": runtime.ready and not runtime.draining,
        "draining": runtime.draining,
        "uptime": round(time.time() - runtime.started, 3),
        "identity_spki_sha256": hashlib.sha256(spki).hexdigest(),
        "own_evidence_at": runtime.own_evidence_at,
        "attester": config.attestation.attester,
        "ingress": [
            *(
                {"mode": "mapping", "name": r.name, "listen": r.listen_text}
                for r in config.mappings
            ),
            *(
                {"mode": "http-connect", "name": r.name, "listen": str(r.listen)}
                for r in config.http_connect
            ),
            *({"mode": "socks5", "name": r.name, "listen": str(r.listen)} for r in config.socks5),
            *(
                {"mode": f"transparent-{r.mode}", "name": r.name, "listen": str(r.listen)}
                for r in config.transparent
            ),
            *({"mode": "udp", "name": r.name, "listen": str(r.listen)} for r in config.udp),
        ],
        "egress": [
            {"name": x.name, "listen": str(x.listen), "routes": list(x.routes)}
            for x in config.listeners
        ],
        "prewarm": {
            "links": config.prewarm.links,
            "ready": {
                str(egress): runtime.link_pool.ready(egress) if runtime.link_pool else 0
                for egress in dict.fromkeys(rule.egress for rule in config.ingress_rules)
            }
            if config.prewarm.links
            else {},
        },
        "tunnels_active": len(runtime.tunnels),
        "tunnels": [record.as_dict() for record in runtime.tunnels.values()],
    }


def handle_admin_request(runtime: Runtime, method: str, path: str) -> tuple[int, str, bytes]:
    """Answer one request.

    Returns:
        ``(status, content type, body)``.
    """
    if method != "GET":
        return 405, "text/plain; charset=utf-8", b"only GET\n"
    path = path.split("?", 1)[0]
    if path == "/livez":
        return 200, "text/plain; charset=utf-8", b"ok\n"
    if path == "/readyz":
        if runtime.draining:
            return 503, "text/plain; charset=utf-8", b"draining\n"
        if not runtime.ready:
            return 503, "text/plain; charset=utf-8", b"not ready: no own evidence yet\n"
        return 200, "text/plain; charset=utf-8", b"ready\n"
    if path == "/status":
        body = json.dumps(status_document(runtime), indent=2, sort_keys=True, default=str)
        return 200, "application/json", body.encode() + b"\n"
    if path == "/metrics":
        return 200, "text/plain; version=0.0.4; charset=utf-8", runtime.metrics.render().encode()
    return 404, "text/plain; charset=utf-8", b"not found\n"


#: Answers one request: ``(method, path) -> (status, content type, body)``.
AdminAnswer: TypeAlias = "Callable[[str, str], Awaitable[tuple[int, str, bytes]]]"


async def _serve_one(answer: AdminAnswer, stream: trio.SocketStream) -> None:
    try:
        reader = StreamReader(stream, limit=_MAX_HEAD)
        with trio.fail_after(_REQUEST_TIMEOUT):
            head = await reader.read_until(b"\r\n\r\n")
        match = _REQUEST_LINE.match(head)
        if match is None:
            status, ctype, body = 400, "text/plain; charset=utf-8", b"bad request\n"
        else:
            status, ctype, body = await answer(
                match.group(1).decode(), match.group(2).decode("latin-1")
            )
        response = (
            f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode("ascii") + body
        with trio.fail_after(_REQUEST_TIMEOUT):
            await stream.send_all(response)
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception as exc:  # reader limits and anything unexpected: drop the probe
        log_event("admin request failed", error=type(exc).__name__)
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()


async def serve_admin(
    runtime: Runtime,
    endpoint: Endpoint,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve this gateway's admin endpoint forever.

    Raises:
        OSError: the address cannot be bound.
    """

    async def answer(method: str, path: str) -> tuple[int, str, bytes]:
        return handle_admin_request(runtime, method, path)

    await serve_admin_answers(
        answer,
        endpoint,
        reuse_port=runtime.config.process.reuse_port,
        task_status=task_status,
    )


async def serve_admin_answers(
    answer: AdminAnswer,
    endpoint: Endpoint,
    *,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve an admin endpoint whose answers come from ``answer`` (one request each).

    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await open_endpoint_listeners(endpoint, reuse_port=reuse_port)
    log_event("listening", side="admin", address=str(endpoint))

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_one(answer, stream)

    await trio.serve_listeners(handler, listeners, task_status=task_status)
    raise AssertionError("unreachable")  # pragma: no cover - serve_listeners never returns
