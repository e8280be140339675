"""Gateway providers bridging to ratls's named attesters (sim, snp, snp+vtpm...)."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway._attestation import peer_summary, registered_providers, resolve_attestation
from gateway._config import AttestationSettings, ConfigError, parse_config
from gateway._daemon import RunningGateway, run_gateway
from gateway._ratls_provider import ratls_provider, register_ratls_providers
from ratls._errors import MeasurementMismatch

POLICY = Path(__file__).resolve().parent.parent / "examples" / "policy.toml"


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    register_ratls_providers()
    register_ratls_providers()  # idempotent


def test_names_are_registered_but_not_none() -> None:
    names = registered_providers()
    assert {"sim", "snp", "snp+vtpm"} <= set(names)
    assert "none" not in names


def test_sim_pair_verifies_and_refuses_a_tampered_image(tmp_path: Path) -> None:
    config = resolve_attestation(AttestationSettings(attester="sim", policy=POLICY))
    assert config.attester is not None
    assert config.verifier is not None
    binder = bytes(range(64))
    result = config.verifier.verify(config.attester.evidence(binder), binder)
    assert "anchor=simulator" in peer_summary(result)
    tampered = ratls_provider(
        AttestationSettings(
            attester="sim",
            policy=POLICY,
            options={"measurement": hashlib.sha384(b"evil").hexdigest(), "product": "Genoa"},
            base_dir=tmp_path,
        )
    )
    assert tampered.attester is not None
    with pytest.raises(MeasurementMismatch):
        config.verifier.verify(tampered.attester.evidence(binder), binder)


@pytest.mark.parametrize(
    ("attester", "options", "policy", "location"),
    [
        ("sim", {}, None, "attestation.policy"),
        ("sim", {}, Path("missing.toml"), "attestation.policy"),
        ("sim", {"colour": 1}, POLICY, "attestation.colour"),
        ("sim", {"product": "Naples"}, POLICY, "attestation.product"),
        ("sim", {"measurement": "12"}, POLICY, "attestation.measurement"),
        ("sim", {"measurement": "zz"}, POLICY, "attestation.measurement"),
        ("sim", {"sim_dir": 5}, POLICY, "attestation.sim_dir"),
        ("sim", {"accept": []}, POLICY, "attestation.accept"),
        ("sim", {"accept": ["tdx"]}, POLICY, "attestation.attester"),
    ],
)
def test_settings_errors(
    attester: str, options: dict[str, Any], policy: Path | None, location: str
) -> None:
    with pytest.raises(ConfigError) as info:
        ratls_provider(AttestationSettings(attester=attester, policy=policy, options=options))
    assert info.value.location == location


def test_missing_hardware_is_a_config_error() -> None:
    if Path("/dev/sev-guest").exists() or Path("/sys/kernel/config/tsm/report").exists():
        pytest.skip("this machine is an SEV-SNP guest")  # pragma: no cover
    with pytest.raises(ConfigError) as info:
        ratls_provider(AttestationSettings(attester="snp", policy=POLICY))
    assert info.value.location == "attestation.attester"


async def test_tunnel_with_ratls_sim_evidence(nursery: trio.Nursery, tmp_path: Path) -> None:
    async def backend(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data[::-1])
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, backend, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    attestation = {"attester": "sim", "policy": str(POLICY), "sim_dir": str(tmp_path / "m")}

    async def start(doc: dict[str, Any]) -> RunningGateway:
        gateway: RunningGateway = await nursery.start(
            partial(run_gateway, parse_config(doc), drain_timeout=1.0)
        )
        await gateway.wait_ready()
        return gateway

    egress = await start(
        {
            "attestation": attestation,
            "egress": {
                "listener": [{"name": "main", "listen": "127.0.0.1:0"}],
                "route": [{"name": "rev", "backend": f"127.0.0.1:{port}"}],
            },
        }
    )
    address = egress.address("egress:main")
    assert isinstance(address, tuple)
    ingress = await start(
        {
            "attestation": attestation,
            "ingress": {
                "mapping": [
                    {
                        "name": "rev",
                        "listen": "127.0.0.1:0",
                        "egress": f"127.0.0.1:{address[1]}",
                        "target": "rev",
                    }
                ]
            },
        }
    )
    client_address = ingress.address("mapping:rev")
    assert isinstance(client_address, tuple)
    client = await trio.open_tcp_stream(*client_address)
    await client.send_all(b"bound evidence")
    reply = b""
    while len(reply) < 14:
        reply += await client.receive_some()
    assert reply == b"ecnedive dnuob"
    await client.aclose()
    ingress.request_shutdown()
    egress.request_shutdown()
