"""SEV-SNP formats and raw checks: the attestation report, the certificate table, the AMD chain.

.. danger::
   Nothing here applies a policy or checks freshness.  A report that parses and whose
   signature verifies may still come from a debug guest, a tampered image or a replay.
"""

from __future__ import annotations

from .._amd_certs import AmdKeyExtensions as AmdKeyExtensions
from .._amd_certs import AmdTrustAnchors as AmdTrustAnchors
from .._amd_certs import KeyKind as KeyKind
from .._amd_certs import VerifiedAmdChain as VerifiedAmdChain
from .._amd_certs import load_amd_certificate as load_amd_certificate
from .._amd_certs import parse_amd_key_extensions as parse_amd_key_extensions
from .._amd_certs import verify_amd_chain as verify_amd_chain
from .._amd_certs import verify_report_signature as verify_report_signature
from .._snp_certtable import CertTable as CertTable
from .._snp_certtable import CertTableEntry as CertTableEntry
from .._snp_certtable import build_cert_table as build_cert_table
from .._snp_certtable import parse_cert_table as parse_cert_table
from .._snp_report import SNP_REPORT_SIZE as SNP_REPORT_SIZE
from .._snp_report import SNP_SIGNED_SIZE as SNP_SIGNED_SIZE
from .._snp_report import GuestPolicy as GuestPolicy
from .._snp_report import PlatformInfo as PlatformInfo
from .._snp_report import ProductLine as ProductLine
from .._snp_report import SignerInfo as SignerInfo
from .._snp_report import SigningKey as SigningKey
from .._snp_report import SnpReport as SnpReport
from .._snp_report import TcbLayout as TcbLayout
from .._snp_report import TcbVersion as TcbVersion
from .._snp_report import parse_snp_report as parse_snp_report
from .._snp_report import product_from_cpuid as product_from_cpuid
from .._snp_verify import VerifiedSnpReport as VerifiedSnpReport
from .._snp_verify import appraise_snp_report as appraise_snp_report
from .._snp_verify import verify_snp_report as verify_snp_report

__all__ = [
    "SNP_REPORT_SIZE",
    "SNP_SIGNED_SIZE",
    "AmdKeyExtensions",
    "AmdTrustAnchors",
    "CertTable",
    "CertTableEntry",
    "GuestPolicy",
    "KeyKind",
    "PlatformInfo",
    "ProductLine",
    "SignerInfo",
    "SigningKey",
    "SnpReport",
    "TcbLayout",
    "TcbVersion",
    "VerifiedAmdChain",
    "VerifiedSnpReport",
    "appraise_snp_report",
    "build_cert_table",
    "load_amd_certificate",
    "parse_amd_key_extensions",
    "parse_cert_table",
    "parse_snp_report",
    "product_from_cpuid",
    "verify_amd_chain",
    "verify_report_signature",
    "verify_snp_report",
]
