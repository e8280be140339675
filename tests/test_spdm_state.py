"""The transition tables: every (state, request) pair behaves as the table says."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from test_spdm_session import NONCE, ConnectionPair, state_of

import ratls.spdm
from ratls.spdm._codec import (
    Challenge,
    EndSession,
    Error,
    Finish,
    GetCertificate,
    GetDigests,
    GetMeasurements,
    GetVersion,
    Heartbeat,
    KeyExchange,
    KeyUpdate,
    RespondIfReady,
    SpdmMessage,
    decode_message,
)
from ratls.spdm._constants import KeyUpdateOperation, MeasurementSummaryHashType, SpdmErrorCode
from ratls.spdm._errors import SpdmLocalProtocolError
from ratls.spdm._requester import get_capabilities_request, negotiate_algorithms_request
from ratls.spdm._state import (
    OUT_OF_SESSION_ONLY,
    SESSION_ONLY,
    Role,
    State,
    next_state,
    render_transitions,
    transitions,
)
from ratls.spdm._transport import MctpBinding

REACHABLE = [
    State.NOT_STARTED,
    State.AFTER_VERSION,
    State.AFTER_CAPABILITIES,
    State.NEGOTIATED,
    State.HANDSHAKING,
    State.ESTABLISHED,
]


def drive(state: State) -> ConnectionPair:
    """A connection pair brought to ``state`` by real exchanges."""
    pair = ConnectionPair()
    if state is State.NOT_STARTED:
        return pair
    pair.request(GetVersion())
    if state is State.AFTER_VERSION:
        return pair
    pair.request(get_capabilities_request(pair.config))
    if state is State.AFTER_CAPABILITIES:
        return pair
    pair.request(negotiate_algorithms_request(pair.config))
    pair.read_certificate()
    if state is State.NEGOTIATED:
        return pair
    pair.deliver(pair.requester.key_exchange())
    if state is State.HANDSHAKING:
        return pair
    pair.deliver(pair.requester.finish())
    assert state_of(pair.requester) is State.ESTABLISHED
    return pair


def sample_requests(pair: ConnectionPair) -> list[SpdmMessage]:
    donor = drive(State.NEGOTIATED)
    negotiated = donor.requester.negotiated
    assert negotiated is not None
    key_exchange = decode_message(
        MctpBinding().decode(donor.requester.key_exchange()).body, sizes=negotiated.sizes
    )
    assert isinstance(key_exchange, KeyExchange)
    return [
        GetVersion(),
        get_capabilities_request(pair.config),
        negotiate_algorithms_request(pair.config),
        GetDigests(),
        GetCertificate(slot_id=0, offset=0, length=0x100),
        Challenge(
            slot_id=0, measurement_summary_hash_type=MeasurementSummaryHashType.NONE, nonce=NONCE
        ),
        GetMeasurements(measurement_operation=1),
        key_exchange,
        Finish(requester_verify_data=bytes(48)),
        Heartbeat(),
        KeyUpdate(key_operation=KeyUpdateOperation.VERIFY_NEW_KEY, tag=1),
        EndSession(),
    ]


ORDER_CODES = {SpdmErrorCode.UNEXPECTED_REQUEST, SpdmErrorCode.SESSION_REQUIRED}


def respond(pair: ConnectionPair, message: SpdmMessage, *, in_session: bool) -> Any:
    session = pair.requester._session
    if in_session:
        assert session is not None
        data = session.seal(message.encode(), request=True)
    else:
        data = MctpBinding().encode(message.encode())
    pair.responder.receive_data(data)
    answer = MctpBinding().decode(pair.responder.data_to_send())
    if answer.secured:
        assert session is not None
        body = session.open(answer.body, request=False)
    else:
        body = answer.body
    return body


@pytest.mark.parametrize("state", REACHABLE, ids=lambda s: s.value)
def test_responder_follows_its_table(state: State) -> None:
    table = transitions(Role.RESPONDER)
    kinds = [type(m) for m in sample_requests(ConnectionPair())]
    placements = [False, True] if state in (State.HANDSHAKING, State.ESTABLISHED) else [False]
    for kind_index, kind in enumerate(kinds):
        for in_session in placements:
            pair = drive(state)
            message = sample_requests(pair)[kind_index]
            body = respond(pair, message, in_session=in_session)
            allowed = (state, kind) in table and (
                (in_session and kind not in OUT_OF_SESSION_ONLY)
                or (not in_session and kind not in SESSION_ONLY)
            )
            is_order_error = body[1] == Error.CODE and body[2] in ORDER_CODES
            label = f"{kind.__name__} in {state.value}, in_session={in_session}"
            assert is_order_error is not allowed, label
            if not allowed:
                assert state_of(pair.responder) is state, label
            elif body[1] == Error.CODE and body[2] == SpdmErrorCode.DECRYPT_ERROR:
                assert state_of(pair.responder) is State.NEGOTIATED, label  # handshake failed
            else:
                assert state_of(pair.responder) in (table[(state, kind)], state), label


@pytest.mark.parametrize("state", REACHABLE, ids=lambda s: s.value)
def test_requester_follows_its_table(state: State) -> None:
    table = transitions(Role.REQUESTER)
    for message in sample_requests(ConnectionPair()):
        if isinstance(message, KeyExchange | Finish):
            continue  # built by key_exchange() / finish(), covered in test_spdm_session
        pair = drive(state)
        kind = type(message)
        if (state, kind) in table:
            assert pair.requester.send(message)
        else:
            with pytest.raises(SpdmLocalProtocolError, match="can't handle"):
                pair.requester.send(message)
            assert state_of(pair.requester) is state


def test_every_missing_pair_raises() -> None:
    kinds = [*(type(m) for m in sample_requests(ConnectionPair())), RespondIfReady]
    for role in Role:
        table = transitions(role)
        for state in State:
            for kind in kinds:
                if (state, kind) in table:
                    assert next_state(role, state, kind) is table[(state, kind)]
                else:
                    with pytest.raises(SpdmLocalProtocolError, match=kind.__name__):
                        next_state(role, state, kind)


def test_tables_differ_only_in_respond_if_ready() -> None:
    requester = transitions(Role.REQUESTER)
    responder = transitions(Role.RESPONDER)
    assert {k: v for k, v in requester.items() if k[1] is not RespondIfReady} == responder
    assert all(state is State.ERROR or (state, RespondIfReady) in requester for state in State)


def test_get_version_recovers_from_error() -> None:
    for role in Role:
        assert next_state(role, State.ERROR, GetVersion) is State.AFTER_VERSION


def test_docs_show_the_generated_table() -> None:
    docs = Path(__file__).parent.parent / "docs" / "spdm.md"
    rendered = render_transitions(Role.RESPONDER)
    assert rendered in docs.read_text()
    assert "| NEGOTIATED | KeyExchange | HANDSHAKING |" in rendered


def test_docs_requester_flow_runs() -> None:
    """The requester walk-through in docs/spdm.md runs against our responder."""
    docs = (Path(__file__).parent.parent / "docs" / "spdm.md").read_text()
    start = docs.index("```python\ndef ask(data):")
    code = docs[start + len("```python\n") : docs.index("```", start + 10)]
    responder = ConnectionPair().responder

    def exchange(data: bytes) -> bytes:
        responder.receive_data(data)
        return responder.data_to_send()

    namespace: dict[str, Any] = {name: getattr(ratls.spdm, name) for name in ratls.spdm.__all__}
    namespace.update(os=os, exchange=exchange)
    exec(compile(code, "docs/spdm.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["chain"] is not None
    assert len(namespace["blocks"]) == 3
    assert state_of(responder) is State.NEGOTIATED
