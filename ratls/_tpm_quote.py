"""TPM 2.0 quote verification: signature, qualifying data and PCR digest, then appraisal.

A quote is a TPMS_ATTEST (type TPM_ST_ATTEST_QUOTE) signed by an attestation key (AK).
:func:`verify_quote` establishes that the quote is authentic and fresh and that the PCR
values supplied next to it are the ones it covers:

1. the AK is a restricted signing key the TPM generated and cannot export
   (restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin);
2. the TPMT_SIGNATURE uses exactly the AK's own scheme and hash (RSASSA, RSAPSS with a
   salt of the digest size, or ECDSA), so an attacker cannot steer verification to a weaker
   scheme or hash, and the hash is one the caller allows;
3. the signature verifies over the TPMS_ATTEST bytes under the AK's public key;
4. the TPMS_ATTEST is a quote, and its extraData equals the expected binder
   (constant-time comparison);
5. the PCR digest is recomputed from the supplied values in the order of the *signed*
   selection (bank by bank, ascending index), every selected PCR must be supplied, and no
   value outside the selection is accepted: an unsigned value must never look attested.

The result, :class:`VerifiedQuote`, can only be created here.  Whether the PCR values are
*acceptable* is a separate question, answered by :func:`appraise_pcrs` against a
:class:`PcrPolicy`; replay across quotes of the same TPM is bounded by a
:class:`QuoteSequenceChecker`.  Nothing here does I/O.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final, final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ._errors import (
    BindingMismatch,
    EvidenceFormatError,
    EvidenceVerificationError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyError,
    PolicyViolation,
    SignatureMismatch,
)
from ._nopublic import NoPublicConstructor
from ._steps import offload, run_inline
from ._tpm_structs import (
    AK_REQUIRED_ATTRIBUTES,
    ObjectAttributes,
    TpmAlgId,
    TpmlPcrSelection,
    TpmsAttest,
    TpmsClockInfo,
    TpmsQuoteInfo,
    TpmsRsaParms,
    TpmSt,
    TpmtPublic,
    TpmtSignature,
    digest_size,
    hash_algorithm,
    parse_tpms_attest,
    parse_tpmt_signature,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from ._steps import Steps

__all__ = [
    "DEFAULT_QUOTE_HASHES",
    "PcrPolicy",
    "QuoteSequenceChecker",
    "VerifiedQuote",
    "appraise_pcrs",
    "compute_pcr_digest",
    "verify_quote",
    "verify_quote_steps",
]

#: Hashes accepted for quote signatures unless the caller says otherwise.  SHA-1 is left
#: out on purpose: collisions are practical, and every TPM 2.0 supports SHA-256.
DEFAULT_QUOTE_HASHES: Final = frozenset({TpmAlgId.SHA256, TpmAlgId.SHA384, TpmAlgId.SHA512})

_BANK_NAMES: Final = {
    "sha1": TpmAlgId.SHA1,
    "sha256": TpmAlgId.SHA256,
    "sha384": TpmAlgId.SHA384,
    "sha512": TpmAlgId.SHA512,
}


def _bank(alg: int) -> str:
    return alg.name.lower() if isinstance(alg, TpmAlgId) else f"{alg:#06x}"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedQuote(metaclass=NoPublicConstructor):
    """A quote whose signature, qualifying data and PCR digest were verified.

    Only :func:`verify_quote` creates these.  Holding one means: the AK (a restricted,
    TPM-resident signing key) signed this TPMS_ATTEST with its own scheme, extraData equals
    the expected binder, and ``pcr_values`` are exactly the PCRs the quote covers.  It says
    nothing about whether those values are acceptable (see :func:`appraise_pcrs`), nor
    about whether the AK belongs to the TPM it claims to (credential activation).

    Attributes:
        attest: the parsed TPMS_ATTEST.
        signature: the parsed TPMT_SIGNATURE.
        ak_public: the AK public area the signature was checked with.
        ak_name: Name of the AK (nameAlg || H(TPMT_PUBLIC)).
        pcr_values: (bank, index, value) in the signed selection order.
    """

    attest: TpmsAttest
    signature: TpmtSignature
    ak_public: TpmtPublic
    ak_name: bytes
    pcr_values: tuple[tuple[TpmAlgId, int, bytes], ...]

    @property
    def clock_info(self) -> TpmsClockInfo:
        """The TPM clock when the quote was made."""
        return self.attest.clock_info

    @property
    def firmware_version(self) -> int:
        """The TPM's vendor-specific firmware version."""
        return self.attest.firmware_version

    @property
    def extra_data(self) -> bytes:
        """The qualifying data (equal to the expected binder)."""
        return self.attest.extra_data

    @property
    def pcr_select(self) -> TpmlPcrSelection:
        """The signed PCR selection."""
        return self._quote_info.pcr_select

    @property
    def pcr_digest(self) -> bytes:
        """The signed PCR digest."""
        return self._quote_info.pcr_digest

    @property
    def _quote_info(self) -> TpmsQuoteInfo:
        info = self.attest.attested
        if not isinstance(info, TpmsQuoteInfo):  # pragma: no cover - verify_quote ensures it
            raise TypeError("not a quote")
        return info

    def pcrs(self) -> dict[TpmAlgId, dict[int, bytes]]:
        """The quoted PCR values as a fresh ``{bank: {index: value}}`` mapping."""
        out: dict[TpmAlgId, dict[int, bytes]] = {}
        for bank, index, value in self.pcr_values:
            out.setdefault(bank, {})[index] = value
        return out

    def pcr(self, bank: TpmAlgId, index: int) -> bytes | None:
        """The quoted value of one PCR, or None when the quote does not cover it."""
        for b, i, value in self.pcr_values:
            if b is bank and i == index:
                return value
        return None


def _check_ak(ak: TpmtPublic, allowed_hashes: Collection[TpmAlgId]) -> tuple[TpmAlgId, TpmAlgId]:
    """Check the AK's attributes and scheme; return (scheme, hash)."""
    missing = AK_REQUIRED_ATTRIBUTES & ~ak.object_attributes
    if missing or ak.object_attributes & ObjectAttributes.DECRYPT:
        raise EvidenceVerificationError(
            "tpm.ak.object_attributes",
            expected="restricted|sign|fixedTPM|fixedParent|sensitiveDataOrigin, no decrypt",
            actual=f"{int(ak.object_attributes):#010x}",
            detail=f"missing {missing!r}" if missing else "decrypt is set",
        )
    scheme = ak.parameters.scheme
    if isinstance(ak.parameters, TpmsRsaParms):
        usable: tuple[TpmAlgId, ...] = (TpmAlgId.RSASSA, TpmAlgId.RSAPSS)
    else:
        usable = (TpmAlgId.ECDSA,)
    if scheme.scheme not in usable:
        raise EvidenceVerificationError(
            "tpm.ak.scheme",
            expected=" or ".join(a.name for a in usable),
            actual=scheme.scheme.name,
            detail="a restricted signing key must fix its signing scheme",
        )
    if scheme.hash_alg not in allowed_hashes:
        raise PolicyViolation(
            "tpm.ak.scheme.hash_alg",
            expected=sorted(a.name for a in allowed_hashes),
            actual=scheme.hash_alg.name,
        )
    return scheme.scheme, scheme.hash_alg


def _signature_steps(
    ak: TpmtPublic, sig: TpmtSignature, scheme: TpmAlgId, hash_alg: TpmAlgId, message: bytes
) -> Steps[None]:
    if sig.sig_alg is not scheme:
        raise SignatureMismatch(
            "tpm.quote.signature.sig_alg",
            expected=scheme.name,
            actual=sig.sig_alg.name,
            detail="only the AK's own signing scheme is accepted",
        )
    if sig.hash is not hash_alg:
        raise SignatureMismatch(
            "tpm.quote.signature.hash",
            expected=hash_alg.name,
            actual=sig.hash.name,
            detail="only the AK's own scheme hash is accepted",
        )
    key = ak.public_key()
    algorithm = hash_algorithm(hash_alg)
    check: Callable[[], None]
    if isinstance(key, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding
        if scheme is TpmAlgId.RSAPSS:
            pad = padding.PSS(
                mgf=padding.MGF1(hash_algorithm(hash_alg)),
                salt_length=algorithm.digest_size,
            )
        else:
            pad = padding.PKCS1v15()
        check = partial(key.verify, sig.sig, message, pad, algorithm)
    else:
        der = encode_dss_signature(
            int.from_bytes(sig.signature_r, "big"), int.from_bytes(sig.signature_s, "big")
        )
        check = partial(key.verify, der, message, ec.ECDSA(algorithm))
    try:
        yield from offload(check)  # the driver may make it on another core
    except InvalidSignature as exc:
        raise SignatureMismatch(
            "tpm.quote.signature",
            expected="a valid signature by the AK",
            actual="invalid signature",
        ) from exc


def compute_pcr_digest(
    selection: TpmlPcrSelection,
    pcr_values: Mapping[TpmAlgId, Mapping[int, bytes]],
    hash_alg: TpmAlgId,
) -> tuple[bytes, tuple[tuple[TpmAlgId, int, bytes], ...]]:
    """Recompute a quote's pcrDigest from PCR values, in the selection's order.

    Args:
        selection: the (signed) PCR selection.
        pcr_values: ``{bank: {index: value}}``; must hold every selected PCR and nothing else.
        hash_alg: the quote signing scheme's hash, which the TPM uses for pcrDigest.

    Returns:
        The digest and the (bank, index, value) triples in selection order.

    Raises:
        EvidenceFormatError: a value has the wrong length for its bank.
        EvidenceVerificationError: a selected PCR has no value.
        BindingMismatch: a value is supplied for a PCR the selection does not cover.
    """
    selected = selection.selected()
    covered = set(selected)
    for bank, values in pcr_values.items():
        for index in values:
            if (bank, index) not in covered:
                raise BindingMismatch(
                    f"tpm.pcr.{_bank(bank)}.{index}",
                    expected="only PCRs covered by the signed selection",
                    actual="a value for a PCR the quote does not cover",
                )
    ordered = []
    for bank, index in selected:
        value = pcr_values.get(bank, {}).get(index)
        if value is None:
            raise EvidenceVerificationError(
                f"tpm.pcr.{_bank(bank)}.{index}",
                expected="a value for every PCR the quote covers",
                actual="missing",
            )
        if len(value) != digest_size(bank):
            raise EvidenceFormatError(
                f"{_bank(bank)} PCR {index} is {len(value)} bytes, expected {digest_size(bank)}",
                structure="PCR values",
            )
        ordered.append((bank, index, bytes(value)))
    ctx = hashes.Hash(hash_algorithm(hash_alg))
    for _, _, value in ordered:
        ctx.update(value)
    return ctx.finalize(), tuple(ordered)


def verify_quote(
    *,
    attest: bytes,
    signature: bytes,
    ak_public: TpmtPublic,
    expected_extra_data: bytes,
    pcr_values: Mapping[TpmAlgId, Mapping[int, bytes]],
    allowed_hashes: Collection[TpmAlgId] = DEFAULT_QUOTE_HASHES,
    expected_qualified_signer: bytes | None = None,
) -> VerifiedQuote:
    """Verify a TPM2_Quote and the PCR values it covers.

    Args:
        attest: the marshalled TPMS_ATTEST (the signed bytes, without a TPM2B size).
        signature: the marshalled TPMT_SIGNATURE.
        ak_public: the AK's public area (its scheme decides how the signature is checked).
        expected_extra_data: the qualifying data the quote must carry, exactly.
        pcr_values: ``{bank: {index: value}}`` for exactly the PCRs the quote selects.
        allowed_hashes: signing hashes accepted (SHA-256/384/512 by default).
        expected_qualified_signer: when given, the AK's Qualified Name the quote must name.

    Returns:
        The verified quote.

    Raises:
        EvidenceFormatError: the attestation, signature or a PCR value is malformed.
        EvidenceVerificationError: the AK is not a restricted, TPM-bound signing key, its
            scheme is unusable, the quote is not a quote, or a selected PCR has no value.
        PolicyViolation: the AK's hash is not in ``allowed_hashes``.
        SignatureMismatch: wrong scheme or hash in the signature, or an invalid signature
            (``__cause__`` is cryptography's ``InvalidSignature``).
        NonceMismatch: extraData differs from ``expected_extra_data``.
        BindingMismatch: the PCR values do not produce the signed pcrDigest, a value is
            outside the signed selection, or the qualified signer differs.
    """
    return run_inline(
        verify_quote_steps(
            attest=attest,
            signature=signature,
            ak_public=ak_public,
            expected_extra_data=expected_extra_data,
            pcr_values=pcr_values,
            allowed_hashes=allowed_hashes,
            expected_qualified_signer=expected_qualified_signer,
        )
    )


def verify_quote_steps(
    *,
    attest: bytes,
    signature: bytes,
    ak_public: TpmtPublic,
    expected_extra_data: bytes,
    pcr_values: Mapping[TpmAlgId, Mapping[int, bytes]],
    allowed_hashes: Collection[TpmAlgId] = DEFAULT_QUOTE_HASHES,
    expected_qualified_signer: bytes | None = None,
) -> Steps[VerifiedQuote]:
    """:func:`verify_quote` as :mod:`ratls._steps`: the signature check is yielded."""
    scheme, hash_alg = _check_ak(ak_public, allowed_hashes)
    parsed = parse_tpms_attest(attest)
    if parsed.type is not TpmSt.ATTEST_QUOTE or not isinstance(parsed.attested, TpmsQuoteInfo):
        raise EvidenceVerificationError(
            "tpm.quote.type", expected=TpmSt.ATTEST_QUOTE.name, actual=parsed.type.name
        )
    sig = parse_tpmt_signature(signature)
    yield from _signature_steps(ak_public, sig, scheme, hash_alg, bytes(attest))
    if not hmac.compare_digest(parsed.extra_data, bytes(expected_extra_data)):
        raise NonceMismatch(
            "tpm.quote.extra_data", expected=bytes(expected_extra_data), actual=parsed.extra_data
        )
    if expected_qualified_signer is not None and not hmac.compare_digest(
        parsed.qualified_signer, bytes(expected_qualified_signer)
    ):
        raise BindingMismatch(
            "tpm.quote.qualified_signer",
            expected=bytes(expected_qualified_signer),
            actual=parsed.qualified_signer,
        )
    info = parsed.attested
    digest, ordered = compute_pcr_digest(info.pcr_select, pcr_values, hash_alg)
    if not hmac.compare_digest(digest, info.pcr_digest):
        raise BindingMismatch(
            "tpm.quote.pcr_digest",
            expected=info.pcr_digest,
            actual=digest,
            detail="the supplied PCR values are not the ones the quote signed",
        )
    return VerifiedQuote._create(
        attest=parsed,
        signature=sig,
        ak_public=ak_public,
        ak_name=ak_public.name(),
        pcr_values=ordered,
    )


@final
class QuoteSequenceChecker:
    """Check successive quotes of one AK for replay and clock anomalies.

    The TPM clock only moves forward while the TPM runs; resetCount counts TPM Resets and
    restartCount counts Restarts since the last reset.  Across quotes from one TPM:
    resetCount must not decrease; with the same resetCount, restartCount must not decrease;
    the clock must strictly increase; and ``safe`` must be set (otherwise the clock may
    have been reported ahead of its stored value and can go backwards).  State advances
    only when a quote passes, so a refused quote leaves the checker unchanged.
    """

    __slots__ = ("_ak_name", "_last")

    def __init__(self) -> None:
        self._ak_name: bytes | None = None
        self._last: TpmsClockInfo | None = None

    @property
    def last(self) -> TpmsClockInfo | None:
        """Clock information of the last accepted quote."""
        return self._last

    def check(self, quote: VerifiedQuote) -> None:
        """Accept the next quote or raise.

        Args:
            quote: the next verified quote of the same AK.

        Raises:
            BindingMismatch: the quote comes from another AK than earlier ones.
            EvidenceVerificationError: ``safe`` is not set, or the counters or clock went
                backwards (a replayed or reordered quote).
        """
        if self._ak_name is not None and not hmac.compare_digest(self._ak_name, quote.ak_name):
            raise BindingMismatch("tpm.quote.ak_name", expected=self._ak_name, actual=quote.ak_name)
        now = quote.clock_info
        if not now.safe:
            raise EvidenceVerificationError("tpm.clock_info.safe", expected=True, actual=False)
        last = self._last
        if last is not None:
            if now.reset_count < last.reset_count:
                raise EvidenceVerificationError(
                    "tpm.clock_info.reset_count",
                    expected=f">= {last.reset_count}",
                    actual=now.reset_count,
                )
            if now.reset_count == last.reset_count and now.restart_count < last.restart_count:
                raise EvidenceVerificationError(
                    "tpm.clock_info.restart_count",
                    expected=f">= {last.restart_count}",
                    actual=now.restart_count,
                )
            if now.clock <= last.clock:
                raise EvidenceVerificationError(
                    "tpm.clock_info.clock", expected=f"> {last.clock}", actual=now.clock
                )
        self._ak_name = quote.ak_name
        self._last = now


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PcrPolicy:
    """Reference values: the accepted values of each appraised PCR, per bank and index.

    A PCR named here must be covered by the quote and hold one of its accepted values; PCRs
    not named are not appraised.  Build one with :meth:`from_mapping`.

    Attributes:
        entries: (bank, index, accepted values), sorted by bank then index.
    """

    entries: tuple[tuple[TpmAlgId, int, frozenset[bytes]], ...] = ()

    @classmethod
    def from_mapping(
        cls, reference: Mapping[TpmAlgId | str, Mapping[int, Collection[bytes]]]
    ) -> PcrPolicy:
        """Build a policy from ``{bank: {index: [accepted values]}}``.

        Banks are TpmAlgId members or names ("sha256").

        Raises:
            PolicyError: unknown bank, index outside 0-63, empty value list, or a value
                whose length is not the bank's digest size.
        """
        entries = []
        for raw_bank, pcrs in reference.items():
            bank = _BANK_NAMES.get(raw_bank) if isinstance(raw_bank, str) else raw_bank
            if bank is None or bank not in _BANK_NAMES.values():
                raise PolicyError(f"unknown PCR bank {raw_bank!r}", location="vtpm.pcrs")
            size = digest_size(bank)
            for index, values in pcrs.items():
                where = f"vtpm.pcrs.{_bank(bank)}.{index}"
                if not 0 <= index < 64:
                    raise PolicyError("PCR index must be between 0 and 63", location=where)
                accepted = frozenset(bytes(v) for v in values)
                if not accepted:
                    raise PolicyError("no accepted value", location=where)
                if any(len(v) != size for v in accepted):
                    raise PolicyError(f"values must be {size} bytes", location=where)
                entries.append((bank, index, accepted))
        entries.sort(key=lambda e: (int(e[0]), e[1]))
        return cls(entries=tuple(entries))


def appraise_pcrs(quote: VerifiedQuote, policy: PcrPolicy) -> None:
    """Check the quoted PCR values against reference values.

    Args:
        quote: a verified quote.
        policy: the reference values.

    Raises:
        MeasurementMismatch: a PCR named by the policy is not quoted, or its value is not
            among the accepted ones; ``claim`` is ``tpm.pcr.<bank>.<index>``, ``expected``
            the accepted values (hex), ``actual`` the quoted value.
    """
    for bank, index, accepted in policy.entries:
        claim = f"tpm.pcr.{_bank(bank)}.{index}"
        expected = sorted(v.hex() for v in accepted)
        actual = quote.pcr(bank, index)
        if actual is None:
            raise MeasurementMismatch(claim, expected=expected, actual="not covered by the quote")
        matches = [hmac.compare_digest(actual, v) for v in accepted]
        if not any(matches):
            raise MeasurementMismatch(claim, expected=expected, actual=actual)
