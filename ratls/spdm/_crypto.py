"""SPDM 1.2 cryptography: signing rule, transcripts, key schedule, verify data.

Theory of operation
-------------------
*Signatures* (DSP0274 1.2 "signature generation").  What is signed is never the
transcript itself but ``prefix || Hash(transcript)`` where ``prefix`` is 100
bytes: the string ``"dmtf-spdm-v1.2.*"`` four times (64 bytes), then zero
padding and a context string such as ``"responder-challenge_auth signing"``
right-aligned in the remaining 36 bytes.  ECDSA and RSA hash that 100 + H byte
message once more inside the primitive (``key.sign(msg, ECDSA(SHA384()))``);
ECDSA signatures travel as raw big-endian ``r || s`` and RSA-PSS uses a salt as
long as the digest.

*Transcripts* are incremental hash objects (:class:`Transcript`).  The VCA
messages are hashed once; M1, L1, and the session transcript each start as a
:meth:`Transcript.copy` of VCA, so a reset of B or L1 is just a new copy.

*Key schedule* (SPDM 1.2): HKDF (RFC 5869) with ``BinConcat(Length, Label,
Context) = u16le(Length) || "spdm1.2 " || Label || Context`` as the info.
The handshake secret is ``HKDF-Extract(0^H, DHE secret)``; per-direction
handshake secrets expand it with TH1; the master secret is
``HKDF-Extract(Expand(handshake, "derived"), 0^H)``; data secrets expand it with
TH2; keys and IVs come from ``"key"`` and ``"iv"``; KEY_UPDATE rolls a secret
with ``"traffic upd"``.  Secrets live in dataclasses whose reprs hide them.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias, final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ratls._errors import SignatureMismatch

from ._codec import MeasurementBlock
from ._constants import (
    BaseAsymAlgo,
    BaseHashAlgo,
    DheGroup,
    MeasurementHashAlgo,
    MeasurementSummaryHashType,
)
from ._errors import SpdmDecodeError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "CONTEXT_REQUESTER_CHALLENGE_AUTH",
    "CONTEXT_REQUESTER_FINISH",
    "CONTEXT_RESPONDER_CHALLENGE_AUTH",
    "CONTEXT_RESPONDER_KEY_EXCHANGE_RSP",
    "CONTEXT_RESPONDER_MEASUREMENTS",
    "DataSecrets",
    "HandshakeSecrets",
    "PrivateKey",
    "PublicKey",
    "TrafficKeys",
    "Transcript",
    "bin_concat",
    "check_verify_data",
    "derive_data_secrets",
    "derive_handshake_secrets",
    "derive_traffic_keys",
    "dhe_generate",
    "dhe_shared_secret",
    "digest_measurement_block",
    "hash_algorithm",
    "hash_bytes",
    "hkdf_expand",
    "hkdf_extract",
    "measurement_hash_algorithm",
    "measurement_summary_hash",
    "sign",
    "signing_prefix",
    "update_traffic_secret",
    "verify_data",
    "verify_signature",
]

#: Context string of the responder's CHALLENGE_AUTH signature.
CONTEXT_RESPONDER_CHALLENGE_AUTH: Final = b"responder-challenge_auth signing"
#: Context string of the requester's (encapsulated) CHALLENGE_AUTH signature.
CONTEXT_REQUESTER_CHALLENGE_AUTH: Final = b"requester-challenge_auth signing"
#: Context string of the responder's MEASUREMENTS signature.
CONTEXT_RESPONDER_MEASUREMENTS: Final = b"responder-measurements signing"
#: Context string of the responder's KEY_EXCHANGE_RSP signature.
CONTEXT_RESPONDER_KEY_EXCHANGE_RSP: Final = b"responder-key_exchange_rsp signing"
#: Context string of the requester's FINISH signature (mutual authentication).
CONTEXT_REQUESTER_FINISH: Final = b"requester-finish signing"

_PREFIX_REPEAT = 4
_PREFIX_CONTEXT_AREA = 36

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    BaseHashAlgo.TPM_ALG_SHA_256: hashes.SHA256,
    BaseHashAlgo.TPM_ALG_SHA_384: hashes.SHA384,
    BaseHashAlgo.TPM_ALG_SHA_512: hashes.SHA512,
    BaseHashAlgo.TPM_ALG_SHA3_256: hashes.SHA3_256,
    BaseHashAlgo.TPM_ALG_SHA3_384: hashes.SHA3_384,
    BaseHashAlgo.TPM_ALG_SHA3_512: hashes.SHA3_512,
}
_MEASUREMENT_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    MeasurementHashAlgo.TPM_ALG_SHA_256: hashes.SHA256,
    MeasurementHashAlgo.TPM_ALG_SHA_384: hashes.SHA384,
    MeasurementHashAlgo.TPM_ALG_SHA_512: hashes.SHA512,
    MeasurementHashAlgo.TPM_ALG_SHA3_256: hashes.SHA3_256,
    MeasurementHashAlgo.TPM_ALG_SHA3_384: hashes.SHA3_384,
    MeasurementHashAlgo.TPM_ALG_SHA3_512: hashes.SHA3_512,
}
_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256: (ec.SECP256R1, 32),
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384: (ec.SECP384R1, 48),
    BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P521: (ec.SECP521R1, 66),
}
_RSASSA = frozenset(
    {
        BaseAsymAlgo.TPM_ALG_RSASSA_2048,
        BaseAsymAlgo.TPM_ALG_RSASSA_3072,
        BaseAsymAlgo.TPM_ALG_RSASSA_4096,
    }
)
_RSAPSS = frozenset(
    {
        BaseAsymAlgo.TPM_ALG_RSAPSS_2048,
        BaseAsymAlgo.TPM_ALG_RSAPSS_3072,
        BaseAsymAlgo.TPM_ALG_RSAPSS_4096,
    }
)
_DHE_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    DheGroup.SECP_256_R1: (ec.SECP256R1, 32),
    DheGroup.SECP_384_R1: (ec.SECP384R1, 48),
    DheGroup.SECP_521_R1: (ec.SECP521R1, 66),
}


def hash_algorithm(base_hash_algo: int) -> hashes.HashAlgorithm:
    """Return the cryptography hash for one BaseHashAlgo bit.

    Args:
        base_hash_algo: one :class:`BaseHashAlgo` bit.

    Returns:
        A new hash algorithm instance.

    Raises:
        ValueError: for SM3 or a value that is not one known bit.
    """
    try:
        return _HASHES[base_hash_algo]()
    except KeyError:
        raise ValueError(f"unsupported BaseHashAlgo {base_hash_algo:#x}") from None


def measurement_hash_algorithm(measurement_hash_algo: int) -> hashes.HashAlgorithm | None:
    """Return the hash for one MeasurementHashAlgo bit (None for raw bit streams only).

    Args:
        measurement_hash_algo: one :class:`MeasurementHashAlgo` bit.

    Returns:
        A hash instance, or None for RawBitStreamOnly.

    Raises:
        ValueError: for SM3 or a value that is not one known bit.
    """
    if measurement_hash_algo == MeasurementHashAlgo.RAW_BIT_STREAM_ONLY:
        return None
    try:
        return _MEASUREMENT_HASHES[measurement_hash_algo]()
    except KeyError:
        raise ValueError(f"unsupported MeasurementHashAlgo {measurement_hash_algo:#x}") from None


def hash_bytes(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    """Return ``Hash(data)`` (used for DIGESTS, RootHash, CertChainHash and Hash(Ct))."""
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


_digest = hash_bytes


def _hmac(algorithm: hashes.HashAlgorithm, key: bytes, data: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, algorithm)
    mac.update(data)
    return mac.finalize()


# --------------------------------------------------------------------------- transcripts


@final
class Transcript:
    """An incremental transcript hash that can be forked.

    ``Transcript(alg)`` starts empty; :meth:`update` appends bytes;
    :meth:`digest` returns the hash so far without ending the transcript;
    :meth:`copy` forks it (VCA is hashed once and copied into M1, L1 and the
    session transcripts).
    """

    __slots__ = ("_algorithm", "_hash", "_length")

    def __init__(self, algorithm: hashes.HashAlgorithm) -> None:
        self._algorithm = algorithm
        self._hash = hashes.Hash(algorithm)
        self._length = 0

    @property
    def algorithm(self) -> hashes.HashAlgorithm:
        """The hash algorithm."""
        return self._algorithm

    @property
    def length(self) -> int:
        """How many bytes were hashed so far."""
        return self._length

    def update(self, data: bytes) -> None:
        """Append bytes to the transcript."""
        self._hash.update(data)
        self._length += len(data)

    def digest(self) -> bytes:
        """Return the hash of everything appended so far (the transcript stays open)."""
        return self._hash.copy().finalize()

    def copy(self) -> Transcript:
        """Return an independent fork of this transcript."""
        other = Transcript.__new__(Transcript)
        other._algorithm = self._algorithm
        other._hash = self._hash.copy()
        other._length = self._length
        return other

    def __repr__(self) -> str:
        return f"Transcript({self._algorithm.name}, length={self._length})"


def measurement_summary_hash(
    algorithm: hashes.HashAlgorithm,
    blocks: Iterable[MeasurementBlock],
    summary_type: MeasurementSummaryHashType,
) -> bytes:
    """Compute MeasurementSummaryHash over whole measurement blocks.

    Args:
        algorithm: the BaseHashAlgo hash.
        blocks: all measurement blocks of the responder, in index order.
        summary_type: TCB (only DMTF type 0 blocks) or ALL.

    Returns:
        The summary hash; empty bytes for ``NONE``.
    """
    if summary_type == MeasurementSummaryHashType.NONE:
        return b""
    chosen = [
        b for b in blocks if summary_type == MeasurementSummaryHashType.ALL or b.dmtf_type == 0
    ]
    return _digest(algorithm, b"".join(b.encode() for b in chosen))


def digest_measurement_block(
    block: MeasurementBlock, measurement_hash_algo: int
) -> MeasurementBlock:
    """Turn a raw bit-stream block into its digest form under MeasurementHashAlgo.

    A block that already is a digest, or a RawBitStreamOnly selection, is
    returned unchanged.

    Args:
        block: a measurement block.
        measurement_hash_algo: the negotiated MeasurementHashAlgo bit.

    Returns:
        The block with ``value = Hash(value)`` and bit 7 of the value type cleared.

    Raises:
        ValueError: for an unsupported MeasurementHashAlgo.
    """
    algorithm = measurement_hash_algorithm(measurement_hash_algo)
    if algorithm is None or not block.is_raw_bit_stream:
        return block
    return MeasurementBlock(
        index=block.index,
        value_type=block.value_type & 0x7F,
        value=_digest(algorithm, block.value),
        measurement_specification=block.measurement_specification,
    )


# --------------------------------------------------------------------------- signatures


def signing_prefix(spdm_version: int, context: bytes) -> bytes:
    """Return the 100-byte combined SPDM prefix for a signing context.

    Args:
        spdm_version: the negotiated SPDMVersion byte (0x12, 0x13, ...).
        context: one of the ``CONTEXT_*`` strings.

    Returns:
        ``"dmtf-spdm-v1.2.*" x 4 || zero padding || context`` (100 bytes).

    Raises:
        ValueError: if the version is below 1.2 or the context is too long.
    """
    if spdm_version < 0x12:
        raise ValueError("the signing prefix exists from SPDM 1.2 on")
    if len(context) > _PREFIX_CONTEXT_AREA:
        raise ValueError("context string longer than 36 bytes")
    version_text = f"dmtf-spdm-v{spdm_version >> 4}.{spdm_version & 0xF}.*".encode()
    return version_text * _PREFIX_REPEAT + context.rjust(_PREFIX_CONTEXT_AREA, b"\0")


def _to_sign(spdm_version: int, context: bytes, transcript_hash: bytes) -> bytes:
    return signing_prefix(spdm_version, context) + transcript_hash


def sign(
    private_key: PrivateKey,
    *,
    base_asym_algo: int,
    base_hash_algo: int,
    spdm_version: int,
    context: bytes,
    transcript_hash: bytes,
) -> bytes:
    """Sign a transcript hash the SPDM 1.2 way.

    Args:
        private_key: the signing key; its type must match ``base_asym_algo``.
        base_asym_algo: one :class:`BaseAsymAlgo` bit.
        base_hash_algo: one :class:`BaseHashAlgo` bit.
        spdm_version: the negotiated SPDMVersion byte.
        context: the signing context string.
        transcript_hash: Hash(transcript).

    Returns:
        The signature as it travels on the wire (ECDSA: raw r||s).

    Raises:
        ValueError: if the key does not fit the algorithm or the algorithm is unsupported.
    """
    message = _to_sign(spdm_version, context, transcript_hash)
    algorithm = hash_algorithm(base_hash_algo)
    if base_asym_algo in _CURVES:
        curve, size = _CURVES[base_asym_algo]
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, curve
        ):
            raise ValueError("private key does not match BaseAsymAlgo")
        r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(algorithm)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if base_asym_algo in _RSASSA or base_asym_algo in _RSAPSS:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("private key does not match BaseAsymAlgo")
        return private_key.sign(message, _rsa_padding(base_asym_algo, algorithm), algorithm)
    if base_asym_algo == BaseAsymAlgo.EDDSA_ED25519:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise ValueError("private key does not match BaseAsymAlgo")
        return private_key.sign(message)
    raise ValueError(f"unsupported BaseAsymAlgo {base_asym_algo:#x}")


def _rsa_padding(base_asym_algo: int, algorithm: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    if base_asym_algo in _RSAPSS:
        return padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    return padding.PKCS1v15()


def verify_signature(
    public_key: PublicKey,
    signature: bytes,
    *,
    base_asym_algo: int,
    base_hash_algo: int,
    spdm_version: int,
    context: bytes,
    transcript_hash: bytes,
) -> None:
    """Verify an SPDM 1.2 signature over a transcript hash.

    Args:
        public_key: the signer's public key (e.g. the leaf of its certificate chain).
        signature: the signature as carried on the wire.
        base_asym_algo: one :class:`BaseAsymAlgo` bit.
        base_hash_algo: one :class:`BaseHashAlgo` bit.
        spdm_version: the negotiated SPDMVersion byte.
        context: the signing context string.
        transcript_hash: Hash(transcript) as recomputed by the verifier.

    Raises:
        SignatureMismatch: if the signature does not verify (``InvalidSignature``
            is kept as ``__cause__``), has the wrong size, or the key does not
            fit the algorithm.
        ValueError: if the algorithm is unsupported.
    """
    claim = f"spdm.signature[{context.decode()}]"
    message = _to_sign(spdm_version, context, transcript_hash)
    algorithm = hash_algorithm(base_hash_algo)

    def mismatch(detail: str) -> SignatureMismatch:
        return SignatureMismatch(
            claim, expected="a valid signature", actual=signature, detail=detail
        )

    try:
        if base_asym_algo in _CURVES:
            curve, size = _CURVES[base_asym_algo]
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
                public_key.curve, curve
            ):
                raise mismatch("public key does not match BaseAsymAlgo")
            if len(signature) != 2 * size:
                raise mismatch(f"ECDSA signature must be {2 * size} bytes")
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            public_key.verify(der, message, ec.ECDSA(algorithm))
        elif base_asym_algo in _RSASSA or base_asym_algo in _RSAPSS:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise mismatch("public key does not match BaseAsymAlgo")
            public_key.verify(
                signature, message, _rsa_padding(base_asym_algo, algorithm), algorithm
            )
        elif base_asym_algo == BaseAsymAlgo.EDDSA_ED25519:
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise mismatch("public key does not match BaseAsymAlgo")
            public_key.verify(signature, message)
        else:
            raise ValueError(f"unsupported BaseAsymAlgo {base_asym_algo:#x}")
    except InvalidSignature as exc:
        raise mismatch("signature does not verify") from exc


# --------------------------------------------------------------------------- key schedule


def bin_concat(length: int, label: bytes, context: bytes = b"", *, spdm_version: int) -> bytes:
    """Return ``BinConcat(Length, Label, Context)`` of the SPDM key schedule.

    Args:
        length: the output length in bytes (u16, little-endian).
        label: e.g. ``b"req hs data"``.
        context: a transcript hash, or empty.
        spdm_version: the negotiated SPDMVersion byte; 0x12 gives ``"spdm1.2 "``.

    Returns:
        The HKDF info bytes.
    """
    version_label = f"spdm{spdm_version >> 4}.{spdm_version & 0xF} ".encode()
    return length.to_bytes(2, "little") + version_label + label + context


def hkdf_extract(algorithm: hashes.HashAlgorithm, salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract: ``HMAC(salt, IKM)``."""
    return _hmac(algorithm, salt, ikm)


def hkdf_expand(algorithm: hashes.HashAlgorithm, prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand.

    Args:
        algorithm: the hash.
        prk: the pseudo-random key.
        info: the info bytes (a :func:`bin_concat`).
        length: the output size, at most 255 * H.

    Returns:
        ``length`` bytes of output keying material.

    Raises:
        ValueError: if ``length`` is too large.
    """
    size = algorithm.digest_size
    if length > 255 * size:
        raise ValueError("HKDF-Expand output too long")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = _hmac(algorithm, prk, block + info + bytes((counter,)))
        out += block
        counter += 1
    return out[:length]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeSecrets:
    """Secrets derived from the DHE secret and TH1 (reprs hide them)."""

    handshake_secret: bytes = field(repr=False)
    request_handshake_secret: bytes = field(repr=False)
    response_handshake_secret: bytes = field(repr=False)
    request_finished_key: bytes = field(repr=False)
    response_finished_key: bytes = field(repr=False)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DataSecrets:
    """Secrets derived from the handshake secret and TH2 (reprs hide them)."""

    master_secret: bytes = field(repr=False)
    request_data_secret: bytes = field(repr=False)
    response_data_secret: bytes = field(repr=False)
    export_master_secret: bytes = field(repr=False)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficKeys:
    """An AEAD key and IV for one direction and phase (reprs hide them)."""

    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)


def derive_handshake_secrets(
    algorithm: hashes.HashAlgorithm, *, spdm_version: int, shared_secret: bytes, th1_hash: bytes
) -> HandshakeSecrets:
    """Derive the handshake secrets and finished keys.

    Args:
        algorithm: the BaseHashAlgo hash.
        spdm_version: the negotiated SPDMVersion byte.
        shared_secret: the DHE shared secret (ECDHE: the x coordinate).
        th1_hash: Hash(TH1).

    Returns:
        The handshake secrets.
    """
    h = algorithm.digest_size
    handshake = hkdf_extract(algorithm, bytes(h), shared_secret)
    req = hkdf_expand(
        algorithm, handshake, bin_concat(h, b"req hs data", th1_hash, spdm_version=spdm_version), h
    )
    rsp = hkdf_expand(
        algorithm, handshake, bin_concat(h, b"rsp hs data", th1_hash, spdm_version=spdm_version), h
    )
    finished = bin_concat(h, b"finished", spdm_version=spdm_version)
    return HandshakeSecrets(
        handshake_secret=handshake,
        request_handshake_secret=req,
        response_handshake_secret=rsp,
        request_finished_key=hkdf_expand(algorithm, req, finished, h),
        response_finished_key=hkdf_expand(algorithm, rsp, finished, h),
    )


def derive_data_secrets(
    algorithm: hashes.HashAlgorithm, *, spdm_version: int, handshake_secret: bytes, th2_hash: bytes
) -> DataSecrets:
    """Derive the master secret and the data-phase secrets.

    Args:
        algorithm: the BaseHashAlgo hash.
        spdm_version: the negotiated SPDMVersion byte.
        handshake_secret: :attr:`HandshakeSecrets.handshake_secret`.
        th2_hash: Hash(TH2).

    Returns:
        The data secrets.
    """
    h = algorithm.digest_size
    salt = hkdf_expand(
        algorithm, handshake_secret, bin_concat(h, b"derived", spdm_version=spdm_version), h
    )
    master = hkdf_extract(algorithm, salt, bytes(h))

    def expand(label: bytes) -> bytes:
        return hkdf_expand(
            algorithm, master, bin_concat(h, label, th2_hash, spdm_version=spdm_version), h
        )

    return DataSecrets(
        master_secret=master,
        request_data_secret=expand(b"req app data"),
        response_data_secret=expand(b"rsp app data"),
        export_master_secret=expand(b"exp master"),
    )


def derive_traffic_keys(
    algorithm: hashes.HashAlgorithm, *, spdm_version: int, secret: bytes, key_size: int
) -> TrafficKeys:
    """Derive an AEAD key and 12-byte IV from a handshake or data secret.

    Args:
        algorithm: the BaseHashAlgo hash.
        spdm_version: the negotiated SPDMVersion byte.
        secret: a per-direction secret.
        key_size: the AEAD key size (32 for AES-256-GCM and ChaCha20-Poly1305).

    Returns:
        The key and IV.
    """
    return TrafficKeys(
        key=hkdf_expand(
            algorithm, secret, bin_concat(key_size, b"key", spdm_version=spdm_version), key_size
        ),
        iv=hkdf_expand(algorithm, secret, bin_concat(12, b"iv", spdm_version=spdm_version), 12),
    )


def update_traffic_secret(
    algorithm: hashes.HashAlgorithm, *, spdm_version: int, secret: bytes
) -> bytes:
    """Roll a data secret for KEY_UPDATE (label ``"traffic upd"``).

    Args:
        algorithm: the BaseHashAlgo hash.
        spdm_version: the negotiated SPDMVersion byte.
        secret: the current per-direction data secret.

    Returns:
        The next secret.
    """
    h = algorithm.digest_size
    return hkdf_expand(
        algorithm, secret, bin_concat(h, b"traffic upd", spdm_version=spdm_version), h
    )


def verify_data(algorithm: hashes.HashAlgorithm, finished_key: bytes, th_hash: bytes) -> bytes:
    """Return ``HMAC(finished_key, th_hash)``: Requester/ResponderVerifyData."""
    return _hmac(algorithm, finished_key, th_hash)


def check_verify_data(expected: bytes, actual: bytes, *, claim: str) -> None:
    """Compare verify data in constant time.

    Args:
        expected: the locally computed value.
        actual: the value the peer sent.
        claim: the name to report, e.g. ``"spdm.key_exchange_rsp.responder_verify_data"``.

    Raises:
        SignatureMismatch: if the values differ.
    """
    if not hmac.compare_digest(expected, actual):
        raise SignatureMismatch(
            claim, expected=expected, actual=actual, detail="HMAC verify data differs"
        )


# --------------------------------------------------------------------------- DHE


def dhe_generate(dhe_group: int) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """Generate an ephemeral ECDHE key and its ExchangeData (X || Y).

    Args:
        dhe_group: one :class:`DheGroup` bit (secp256r1, secp384r1 or secp521r1).

    Returns:
        The private key and the ExchangeData bytes.

    Raises:
        ValueError: for FFDHE or SM2 groups, which are not implemented.
    """
    curve, _ = _curve_for(dhe_group)
    key = ec.generate_private_key(curve())
    return key, _exchange_data(key.public_key(), dhe_group)


def _curve_for(dhe_group: int) -> tuple[type[ec.EllipticCurve], int]:
    try:
        return _DHE_CURVES[dhe_group]
    except KeyError:
        raise ValueError(f"unsupported DHE group {dhe_group:#x}") from None


def _exchange_data(public_key: ec.EllipticCurvePublicKey, dhe_group: int) -> bytes:
    _, size = _curve_for(dhe_group)
    numbers = public_key.public_numbers()
    return numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big")


def dhe_shared_secret(
    private_key: ec.EllipticCurvePrivateKey, peer_exchange_data: bytes, dhe_group: int
) -> bytes:
    """Compute the ECDHE shared secret (the x coordinate) with a peer's ExchangeData.

    Args:
        private_key: our ephemeral key from :func:`dhe_generate`.
        peer_exchange_data: the peer's X || Y.
        dhe_group: the negotiated DHE group bit.

    Returns:
        The shared secret.

    Raises:
        SpdmDecodeError: if the peer's point is malformed or not on the curve.
        ValueError: for an unsupported group.
    """
    curve, size = _curve_for(dhe_group)
    if len(peer_exchange_data) != 2 * size:
        raise SpdmDecodeError(
            f"ExchangeData must be {2 * size} bytes", structure="ExchangeData", offset=0
        )
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve(), b"\x04" + peer_exchange_data)
    except ValueError as exc:
        raise SpdmDecodeError(
            "ExchangeData is not a point on the curve", structure="ExchangeData"
        ) from exc
    return private_key.exchange(ec.ECDH(), peer)
