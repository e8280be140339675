"""``ratls-gateway probe``: an attested handshake with each egress, explained to the operator."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio
from gateway_helpers import POLICY, egress_doc, listen_port, sim_attestation, start_gateway

from gateway._config import parse_config
from gateway._ratls_provider import register_ratls_providers
from gateway.cli import main

if TYPE_CHECKING:
    from pathlib import Path

SIM_MEASUREMENT = hashlib.sha384(b"ratls simulated guest launch").hexdigest()
OTHER_MEASUREMENT = "00" * 48


def ingress_file(directory: Path, egress_port: int, policy: Path = POLICY) -> Path:
    config = directory / "ingress.toml"
    config.write_text(
        "[attestation]\n"
        'attester = "sim"\n'
        f'policy = "{policy}"\n'
        "[[ingress.mapping]]\n"
        'name = "web"\n'
        'listen = "127.0.0.1:0"\n'
        f'egress = "127.0.0.1:{egress_port}"\n'
        'target = "web"\n'
    )
    return config


async def cli(*argv: str) -> int:
    return await trio.to_thread.run_sync(partial(main, list(argv)))


@pytest.fixture
async def egress_port(nursery: trio.Nursery) -> int:
    register_ratls_providers()
    doc = egress_doc({"web": 9}, attestation=sim_attestation())
    gateway = await start_gateway(nursery, parse_config(doc))
    return listen_port(gateway, "egress:main")


async def test_probe_shows_the_egress_claims(
    egress_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ingress_file(tmp_path, egress_port)
    assert await cli("probe", str(config)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"egress 127.0.0.1:{egress_port}: attested (TLSv1.3 ")
    assert out[1].startswith("  peer: snp Genoa VCEK anchor=simulator vmpl=0")
    claims = json.loads(out[2].removeprefix("  claims: "))
    assert claims["snp"]["measurement"] == SIM_MEASUREMENT
    assert await cli("probe", str(config), "--json") == 0
    [line] = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert (result["ok"], result["result"], result["egress"]) == (
        True,
        "ok",
        f"127.0.0.1:{egress_port}",
    )


async def test_probe_says_which_claim_our_policy_refused(
    egress_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strict = tmp_path / "strict.toml"
    assert SIM_MEASUREMENT in POLICY.read_text()
    strict.write_text(POLICY.read_text().replace(SIM_MEASUREMENT, OTHER_MEASUREMENT))
    assert await cli("probe", str(ingress_file(tmp_path, egress_port, strict))) == 1
    out = capsys.readouterr().out
    assert f"egress 127.0.0.1:{egress_port}: attestation-failed" in out
    # The operator sees the claim and the reference value of our own policy.
    assert "snp.measurement" in out
    assert OTHER_MEASUREMENT in out


async def test_probe_of_an_unreachable_egress_and_usage_errors(
    egress_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ingress_file(tmp_path, egress_port)
    assert await cli("probe", str(config), "--egress", "127.0.0.1:9") == 1
    assert "egress 127.0.0.1:9: egress-unreachable" in capsys.readouterr().out
    assert await cli("probe", str(config), "--egress", "nonsense") == 2
    bare = tmp_path / "egress-only.toml"
    bare.write_text(
        '[attestation]\nattester = "sim"\n'
        f'policy = "{POLICY}"\n'
        '[[egress.listener]]\nlisten = "127.0.0.1:0"\n'
        '[[egress.route]]\nname = "web"\nbackend = "127.0.0.1:9"\n'
    )
    assert await cli("probe", str(bare)) == 2
    assert "no ingress rule names an egress" in capsys.readouterr().err
