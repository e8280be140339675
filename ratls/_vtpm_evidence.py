"""SNP + vTPM evidence: the bundle that carries it, and the SNP -> EK -> AK -> quote verifier.

A confidential VM with a vTPM at VMPL 0 proves two things at once: its launch state, with an
SEV-SNP report, and its runtime state, with TPM quotes.  The two only add up if the report
*binds* the vTPM.  Three bindings exist in the wild, and this module supports and labels
each (facts: the SVSM specification, the SVSM-vTPM prototype, Azure's paravisor):

=============  =========================================================  ==============
profile        what the VMPL-0 SNP report's REPORT_DATA holds             AK proven by
=============  =========================================================  ==============
``svsm``       SHA-512(nonce[64] || manifest), manifest = EK TPMT_PUBLIC   activation
``svsm-paper`` SHA-512(EK TPM2B_PUBLIC)                                   activation
``azure``      [0:32] = SHA-256(runtime-claims JSON naming the AK)        the report
=============  =========================================================  ==============

An endorsement key cannot sign, so with the two SVSM profiles the quote's AK is tied to the
EK by *credential activation*: the verifier calls :func:`begin_activation` (MakeCredential
to the EK for the AK's Name, with a secret it keeps), the attester's TPM releases the secret
with TPM2_ActivateCredential only if it holds both keys, and :func:`finish_activation`
compares what came back.  Without that proof the AK is ``unproven`` and the default policy
refuses it.  On Azure the runtime claims name the AK directly, so it is ``vmpl0-bound``.

:class:`VtpmEvidence` is the formats-layer bundle (deterministic CBOR, strict decoder);
:func:`verify_vtpm_evidence` is the verification-layer chain check, which performs no I/O
(the time is passed in) and returns a :class:`VerifiedVtpmEvidence` that only it can create.

CBOR layout (a map with unsigned-integer keys, canonical encoding, RFC 8949 section 4.2.1)::

    0  version            uint, 1
    1  profile            text: "svsm" | "svsm-paper" | "azure"
    2  snp_report         bstr (0x4A0)              svsm, svsm-paper
    3  certs              [3 x bstr] DER: VCEK|VLEK, ASK|ASVK, ARK   (xor key 4)
    4  cert_table         bstr: extended-report certificate table
    5  svsm_nonce         bstr (64)                 svsm
    6  svsm_manifest      bstr: EK TPMT_PUBLIC      svsm
    7  ek_public          bstr: EK TPM2B_PUBLIC     svsm-paper
    8  hcl_report         bstr: Azure HCL report    azure
    9  ak_public          bstr: AK TPM2B_PUBLIC
    10 quote_attest       bstr: TPMS_ATTEST (the signed bytes)
    11 quote_signature    bstr: TPMT_SIGNATURE
    12 pcrs               {TPM_ALG_ID uint: {PCR index uint: bstr}}
    13 activation_proof   bstr: the secret TPM2_ActivateCredential recovered (optional)

Exactly one of keys 3 and 4 is present.  Keys a profile does not use must be absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, final

import cbor2
from cryptography.hazmat.primitives.asymmetric import rsa

from ._amd_certs import load_amd_certificate
from ._azure_hcl import (
    HCL_VARIABLE_DATA_OFFSET,
    MAX_HCL_VARIABLE_DATA_SIZE,
    HclReport,
    RuntimeClaims,
    parse_hcl_report,
)
from ._errors import (
    BindingMismatch,
    EvidenceFormatError,
    EvidenceVerificationError,
    NonceMismatch,
    PolicyViolation,
)
from ._nopublic import NoPublicConstructor
from ._result import AttestationResult
from ._snp_report import SNP_REPORT_SIZE
from ._snp_verify import SnpEndorsements, appraise_snp_report, verify_snp_report_steps
from ._steps import run_inline
from ._tpm_credential import Credential, make_credential, verify_activated_secret
from ._tpm_quote import (
    DEFAULT_QUOTE_HASHES,
    PcrPolicy,
    VerifiedQuote,
    appraise_pcrs,
    verify_quote_steps,
)
from ._tpm_structs import (
    TpmAlgId,
    TpmtPublic,
    check_ek_public,
    digest_size,
    parse_tpm2b_public,
    parse_tpmt_public,
)
from ._verify import trust_anchors

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping
    from datetime import datetime

    from ._policy import Policy
    from ._snp_report import ProductLine
    from ._snp_verify import VerifiedSnpReport
    from ._steps import Steps
    from ._tpm_quote import QuoteSequenceChecker

__all__ = [
    "MAX_VTPM_EVIDENCE_SIZE",
    "VTPM_EVIDENCE_VERSION",
    "ActivationChallenge",
    "ActivationProof",
    "AkBinding",
    "VerifiedVtpmEvidence",
    "VtpmEvidence",
    "VtpmProfile",
    "activation_names",
    "begin_activation",
    "expected_report_data",
    "finish_activation",
    "parse_vtpm_evidence",
    "to_attestation_result",
    "verify_vtpm_attestation",
    "verify_vtpm_evidence",
    "verify_vtpm_evidence_steps",
]

#: Version of the CBOR bundle layout (key 0).
VTPM_EVIDENCE_VERSION: Final = 1

#: Largest encoded bundle accepted.  A real one is about 6-8 KiB (a 1184-byte report, three
#: certificates of 1-2 KiB, two public areas, a quote, 24 PCRs per bank) and an Azure one
#: adds a few KiB of HCL report.  64 KiB fits comfortably in one TLS record flight and in
#: an X.509 extension, and refuses a blob that would make the decoder allocate much more.
MAX_VTPM_EVIDENCE_SIZE: Final = 0x10000

_STRUCTURE: Final = "vTPM evidence"
_MAX_CERT_SIZE: Final = 0x2000  # AMD certificates are 1-2 KiB; 8 KiB is generous.
_MAX_CERT_TABLE_SIZE: Final = 0x4000  # the SVSM specification's certificate buffer bound
_MAX_PUBLIC_SIZE: Final = 0x400  # a TPMT_PUBLIC of an RSA-4096 key is about 600 bytes
_MAX_ATTEST_SIZE: Final = 0x400  # TPMS_ATTEST of a quote is about 150 bytes
_MAX_SIGNATURE_SIZE: Final = 0x400  # an RSA-4096 TPMT_SIGNATURE is 518 bytes
_MAX_PROOF_SIZE: Final = 64  # the largest TPM digest
_MAX_PCR_INDEX: Final = 23  # PC Client TPMs have 24 PCRs per bank
_SVSM_NONCE_SIZE: Final = 64  # SVSM_ATTEST_SINGLE_SERVICE requires exactly 64 bytes
_PCR_BANKS: Final = (TpmAlgId.SHA1, TpmAlgId.SHA256, TpmAlgId.SHA384, TpmAlgId.SHA512)


class VtpmProfile(StrEnum):
    """How the vTPM is bound to the SNP report."""

    SVSM = "svsm"  #: SVSM_ATTEST_SINGLE_SERVICE: SHA-512(nonce || EK TPMT_PUBLIC).
    SVSM_PAPER = "svsm-paper"  #: SVSM-vTPM prototype: SHA-512(EK TPM2B_PUBLIC).
    AZURE = "azure"  #: Azure HCL report: SHA-256(runtime claims naming the AK).


class AkBinding(StrEnum):
    """How the quote's attestation key was tied to the attested vTPM."""

    ACTIVATED = "activated"  #: Credential activation against the bound EK succeeded.
    VMPL0_BOUND = "vmpl0-bound"  #: The VMPL-0 report itself names the AK (azure).
    UNPROVEN = "unproven"  #: Nothing ties the AK to the EK; refused by default.


class _Key:
    """CBOR map keys of the bundle (see the module docstring)."""

    VERSION: Final = 0
    PROFILE: Final = 1
    SNP_REPORT: Final = 2
    CERTS: Final = 3
    CERT_TABLE: Final = 4
    SVSM_NONCE: Final = 5
    SVSM_MANIFEST: Final = 6
    EK_PUBLIC: Final = 7
    HCL_REPORT: Final = 8
    AK_PUBLIC: Final = 9
    QUOTE_ATTEST: Final = 10
    QUOTE_SIGNATURE: Final = 11
    PCRS: Final = 12
    ACTIVATION_PROOF: Final = 13


_ALL_KEYS: Final = frozenset(range(14))

#: Which optional members each profile needs (True) or forbids (False).
_PROFILE_FIELDS: Final[Mapping[VtpmProfile, Mapping[str, bool]]] = {
    VtpmProfile.SVSM: {
        "snp_report": True,
        "svsm_nonce": True,
        "svsm_manifest": True,
        "ek_public": False,
        "hcl_report": False,
    },
    VtpmProfile.SVSM_PAPER: {
        "snp_report": True,
        "svsm_nonce": False,
        "svsm_manifest": False,
        "ek_public": True,
        "hcl_report": False,
    },
    VtpmProfile.AZURE: {
        "snp_report": False,
        "svsm_nonce": False,
        "svsm_manifest": False,
        "ek_public": False,
        "hcl_report": True,
    },
}


def _fail(message: str) -> EvidenceFormatError:
    return EvidenceFormatError(message, structure=_STRUCTURE)


def _check_bytes(name: str, value: object, *, low: int, high: int) -> None:
    if not isinstance(value, bytes):
        raise _fail(f"{name} must be a byte string")
    if not low <= len(value) <= high:
        size = f"{low}" if low == high else f"{low} to {high}"
        raise _fail(f"{name} is {len(value)} bytes, expected {size}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VtpmEvidence:
    """SNP + vTPM evidence, ready to travel (see the module docstring for the CBOR form).

    The constructor checks shape (which members the profile needs, sizes); contents are
    checked by :func:`verify_vtpm_evidence`.

    Attributes:
        profile: the binding profile.
        ak_public: the AK's TPM2B_PUBLIC.
        quote_attest: the quote's TPMS_ATTEST (the bytes the AK signed).
        quote_signature: the quote's TPMT_SIGNATURE.
        pcrs: (bank, index, value) for every quoted PCR, sorted by bank then index.
        snp_report: the raw SNP report (svsm, svsm-paper; inside the HCL report for azure).
        certs: DER certificates VCEK|VLEK, ASK|ASVK, ARK, or empty when ``cert_table`` is
            given.
        cert_table: the extended-report certificate table, or None when ``certs`` is given.
        svsm_nonce: the 64-byte nonce the SVSM hashed with the manifest (svsm).
        svsm_manifest: the vTPM service manifest, the EK's TPMT_PUBLIC (svsm).
        ek_public: the EK's TPM2B_PUBLIC (svsm-paper).
        hcl_report: the Azure HCL report (azure).
        activation_proof: the secret the attester's TPM recovered from a credential
            challenge, if the bundle answers one.
    """

    profile: VtpmProfile
    ak_public: bytes
    quote_attest: bytes
    quote_signature: bytes
    pcrs: tuple[tuple[TpmAlgId, int, bytes], ...]
    snp_report: bytes | None = None
    certs: tuple[bytes, ...] = ()
    cert_table: bytes | None = None
    svsm_nonce: bytes | None = None
    svsm_manifest: bytes | None = None
    ek_public: bytes | None = None
    hcl_report: bytes | None = None
    activation_proof: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.profile, VtpmProfile):
            raise _fail(f"unknown profile {self.profile!r}")
        for name, needed in _PROFILE_FIELDS[self.profile].items():
            present = getattr(self, name) is not None
            if present != needed:
                verb = "needs" if needed else "must not carry"
                raise _fail(f"profile {self.profile.value} {verb} {name}")
        if self.snp_report is not None:
            _check_bytes("snp_report", self.snp_report, low=SNP_REPORT_SIZE, high=SNP_REPORT_SIZE)
        if self.svsm_nonce is not None:
            _check_bytes("svsm_nonce", self.svsm_nonce, low=_SVSM_NONCE_SIZE, high=_SVSM_NONCE_SIZE)
        for name in ("svsm_manifest", "ek_public", "ak_public"):
            value = getattr(self, name)
            if value is not None:
                _check_bytes(name, value, low=1, high=_MAX_PUBLIC_SIZE)
        if self.hcl_report is not None:
            _check_bytes(
                "hcl_report",
                self.hcl_report,
                low=HCL_VARIABLE_DATA_OFFSET,
                high=HCL_VARIABLE_DATA_OFFSET + MAX_HCL_VARIABLE_DATA_SIZE,
            )
        _check_bytes("quote_attest", self.quote_attest, low=1, high=_MAX_ATTEST_SIZE)
        _check_bytes("quote_signature", self.quote_signature, low=1, high=_MAX_SIGNATURE_SIZE)
        if self.activation_proof is not None:
            _check_bytes("activation_proof", self.activation_proof, low=1, high=_MAX_PROOF_SIZE)
        if bool(self.certs) == (self.cert_table is not None):
            raise _fail("exactly one of certs and cert_table must be given")
        if self.certs:
            if not isinstance(self.certs, tuple) or len(self.certs) != 3:
                raise _fail("certs must be a tuple of 3 DER certificates (leaf, ASK, ARK)")
            for i, cert in enumerate(self.certs):
                _check_bytes(f"certs[{i}]", cert, low=1, high=_MAX_CERT_SIZE)
        if self.cert_table is not None:
            _check_bytes("cert_table", self.cert_table, low=1, high=_MAX_CERT_TABLE_SIZE)
        self._check_pcrs()

    def __repr__(self) -> str:
        parts = [f"profile={self.profile.value!r}"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "profile" or value is None or value == ():
                continue
            if isinstance(value, bytes):
                parts.append(f"{f.name}=<{len(value)} bytes>")
            elif f.name == "certs":
                parts.append(f"certs=<{len(value)} certificates>")
        banks: dict[str, list[int]] = {}
        for bank, index, _ in self.pcrs:
            banks.setdefault(bank.name.lower(), []).append(index)
        parts.append("pcrs=" + "+".join(f"{b}:{','.join(map(str, i))}" for b, i in banks.items()))
        return f"VtpmEvidence({', '.join(parts)})"

    def _check_pcrs(self) -> None:
        if not isinstance(self.pcrs, tuple) or not self.pcrs:
            raise _fail("pcrs must be a non-empty tuple of (bank, index, value)")
        previous: tuple[int, int] | None = None
        for entry in self.pcrs:
            if not isinstance(entry, tuple) or len(entry) != 3:
                raise _fail("each PCR entry must be (bank, index, value)")
            bank, index, value = entry
            if not isinstance(bank, TpmAlgId) or bank not in _PCR_BANKS:
                raise _fail(f"unsupported PCR bank {bank!r}")
            if not isinstance(index, int) or not 0 <= index <= _MAX_PCR_INDEX:
                raise _fail(f"PCR index {index!r} outside 0-{_MAX_PCR_INDEX}")
            size = digest_size(bank)
            _check_bytes(f"pcr {bank.name.lower()}:{index}", value, low=size, high=size)
            key = (int(bank), index)
            if previous is not None and key <= previous:
                raise _fail("pcrs must be sorted by bank then index, without duplicates")
            previous = key

    @classmethod
    def with_pcr_mapping(
        cls,
        *,
        pcrs: Mapping[TpmAlgId, Mapping[int, bytes]],
        **fields: Any,  # noqa: ANN401
    ) -> VtpmEvidence:
        """Build a bundle from ``{bank: {index: value}}`` PCR values (as ``Tpm.pcr_read``).

        Args:
            pcrs: the quoted PCR values.
            **fields: the other attributes.

        Returns:
            The bundle.

        Raises:
            EvidenceFormatError: the bundle is malformed.
        """
        flat = sorted(
            (
                (TpmAlgId(bank), index, bytes(v))
                for bank, vs in pcrs.items()
                for index, v in vs.items()
            ),
            key=lambda e: (int(e[0]), e[1]),
        )
        return cls(pcrs=tuple(flat), **fields)

    def pcr_mapping(self) -> dict[TpmAlgId, dict[int, bytes]]:
        """The PCR values as a fresh ``{bank: {index: value}}`` mapping."""
        out: dict[TpmAlgId, dict[int, bytes]] = {}
        for bank, index, value in self.pcrs:
            out.setdefault(bank, {})[index] = value
        return out

    def to_bytes(self) -> bytes:
        """Encode as canonical CBOR; :func:`parse_vtpm_evidence` reverses it byte for byte."""
        document: dict[int, object] = {
            _Key.VERSION: VTPM_EVIDENCE_VERSION,
            _Key.PROFILE: self.profile.value,
            _Key.AK_PUBLIC: self.ak_public,
            _Key.QUOTE_ATTEST: self.quote_attest,
            _Key.QUOTE_SIGNATURE: self.quote_signature,
            _Key.PCRS: {int(bank): values for bank, values in self.pcr_mapping().items()},
        }
        optional = (
            (_Key.SNP_REPORT, self.snp_report),
            (_Key.CERTS, list(self.certs) if self.certs else None),
            (_Key.CERT_TABLE, self.cert_table),
            (_Key.SVSM_NONCE, self.svsm_nonce),
            (_Key.SVSM_MANIFEST, self.svsm_manifest),
            (_Key.EK_PUBLIC, self.ek_public),
            (_Key.HCL_REPORT, self.hcl_report),
            (_Key.ACTIVATION_PROOF, self.activation_proof),
        )
        for key, value in optional:
            if value is not None:
                document[key] = value
        return cbor2.dumps(document, canonical=True)

    def with_activation_proof(self, secret: bytes) -> VtpmEvidence:
        """A copy that carries the secret recovered with TPM2_ActivateCredential."""
        return dataclasses.replace(self, activation_proof=bytes(secret))


def _decode_pcrs(value: object) -> tuple[tuple[TpmAlgId, int, bytes], ...]:
    if not isinstance(value, dict) or not value:
        raise _fail("pcrs must be a non-empty map")
    out: list[tuple[TpmAlgId, int, bytes]] = []
    for raw_bank, values in value.items():
        if type(raw_bank) is not int or raw_bank not in {int(b) for b in _PCR_BANKS}:
            raise _fail(f"unsupported PCR bank {raw_bank!r}")
        bank = TpmAlgId(raw_bank)
        if not isinstance(values, dict) or not values:
            raise _fail(f"pcrs[{bank.name.lower()}] must be a non-empty map")
        for index, digest in values.items():
            if type(index) is not int:
                raise _fail("PCR indices must be unsigned integers")
            out.append((bank, index, digest))
    out.sort(key=lambda e: (int(e[0]), e[1]))
    return tuple(out)


def parse_vtpm_evidence(data: bytes) -> VtpmEvidence:
    """Decode a bundle strictly.

    The input must be canonical CBOR (so one bundle has exactly one encoding), at most
    :data:`MAX_VTPM_EVIDENCE_SIZE` bytes, with version 1, known keys only, the members
    its profile needs and no others, and every size within bounds.

    Args:
        data: the encoded bundle.

    Returns:
        The bundle.

    Raises:
        EvidenceFormatError: anything else, including trailing bytes.
    """
    data = bytes(data)
    if len(data) > MAX_VTPM_EVIDENCE_SIZE:
        raise _fail(f"{len(data)} bytes exceed the {MAX_VTPM_EVIDENCE_SIZE}-byte limit")
    try:
        document = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many exception types on hostile input
        raise _fail(f"not CBOR: {exc}") from exc
    if not isinstance(document, dict):
        raise _fail("the bundle is not a CBOR map")
    unknown = [k for k in document if type(k) is not int or k not in _ALL_KEYS]
    if unknown:
        raise _fail(f"unknown key(s) {unknown!r}")
    version = document.get(_Key.VERSION)
    if type(version) is not int or version != VTPM_EVIDENCE_VERSION:
        raise _fail(f"unsupported version {version!r}")
    raw_profile = document.get(_Key.PROFILE)
    try:
        if not isinstance(raw_profile, str):
            raise ValueError(raw_profile)
        profile = VtpmProfile(raw_profile)
    except ValueError:
        raise _fail(f"unknown profile {document.get(_Key.PROFILE)!r}") from None
    missing = [
        k
        for k in (_Key.AK_PUBLIC, _Key.QUOTE_ATTEST, _Key.QUOTE_SIGNATURE, _Key.PCRS)
        if k not in document
    ]
    if missing:
        raise _fail(f"missing key(s) {missing}")
    certs = document.get(_Key.CERTS)
    if certs is not None and (not isinstance(certs, list) or not certs):
        raise _fail("certs must be a non-empty array")
    try:
        evidence = VtpmEvidence(
            profile=profile,
            ak_public=document[_Key.AK_PUBLIC],
            quote_attest=document[_Key.QUOTE_ATTEST],
            quote_signature=document[_Key.QUOTE_SIGNATURE],
            pcrs=_decode_pcrs(document[_Key.PCRS]),
            snp_report=document.get(_Key.SNP_REPORT),
            certs=tuple(certs) if certs is not None else (),
            cert_table=document.get(_Key.CERT_TABLE),
            svsm_nonce=document.get(_Key.SVSM_NONCE),
            svsm_manifest=document.get(_Key.SVSM_MANIFEST),
            ek_public=document.get(_Key.EK_PUBLIC),
            hcl_report=document.get(_Key.HCL_REPORT),
            activation_proof=document.get(_Key.ACTIVATION_PROOF),
        )
    except TypeError as exc:  # pragma: no cover - every field is checked above
        raise _fail(str(exc)) from exc
    # Canonical form only: re-encoding must give the input back (this also refuses
    # trailing bytes, indefinite lengths, tags and non-minimal integers).
    if evidence.to_bytes() != data:
        raise _fail("not the canonical encoding (or trailing bytes)")
    return evidence


# --------------------------------------------------------------------------------------
# Credential activation
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationChallenge:
    """The verifier's half of credential activation: what to send, and what to remember.

    Send ``credential`` (``credential.to_tpm2_tools_file()`` or its two parts) to the
    attester; keep the whole object until the answer comes back.

    Attributes:
        ek_name: Name of the EK the credential is sealed to.
        ak_name: Name of the AK it is bound to.
        credential: the TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
        secret: the value only that TPM, holding that AK, can recover (never in repr).
    """

    ek_name: bytes
    ak_name: bytes
    credential: Credential
    secret: bytes = field(repr=False)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationProof(metaclass=NoPublicConstructor):
    """Proof that the AK named here lives in the TPM of the EK named here.

    Only :func:`finish_activation` creates these, after the recovered secret matched.
    """

    ek_name: bytes
    ak_name: bytes


def _ek_of(evidence: VtpmEvidence) -> TpmtPublic:
    """The EK public area the evidence claims (svsm: manifest; svsm-paper: TPM2B_PUBLIC)."""
    if evidence.svsm_manifest is not None:
        return parse_tpmt_public(evidence.svsm_manifest)
    if evidence.ek_public is not None:
        return parse_tpm2b_public(evidence.ek_public)
    raise EvidenceVerificationError(
        "vtpm.activation",
        expected="an svsm or svsm-paper bundle (one that carries the EK)",
        actual=evidence.profile.value,
        detail="azure binds the AK in the report itself",
    )


def activation_names(evidence: VtpmEvidence) -> tuple[bytes, bytes]:
    """The (EK name, AK name) pair a credential activation for this bundle would prove.

    A verifier that remembers proofs keys them by this pair.

    Raises:
        EvidenceFormatError: the EK or AK public area is malformed.
        EvidenceVerificationError: the profile carries no EK (azure).
    """
    return _ek_of(evidence).name(), parse_tpm2b_public(evidence.ak_public).name()


def begin_activation(
    evidence: VtpmEvidence,
    *,
    rng: Callable[[int], bytes] = os.urandom,
    secret_size: int = 32,
) -> ActivationChallenge:
    """Start credential activation for the bundle's AK against its EK (verifier side).

    The EK is checked against the TCG template first, so the credential is sealed to a
    restricted decryption key.  The bundle need not be verified yet: whatever it claims,
    :func:`verify_vtpm_evidence` later accepts the proof only for the EK the SNP report
    binds and the AK that signed the quote.

    Args:
        evidence: a bundle of the svsm or svsm-paper profile.
        rng: randomness for the secret and the seed.
        secret_size: secret length, 1 to 32 bytes (the EK nameAlg's digest size).

    Returns:
        The challenge: send ``credential``, keep the rest.

    Raises:
        EvidenceFormatError: the EK or AK public area is malformed.
        EvidenceVerificationError: the EK is not an EK per the TCG template, or the
            profile carries no EK (azure).
    """
    ek = _ek_of(evidence)
    check_ek_public(ek)
    ak = parse_tpm2b_public(evidence.ak_public)
    secret = rng(secret_size)
    try:
        credential = make_credential(ek_public=ek, ak_name=ak.name(), secret=secret, rng=rng)
    except ValueError as exc:
        raise EvidenceFormatError(f"cannot seal a credential: {exc}", structure=_STRUCTURE) from exc
    return ActivationChallenge(
        ek_name=ek.name(), ak_name=ak.name(), credential=credential, secret=secret
    )


def finish_activation(challenge: ActivationChallenge, returned_secret: bytes) -> ActivationProof:
    """Check the attester's answer to a challenge (constant-time comparison).

    Args:
        challenge: from :func:`begin_activation`.
        returned_secret: what TPM2_ActivateCredential gave the attester.

    Returns:
        The proof to pass to :func:`verify_vtpm_evidence`.

    Raises:
        BindingMismatch: the secret differs: the AK is not proven to live next to the EK.
    """
    verify_activated_secret(expected=challenge.secret, returned=returned_secret)
    return ActivationProof._create(ek_name=challenge.ek_name, ak_name=challenge.ak_name)


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedVtpmEvidence(metaclass=NoPublicConstructor):
    """SNP + vTPM evidence whose whole chain was verified (only the verifier creates these).

    Attributes:
        profile: the binding profile.
        snp: the verified SNP report.
        ek_public: the EK the report binds (None for azure, where the report binds the AK).
        ak_public: the AK that signed the quote.
        ak_binding: how the AK was tied to the attested vTPM.
        quote: the verified quote (its ``pcr_values`` are the attested PCRs).
        runtime_claims: the Azure runtime claims (azure only).
        appraised: True when a policy was applied.
        policy_digest: the policy's digest, if any.
        verified_at: the verification time.
    """

    profile: VtpmProfile
    snp: VerifiedSnpReport
    ek_public: TpmtPublic | None
    ak_public: TpmtPublic
    ak_binding: AkBinding
    quote: VerifiedQuote
    runtime_claims: RuntimeClaims | None
    appraised: bool
    policy_digest: str | None
    verified_at: datetime

    def __hash__(self) -> int:
        # VerifiedSnpReport holds key objects that are not hashable; the evidence is
        # identified by the verified bytes and the verification context instead.
        return hash(
            (
                self.profile,
                self.snp.report,
                self.ak_public,
                self.quote.attest,
                self.ak_binding,
                self.appraised,
                self.policy_digest,
                self.verified_at,
            )
        )

    @property
    def trust_anchor(self) -> str:
        """The root the SNP chain ends in: ``"AMD"`` or ``"simulator"``."""
        return self.snp.trust_anchor

    def claims(self) -> dict[str, object]:
        """A JSON-friendly summary of the vTPM part."""
        pcrs: dict[str, dict[str, str]] = {}
        for bank, index, value in self.quote.pcr_values:
            pcrs.setdefault(bank.name.lower(), {})[str(index)] = value.hex()
        clock = self.quote.clock_info
        return {
            "profile": self.profile.value,
            "ak_binding": self.ak_binding.value,
            "ek_name": self.ek_public.name().hex() if self.ek_public is not None else None,
            "ak_name": self.quote.ak_name.hex(),
            "quote": {
                "extra_data": self.quote.extra_data.hex(),
                "clock": clock.clock,
                "reset_count": clock.reset_count,
                "restart_count": clock.restart_count,
                "safe": clock.safe,
                "firmware_version": f"{self.quote.firmware_version:#018x}",
            },
            "pcrs": pcrs,
        }


def expected_report_data(evidence: VtpmEvidence) -> tuple[bytes, int]:
    """The REPORT_DATA prefix the profile's binding requires, and how many bytes it covers.

    Args:
        evidence: the bundle.

    Returns:
        ``(value, length)``: REPORT_DATA[0:length] must equal value.

    Raises:
        EvidenceFormatError: the HCL report (azure) is malformed.
    """
    if evidence.profile is VtpmProfile.SVSM:
        assert evidence.svsm_nonce is not None  # noqa: S101 - guaranteed by VtpmEvidence
        assert evidence.svsm_manifest is not None  # noqa: S101 - guaranteed by VtpmEvidence
        return hashlib.sha512(evidence.svsm_nonce + evidence.svsm_manifest).digest(), 64
    if evidence.profile is VtpmProfile.SVSM_PAPER:
        assert evidence.ek_public is not None  # noqa: S101 - guaranteed by VtpmEvidence
        return hashlib.sha512(evidence.ek_public).digest(), 64
    assert evidence.hcl_report is not None  # noqa: S101 - guaranteed by VtpmEvidence
    binding = parse_hcl_report(evidence.hcl_report).report_data_binding()
    return binding, len(binding)


_BINDING_FORMULA: Final[Mapping[VtpmProfile, str]] = {
    VtpmProfile.SVSM: "REPORT_DATA must equal SHA-512(nonce || EK TPMT_PUBLIC manifest)",
    VtpmProfile.SVSM_PAPER: "REPORT_DATA must equal SHA-512(EK TPM2B_PUBLIC)",
    VtpmProfile.AZURE: "REPORT_DATA must start with H(runtime claims) of the HCL report",
}


def _endorsements(evidence: VtpmEvidence) -> SnpEndorsements:
    if evidence.cert_table is not None:
        return SnpEndorsements.from_cert_table(evidence.cert_table)
    leaf, intermediate, root = (load_amd_certificate(c) for c in evidence.certs)
    return SnpEndorsements(leaf=leaf, intermediate=intermediate, root=root)


def _check_ak_matches_jwk(ak: TpmtPublic, claims: RuntimeClaims) -> None:
    jwk = claims.ak_pub
    key = ak.public_key()
    numbers = key.public_numbers() if isinstance(key, rsa.RSAPublicKey) else None
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big") if numbers is not None else b""
    same = numbers is not None and hmac.compare_digest(n, jwk.n) and numbers.e == jwk.e
    if not same:
        raise BindingMismatch(
            "azure.hcl_ak_pub",
            expected=f"the quote's AK (RSA modulus {n[:8].hex()}...)" if n else "an RSA AK",
            actual=f"HCLAkPub modulus {jwk.n[:8].hex()}...",
            detail="the AK that signed the quote is not the one the HCL report binds",
        )


def verify_vtpm_evidence(
    evidence: VtpmEvidence,
    *,
    policy: Policy | None,
    at: datetime,
    expected_binder: bytes,
    expected_nonce: bytes | None = None,
    activation: ActivationChallenge | ActivationProof | None = None,
    trust_simulator: bool = False,
    product: ProductLine | None = None,
    sequence: QuoteSequenceChecker | None = None,
    allowed_hashes: Collection[TpmAlgId] = DEFAULT_QUOTE_HASHES,
) -> VerifiedVtpmEvidence:
    """Verify the chain SNP report -> EK (or AK) -> AK -> quote, then appraise it.

    Steps, each raising on failure:

    1. the SNP report is authentic (AMD chain to a pinned root, or to the simulator root if
       trusted) and was requested at **VMPL 0** whatever the policy says, since only VMPL 0
       (the SVSM or the paravisor) speaks for the vTPM;
    2. REPORT_DATA holds the profile's binding (constant-time comparison); for svsm the
       nonce also equals ``expected_nonce`` when given;
    3. svsm profiles: the bound EK is an EK per the TCG template;
    4. with a policy, the SNP claims are appraised (measurement, TCB, guest policy...);
    5. the AK: ``activated`` with a matching activation (challenge plus the bundle's
       ``activation_proof``, or a proof from :func:`finish_activation`); ``vmpl0-bound`` on
       azure when HCLAkPub is the quote's AK; otherwise ``unproven``, refused unless the
       policy sets ``allow_unproven_ak`` (without a policy it is only reported);
    6. the quote: signature under the AK's own scheme, extraData == ``expected_binder``,
       PCR digest over the supplied values, and, if given, the ``sequence`` checker;
    7. with a policy, the quoted PCRs against ``policy.vtpm.pcrs``.

    Args:
        evidence: the bundle.
        policy: the appraisal policy; None checks authenticity and binding only (the
            result says ``appraised=False``).
        at: verification time (certificate validity).
        expected_binder: the quote's qualifying data, exactly.
        expected_nonce: svsm only: the 64-byte nonce the SVSM must have hashed.
        activation: the credential challenge (the bundle then carries the recovered
            secret) or a finished proof.
        trust_simulator: accept the simulated AMD root (a policy's
            ``[trust] simulated_hardware`` also counts).
        product: product line for version-2 reports.
        sequence: checks quotes of one AK for replay across calls.
        allowed_hashes: quote signing hashes accepted.

    Returns:
        The verified evidence.

    Raises:
        EvidenceFormatError: a structure is malformed.
        CertificateChainError: the chain does not reach a trusted root.
        SignatureMismatch: the report or quote signature is wrong.
        NonceMismatch: the SVSM nonce or the quote's extraData is not the expected one.
        BindingMismatch: REPORT_DATA does not bind the EK/AK, the activation failed or
            was for other keys, HCLAkPub differs from the quote's AK, or the PCR values
            are not the quoted ones.
        PolicyViolation: VMPL is not 0, an unproven AK, or a claim the policy refuses.
        EvidenceVerificationError: any other failed check (e.g. EK attributes).
    """
    return run_inline(
        verify_vtpm_evidence_steps(
            evidence,
            policy=policy,
            at=at,
            expected_binder=expected_binder,
            expected_nonce=expected_nonce,
            activation=activation,
            trust_simulator=trust_simulator,
            product=product,
            sequence=sequence,
            allowed_hashes=allowed_hashes,
        )
    )


def verify_vtpm_evidence_steps(
    evidence: VtpmEvidence,
    *,
    policy: Policy | None,
    at: datetime,
    expected_binder: bytes,
    expected_nonce: bytes | None = None,
    activation: ActivationChallenge | ActivationProof | None = None,
    trust_simulator: bool = False,
    product: ProductLine | None = None,
    sequence: QuoteSequenceChecker | None = None,
    allowed_hashes: Collection[TpmAlgId] = DEFAULT_QUOTE_HASHES,
) -> Steps[VerifiedVtpmEvidence]:
    """:func:`verify_vtpm_evidence` as :mod:`ratls._steps`: the SNP report signature is yielded.

    The same checks in the same order, so a stream can make the report's ECDSA P-384
    check on a worker thread while its event loop serves other connections.
    """
    profile = evidence.profile
    hcl: HclReport | None = None
    if evidence.hcl_report is not None:
        hcl = parse_hcl_report(evidence.hcl_report)
        raw_report = hcl.snp_report
    else:
        assert evidence.snp_report is not None  # noqa: S101 - guaranteed by VtpmEvidence
        raw_report = evidence.snp_report

    # 1. The SNP report.
    endorsements = _endorsements(evidence)
    simulator_ok = trust_simulator or (policy is not None and policy.trust.simulated_hardware)
    anchors = trust_anchors(trust_simulator=simulator_ok, presented_root=endorsements.root)
    snp = yield from verify_snp_report_steps(
        raw_report, endorsements, anchors=anchors, at=at, product=product
    )
    if snp.report.vmpl != 0:
        raise PolicyViolation(
            "snp.vmpl",
            expected=0,
            actual=snp.report.vmpl,
            detail=f"the {profile.value} profile needs a report requested at VMPL 0",
        )

    # 2. The binding.
    if profile is VtpmProfile.SVSM and expected_nonce is not None:
        assert evidence.svsm_nonce is not None  # noqa: S101 - guaranteed by VtpmEvidence
        if not hmac.compare_digest(evidence.svsm_nonce, bytes(expected_nonce)):
            raise NonceMismatch(
                "svsm.nonce", expected=bytes(expected_nonce), actual=evidence.svsm_nonce
            )
    binding, length = expected_report_data(evidence)
    actual = snp.report.report_data[:length]
    if not hmac.compare_digest(actual, binding):
        raise BindingMismatch(
            f"{profile.value}.report_data",
            expected=binding,
            actual=actual,
            detail=_BINDING_FORMULA[profile],
        )

    # 3. The EK (svsm profiles) or the runtime claims (azure).
    ek: TpmtPublic | None = None
    claims: RuntimeClaims | None = None
    if hcl is not None:
        claims = hcl.runtime_claims()
    else:
        ek = _ek_of(evidence)
        check_ek_public(ek)

    # 4. SNP appraisal.
    if policy is not None:
        appraise_snp_report(snp, dataclasses.replace(policy.snp, vmpl=0))

    # 5. The AK.
    ak = parse_tpm2b_public(evidence.ak_public)
    if claims is not None:
        if activation is not None:
            raise EvidenceVerificationError(
                "vtpm.activation",
                expected="no activation (azure binds the AK in the report)",
                actual="an activation challenge or proof",
            )
        _check_ak_matches_jwk(ak, claims)
        ak_binding = AkBinding.VMPL0_BOUND
    elif activation is not None:
        assert ek is not None  # noqa: S101 - set above for svsm profiles
        _check_activation(evidence, activation, ek, ak)
        ak_binding = AkBinding.ACTIVATED
    else:
        ak_binding = AkBinding.UNPROVEN
        if policy is not None and not policy.vtpm.allow_unproven_ak:
            raise PolicyViolation(
                "vtpm.ak_binding",
                expected="activated",
                actual="unproven",
                detail="no credential activation ties the AK to the EK the report binds; "
                "set [vtpm] allow_unproven_ak = true to accept that",
            )

    # 6. The quote.
    quote = yield from verify_quote_steps(
        attest=evidence.quote_attest,
        signature=evidence.quote_signature,
        ak_public=ak,
        expected_extra_data=bytes(expected_binder),
        pcr_values=evidence.pcr_mapping(),
        allowed_hashes=allowed_hashes,
    )
    if sequence is not None:
        sequence.check(quote)

    # 7. PCR appraisal.
    if policy is not None:
        appraise_pcrs(quote, PcrPolicy.from_mapping(dict(policy.vtpm.pcrs.items())))

    return VerifiedVtpmEvidence._create(
        profile=profile,
        snp=snp,
        ek_public=ek,
        ak_public=ak,
        ak_binding=ak_binding,
        quote=quote,
        runtime_claims=claims,
        appraised=policy is not None,
        policy_digest=policy.digest() if policy is not None else None,
        verified_at=at,
    )


def _check_activation(
    evidence: VtpmEvidence,
    activation: ActivationChallenge | ActivationProof,
    ek: TpmtPublic,
    ak: TpmtPublic,
) -> None:
    if isinstance(activation, ActivationChallenge):
        if evidence.activation_proof is None:
            raise BindingMismatch(
                "tpm.ak.activation",
                expected="the secret sealed to the EK for this AK",
                actual="no activation proof in the evidence",
            )
        proof = finish_activation(activation, evidence.activation_proof)
    else:
        proof = activation
    for claim, proven, actual in (
        ("tpm.ak.activation.ek_name", proof.ek_name, ek.name()),
        ("tpm.ak.activation.ak_name", proof.ak_name, ak.name()),
    ):
        if not hmac.compare_digest(proven, actual):
            raise BindingMismatch(
                claim,
                expected=actual,
                actual=proven,
                detail="the activation was performed for other keys than this evidence's",
            )


def to_attestation_result(verified: VerifiedVtpmEvidence) -> AttestationResult:
    """Wrap verified vTPM evidence in the library-wide :class:`AttestationResult`.

    This is the one place that maps the vTPM result onto the common result type: profile,
    SNP report, trust anchor, appraisal, policy digest, time, ``ak_binding``, and the
    :class:`VerifiedVtpmEvidence` itself.  Evidence verified here is fresh (the quote
    carries the caller's binder), so ``replayable`` is False.

    Args:
        verified: output of :func:`verify_vtpm_evidence`.

    Returns:
        The result.
    """
    return AttestationResult._create(
        profile=verified.profile.value,
        snp=verified.snp,
        trust_anchor=verified.trust_anchor,
        appraised=verified.appraised,
        policy_digest=verified.policy_digest,
        verified_at=verified.verified_at,
        replayable=False,
        ak_binding=verified.ak_binding.value,
        vtpm=verified,
    )


def verify_vtpm_attestation(
    evidence: VtpmEvidence | bytes,
    **kwargs: Any,  # noqa: ANN401 - see verify_vtpm_evidence
) -> AttestationResult:
    """Decode (if needed), verify and appraise a bundle; return an AttestationResult.

    Args:
        evidence: the bundle or its CBOR encoding.
        **kwargs: the keyword arguments of :func:`verify_vtpm_evidence`.

    Returns:
        The result.

    Raises:
        RatlsError: any subclass, naming the failed check.
    """
    if isinstance(evidence, bytes | bytearray | memoryview):
        evidence = parse_vtpm_evidence(bytes(evidence))
    return to_attestation_result(verify_vtpm_evidence(evidence, **kwargs))
