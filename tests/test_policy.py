"""The appraisal policy: TOML and Python forms agree, defaults are secure, mistakes are named."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ratls._errors import PolicyError
from ratls._policy import (
    DEFAULT_MAX_EVIDENCE_AGE_SECONDS,
    Policy,
    SnpPlatformRequirements,
    SnpPolicy,
    TcbMinimum,
    TrustPolicy,
    VtpmPolicy,
    load_policy,
)

if TYPE_CHECKING:
    from pathlib import Path

MEASUREMENT = bytes(range(48))
OTHER_MEASUREMENT = bytes(48)

FULL_TOML = f"""
max_evidence_age_seconds = 60

[trust]
simulated_hardware = true

[snp]
allow_debug = false
allow_migration_agent = false
allow_smt = false
allow_cxl = false
require_single_socket = true
require_mem_aes_256_xts = true
require_rapl_disabled = true
require_ciphertext_hiding = true
require_page_swap_disabled = true
minimum_abi_major = 1
minimum_abi_minor = 51
vmpl = 1
products = ["Genoa", "Turin"]
signing_keys = ["VCEK"]
measurements = ["{MEASUREMENT.hex()}", "{OTHER_MEASUREMENT.hex()}"]
host_data = "{"11" * 32}"
family_id = "{"22" * 16}"
image_id = "{"33" * 16}"
report_ids = ["{"44" * 32}"]
report_ids_ma = ["{"ff" * 32}"]
chip_ids = ["{"55" * 64}"]
minimum_guest_svn = 2
minimum_build = 21
minimum_version = "1.55"
allow_provisional_firmware = true
require_id_block = true
trusted_id_key_digests = ["{"66" * 48}"]
trusted_author_key_digests = ["{"77" * 48}"]
required_launch_mit_vector = 3
required_current_mit_vector = 1

[snp.minimum_tcb]
bootloader = 3
tee = 0
snp = 8
microcode = 115

[snp.minimum_launch_tcb]
fmc = 1

[snp.platform]
allow_smt = false
allow_tsme = false
allow_sev_tio = false
require_ecc = true
require_rapl_disabled = true
require_ciphertext_hiding = true
require_alias_check_complete = true

[vtpm]
allow_unproven_ak = false

[vtpm.pcrs.sha256]
0 = "{"aa" * 32}"
7 = ["{"bb" * 32}", "{"cc" * 32}"]
"""

FULL_OBJECT = Policy(
    max_evidence_age_seconds=60,
    trust=TrustPolicy(simulated_hardware=True),
    snp=SnpPolicy(
        allow_smt=False,
        require_single_socket=True,
        require_mem_aes_256_xts=True,
        require_rapl_disabled=True,
        require_ciphertext_hiding=True,
        require_page_swap_disabled=True,
        minimum_abi_major=1,
        minimum_abi_minor=51,
        vmpl=1,
        products=frozenset({"Genoa", "Turin"}),
        signing_keys=frozenset({"vcek"}),
        measurements=frozenset({MEASUREMENT, OTHER_MEASUREMENT}),
        host_data=b"\x11" * 32,
        family_id=b"\x22" * 16,
        image_id=b"\x33" * 16,
        report_ids=frozenset({b"\x44" * 32}),
        report_ids_ma=frozenset({b"\xff" * 32}),
        chip_ids=frozenset({b"\x55" * 64}),
        minimum_guest_svn=2,
        minimum_build=21,
        minimum_version=(1, 55),
        allow_provisional_firmware=True,
        require_id_block=True,
        trusted_id_key_digests=frozenset({b"\x66" * 48}),
        trusted_author_key_digests=frozenset({b"\x77" * 48}),
        required_launch_mit_vector=3,
        required_current_mit_vector=1,
        minimum_tcb=TcbMinimum(bootloader=3, tee=0, snp=8, microcode=115),
        minimum_launch_tcb=TcbMinimum(fmc=1),
        platform=SnpPlatformRequirements(
            allow_smt=False,
            allow_tsme=False,
            allow_sev_tio=False,
            require_ecc=True,
            require_rapl_disabled=True,
            require_ciphertext_hiding=True,
            require_alias_check_complete=True,
        ),
    ),
    vtpm=VtpmPolicy(
        pcrs={"sha256": {0: frozenset({b"\xaa" * 32}), 7: frozenset({b"\xbb" * 32, b"\xcc" * 32})}}
    ),
)


def test_toml_and_python_forms_are_equal() -> None:
    assert Policy.from_toml(FULL_TOML) == FULL_OBJECT
    assert Policy.from_toml(FULL_TOML).digest() == FULL_OBJECT.digest()


def test_minimal_policy_has_secure_defaults() -> None:
    policy = Policy.from_toml(f'[snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')
    assert policy.snp.allow_debug is False
    assert policy.snp.allow_migration_agent is False
    assert policy.snp.vmpl == 0
    assert policy.snp.allow_provisional_firmware is False
    assert policy.trust.simulated_hardware is False
    assert policy.vtpm.allow_unproven_ak is False
    assert policy.max_evidence_age_seconds == DEFAULT_MAX_EVIDENCE_AGE_SECONDS


def test_measurement_allowlist_is_required_unless_waived() -> None:
    with pytest.raises(PolicyError, match="measurement allowlist is required") as info:
        Policy.from_toml("[snp]\n")
    assert info.value.location == "snp.measurements"
    with pytest.raises(PolicyError):
        SnpPolicy()
    waived = Policy.from_toml("[snp]\nallow_any_measurement = true\n")
    assert waived.snp.allow_any_measurement


def test_vmpl_any_is_spelled_out() -> None:
    policy = Policy.from_toml('[snp]\nallow_any_measurement = true\nvmpl = "any"\n')
    assert policy.snp.vmpl is None


@pytest.mark.parametrize(
    ("toml", "location", "message"),
    [
        ("[snp]\nalow_debug = true\nallow_any_measurement = true", "snp.alow_debug", "unknown"),
        ("[snpp]\n", "snpp", "unknown key"),
        ("[snp]\nallow_debug = 1\nallow_any_measurement = true", "snp.allow_debug", "true or"),
        ("[snp]\nvmpl = 4\nallow_any_measurement = true", "snp.vmpl", "0 to 3"),
        ("[snp]\nvmpl = true\nallow_any_measurement = true", "snp.vmpl", "0 to 3"),
        ('[snp]\nmeasurements = ["00"]', "snp.measurements[0]", "48 bytes"),
        ('[snp]\nmeasurements = ["zz"]', "snp.measurements[0]", "not a hex"),
        ("[snp]\nmeasurements = 5", "snp.measurements", "list of hex"),
        (
            '[snp]\nallow_any_measurement = true\nhost_data = "00"',
            "snp.host_data",
            "32 bytes",
        ),
        (
            "[snp]\nallow_any_measurement = true\n[snp.minimum_tcb]\ntee = 256",
            "snp.minimum_tcb.tee",
            "between 0 and 255",
        ),
        (
            "[snp]\nallow_any_measurement = true\n[snp.minimum_tcb]\nteee = 1",
            "snp.minimum_tcb.teee",
            "unknown",
        ),
        (
            '[snp]\nallow_any_measurement = true\nminimum_version = "1"',
            "snp.minimum_version",
            "MAJOR.MINOR",
        ),
        (
            '[snp]\nallow_any_measurement = true\nproducts = ["Naples"]',
            "snp.products",
            "subset",
        ),
        (
            '[snp]\nallow_any_measurement = true\nsigning_keys = ["ark"]',
            "snp.signing_keys",
            "subset",
        ),
        (
            "[snp]\nallow_any_measurement = true\nrequire_author_key = true",
            "snp.require_author_key",
            "trusted_author_key_digests",
        ),
        (
            "[snp]\nallow_any_measurement = true\nrequire_id_block = true",
            "snp.require_id_block",
            "trusted_id_key_digests",
        ),
        (
            '[snp]\nallow_any_measurement = true\n[vtpm.pcrs.md5]\n0 = "00"',
            "vtpm.pcrs.md5",
            "unknown PCR bank",
        ),
        (
            '[snp]\nallow_any_measurement = true\n[vtpm.pcrs.sha256]\n24 = "00"',
            "vtpm.pcrs.sha256.24",
            "0 to 23",
        ),
        (
            '[snp]\nallow_any_measurement = true\n[vtpm.pcrs.sha256]\n1 = "00"',
            "vtpm.pcrs.sha256.1",
            "32 bytes",
        ),
        (
            "[snp]\nallow_any_measurement = true\n[vtpm.pcrs.sha256]\n1 = []",
            "vtpm.pcrs.sha256.1",
            "non-empty",
        ),
        (
            "max_evidence_age_seconds = 0\n[snp]\nallow_any_measurement = true",
            "max_evidence_age_seconds",
            "between 1",
        ),
        (
            "[snp]\nallow_any_measurement = true\n[trust]\nsimulator = true",
            "trust.simulator",
            "unknown",
        ),
    ],
)
def test_mistakes_are_named_with_their_location(toml: str, location: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        Policy.from_toml(toml)
    assert info.value.location == location
    assert location in str(info.value)


def test_invalid_toml_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="not valid TOML"):
        Policy.from_toml("[snp\n")


def test_python_object_validates_too() -> None:
    with pytest.raises(PolicyError, match="48 bytes"):
        SnpPolicy(measurements=frozenset({b"short"}))
    with pytest.raises(PolicyError, match="between 0 and 255"):
        TcbMinimum(snp=300)
    with pytest.raises(PolicyError, match="unknown PCR bank"):
        VtpmPolicy(pcrs={"md5": {0: frozenset({bytes(16)})}})
    with pytest.raises(PolicyError, match="positive"):
        Policy(snp=SnpPolicy(allow_any_measurement=True), max_evidence_age_seconds=0)


def test_digest_is_stable_and_content_sensitive() -> None:
    a = Policy.from_toml(FULL_TOML)
    b = Policy.from_toml(FULL_TOML)
    assert a.digest() == b.digest()
    changed = Policy.from_toml(FULL_TOML.replace("minimum_guest_svn = 2", "minimum_guest_svn = 3"))
    assert changed.digest() != a.digest()
    assert len(a.digest()) == 64


def test_load_policy_from_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(FULL_TOML, encoding="utf-8")
    assert load_policy(path) == FULL_OBJECT


def test_load_policy_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.toml")


def test_load_policy_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"\xff\xfe[snp]")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)


def test_value_semantics() -> None:
    a = Policy.from_toml(FULL_TOML)
    assert a == FULL_OBJECT
    assert a != Policy(snp=SnpPolicy(allow_any_measurement=True))
    assert a != object()
    assert "SnpPolicy(" in repr(a)
    assert hash(TcbMinimum(tee=1)) == hash(TcbMinimum(tee=1))
