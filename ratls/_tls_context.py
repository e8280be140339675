"""pyOpenSSL contexts and ephemeral identities for attested TLS.

On an attested connection trust comes from the attestation exchange, not from a
certificate authority: each side presents a self-signed certificate for a key it just
generated (inside its TEE), and its evidence binds SHA-256 of that certificate's public
key.  X.509 chain validation is therefore replaced by a narrower check
(:func:`check_peer_certificate`): the peer must send exactly one certificate, signed by
its own key, well-formed, inside its validity period and with a key type we accept.
That the peer holds the private key is guaranteed by TLS itself (CertificateVerify).

The contexts built here also switch off what would undermine the binding: TLS 1.3 only,
no session tickets or session cache (so no resumption, where the peer's certificate is
not presented again), no 0-RTT (pyOpenSSL never enables early data), no compression,
no renegotiation.  Attestation-off contexts (TLS 1.2 or 1.3) exist for interoperability
tests and for links where something else provides trust.
"""

from __future__ import annotations

import datetime
import functools
from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib

from ._errors import CertificateChainError, SignatureMismatch
from ._evidence_cert import endpoint_certificate_builder

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CERTIFICATE_BACKDATE",
    "EPHEMERAL_CERT_LIFETIME",
    "IdentityKey",
    "KeyType",
    "PeerCertificateErrors",
    "certificate_from_openssl",
    "check_peer_certificate",
    "generate_ephemeral_identity",
    "key_exchange_groups_settable",
    "make_client_context",
    "make_server_context",
    "set_key_exchange_groups",
]

#: Key types :func:`generate_ephemeral_identity` can create.
KeyType = Literal["ec-p256", "ec-p384", "ed25519", "rsa-3072"]

#: Private key types usable as a TLS identity here.
IdentityKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

# An ephemeral certificate names a key that lives as long as a process or a connection.
# One day keeps a long-running process from failing the peer's validity check, while a
# stolen certificate is useless anyway: its evidence binds it to connections, not time.
EPHEMERAL_CERT_LIFETIME: Final = datetime.timedelta(days=1)

# not_valid_before is set this far in the past so that a peer whose clock runs a little
# behind ours does not refuse a certificate minted a moment ago.
CERTIFICATE_BACKDATE: Final = datetime.timedelta(minutes=5)

_ACCEPTED_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_MIN_RSA_BITS: Final = 2048

# X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: the only verification "error" we accept, since
# trust comes from attestation rather than from a CA.
_X509_V_OK: Final = 0
_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: Final = 18


def generate_ephemeral_identity(
    key_type: KeyType = "ec-p256",
    *,
    lifetime: datetime.timedelta = EPHEMERAL_CERT_LIFETIME,
    now: datetime.datetime | None = None,
    common_name: str = "ratls ephemeral",
) -> tuple[IdentityKey, x509.Certificate]:
    """Generate a fresh key and a self-signed certificate for it.

    Args:
        key_type: ``"ec-p256"`` (default), ``"ec-p384"``, ``"ed25519"`` or ``"rsa-3072"``.
        lifetime: how long the certificate is valid from ``now``.
        now: the current time (defaults to the system clock, UTC).
        common_name: the subject (and issuer) common name.

    Returns:
        ``(private_key, certificate)``.

    Raises:
        ValueError: unknown key type, or a non-positive lifetime.
    """
    if lifetime <= datetime.timedelta(0):
        raise ValueError("lifetime must be positive")
    key: IdentityKey
    if key_type == "ec-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "ec-p384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif key_type == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "rsa-3072":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unknown key type {key_type!r}")
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = endpoint_certificate_builder(
        name, key.public_key(), now - CERTIFICATE_BACKDATE, now + lifetime
    )
    algorithm: hashes.SHA256 | hashes.SHA384 | None = (
        None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    )
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        algorithm = hashes.SHA384()
    return key, builder.sign(key, algorithm)


def check_peer_certificate(
    certificate: x509.Certificate, *, now: datetime.datetime | None = None
) -> None:
    """Check a peer's certificate where attestation replaces chain validation.

    Args:
        certificate: the single certificate the peer presented.
        now: the time to check validity at (defaults to the system clock, UTC).

    Raises:
        CertificateChainError: malformed, not self-issued, outside its validity period,
            or with a key type or size we do not accept.
        SignatureMismatch: the self-signature does not verify (the InvalidSignature is
            the ``__cause__``).
    """
    _check_time(_passed_certificate(certificate.public_bytes(Encoding.DER)), now)


def _check_time(
    validity: tuple[datetime.datetime, datetime.datetime], now: datetime.datetime | None
) -> None:
    not_before, not_after = validity
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    if not not_before <= now <= not_after:
        raise CertificateChainError(
            "tls.peer_certificate.validity",
            expected=f"{not_before.isoformat()} .. {not_after.isoformat()}",
            actual=now.isoformat(),
        )


@functools.lru_cache(maxsize=256)
def _passed_certificate(der: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """Everything :func:`check_peer_certificate` checks but the time, remembered per DER.

    A passed certificate's validity period is returned (and remembered), so the time is
    still checked on every use.  OpenSSL runs the verify callback twice per handshake,
    and ephemeral identities are reused for many connections, so the same certificate
    would be parsed and its signature checked over and over.  Exceptions are not
    remembered: a bad certificate is checked (and refused) every time.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        not_before = certificate.not_valid_before_utc
        not_after = certificate.not_valid_after_utc
        subject = certificate.subject
        issuer = certificate.issuer
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise CertificateChainError(
            "tls.peer_certificate", expected="a well-formed certificate", actual=str(exc)
        ) from exc
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _ACCEPTED_CURVES):
            raise CertificateChainError(
                "tls.peer_certificate.key",
                expected="P-256, P-384 or P-521",
                actual=public_key.curve.name,
            )
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise CertificateChainError(
                "tls.peer_certificate.key",
                expected=f"RSA >= {_MIN_RSA_BITS} bits",
                actual=f"RSA {public_key.key_size} bits",
            )
    elif not isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise CertificateChainError(
            "tls.peer_certificate.key",
            expected="EC, RSA, Ed25519 or Ed448",
            actual=type(public_key).__name__,
        )
    if subject != issuer:
        raise CertificateChainError(
            "tls.peer_certificate.issuer",
            expected=subject.rfc4514_string(),
            actual=issuer.rfc4514_string(),
            detail="the peer certificate must be self-issued",
        )
    try:
        certificate.verify_directly_issued_by(certificate)
    except InvalidSignature as exc:
        raise SignatureMismatch(
            "tls.peer_certificate.signature", expected="valid self-signature", actual="invalid"
        ) from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateChainError(
            "tls.peer_certificate.signature", expected="a checkable self-signature", actual=str(exc)
        ) from exc
    return not_before, not_after


def certificate_from_openssl(cert: crypto.X509) -> x509.Certificate:
    """The peer certificate OpenSSL parsed, as a ``cryptography`` certificate.

    OpenSSL accepts some certificates that ``cryptography`` refuses to load (an X.509
    version other than v1 or v3, for one), so this conversion can fail on what a peer
    sends; it then fails as a refusal of that certificate.

    Raises:
        CertificateChainError: ``cryptography`` cannot load the certificate.
    """
    try:
        return cert.to_cryptography()
    except (ValueError, x509.InvalidVersion) as exc:
        raise CertificateChainError(
            "tls.peer_certificate",
            expected="a well-formed X.509 certificate",
            actual=f"one cryptography cannot load ({exc})",
        ) from exc


class PeerCertificateErrors(list[Exception]):
    """Where the verify callback records why it refused a certificate.

    A :class:`~ratls._tls_stream.AttestedTLSStream` attaches one to its pyOpenSSL
    connection (``set_app_data``) so that a refused handshake can name the reason.
    """


def _verify_callback(
    connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """pyOpenSSL verify callback: accept exactly one well-formed self-signed certificate."""
    record = connection.get_app_data()
    reason: Exception | None = None
    if depth != 0:
        reason = CertificateChainError(
            "tls.peer_certificate.chain",
            expected="a single self-signed certificate",
            actual=f"a chain (X509 error {errno} at depth {depth})",
        )
    elif errno not in (_X509_V_OK, _X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT):
        reason = CertificateChainError(
            "tls.peer_certificate", expected="no X.509 error", actual=f"X509 error {errno}"
        )
    else:
        try:
            # By DER: no cryptography object is made for a certificate already checked.
            der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
            _check_time(_passed_certificate(der), None)
        except (CertificateChainError, SignatureMismatch) as exc:
            reason = exc
    if reason is None:
        return True
    if isinstance(record, PeerCertificateErrors):
        record.append(reason)
    return False


def key_exchange_groups_settable() -> bool:
    """Whether :func:`set_key_exchange_groups` works with the installed pyOpenSSL.

    The call it needs (``SSL_CTX_set1_curves_list``) is in the binding of recent
    ``cryptography`` releases, not in older ones (43 lacks it).
    """
    return getattr(_lib, "SSL_CTX_set1_curves_list", None) is not None


def set_key_exchange_groups(context: SSL.Context, groups: Sequence[str]) -> None:
    """Offer and accept only ``groups`` (OpenSSL names, most preferred first).

    Without this a context uses OpenSSL's default list; OpenSSL 3.5 and later prefer
    the hybrid post-quantum X25519MLKEM768.  A connection keeps its ML-KEM key material
    until it is freed, about 10 KiB per connection, so a gateway holding many idle
    tunnels may trade that protection for memory with ``["X25519"]``.  Both ends need
    a group in common, or the handshake fails.

    Raises:
        ValueError: the list is empty, or OpenSSL knows none of it or refuses a name.
        NotImplementedError: this pyOpenSSL offers no way to set groups (see
            :func:`key_exchange_groups_settable`).
    """
    names = list(groups)
    if not names:
        raise ValueError("no key exchange group given")
    for name in names:
        if not name or not name.isascii() or not name.isprintable() or ":" in name:
            raise ValueError(f"not a key exchange group name: {name!r}")
    # pyOpenSSL has no public call for this; its binding has SSL_CTX_set1_curves_list
    # (the groups list, under its older name).
    setter = getattr(_lib, "SSL_CTX_set1_curves_list", None)
    raw_context: Any = getattr(context, "_context", None)
    if setter is None or raw_context is None:
        raise NotImplementedError(
            "this pyOpenSSL cannot choose key exchange groups (a newer cryptography can)"
        )
    if setter(raw_context, ":".join(names).encode("ascii")) != 1:
        _clear_openssl_errors()
        raise ValueError(f"OpenSSL refuses the key exchange groups {names}")


def _clear_openssl_errors() -> None:
    # A refused call leaves its reason on OpenSSL's per-thread error queue, where the
    # next pyOpenSSL call would find it and report it as its own failure.
    clear = getattr(_lib, "ERR_clear_error", None)
    if clear is not None:
        clear()


def _base_context(
    private_key: IdentityKey,
    certificate: x509.Certificate,
    *,
    attested: bool,
    minimum_version: int,
    maximum_version: int | None,
    groups: Sequence[str] | None,
) -> SSL.Context:
    if attested and (
        minimum_version != SSL.TLS1_3_VERSION or maximum_version not in (None, SSL.TLS1_3_VERSION)
    ):
        raise ValueError("attested connections use TLS 1.3 only")
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(minimum_version)
    if maximum_version is not None:
        context.set_max_proto_version(maximum_version)
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET
    options |= getattr(SSL, "OP_NO_RENEGOTIATION", 0)
    context.set_options(options)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # Idle connections give their record buffers back (gateways hold many idle tunnels).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if groups is not None:
        set_key_exchange_groups(context, groups)
    context.use_privatekey(private_key)
    context.use_certificate(certificate)
    context.check_privatekey()
    return context


def make_client_context(
    private_key: IdentityKey,
    certificate: x509.Certificate,
    *,
    attested: bool = True,
    minimum_version: int = SSL.TLS1_3_VERSION,
    maximum_version: int | None = None,
    groups: Sequence[str] | None = None,
) -> SSL.Context:
    """A client context presenting ``certificate`` and accepting a self-signed server.

    Args:
        private_key: our TLS key.
        certificate: our (self-signed, ephemeral) certificate for that key.
        attested: build for an attested connection (TLS 1.3 only).
        minimum_version: lowest TLS version (``SSL.TLS1_2_VERSION`` or
            ``SSL.TLS1_3_VERSION``); must be 1.3 when attested.
        maximum_version: highest TLS version, or None for the library's highest.
        groups: key exchange groups to offer and accept, most preferred first (see
            :func:`set_key_exchange_groups`); None keeps OpenSSL's default list.

    Returns:
        A pyOpenSSL context for :class:`~ratls._tls_stream.AttestedTLSStream`.

    Raises:
        ValueError: an attested context asked for anything but TLS 1.3.
        ValueError: OpenSSL refuses ``groups``.
        OpenSSL.SSL.Error: the key does not match the certificate.
    """
    context = _base_context(
        private_key,
        certificate,
        attested=attested,
        minimum_version=minimum_version,
        maximum_version=maximum_version,
        groups=groups,
    )
    context.set_verify(SSL.VERIFY_PEER, _verify_callback)
    return context


def make_server_context(
    private_key: IdentityKey,
    certificate: x509.Certificate,
    *,
    attested: bool = True,
    require_client_certificate: bool = True,
    minimum_version: int = SSL.TLS1_3_VERSION,
    maximum_version: int | None = None,
    groups: Sequence[str] | None = None,
) -> SSL.Context:
    """A server context presenting ``certificate``, by default demanding a client one.

    Args:
        private_key: our TLS key.
        certificate: our (self-signed, ephemeral) certificate for that key.
        attested: build for an attested connection (TLS 1.3 only).
        require_client_certificate: request and require a client certificate (needed
            whenever the client must attest: its evidence binds that certificate's key).
        minimum_version: lowest TLS version; must be 1.3 when attested.
        maximum_version: highest TLS version, or None for the library's highest.
        groups: key exchange groups to offer and accept, most preferred first (see
            :func:`set_key_exchange_groups`); None keeps OpenSSL's default list.

    Returns:
        A pyOpenSSL context for :class:`~ratls._tls_stream.AttestedTLSStream`.

    Raises:
        ValueError: an attested context asked for anything but TLS 1.3.
        ValueError: OpenSSL refuses ``groups``.
        OpenSSL.SSL.Error: the key does not match the certificate.
    """
    context = _base_context(
        private_key,
        certificate,
        attested=attested,
        minimum_version=minimum_version,
        maximum_version=maximum_version,
        groups=groups,
    )
    if require_client_certificate:
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
    else:
        context.set_verify(SSL.VERIFY_NONE)
    return context
