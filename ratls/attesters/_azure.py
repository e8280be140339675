"""The Azure confidential-VM attester: the paravisor's HCL report and a quote by its AK.

What and why
------------

On an Azure SEV-SNP confidential VM the guest cannot ask the AMD-SP for a report itself:
the paravisor (HCL) at VMPL 0 owns that interface and the vTPM.  At boot it requests one
report whose REPORT_DATA[0:32] is SHA-256 of a JSON document, the *runtime claims*, that
names the vTPM's attestation key (``HCLAkPub``), and stores the whole HCL report in vTPM
NV index 0x01400001 (:data:`~ratls._azure_hcl.HCL_NV_INDEX`).  The AK itself is a
restricted RSA signing key that the paravisor provisions and persists at handle
0x81000003 (:data:`AZURE_AK_HANDLE`; Azure's own guest attestation library calls it
``AIK_PUB_INDEX = 0x81000000 + 3``).

So the guest's evidence is: that HCL report (read back from NV), the AK's public area (read
back from the persistent handle) and a fresh TPM2_Quote by that AK whose qualifying data is
the caller's binder.  The report is not fresh (it was made at boot); freshness and the
binding to a connection come from the quote alone, and the report proves that the quoting
AK belongs to the vTPM of an attested VM (``ak_binding = "vmpl0-bound"``, no credential
activation needed).  :func:`~ratls._vtpm_evidence.verify_vtpm_evidence` checks exactly
that chain for the ``azure`` profile.

The VCEK chain is not in the vTPM: Azure serves it to the guest from its instance metadata
service.  This module performs no network I/O, so the caller passes the chain as
``certs=`` (DER VCEK, ASK, ARK), as with the ``snp`` attester on hosts without a
certificate table.

I/O is the TPM only (``/dev/tpmrm0`` by default, any :class:`~ratls._tpm_device.Tpm` in
tests, e.g. swtpm); every call is blocking, so call it from a worker thread under trio.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final, final

from .._azure_hcl import HCL_NV_INDEX, parse_hcl_report
from .._errors import AttesterError, AttesterUnavailable, EvidenceFormatError
from .._tpm_device import DeviceTransport, Tpm, TpmCommandError
from .._tpm_structs import TpmAlgId
from .._vtpm_evidence import VtpmEvidence, VtpmProfile

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._tpm_credential import Credential

__all__ = [
    "AZURE_AK_HANDLE",
    "AZURE_PCR_SELECTION",
    "DEFAULT_TPM_DEVICE",
    "AzureVtpmAttester",
]

#: Persistent handle of the AK the Azure paravisor provisions (the one HCLAkPub names).
AZURE_AK_HANDLE: Final = 0x81000003

#: PCRs quoted unless the caller chooses: the whole SHA-256 bank, as Azure's own guest
#: attestation quotes it (the paravisor measures the guest's boot into PCRs 0-7 and
#: Linux measures further into the upper ones).
AZURE_PCR_SELECTION: Final[Mapping[TpmAlgId, tuple[int, ...]]] = {
    TpmAlgId.SHA256: tuple(range(24)),
}

#: The resource-managed TPM device of a Linux guest.
DEFAULT_TPM_DEVICE: Final = "/dev/tpmrm0"

# TPM_RC_HANDLE (format-one, the handle parameter) and TPM_RC_NV_UNINITIALIZED: what a
# TPM answers when the handle or the NV index is not there.
_RC_HANDLE: Final = 0x08B
_RC_NV_UNINITIALIZED: Final = 0x14A


@final
class AzureVtpmAttester:
    """SNP + vTPM evidence of the ``azure`` profile from an Azure confidential VM's vTPM.

    Args:
        certs: DER VCEK, ASK and ARK for the report's chip (from Azure's instance
            metadata service); required, since the vTPM does not hold them.
        tpm: the TPM to use (tests pass swtpm); by default ``tpm_device`` is opened on
            first use.
        tpm_device: the TPM device node when ``tpm`` is not given.
        tpm_factory: how to open the TPM instead of ``tpm_device`` (tests).
        ak_handle: the AK's persistent handle.
        nv_index: the NV index holding the HCL report.

    Calls are serialised (a TPM runs one command at a time).  Implements the
    :class:`~ratls.sim._svsm.VtpmAttester` interface, so
    :class:`~ratls._bound.VtpmBoundAttester` can drive it in bound mode.
    """

    def __init__(
        self,
        *,
        certs: tuple[bytes, bytes, bytes] | None,
        tpm: Tpm | None = None,
        tpm_device: str = DEFAULT_TPM_DEVICE,
        tpm_factory: Callable[[], Tpm] | None = None,
        ak_handle: int = AZURE_AK_HANDLE,
        nv_index: int = HCL_NV_INDEX,
    ) -> None:
        if certs is not None and (
            len(certs) != 3 or not all(isinstance(c, bytes) and c for c in certs)
        ):
            raise ValueError("certs must be three DER certificates: VCEK, ASK, ARK")
        self._certs = certs
        self._tpm = tpm
        self._owns_tpm = tpm is None
        self._factory = tpm_factory or (lambda: Tpm(DeviceTransport(tpm_device)))
        self._ak_handle = ak_handle
        self._nv_index = nv_index
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"AzureVtpmAttester(ak_handle={self._ak_handle:#x}, nv_index={self._nv_index:#x}, "
            f"tpm={self._tpm!r})"
        )

    def _open(self) -> Tpm:
        if self._tpm is None:
            self._tpm = self._factory()
        return self._tpm

    def hcl_report(self) -> bytes:
        """Read the HCL report from NV and return it without the index's zero padding.

        Returns:
            The HCL report bytes (as :func:`~ratls._azure_hcl.parse_hcl_report` reads
            them).

        Raises:
            AttesterUnavailable: no HCL report at the NV index (not an Azure CVM).
            EvidenceFormatError: the NV index holds no well-formed HCL report.
            AttesterError: the TPM refused or is unreachable.
        """
        with self._lock:
            return self._hcl_report(self._open())

    def _hcl_report(self, tpm: Tpm) -> bytes:
        try:
            raw = tpm.nv_read(self._nv_index)
        except TpmCommandError as exc:
            if exc.code.base in (_RC_HANDLE, _RC_NV_UNINITIALIZED):
                raise AttesterUnavailable(
                    f"no HCL report in vTPM NV index {self._nv_index:#010x}: this is not an "
                    "Azure confidential VM (or its paravisor did not provision the report)"
                ) from exc
            raise
        try:
            return parse_hcl_report(raw, nv_padding=True).to_bytes()
        except EvidenceFormatError as exc:
            raise EvidenceFormatError(
                f"NV index {self._nv_index:#010x} does not hold an HCL report: {exc}",
                structure="HCL report",
                offset=exc.offset,
            ) from exc

    def _ak_public(self, tpm: Tpm) -> bytes:
        try:
            return tpm.read_public(self._ak_handle).public
        except TpmCommandError as exc:
            if exc.code.base == _RC_HANDLE:
                raise AttesterUnavailable(
                    f"no attestation key at persistent handle {self._ak_handle:#010x}: this "
                    "is not an Azure confidential VM (or its paravisor did not provision the AK)"
                ) from exc
            raise

    def collect_evidence(
        self,
        *,
        binder: bytes,
        nonce: bytes | None = None,
        selection: Mapping[TpmAlgId, Iterable[int]] = AZURE_PCR_SELECTION,
        activation_proof: bytes | None = None,
    ) -> VtpmEvidence:
        """Read the HCL report and the AK, quote with the AK, and bundle it all.

        Args:
            binder: the quote's qualifying data (at most 64 bytes; the attested-TLS
                layers pass SHA-256 of their binder).
            nonce: ignored: the HCL report was made at boot and takes no nonce.
            selection: the PCRs to quote.
            activation_proof: refused: on Azure the report binds the AK, so there is
                no credential activation.

        Returns:
            The ``azure``-profile bundle.

        Raises:
            ValueError: an activation proof was given.
            AttesterUnavailable: no TPM, HCL report or AK here.
            AttesterError: no VCEK chain was given (``certs``), or the TPM refused.
            EvidenceFormatError: the NV index does not hold a well-formed HCL report.
        """
        del nonce  # the azure profile has no fresh report to put it in
        if activation_proof is not None:
            raise ValueError("the azure profile has no credential activation")
        if self._certs is None:
            raise AttesterError(
                "attester 'azure' needs the VCEK chain (certs=: DER VCEK, ASK, ARK); Azure "
                "serves it to the guest from its instance metadata service"
            )
        chosen = {TpmAlgId(bank): tuple(sorted(set(pcrs))) for bank, pcrs in selection.items()}
        with self._lock:
            tpm = self._open()
            hcl = self._hcl_report(tpm)
            ak_public = self._ak_public(tpm)
            attestation = tpm.quote(self._ak_handle, binder, chosen)
            values = tpm.pcr_read(chosen)
        return VtpmEvidence.with_pcr_mapping(
            pcrs=values,
            profile=VtpmProfile.AZURE,
            hcl_report=hcl,
            certs=self._certs,
            ak_public=ak_public,
            quote_attest=attestation.attest[2:],
            quote_signature=attestation.signature,
        )

    def activate(self, credential: Credential) -> bytes:
        """Refuse: the azure profile proves the AK with the report, not by activation.

        Raises:
            AttesterError: always.
        """
        raise AttesterError(
            "the azure profile binds the AK in the HCL report; there is no credential "
            "activation to answer"
        )

    def close(self) -> None:
        """Close the TPM if this attester opened it; idempotent."""
        with self._lock:
            tpm, self._tpm = self._tpm, None
            if tpm is not None and self._owns_tpm:
                tpm.close()
