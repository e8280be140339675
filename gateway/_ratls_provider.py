"""Attestation providers for every attester ratls offers by name (``sim``, ``snp+vtpm``...).

ratls names its attesters (:func:`ratls.attester_names`: ``sim``, ``sim+vtpm``, ``snp``,
``snp+vtpm``, ``azure``) and builds the bound-mode verifier from a policy.  This module
registers one gateway provider per name, so a gateway configuration can say::

    [attestation]
    attester = "snp+vtpm"          # or "sim", "sim+vtpm", "snp", "azure"
    policy = "policy.toml"         # required: peers are always appraised
    accept = ["snp+vtpm"]          # evidence kinds accepted from peers (default: both)
    product = "Genoa"              # simulators and version-2 reports
    measurement = "<96 hex>"       # simulators only: claim another launch digest
    sim_dir = "sim-state"          # simulators only: keep the simulated machine

and get exactly the evidence and verification an attested ratls socket uses.  The ``none``
attester is not offered: gateway tunnels are always mutual.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ratls._errors import RatlsError
from ratls._policy import load_policy
from ratls._snp_report import ProductLine

from ._attestation import register_provider, registered_providers
from ._config import AttestationSettings, ConfigError, ConfigProblem

if TYPE_CHECKING:
    from ratls._exchange import AttestationConfig

__all__ = ["RATLS_OPTIONS", "ratls_provider", "register_ratls_providers"]

#: ``[attestation]`` keys this provider understands (besides attester and policy).
RATLS_OPTIONS: Final = frozenset({"accept", "product", "measurement", "sim_dir"})


def _problem(key: str, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(location=f"attestation.{key}", message=message)])


def ratls_provider(settings: AttestationSettings) -> AttestationConfig:
    """Build the AttestationConfig for ratls attester ``settings.attester``.

    Raises:
        ConfigError: a missing or unreadable policy, an unknown option or value, or an
            attester whose hardware interface is missing here (with its own message).
    """
    from ratls._attesters_registry import make_attestation_config, make_attester, make_verifier

    options = dict(settings.options)
    unknown = set(options) - RATLS_OPTIONS
    if unknown:
        known = ", ".join(sorted(RATLS_OPTIONS))
        raise _problem(sorted(unknown)[0], f"unknown key (known: {known})")
    if settings.policy is None:
        raise _problem("policy", f"missing: attester {settings.attester!r} needs a policy")
    try:
        policy = load_policy(settings.policy)
    except RatlsError as exc:
        raise _problem("policy", str(exc)) from exc
    kwargs: dict[str, Any] = {}
    product: ProductLine | None = None
    if "product" in options:
        try:
            product = ProductLine(options["product"])
        except ValueError:
            raise _problem(
                "product", f"{options['product']!r} is not Milan, Genoa or Turin"
            ) from None
        kwargs["product"] = product
    if "measurement" in options:
        try:
            measurement = bytes.fromhex(str(options["measurement"]))
        except ValueError:
            measurement = b""
        if len(measurement) != 48:
            raise _problem("measurement", "must be 96 hex digits (a SHA-384 launch digest)")
        kwargs["measurement"] = measurement
    if "sim_dir" in options:
        if not isinstance(options["sim_dir"], str):
            raise _problem("sim_dir", "must be a path")
        path = Path(options["sim_dir"])
        if settings.base_dir is not None and not path.is_absolute():
            path = settings.base_dir / path
        kwargs["sim_dir"] = path
    accept = options.get("accept", ["snp", "snp+vtpm"])
    if not isinstance(accept, list) or not accept or not all(isinstance(a, str) for a in accept):
        raise _problem("accept", 'must be a non-empty array such as ["snp+vtpm"]')
    try:
        attester = make_attester(settings.attester, **kwargs)
        verifier = make_verifier(policy, accept=tuple(accept), product=product)
    except (ValueError, RatlsError) as exc:
        raise _problem("attester", f"{settings.attester}: {exc}") from exc
    return make_attestation_config(attester, verifier)


def register_ratls_providers() -> None:
    """Register :func:`ratls_provider` under every ratls attester name but ``none``."""
    from ratls._attesters_registry import attester_names

    present = set(registered_providers())
    for name in attester_names():
        if name != "none" and name not in present:
            register_provider(name, ratls_provider)
