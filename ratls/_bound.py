"""Bound-mode evidence: real attesters and verifiers behind the attestation exchange's seam.

The post-handshake exchange (:mod:`ratls._exchange`) moves opaque evidence and asks two
small interfaces to make and check it: ``LocalAttester.evidence(binder) -> bytes`` and
``PeerVerifier.verify(evidence, binder) -> result``.  This module implements them over the
evidence ratls really verifies, so that the binder of one TLS connection ends up inside
hardware-signed evidence:

==============  =================================  =======================================
evidence        where the 64-byte binder goes      media type
==============  =================================  =======================================
SNP report      REPORT_DATA = binder               ``application/vnd.ratls.snp+cbor``
SNP + vTPM      quote qualifying data =            ``application/vnd.ratls.snp-vtpm+cbor``
                SHA-256(binder); ``svsm``: the
                SVSM nonce = binder as well
==============  =================================  =======================================

The binder (``SHA-256(SPKI of the attester's TLS certificate) || RFC 9266 exporter``) is
fresh per connection and names the TLS key, so the evidence proves both "this machine,
now" and "the one holding the key at the other end of this channel".

A bare SNP report travels in a small CBOR map that deliberately reuses the key numbers of
the SNP + vTPM bundle (:mod:`ratls._vtpm_evidence`), so a verifier tells the two apart by
key 1 (the profile) alone::

    0  version     uint, 1
    1  profile     text, "snp"
    2  snp_report  bstr (0x4A0 bytes)
    3  certs       [3 x bstr] DER: VCEK|VLEK, ASK|ASVK, ARK      (exactly one of 3 and 4)
    4  cert_table  bstr: the extended-report certificate table (GHCB GUID table)

The encoding is canonical CBOR (RFC 8949 section 4.2.1); the decoder refuses anything else,
unknown keys, and trailing bytes.

:class:`BoundVerifier` always appraises against a :class:`~ratls.Policy`: a verifier
without one cannot be built, because an attested connection that accepts any authentic
evidence would accept a debug guest running anything.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, final

import cbor2
from cryptography.hazmat.primitives.serialization import Encoding

from ._amd_certs import load_amd_certificate
from ._errors import (
    AttesterError,
    BindingMismatch,
    EvidenceFormatError,
    PolicyError,
    PolicyViolation,
)
from ._exchange import BINDER_LENGTH, DEFAULT_MEDIA_TYPE
from ._policy import Policy
from ._snp_report import SNP_REPORT_SIZE, ProductLine
from ._snp_verify import SnpEndorsements
from ._steps import run_inline
from ._tpm_credential import parse_tpm2_tools_credential
from ._verify import verify_snp_attestation_steps
from ._vtpm_evidence import (
    MAX_VTPM_EVIDENCE_SIZE,
    ActivationChallenge,
    ActivationProof,
    VtpmEvidence,
    VtpmProfile,
    activation_names,
    begin_activation,
    finish_activation,
    parse_vtpm_evidence,
    to_attestation_result,
    verify_vtpm_evidence_steps,
)
from .attesters._svsm_vtpm import GuestEvidence

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import TracebackType

    from ._result import AttestationResult
    from ._snp_report import GuestPolicy
    from ._steps import Steps
    from ._tpm_credential import Credential
    from ._tpm_structs import TpmAlgId
    from .attesters import SnpGuestAttester
    from .attesters._svsm_vtpm import VtpmAttester
    from .sim import SimulatedAmdSp
    from .sim._svsm import SimulatedSvsm

__all__ = [
    "ACTIVATION_MEMORY_SIZE",
    "ACTIVATION_TTL",
    "MAX_SNP_EVIDENCE_SIZE",
    "SNP_EVIDENCE_VERSION",
    "SNP_MEDIA_TYPE",
    "SNP_PROFILE",
    "VTPM_MEDIA_TYPE",
    "BoundActivation",
    "BoundVerifier",
    "GuestSnpAttester",
    "SimulatedSnpAttester",
    "SimulatedVtpmAttester",
    "SnpEvidence",
    "VtpmBoundAttester",
    "activation_memory_counts",
    "parse_snp_evidence",
    "quote_qualifying_data",
]

#: Media type of a bare SNP report with its endorsements (this module's CBOR map).
SNP_MEDIA_TYPE: Final = "application/vnd.ratls.snp+cbor"
#: Media type of the SNP + vTPM bundle of :mod:`ratls._vtpm_evidence`.
VTPM_MEDIA_TYPE: Final = DEFAULT_MEDIA_TYPE
#: Value of key 1 that marks a bare SNP evidence map.
SNP_PROFILE: Final = "snp"
#: Version of the SNP evidence map (key 0).
SNP_EVIDENCE_VERSION: Final = 1

# A report (1184 bytes) plus three AMD certificates of 1-2 KiB each is about 6 KiB; a
# certificate table adds a 72-byte GUID table.  32 KiB refuses anything that is clearly
# not that before the decoder allocates for it, and stays far under the exchange's limit.
MAX_SNP_EVIDENCE_SIZE: Final = 0x8000

# Process-wide counts of remembered-activation lookups (for ratls._caches): a hit spares
# the challenge round, a miss issues a challenge.
_activation_counts = [0, 0]
_activation_counts_lock = threading.Lock()
_verifiers_alive: weakref.WeakSet[BoundVerifier] = weakref.WeakSet()


def _count_activation_lookup(*, hit: bool) -> None:
    with _activation_counts_lock:
        _activation_counts[0 if hit else 1] += 1


def activation_memory_counts() -> tuple[int, int, int]:
    """(hits, misses, entries) of the verifiers' remembered activations in this process."""
    with _activation_counts_lock:
        hits, misses = _activation_counts
    entries = sum(len(verifier._proofs) for verifier in list(_verifiers_alive))
    return hits, misses, entries


#: Default seconds a verifier remembers a passed credential activation (per EK and AK).
ACTIVATION_TTL: Final = 3600.0
#: How many (EK, AK) proofs one verifier remembers; the oldest is forgotten first.
ACTIVATION_MEMORY_SIZE: Final = 256

_STRUCTURE: Final = "SNP evidence"
_MAX_CERT_SIZE: Final = 0x2000  # AMD certificates are 1-2 KiB
_MAX_CERT_TABLE_SIZE: Final = 0x4000  # the kernel's default certificate buffer


class _Key:
    """CBOR map keys (shared with the SNP + vTPM bundle)."""

    VERSION: Final = 0
    PROFILE: Final = 1
    SNP_REPORT: Final = 2
    CERTS: Final = 3
    CERT_TABLE: Final = 4


_KEYS: Final = frozenset({_Key.VERSION, _Key.PROFILE, _Key.SNP_REPORT, _Key.CERTS, _Key.CERT_TABLE})


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
class SnpEvidence:
    """A bare SNP report with the certificates that endorse it.

    The constructor checks the shape (sizes, exactly one way of carrying certificates);
    the contents are checked by :class:`BoundVerifier`.

    Attributes:
        snp_report: the raw ATTESTATION_REPORT (0x4A0 bytes).
        certs: DER VCEK|VLEK, ASK|ASVK, ARK; empty when ``cert_table`` is given.
        cert_table: the extended-report certificate table; None when ``certs`` is given.
    """

    snp_report: bytes
    certs: tuple[bytes, ...] = ()
    cert_table: bytes | None = None

    def __post_init__(self) -> None:
        _check_bytes("snp_report", self.snp_report, low=SNP_REPORT_SIZE, high=SNP_REPORT_SIZE)
        if not isinstance(self.certs, tuple):
            raise _fail("certs must be a tuple")
        if bool(self.certs) == (self.cert_table is not None):
            raise _fail("exactly one of certs and cert_table must be given")
        if self.certs:
            if len(self.certs) != 3:
                raise _fail("certs must hold 3 DER certificates (leaf, ASK, ARK)")
            for index, cert in enumerate(self.certs):
                _check_bytes(f"certs[{index}]", cert, low=1, high=_MAX_CERT_SIZE)
        if self.cert_table is not None:
            _check_bytes("cert_table", self.cert_table, low=1, high=_MAX_CERT_TABLE_SIZE)

    def __repr__(self) -> str:
        carried = (
            f"certs=<{len(self.certs)} certificates>"
            if self.certs
            else f"cert_table=<{len(self.cert_table or b'')} bytes>"
        )
        return f"SnpEvidence(snp_report=<{len(self.snp_report)} bytes>, {carried})"

    def to_bytes(self) -> bytes:
        """Encode as canonical CBOR; :func:`parse_snp_evidence` reverses it byte for byte."""
        document: dict[int, object] = {
            _Key.VERSION: SNP_EVIDENCE_VERSION,
            _Key.PROFILE: SNP_PROFILE,
            _Key.SNP_REPORT: self.snp_report,
        }
        if self.certs:
            document[_Key.CERTS] = list(self.certs)
        else:
            document[_Key.CERT_TABLE] = self.cert_table
        return cbor2.dumps(document, canonical=True)

    def endorsements(self) -> SnpEndorsements:
        """The endorsement chain, parsed.

        Raises:
            EvidenceFormatError: a certificate or the table is malformed.
        """
        if self.cert_table is not None:
            return SnpEndorsements.from_cert_table(self.cert_table)
        leaf, intermediate, root = (load_amd_certificate(der) for der in self.certs)
        return SnpEndorsements(leaf=leaf, intermediate=intermediate, root=root)


def _decode_map(data: bytes, limit: int) -> dict[object, object]:
    if len(data) > limit:
        raise _fail(f"{len(data)} bytes exceed the {limit}-byte limit")
    try:
        document = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many exception types on hostile input
        raise _fail(f"not CBOR: {exc}") from exc
    if not isinstance(document, dict):
        raise _fail("evidence is not a CBOR map")
    return document


def parse_snp_evidence(data: bytes) -> SnpEvidence:
    """Decode an SNP evidence map strictly.

    Args:
        data: the canonical CBOR encoding, at most :data:`MAX_SNP_EVIDENCE_SIZE` bytes.

    Returns:
        The evidence.

    Raises:
        EvidenceFormatError: not CBOR, not a map, wrong version or profile, unknown or
            missing keys, bad sizes, not the canonical encoding, or trailing bytes.
    """
    data = bytes(data)
    document = _decode_map(data, MAX_SNP_EVIDENCE_SIZE)
    version = document.get(_Key.VERSION)
    if type(version) is not int or version != SNP_EVIDENCE_VERSION:
        raise _fail(f"unsupported version {version!r}")
    profile = document.get(_Key.PROFILE)
    if type(profile) is not str or profile != SNP_PROFILE:
        raise _fail(f"profile {profile!r} is not {SNP_PROFILE!r}")
    unknown = [key for key in document if type(key) is not int or key not in _KEYS]
    if unknown:
        raise _fail(f"unknown key(s) {unknown!r}")
    if _Key.SNP_REPORT not in document:
        raise _fail("missing snp_report (key 2)")
    certs = document.get(_Key.CERTS)
    if certs is not None and (not isinstance(certs, list) or not certs):
        raise _fail("certs must be a non-empty array")
    cert_table = document.get(_Key.CERT_TABLE)
    report = document[_Key.SNP_REPORT]
    if not isinstance(report, bytes):
        raise _fail("snp_report must be a byte string")
    if cert_table is not None and not isinstance(cert_table, bytes):
        raise _fail("cert_table must be a byte string")
    evidence = SnpEvidence(
        snp_report=report,
        certs=tuple(certs) if certs is not None else (),
        cert_table=cert_table,
    )
    # One encoding only: this also refuses trailing bytes, indefinite lengths, tags and
    # non-minimal integers.
    if evidence.to_bytes() != data:
        raise _fail("not the canonical encoding (or trailing bytes)")
    return evidence


def quote_qualifying_data(binder: bytes) -> bytes:
    """The vTPM quote's qualifying data for a binder: SHA-256(binder).

    Hashing keeps the value within every TPM's TPM2B_DATA limit (the digest size of its
    largest hash), while still committing to the whole binder.

    Args:
        binder: the 64-byte binder.

    Returns:
        32 bytes.
    """
    return hashlib.sha256(binder).digest()


def _check_binder(binder: bytes) -> bytes:
    binder = bytes(binder)
    if len(binder) != BINDER_LENGTH:
        raise ValueError(f"a binder is {BINDER_LENGTH} bytes, got {len(binder)}")
    return binder


# --------------------------------------------------------------------------- attesters


@final
class SimulatedSnpAttester:
    """SNP evidence from ratls's simulated AMD-SP: REPORT_DATA = binder.

    Evidence from the simulator proves nothing about hardware; a verifier accepts it only
    when its policy says ``[trust] simulated_hardware = true``.

    Args:
        sp: the simulated AMD-SP; by default the process-wide one for ``product``
            (created on first use, which takes a few seconds of RSA key generation).
        product: the product line, when ``sp`` is not given.
        measurement: the launch digest to report (the simulator's default otherwise).
        report_version: SNP report version (2, 3 or 5).
        vmpl: the VMPL in the report.
        guest_policy: the guest policy in the report (debug off, SMT allowed by default).

    Attributes:
        media_type: :data:`SNP_MEDIA_TYPE`.
        blocking: False: it only computes, so the stream calls it in the event loop
            (through :meth:`evidence_steps`, with the ECDSA signature on a worker).
    """

    media_type: Final = SNP_MEDIA_TYPE
    blocking: Final = False

    def __init__(
        self,
        sp: SimulatedAmdSp | None = None,
        *,
        product: ProductLine = ProductLine.GENOA,
        measurement: bytes | None = None,
        report_version: int = 3,
        vmpl: int = 0,
        guest_policy: GuestPolicy | None = None,
    ) -> None:
        self._sp = sp
        self._product = sp.product if sp is not None else product
        self._measurement = measurement
        self._version = report_version
        self._vmpl = vmpl
        self._guest_policy = guest_policy
        self._lock = threading.Lock()
        self._certs: tuple[SimulatedAmdSp, tuple[bytes, ...]] | None = None

    def __repr__(self) -> str:
        return f"SimulatedSnpAttester(product={self._product.value}, vmpl={self._vmpl})"

    def _simulator(self) -> SimulatedAmdSp:
        with self._lock:
            if self._sp is None:
                from .sim import simulated_amd_sp

                self._sp = simulated_amd_sp(self._product)
            return self._sp

    def evidence(self, binder: bytes) -> bytes:
        """A freshly signed report with REPORT_DATA = ``binder``, and its chain.

        Args:
            binder: the 64-byte binder.

        Returns:
            The encoded :class:`SnpEvidence`.

        Raises:
            ValueError: the binder is not 64 bytes.
        """
        return run_inline(self.evidence_steps(binder))

    def evidence_steps(self, binder: bytes) -> Steps[bytes]:
        """:meth:`evidence` as :mod:`ratls._steps`: the AMD-SP's signature is yielded.

        The stream makes that signature on a worker thread (the simulated AMD-SP's own
        core, as it were) and builds and encodes the report in the event loop.
        """
        binder = _check_binder(binder)
        sp = self._simulator()
        report = yield from sp.report_bytes_steps(
            report_data=binder,
            version=self._version,
            vmpl=self._vmpl,
            measurement=self._measurement,
            policy=self._guest_policy,
        )
        return SnpEvidence(snp_report=report, certs=self._certs_of(sp)).to_bytes()

    def _certs_of(self, sp: SimulatedAmdSp) -> tuple[bytes, ...]:
        """The simulator's VCEK, ASK and ARK in DER, encoded once per simulator."""
        cached = self._certs
        if cached is None or cached[0] is not sp:
            der = Encoding.DER
            cached = (sp, tuple(c.public_bytes(der) for c in (sp.leaf, sp.ask, sp.ark)))
            self._certs = cached
        return cached[1]


@final
class GuestSnpAttester:
    """SNP evidence on a real SEV-SNP guest (configfs-tsm or /dev/sev-guest).

    Args:
        guest: the kernel interface (a :class:`~ratls.attesters.SnpGuestAttester` by
            default; tests inject a simulated kernel).
        certs: DER VCEK|VLEK, ASK|ASVK, ARK to send when the host supplies no
            certificate table (fetch them once from AMD's KDS).
        vmpl: the VMPL to request the report at.

    Attributes:
        media_type: :data:`SNP_MEDIA_TYPE`.
    """

    media_type: Final = SNP_MEDIA_TYPE

    def __init__(
        self,
        guest: SnpGuestAttester | None = None,
        *,
        certs: tuple[bytes, bytes, bytes] | None = None,
        vmpl: int = 0,
    ) -> None:
        if guest is None:
            from .attesters import SnpGuestAttester

            guest = SnpGuestAttester()
        self._guest = guest
        self._certs = certs
        self._vmpl = vmpl

    def __repr__(self) -> str:
        return f"GuestSnpAttester(vmpl={self._vmpl})"

    def evidence(self, binder: bytes) -> bytes:
        """Ask the kernel for a report with REPORT_DATA = ``binder``.

        Args:
            binder: the 64-byte binder.

        Returns:
            The encoded :class:`SnpEvidence`.

        Raises:
            AttesterUnavailable: this is not an SEV-SNP guest.
            AttesterError: the kernel refused, or no certificates are available.
        """
        binder = _check_binder(binder)
        answer = self._guest.get_report(binder, vmpl=self._vmpl)
        if answer.certs is not None:
            return SnpEvidence(snp_report=answer.report, cert_table=answer.certs).to_bytes()
        if self._certs is None:
            raise AttesterError(
                "the host supplied no certificate table; pass certs= (VCEK, ASK, ARK from "
                "AMD's KDS) so that peers can verify the report offline"
            )
        return SnpEvidence(snp_report=answer.report, certs=self._certs).to_bytes()


@final
class VtpmBoundAttester:
    """SNP + vTPM evidence from any :class:`~ratls.sim._svsm.VtpmAttester`.

    The quote's qualifying data is :func:`quote_qualifying_data` (SHA-256 of the binder);
    for the ``svsm`` profile the SVSM's 64-byte nonce is the binder itself, so the VMPL-0
    report is fresh for this connection too.  Calls are serialised: a TPM runs one
    command at a time.

    Args:
        source: the simulated SVSM or a real guest's :class:`GuestVtpmAttester`.
        selection: which PCRs to quote (``{bank: indices}``); the source's default if None.

    Attributes:
        media_type: :data:`VTPM_MEDIA_TYPE`.
    """

    media_type: Final = VTPM_MEDIA_TYPE

    def __init__(
        self,
        source: VtpmAttester,
        *,
        selection: Mapping[TpmAlgId, Iterable[int]] | None = None,
    ) -> None:
        self._source = source
        self._selection = selection
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VtpmBoundAttester({self._source!r})"

    def evidence(self, binder: bytes) -> bytes:
        """Collect a bundle whose quote (and svsm report) carries ``binder``.

        Args:
            binder: the 64-byte binder.

        Returns:
            The encoded :class:`~ratls._vtpm_evidence.VtpmEvidence`.

        Raises:
            AttesterError: the TPM or the SVSM refused, or is unavailable.
        """
        binder = _check_binder(binder)
        with self._lock:
            if self._selection is None:
                bundle = self._source.collect_evidence(
                    binder=quote_qualifying_data(binder), nonce=binder
                )
            else:
                bundle = self._source.collect_evidence(
                    binder=quote_qualifying_data(binder), nonce=binder, selection=self._selection
                )
        return bundle.to_bytes()

    def guest_snp_evidence(self, report_data: bytes) -> bytes:
        """For ``cert`` mode: bare SNP evidence of a report the guest OS requests itself.

        Args:
            report_data: the 64 bytes of REPORT_DATA (SHA-256(claims) || zeros).

        Returns:
            The encoded :class:`SnpEvidence` (report and endorsements).

        Raises:
            AttesterError: the source cannot request guest reports (an Azure CVM), or
                the request failed.
        """
        request = getattr(self._source, "guest_evidence", None)
        if not callable(request):
            raise AttesterError(
                f"{self._source!r} cannot request an SNP report for the guest itself, "
                "which cert mode carries; use bound mode"
            )
        with self._lock:
            guest = request(bytes(report_data))
        if not isinstance(guest, GuestEvidence):  # pragma: no cover - the source's contract
            raise AttesterError("the vTPM source returned no guest report")
        if guest.cert_table is not None:
            return SnpEvidence(snp_report=guest.report, cert_table=guest.cert_table).to_bytes()
        return SnpEvidence(snp_report=guest.report, certs=guest.certs or ()).to_bytes()

    def certificate_bundle(self, binder: bytes, nonce: bytes) -> bytes:
        """For ``cert`` mode: a bundle whose quote carries ``binder`` and report ``nonce``.

        Args:
            binder: the quote's qualifying data (SHA-256(claims)).
            nonce: the SVSM attestation nonce (SHA-256(claims) || zeros).

        Returns:
            The encoded :class:`~ratls._vtpm_evidence.VtpmEvidence`.

        Raises:
            AttesterError: the TPM or the SVSM refused, or is unavailable.
        """
        with self._lock:
            if self._selection is None:
                bundle = self._source.collect_evidence(binder=binder, nonce=nonce)
            else:
                bundle = self._source.collect_evidence(
                    binder=binder, nonce=nonce, selection=self._selection
                )
        return bundle.to_bytes()

    def activate(self, credential: Credential) -> bytes:
        """Answer a verifier's credential-activation challenge with the vTPM.

        Args:
            credential: the verifier's MakeCredential output.

        Returns:
            The recovered secret.

        Raises:
            AttesterError: the TPM refused (the credential is for other keys).
        """
        with self._lock:
            return self._source.activate(credential)

    def respond(self, challenge: bytes) -> bytes:
        """Answer an encoded challenge from :meth:`BoundVerifier.activation_challenge`.

        Args:
            challenge: the credential in the tpm2-tools file format.

        Returns:
            The secret the vTPM recovered (TPM2_ActivateCredential).

        Raises:
            EvidenceFormatError: the challenge is malformed.
            AttesterError: the TPM refused (the credential is for other keys).
        """
        return self.activate(parse_tpm2_tools_credential(bytes(challenge)))


@final
class SimulatedVtpmAttester:
    """SNP + vTPM evidence from a simulated SVSM confidential VM (swtpm as the vTPM).

    The simulated VM boots on first use (a fresh swtpm, EK and AK) and runs until
    :meth:`close`; use it as a context manager.

    Args:
        sp: the simulated AMD-SP; the process-wide one for ``product`` by default.
        product: the product line, when ``sp`` is not given.
        profile: ``svsm`` (default) or ``svsm-paper``.
        measurement: the launch digest to report.

    Attributes:
        media_type: :data:`VTPM_MEDIA_TYPE`.
    """

    media_type: Final = VTPM_MEDIA_TYPE

    def __init__(
        self,
        sp: SimulatedAmdSp | None = None,
        *,
        product: ProductLine = ProductLine.GENOA,
        profile: VtpmProfile = VtpmProfile.SVSM,
        measurement: bytes | None = None,
    ) -> None:
        if profile is VtpmProfile.AZURE:
            raise ValueError("the azure profile is not simulated")
        self._sp = sp
        self._product = product
        self._profile = profile
        self._measurement = measurement
        self._lock = threading.Lock()
        self._vm: SimulatedSvsm | None = None
        self._bound: VtpmBoundAttester | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._vm is not None else "off")
        return f"SimulatedVtpmAttester(profile={self._profile.value}, {state})"

    def _attester(self) -> VtpmBoundAttester:
        with self._lock:
            if self._closed:
                raise AttesterError("this simulated VM was shut down")
            if self._bound is None:
                from .sim import simulated_amd_sp
                from .sim._svsm import SimulatedSvsm

                sp = self._sp if self._sp is not None else simulated_amd_sp(self._product)
                vm = SimulatedSvsm(sp, profile=self._profile, measurement=self._measurement)
                vm.__enter__()
                self._vm = vm
                self._bound = VtpmBoundAttester(vm)
            return self._bound

    def evidence(self, binder: bytes) -> bytes:
        """Boot the VM if needed, then collect a bundle bound to ``binder``.

        Args:
            binder: the 64-byte binder.

        Returns:
            The encoded bundle.

        Raises:
            AttesterError: swtpm could not start, or the VM was shut down.
        """
        return self._attester().evidence(binder)

    def activate(self, credential: Credential) -> bytes:
        """Answer a credential-activation challenge (see :class:`VtpmBoundAttester`)."""
        return self._attester().activate(credential)

    def guest_snp_evidence(self, report_data: bytes) -> bytes:
        """A VMPL-1 report for ``cert`` mode (see :meth:`VtpmBoundAttester.guest_snp_evidence`)."""
        return self._attester().guest_snp_evidence(report_data)

    def certificate_bundle(self, binder: bytes, nonce: bytes) -> bytes:
        """A bundle for ``cert`` mode (see :meth:`VtpmBoundAttester.certificate_bundle`)."""
        return self._attester().certificate_bundle(binder, nonce)

    def respond(self, challenge: bytes) -> bytes:
        """Answer an encoded challenge (see :meth:`VtpmBoundAttester.respond`)."""
        return self._attester().respond(challenge)

    def close(self) -> None:
        """Shut the simulated VM down (its vTPM is wiped); idempotent."""
        with self._lock:
            self._closed = True
            vm, self._vm = self._vm, None
            self._bound = None
        if vm is not None:
            vm.__exit__(None, None, None)

    def __enter__(self) -> SimulatedVtpmAttester:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- verifier


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BoundActivation:
    """A pending credential-activation challenge of one connection (verifier side).

    This is the :class:`~ratls._exchange.ActivationState` that
    :meth:`BoundVerifier.activation_challenge` returns: the exchange sends
    :meth:`challenge_bytes` to the attester and gives the object back to
    :meth:`BoundVerifier.verify` with the answer.  The secret stays in here and never
    appears in the repr.

    Attributes:
        challenge: the MakeCredential output and the secret it seals.
    """

    challenge: ActivationChallenge

    def challenge_bytes(self) -> bytes:
        """The credential in the tpm2-tools file format (what ``respond`` takes).

        Returns:
            ``tpm2_makecredential``'s output file: magic, version, TPM2B_ID_OBJECT,
            TPM2B_ENCRYPTED_SECRET.
        """
        return self.challenge.credential.to_tpm2_tools_file()


@functools.lru_cache(maxsize=32)
def _bundle_of(evidence: bytes) -> VtpmEvidence:
    """The parsed bundle; remembered, so that a connection's activation check and its
    verification share one parse (failures are not kept).
    """
    return parse_vtpm_evidence(evidence)


def _profile_of(evidence: bytes) -> str | None:
    """Key 1 of an evidence map if it is text (limit: the larger of the two formats)."""
    document = _decode_map(evidence, max(MAX_SNP_EVIDENCE_SIZE, MAX_VTPM_EVIDENCE_SIZE))
    profile = document.get(_Key.PROFILE)
    return profile if type(profile) is str else None


@final
class BoundVerifier:
    """Verify and appraise bound-mode evidence (SNP, or SNP + vTPM) for one binder.

    For a bare SNP report: the AMD chain to a pinned root (or the simulator's, if the
    policy trusts it), the report signature, REPORT_DATA == binder (constant time), and
    the policy.  For SNP + vTPM: the whole chain of
    :func:`~ratls._vtpm_evidence.verify_vtpm_evidence`, with the quote's qualifying data
    == SHA-256(binder) and, for ``svsm``, the SVSM nonce == binder.

    Credential activation proves the quote's AK lives in the vTPM whose EK the report
    binds: :meth:`activation_challenge` makes the challenge, the attester's ``respond``
    answers it, and :meth:`verify` takes both.  Over an attested connection the
    exchange runs this round by itself (the verifier's CHALLENGE, the attester's
    RESPONSE), so ``svsm`` and ``svsm-paper`` peers come out ``activated``; without it
    the AK stays ``unproven``, which the default policy refuses.

    Args:
        policy: the appraisal policy; required.
        trust_simulator: accept the simulator's roots even if the policy does not say so
            (the CLI's ``--trust-simulator``).
        accept: which evidence kinds to accept: ``"snp"`` and/or ``"snp+vtpm"``.
        product: product line for version-2 reports, which do not name it.
        clock: returns the current time (UTC); the system clock by default.
        activation_ttl: seconds to remember a passed credential activation for its
            (EK, AK) pair; 0 challenges every time.  While remembered, evidence from the
            same EK and AK needs no CHALLENGE/RESPONSE round: the AK is a fixedTPM key,
            so a quote it signs can only come from the TPM that answered before, and the
            fresh SNP report still binds that EK to this VM and this connection.

    Attributes:
        blocking: False: verification only computes (signatures, the policy, and for
            activation an RSA or ECC encryption), so the stream calls it in the event loop
            (through :meth:`verify_steps`, with the SNP report's ECDSA check on a worker).

    Raises:
        PolicyError: no policy was given.
        ValueError: ``accept`` is empty or names an unknown kind.
    """

    blocking: Final = False

    def __init__(
        self,
        policy: Policy | None,
        *,
        trust_simulator: bool = False,
        accept: Iterable[str] = ("snp", "snp+vtpm"),
        product: ProductLine | None = None,
        clock: Callable[[], datetime] | None = None,
        activation_ttl: float = ACTIVATION_TTL,
    ) -> None:
        if not isinstance(policy, Policy):
            raise PolicyError(
                "an attested connection needs an appraisal policy to verify its peer "
                "(pass verify_peer=False to accept an unattested peer explicitly)",
                location="policy",
            )
        kinds = frozenset(accept)
        if not kinds or not kinds <= {"snp", "snp+vtpm"}:
            raise ValueError("accept must name 'snp' and/or 'snp+vtpm'")
        self._policy = policy
        self._trust_simulator = trust_simulator
        self._kinds = kinds
        self._product = product
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))
        self._activation_ttl = activation_ttl
        self._proofs: OrderedDict[tuple[bytes, bytes], tuple[ActivationProof, float]] = (
            OrderedDict()
        )
        self._proofs_lock = threading.Lock()
        _verifiers_alive.add(self)

    def __repr__(self) -> str:
        return (
            f"BoundVerifier(policy=sha256:{self._policy.digest()[:16]}..., "
            f"accept={sorted(self._kinds)}, trust_simulator={self._trust_simulator})"
        )

    @property
    def policy(self) -> Policy:
        """The appraisal policy."""
        return self._policy

    @property
    def media_types(self) -> frozenset[str]:
        """The exchange media types this verifier accepts."""
        types = {"snp": SNP_MEDIA_TYPE, "snp+vtpm": VTPM_MEDIA_TYPE}
        return frozenset(types[kind] for kind in self._kinds)

    def activation_challenge(self, evidence: bytes) -> BoundActivation | None:
        """Start credential activation for SNP + vTPM evidence that needs it.

        Send ``activation.challenge_bytes()`` to the attester (its ``respond`` method
        answers it) and keep the object for :meth:`verify`.  Every call seals a new
        random secret, so an answer fits only the challenge it was made for.

        Args:
            evidence: the peer's evidence bytes.

        Returns:
            The challenge for the ``svsm`` and ``svsm-paper`` profiles; None for a bare SNP
            report and for ``azure`` (whose report names the AK itself).

        Raises:
            EvidenceFormatError: the evidence is malformed.
            EvidenceVerificationError: the EK is not an EK per the TCG template.
        """
        if _profile_of(evidence) == SNP_PROFILE:
            return None
        bundle = _bundle_of(bytes(evidence))
        if bundle.profile is VtpmProfile.AZURE:
            return None
        if self._remembered_proof(bundle) is not None:
            _count_activation_lookup(hit=True)
            return None
        _count_activation_lookup(hit=False)
        return BoundActivation(challenge=begin_activation(bundle))

    def _remembered_proof(self, bundle: VtpmEvidence) -> ActivationProof | None:
        """A proof this verifier checked earlier for the bundle's EK and AK, if still fresh."""
        if self._activation_ttl <= 0:
            return None
        key = activation_names(bundle)
        now = time.monotonic()
        with self._proofs_lock:
            entry = self._proofs.get(key)
            if entry is None:
                return None
            proof, remembered_at = entry
            if now - remembered_at > self._activation_ttl:
                del self._proofs[key]
                return None
            self._proofs.move_to_end(key)
            return proof

    def _remember_proof(self, proof: ActivationProof) -> None:
        if self._activation_ttl <= 0:
            return
        with self._proofs_lock:
            self._proofs[proof.ek_name, proof.ak_name] = (proof, time.monotonic())
            self._proofs.move_to_end((proof.ek_name, proof.ak_name))
            while len(self._proofs) > ACTIVATION_MEMORY_SIZE:
                self._proofs.popitem(last=False)

    def verify(
        self,
        evidence: bytes,
        binder: bytes,
        *,
        activation: BoundActivation | ActivationChallenge | None = None,
        response: bytes | None = None,
    ) -> AttestationResult:
        """Verify ``evidence`` for this connection's ``binder`` and appraise it.

        Args:
            evidence: the peer's evidence bytes.
            binder: the binder the evidence must carry (64 bytes).
            activation: the challenge :meth:`activation_challenge` issued for this
                evidence on this connection, if any (or a bare
                :class:`~ratls._vtpm_evidence.ActivationChallenge` made out of band).
            response: the attester's answer to it.

        Returns:
            The appraised result; for SNP + vTPM evidence its ``ak_binding`` is
            ``activated`` when a correct response came back, else ``unproven``.

        Raises:
            EvidenceFormatError: the evidence is malformed.
            NonceMismatch: REPORT_DATA, the SVSM nonce or the quote's qualifying data
                is not this connection's (relay, replay, key substitution).
            BindingMismatch: the activation response is wrong, was given without a
                challenge (or the reverse), or the challenge was for other keys.
            RatlsError: any other failed check, naming the claim.
        """
        return run_inline(
            self.verify_steps(evidence, binder, activation=activation, response=response)
        )

    def verify_steps(
        self,
        evidence: bytes,
        binder: bytes,
        *,
        activation: BoundActivation | ActivationChallenge | None = None,
        response: bytes | None = None,
    ) -> Steps[AttestationResult]:
        """:meth:`verify` as :mod:`ratls._steps`: the SNP report signature is yielded.

        The same checks in the same order; the stream makes the ECDSA verification on a
        worker thread and everything else in the event loop.
        """
        binder = _check_binder(binder)
        at = self._clock()
        profile = _profile_of(evidence)
        proof: ActivationProof | None = None
        fresh_proof = False
        if profile == SNP_PROFILE:
            if activation is not None or response is not None:
                raise BindingMismatch(
                    "tpm.ak.activation",
                    expected="no activation (a bare SNP report has no vTPM)",
                    actual="an activation challenge or response",
                )
            self._require("snp")
            parsed = parse_snp_evidence(evidence)
            result = yield from verify_snp_attestation_steps(
                parsed.snp_report,
                parsed.endorsements(),
                policy=self._policy,
                at=at,
                expected_report_data=binder,
                product=self._product,
                trust_simulator=self._trust_simulator,
            )
        else:
            self._require("snp+vtpm")
            bundle = _bundle_of(bytes(evidence))
            if (activation is None) != (response is None):
                raise BindingMismatch(
                    "tpm.ak.activation",
                    expected="a challenge and its response, or neither",
                    actual="a response without a challenge"
                    if activation is None
                    else "a challenge without a response",
                )
            if activation is not None and response is not None:
                if isinstance(activation, BoundActivation):
                    activation = activation.challenge
                if not isinstance(activation, ActivationChallenge):
                    raise TypeError("activation must come from activation_challenge()")
                proof = finish_activation(activation, bytes(response))
                fresh_proof = True
            elif bundle.profile is not VtpmProfile.AZURE:
                proof = self._remembered_proof(bundle)
            verified = yield from verify_vtpm_evidence_steps(
                bundle,
                policy=self._policy,
                at=at,
                expected_binder=quote_qualifying_data(binder),
                expected_nonce=binder,
                activation=proof,
                trust_simulator=self._trust_simulator,
                product=self._product,
            )
            result = to_attestation_result(verified)
        if not result.appraised:  # pragma: no cover - a policy is always passed above
            raise PolicyViolation("policy", expected="appraised evidence", actual="not appraised")
        if fresh_proof and proof is not None:
            # Remembered only now that the whole chain verified and passed the policy.
            self._remember_proof(proof)
        return result

    def _require(self, kind: str) -> None:
        if kind not in self._kinds:
            raise PolicyViolation(
                "evidence.kind", expected=" | ".join(sorted(self._kinds)), actual=kind
            )
