"""Tests of TPM quote verification and PCR appraisal (ratls._tpm_quote).

Quotes are built here with our own keys, exactly as a TPM marshals them, so every field
can be varied; real swtpm quotes are exercised by the TPM device tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from typing import TYPE_CHECKING

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import (
    BindingMismatch,
    EvidenceFormatError,
    EvidenceVerificationError,
    MeasurementMismatch,
    NonceMismatch,
    PolicyError,
    PolicyViolation,
    RatlsError,
    SignatureMismatch,
)
from ratls._tpm_quote import (
    DEFAULT_QUOTE_HASHES,
    PcrPolicy,
    QuoteSequenceChecker,
    VerifiedQuote,
    appraise_pcrs,
    compute_pcr_digest,
    verify_quote,
)
from ratls._tpm_structs import (
    AK_REQUIRED_ATTRIBUTES,
    TPM_RH_ENDORSEMENT,
    ObjectAttributes,
    TpmAlgId,
    TpmlPcrSelection,
    TpmsAttest,
    TpmsCertifyInfo,
    TpmsClockInfo,
    TpmsQuoteInfo,
    TpmSt,
    TpmtPublic,
    TpmtScheme,
    TpmtSignature,
    hash_algorithm,
    hierarchy_name,
    qualified_name,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

AK_ATTRS = AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH
NONCE = hashlib.sha256(b"binder").digest()

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())


def make_ak(
    key: PrivateKey,
    scheme: TpmAlgId,
    hash_alg: TpmAlgId = TpmAlgId.SHA256,
    attributes: ObjectAttributes = AK_ATTRS,
) -> TpmtPublic:
    return TpmtPublic.from_public_key(
        key.public_key(),
        object_attributes=attributes,
        scheme=TpmtScheme(scheme=scheme, hash_alg=hash_alg),
    )


def pcr_bank(alg: TpmAlgId, indices: list[int], salt: bytes = b"") -> dict[int, bytes]:
    size = hash_algorithm(alg).digest_size
    return {i: hashlib.sha512(salt + bytes([alg, i])).digest()[:size] for i in indices}


PCRS: dict[TpmAlgId, dict[int, bytes]] = {
    TpmAlgId.SHA256: pcr_bank(TpmAlgId.SHA256, [0, 1, 7, 23]),
    TpmAlgId.SHA1: pcr_bank(TpmAlgId.SHA1, [4, 10]),
}


def sign(key: PrivateKey, scheme: TpmAlgId, hash_alg: TpmAlgId, message: bytes) -> bytes:
    h = hash_algorithm(hash_alg)
    if isinstance(key, rsa.RSAPrivateKey):
        if scheme is TpmAlgId.RSAPSS:
            pad: padding.AsymmetricPadding = padding.PSS(
                mgf=padding.MGF1(hash_algorithm(hash_alg)), salt_length=h.digest_size
            )
        else:
            pad = padding.PKCS1v15()
        return TpmtSignature(
            sig_alg=scheme, hash=hash_alg, sig=key.sign(message, pad, h)
        ).to_bytes()
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(h)))
    size = (key.curve.key_size + 7) // 8
    return TpmtSignature(
        sig_alg=scheme,
        hash=hash_alg,
        signature_r=r.to_bytes(size, "big"),
        signature_s=s.to_bytes(size, "big"),
    ).to_bytes()


def digest_of(
    selection: TpmlPcrSelection, pcrs: Mapping[TpmAlgId, Mapping[int, bytes]], alg: TpmAlgId
) -> bytes:
    h = hashes.Hash(hash_algorithm(alg))
    for bank, index in selection.selected():
        h.update(pcrs[bank][index])
    return h.finalize()


@dataclasses.dataclass
class Quote:
    attest: bytes
    signature: bytes
    ak: TpmtPublic


def make_quote(
    key: PrivateKey = RSA_KEY,
    scheme: TpmAlgId = TpmAlgId.RSASSA,
    hash_alg: TpmAlgId = TpmAlgId.SHA256,
    *,
    pcrs: Mapping[TpmAlgId, Mapping[int, bytes]] = PCRS,
    selection: TpmlPcrSelection | None = None,
    extra_data: bytes = NONCE,
    clock: TpmsClockInfo | None = None,
    ak: TpmtPublic | None = None,
    sig_scheme: TpmAlgId | None = None,
    sig_hash: TpmAlgId | None = None,
    pcr_digest: bytes | None = None,
) -> Quote:
    ak = ak or make_ak(key, scheme, hash_alg)
    selection = selection or TpmlPcrSelection.from_mapping(
        {bank: sorted(values) for bank, values in pcrs.items()}
    )
    attest = TpmsAttest(
        type=TpmSt.ATTEST_QUOTE,
        qualified_signer=qualified_name(hierarchy_name(TPM_RH_ENDORSEMENT), ak.name()),
        extra_data=extra_data,
        clock_info=clock or TpmsClockInfo(clock=1000, reset_count=1, restart_count=0, safe=True),
        firmware_version=0x2024_0001,
        attested=TpmsQuoteInfo(
            pcr_select=selection,
            pcr_digest=pcr_digest or digest_of(selection, pcrs, hash_alg),
        ),
    ).to_bytes()
    sig = sign(key, sig_scheme or scheme, sig_hash or hash_alg, attest)
    return Quote(attest=attest, signature=sig, ak=ak)


def verify(q: Quote, **kwargs: object) -> VerifiedQuote:
    args: dict[str, object] = {
        "attest": q.attest,
        "signature": q.signature,
        "ak_public": q.ak,
        "expected_extra_data": NONCE,
        "pcr_values": PCRS,
    }
    args.update(kwargs)
    return verify_quote(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Accepted quotes
# ---------------------------------------------------------------------------------------

SCHEMES = [
    pytest.param(RSA_KEY, TpmAlgId.RSASSA, TpmAlgId.SHA256, id="rsassa-sha256"),
    pytest.param(RSA_KEY, TpmAlgId.RSASSA, TpmAlgId.SHA384, id="rsassa-sha384"),
    pytest.param(RSA_KEY, TpmAlgId.RSAPSS, TpmAlgId.SHA256, id="rsapss-sha256"),
    pytest.param(RSA_KEY, TpmAlgId.RSAPSS, TpmAlgId.SHA512, id="rsapss-sha512"),
    pytest.param(P256_KEY, TpmAlgId.ECDSA, TpmAlgId.SHA256, id="ecdsa-p256"),
    pytest.param(P384_KEY, TpmAlgId.ECDSA, TpmAlgId.SHA384, id="ecdsa-p384"),
]


@pytest.mark.parametrize(("key", "scheme", "hash_alg"), SCHEMES)
def test_valid_quote(key: PrivateKey, scheme: TpmAlgId, hash_alg: TpmAlgId) -> None:
    q = make_quote(key, scheme, hash_alg)
    vq = verify(q, expected_qualified_signer=qualified_name(b"\x40\x00\x00\x0b", q.ak.name()))
    assert vq.ak_name == q.ak.name()
    assert vq.ak_public == q.ak
    assert vq.extra_data == NONCE
    assert vq.clock_info.clock == 1000
    assert vq.firmware_version == 0x2024_0001
    assert vq.pcrs() == PCRS
    assert vq.pcr(TpmAlgId.SHA1, 10) == PCRS[TpmAlgId.SHA1][10]
    assert vq.pcr(TpmAlgId.SHA1, 11) is None
    assert vq.pcr(TpmAlgId.SHA384, 0) is None
    assert vq.signature.sig_alg is scheme
    assert vq.pcr_select.selected()[0] == (TpmAlgId.SHA256, 0)
    assert vq.pcr_digest == digest_of(vq.pcr_select, PCRS, hash_alg)
    # The selection order is the signed one: sha256 bank first, then sha1, ascending.
    assert [(b, i) for b, i, _ in vq.pcr_values] == [
        (TpmAlgId.SHA256, 0),
        (TpmAlgId.SHA256, 1),
        (TpmAlgId.SHA256, 7),
        (TpmAlgId.SHA256, 23),
        (TpmAlgId.SHA1, 4),
        (TpmAlgId.SHA1, 10),
    ]


def test_signed_selection_order_decides_not_the_mapping_order() -> None:
    selection = TpmlPcrSelection.from_mapping({TpmAlgId.SHA1: [10, 4], TpmAlgId.SHA256: [7, 0]})
    pcrs = {bank: dict(values) for bank, values in PCRS.items()}
    q = make_quote(pcrs=pcrs, selection=selection)
    supplied = {
        TpmAlgId.SHA256: {i: PCRS[TpmAlgId.SHA256][i] for i in (7, 0)},
        TpmAlgId.SHA1: dict(PCRS[TpmAlgId.SHA1]),
    }
    vq = verify(q, pcr_values=supplied)
    assert [(b, i) for b, i, _ in vq.pcr_values] == [
        (TpmAlgId.SHA1, 4),
        (TpmAlgId.SHA1, 10),
        (TpmAlgId.SHA256, 0),
        (TpmAlgId.SHA256, 7),
    ]


def test_digest_in_another_order_is_refused() -> None:
    selection = TpmlPcrSelection.from_mapping({TpmAlgId.SHA256: [0, 1]})
    values = PCRS[TpmAlgId.SHA256]
    wrong_order = hashlib.sha256(values[1] + values[0]).digest()
    pcrs = {TpmAlgId.SHA256: {0: values[0], 1: values[1]}}
    q = make_quote(pcrs=pcrs, selection=selection, pcr_digest=wrong_order)
    with pytest.raises(BindingMismatch) as info:
        verify(q, pcr_values=pcrs)
    assert info.value.claim == "tpm.quote.pcr_digest"


def test_empty_selection() -> None:
    q = make_quote(pcrs={}, selection=TpmlPcrSelection())
    vq = verify(q, pcr_values={})
    assert vq.pcr_values == ()
    assert vq.pcr_digest == hashlib.sha256(b"").digest()


def test_sha1_allowed_only_when_asked() -> None:
    q = make_quote(RSA_KEY, TpmAlgId.RSASSA, TpmAlgId.SHA1)
    with pytest.raises(PolicyViolation) as info:
        verify(q)
    assert info.value.claim == "tpm.ak.scheme.hash_alg"
    assert TpmAlgId.SHA1 not in DEFAULT_QUOTE_HASHES
    vq = verify(q, allowed_hashes={TpmAlgId.SHA1})
    assert vq.signature.hash is TpmAlgId.SHA1


def test_compute_pcr_digest() -> None:
    selection = TpmlPcrSelection.from_mapping({TpmAlgId.SHA256: [1, 0]})
    digest, ordered = compute_pcr_digest(selection, PCRS_256_01, TpmAlgId.SHA384)
    values = PCRS[TpmAlgId.SHA256]
    assert digest == hashlib.sha384(values[0] + values[1]).digest()
    assert ordered == ((TpmAlgId.SHA256, 0, values[0]), (TpmAlgId.SHA256, 1, values[1]))


PCRS_256_01 = {TpmAlgId.SHA256: {i: PCRS[TpmAlgId.SHA256][i] for i in (0, 1)}}


# ---------------------------------------------------------------------------------------
# Every way a quote can be wrong
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "scheme", "hash_alg"), SCHEMES)
def test_wrong_signature(key: PrivateKey, scheme: TpmAlgId, hash_alg: TpmAlgId) -> None:
    q = make_quote(key, scheme, hash_alg)
    sig = bytearray(q.signature)
    sig[-1] ^= 1
    with pytest.raises(SignatureMismatch) as info:
        verify(dataclasses.replace(q, signature=bytes(sig)))
    assert info.value.claim == "tpm.quote.signature"
    assert isinstance(info.value.__cause__, InvalidSignature)


@pytest.mark.parametrize(("key", "scheme", "hash_alg"), SCHEMES)
def test_signature_by_another_key(key: PrivateKey, scheme: TpmAlgId, hash_alg: TpmAlgId) -> None:
    q = make_quote(key, scheme, hash_alg)
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if isinstance(key, rsa.RSAPrivateKey)
        else ec.generate_private_key(key.curve)
    )
    with pytest.raises(SignatureMismatch):
        verify(dataclasses.replace(q, ak=make_ak(other, scheme, hash_alg)))


@pytest.mark.parametrize(
    ("key", "scheme", "sig"),
    [
        (RSA_KEY, TpmAlgId.RSASSA, {"sig": b"\x01" * 257}),
        (RSA_KEY, TpmAlgId.RSASSA, {"sig": b"\xff" * 256}),
        (RSA_KEY, TpmAlgId.RSAPSS, {"sig": b"\x01"}),
        (P256_KEY, TpmAlgId.ECDSA, {"signature_r": b"\xff" * 66, "signature_s": b"\x01"}),
        (P256_KEY, TpmAlgId.ECDSA, {"signature_r": b"\x00", "signature_s": b"\x00"}),
        (P256_KEY, TpmAlgId.ECDSA, {"signature_r": b"\xff" * 32, "signature_s": b"\xff" * 32}),
    ],
)
def test_out_of_range_signature_values(
    key: PrivateKey, scheme: TpmAlgId, sig: dict[str, bytes]
) -> None:
    q = make_quote(key, scheme)
    raw = TpmtSignature(sig_alg=scheme, hash=TpmAlgId.SHA256, **sig).to_bytes()
    with pytest.raises(SignatureMismatch) as info:
        verify(dataclasses.replace(q, signature=raw))
    assert isinstance(info.value.__cause__, InvalidSignature)


def test_unknown_bank_value_refused() -> None:
    pcrs: dict[int, dict[int, bytes]] = {k: dict(v) for k, v in PCRS.items()}
    pcrs[0x7777] = {0: bytes(32)}
    with pytest.raises(BindingMismatch) as info:
        verify(make_quote(), pcr_values=pcrs)
    assert info.value.claim == "tpm.pcr.0x7777.0"


def test_modified_attest_breaks_signature() -> None:
    q = make_quote()
    attest = bytearray(q.attest)
    attest[-5] ^= 0x80  # inside pcrDigest: still parses, no longer signed
    with pytest.raises(SignatureMismatch):
        verify(dataclasses.replace(q, attest=bytes(attest)))


@pytest.mark.parametrize(
    ("key", "ak_scheme", "sig_scheme"),
    [
        (RSA_KEY, TpmAlgId.RSASSA, TpmAlgId.RSAPSS),
        (RSA_KEY, TpmAlgId.RSAPSS, TpmAlgId.RSASSA),
    ],
)
def test_wrong_scheme(key: PrivateKey, ak_scheme: TpmAlgId, sig_scheme: TpmAlgId) -> None:
    q = make_quote(key, ak_scheme, sig_scheme=sig_scheme)
    with pytest.raises(SignatureMismatch) as info:
        verify(q)
    assert info.value.claim == "tpm.quote.signature.sig_alg"
    assert info.value.expected == ak_scheme.name


def test_ecdsa_signature_for_rsa_ak() -> None:
    q = make_quote(P256_KEY, TpmAlgId.ECDSA)
    with pytest.raises(SignatureMismatch) as info:
        verify(dataclasses.replace(q, ak=make_ak(RSA_KEY, TpmAlgId.RSASSA)))
    assert info.value.claim == "tpm.quote.signature.sig_alg"


@pytest.mark.parametrize(
    ("key", "scheme"),
    [(RSA_KEY, TpmAlgId.RSASSA), (RSA_KEY, TpmAlgId.RSAPSS), (P256_KEY, TpmAlgId.ECDSA)],
)
def test_hash_downgrade(key: PrivateKey, scheme: TpmAlgId) -> None:
    ak = make_ak(key, scheme, TpmAlgId.SHA384)
    q = make_quote(key, scheme, TpmAlgId.SHA384, ak=ak, sig_hash=TpmAlgId.SHA1)
    with pytest.raises(SignatureMismatch) as info:
        verify(q, allowed_hashes={TpmAlgId.SHA1, TpmAlgId.SHA384})
    assert info.value.claim == "tpm.quote.signature.hash"
    assert info.value.expected == "SHA384"
    assert info.value.actual == "SHA1"


def test_pss_salt_must_be_digest_size() -> None:
    ak = make_ak(RSA_KEY, TpmAlgId.RSAPSS)
    q = make_quote(ak=ak, scheme=TpmAlgId.RSAPSS)
    max_salt = RSA_KEY.sign(
        q.attest,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    sig = TpmtSignature(sig_alg=TpmAlgId.RSAPSS, hash=TpmAlgId.SHA256, sig=max_salt).to_bytes()
    with pytest.raises(SignatureMismatch):
        verify(dataclasses.replace(q, signature=sig))


def test_wrong_extra_data() -> None:
    q = make_quote(extra_data=hashlib.sha256(b"other").digest())
    with pytest.raises(NonceMismatch) as info:
        verify(q)
    assert info.value.claim == "tpm.quote.extra_data"
    assert info.value.expected == NONCE


@pytest.mark.parametrize("expected", [b"", NONCE[:-1], NONCE + b"\x00"])
def test_extra_data_exact_length(expected: bytes) -> None:
    with pytest.raises(NonceMismatch):
        verify(make_quote(), expected_extra_data=expected)


def test_wrong_pcr_value() -> None:
    q = make_quote()
    pcrs = {bank: dict(values) for bank, values in PCRS.items()}
    pcrs[TpmAlgId.SHA256][7] = bytes(32)
    with pytest.raises(BindingMismatch) as info:
        verify(q, pcr_values=pcrs)
    assert info.value.claim == "tpm.quote.pcr_digest"


def test_missing_pcr() -> None:
    q = make_quote()
    pcrs = {bank: dict(values) for bank, values in PCRS.items()}
    del pcrs[TpmAlgId.SHA1][10]
    with pytest.raises(EvidenceVerificationError) as info:
        verify(q, pcr_values=pcrs)
    assert info.value.claim == "tpm.pcr.sha1.10"
    assert info.value.actual == "missing"


def test_missing_bank() -> None:
    with pytest.raises(EvidenceVerificationError, match=r"tpm\.pcr\.sha1\.4"):
        verify(make_quote(), pcr_values={TpmAlgId.SHA256: PCRS[TpmAlgId.SHA256]})


@pytest.mark.parametrize(
    ("bank", "index"),
    [(TpmAlgId.SHA256, 8), (TpmAlgId.SHA1, 0), (TpmAlgId.SHA384, 0)],
)
def test_pcr_outside_selection(bank: TpmAlgId, index: int) -> None:
    q = make_quote()
    pcrs = {b: dict(values) for b, values in PCRS.items()}
    pcrs.setdefault(bank, {})[index] = bytes(hash_algorithm(bank).digest_size)
    with pytest.raises(BindingMismatch) as info:
        verify(q, pcr_values=pcrs)
    assert info.value.claim == f"tpm.pcr.{bank.name.lower()}.{index}"


def test_selection_mismatch() -> None:
    # The quote covers sha256 PCRs 0 and 1; values for 0 and 2 are offered instead.
    selection = TpmlPcrSelection.from_mapping({TpmAlgId.SHA256: [0, 1]})
    q = make_quote(pcrs=PCRS_256_01, selection=selection)
    values = PCRS[TpmAlgId.SHA256]
    with pytest.raises(EvidenceVerificationError):
        verify(q, pcr_values={TpmAlgId.SHA256: {0: values[0], 2: values[0]}})


def test_pcr_value_wrong_length() -> None:
    pcrs = {bank: dict(values) for bank, values in PCRS.items()}
    pcrs[TpmAlgId.SHA1][4] = bytes(32)
    with pytest.raises(EvidenceFormatError, match="sha1 PCR 4"):
        verify(make_quote(), pcr_values=pcrs)


@pytest.mark.parametrize(
    "missing",
    [
        ObjectAttributes.RESTRICTED,
        ObjectAttributes.SIGN,
        ObjectAttributes.FIXED_TPM,
        ObjectAttributes.FIXED_PARENT,
        ObjectAttributes.SENSITIVE_DATA_ORIGIN,
    ],
)
def test_ak_attribute_missing(missing: ObjectAttributes) -> None:
    ak = make_ak(RSA_KEY, TpmAlgId.RSASSA, attributes=AK_ATTRS & ~missing)
    q = make_quote(ak=ak)
    with pytest.raises(EvidenceVerificationError) as info:
        verify(q)
    assert info.value.claim == "tpm.ak.object_attributes"
    assert not isinstance(info.value, SignatureMismatch)


def test_ak_with_decrypt() -> None:
    ak = make_ak(RSA_KEY, TpmAlgId.RSASSA, attributes=AK_ATTRS | ObjectAttributes.DECRYPT)
    with pytest.raises(EvidenceVerificationError, match="decrypt"):
        verify(make_quote(ak=ak))


@pytest.mark.parametrize(
    ("key", "scheme"),
    [(RSA_KEY, TpmAlgId.NULL), (RSA_KEY, TpmAlgId.OAEP), (P256_KEY, TpmAlgId.ECSCHNORR)],
)
def test_ak_scheme_unusable(key: PrivateKey, scheme: TpmAlgId) -> None:
    sig_scheme = TpmAlgId.RSASSA if isinstance(key, rsa.RSAPrivateKey) else TpmAlgId.ECDSA
    q = make_quote(key, sig_scheme, ak=make_ak(key, scheme))
    with pytest.raises(EvidenceVerificationError) as info:
        verify(q)
    assert info.value.claim == "tpm.ak.scheme"


def test_wrong_magic() -> None:
    q = make_quote()
    with pytest.raises(EvidenceFormatError, match="magic"):
        verify(dataclasses.replace(q, attest=b"\xff\x54\x43\x48" + q.attest[4:]))


def test_certify_instead_of_quote() -> None:
    ak = make_ak(RSA_KEY, TpmAlgId.RSASSA)
    attest = TpmsAttest(
        type=TpmSt.ATTEST_CERTIFY,
        qualified_signer=ak.name(),
        extra_data=NONCE,
        clock_info=TpmsClockInfo(clock=1, reset_count=0, restart_count=0, safe=True),
        firmware_version=0,
        attested=TpmsCertifyInfo(name=ak.name(), qualified_name=ak.name()),
    ).to_bytes()
    q = Quote(
        attest=attest, signature=sign(RSA_KEY, TpmAlgId.RSASSA, TpmAlgId.SHA256, attest), ak=ak
    )
    with pytest.raises(EvidenceVerificationError) as info:
        verify(q)
    assert info.value.claim == "tpm.quote.type"
    assert info.value.actual == "ATTEST_CERTIFY"


def test_quote_type_byte_changed_to_certify() -> None:
    q = make_quote()
    with pytest.raises(EvidenceFormatError):
        verify(dataclasses.replace(q, attest=q.attest[:4] + b"\x80\x17" + q.attest[6:]))


def test_trailing_bytes() -> None:
    q = make_quote()
    with pytest.raises(EvidenceFormatError, match="trailing"):
        verify(dataclasses.replace(q, attest=q.attest + b"\x00"))
    with pytest.raises(EvidenceFormatError, match="trailing"):
        verify(dataclasses.replace(q, signature=q.signature + b"\x00"))


def test_truncations() -> None:
    q = make_quote()
    for cut in range(len(q.attest)):
        with pytest.raises(EvidenceFormatError):
            verify(dataclasses.replace(q, attest=q.attest[:cut]))
    for cut in range(len(q.signature)):
        with pytest.raises(EvidenceFormatError):
            verify(dataclasses.replace(q, signature=q.signature[:cut]))


def test_wrong_qualified_signer() -> None:
    q = make_quote()
    with pytest.raises(BindingMismatch) as info:
        verify(q, expected_qualified_signer=q.ak.name())
    assert info.value.claim == "tpm.quote.qualified_signer"


def test_invalid_ak_key_material() -> None:
    q = make_quote()
    ak = dataclasses.replace(q.ak, unique=q.ak.unique[:-1])  # type: ignore[index]
    with pytest.raises(EvidenceFormatError, match="modulus"):
        verify(dataclasses.replace(q, ak=ak))


# ---------------------------------------------------------------------------------------
# VerifiedQuote is a value only the verifier creates
# ---------------------------------------------------------------------------------------


def test_no_public_constructor() -> None:
    vq = verify(make_quote())
    with pytest.raises(TypeError, match="no public constructor"):
        VerifiedQuote(
            attest=vq.attest,
            signature=vq.signature,
            ak_public=vq.ak_public,
            ak_name=vq.ak_name,
            pcr_values=vq.pcr_values,
        )


def test_verified_quote_value_semantics() -> None:
    q = make_quote()
    a = verify(q)
    b = verify(q)
    c = verify(make_quote(extra_data=b"x"), expected_extra_data=b"x")
    assert a == b
    assert not a != b  # noqa: SIM202
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert repr(a).startswith("VerifiedQuote(attest=TpmsAttest(")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.ak_name = b""  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# QuoteSequenceChecker
# ---------------------------------------------------------------------------------------


def quote_at(
    clock: int, reset: int = 1, restart: int = 0, safe: bool = True, key: PrivateKey = RSA_KEY
) -> VerifiedQuote:
    info = TpmsClockInfo(clock=clock, reset_count=reset, restart_count=restart, safe=safe)
    scheme = TpmAlgId.RSASSA if isinstance(key, rsa.RSAPrivateKey) else TpmAlgId.ECDSA
    return verify(make_quote(key, scheme, clock=info))


def test_sequence_accepts_forward_progress() -> None:
    checker = QuoteSequenceChecker()
    assert checker.last is None
    checker.check(quote_at(1000))
    checker.check(quote_at(2000))
    checker.check(quote_at(2001, restart=1))
    checker.check(quote_at(2500, reset=2, restart=0))
    assert checker.last == TpmsClockInfo(clock=2500, reset_count=2, restart_count=0, safe=True)


@pytest.mark.parametrize(
    ("second", "claim"),
    [
        ({"clock": 1000, "reset": 3, "restart": 2}, "tpm.clock_info.clock"),
        ({"clock": 999, "reset": 3, "restart": 2}, "tpm.clock_info.clock"),
        ({"clock": 5000, "reset": 2, "restart": 9}, "tpm.clock_info.reset_count"),
        ({"clock": 5000, "reset": 3, "restart": 1}, "tpm.clock_info.restart_count"),
        ({"clock": 5000, "reset": 3, "restart": 2, "safe": False}, "tpm.clock_info.safe"),
    ],
)
def test_sequence_refusals(second: dict[str, int], claim: str) -> None:
    checker = QuoteSequenceChecker()
    checker.check(quote_at(1000, reset=3, restart=2))
    with pytest.raises(EvidenceVerificationError) as info:
        checker.check(quote_at(**second))  # type: ignore[arg-type]
    assert info.value.claim == claim
    # A refused quote does not move the state.
    assert checker.last is not None
    assert checker.last.clock == 1000


def test_sequence_first_quote_must_be_safe() -> None:
    with pytest.raises(EvidenceVerificationError, match="safe"):
        QuoteSequenceChecker().check(quote_at(1, safe=False))


def test_sequence_other_ak_refused() -> None:
    checker = QuoteSequenceChecker()
    checker.check(quote_at(1000))
    with pytest.raises(BindingMismatch) as info:
        checker.check(quote_at(2000, key=P256_KEY))
    assert info.value.claim == "tpm.quote.ak_name"


# ---------------------------------------------------------------------------------------
# PCR appraisal
# ---------------------------------------------------------------------------------------


def test_appraise_pcrs_pass() -> None:
    vq = verify(make_quote())
    policy = PcrPolicy.from_mapping(
        {
            "sha256": {7: [bytes(32), PCRS[TpmAlgId.SHA256][7]]},
            TpmAlgId.SHA1: {4: [PCRS[TpmAlgId.SHA1][4]]},
        }
    )
    appraise_pcrs(vq, policy)
    appraise_pcrs(vq, PcrPolicy())
    assert [(b, i) for b, i, _ in policy.entries] == [(TpmAlgId.SHA1, 4), (TpmAlgId.SHA256, 7)]


def test_appraise_pcrs_mismatch_names_everything() -> None:
    vq = verify(make_quote())
    policy = PcrPolicy.from_mapping({"sha256": {7: [bytes(32)]}})
    with pytest.raises(MeasurementMismatch) as info:
        appraise_pcrs(vq, policy)
    assert info.value.claim == "tpm.pcr.sha256.7"
    assert info.value.expected == [bytes(32).hex()]
    assert info.value.actual == PCRS[TpmAlgId.SHA256][7]
    assert PCRS[TpmAlgId.SHA256][7].hex() in str(info.value)


def test_appraise_pcr_not_quoted() -> None:
    vq = verify(make_quote())
    policy = PcrPolicy.from_mapping({TpmAlgId.SHA384: {0: [bytes(48)]}})
    with pytest.raises(MeasurementMismatch) as info:
        appraise_pcrs(vq, policy)
    assert info.value.claim == "tpm.pcr.sha384.0"
    assert info.value.actual == "not covered by the quote"


@pytest.mark.parametrize(
    ("reference", "location"),
    [
        ({"md5": {0: [bytes(16)]}}, "vtpm.pcrs"),
        ({TpmAlgId.RSA: {0: [bytes(16)]}}, "vtpm.pcrs"),
        ({"sha256": {64: [bytes(32)]}}, "vtpm.pcrs.sha256.64"),
        ({"sha256": {-1: [bytes(32)]}}, "vtpm.pcrs.sha256.-1"),
        ({"sha256": {0: []}}, "vtpm.pcrs.sha256.0"),
        ({"sha256": {0: [bytes(20)]}}, "vtpm.pcrs.sha256.0"),
    ],
)
def test_pcr_policy_errors(reference: dict[object, dict[int, list[bytes]]], location: str) -> None:
    with pytest.raises(PolicyError) as info:
        PcrPolicy.from_mapping(reference)  # type: ignore[arg-type]
    assert info.value.location == location


def test_pcr_policy_value_semantics() -> None:
    a = PcrPolicy.from_mapping({"sha256": {0: [bytes(32)]}})
    b = PcrPolicy.from_mapping({TpmAlgId.SHA256: {0: (bytes(32),)}})
    c = PcrPolicy.from_mapping({"sha256": {1: [bytes(32)]}})
    assert a == b
    assert not a != b  # noqa: SIM202
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert repr(a).startswith("PcrPolicy(entries=")


# ---------------------------------------------------------------------------------------
# Fuzzing
# ---------------------------------------------------------------------------------------

FUZZ_QUOTE = make_quote()


def _octets(max_size: int) -> st.SearchStrategy[bytes]:
    # Built from ints: st.binary trips BytesWarning inside hypothesis under python -bb.
    return st.lists(st.integers(0, 255), max_size=max_size).map(bytes)


@st.composite
def _mutate(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=200, deadline=None)
@given(
    attest=st.one_of(_octets(300), _mutate(FUZZ_QUOTE.attest), st.just(FUZZ_QUOTE.attest)),
    signature=st.one_of(_octets(300), _mutate(FUZZ_QUOTE.signature), st.just(FUZZ_QUOTE.signature)),
)
def test_fuzz_verify_quote(attest: bytes, signature: bytes) -> None:
    try:
        vq = verify(Quote(attest=attest, signature=signature, ak=FUZZ_QUOTE.ak))
    except RatlsError:
        return
    assert attest == FUZZ_QUOTE.attest
    assert vq.pcrs() == PCRS


# ---------------------------------------------------------------------------------------
# Real quotes from swtpm
# ---------------------------------------------------------------------------------------


@pytest.mark.swtpm
@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed")
@pytest.mark.parametrize("ak_type", ["rsa", "ecc"])
def test_swtpm_quote_verifies(ak_type: str) -> None:
    from ratls.sim._swtpm import Swtpm, manufacture_vtpm, quote

    with Swtpm() as tpm:
        identity = manufacture_vtpm(tpm, ak_type=ak_type)
        tpm.pcr_extend(16, {TpmAlgId.SHA256: bytes(range(32)), TpmAlgId.SHA1: bytes(20)})
        selection = {TpmAlgId.SHA256: [0, 7, 16], TpmAlgId.SHA1: [16]}
        attestation = quote(tpm, identity, NONCE, selection)
        values = tpm.pcr_read(selection)
    ak = identity.ak()
    pcrs = {TpmAlgId(bank): dict(v) for bank, v in values.items()}
    ek_qn = qualified_name(hierarchy_name(TPM_RH_ENDORSEMENT), identity.ek_name)
    vq = verify_quote(
        attest=attestation.attest[2:],
        signature=attestation.signature,
        ak_public=ak,
        expected_extra_data=NONCE,
        pcr_values=pcrs,
        expected_qualified_signer=qualified_name(ek_qn, ak.name()),
    )
    assert vq.ak_name == identity.ak_name
    assert vq.pcr(TpmAlgId.SHA256, 16) == hashlib.sha256(bytes(32) + bytes(range(32))).digest()
    assert vq.clock_info.safe
    pcrs[TpmAlgId.SHA256][0] = b"\x01" * 32
    with pytest.raises(BindingMismatch):
        verify_quote(
            attest=attestation.attest[2:],
            signature=attestation.signature,
            ak_public=ak,
            expected_extra_data=NONCE,
            pcr_values=pcrs,
        )
