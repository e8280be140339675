"""ratls: mutual attested TLS for AMD SEV-SNP confidential VMs with an SVSM vTPM.

The top level holds the recipes most users need; ``ratls.hazmat`` holds the raw parsers
and signature checks.
"""

from __future__ import annotations

from ._errors import AttesterError as AttesterError
from ._errors import AttesterUnavailable as AttesterUnavailable
from ._errors import BindingMismatch as BindingMismatch
from ._errors import CertificateChainError as CertificateChainError
from ._errors import EvidenceError as EvidenceError
from ._errors import EvidenceFormatError as EvidenceFormatError
from ._errors import EvidenceVerificationError as EvidenceVerificationError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import MeasurementMismatch as MeasurementMismatch
from ._errors import NonceMismatch as NonceMismatch
from ._errors import PolicyError as PolicyError
from ._errors import PolicyViolation as PolicyViolation
from ._errors import ProtocolError as ProtocolError
from ._errors import RatlsError as RatlsError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import SignatureMismatch as SignatureMismatch
from ._errors import TcbTooLow as TcbTooLow
from ._policy import Policy as Policy
from ._policy import SnpPlatformRequirements as SnpPlatformRequirements
from ._policy import SnpPolicy as SnpPolicy
from ._policy import TcbMinimum as TcbMinimum
from ._policy import TrustPolicy as TrustPolicy
from ._policy import VtpmPolicy as VtpmPolicy
from ._policy import load_policy as load_policy
from ._result import AttestationResult as AttestationResult
from ._snp_report import ProductLine as ProductLine
from ._snp_verify import SnpEndorsements as SnpEndorsements
from ._verify import verify_snp_attestation as verify_snp_attestation

__version__ = "0.1.0.dev0"

__all__ = [
    "AttestationResult",
    "AttesterError",
    "AttesterUnavailable",
    "BindingMismatch",
    "CertificateChainError",
    "EvidenceError",
    "EvidenceFormatError",
    "EvidenceVerificationError",
    "LocalProtocolError",
    "MeasurementMismatch",
    "NonceMismatch",
    "Policy",
    "PolicyError",
    "PolicyViolation",
    "ProductLine",
    "ProtocolError",
    "RatlsError",
    "RemoteProtocolError",
    "SignatureMismatch",
    "SnpEndorsements",
    "SnpPlatformRequirements",
    "SnpPolicy",
    "TcbMinimum",
    "TcbTooLow",
    "TrustPolicy",
    "VtpmPolicy",
    "load_policy",
    "verify_snp_attestation",
]
