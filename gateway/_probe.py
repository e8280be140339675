"""``ratls-gateway probe``: attest to each egress a configuration names, and explain.

An operator's dry run.  With the configuration's own attester, policy and TLS choices,
the probe connects to every egress gateway the ingress rules name (or the ones given),
runs the mutually attested handshake exactly as a tunnel would, and reports for each:
the TLS version and key exchange, how long it took, and the egress's verified claims;
or why it failed, with the claim, the expected and the actual value when our own policy
refused the egress (that detail stays on the operator's terminal: tunnels never tell a
peer or a client what our policy expects).  No target is opened: the probe closes the
link after the handshake, which the egress logs as a link that ended before OPEN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import trio

from ._attestation import (
    close_attestation,
    make_identity,
    peer_claims,
    peer_summary,
    resolve_attestation,
)
from ._ingress import IngressFailure, attest_egress
from ._runtime import Runtime
from ._tunnel import close_link

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import Endpoint, GatewayConfig

__all__ = ["ProbeResult", "egresses_of", "probe"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What attesting to one egress gave.

    Attributes:
        egress: the egress's address.
        ok: whether both sides' evidence passed.
        seconds: connect plus attested handshake.
        tls: TLS version and key exchange group (when the handshake got that far).
        peer: one-line summary of the egress's verified attestation.
        claims: the egress's verified claims.
        result: the failure label (``attestation-failed``, ``egress-unreachable``...).
        detail: the failure in full, for the operator.
    """

    egress: str
    ok: bool
    seconds: float
    tls: str = ""
    peer: str = ""
    claims: dict[str, object] = field(default_factory=dict)
    result: str = "ok"
    detail: str = ""


def egresses_of(config: GatewayConfig) -> list[Endpoint]:
    """The distinct egress endpoints the configuration's ingress rules use, in order."""
    seen: dict[str, Endpoint] = {}
    for rule in config.ingress_rules:
        seen.setdefault(str(rule.egress), rule.egress)
    return list(seen.values())


async def probe(config: GatewayConfig, egresses: Sequence[Endpoint]) -> list[ProbeResult]:
    """Attest to each of ``egresses`` with ``config``'s attestation; one result each.

    Raises:
        RatlsError: the configuration's attester or policy cannot be set up.
    """
    attestation = resolve_attestation(config.attestation)
    try:
        runtime = Runtime(config, make_identity(attestation, groups=config.tls.groups))
        return [await _probe_one(runtime, egress) for egress in egresses]
    finally:
        close_attestation(attestation)


async def _probe_one(runtime: Runtime, egress: Endpoint) -> ProbeResult:
    started = trio.current_time()
    attested = await attest_egress(runtime, egress)
    seconds = trio.current_time() - started
    if isinstance(attested, IngressFailure):
        cause = attested.cause
        detail = attested.detail
        if cause is not None and str(cause) and str(cause) not in detail:
            detail = f"{detail} ({type(cause).__name__}: {cause})"
        return ProbeResult(
            egress=str(egress), ok=False, seconds=seconds, result=attested.result, detail=detail
        )
    try:
        result = attested.peer_attestation
        return ProbeResult(
            egress=str(egress),
            ok=True,
            seconds=seconds,
            tls=f"{attested.tls_version} {attested.key_exchange_group or '?'}",
            peer=peer_summary(result),
            claims=peer_claims(result),
        )
    finally:
        await close_link(attested, graceful=True)
