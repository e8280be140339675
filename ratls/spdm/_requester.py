"""Sans-I/O SPDM 1.2 requester: h11-style ``send`` / ``receive_data`` / ``next_event``.

Theory of operation
-------------------
The requester drives the connection.  :meth:`Requester.send` takes a request
message, checks it against the ``_TRANSITIONS`` table, and returns the
transport bytes to write (sealed in a DSP0277 record when it travels in a
session).  The caller writes them, reads one transport message back, hands it
to :meth:`Requester.receive_data`, and calls :meth:`Requester.next_event`, which
returns the decoded, *checked* response:

* VERSION / CAPABILITIES / ALGORITHMS are checked against what was offered
  (one common version, consistent flags, exactly one offered bit per selection).
* CERTIFICATE portions are reassembled per slot; a complete chain must match its
  DIGESTS entry and its RootHash.  Whether the chain is *trusted* is not decided
  here: ``certificate_chain(slot)`` hands it to the caller's policy.
* CHALLENGE_AUTH, signed MEASUREMENTS and KEY_EXCHANGE_RSP are verified with the
  leaf key of the slot's chain over the transcripts M1, L1/L2 and TH; a failure
  raises :class:`ratls.SignatureMismatch` and moves to ``State.ERROR``.
* KEY_EXCHANGE_RSP and FINISH_RSP drive the key schedule: handshake keys after
  TH1 (ResponderVerifyData checked), data keys after TH2.

A responder ERROR is returned as an :class:`Error` event and leaves the state
as it was (ResponseNotReady keeps the request pending for RESPOND_IF_READY).
Anything else unexpected raises a :class:`ratls.RemoteProtocolError` subclass
and moves to ``State.ERROR``, from which only GET_VERSION recovers.

KEY_EXCHANGE and FINISH carry values only the machine can compute (the DHE
share, the verify data), so they are built by :meth:`Requester.key_exchange`
and :meth:`Requester.finish` rather than passed to ``send``.
"""

from __future__ import annotations

import collections
import hmac
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ratls._errors import BindingMismatch, CertificateChainError

from ._codec import (
    Algorithms,
    AlgStruct,
    Capabilities,
    CertChain,
    Certificate,
    Challenge,
    ChallengeAuth,
    Digests,
    EndSession,
    Error,
    Finish,
    FinishRsp,
    GetCapabilities,
    GetCertificate,
    GetMeasurements,
    GetVersion,
    KeyExchange,
    KeyExchangeRsp,
    KeyUpdate,
    KeyUpdateAck,
    Measurements,
    NegotiateAlgorithms,
    RespondIfReady,
    SecuredMessageSupportedVersions,
    SecuredMessageVersionSelection,
    SpdmMessage,
    Version,
    decode_message,
    decode_secured_message_opaque,
    parse_cert_chain,
)
from ._constants import (
    RANDOM_DATA_SIZE,
    SPDM_VERSION_10,
    SPDM_VERSION_12,
    AeadAlgorithm,
    AlgType,
    BaseAsymAlgo,
    BaseHashAlgo,
    CapabilityFlag,
    DheGroup,
    KeyScheduleAlgorithm,
    KeyUpdateOperation,
    MeasurementSummaryHashType,
    OpaqueDataFormat,
    SpdmErrorCode,
)
from ._crypto import (
    CONTEXT_RESPONDER_CHALLENGE_AUTH,
    CONTEXT_RESPONDER_KEY_EXCHANGE_RSP,
    CONTEXT_RESPONDER_MEASUREMENTS,
    PublicKey,
    Transcript,
    check_verify_data,
    dhe_generate,
    dhe_shared_secret,
    hash_bytes,
    verify_data,
    verify_signature,
)
from ._errors import (
    SpdmDecodeError,
    SpdmDecryptError,
    SpdmLocalProtocolError,
    SpdmMessageTooLarge,
    SpdmRemoteProtocolError,
    SpdmUnexpectedMessage,
)
from ._state import (
    NEED_DATA,
    OUT_OF_SESSION_ONLY,
    RESPONSE_TYPES,
    SESSION_ONLY,
    NeedData,
    Negotiated,
    Role,
    Session,
    State,
    Transcripts,
    check_capability_flags,
    next_state,
)
from ._transport import MctpBinding, TransportBinding

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_REQUESTER_FLAGS",
    "Requester",
    "RequesterConfig",
    "get_capabilities_request",
    "negotiate_algorithms_request",
]

#: A verifier holds no key of its own: sessions, heartbeat and key update only.
DEFAULT_REQUESTER_FLAGS: Final = (
    CapabilityFlag.ENCRYPT_CAP
    | CapabilityFlag.MAC_CAP
    | CapabilityFlag.KEY_EX_CAP
    | CapabilityFlag.HBEAT_CAP
    | CapabilityFlag.KEY_UPD_CAP
)
# CERT_CAP and CHAL_CAP may be announced (libspdm's requester does), but this
# requester never answers encapsulated requests, so nothing that needs them works.
_UNSUPPORTED_FLAGS = (
    CapabilityFlag.MUT_AUTH_CAP
    | CapabilityFlag.PSK_CAP
    | CapabilityFlag.PSK_CAP_WITH_CONTEXT
    | CapabilityFlag.ENCAP_CAP
    | CapabilityFlag.HANDSHAKE_IN_THE_CLEAR_CAP
    | CapabilityFlag.PUB_KEY_ID_CAP
    | CapabilityFlag.CHUNK_CAP
)
_SECURED_MESSAGE_VERSIONS = (0x1000, 0x1100, 0x1200)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RequesterConfig:
    """What a requester offers.

    Attributes:
        capability_flags: GET_CAPABILITIES flags (no MUT_AUTH, PSK, ENCAP, CHUNK).
        base_asym_algo: BaseAsymAlgo bits accepted from the responder.
        base_hash_algo: BaseHashAlgo bits offered.
        dhe_groups: DHE group bits offered.
        aead_algorithms: AEAD bits offered.
        binding: the transport binding.
        data_transfer_size: DataTransferSize (and MaxSPDMmsgSize) to announce.
        ct_exponent: CTExponent to announce.
        req_session_id: the ReqSessionID half of session IDs.
    """

    capability_flags: CapabilityFlag = DEFAULT_REQUESTER_FLAGS
    base_asym_algo: int = (
        BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P384 | BaseAsymAlgo.TPM_ALG_ECDSA_ECC_NIST_P256
    )
    base_hash_algo: int = BaseHashAlgo.TPM_ALG_SHA_384 | BaseHashAlgo.TPM_ALG_SHA_256
    dhe_groups: int = DheGroup.SECP_384_R1 | DheGroup.SECP_256_R1
    aead_algorithms: int = AeadAlgorithm.AES_256_GCM | AeadAlgorithm.CHACHA20_POLY1305
    binding: TransportBinding = field(default_factory=MctpBinding)
    data_transfer_size: int = 0x1200
    ct_exponent: int = 0
    req_session_id: int = 0xFFFF

    def __post_init__(self) -> None:
        if self.capability_flags & _UNSUPPORTED_FLAGS:
            raise ValueError("capability_flags claim features this requester lacks")
        problem = check_capability_flags(self.capability_flags, responder=False)
        if problem:
            raise ValueError(f"inconsistent capability_flags: {problem}")
        if self.data_transfer_size < 42:
            raise ValueError("data_transfer_size below the SPDM minimum of 42")


@dataclass(slots=True, kw_only=True)
class _Pending:
    request: SpdmMessage
    raw: bytes
    in_session: bool
    following: State


def _one_of(selected: int, offered: int) -> bool:
    return selected.bit_count() == 1 and bool(selected & offered)


@final
class Requester:
    """The requester end of an SPDM 1.2 connection.

    Args:
        config: what to offer; defaults suit a verifier talking to a CPU-TEE responder.
    """

    def __init__(self, config: RequesterConfig | None = None) -> None:
        self._config = config if config is not None else RequesterConfig()
        self._state = State.NOT_STARTED
        self._transcripts = Transcripts()
        self._pending: _Pending | None = None
        self._not_ready: _Pending | None = None
        self._incoming: collections.deque[bytes] = collections.deque()
        self._responder_caps: Capabilities | None = None
        self._negotiated: Negotiated | None = None
        self._digests: dict[int, bytes] = {}
        self._partial: dict[int, bytes] = {}
        self._chains: dict[int, CertChain] = {}
        self._chain_bytes: dict[int, bytes] = {}
        self._session: Session | None = None
        self._dhe_key: ec.EllipticCurvePrivateKey | None = None
        self._key_exchange_slot = 0

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        """The connection state (changes when a response completes a request)."""
        return self._state

    @property
    def negotiated(self) -> Negotiated | None:
        """What VCA settled, once ALGORITHMS was accepted."""
        return self._negotiated

    @property
    def responder_capabilities(self) -> Capabilities | None:
        """The responder's CAPABILITIES message."""
        return self._responder_caps

    @property
    def session_id(self) -> int | None:
        """The ID of the open (or handshaking) session, if any."""
        return None if self._session is None else self._session.session_id

    @property
    def export_master_secret(self) -> bytes | None:
        """The session's export master secret once established (for channel binding)."""
        if self._session is None or self._session.data_secrets is None:
            return None
        return self._session.data_secrets.export_master_secret

    def certificate_chain(self, slot_id: int = 0) -> CertChain | None:
        """The complete certificate chain read from a slot, if any.

        The requester checked its framing, DIGESTS entry and RootHash, not
        whether it is trusted: that is the caller's policy.
        """
        return self._chains.get(slot_id)

    # ------------------------------------------------------------------ sending

    def send(self, request: SpdmMessage, *, in_session: bool | None = None) -> bytes:
        """Encode a request and return the transport bytes to write.

        Args:
            request: a request message (not KEY_EXCHANGE or FINISH, see
                :meth:`key_exchange` and :meth:`finish`).
            in_session: send inside the session; by default session-only
                requests do and others do once the session is established.

        Returns:
            One transport message.

        Raises:
            SpdmLocalProtocolError: if the request is not allowed now (a
                request is outstanding, the table has no move, wrong version,
                wrong place in or out of a session).
        """
        if isinstance(request, KeyExchange | Finish):
            raise SpdmLocalProtocolError(
                f"use {'key_exchange' if isinstance(request, KeyExchange) else 'finish'}()"
            )
        return self._send(request, in_session=in_session)

    def key_exchange(
        self,
        *,
        slot_id: int = 0,
        measurement_summary_hash_type: MeasurementSummaryHashType = (
            MeasurementSummaryHashType.NONE
        ),
        session_policy: int = 0,
    ) -> bytes:
        """Build and send KEY_EXCHANGE with a fresh DHE share and random data.

        Args:
            slot_id: the responder slot whose chain authenticates the session.
            measurement_summary_hash_type: summary hash to ask for.
            session_policy: SessionPolicy byte.

        Returns:
            One transport message.

        Raises:
            SpdmLocalProtocolError: if not allowed now or the slot's chain is missing.
        """
        negotiated = self._require_negotiated()
        if slot_id not in self._chains:
            raise SpdmLocalProtocolError(f"read slot {slot_id}'s certificate chain first")
        key, exchange_data = dhe_generate(negotiated.dhe)
        opaque = SecuredMessageSupportedVersions(versions=_SECURED_MESSAGE_VERSIONS)
        request = KeyExchange(
            measurement_summary_hash_type=measurement_summary_hash_type,
            slot_id=slot_id,
            req_session_id=self._config.req_session_id,
            session_policy=session_policy,
            random_data=os.urandom(RANDOM_DATA_SIZE),
            exchange_data=exchange_data,
            opaque_data=opaque.to_opaque_data().encode(),
        )
        out = self._send(request, in_session=False)
        self._dhe_key = key
        self._key_exchange_slot = slot_id
        return out

    def finish(self) -> bytes:
        """Build and send FINISH (inside the session, under the handshake keys).

        Returns:
            One transport message.

        Raises:
            SpdmLocalProtocolError: if no session is handshaking.
        """
        session = self._session
        if session is None or session.handshake_secrets is None or self._pending is not None:
            raise SpdmLocalProtocolError("FINISH needs a handshaking session")
        next_state(Role.REQUESTER, self._state, Finish)
        header = Finish(requester_verify_data=b"").encode_header()
        th = session.th.copy()
        th.update(header)
        request = Finish(
            requester_verify_data=verify_data(
                session.negotiated.hash, session.handshake_secrets.request_finished_key, th.digest()
            )
        )
        return self._send(request, in_session=True)

    def _require_negotiated(self) -> Negotiated:
        if self._negotiated is None:
            raise SpdmLocalProtocolError("algorithms are not negotiated yet")
        return self._negotiated

    def _send(self, request: SpdmMessage, *, in_session: bool | None) -> bytes:
        if self._pending is not None:
            raise SpdmLocalProtocolError("a request is already outstanding")
        kind = type(request)
        if isinstance(request, RespondIfReady):
            original = self._not_ready
            if original is None:
                raise SpdmLocalProtocolError("RESPOND_IF_READY without ResponseNotReady")
            following = original.following
            placed = original.in_session
        else:
            if kind not in RESPONSE_TYPES:
                raise SpdmLocalProtocolError(f"{kind.__name__} is not a request")
            following = next_state(Role.REQUESTER, self._state, kind)
            if in_session is None:
                placed = kind in SESSION_ONLY or (
                    self._state is State.ESTABLISHED and kind not in OUT_OF_SESSION_ONLY
                )
            else:
                placed = in_session
            if placed and (self._session is None or kind in OUT_OF_SESSION_ONLY):
                raise SpdmLocalProtocolError(f"{kind.__name__} cannot travel in a session now")
            if not placed and kind in SESSION_ONLY:
                raise SpdmLocalProtocolError(f"{kind.__name__} only travels in a session")
        self._check_prerequisites(request)
        expected = SPDM_VERSION_10 if isinstance(request, GetVersion) else SPDM_VERSION_12
        if request.version != expected:
            raise SpdmLocalProtocolError(f"{kind.__name__} must use version {expected:#04x}")
        raw = request.encode()
        if not isinstance(request, GetMeasurements | RespondIfReady):
            # Any other request ends L1 (or, inside the session, L2) when it is sent,
            # whatever the answer (the responder resets its copy when it receives it).
            # RESPOND_IF_READY only repeats the request it follows.
            self._transcripts.end_measurements(self._session, in_session=placed)
        if isinstance(request, RespondIfReady):
            assert self._not_ready is not None  # noqa: S101 - checked above
            self._pending = self._not_ready
            self._not_ready = None
        else:
            self._not_ready = None
            self._pending = _Pending(
                request=request, raw=raw, in_session=placed, following=following
            )
        if placed:
            assert self._session is not None  # noqa: S101 - checked above
            out = self._session.seal(raw, request=True)
            if (
                isinstance(request, KeyUpdate)
                and request.key_operation == KeyUpdateOperation.UPDATE_ALL_KEYS
            ):
                # The ACK comes under the new response key (an ERROR under the old).
                self._session.keep_backup()
                self._session.roll_keys(request=False)
            return out
        return self._config.binding.encode(raw)

    def _check_prerequisites(self, request: SpdmMessage) -> None:
        """Refuse requests whose answer could not be checked or continued."""
        if isinstance(request, GetCertificate) and request.offset:
            sofar = self._partial.get(request.slot_id, b"")
            if len(sofar) != request.offset:
                raise SpdmLocalProtocolError(
                    f"GET_CERTIFICATE offset {request.offset} does not follow the "
                    f"{len(sofar)} bytes read from slot {request.slot_id}"
                )
        slot: int | None = None
        if isinstance(request, Challenge):
            slot = request.slot_id
        elif isinstance(request, GetMeasurements) and request.signature_requested:
            slot = request.slot_id_param
        if slot is not None and slot not in self._chains:
            raise SpdmLocalProtocolError(f"read slot {slot}'s certificate chain first")

    # ------------------------------------------------------------------ application data

    def send_application_data(self, data: bytes) -> bytes:
        """Seal application data under the established session's request key.

        Args:
            data: the record's ApplicationData; it must not be an SPDM message of the
                binding (for MCTP: must not start with 0x05).

        Returns:
            One transport message.

        Raises:
            SpdmLocalProtocolError: no established session, a request is outstanding,
                or ``data`` looks like SPDM.
        """
        session = self._established_session()
        try:
            self._config.binding.unwrap_application_data(data)
        except SpdmDecodeError:
            pass
        else:
            raise SpdmLocalProtocolError("application data must not be an SPDM message")
        assert session.request is not None  # noqa: S101 - established sessions have keys
        return self._config.binding.encode(session.request.seal(data), secured=True)

    def receive_application_data(self, data: bytes) -> bytes:
        """Open a transport message carrying application data from the responder.

        Args:
            data: one complete transport message (binding header included).

        Returns:
            The record's ApplicationData.

        Raises:
            SpdmLocalProtocolError: no established session, or a request is outstanding.
            RemoteProtocolError: the message is not a record of this session, does not
                authenticate, or carries an SPDM message instead.
        """
        session = self._established_session()
        transport = self._config.binding.decode(data)
        if not transport.secured:
            raise SpdmUnexpectedMessage("expected application data in a secured record")
        assert session.response is not None  # noqa: S101 - established sessions have keys
        inner = session.response.open(transport.body)
        try:
            self._config.binding.unwrap_application_data(inner)
        except SpdmDecodeError:
            return inner
        raise SpdmUnexpectedMessage("an SPDM message arrived where application data was due")

    def _established_session(self) -> Session:
        session = self._session
        if session is None or self._state is not State.ESTABLISHED:
            raise SpdmLocalProtocolError("application data needs an established session")
        if self._pending is not None:
            raise SpdmLocalProtocolError("a request is outstanding")
        return session

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Buffer one transport message received from the responder.

        Args:
            data: one complete transport message (binding header included).
        """
        self._incoming.append(bytes(data))

    def next_event(self) -> SpdmMessage | NeedData:
        """Decode and check the next buffered response.

        Returns:
            The response message (an :class:`Error` if the responder refused),
            or :data:`NEED_DATA` if nothing is buffered.

        Raises:
            RemoteProtocolError: (an ``Spdm*`` subclass) for malformed,
                unsolicited or mismatched responses.
            SignatureMismatch: if a signature or verify data does not check.
            BindingMismatch: if a chain hash or session binding does not match.
            CertificateChainError: if a chain does not match its digest.

        After any exception the state is ``State.ERROR``.
        """
        if not self._incoming:
            return NEED_DATA
        data = self._incoming.popleft()
        try:
            return self._process(data)
        except Exception:
            self._state = State.ERROR
            self._pending = None
            self._session = None
            raise

    def _process(self, data: bytes) -> SpdmMessage:
        pending = self._pending
        if pending is None:
            raise SpdmUnexpectedMessage("response without an outstanding request")
        transport = self._config.binding.decode(data)
        if transport.secured:
            if not pending.in_session or self._session is None:
                raise SpdmUnexpectedMessage("secured response to a request sent in the clear")
            plain = self._open(self._session, transport.body)
        else:
            plain = transport.body
        if len(plain) > self._config.data_transfer_size:
            raise SpdmMessageTooLarge(
                f"response of {len(plain)} bytes exceeds DataTransferSize "
                f"{self._config.data_transfer_size}"
            )
        negotiated = self._negotiated
        response = decode_message(
            plain,
            sizes=None if negotiated is None else negotiated.sizes,
            request=pending.request,
        )
        if isinstance(response, Error):
            if (
                pending.in_session
                and not transport.secured
                and (response.error_code != SpdmErrorCode.DECRYPT_ERROR)
            ):
                raise SpdmUnexpectedMessage("clear ERROR to an in-session request")
            self._pending = None
            if response.error_code == SpdmErrorCode.RESPONSE_NOT_READY:
                self._not_ready = pending
            if response.error_code == SpdmErrorCode.DECRYPT_ERROR and pending.in_session:
                self._session = None
                self._state = State.NEGOTIATED
            return response
        if pending.in_session and not transport.secured:
            raise SpdmUnexpectedMessage("clear response to an in-session request")
        expected_type = RESPONSE_TYPES[type(pending.request)]
        if not isinstance(response, expected_type):
            raise SpdmUnexpectedMessage(
                f"{type(response).__name__} does not answer {type(pending.request).__name__}"
            )
        self._check(pending, response, plain)
        self._pending = None
        self._state = pending.following
        return response

    @staticmethod
    def _open(session: Session, record: bytes) -> bytes:
        try:
            plain = session.open(record, request=False)
        except SpdmDecryptError:
            if not session.restore_backup():
                raise
            return session.open(record, request=False)
        session.drop_backup()
        return plain

    def _check(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        handlers: dict[type[SpdmMessage], Callable[[_Pending, SpdmMessage, bytes], None]] = {
            Version: self._on_version,
            Capabilities: self._on_capabilities,
            Algorithms: self._on_algorithms,
            Digests: self._on_digests,
            Certificate: self._on_certificate,
            ChallengeAuth: self._on_challenge_auth,
            Measurements: self._on_measurements,
            KeyExchangeRsp: self._on_key_exchange_rsp,
            FinishRsp: self._on_finish_rsp,
            KeyUpdateAck: self._on_key_update_ack,
        }
        handler = handlers.get(type(response))
        if handler is not None:
            handler(pending, response, raw)
        if isinstance(pending.request, EndSession):
            self._session = None

    # ------------------------------------------------------------------ VCA

    def _on_version(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, Version)  # noqa: S101 - dispatched by type
        if SPDM_VERSION_12 not in response.spdm_versions:
            raise SpdmRemoteProtocolError(
                f"no common SPDM version in {[hex(v) for v in response.spdm_versions]}"
            )
        self._transcripts.reset()
        self._responder_caps = None
        self._negotiated = None
        self._digests.clear()
        self._partial.clear()
        self._chains.clear()
        self._chain_bytes.clear()
        self._session = None
        self._transcripts.add_vca(pending.raw)
        self._transcripts.add_vca(raw)

    def _on_capabilities(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, Capabilities)  # noqa: S101 - dispatched by type
        problem = check_capability_flags(response.flags, responder=True)
        if problem:
            raise SpdmRemoteProtocolError(f"responder capability flags: {problem}")
        if response.data_transfer_size < 42:
            raise SpdmRemoteProtocolError("responder DataTransferSize below 42")
        self._responder_caps = response
        self._transcripts.add_vca(pending.raw)
        self._transcripts.add_vca(raw)

    def _on_algorithms(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, Algorithms)  # noqa: S101 - dispatched by type
        assert isinstance(pending.request, NegotiateAlgorithms)  # noqa: S101 - paired by type
        offer = pending.request
        if not _one_of(response.base_asym_sel, offer.base_asym_algo):
            raise SpdmRemoteProtocolError("BaseAsymSel is not one offered algorithm")
        if not _one_of(response.base_hash_sel, offer.base_hash_algo):
            raise SpdmRemoteProtocolError("BaseHashSel is not one offered algorithm")
        if response.other_params_selection != OpaqueDataFormat.OPAQUE_DATA_FMT1:
            raise SpdmRemoteProtocolError("OtherParamsSelection is not OpaqueDataFmt1")
        offered = {t.alg_type: t.alg_supported for t in offer.req_alg_struct}
        for table in response.resp_alg_struct:
            if table.alg_type not in offered:
                raise SpdmRemoteProtocolError(f"AlgType {table.alg_type} was not offered")
            if table.alg_supported and not _one_of(table.alg_supported, offered[table.alg_type]):
                raise SpdmRemoteProtocolError(f"AlgType {table.alg_type} selection not offered")
        caps = self._responder_caps
        assert caps is not None  # noqa: S101 - the table orders VCA
        if caps.flags & (CapabilityFlag.MEAS_CAP_SIG | CapabilityFlag.MEAS_CAP_NO_SIG) and (
            response.measurement_hash_algo.bit_count() != 1
            or response.measurement_specification_sel != 0x01
        ):
            raise SpdmRemoteProtocolError("measurement selections must be exactly one bit")
        if caps.flags & CapabilityFlag.KEY_EX_CAP and not all(
            response.selected(t) for t in (AlgType.DHE, AlgType.AEAD, AlgType.KEY_SCHEDULE)
        ):
            raise SpdmRemoteProtocolError("KEY_EX_CAP without DHE, AEAD and key schedule")
        negotiated = Negotiated(
            spdm_version=SPDM_VERSION_12,
            requester_flags=self._config.capability_flags,
            responder_flags=caps.flags,
            algorithms=response,
        )
        try:
            negotiated.sizes  # noqa: B018 - raises for algorithms we cannot size
            negotiated.hash  # noqa: B018
        except ValueError as exc:
            raise SpdmRemoteProtocolError(f"unusable selection: {exc}") from exc
        self._negotiated = negotiated
        self._transcripts.add_vca(pending.raw)
        self._transcripts.add_vca(raw)
        self._transcripts.start(negotiated.hash)

    # ------------------------------------------------------------------ authentication

    def _m1(self) -> Transcript:
        assert self._transcripts.m1 is not None  # noqa: S101 - started with VCA
        return self._transcripts.m1

    def _hash(self, data: bytes) -> bytes:
        return hash_bytes(self._require_negotiated().hash, data)

    def _on_digests(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, Digests)  # noqa: S101 - dispatched by type
        slots = [s for s in range(8) if response.slot_mask >> s & 1]
        self._digests = dict(zip(slots, response.digests, strict=True))
        self._transcripts.restart_m1()
        self._m1().update(pending.raw)
        self._m1().update(raw)

    def _on_certificate(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, Certificate)  # noqa: S101 - dispatched by type
        request = pending.request
        assert isinstance(request, GetCertificate)  # noqa: S101 - paired by type
        if response.slot_id != request.slot_id:
            raise SpdmRemoteProtocolError("CERTIFICATE for another slot")
        if response.portion_length > request.length or response.portion_length == 0:
            raise SpdmRemoteProtocolError("PortionLength is zero or larger than requested")
        sofar = self._partial.get(request.slot_id, b"") if request.offset else b""
        sofar += response.cert_chain
        self._m1().update(pending.raw)
        self._m1().update(raw)
        if response.remainder_length:
            self._partial[request.slot_id] = sofar
            return
        self._partial.pop(request.slot_id, None)
        chain = parse_cert_chain(sofar, self._require_negotiated().sizes.hash_size)
        expected = self._digests.get(request.slot_id)
        if expected is not None and not hmac.compare_digest(expected, self._hash(sofar)):
            raise CertificateChainError(
                f"spdm.slot{request.slot_id}.digest",
                expected=expected,
                actual=self._hash(sofar),
                detail="certificate chain does not match DIGESTS",
            )
        if not hmac.compare_digest(chain.root_hash, self._hash(chain.certificates[0])):
            raise CertificateChainError(
                f"spdm.slot{request.slot_id}.root_hash",
                expected=self._hash(chain.certificates[0]),
                actual=chain.root_hash,
            )
        self._chains[request.slot_id] = chain
        self._chain_bytes[request.slot_id] = sofar

    def _leaf_key(self, slot_id: int) -> PublicKey:
        chain = self._chains[slot_id]  # _check_prerequisites made sure it exists
        try:
            key = x509.load_der_x509_certificate(chain.leaf).public_key()
        except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
            raise CertificateChainError(
                f"spdm.slot{slot_id}.leaf", expected="an X.509 certificate", actual=chain.leaf
            ) from exc
        if not isinstance(
            key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise CertificateChainError(
                f"spdm.slot{slot_id}.leaf",
                expected="an ECDSA, RSA or Ed25519 key",
                actual=type(key).__name__,
            )
        return key

    def _verify(
        self, slot_id: int, signature: bytes, context: bytes, transcript: Transcript
    ) -> None:
        n = self._require_negotiated()
        verify_signature(
            self._leaf_key(slot_id),
            signature,
            base_asym_algo=n.algorithms.base_asym_sel,
            base_hash_algo=n.algorithms.base_hash_sel,
            spdm_version=n.spdm_version,
            context=context,
            transcript_hash=transcript.digest(),
        )

    def _on_challenge_auth(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, ChallengeAuth)  # noqa: S101 - dispatched by type
        request = pending.request
        assert isinstance(request, Challenge)  # noqa: S101 - paired by type
        if response.slot_id != request.slot_id:
            raise SpdmRemoteProtocolError("CHALLENGE_AUTH for another slot")
        chain = self._chain_bytes[request.slot_id]  # checked before sending
        if not hmac.compare_digest(response.cert_chain_hash, self._hash(chain)):
            raise BindingMismatch(
                "spdm.challenge_auth.cert_chain_hash",
                expected=self._hash(chain),
                actual=response.cert_chain_hash,
            )
        m1 = self._m1()
        m1.update(pending.raw)
        m1.update(response.encode_unsigned())
        self._verify(request.slot_id, response.signature, CONTEXT_RESPONDER_CHALLENGE_AUTH, m1)
        self._transcripts.restart_m1()

    def _on_measurements(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, Measurements)  # noqa: S101 - dispatched by type
        request = pending.request
        assert isinstance(request, GetMeasurements)  # noqa: S101 - paired by type
        op = request.measurement_operation
        blocks = response.measurement_record
        if op == 0 and blocks:
            raise SpdmRemoteProtocolError("blocks returned for a count-only request")
        if 0 < op < 0xFF and (len(blocks) != 1 or blocks[0].index != op):
            raise SpdmRemoteProtocolError(f"MEASUREMENTS does not hold exactly index {op}")
        if len({b.index for b in blocks}) != len(blocks):
            raise SpdmRemoteProtocolError("duplicate measurement index")
        if pending.in_session:
            session = self._session
            assert session is not None  # noqa: S101 - in_session implies a session
            if session.message_m is None:
                assert self._transcripts.vca is not None  # noqa: S101 - started with VCA
                session.message_m = self._transcripts.vca.copy()
            transcript = session.message_m
        else:
            self._transcripts.restart_m1()
            assert self._transcripts.l1 is not None  # noqa: S101 - started with VCA
            transcript = self._transcripts.l1
        transcript.update(pending.raw)
        transcript.update(response.encode_unsigned())
        if request.signature_requested:
            self._verify(
                request.slot_id_param,
                response.signature,
                CONTEXT_RESPONDER_MEASUREMENTS,
                transcript,
            )
            if pending.in_session:
                assert self._session is not None  # noqa: S101 - in_session implies a session
                self._session.message_m = None
            else:
                self._transcripts.restart_l1()

    # ------------------------------------------------------------------ sessions

    def _on_key_exchange_rsp(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, KeyExchangeRsp)  # noqa: S101 - dispatched by type
        request = pending.request
        assert isinstance(request, KeyExchange)  # noqa: S101 - paired by type
        n = self._require_negotiated()
        if response.mut_auth_requested:
            raise SpdmRemoteProtocolError("mutual authentication requested but not offered")
        try:
            selection = decode_secured_message_opaque(response.opaque_data)
        except SpdmDecodeError as exc:
            raise SpdmRemoteProtocolError(f"KEY_EXCHANGE_RSP opaque data: {exc}") from exc
        if not isinstance(selection, SecuredMessageVersionSelection) or (
            selection.selected_version not in _SECURED_MESSAGE_VERSIONS
        ):
            raise SpdmRemoteProtocolError("secured-message version was not offered")
        slot = request.slot_id
        th = self._transcripts.new_session_transcript(self._chain_bytes[slot])
        th.update(pending.raw)
        th.update(response.encode_unsigned())
        self._verify(slot, response.signature, CONTEXT_RESPONDER_KEY_EXCHANGE_RSP, th)
        th.update(response.signature)
        assert self._dhe_key is not None  # noqa: S101 - set by key_exchange()
        shared = dhe_shared_secret(self._dhe_key, response.exchange_data, n.dhe)
        self._dhe_key = None
        session = Session(
            session_id=response.rsp_session_id << 16 | request.req_session_id,
            negotiated=n,
            binding=self._config.binding,
            th=th,
        )
        th1 = th.digest()
        secrets = session.start_handshake(shared, th1)
        check_verify_data(
            verify_data(n.hash, secrets.response_finished_key, th1),
            response.responder_verify_data,
            claim="spdm.key_exchange_rsp.responder_verify_data",
        )
        th.update(response.responder_verify_data)
        self._transcripts.restart_m1()
        self._session = session

    def _on_finish_rsp(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        session = self._session
        assert session is not None  # noqa: S101 - FINISH is session-only
        assert isinstance(pending.request, Finish)  # noqa: S101 - paired by type
        session.th.update(pending.raw)
        session.th.update(raw)
        session.start_data_phase(session.th.digest())

    def _on_key_update_ack(self, pending: _Pending, response: SpdmMessage, raw: bytes) -> None:
        assert isinstance(response, KeyUpdateAck)  # noqa: S101 - dispatched by type
        request = pending.request
        assert isinstance(request, KeyUpdate)  # noqa: S101 - paired by type
        if (response.key_operation, response.tag) != (request.key_operation, request.tag):
            raise SpdmRemoteProtocolError("KEY_UPDATE_ACK does not echo operation and tag")
        if request.key_operation != KeyUpdateOperation.VERIFY_NEW_KEY:
            assert self._session is not None  # noqa: S101 - KEY_UPDATE is session-only
            self._session.roll_keys(request=True)


def negotiate_algorithms_request(config: RequesterConfig) -> NegotiateAlgorithms:
    """Build the NEGOTIATE_ALGORITHMS request that offers a configuration.

    Args:
        config: the requester configuration.

    Returns:
        The request (DMTF measurements, OpaqueDataFmt1, DHE/AEAD/key-schedule tables,
        no ReqBaseAsymAlg table since this requester holds no key).
    """
    return NegotiateAlgorithms(
        measurement_specification=0x01,
        other_params_support=OpaqueDataFormat.OPAQUE_DATA_FMT1,
        base_asym_algo=config.base_asym_algo,
        base_hash_algo=config.base_hash_algo,
        req_alg_struct=(
            AlgStruct(alg_type=AlgType.DHE, alg_supported=config.dhe_groups),
            AlgStruct(alg_type=AlgType.AEAD, alg_supported=config.aead_algorithms),
            AlgStruct(
                alg_type=AlgType.KEY_SCHEDULE,
                alg_supported=KeyScheduleAlgorithm.SPDM_KEY_SCHEDULE,
            ),
        ),
    )


def get_capabilities_request(config: RequesterConfig) -> GetCapabilities:
    """Build the GET_CAPABILITIES request for a configuration.

    Args:
        config: the requester configuration.

    Returns:
        The request.
    """
    return GetCapabilities(
        ct_exponent=config.ct_exponent,
        flags=config.capability_flags,
        data_transfer_size=config.data_transfer_size,
        max_spdm_msg_size=config.data_transfer_size,
    )
