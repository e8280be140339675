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
    {"version": 1, "type": "challenge", "challenge": h'...'}
    {"version": 1, "type": "response", "response": h'...'}

Message order (one direction at a time, so that no side ever has to send while the
other is also sending: the exchange cannot deadlock on a transport without buffering)::

    server -> client   EVIDENCE or NONE                     (flight 1)
    client -> server   CHALLENGE                            (only if the client asks)
    server -> client   RESPONSE                             (only after that CHALLENGE)
    client -> server   EVIDENCE or NONE, then VERDICT       (flight 2)
    server -> client   CHALLENGE                            (only if the server asks)
    client -> server   RESPONSE                             (only after that CHALLENGE)
    server -> client   VERDICT                              (flight 3)

The client judges the server's evidence before it shows its own, so a client never hands
its evidence to a server it has not accepted.  A "refused" VERDICT may be sent at any
point instead of the next message; it ends the exchange.  After flight 3, bytes that
follow on the same TLS stream are application data (:attr:`AttestationExchange.trailing_data`).

The challenge round.  Some evidence cannot prove everything by itself: an SNP report
binds a vTPM's endorsement key (EK), which cannot sign, so whether the attestation key
(AK) that signed the quote lives in that vTPM is shown by credential activation
(TPM2_MakeCredential by the verifier, TPM2_ActivateCredential by the attester).  A
verifier that wants such a proof answers the peer's EVIDENCE with one CHALLENGE, the
attester answers with one RESPONSE, and only then does the verifier judge the evidence.
Each side may challenge the other once, and only evidence (never NONE) can be
challenged.  Peers whose verifiers never challenge exchange exactly the bytes of the
three-flight exchange, so the round needs no new version.

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
from typing import TYPE_CHECKING, Final, Protocol, cast, final, runtime_checkable

import cbor2
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._errors import (
    AttesterError,
    LocalProtocolError,
    PolicyViolation,
    RatlsError,
    RemoteProtocolError,
)
from ._steps import run_inline

if TYPE_CHECKING:
    from cryptography import x509

    from ._steps import Steps

__all__ = [
    "BINDER_LENGTH",
    "DEFAULT_MEDIA_TYPE",
    "EXCHANGE_VERSION",
    "EXPORTER_CONTEXT",
    "EXPORTER_LABEL",
    "EXPORTER_LENGTH",
    "MAX_CHALLENGE_SIZE",
    "MAX_EXCHANGE_MESSAGE_SIZE",
    "MAX_MEDIA_TYPE_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_RESPONSE_SIZE",
    "NEED_DATA",
    "PAUSED",
    "ActivatingVerifier",
    "ActivationState",
    "AttestationConfig",
    "AttestationExchange",
    "AttestationRefused",
    "Challenge",
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
    "RespondingAttester",
    "Response",
    "Sentinel",
    "UnexpectedExchangeMessage",
    "UnsupportedExchangeVersion",
    "Verdict",
    "VerdictResult",
    "appraise_peer_evidence",
    "appraise_peer_evidence_steps",
    "compute_binder",
    "decode_message",
    "encode_message",
    "local_evidence_event",
    "local_evidence_steps",
    "local_response_event",
    "peer_activation_challenge",
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

# Largest CHALLENGE accepted.  A TPM credential in the tpm2-tools file format is 4+4
# bytes of header, a TPM2B_ID_OBJECT (an HMAC and the encrypted secret, under 150 bytes)
# and a TPM2B_ENCRYPTED_SECRET (the RSA key size: 256 bytes for RSA-2048, 512 for
# RSA-4096; under 100 for ECC).  8 KiB is room for any such credential, or a nonce and
# a few parameters for other verifiers, and still far below the evidence limit.
MAX_CHALLENGE_SIZE: Final = 8 * 1024

# Largest RESPONSE accepted.  A recovered credential secret is at most a digest (64
# bytes); a response that is a signature over the challenge may be larger (an ML-DSA-87
# signature is 4627 bytes).  8 KiB covers both.
MAX_RESPONSE_SIZE: Final = 8 * 1024

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


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """A CHALLENGE message: the verifier asks the attester to prove more about its evidence.

    Attributes:
        challenge: what the attester must answer, opaque to the exchange
            (1 to :data:`MAX_CHALLENGE_SIZE` bytes); for ratls verifiers a TPM credential.
    """

    challenge: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.challenge, bytes):
            raise TypeError("challenge must be bytes")
        if not 1 <= len(self.challenge) <= MAX_CHALLENGE_SIZE:
            raise ValueError(f"a challenge is 1 to {MAX_CHALLENGE_SIZE} bytes")

    def __repr__(self) -> str:
        return f"Challenge(challenge=<{len(self.challenge)} bytes>)"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A RESPONSE message: the attester's answer to the verifier's CHALLENGE.

    Attributes:
        response: the answer, opaque to the exchange (1 to :data:`MAX_RESPONSE_SIZE`
            bytes); for ratls attesters the secret the vTPM recovered.  Never shown in
            the repr.
    """

    response: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.response, bytes):
            raise TypeError("response must be bytes")
        if not 1 <= len(self.response) <= MAX_RESPONSE_SIZE:
            raise ValueError(f"a response is 1 to {MAX_RESPONSE_SIZE} bytes")

    def __repr__(self) -> str:
        return f"Response(response=<{len(self.response)} bytes>)"


ExchangeEvent = Evidence | NoEvidence | Verdict | Challenge | Response


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
    "challenge": frozenset({"version", "type", "challenge"}),
    "response": frozenset({"version", "type", "response"}),
}


def _checked_bytes(message: dict[object, object], key: str, limit: int) -> bytes:
    value = message.get(key)
    if not isinstance(value, bytes):
        raise MalformedExchangeMessage(f"{key!r} must be a byte string")
    if not 1 <= len(value) <= limit:
        raise MalformedExchangeMessage(f"{key!r} is {len(value)} bytes, expected 1 to {limit}")
    return value


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
    elif isinstance(event, Challenge):
        body.update(type="challenge", challenge=bytes(event.challenge))
    elif isinstance(event, Response):
        body.update(type="response", response=bytes(event.response))
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
    elif kind == "challenge":
        event = Challenge(challenge=_checked_bytes(decoded, "challenge", MAX_CHALLENGE_SIZE))
    elif kind == "response":
        event = Response(response=_checked_bytes(decoded, "response", MAX_RESPONSE_SIZE))
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

    #: We must send EVIDENCE or NONE (the client may first CHALLENGE the server's evidence).
    SEND_EVIDENCE = enum.auto()
    #: We must send our VERDICT on the peer's evidence (the server may first CHALLENGE it).
    SEND_VERDICT = enum.auto()
    #: We wait for the peer's EVIDENCE or NONE (the server: or a CHALLENGE of its evidence).
    AWAIT_EVIDENCE = enum.auto()
    #: We wait for the peer's VERDICT on our evidence (the client: or a CHALLENGE of it).
    AWAIT_VERDICT = enum.auto()
    #: We must answer the peer's CHALLENGE with a RESPONSE.
    SEND_RESPONSE = enum.auto()
    #: We wait for the peer's RESPONSE to our CHALLENGE.
    AWAIT_RESPONSE = enum.auto()
    #: Client, after the server answered our CHALLENGE: we must send EVIDENCE or NONE.
    SEND_EVIDENCE_AFTER_RESPONSE = enum.auto()
    #: Server, after we answered the client's CHALLENGE: we wait for EVIDENCE or NONE.
    AWAIT_EVIDENCE_AFTER_RESPONSE = enum.auto()
    #: Server, after the client answered our CHALLENGE: we must send our VERDICT.
    SEND_VERDICT_AFTER_RESPONSE = enum.auto()
    #: Client, after we answered the server's CHALLENGE: we wait for its VERDICT.
    AWAIT_VERDICT_AFTER_RESPONSE = enum.auto()
    #: Both verdicts were ok; application data may flow.
    DONE = enum.auto()
    #: We sent a refused verdict.
    REFUSED = enum.auto()
    #: The peer sent a refused verdict.
    PEER_REFUSED = enum.auto()
    #: The peer violated the protocol.
    ERROR = enum.auto()


_S = ExchangeState
_C = ExchangeRole.CLIENT
_SV = ExchangeRole.SERVER

#: Initial state per role.
_INITIAL: Final = {ExchangeRole.SERVER: _S.SEND_EVIDENCE, ExchangeRole.CLIENT: _S.AWAIT_EVIDENCE}

# The whole protocol: (role, state, message kind, direction) -> next state.  Anything
# missing is a protocol violation.  Two rules sit beside the table: "refused" verdicts
# may replace any message in any non-terminal state (either side may abort), and a
# CHALLENGE is allowed only when the evidence it questions is EVIDENCE, not NONE (there
# is nothing to prove about no evidence).  Each side can challenge at most once: after
# a RESPONSE the machine is in an *_AFTER_RESPONSE state that has no challenge entry.
_TRANSITIONS: Final[dict[tuple[ExchangeRole, ExchangeState, str, str], ExchangeState]] = {
    # flight 1 (server evidence), with the client's optional challenge of it
    (_SV, _S.SEND_EVIDENCE, "evidence", "send"): _S.AWAIT_EVIDENCE,
    (_C, _S.AWAIT_EVIDENCE, "evidence", "receive"): _S.SEND_EVIDENCE,
    (_C, _S.SEND_EVIDENCE, "challenge", "send"): _S.AWAIT_RESPONSE,
    (_SV, _S.AWAIT_EVIDENCE, "challenge", "receive"): _S.SEND_RESPONSE,
    (_SV, _S.SEND_RESPONSE, "response", "send"): _S.AWAIT_EVIDENCE_AFTER_RESPONSE,
    (_C, _S.AWAIT_RESPONSE, "response", "receive"): _S.SEND_EVIDENCE_AFTER_RESPONSE,
    # flight 2 (client evidence and verdict)
    (_C, _S.SEND_EVIDENCE, "evidence", "send"): _S.SEND_VERDICT,
    (_C, _S.SEND_EVIDENCE_AFTER_RESPONSE, "evidence", "send"): _S.SEND_VERDICT,
    (_C, _S.SEND_VERDICT, "verdict", "send"): _S.AWAIT_VERDICT,
    (_SV, _S.AWAIT_EVIDENCE, "evidence", "receive"): _S.AWAIT_VERDICT,
    (_SV, _S.AWAIT_EVIDENCE_AFTER_RESPONSE, "evidence", "receive"): _S.AWAIT_VERDICT,
    (_SV, _S.AWAIT_VERDICT, "verdict", "receive"): _S.SEND_VERDICT,
    # the server's optional challenge of the client's evidence
    (_SV, _S.SEND_VERDICT, "challenge", "send"): _S.AWAIT_RESPONSE,
    (_C, _S.AWAIT_VERDICT, "challenge", "receive"): _S.SEND_RESPONSE,
    (_C, _S.SEND_RESPONSE, "response", "send"): _S.AWAIT_VERDICT_AFTER_RESPONSE,
    (_SV, _S.AWAIT_RESPONSE, "response", "receive"): _S.SEND_VERDICT_AFTER_RESPONSE,
    # flight 3 (server verdict)
    (_SV, _S.SEND_VERDICT, "verdict", "send"): _S.DONE,
    (_SV, _S.SEND_VERDICT_AFTER_RESPONSE, "verdict", "send"): _S.DONE,
    (_C, _S.AWAIT_VERDICT, "verdict", "receive"): _S.DONE,
    (_C, _S.AWAIT_VERDICT_AFTER_RESPONSE, "verdict", "receive"): _S.DONE,
}

_TERMINAL: Final = frozenset({_S.DONE, _S.REFUSED, _S.PEER_REFUSED})
_RECEIVING: Final = frozenset(
    {
        _S.AWAIT_EVIDENCE,
        _S.AWAIT_VERDICT,
        _S.AWAIT_RESPONSE,
        _S.AWAIT_EVIDENCE_AFTER_RESPONSE,
        _S.AWAIT_VERDICT_AFTER_RESPONSE,
    }
)


def _kind(event: ExchangeEvent) -> str:
    # EVIDENCE and NONE fill the same slot in the protocol.
    return "evidence" if isinstance(event, NoEvidence) else _wire_type(event)


def _wire_type(event: ExchangeEvent) -> str:
    if isinstance(event, Evidence):
        return "evidence"
    if isinstance(event, NoEvidence):
        return "none"
    if isinstance(event, Challenge):
        return "challenge"
    return "response" if isinstance(event, Response) else "verdict"


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
        # Which evidence messages carried evidence (for the challenge rule).
        self._sent_evidence = False
        self._received_evidence = False

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
        if next_state is None or (isinstance(event, Challenge) and not self._sent_evidence):
            raise UnexpectedExchangeMessage(self._state, _wire_type(event))
        self._state = next_state
        if isinstance(event, Evidence):
            self._received_evidence = True
        return event

    def _need_data(self) -> Sentinel:
        if self._eof:
            raise ExchangeTruncated(self._state, len(self._buffer))
        return NEED_DATA

    def send(self, event: ExchangeEvent) -> bytes:
        """Encode our next message and advance the state.

        A refused :class:`Verdict` may be sent in any state that is not final, including
        after the peer broke the protocol (to tell it why we stop).  A :class:`Challenge`
        may be sent only about EVIDENCE the peer sent (not NONE), once per side.

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
        if isinstance(event, Challenge) and not self._received_evidence:
            raise LocalProtocolError("can't challenge a peer that sent no evidence")
        data = encode_message(event)
        self._state = next_state
        if isinstance(event, Evidence):
            self._sent_evidence = True
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
    it in a worker thread.  An attester that only computes (a simulator) may say so with
    a class attribute ``blocking = False``; it is then called in the event loop, which
    spares two thread hand-offs per connection.  Such an attester may also offer
    ``evidence_steps(binder)`` (see :func:`local_evidence_steps`), so that its GIL-free
    calls run on a worker thread.  It raises :class:`~ratls.AttesterError` when it
    cannot produce evidence.
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
    Like attesters, a verifier that only computes may declare ``blocking = False``, and
    may offer ``verify_steps(evidence, binder)`` (see :func:`appraise_peer_evidence_steps`).
    """

    def verify(self, evidence: bytes, binder: bytes) -> object:
        """Returns the verified result, or raises RatlsError."""
        ...


@runtime_checkable
class ActivationState(Protocol):
    """A verifier's pending challenge: the bytes to send, and whatever it must remember.

    The exchange never looks inside; it sends :meth:`challenge_bytes` in a CHALLENGE
    message and hands the object back to :meth:`ActivatingVerifier.verify` with the
    peer's RESPONSE.  ratls's :class:`~ratls._bound.BoundActivation` keeps the TPM
    credential secret here, so it never leaves the verifier.
    """

    def challenge_bytes(self) -> bytes:
        """Returns what the attester must answer (1 to MAX_CHALLENGE_SIZE bytes)."""
        ...


@runtime_checkable
class ActivatingVerifier(Protocol):
    """A :class:`PeerVerifier` that may challenge the evidence before judging it.

    The exchange calls ``activation_challenge(evidence)`` right after the peer's
    EVIDENCE arrives.  None means "no challenge" and the exchange goes on exactly as
    with a plain :class:`PeerVerifier` (``verify(evidence, binder)``).  Otherwise the
    returned :class:`ActivationState` is sent as a CHALLENGE, and the evidence is judged
    with ``verify(evidence, binder, activation=state, response=answer)`` once the
    peer's RESPONSE is in.  Verifiers that only implement ``verify`` never challenge.
    """

    def activation_challenge(self, evidence: bytes) -> object | None:
        """Returns an :class:`ActivationState` to challenge ``evidence``, or None."""
        ...

    def verify(
        self,
        evidence: bytes,
        binder: bytes,
        *,
        activation: object = None,
        response: bytes | None = None,
    ) -> object:
        """Returns the verified result, or raises RatlsError."""
        ...


@runtime_checkable
class RespondingAttester(Protocol):
    """A :class:`LocalAttester` that can answer a verifier's CHALLENGE.

    ``respond`` may block (a TPM command); the trio stream calls it in a worker thread.
    An attester without it that is challenged refuses the exchange with a reason.
    """

    def respond(self, challenge: bytes) -> bytes:
        """Returns the answer to ``challenge``, or raises RatlsError (AttesterError)."""
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
        verify_in_thread: call the verifier in a worker thread; None (the default)
            follows ``run_in_thread``.  A verifier that only computes can run in the
            event loop while a blocking attester (a TPM) keeps its thread.
        run_in_thread: call the attester and verifier in a worker thread (the default;
            turn it off only for implementations that never block, e.g. simulators;
            :func:`~ratls._attesters_registry.make_attestation_config` decides from
            their ``blocking`` attributes).
    """

    attester: LocalAttester | None = None
    verifier: PeerVerifier | None = None
    media_type: str = DEFAULT_MEDIA_TYPE
    accepted_media_types: frozenset[str] = frozenset({DEFAULT_MEDIA_TYPE})
    run_in_thread: bool = True
    verify_in_thread: bool | None = None

    @property
    def verifier_in_thread(self) -> bool:
        """Whether the verifier is called in a worker thread (``verify_in_thread``, or
        ``run_in_thread`` when that is None)."""
        return self.run_in_thread if self.verify_in_thread is None else self.verify_in_thread

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
    return run_inline(local_evidence_steps(config, binder))


def local_evidence_steps(config: AttestationConfig, binder: bytes) -> Steps[Evidence | NoEvidence]:
    """:func:`local_evidence_event` as :mod:`ratls._steps`.

    An attester with an ``evidence_steps(binder)`` method of the same kind (see
    :class:`~ratls._bound.SimulatedSnpAttester`) lets the driver choose where its
    GIL-free calls run; any other is called as usual.
    """
    if config.attester is None:
        return NoEvidence()
    steps = getattr(config.attester, "evidence_steps", None)
    if callable(steps):
        evidence: object = yield from steps(binder)
    else:
        evidence = config.attester.evidence(binder)
    return Evidence(media_type=config.media_type, evidence=cast("bytes", evidence))


def _check_peer_event(
    config: AttestationConfig, event: Evidence | NoEvidence, binder: bytes | None
) -> tuple[Evidence, bytes]:
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
    return event, binder


def peer_activation_challenge(
    config: AttestationConfig, event: Evidence | NoEvidence, binder: bytes | None
) -> tuple[object, Challenge] | None:
    """Ask our verifier whether it challenges the peer's evidence; may block.

    Args:
        config: our attestation configuration.
        event: what the peer sent.
        binder: the binder the peer's evidence must carry, or None without a peer
            certificate.

    Returns:
        None when there is nothing to challenge (we do not verify the peer, our verifier
        never challenges or does not challenge this evidence); otherwise the verifier's
        :class:`ActivationState` (keep it for :func:`appraise_peer_evidence`) and the
        CHALLENGE message to send.

    Raises:
        PolicyViolation: the peer's message will be refused anyway (no evidence, a media
            type we do not accept, no certificate to bind it to); see
            :func:`appraise_peer_evidence`.
        LocalProtocolError: the verifier's state has no valid ``challenge_bytes()``.
        RatlsError: whatever the verifier raises (e.g. malformed evidence).
    """
    if config.verifier is None:
        return None
    evidence, _ = _check_peer_event(config, event, binder)
    start = getattr(config.verifier, "activation_challenge", None)
    if not callable(start):
        return None
    state: object = start(evidence.evidence)
    if state is None:
        return None
    if not isinstance(state, ActivationState):
        raise LocalProtocolError("the verifier's activation state has no challenge_bytes()")
    try:
        message = Challenge(challenge=bytes(state.challenge_bytes()))
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"the verifier made an unusable challenge: {exc}") from exc
    return state, message


def local_response_event(config: AttestationConfig, challenge: Challenge) -> Response:
    """Answer the peer's CHALLENGE with our attester; may block (a TPM command).

    Args:
        config: our attestation configuration.
        challenge: what the peer sent.

    Returns:
        The RESPONSE message to send.

    Raises:
        AttesterError: our attester cannot answer challenges (no ``respond`` method), or
            its answer is empty or longer than :data:`MAX_RESPONSE_SIZE`.
        RatlsError: whatever the attester raises (e.g. the TPM refused the credential).
    """
    respond = getattr(config.attester, "respond", None)
    if not callable(respond):
        raise AttesterError(
            "challenged by the peer, but this attester cannot answer challenges "
            "(no credential activation without a vTPM)"
        )
    answer: object = respond(challenge.challenge)
    if not isinstance(answer, bytes) or not 1 <= len(answer) <= MAX_RESPONSE_SIZE:
        raise AttesterError(f"the attester's answer is not 1 to {MAX_RESPONSE_SIZE} bytes")
    return Response(response=answer)


def appraise_peer_evidence(
    config: AttestationConfig,
    event: Evidence | NoEvidence,
    binder: bytes | None,
    *,
    activation: object = None,
    response: Response | None = None,
) -> object:
    """Decide on the peer's EVIDENCE/NONE message; may block in the verifier.

    Args:
        config: our attestation configuration.
        event: what the peer sent.
        binder: the binder the peer's evidence must carry, or None when the peer sent
            no certificate (then no evidence can be bound to it).
        activation: the state :func:`peer_activation_challenge` returned, when we
            challenged this evidence.
        response: the peer's RESPONSE to that challenge.

    Returns:
        The verifier's result, or None when we do not require the peer to attest.

    Raises:
        PolicyViolation: we require evidence and got none, evidence of a media type we
            do not accept, or evidence without a peer certificate to bind it to.
        LocalProtocolError: only one of ``activation`` and ``response`` was given.
        RatlsError: whatever the verifier raises.
    """
    return run_inline(
        appraise_peer_evidence_steps(
            config, event, binder, activation=activation, response=response
        )
    )


def appraise_peer_evidence_steps(
    config: AttestationConfig,
    event: Evidence | NoEvidence,
    binder: bytes | None,
    *,
    activation: object = None,
    response: Response | None = None,
) -> Steps[object]:
    """:func:`appraise_peer_evidence` as :mod:`ratls._steps`.

    A verifier with a ``verify_steps(evidence, binder)`` method of the same kind (see
    :class:`~ratls._bound.BoundVerifier`) lets the driver choose where its GIL-free
    calls run; any other is called as usual.  Challenged evidence is always judged with
    ``verify``.
    """
    if config.verifier is None:
        return None
    evidence, bound_to = _check_peer_event(config, event, binder)
    if activation is None and response is None:
        steps = getattr(config.verifier, "verify_steps", None)
        if callable(steps):
            result: object = yield from steps(evidence.evidence, bound_to)
            return result
        return config.verifier.verify(evidence.evidence, bound_to)
    if activation is None or response is None:
        raise LocalProtocolError("a challenge and its response go together")
    verifier = cast("ActivatingVerifier", config.verifier)
    return verifier.verify(
        evidence.evidence, bound_to, activation=activation, response=response.response
    )
