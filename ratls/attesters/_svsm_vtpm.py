"""SNP + vTPM evidence on a real SEV-SNP guest whose vTPM the SVSM runs.

:class:`GuestVtpmAttester` gathers the bundle of :mod:`ratls._vtpm_evidence`: the report
comes from configfs-tsm with ``service_provider=svsm`` (the SVSM's vTPM service
attestation, whose manifest is the EK) or, for ``svsm-paper``, from the vTPM's NV index
0x01C00002; the quote, the PCR values and credential activation come from the vTPM
(``/dev/tpmrm0`` through :class:`~ratls._tpm_device.Tpm`).  The kernel interface and the
TPM are injectable, which is how it is tested without hardware; the simulator
(:class:`~ratls.sim.SimulatedSvsm`) offers the same two methods (:class:`VtpmAttester`).

Everything here blocks (TPM commands, configfs); from trio, use
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, final

from .._errors import AttesterError, RatlsError
from .._tpm_device import EK_PERSISTENT_HANDLE, NV_INDEX_RSA2048_EK_CERT, DeviceTransport, Tpm
from .._tpm_quote import compute_pcr_digest
from .._tpm_structs import TpmAlgId, TpmsQuoteInfo, parse_tpm2b_attest, parse_tpmt_signature
from .._vtpm_evidence import VtpmEvidence, VtpmProfile
from .._vtpm_keys import VtpmIdentity, activate_credential, manufacture_vtpm
from ._snp_guest import SVSM_VTPM_SERVICE_GUID, SnpGuestAttester, SvsmServiceRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._tpm_credential import Credential
    from .._tpm_device import Attestation

__all__ = [
    "DEFAULT_PCR_SELECTION",
    "QUOTE_ATTEMPTS",
    "GuestEvidence",
    "GuestVtpmAttester",
    "VtpmAttester",
    "quote_and_pcrs",
]

#: PCRs quoted unless the caller chooses: the SHA-256 bank, PCRs 0-7 (firmware, boot
#: loader and Secure Boot state, where an SVSM guest's boot is measured).
DEFAULT_PCR_SELECTION: Final[Mapping[TpmAlgId, tuple[int, ...]]] = {
    TpmAlgId.SHA256: tuple(range(8)),
}
_NONCE_SIZE: Final = 64


class VtpmAttester(Protocol):
    """What produces SNP + vTPM evidence: the simulator and the real guest alike."""

    def collect_evidence(
        self,
        *,
        binder: bytes,
        nonce: bytes | None = None,
        selection: Mapping[TpmAlgId, Iterable[int]] = DEFAULT_PCR_SELECTION,
        activation_proof: bytes | None = None,
    ) -> VtpmEvidence:
        """Gather a bundle whose quote carries ``binder`` as qualifying data."""
        ...

    def activate(self, credential: Credential) -> bytes:
        """Answer a credential challenge with the vTPM (TPM2_ActivateCredential)."""
        ...


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GuestEvidence:
    """A guest-requested SNP report and what endorses it (exactly one of the two).

    Sources that can ask for one (the simulator, :class:`GuestVtpmAttester`; not an Azure
    CVM, whose guest has no SNP guest interface) offer ``guest_evidence(report_data)``:
    ``cert`` mode puts that report in the interoperable RA-TLS extension (REPORT_DATA =
    SHA-256(claims) || zeros), while the VMPL-0 report in the bundle binds the vTPM.

    Attributes:
        report: the raw report.
        certs: DER VCEK|VLEK, ASK|ASVK, ARK.
        cert_table: the extended-report certificate table from the host.
    """

    report: bytes
    certs: tuple[bytes, bytes, bytes] | None = None
    cert_table: bytes | None = None


#: Quotes made before giving up when the PCRs change between a quote and their reading.
QUOTE_ATTEMPTS: Final = 3

#: PCR values as :meth:`~ratls._tpm_device.Tpm.pcr_read` returns them.
PcrValues = dict[TpmAlgId, dict[int, bytes]]


def _matches(attestation: Attestation, values: PcrValues) -> bool:
    """Whether ``values`` are the PCR values ``attestation`` (a quote) digested."""
    try:
        info = parse_tpm2b_attest(attestation.attest).attested
        if not isinstance(info, TpmsQuoteInfo):
            return False
        hash_alg = parse_tpmt_signature(attestation.signature).hash
        digest, _ = compute_pcr_digest(info.pcr_select, values, hash_alg)
    except RatlsError:
        return False
    return hmac.compare_digest(digest, info.pcr_digest)


def quote_and_pcrs(
    tpm: Tpm,
    identity: VtpmIdentity,
    binder: bytes,
    selection: Mapping[TpmAlgId, Iterable[int]],
    *,
    known: PcrValues | None = None,
) -> tuple[Attestation, PcrValues]:
    """Quote, and the values of the PCRs the quote covers, checked against its pcrDigest.

    PCRs are read after the quote, so whoever extends them meanwhile (IMA on a real guest)
    would make the values disagree with the quote and the verifier refuse the bundle.
    When they disagree, quote again (:data:`QUOTE_ATTEMPTS` quotes in all), trying the
    values just read first: what was measured after one quote usually still holds for the
    next.  ``known`` values (from an earlier call) spare the PCR_Read when the quote's
    digest shows they are still current; stale ones cost nothing but that read.

    Raises:
        AttesterError: the PCRs changed between every quote and its reading, or on
            transport errors.
        TpmCommandError: the TPM refused.
    """
    chosen = {TpmAlgId(bank): tuple(sorted(set(pcrs))) for bank, pcrs in selection.items()}
    for _ in range(QUOTE_ATTEMPTS):
        attestation = tpm.quote(identity.ak_handle, binder, chosen)
        if known is not None and _matches(attestation, known):
            return attestation, known
        known = tpm.pcr_read(chosen)
        if _matches(attestation, known):
            return attestation, known
    raise AttesterError(
        f"the quoted PCRs changed between each of {QUOTE_ATTEMPTS} quotes and their reading"
    )


@final
class GuestVtpmAttester:
    """SNP + vTPM evidence on a real SEV-SNP guest with an SVSM vTPM.

    The EK is recreated from the TCG template (the same key, since the vTPM's seed does
    not change while the VM runs) and an AK is created under it, on first use.

    Args:
        profile: ``svsm`` (configfs-tsm SVSM service attestation) or ``svsm-paper``
            (the report in NV 0x01C00002).
        snp: the kernel interface for reports (tests inject a simulated kernel).
        tpm: the TPM (``/dev/tpmrm0`` by default; tests inject swtpm).
        tpm_factory: how to open the default TPM.
        certs: DER VCEK|VLEK, ASK|ASVK, ARK to send when the host supplies no
            certificate table.
        endorsement_auth: the endorsement hierarchy's auth value.
        guest_vmpl: the VMPL the guest OS runs at under the SVSM (1 by default), for the
            report of :meth:`guest_evidence`.

    Raises:
        ValueError: for the azure profile (read the HCL report with tpm2-tools instead).
    """

    def __init__(
        self,
        *,
        profile: VtpmProfile = VtpmProfile.SVSM,
        snp: SnpGuestAttester | None = None,
        tpm: Tpm | None = None,
        tpm_factory: Callable[[], Tpm] | None = None,
        certs: tuple[bytes, bytes, bytes] | None = None,
        endorsement_auth: bytes = b"",
        guest_vmpl: int = 1,
    ) -> None:
        if profile is VtpmProfile.AZURE:
            raise ValueError("the azure profile has no attester here")
        self._profile = VtpmProfile(profile)
        self._snp = snp if snp is not None else SnpGuestAttester()
        self._guest_vmpl = guest_vmpl
        self._tpm = tpm
        self._tpm_factory = tpm_factory or (lambda: Tpm(DeviceTransport()))
        self._certs = certs
        self._endorsement_auth = endorsement_auth
        self._identity: VtpmIdentity | None = None
        # The PCR values of the last quote: usually still current, which the next
        # quote's digest shows, so its PCR_Read can be skipped.
        self._known_pcrs: PcrValues | None = None

    def __repr__(self) -> str:
        return f"GuestVtpmAttester(profile={self._profile.value}, tpm={self._tpm!r})"

    def _ready(self) -> tuple[Tpm, VtpmIdentity]:
        if self._tpm is None:
            self._tpm = self._tpm_factory()
        if self._identity is None:
            self._identity = manufacture_vtpm(self._tpm, endorsement_auth=self._endorsement_auth)
        return self._tpm, self._identity

    def activate(self, credential: Credential) -> bytes:
        """Answer a credential challenge (TPM2_ActivateCredential).

        Raises:
            AttesterError: the TPM refused or is unavailable.
        """
        tpm, identity = self._ready()
        return activate_credential(
            tpm,
            identity,
            credential.id_object,
            credential.encrypted_secret,
            endorsement_auth=self._endorsement_auth,
        )

    def guest_evidence(self, report_data: bytes) -> GuestEvidence:
        """A report at the guest's own VMPL over ``report_data``, for ``cert`` mode.

        Raises:
            AttesterUnavailable: no configfs-tsm or /dev/sev-guest.
            AttesterError: the kernel refused, or no endorsements are at hand.
        """
        guest = self._snp.get_report(report_data, vmpl=self._guest_vmpl)
        if guest.certs is not None:
            return GuestEvidence(report=guest.report, cert_table=guest.certs)
        if self._certs is None:
            raise AttesterError(
                "the host supplied no certificate table; pass certs= (VCEK, ASK, ARK from "
                "AMD's KDS)"
            )
        return GuestEvidence(report=guest.report, certs=self._certs)

    def _endorsements(self, table: bytes | None) -> dict[str, object]:
        if table is not None:
            return {"cert_table": table}
        if self._certs is None:
            raise AttesterError(
                "the host supplied no certificate table; pass certs= (VCEK, ASK, ARK from "
                "AMD's KDS)"
            )
        return {"certs": self._certs}

    def collect_evidence(
        self,
        *,
        binder: bytes,
        nonce: bytes | None = None,
        selection: Mapping[TpmAlgId, Iterable[int]] = DEFAULT_PCR_SELECTION,
        activation_proof: bytes | None = None,
    ) -> VtpmEvidence:
        """Gather a bundle from the kernel and the TPM.

        Args:
            binder: the quote's qualifying data.
            nonce: svsm: the 64-byte nonce for the SVSM (random by default).
            selection: the PCRs to quote.
            activation_proof: a secret recovered by :meth:`activate`, to carry along.

        Returns:
            The bundle.

        Raises:
            AttesterUnavailable: no configfs-tsm with SVSM support, or no TPM.
            AttesterError: the kernel, SVSM or TPM refused, or the SVSM's manifest is not
                this TPM's EK.
        """
        tpm, identity = self._ready()
        attestation, values = quote_and_pcrs(
            tpm, identity, binder, selection, known=self._known_pcrs
        )
        self._known_pcrs = values
        common: dict[str, object] = {
            "ak_public": identity.ak_public,
            "quote_attest": attestation.attest[2:],
            "quote_signature": attestation.signature,
            "activation_proof": activation_proof,
        }
        if self._profile is VtpmProfile.SVSM:
            chosen = nonce if nonce is not None else os.urandom(_NONCE_SIZE)
            guest = self._snp.get_report(
                chosen, svsm=SvsmServiceRequest(service_guid=SVSM_VTPM_SERVICE_GUID)
            )
            if guest.manifest != identity.ek_tpmt_public:
                raise AttesterError("the SVSM's vTPM manifest is not this TPM's EK")
            return VtpmEvidence.with_pcr_mapping(
                pcrs=values,
                profile=VtpmProfile.SVSM,
                snp_report=guest.report,
                svsm_nonce=chosen,
                svsm_manifest=guest.manifest,
                **self._endorsements(guest.certs),
                **common,
            )
        ek = tpm.read_public(EK_PERSISTENT_HANDLE).public
        return VtpmEvidence.with_pcr_mapping(
            pcrs=values,
            profile=VtpmProfile.SVSM_PAPER,
            snp_report=tpm.nv_read(NV_INDEX_RSA2048_EK_CERT),
            ek_public=ek,
            **self._endorsements(None),
            **common,
        )
