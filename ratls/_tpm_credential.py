"""TPM2_MakeCredential on the verifier side: prove that an AK lives in the TPM of an EK.

An endorsement key cannot sign, so a quote's AK is tied to the EK by *credential
activation*: the verifier encrypts a fresh secret to the EK in a form the TPM releases
(TPM2_ActivateCredential) only if an object with the given Name (the AK) is loaded in that
same TPM.  When the attester returns the secret, the AK is proven to be resident next to
the EK.  This module performs the verifier's half without a TPM (TPM 2.0 Part 1,
"Credential Protection"; Part 3, TPM2_MakeCredential):

1. ``seed``: a random value of the EK nameAlg's digest size, protected to the EK: with an
   RSA EK by RSA-OAEP (nameAlg, label ``"IDENTITY\\0"``); with an ECC EK by one-pass ECDH,
   the seed being KDFe(nameAlg, Z, "IDENTITY", ephemeral x, EK x).
2. ``symKey = KDFa(nameAlg, seed, "STORAGE", Name(AK), "", EK symmetric keyBits)`` and
   ``encIdentity = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))``.
3. ``HMACkey = KDFa(nameAlg, seed, "INTEGRITY", "", "", digest bits)`` and
   ``outerHMAC = HMAC(HMACkey, encIdentity || Name(AK))``.
4. ``TPM2B_ID_OBJECT = size || TPM2B_DIGEST(outerHMAC) || encIdentity`` and
   ``TPM2B_ENCRYPTED_SECRET = size || protected seed``.

AES-CFB lives in ``cryptography.hazmat.decrepit`` since cryptography 47 (the old location
warns, and warnings are errors in our test suite), so it is imported from there when
available.  Nothing here does I/O; randomness comes from the ``rng`` argument.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ._errors import BindingMismatch, EvidenceFormatError
from ._tpm_structs import (
    TpmAlgId,
    TpmsEccParms,
    TpmsEccPoint,
    TpmsRsaParms,
    TpmtPublic,
    digest_size,
    hash_algorithm,
    parse_tpm2b,
    tpm2b,
)

try:  # cryptography >= 47 keeps CFB among the "decrepit" primitives
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "TPM2_TOOLS_CREDENTIAL_MAGIC",
    "Credential",
    "kdfa",
    "kdfe",
    "make_credential",
    "parse_tpm2_tools_credential",
    "parse_tpm2b_id_object",
    "verify_activated_secret",
]

#: Header of the credential file written by ``tpm2_makecredential`` (followed by version 1).
TPM2_TOOLS_CREDENTIAL_MAGIC: Final = 0xBADCC0DE
_TPM2_TOOLS_CREDENTIAL_VERSION: Final = 1

_IDENTITY: Final = b"IDENTITY"
_STORAGE: Final = b"STORAGE"
_INTEGRITY: Final = b"INTEGRITY"


def _counter_kdf_check(bits: int) -> None:
    if bits <= 0 or bits % 8 or bits > 0xFFFF * 8:
        raise ValueError("bits must be a positive multiple of 8")


def kdfa(
    hash_alg: TpmAlgId,
    key: bytes,
    label: bytes,
    context_u: bytes,
    context_v: bytes,
    bits: int,
) -> bytes:
    """KDFa (TPM 2.0 Part 1): SP 800-108 counter-mode KDF with HMAC.

    Block i is ``HMAC(key, i (u32) || label || 0x00 || context_u || context_v || bits (u32))``
    for i = 1, 2, ...; the output is the first ``bits`` bits of their concatenation.

    Args:
        hash_alg: the HMAC hash.
        key: the HMAC key (a seed).
        label: the label *without* its terminating NUL (added here), e.g. ``b"STORAGE"``.
        context_u: first context value (may be empty).
        context_v: second context value (may be empty).
        bits: output length in bits, a multiple of 8.

    Returns:
        ``bits // 8`` bytes.

    Raises:
        ValueError: ``bits`` is not a positive multiple of 8.
        EvidenceFormatError: ``hash_alg`` is not a supported hash.
    """
    _counter_kdf_check(bits)
    tail = label + b"\x00" + context_u + context_v + struct.pack(">I", bits)
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        mac = crypto_hmac.HMAC(key, hash_algorithm(hash_alg))
        mac.update(struct.pack(">I", counter) + tail)
        out += mac.finalize()
    return out[: bits // 8]


def kdfe(
    hash_alg: TpmAlgId,
    z: bytes,
    label: bytes,
    party_u_info: bytes,
    party_v_info: bytes,
    bits: int,
) -> bytes:
    """KDFe (TPM 2.0 Part 1): the SP 800-56A concatenation KDF used after ECDH.

    Block i is ``H(i (u32) || Z || label || 0x00 || party_u_info || party_v_info)``.

    Args:
        hash_alg: the hash.
        z: the shared secret (x coordinate of the ECDH point, padded to the curve size).
        label: the label without its terminating NUL (added here), e.g. ``b"IDENTITY"``.
        party_u_info: x coordinate of the initiator's (ephemeral) public point.
        party_v_info: x coordinate of the responder's public point.
        bits: output length in bits, a multiple of 8.

    Returns:
        ``bits // 8`` bytes.

    Raises:
        ValueError: ``bits`` is not a positive multiple of 8.
        EvidenceFormatError: ``hash_alg`` is not a supported hash.
    """
    _counter_kdf_check(bits)
    tail = z + label + b"\x00" + party_u_info + party_v_info
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        h = hashes.Hash(hash_algorithm(hash_alg))
        h.update(struct.pack(">I", counter) + tail)
        out += h.finalize()
    return out[: bits // 8]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """The output of MakeCredential, ready for TPM2_ActivateCredential.

    Attributes:
        id_object: the TPM2B_ID_OBJECT (with its size prefix).
        encrypted_secret: the TPM2B_ENCRYPTED_SECRET (with its size prefix).
    """

    id_object: bytes
    encrypted_secret: bytes

    def to_tpm2_tools_file(self) -> bytes:
        """The file format of ``tpm2_makecredential -o`` / ``tpm2_activatecredential -i``.

        Returns:
            ``0xBADCC0DE || version 1 || TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET``.
        """
        return (
            struct.pack(">II", TPM2_TOOLS_CREDENTIAL_MAGIC, _TPM2_TOOLS_CREDENTIAL_VERSION)
            + self.id_object
            + self.encrypted_secret
        )


_FILE: Final = "tpm2-tools credential"


def parse_tpm2b_id_object(data: bytes) -> tuple[bytes, bytes]:
    """Split a TPM2B_ID_OBJECT into its integrity HMAC and encrypted identity.

    Args:
        data: ``size || TPM2B_DIGEST(integrityHMAC) || encIdentity``.

    Returns:
        ``(integrity_hmac, enc_identity)``.

    Raises:
        EvidenceFormatError: sizes inconsistent, an empty or over-long HMAC, or no
            encrypted identity.
    """
    inner = parse_tpm2b(data, structure="TPM2B_ID_OBJECT")
    if len(inner) < 2:
        raise EvidenceFormatError("truncated integrityHMAC", structure="TPM2B_ID_OBJECT", offset=2)
    size = int.from_bytes(inner[:2], "big")
    if not 0 < size <= 64 or 2 + size >= len(inner):
        raise EvidenceFormatError(
            f"integrityHMAC of {size} bytes does not fit", structure="TPM2B_ID_OBJECT", offset=2
        )
    return inner[2 : 2 + size], inner[2 + size :]


def parse_tpm2_tools_credential(data: bytes) -> Credential:
    """Parse the credential file written by ``tpm2_makecredential``.

    Args:
        data: the file contents.

    Returns:
        The credential.

    Raises:
        EvidenceFormatError: wrong magic or version, malformed or trailing data.
    """
    data = bytes(data)
    if len(data) < 8:
        raise EvidenceFormatError("truncated header", structure=_FILE, offset=0)
    magic, version = struct.unpack(">II", data[:8])
    if magic != TPM2_TOOLS_CREDENTIAL_MAGIC:
        raise EvidenceFormatError(
            f"magic {magic:#010x} is not 0xbadcc0de", structure=_FILE, offset=0
        )
    if version != _TPM2_TOOLS_CREDENTIAL_VERSION:
        raise EvidenceFormatError(f"unsupported version {version}", structure=_FILE, offset=4)
    pos = 8
    parts = []
    for what in ("TPM2B_ID_OBJECT", "TPM2B_ENCRYPTED_SECRET"):
        if len(data) < pos + 2:
            raise EvidenceFormatError(f"truncated {what}", structure=_FILE, offset=pos)
        end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
        if end > len(data):
            raise EvidenceFormatError(f"truncated {what}", structure=_FILE, offset=pos)
        parts.append(data[pos:end])
        pos = end
    if pos != len(data):
        raise EvidenceFormatError(f"{len(data) - pos} trailing bytes", structure=_FILE, offset=pos)
    parse_tpm2b_id_object(parts[0])
    if len(parts[1]) == 2:
        raise EvidenceFormatError("empty encrypted secret", structure=_FILE, offset=pos)
    return Credential(id_object=parts[0], encrypted_secret=parts[1])


def _protect_seed_rsa(
    ek: TpmtPublic, rng: Callable[[int], bytes], name_alg: TpmAlgId
) -> tuple[bytes, bytes]:
    key = ek.public_key()
    if not isinstance(key, rsa.RSAPublicKey):  # pragma: no cover - guarded by the caller
        raise TypeError("not an RSA key")
    seed = rng(digest_size(name_alg))
    encrypted = key.encrypt(
        seed,
        padding.OAEP(
            mgf=padding.MGF1(hash_algorithm(name_alg)),
            algorithm=hash_algorithm(name_alg),
            label=_IDENTITY + b"\x00",
        ),
    )
    return seed, encrypted


def _protect_seed_ecc(ek: TpmtPublic, name_alg: TpmAlgId) -> tuple[bytes, bytes]:
    key = ek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):  # pragma: no cover - caller guards
        raise TypeError("not an EC key")
    size = (key.curve.key_size + 7) // 8
    ephemeral = ec.generate_private_key(key.curve)
    z = ephemeral.exchange(ec.ECDH(), key)
    eph = ephemeral.public_key().public_numbers()
    ek_x = key.public_numbers().x.to_bytes(size, "big")
    eph_x = eph.x.to_bytes(size, "big")
    seed = kdfe(name_alg, z, _IDENTITY, eph_x, ek_x, digest_size(name_alg) * 8)
    point = TpmsEccPoint(x=eph_x, y=eph.y.to_bytes(size, "big"))
    return seed, point.to_bytes()


def make_credential(
    *,
    ek_public: TpmtPublic,
    ak_name: bytes,
    secret: bytes,
    rng: Callable[[int], bytes] = os.urandom,
) -> Credential:
    """Wrap ``secret`` so that only the EK's TPM, holding the AK, can recover it.

    Args:
        ek_public: the EK public area (a restricted decryption key with an AES-CFB
            symmetric definition, as in the TCG EK templates).
        ak_name: the AK's Name (nameAlg || digest), e.g. ``ak_public.name()``.
        secret: the credential, 1 to digest-size-of-EK-nameAlg bytes.
        rng: source of the seed for an RSA EK (an ECC EK's seed comes from a fresh
            ephemeral ECDH key made by cryptography's own generator).

    Returns:
        The ID object and encrypted secret for TPM2_ActivateCredential.

    Raises:
        ValueError: the EK has no AES-CFB symmetric definition, the secret length is out
            of range, or ``ak_name`` is not a digest Name.
        EvidenceFormatError: the EK public area holds no valid public key.
    """
    params = ek_public.parameters
    sym = params.symmetric
    if sym.algorithm is not TpmAlgId.AES or sym.mode is not TpmAlgId.CFB:
        raise ValueError("the EK must have an AES-CFB symmetric definition")
    if sym.key_bits not in (128, 192, 256):
        raise ValueError(f"unsupported AES key size {sym.key_bits}")
    name_alg = ek_public.name_alg
    dsize = digest_size(name_alg)
    if not 0 < len(secret) <= dsize:
        raise ValueError(f"the secret must be 1 to {dsize} bytes")
    if len(ak_name) < 2 + 20:
        raise ValueError("ak_name must be nameAlg || digest")
    if isinstance(params, TpmsRsaParms):
        seed, protected = _protect_seed_rsa(ek_public, rng, name_alg)
    elif isinstance(params, TpmsEccParms):
        seed, protected = _protect_seed_ecc(ek_public, name_alg)
    else:  # pragma: no cover - TpmtPublic only holds RSA or ECC parameters
        raise ValueError("unsupported EK type")
    sym_key = kdfa(name_alg, seed, _STORAGE, ak_name, b"", sym.key_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(name_alg, seed, _INTEGRITY, b"", b"", dsize * 8)
    mac = crypto_hmac.HMAC(hmac_key, hash_algorithm(name_alg))
    mac.update(enc_identity + ak_name)
    outer_hmac = mac.finalize()
    return Credential(
        id_object=tpm2b(tpm2b(outer_hmac) + enc_identity),
        encrypted_secret=tpm2b(protected),
    )


def verify_activated_secret(*, expected: bytes, returned: bytes) -> None:
    """Check the secret the attester recovered with TPM2_ActivateCredential.

    Args:
        expected: the secret passed to :func:`make_credential`.
        returned: what the attester sent back.

    Raises:
        BindingMismatch: the secrets differ (constant-time comparison): the AK was not
            proven to reside in the EK's TPM.
    """
    if not hmac.compare_digest(bytes(expected), bytes(returned)):
        raise BindingMismatch(
            "tpm.ak.activation",
            expected="the secret sealed to the EK for this AK",
            actual="a different value",
        )
