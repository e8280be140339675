"""Attested links made ahead of need (``[prewarm]``), so a tunnel skips the handshake.

Until OPEN, a link to an egress depends neither on the client nor on the target: the
ingress can connect, run the TLS handshake and attest both ways before any client
arrives.  :class:`LinkPool` keeps ``prewarm.links`` such links ready for each egress an
ingress rule names; :func:`gateway._ingress.open_link` takes one and sends OPEN at once,
so a client's tunnel costs one round trip instead of a TCP connect, a handshake and two
evidence checks.

What keeps this as safe as a fresh link:

* a ready link passed the same :func:`~gateway._ingress.attest_egress` as any other,
  both ways, under the identity and policy in force when it was made.  A reload or an
  identity rotation makes a new identity, and links of the old one are closed unused;
* its evidence is as old as the link, and the tunnel counts re-attestation from then;
  a link older than ``prewarm.max_idle`` is closed and replaced;
* the egress sends nothing on a link before OPEN, so a link with anything to read (its
  egress closed it, or restarted) is dead: it is closed when found.  If the egress
  closes a link between that check and our OPEN, no byte of the client's has been sent,
  and the tunnel opens a fresh link instead, once;
* a failure to make a link is not kept: clients arriving meanwhile get fresh attempts,
  whose refusals carry the real reason, and the pool retries that egress after a
  backoff (1 s, doubling up to 30 s).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import select
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final, NoReturn, final

import trio

from ratls._errors import RemoteProtocolError

from ._ingress import IngressFailure, attest_egress
from ._link import REUSE_LINK_VERSION, LinkState, Ready
from ._runtime import log_event
from ._tunnel import close_link

if TYPE_CHECKING:
    from ratls._tls_stream import AttestedTLSStream

    from ._attestation import GatewayIdentity
    from ._config import Endpoint
    from ._ingress import OpenedLink
    from ._link import Target
    from ._runtime import Runtime

__all__ = ["LinkPool", "ReadyLink", "link_is_dead"]

#: Seconds between taking a link and making its replacement.  A handshake costs both
#: gateways a few milliseconds of CPU; made at once, it would compete with the OPEN
#: exchange and the first bytes of the tunnel that took the link, which it is there to
#: speed up.
REFILL_DELAY: Final = 0.02
#: First retry delay after a link could not be made, doubled per failure up to the cap.
RETRY_FIRST: Final = 1.0
RETRY_CAP: Final = 30.0
#: How long a kept link waits for the egress's READY before it is closed instead.
READY_WAIT: Final = 5.0

_POLL_DEAD: Final = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


@final
@dataclass(frozen=True, slots=True)
class ReadyLink:
    """An attested link to an egress, before OPEN.

    Attributes:
        stream: the attested TLS stream (both sides' attestation passed).
        identity: our identity when it was made (its certificate is the link's).
        made_at: trio time at which attestation passed.
        idle_since: trio time since which the link waits in the pool.
        reused: whether it carried a tunnel already (``[prewarm] reuse``).
    """

    stream: AttestedTLSStream[trio.abc.Stream]
    identity: GatewayIdentity
    made_at: float
    idle_since: float
    reused: bool = False


def link_is_dead(stream: AttestedTLSStream[trio.abc.Stream]) -> bool:
    """Whether an unopened link has anything to read: then its egress closed or broke it.

    A cheap poll of the socket without waiting.  Before OPEN the egress sends nothing, so
    readable means a close_notify, a FIN or a reset.  A transport that is no socket is
    taken as alive (the OPEN exchange finds out).
    """
    sock = getattr(stream.transport_stream, "socket", None)
    if sock is None:
        return False
    fd = sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, _POLL_DEAD)
    return bool(poller.poll(0))


@final
class LinkPool:
    """Ready links per egress, refilled in the background by :meth:`run`.

    Args:
        runtime: the gateway's shared state; the pool follows its current configuration
            (``prewarm``, the ingress rules' egresses) and identity.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ready: dict[Endpoint, collections.deque[ReadyLink]] = {}
        self._making: collections.Counter[Endpoint] = collections.Counter()
        self._failures: collections.Counter[Endpoint] = collections.Counter()
        self._retry_at: dict[Endpoint, float] = {}
        self._refill_at: dict[Endpoint, float] = {}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    def ready(self, egress: Endpoint) -> int:
        """How many links to ``egress`` are ready now."""
        return len(self._ready.get(egress, ()))

    def reusing(self, target: Target) -> bool:
        """Whether a tunnel to ``target`` asks for a link it can hand back (version 3)."""
        prewarm = self._runtime.config.prewarm
        return prewarm.reuse and prewarm.links > 0 and not target.datagram

    def keep(self, opened: OpenedLink) -> bool:
        """Take over the link of a tunnel that ended cleanly, to put it back when the
        egress confirms with READY; False (the caller closes it) when it cannot be kept.
        """
        conn = opened.channel.conn
        nursery = self._nursery
        if (
            nursery is None
            or not self._runtime.config.prewarm.reuse
            or conn.version < REUSE_LINK_VERSION
            or not (conn.state is LinkState.DONE or conn.ready_received)
        ):
            return False
        nursery.start_soon(self._keep, opened)
        return True

    def wake(self) -> None:
        """Look at the configuration and identity again (after a reload or rotation)."""
        self._changed.set()

    def take(self, egress: Endpoint) -> ReadyLink | None:
        """The oldest usable ready link to ``egress`` (removed from the pool), or None.

        Links found dead, expired or made under an older identity are closed on the way.
        """
        queue = self._ready.get(egress)
        if not queue and self._runtime.config.prewarm.links <= 0:
            return None  # off: nothing to take, nothing to refill
        taken: ReadyLink | None = None
        while queue and taken is None:
            link = queue.popleft()
            outcome = self._unusable(link, trio.current_time())
            if outcome is None:
                taken = link
            else:
                self._discard(link, outcome)
        self._gauge(egress)
        self._refill_at[egress] = trio.current_time() + REFILL_DELAY
        self.wake()
        return taken

    async def run(self) -> NoReturn:
        """Keep the pool filled until cancelled; then close every ready link."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                while True:
                    wait = self._tend(nursery)
                    with trio.move_on_after(wait):
                        await self._changed.wait()
                    self._changed = trio.Event()
        finally:
            self._nursery = None
            ready, self._ready = self._ready, {}
            for egress, queue in ready.items():
                self._runtime.metrics.prewarm_ready.set(0, egress=str(egress))
                for link in queue:
                    await _close(link.stream, graceful=False)

    # ------------------------------------------------------------------ internals

    async def _keep(self, opened: OpenedLink) -> None:
        # The egress says READY once it delivered the tunnel's last bytes; anything else
        # (ERROR, a close, silence) and the link is closed.
        channel = opened.channel
        link = ReadyLink(
            stream=channel.stream,
            identity=opened.identity,
            made_at=opened.attestation.verified_at,
            idle_since=trio.current_time(),
            reused=True,
        )
        placed = False
        try:
            event: object = None
            if channel.conn.ready_received:
                event = Ready()  # the tunnel read it already, with the egress's EOF
            else:
                with trio.move_on_after(READY_WAIT), contextlib.suppress(RemoteProtocolError):
                    event = await channel.receive()
            if not isinstance(event, Ready) or channel.conn.buffered:
                self._discard(link, "not-ready")
                placed = True  # _discard closes it
                return
            egress = opened.egress
            outcome = self._unusable(link, trio.current_time())
            if outcome is None and egress not in self._wanted():
                outcome = "dropped"
            if outcome is None and self.ready(egress) >= self._runtime.config.prewarm.links:
                outcome = "surplus"
            if outcome is not None:
                self._discard(link, outcome)
                placed = True
                return
            self._ready.setdefault(egress, collections.deque()).append(link)
            placed = True
            self._runtime.metrics.prewarm_links.inc(outcome="kept")
            self._gauge(egress)
            self.wake()
        finally:
            if not placed:  # cancelled (shutdown)
                await _close(link.stream, graceful=False)

    def _unusable(self, link: ReadyLink, now: float) -> str | None:
        """Why ``link`` must not carry a tunnel (a metrics outcome), or None if it may."""
        runtime = self._runtime
        if link.identity is not runtime.identity:
            return "dropped"
        if now - link.idle_since >= runtime.config.prewarm.max_idle:
            return "expired"
        max_age = runtime.config.timeouts.max_attestation_age
        if max_age > 0 and now - link.made_at >= max_age:
            return "aged"  # a tunnel on it would have to re-attest at once
        if link_is_dead(link.stream):
            return "dead"
        return None

    def _wanted(self) -> set[Endpoint]:
        config = self._runtime.config
        if config.prewarm.links <= 0:
            return set()
        return {rule.egress for rule in config.ingress_rules}

    def _tend(self, nursery: trio.Nursery) -> float:
        """Close what is unusable, start the links missing; seconds until the next look."""
        now = trio.current_time()
        wanted = self._wanted()
        max_idle = self._runtime.config.prewarm.max_idle
        max_age = self._runtime.config.timeouts.max_attestation_age
        wake_at = math.inf
        for egress, queue in list(self._ready.items()):
            keep: collections.deque[ReadyLink] = collections.deque()
            for link in queue:
                outcome = "dropped" if egress not in wanted else self._unusable(link, now)
                if outcome is None:
                    keep.append(link)
                    wake_at = min(wake_at, link.idle_since + max_idle)
                    if max_age > 0:
                        wake_at = min(wake_at, link.made_at + max_age)
                else:
                    self._discard(link, outcome)
            if keep:
                self._ready[egress] = keep
            else:
                del self._ready[egress]
            self._gauge(egress)
        links = self._runtime.config.prewarm.links
        for egress in wanted:
            start_at = max(self._retry_at.get(egress, 0.0), self._refill_at.get(egress, 0.0))
            if now < start_at:
                wake_at = min(wake_at, start_at)
                continue
            # One handshake at a time per egress: the pool never floods the egress (or
            # this loop) with handshakes, and a client arriving meanwhile meets one.
            if self._making[egress] == 0 and self.ready(egress) < links:
                self._making[egress] += 1
                nursery.start_soon(self._make, egress)
        return max(0.0, wake_at - now)

    async def _make(self, egress: Endpoint) -> None:
        runtime = self._runtime
        identity = runtime.identity
        try:
            attested = await attest_egress(runtime, egress, identity=identity)
        finally:
            self._making[egress] -= 1
            self.wake()
        metrics = runtime.metrics
        if isinstance(attested, IngressFailure):
            metrics.prewarm_links.inc(outcome="failed")
            self._failures[egress] += 1
            delay = min(RETRY_CAP, RETRY_FIRST * 2 ** (self._failures[egress] - 1))
            self._retry_at[egress] = trio.current_time() + delay
            log_event(
                "prewarm failed",
                level=logging.WARNING,
                egress=str(egress),
                result=attested.result,
                detail=attested.detail,
                retry_in=delay,
            )
            return
        metrics.prewarm_links.inc(outcome="made")
        self._failures.pop(egress, None)
        self._retry_at.pop(egress, None)
        now = trio.current_time()
        link = ReadyLink(stream=attested, identity=identity, made_at=now, idle_since=now)
        if egress not in self._wanted() or identity is not runtime.identity:
            self._discard(link, "dropped")
            return
        self._ready.setdefault(egress, collections.deque()).append(link)
        self._gauge(egress)

    def _discard(self, link: ReadyLink, outcome: str) -> None:
        self._runtime.metrics.prewarm_links.inc(outcome=outcome)
        nursery = self._nursery
        if nursery is not None:
            # A dead link's peer is gone: no close_notify for it.
            nursery.start_soon(partial(_close, link.stream, graceful=outcome != "dead"))

    def _gauge(self, egress: Endpoint) -> None:
        self._runtime.metrics.prewarm_ready.set(self.ready(egress), egress=str(egress))


async def _close(stream: AttestedTLSStream[trio.abc.Stream], *, graceful: bool) -> None:
    """Close an unused link, even while the pool is being cancelled."""
    with trio.CancelScope(shield=True):
        if graceful:
            await close_link(stream, graceful=True)  # bounded in time
        else:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.aclose_forcefully(stream)
