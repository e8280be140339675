"""Tests of MakeCredential, KDFa/KDFe and the tpm2-tools credential file (ratls._tpm_credential).

The TPM side, ActivateCredential, is written here in plain Python with the EK private key.
It unwraps both our credentials and those of ``tpm2_makecredential`` (offline, ``-T none``),
which shows the two produce the same format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls._errors import BindingMismatch, EvidenceFormatError, RatlsError
from ratls._tpm_credential import (
    TPM2_TOOLS_CREDENTIAL_MAGIC,
    Credential,
    kdfa,
    kdfe,
    make_credential,
    parse_tpm2_tools_credential,
    parse_tpm2b_id_object,
    verify_activated_secret,
)
from ratls._tpm_structs import (
    AK_TEMPLATE_RSA2048,
    EK_TEMPLATE_ECC_P256,
    EK_TEMPLATE_RSA2048,
    TpmAlgId,
    TpmsEccPoint,
    TpmsRsaParms,
    TpmtPublic,
    TpmtSymDefObject,
    check_ek_public,
    hash_algorithm,
    parse_tpm2b,
    tpm2b,
)

try:  # cryptography >= 47
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

EK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EK_P256_KEY = ec.generate_private_key(ec.SECP256R1())
AES128_CFB = TpmtSymDefObject(algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CFB)


def ek_public_for(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    symmetric: TpmtSymDefObject = AES128_CFB,
    name_alg: TpmAlgId = TpmAlgId.SHA256,
) -> TpmtPublic:
    template = EK_TEMPLATE_RSA2048 if isinstance(key, rsa.RSAPrivateKey) else EK_TEMPLATE_ECC_P256
    return TpmtPublic.from_public_key(
        key.public_key(),
        object_attributes=template.object_attributes,
        auth_policy=template.auth_policy,
        symmetric=symmetric,
        name_alg=name_alg,
    )


EK_RSA = ek_public_for(EK_RSA_KEY)
EK_P256 = ek_public_for(EK_P256_KEY)
AK = TpmtPublic.from_public_key(
    rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    object_attributes=AK_TEMPLATE_RSA2048.object_attributes,
    scheme=AK_TEMPLATE_RSA2048.parameters.scheme,
)
AK_NAME = AK.name()
SECRET = hashlib.sha256(b"credential").digest()


class ActivationError(Exception):
    """The test TPM refused to release the credential."""


def activate_credential(
    ek_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    ek_public: TpmtPublic,
    ak_name: bytes,
    credential: Credential,
) -> bytes:
    """TPM2_ActivateCredential in software, written from TPM 2.0 Part 1 and Part 3."""
    name_alg = ek_public.name_alg
    h = hash_algorithm(name_alg)
    protected = parse_tpm2b(credential.encrypted_secret)
    if isinstance(ek_key, rsa.RSAPrivateKey):
        seed = ek_key.decrypt(
            protected,
            padding.OAEP(
                mgf=padding.MGF1(hash_algorithm(name_alg)), algorithm=h, label=b"IDENTITY\0"
            ),
        )
    else:
        x_len = int.from_bytes(protected[:2], "big")
        x = protected[2 : 2 + x_len]
        y = protected[4 + x_len :]
        size = (ek_key.curve.key_size + 7) // 8
        eph = ec.EllipticCurvePublicKey.from_encoded_point(
            ek_key.curve, b"\x04" + x.rjust(size, b"\0") + y.rjust(size, b"\0")
        )
        z = ek_key.exchange(ec.ECDH(), eph)
        ek_x = ek_key.public_key().public_numbers().x.to_bytes(size, "big")
        seed = kdfe(name_alg, z, b"IDENTITY", x.rjust(size, b"\0"), ek_x, h.digest_size * 8)
    integrity, enc_identity = parse_tpm2b_id_object(credential.id_object)
    hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", h.digest_size * 8)
    mac = crypto_hmac.HMAC(hmac_key, hash_algorithm(name_alg))
    mac.update(enc_identity + ak_name)
    if mac.finalize() != integrity:
        raise ActivationError("integrity check failed")
    bits = ek_public.parameters.symmetric.key_bits
    sym_key = kdfa(name_alg, seed, b"STORAGE", ak_name, b"", bits)
    decryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).decryptor()
    plain = decryptor.update(enc_identity) + decryptor.finalize()
    return parse_tpm2b(plain)


# ---------------------------------------------------------------------------------------
# KDFa / KDFe
# ---------------------------------------------------------------------------------------

# Self-test vector of the TCG reference implementation (libtpms KdfTestData.h): a 20-byte
# key, label "KDFSELFTESTLABEL", two 8-byte contexts, 160 output bits, one result per hash.
KDF_KEY = bytes.fromhex("271fa08bbdc5060ec3dfa928ff9b73123a12da0c")
KDF_U = bytes.fromhex("ce244f395dca7391")
KDF_V = bytes.fromhex("da504031ddf12e83")


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        (TpmAlgId.SHA1, "55b5a7184aa07423c47dae766c26a2377d7cf851"),
        (TpmAlgId.SHA256, "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4"),
        (TpmAlgId.SHA384, "1dce70c9113eb2dba47bd9cfc72bf46f45b09312"),
        (TpmAlgId.SHA512, "8be2c1b85b78569b9fa759f5857c56d684810fd3"),
    ],
)
def test_kdfa_reference_vector(alg: TpmAlgId, expected: str) -> None:
    out = kdfa(alg, KDF_KEY, b"KDFSELFTESTLABEL", KDF_U, KDF_V, 160)
    assert out.hex() == expected


@pytest.mark.parametrize("bits", [8, 128, 256, 264, 1024])
@pytest.mark.parametrize("alg", [TpmAlgId.SHA1, TpmAlgId.SHA256, TpmAlgId.SHA384])
def test_kdfa_matches_sp800_108(alg: TpmAlgId, bits: int) -> None:
    expected = KBKDFHMAC(
        algorithm=hash_algorithm(alg),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=b"STORAGE",
        context=AK_NAME + b"ctx",
        fixed=None,
    ).derive(b"seed" * 8)
    assert kdfa(alg, b"seed" * 8, b"STORAGE", AK_NAME, b"ctx", bits) == expected


@pytest.mark.parametrize("bits", [8, 256, 264, 1024])
@pytest.mark.parametrize("alg", [TpmAlgId.SHA256, TpmAlgId.SHA512])
def test_kdfe_matches_sp800_56a(alg: TpmAlgId, bits: int) -> None:
    expected = ConcatKDFHash(
        algorithm=hash_algorithm(alg), length=bits // 8, otherinfo=b"IDENTITY\0" + b"U" + b"VV"
    ).derive(b"z" * 32)
    assert kdfe(alg, b"z" * 32, b"IDENTITY", b"U", b"VV", bits) == expected


@pytest.mark.parametrize("bits", [0, -8, 7, 12, 0x10000 * 8])
def test_kdf_bits_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        kdfa(TpmAlgId.SHA256, b"k", b"L", b"", b"", bits)
    with pytest.raises(ValueError, match="multiple of 8"):
        kdfe(TpmAlgId.SHA256, b"k", b"L", b"", b"", bits)


def test_kdf_unknown_hash() -> None:
    with pytest.raises(EvidenceFormatError):
        kdfa(TpmAlgId.SM3_256, b"k", b"L", b"", b"", 8)


# ---------------------------------------------------------------------------------------
# MakeCredential
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "ek"),
    [(EK_RSA_KEY, EK_RSA), (EK_P256_KEY, EK_P256)],
    ids=["rsa", "ecc-p256"],
)
def test_make_and_activate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, ek: TpmtPublic
) -> None:
    check_ek_public(ek)
    cred = make_credential(ek_public=ek, ak_name=AK_NAME, secret=SECRET)
    assert activate_credential(key, ek, AK_NAME, cred) == SECRET
    integrity, enc_identity = parse_tpm2b_id_object(cred.id_object)
    assert len(integrity) == 32
    assert len(enc_identity) == 2 + len(SECRET)
    protected = parse_tpm2b(cred.encrypted_secret)
    assert len(protected) == (256 if ek is EK_RSA else 2 + 32 + 2 + 32)


@pytest.mark.parametrize(
    ("bits", "name_alg", "curve"),
    [
        (256, TpmAlgId.SHA384, ec.SECP384R1()),
        (192, TpmAlgId.SHA256, ec.SECP521R1()),
    ],
)
def test_make_and_activate_other_sizes(
    bits: int, name_alg: TpmAlgId, curve: ec.EllipticCurve
) -> None:
    sym = TpmtSymDefObject(algorithm=TpmAlgId.AES, key_bits=bits, mode=TpmAlgId.CFB)
    for key in (EK_RSA_KEY, ec.generate_private_key(curve)):
        ek = ek_public_for(key, symmetric=sym, name_alg=name_alg)
        secret = bytes(range(hash_algorithm(name_alg).digest_size))
        cred = make_credential(ek_public=ek, ak_name=AK_NAME, secret=secret)
        assert activate_credential(key, ek, AK_NAME, cred) == secret


def test_short_secret_and_fixed_seed() -> None:
    seeds: list[int] = []

    def rng(n: int) -> bytes:
        seeds.append(n)
        return b"\x42" * n

    cred = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=b"s", rng=rng)
    assert seeds == [32]
    assert activate_credential(EK_RSA_KEY, EK_RSA, AK_NAME, cred) == b"s"
    # With a fixed seed everything but the OAEP-randomised secret is deterministic.
    again = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=b"s", rng=rng)
    assert again.id_object == cred.id_object
    assert again.encrypted_secret != cred.encrypted_secret


def test_activation_with_another_ak_name_fails() -> None:
    cred = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=SECRET)
    other = b"\x00\x0b" + hashlib.sha256(b"other AK").digest()
    with pytest.raises(ActivationError):
        activate_credential(EK_RSA_KEY, EK_RSA, other, cred)


def test_activation_with_another_ek_fails() -> None:
    cred = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=SECRET)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError, match="Decryption failed"):
        activate_credential(other, ek_public_for(other), AK_NAME, cred)


def test_tampered_id_object_fails() -> None:
    cred = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=SECRET)
    tampered = bytearray(cred.id_object)
    tampered[-1] ^= 1
    with pytest.raises(ActivationError):
        activate_credential(
            EK_RSA_KEY, EK_RSA, AK_NAME, dataclasses.replace(cred, id_object=bytes(tampered))
        )


@pytest.mark.parametrize(
    ("ek", "secret", "ak_name", "match"),
    [
        (EK_RSA, b"", AK_NAME, "secret"),
        (EK_RSA, bytes(33), AK_NAME, "secret"),
        (EK_RSA, SECRET, b"\x00\x0b", "ak_name"),
        (
            dataclasses.replace(EK_RSA, parameters=TpmsRsaParms(key_bits=2048)),
            SECRET,
            AK_NAME,
            "AES-CFB",
        ),
        (
            dataclasses.replace(
                EK_RSA,
                parameters=TpmsRsaParms(
                    symmetric=TpmtSymDefObject(
                        algorithm=TpmAlgId.AES, key_bits=128, mode=TpmAlgId.CBC
                    ),
                    key_bits=2048,
                ),
            ),
            SECRET,
            AK_NAME,
            "AES-CFB",
        ),
        (
            dataclasses.replace(
                EK_RSA,
                parameters=TpmsRsaParms(
                    symmetric=TpmtSymDefObject(
                        algorithm=TpmAlgId.AES, key_bits=100, mode=TpmAlgId.CFB
                    ),
                    key_bits=2048,
                ),
            ),
            SECRET,
            AK_NAME,
            "key size",
        ),
    ],
)
def test_make_credential_refuses(ek: TpmtPublic, secret: bytes, ak_name: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_credential(ek_public=ek, ak_name=ak_name, secret=secret)


def test_make_credential_refuses_template_without_key() -> None:
    with pytest.raises(EvidenceFormatError):
        make_credential(ek_public=EK_TEMPLATE_RSA2048, ak_name=AK_NAME, secret=SECRET)
    zero_point = dataclasses.replace(EK_P256, unique=TpmsEccPoint(x=bytes(32), y=bytes(32)))
    with pytest.raises(EvidenceFormatError):
        make_credential(ek_public=zero_point, ak_name=AK_NAME, secret=SECRET)


def test_verify_activated_secret() -> None:
    verify_activated_secret(expected=SECRET, returned=SECRET)
    with pytest.raises(BindingMismatch) as info:
        verify_activated_secret(expected=SECRET, returned=SECRET[:-1] + bytes([SECRET[-1] ^ 0xFF]))
    assert info.value.claim == "tpm.ak.activation"


# ---------------------------------------------------------------------------------------
# tpm2-tools file format and cross-check
# ---------------------------------------------------------------------------------------


def tr(parser: Callable[[bytes], T], data: bytes) -> T:
    value = parser(data)
    for cut in range(len(data)):
        with pytest.raises(EvidenceFormatError):
            parser(data[:cut])
    with pytest.raises(EvidenceFormatError, match="trailing"):
        parser(data + b"\x00")
    return value


def test_tpm2_tools_file_roundtrip() -> None:
    cred = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=SECRET)
    blob = cred.to_tpm2_tools_file()
    assert blob[:8] == bytes.fromhex("badcc0de00000001")
    assert blob[8:] == cred.id_object + cred.encrypted_secret
    assert tr(parse_tpm2_tools_credential, blob) == cred


def test_id_object_too_short() -> None:
    with pytest.raises(EvidenceFormatError, match="truncated integrityHMAC"):
        parse_tpm2b_id_object(b"\x00\x01\x00")


def test_id_object_parse() -> None:
    cred = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=SECRET)
    integrity, enc = tr(parse_tpm2b_id_object, cred.id_object)
    assert cred.id_object == tpm2b(tpm2b(integrity) + enc)


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (struct.pack(">II", 0xBADCC0DF, 1), "magic"),
        (struct.pack(">II", TPM2_TOOLS_CREDENTIAL_MAGIC, 2), "version"),
        (
            struct.pack(">II", TPM2_TOOLS_CREDENTIAL_MAGIC, 1)
            + tpm2b(tpm2b(bytes(32)))
            + tpm2b(b"x"),
            "integrityHMAC",
        ),
        (
            struct.pack(">II", TPM2_TOOLS_CREDENTIAL_MAGIC, 1)
            + tpm2b(tpm2b(bytes(65)) + b"e")
            + tpm2b(b"x"),
            "integrityHMAC",
        ),
        (
            struct.pack(">II", TPM2_TOOLS_CREDENTIAL_MAGIC, 1)
            + tpm2b(tpm2b(b"") + b"e")
            + tpm2b(b"x"),
            "integrityHMAC",
        ),
        (
            struct.pack(">II", TPM2_TOOLS_CREDENTIAL_MAGIC, 1)
            + tpm2b(tpm2b(bytes(32)) + b"e")
            + tpm2b(b""),
            "empty encrypted secret",
        ),
    ],
)
def test_tpm2_tools_file_bad(blob: bytes, match: str) -> None:
    with pytest.raises(EvidenceFormatError, match=match):
        parse_tpm2_tools_credential(blob)


TPM2_MAKECREDENTIAL = shutil.which("tpm2_makecredential")


@pytest.mark.skipif(TPM2_MAKECREDENTIAL is None, reason="tpm2-tools is not installed")
@pytest.mark.parametrize("secret", [SECRET, b"0123456789abcdef", b"x"])
def test_tpm2_tools_credential_activates(secret: bytes) -> None:
    """tpm2_makecredential's output unwraps with our ActivateCredential, like ours does."""
    assert TPM2_MAKECREDENTIAL is not None
    # A private temporary directory rather than tmp_path: pytest runs started concurrently
    # by the same user prune each other's basetemp directories.
    with tempfile.TemporaryDirectory() as tmp:
        _tpm2_tools_roundtrip(TPM2_MAKECREDENTIAL, Path(tmp), secret)


def _tpm2_tools_roundtrip(tool: str, tmp_path: Path, secret: bytes) -> None:
    (tmp_path / "ek.pub").write_bytes(EK_RSA.to_tpm2b())
    (tmp_path / "secret").write_bytes(secret)
    out = tmp_path / "cred"
    subprocess.run(  # noqa: S603 - fixed argument list, no shell
        [
            tool,
            "-T",
            "none",
            "-u",
            str(tmp_path / "ek.pub"),
            "-s",
            str(tmp_path / "secret"),
            "-n",
            AK_NAME.hex(),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    theirs = parse_tpm2_tools_credential(out.read_bytes())
    assert theirs.to_tpm2_tools_file() == out.read_bytes()
    assert activate_credential(EK_RSA_KEY, EK_RSA, AK_NAME, theirs) == secret
    ours = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=secret)
    assert activate_credential(EK_RSA_KEY, EK_RSA, AK_NAME, ours) == secret
    # Same layout: identical sizes of every part.
    assert len(ours.id_object) == len(theirs.id_object)
    assert len(ours.encrypted_secret) == len(theirs.encrypted_secret)
    with pytest.raises(ActivationError):
        activate_credential(EK_RSA_KEY, EK_RSA, AK_NAME[:-1] + bytes([AK_NAME[-1] ^ 0xFF]), theirs)


# ---------------------------------------------------------------------------------------
# Value semantics and fuzzing
# ---------------------------------------------------------------------------------------


def test_credential_value_semantics() -> None:
    a = Credential(id_object=b"\x00\x01a", encrypted_secret=b"\x00\x01b")
    b = Credential(id_object=b"\x00\x01a", encrypted_secret=b"\x00\x01b")
    c = Credential(id_object=b"\x00\x01a", encrypted_secret=b"\x00\x01c")
    assert a == b
    assert not a != b  # noqa: SIM202
    assert hash(a) == hash(b)
    assert a != c
    assert a != object()
    assert repr(a) == "Credential(id_object=b'\\x00\\x01a', encrypted_secret=b'\\x00\\x01b')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.id_object = b""  # type: ignore[misc]


def _octets(max_size: int) -> st.SearchStrategy[bytes]:
    # Built from ints: st.binary trips BytesWarning inside hypothesis under python -bb.
    return st.lists(st.integers(0, 255), max_size=max_size).map(bytes)


FUZZ_FILE = make_credential(ek_public=EK_RSA, ak_name=AK_NAME, secret=SECRET).to_tpm2_tools_file()


@st.composite
def _mutated_file(draw: st.DrawFn) -> bytes:
    data = bytearray(FUZZ_FILE)
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, 12))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@pytest.mark.parametrize("parser", [parse_tpm2_tools_credential, parse_tpm2b_id_object])
@settings(max_examples=200, deadline=None)
@given(data=st.one_of(_octets(80), _mutated_file()))
def test_fuzz_parsers(parser: Callable[[bytes], object], data: bytes) -> None:
    try:
        parser(data)
    except RatlsError:
        return


@pytest.mark.swtpm
@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed")
def test_swtpm_activates_our_credential() -> None:
    """A real TPM (swtpm) releases our credential for its AK, and only for it."""
    from ratls._tpm_device import TpmCommandError
    from ratls.sim._swtpm import Swtpm, activate_credential, manufacture_vtpm

    with Swtpm() as tpm:
        identity = manufacture_vtpm(tpm)
        ek = identity.ek()
        check_ek_public(ek)
        cred = make_credential(ek_public=ek, ak_name=identity.ak_name, secret=SECRET)
        returned = activate_credential(tpm, identity, cred.id_object, cred.encrypted_secret)
        verify_activated_secret(expected=SECRET, returned=returned)
        wrong = make_credential(ek_public=ek, ak_name=AK_NAME, secret=SECRET)
        with pytest.raises(TpmCommandError):
            activate_credential(tpm, identity, wrong.id_object, wrong.encrypted_secret)
