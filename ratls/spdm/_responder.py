"""Sans-I/O SPDM 1.2 responder: bytes in, bytes out, no sockets, no clock.

Theory of operation
-------------------
A responder only ever answers.  :meth:`Responder.receive_data` takes one
transport message (an MCTP or DSP0287 payload: the socket layer's own framing
delimits messages), processes it completely and queues exactly one response,
which :meth:`Responder.data_to_send` hands out.  :meth:`Responder.next_event`
then reports what happened: the request that was answered, or a
:class:`RequestRejected` when the answer was an ERROR.  Malformed or
out-of-order input never raises; it is answered with the ERROR code carried by
the exception class (``SpdmDecodeError.error_code`` is InvalidRequest, and so
on), which is what a responder owes its peer.

Order rules come from the ``_TRANSITIONS`` table in ``_state.py``; where a
request may travel (in or out of a session) from ``SESSION_ONLY`` and
``OUT_OF_SESSION_ONLY``.  The responder signs CHALLENGE_AUTH, MEASUREMENTS and
KEY_EXCHANGE_RSP with its key over the transcripts of ``_state.Transcripts``,
derives the session keys with the SPDM key schedule and seals in-session
responses with DSP0277 records.  Measurement blocks come from a callback that
receives the requester's nonce (``None`` when no signature was asked for), so a
TEE can bind fresh evidence to it; at this layer the blocks are opaque.

Mutual authentication, PSK sessions, chunking, HANDSHAKE_IN_THE_CLEAR and
encapsulated requests are not implemented; the capability flags never claim
them.
"""

from __future__ import annotations

import collections
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, final

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
    EndSessionAck,
    Error,
    Finish,
    FinishRsp,
    GetCapabilities,
    GetCertificate,
    GetDigests,
    GetMeasurements,
    GetVersion,
    Heartbeat,
    HeartbeatAck,
    KeyExchange,
    KeyExchangeRsp,
    KeyUpdate,
    KeyUpdateAck,
    MeasurementBlock,
    Measurements,
    NegotiateAlgorithms,
    SecuredMessageSupportedVersions,
    SecuredMessageVersionSelection,
    SpdmMessage,
    Version,
    decode_message,
    decode_secured_message_opaque,
    parse_header,
)
from ._constants import (
    NONCE_SIZE,
    RANDOM_DATA_SIZE,
    SPDM_VERSION_10,
    SPDM_VERSION_12,
    AeadAlgorithm,
    AlgType,
    BaseHashAlgo,
    CapabilityFlag,
    DheGroup,
    KeyScheduleAlgorithm,
    KeyUpdateOperation,
    MeasurementHashAlgo,
    MeasurementSummaryHashType,
    OpaqueDataFormat,
    RequestCode,
    SpdmErrorCode,
)
from ._crypto import (
    CONTEXT_RESPONDER_CHALLENGE_AUTH,
    CONTEXT_RESPONDER_KEY_EXCHANGE_RSP,
    CONTEXT_RESPONDER_MEASUREMENTS,
    PrivateKey,
    Transcript,
    dhe_generate,
    dhe_shared_secret,
    hash_bytes,
    measurement_summary_hash,
    sign,
    verify_data,
)
from ._errors import (
    SpdmDecodeError,
    SpdmDecryptError,
    SpdmLocalProtocolError,
    SpdmRemoteProtocolError,
    SpdmSequenceOverflow,
    SpdmUnexpectedMessage,
)
from ._state import (
    NEED_DATA,
    OUT_OF_SESSION_ONLY,
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

__all__ = [
    "DEFAULT_RESPONDER_FLAGS",
    "MIN_DATA_TRANSFER_SIZE",
    "ApplicationData",
    "MeasurementContext",
    "MeasurementProvider",
    "RequestRejected",
    "Responder",
    "ResponderConfig",
]

#: Capabilities of a CPU-TEE responder: certificate, challenge, signed fresh
#: measurements, encrypted and authenticated sessions with heartbeat and key update.
DEFAULT_RESPONDER_FLAGS: Final = (
    CapabilityFlag.CERT_CAP
    | CapabilityFlag.CHAL_CAP
    | CapabilityFlag.MEAS_CAP_SIG
    | CapabilityFlag.MEAS_FRESH_CAP
    | CapabilityFlag.ENCRYPT_CAP
    | CapabilityFlag.MAC_CAP
    | CapabilityFlag.KEY_EX_CAP
    | CapabilityFlag.HBEAT_CAP
    | CapabilityFlag.KEY_UPD_CAP
)
_UNSUPPORTED_FLAGS = (
    CapabilityFlag.MUT_AUTH_CAP
    | CapabilityFlag.PSK_CAP
    | CapabilityFlag.PSK_CAP_WITH_CONTEXT
    | CapabilityFlag.ENCAP_CAP
    | CapabilityFlag.HANDSHAKE_IN_THE_CLEAR_CAP
    | CapabilityFlag.PUB_KEY_ID_CAP
    | CapabilityFlag.CHUNK_CAP
)
#: The smallest DataTransferSize SPDM 1.2 allows.
MIN_DATA_TRANSFER_SIZE: Final = 42
_SECURED_MESSAGE_VERSIONS = (0x1200, 0x1100, 0x1000)
_HASH_PREFERENCE = (
    BaseHashAlgo.TPM_ALG_SHA_384,
    BaseHashAlgo.TPM_ALG_SHA_256,
    BaseHashAlgo.TPM_ALG_SHA_512,
    BaseHashAlgo.TPM_ALG_SHA3_384,
    BaseHashAlgo.TPM_ALG_SHA3_256,
    BaseHashAlgo.TPM_ALG_SHA3_512,
)
_DHE_PREFERENCE = (DheGroup.SECP_384_R1, DheGroup.SECP_256_R1, DheGroup.SECP_521_R1)
_AEAD_PREFERENCE = (
    AeadAlgorithm.AES_256_GCM,
    AeadAlgorithm.CHACHA20_POLY1305,
    AeadAlgorithm.AES_128_GCM,
)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MeasurementContext:
    """What a measurement provider is told about one request.

    Attributes:
        nonce: the requester's GET_MEASUREMENTS nonce when a signature was asked
            for (fresh evidence can bind it), else None.  None also when the
            blocks feed a MeasurementSummaryHash (CHALLENGE, KEY_EXCHANGE).
        raw_bit_stream_requested: the requester asked for raw bit streams.
        measurement_hash_algo: the negotiated MeasurementHashAlgo bit, to use
            for digest blocks (see :func:`digest_measurement_block`).
    """

    nonce: bytes | None
    raw_bit_stream_requested: bool
    measurement_hash_algo: int


#: Called for each request that needs measurement blocks; returns all of them
#: (the responder selects the index asked for).
MeasurementProvider = Callable[[MeasurementContext], Sequence[MeasurementBlock]]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderConfig:
    """What a responder offers and holds.

    Attributes:
        certificate_chain: DER certificates of slot 0, root first, leaf last
            (one self-signed leaf is a valid chain).
        private_key: the leaf's private key (never shown in reprs).
        base_asym_algo: the one BaseAsymAlgo bit that fits ``private_key``.
        measurements: the measurement block provider.
        capability_flags: CAPABILITIES flags to announce.
        base_hash_algo: BaseHashAlgo bits supported.
        measurement_hash_algo: the MeasurementHashAlgo this responder uses.
        dhe_groups: DHE group bits supported.
        aead_algorithms: AEAD bits supported.
        binding: the transport binding.
        data_transfer_size: DataTransferSize to announce.
        ct_exponent: CTExponent to announce.
        rsp_session_id: the RspSessionID half of session IDs.
        heartbeat_period: HeartbeatPeriod in KEY_EXCHANGE_RSP.
    """

    certificate_chain: tuple[bytes, ...]
    private_key: PrivateKey = field(repr=False)
    base_asym_algo: int
    measurements: MeasurementProvider
    capability_flags: CapabilityFlag = DEFAULT_RESPONDER_FLAGS
    base_hash_algo: int = BaseHashAlgo.TPM_ALG_SHA_384 | BaseHashAlgo.TPM_ALG_SHA_256
    measurement_hash_algo: int = MeasurementHashAlgo.TPM_ALG_SHA_384
    dhe_groups: int = DheGroup.SECP_384_R1 | DheGroup.SECP_256_R1
    aead_algorithms: int = AeadAlgorithm.AES_256_GCM | AeadAlgorithm.CHACHA20_POLY1305
    binding: TransportBinding = field(default_factory=MctpBinding)
    data_transfer_size: int = 0x1200
    ct_exponent: int = 12
    rsp_session_id: int = 0xFFFF
    heartbeat_period: int = 0

    def __post_init__(self) -> None:
        if not self.certificate_chain:
            raise ValueError("certificate_chain needs at least one certificate")
        if self.capability_flags & _UNSUPPORTED_FLAGS:
            raise ValueError("capability_flags claim features this responder lacks")
        problem = check_capability_flags(self.capability_flags, responder=True)
        if problem:
            raise ValueError(f"inconsistent capability_flags: {problem}")
        if self.data_transfer_size < MIN_DATA_TRANSFER_SIZE:
            raise ValueError("data_transfer_size below the SPDM minimum of 42")
        if self.base_asym_algo.bit_count() != 1:
            raise ValueError("base_asym_algo must be exactly one bit")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRejected:
    """Event: a request was answered with ERROR.

    Attributes:
        error_code: the ErrorCode sent.
        error_data: the ErrorData sent.
        reason: why, for logs.
    """

    error_code: int
    error_data: int
    reason: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ApplicationData:
    """Event: a record of the established session carried application data, not SPDM.

    Nothing is queued in answer; reply with :meth:`Responder.send_application_data`.

    Attributes:
        data: the record's ApplicationData exactly (for MCTP it starts with the MCTP
            message type byte, which is not 0x05).
    """

    data: bytes


def _pick(offered: int, preference: Sequence[int]) -> int:
    for bit in preference:
        if offered & bit:
            return bit
    return 0


class _Refuse(Exception):
    """Answer the current request with ERROR(code, data)."""

    def __init__(self, code: SpdmErrorCode, reason: str, data: int = 0) -> None:
        self.code = code
        self.data = data
        self.reason = reason
        super().__init__(reason)


@final
class Responder:
    """The responder end of an SPDM 1.2 connection.

    Args:
        config: certificates, key, measurement provider and offered algorithms.
    """

    def __init__(self, config: ResponderConfig) -> None:
        self._config = config
        self._state = State.NOT_STARTED
        self._transcripts = Transcripts()
        self._requester_caps: GetCapabilities | None = None
        self._negotiated: Negotiated | None = None
        self._chain: CertChain | None = None
        self._session: Session | None = None
        self._events: collections.deque[SpdmMessage | RequestRejected | ApplicationData] = (
            collections.deque()
        )
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._after_send: Callable[[], None] | None = None
        self._key_update_pending = False

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> State:
        """The connection state."""
        return self._state

    @property
    def negotiated(self) -> Negotiated | None:
        """What VCA settled, once it completed."""
        return self._negotiated

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

    def receive_data(self, data: bytes) -> None:
        """Process one transport message and queue the response.

        Never raises for bad input: the peer gets an ERROR response and
        :meth:`next_event` reports a :class:`RequestRejected`.

        Args:
            data: one complete transport message (binding header included).
        """
        self._after_send = None
        in_session = False
        try:
            transport = self._config.binding.decode(data)
            in_session = transport.secured
            plain = self._open(transport.body) if in_session else transport.body
            if isinstance(plain, ApplicationData):
                self._events.append(plain)
                return
            response = self._handle(plain, in_session=in_session)
        except _Refuse as refusal:
            self._refuse(refusal, in_session=in_session)
            return
        except SpdmRemoteProtocolError as exc:
            self._refuse(_Refuse(exc.error_code, str(exc), exc.error_data), in_session=in_session)
            return
        encoded = response.encode()
        if in_session:
            assert self._session is not None  # noqa: S101 - _open checked it
            self._outgoing.append(self._session.seal(encoded, request=False))
        else:
            self._outgoing.append(self._config.binding.encode(encoded))
        if self._after_send is not None:
            self._after_send()
            self._after_send = None

    def next_event(self) -> SpdmMessage | RequestRejected | ApplicationData | NeedData:
        """Return the next answered request (or rejection, or application data), or NEED_DATA."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def data_to_send(self) -> bytes:
        """Return the next queued transport message to send (empty if none)."""
        return self._outgoing.popleft() if self._outgoing else b""

    def send_application_data(self, data: bytes) -> bytes:
        """Seal application data under the session's response key.

        Args:
            data: the record's ApplicationData, which must not be an SPDM message of
                the binding (for MCTP: must not start with 0x05).

        Returns:
            One transport message.

        Raises:
            SpdmLocalProtocolError: no established session, or ``data`` looks like SPDM.
        """
        session = self._session
        if session is None or self._state is not State.ESTABLISHED:
            raise SpdmLocalProtocolError("application data needs an established session")
        if _is_spdm(self._config.binding, data):
            raise SpdmLocalProtocolError("application data must not be an SPDM message")
        channel = session.response
        assert channel is not None  # noqa: S101 - established sessions have keys
        return self._config.binding.encode(channel.seal(data), secured=True)

    # ------------------------------------------------------------------ plumbing

    def _error_version(self) -> int:
        return SPDM_VERSION_12 if self._requester_caps is not None else SPDM_VERSION_10

    def _refuse(self, refusal: _Refuse, *, in_session: bool) -> None:
        error = Error(
            error_code=refusal.code, error_data=refusal.data, version=self._error_version()
        )
        encoded = error.encode()
        session = self._session
        if in_session and session is not None and refusal.code != SpdmErrorCode.DECRYPT_ERROR:
            self._outgoing.append(session.seal(encoded, request=False))
        else:
            self._outgoing.append(self._config.binding.encode(encoded))
        self._events.append(
            RequestRejected(error_code=refusal.code, error_data=refusal.data, reason=refusal.reason)
        )

    def _open(self, record: bytes) -> bytes | ApplicationData:
        session = self._session
        if session is None or session.request is None:
            raise _Refuse(SpdmErrorCode.DECRYPT_ERROR, "secured message without a session")
        try:
            inner = session.request.open(record)
            if self._state is State.ESTABLISHED and not _is_spdm(self._config.binding, inner):
                return ApplicationData(data=inner)
            return self._config.binding.unwrap_application_data(inner)
        except (SpdmDecryptError, SpdmSequenceOverflow, SpdmDecodeError) as exc:
            # DSP0277: a record that does not authenticate ends the session.
            self._session = None
            self._state = State.NEGOTIATED
            raise _Refuse(SpdmErrorCode.DECRYPT_ERROR, str(exc)) from exc

    def _handle(self, plain: bytes, *, in_session: bool) -> SpdmMessage:
        negotiated = self._negotiated
        if len(plain) > self._config.data_transfer_size:
            raise _Refuse(SpdmErrorCode.REQUEST_TOO_LARGE, f"request of {len(plain)} bytes")
        header = parse_header(plain)
        if not header.is_request:
            raise _Refuse(
                SpdmErrorCode.UNSUPPORTED_REQUEST, "not a request", header.request_response_code
            )
        if header.request_response_code != RequestCode.GET_MEASUREMENTS:
            # Any other request ends L1 (or, inside the session, L2), whether we go on to
            # serve it or refuse it: the requester reset its copy when it sent it.
            self._transcripts.end_measurements(self._session, in_session=in_session)
        request = decode_message(plain, sizes=None if negotiated is None else negotiated.sizes)
        kind = type(request)
        if kind in SESSION_ONLY and not in_session:
            raise _Refuse(SpdmErrorCode.SESSION_REQUIRED, f"{kind.__name__} outside a session")
        if kind in OUT_OF_SESSION_ONLY and in_session:
            raise _Refuse(SpdmErrorCode.UNEXPECTED_REQUEST, f"{kind.__name__} inside a session")
        try:
            following = next_state(Role.RESPONDER, self._state, kind)
        except SpdmLocalProtocolError as exc:
            raise _Refuse(SpdmErrorCode.UNEXPECTED_REQUEST, str(exc)) from exc
        response = self._dispatch(request, plain, in_session=in_session)
        self._state = following
        self._events.append(request)
        return response

    def _dispatch(self, request: SpdmMessage, raw: bytes, *, in_session: bool) -> SpdmMessage:
        if isinstance(request, GetVersion):
            return self._on_get_version(raw)
        if isinstance(request, GetCapabilities):
            return self._on_get_capabilities(request, raw)
        if isinstance(request, NegotiateAlgorithms):
            return self._on_negotiate_algorithms(request, raw)
        if isinstance(request, GetDigests):
            return self._on_get_digests(raw)
        if isinstance(request, GetCertificate):
            return self._on_get_certificate(request, raw)
        if isinstance(request, Challenge):
            return self._on_challenge(request, raw)
        if isinstance(request, GetMeasurements):
            return self._on_get_measurements(request, raw, in_session=in_session)
        if isinstance(request, KeyExchange):
            return self._on_key_exchange(request, raw)
        if isinstance(request, Finish):
            return self._on_finish(request, raw)
        if isinstance(request, Heartbeat):
            self._require(CapabilityFlag.HBEAT_CAP, request)
            return HeartbeatAck()
        if isinstance(request, KeyUpdate):
            return self._on_key_update(request)
        assert isinstance(request, EndSession), request  # noqa: S101 - the table allows no other
        return self._on_end_session()

    def _neg(self) -> Negotiated:
        if self._negotiated is None:  # pragma: no cover - the table prevents this
            raise SpdmUnexpectedMessage("algorithms not negotiated")
        return self._negotiated

    def _require(self, flag: CapabilityFlag, request: SpdmMessage) -> None:
        requester = self._requester_caps.flags if self._requester_caps else CapabilityFlag(0)
        own = self._config.capability_flags
        needs_both = flag in (CapabilityFlag.HBEAT_CAP, CapabilityFlag.KEY_UPD_CAP)
        if not own & flag or (needs_both and not requester & flag):
            raise _Refuse(
                SpdmErrorCode.UNSUPPORTED_REQUEST,
                f"{type(request).__name__} needs {flag.name}",
                _message_code(request),
            )

    def _transfer_limit(self) -> int:
        """The largest response both sides can carry without chunking."""
        own = self._config.data_transfer_size
        if self._requester_caps is None:  # pragma: no cover - VCA precedes every use
            return own
        return min(own, self._requester_caps.data_transfer_size)

    def _sign(self, context: bytes, transcript: Transcript) -> bytes:
        n = self._neg()
        return sign(
            self._config.private_key,
            base_asym_algo=n.algorithms.base_asym_sel,
            base_hash_algo=n.algorithms.base_hash_sel,
            spdm_version=n.spdm_version,
            context=context,
            transcript_hash=transcript.digest(),
        )

    def _chain_bytes(self) -> bytes:
        if self._chain is None:  # pragma: no cover - set with the algorithms
            raise SpdmUnexpectedMessage("no certificate chain")
        return self._chain.encode()

    def _summary(self, summary_type: MeasurementSummaryHashType) -> bytes:
        if summary_type == MeasurementSummaryHashType.NONE:
            return b""
        if not self._config.capability_flags & (
            CapabilityFlag.MEAS_CAP_SIG | CapabilityFlag.MEAS_CAP_NO_SIG
        ):
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "summary hash without MEAS_CAP")
        context = MeasurementContext(
            nonce=None,
            raw_bit_stream_requested=False,
            measurement_hash_algo=self._neg().algorithms.measurement_hash_algo,
        )
        blocks = self._config.measurements(context)
        return measurement_summary_hash(self._neg().hash, blocks, summary_type)

    # ------------------------------------------------------------------ VCA

    def _on_get_version(self, raw: bytes) -> SpdmMessage:
        self._transcripts.reset()
        self._requester_caps = None
        self._negotiated = None
        self._chain = None
        self._session = None
        response = Version(version_number_entries=(SPDM_VERSION_12 << 8,))
        self._transcripts.add_vca(raw)
        self._transcripts.add_vca(response.encode())
        return response

    def _on_get_capabilities(self, request: GetCapabilities, raw: bytes) -> SpdmMessage:
        problem = check_capability_flags(request.flags, responder=False)
        if problem:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, f"requester flags: {problem}")
        if request.data_transfer_size < MIN_DATA_TRANSFER_SIZE:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "DataTransferSize below 42")
        if request.max_spdm_msg_size < request.data_transfer_size:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "MaxSPDMmsgSize below DataTransferSize")
        self._requester_caps = request
        response = Capabilities(
            ct_exponent=self._config.ct_exponent,
            flags=self._config.capability_flags,
            data_transfer_size=self._config.data_transfer_size,
            max_spdm_msg_size=self._config.data_transfer_size,
        )
        self._transcripts.add_vca(raw)
        self._transcripts.add_vca(response.encode())
        return response

    def _on_negotiate_algorithms(self, request: NegotiateAlgorithms, raw: bytes) -> SpdmMessage:
        config = self._config
        if not request.other_params_support & OpaqueDataFormat.OPAQUE_DATA_FMT1:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "OpaqueDataFmt1 not offered")
        if not request.measurement_specification & 0x01:
            raise _Refuse(
                SpdmErrorCode.INVALID_REQUEST, "DMTF measurement specification not offered"
            )
        base_asym = request.base_asym_algo & config.base_asym_algo
        base_hash = _pick(request.base_hash_algo & config.base_hash_algo, _HASH_PREFERENCE)
        if not base_asym or not base_hash:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "no common BaseAsymAlgo or BaseHashAlgo")
        structs: list[AlgStruct] = []
        for table in request.req_alg_struct:
            if table.alg_supported == 0:
                raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "AlgStruct with nothing supported")
            if table.alg_type == AlgType.DHE:
                chosen = _pick(table.alg_supported & config.dhe_groups, _DHE_PREFERENCE)
            elif table.alg_type == AlgType.AEAD:
                chosen = _pick(table.alg_supported & config.aead_algorithms, _AEAD_PREFERENCE)
            elif table.alg_type == AlgType.KEY_SCHEDULE:
                chosen = table.alg_supported & KeyScheduleAlgorithm.SPDM_KEY_SCHEDULE
            elif table.alg_type == AlgType.REQ_BASE_ASYM_ALG:
                chosen = 0  # no mutual authentication
            else:
                continue  # unknown table types are not answered
            structs.append(AlgStruct(alg_type=table.alg_type, alg_supported=chosen))
        selected = {s.alg_type: s.alg_supported for s in structs}
        if config.capability_flags & CapabilityFlag.KEY_EX_CAP and not all(
            selected.get(t) for t in (AlgType.DHE, AlgType.AEAD, AlgType.KEY_SCHEDULE)
        ):
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "no common DHE, AEAD or key schedule")
        has_meas = config.capability_flags & (
            CapabilityFlag.MEAS_CAP_SIG | CapabilityFlag.MEAS_CAP_NO_SIG
        )
        response = Algorithms(
            measurement_specification_sel=0x01 if has_meas else 0,
            other_params_selection=OpaqueDataFormat.OPAQUE_DATA_FMT1,
            measurement_hash_algo=config.measurement_hash_algo if has_meas else 0,
            base_asym_sel=base_asym,
            base_hash_sel=base_hash,
            resp_alg_struct=tuple(structs),
        )
        assert self._requester_caps is not None  # noqa: S101 - the table orders VCA
        self._negotiated = Negotiated(
            spdm_version=SPDM_VERSION_12,
            requester_flags=self._requester_caps.flags,
            responder_flags=config.capability_flags,
            algorithms=response,
        )
        self._transcripts.add_vca(raw)
        self._transcripts.add_vca(response.encode())
        self._transcripts.start(self._negotiated.hash)
        root = config.certificate_chain[0]
        self._chain = CertChain(
            root_hash=hash_bytes(self._negotiated.hash, root),
            certificates=config.certificate_chain,
        )
        return response

    # ------------------------------------------------------------------ authentication

    def _m1(self) -> Transcript:
        assert self._transcripts.m1 is not None  # noqa: S101 - started with VCA
        return self._transcripts.m1

    def _on_get_digests(self, raw: bytes) -> SpdmMessage:
        self._require(CapabilityFlag.CERT_CAP, GetDigests())
        digest = hash_bytes(self._neg().hash, self._chain_bytes())
        response = Digests(slot_mask=0x01, digests=(digest,))
        self._transcripts.restart_m1()
        self._m1().update(raw)
        self._m1().update(response.encode())
        return response

    def _on_get_certificate(self, request: GetCertificate, raw: bytes) -> SpdmMessage:
        self._require(CapabilityFlag.CERT_CAP, request)
        if request.slot_id != 0:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, f"slot {request.slot_id} is empty")
        chain = self._chain_bytes()
        if request.offset >= len(chain):
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "offset beyond the chain")
        portion = min(request.length, len(chain) - request.offset, self._transfer_limit() - 8)
        response = Certificate(
            slot_id=0,
            remainder_length=len(chain) - request.offset - portion,
            cert_chain=chain[request.offset : request.offset + portion],
        )
        self._m1().update(raw)
        self._m1().update(response.encode())
        return response

    def _on_challenge(self, request: Challenge, raw: bytes) -> SpdmMessage:
        self._require(CapabilityFlag.CHAL_CAP, request)
        if request.slot_id != 0:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, f"slot {request.slot_id} is empty")
        unsigned = ChallengeAuth(
            slot_id=0,
            slot_mask=0x01,
            cert_chain_hash=hash_bytes(self._neg().hash, self._chain_bytes()),
            nonce=os.urandom(NONCE_SIZE),
            measurement_summary_hash=self._summary(request.measurement_summary_hash_type),
            opaque_data=b"",
            signature=b"",
        )
        m1 = self._m1()
        m1.update(raw)
        m1.update(unsigned.encode_unsigned())
        signature = self._sign(CONTEXT_RESPONDER_CHALLENGE_AUTH, m1)
        self._transcripts.restart_m1()
        return ChallengeAuth(
            slot_id=unsigned.slot_id,
            slot_mask=unsigned.slot_mask,
            cert_chain_hash=unsigned.cert_chain_hash,
            nonce=unsigned.nonce,
            measurement_summary_hash=unsigned.measurement_summary_hash,
            opaque_data=b"",
            signature=signature,
        )

    def _on_get_measurements(
        self, request: GetMeasurements, raw: bytes, *, in_session: bool
    ) -> SpdmMessage:
        flags = self._config.capability_flags
        if not flags & (CapabilityFlag.MEAS_CAP_SIG | CapabilityFlag.MEAS_CAP_NO_SIG):
            raise _Refuse(SpdmErrorCode.UNSUPPORTED_REQUEST, "no MEAS_CAP", raw[1])
        if request.signature_requested and not flags & CapabilityFlag.MEAS_CAP_SIG:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "signed measurements not supported")
        if request.signature_requested and request.slot_id_param != 0:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, f"slot {request.slot_id_param} is empty")
        context = MeasurementContext(
            nonce=request.nonce,
            raw_bit_stream_requested=request.raw_bit_stream_requested,
            measurement_hash_algo=self._neg().algorithms.measurement_hash_algo,
        )
        blocks = tuple(self._config.measurements(context))
        operation = request.measurement_operation
        count = 0
        if operation == 0:
            chosen: tuple[MeasurementBlock, ...] = ()
            count = len(blocks)
        elif operation == 0xFF:
            chosen = blocks
        else:
            chosen = tuple(b for b in blocks if b.index == operation)
            if not chosen:
                raise _Refuse(SpdmErrorCode.INVALID_REQUEST, f"no measurement index {operation}")
        unsigned = Measurements(
            number_of_measurement_indices=count,
            measurement_record=chosen,
            nonce=os.urandom(NONCE_SIZE),
        )
        signature_size = self._neg().sizes.signature_size if request.signature_requested else 0
        if len(unsigned.encode_unsigned()) + signature_size > self._transfer_limit():
            raise _Refuse(
                SpdmErrorCode.RESPONSE_TOO_LARGE,
                "MEASUREMENTS would exceed DataTransferSize (CHUNK_GET is not implemented)",
            )
        if not in_session:
            self._transcripts.restart_m1()
        transcript = self._measurement_transcript(in_session)
        transcript.update(raw)
        transcript.update(unsigned.encode_unsigned())
        if not request.signature_requested:
            return unsigned
        signature = self._sign(CONTEXT_RESPONDER_MEASUREMENTS, transcript)
        self._reset_measurement_transcript(in_session)
        return Measurements(
            number_of_measurement_indices=count,
            measurement_record=chosen,
            nonce=unsigned.nonce,
            signature=signature,
        )

    def _measurement_transcript(self, in_session: bool) -> Transcript:
        if in_session:
            session = self._session
            assert session is not None  # noqa: S101 - in_session implies a session
            if session.message_m is None:
                session.message_m = self._vca_copy()
            return session.message_m
        assert self._transcripts.l1 is not None  # noqa: S101 - started with VCA
        return self._transcripts.l1

    def _vca_copy(self) -> Transcript:
        assert self._transcripts.vca is not None  # noqa: S101 - started with VCA
        return self._transcripts.vca.copy()

    def _reset_measurement_transcript(self, in_session: bool) -> None:
        if in_session:
            assert self._session is not None  # noqa: S101 - in_session implies a session
            self._session.message_m = None
        else:
            self._transcripts.restart_l1()

    # ------------------------------------------------------------------ sessions

    def _on_key_exchange(self, request: KeyExchange, raw: bytes) -> SpdmMessage:
        self._require(CapabilityFlag.KEY_EX_CAP, request)
        if request.slot_id != 0:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, f"slot {request.slot_id} is empty")
        n = self._neg()
        offer = decode_secured_message_opaque(request.opaque_data)
        if not isinstance(offer, SecuredMessageSupportedVersions):
            raise _Refuse(
                SpdmErrorCode.INVALID_REQUEST, "KEY_EXCHANGE opaque data is not a version list"
            )
        common = [v for v in _SECURED_MESSAGE_VERSIONS if v in offer.versions]
        if not common:
            raise _Refuse(SpdmErrorCode.INVALID_REQUEST, "no common secured-message version")
        private, exchange_data = dhe_generate(n.dhe)
        shared = dhe_shared_secret(private, request.exchange_data, n.dhe)
        config = self._config
        unsigned = KeyExchangeRsp(
            heartbeat_period=config.heartbeat_period,
            rsp_session_id=config.rsp_session_id,
            random_data=os.urandom(RANDOM_DATA_SIZE),
            exchange_data=exchange_data,
            measurement_summary_hash=self._summary(request.measurement_summary_hash_type),
            opaque_data=SecuredMessageVersionSelection(selected_version=common[0])
            .to_opaque_data()
            .encode(),
            signature=b"",
            responder_verify_data=b"",
        )
        self._transcripts.restart_m1()
        th = self._transcripts.new_session_transcript(self._chain_bytes())
        th.update(raw)
        th.update(unsigned.encode_unsigned())
        signature = self._sign(CONTEXT_RESPONDER_KEY_EXCHANGE_RSP, th)
        th.update(signature)
        session = Session(
            session_id=config.rsp_session_id << 16 | request.req_session_id,
            negotiated=n,
            binding=config.binding,
            th=th,
        )
        th1 = th.digest()
        secrets = session.start_handshake(shared, th1)
        responder_verify_data = verify_data(n.hash, secrets.response_finished_key, th1)
        th.update(responder_verify_data)
        self._session = session
        self._key_update_pending = False
        return KeyExchangeRsp(
            heartbeat_period=unsigned.heartbeat_period,
            rsp_session_id=unsigned.rsp_session_id,
            random_data=unsigned.random_data,
            exchange_data=exchange_data,
            measurement_summary_hash=unsigned.measurement_summary_hash,
            opaque_data=unsigned.opaque_data,
            signature=signature,
            responder_verify_data=responder_verify_data,
        )

    def _on_finish(self, request: Finish, raw: bytes) -> SpdmMessage:
        session = self._session
        assert session is not None  # noqa: S101 - FINISH is session-only
        assert session.handshake_secrets is not None  # noqa: S101 - set by KEY_EXCHANGE
        # A FINISH with a signature cannot decode: no ReqBaseAsymAlg was selected.
        n = self._neg()
        th = session.th
        th.update(request.encode_header())
        expected = verify_data(n.hash, session.handshake_secrets.request_finished_key, th.digest())
        if not hmac.compare_digest(expected, request.requester_verify_data):
            # The handshake failed: the session is gone (answered in the clear).
            self._session = None
            self._state = State.NEGOTIATED
            raise _Refuse(SpdmErrorCode.DECRYPT_ERROR, "RequesterVerifyData does not match")
        th.update(request.requester_verify_data)
        response = FinishRsp()
        th.update(response.encode())
        th2 = th.digest()

        def switch() -> None:
            session.start_data_phase(th2)

        self._after_send = switch
        return response

    def _on_key_update(self, request: KeyUpdate) -> SpdmMessage:
        self._require(CapabilityFlag.KEY_UPD_CAP, request)
        session = self._session
        assert session is not None  # noqa: S101 - KEY_UPDATE is session-only
        verify = request.key_operation == KeyUpdateOperation.VERIFY_NEW_KEY
        if verify != self._key_update_pending:
            # libspdm's rule: each update is confirmed by VERIFY_NEW_KEY before the next.
            raise _Refuse(
                SpdmErrorCode.INVALID_REQUEST,
                "VERIFY_NEW_KEY without an update" if verify else "previous update not verified",
            )
        if not verify:
            session.roll_keys(request=True)  # the next request comes under the new key
        if request.key_operation == KeyUpdateOperation.UPDATE_ALL_KEYS:
            session.roll_keys(request=False)  # the ACK already goes under the new key
        self._key_update_pending = not verify
        return KeyUpdateAck(key_operation=request.key_operation, tag=request.tag)

    def _on_end_session(self) -> SpdmMessage:
        def close() -> None:
            self._session = None

        self._after_send = close
        return EndSessionAck()


def _is_spdm(binding: TransportBinding, data: bytes) -> bool:
    """True if a record's ApplicationData is an SPDM message of this binding."""
    try:
        binding.unwrap_application_data(data)
    except SpdmDecodeError:
        return False
    return True


def _message_code(message: SpdmMessage) -> int:
    """Return the RequestResponseCode of a message object."""
    return int(message.CODE)
