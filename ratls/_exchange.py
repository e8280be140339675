"""The post-handshake attestation exchange, as a sans-I/O state machine.

Right after a TLS 1.3 handshake, each side of an attested connection proves what it runs
by sending evidence bound to that very connection, and tells the other side whether it
accepted the evidence it received.  Only when both sides have said "ok" may application
data flow.  This module holds everything about that exchange that does not touch a
socket: the message format, the framing, the order of messages, the binder both sides
compute, and the two small interfaces (:class:`LocalAttester`, :class:`PeerVerifier`)
through which evidence is produced and checked by other parts of ratls.

Wire format.  Every message is a 4-byte big-endian length followed by that many bytes of
CBOR (RFC 8949), encoded deterministically (sorted map keys, shortest lengths).  A
receiver re-encodes what it decoded and refuses anything that does not come out
byte-identical, so each message has exactly one encoding.  The CBOR item is a map with
text keys::

    {"version": 1, "type": "evidence", "media": "<media type>", "evidence": h'...'}
    {"version": 1, "type": "none"}
    {"version": 1, "type": "verdict", "result": "ok"}
    {"version": 1, "type": "verdict", "result": "refused", "reason": "<text>"}

Message order (one direction at a time, so that no side ever has to send while the
other is also sending: the exchange cannot deadlock on a transport without buffering)::

    server -> client   EVIDENCE or NONE                     (flight 1)
    client -> server   EVIDENCE or NONE, then VERDICT       (flight 2)
    server -> client   VERDICT                              (flight 3)

The client judges the server's evidence before it shows its own, so a client never hands
its evidence to a server it has not accepted.  A "refused" VERDICT may be sent at any
point instead of the next message; it ends the exchange.  After flight 3, bytes that
follow on the same TLS stream are application data (:attr:`AttestationExchange.trailing_data`).

The binder.  Each side's evidence carries ``SHA-256(SPKI DER of its own TLS certificate)
|| TLS-Exporter("EXPORTER-Channel-Binding", empty context, 32)`` (RFC 9266).  The
exporter is unique to the connection and both ends compute it, so it is nonce and channel
binding at once: evidence made for one connection is refused on any other (relay,
replay), and evidence made for another key is refused on this one (key substitution).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, final, runtime_checkable

import cbor2
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._errors import LocalProtocolError, PolicyViolation, RatlsError, RemoteProtocolError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "BINDER_LENGTH",
    "DEFAULT_MEDIA_TYPE",
    "EXCHANGE_VERSION",
    "EXPORTER_CONTEXT",
    "EXPORTER_LABEL",
    "EXPORTER_LENGTH",
    "MAX_EXCHANGE_MESSAGE_SIZE",
    "MAX_MEDIA_TYPE_LENGTH",
    "MAX_REASON_LENGTH",
    "NEED_DATA",
    "PAUSED",
    "AttestationConfig",
    "AttestationExchange",
    "AttestationRefused",
    "Evidence",
    "ExchangeEvent",
    "ExchangeMessageTooLarge",
    "ExchangeRole",
    "ExchangeState",
    "ExchangeTruncated",
    "LocalAttester",
    "MalformedExchangeMessage",
    "NoEvidence",
    "PeerVerifier",
    "Sentinel",
    "UnexpectedExchangeMessage",
    "UnsupportedExchangeVersion",
    "Verdict",
    "VerdictResult",
    "appraise_peer_evidence",
    "compute_binder",
    "decode_message",
    "encode_message",
    "local_evidence_event",
]

#: Version of the exchange message format; the only one this module speaks.
EXCHANGE_VERSION: Final = 1

#: RFC 9266 "tls-exporter" channel-binding label.
EXPORTER_LABEL: Final = b"EXPORTER-Channel-Binding"
#: RFC 9266 uses an empty context (for TLS 1.3, identical to "no context").
EXPORTER_CONTEXT: Final = b""
#: RFC 9266 exporter output length, in bytes.
EXPORTER_LENGTH: Final = 32
#: SHA-256(SPKI) || exporter: exactly the 64 bytes of an SNP REPORT_DATA field.
BINDER_LENGTH: Final = 32 + EXPORTER_LENGTH

#: Media type of the SNP report + vTPM quote bundle that ratls peers exchange by default.
DEFAULT_MEDIA_TYPE: Final = "application/vnd.ratls.snp-vtpm+cbor"

# Largest CBOR payload (after the 4-byte length) we accept in one exchange message.  A
# complete SNP + vTPM bundle is an ~1.2 KiB report, a VCEK/VLEK and ASK/ARK chain (three
# certificates, ~1.5-2 KiB each), a TPM quote with its signature, the AK and EK public
# areas, PCR values and possibly an EK certificate: 10-30 KiB in practice.  256 KiB
# leaves room for larger certificate chains, CRLs and event logs while bounding how much
# memory an unauthenticated peer can make us buffer before we refuse it.
MAX_EXCHANGE_MESSAGE_SIZE: Final = 256 * 1024

#: Longest media-type string accepted (RFC 6838 caps type and subtype at 127 each).
MAX_MEDIA_TYPE_LENGTH: Final = 255

#: Longest refusal reason accepted, in characters; reasons are for logs, not documents.
MAX_REASON_LENGTH: Final = 1024

_HEADER = struct.Struct(">I")


# --------------------------------------------------------------------------- errors


class ExchangeMessageTooLarge(RemoteProtocolError):
    """The peer announced an exchange message longer than the limit.

    Attributes:
        size: the announced length.
        limit: the largest length accepted.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"exchange message of {size} bytes exceeds the limit of {limit} bytes")


class MalformedExchangeMessage(RemoteProtocolError):
    """An exchange message is not well-formed CBOR of the expected shape."""


class UnsupportedExchangeVersion(RemoteProtocolError):
    """An exchange message carries a version this implementation does not speak.

    Attributes:
        version: the version the peer sent.
    """

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"unsupported exchange version {version} (supported: {EXCHANGE_VERSION})")


class UnexpectedExchangeMessage(RemoteProtocolError):
    """A well-formed exchange message arrived when the protocol does not allow it.

    Attributes:
        state: the exchange state when it arrived.
        message_type: the wire type of the message, e.g. ``"verdict"``.
    """

    def __init__(self, state: ExchangeState, message_type: str) -> None:
        self.state = state
        self.message_type = message_type
        super().__init__(f"unexpected {message_type!r} message in state {state.name}")


class ExchangeTruncated(RemoteProtocolError):
    """The connection ended before the attestation exchange was complete.

    Attributes:
        state: the exchange state when the connection ended.
        buffered: how many bytes of an incomplete message were pending.
    """

    def __init__(self, state: ExchangeState, buffered: int) -> None:
        self.state = state
        self.buffered = buffered
        super().__init__(
            f"connection closed during the attestation exchange in state {state.name}"
            f" ({buffered} bytes of an incomplete message pending)"
        )


class AttestationRefused(RatlsError):
    """The peer refused our evidence (or aborted the exchange) and said why.

    Attributes:
        reason: the reason text the peer sent.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"peer refused the attestation: {reason}")


# --------------------------------------------------------------------------- events


class VerdictResult(enum.Enum):
    """The outcome carried by a VERDICT message (wire value is the member value)."""

    #: The sender accepted the peer's evidence (or did not require any).
    OK = "ok"
    #: The sender refused the peer's evidence or aborted the exchange.
    REFUSED = "refused"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """An EVIDENCE message: attestation evidence bound to this connection.

    Attributes:
        media_type: what the bytes are, e.g. :data:`DEFAULT_MEDIA_TYPE`.
        evidence: the evidence itself, opaque to the exchange.
    """

    media_type: str
    evidence: bytes

    def __repr__(self) -> str:
        return f"Evidence(media_type={self.media_type!r}, evidence=<{len(self.evidence)} bytes>)"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NoEvidence:
    """A NONE message: the sender does not attest (one-way attestation)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """A VERDICT message: the sender's judgement of the peer's evidence.

    Attributes:
        result: ok or refused.
        reason: why the evidence was refused; empty for ok.
    """

    result: VerdictResult
    reason: str = ""

    def __post_init__(self) -> None:
        if self.result is VerdictResult.OK and self.reason:
            raise ValueError("an ok verdict carries no reason")
        if len(self.reason) > MAX_REASON_LENGTH:
            raise ValueError(f"reason longer than {MAX_REASON_LENGTH} characters")

    @classmethod
    def ok(cls) -> Verdict:
        """Returns an ok verdict."""
        return cls(result=VerdictResult.OK)

    @classmethod
    def refused(cls, reason: str) -> Verdict:
        """Returns a refused verdict, its reason cut to :data:`MAX_REASON_LENGTH`.

        Args:
            reason: why the exchange is refused (goes to the peer; keep secrets out).
        """
        return cls(result=VerdictResult.REFUSED, reason=reason[:MAX_REASON_LENGTH] or "refused")


ExchangeEvent = Evidence | NoEvidence | Verdict


@final
class Sentinel(enum.Enum):
    """Non-event results of :meth:`AttestationExchange.next_event` (as in h11)."""

    #: More bytes from the peer are needed before the next event can be returned.
    NEED_DATA = "NEED_DATA"
    #: It is not the peer's turn: this side must send, or the exchange is over.
    PAUSED = "PAUSED"


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED


# --------------------------------------------------------------------------- codec


def _checked_text(message: dict[object, object], key: str, limit: int) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise MalformedExchangeMessage(f"{key!r} must be a text string")
    if len(value) > limit:
        raise MalformedExchangeMessage(f"{key!r} longer than {limit} characters")
    return value


_KEYS: Final[dict[str, frozenset[str]]] = {
    "evidence": frozenset({"version", "type", "media", "evidence"}),
    "none": frozenset({"version", "type"}),
    "verdict": frozenset({"version", "type", "result"}),
}


def encode_message(event: ExchangeEvent) -> bytes:
    """Encode one exchange message with its length prefix.

    Args:
        event: the message to encode.

    Returns:
        ``4-byte big-endian length || deterministic CBOR``.

    Raises:
        LocalProtocolError: the message would exceed :data:`MAX_EXCHANGE_MESSAGE_SIZE`
            or has an invalid media type.
    """
    body: dict[str, object] = {"version": EXCHANGE_VERSION}
    if isinstance(event, Evidence):
        if not event.media_type or len(event.media_type) > MAX_MEDIA_TYPE_LENGTH:
            raise LocalProtocolError("media type must be 1..255 characters")
        body.update(type="evidence", media=event.media_type, evidence=bytes(event.evidence))
    elif isinstance(event, NoEvidence):
        body["type"] = "none"
    else:
        body.update(type="verdict", result=event.result.value)
        if event.result is VerdictResult.REFUSED:
            body["reason"] = event.reason
    payload = cbor2.dumps(body, canonical=True)
    if len(payload) > MAX_EXCHANGE_MESSAGE_SIZE:
        raise LocalProtocolError(
            f"exchange message of {len(payload)} bytes exceeds {MAX_EXCHANGE_MESSAGE_SIZE}"
        )
    return _HEADER.pack(len(payload)) + payload


def decode_message(payload: bytes) -> ExchangeEvent:
    """Decode the CBOR payload of one exchange message (without its length prefix).

    Args:
        payload: the CBOR bytes.

    Returns:
        The decoded message.

    Raises:
        MalformedExchangeMessage: not deterministic CBOR, not a map of the expected
            shape, or an unknown message type.
        UnsupportedExchangeVersion: a version other than :data:`EXCHANGE_VERSION`.
    """
    try:
        decoded: object = cbor2.loads(payload)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MalformedExchangeMessage(f"not valid CBOR: {exc}") from exc
    if not isinstance(decoded, dict):
        raise MalformedExchangeMessage("exchange message is not a CBOR map")
    version = decoded.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedExchangeMessage("'version' must be an integer")
    if version != EXCHANGE_VERSION:
        raise UnsupportedExchangeVersion(version)
    kind = _checked_text(decoded, "type", 32)
    allowed = _KEYS.get(kind)
    if allowed is None:
        raise MalformedExchangeMessage(f"unknown message type {kind!r}")
    event: ExchangeEvent
    if kind == "evidence":
        media = _checked_text(decoded, "media", MAX_MEDIA_TYPE_LENGTH)
        if not media:
            raise MalformedExchangeMessage("'media' is empty")
        evidence = decoded.get("evidence")
        if not isinstance(evidence, bytes):
            raise MalformedExchangeMessage("'evidence' must be a byte string")
        event = Evidence(media_type=media, evidence=evidence)
    elif kind == "none":
        event = NoEvidence()
    else:
        result_text = _checked_text(decoded, "result", 16)
        if result_text == VerdictResult.OK.value:
            event = Verdict.ok()
        elif result_text == VerdictResult.REFUSED.value:
            allowed = allowed | {"reason"}
            event = Verdict(
                result=VerdictResult.REFUSED,
                reason=_checked_text(decoded, "reason", MAX_REASON_LENGTH),
            )
        else:
            raise MalformedExchangeMessage(f"unknown verdict result {result_text!r}")
    if set(decoded) != allowed:
        extra = sorted(map(repr, set(decoded) ^ allowed))
        raise MalformedExchangeMessage(f"{kind} message has wrong keys: {', '.join(extra)}")
    # Exactly one encoding: what we would have sent, byte for byte.  This also refuses
    # trailing bytes after the CBOR item, indefinite lengths, duplicate keys, non-minimal
    # integers and tags.
    if encode_message(event)[_HEADER.size :] != payload:
        raise MalformedExchangeMessage("exchange message is not in deterministic CBOR encoding")
    return event


# --------------------------------------------------------------------------- machine


class ExchangeRole(enum.Enum):
    """Which end of the TLS connection this side is; it fixes the message order."""

    #: The TLS client: receives the server's evidence first.
    CLIENT = "client"
    #: The TLS server: sends its evidence first.
    SERVER = "server"


class ExchangeState(enum.Enum):
    """Where an :class:`AttestationExchange` is; names say what must happen next."""

    #: We must send EVIDENCE or NONE.
    SEND_EVIDENCE = enum.auto()
    #: We must send our VERDICT on the peer's evidence.
    SEND_VERDICT = enum.auto()
    #: We wait for the peer's EVIDENCE or NONE.
    AWAIT_EVIDENCE = enum.auto()
    #: We wait for the peer's VERDICT on our evidence.
    AWAIT_VERDICT = enum.auto()
    #: Both verdicts were ok; application data may flow.
    DONE = enum.auto()
    #: We sent a refused verdict.
    REFUSED = enum.auto()
    #: The peer sent a refused verdict.
    PEER_REFUSED = enum.auto()
    #: The peer violated the protocol.
    ERROR = enum.auto()


_S = ExchangeState

#: Initial state per role.
_INITIAL: Final = {ExchangeRole.SERVER: _S.SEND_EVIDENCE, ExchangeRole.CLIENT: _S.AWAIT_EVIDENCE}

# The whole protocol: (role, state, message kind, direction) -> next state.  Anything
# missing is a protocol violation.  "refused" verdicts are handled separately: either
# side may abort with one from any non-terminal state.
_TRANSITIONS: Final[dict[tuple[ExchangeRole, ExchangeState, str, str], ExchangeState]] = {
    (ExchangeRole.SERVER, _S.SEND_EVIDENCE, "evidence", "send"): _S.AWAIT_EVIDENCE,
    (ExchangeRole.SERVER, _S.AWAIT_EVIDENCE, "evidence", "receive"): _S.AWAIT_VERDICT,
    (ExchangeRole.SERVER, _S.AWAIT_VERDICT, "verdict", "receive"): _S.SEND_VERDICT,
    (ExchangeRole.SERVER, _S.SEND_VERDICT, "verdict", "send"): _S.DONE,
    (ExchangeRole.CLIENT, _S.AWAIT_EVIDENCE, "evidence", "receive"): _S.SEND_EVIDENCE,
    (ExchangeRole.CLIENT, _S.SEND_EVIDENCE, "evidence", "send"): _S.SEND_VERDICT,
    (ExchangeRole.CLIENT, _S.SEND_VERDICT, "verdict", "send"): _S.AWAIT_VERDICT,
    (ExchangeRole.CLIENT, _S.AWAIT_VERDICT, "verdict", "receive"): _S.DONE,
}

_TERMINAL: Final = frozenset({_S.DONE, _S.REFUSED, _S.PEER_REFUSED})
_RECEIVING: Final = frozenset({_S.AWAIT_EVIDENCE, _S.AWAIT_VERDICT})


def _kind(event: ExchangeEvent) -> str:
    # EVIDENCE and NONE fill the same slot in the protocol.
    return "verdict" if isinstance(event, Verdict) else "evidence"


def _wire_type(event: ExchangeEvent) -> str:
    if isinstance(event, Evidence):
        return "evidence"
    return "none" if isinstance(event, NoEvidence) else "verdict"


@final
class AttestationExchange:
    """One side of the post-handshake attestation exchange (sans-I/O, h11-style).

    Feed bytes from the peer with :meth:`receive_data`, pull messages with
    :meth:`next_event`, and turn our own messages into bytes with :meth:`send`.

    Args:
        role: which end of the TLS connection this side is.
        max_message_size: largest CBOR payload accepted from the peer.
    """

    def __init__(
        self, role: ExchangeRole, *, max_message_size: int = MAX_EXCHANGE_MESSAGE_SIZE
    ) -> None:
        self._role = role
        self._state = _INITIAL[role]
        self._max = max_message_size
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def role(self) -> ExchangeRole:
        """Which end of the TLS connection this side is."""
        return self._role

    @property
    def state(self) -> ExchangeState:
        """The current state."""
        return self._state

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the exchange ended: the start of the application data.

        Raises:
            LocalProtocolError: the exchange has not completed successfully.
        """
        if self._state is not _S.DONE:
            raise LocalProtocolError(
                f"no application data before the exchange is done ({self._state.name})"
            )
        return bytes(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed the stream.

        Args:
            data: the bytes, or ``b""`` for end of stream.

        Raises:
            LocalProtocolError: data after end of stream.
        """
        if self._eof and data:
            raise LocalProtocolError("received data after end of stream")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> ExchangeEvent | Sentinel:
        """Parse the next message from the peer, if it is the peer's turn.

        Returns:
            The message, :data:`NEED_DATA` when more bytes are needed, or :data:`PAUSED`
            when it is not the peer's turn (we must send, or the exchange is over).

        Raises:
            RemoteProtocolError: a subclass naming what the peer got wrong; the state
                becomes ERROR and the same error is raised again on every later call.
        """
        if self._error is not None:
            raise self._error
        if self._state not in _RECEIVING:
            return PAUSED
        try:
            return self._parse_one()
        except RemoteProtocolError as exc:
            self._state = _S.ERROR
            self._error = exc
            raise

    def _parse_one(self) -> ExchangeEvent | Sentinel:
        if len(self._buffer) < _HEADER.size:
            return self._need_data()
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > self._max:
            raise ExchangeMessageTooLarge(size, self._max)
        if size == 0:
            raise MalformedExchangeMessage("empty exchange message")
        end = _HEADER.size + size
        if len(self._buffer) < end:
            return self._need_data()
        payload = bytes(self._buffer[_HEADER.size : end])
        event = decode_message(payload)
        del self._buffer[:end]
        if isinstance(event, Verdict) and event.result is VerdictResult.REFUSED:
            self._state = _S.PEER_REFUSED
            return event
        next_state = _TRANSITIONS.get((self._role, self._state, _kind(event), "receive"))
        if next_state is None:
            raise UnexpectedExchangeMessage(self._state, _wire_type(event))
        self._state = next_state
        return event

    def _need_data(self) -> Sentinel:
        if self._eof:
            raise ExchangeTruncated(self._state, len(self._buffer))
        return NEED_DATA

    def send(self, event: ExchangeEvent) -> bytes:
        """Encode our next message and advance the state.

        A refused :class:`Verdict` may be sent in any state that is not final, including
        after the peer broke the protocol (to tell it why we stop).

        Args:
            event: the message to send.

        Returns:
            The bytes to write to the peer.

        Raises:
            LocalProtocolError: the message is not allowed in the current state.
        """
        if isinstance(event, Verdict) and event.result is VerdictResult.REFUSED:
            if self._state in _TERMINAL:
                raise LocalProtocolError(f"cannot refuse in state {self._state.name}")
            data = encode_message(event)
            self._state = _S.REFUSED
            return data
        next_state = _TRANSITIONS.get((self._role, self._state, _kind(event), "send"))
        if next_state is None:
            raise LocalProtocolError(
                f"can't send {_wire_type(event)!r} in state {self._state.name}"
            )
        data = encode_message(event)
        self._state = next_state
        return data

    def __repr__(self) -> str:
        return (
            f"<AttestationExchange role={self._role.value} state={self._state.name}"
            f" buffered={len(self._buffer)}>"
        )


# --------------------------------------------------------------------------- seam


@runtime_checkable
class LocalAttester(Protocol):
    """Produces this side's evidence for a binder (implemented by ratls attesters).

    ``evidence`` may block (TPM commands, an ioctl, a KDS fetch); the trio stream calls
    it in a worker thread.  It raises :class:`~ratls.AttesterError` when it cannot
    produce evidence.
    """

    def evidence(self, binder: bytes) -> bytes:
        """Returns evidence whose freshness/binding field carries ``binder`` (64 bytes)."""
        ...


@runtime_checkable
class PeerVerifier(Protocol):
    """Checks the peer's evidence against the binder we expect (implemented by verifiers).

    ``verify`` returns the verified result (for ratls verifiers an
    :class:`~ratls._result.AttestationResult`), which becomes the stream's
    ``peer_attestation``, or raises a :class:`~ratls.RatlsError` naming what is wrong.
    It must never return a falsy "failed" value; the return value is not inspected.
    """

    def verify(self, evidence: bytes, binder: bytes) -> object:
        """Returns the verified result, or raises RatlsError."""
        ...


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationConfig:
    """What one side of an attested connection proves and demands.

    Attributes:
        attester: produces our evidence; None means we send NONE (we do not attest).
        verifier: checks the peer's evidence; None means we do not require the peer to
            attest (we accept NONE and do not look at evidence we are sent).
        media_type: media type of the evidence our attester produces.
        accepted_media_types: media types we hand to the verifier; others are refused.
        run_in_thread: call the attester and verifier in a worker thread (the default;
            turn it off only for fast in-memory implementations, e.g. in tests).
    """

    attester: LocalAttester | None = None
    verifier: PeerVerifier | None = None
    media_type: str = DEFAULT_MEDIA_TYPE
    accepted_media_types: frozenset[str] = frozenset({DEFAULT_MEDIA_TYPE})
    run_in_thread: bool = True

    def __post_init__(self) -> None:
        if not self.media_type or len(self.media_type) > MAX_MEDIA_TYPE_LENGTH:
            raise ValueError("media_type must be 1..255 characters")
        if not isinstance(self.accepted_media_types, frozenset):
            raise TypeError("accepted_media_types must be a frozenset")


def compute_binder(certificate: x509.Certificate, exporter: bytes) -> bytes:
    """The 64-byte binder: SHA-256(certificate's SPKI DER) || RFC 9266 exporter value.

    Args:
        certificate: the TLS certificate of the side whose evidence this binder is for.
        exporter: ``TLS-Exporter("EXPORTER-Channel-Binding", "", 32)`` of the connection.

    Returns:
        The binder, :data:`BINDER_LENGTH` bytes.

    Raises:
        ValueError: the exporter value is not :data:`EXPORTER_LENGTH` bytes.
    """
    if len(exporter) != EXPORTER_LENGTH:
        raise ValueError(f"exporter value must be {EXPORTER_LENGTH} bytes")
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest() + exporter


def local_evidence_event(config: AttestationConfig, binder: bytes) -> Evidence | NoEvidence:
    """Build our EVIDENCE (or NONE) message; may block in the attester.

    Args:
        config: our attestation configuration.
        binder: our binder (from :func:`compute_binder` with our own certificate).

    Returns:
        The message to send.

    Raises:
        RatlsError: whatever the attester raises (typically AttesterError).
    """
    if config.attester is None:
        return NoEvidence()
    return Evidence(media_type=config.media_type, evidence=config.attester.evidence(binder))


def appraise_peer_evidence(
    config: AttestationConfig, event: Evidence | NoEvidence, binder: bytes | None
) -> object:
    """Decide on the peer's EVIDENCE/NONE message; may block in the verifier.

    Args:
        config: our attestation configuration.
        event: what the peer sent.
        binder: the binder the peer's evidence must carry, or None when the peer sent
            no certificate (then no evidence can be bound to it).

    Returns:
        The verifier's result, or None when we do not require the peer to attest.

    Raises:
        PolicyViolation: we require evidence and got none, evidence of a media type we
            do not accept, or evidence without a peer certificate to bind it to.
        RatlsError: whatever the verifier raises.
    """
    if config.verifier is None:
        return None
    if isinstance(event, NoEvidence):
        raise PolicyViolation("exchange.evidence", expected="evidence", actual="none")
    if event.media_type not in config.accepted_media_types:
        raise PolicyViolation(
            "exchange.media",
            expected=" | ".join(sorted(config.accepted_media_types)),
            actual=event.media_type,
        )
    if binder is None:
        raise PolicyViolation("tls.peer_certificate", expected="a certificate", actual="none")
    return config.verifier.verify(event.evidence, binder)
