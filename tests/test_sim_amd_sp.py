"""Tests for the simulated AMD-SP, and the chain verifier against every way a chain can be wrong."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from ratls._amd_certs import (
    AMD_KDS_CRL_URL,
    AmdOID,
    AmdTrustAnchors,
    KeyKind,
    _der_items,
    _der_read,
    amd_certificate_serial,
    amd_pss_algorithm_identifier,
    der_integer,
    der_oid,
    der_sequence,
    der_tlv,
    is_simulated_root,
    load_amd_certificate,
    parse_amd_key_extensions,
    verify_amd_chain,
    verify_report_signature,
)
from ratls._errors import CertificateChainError, EvidenceFormatError, SignatureMismatch
from ratls._snp_certtable import (
    CERT_TABLE_GUID_ARK,
    CERT_TABLE_GUID_ASK,
    CERT_TABLE_GUID_VCEK,
    CERT_TABLE_GUID_VLEK,
    parse_cert_table,
)
from ratls._snp_report import (
    GuestPolicy,
    ProductLine,
    SignerInfo,
    SigningKey,
    TcbLayout,
    TcbVersion,
    parse_snp_report,
)
from ratls._steps import run_inline
from ratls.sim import SIMULATOR_MARK, SimulatedAmdSp, simulated_amd_sp

CERTS = Path(__file__).resolve().parent.parent / "certs" / "amd"
MILAN = ProductLine.MILAN
NOW = datetime.now(UTC)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"
_OID_SHA384 = "2.16.840.1.101.3.4.2.2"
_OID_MGF1 = "1.2.840.113549.1.1.8"
_OID_PSS = "1.2.840.113549.1.1.10"


def _verify(
    sp: SimulatedAmdSp,
    *,
    leaf: x509.Certificate | None = None,
    intermediate: x509.Certificate | None = None,
    root: x509.Certificate | None = None,
    product: ProductLine | None = None,
    key_kind: KeyKind | None = None,
    anchors: AmdTrustAnchors | None = None,
    at: datetime = NOW,
) -> object:
    return verify_amd_chain(
        leaf=leaf or sp.leaf,
        intermediate=intermediate or sp.ask,
        root=root or sp.ark,
        product=product or sp.product,
        key_kind=key_kind or sp.key_kind,
        anchors=anchors or sp.anchors(),
        at=at,
    )


def _chain_error(sp: SimulatedAmdSp, **kwargs: object) -> CertificateChainError:
    with pytest.raises(CertificateChainError) as info:
        _verify(sp, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- building tampered certificates -----------------------------------------------------------


def _hash_alg(oid: str) -> bytes:
    return der_sequence(der_oid(oid), der_tlv(0x05, b""))


def _pss_alg(
    *,
    hash_oid: str = _OID_SHA384,
    mgf_hash: str = _OID_SHA384,
    salt: int = 48,
    trailer: int | None = 1,
) -> bytes:
    params = [
        der_tlv(0xA0, _hash_alg(hash_oid)),
        der_tlv(0xA1, der_sequence(der_oid(_OID_MGF1), _hash_alg(mgf_hash))),
        der_tlv(0xA2, der_integer(salt)),
    ]
    if trailer is not None:
        params.append(der_tlv(0xA3, der_integer(trailer)))
    return der_sequence(der_oid(_OID_PSS), der_sequence(*params))


def _resign(
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    *,
    algorithm: bytes | None = None,
    outer_algorithm: bytes | None = None,
    pad: padding.AsymmetricPadding = _PSS,
    digest: hashes.HashAlgorithm | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    """Re-encode ``cert`` with the given AlgorithmIdentifier(s) and sign it with ``key``."""
    _, contents, _ = _der_read(cert.tbs_certificate_bytes, 0, "t")
    items = [whole for _, _, whole in _der_items(contents, "t")]
    if serial is not None:
        items[1] = der_integer(serial)
    inner = algorithm or amd_pss_algorithm_identifier()
    items[2] = inner
    tbs = der_sequence(*items)
    signature = key.sign(tbs, pad, digest or hashes.SHA384())
    der = der_sequence(tbs, outer_algorithm or inner, der_tlv(0x03, b"\x00" + signature))
    return load_amd_certificate(der)


def _ask_key(sp: SimulatedAmdSp) -> rsa.RSAPrivateKey:
    return sp._ask_key  # the test needs the simulator's signing key to forge variants


def _ark_key(sp: SimulatedAmdSp) -> rsa.RSAPrivateKey:
    return sp._ark_key


def _leaf_extensions(sp: SimulatedAmdSp) -> list[tuple[x509.ObjectIdentifier, bytes]]:
    out = []
    for extension in sp.leaf.extensions:
        assert isinstance(extension.value, x509.UnrecognizedExtension)
        out.append((extension.oid, extension.value.value))
    return out


def _issue_leaf(
    sp: SimulatedAmdSp,
    *,
    extensions: list[tuple[x509.ObjectIdentifier, bytes]] | None = None,
    replace: dict[x509.ObjectIdentifier, bytes | None] | None = None,
    cn: str | None = None,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    issuer: x509.Name | None = None,
    extra: list[tuple[x509.ExtensionType, bool]] | None = None,
    signer: rsa.RSAPrivateKey | None = None,
    algorithm: bytes | None = None,
    pad: padding.AsymmetricPadding = _PSS,
    digest: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    """A VCEK/VLEK like the simulator's, with the given changes, signed by its ASK key."""
    exts = extensions if extensions is not None else _leaf_extensions(sp)
    for oid, value in (replace or {}).items():
        exts = [(o, v) for o, v in exts if o != oid]
        if value is not None:
            exts.append((oid, value))
    subject = sp.leaf.subject
    if cn is not None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    public_key = (key or ec.generate_private_key(ec.SECP384R1())).public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or sp.ask.subject)
        .public_key(public_key)
        .serial_number(1)
        .not_valid_before(sp.leaf.not_valid_before_utc)
        .not_valid_after(sp.leaf.not_valid_after_utc)
    )
    for oid, value in exts:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    for ext, critical in extra or []:
        builder = builder.add_extension(ext, critical=critical)
    signer = signer or _ask_key(sp)
    built = builder.sign(signer, hashes.SHA384(), rsa_padding=_PSS)
    return _resign(built, signer, algorithm=algorithm, pad=pad, digest=digest, serial=0)


def _issue_ask(
    sp: SimulatedAmdSp,
    *,
    ca: bool = True,
    crl_url: str | None = None,
    key: rsa.RSAPrivateKey | None = None,
    subject: x509.Name | None = None,
    key_cert_sign: bool = True,
) -> x509.Certificate:
    """An ASK like the simulator's (same subject and, by default, key) with changes."""
    url = crl_url or AMD_KDS_CRL_URL.format(family="vcek", product=sp.product.value)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or sp.ask.subject)
        .issuer_name(sp.ark.subject)
        .public_key((key or _ask_key(sp)).public_key())
        .serial_number(5)
        .not_valid_before(sp.ask.not_valid_before_utc)
        .not_valid_after(sp.ask.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=not key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
            ),
            critical=False,
        )
    )
    return _resign(builder.sign(_ark_key(sp), hashes.SHA384(), rsa_padding=_PSS), _ark_key(sp))


# --- chains that verify -----------------------------------------------------------------------


@pytest.mark.parametrize("key_kind", list(KeyKind))
@pytest.mark.parametrize("product", list(ProductLine))
def test_chain_verifies_with_simulator_anchors(product: ProductLine, key_kind: KeyKind) -> None:
    sp = simulated_amd_sp(product, key_kind)
    chain = verify_amd_chain(
        leaf=sp.leaf,
        intermediate=sp.ask,
        root=sp.ark,
        product=product,
        key_kind=key_kind,
        anchors=sp.anchors(),
        at=NOW,
    )
    assert chain.anchor_label == "simulator"
    assert chain.anchor_simulated is True
    assert chain.root_spki_sha256 == sp.ark_spki_sha256
    assert chain.product is product
    assert chain.key_kind is key_kind
    assert chain.leaf_public_key == sp.leaf_public_key
    assert chain.extensions.components(product) == sp.reported_tcb.components()
    if key_kind is KeyKind.VCEK:
        width = 8 if product is ProductLine.TURIN else 64
        assert chain.extensions.hw_id == sp.chip_id[:width]
        assert chain.extensions.csp_id is None
    else:
        assert chain.extensions.hw_id is None
        assert chain.extensions.csp_id == sp.csp_id


@pytest.mark.parametrize("product", list(ProductLine))
def test_simulated_certificates_follow_amds_profile(product: ProductLine) -> None:
    sp = simulated_amd_sp(product)
    assert amd_certificate_serial(sp.leaf) == 0
    for cert in (sp.ark, sp.ask, sp.leaf):
        assert amd_pss_algorithm_identifier() in cert.public_bytes(serialization.Encoding.DER)
        marks = cert.subject.get_attributes_for_oid(x509.ObjectIdentifier("2.5.4.13"))
        assert [m.value for m in marks] == [SIMULATOR_MARK]
    ext = parse_amd_key_extensions(sp.leaf)
    assert ext.struct_version == (1 if product is ProductLine.TURIN else 0)
    assert ext.product_name == product.value
    assert (ext.fmc_spl is not None) is (product is ProductLine.TURIN)


def test_milan_ucode_spl_uses_the_two_byte_encoding() -> None:
    sp = simulated_amd_sp(MILAN)
    ucode = sp.leaf.extensions.get_extension_for_oid(AmdOID.UCODE_SPL).value
    assert isinstance(ucode, x509.UnrecognizedExtension)
    assert sp.reported_tcb.microcode >= 128
    assert ucode.value == bytes([0x02, 0x02, 0x00, sp.reported_tcb.microcode])


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_accepts_the_simulated_chain(tmp_path: Path) -> None:
    sp = simulated_amd_sp(MILAN)
    for name, cert in (("ark", sp.ark), ("ask", sp.ask), ("leaf", sp.leaf)):
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    openssl = shutil.which("openssl")
    assert openssl is not None
    result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [
            openssl,
            "verify",
            "-CAfile",
            str(tmp_path / "ark.pem"),
            "-untrusted",
            str(tmp_path / "ask.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_native_cryptography_pss_encoding_without_trailer_field_is_accepted() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, algorithm=_pss_alg(trailer=None))
    _verify(sp, leaf=leaf)


def test_stepping_suffix_is_accepted_on_milan() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, replace={AmdOID.PRODUCT_NAME: der_tlv(0x16, b"Milan-B0")})
    _verify(sp, leaf=leaf)


# --- trust --------------------------------------------------------------------------------------


def test_default_anchors_refuse_the_simulator_root() -> None:
    sp = simulated_amd_sp(MILAN)
    error = _chain_error(sp, anchors=AmdTrustAnchors.default())
    assert error.claim == "amd.ark.spki_sha256"
    assert error.actual == sp.ark_spki_sha256
    assert "ARK" in str(error)


@pytest.mark.parametrize("product", list(ProductLine))
def test_simulator_roots_are_recognised_and_can_be_trusted(product: ProductLine) -> None:
    sp = simulated_amd_sp(product)
    assert is_simulated_root(sp.ark)
    anchors = AmdTrustAnchors.default().with_simulator_root(sp.ark)
    assert anchors == sp.anchors()
    chain = _verify(sp, anchors=anchors)
    assert chain.anchor_label == "simulator"  # type: ignore[attr-defined]


@pytest.mark.parametrize("product", list(ProductLine))
def test_amd_roots_are_not_simulator_roots(product: ProductLine) -> None:
    ark = load_amd_certificate((CERTS / product.value.lower() / "ark.pem").read_bytes())
    assert not is_simulated_root(ark)
    with pytest.raises(CertificateChainError) as info:
        AmdTrustAnchors.default().with_simulator_root(ark)
    assert info.value.claim == "amd.ark.simulator_mark"


def test_simulator_root_with_an_unknown_product_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    # A marked certificate whose CN names no ARK (the simulated ASK) cannot become a root.
    assert is_simulated_root(sp.ask)
    with pytest.raises(CertificateChainError) as info:
        AmdTrustAnchors.default().with_simulator_root(sp.ask)
    assert info.value.claim == "amd.ark.common_name"


def test_simulator_root_is_trusted_only_for_its_product() -> None:
    milan = simulated_amd_sp(MILAN)
    assert _chain_error(milan, product=ProductLine.GENOA).claim == "amd.ark.spki_sha256"


def test_root_of_another_product_is_refused_even_if_trusted() -> None:
    genoa = simulated_amd_sp(ProductLine.GENOA)
    anchors = genoa.anchors().with_extra(MILAN, genoa.ark_spki_sha256, label="confused")
    error = _chain_error(genoa, product=MILAN, anchors=anchors)
    assert error.claim == "amd.ark.common_name"
    assert error.expected == "ARK-Milan"


def test_swapped_ask_and_ark_are_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    assert _chain_error(sp, root=sp.ask, intermediate=sp.ark).claim == "amd.ark.spki_sha256"
    # Even a verifier that (wrongly) trusted the ASK's key would not accept the swap.
    from ratls._amd_certs import spki_sha256

    anchors = sp.anchors().with_extra(MILAN, spki_sha256(sp.ask), label="ask")
    assert (
        _chain_error(sp, root=sp.ask, intermediate=sp.ark, anchors=anchors).claim
        == "amd.ark.common_name"
    )


# --- key kinds ------------------------------------------------------------------------------------


def test_vlek_leaf_on_the_vcek_path_is_refused() -> None:
    vcek = simulated_amd_sp(MILAN)
    vlek = simulated_amd_sp(MILAN, KeyKind.VLEK)
    error = _chain_error(vcek, leaf=vlek.leaf)
    assert error.claim == "amd.vcek.common_name"
    assert error.actual == "SEV-VLEK"


def test_vlek_chain_verified_as_vcek_is_refused() -> None:
    vlek = simulated_amd_sp(MILAN, KeyKind.VLEK)
    error = _chain_error(vlek, key_kind=KeyKind.VCEK)
    assert error.claim == "amd.ask.common_name"
    assert error.actual == "SEV-VLEK-Milan"


def test_vcek_chain_verified_as_vlek_is_refused() -> None:
    vcek = simulated_amd_sp(MILAN)
    assert _chain_error(vcek, key_kind=KeyKind.VLEK).claim == "amd.asvk.common_name"


def test_vcek_named_leaf_under_the_asvk_is_refused() -> None:
    vlek = simulated_amd_sp(MILAN, KeyKind.VLEK)
    leaf = _issue_leaf(vlek, replace={AmdOID.HW_ID: bytes(64), AmdOID.CSP_ID: None})
    error = _chain_error(vlek, leaf=leaf)
    assert error.claim == "amd.vlek.csp_id"


def test_vlek_with_hw_id_is_refused() -> None:
    vlek = simulated_amd_sp(MILAN, KeyKind.VLEK)
    leaf = _issue_leaf(vlek, replace={AmdOID.HW_ID: bytes(64)})
    assert _chain_error(vlek, leaf=leaf).claim == "amd.vlek.hw_id"


def test_vcek_with_csp_id_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, replace={AmdOID.CSP_ID: der_tlv(0x16, b"CN=cloud")})
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.csp_id"


# --- validity -----------------------------------------------------------------------------------


def test_expired_leaf_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    error = _chain_error(sp, at=sp.leaf.not_valid_after_utc + timedelta(seconds=1))
    assert error.claim == "amd.vcek.validity"
    assert error.detail == "expired"


def test_vlek_expires_after_a_year() -> None:
    sp = simulated_amd_sp(MILAN, KeyKind.VLEK)
    assert _chain_error(sp, at=NOW + timedelta(days=400)).claim == "amd.vlek.validity"
    _verify(sp, at=NOW + timedelta(days=300))


def test_not_yet_valid_chain_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    error = _chain_error(sp, at=sp.ark.not_valid_before_utc - timedelta(seconds=1))
    assert error.claim == "amd.ark.validity"
    assert error.detail == "not yet valid"


def test_validity_boundaries_are_inclusive() -> None:
    sp = simulated_amd_sp(MILAN)
    _verify(sp, at=sp.leaf.not_valid_before_utc)
    _verify(sp, at=sp.leaf.not_valid_after_utc)


def test_naive_time_is_a_programming_error() -> None:
    sp = simulated_amd_sp(MILAN)
    with pytest.raises(ValueError, match="timezone-aware"):
        _verify(sp, at=datetime(2030, 1, 1))  # a naive datetime, on purpose


# --- signature algorithm and signature ------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "pad", "digest"),
    [
        (
            _pss_alg(salt=32),
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=32),
            hashes.SHA384(),
        ),
        (
            _pss_alg(hash_oid=_OID_SHA256, mgf_hash=_OID_SHA256, salt=32),
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        ),
        (
            _pss_alg(mgf_hash=_OID_SHA256),
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=48),
            hashes.SHA384(),
        ),
        (_pss_alg(trailer=2), _PSS, hashes.SHA384()),
        (
            der_sequence(der_oid("1.2.840.113549.1.1.12"), der_tlv(0x05, b"")),
            padding.PKCS1v15(),
            hashes.SHA384(),
        ),
    ],
    ids=["salt-32", "sha256", "mgf1-sha256", "trailer-2", "pkcs1v15"],
)
def test_other_signature_algorithms_are_refused(
    algorithm: bytes, pad: padding.AsymmetricPadding, digest: hashes.HashAlgorithm
) -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, algorithm=algorithm, pad=pad, digest=digest)
    error = _chain_error(sp, leaf=leaf)
    assert error.claim == "amd.vcek.signature_algorithm"


def test_pss_parameters_out_of_order_are_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    params = der_sequence(
        der_tlv(0xA1, der_sequence(der_oid(_OID_MGF1), _hash_alg(_OID_SHA384))),
        der_tlv(0xA0, _hash_alg(_OID_SHA384)),
        der_tlv(0xA2, der_integer(48)),
    )
    # cryptography itself refuses such parameters, so the certificate does not even load
    # (and the failure is not blamed on the leaf's serial number 0).
    with pytest.raises(EvidenceFormatError, match="not a certificate"):
        _issue_leaf(sp, algorithm=der_sequence(der_oid(_OID_PSS), params))


def test_pss_without_parameters_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    algorithm = der_sequence(der_oid(_OID_PSS), der_sequence())  # all defaults: SHA-1, salt 20
    leaf = _issue_leaf(
        sp,
        algorithm=algorithm,
        pad=padding.PSS(mgf=padding.MGF1(hashes.SHA1()), salt_length=20),  # noqa: S303
        digest=hashes.SHA1(),  # noqa: S303 - the defaults a bare PSS identifier implies
    )
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.signature_algorithm"


def test_inner_and_outer_algorithms_must_agree() -> None:
    sp = simulated_amd_sp(MILAN)
    built = _issue_leaf(sp)
    leaf = _resign(built, _ask_key(sp), outer_algorithm=_pss_alg(trailer=None))
    error = _chain_error(sp, leaf=leaf)
    assert error.claim == "amd.vcek.signature_algorithm"
    assert error.actual == "they differ"


def test_corrupted_signature_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    der = bytearray(sp.leaf.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    error = _chain_error(sp, leaf=load_amd_certificate(bytes(der)))
    assert error.claim == "amd.vcek.signature"
    assert isinstance(error.__cause__, InvalidSignature)


def test_leaf_signed_by_another_ask_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    other = simulated_amd_sp(MILAN, KeyKind.VLEK)
    leaf = _issue_leaf(sp, signer=_ask_key(other))
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.signature"


def test_leaf_with_another_issuer_name_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, issuer=sp.ark.subject)
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.issuer"


# --- leaf key and extensions ----------------------------------------------------------------------


def test_non_p384_leaf_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, key=ec.generate_private_key(ec.SECP256R1()))
    error = _chain_error(sp, leaf=leaf)
    assert error.claim == "amd.vcek.public_key"
    assert error.actual == "secp256r1"


def test_rsa_leaf_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.public_key"


def test_leaf_with_an_unknown_key_algorithm_is_a_format_error() -> None:
    sp = simulated_amd_sp(MILAN)
    _, tbs, _ = _der_read(sp.leaf.tbs_certificate_bytes, 0, "t")
    items = [whole for _, _, whole in _der_items(tbs, "t")]
    # TBSCertificate item 6 is subjectPublicKeyInfo: give it an algorithm nobody knows.
    items[6] = der_sequence(
        der_sequence(der_oid("1.3.6.1.4.1.99999.7")), der_tlv(0x03, b"\x00\x01")
    )
    tbs_der = der_sequence(*items)
    signature = _ask_key(sp).sign(tbs_der, _PSS, hashes.SHA384())
    algorithm = amd_pss_algorithm_identifier()
    leaf = load_amd_certificate(
        der_sequence(tbs_der, algorithm, der_tlv(0x03, b"\x00" + signature))
    )
    with pytest.raises(EvidenceFormatError, match="unusable public key"):
        _verify(sp, leaf=leaf)


def test_missing_hw_id_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, replace={AmdOID.HW_ID: None})
    error = _chain_error(sp, leaf=leaf)
    assert error.claim == "amd.vcek.hw_id"


def test_turin_sized_hw_id_on_milan_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, replace={AmdOID.HW_ID: bytes(8)})
    error = _chain_error(sp, leaf=leaf)
    assert error.claim == "amd.vcek.hw_id"
    assert error.actual == "8 bytes"


def test_milan_sized_hw_id_on_turin_is_refused() -> None:
    sp = simulated_amd_sp(ProductLine.TURIN)
    leaf = _issue_leaf(sp, replace={AmdOID.HW_ID: bytes(64)})
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.hw_id"


@pytest.mark.parametrize(
    ("oid", "value"),
    [
        (AmdOID.UCODE_SPL, "02020005"),  # non-minimal INTEGER
        (AmdOID.UCODE_SPL, "0201d1"),  # 209 without its leading zero byte: negative
        (AmdOID.BL_SPL, "02020100"),  # 256
        (AmdOID.SNP_SPL, "040114"),  # OCTET STRING
        (AmdOID.TEE_SPL, None),  # missing
    ],
)
def test_bad_spl_encodings_are_refused(oid: x509.ObjectIdentifier, value: str | None) -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, replace={oid: None if value is None else bytes.fromhex(value)})
    with pytest.raises(EvidenceFormatError):
        _verify(sp, leaf=leaf)


def test_product_name_of_another_product_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, replace={AmdOID.PRODUCT_NAME: der_tlv(0x16, b"Genoa")})
    error = _chain_error(sp, leaf=leaf)
    assert error.claim == "amd.vcek.product_name"
    assert error.actual == "Genoa"


def test_stepping_suffix_is_refused_on_turin() -> None:
    sp = simulated_amd_sp(ProductLine.TURIN)
    leaf = _issue_leaf(sp, replace={AmdOID.PRODUCT_NAME: der_tlv(0x16, b"Turin-B0")})
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.product_name"


def test_fmc_spl_on_milan_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, replace={AmdOID.FMC_SPL: der_integer(1)})
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.fmc_spl"


def test_turin_leaf_without_fmc_spl_is_refused() -> None:
    sp = simulated_amd_sp(ProductLine.TURIN)
    leaf = _issue_leaf(sp, replace={AmdOID.FMC_SPL: None})
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.fmc_spl"


def test_leaf_that_is_a_ca_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, extra=[(x509.BasicConstraints(ca=True, path_length=None), False)])
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.basic_constraints"


def test_unknown_critical_extension_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    critical = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = _issue_leaf(sp, extra=[(critical, True)])
    error = _chain_error(sp, leaf=leaf)
    assert error.claim == "amd.vcek.extensions"
    assert error.actual == "1.3.6.1.4.1.99999.1"


def test_leaf_with_wrong_common_name_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    leaf = _issue_leaf(sp, cn="VCEK")
    assert _chain_error(sp, leaf=leaf).claim == "amd.vcek.common_name"


# --- intermediate -------------------------------------------------------------------------------


def test_intermediate_that_is_not_a_ca_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    assert (
        _chain_error(sp, intermediate=_issue_ask(sp, ca=False)).claim == "amd.ask.basic_constraints"
    )


def test_intermediate_with_the_wrong_crl_point_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    url = AMD_KDS_CRL_URL.format(family="vlek", product="Milan")
    error = _chain_error(sp, intermediate=_issue_ask(sp, crl_url=url))
    assert error.claim == "amd.ask.crl_distribution_point"
    assert error.actual == url


def test_intermediate_with_a_small_rsa_key_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    error = _chain_error(sp, intermediate=_issue_ask(sp, key=small))
    assert error.claim == "amd.ask.public_key"
    assert error.actual == "RSA-2048"


def test_intermediate_of_another_product_is_refused() -> None:
    milan = simulated_amd_sp(MILAN)
    genoa = simulated_amd_sp(ProductLine.GENOA)
    assert _chain_error(milan, intermediate=genoa.ask).claim == "amd.ask.common_name"


def test_intermediate_outside_amds_organisation_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Not AMD"),
            x509.NameAttribute(NameOID.COMMON_NAME, "SEV-Milan"),
        ]
    )
    error = _chain_error(sp, intermediate=_issue_ask(sp, subject=subject))
    assert error.claim == "amd.ask.subject.O"
    assert error.actual == "Not AMD"


def test_intermediate_without_key_cert_sign_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    error = _chain_error(sp, intermediate=_issue_ask(sp, key_cert_sign=False))
    assert error.claim == "amd.ask.key_usage"


def test_root_with_a_broken_self_signature_is_refused() -> None:
    sp = simulated_amd_sp(MILAN)
    der = bytearray(sp.ark.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    error = _chain_error(sp, root=load_amd_certificate(bytes(der)))
    assert error.claim == "amd.ark.signature"


def test_duplicate_extension_is_a_format_error() -> None:
    sp = simulated_amd_sp(MILAN)
    _, tbs, _ = _der_read(sp.leaf.tbs_certificate_bytes, 0, "t")
    items = [whole for _, _, whole in _der_items(tbs, "t")]
    _, wrapped, _ = _der_read(items[-1], 0, "t")  # [3] { SEQUENCE OF Extension }
    _, seq, _ = _der_read(wrapped, 0, "t")
    extensions = [whole for _, _, whole in _der_items(seq, "t")]
    items[-1] = der_tlv(0xA3, der_sequence(*extensions, extensions[0]))
    tbs_der = der_sequence(*items)
    signature = _ask_key(sp).sign(tbs_der, _PSS, hashes.SHA384())
    algorithm = amd_pss_algorithm_identifier()
    leaf = load_amd_certificate(
        der_sequence(tbs_der, algorithm, der_tlv(0x03, b"\x00" + signature))
    )
    with pytest.raises(EvidenceFormatError, match="unreadable extensions"):
        parse_amd_key_extensions(leaf)
    with pytest.raises(EvidenceFormatError, match="unreadable extensions"):
        _verify(sp, leaf=leaf)


def test_regenerated_intermediate_verifies() -> None:
    # The tampering functions are sound: with no change, the re-issued ASK is accepted.
    sp = simulated_amd_sp(MILAN)
    _verify(sp, intermediate=_issue_ask(sp))


# --- reports ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 4, 5])
@pytest.mark.parametrize("product", list(ProductLine))
def test_build_report_defaults(product: ProductLine, version: int) -> None:
    sp = simulated_amd_sp(product)
    report = sp.build_report(report_data=b"\x07" * 64, version=version)
    assert parse_snp_report(report.to_bytes(), product=product) == report
    verify_report_signature(report, sp.leaf_public_key)
    assert report.report_data == b"\x07" * 64
    assert report.report_id_ma == b"\xff" * 32
    assert report.reported_tcb == report.current_tcb == report.committed_tcb == report.launch_tcb
    assert (report.current_major, report.current_minor, report.current_build) == (1, 55, 21)
    assert report.chip_id == sp.chip_id
    assert report.signer_info.signing_key is SigningKey.VCEK
    if version == 2:
        assert report.cpuid_fam_id is None
    else:
        assert report.product is product
    assert (report.launch_mit_vector is not None) is (version >= 5)


def test_build_report_fields_can_be_overridden() -> None:
    sp = simulated_amd_sp(MILAN)
    report = sp.build_report(
        report_data=bytes(64),
        vmpl=1,
        measurement=b"\x01" * 48,
        policy=GuestPolicy(debug=True),
        guest_svn=4,
    )
    assert (report.vmpl, report.guest_svn, report.measurement) == (1, 4, b"\x01" * 48)
    assert report.policy.debug is True
    with pytest.raises(ValueError, match="unknown report field"):
        sp.build_report(report_data=bytes(64), no_such_field=1)


def test_vlek_reports_name_the_vlek() -> None:
    sp = simulated_amd_sp(MILAN, KeyKind.VLEK)
    assert sp.build_report(report_data=bytes(64)).signer_info.signing_key is SigningKey.VLEK


def test_report_ids_are_random() -> None:
    sp = simulated_amd_sp(MILAN)
    assert (
        sp.build_report(report_data=bytes(64)).report_id
        != sp.build_report(report_data=bytes(64)).report_id
    )


def test_sign_report_refuses_the_wrong_signing_key_kind() -> None:
    sp = simulated_amd_sp(MILAN)
    report = sp.build_report(report_data=bytes(64))
    vlek_report = dataclasses.replace(report, signer_info=SignerInfo(signing_key=SigningKey.VLEK))
    with pytest.raises(ValueError, match="SIGNING_KEY=VLEK"):
        sp.sign_report(vlek_report)
    signed = sp.sign_report(vlek_report, allow_inconsistent=True)
    verify_report_signature(signed, sp.leaf_public_key)


def test_sign_report_refuses_another_reported_tcb() -> None:
    sp = simulated_amd_sp(MILAN)
    report = sp.build_report(report_data=bytes(64))
    other = dataclasses.replace(
        report, reported_tcb=TcbVersion(bootloader=0, tee=0, snp=0, microcode=0)
    )
    with pytest.raises(ValueError, match="REPORTED_TCB"):
        sp.sign_report(other)
    with pytest.raises(ValueError, match="REPORTED_TCB"):
        sp.build_report(report_data=bytes(64), reported_tcb=other.reported_tcb)


def test_sign_report_refuses_another_chip_id() -> None:
    sp = simulated_amd_sp(MILAN)
    with pytest.raises(ValueError, match="CHIP_ID"):
        sp.build_report(report_data=bytes(64), chip_id=b"\x01" * 64)
    masked = sp.build_report(
        report_data=bytes(64), chip_id=bytes(64), signer_info=SignerInfo(mask_chip_key=True)
    )
    assert masked.chip_id == bytes(64)
    with pytest.raises(ValueError, match="MASK_CHIP_KEY"):
        sp.build_report(report_data=bytes(64), signer_info=SignerInfo(mask_chip_key=True))


def test_sign_report_refuses_another_product() -> None:
    genoa_report = simulated_amd_sp(ProductLine.GENOA).build_report(report_data=bytes(64))
    with pytest.raises(ValueError, match="Genoa"):
        simulated_amd_sp(MILAN).sign_report(genoa_report)


# --- certificate table, identity, persistence -----------------------------------------------------


@pytest.mark.parametrize("key_kind", list(KeyKind))
def test_cert_table_carries_the_chain(key_kind: KeyKind) -> None:
    sp = simulated_amd_sp(MILAN, key_kind)
    table = parse_cert_table(sp.cert_table())
    der = serialization.Encoding.DER
    leaf_guid = CERT_TABLE_GUID_VCEK if key_kind is KeyKind.VCEK else CERT_TABLE_GUID_VLEK
    assert table.get(leaf_guid) == sp.leaf.public_bytes(der)
    assert table.get(CERT_TABLE_GUID_ASK) == sp.ask.public_bytes(der)
    assert table.get(CERT_TABLE_GUID_ARK) == sp.ark.public_bytes(der)


def test_chain_pem_lists_leaf_ask_ark() -> None:
    sp = simulated_amd_sp(MILAN)
    pem = sp.chain_pem()
    blocks = pem.split(b"-----END CERTIFICATE-----\n")[:-1]
    loaded = [load_amd_certificate(block + b"-----END CERTIFICATE-----\n") for block in blocks]
    assert loaded == [sp.leaf, sp.ask, sp.ark]


def test_simulators_of_one_product_share_the_ark_key() -> None:
    vcek = simulated_amd_sp(MILAN)
    vlek = simulated_amd_sp(MILAN, KeyKind.VLEK)
    assert vcek.ark_spki_sha256 == vlek.ark_spki_sha256
    assert vcek.ark_spki_sha256 != simulated_amd_sp(ProductLine.GENOA).ark_spki_sha256
    assert simulated_amd_sp(MILAN) is vcek


def test_repr_shows_no_key_material() -> None:
    sp = simulated_amd_sp(MILAN)
    text = repr(sp)
    assert "Milan" in text
    assert "VCEK" in text
    assert "PRIVATE" not in text
    assert str(_ask_key(sp).private_numbers().p) not in text


def test_generate_validates_arguments_before_generating_keys() -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        SimulatedAmdSp.generate(MILAN, chip_id=bytes(8))
    with pytest.raises(ValueError, match=r"bytes 8\.\.63"):
        SimulatedAmdSp.generate(ProductLine.TURIN, chip_id=b"\x01" * 64)
    turin_tcb = TcbVersion(bootloader=1, tee=0, snp=2, microcode=3, fmc=0, layout=TcbLayout.TURIN)
    with pytest.raises(ValueError, match="LEGACY layout"):
        SimulatedAmdSp.generate(MILAN, reported_tcb=turin_tcb)


def test_generate_with_given_identity() -> None:
    base = simulated_amd_sp(ProductLine.TURIN)
    tcb = TcbVersion(bootloader=2, tee=1, snp=3, microcode=200, fmc=1, layout=TcbLayout.TURIN)
    sp = SimulatedAmdSp.generate(
        ProductLine.TURIN,
        chip_id=b"\x11" * 8,
        reported_tcb=tcb,
        ark_key=_ark_key(base),
        ask_key=_ask_key(base),
    )
    assert sp.chip_id == b"\x11" * 8 + bytes(56)
    chain = _verify(sp)
    assert chain.extensions.hw_id == b"\x11" * 8  # type: ignore[attr-defined]
    assert chain.extensions.components(ProductLine.TURIN) == tcb.components()  # type: ignore[attr-defined]
    assert sp.ark_spki_sha256 == base.ark_spki_sha256


def test_save_and_load_keep_the_identity(tmp_path: Path) -> None:
    sp = simulated_amd_sp(MILAN, KeyKind.VLEK)
    sp.save(tmp_path / "machine")
    for name in ("ark", "ask", "leaf"):
        mode = stat.S_IMODE((tmp_path / "machine" / f"{name}.key").stat().st_mode)
        assert mode == 0o600
    loaded = SimulatedAmdSp.load(tmp_path / "machine")
    assert (loaded.product, loaded.key_kind, loaded.chip_id) == (
        sp.product,
        sp.key_kind,
        sp.chip_id,
    )
    assert loaded.reported_tcb == sp.reported_tcb
    assert loaded.csp_id == sp.csp_id
    assert (loaded.ark, loaded.ask, loaded.leaf) == (sp.ark, sp.ask, sp.leaf)
    report = loaded.build_report(report_data=bytes(64))
    verify_report_signature(report, sp.leaf_public_key)


def test_load_refuses_mismatched_files(tmp_path: Path) -> None:
    sp = simulated_amd_sp(MILAN)
    sp.save(tmp_path)
    (tmp_path / "leaf.key").write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="does not match"):
        SimulatedAmdSp.load(tmp_path)
    (tmp_path / "sp.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="not a saved simulator"):
        SimulatedAmdSp.load(tmp_path)


def test_load_or_generate(tmp_path: Path) -> None:
    sp = simulated_amd_sp(ProductLine.GENOA)
    sp.save(tmp_path)
    again = SimulatedAmdSp.load_or_generate(tmp_path, ProductLine.GENOA)
    assert again.ark_spki_sha256 == sp.ark_spki_sha256
    with pytest.raises(ValueError, match="holds a Genoa VCEK"):
        SimulatedAmdSp.load_or_generate(tmp_path, MILAN)
    fresh = SimulatedAmdSp.load_or_generate(
        tmp_path / "new", ProductLine.GENOA, key_kind=KeyKind.VLEK
    )
    assert (tmp_path / "new" / "sp.json").exists()
    assert SimulatedAmdSp.load(tmp_path / "new").leaf == fresh.leaf
    assert fresh.ark_spki_sha256 != sp.ark_spki_sha256


@pytest.mark.parametrize("version", [2, 3, 5])
@pytest.mark.parametrize("key_kind", [KeyKind.VCEK, KeyKind.VLEK])
def test_report_bytes_are_the_full_build_with_report_data_and_a_fresh_report_id(
    version: int, key_kind: KeyKind
) -> None:
    # The per-connection path writes two fields into a kept layout; apart from the
    # random REPORT_ID (and so the signature) it must give the full build's bytes.
    sp = simulated_amd_sp(ProductLine.GENOA, key_kind)
    report_data = bytes(range(64))
    policy = GuestPolicy(smt=True, debug=True)
    make = functools.partial(sp.report_bytes_steps, version=version, vmpl=1, policy=policy)
    first = run_inline(make(report_data=report_data))
    second = run_inline(make(report_data=bytes(64)))
    parsed = parse_snp_report(first, product=ProductLine.GENOA)
    full = sp.build_report(
        report_data=report_data,
        version=version,
        vmpl=1,
        policy=policy,
        report_id=parsed.report_id,
    )
    unsigned = dataclasses.replace(parsed, signature_r=0, signature_s=0)
    assert unsigned.to_bytes() == dataclasses.replace(full, signature_r=0, signature_s=0).to_bytes()
    assert parse_snp_report(second, product=ProductLine.GENOA).report_id != parsed.report_id
    verify_report_signature(parsed, sp.leaf_public_key)
    tampered = dataclasses.replace(parsed, report_data=bytes(64))
    with pytest.raises(SignatureMismatch):
        verify_report_signature(tampered, sp.leaf_public_key)


def test_report_bytes_refuse_report_data_of_the_wrong_size() -> None:
    sp = simulated_amd_sp(MILAN)
    with pytest.raises(ValueError, match="64 bytes"):
        run_inline(sp.report_bytes_steps(report_data=bytes(32)))
