"""The one exception hierarchy of ratls.

Everything ratls raises on purpose derives from :class:`RatlsError`.  Errors are
split by cause, so callers can tell "these bytes are not evidence"
(:class:`EvidenceFormatError`) from "this is evidence, and it is wrong"
(:class:`EvidenceVerificationError`) from "we could not produce evidence"
(:class:`AttesterError`).  Verification errors carry data attributes (``claim``,
``expected``, ``actual``) so that logs, CLIs and gateways can report exactly which
check failed without parsing message strings.
"""

from __future__ import annotations

__all__ = [
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
    "PolicyError",
    "PolicyViolation",
    "ProtocolError",
    "RatlsError",
    "RemoteProtocolError",
    "SignatureMismatch",
    "TcbTooLow",
]


def _show(value: object) -> str:
    """Render a claim value for an error message: bytes as hex, the rest as str()."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex() or "(empty)"
    return str(value)


class RatlsError(Exception):
    """Base class of every error ratls raises on purpose."""


class EvidenceError(RatlsError):
    """Evidence could not be accepted (either malformed or failing verification)."""


class EvidenceFormatError(EvidenceError):
    """Bytes that were supposed to be evidence do not follow the format.

    Attributes:
        structure: name of the structure being parsed, e.g. ``"ATTESTATION_REPORT"``.
        offset: byte offset of the problem within that structure, when known.
    """

    def __init__(self, message: str, *, structure: str = "", offset: int | None = None) -> None:
        self.structure = structure
        self.offset = offset
        where = structure
        if offset is not None:
            where = f"{structure} at offset {offset:#x}" if structure else f"offset {offset:#x}"
        super().__init__(f"{where}: {message}" if where else message)


class EvidenceVerificationError(EvidenceError):
    """Well-formed evidence failed a check.

    Every instance names the claim that failed, the value the verifier or policy
    expected, and the value the evidence actually carries.

    Attributes:
        claim: dotted name of the claim, e.g. ``"snp.measurement"``.
        expected: what was required (a value, a set, or a description like ">= 3").
        actual: what the evidence carried.
    """

    def __init__(
        self,
        claim: str,
        *,
        expected: object,
        actual: object,
        detail: str | None = None,
    ) -> None:
        self.claim = claim
        self.expected = expected
        self.actual = actual
        self.detail = detail
        message = f"{claim}: expected {_show(expected)}, got {_show(actual)}"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)


class SignatureMismatch(EvidenceVerificationError):
    """A signature over evidence does not verify under the key it must come from."""


class CertificateChainError(EvidenceVerificationError):
    """An endorsement certificate chain is broken, untrusted, expired or malformed."""


class BindingMismatch(EvidenceVerificationError):
    """Evidence is not bound to the key, channel or object it must be bound to."""


class NonceMismatch(BindingMismatch):
    """A freshness value (nonce, qualifying data, REPORT_DATA) differs from the expected one."""


class MeasurementMismatch(EvidenceVerificationError):
    """A launch measurement or PCR value is not among the reference values."""


class TcbTooLow(EvidenceVerificationError):
    """A TCB component is below the minimum the policy accepts."""


class PolicyViolation(EvidenceVerificationError):
    """A claim is authentic but the appraisal policy does not accept its value."""


class PolicyError(RatlsError):
    """An appraisal policy (file or object) is itself invalid.

    Attributes:
        location: where in the policy the problem is, e.g. ``"snp.minimum_tcb.tee"``.
    """

    def __init__(self, message: str, *, location: str = "") -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class AttesterError(RatlsError):
    """Evidence could not be produced on this machine."""


class AttesterUnavailable(AttesterError):
    """The requested attestation interface does not exist here (no device, no configfs)."""


class ProtocolError(RatlsError):
    """A protocol (attestation exchange, SPDM, gateway link) was violated."""


class LocalProtocolError(ProtocolError):
    """This side was asked to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
