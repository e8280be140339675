"""Evidence producers for real confidential-VM hardware.

:class:`SnpGuestAttester` asks the Linux kernel of an SEV-SNP guest for signed
attestation reports, through configfs-tsm or /dev/sev-guest.
:class:`GuestVtpmAttester` gathers SNP + vTPM evidence where the SVSM runs the vTPM.
:class:`AzureVtpmAttester` reads an Azure confidential VM's HCL report from its vTPM and
quotes with the paravisor's attestation key.
"""

from __future__ import annotations

from ._azure import AZURE_AK_HANDLE as AZURE_AK_HANDLE
from ._azure import AZURE_PCR_SELECTION as AZURE_PCR_SELECTION
from ._azure import AzureVtpmAttester as AzureVtpmAttester
from ._snp_guest import DEFAULT_SEV_GUEST_DEVICE as DEFAULT_SEV_GUEST_DEVICE
from ._snp_guest import DEFAULT_TSM_REPORT_ROOT as DEFAULT_TSM_REPORT_ROOT
from ._snp_guest import SNP_GET_EXT_REPORT as SNP_GET_EXT_REPORT
from ._snp_guest import SNP_GET_REPORT as SNP_GET_REPORT
from ._snp_guest import SVSM_VTPM_SERVICE_GUID as SVSM_VTPM_SERVICE_GUID
from ._snp_guest import GuestInterface as GuestInterface
from ._snp_guest import GuestReport as GuestReport
from ._snp_guest import GuestRequestIoctl as GuestRequestIoctl
from ._snp_guest import IoctlFunction as IoctlFunction
from ._snp_guest import LinuxTsmFilesystem as LinuxTsmFilesystem
from ._snp_guest import SnpGuestAttester as SnpGuestAttester
from ._snp_guest import SvsmServiceRequest as SvsmServiceRequest
from ._snp_guest import TsmFilesystem as TsmFilesystem
from ._svsm_vtpm import GuestVtpmAttester as GuestVtpmAttester

__all__ = [
    "AZURE_AK_HANDLE",
    "AZURE_PCR_SELECTION",
    "DEFAULT_SEV_GUEST_DEVICE",
    "DEFAULT_TSM_REPORT_ROOT",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "SVSM_VTPM_SERVICE_GUID",
    "AzureVtpmAttester",
    "GuestInterface",
    "GuestReport",
    "GuestRequestIoctl",
    "GuestVtpmAttester",
    "IoctlFunction",
    "LinuxTsmFilesystem",
    "SnpGuestAttester",
    "SvsmServiceRequest",
    "TsmFilesystem",
]
