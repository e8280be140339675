"""The outcome of a successful verification: an immutable, unforgeable AttestationResult.

Transports and the gateway accept only this type as proof that a peer passed attestation,
and only the verifier can create one (see :mod:`ratls._nopublic`).  It keeps the verified
evidence objects themselves, plus the facts a log line or an access decision needs: which
profile bound the evidence, which root it chains to, which policy admitted it, and whether
the evidence could be replayed (certificate-carried evidence can; exporter-bound cannot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from ._nopublic import NoPublicConstructor

if TYPE_CHECKING:
    from datetime import datetime

    from ._snp_verify import VerifiedSnpReport
    from ._vtpm_evidence import VerifiedVtpmEvidence

__all__ = ["AttestationResult"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationResult(metaclass=NoPublicConstructor):
    """A peer's verified and appraised evidence.

    Attributes:
        profile: how the evidence was bound and carried, e.g. ``"snp"`` (a bare report),
            ``"svsm"``, ``"svsm-paper"`` or ``"azure"`` (vTPM profiles).
        snp: the verified SNP report with its endorsement chain.
        trust_anchor: the root the chain ends in: ``"AMD"`` or ``"simulator"``.
        appraised: True when a policy was applied; False for an authenticity-only check
            (``ratls snp verify`` without ``--policy``), which gateways never accept.
        policy_digest: SHA-256 of the policy that admitted the evidence, if any.
        verified_at: the time used for certificate validity and evidence age.
        replayable: True when nothing in the evidence is fresh for this verification
            (certificate-carried evidence), so its age bound is all that limits replay.
        ak_binding: for vTPM profiles, how the AK was tied to the attested vTPM:
            ``"activated"``, ``"vmpl0-bound"`` or ``"unproven"``; None without a vTPM.
        vtpm: the verified vTPM evidence (EK, AK, quote, PCRs), None without a vTPM.
    """

    profile: str
    snp: VerifiedSnpReport
    trust_anchor: str
    appraised: bool
    policy_digest: str | None
    verified_at: datetime
    replayable: bool = False
    ak_binding: str | None = None
    vtpm: VerifiedVtpmEvidence | None = None

    def claims(self) -> dict[str, object]:
        """A JSON-friendly summary of what was verified (for CLIs, logs and headers)."""
        report = self.snp.report
        return {
            "profile": self.profile,
            "trust_anchor": self.trust_anchor,
            "appraised": self.appraised,
            "policy_digest": self.policy_digest,
            "verified_at": self.verified_at.isoformat(),
            "replayable": self.replayable,
            "ak_binding": self.ak_binding,
            "vtpm": self.vtpm.claims() if self.vtpm is not None else None,
            "snp": {
                "product": self.snp.product.value,
                "signing_key": self.snp.key_kind.name,
                "version": report.version,
                "vmpl": report.vmpl,
                "measurement": report.measurement.hex(),
                "report_data": report.report_data.hex(),
                "host_data": report.host_data.hex(),
                "debug": report.policy.debug,
                "migrate_ma": report.policy.migrate_ma,
                "reported_tcb": report.reported_tcb.components(),
                "guest_svn": report.guest_svn,
                "chip_id": report.chip_id.hex(),
            },
        }

    def summary(self) -> str:
        """One line for logs: product, key, anchor, measurement prefix, TCB."""
        report = self.snp.report
        line = (
            f"{self.profile} {self.snp.product.value} {self.snp.key_kind.name} "
            f"anchor={self.trust_anchor} vmpl={report.vmpl} "
            f"measurement={report.measurement.hex()[:16]}... tcb=[{report.reported_tcb}]"
        )
        if self.ak_binding is not None:
            line += f" ak={self.ak_binding}"
        return line
