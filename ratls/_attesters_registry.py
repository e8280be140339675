"""Attesters and verifiers selectable by name, for the API, the CLI and configuration files.

Users say *what* proves their side (``"sim"``, ``"snp"``, ``"snp+vtpm"``...) and *which
policy* judges the peer; this module turns those words into the
:class:`~ratls._exchange.LocalAttester` and :class:`~ratls._exchange.PeerVerifier` the
attested TLS stream runs, and into the :class:`~ratls._exchange.AttestationConfig` that
ties them together.

==============  ===========================================================================
name            evidence
==============  ===========================================================================
``sim``         simulated SEV-SNP report (software AMD-SP); trusted only by policies that
                say ``[trust] simulated_hardware = true``
``sim+vtpm``    simulated SVSM confidential VM: SNP report + swtpm vTPM quote
``snp``         this SEV-SNP guest's report (configfs-tsm or /dev/sev-guest)
``snp+vtpm``    this guest's SVSM vTPM (configfs-tsm SVSM attestation + /dev/tpmrm0)
``azure``       Azure confidential VM vTPM: the paravisor's HCL report (NV 0x01400001) and a
                quote by its AK (persistent handle 0x81000003); needs ``certs``
``none``        this side does not attest (the peer must agree to that explicitly)
==============  ===========================================================================

Real attesters check at creation that the kernel interfaces exist and raise
:class:`~ratls.AttesterUnavailable` with a clear message otherwise, so a server fails at
start-up rather than on its first connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ._bound import (
    SNP_MEDIA_TYPE,
    VTPM_MEDIA_TYPE,
    BoundVerifier,
    GuestSnpAttester,
    SimulatedSnpAttester,
    SimulatedVtpmAttester,
    VtpmBoundAttester,
)
from ._errors import AttesterUnavailable
from ._exchange import DEFAULT_MEDIA_TYPE, AttestationConfig, LocalAttester, PeerVerifier
from ._snp_report import ProductLine

if TYPE_CHECKING:
    from pathlib import Path

    from ._policy import Policy

__all__ = [
    "ATTESTER_NAMES",
    "AttesterFactory",
    "attester_names",
    "make_attestation_config",
    "make_attester",
    "make_verifier",
    "register_attester",
    "unregister_attester",
]

#: Names built in, in the order the CLI lists them.
ATTESTER_NAMES: Final = ("sim", "sim+vtpm", "snp", "snp+vtpm", "azure", "none")

#: A factory takes the options of :func:`make_attester` as keywords and returns an attester.
AttesterFactory = Callable[..., LocalAttester]

_TSM_REPORT_ROOT: Final = "/sys/kernel/config/tsm/report"
_SEV_GUEST_DEVICE: Final = "/dev/sev-guest"
_TPM_DEVICE: Final = "/dev/tpmrm0"


def _sim(
    *,
    product: ProductLine = ProductLine.GENOA,
    measurement: bytes | None = None,
    sim_dir: Path | None = None,
    **_: Any,  # noqa: ANN401 - options meant for other attesters are ignored
) -> LocalAttester:
    sp = None
    if sim_dir is not None:
        from .sim import SimulatedAmdSp

        sp = SimulatedAmdSp.load_or_generate(sim_dir, product)
    return SimulatedSnpAttester(sp, product=product, measurement=measurement)


def _sim_vtpm(
    *,
    product: ProductLine = ProductLine.GENOA,
    measurement: bytes | None = None,
    sim_dir: Path | None = None,
    **_: Any,  # noqa: ANN401 - options meant for other attesters are ignored
) -> LocalAttester:
    import shutil

    if shutil.which("swtpm") is None:
        raise AttesterUnavailable("sim+vtpm needs swtpm (the software TPM) on PATH")
    sp = None
    if sim_dir is not None:
        from .sim import SimulatedAmdSp

        sp = SimulatedAmdSp.load_or_generate(sim_dir, product)
    return SimulatedVtpmAttester(sp, product=product, measurement=measurement)


def _snp(
    *,
    certs: tuple[bytes, bytes, bytes] | None = None,
    tsm_root: str = _TSM_REPORT_ROOT,
    sev_guest_device: str = _SEV_GUEST_DEVICE,
    **_: Any,  # noqa: ANN401 - options meant for other attesters are ignored
) -> LocalAttester:
    from .attesters import SnpGuestAttester

    if not (os.path.isdir(tsm_root) or os.path.exists(sev_guest_device)):
        raise AttesterUnavailable(
            f"attester 'snp': this is not an SEV-SNP guest (neither {tsm_root} nor "
            f"{sev_guest_device} exists; is the sev-guest driver loaded?); use 'sim' to "
            "run on the simulator"
        )
    guest = SnpGuestAttester(tsm_root=tsm_root, device=sev_guest_device)
    return GuestSnpAttester(guest, certs=certs)


def _snp_vtpm(
    *,
    certs: tuple[bytes, bytes, bytes] | None = None,
    tsm_root: str = _TSM_REPORT_ROOT,
    tpm_device: str = _TPM_DEVICE,
    **_: Any,  # noqa: ANN401 - options meant for other attesters are ignored
) -> LocalAttester:
    missing = [path for path in (tsm_root, tpm_device) if not os.path.exists(path)]
    if missing:
        raise AttesterUnavailable(
            f"attester 'snp+vtpm': no SVSM vTPM here ({' and '.join(missing)} missing; it "
            "needs configfs-tsm with SVSM attestation and the vTPM device); use 'sim+vtpm' "
            "to run on the simulator"
        )
    from .attesters import SnpGuestAttester
    from .attesters._svsm_vtpm import GuestVtpmAttester

    source = GuestVtpmAttester(snp=SnpGuestAttester(tsm_root=tsm_root), certs=certs)
    return VtpmBoundAttester(source)


def _azure(
    *,
    certs: tuple[bytes, bytes, bytes] | None = None,
    tpm_device: str = _TPM_DEVICE,
    **_: Any,  # noqa: ANN401 - options meant for other attesters are ignored
) -> LocalAttester:
    if not os.path.exists(tpm_device):
        raise AttesterUnavailable(
            f"attester 'azure': no vTPM here ({tpm_device} missing); Azure confidential VMs "
            "expose their paravisor's vTPM there"
        )
    if certs is None:
        raise AttesterUnavailable(
            "attester 'azure': pass certs= (DER VCEK, ASK, ARK): the vTPM holds the HCL "
            "report but not the VCEK chain, which Azure serves from its instance metadata "
            "service"
        )
    from .attesters import AzureVtpmAttester

    source = AzureVtpmAttester(certs=certs, tpm_device=tpm_device)
    try:
        source.hcl_report()  # fail at start-up when this is not an Azure CVM
    except BaseException:
        source.close()
        raise
    return VtpmBoundAttester(source)


_FACTORIES: dict[str, AttesterFactory] = {
    "sim": _sim,
    "sim+vtpm": _sim_vtpm,
    "snp": _snp,
    "snp+vtpm": _snp_vtpm,
    "azure": _azure,
}


def attester_names() -> tuple[str, ...]:
    """Every name :func:`make_attester` accepts (built-in first, then registered)."""
    extra = tuple(sorted(set(_FACTORIES) - set(ATTESTER_NAMES)))
    return ATTESTER_NAMES + extra


def register_attester(name: str, factory: AttesterFactory) -> None:
    """Make ``factory`` available as ``make_attester(name)``.

    Args:
        name: the new name.
        factory: called with the keyword options of :func:`make_attester`; it should
            accept (and may ignore) options it does not know.

    Raises:
        ValueError: the name is taken (built-in or registered) or empty.
    """
    if not name or name in _FACTORIES or name == "none":
        raise ValueError(f"attester name {name!r} is empty or already taken")
    _FACTORIES[name] = factory


def unregister_attester(name: str) -> None:
    """Remove a name added with :func:`register_attester`.

    Raises:
        ValueError: the name is built in.
        KeyError: the name is not registered.
    """
    if name in ATTESTER_NAMES:
        raise ValueError(f"attester {name!r} is built in")
    del _FACTORIES[name]


def make_attester(name: str, **options: Any) -> LocalAttester | None:  # noqa: ANN401
    """Create the attester called ``name``.

    Args:
        name: one of :func:`attester_names`.
        **options: ``product`` (:class:`~ratls.ProductLine`), ``measurement`` (48 bytes)
            and ``sim_dir`` (a directory to keep the simulator's identity in, so that
            separate processes share one simulated machine) for the simulators;
            ``certs`` (DER VCEK, ASK, ARK) for real guests whose host supplies no
            certificate table (always for ``azure``); ``tpm_device`` for the vTPM
            attesters.

    Returns:
        The attester, or None for ``"none"``.  Some attesters own resources (the
        simulated vTPM runs swtpm): call their ``close()`` when done, if they have one.

    Raises:
        ValueError: unknown name.
        AttesterUnavailable: the hardware interface this attester needs is missing.
    """
    if name == "none":
        return None
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown attester {name!r}; choose one of {', '.join(attester_names())}")
    return factory(**options)


def make_verifier(
    policy: Policy | None,
    *,
    trust_simulator: bool = False,
    accept: tuple[str, ...] = ("snp", "snp+vtpm"),
    product: ProductLine | None = None,
) -> BoundVerifier:
    """The verifier for bound-mode evidence under ``policy``.

    Args:
        policy: the appraisal policy (required).
        trust_simulator: accept the simulator's roots even if the policy does not.
        accept: the evidence kinds to accept (``"snp"``, ``"snp+vtpm"``).
        product: product line for version-2 reports.

    Returns:
        A :class:`~ratls._bound.BoundVerifier`.

    Raises:
        PolicyError: no policy.
    """
    return BoundVerifier(policy, trust_simulator=trust_simulator, accept=accept, product=product)


def make_attestation_config(
    attester: LocalAttester | None,
    verifier: PeerVerifier | None,
    *,
    run_in_thread: bool | None = None,
) -> AttestationConfig:
    """Tie an attester and a verifier into an exchange configuration.

    The media type of our evidence is the attester's ``media_type`` attribute (the
    SNP + vTPM type if it has none); the media types we accept are the verifier's
    ``media_types`` (both bound-mode types if it has none).

    Args:
        attester: ours, or None when this side does not attest.
        verifier: the peer's, or None when the peer need not attest.
        run_in_thread: call them in a worker thread.  None (the default) decides for
            each from its ``blocking`` attribute: a thread unless it says
            ``blocking = False`` (an object without the attribute is assumed to block).
            Running pure computation in the event loop is faster: a worker thread costs
            two hand-offs and, while it runs Python code, holds the interpreter lock the
            event loop needs.  An explicit True or False applies to both.

    Returns:
        The configuration.
    """
    verify_in_thread: bool | None = None
    if run_in_thread is None:
        run_in_thread = _blocks(attester)
        verify_in_thread = _blocks(verifier)
    media_type = getattr(attester, "media_type", DEFAULT_MEDIA_TYPE)
    accepted = getattr(verifier, "media_types", frozenset({SNP_MEDIA_TYPE, VTPM_MEDIA_TYPE}))
    return AttestationConfig(
        attester=attester,
        verifier=verifier,
        media_type=str(media_type),
        accepted_media_types=frozenset(accepted),
        run_in_thread=run_in_thread,
        verify_in_thread=verify_in_thread,
    )


def _blocks(part: object) -> bool:
    """Whether an attester or verifier must be called in a worker thread."""
    return part is not None and getattr(part, "blocking", True) is not False
