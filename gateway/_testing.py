"""Test doubles for the gateway's attestation seam (never for production use).

The real evidence path (SNP report + vTPM quote, verified against pinned roots and a
policy) is tested where it is built.  Gateway tests only need *some* attester and
verifier that honour the seam's contract: the evidence must carry the binder, the
verifier must check it with a constant-time compare, and the verifier must be able to
refuse.  :class:`HmacTestAttester` and :class:`HmacTestVerifier` do exactly that with a
shared test key: evidence is ``HMAC-SHA256(key, binder)`` prefixed with a label, and the
verifier raises the same error types a real verifier does.  A shared key proves nothing
about a machine, which is why these are not registered as a provider by default.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from typing import Final, final

from ratls._errors import AttesterError, NonceMismatch, PolicyViolation, SignatureMismatch
from ratls._exchange import AttestationConfig

__all__ = [
    "TEST_MEDIA_TYPE",
    "HmacTestAttester",
    "HmacTestResult",
    "HmacTestVerifier",
    "hmac_test_attestation",
]

#: Media type of the test evidence.
TEST_MEDIA_TYPE: Final = "application/vnd.ratls.gateway-test-hmac"

_PREFIX: Final = b"ratls-gateway-test-evidence:"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HmacTestResult:
    """What :class:`HmacTestVerifier` returns: the identity it saw, and the binder.

    Attributes:
        identity: the attester's identity string (stands in for a measurement).
        binder: the binder the evidence carried.
    """

    identity: str
    binder: bytes = field(repr=False)

    def summary(self) -> str:
        """One line for logs."""
        return f"test-hmac identity={self.identity}"

    def claims(self) -> dict[str, object]:
        """Claims in the shape of a real result (profile, measurement)."""
        return {
            "profile": "test-hmac",
            "measurement": hashlib.sha384(self.identity.encode()).hexdigest(),
            "identity": self.identity,
        }


@final
class HmacTestAttester:
    """Evidence = label || identity || HMAC-SHA256(key, identity || binder).

    Set :attr:`broken` to make it fail like an attester whose device vanished, and
    :attr:`identity` to impersonate a different (e.g. tampered) image.

    Args:
        key: the shared test key.
        identity: a short ASCII identity (stands in for a launch measurement).
    """

    def __init__(self, key: bytes, identity: str = "good") -> None:
        self._key = key
        self.identity = identity
        self.broken = False
        self.calls = 0
        self._lock = threading.Lock()

    def evidence(self, binder: bytes) -> bytes:
        """Return evidence carrying ``binder``.

        Raises:
            AttesterError: :attr:`broken` is set.
        """
        with self._lock:
            self.calls += 1
        if self.broken:
            raise AttesterError("test attester switched off")
        ident = self.identity.encode("ascii")
        tag = hmac.new(self._key, ident + b"\0" + binder, hashlib.sha256).digest()
        return _PREFIX + bytes([len(ident)]) + ident + binder + tag

    def __repr__(self) -> str:
        return f"<HmacTestAttester identity={self.identity!r} broken={self.broken}>"


@final
class HmacTestVerifier:
    """Checks :class:`HmacTestAttester` evidence: key, binder and allowed identities.

    Set :attr:`refuse` to make it refuse everything (a policy that no longer admits the
    peer), or change :attr:`allowed` to model a policy reload.

    Args:
        key: the shared test key.
        allowed: identities accepted (stand-ins for reference measurements).
    """

    def __init__(self, key: bytes, allowed: frozenset[str] = frozenset({"good"})) -> None:
        self._key = key
        self.allowed = allowed
        self.refuse = False
        self.calls = 0
        self._lock = threading.Lock()

    def verify(self, evidence: bytes, binder: bytes) -> HmacTestResult:
        """Return the result, or raise naming the failed check.

        Raises:
            PolicyViolation: :attr:`refuse` is set, or the identity is not allowed.
            SignatureMismatch: the tag does not verify under the key.
            NonceMismatch: the evidence carries another binder.
        """
        with self._lock:
            self.calls += 1
        if self.refuse:
            raise PolicyViolation("test.policy", expected="admitted", actual="refused")
        if not evidence.startswith(_PREFIX) or len(evidence) < len(_PREFIX) + 1:
            raise SignatureMismatch("test.evidence", expected="test evidence", actual="other")
        body = evidence[len(_PREFIX) :]
        size = body[0]
        ident, rest = body[1 : 1 + size], body[1 + size :]
        if len(rest) != len(binder) + 32:
            raise SignatureMismatch("test.evidence", expected="well-formed", actual="bad length")
        carried, tag = rest[: len(binder)], rest[len(binder) :]
        expected_tag = hmac.new(self._key, ident + b"\0" + carried, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, expected_tag):
            raise SignatureMismatch("test.tag", expected="valid HMAC", actual="invalid")
        if not hmac.compare_digest(carried, binder):
            raise NonceMismatch("test.binder", expected=binder, actual=carried)
        identity = ident.decode("ascii", "replace")
        if identity not in self.allowed:
            raise PolicyViolation(
                "test.identity", expected=" | ".join(sorted(self.allowed)), actual=identity
            )
        return HmacTestResult(identity=identity, binder=binder)

    def __repr__(self) -> str:
        return f"<HmacTestVerifier allowed={sorted(self.allowed)} refuse={self.refuse}>"


def hmac_test_attestation(
    key: bytes, *, identity: str = "good", allowed: frozenset[str] = frozenset({"good"})
) -> tuple[AttestationConfig, HmacTestAttester, HmacTestVerifier]:
    """An AttestationConfig over a fresh test attester/verifier pair (no threads).

    Returns:
        ``(config, attester, verifier)``; flip the attester's and verifier's switches
        to make them fail.
    """
    attester = HmacTestAttester(key, identity)
    verifier = HmacTestVerifier(key, allowed)
    config = AttestationConfig(
        attester=attester,
        verifier=verifier,
        media_type=TEST_MEDIA_TYPE,
        accepted_media_types=frozenset({TEST_MEDIA_TYPE}),
        run_in_thread=False,
    )
    return config, attester, verifier
