"""The gateway with the simulator provider: real SNP reports, real chain, real policy."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

from gateway._attestation import resolve_attestation
from gateway._config import AttestationSettings, ConfigError, parse_config
from gateway._daemon import RunningGateway, run_gateway
from gateway._sim_provider import (
    SIM_MEDIA_TYPE,
    SimulatedSnpAttester,
    SnpReportVerifier,
    register_simulator_provider,
    simulator_provider,
)
from ratls._errors import EvidenceFormatError, MeasurementMismatch, NonceMismatch
from ratls._policy import load_policy
from ratls._result import AttestationResult

POLICY = Path(__file__).resolve().parent.parent / "examples" / "policy.toml"
TAMPERED = hashlib.sha384(b"tampered image").hexdigest()


@pytest.fixture(scope="module")
def sim_settings() -> AttestationSettings:
    register_simulator_provider()
    return AttestationSettings(attester="simulator", policy=POLICY)


def test_provider_builds_a_working_pair(sim_settings: AttestationSettings) -> None:
    config = resolve_attestation(sim_settings)
    assert config.media_type == SIM_MEDIA_TYPE
    assert isinstance(config.attester, SimulatedSnpAttester)
    assert isinstance(config.verifier, SnpReportVerifier)
    binder = bytes(range(64))
    result = config.verifier.verify(config.attester.evidence(binder), binder)
    assert isinstance(result, AttestationResult)
    assert result.trust_anchor == "simulator"
    assert result.snp.report.report_data == binder
    with pytest.raises(NonceMismatch):
        config.verifier.verify(config.attester.evidence(binder), bytes(64))
    assert "SnpReportVerifier" in repr(config.verifier)
    assert "SimulatedSnpAttester" in repr(config.attester)


def test_tampered_measurement_is_refused(sim_settings: AttestationSettings) -> None:
    tampered = simulator_provider(
        AttestationSettings(attester="simulator", policy=POLICY, options={"measurement": TAMPERED})
    )
    verifier = SnpReportVerifier(load_policy(POLICY))
    assert tampered.attester is not None
    binder = bytes(64)
    with pytest.raises(MeasurementMismatch):
        verifier.verify(tampered.attester.evidence(binder), binder)


@pytest.mark.parametrize(
    "evidence",
    [
        b"\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps({"report": b"x"}),
        cbor2.dumps({"report": 1, "vcek": b"", "ask": b"", "ark": b""}),
        bytes(70000),
    ],
)
def test_malformed_evidence(evidence: bytes) -> None:
    verifier = SnpReportVerifier(load_policy(POLICY))
    with pytest.raises(EvidenceFormatError):
        verifier.verify(evidence, bytes(64))


def test_attester_wants_a_64_byte_binder(sim_settings: AttestationSettings) -> None:
    config = resolve_attestation(sim_settings)
    assert config.attester is not None
    with pytest.raises(EvidenceFormatError):
        config.attester.evidence(b"short")


@pytest.mark.parametrize(
    ("options", "policy", "location"),
    [
        ({}, None, "attestation.policy"),
        ({"product": "Rome"}, POLICY, "attestation.product"),
        ({"measurement": "zz"}, POLICY, "attestation.measurement"),
        ({"measurement": "ab"}, POLICY, "attestation.measurement"),
        ({"colour": "red"}, POLICY, "attestation.colour"),
        ({"state_dir": 3}, POLICY, "attestation.state_dir"),
        ({}, Path("no-such-policy.toml"), "attestation.policy"),
    ],
)
def test_provider_settings_errors(
    options: dict[str, Any], policy: Path | None, location: str
) -> None:
    with pytest.raises(ConfigError) as info:
        simulator_provider(
            AttestationSettings(attester="simulator", policy=policy, options=options)
        )
    assert info.value.location == location


def test_state_dir_keeps_the_machine(tmp_path: Path) -> None:
    settings = AttestationSettings(
        attester="simulator",
        policy=POLICY,
        options={"state_dir": "machine", "product": "Milan"},
        base_dir=tmp_path,
    )
    simulator_provider(settings)
    assert (tmp_path / "machine" / "sp.json").exists()


async def _start(nursery: trio.Nursery, doc: dict[str, Any]) -> RunningGateway:
    gateway: RunningGateway = await nursery.start(
        partial(run_gateway, parse_config(doc), drain_timeout=1.0)
    )
    await gateway.wait_ready()
    return gateway


async def test_tunnel_with_simulated_snp_both_ways(
    nursery: trio.Nursery, sim_settings: AttestationSettings
) -> None:
    received = bytearray()

    async def backend(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            received.extend(data)
            await stream.send_all(data.upper())
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, backend, 0, host="127.0.0.1"))
    backend_port = listeners[0].socket.getsockname()[1]
    attestation = {"attester": "simulator", "policy": str(POLICY)}
    egress = await _start(
        nursery,
        {
            "attestation": attestation,
            "egress": {
                "listener": [{"name": "main", "listen": "127.0.0.1:0"}],
                "route": [{"name": "web", "backend": f"127.0.0.1:{backend_port}"}],
            },
        },
    )
    egress_address = egress.address("egress:main")
    assert isinstance(egress_address, tuple)

    def ingress_doc(attestation: dict[str, Any]) -> dict[str, Any]:
        return {
            "attestation": attestation,
            "ingress": {
                "mapping": [
                    {
                        "name": "web",
                        "listen": "127.0.0.1:0",
                        "egress": f"127.0.0.1:{egress_address[1]}",
                        "target": "web",
                    }
                ]
            },
        }

    good = await _start(nursery, ingress_doc(attestation))
    address = good.address("mapping:web")
    assert isinstance(address, tuple)
    client = await trio.open_tcp_stream("127.0.0.1", address[1])
    await client.send_all(b"attested hello")
    reply = b""
    while len(reply) < 14:
        reply += await client.receive_some()
    assert reply == b"ATTESTED HELLO"
    await client.aclose()
    peers = [r.peer for r in egress.runtime.tunnels.values()]
    assert all(p.startswith("snp ") for p in peers)

    # An ingress running a tampered image is refused; the backend sees nothing from it.
    received.clear()
    bad = await _start(nursery, ingress_doc({**attestation, "measurement": TAMPERED}))
    address = bad.address("mapping:web")
    assert isinstance(address, tuple)
    client = await trio.open_tcp_stream("127.0.0.1", address[1])
    await client.send_all(b"let me in")
    with pytest.raises(trio.BrokenResourceError):  # a TCP reset: nothing was tunnelled
        await client.receive_some()
    await client.aclose()
    assert received == b""
    for gateway in (bad, good, egress):
        gateway.request_shutdown()
