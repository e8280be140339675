"""Peer certificates OpenSSL accepts but cryptography refuses are refused, in our terms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from der_surgery import edit_tbs, self_signed
from OpenSSL import SSL, crypto

from ratls._errors import CertificateChainError, EvidenceFormatError
from ratls._evidence_cert import load_evidence_certificate
from ratls._tls_context import (
    certificate_from_openssl,
    generate_ephemeral_identity,
    make_server_context,
)
from ratls._tls_stream import AttestedTLSStream

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric import ec


def _version_2_certificate() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A self-signed certificate whose version field says v2 (1), correctly signed."""
    key, certificate = self_signed("v2")
    v3 = certificate.public_bytes(serialization.Encoding.DER)

    def to_version_2(fields: list[bytes]) -> list[bytes]:
        assert fields[0] == b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2 (v3)
        return [b"\xa0\x03\x02\x01\x01", *fields[1:]]

    der = edit_tbs(v3, to_version_2, key=key)
    return key, der


def test_conversion_refuses_what_cryptography_cannot_load() -> None:
    _, der = _version_2_certificate()
    parsed = crypto.load_certificate(crypto.FILETYPE_ASN1, der)  # OpenSSL takes it
    with pytest.raises(CertificateChainError) as info:
        certificate_from_openssl(parsed)
    assert info.value.claim == "tls.peer_certificate"
    assert isinstance(info.value.__cause__, x509.InvalidVersion)
    with pytest.raises(EvidenceFormatError, match="not a certificate"):
        load_evidence_certificate(der)


async def test_handshake_with_a_version_2_client_certificate_is_refused(tmp_path: Path) -> None:
    key, der = _version_2_certificate()
    (tmp_path / "v2.der").write_bytes(der)  # cryptography cannot hold it; OpenSSL loads it
    client_context = SSL.Context(SSL.TLS_METHOD)
    client_context.set_min_proto_version(SSL.TLS1_3_VERSION)
    client_context.use_privatekey(key)
    client_context.use_certificate_file(str(tmp_path / "v2.der"), crypto.FILETYPE_ASN1)
    left, right = trio.testing.memory_stream_pair()
    client = AttestedTLSStream(left, client_context, server_side=False)
    server = AttestedTLSStream(
        right, make_server_context(*generate_ephemeral_identity()), server_side=True
    )
    errors: list[BaseException] = []

    async def serve() -> None:
        try:
            await server.do_handshake()
        except Exception as exc:  # whatever it is, it must be ours: checked below
            errors.append(exc)
        await server.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.do_handshake()
            with pytest.raises(trio.BrokenResourceError):
                await client.receive_some()
    [error] = errors
    assert isinstance(error, CertificateChainError)
    assert error.claim.startswith("tls.peer_certificate")
