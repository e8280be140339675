"""The high-level attested-TLS API: open a connection, serve connections, or do either blocking.

Everything below is a thin layer over :class:`~ratls._tls_stream.AttestedTLSStream`; what it
adds is the decisions users should not have to take one by one:

* **Mutual by default.**  Each side attests itself (unless its attester is ``"none"``)
  and requires the peer to attest under a policy.  Accepting an unattested peer needs
  ``verify_peer=False`` in so many words; without a policy, a verifying side refuses to
  start (:class:`~ratls.PolicyError`) rather than accept anything authentic.
* **Ephemeral identities.**  Each server gets a newly generated key and self-signed
  certificate (:func:`~ratls._tls_context.generate_ephemeral_identity`); clients share one
  per process and key type, renewed every :data:`CLIENT_IDENTITY_RENEWAL` (making a key,
  a certificate and a pyOpenSSL context costs about as much as a TLS handshake).  Reuse
  does not weaken anything: trust comes from evidence that binds the key *and* the
  connection's exporter, so a copied key is useless without fresh evidence from the TEE.
  TLS 1.3 only, no session tickets, no resumption, no 0-RTT.
* **Timeouts with reasons** (below), and handshakes in per-connection tasks: a server's
  accept loop never waits for a peer's handshake or evidence.
* **Blocking sockets** for code without an event loop: :func:`connect_attested` returns an
  :class:`AttestedSocket` whose ``sendall``/``recv``/``close`` run on a private trio loop
  in a background thread ("portal" design: one loop thread per socket or server; calls
  from your thread go through ``trio.from_thread.run``).  This keeps one implementation
  of TLS and attestation, at the cost of a thread per blocking connection.
* **Two modes.**  ``mode="bound"`` (the default) runs the post-handshake exchange whose
  evidence binds the connection's exporter.  ``mode="cert"`` is interoperable RA-TLS:
  each attesting side presents a certificate from
  :class:`~ratls._evidence_cert.AttestedCertificateBuilder` and the peer verifies it with
  :func:`~ratls._evidence_cert.verify_evidence_certificate` inside the TLS handshake (a
  refused certificate ends the handshake with a TLS alert), so any TLS client can
  connect and read the evidence.  Certificate evidence is replayable; its age is bounded
  by the policy and servers renew theirs every :data:`CERT_RENEWAL` seconds.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import logging
import os
import threading
import time
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeVar, cast, final

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from OpenSSL import SSL

from ._attesters_registry import make_attestation_config, make_attester, make_verifier
from ._bound import SNP_MEDIA_TYPE, VTPM_MEDIA_TYPE, parse_snp_evidence
from ._errors import (
    CertificateChainError,
    PolicyError,
    PolicyViolation,
    RatlsError,
)
from ._evidence_cert import AttestedCertificateBuilder, verify_evidence_certificate
from ._policy import Policy, load_policy
from ._tls_context import (
    EPHEMERAL_CERT_LIFETIME,
    PeerCertificateErrors,
    certificate_from_openssl,
    check_peer_certificate,
    generate_ephemeral_identity,
    make_client_context,
    make_server_context,
)
from ._tls_stream import AttestedTLSStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from cryptography import x509
    from OpenSSL import crypto

    from ._exchange import AttestationConfig, LocalAttester, PeerVerifier
    from ._result import AttestationResult
    from ._snp_report import ProductLine
    from ._snp_verify import SnpEndorsements
    from ._tls_context import IdentityKey, KeyType

__all__ = [
    "CERT_RENEWAL",
    "CLIENT_IDENTITY_RENEWAL",
    "CLOSE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "MAX_BLOCKING_HANDLERS",
    "AttestedServer",
    "AttestedSocket",
    "Mode",
    "connect_attested",
    "evidence_identity",
    "forget_shared_verifiers",
    "open_attested_stream",
    "serve_attested",
    "serve_attested_blocking",
    "start_attested_server",
]

logger = logging.getLogger("ratls")

# How long the TLS handshake *and* the attestation exchange may take, per connection.
# The handshake itself takes milliseconds and verification a few more; producing
# evidence is the slow part: a /dev/sev-guest or configfs-tsm report goes through the
# hypervisor to the AMD-SP (tens of milliseconds), a vTPM quote through the SVSM
# (hundreds), and the first connection of the SVSM simulator boots swtpm (a second or
# two).  30 s covers a loaded machine many times over while bounding how long a silent
# or deliberately slow peer can hold a connection slot.
HANDSHAKE_TIMEOUT: Final = 30.0

# How long opening the TCP connection may take (all addresses, happy eyeballs): long
# enough for a slow WAN SYN/SYN-ACK with retries, short enough to report an unreachable
# peer while the user still waits for it.
CONNECT_TIMEOUT: Final = 10.0

# How long clients use one shared ephemeral identity before making a new one: half of the
# certificate's lifetime, so a peer never sees an expired certificate from us.
CLIENT_IDENTITY_RENEWAL: Final = EPHEMERAL_CERT_LIFETIME.total_seconds() / 2

# How long a graceful close (sending close_notify) may take before the connection is
# dropped: the peer only has to accept a few dozen bytes.
CLOSE_TIMEOUT: Final = 5.0

#: ``"bound"``: evidence in the post-handshake exchange, bound to the connection's
#: exporter (fresh, ratls peers only).  ``"cert"``: evidence in the certificate,
#: verified during the handshake (interoperable RA-TLS, replayable within the policy's
#: evidence age).
Mode = Literal["bound", "cert"]

# How long (seconds) a cert-mode server presents one evidence certificate before making
# a new one.  The evidence age a client measures is from notBefore, which the profile
# backdates by CLOCK_SKEW_MARGIN (60 s): renewing every 60 s keeps the age seen by a
# client under about two minutes, well inside the default policy maximum of 300 s, while
# a new report (tens of milliseconds on hardware) is needed only once a minute.
CERT_RENEWAL: Final = 60.0

# Verified peer certificates whose results are kept (cert mode).  A result is reused for
# the same certificate (by DER) only while the evidence in it would still pass: before the
# certificate's notAfter and before its notBefore plus the policy's maximum evidence age.
# Failures are never kept.
_CERT_RESULT_CACHE_SIZE: Final = 128

# X.509 verification codes the cert-mode callback accepts (as in _tls_context): success,
# and "self-signed certificate", since trust comes from the evidence, not from a CA.
_X509_ACCEPTED: Final = (0, 18)


def _resolve_policy(policy: Policy | str | os.PathLike[str] | None) -> Policy | None:
    if policy is None or isinstance(policy, Policy):
        return policy
    return load_policy(os.fspath(policy))


def _resolve_attester(
    attester: str | LocalAttester | None, options: dict[str, Any] | None
) -> tuple[LocalAttester | None, bool]:
    """The attester object, and whether we created it (and must close it)."""
    if isinstance(attester, str):
        return make_attester(attester, **(options or {})), True
    return attester, False


def _close_owned(attester: LocalAttester | None, owned: bool) -> None:
    close = getattr(attester, "close", None)
    if owned and callable(close):
        close()


def _config(
    attester: LocalAttester | None,
    policy: Policy | str | os.PathLike[str] | None,
    *,
    verify_peer: bool,
    trust_simulator: bool,
    product: ProductLine | None,
    verifier: PeerVerifier | None,
) -> AttestationConfig:
    if not isinstance(verify_peer, bool):
        raise TypeError("verify_peer must be True or False")
    if not verify_peer:
        if verifier is not None:
            raise ValueError("a verifier was given but verify_peer is False")
    elif verifier is None:
        verifier = _shared_verifier(_resolve_policy(policy), trust_simulator, product)
    return make_attestation_config(attester, verifier)


_V = TypeVar("_V")

# Verifiers and cert-mode checkers shared per (policy digest, options): connections opened
# one by one with the same policy then share what a verifier remembers (activations per
# EK and AK, verdicts on certificates).  The least recently used is dropped past this many.
_SHARED_KEPT: Final = 16
_shared: collections.OrderedDict[tuple[object, ...], object] = collections.OrderedDict()
_shared_lock = threading.Lock()


def _shared_instance(key: tuple[object, ...], make: Callable[[], _V]) -> _V:
    """The process-wide instance for ``key``, made by ``make`` the first time."""
    with _shared_lock:
        instance = _shared.get(key)
        if instance is None:
            instance = make()
            _shared[key] = instance
            while len(_shared) > _SHARED_KEPT:
                _shared.popitem(last=False)
        else:
            _shared.move_to_end(key)
        return cast("_V", instance)


def forget_shared_verifiers() -> None:
    """Drop the verifiers and certificate checkers connections share; for tests."""
    with _shared_lock:
        _shared.clear()


def _shared_verifier(
    policy: Policy | None, trust_simulator: bool, product: ProductLine | None
) -> PeerVerifier:
    """One verifier per (policy, options), so connections share what it remembers.

    A verifier remembers passed credential activations per (EK, AK); connections opened
    one by one with the same policy would otherwise each make a new verifier and prove
    the same vTPM's AK again and again.
    """
    if policy is None:
        return make_verifier(policy, trust_simulator=trust_simulator, product=product)
    return _shared_instance(
        ("bound", policy.digest(), trust_simulator, product),
        partial(make_verifier, policy, trust_simulator=trust_simulator, product=product),
    )


def _identity(
    identity: tuple[IdentityKey, x509.Certificate] | None, key_type: KeyType
) -> tuple[IdentityKey, x509.Certificate]:
    return identity if identity is not None else generate_ephemeral_identity(key_type)


_client_contexts: dict[KeyType, tuple[float, SSL.Context]] = {}
_client_contexts_lock = threading.Lock()


def _client_context(
    identity: tuple[IdentityKey, x509.Certificate] | None, key_type: KeyType
) -> SSL.Context:
    """The client context: for the caller's identity, or the shared one for ``key_type``."""
    if identity is not None:
        return make_client_context(*identity)
    now = time.monotonic()
    with _client_contexts_lock:
        cached = _client_contexts.get(key_type)
        if cached is not None and now - cached[0] < CLIENT_IDENTITY_RENEWAL:
            return cached[1]
        context = make_client_context(*generate_ephemeral_identity(key_type))
        _client_contexts[key_type] = (now, context)
        return context


def _check_mode(mode: object) -> None:
    if mode not in ("bound", "cert"):
        raise ValueError(f"mode must be 'bound' or 'cert', not {mode!r}")


@final
class _CertChecker:
    """Cert-mode verification of the peer's certificate, as a pyOpenSSL verify callback.

    The callback runs inside the handshake: a certificate whose evidence fails is refused
    there (the peer gets a TLS alert) and the reason is recorded where the stream looks
    for it, so the handshake raises the evidence error itself.  Results are kept briefly
    by certificate, because OpenSSL calls the callback more than once for one handshake
    and the stream collects the result after it.
    """

    def __init__(self, policy: Policy, *, trust_simulator: bool) -> None:
        self._policy = policy
        self._trust_simulator = trust_simulator
        self._lock = threading.Lock()
        self._results: collections.OrderedDict[
            bytes, tuple[datetime.datetime, AttestationResult]
        ] = collections.OrderedDict()

    def verify(self, certificate: x509.Certificate) -> AttestationResult:
        """Check the certificate and verify its evidence, or reuse a result still valid.

        A passed result is kept for this exact certificate until its evidence would fail
        again: the certificate's notAfter, or its notBefore plus the policy's maximum
        evidence age, whichever comes first.  (Cert-mode evidence is replayable by
        design; the age bound is what limits it, and a reused result honours it.)

        Raises:
            RatlsError: the certificate or its evidence failed (the subclass says why).
        """
        der = certificate.public_bytes(serialization.Encoding.DER)
        at = datetime.datetime.now(datetime.UTC)
        with self._lock:
            cached = self._results.get(der)
            if cached is not None and at <= cached[0]:
                self._results.move_to_end(der)
                return cached[1]
        check_peer_certificate(certificate, now=at)
        result = verify_evidence_certificate(
            certificate, policy=self._policy, at=at, trust_simulator=self._trust_simulator
        )
        valid_until = min(
            certificate.not_valid_after_utc,
            certificate.not_valid_before_utc
            + datetime.timedelta(seconds=self._policy.max_evidence_age_seconds),
        )
        with self._lock:
            self._results[der] = (valid_until, result)
            self._results.move_to_end(der)
            while len(self._results) > _CERT_RESULT_CACHE_SIZE:
                self._results.popitem(last=False)
        return result

    def callback(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        """pyOpenSSL verify callback: one self-signed certificate whose evidence passes."""
        reason: RatlsError
        if depth != 0:
            reason = CertificateChainError(
                "tls.peer_certificate.chain",
                expected="a single self-signed certificate",
                actual=f"a chain (X509 error {errno} at depth {depth})",
            )
        elif errno not in _X509_ACCEPTED:
            reason = CertificateChainError(
                "tls.peer_certificate", expected="no X.509 error", actual=f"X509 error {errno}"
            )
        else:
            try:
                self.verify(certificate_from_openssl(cert))
            except RatlsError as exc:
                reason = exc
            else:
                return True
        record = connection.get_app_data()
        if isinstance(record, PeerCertificateErrors):
            record.append(reason)
        return False


def _peer_result(
    checker: _CertChecker | None,
) -> Callable[[x509.Certificate | None], object] | None:
    """The stream's certificate_attestation hook for cert mode (None: peer not verified).

    The evidence was verified inside the handshake by the checker's callback; the hook
    collects that result (reused, not recomputed) for ``stream.peer_attestation``.
    """
    if checker is None:
        return None

    def result(certificate: x509.Certificate | None) -> object:
        if certificate is None:
            raise PolicyViolation(
                "tls.peer_certificate", expected="a certificate with evidence", actual="none"
            )
        return checker.verify(certificate)

    return result


def _cert_checker(
    policy: Policy | str | os.PathLike[str] | None,
    *,
    verify_peer: bool,
    trust_simulator: bool,
    verifier: PeerVerifier | None,
) -> _CertChecker | None:
    if not isinstance(verify_peer, bool):
        raise TypeError("verify_peer must be True or False")
    if verifier is not None:
        raise ValueError("a verifier is for bound mode; cert mode verifies certificates")
    if not verify_peer:
        return None
    resolved = _resolve_policy(policy)
    if resolved is None:
        raise PolicyError(
            "verifying a peer needs a policy (or verify_peer=False to accept any peer)",
            location="policy",
        )
    return _shared_instance(
        ("cert", resolved.digest(), trust_simulator),
        partial(_CertChecker, resolved, trust_simulator=trust_simulator),
    )


def _cert_key(key_type: KeyType) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"cert mode supports ec-p256, ec-p384 and ed25519 keys, not {key_type}")


def evidence_identity(
    attester: LocalAttester | None, key_type: KeyType = "ec-p256"
) -> tuple[IdentityKey, x509.Certificate]:
    """A fresh key and an evidence certificate for it from ``attester`` (cert mode).

    The attester's SNP evidence for REPORT_DATA = SHA-256(claims) || zeros goes into the
    interoperable RA-TLS extension and its endorsement chain into id-pe-cmw, with the
    profile's validity (:func:`~ratls._evidence_cert.default_validity`).  An SNP + vTPM
    attester also puts its bundle into id-pe-cmw: a quote over SHA-256(claims) and, for
    the ``svsm`` profile, the VMPL-0 report over that nonce; the tagged report is one the
    guest OS requests at its own VMPL.  A certificate cannot answer a credential
    challenge, so its AK stays unproven (docs/evidence-certificates.md).

    Args:
        attester: an SNP attester (``sim``, ``snp`` or an object whose ``evidence``
            returns bound-mode SNP evidence), an SNP + vTPM one that can request guest
            reports (``SimulatedVtpmAttester``, ``VtpmBoundAttester`` over the SVSM), or
            None for a plain ephemeral identity.
        key_type: ``ec-p256``, ``ec-p384`` or ``ed25519``.

    Returns:
        The key and the signed certificate.

    Raises:
        ValueError: an RSA key type, or an attester whose evidence cert mode cannot carry.
        AttesterError: the attester could not produce evidence.
    """
    if attester is None:
        return generate_ephemeral_identity(key_type)
    media_type = getattr(attester, "media_type", None)
    guest_snp = getattr(attester, "guest_snp_evidence", None)
    bundle = getattr(attester, "certificate_bundle", None)
    vtpm = media_type == VTPM_MEDIA_TYPE and callable(guest_snp) and callable(bundle)
    if media_type != SNP_MEDIA_TYPE and not vtpm:
        raise ValueError(
            f"cert mode carries SNP or SNP + vTPM evidence; attester {attester!r} produces "
            f"{media_type} without the guest reports cert mode needs (use mode='bound')"
        )
    key = _cert_key(key_type)
    produce = cast("Callable[[bytes], bytes]", guest_snp if vtpm else attester.evidence)

    def snp(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        evidence = parse_snp_evidence(produce(report_data))
        return evidence.snp_report, evidence.endorsements()

    builder = AttestedCertificateBuilder().private_key(key).snp_evidence(snp)
    if vtpm:
        builder = builder.vtpm_evidence(cast("Callable[[bytes, bytes], bytes]", bundle))
    certificate = builder.sign(now=datetime.datetime.now(datetime.UTC))
    return key, certificate


@final
class _ServerIdentity:
    """A cert-mode server's context, remade with a new evidence certificate when stale."""

    def __init__(
        self,
        make: Callable[[], tuple[IdentityKey, x509.Certificate]] | None,
        fixed: tuple[IdentityKey, x509.Certificate] | None,
        configure: Callable[[IdentityKey, x509.Certificate], SSL.Context],
        renewal: float,
    ) -> None:
        self._make = make
        self._configure = configure
        self._renewal = renewal
        self._lock = trio.Lock()
        self._made = 0.0
        self._context = configure(*fixed) if fixed is not None else None

    async def context(self) -> SSL.Context:
        """The current context; a new certificate is made first if the last one is stale."""
        if self._make is None:
            assert self._context is not None  # noqa: S101 - fixed identities are configured
            return self._context
        async with self._lock:
            if self._context is None or trio.current_time() - self._made >= self._renewal:
                identity = await trio.to_thread.run_sync(self._make)
                self._context = self._configure(*identity)
                self._made = trio.current_time()
            return self._context


async def open_attested_stream(
    host: str,
    port: int,
    *,
    attester: str | LocalAttester | None,
    policy: Policy | str | os.PathLike[str] | None,
    verify_peer: bool = True,
    verifier: PeerVerifier | None = None,
    trust_simulator: bool = False,
    key_type: KeyType = "ec-p256",
    identity: tuple[IdentityKey, x509.Certificate] | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    product: ProductLine | None = None,
    attester_options: dict[str, Any] | None = None,
    mode: Mode = "bound",
) -> AttestedTLSStream[trio.SocketStream]:
    """Connect to an attested server; return the stream once both sides are verified.

    Args:
        host: the server's name or address.
        port: the server's TCP port.
        attester: what proves this side: a name (``"sim"``, ``"snp"``, ``"snp+vtpm"``...,
            or ``"none"``), an object with ``evidence(binder)``, or None (no evidence).
        policy: the policy the server's evidence is appraised against (a
            :class:`~ratls.Policy` or a TOML file); required unless ``verify_peer`` is
            False.
        verify_peer: require the server to attest (the default).  False accepts a server
            without evidence and does not look at evidence it sends.
        verifier: a :class:`~ratls._exchange.PeerVerifier` to use instead of the
            built-in :class:`~ratls._bound.BoundVerifier` for ``policy``.
        trust_simulator: accept simulator roots even if the policy does not say so.
        key_type: the type of the fresh TLS key.
        identity: a TLS key and self-signed certificate to use instead of the shared
            ephemeral one.
        server_hostname: SNI name to send (trust does not depend on it).
        handshake_timeout: seconds for the TLS handshake and the attestation exchange.
        connect_timeout: seconds for opening the TCP connection.
        product: product line for version-2 SNP reports, which do not name it.
        attester_options: keyword options for :func:`~ratls._attesters_registry.make_attester`
            when ``attester`` is a name.
        mode: ``"bound"`` (post-handshake exchange) or ``"cert"`` (evidence in the
            certificates, verified inside the handshake; ``identity`` may then be an
            evidence certificate of the caller's and ``verifier`` is not used).

    Returns:
        The stream; ``peer_attestation`` holds the server's
        :class:`~ratls.AttestationResult` (None when ``verify_peer`` is False; with
        ``replayable=True`` in cert mode).

    Raises:
        PolicyError: ``verify_peer`` without a policy, or an invalid policy file.
        ValueError: ``verifier`` given with ``verify_peer=False`` or in cert mode, an
            unknown mode, or (cert mode) a key type or attester that cannot make an
            evidence certificate.
        AttesterUnavailable: the named attester cannot run here.
        OSError: the TCP connection could not be opened.
        trio.TooSlowError: connecting or the handshake took too long.
        EvidenceVerificationError: the server's evidence failed (the subclass names the
            claim); the server was told.
        AttestationRefused: the server refused our evidence and said why.
        RatlsError: any other attestation or protocol failure.
        trio.BrokenResourceError: the connection failed during the handshake.

    On failure the connection is closed.  Cancellation closes it as well.
    """
    _check_mode(mode)
    own, owned = _resolve_attester(attester, attester_options)
    try:
        if mode == "cert":
            return await _open_cert_stream(
                host,
                port,
                own,
                policy,
                verify_peer=verify_peer,
                verifier=verifier,
                trust_simulator=trust_simulator,
                key_type=key_type,
                identity=identity,
                server_hostname=server_hostname,
                handshake_timeout=handshake_timeout,
                connect_timeout=connect_timeout,
            )
        config = _config(
            own,
            policy,
            verify_peer=verify_peer,
            trust_simulator=trust_simulator,
            product=product,
            verifier=verifier,
        )
        context = _client_context(identity, key_type)
        with trio.fail_after(connect_timeout):
            transport = await trio.open_tcp_stream(host, port)
        stream = AttestedTLSStream(
            transport,
            context,
            server_side=False,
            attestation=config,
            server_hostname=server_hostname,
        )
        try:
            with trio.fail_after(handshake_timeout):
                await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream
    finally:
        _close_owned(own, owned)


async def _open_cert_stream(
    host: str,
    port: int,
    attester: LocalAttester | None,
    policy: Policy | str | os.PathLike[str] | None,
    *,
    verify_peer: bool,
    verifier: PeerVerifier | None,
    trust_simulator: bool,
    key_type: KeyType,
    identity: tuple[IdentityKey, x509.Certificate] | None,
    server_hostname: str | None,
    handshake_timeout: float,
    connect_timeout: float,
) -> AttestedTLSStream[trio.SocketStream]:
    checker = _cert_checker(
        policy, verify_peer=verify_peer, trust_simulator=trust_simulator, verifier=verifier
    )
    if identity is None:
        identity = await _client_evidence_identity(attester, key_type)
    context = make_client_context(*identity)
    if checker is not None:
        context.set_verify(SSL.VERIFY_PEER, checker.callback)
    with trio.fail_after(connect_timeout):
        transport = await trio.open_tcp_stream(host, port)
    stream = AttestedTLSStream(
        transport,
        context,
        server_side=False,
        server_hostname=server_hostname,
        certificate_attestation=_peer_result(checker),
    )
    try:
        with trio.fail_after(handshake_timeout):
            await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


# Cert-mode client identities per attester object, renewed like a server's: the evidence
# in a certificate is replayable by design and bounded by the verifier's maximum age, so
# a fresh certificate per connection would add cost (a key, a report, a signature, and
# a full verification at the server) without adding freshness the verifier can rely on.
_client_identities: weakref.WeakKeyDictionary[
    object, dict[KeyType, tuple[float, tuple[IdentityKey, x509.Certificate]]]
] = weakref.WeakKeyDictionary()
_client_identities_lock = threading.Lock()


async def _client_evidence_identity(
    attester: LocalAttester | None, key_type: KeyType
) -> tuple[IdentityKey, x509.Certificate]:
    """An evidence certificate for this attester, reused for CERT_RENEWAL seconds."""

    async def make() -> tuple[IdentityKey, x509.Certificate]:
        if attester is not None and getattr(attester, "blocking", True) is False:
            await trio.lowlevel.checkpoint()
            return evidence_identity(attester, key_type)
        return await trio.to_thread.run_sync(evidence_identity, attester, key_type)

    now = time.monotonic()
    try:
        with _client_identities_lock:
            cached = _client_identities.setdefault(attester, {}).get(key_type)
    except TypeError:  # None, or an attester that cannot be weakly referenced
        return await make()
    if cached is not None and now - cached[0] < CERT_RENEWAL:
        return cached[1]
    identity = await make()  # two connections may both renew at once: harmless
    with _client_identities_lock:
        _client_identities.setdefault(attester, {})[key_type] = (now, identity)
    return identity


def _default_failure_report(exc: BaseException, peer: object) -> None:
    logger.warning("attested connection from %s refused: %s", peer, exc)


async def _cert_server(
    attester: LocalAttester | None,
    policy: Policy | str | os.PathLike[str] | None,
    *,
    verify_peer: bool,
    verifier: PeerVerifier | None,
    trust_simulator: bool,
    key_type: KeyType,
    identity: tuple[IdentityKey, x509.Certificate] | None,
    renewal: float,
) -> tuple[
    Callable[[trio.SocketStream], Awaitable[AttestedTLSStream[Any]]],
    Callable[[AttestedTLSStream[Any]], Awaitable[None]],
]:
    """Set up a cert-mode server (its first certificate now).

    Returns:
        The stream factory and the handshake function for each connection.
    """
    checker = _cert_checker(
        policy, verify_peer=verify_peer, trust_simulator=trust_simulator, verifier=verifier
    )
    if renewal <= 0:
        raise ValueError("cert_renewal must be positive")

    def configure(key: IdentityKey, certificate: x509.Certificate) -> SSL.Context:
        context = make_server_context(key, certificate, require_client_certificate=verify_peer)
        if checker is not None:
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, checker.callback)
        return context

    make = None if identity is not None else partial(evidence_identity, attester, key_type)
    identities = _ServerIdentity(make, identity, configure, renewal)
    await identities.context()  # fail at start-up, not on the first connection

    peer_result = _peer_result(checker)

    async def make_stream(transport: trio.SocketStream) -> AttestedTLSStream[Any]:
        context = await identities.context()
        return AttestedTLSStream(
            transport, context, server_side=True, certificate_attestation=peer_result
        )

    async def handshake(stream: AttestedTLSStream[Any]) -> None:
        await stream.do_handshake()

    return make_stream, handshake


def _peer_name(transport: trio.SocketStream) -> object:
    try:
        return transport.socket.getpeername()
    except OSError:
        return "(unknown peer)"


async def _close_gracefully(stream: AttestedTLSStream[Any]) -> None:
    # aclose() closes the transport forcefully itself when cancelled by the timeout.
    with (
        trio.move_on_after(CLOSE_TIMEOUT),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, RatlsError),
    ):
        await stream.aclose()


async def serve_attested(
    handler: Callable[[AttestedTLSStream[trio.SocketStream]], Awaitable[object]],
    port: int,
    *,
    host: str | None = "127.0.0.1",
    attester: str | LocalAttester | None,
    policy: Policy | str | os.PathLike[str] | None,
    verify_peer: bool = True,
    verifier: PeerVerifier | None = None,
    trust_simulator: bool = False,
    key_type: KeyType = "ec-p256",
    identity: tuple[IdentityKey, x509.Certificate] | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    product: ProductLine | None = None,
    attester_options: dict[str, Any] | None = None,
    on_handshake_error: Callable[[BaseException, object], object] | None = None,
    handler_nursery: trio.Nursery | None = None,
    mode: Mode = "bound",
    cert_renewal: float = CERT_RENEWAL,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept attested TLS connections forever; call ``handler`` for each verified one.

    Each accepted connection gets its own task, which runs the TLS handshake and the
    attestation exchange under ``trio.fail_after(handshake_timeout)``; ``accept`` never
    waits for a peer.  ``handler(stream)`` runs only after both sides' evidence passed,
    with ``stream.peer_attestation`` holding the client's
    :class:`~ratls.AttestationResult`.  When the handler returns the stream is closed
    (gracefully, within :data:`CLOSE_TIMEOUT`).  A peer that vanishes while the handler
    runs (``trio.BrokenResourceError``) ends that connection only; other handler
    exceptions propagate and stop the server, as with ``trio.serve_tcp``.

    Args:
        handler: ``async def handler(stream)``.
        port: TCP port; 0 picks a free one (see ``task_status``).
        host: address to listen on (loopback by default); None for all interfaces.
        attester: what proves this server (see :func:`open_attested_stream`).
        policy: the policy clients' evidence is appraised against.
        verify_peer: require clients to attest (the default).  False also stops asking
            for client certificates.
        verifier: a verifier to use instead of the built-in one for ``policy``.
        trust_simulator: accept simulator roots even if the policy does not say so.
        key_type: the type of the server's fresh TLS key.
        identity: a TLS key and self-signed certificate to use instead of a fresh one.
        handshake_timeout: seconds for each connection's handshake and exchange.
        product: product line for version-2 SNP reports.
        attester_options: options for a named attester.
        on_handshake_error: called with the error and the peer address when a
            connection fails before the handler (logged as a warning by default).
        handler_nursery: where connection tasks run (a new nursery by default).
        mode: ``"bound"`` or ``"cert"``.  In cert mode the server presents an evidence
            certificate made from ``attester`` when it starts and again every
            ``cert_renewal`` seconds (or ``identity``, never renewed), and verifies
            clients' evidence certificates inside the handshake.
        cert_renewal: seconds between evidence certificates in cert mode.
        task_status: receives the listeners once listening (``nursery.start``).

    Raises:
        PolicyError: ``verify_peer`` without a policy, or an invalid policy file.
        ValueError: an unknown mode; in cert mode a verifier, an RSA key type or an
            attester that cannot make an evidence certificate.
        AttesterUnavailable: the named attester cannot run here.
        OSError: the port could not be bound.
    """
    _check_mode(mode)
    own, owned = _resolve_attester(attester, attester_options)
    try:
        make_stream: Callable[[trio.SocketStream], Awaitable[AttestedTLSStream[Any]]]
        handshake: Callable[[AttestedTLSStream[Any]], Awaitable[None]]
        if mode == "cert":
            make_stream, handshake = await _cert_server(
                own,
                policy,
                verify_peer=verify_peer,
                verifier=verifier,
                trust_simulator=trust_simulator,
                key_type=key_type,
                identity=identity,
                renewal=cert_renewal,
            )
        else:
            config = _config(
                own,
                policy,
                verify_peer=verify_peer,
                trust_simulator=trust_simulator,
                product=product,
                verifier=verifier,
            )
            key, cert = _identity(identity, key_type)
            context = make_server_context(key, cert, require_client_certificate=verify_peer)

            async def make_stream(transport: trio.SocketStream) -> AttestedTLSStream[Any]:
                await trio.lowlevel.checkpoint()
                return AttestedTLSStream(transport, context, server_side=True, attestation=config)

            async def handshake(stream: AttestedTLSStream[Any]) -> None:
                await stream.do_handshake()

        report = on_handshake_error if on_handshake_error is not None else _default_failure_report

        async def serve_one(transport: trio.SocketStream) -> None:
            try:
                with trio.fail_after(handshake_timeout):
                    stream = await make_stream(transport)
            except (RatlsError, trio.TooSlowError) as exc:
                await trio.aclose_forcefully(transport)
                report(exc, _peer_name(transport))
                return
            try:
                with trio.fail_after(handshake_timeout):
                    await handshake(stream)
            except (RatlsError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                await trio.aclose_forcefully(stream)
                report(exc, _peer_name(transport))
                return
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            try:
                await handler(stream)
            except trio.BrokenResourceError as exc:
                logger.info("attested connection from %s broke: %s", _peer_name(transport), exc)
            finally:
                await _close_gracefully(stream)

        listeners = await trio.open_tcp_listeners(port, host=host)
        await trio.serve_listeners(
            serve_one, listeners, handler_nursery=handler_nursery, task_status=task_status
        )
    finally:
        _close_owned(own, owned)


# --------------------------------------------------------------------------- blocking


class _LoopThread:
    """A trio event loop in a background thread, reachable through ``trio.from_thread``."""

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:  # pragma: no cover - trio.run failing to start
            raise self._failure

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # pragma: no cover - reported to the creator
            self._failure = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    @property
    def token(self) -> trio.lowlevel.TrioToken:
        assert self._token is not None  # noqa: S101 - set before the constructor returns
        return self._token

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None  # noqa: S101 - set before the constructor returns
        return self._nursery

    def run(self, afn: Callable[..., Awaitable[Any]], *args: object) -> Any:  # noqa: ANN401
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        if self._thread is not threading.current_thread():
            self._thread.join()


def _in_trio_thread() -> bool:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


@final
class AttestedSocket:
    """A blocking attested TLS connection (socket-like), backed by a private trio loop.

    Create it with :func:`connect_attested` (client) or receive it in the handler of
    :func:`serve_attested_blocking` / :func:`start_attested_server` (server).  Methods
    block the calling thread; they must not be called from a trio thread.  The socket
    is not meant to be shared between threads, except that one thread may send while
    another receives.

    Attributes:
        peer_attestation: the peer's :class:`~ratls.AttestationResult` (None when the
            peer was not required to attest).
        peer_certificate: the peer's TLS certificate.
        channel_binding: the RFC 9266 tls-exporter value of the connection.
    """

    def __init__(
        self,
        stream: AttestedTLSStream[Any],
        token: trio.lowlevel.TrioToken,
        loop: _LoopThread | None = None,
    ) -> None:
        """Wrap a handshaken stream; use :func:`connect_attested` instead."""
        self._stream = stream
        self._token = token
        self._loop = loop
        self._timeout: float | None = None
        self._closed = False
        self.peer_attestation: object = stream.peer_attestation
        self.peer_certificate: x509.Certificate | None = stream.peer_certificate
        self.channel_binding: bytes = stream.channel_binding

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AttestedSocket {state} {self._stream!r}>"

    def _call(self, afn: Callable[..., Awaitable[Any]], *args: object) -> Any:  # noqa: ANN401
        if self._closed:
            raise OSError("the attested socket is closed")
        if _in_trio_thread():
            raise RuntimeError("AttestedSocket blocks; from trio use open_attested_stream")
        timeout = self._timeout

        async def bounded() -> Any:  # noqa: ANN401 - whatever afn returns
            if timeout is None:
                return await afn(*args)
            with trio.fail_after(timeout):
                return await afn(*args)

        try:
            if self._loop is None:
                # A server-side socket, used from its handler's worker thread: run in the
                # connection's task, so that stopping the server cancels a blocked call.
                try:
                    return trio.from_thread.run(bounded)
                except RuntimeError as exc:
                    if "wasn't created by Trio" not in str(exc):
                        raise
            return trio.from_thread.run(bounded, trio_token=self._token)
        except trio.TooSlowError as exc:
            raise TimeoutError(f"no progress within {timeout} s") from exc

    def settimeout(self, timeout: float | None) -> None:
        """Bound each later ``sendall``/``recv`` call (None: wait forever, the default).

        A ``recv`` that times out can be retried; a ``sendall`` that times out may have
        sent part of the data and leaves the connection broken.

        Args:
            timeout: seconds, or None.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative")
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        """The timeout set with :meth:`settimeout`."""
        return self._timeout

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``.

        Raises:
            OSError: the socket is closed.
            TimeoutError: the timeout expired (the connection is then broken).
            trio.BrokenResourceError: the connection failed.
        """
        self._call(self._stream.send_all, bytes(data))

    def recv(self, bufsize: int) -> bytes:
        """Receive up to ``bufsize`` bytes; ``b""`` when the peer closed the connection.

        Raises:
            OSError: the socket is closed.
            TimeoutError: the timeout expired (nothing was received; retry is possible).
            trio.BrokenResourceError: the connection failed (or was truncated).
        """
        data: bytes = self._call(self._stream.receive_some, bufsize)
        return data

    def close(self) -> None:
        """Close the connection (close_notify, then the socket) and its loop; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            trio.from_thread.run(_close_gracefully, self._stream, trio_token=self._token)
        except trio.RunFinishedError:  # pragma: no cover - the server loop already ended
            pass
        finally:
            if self._loop is not None:
                self._loop.stop()

    def __enter__(self) -> AttestedSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect_attested(
    host: str,
    port: int,
    *,
    attester: str | LocalAttester | None,
    policy: Policy | str | os.PathLike[str] | None,
    **options: Any,  # noqa: ANN401 - the keyword arguments of open_attested_stream
) -> AttestedSocket:
    """Blocking :func:`open_attested_stream`: connect, attest, return a socket-like object.

    Args:
        host: the server's name or address.
        port: the server's TCP port.
        attester: what proves this side (see :func:`open_attested_stream`).
        policy: the policy the server is appraised against.
        **options: the other keyword arguments of :func:`open_attested_stream`.

    Returns:
        The connected, verified socket; close it (or use ``with``).

    Raises:
        The exceptions of :func:`open_attested_stream`.
    """
    loop = _LoopThread("ratls-connect")
    try:
        stream = loop.run(
            partial(open_attested_stream, host, port, attester=attester, policy=policy, **options)
        )
    except BaseException:
        loop.stop()
        raise
    return AttestedSocket(stream, loop.token, loop)


def _blocking_handler(
    handler: Callable[[AttestedSocket], object], limiter: trio.CapacityLimiter
) -> Callable[[AttestedTLSStream[trio.SocketStream]], Awaitable[object]]:
    async def run(stream: AttestedTLSStream[trio.SocketStream]) -> None:
        sock = AttestedSocket(stream, trio.lowlevel.current_trio_token())

        def call() -> None:
            handler(sock)

        # The handler owns a worker thread for the connection's lifetime; a limiter of its
        # own keeps busy handlers from starving the attesters' and verifiers' threads.
        await trio.to_thread.run_sync(call, limiter=limiter)
        sock._closed = True  # the serving task closes the stream itself

    return run


#: Most blocking handlers running at once (each holds a thread); more connections wait.
MAX_BLOCKING_HANDLERS: Final = 64


def serve_attested_blocking(
    handler: Callable[[AttestedSocket], object],
    port: int,
    **options: Any,  # noqa: ANN401 - the keyword arguments of serve_attested
) -> NoReturn:
    """Blocking :func:`serve_attested`: serve forever in this thread (Ctrl-C stops it).

    ``handler(sock)`` runs in a worker thread per verified connection with an
    :class:`AttestedSocket`; the connection is closed when it returns.

    Args:
        handler: called with each verified connection.
        port: TCP port to listen on.
        **options: the keyword arguments of :func:`serve_attested` (``attester`` and
            ``policy`` are required).

    Raises:
        The exceptions of :func:`serve_attested`.
    """
    limiter = trio.CapacityLimiter(MAX_BLOCKING_HANDLERS)
    trio.run(partial(serve_attested, _blocking_handler(handler, limiter), port, **options))
    raise AssertionError("unreachable")  # pragma: no cover - serve_attested never returns


@final
class AttestedServer:
    """A blocking-code handle on :func:`serve_attested` running in a background thread.

    Attributes:
        addresses: the ``(host, port, ...)`` socket addresses being listened on.
    """

    def __init__(self, loop: _LoopThread, addresses: list[tuple[Any, ...]]) -> None:
        """Use :func:`start_attested_server`."""
        self._loop = loop
        self.addresses = addresses

    def __repr__(self) -> str:
        return f"<AttestedServer {self.addresses}>"

    @property
    def port(self) -> int:
        """The TCP port (of the first listener)."""
        port: int = self.addresses[0][1]
        return port

    def close(self) -> None:
        """Stop listening, cancel connections in progress, and end the loop thread."""
        self._loop.stop()

    def __enter__(self) -> AttestedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_attested_server(
    handler: Callable[[AttestedSocket], object],
    port: int,
    **options: Any,  # noqa: ANN401 - the keyword arguments of serve_attested
) -> AttestedServer:
    """Start :func:`serve_attested_blocking` in a background thread; return once listening.

    Args:
        handler: called in a worker thread with each verified connection.
        port: TCP port; 0 picks a free one (see :attr:`AttestedServer.port`).
        **options: the keyword arguments of :func:`serve_attested`.

    Returns:
        The running server; :meth:`AttestedServer.close` it (or use ``with``).

    Raises:
        The exceptions of :func:`serve_attested` raised before it listens.
    """
    loop = _LoopThread("ratls-serve")
    limiter = trio.CapacityLimiter(MAX_BLOCKING_HANDLERS)
    serve = partial(serve_attested, _blocking_handler(handler, limiter), port, **options)

    async def start() -> list[trio.SocketListener]:
        listeners: list[trio.SocketListener] = await loop.nursery.start(serve)
        return listeners

    try:
        listeners = loop.run(start)
    except BaseException:
        loop.stop()
        raise
    addresses = [tuple(listener.socket.getsockname()) for listener in listeners]
    return AttestedServer(loop, addresses)
