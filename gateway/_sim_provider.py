"""The ``simulator`` attestation provider: SEV-SNP reports from the ratls simulator.

This provider lets a gateway run end to end on a laptop.  Its attester asks a software
AMD-SP (:class:`ratls.sim.SimulatedAmdSp`) for an SNP report whose REPORT_DATA is the
binder, and sends the report with its ARK/ASK/VCEK chain; its verifier checks the report
with :func:`ratls._verify.verify_snp_attestation` under the configured policy (which must
say ``[trust] simulated_hardware = true`` in plain words, or the simulator's root is
refused like any unknown root), with the binder as the expected REPORT_DATA.

It carries a bare SNP report, not the SNP + vTPM bundle of real deployments: the
evidence media type is private to the gateway (:data:`SIM_MEDIA_TYPE`) so it can never be
mistaken for that bundle.  Settings (``[attestation]`` table)::

    attester = "simulator"
    policy = "policy.toml"        # required: peers are always appraised
    product = "Genoa"             # Milan, Genoa or Turin (default Genoa)
    state_dir = "sim-state"       # keep the simulated machine across runs (optional)
    measurement = "<96 hex>"      # launch digest to claim (default: the simulator's)
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import cbor2
from cryptography.hazmat.primitives.serialization import Encoding

from ratls._amd_certs import load_amd_certificate
from ratls._errors import EvidenceFormatError, RatlsError
from ratls._exchange import AttestationConfig
from ratls._policy import load_policy
from ratls._snp_report import ProductLine
from ratls._snp_verify import SnpEndorsements
from ratls._verify import verify_snp_attestation

from ._attestation import register_provider, registered_providers
from ._config import AttestationSettings, ConfigError, ConfigProblem

if TYPE_CHECKING:
    from ratls._policy import Policy
    from ratls._result import AttestationResult
    from ratls.sim import SimulatedAmdSp

__all__ = [
    "SIM_MEDIA_TYPE",
    "SimulatedSnpAttester",
    "SnpReportVerifier",
    "register_simulator_provider",
    "simulator_provider",
]

#: Media type of the simulator provider's evidence: CBOR {report, vcek, ask, ark}.
SIM_MEDIA_TYPE: Final = "application/vnd.ratls.gateway-sim-snp+cbor"

_KEYS: Final = frozenset({"report", "vcek", "ask", "ark"})
# Report + three DER certificates; anything far larger is not this evidence.
_MAX_EVIDENCE: Final = 64 * 1024


@final
class SimulatedSnpAttester:
    """Produces simulator SNP evidence carrying the binder as REPORT_DATA.

    Args:
        sp: the simulated AMD-SP.
        measurement: the launch digest to report (None: the simulator's default).
    """

    def __init__(self, sp: SimulatedAmdSp, measurement: bytes | None = None) -> None:
        self._sp = sp
        self._measurement = measurement

    def evidence(self, binder: bytes) -> bytes:
        """Return CBOR ``{report, vcek, ask, ark}`` for ``binder``.

        Raises:
            EvidenceFormatError: the binder is not 64 bytes.
        """
        if len(binder) != 64:
            raise EvidenceFormatError("binder must be 64 bytes", structure="REPORT_DATA")
        report = self._sp.build_report(report_data=binder, measurement=self._measurement)

        return bytes(
            cbor2.dumps(
                {
                    "report": report.to_bytes(),
                    "vcek": self._sp.leaf.public_bytes(Encoding.DER),
                    "ask": self._sp.ask.public_bytes(Encoding.DER),
                    "ark": self._sp.ark.public_bytes(Encoding.DER),
                },
                canonical=True,
            )
        )

    def __repr__(self) -> str:
        return f"<SimulatedSnpAttester {self._sp!r}>"


@final
class SnpReportVerifier:
    """Verifies simulator SNP evidence against a policy, the binder as REPORT_DATA.

    Args:
        policy: the appraisal policy (required: gateways never accept unappraised peers).
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def verify(self, evidence: bytes, binder: bytes) -> AttestationResult:
        """Return the verified result, or raise naming the failed check.

        Raises:
            EvidenceFormatError: the evidence is not CBOR {report, vcek, ask, ark}.
            RatlsError: any verification or appraisal failure.
        """
        if len(evidence) > _MAX_EVIDENCE:
            raise EvidenceFormatError("evidence too large", structure="sim-snp evidence")
        try:
            document = cbor2.loads(evidence)
        except Exception as exc:  # cbor2 raises several types for bad input
            raise EvidenceFormatError(
                f"not CBOR: {type(exc).__name__}", structure="sim-snp evidence"
            ) from None
        if (
            not isinstance(document, dict)
            or set(document) != _KEYS
            or not all(isinstance(v, bytes) for v in document.values())
        ):
            raise EvidenceFormatError(
                "expected a map of byte strings {report, vcek, ask, ark}",
                structure="sim-snp evidence",
            )
        endorsements = SnpEndorsements(
            leaf=load_amd_certificate(document["vcek"]),
            intermediate=load_amd_certificate(document["ask"]),
            root=load_amd_certificate(document["ark"]),
        )
        return verify_snp_attestation(
            document["report"],
            endorsements,
            policy=self.policy,
            at=datetime.datetime.now(datetime.UTC),
            expected_report_data=binder,
        )

    def __repr__(self) -> str:
        return f"<SnpReportVerifier policy=sha256:{self.policy.digest()[:16]}...>"


def _problem(key: str, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(location=f"attestation.{key}", message=message)])


def simulator_provider(settings: AttestationSettings) -> AttestationConfig:
    """Build the simulator's AttestationConfig from ``[attestation]`` settings.

    Raises:
        ConfigError: a missing policy, unknown option, bad product or measurement, or a
            policy file that cannot be loaded (with its own error).
    """
    from ratls.sim import SimulatedAmdSp, simulated_amd_sp

    unknown = set(settings.options) - {"product", "state_dir", "measurement"}
    if unknown:
        raise _problem(sorted(unknown)[0], "unknown key (known: product, state_dir, measurement)")
    if settings.policy is None:
        raise _problem("policy", "missing: the simulator provider needs an appraisal policy")
    try:
        policy = load_policy(settings.policy)
    except RatlsError as exc:
        raise _problem("policy", str(exc)) from exc
    product_name = settings.options.get("product", "Genoa")
    try:
        product = ProductLine(product_name)
    except ValueError:
        raise _problem("product", f"{product_name!r} is not Milan, Genoa or Turin") from None
    measurement: bytes | None = None
    text = settings.options.get("measurement")
    if text is not None:
        try:
            measurement = bytes.fromhex(str(text))
        except ValueError:
            measurement = None
        if measurement is None or len(measurement) != 48:
            raise _problem("measurement", "must be 96 hex digits (a SHA-384 launch digest)")
    state_dir = settings.options.get("state_dir")
    if state_dir is not None:
        if not isinstance(state_dir, str):
            raise _problem("state_dir", "must be a path")
        path = Path(state_dir)
        if settings.base_dir is not None and not path.is_absolute():
            path = settings.base_dir / path
        sp = SimulatedAmdSp.load_or_generate(path, product)
    else:
        sp = simulated_amd_sp(product)
    return AttestationConfig(
        attester=SimulatedSnpAttester(sp, measurement),
        verifier=SnpReportVerifier(policy),
        media_type=SIM_MEDIA_TYPE,
        accepted_media_types=frozenset({SIM_MEDIA_TYPE}),
    )


def register_simulator_provider() -> None:
    """Register :func:`simulator_provider` as ``"simulator"`` (idempotent)."""
    if "simulator" not in registered_providers():
        register_provider("simulator", simulator_provider)
