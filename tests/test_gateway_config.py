"""Gateway configuration: parsing, validation with locations, and `ratls-gateway check`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway._attestation import (
    register_provider,
    registered_providers,
    resolve_attestation,
    unregister_provider,
)
from gateway._config import (
    AllowRule,
    AttestationSettings,
    ClaimRule,
    ConfigError,
    ConfigProblem,
    Endpoint,
    GatewayConfig,
    SocksUser,
    TcpSettings,
    Timeouts,
    TlsSettings,
    load_config,
    parse_config,
    parse_endpoint,
)
from gateway._link import AddressTarget, RouteTarget
from gateway._testing import hmac_test_attestation
from gateway.cli import main
from ratls._exchange import AttestationConfig
from ratls._tls_context import key_exchange_groups_settable

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "gateway"


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return [str(p) for p in info.value.problems]


def _minimal(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "attestation": {"attester": "x"},
        "egress": {
            "listener": [{"listen": "127.0.0.1:9443"}],
            "route": [{"name": "web", "backend": "127.0.0.1:8080"}],
        },
    }
    doc.update(extra)
    return doc


def test_minimal_config_and_defaults() -> None:
    config = parse_config(_minimal())
    assert config.timeouts == Timeouts()
    assert config.timeouts.idle == 0
    assert config.timeouts.half_close == 60
    assert config.limits.max_tunnels == 1024
    assert config.listeners[0].name == "listener-0"
    assert config.listeners[0].routes == ("web",)  # every route by default
    assert config.listeners[0].allow == ()  # nothing else
    assert config.routes["web"].backend == Endpoint(kind="tcp", host="127.0.0.1", port=8080)
    assert not config.has_ingress


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", Endpoint(kind="tcp", host="127.0.0.1", port=80)),
        ("[::1]:443", Endpoint(kind="tcp", host="::1", port=443)),
        ("backend.internal:5432", Endpoint(kind="tcp", host="backend.internal", port=5432)),
        ("0.0.0.0:0", Endpoint(kind="tcp", host="0.0.0.0", port=0)),  # noqa: S104 - parsing only
        ("unix:/run/app.sock", Endpoint(kind="unix", path="/run/app.sock")),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", ":80", "::1:80", "[::1]80", "[nope]:80", "h:x", "h:65536", "unix:", "a b:1", 5],
)
def test_parse_endpoint_refuses(text: Any) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_endpoint(text)


def test_relative_unix_path_is_relative_to_the_config(tmp_path: Path) -> None:
    assert parse_endpoint("unix:s.sock", base_dir=tmp_path).path == str(tmp_path / "s.sock")
    with pytest.raises(ValueError, match="107"):
        parse_endpoint("unix:/" + "x" * 120)


def test_endpoint_str_and_target() -> None:
    assert str(parse_endpoint("[::1]:5")) == "[::1]:5"
    assert str(parse_endpoint("unix:/a")) == "unix:/a"
    assert parse_endpoint("h:1").as_target() == AddressTarget(host="h", port=1)
    with pytest.raises(ValueError, match="UNIX"):
        parse_endpoint("unix:/a").as_target()


@pytest.mark.parametrize(
    ("pattern", "target", "allowed"),
    [
        ("127.0.0.1:8080", AddressTarget(host="127.0.0.1", port=8080), True),
        ("127.0.0.1:8080", AddressTarget(host="127.0.0.1", port=8081), False),
        ("10.0.0.0/8:5432", AddressTarget(host="10.1.2.3", port=5432), True),
        ("10.0.0.0/8:5432", AddressTarget(host="11.1.2.3", port=5432), False),
        ("10.0.0.0/8:5432", AddressTarget(host="db.internal", port=5432), False),
        ("[2001:db8::/32]:*", AddressTarget(host="2001:db8::7", port=1), True),
        ("[::1]:22", AddressTarget(host="::1", port=22), True),
        ("*.internal:8000-8010", AddressTarget(host="api.internal", port=8005), True),
        ("*.internal:8000-8010", AddressTarget(host="API.Internal.", port=8010), True),
        ("*.internal:8000-8010", AddressTarget(host="internal", port=8005), False),
        ("*.internal:8000-8010", AddressTarget(host="evil-internal", port=8005), False),
        ("*.internal:8000-8010", AddressTarget(host="api.internal", port=8011), False),
        ("db.internal:*", AddressTarget(host="db.internal", port=65535), True),
        ("db.internal:*", AddressTarget(host="10.0.0.1", port=1), False),
    ],
)
def test_allow_rules(pattern: str, target: AddressTarget, allowed: bool) -> None:
    assert AllowRule.parse(pattern).matches(target) is allowed


@pytest.mark.parametrize(
    "pattern", ["", "x", "h:", "h:0", "h:9-8", "h:1-x", "10.0.0.1/8:1", "[::1:1", "a b:1"]
)
def test_allow_rule_refuses(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        AllowRule.parse(pattern)


def test_allow_rule_str() -> None:
    assert str(AllowRule.parse("h:*")) == "h:*"
    assert str(AllowRule.parse("h:5-7")) == "h:5-7"
    assert str(AllowRule.parse("[::1]:5")) == "[::1]:5"


def test_every_problem_is_reported_with_its_location() -> None:
    doc = {
        "attestation": {"attester": "x", "policy": 3},
        "timeouts": {"connect": 0, "idle": -1, "half_clos": 5, "handshake": "slow"},
        "limits": {"max_tunnels": 0, "buffer_size": True},
        "ingress": {
            "mapping": [
                {"listen": "127.0.0.1:8000", "egress": "nowhere", "target": "a b"},
                {"listen": "127.0.0.1:8000", "egress": "127.0.0.1:0", "target": "web"},
            ],
            "socks5": [{"listen": "127.0.0.1:1080", "egress": "h:1", "users": [{"username": "u"}]}],
            "bogus": [],
        },
        "egress": {
            "listener": [{"listen": "127.0.0.1:9443", "routes": ["nope"], "allow": ["x"]}],
            "route": [
                {"name": "web", "backend": "127.0.0.1:8080", "proxy_protocol": "yes"},
                {"name": "web", "backend": "127.0.0.1:8081"},
                {"backend": "127.0.0.1:1"},
            ],
        },
        "extra": 1,
    }
    problems = _problems(doc)
    expected = [
        "extra: unknown key",
        "attestation.policy: must be a non-empty string",
        "timeouts.half_clos: unknown key",
        "timeouts.connect: must be > 0.0",
        "timeouts.handshake: must be a number",
        "timeouts.idle: must be >= 0.0",
        "limits.max_tunnels: must be 1..1000000",
        "limits.buffer_size: must be an integer",
        "ingress.bogus: unknown key",
        "ingress.mapping[0].egress: expected host:port",
        "ingress.mapping[0].target: neither a route name nor host:port",
        "ingress.mapping[1].egress: port 0 is only for listeners",
        "ingress.socks5[0].users[0].password: missing",
        "egress.route[0].proxy_protocol: must be true or false",
        "egress.route[1].name: duplicate route name 'web'",
        "egress.route[2].name: missing",
        "egress.listener[0].routes[0]: no route named 'nope'",
        "egress.listener[0].allow[0]: expected HOST:PORTS",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected)


def test_duplicate_listen_addresses() -> None:
    doc = _minimal(
        ingress={
            "http_connect": [{"listen": "127.0.0.1:9443", "egress": "127.0.0.1:1"}],
        }
    )
    problems = _problems(doc)
    assert problems == [
        "egress.listener[0].listen: 127.0.0.1:9443 is already used by "
        "ingress.http_connect[0].listen"
    ]


def test_missing_attestation_and_nothing_to_do() -> None:
    assert _problems({}) == ["attestation: missing: every gateway attests and verifies its peers"]
    assert _problems({"attestation": {"attester": "x"}}) == [
        "nothing to do: no [[ingress.*]] rule and no [[egress.listener]]"
    ]


def test_wrong_table_shapes() -> None:
    problems = _problems(
        {"attestation": {"attester": "x"}, "ingress": {"mapping": {"listen": "x"}}, "timeouts": 3}
    )
    assert "timeouts: must be a table" in problems
    assert "ingress.mapping: must be an array of tables ([[ingress.mapping]])" in problems


def test_targets_and_users() -> None:
    config = parse_config(
        {
            "attestation": {"attester": "x", "policy": "p.toml", "product": "Genoa"},
            "ingress": {
                "mapping": [
                    {"name": "a", "listen": "127.0.0.1:1", "egress": "e:1", "target": "web"},
                    {"name": "b", "listen": "127.0.0.1:2", "egress": "e:1", "target": "[::1]:5"},
                ],
                "socks5": [
                    {
                        "listen": "127.0.0.1:3",
                        "egress": "e:1",
                        "users": [{"username": "alice", "password": "pw"}],
                    }
                ],
            },
        },
        source=Path("/etc/gw/gw.toml"),
    )
    assert config.mappings[0].target == RouteTarget(name="web")
    assert config.mappings[1].target == AddressTarget(host="::1", port=5)
    assert config.socks5[0].users == (SocksUser(username="alice", password="pw"),)  # noqa: S106 - test data
    assert "pw" not in repr(config.socks5[0])
    assert config.attestation.policy == Path("/etc/gw/p.toml")
    assert config.attestation.options == {"product": "Genoa"}
    assert config.has_ingress


def test_examples_are_valid() -> None:
    egress = load_config(EXAMPLES / "egress.toml")
    ingress = load_config(EXAMPLES / "ingress.toml")
    assert egress.listeners[0].listen == Endpoint(kind="tcp", host="127.0.0.1", port=9443)
    assert egress.routes["web"].backend.port == 8080
    assert ingress.mappings[0].listen.port == 8000
    assert ingress.http_connect[0].listen.port == 8001
    assert ingress.socks5[0].listen.port == 1080
    assert egress.attestation.policy is not None
    assert egress.attestation.policy.exists()


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[attestation\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_config(bad)


def test_config_error_value() -> None:
    problem = ConfigProblem(location="a.b", message="bad")
    assert str(problem) == "a.b: bad"
    assert str(ConfigProblem(location="", message="bad")) == "bad"
    assert problem == ConfigProblem(location="a.b", message="bad")
    assert problem != ConfigProblem(location="a.c", message="bad")
    assert problem != object()
    assert hash(problem) == hash(ConfigProblem(location="a.b", message="bad"))
    err = ConfigError([problem])
    assert err.location == "a.b"
    assert "1 problem(s)" in str(err)


def test_value_types() -> None:
    a = parse_config(_minimal())
    b = parse_config(_minimal())
    assert a.listeners == b.listeners
    assert a.timeouts == b.timeouts
    assert hash(a.timeouts) == hash(b.timeouts)
    assert a.timeouts != Timeouts(idle=5)
    assert a.timeouts != object()
    assert "Timeouts(connect=10.0" in repr(a.timeouts)
    assert isinstance(a, GatewayConfig)


# --------------------------------------------------------------------------- providers


def test_provider_registry() -> None:
    def provider(settings: AttestationSettings) -> AttestationConfig:
        return hmac_test_attestation(b"k")[0]

    def one_sided(settings: AttestationSettings) -> AttestationConfig:
        return AttestationConfig(attester=None, verifier=None)

    register_provider("unit-test", provider)
    register_provider("unit-test-one-sided", one_sided)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_provider("unit-test", provider)
        assert "unit-test" in registered_providers()
        config = resolve_attestation(AttestationSettings(attester="unit-test"))
        assert config.attester is not None
        with pytest.raises(ConfigError, match="must both attest and verify"):
            resolve_attestation(AttestationSettings(attester="unit-test-one-sided"))
        with pytest.raises(ConfigError, match="unknown attester 'nope'"):
            resolve_attestation(AttestationSettings(attester="nope"))
    finally:
        unregister_provider("unit-test")
        unregister_provider("unit-test-one-sided")
    assert "unit-test" not in registered_providers()


# --------------------------------------------------------------------------- CLI


def test_cli_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLES / "egress.toml")]) == 0
    out = capsys.readouterr().out
    assert "OK (0 ingress rule(s), 1 egress listener(s), 1 route(s)" in out


def test_cli_check_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[attestation]\nattester = "nope"\n[timeouts]\nconnect = -1\n'
        '[[ingress.mapping]]\nlisten = "x"\negress = "h:1"\ntarget = "web"\n'
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "timeouts.connect: must be > 0.0" in err
    assert "ingress.mapping[0].listen: expected host:port" in err


def test_cli_check_unknown_attester_and_bad_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.toml"
    body = '[[egress.listener]]\nlisten = "127.0.0.1:1"\n'
    path.write_text('[attestation]\nattester = "nope"\n' + body)
    assert main(["check", str(path)]) == 1
    assert "attestation.attester: unknown attester 'nope'" in capsys.readouterr().err
    path.write_text('[attestation]\nattester = "sim"\npolicy = "missing.toml"\n' + body)
    assert main(["check", str(path)]) == 1
    assert "attestation.policy: cannot read policy file" in capsys.readouterr().err
    path.write_text('[attestation]\nattester = "sim"\n' + body)
    assert main(["check", str(path)]) == 1
    assert "attestation.policy: missing" in capsys.readouterr().err


def test_cli_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


# --------------------------------------------------------------------------- claim rules


def test_claim_rules_parse_and_match() -> None:
    doc = _minimal()
    doc["egress"]["route"][0]["require"] = {
        "snp.measurement": ["aa", "bb"],
        "profile": "svsm",
        "appraised": "true",
    }
    doc["egress"]["listener"][0]["require"] = {"trust_anchor": "AMD"}
    config = parse_config(doc)
    route_rules = config.routes["web"].require
    assert ClaimRule(path="profile", allowed=frozenset({"svsm"})) in route_rules
    assert config.listeners[0].require == (
        ClaimRule(path="trust_anchor", allowed=frozenset({"AMD"})),
    )
    rule = ClaimRule(path="snp.measurement", allowed=frozenset({"aa", "bb"}))
    assert rule.admits({"snp": {"measurement": "bb"}})
    assert not rule.admits({"snp": {"measurement": "cc"}})
    assert not rule.admits({"snp": "bb"})
    assert not rule.admits({})
    flag = ClaimRule(path="appraised", allowed=frozenset({"true"}))
    assert flag.admits({"appraised": True})
    assert not flag.admits({"appraised": False})
    assert not flag.admits({"appraised": ["true"]})
    assert ClaimRule(path="vmpl", allowed=frozenset({"0"})).admits({"vmpl": 0})


def test_claim_rules_errors() -> None:
    doc = _minimal()
    doc["egress"]["route"][0]["require"] = {"bad path!": "x", "ok": [], "n": [1]}
    doc["egress"]["listener"][0]["require"] = ["x"]
    problems = _problems(doc)
    assert problems == [
        'egress.route[0].require."bad path!": a claim path is dotted names, e.g. snp.measurement',
        'egress.route[0].require."ok": must be a string or a non-empty array of strings',
        'egress.route[0].require."n": must be a string or a non-empty array of strings',
        'egress.listener[0].require: must be a table: { "claim.path" = ["value", ...] }',
    ]


def test_tls_groups() -> None:
    assert parse_config(_minimal()).tls == TlsSettings()
    assert parse_config(_minimal()).tls.groups is None
    if not key_exchange_groups_settable():  # cryptography 43: the check says so plainly
        [problem] = _problems(_minimal(tls={"groups": ["X25519"]}))
        assert problem.startswith("tls.groups: this pyOpenSSL cannot choose key exchange")
        return
    config = parse_config(_minimal(tls={"groups": ["X25519", "P-256"]}))
    assert config.tls.groups == ("X25519", "P-256")
    assert _problems(_minimal(tls={"groups": []})) == [
        "tls.groups: must be a non-empty array of group names"
    ]
    assert _problems(_minimal(tls={"groups": "X25519"})) == [
        "tls.groups: must be a non-empty array of group names"
    ]
    [problem] = _problems(_minimal(tls={"groups": ["X25519", "no-such-group"]}))
    assert problem.startswith("tls.groups: OpenSSL refuses the key exchange groups")
    assert "X25519MLKEM768" in problem  # names a few valid ones
    assert _problems(_minimal(tls={"curves": ["X25519"]})) == [
        "tls.curves: unknown key (known: groups)"
    ]


def test_tcp_keepalive_settings() -> None:
    defaults = parse_config(_minimal()).tcp
    assert defaults == TcpSettings()
    assert defaults.keepalive  # on unless switched off
    assert (defaults.keepalive_idle, defaults.keepalive_interval) == (60, 10)
    assert defaults.keepalive_count == 6
    config = parse_config(
        _minimal(
            tcp={
                "keepalive": True,
                "keepalive_idle": 300,
                "keepalive_interval": 30,
                "keepalive_count": 3,
            }
        )
    )
    assert config.tcp == TcpSettings(keepalive_idle=300, keepalive_interval=30, keepalive_count=3)
    assert not parse_config(_minimal(tcp={"keepalive": False})).tcp.keepalive
    assert _problems(
        _minimal(
            tcp={
                "keepalive": "yes",
                "keepalive_idle": 0,
                "keepalive_interval": 32768,
                "keepalive_count": 2.5,
                "user_timeout": 10,
            }
        )
    ) == [
        "tcp.user_timeout: unknown key (known: keepalive, keepalive_count, keepalive_idle, "
        "keepalive_interval, mark)",
        "tcp.keepalive: must be true or false",
        "tcp.keepalive_idle: must be 1..32767",
        "tcp.keepalive_interval: must be 1..32767",
        "tcp.keepalive_count: must be an integer",
    ]
    assert _problems(_minimal(tcp={"keepalive_count": 128})) == [
        "tcp.keepalive_count: must be 1..127"
    ]
    assert _problems(_minimal(tcp=5)) == ["tcp: must be a table"]


def test_rule_names_are_unique_within_each_kind() -> None:
    egress = "127.0.0.1:9443"
    doc = {
        "attestation": {"attester": "x"},
        "ingress": {
            "mapping": [
                {"name": "db", "listen": "127.0.0.1:5432", "egress": egress, "target": "db"},
                {"name": "db", "listen": "127.0.0.1:5433", "egress": egress, "target": "db2"},
                {"listen": "127.0.0.1:5434", "egress": egress, "target": "x"},  # mapping-2
                {"name": "mapping-2", "listen": "127.0.0.1:5435", "egress": egress, "target": "y"},
            ],
            "http_connect": [
                {"name": "p", "listen": "127.0.0.1:3128", "egress": egress},
                {"name": "p", "listen": "127.0.0.1:3129", "egress": egress},
            ],
            # Another kind may reuse a name: listener keys are "socks5:db", "mapping:db".
            "socks5": [{"name": "db", "listen": "127.0.0.1:1080", "egress": egress}],
        },
        "egress": {
            "listener": [
                {"name": "main", "listen": "127.0.0.1:9443"},
                {"name": "main", "listen": "127.0.0.1:9444"},
            ],
            "route": [{"name": "web", "backend": "127.0.0.1:8080"}],
        },
    }
    assert _problems(doc) == [
        "ingress.mapping[1].name: duplicate name 'db' (also ingress.mapping[0])",
        "ingress.mapping[3].name: duplicate name 'mapping-2' (also ingress.mapping[2])",
        "ingress.http_connect[1].name: duplicate name 'p' (also ingress.http_connect[0])",
        "egress.listener[1].name: duplicate name 'main' (also egress.listener[0])",
    ]


def _mapping_problems(listen: str, target: str) -> list[str]:
    rule = {"name": "kv", "listen": listen, "egress": "127.0.0.1:9443", "target": target}
    return _problems({"attestation": {"attester": "x"}, "ingress": {"mapping": [rule]}})


def test_port_range_mappings() -> None:
    rule = {
        "name": "kv",
        "listen": "127.0.0.1:8000-8009",
        "egress": "127.0.0.1:9443",
        "target": "10.0.0.5:18000-18009",
    }
    [mapping] = parse_config(
        {"attestation": {"attester": "x"}, "ingress": {"mapping": [rule]}}
    ).mappings
    assert mapping.ports == 10
    assert mapping.listen == Endpoint(kind="tcp", host="127.0.0.1", port=8000)
    assert mapping.listen_text == "127.0.0.1:8000-8009"
    assert list(mapping.listen_ports) == list(range(8000, 8010))
    assert mapping.target_for(8000) == AddressTarget(host="10.0.0.5", port=18000)
    assert mapping.target_for(8009) == AddressTarget(host="10.0.0.5", port=18009)
    with pytest.raises(ValueError, match=r"port 8010 is not in 127\.0\.0\.1:8000-8009"):
        mapping.target_for(8010)
    [v6] = parse_config(
        {
            "attestation": {"attester": "x"},
            "ingress": {"mapping": [{**rule, "listen": "[::1]:80-81", "target": "db:1-2"}]},
        }
    ).mappings
    assert (v6.listen_text, v6.target_for(81)) == ("[::1]:80-81", AddressTarget(host="db", port=2))
    where = "ingress.mapping[0]"
    assert _mapping_problems("127.0.0.1:8000-8009", "web") == [
        f"{where}.target: a port range maps port by port: give the target as host:first-last"
    ]
    assert _mapping_problems("127.0.0.1:8000-8009", "10.0.0.5:18000") == [
        f"{where}.target: 1 target port(s) for 10 listening port(s): the ranges must have "
        "the same length"
    ]
    assert _mapping_problems("127.0.0.1:8000", "10.0.0.5:1-2") == [
        f"{where}.target: 2 target port(s) for 1 listening port(s): the ranges must have "
        "the same length"
    ]
    assert _mapping_problems("127.0.0.1:9-8", "10.0.0.5:1-2") == [
        f"{where}.listen: port range 9-8 is not first-last in 1..65535"
    ]
    assert _mapping_problems("127.0.0.1:0-1", "10.0.0.5:65535-65536") == [
        f"{where}.listen: port range 0-1 is not first-last in 1..65535",
        f"{where}.target: port range 65535-65536 is not first-last in 1..65535",
    ]
    assert _mapping_problems("127.0.0.1:1000-2024", "10.0.0.5:1000-2024") == [
        f"{where}.listen: 1025 ports; a rule maps 1024 at most",
        f"{where}.target: 1025 ports; a rule maps 1024 at most",
    ]
    # Every port of a range counts when listen addresses are compared.
    other = {"name": "one", "listen": "127.0.0.1:8005", "egress": "127.0.0.1:9443", "target": "x"}
    assert _problems({"attestation": {"attester": "x"}, "ingress": {"mapping": [rule, other]}}) == [
        "ingress.mapping[1].listen: 127.0.0.1:8005 is already used by ingress.mapping[0].listen"
    ]
    # Proxies listen on one port.
    proxy = {"listen": "127.0.0.1:3128-3129", "egress": "127.0.0.1:9443"}
    assert _problems({"attestation": {"attester": "x"}, "ingress": {"http_connect": [proxy]}}) == [
        "ingress.http_connect[0].listen: port '3128-3129' is not 0..65535"
    ]
