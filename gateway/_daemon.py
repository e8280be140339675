"""The gateway process: every listener of a configuration, readiness, reload and drain.

:func:`run_gateway` is structured concurrency from top to bottom.  Three nested
nurseries hold, from the outside in: the connection handlers (tunnels), the admin
endpoint, and the accept loops.  A shutdown request cancels only the accept loops, so
no new tunnel starts while live ones finish; after the drain deadline the remaining
tunnels are cancelled, and the admin endpoint (which answers 503 on /readyz while
draining) goes last.

Readiness: once every listener is bound, the gateway asks its attester for evidence over
an all-zero binder, a self-test that proves the attestation path works (a report or
quote bound to zeros is useless to anyone: real binders carry the connection's exporter
value).  Until that succeeds /readyz answers 503; it is retried with backoff.

Reload: :meth:`RunningGateway.reload` takes a new configuration with the same listen
addresses.  New tunnels use its timeouts, limits, routes, allowlists and TLS groups at
once (new groups need new TLS contexts, so they come with a new identity); the
attestation provider is resolved again (re-reading the policy file) and every live
tunnel re-attests its peer under the new configuration, so a peer that the new policy
no longer admits is disconnected.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final, final

import trio

from ratls._errors import RatlsError

from ._admin import serve_admin
from ._attestation import close_attestation, make_identity, resolve_attestation
from ._config import ConfigError, ConfigProblem, GatewayConfig
from ._egress import serve_egress
from ._http_proxy import serve_http_proxy
from ._ingress import serve_mapping, serve_socks5, serve_transparent
from ._prewarm import LinkPool
from ._runtime import Runtime, check_mark, log_event
from ._udp import serve_udp

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ratls._exchange import AttestationConfig

    from ._datagram import DatagramListener

__all__ = [
    "BUFFER_RELEASE_INTERVAL",
    "DEFAULT_DRAIN_TIMEOUT",
    "IDENTITY_ROTATION",
    "RunningGateway",
    "run_gateway",
]

# How long live tunnels may take to finish after SIGTERM before they are cut.  Long
# enough for requests in flight on typical services; short enough for an orchestrator's
# default grace period (Kubernetes sends SIGKILL after 30 s).
DEFAULT_DRAIN_TIMEOUT: Final = 25.0

# The TLS identity is an ephemeral key with a self-signed certificate valid for one day
# (ratls._tls_context.EPHEMERAL_CERT_LIFETIME).  A fresh one is made this often, well
# inside that day, so that peers never see an expired certificate.  Live tunnels keep the
# identity they were opened with (their re-attestation binders name its key).
IDENTITY_ROTATION: Final = 6 * 3600.0

#: How often tunnels that moved no byte for that long give back the buffers a burst grew
#: (OpenSSL's memory BIOs keep their largest size: a few hundred KiB after bulk data).
BUFFER_RELEASE_INTERVAL: Final = 5.0

_SELF_CHECK_BINDER: Final = bytes(64)
_SELF_CHECK_MAX_DELAY: Final = 30.0


def _listen_keys(config: GatewayConfig) -> dict[str, str]:
    keys = {f"egress:{x.name}": str(x.listen) for x in config.listeners}
    keys.update({f"mapping:{r.name}": r.listen_text for r in config.mappings})
    keys.update({f"http-connect:{r.name}": str(r.listen) for r in config.http_connect})
    keys.update({f"socks5:{r.name}": str(r.listen) for r in config.socks5})
    keys.update(
        {
            f"transparent:{r.name}": f"{r.listen} {r.mode}"  # tproxy binds differently
            for r in config.transparent
        }
    )
    keys.update({f"udp:{r.name}": str(r.listen) for r in config.udp})
    if config.admin is not None:
        keys["admin"] = str(config.admin.listen)
    return keys


@final
class RunningGateway:
    """Handle on a running gateway (from ``nursery.start(run_gateway, ...)``).

    Attributes:
        runtime: the shared state (config, identity, metrics, live tunnels).
        listeners: bound listeners by key: ``"egress:NAME"``, ``"mapping:NAME"``,
            ``"http-connect:NAME"``, ``"socks5:NAME"``, ``"transparent:NAME"``,
            ``"udp:NAME"`` (a bound UDP socket), ``"admin"``.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.listeners: dict[str, Sequence[trio.SocketListener | DatagramListener]] = {}
        #: Attestation configurations this gateway resolved itself (and so must close).
        self.owned_attestations: list[AttestationConfig] = []
        self._stopped = trio.Event()
        self._shutdown = trio.Event()
        self._ready = trio.Event()

    def address(self, key: str) -> tuple[str, int] | str:
        """The bound address of a listener: ``(host, port)`` or a UNIX path.

        Raises:
            KeyError: no such listener.
        """
        sockname = self.listeners[key][0].socket.getsockname()
        if isinstance(sockname, tuple):
            return str(sockname[0]), int(sockname[1])
        return str(sockname)

    def request_shutdown(self) -> None:
        """Stop accepting, drain live tunnels (up to the drain timeout), then return."""
        self.runtime.start_draining()
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        """Wait until the gateway has drained, stopped and released its attester."""
        await self._stopped.wait()

    async def wait_ready(self) -> None:
        """Wait until the attestation self-test has passed."""
        await self._ready.wait()

    def reload(
        self, config: GatewayConfig, *, attestation: AttestationConfig | None = None
    ) -> None:
        """Apply a new configuration without dropping live tunnels.

        Args:
            config: the new configuration; its listen addresses must be the same.
            attestation: the attestation configuration to use instead of resolving the
                config's provider again (tests, embedding).

        Raises:
            ConfigError: listen addresses changed (a restart is needed), or the
                attestation provider failed; the old configuration stays in force.
        """
        if config.process != self.runtime.config.process:
            raise ConfigError(
                [
                    ConfigProblem(
                        location=f"process.{field.name}",
                        message="cannot change on reload (the listeners are bound already)",
                    )
                    for field in dataclasses.fields(config.process)
                    if getattr(config.process, field.name)
                    != getattr(self.runtime.config.process, field.name)
                ]
            )
        old = _listen_keys(self.runtime.config)
        new = _listen_keys(config)
        if old != new:
            changed = sorted(set(old.items()) ^ set(new.items()))
            raise ConfigError(
                [
                    ConfigProblem(
                        location=key,
                        message=f"listen addresses cannot change on reload ({address})",
                    )
                    for key, address in changed
                ]
            )
        if config.tcp.mark != self.runtime.config.tcp.mark:
            try:
                check_mark(config.tcp.mark)
            except PermissionError as exc:
                raise ConfigError(
                    [ConfigProblem(location="tcp.mark", message=exc.strerror or str(exc))]
                ) from exc
        if attestation is None:
            attestation = resolve_attestation(config.attestation)
            # Closed when the gateway stops: tunnels still running under the old
            # configuration may need the old attester until then.
            self.owned_attestations.append(attestation)
        runtime = self.runtime
        if config.tls != runtime.config.tls:
            # New contexts need a new identity; live tunnels keep theirs.
            runtime.identity = make_identity(attestation, groups=config.tls.groups)
        else:
            runtime.identity = dataclasses.replace(runtime.identity, attestation=attestation)
        runtime.config = config
        limits = config.limits
        runtime.admission.max_tunnels = limits.max_tunnels
        runtime.admission.rate = limits.rate_per_source
        runtime.admission.burst = limits.rate_burst
        for tunnel in list(runtime.live.values()):
            tunnel.request_reattest(attestation)
        if runtime.link_pool is not None:
            runtime.link_pool.wake()  # links of the old identity go; counts may change
        log_event("configuration reloaded", live_tunnels=len(runtime.live))


async def _self_check(runtime: Runtime, ready: trio.Event) -> None:
    delay = 1.0
    while True:
        config = runtime.identity.attestation
        attester = config.attester
        try:
            if attester is None:
                raise RatlsError("no attester configured")
            if config.run_in_thread:
                await trio.to_thread.run_sync(
                    attester.evidence, _SELF_CHECK_BINDER, abandon_on_cancel=True
                )
            else:
                attester.evidence(_SELF_CHECK_BINDER)
        except RatlsError as exc:
            log_event(
                "attestation self-test failed",
                level=logging.WARNING,
                error=f"{type(exc).__name__}: {exc}",
                retry_in=delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, _SELF_CHECK_MAX_DELAY)
            continue
        runtime.own_evidence_at = time.time()
        runtime.ready = True
        ready.set()
        log_event("ready", attester=runtime.config.attestation.attester)
        return


async def _run_link_pool(pool: LinkPool, ready: trio.Event) -> None:
    """Make links ahead of need (``[prewarm]``) once our own evidence works."""
    await ready.wait()
    await pool.run()


async def _rotate_identity(runtime: Runtime) -> None:
    while True:
        await trio.sleep(IDENTITY_ROTATION)
        runtime.identity = make_identity(
            runtime.identity.attestation, groups=runtime.config.tls.groups
        )
        if runtime.link_pool is not None:
            runtime.link_pool.wake()  # ready links carry the old certificate
        log_event("identity rotated", identity=repr(runtime.identity))


def _heap_trimmer() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return partial(trim, 0)


async def _release_idle_buffers(runtime: Runtime) -> None:
    # Freed buffers return to the C heap, but glibc hands pages in the middle of its heap
    # back to the kernel only when asked: without the trim the process would reuse them
    # for new tunnels, yet its resident size would not show that anything was freed.
    trim = _heap_trimmer()
    while True:
        await trio.sleep(BUFFER_RELEASE_INTERVAL)
        released = runtime.release_idle_buffers(trio.current_time() - BUFFER_RELEASE_INTERVAL)
        if released and trim is not None:
            trim()


async def run_gateway(
    config: GatewayConfig,
    *,
    attestation: AttestationConfig | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    task_status: trio.TaskStatus[RunningGateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every listener of ``config`` until :meth:`RunningGateway.request_shutdown`.

    Args:
        config: the configuration.
        attestation: use this instead of resolving ``config.attestation`` (embedding,
            tests).
        drain_timeout: how long live tunnels may finish after a shutdown request.
        task_status: receives the :class:`RunningGateway` once all listeners are bound
            (readiness follows when the attestation self-test passes).

    Raises:
        ConfigError: the attestation provider is unknown or fails.
        OSError: a listen address cannot be bound.
    """
    check_mark(config.tcp.mark)  # before anything starts: it needs CAP_NET_ADMIN
    owned = attestation is None
    if attestation is None:
        attestation = resolve_attestation(config.attestation)
    gateway: RunningGateway | None = None
    try:
        identity = make_identity(attestation, groups=config.tls.groups)
        gateway = RunningGateway(Runtime(config, identity))
        if owned:
            gateway.owned_attestations.append(attestation)
        await _serve(gateway, config, drain_timeout, task_status)
    finally:
        if gateway is not None:
            to_close = gateway.owned_attestations
        else:
            to_close = [attestation] if owned else []
        for resolved in to_close:
            close_attestation(resolved)
        if gateway is not None:
            gateway._stopped.set()


def _listeners_to_serve(
    config: GatewayConfig,
) -> list[tuple[str, Sequence[Any], Callable[..., Awaitable[Any]]]]:
    """Each kind of listener (the key prefix of :attr:`RunningGateway.listeners`), its
    rules, and the function that serves one."""
    return [
        ("egress", config.listeners, serve_egress),
        ("mapping", config.mappings, serve_mapping),
        ("http-connect", config.http_connect, serve_http_proxy),
        ("socks5", config.socks5, serve_socks5),
        ("udp", config.udp, serve_udp),
        ("transparent", config.transparent, serve_transparent),
    ]


async def _serve(
    gateway: RunningGateway,
    config: GatewayConfig,
    drain_timeout: float,
    task_status: trio.TaskStatus[RunningGateway],
) -> None:
    runtime = gateway.runtime
    async with trio.open_nursery() as admin_nursery:
        async with trio.open_nursery() as tunnels:
            async with trio.open_nursery() as accept:
                for kind, rules, serve in _listeners_to_serve(config):
                    for rule in rules:
                        gateway.listeners[f"{kind}:{rule.name}"] = await accept.start(
                            partial(serve, runtime, rule, handler_nursery=tunnels)
                        )
                if config.admin is not None:
                    gateway.listeners["admin"] = await admin_nursery.start(
                        serve_admin, runtime, config.admin.listen
                    )
                accept.start_soon(_self_check, runtime, gateway._ready)
                if config.has_ingress:
                    runtime.link_pool = LinkPool(runtime)
                    accept.start_soon(_run_link_pool, runtime.link_pool, gateway._ready)
                admin_nursery.start_soon(_rotate_identity, runtime)
                admin_nursery.start_soon(_release_idle_buffers, runtime)
                admin_nursery.start_soon(runtime.deadlines.run)  # outlives every tunnel
                task_status.started(gateway)
                await gateway._shutdown.wait()
                accept.cancel_scope.cancel()
            log_event("draining", live_tunnels=runtime.admission.active, deadline=drain_timeout)
            with trio.move_on_after(drain_timeout if drain_timeout > 0 else math.inf):
                await runtime.admission.wait_idle()
            tunnels.cancel_scope.cancel()
        admin_nursery.cancel_scope.cancel()
    log_event("stopped")
