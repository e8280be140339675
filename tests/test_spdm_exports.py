"""ratls.spdm exports exactly its modules' public names, and public classes are final."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import ratls.spdm
from ratls.spdm import (
    Algorithms,
    AlgStruct,
    ApplicationData,
    CapabilityFlag,
    CertChain,
    DeviceMode,
    EmuFrame,
    Frame,
    MeasurementBlock,
    MeasurementContext,
    Negotiated,
    NegotiatedSizes,
    OpaqueData,
    OpaqueElement,
    RequesterConfig,
    RequestRejected,
    ResponderConfig,
    ResponseNotReadyData,
    SecuredMessageSupportedVersions,
    SecuredMessageVersionSelection,
    SpdmHeader,
    SpdmTrust,
    TeeEvidence,
    TransportMessage,
)

MODULES = [
    "_api",
    "_codec",
    "_constants",
    "_crypto",
    "_errors",
    "_io",
    "_requester",
    "_responder",
    "_secured",
    "_state",
    "_tee",
    "_transport",
]


def test_package_all_is_the_union_of_module_alls() -> None:
    names: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(f"ratls.spdm.{name}")
        names |= set(module.__all__)
    assert set(ratls.spdm.__all__) == names
    assert len(ratls.spdm.__all__) == len(names)
    for name in names:
        assert hasattr(ratls.spdm, name), name


@pytest.mark.parametrize("name", MODULES)
def test_module_all_lists_every_public_definition(name: str) -> None:
    module = importlib.import_module(f"ratls.spdm.{name}")
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    assert defined <= set(module.__all__), defined - set(module.__all__)


def test_public_classes_are_final() -> None:
    for name in ratls.spdm.__all__:
        value = getattr(ratls.spdm, name)
        if not inspect.isclass(value) or issubclass(value, enum.Enum | BaseException):
            continue
        if getattr(value, "_is_protocol", False):
            continue  # a typing.Protocol describes what callers supply
        assert getattr(value, "__final__", False), name


def _value_samples() -> list[tuple[object, str, object]]:
    """(instance, a field name, another value for it) for every value type."""

    algorithms = Algorithms(
        measurement_specification_sel=1,
        other_params_selection=2,
        measurement_hash_algo=4,
        base_asym_sel=0x80,
        base_hash_sel=2,
    )
    key = ec.generate_private_key(ec.SECP384R1())
    return [
        (
            SpdmHeader(spdm_version=0x12, request_response_code=0x81, param1=0, param2=0),
            "param1",
            1,
        ),
        (NegotiatedSizes(hash_size=48, signature_size=96), "dhe_size", 96),
        (AlgStruct(alg_type=2, alg_supported=0x10), "alg_supported", 0x8),
        (CertChain(root_hash=bytes(48), certificates=(b"c",)), "certificates", (b"d",)),
        (MeasurementBlock(index=1, value_type=0, value=b"v"), "value", b"w"),
        (OpaqueElement(data=b"d"), "registry_id", 1),
        (OpaqueData(elements=()), "elements", (OpaqueElement(data=b""),)),
        (SecuredMessageSupportedVersions(versions=(0x1200,)), "versions", (0x1100,)),
        (SecuredMessageVersionSelection(selected_version=0x1200), "selected_version", 0x1100),
        (ResponseNotReadyData(rd_exponent=1, request_code=2, token=3, rdtm=4), "token", 5),
        (TransportMessage(secured=False, body=b"m"), "secured", True),
        (EmuFrame(command=1, transport_type=1, payload_size=4), "payload_size", 5),
        (
            Negotiated(
                spdm_version=0x12,
                requester_flags=CapabilityFlag(0x2C0),
                responder_flags=CapabilityFlag(0x2C0),
                algorithms=algorithms,
            ),
            "spdm_version",
            0x13,
        ),
        (
            MeasurementContext(nonce=None, raw_bit_stream_requested=False, measurement_hash_algo=4),
            "nonce",
            bytes(32),
        ),
        (RequestRejected(error_code=1, error_data=0, reason="r"), "error_code", 4),
        (RequesterConfig(), "req_session_id", 1),
        (ApplicationData(data=b"a"), "data", b"b"),
        (Frame(command=1, payload=b"p"), "command", 0xDEAD),
        (SpdmTrust(trust_simulator=True), "trust_anchor", b"der"),
        (TeeEvidence(snp_report=b"r"), "pcrs", ((0, bytes(32)),)),
        (
            DeviceMode(
                operational_mode_capabilities=4,
                operational_mode_state=4,
                device_mode_capabilities=10,
                device_mode_state=0,
            ),
            "device_mode_state",
            10,
        ),
        (
            ResponderConfig(
                certificate_chain=(b"leaf",),
                private_key=key,
                base_asym_algo=0x80,
                measurements=lambda context: (),
            ),
            "rsp_session_id",
            1,
        ),
    ]


def test_value_types_behave_like_values() -> None:
    for value, field, other in _value_samples():
        assert dataclasses.is_dataclass(value)
        assert not isinstance(value, type)
        same = dataclasses.replace(value)
        assert value == same
        assert hash(value) == hash(same)
        assert value != dataclasses.replace(value, **{field: other})
        assert value != object()
        assert repr(value).startswith(type(value).__name__ + "("), repr(value)
        assert "PrivateKey" not in repr(value)
