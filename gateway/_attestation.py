"""The gateway's attestation seam: where real attesters and verifiers plug in.

The gateway does not know what evidence is.  It needs exactly three things, all from
:mod:`ratls._exchange`:

* an :class:`~ratls._exchange.AttestationConfig` holding a
  :class:`~ratls._exchange.LocalAttester` (``evidence(binder) -> bytes``) and a
  :class:`~ratls._exchange.PeerVerifier` (``verify(evidence, binder) -> result`` or
  raise), which the attested TLS stream runs right after each handshake;
* the same two objects again for re-attestation of long-lived tunnels, with a binder
  made from a fresh nonce (:func:`reattest_binder`);
* from the verifier's result, optionally, ``summary() -> str`` and ``claims() ->
  mapping`` (what :class:`ratls._result.AttestationResult` offers) for logs, /status
  and PROXY protocol TLVs.  Any other result type still works; it is shown by type name.

A configuration names its attester (``[attestation] attester = "..."``); the name is
looked up in a registry of providers, functions from :class:`~gateway._config.
AttestationSettings` to an AttestationConfig.  Providers for the SNP + vTPM attester and
verifier register themselves under their names; tests register test doubles.  There is
deliberately no built-in provider that skips attestation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ratls._errors import PolicyViolation
from ratls._exchange import AttestationConfig
from ratls._tls_context import generate_ephemeral_identity, make_client_context, make_server_context

from ._config import AttestationSettings, ConfigError, ConfigProblem
from ._link import NONCE_LENGTH, REATTEST_EXPORTER_LABEL

if TYPE_CHECKING:
    import trio
    from cryptography import x509
    from OpenSSL import SSL

    from ratls._tls_stream import AttestedTLSStream

__all__ = [
    "REATTEST_EXPORTER_LENGTH",
    "AttestationProvider",
    "GatewayIdentity",
    "check_media_type",
    "close_attestation",
    "make_identity",
    "peer_claims",
    "peer_summary",
    "reattest_binder",
    "register_provider",
    "registered_providers",
    "resolve_attestation",
    "unregister_provider",
]

#: Length of the exporter half of a re-attestation binder (the SHA-256 half is 32 too).
REATTEST_EXPORTER_LENGTH: Final = 32

#: A provider: builds the attestation configuration a gateway uses, from its settings.
AttestationProvider = Callable[[AttestationSettings], AttestationConfig]

_PROVIDERS: dict[str, AttestationProvider] = {}


def register_provider(name: str, provider: AttestationProvider) -> None:
    """Make ``provider`` available as ``[attestation] attester = name``.

    Args:
        name: the name configurations use.
        provider: builds the AttestationConfig from the settings; raises
            :class:`~gateway._config.ConfigError` (or any RatlsError) when the settings
            are wrong for it.

    Raises:
        ValueError: the name is already registered.
    """
    if name in _PROVIDERS:
        raise ValueError(f"attestation provider {name!r} is already registered")
    _PROVIDERS[name] = provider


def unregister_provider(name: str) -> None:
    """Remove a provider (tests use this to clean up); unknown names are ignored."""
    _PROVIDERS.pop(name, None)


def registered_providers() -> tuple[str, ...]:
    """The registered provider names, sorted."""
    return tuple(sorted(_PROVIDERS))


def close_attestation(config: AttestationConfig) -> None:
    """Release what a provider started for ``config`` (e.g. the simulated vTPM's swtpm).

    Attesters and verifiers that own processes or devices offer ``close()``; others need
    nothing.  This runs on the way out, so a failure to close is logged, not raised.
    """
    for part in (config.attester, config.verifier):
        close = getattr(part, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:
                logging.getLogger("ratls.gateway").warning(
                    "could not release %s: %s: %s", type(part).__name__, type(exc).__name__, exc
                )


def resolve_attestation(settings: AttestationSettings) -> AttestationConfig:
    """Build the AttestationConfig for ``settings`` through its provider.

    The result must both attest and verify: gateway tunnels are always mutual.

    Raises:
        ConfigError: unknown provider, or a provider that does not attest and verify.
    """
    provider = _PROVIDERS.get(settings.attester)
    if provider is None:
        known = ", ".join(registered_providers()) or "none registered"
        raise ConfigError(
            [
                ConfigProblem(
                    location="attestation.attester",
                    message=f"unknown attester {settings.attester!r} (known: {known})",
                )
            ]
        )
    config = provider(settings)
    if config.attester is None or config.verifier is None:
        raise ConfigError(
            [
                ConfigProblem(
                    location="attestation.attester",
                    message=f"provider {settings.attester!r} must both attest and verify",
                )
            ]
        )
    return config


@final
@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class GatewayIdentity:
    """This gateway's TLS identity and attestation configuration.

    The key is generated when the gateway starts and never leaves the process; every
    connection's evidence binds SHA-256 of its public key together with the
    connection's exporter value.

    Attributes:
        certificate: the self-signed certificate presented on every connection.
        attestation: attester and verifier.
        client_context: pyOpenSSL context for connections we open (ingress).
        server_context: pyOpenSSL context for connections we accept (egress).
    """

    certificate: x509.Certificate
    attestation: AttestationConfig
    client_context: SSL.Context
    server_context: SSL.Context

    def __repr__(self) -> str:
        fingerprint = hashlib.sha256(_spki(self.certificate)).hexdigest()[:16]
        return f"<GatewayIdentity spki-sha256={fingerprint}...>"


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def make_identity(
    attestation: AttestationConfig, *, groups: Sequence[str] | None = None
) -> GatewayIdentity:
    """Generate an ephemeral identity (a new Ed25519 key) and the TLS contexts for it.

    Ed25519 rather than P-256: gateways only talk to gateways here, and OpenSSL keeps
    the peer's certificate and key for the life of each connection; an Ed25519 pair
    costs about 4 KiB less per tunnel, at the same handshake speed.

    Args:
        attestation: what this gateway proves and demands.
        groups: key exchange groups for its connections (``[tls] groups``); None keeps
            OpenSSL's default list.

    Returns:
        The identity.
    """
    private_key, certificate = generate_ephemeral_identity("ed25519", common_name="ratls gateway")
    return GatewayIdentity(
        certificate=certificate,
        attestation=attestation,
        client_context=make_client_context(private_key, certificate, groups=groups),
        server_context=make_server_context(private_key, certificate, groups=groups),
    )


def reattest_binder(
    stream: AttestedTLSStream[trio.abc.Stream], certificate: x509.Certificate, nonce: bytes
) -> bytes:
    """The binder fresh evidence must carry for a REATTEST ``nonce`` on ``stream``.

    ``SHA-256(SPKI DER of the attesting side's certificate) ||
    TLS-Exporter(REATTEST_EXPORTER_LABEL, context=nonce, 32)``: 64 bytes like the
    initial binder, bound to this TLS connection and new for every nonce.

    Args:
        stream: the tunnel's attested stream (after its handshake).
        certificate: the attesting side's certificate (ours when answering, the peer's
            when checking).
        nonce: the REATTEST nonce.

    Returns:
        The 64-byte binder.

    Raises:
        ValueError: the nonce has the wrong length.
    """
    if len(nonce) != NONCE_LENGTH:
        raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")
    exporter = stream.export_keying_material(
        REATTEST_EXPORTER_LABEL, REATTEST_EXPORTER_LENGTH, nonce
    )
    return hashlib.sha256(_spki(certificate)).digest() + exporter


def check_media_type(config: AttestationConfig, media_type: str) -> None:
    """Refuse fresh evidence of a media type the verifier does not take.

    Raises:
        PolicyViolation: the media type is not accepted.
    """
    if media_type not in config.accepted_media_types:
        raise PolicyViolation(
            "reattest.media",
            expected=" | ".join(sorted(config.accepted_media_types)),
            actual=media_type,
        )


def peer_summary(result: object) -> str:
    """One line about a verified peer, for logs: ``result.summary()`` if it has one."""
    summary = getattr(result, "summary", None)
    if callable(summary):
        try:
            text = summary()
        except Exception:  # a broken summary must not break a tunnel
            return type(result).__name__
        if isinstance(text, str):
            return text
    return type(result).__name__


def peer_claims(result: object) -> dict[str, object]:
    """A JSON-safe mapping of a verified peer's claims: ``result.claims()`` if it has one.

    Values that JSON cannot represent are turned into strings.
    """
    claims = getattr(result, "claims", None)
    if callable(claims):
        try:
            value = claims()
        except Exception:  # a broken claims() must not break a tunnel
            value = None
        if isinstance(value, Mapping):
            safe = json.loads(json.dumps(dict(value), default=str, sort_keys=True))
            if isinstance(safe, dict):
                return safe
    return {"result": type(result).__name__}
