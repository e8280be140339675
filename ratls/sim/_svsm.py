"""A simulated confidential VM with an SVSM-run vTPM.

:class:`SimulatedSvsm` plays the parts a real SEV-SNP machine with an SVSM plays:

* the **AMD-SP** (a :class:`~ratls.sim.SimulatedAmdSp`) signs attestation reports;
* the **SVSM at VMPL 0** owns a vTPM - here a real TPM 2.0 (swtpm) manufactured afresh at
  each boot, so every boot has a new EK and no EK certificate - and answers
  ``SVSM_ATTEST_SINGLE_SERVICE`` for the vTPM service: the manifest is the EK's marshalled
  TPMT_PUBLIC (manifest version 0) and the report, requested at VMPL 0, carries
  REPORT_DATA = SHA-512(nonce[64] || manifest);
* for the SVSM-vTPM prototype's encoding (``svsm-paper``) the SVSM instead requests, once at
  boot, a VMPL-0 report with REPORT_DATA = SHA-512(EK TPM2B_PUBLIC) and stores it in the
  vTPM's NV index 0x01C00002 (where an EK certificate would be), for the guest to read back
  with TPM2_NV_Read;
* the **guest OS** (at VMPL 1) uses the vTPM: it creates an AK under the EK (done at boot
  here), quotes PCRs with the verifier's binder as qualifying data, and answers credential
  activation challenges.

:meth:`SimulatedSvsm.collect_evidence` assembles a :class:`~ratls._vtpm_evidence.VtpmEvidence`
from all of that, and :meth:`SimulatedSvsm.activate` answers :func:`begin_activation`.

:class:`~ratls.attesters.GuestVtpmAttester` offers the same two methods on a real guest
(configfs-tsm and ``/dev/tpmrm0``); both follow :class:`~ratls.attesters._svsm_vtpm.VtpmAttester`.

Everything here blocks (TPM commands, process start-up); from trio, use
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from cryptography.hazmat.primitives.serialization import Encoding

from .._errors import AttesterError
from .._steps import run_inline
from .._tpm_device import (
    NV_INDEX_RSA2048_EK_CERT,
    Tpm,
)
from .._tpm_structs import TpmAlgId
from .._vtpm_evidence import VtpmEvidence, VtpmProfile
from ..attesters._snp_guest import SVSM_VTPM_SERVICE_GUID
from ..attesters._svsm_vtpm import DEFAULT_PCR_SELECTION as DEFAULT_PCR_SELECTION
from ..attesters._svsm_vtpm import GuestEvidence, quote_and_pcrs
from ..attesters._svsm_vtpm import VtpmAttester as VtpmAttester
from ._swtpm import Swtpm, VtpmIdentity, activate_credential, manufacture_vtpm, store_report_in_nv

if TYPE_CHECKING:
    import uuid
    from collections.abc import Iterable, Mapping
    from types import TracebackType

    from .._tpm_credential import Credential
    from .._tpm_device import Attestation
    from ._amd_sp import SimulatedAmdSp

__all__ = [
    "DEFAULT_PCR_SELECTION",
    "SVSM_ATTEST_SINGLE_SERVICE",
    "SVSM_VTPM_MANIFEST_VERSION",
    "SimulatedSvsm",
    "SvsmAttestation",
    "VtpmAttester",
]

#: SVSM call identifier of SVSM_ATTEST_SINGLE_SERVICE: protocol 1 (attestation), call 1.
SVSM_ATTEST_SINGLE_SERVICE: Final = (1 << 32) | 1
#: The only vTPM service manifest version the SVSM specification defines.
SVSM_VTPM_MANIFEST_VERSION: Final = 0
_NONCE_SIZE: Final = 64


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SvsmAttestation:
    """What SVSM_ATTEST_SINGLE_SERVICE returns to the guest.

    Attributes:
        report: the VMPL-0 ATTESTATION_REPORT (0x4A0 bytes).
        manifest: the service manifest REPORT_DATA covers (the EK's TPMT_PUBLIC).
        certs: the extended-report certificate table, or None when not requested.
    """

    report: bytes
    manifest: bytes
    certs: bytes | None

    def __repr__(self) -> str:
        certs = "none" if self.certs is None else f"{len(self.certs)} bytes"
        return (
            f"SvsmAttestation(report=<{len(self.report)} bytes>, "
            f"manifest=<{len(self.manifest)} bytes>, certs={certs})"
        )


def _certs_der(sp: SimulatedAmdSp) -> tuple[bytes, bytes, bytes]:
    return (
        sp.leaf.public_bytes(Encoding.DER),
        sp.ask.public_bytes(Encoding.DER),
        sp.ark.public_bytes(Encoding.DER),
    )


@final
class SimulatedSvsm:
    """A simulated SEV-SNP confidential VM whose SVSM runs a (swtpm) vTPM.

    Use as a context manager: entering boots the VM (starts a fresh swtpm, manufactures
    the EK and an AK, and for ``svsm-paper`` stores the VMPL-0 report in NV), leaving shuts
    it down and wipes the vTPM.  One instance boots once; make a new one to reboot (and get
    a new EK).

    Args:
        sp: the simulated AMD-SP that signs reports.
        profile: ``svsm`` or ``svsm-paper``.
        measurement: the launch digest to report (the simulator's default otherwise).
        report_version: SNP report version (2, 3 or 5).
        ak_type: ``"ecc"`` (P-256, the default: a quote costs swtpm about 0.4 ms against
            1.9 ms with RSA-2048) or ``"rsa"``.

    Raises:
        ValueError: for the azure profile (not simulated here) or a bad argument.
    """

    def __init__(
        self,
        sp: SimulatedAmdSp,
        *,
        profile: VtpmProfile = VtpmProfile.SVSM,
        measurement: bytes | None = None,
        report_version: int = 3,
        ak_type: str = "ecc",
    ) -> None:
        if profile is VtpmProfile.AZURE:
            raise ValueError("the azure profile is verified, not simulated, here")
        self._sp = sp
        # The VCEK, ASK and ARK in DER, sent with every bundle: encoded once.
        self._certs = _certs_der(sp)
        self._profile = VtpmProfile(profile)
        self._measurement = measurement
        self._report_version = report_version
        self._ak_type = ak_type
        self._swtpm: Swtpm | None = None
        self._tpm: Tpm | None = None
        self._identity: VtpmIdentity | None = None
        # The last quote's PCR values (checked against each new quote before reuse).
        self._known_pcrs: dict[TpmAlgId, dict[int, bytes]] | None = None

    def __repr__(self) -> str:
        state = "running" if self._tpm is not None else "off"
        return f"SimulatedSvsm(profile={self._profile.value}, {state}, sp={self._sp!r})"

    @property
    def sp(self) -> SimulatedAmdSp:
        """The simulated AMD-SP."""
        return self._sp

    @property
    def profile(self) -> VtpmProfile:
        """The binding profile this VM implements."""
        return self._profile

    @property
    def tpm(self) -> Tpm:
        """The running vTPM.

        Raises:
            AttesterError: the VM is not running.
        """
        if self._tpm is None:
            raise AttesterError("the simulated VM is not running")
        return self._tpm

    @property
    def identity(self) -> VtpmIdentity:
        """The EK and AK manufactured at boot.

        Raises:
            AttesterError: the VM is not running.
        """
        if self._identity is None:
            raise AttesterError("the simulated VM is not running")
        return self._identity

    # --- boot and shutdown ----------------------------------------------------------------

    def __enter__(self) -> SimulatedSvsm:
        if self._swtpm is not None:
            raise RuntimeError("a SimulatedSvsm boots once; create a new one to reboot")
        self._swtpm = Swtpm()
        self._tpm = self._swtpm.__enter__()
        try:
            self._identity = manufacture_vtpm(self._tpm, ak_type=self._ak_type)
            if self._profile is VtpmProfile.SVSM_PAPER:
                # The prototype's SVSM: one VMPL-0 report at boot, over the EK TPM2B_PUBLIC,
                # kept where an unmodified agent looks for the EK certificate.
                data = hashlib.sha512(self._identity.ek_public).digest()
                store_report_in_nv(self._tpm, self._vmpl0_report(data))
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        swtpm, self._swtpm = self._swtpm, None
        self._tpm = None
        self._identity = None
        if swtpm is not None:
            swtpm.__exit__(None, None, None)
        self._swtpm = swtpm  # keep it set: a shut-down instance cannot boot again

    # --- the SVSM (VMPL 0) ------------------------------------------------------------------

    def _vmpl0_report(self, report_data: bytes) -> bytes:
        return run_inline(
            self._sp.report_bytes_steps(
                report_data=report_data,
                version=self._report_version,
                vmpl=0,
                measurement=self._measurement,
            )
        )

    def attest_single_service(
        self,
        *,
        service_guid: uuid.UUID,
        nonce: bytes,
        manifest_version: int = SVSM_VTPM_MANIFEST_VERSION,
        with_certs: bool = True,
    ) -> SvsmAttestation:
        """SVSM_ATTEST_SINGLE_SERVICE, as the SVSM at VMPL 0 answers it.

        Args:
            service_guid: the service; only the vTPM service exists here.
            nonce: the caller's 64-byte nonce.
            manifest_version: must be 0.
            with_certs: also return the certificate table (an extended report).

        Returns:
            The VMPL-0 report over SHA-512(nonce || manifest), the manifest (the EK's
            TPMT_PUBLIC) and the certificate table.

        Raises:
            AttesterError: SVSM_ERR_INVALID_PARAMETER (unknown service, unsupported
                manifest version, a nonce that is not 64 bytes) or the VM is not running.
        """
        if service_guid != SVSM_VTPM_SERVICE_GUID:
            raise AttesterError(f"SVSM_ERR_INVALID_PARAMETER: unknown service {service_guid}")
        if manifest_version != SVSM_VTPM_MANIFEST_VERSION:
            raise AttesterError(
                f"SVSM_ERR_INVALID_PARAMETER: manifest version {manifest_version} (only 0)"
            )
        if len(nonce) != _NONCE_SIZE:
            raise AttesterError(f"SVSM_ERR_INVALID_PARAMETER: nonce of {len(nonce)} bytes")
        manifest = self.identity.ek_tpmt_public
        report = self._vmpl0_report(hashlib.sha512(bytes(nonce) + manifest).digest())
        return SvsmAttestation(
            report=report,
            manifest=manifest,
            certs=self._sp.cert_table() if with_certs else None,
        )

    def guest_evidence(self, report_data: bytes) -> GuestEvidence:
        """A VMPL-1 report over ``report_data`` with the simulator's certificates.

        Raises:
            ValueError: ``report_data`` is not 64 bytes.
        """
        return GuestEvidence(report=self.guest_report(report_data), certs=self._certs)

    def guest_report(self, report_data: bytes, *, vmpl: int = 1) -> bytes:
        """A report the guest OS requests itself, at its own VMPL (1 by default).

        The guest chooses REPORT_DATA freely, which is why a vTPM binding is only
        believed from a VMPL-0 report.

        Args:
            report_data: 64 bytes.
            vmpl: the guest's VMPL (1-3).

        Returns:
            The raw report.

        Raises:
            ValueError: VMPL 0 (reserved for the SVSM) or bad arguments.
        """
        if not 1 <= vmpl <= 3:
            raise ValueError("the guest OS runs at VMPL 1-3; VMPL 0 is the SVSM's")
        return run_inline(
            self._sp.report_bytes_steps(
                report_data=report_data,
                version=self._report_version,
                vmpl=vmpl,
                measurement=self._measurement,
            )
        )

    # --- the guest OS (VMPL 1) ----------------------------------------------------------------

    def read_nv_report(self) -> bytes:
        """svsm-paper: read the boot-time report from NV 0x01C00002 (TPM2_NV_Read).

        Raises:
            TpmCommandError: nothing is stored there (e.g. the svsm profile).
            AttesterError: the VM is not running, or on transport errors.
        """
        return self.tpm.nv_read(NV_INDEX_RSA2048_EK_CERT)

    def quote(
        self, binder: bytes, selection: Mapping[TpmAlgId, Iterable[int]] = DEFAULT_PCR_SELECTION
    ) -> tuple[Attestation, dict[TpmAlgId, dict[int, bytes]]]:
        """Quote PCRs with the AK, qualifying data = ``binder``; also read their values.

        Returns:
            The TPM2B_ATTEST and TPMT_SIGNATURE, and ``{bank: {index: value}}``.

        Raises:
            TpmCommandError: the TPM refused (e.g. a binder longer than 64 bytes).
            AttesterError: the VM is not running, or on transport errors.
        """
        attestation, values = quote_and_pcrs(
            self.tpm, self.identity, binder, selection, known=self._known_pcrs
        )
        self._known_pcrs = values
        return attestation, values

    def extend_pcr(self, index: int, data: bytes, bank: TpmAlgId = TpmAlgId.SHA256) -> None:
        """Measure ``data`` into a PCR (extend it with H(data)), as boot software does.

        Raises:
            AttesterError: the VM is not running, the TPM refused, or on transport errors.
        """
        digest = hashlib.new(bank.name.lower(), data).digest()
        self.tpm.pcr_extend(index, {bank: digest})

    def power_cycle(self) -> None:
        """A TPM Reset of the vTPM that keeps its seeds (Shutdown, power off and on, Startup).

        resetCount goes up and transient objects are gone, so the AK is reloaded under the
        persistent EK.  Tests use it to check replay detection across resets.

        Raises:
            AttesterError: the VM is not running, or the TPM refused.
        """
        tpm, identity = self.tpm, self.identity
        assert self._swtpm is not None  # noqa: S101 - running, see self.tpm
        tpm.shutdown(clear=True)
        self._swtpm.transport.ctrl_init()
        tpm.startup(clear=True)
        with tpm.endorsement_policy_session() as session:
            loaded = tpm.load(
                identity.ek_handle, identity.ak_private, identity.ak_public, parent_session=session
            )
        self._identity = dataclasses.replace(identity, ak_handle=loaded.handle)

    def activate(self, credential: Credential) -> bytes:
        """Answer a verifier's credential challenge (TPM2_ActivateCredential).

        Returns:
            The recovered secret.

        Raises:
            TpmCommandError: the credential was made for another EK or AK.
            AttesterError: the VM is not running, or on transport errors.
        """
        return activate_credential(
            self.tpm, self.identity, credential.id_object, credential.encrypted_secret
        )

    def collect_evidence(
        self,
        *,
        binder: bytes,
        nonce: bytes | None = None,
        selection: Mapping[TpmAlgId, Iterable[int]] = DEFAULT_PCR_SELECTION,
        activation_proof: bytes | None = None,
    ) -> VtpmEvidence:
        """Gather a complete bundle: report, certificates, EK, AK, quote, PCR values.

        Args:
            binder: the quote's qualifying data (at most 64 bytes; hash longer binders).
            nonce: svsm: the 64-byte nonce for the SVSM (random by default).
            selection: the PCRs to quote.
            activation_proof: a secret recovered by :meth:`activate`, to carry along.

        Returns:
            The bundle.

        Raises:
            AttesterError: the VM is not running, or the TPM or SVSM refused.
        """
        identity = self.identity
        attestation, values = self.quote(binder, selection)
        common = {
            "ak_public": identity.ak_public,
            "quote_attest": attestation.attest[2:],
            "quote_signature": attestation.signature,
            "certs": self._certs,
            "activation_proof": activation_proof,
        }
        if self._profile is VtpmProfile.SVSM:
            chosen = nonce if nonce is not None else os.urandom(_NONCE_SIZE)
            answer = self.attest_single_service(
                service_guid=SVSM_VTPM_SERVICE_GUID, nonce=chosen, with_certs=False
            )
            return VtpmEvidence.with_pcr_mapping(
                pcrs=values,
                profile=VtpmProfile.SVSM,
                snp_report=answer.report,
                svsm_nonce=chosen,
                svsm_manifest=answer.manifest,
                **common,
            )
        return VtpmEvidence.with_pcr_mapping(
            pcrs=values,
            profile=VtpmProfile.SVSM_PAPER,
            snp_report=self.read_nv_report(),
            ek_public=identity.ek_public,
            **common,
        )
