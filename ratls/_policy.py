"""Appraisal policy: what a verifier accepts, as a TOML file or an equal Python object.

A policy answers "is this authentic evidence *acceptable*?".  Authenticity (signatures,
certificate chains, TCB consistency) is checked regardless of policy; the policy then bounds
the claims.  Defaults are secure: debug and migration agents are refused, VMPL 0 is required,
a measurement allowlist is required unless the policy waives it in so many words, and
simulated hardware roots are never trusted unless ``[trust] simulated_hardware = true``.

The TOML schema mirrors the Python objects one to one (see docs/policy.md).  Unknown keys
are errors, so a typo such as ``alow_debug`` cannot silently weaken a policy.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, final

from ._errors import PolicyError

__all__ = [
    "DEFAULT_MAX_EVIDENCE_AGE_SECONDS",
    "Policy",
    "SnpPlatformRequirements",
    "SnpPolicy",
    "TcbMinimum",
    "TrustPolicy",
    "VtpmPolicy",
    "load_policy",
]

#: Default bound on the age of replayable (certificate-carried) evidence.  Five minutes
#: tolerates clock skew and a slow handshake but keeps a stolen certificate useful only briefly.
DEFAULT_MAX_EVIDENCE_AGE_SECONDS: Final = 300

_TCB_COMPONENTS: Final = ("bootloader", "tee", "snp", "microcode", "fmc")
_KNOWN_PRODUCTS: Final = frozenset({"Milan", "Genoa", "Turin"})
_KNOWN_SIGNING_KEYS: Final = frozenset({"vcek", "vlek"})
_PCR_BANKS: Final = frozenset({"sha1", "sha256", "sha384", "sha512"})


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TcbMinimum:
    """Minimum SVN per TCB component; ``None`` means "no minimum" for that component.

    Comparisons are component-wise, never on the packed 64-bit value, because the packed
    order differs between product lines (Turin adds FMC and moves the fields).
    """

    bootloader: int | None = None
    tee: int | None = None
    snp: int | None = None
    microcode: int | None = None
    fmc: int | None = None

    def __post_init__(self) -> None:
        for name in _TCB_COMPONENTS:
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 0xFF:
                raise PolicyError(f"must be between 0 and 255, got {value}", location=name)

    def items(self) -> list[tuple[str, int]]:
        """The components that carry a minimum, as (name, minimum) pairs."""
        return [(n, getattr(self, n)) for n in _TCB_COMPONENTS if getattr(self, n) is not None]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SnpPlatformRequirements:
    """Bounds on PLATFORM_INFO: features that may be on, and features that must be on."""

    allow_smt: bool = True
    allow_tsme: bool = True
    allow_sev_tio: bool = True
    require_ecc: bool = False
    require_rapl_disabled: bool = False
    require_ciphertext_hiding: bool = False
    require_alias_check_complete: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SnpPolicy:
    """What an SEV-SNP attestation report must show (the go-sev-guest option set, and more).

    Byte-valued fields are given as ``bytes`` in Python and as hex strings in TOML.  Empty
    allowlists mean "not checked", except ``measurements``, which must be non-empty unless
    ``allow_any_measurement`` is set.
    """

    # Guest policy (the maximum the guest owner may have granted itself).
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    allow_cxl: bool = False
    require_single_socket: bool = False
    require_mem_aes_256_xts: bool = False
    require_rapl_disabled: bool = False
    require_ciphertext_hiding: bool = False
    require_page_swap_disabled: bool = False
    minimum_abi_major: int = 0
    minimum_abi_minor: int = 0
    # Where the report came from.
    vmpl: int | None = 0
    products: frozenset[str] = frozenset(_KNOWN_PRODUCTS)
    signing_keys: frozenset[str] = frozenset(_KNOWN_SIGNING_KEYS)
    # Reference values.
    measurements: frozenset[bytes] = frozenset()
    allow_any_measurement: bool = False
    host_data: bytes | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    report_ids: frozenset[bytes] = frozenset()
    report_ids_ma: frozenset[bytes] = frozenset()
    chip_ids: frozenset[bytes] = frozenset()
    minimum_guest_svn: int = 0
    # TCB and firmware.
    minimum_tcb: TcbMinimum = field(default_factory=TcbMinimum)
    minimum_launch_tcb: TcbMinimum = field(default_factory=TcbMinimum)
    minimum_build: int = 0
    minimum_version: tuple[int, int] = (0, 0)
    allow_provisional_firmware: bool = False
    platform: SnpPlatformRequirements = field(default_factory=SnpPlatformRequirements)
    # ID block and author key.
    require_id_block: bool = False
    require_author_key: bool = False
    trusted_id_key_digests: frozenset[bytes] = frozenset()
    trusted_author_key_digests: frozenset[bytes] = frozenset()
    # Mitigation vectors (report version 5): bits that must be set.
    required_launch_mit_vector: int = 0
    required_current_mit_vector: int = 0

    def __post_init__(self) -> None:
        if not self.allow_any_measurement and not self.measurements:
            raise PolicyError(
                "a measurement allowlist is required; list the accepted launch digests, or set "
                "allow_any_measurement = true to waive the check explicitly",
                location="snp.measurements",
            )
        for digest in self.measurements:
            _check_length("snp.measurements", digest, 48)
        for name, size in (("host_data", 32), ("family_id", 16), ("image_id", 16)):
            value = getattr(self, name)
            if value is not None:
                _check_length(f"snp.{name}", value, size)
        for name, size in (
            ("report_ids", 32),
            ("report_ids_ma", 32),
            ("chip_ids", 64),
            ("trusted_id_key_digests", 48),
            ("trusted_author_key_digests", 48),
        ):
            for value in getattr(self, name):
                _check_length(f"snp.{name}", value, size)
        if self.vmpl is not None and not 0 <= self.vmpl <= 3:
            raise PolicyError(f"must be 0 to 3, got {self.vmpl}", location="snp.vmpl")
        unknown = self.products - _KNOWN_PRODUCTS
        if unknown or not self.products:
            raise PolicyError(
                f"products must be a non-empty subset of {sorted(_KNOWN_PRODUCTS)}, "
                f"got {sorted(self.products)}",
                location="snp.products",
            )
        unknown = self.signing_keys - _KNOWN_SIGNING_KEYS
        if unknown or not self.signing_keys:
            raise PolicyError(
                f"signing_keys must be a non-empty subset of {sorted(_KNOWN_SIGNING_KEYS)}, "
                f"got {sorted(self.signing_keys)}",
                location="snp.signing_keys",
            )
        if self.require_author_key and not self.trusted_author_key_digests:
            raise PolicyError(
                "require_author_key needs trusted_author_key_digests",
                location="snp.require_author_key",
            )
        if self.require_id_block and not (
            self.trusted_id_key_digests or self.trusted_author_key_digests
        ):
            raise PolicyError(
                "require_id_block needs trusted_id_key_digests or trusted_author_key_digests",
                location="snp.require_id_block",
            )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VtpmPolicy:
    """Reference values for the vTPM: accepted PCR values per bank and index.

    ``pcrs["sha256"][7]`` is the set of accepted SHA-256 values of PCR 7.  A PCR named here
    must be covered by the quote; PCRs not named are not appraised.
    """

    pcrs: Mapping[str, Mapping[int, frozenset[bytes]]] = field(default_factory=dict)
    allow_unproven_ak: bool = False

    def __post_init__(self) -> None:
        for bank, values in self.pcrs.items():
            if bank not in _PCR_BANKS:
                raise PolicyError(
                    f"unknown PCR bank {bank!r}; use one of {sorted(_PCR_BANKS)}",
                    location="vtpm.pcrs",
                )
            size = hashlib.new(bank).digest_size
            for index, accepted in values.items():
                if not 0 <= index <= 23:
                    raise PolicyError(f"PCR index {index} out of range 0-23", location="vtpm.pcrs")
                if not accepted:
                    raise PolicyError(
                        "needs at least one accepted value", location=f"vtpm.pcrs.{bank}.{index}"
                    )
                for value in accepted:
                    _check_length(f"vtpm.pcrs.{bank}.{index}", value, size)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TrustPolicy:
    """Which roots of trust are accepted beyond AMD's pinned ARKs."""

    #: Trust evidence signed by ratls's simulated AMD-SP.  Anyone can run the simulator, so
    #: this proves nothing about hardware; it exists for demos and tests.
    simulated_hardware: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A complete appraisal policy."""

    snp: SnpPolicy = field(default_factory=SnpPolicy)
    vtpm: VtpmPolicy = field(default_factory=VtpmPolicy)
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    max_evidence_age_seconds: int = DEFAULT_MAX_EVIDENCE_AGE_SECONDS
    # The content digest, computed once: verifiers report it on every verification.
    _digest: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_evidence_age_seconds <= 0:
            raise PolicyError("must be positive", location="max_evidence_age_seconds")
        object.__setattr__(
            self, "_digest", hashlib.sha256(repr(_canonical(self)).encode()).hexdigest()
        )

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        """Build a policy from TOML text.

        Raises:
            PolicyError: the text is not TOML, has unknown keys, or has invalid values; the
                error's ``location`` names the offending key.
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"not valid TOML: {exc}") from exc
        return _policy_from_mapping(document)

    def digest(self) -> str:
        """A stable SHA-256 identifier of this policy's content (shown in results and logs)."""
        return self._digest


def load_policy(path: str | Path) -> Policy:
    """Read a policy from a TOML file.

    Raises:
        PolicyError: the file cannot be read or is invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy file {path} is not UTF-8") from exc
    return Policy.from_toml(text)


def _check_length(location: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise PolicyError(f"must be {size} bytes, got {len(value)}", location=location)


def _canonical(value: object) -> object:
    """A deterministic, hashable rendering of a policy value (sets sorted)."""
    if isinstance(value, frozenset | set):
        return tuple(sorted((_canonical(v) for v in value), key=repr))
    if isinstance(value, Mapping):
        return tuple(sorted(((k, _canonical(v)) for k, v in value.items()), key=repr))
    if hasattr(value, "__dataclass_fields__"):
        return (
            type(value).__name__,
            tuple(
                (f.name, _canonical(getattr(value, f.name)))
                for f in fields(value)  # type: ignore[arg-type]
                if not f.name.startswith("_")
            ),
        )
    if isinstance(value, bytes):
        return value.hex()
    return value


# --- TOML mapping ------------------------------------------------------------------------------


class _Table:
    """Reads one TOML table, tracking which keys were consumed so leftovers are reported."""

    def __init__(self, data: object, location: str) -> None:
        if not isinstance(data, dict):
            raise PolicyError("must be a table", location=location)
        self._data: dict[str, Any] = data
        self._location = location
        self._seen: set[str] = set()

    def _loc(self, key: str) -> str:
        return f"{self._location}.{key}" if self._location else key

    def _get(self, key: str) -> object:
        self._seen.add(key)
        return self._data.get(key)

    def has(self, key: str) -> bool:
        return key in self._data

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PolicyError(f"must be true or false, got {value!r}", location=self._loc(key))
        return value

    def integer(self, key: str, default: int, *, low: int = 0, high: int = 2**64 - 1) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"must be an integer, got {value!r}", location=self._loc(key))
        if not low <= value <= high:
            raise PolicyError(
                f"must be between {low} and {high}, got {value}", location=self._loc(key)
            )
        return value

    def optional_integer(self, key: str, *, low: int, high: int) -> int | None:
        if self._get(key) is None:
            return None
        return self.integer(key, 0, low=low, high=high)

    def hex_bytes(self, key: str, size: int) -> bytes | None:
        value = self._get(key)
        if value is None:
            return None
        return _parse_hex(value, size, self._loc(key))

    def hex_list(self, key: str, size: int) -> frozenset[bytes]:
        value = self._get(key)
        if value is None:
            return frozenset()
        if not isinstance(value, list):
            raise PolicyError("must be a list of hex strings", location=self._loc(key))
        return frozenset(
            _parse_hex(item, size, f"{self._loc(key)}[{i}]") for i, item in enumerate(value)
        )

    def string_set(self, key: str, default: frozenset[str]) -> frozenset[str]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError("must be a list of strings", location=self._loc(key))
        return frozenset(value)

    def table(self, key: str) -> _Table:
        value = self._get(key)
        return _Table({} if value is None else value, self._loc(key))

    def raw(self, key: str) -> object:
        return self._get(key)

    def finish(self) -> None:
        """Refuse keys nobody asked for (typos, options of a newer ratls)."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise PolicyError(f"unknown key {unknown[0]!r}", location=self._loc(unknown[0]))


def _parse_hex(value: object, size: int, location: str) -> bytes:
    if not isinstance(value, str):
        raise PolicyError(f"must be a hex string, got {value!r}", location=location)
    try:
        data = bytes.fromhex(value)
    except ValueError as exc:
        raise PolicyError(f"not a hex string: {value!r}", location=location) from exc
    if len(data) != size:
        raise PolicyError(
            f"must be {size} bytes ({2 * size} hex digits), got {len(data)}", location=location
        )
    return data


def _tcb_minimum(table: _Table) -> TcbMinimum:
    values = {name: table.optional_integer(name, low=0, high=0xFF) for name in _TCB_COMPONENTS}
    table.finish()
    return TcbMinimum(**values)


def _version(value: object, location: str) -> tuple[int, int]:
    if value is None:
        return (0, 0)
    if isinstance(value, str):
        major, dot, minor = value.partition(".")
        if dot and major.isdigit() and minor.isdigit():
            parsed = (int(major), int(minor))
            if all(0 <= part <= 0xFF for part in parsed):
                return parsed
    raise PolicyError(f'must be "MAJOR.MINOR", got {value!r}', location=location)


def _snp_policy(table: _Table) -> SnpPolicy:
    platform_table = table.table("platform")
    platform = SnpPlatformRequirements(
        allow_smt=platform_table.boolean("allow_smt", True),
        allow_tsme=platform_table.boolean("allow_tsme", True),
        allow_sev_tio=platform_table.boolean("allow_sev_tio", True),
        require_ecc=platform_table.boolean("require_ecc", False),
        require_rapl_disabled=platform_table.boolean("require_rapl_disabled", False),
        require_ciphertext_hiding=platform_table.boolean("require_ciphertext_hiding", False),
        require_alias_check_complete=platform_table.boolean("require_alias_check_complete", False),
    )
    platform_table.finish()
    vmpl_value = table.raw("vmpl")
    vmpl: int | None
    if vmpl_value is None:
        vmpl = 0
    elif vmpl_value == "any":
        vmpl = None
    elif isinstance(vmpl_value, int) and not isinstance(vmpl_value, bool) and 0 <= vmpl_value <= 3:
        vmpl = vmpl_value
    else:
        raise PolicyError(f'must be 0 to 3 or "any", got {vmpl_value!r}', location="snp.vmpl")
    products = table.string_set("products", frozenset(_KNOWN_PRODUCTS))
    signing_keys = table.string_set("signing_keys", frozenset(_KNOWN_SIGNING_KEYS))
    settings: dict[str, Any] = {
        "allow_debug": table.boolean("allow_debug", False),
        "allow_migration_agent": table.boolean("allow_migration_agent", False),
        "allow_smt": table.boolean("allow_smt", True),
        "allow_cxl": table.boolean("allow_cxl", False),
        "require_single_socket": table.boolean("require_single_socket", False),
        "require_mem_aes_256_xts": table.boolean("require_mem_aes_256_xts", False),
        "require_rapl_disabled": table.boolean("require_rapl_disabled", False),
        "require_ciphertext_hiding": table.boolean("require_ciphertext_hiding", False),
        "require_page_swap_disabled": table.boolean("require_page_swap_disabled", False),
        "minimum_abi_major": table.integer("minimum_abi_major", 0, high=0xFF),
        "minimum_abi_minor": table.integer("minimum_abi_minor", 0, high=0xFF),
        "vmpl": vmpl,
        "products": products,
        "signing_keys": frozenset(k.lower() for k in signing_keys),
        "measurements": table.hex_list("measurements", 48),
        "allow_any_measurement": table.boolean("allow_any_measurement", False),
        "host_data": table.hex_bytes("host_data", 32),
        "family_id": table.hex_bytes("family_id", 16),
        "image_id": table.hex_bytes("image_id", 16),
        "report_ids": table.hex_list("report_ids", 32),
        "report_ids_ma": table.hex_list("report_ids_ma", 32),
        "chip_ids": table.hex_list("chip_ids", 64),
        "minimum_guest_svn": table.integer("minimum_guest_svn", 0, high=2**32 - 1),
        "minimum_tcb": _tcb_minimum(table.table("minimum_tcb")),
        "minimum_launch_tcb": _tcb_minimum(table.table("minimum_launch_tcb")),
        "minimum_build": table.integer("minimum_build", 0, high=0xFF),
        "minimum_version": _version(table.raw("minimum_version"), "snp.minimum_version"),
        "allow_provisional_firmware": table.boolean("allow_provisional_firmware", False),
        "platform": platform,
        "require_id_block": table.boolean("require_id_block", False),
        "require_author_key": table.boolean("require_author_key", False),
        "trusted_id_key_digests": table.hex_list("trusted_id_key_digests", 48),
        "trusted_author_key_digests": table.hex_list("trusted_author_key_digests", 48),
        "required_launch_mit_vector": table.integer("required_launch_mit_vector", 0),
        "required_current_mit_vector": table.integer("required_current_mit_vector", 0),
    }
    table.finish()  # typos first: a misspelt key explains more than its consequences
    return SnpPolicy(**settings)


def _vtpm_policy(table: _Table) -> VtpmPolicy:
    pcrs_table = table.table("pcrs")
    banks: dict[str, dict[int, frozenset[bytes]]] = {}
    for bank in list(pcrs_table._data):
        bank_table = pcrs_table.table(bank)
        if bank not in _PCR_BANKS:
            raise PolicyError(
                f"unknown PCR bank {bank!r}; use one of {sorted(_PCR_BANKS)}",
                location=f"vtpm.pcrs.{bank}",
            )
        size = hashlib.new(bank).digest_size
        values: dict[int, frozenset[bytes]] = {}
        for key in list(bank_table._data):
            if not key.isdigit() or not 0 <= int(key) <= 23:
                raise PolicyError("PCR index must be 0 to 23", location=f"vtpm.pcrs.{bank}.{key}")
            raw = bank_table.raw(key)
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not raw:
                raise PolicyError(
                    "must be a hex string or a non-empty list of them",
                    location=f"vtpm.pcrs.{bank}.{key}",
                )
            values[int(key)] = frozenset(
                _parse_hex(item, size, f"vtpm.pcrs.{bank}.{key}") for item in raw
            )
        bank_table.finish()
        banks[bank] = values
    pcrs_table.finish()
    policy = VtpmPolicy(pcrs=banks, allow_unproven_ak=table.boolean("allow_unproven_ak", False))
    table.finish()
    return policy


_ROOT_KEYS: Final = frozenset({"snp", "vtpm", "trust", "max_evidence_age_seconds"})


def _policy_from_mapping(document: Mapping[str, object]) -> Policy:
    unknown = sorted(set(document) - _ROOT_KEYS)
    if unknown:
        raise PolicyError(f"unknown key {unknown[0]!r}", location=unknown[0])
    root = _Table(dict(document), "")
    snp = _snp_policy(root.table("snp"))
    vtpm = _vtpm_policy(root.table("vtpm"))
    trust_table = root.table("trust")
    trust = TrustPolicy(simulated_hardware=trust_table.boolean("simulated_hardware", False))
    trust_table.finish()
    policy = Policy(
        snp=snp,
        vtpm=vtpm,
        trust=trust,
        max_evidence_age_seconds=root.integer(
            "max_evidence_age_seconds", DEFAULT_MAX_EVIDENCE_AGE_SECONDS, low=1, high=10**9
        ),
    )
    root.finish()
    return policy
