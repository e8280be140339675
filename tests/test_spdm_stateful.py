"""Random request sequences between our requester and responder keep both in step."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from test_spdm_session import NONCE, ConnectionPair, state_of

from ratls.spdm._codec import (
    Challenge,
    EndSession,
    Error,
    GetCertificate,
    GetDigests,
    GetMeasurements,
    GetVersion,
    Heartbeat,
    KeyUpdate,
    SpdmMessage,
)
from ratls.spdm._constants import KeyUpdateOperation, MeasurementSummaryHashType
from ratls.spdm._errors import SpdmLocalProtocolError
from ratls.spdm._requester import get_capabilities_request, negotiate_algorithms_request
from ratls.spdm._state import NeedData, State

SUMMARY = st.sampled_from(list(MeasurementSummaryHashType))


class PairMachine(RuleBasedStateMachine):
    """Drives an honest pair with random requests; the requester must never fail."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = ConnectionPair()
        self.errors = 0

    def _exchange(self, build: object) -> None:
        try:
            request_bytes = build() if callable(build) else b""
        except SpdmLocalProtocolError:
            return  # the table (or a prerequisite) refused it; nothing was sent
        self.pair.responder.receive_data(request_bytes)
        self.pair.requester.receive_data(self.pair.responder.data_to_send())
        event = self.pair.requester.next_event()
        assert not isinstance(event, NeedData)
        if isinstance(event, Error):
            self.errors += 1

    def _send(self, message: SpdmMessage) -> None:
        self._exchange(lambda: self.pair.requester.send(message))

    @initialize(depth=st.integers(0, 2))
    def start(self, depth: int) -> None:
        """Begin fresh, after VCA, or inside a session."""
        if depth >= 1:
            self.connect()
        if depth == 2:
            self.open_session(MeasurementSummaryHashType.ALL)

    @rule()
    def connect(self) -> None:
        """VCA and the certificate chain in one step, so deep states are reached often."""
        for message in (
            GetVersion(),
            get_capabilities_request(self.pair.config),
            negotiate_algorithms_request(self.pair.config),
            GetDigests(),
            GetCertificate(slot_id=0, offset=0, length=0x1000),
        ):
            self._send(message)

    @rule(summary=SUMMARY)
    def open_session(self, summary: MeasurementSummaryHashType) -> None:
        self.key_exchange(summary)
        self.finish()

    @rule()
    def get_version(self) -> None:
        self._send(GetVersion())

    @rule()
    def get_capabilities(self) -> None:
        self._send(get_capabilities_request(self.pair.config))

    @rule()
    def negotiate_algorithms(self) -> None:
        self._send(negotiate_algorithms_request(self.pair.config))

    @rule()
    def get_digests(self) -> None:
        self._send(GetDigests())

    @rule()
    def get_certificate(self) -> None:
        self._send(GetCertificate(slot_id=0, offset=0, length=0x1000))

    @rule(summary=SUMMARY)
    def challenge(self, summary: MeasurementSummaryHashType) -> None:
        self._send(Challenge(slot_id=0, measurement_summary_hash_type=summary, nonce=NONCE))

    @rule(operation=st.sampled_from([0, 1, 2, 0xFD, 0xFF]), signed=st.booleans())
    def get_measurements(self, operation: int, signed: bool) -> None:
        self._send(
            GetMeasurements(
                measurement_operation=operation,
                signature_requested=signed,
                nonce=NONCE if signed else None,
            )
        )

    @rule(summary=SUMMARY)
    def key_exchange(self, summary: MeasurementSummaryHashType) -> None:
        self._exchange(
            lambda: self.pair.requester.key_exchange(measurement_summary_hash_type=summary)
        )

    @rule()
    def finish(self) -> None:
        self._exchange(self.pair.requester.finish)

    @rule()
    def heartbeat(self) -> None:
        self._send(Heartbeat())

    @rule(operation=st.sampled_from(list(KeyUpdateOperation)))
    def key_update(self, operation: KeyUpdateOperation) -> None:
        self._send(KeyUpdate(key_operation=operation, tag=7))

    @rule()
    def end_session(self) -> None:
        self._send(EndSession())

    @invariant()
    def both_sides_agree(self) -> None:
        requester, responder = self.pair.requester, self.pair.responder
        assert state_of(requester) is state_of(responder)
        assert state_of(requester) is not State.ERROR
        assert requester.session_id == responder.session_id
        assert requester.export_master_secret == responder.export_master_secret


PairMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)
TestPairMachine = PairMachine.TestCase


def test_refused_request_between_measurements_resets_both_transcripts() -> None:
    # Found by the machine above: a FINISH inside an established session is answered
    # with ERROR.  The responder used to end L2 on receiving it and the requester only
    # on a successful answer, so the next signed MEASUREMENTS did not verify.  Both now
    # reset on the request itself (the rule DSP0274 and libspdm follow).
    machine = PairMachine()
    machine.start(depth=2)
    machine.key_update(KeyUpdateOperation.UPDATE_KEY)
    machine.finish()
    machine.finish()
    machine.get_measurements(operation=0, signed=False)
    machine.key_update(KeyUpdateOperation.UPDATE_KEY)
    machine.get_measurements(operation=0, signed=True)
    machine.both_sides_agree()
    assert machine.errors >= 1  # the refused FINISH
    machine.teardown()
