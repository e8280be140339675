"""Get SEV-SNP attestation reports from the Linux kernel inside a real SNP guest.

Two kernel interfaces exist, and :class:`SnpGuestAttester` uses the first it finds:

1. **configfs-tsm** (Linux 6.7 and later), ``/sys/kernel/config/tsm/report/``.  A
   report request is a directory: the caller creates it, writes ``privlevel``
   (the VMPL) and ``inblob`` (the 64 bytes of REPORT_DATA), then reads ``outblob``
   (the raw report), ``auxblob`` (the extended-report certificate table, when the
   host supplies one) and ``provider``.  Every write bumps ``generation``; reading
   it before and after the outputs detects a concurrent writer in the same
   directory, in which case the request is repeated (a bounded number of times).
   With an SVSM (Linux 6.10 and later) ``service_provider``, ``service_guid`` and
   ``service_manifest_version`` ask the SVSM for a VMPL0 report over a service
   manifest, read back from ``manifestblob``.
2. **/dev/sev-guest**, the older ioctl interface: ``SNP_GET_EXT_REPORT`` with a
   32-byte ``snp_guest_request_ioctl`` whose ``exitinfo2`` carries the firmware and
   hypervisor error codes.  When the certificate buffer is too small the kernel
   says how many bytes it needs and the request is repeated with that size.

Both paths are blocking system calls; from trio, call :meth:`SnpGuestAttester.get_report`
through ``trio.to_thread.run_sync``.  The file system and the ioctl are injectable
so that tests can put a simulated kernel behind them.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias, final

from .._errors import AttesterError, AttesterUnavailable
from .._snp_report import SNP_REPORT_SIZE

__all__ = [
    "DEFAULT_SEV_GUEST_DEVICE",
    "DEFAULT_TSM_REPORT_ROOT",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "SVSM_VTPM_SERVICE_GUID",
    "GuestInterface",
    "GuestReport",
    "GuestRequestIoctl",
    "IoctlFunction",
    "LinuxTsmFilesystem",
    "SnpGuestAttester",
    "SvsmServiceRequest",
    "TsmFilesystem",
]

#: Where configfs-tsm report requests live.
DEFAULT_TSM_REPORT_ROOT: Final = "/sys/kernel/config/tsm/report"
#: The SEV guest driver's character device.
DEFAULT_SEV_GUEST_DEVICE: Final = "/dev/sev-guest"
#: _IOWR('S', 0x0, struct snp_guest_request_ioctl).
SNP_GET_REPORT: Final = 0xC0205300
#: _IOWR('S', 0x2, struct snp_guest_request_ioctl).
SNP_GET_EXT_REPORT: Final = 0xC0205302
#: The SVSM vTPM service, whose manifest is the EK's TPMT_PUBLIC.
SVSM_VTPM_SERVICE_GUID: Final = uuid.UUID("c476f1eb-0123-45a5-9641-b4e7dde5bfe3")

#: The provider name the SEV guest driver registers with configfs-tsm.
_SEV_PROVIDER: Final = "sev_guest"
#: How often a configfs request is repeated when another writer interferes.
#: Interference needs a second process writing the same directory; three tries
#: ride out a brief race without hiding a writer that never stops.
_DEFAULT_ATTEMPTS: Final = 3
#: snp_report_resp.data: the kernel's response buffer size.
_RESPONSE_SIZE: Final = 4000
#: MSG_REPORT_RSP header (status, report_size, 24 reserved bytes) before the report.
_RESPONSE_HEADER: Final = 32
#: First certificate buffer offered to SNP_GET_EXT_REPORT: 4 pages, the
#: kernel's SEV_FW_BLOB_MAX_SIZE for many releases.
_INITIAL_CERTS_SIZE: Final = 0x4000
#: Never allocate more than this for certificates, whatever the host asks for.
#: A VCEK/ASK/ARK chain is about 5 KiB; 1 MiB leaves room for CRLs and
#: provider extras while refusing absurd requests.
_MAX_CERTS_SIZE: Final = 1 << 20
_PAGE_SIZE: Final = 4096
#: exitinfo2 upper half: the hypervisor wants a larger certificate buffer.
_VMM_ERR_INVALID_LEN: Final = 1
#: MSG_REPORT_RSP.status: invalid parameters.
_STATUS_INVALID_PARAM: Final = 0x16


class GuestInterface(enum.Enum):
    """Which kernel interface produced a report."""

    #: /sys/kernel/config/tsm/report.
    CONFIGFS_TSM = "configfs-tsm"
    #: The /dev/sev-guest ioctls.
    SEV_GUEST_DEVICE = "sev-guest-ioctl"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GuestReport:
    """What the kernel returned for one report request.

    Attributes:
        report: the raw 0x4A0-byte ATTESTATION_REPORT (parse it with
            :func:`ratls._snp_report.parse_snp_report`).
        certs: the extended-report certificate table, or None when the host
            supplied no certificates.
        manifest: the SVSM service manifest that REPORT_DATA covers, for SVSM
            requests; None otherwise.
        provider: the configfs-tsm provider name (``"sev_guest"``).
        interface: which kernel interface was used.
    """

    report: bytes
    certs: bytes | None
    manifest: bytes | None
    provider: str
    interface: GuestInterface = GuestInterface.CONFIGFS_TSM

    def __repr__(self) -> str:
        certs = "none" if self.certs is None else f"{len(self.certs)} bytes"
        manifest = "none" if self.manifest is None else f"{len(self.manifest)} bytes"
        return (
            f"GuestReport(report=<{len(self.report)} bytes>, certs={certs}, "
            f"manifest={manifest}, provider={self.provider!r}, "
            f"interface={self.interface.value})"
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SvsmServiceRequest:
    """Ask the SVSM (not the guest kernel) for the report, over a service manifest.

    The SVSM requests the report at VMPL 0 with REPORT_DATA =
    SHA-512(nonce || manifest), where the nonce is the 64 bytes passed to
    :meth:`SnpGuestAttester.get_report`.

    Attributes:
        service_guid: one service (e.g. :data:`SVSM_VTPM_SERVICE_GUID`), or None for
            all services (SVSM_ATTEST_SERVICES).
        manifest_version: the manifest version to ask for (0 is the only one
            defined today).
    """

    service_guid: uuid.UUID | None = None
    manifest_version: int = 0

    def __post_init__(self) -> None:
        if self.service_guid is not None and not isinstance(self.service_guid, uuid.UUID):
            raise TypeError("service_guid must be a uuid.UUID or None")
        if not 0 <= self.manifest_version <= 0xFFFFFFFF:
            raise ValueError("manifest_version must be a u32")


class TsmFilesystem(Protocol):
    """The few file operations the configfs-tsm protocol needs.

    The default, :class:`LinuxTsmFilesystem`, performs them on the real file
    system; a test can substitute a simulated kernel.  Each method raises
    ``OSError`` on failure, as the kernel would.
    """

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        ...

    def mkdir(self, path: str) -> None:
        """Create a directory (a new report request)."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove a directory (release the report request)."""
        ...

    def read(self, path: str) -> bytes:
        """Read a whole attribute."""
        ...

    def write(self, path: str, data: bytes) -> None:
        """Write a whole attribute in one write call."""
        ...


@final
class LinuxTsmFilesystem:
    """:class:`TsmFilesystem` on the real file system."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        return os.path.exists(path)

    def mkdir(self, path: str) -> None:
        """Create a directory."""
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        """Remove a directory."""
        os.rmdir(path)

    def read(self, path: str) -> bytes:
        """Read a whole attribute, in chunks until end of file."""
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> None:
        """Write an attribute with a single write(2), as configfs expects."""
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write to {path}")


@final
class GuestRequestIoctl(ctypes.Structure):
    """``struct snp_guest_request_ioctl`` (32 bytes).

    ``exitinfo2`` holds the firmware error in its low 32 bits and the hypervisor
    (VMM) error in its high 32 bits.
    """

    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


class _ReportRequest(ctypes.Structure):
    """``struct snp_report_req`` (96 bytes)."""

    _fields_ = (
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    )


class _ExtReportRequest(ctypes.Structure):
    """``struct snp_ext_report_req``: a report request plus the certificate buffer."""

    _fields_ = (
        ("data", _ReportRequest),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    )


#: The ioctl seam: ``(fd, request, arg) -> int``, raising OSError like fcntl.ioctl,
#: after writing the kernel's ``exitinfo2`` into ``arg``.
IoctlFunction: TypeAlias = Callable[[int, int, GuestRequestIoctl], int]


def _system_ioctl(fd: int, request: int, arg: GuestRequestIoctl) -> int:
    # mutate_flag=True: the kernel's exitinfo2 is copied back even when it fails.
    result: int = fcntl.ioctl(fd, request, arg, True)
    return result


@final
class SnpGuestAttester:
    """Produce SEV-SNP reports on a real SNP guest.

    Args:
        tsm_root: the configfs-tsm report directory.
        filesystem: how to touch ``tsm_root`` (tests pass a simulated kernel).
        device: the /dev/sev-guest path.
        ioctl: how to issue ioctls on ``device`` (tests pass a fake).
        max_attempts: how often a configfs request is repeated when another
            writer changed it underneath, or a certificate buffer is resized.
    """

    def __init__(
        self,
        *,
        tsm_root: str = DEFAULT_TSM_REPORT_ROOT,
        filesystem: TsmFilesystem | None = None,
        device: str = DEFAULT_SEV_GUEST_DEVICE,
        ioctl: IoctlFunction | None = None,
        max_attempts: int = _DEFAULT_ATTEMPTS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._tsm_root = tsm_root
        self._fs: TsmFilesystem = filesystem if filesystem is not None else LinuxTsmFilesystem()
        self._device = device
        self._ioctl = ioctl if ioctl is not None else _system_ioctl
        self._max_attempts = max_attempts

    def get_report(
        self, report_data: bytes, *, vmpl: int = 0, svsm: SvsmServiceRequest | None = None
    ) -> GuestReport:
        """Ask the kernel for a signed report carrying ``report_data``.

        Args:
            report_data: exactly 64 bytes for REPORT_DATA (with ``svsm``: the nonce).
            vmpl: the VMPL to put in the report (0-3); the kernel refuses a VMPL
                more privileged than the guest's own.
            svsm: ask the SVSM for a report over a service manifest (configfs-tsm
                only).

        Returns:
            The raw report, the certificate table if the host supplied one, and
            the SVSM manifest for SVSM requests.

        Raises:
            ValueError: ``report_data`` is not 64 bytes or ``vmpl`` is not 0-3.
            AttesterUnavailable: neither configfs-tsm nor /dev/sev-guest exists, the
                configfs-tsm provider is not the SEV guest driver, or an SVSM
                request was made without configfs-tsm.
            AttesterError: the kernel, firmware or hypervisor refused the request.
        """
        report_data = bytes(report_data)
        if len(report_data) != 64:
            raise ValueError(f"report_data must be 64 bytes, got {len(report_data)}")
        if not 0 <= vmpl <= 3:
            raise ValueError(f"vmpl must be 0-3, got {vmpl}")
        if self._fs.exists(self._tsm_root):
            return self._via_configfs(report_data, vmpl, svsm)
        if svsm is not None:
            raise AttesterUnavailable(
                f"SVSM attestation needs configfs-tsm ({self._tsm_root} does not exist)"
            )
        if os.path.exists(self._device):
            return self._via_device(report_data, vmpl)
        raise AttesterUnavailable(
            f"no SEV-SNP guest interface: neither {self._tsm_root} (configfs-tsm) nor "
            f"{self._device} exists; is this an SEV-SNP guest with the sev-guest driver loaded?"
        )

    # --- configfs-tsm ---------------------------------------------------------------------------

    def _via_configfs(
        self, report_data: bytes, vmpl: int, svsm: SvsmServiceRequest | None
    ) -> GuestReport:
        entry = os.path.join(self._tsm_root, f"ratls-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            self._fs.mkdir(entry)
        except OSError as exc:
            raise AttesterError(f"cannot create report request {entry}: {exc}") from exc
        try:
            return self._configfs_request(entry, report_data, vmpl, svsm)
        finally:
            # Nothing secret is left behind, and the report is already read;
            # failing the whole request for a stale directory helps no one.
            with contextlib.suppress(OSError):
                self._fs.rmdir(entry)

    def _configfs_request(
        self, entry: str, report_data: bytes, vmpl: int, svsm: SvsmServiceRequest | None
    ) -> GuestReport:
        def path(name: str) -> str:
            return os.path.join(entry, name)

        provider = self._read(path("provider")).decode("ascii", "replace").strip()
        if provider != _SEV_PROVIDER:
            raise AttesterUnavailable(
                f"configfs-tsm provider is {provider!r}, not {_SEV_PROVIDER!r}: "
                "this is not an SEV-SNP guest"
            )
        if self._fs.exists(path("privlevel_floor")):
            floor = self._read_int(path("privlevel_floor"))
            if vmpl < floor:
                raise AttesterError(
                    f"VMPL {vmpl} is more privileged than this guest's floor {floor}"
                )
        for _ in range(self._max_attempts):
            if svsm is not None:
                if not self._fs.exists(path("service_provider")):
                    raise AttesterUnavailable(
                        "this kernel's configfs-tsm has no service_provider attribute "
                        "(SVSM attestation needs Linux 6.10 or later)"
                    )
                guid = svsm.service_guid or uuid.UUID(int=0)
                self._write(path("service_provider"), b"svsm")
                self._write(path("service_guid"), str(guid).encode())
                self._write(path("service_manifest_version"), str(svsm.manifest_version).encode())
            self._write(path("privlevel"), str(vmpl).encode())
            self._write(path("inblob"), report_data)
            before = self._read_int(path("generation"))
            report = self._read(path("outblob"))
            certs = self._read_optional(path("auxblob"))
            manifest = self._read(path("manifestblob")) if svsm is not None else None
            after = self._read_int(path("generation"))
            if before == after:
                break
        else:
            raise AttesterError(
                f"another writer kept changing {entry} "
                f"({self._max_attempts} attempts); refusing a report of unknown input"
            )
        self._check_report(report, report_data, manifest)
        return GuestReport(
            report=report,
            certs=certs or None,
            manifest=manifest,
            provider=provider,
            interface=GuestInterface.CONFIGFS_TSM,
        )

    def _read(self, path: str) -> bytes:
        try:
            return self._fs.read(path)
        except OSError as exc:
            raise AttesterError(f"cannot read {path}: {exc}") from exc

    def _read_optional(self, path: str) -> bytes | None:
        try:
            return self._fs.read(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AttesterError(f"cannot read {path}: {exc}") from exc

    def _read_int(self, path: str) -> int:
        text = self._read(path).strip()
        try:
            return int(text, 10)
        except ValueError:
            raise AttesterError(f"{path} holds {text!r}, not a decimal number") from None

    def _write(self, path: str, data: bytes) -> None:
        try:
            self._fs.write(path, data)
        except OSError as exc:
            raise AttesterError(f"cannot write {path}: {exc}") from exc

    @staticmethod
    def _check_report(report: bytes, report_data: bytes, manifest: bytes | None) -> None:
        """Refuse what cannot be the report that was asked for."""
        if len(report) != SNP_REPORT_SIZE:
            raise AttesterError(
                f"the kernel returned {len(report)} bytes, not a {SNP_REPORT_SIZE}-byte report"
            )
        expected = report_data
        if manifest is not None:
            expected = hashlib.sha512(report_data + manifest).digest()
        if not hmac.compare_digest(report[0x50:0x90], expected):
            raise AttesterError("the returned report does not carry the requested REPORT_DATA")

    # --- /dev/sev-guest ------------------------------------------------------------------------

    def _via_device(self, report_data: bytes, vmpl: int) -> GuestReport:
        try:
            fd = os.open(self._device, os.O_RDWR)
        except FileNotFoundError as exc:
            raise AttesterUnavailable(f"{self._device} does not exist") from exc
        except OSError as exc:
            raise AttesterError(f"cannot open {self._device}: {exc}") from exc
        try:
            report, certs = self._ext_report(fd, report_data, vmpl)
        finally:
            os.close(fd)
        self._check_report(report, report_data, None)
        return GuestReport(
            report=report,
            certs=certs,
            manifest=None,
            provider=_SEV_PROVIDER,
            interface=GuestInterface.SEV_GUEST_DEVICE,
        )

    def _ext_report(self, fd: int, report_data: bytes, vmpl: int) -> tuple[bytes, bytes | None]:
        certs_size = _INITIAL_CERTS_SIZE
        for _ in range(self._max_attempts):
            certs = ctypes.create_string_buffer(certs_size)
            request = _ExtReportRequest()
            ctypes.memmove(request.data.user_data, report_data, 64)
            request.data.vmpl = vmpl
            request.certs_address = ctypes.addressof(certs)
            request.certs_len = certs_size
            response = ctypes.create_string_buffer(_RESPONSE_SIZE)
            guest = GuestRequestIoctl(
                msg_version=1,
                req_data=ctypes.addressof(request),
                resp_data=ctypes.addressof(response),
                exitinfo2=0,
            )
            try:
                self._ioctl(fd, SNP_GET_EXT_REPORT, guest)
            except OSError as exc:
                fw_error = guest.exitinfo2 & 0xFFFFFFFF
                vmm_error = guest.exitinfo2 >> 32
                if vmm_error == _VMM_ERR_INVALID_LEN:
                    wanted = request.certs_len
                    if wanted <= certs_size or wanted > _MAX_CERTS_SIZE:
                        raise AttesterError(
                            f"the host asks for a {wanted}-byte certificate buffer "
                            f"(offered {certs_size}, limit {_MAX_CERTS_SIZE})"
                        ) from exc
                    certs_size = -(-wanted // _PAGE_SIZE) * _PAGE_SIZE
                    continue
                raise AttesterError(
                    f"SNP_GET_EXT_REPORT failed: {exc.strerror or exc} "
                    f"(firmware error {fw_error:#x}, hypervisor error {vmm_error:#x})"
                ) from exc
            return self._unpack_response(response.raw), _certs_or_none(certs.raw)
        raise AttesterError(
            f"the host kept asking for a larger certificate buffer ({self._max_attempts} attempts)"
        )

    @staticmethod
    def _unpack_response(raw: bytes) -> bytes:
        status = int.from_bytes(raw[0:4], "little")
        size = int.from_bytes(raw[4:8], "little")
        if status == _STATUS_INVALID_PARAM:
            raise AttesterError("the firmware rejected the report request (invalid parameters)")
        if status != 0:
            raise AttesterError(f"the firmware returned status {status:#x}")
        if size != SNP_REPORT_SIZE:
            raise AttesterError(f"the firmware returned a {size}-byte report")
        return raw[_RESPONSE_HEADER : _RESPONSE_HEADER + SNP_REPORT_SIZE]


def _certs_or_none(buffer: bytes) -> bytes | None:
    """The certificate buffer, or None when the host wrote nothing into it."""
    return buffer if any(buffer) else None
