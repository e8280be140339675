"""TPM 2.0 formats and raw checks: TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC, quotes, credentials.

.. danger::
   A quote whose signature verifies says nothing about *which* TPM made it: only the binding
   of its AK to an attested vTPM (credential activation, or a VMPL0 report) does.
"""

from __future__ import annotations

from .._azure_hcl import HclReport as HclReport
from .._azure_hcl import RuntimeClaims as RuntimeClaims
from .._azure_hcl import parse_hcl_report as parse_hcl_report
from .._azure_hcl import parse_runtime_claims as parse_runtime_claims
from .._tpm_credential import Credential as Credential
from .._tpm_credential import kdfa as kdfa
from .._tpm_credential import kdfe as kdfe
from .._tpm_credential import make_credential as make_credential
from .._tpm_credential import parse_tpm2_tools_credential as parse_tpm2_tools_credential
from .._tpm_quote import PcrPolicy as PcrPolicy
from .._tpm_quote import QuoteSequenceChecker as QuoteSequenceChecker
from .._tpm_quote import VerifiedQuote as VerifiedQuote
from .._tpm_quote import appraise_pcrs as appraise_pcrs
from .._tpm_quote import verify_quote as verify_quote
from .._tpm_structs import EK_TEMPLATE_RSA2048 as EK_TEMPLATE_RSA2048
from .._tpm_structs import ObjectAttributes as ObjectAttributes
from .._tpm_structs import TpmAlgId as TpmAlgId
from .._tpm_structs import TpmlPcrSelection as TpmlPcrSelection
from .._tpm_structs import TpmsAttest as TpmsAttest
from .._tpm_structs import TpmtPublic as TpmtPublic
from .._tpm_structs import TpmtSignature as TpmtSignature
from .._tpm_structs import check_ek_public as check_ek_public
from .._tpm_structs import parse_tpm2b_public as parse_tpm2b_public
from .._tpm_structs import parse_tpms_attest as parse_tpms_attest
from .._tpm_structs import parse_tpmt_public as parse_tpmt_public
from .._tpm_structs import parse_tpmt_signature as parse_tpmt_signature
from .._vtpm_evidence import VerifiedVtpmEvidence as VerifiedVtpmEvidence
from .._vtpm_evidence import verify_vtpm_evidence as verify_vtpm_evidence

__all__ = [
    "EK_TEMPLATE_RSA2048",
    "Credential",
    "HclReport",
    "ObjectAttributes",
    "PcrPolicy",
    "QuoteSequenceChecker",
    "RuntimeClaims",
    "TpmAlgId",
    "TpmlPcrSelection",
    "TpmsAttest",
    "TpmtPublic",
    "TpmtSignature",
    "VerifiedQuote",
    "VerifiedVtpmEvidence",
    "appraise_pcrs",
    "check_ek_public",
    "kdfa",
    "kdfe",
    "make_credential",
    "parse_hcl_report",
    "parse_runtime_claims",
    "parse_tpm2_tools_credential",
    "parse_tpm2b_public",
    "parse_tpms_attest",
    "parse_tpmt_public",
    "parse_tpmt_signature",
    "verify_quote",
    "verify_vtpm_evidence",
]
