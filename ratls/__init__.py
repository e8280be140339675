"""ratls: mutual attested TLS for AMD SEV-SNP confidential VMs with an SVSM vTPM.

The top level holds the recipes most users need; ``ratls.hazmat`` holds the raw parsers
and signature checks.
"""

from __future__ import annotations

from ._api import AttestedServer as AttestedServer
from ._api import AttestedSocket as AttestedSocket
from ._api import connect_attested as connect_attested
from ._api import open_attested_stream as open_attested_stream
from ._api import serve_attested as serve_attested
from ._api import serve_attested_blocking as serve_attested_blocking
from ._api import start_attested_server as start_attested_server
from ._attesters_registry import attester_names as attester_names
from ._attesters_registry import make_attester as make_attester
from ._bound import BoundVerifier as BoundVerifier
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
from ._evidence_cert import AttestedCertificateBuilder as AttestedCertificateBuilder
from ._evidence_cert import CertificateEvidence as CertificateEvidence
from ._evidence_cert import RatlsOID as RatlsOID
from ._evidence_cert import inspect_evidence_certificate as inspect_evidence_certificate
from ._evidence_cert import load_evidence_certificate as load_evidence_certificate
from ._evidence_cert import verify_evidence_certificate as verify_evidence_certificate
from ._exchange import AttestationConfig as AttestationConfig
from ._exchange import AttestationRefused as AttestationRefused
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
from ._tls_stream import AttestedTLSStream as AttestedTLSStream
from ._verify import verify_snp_attestation as verify_snp_attestation
from ._vtpm_evidence import ActivationChallenge as ActivationChallenge
from ._vtpm_evidence import ActivationProof as ActivationProof
from ._vtpm_evidence import AkBinding as AkBinding
from ._vtpm_evidence import VtpmEvidence as VtpmEvidence
from ._vtpm_evidence import VtpmProfile as VtpmProfile
from ._vtpm_evidence import begin_activation as begin_activation
from ._vtpm_evidence import finish_activation as finish_activation
from ._vtpm_evidence import parse_vtpm_evidence as parse_vtpm_evidence
from ._vtpm_evidence import verify_vtpm_attestation as verify_vtpm_attestation

__version__ = "0.1.0.dev0"

__all__ = [
    "ActivationChallenge",
    "ActivationProof",
    "AkBinding",
    "AttestationConfig",
    "AttestationRefused",
    "AttestationResult",
    "AttestedCertificateBuilder",
    "AttestedServer",
    "AttestedSocket",
    "AttestedTLSStream",
    "AttesterError",
    "AttesterUnavailable",
    "BindingMismatch",
    "BoundVerifier",
    "CertificateChainError",
    "CertificateEvidence",
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
    "RatlsOID",
    "RemoteProtocolError",
    "SignatureMismatch",
    "SnpEndorsements",
    "SnpPlatformRequirements",
    "SnpPolicy",
    "TcbMinimum",
    "TcbTooLow",
    "TrustPolicy",
    "VtpmEvidence",
    "VtpmPolicy",
    "VtpmProfile",
    "attester_names",
    "begin_activation",
    "connect_attested",
    "finish_activation",
    "inspect_evidence_certificate",
    "load_evidence_certificate",
    "load_policy",
    "make_attester",
    "open_attested_stream",
    "parse_vtpm_evidence",
    "serve_attested",
    "serve_attested_blocking",
    "start_attested_server",
    "verify_evidence_certificate",
    "verify_snp_attestation",
    "verify_vtpm_attestation",
]
