"""The SEV-SNP ATTESTATION_REPORT codec (formats layer: no I/O).

An SNP attestation report is a 0x4A0-byte little-endian structure produced by the
AMD Secure Processor and signed (ECDSA P-384 / SHA-384) over its first 0x2A0 bytes.
Everything a verifier decides rests on reading it exactly right, so this module
parses strictly: exact length, a known VERSION and SIGNATURE_ALGO first, every
reserved ("must be zero") range checked for the report's version, and the product
line (which selects both the AMD root key and the TCB_VERSION layout) taken from
the CPUID fields of version 3 and later reports.

:func:`parse_snp_report` turns bytes into an :class:`SnpReport`; :meth:`SnpReport.to_bytes`
turns it back, byte for byte.  The simulator builds reports with the same class, so
``SnpReport.__post_init__`` refuses values that cannot be serialized.  Field names
follow the AMD SEV-SNP ABI specification's ATTESTATION_REPORT table.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass
from typing import Final, final

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ._errors import EvidenceFormatError

__all__ = [
    "SNP_REPORT_SIZE",
    "SNP_SIGNED_SIZE",
    "SUPPORTED_REPORT_VERSIONS",
    "GuestPolicy",
    "PlatformInfo",
    "ProductLine",
    "SignatureAlgorithm",
    "SignerInfo",
    "SigningKey",
    "SnpReport",
    "TcbLayout",
    "TcbVersion",
    "parse_snp_report",
    "product_from_cpuid",
]

#: Size of an ATTESTATION_REPORT in bytes.
SNP_REPORT_SIZE: Final = 0x4A0
#: Size of the signed part of the report (bytes 0x000-0x29F).
SNP_SIGNED_SIZE: Final = 0x2A0
#: Report VERSION values this codec understands (3 and 4 share a layout).
SUPPORTED_REPORT_VERSIONS: Final = frozenset({2, 3, 4, 5})

_STRUCTURE: Final = "ATTESTATION_REPORT"
_U64_MAX: Final = (1 << 64) - 1
_U32_MAX: Final = (1 << 32) - 1
#: r and s are 48 significant little-endian bytes zero-extended to 72.
_SIG_COMPONENT_SIZE: Final = 72
_SIG_SIGNIFICANT: Final = 48


class ProductLine(enum.Enum):
    """AMD EPYC product lines that implement SEV-SNP.

    The value is the name AMD uses in KDS URLs and in the VCEK productName extension.
    """

    #: 3rd generation EPYC (Zen 3).
    MILAN = "Milan"
    #: 4th generation EPYC (Zen 4), including Bergamo and Siena models.
    GENOA = "Genoa"
    #: 5th generation EPYC (Zen 5).
    TURIN = "Turin"

    @property
    def tcb_layout(self) -> TcbLayout:
        """The TCB_VERSION layout this product's firmware writes."""
        return TcbLayout.TURIN if self is ProductLine.TURIN else TcbLayout.LEGACY


class TcbLayout(enum.Enum):
    """Byte layouts of the 8-byte TCB_VERSION structure."""

    #: Milan and Genoa: BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE.
    LEGACY = "legacy"
    #: Turin: FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE.
    TURIN = "turin"


def product_from_cpuid(family: int, model: int) -> ProductLine | None:
    """Map the report's CPUID_FAM_ID / CPUID_MOD_ID to a product line.

    Args:
        family: extended family + family (0x19 for Zen 3/4, 0x1A for Zen 5).
        model: extended model and model, as one byte.

    Returns:
        The product line, or None when the pair names no product this module knows.
    """
    if family == 0x19:
        if 0x00 <= model <= 0x0F:
            return ProductLine.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return ProductLine.GENOA
    elif family == 0x1A and 0x00 <= model <= 0x11:
        return ProductLine.TURIN
    return None


# Byte positions of each TCB component (and of the reserved bytes) per layout.
_TCB_POSITIONS: Final[dict[TcbLayout, dict[str, int]]] = {
    TcbLayout.LEGACY: {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    TcbLayout.TURIN: {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7},
}
_TCB_RESERVED: Final[dict[TcbLayout, tuple[int, ...]]] = {
    TcbLayout.LEGACY: (2, 3, 4, 5),
    TcbLayout.TURIN: (4, 5, 6),
}


def _check_byte(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be an int in 0..255, got {value!r}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TcbVersion:
    """A TCB_VERSION: the security patch levels of the SNP firmware components.

    Compare TCBs component by component (:meth:`components`), never as packed
    integers: the layouts differ between product lines.

    Attributes:
        bootloader: BOOT_LOADER SPL.
        tee: TEE (PSP OS) SPL.
        snp: SNP firmware SPL.
        microcode: MICROCODE SPL.
        fmc: FMC SPL on Turin; None on the legacy layout, which has no such field.
        layout: which byte layout the value was read with or is written in.
        reserved: the bytes at the reserved positions, in order (4 on LEGACY, 3 on
            TURIN), kept so that serialization is byte-exact.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None
    layout: TcbLayout = TcbLayout.LEGACY
    reserved: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.layout, TcbLayout):
            raise TypeError(f"layout must be a TcbLayout, got {self.layout!r}")
        for name in ("bootloader", "tee", "snp", "microcode"):
            _check_byte(name, getattr(self, name))
        if self.layout is TcbLayout.TURIN:
            if self.fmc is None:
                raise ValueError("the Turin TCB layout needs an fmc value")
            _check_byte("fmc", self.fmc)
        elif self.fmc is not None:
            raise ValueError("the legacy TCB layout has no fmc field")
        want = len(_TCB_RESERVED[self.layout])
        if self.reserved == b"":
            object.__setattr__(self, "reserved", bytes(want))
        elif not isinstance(self.reserved, bytes) or len(self.reserved) != want:
            raise ValueError(f"reserved must be {want} bytes for the {self.layout.name} layout")

    @classmethod
    def from_bytes(cls, data: bytes, layout: TcbLayout) -> TcbVersion:
        """Decode an 8-byte TCB_VERSION.

        Args:
            data: exactly 8 bytes.
            layout: the product's layout (see :attr:`ProductLine.tcb_layout`).

        Returns:
            The decoded TCB version.

        Raises:
            EvidenceFormatError: if ``data`` is not 8 bytes long.
        """
        if len(data) != 8:
            raise EvidenceFormatError(
                f"TCB_VERSION must be 8 bytes, got {len(data)}", structure="TCB_VERSION"
            )
        positions = _TCB_POSITIONS[layout]
        return cls(
            bootloader=data[positions["bootloader"]],
            tee=data[positions["tee"]],
            snp=data[positions["snp"]],
            microcode=data[positions["microcode"]],
            fmc=data[positions["fmc"]] if "fmc" in positions else None,
            layout=layout,
            reserved=bytes(data[i] for i in _TCB_RESERVED[layout]),
        )

    @classmethod
    def from_int(cls, raw: int, layout: TcbLayout) -> TcbVersion:
        """Decode a TCB_VERSION given as the little-endian u64 value.

        Args:
            raw: the u64 value (byte i holds bits 8i+7..8i).
            layout: the product's layout.

        Returns:
            The decoded TCB version.

        Raises:
            ValueError: if ``raw`` does not fit in 64 bits.
        """
        if not 0 <= raw <= _U64_MAX:
            raise ValueError(f"TCB_VERSION must fit in 64 bits, got {raw:#x}")
        return cls.from_bytes(raw.to_bytes(8, "little"), layout)

    def to_bytes(self) -> bytes:
        """Encode as the 8 bytes found in the report."""
        out = bytearray(8)
        for name, position in _TCB_POSITIONS[self.layout].items():
            value = getattr(self, name)
            out[position] = value
        for position, value in zip(_TCB_RESERVED[self.layout], self.reserved, strict=True):
            out[position] = value
        return bytes(out)

    def to_int(self) -> int:
        """Encode as the little-endian u64 value."""
        return int.from_bytes(self.to_bytes(), "little")

    def components(self) -> dict[str, int]:
        """Component name -> SPL, for component-wise comparisons.

        Returns:
            ``bootloader``, ``tee``, ``snp`` and ``microcode``, plus ``fmc`` on Turin.
        """
        result = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            result["fmc"] = self.fmc
        return result

    def __str__(self) -> str:
        text = f"bl={self.bootloader} tee={self.tee} snp={self.snp} ucode={self.microcode}"
        if self.fmc is not None:
            text += f" fmc={self.fmc}"
        return text


# GUEST POLICY bits (C1, offset 0x08).
_POLICY_FLAGS: Final = (
    ("smt", 16),
    ("migrate_ma", 18),
    ("debug", 19),
    ("single_socket", 20),
    ("cxl_allow", 21),
    ("mem_aes_256_xts", 22),
    ("rapl_dis", 23),
    ("ciphertext_hiding", 24),
    ("page_swap_disable", 25),
)
_POLICY_RESERVED_ONE: Final = 1 << 17
_POLICY_MBZ: Final = _U64_MAX & ~((1 << 26) - 1)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GuestPolicy:
    """The guest POLICY the VM was launched with (report offset 0x08).

    Attributes:
        abi_minor: minimum ABI minor version (bits 7:0).
        abi_major: minimum ABI major version (bits 15:8).
        smt: SMT allowed (bit 16).
        migrate_ma: a migration agent may be associated (bit 18).
        debug: debugging allowed (bit 19); a debuggable guest protects nothing.
        single_socket: guest may run on one socket only (bit 20).
        cxl_allow: CXL may be populated with guest memory (bit 21).
        mem_aes_256_xts: AES-256-XTS memory encryption required (bit 22).
        rapl_dis: RAPL must be disabled (bit 23).
        ciphertext_hiding: ciphertext hiding must be enabled (bit 24).
        page_swap_disable: SNP_PAGE_MOVE/SWAP disabled (bit 25).
    """

    abi_minor: int = 0
    abi_major: int = 0
    smt: bool = False
    migrate_ma: bool = False
    debug: bool = False
    single_socket: bool = False
    cxl_allow: bool = False
    mem_aes_256_xts: bool = False
    rapl_dis: bool = False
    ciphertext_hiding: bool = False
    page_swap_disable: bool = False

    def __post_init__(self) -> None:
        _check_byte("abi_minor", self.abi_minor)
        _check_byte("abi_major", self.abi_major)

    @classmethod
    def from_int(cls, raw: int) -> GuestPolicy:
        """Decode the 64-bit POLICY value.

        Args:
            raw: the u64 value.

        Returns:
            The decoded policy.

        Raises:
            EvidenceFormatError: bit 17 is not 1, or a bit in 26-63 is set.
        """
        if not 0 <= raw <= _U64_MAX:
            raise EvidenceFormatError(
                f"POLICY {raw:#x} does not fit in 64 bits", structure="POLICY"
            )
        if not raw & _POLICY_RESERVED_ONE:
            raise EvidenceFormatError(
                f"POLICY {raw:#x}: reserved bit 17 must be 1", structure="POLICY"
            )
        if raw & _POLICY_MBZ:
            raise EvidenceFormatError(
                f"POLICY {raw:#x}: bits 26-63 must be zero", structure="POLICY"
            )
        flags = {name: bool(raw >> bit & 1) for name, bit in _POLICY_FLAGS}
        return cls(abi_minor=raw & 0xFF, abi_major=raw >> 8 & 0xFF, **flags)

    def to_int(self) -> int:
        """Encode as the 64-bit POLICY value (bit 17 set)."""
        raw = self.abi_minor | self.abi_major << 8 | _POLICY_RESERVED_ONE
        for name, bit in _POLICY_FLAGS:
            if getattr(self, name):
                raw |= 1 << bit
        return raw

    def flag_names(self) -> list[str]:
        """Names of the flags that are set, in bit order."""
        return [name for name, _ in _POLICY_FLAGS if getattr(self, name)]


_PLATFORM_FLAGS: Final = (
    ("smt_en", 0),
    ("tsme_en", 1),
    ("ecc_en", 2),
    ("rapl_dis", 3),
    ("ciphertext_hiding_en", 4),
    ("alias_check_complete", 5),
    ("iommu_write_safe", 6),
    ("sev_tio_en", 7),
)
_PLATFORM_KNOWN_MASK: Final = 0xFF


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformInfo:
    """PLATFORM_INFO (report offset 0x40): how the platform is configured.

    Unknown bits are informational, so they are kept (never rejected) in
    ``unknown_bits``, at their original bit positions.

    Attributes:
        smt_en: SMT is enabled (bit 0).
        tsme_en: TSME is enabled (bit 1).
        ecc_en: ECC memory is in use (bit 2).
        rapl_dis: RAPL is disabled (bit 3).
        ciphertext_hiding_en: ciphertext hiding is enabled (bit 4).
        alias_check_complete: the memory alias check has completed (bit 5).
        iommu_write_safe: IOMMU write protection is safe (bit 6, newer firmware).
        sev_tio_en: SEV-TIO is enabled (bit 7).
        unknown_bits: the value of bits 8-63, in place (bits 0-7 always clear).
    """

    smt_en: bool = False
    tsme_en: bool = False
    ecc_en: bool = False
    rapl_dis: bool = False
    ciphertext_hiding_en: bool = False
    alias_check_complete: bool = False
    iommu_write_safe: bool = False
    sev_tio_en: bool = False
    unknown_bits: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.unknown_bits <= _U64_MAX or self.unknown_bits & _PLATFORM_KNOWN_MASK:
            raise ValueError("unknown_bits must be a u64 with bits 0-7 clear")

    @classmethod
    def from_int(cls, raw: int) -> PlatformInfo:
        """Decode the 64-bit PLATFORM_INFO value.

        Args:
            raw: the u64 value.

        Returns:
            The decoded platform info.

        Raises:
            EvidenceFormatError: if ``raw`` does not fit in 64 bits.
        """
        if not 0 <= raw <= _U64_MAX:
            raise EvidenceFormatError(
                f"PLATFORM_INFO {raw:#x} does not fit in 64 bits", structure="PLATFORM_INFO"
            )
        flags = {name: bool(raw >> bit & 1) for name, bit in _PLATFORM_FLAGS}
        return cls(unknown_bits=raw & ~_PLATFORM_KNOWN_MASK, **flags)

    def to_int(self) -> int:
        """Encode as the 64-bit PLATFORM_INFO value."""
        raw = self.unknown_bits
        for name, bit in _PLATFORM_FLAGS:
            if getattr(self, name):
                raw |= 1 << bit
        return raw

    def flag_names(self) -> list[str]:
        """Names of the known flags that are set, in bit order."""
        return [name for name, _ in _PLATFORM_FLAGS if getattr(self, name)]


class SigningKey(enum.IntEnum):
    """SIGNING_KEY (SIGNER_INFO bits 4:2): which key signed the report."""

    #: Versioned Chip Endorsement Key, unique to the chip and its TCB.
    VCEK = 0
    #: Versioned Loaded Endorsement Key, provisioned by a cloud provider.
    VLEK = 1
    #: The report is not signed.
    NONE = 7


class SignatureAlgorithm(enum.IntEnum):
    """SIGNATURE_ALGO (report offset 0x34)."""

    #: ECDSA on P-384 over SHA-384.
    ECDSA_P384_SHA384 = 1


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SignerInfo:
    """The signer-info word at report offset 0x48.

    Attributes:
        author_key_en: the ID block was signed by an author key (bit 0).
        mask_chip_key: CHIP_ID is masked to zero (bit 1, MASK_CHIP_KEY).
        signing_key: which key signed the report (bits 4:2).
    """

    author_key_en: bool = False
    mask_chip_key: bool = False
    signing_key: SigningKey = SigningKey.VCEK

    def __post_init__(self) -> None:
        if not isinstance(self.signing_key, SigningKey):
            raise TypeError(f"signing_key must be a SigningKey, got {self.signing_key!r}")

    @classmethod
    def from_int(cls, raw: int) -> SignerInfo:
        """Decode the 32-bit signer-info value.

        Args:
            raw: the u32 value.

        Returns:
            The decoded signer info (SigningKey.NONE is accepted here; the report
            parser refuses unsigned reports).

        Raises:
            EvidenceFormatError: bits 5-31 are set, or SIGNING_KEY is 2..6.
        """
        if not 0 <= raw <= _U32_MAX or raw >> 5:
            raise EvidenceFormatError(
                f"signer info {raw:#x}: bits 5-31 must be zero", structure="SIGNER_INFO"
            )
        key = raw >> 2 & 0x7
        try:
            signing_key = SigningKey(key)
        except ValueError:
            raise EvidenceFormatError(
                f"SIGNING_KEY {key} is reserved", structure="SIGNER_INFO"
            ) from None
        return cls(
            author_key_en=bool(raw & 1), mask_chip_key=bool(raw & 2), signing_key=signing_key
        )

    def to_int(self) -> int:
        """Encode as the 32-bit signer-info value."""
        return int(self.author_key_en) | int(self.mask_chip_key) << 1 | int(self.signing_key) << 2


# Sizes of the byte-string fields, checked when a report is built by hand.
_BYTE_FIELDS: Final = {
    "family_id": 16,
    "image_id": 16,
    "report_data": 64,
    "measurement": 48,
    "host_data": 32,
    "id_key_digest": 48,
    "author_key_digest": 48,
    "report_id": 32,
    "report_id_ma": 32,
    "chip_id": 64,
}
_U8_FIELDS: Final = (
    "current_build",
    "current_minor",
    "current_major",
    "committed_build",
    "committed_minor",
    "committed_major",
)
_TCB_FIELDS: Final = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")


@final
@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SnpReport:
    """A parsed SEV-SNP ATTESTATION_REPORT (versions 2 to 5).

    Fields are in wire order; each comment gives the byte offset.  ``product`` is
    not on the wire: it is derived from CPUID_FAM_ID/CPUID_MOD_ID on version 3 and
    later, and supplied by the caller (or None) for version 2.
    """

    #: 0x000 u32: report format version (2 to 5).
    version: int
    #: 0x004 u32: guest security version number from the ID block.
    guest_svn: int
    #: 0x008 u64: the guest policy.
    policy: GuestPolicy
    #: 0x010 16 bytes: family ID from the ID block.
    family_id: bytes
    #: 0x020 16 bytes: image ID from the ID block.
    image_id: bytes
    #: 0x030 u32: the VMPL the report was requested for.
    vmpl: int
    #: 0x034 u32: signature algorithm.
    signature_algo: SignatureAlgorithm
    #: 0x038 8 bytes: CURRENT_TCB.
    current_tcb: TcbVersion
    #: 0x040 u64: PLATFORM_INFO.
    platform_info: PlatformInfo
    #: 0x048 u32: AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY (0x04C-0x04F reserved).
    signer_info: SignerInfo
    #: 0x050 64 bytes: data supplied by the guest when requesting the report.
    report_data: bytes
    #: 0x090 48 bytes: launch digest.
    measurement: bytes
    #: 0x0C0 32 bytes: data supplied by the host at launch.
    host_data: bytes
    #: 0x0E0 48 bytes: SHA-384 of the ID-block signing key.
    id_key_digest: bytes
    #: 0x110 48 bytes: SHA-384 of the author key (zero unless AUTHOR_KEY_EN).
    author_key_digest: bytes
    #: 0x140 32 bytes: report ID of this guest.
    report_id: bytes
    #: 0x160 32 bytes: report ID of the migration agent (all FF when none).
    report_id_ma: bytes
    #: 0x180 8 bytes: REPORTED_TCB, the TCB the VCEK was derived from.
    reported_tcb: TcbVersion
    #: 0x188 u8: CPUID family (extended + base); None on version 2.
    cpuid_fam_id: int | None
    #: 0x189 u8: CPUID model (extended and base); None on version 2.
    cpuid_mod_id: int | None
    #: 0x18A u8: CPUID stepping; None on version 2.  (0x18B-0x19F reserved.)
    cpuid_step: int | None
    #: 0x1A0 64 bytes: chip identifier (zero when MASK_CHIP_ID; Turin uses 8 bytes).
    chip_id: bytes
    #: 0x1E0 8 bytes: COMMITTED_TCB.
    committed_tcb: TcbVersion
    #: 0x1E8 u8: build number of the current firmware.
    current_build: int
    #: 0x1E9 u8: minor version of the current firmware.
    current_minor: int
    #: 0x1EA u8: major version of the current firmware.  (0x1EB reserved.)
    current_major: int
    #: 0x1EC u8: build number of the committed firmware.
    committed_build: int
    #: 0x1ED u8: minor version of the committed firmware.
    committed_minor: int
    #: 0x1EE u8: major version of the committed firmware.  (0x1EF reserved.)
    committed_major: int
    #: 0x1F0 8 bytes: LAUNCH_TCB, the CURRENT_TCB when the guest was launched.
    launch_tcb: TcbVersion
    #: 0x1F8 u64: LAUNCH_MIT_VECTOR (version 5 and later; None before).
    launch_mit_vector: int | None
    #: 0x200 u64: CURRENT_MIT_VECTOR (version 5 and later; None before).
    current_mit_vector: int | None
    #: 0x2A0 72 bytes: signature R, little-endian (48 significant bytes).
    signature_r: int
    #: 0x2E8 72 bytes: signature S, little-endian (48 significant bytes).
    signature_s: int
    #: Not on the wire: the product line (CPUID for v3+, the caller's for v2).
    product: ProductLine | None = None

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_REPORT_VERSIONS:
            raise ValueError(f"unsupported report version {self.version!r}")
        for name in ("guest_svn", "vmpl"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= _U32_MAX:
                raise ValueError(f"{name} must be a u32, got {value!r}")
        for name, size in _BYTE_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise ValueError(f"{name} must be {size} bytes")
        for name in _U8_FIELDS:
            _check_byte(name, getattr(self, name))
        if not isinstance(self.policy, GuestPolicy):
            raise TypeError("policy must be a GuestPolicy")
        if not isinstance(self.platform_info, PlatformInfo):
            raise TypeError("platform_info must be a PlatformInfo")
        if not isinstance(self.signer_info, SignerInfo):
            raise TypeError("signer_info must be a SignerInfo")
        if not isinstance(self.signature_algo, SignatureAlgorithm):
            raise TypeError("signature_algo must be a SignatureAlgorithm")
        if self.product is not None and not isinstance(self.product, ProductLine):
            raise TypeError("product must be a ProductLine or None")
        cpuid = (self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step)
        if self.version == 2:
            if cpuid != (None, None, None):
                raise ValueError("version 2 reports have no CPUID fields")
        else:
            for name, value in zip(
                ("cpuid_fam_id", "cpuid_mod_id", "cpuid_step"), cpuid, strict=True
            ):
                if value is None:
                    raise ValueError(f"{name} is required from version 3 on")
                _check_byte(name, value)
            family, model = self.cpuid_fam_id or 0, self.cpuid_mod_id or 0
            named = product_from_cpuid(family, model)
            if named is not None and self.product is not named:
                raise ValueError(
                    f"product {self.product} contradicts CPUID family {family:#x} "
                    f"model {model:#x} ({named.value})"
                )
        layout = self.product.tcb_layout if self.product is not None else TcbLayout.LEGACY
        for name in _TCB_FIELDS:
            tcb = getattr(self, name)
            if not isinstance(tcb, TcbVersion) or tcb.layout is not layout:
                raise ValueError(f"{name} must be a TcbVersion with the {layout.name} layout")
        mit = (self.launch_mit_vector, self.current_mit_vector)
        if self.version >= 5:
            for name, value in zip(("launch_mit_vector", "current_mit_vector"), mit, strict=True):
                if not isinstance(value, int) or not 0 <= value <= _U64_MAX:
                    raise ValueError(f"{name} must be a u64 from version 5 on")
        elif mit != (None, None):
            raise ValueError("mitigation vectors exist only from version 5 on")
        for name in ("signature_r", "signature_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 1 << (8 * _SIG_SIGNIFICANT):
                raise ValueError(f"{name} must be a non-negative int below 2**384")

    def to_bytes(self) -> bytes:
        """Serialize to the exact 0x4A0-byte wire form (byte-exact round trip)."""
        out = bytearray(SNP_REPORT_SIZE)
        struct.pack_into(
            "<IIQ16s16sII",
            out,
            0x000,
            self.version,
            self.guest_svn,
            self.policy.to_int(),
            self.family_id,
            self.image_id,
            self.vmpl,
            int(self.signature_algo),
        )
        out[0x038:0x040] = self.current_tcb.to_bytes()
        struct.pack_into("<QI", out, 0x040, self.platform_info.to_int(), self.signer_info.to_int())
        out[0x050:0x090] = self.report_data
        out[0x090:0x0C0] = self.measurement
        out[0x0C0:0x0E0] = self.host_data
        out[0x0E0:0x110] = self.id_key_digest
        out[0x110:0x140] = self.author_key_digest
        out[0x140:0x160] = self.report_id
        out[0x160:0x180] = self.report_id_ma
        out[0x180:0x188] = self.reported_tcb.to_bytes()
        # None only where the version has no such field (checked in __post_init__).
        out[0x188] = self.cpuid_fam_id or 0
        out[0x189] = self.cpuid_mod_id or 0
        out[0x18A] = self.cpuid_step or 0
        out[0x1A0:0x1E0] = self.chip_id
        out[0x1E0:0x1E8] = self.committed_tcb.to_bytes()
        out[0x1E8:0x1EB] = bytes((self.current_build, self.current_minor, self.current_major))
        out[0x1EC:0x1EF] = bytes((self.committed_build, self.committed_minor, self.committed_major))
        out[0x1F0:0x1F8] = self.launch_tcb.to_bytes()
        struct.pack_into(
            "<QQ", out, 0x1F8, self.launch_mit_vector or 0, self.current_mit_vector or 0
        )
        out[0x2A0:0x2E8] = self.signature_r.to_bytes(_SIG_COMPONENT_SIZE, "little")
        out[0x2E8:0x330] = self.signature_s.to_bytes(_SIG_COMPONENT_SIZE, "little")
        return bytes(out)

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: 0x000-0x29F."""
        return self.to_bytes()[:SNP_SIGNED_SIZE]

    def signature_der(self) -> bytes:
        """The signature as a DER ECDSA-Sig-Value, as cryptography's verify() wants it."""
        return encode_dss_signature(self.signature_r, self.signature_s)

    def describe(self) -> dict[str, object]:
        """A JSON-friendly view of every field: hex strings, flag names, TCB parts.

        Returns:
            A dict of str -> str/int/bool/list/dict/None, in wire order.
        """

        def tcb(value: TcbVersion) -> dict[str, object]:
            return {"raw": value.to_bytes().hex(), **value.components()}

        return {
            "version": self.version,
            "product": self.product.value if self.product is not None else None,
            "guest_svn": self.guest_svn,
            "policy": {
                "raw": f"{self.policy.to_int():#x}",
                "abi": f"{self.policy.abi_major}.{self.policy.abi_minor}",
                "flags": self.policy.flag_names(),
            },
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo.name,
            "current_tcb": tcb(self.current_tcb),
            "platform_info": {
                "raw": f"{self.platform_info.to_int():#x}",
                "flags": self.platform_info.flag_names(),
                "unknown_bits": f"{self.platform_info.unknown_bits:#x}",
            },
            "signer_info": {
                "author_key_en": self.signer_info.author_key_en,
                "mask_chip_key": self.signer_info.mask_chip_key,
                "signing_key": self.signer_info.signing_key.name,
            },
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": tcb(self.reported_tcb),
            "cpuid_fam_id": self.cpuid_fam_id,
            "cpuid_mod_id": self.cpuid_mod_id,
            "cpuid_step": self.cpuid_step,
            "chip_id": self.chip_id.hex(),
            "committed_tcb": tcb(self.committed_tcb),
            "current_version": f"{self.current_major}.{self.current_minor}.{self.current_build}",
            "committed_version": (
                f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"
            ),
            "launch_tcb": tcb(self.launch_tcb),
            "launch_mit_vector": _hex_or_none(self.launch_mit_vector),
            "current_mit_vector": _hex_or_none(self.current_mit_vector),
            "signature_r": f"{self.signature_r:096x}",
            "signature_s": f"{self.signature_s:096x}",
        }

    def __repr__(self) -> str:
        product = self.product.value if self.product is not None else "unknown product"
        return (
            f"<SnpReport v{self.version} {product} vmpl={self.vmpl} "
            f"key={self.signer_info.signing_key.name} "
            f"measurement={self.measurement.hex()} report_data={self.report_data.hex()} "
            f"reported_tcb=({self.reported_tcb}) chip_id={self.chip_id[:8].hex()}...>"
        )


def _hex_or_none(value: int | None) -> str | None:
    return None if value is None else f"{value:#018x}"


def _fail(message: str, offset: int | None) -> EvidenceFormatError:
    return EvidenceFormatError(message, structure=_STRUCTURE, offset=offset)


def _reserved_ranges(version: int) -> tuple[tuple[int, int], ...]:
    """Half-open [start, end) ranges that must be zero, per report version."""
    cpuid_reserved = (0x188, 0x1A0) if version == 2 else (0x18B, 0x1A0)
    tail_reserved = (0x208, 0x2A0) if version >= 5 else (0x1F8, 0x2A0)
    return (
        (0x04C, 0x050),
        cpuid_reserved,
        (0x1EB, 0x1EC),
        (0x1EF, 0x1F0),
        tail_reserved,
        (0x2A0 + _SIG_SIGNIFICANT, 0x2E8),
        (0x2E8 + _SIG_SIGNIFICANT, 0x330),
        (0x330, SNP_REPORT_SIZE),
    )


def _determine_product(
    version: int, data: bytes, product: ProductLine | None
) -> ProductLine | None:
    if version == 2:
        return product
    family, model = data[0x188], data[0x189]
    named = product_from_cpuid(family, model)
    if named is None:
        if product is None:
            raise _fail(
                f"CPUID family {family:#x} model {model:#x} names no known product line "
                "(pass product= to parse it anyway)",
                0x188,
            )
        return product
    if product is not None and product is not named:
        raise _fail(
            f"CPUID family {family:#x} model {model:#x} is {named.value}, "
            f"but the caller said {product.value}",
            0x188,
        )
    return named


# The four TCB_VERSIONs of a report, and its policy and flag words, are nearly always the
# values of the same few platforms and guests: decoded once per distinct value (the
# results are immutable; errors are raised again every time, as lru_cache keeps none).
@functools.lru_cache(maxsize=256)
def _decoded_tcb(data: bytes, layout: TcbLayout) -> TcbVersion:
    return TcbVersion.from_bytes(data, layout)


@functools.lru_cache(maxsize=256)
def _decoded_policy(raw: int) -> GuestPolicy:
    return GuestPolicy.from_int(raw)


@functools.lru_cache(maxsize=256)
def _decoded_signer_info(raw: int) -> SignerInfo:
    return SignerInfo.from_int(raw)


@functools.lru_cache(maxsize=256)
def _decoded_platform_info(raw: int) -> PlatformInfo:
    return PlatformInfo.from_int(raw)


def parse_snp_report(data: bytes, *, product: ProductLine | None = None) -> SnpReport:
    """Parse an ATTESTATION_REPORT strictly.

    Args:
        data: exactly 0x4A0 bytes.
        product: the product line when known out of band.  Required to pick the
            Turin TCB layout for a version 2 report (v2 carries no CPUID; without it
            the legacy layout is used, since Turin never produces v2).  For version
            3 and later it must agree with CPUID, and it is used only when CPUID
            names no product this module knows.

    Returns:
        The parsed report.

    Raises:
        EvidenceFormatError: wrong length, unsupported VERSION or SIGNATURE_ALGO,
            a reserved range or bit not zero, an unsigned report, a reserved
            SIGNING_KEY, an unknown or contradicting product.  ``offset`` names the
            first offending byte.
    """
    if len(data) != SNP_REPORT_SIZE:
        raise _fail(
            f"expected {SNP_REPORT_SIZE} bytes, got {len(data)}", min(len(data), SNP_REPORT_SIZE)
        )
    data = bytes(data)
    version, guest_svn, policy_raw = struct.unpack_from("<IIQ", data, 0x000)
    if version not in SUPPORTED_REPORT_VERSIONS:
        raise _fail(f"unsupported VERSION {version}", 0x000)
    algo, _tcb, platform_raw, signer_raw = struct.unpack_from("<I8sQI", data, 0x034)
    if algo != SignatureAlgorithm.ECDSA_P384_SHA384:
        raise _fail(f"unsupported SIGNATURE_ALGO {algo}", 0x034)
    try:
        policy = _decoded_policy(policy_raw)
    except EvidenceFormatError as exc:
        raise _fail(str(exc), 0x008) from exc
    try:
        signer_info = _decoded_signer_info(signer_raw)
    except EvidenceFormatError as exc:
        raise _fail(str(exc), 0x048) from exc
    if signer_info.signing_key is SigningKey.NONE:
        raise _fail("unsigned report (SIGNING_KEY is NONE)", 0x048)
    for start, end in _reserved_ranges(version):
        if data.count(0, start, end) != end - start:  # in C; name the first offender below
            offset = next(i for i in range(start, end) if data[i])
            raise _fail(f"reserved byte is {data[offset]:#04x}, must be zero", offset)
    found = _determine_product(version, data, product)
    layout = found.tcb_layout if found is not None else TcbLayout.LEGACY

    def tcb(offset: int) -> TcbVersion:
        return _decoded_tcb(data[offset : offset + 8], layout)

    has_cpuid = version >= 3
    has_mit = version >= 5
    launch_mit, current_mit = struct.unpack_from("<QQ", data, 0x1F8)
    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=data[0x010:0x020],
        image_id=data[0x020:0x030],
        vmpl=struct.unpack_from("<I", data, 0x030)[0],
        signature_algo=SignatureAlgorithm(algo),
        current_tcb=tcb(0x038),
        platform_info=_decoded_platform_info(platform_raw),
        signer_info=signer_info,
        report_data=data[0x050:0x090],
        measurement=data[0x090:0x0C0],
        host_data=data[0x0C0:0x0E0],
        id_key_digest=data[0x0E0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=tcb(0x180),
        cpuid_fam_id=data[0x188] if has_cpuid else None,
        cpuid_mod_id=data[0x189] if has_cpuid else None,
        cpuid_step=data[0x18A] if has_cpuid else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=tcb(0x1E0),
        current_build=data[0x1E8],
        current_minor=data[0x1E9],
        current_major=data[0x1EA],
        committed_build=data[0x1EC],
        committed_minor=data[0x1ED],
        committed_major=data[0x1EE],
        launch_tcb=tcb(0x1F0),
        launch_mit_vector=launch_mit if has_mit else None,
        current_mit_vector=current_mit if has_mit else None,
        signature_r=int.from_bytes(data[0x2A0 : 0x2A0 + _SIG_SIGNIFICANT], "little"),
        signature_s=int.from_bytes(data[0x2E8 : 0x2E8 + _SIG_SIGNIFICANT], "little"),
        product=found,
    )
