"""The SPDM connection state machine, as tables, plus the state both roles share.

Theory of operation
-------------------
SPDM is strictly request/response: the requester sends one request and waits
for its response (or an ERROR).  The connection state therefore only moves when
a request/response pair completes, and the legal moves are a table keyed by
``(state, request type)`` (h11's "Rule 1"): :data:`_TRANSITIONS` has one table
per role.  The two tables hold the same rules today; only the requester may
send RESPOND_IF_READY, and keeping them apart lets the roles diverge without
``if role`` branches.  A missing key means the request is not allowed now: the
requester refuses to send it (:class:`SpdmLocalProtocolError`), the responder
answers ERROR(UnexpectedRequest).

::

    any --GET_VERSION--> AFTER_VERSION --GET_CAPABILITIES--> AFTER_CAPABILITIES
        --NEGOTIATE_ALGORITHMS--> NEGOTIATED (DIGESTS, CERTIFICATE, CHALLENGE,
        MEASUREMENTS loop here) --KEY_EXCHANGE--> HANDSHAKING --FINISH-->
        ESTABLISHED (MEASUREMENTS, HEARTBEAT, KEY_UPDATE loop here)
        --END_SESSION--> NEGOTIATED

Besides the table, two sets say where a request may travel: FINISH, HEARTBEAT,
KEY_UPDATE and END_SESSION only inside a session (else SessionRequired), and
the VCA requests, CHALLENGE and KEY_EXCHANGE only outside one.

This module also holds what both roles compute identically: the negotiated
parameters, the transcripts (VCA, message B/C for M1, L1/L2, and the session
transcript TH), and the secured session with its key schedule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from ._codec import (
    Algorithms,
    Capabilities,
    Certificate,
    Challenge,
    ChallengeAuth,
    Digests,
    EndSession,
    EndSessionAck,
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
    Measurements,
    NegotiateAlgorithms,
    NegotiatedSizes,
    RespondIfReady,
    SpdmMessage,
    Version,
)
from ._constants import AlgType, CapabilityFlag
from ._crypto import (
    DataSecrets,
    HandshakeSecrets,
    Transcript,
    derive_data_secrets,
    derive_handshake_secrets,
    derive_traffic_keys,
    hash_algorithm,
    hash_bytes,
    update_traffic_secret,
)
from ._errors import SpdmLocalProtocolError
from ._secured import SecuredChannel, aead_key_size

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes

    from ._transport import TransportBinding

__all__ = [
    "NEED_DATA",
    "OUT_OF_SESSION_ONLY",
    "RESPONSE_TYPES",
    "SESSION_ONLY",
    "NeedData",
    "Negotiated",
    "Role",
    "Session",
    "State",
    "Transcripts",
    "check_capability_flags",
    "next_state",
    "render_transitions",
    "transitions",
]


class Role(enum.Enum):
    """Which end of the SPDM connection this is."""

    REQUESTER = "requester"  #: sends requests (the verifier)
    RESPONDER = "responder"  #: answers them (the attester)


class State(enum.Enum):
    """Connection states; they change when a request/response pair completes."""

    NOT_STARTED = "NOT_STARTED"  #: nothing exchanged, or only GET_VERSION is allowed
    AFTER_VERSION = "AFTER_VERSION"  #: VERSION done; GET_CAPABILITIES next
    AFTER_CAPABILITIES = "AFTER_CAPABILITIES"  #: CAPABILITIES done; NEGOTIATE_ALGORITHMS next
    NEGOTIATED = "NEGOTIATED"  #: VCA done; authentication and KEY_EXCHANGE allowed
    HANDSHAKING = "HANDSHAKING"  #: KEY_EXCHANGE done; FINISH (in session) next
    ESTABLISHED = "ESTABLISHED"  #: FINISH done; application phase of the session
    ERROR = "ERROR"  #: a local or fatal error; only GET_VERSION can recover


@final
class NeedData:
    """Sentinel type: :meth:`next_event` needs more data first (h11's NEED_DATA)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event()`` when no complete message is buffered.
NEED_DATA: Final = NeedData()


def _rules(*, requester: bool) -> dict[tuple[State, type[SpdmMessage]], State]:
    table: dict[tuple[State, type[SpdmMessage]], State] = {}
    for state in State:
        table[(state, GetVersion)] = State.AFTER_VERSION
    table[(State.AFTER_VERSION, GetCapabilities)] = State.AFTER_CAPABILITIES
    table[(State.AFTER_CAPABILITIES, NegotiateAlgorithms)] = State.NEGOTIATED
    for request in (GetDigests, GetCertificate, Challenge, GetMeasurements):
        table[(State.NEGOTIATED, request)] = State.NEGOTIATED
    table[(State.NEGOTIATED, KeyExchange)] = State.HANDSHAKING
    table[(State.HANDSHAKING, Finish)] = State.ESTABLISHED
    for in_session in (GetDigests, GetCertificate, GetMeasurements, Heartbeat, KeyUpdate):
        table[(State.ESTABLISHED, in_session)] = State.ESTABLISHED
    table[(State.ESTABLISHED, EndSession)] = State.NEGOTIATED
    if requester:
        for state in State:
            if state is not State.ERROR:
                table[(state, RespondIfReady)] = state
    return table


#: The legal moves of each role: (state, request type) -> state after the response.
_TRANSITIONS: Final[dict[Role, dict[tuple[State, type[SpdmMessage]], State]]] = {
    Role.REQUESTER: _rules(requester=True),
    Role.RESPONDER: _rules(requester=False),
}

#: Requests that are only valid inside a secured session.
SESSION_ONLY: Final[frozenset[type[SpdmMessage]]] = frozenset(
    {Finish, Heartbeat, KeyUpdate, EndSession}
)
#: Requests that are never valid inside a secured session.
OUT_OF_SESSION_ONLY: Final[frozenset[type[SpdmMessage]]] = frozenset(
    {GetVersion, GetCapabilities, NegotiateAlgorithms, Challenge, KeyExchange}
)
#: The response type that answers each request type.
RESPONSE_TYPES: Final[dict[type[SpdmMessage], type[SpdmMessage]]] = {
    GetVersion: Version,
    GetCapabilities: Capabilities,
    NegotiateAlgorithms: Algorithms,
    GetDigests: Digests,
    GetCertificate: Certificate,
    Challenge: ChallengeAuth,
    GetMeasurements: Measurements,
    KeyExchange: KeyExchangeRsp,
    Finish: FinishRsp,
    Heartbeat: HeartbeatAck,
    KeyUpdate: KeyUpdateAck,
    EndSession: EndSessionAck,
}


def transitions(role: Role) -> dict[tuple[State, type[SpdmMessage]], State]:
    """Return a copy of one role's transition table (for docs and tests)."""
    return dict(_TRANSITIONS[role])


def render_transitions(role: Role) -> str:
    """Render one role's table as a Markdown table (docs/spdm.md embeds it).

    GET_VERSION, allowed in every state, is shown once as ``(any)``.
    """
    lines = ["| state | request | next state |", "|---|---|---|"]
    for (state, request), following in _TRANSITIONS[role].items():
        if request is GetVersion and state is not State.NOT_STARTED:
            continue
        shown = "(any)" if request is GetVersion else state.value
        lines.append(f"| {shown} | {request.__name__} | {following.value} |")
    return "\n".join(lines)


def next_state(role: Role, state: State, request: type[SpdmMessage]) -> State:
    """Look up where a request leads.

    Args:
        role: whose table to use.
        state: the current state.
        request: the request type.

    Returns:
        The state after the request's response.

    Raises:
        SpdmLocalProtocolError: if the table has no entry (the request is not
            allowed in this state).
    """
    try:
        return _TRANSITIONS[role][(state, request)]
    except KeyError:
        raise SpdmLocalProtocolError(
            f"can't handle {request.__name__} in state {state.value}"
        ) from None


def check_capability_flags(flags: int, *, responder: bool) -> str | None:
    """Check the CAPABILITIES flag-consistency rules (DSP0274 1.2).

    Args:
        flags: the Flags field.
        responder: True for a responder's flags, False for a requester's.

    Returns:
        None if consistent, else a description of the first broken rule.
    """
    f = CapabilityFlag(flags)
    key_ex = bool(f & (CapabilityFlag.KEY_EX_CAP | CapabilityFlag.PSK_CAP))
    if key_ex and not f & (CapabilityFlag.MAC_CAP | CapabilityFlag.ENCRYPT_CAP):
        return "KEY_EX/PSK needs MAC or ENCRYPT"
    session_bits = (
        CapabilityFlag.MAC_CAP
        | CapabilityFlag.ENCRYPT_CAP
        | CapabilityFlag.HANDSHAKE_IN_THE_CLEAR_CAP
        | CapabilityFlag.HBEAT_CAP
        | CapabilityFlag.KEY_UPD_CAP
    )
    if not key_ex and f & session_bits:
        return "session capabilities without KEY_EX or PSK"
    if f & CapabilityFlag.CERT_CAP and f & CapabilityFlag.PUB_KEY_ID_CAP:
        return "CERT and PUB_KEY_ID are exclusive"
    has_key = bool(f & (CapabilityFlag.CERT_CAP | CapabilityFlag.PUB_KEY_ID_CAP))
    if has_key and not f & (CapabilityFlag.CHAL_CAP | CapabilityFlag.KEY_EX_CAP):
        return "CERT/PUB_KEY_ID needs CHAL or KEY_EX"
    if not has_key and f & (CapabilityFlag.CHAL_CAP | CapabilityFlag.MUT_AUTH_CAP):
        return "CHAL/MUT_AUTH need CERT or PUB_KEY_ID"
    if f & CapabilityFlag.PSK_CAP and f & CapabilityFlag.PSK_CAP_WITH_CONTEXT:
        return "PSK value 0b11 is reserved"
    if not responder and f & (
        CapabilityFlag.CACHE_CAP
        | CapabilityFlag.MEAS_CAP_NO_SIG
        | CapabilityFlag.MEAS_CAP_SIG
        | CapabilityFlag.MEAS_FRESH_CAP
    ):
        return "a requester has no CACHE or MEAS capabilities"
    if responder and f & CapabilityFlag.MEAS_CAP_NO_SIG and f & CapabilityFlag.MEAS_CAP_SIG:
        return "MEAS_CAP value 0b11 is reserved"
    return None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Negotiated:
    """What VCA settled: version, flags of both sides, and the algorithm selection."""

    spdm_version: int
    requester_flags: CapabilityFlag
    responder_flags: CapabilityFlag
    algorithms: Algorithms

    @property
    def handshake_in_the_clear(self) -> bool:
        """Both sides set HANDSHAKE_IN_THE_CLEAR_CAP."""
        both = self.requester_flags & self.responder_flags
        return bool(both & CapabilityFlag.HANDSHAKE_IN_THE_CLEAR_CAP)

    @property
    def sizes(self) -> NegotiatedSizes:
        """The message sizes that follow from the selection."""
        return NegotiatedSizes.from_algorithms(
            self.algorithms, handshake_in_the_clear=self.handshake_in_the_clear
        )

    @property
    def hash(self) -> hashes.HashAlgorithm:
        """The BaseHashAlgo as a cryptography hash."""
        return hash_algorithm(self.algorithms.base_hash_sel)

    @property
    def dhe(self) -> int:
        """The selected DHE group bit."""
        return self.algorithms.selected(AlgType.DHE)

    @property
    def aead(self) -> int:
        """The selected AEAD bit."""
        return self.algorithms.selected(AlgType.AEAD)


@final
class Transcripts:
    """VCA and the transcripts built on it, with libspdm's reset rules.

    * ``vca`` collects GET_VERSION .. ALGORITHMS as raw bytes until the hash is
      known, then :meth:`start` turns it into a :class:`Transcript`.
    * ``m1`` is VCA || B || C; GET_DIGESTS restarts B; KEY_EXCHANGE and
      GET_MEASUREMENTS restart B and C.
    * ``l1`` is VCA || GET_MEASUREMENTS/MEASUREMENTS since the last reset; any
      other request and every signed MEASUREMENTS restart it.
    """

    __slots__ = ("_vca_bytes", "l1", "m1", "vca")

    def __init__(self) -> None:
        self._vca_bytes = b""
        self.vca: Transcript | None = None
        self.m1: Transcript | None = None
        self.l1: Transcript | None = None

    def reset(self) -> None:
        """Forget everything (GET_VERSION)."""
        self._vca_bytes = b""
        self.vca = self.m1 = self.l1 = None

    def add_vca(self, data: bytes) -> None:
        """Append one VCA message."""
        self._vca_bytes += data

    def start(self, algorithm: hashes.HashAlgorithm) -> None:
        """Hash VCA now that the algorithm is known; start M1 and L1 from it."""
        self.vca = Transcript(algorithm)
        self.vca.update(self._vca_bytes)
        self.m1 = self.vca.copy()
        self.l1 = self.vca.copy()

    def _vca(self) -> Transcript:
        if self.vca is None:
            raise SpdmLocalProtocolError("transcripts used before VCA completed")
        return self.vca

    def restart_m1(self) -> None:
        """Empty B and C."""
        self.m1 = self._vca().copy()

    def restart_l1(self) -> None:
        """Empty the measurement transcript."""
        self.l1 = self._vca().copy()

    def end_measurements(self, session: Session | None, *, in_session: bool) -> None:
        """A request other than GET_MEASUREMENTS: restart L1, or inside a session its L2.

        Both sides call this for the request itself, whatever the answer (DSP0274;
        libspdm does the same), so that their transcripts stay equal.  Before VCA
        completed there is nothing to restart.
        """
        if self.vca is None:
            return
        if not in_session:
            self.restart_l1()
        elif session is not None:
            session.message_m = None

    def new_session_transcript(self, cert_chain: bytes) -> Transcript:
        """Return VCA || Hash(Ct), the start of a session transcript."""
        t = self._vca().copy()
        t.update(hash_bytes(t.algorithm, cert_chain))
        return t


@final
class Session:
    """One secured session: ID, transcript TH, secrets and the two AEAD channels.

    The requester's channel encrypts requests, the responder's responses; each
    side holds both and uses ``request`` to seal or open as its role requires.
    """

    __slots__ = (
        "_backup",
        "binding",
        "data_secrets",
        "handshake_secrets",
        "message_m",
        "negotiated",
        "request",
        "response",
        "session_id",
        "th",
    )

    def __init__(
        self,
        *,
        session_id: int,
        negotiated: Negotiated,
        binding: TransportBinding,
        th: Transcript,
    ) -> None:
        self.session_id = session_id
        self.negotiated = negotiated
        self.binding = binding
        self.th = th
        self.handshake_secrets: HandshakeSecrets | None = None
        self.data_secrets: DataSecrets | None = None
        self.request: SecuredChannel | None = None
        self.response: SecuredChannel | None = None
        self.message_m: Transcript | None = None
        self._backup: tuple[SecuredChannel | None, DataSecrets | None] | None = None

    def _channel(self, secret: bytes) -> SecuredChannel:
        n = self.negotiated
        keys = derive_traffic_keys(
            n.hash,
            spdm_version=n.spdm_version,
            secret=secret,
            key_size=aead_key_size(n.aead),
        )
        return SecuredChannel(
            session_id=self.session_id,
            aead=n.aead,
            key=keys.key,
            iv=keys.iv,
            sequence_number_size=self.binding.sequence_number_size,
            padding_range=self.binding.padding_range,
        )

    def start_handshake(self, shared_secret: bytes, th1_hash: bytes) -> HandshakeSecrets:
        """Derive the handshake secrets from TH1 and switch to the handshake keys."""
        n = self.negotiated
        secrets = derive_handshake_secrets(
            n.hash, spdm_version=n.spdm_version, shared_secret=shared_secret, th1_hash=th1_hash
        )
        self.handshake_secrets = secrets
        self.request = self._channel(secrets.request_handshake_secret)
        self.response = self._channel(secrets.response_handshake_secret)
        return secrets

    def start_data_phase(self, th2_hash: bytes) -> None:
        """Derive the data secrets from TH2 and switch to the data keys."""
        if self.handshake_secrets is None:
            raise SpdmLocalProtocolError("data phase before handshake")
        n = self.negotiated
        self.data_secrets = derive_data_secrets(
            n.hash,
            spdm_version=n.spdm_version,
            handshake_secret=self.handshake_secrets.handshake_secret,
            th2_hash=th2_hash,
        )
        self.request = self._channel(self.data_secrets.request_data_secret)
        self.response = self._channel(self.data_secrets.response_data_secret)

    def roll_keys(self, *, request: bool) -> None:
        """KEY_UPDATE: roll one direction's data secret (``traffic upd``) and rekey it.

        The order follows libspdm.  UpdateKey: the responder rolls the request
        key when it has opened KEY_UPDATE, the requester when KEY_UPDATE_ACK
        arrives.  UpdateAllKeys: both also roll the response key *before*
        KEY_UPDATE_ACK, which travels under the new key; the requester keeps a
        backup (:meth:`keep_backup`) in case an ERROR comes under the old one.
        """
        if self.data_secrets is None:
            raise SpdmLocalProtocolError("KEY_UPDATE before the session is established")
        n = self.negotiated
        d = self.data_secrets
        old = d.request_data_secret if request else d.response_data_secret
        new = update_traffic_secret(n.hash, spdm_version=n.spdm_version, secret=old)
        self.data_secrets = DataSecrets(
            master_secret=d.master_secret,
            request_data_secret=new if request else d.request_data_secret,
            response_data_secret=d.response_data_secret if request else new,
            export_master_secret=d.export_master_secret,
        )
        if request:
            self.request = self._channel(new)
        else:
            self.response = self._channel(new)

    def keep_backup(self) -> None:
        """Remember the current response key so :meth:`restore_backup` can return to it."""
        self._backup = (self.response, self.data_secrets)

    def restore_backup(self) -> bool:
        """Return to the remembered response key; False if there is none."""
        if self._backup is None:
            return False
        self.response, self.data_secrets = self._backup
        self._backup = None
        return True

    def drop_backup(self) -> None:
        """Forget the remembered response key (the new one is confirmed)."""
        self._backup = None

    def seal(self, message: bytes, *, request: bool) -> bytes:
        """Encrypt an SPDM message and frame it for the transport."""
        channel = self.request if request else self.response
        if channel is None:
            raise SpdmLocalProtocolError("no session keys yet")
        record = channel.seal(self.binding.wrap_application_data(message))
        return self.binding.encode(record, secured=True)

    def open(self, record: bytes, *, request: bool) -> bytes:
        """Decrypt a secured record (transport header already removed)."""
        channel = self.request if request else self.response
        if channel is None:
            raise SpdmLocalProtocolError("no session keys yet")
        return self.binding.unwrap_application_data(channel.open(record))
