"""Tests for the SEV-SNP guest attester against simulated kernels.

A plain directory cannot react to writes, so the configfs-tsm tests put a small
simulated kernel behind the attester's file-system seam: it keeps real files in
a temporary directory and, like the kernel, fills in ``outblob`` from what was
written to ``inblob``/``privlevel``, bumps ``generation`` on every write, and can
play a concurrent writer.  The /dev/sev-guest tests use a fake ioctl function
that reads and writes the request and response buffers by address, as the
kernel does.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import hashlib
import shutil
import struct
import uuid
from pathlib import Path

import pytest

from ratls._errors import AttesterError, AttesterUnavailable
from ratls._snp_certtable import (
    CERT_TABLE_GUID_ARK,
    CERT_TABLE_GUID_ASK,
    CERT_TABLE_GUID_VCEK,
    CertTableEntry,
    build_cert_table,
    parse_cert_table,
)
from ratls._snp_report import (
    GuestPolicy,
    PlatformInfo,
    ProductLine,
    SignatureAlgorithm,
    SignerInfo,
    SnpReport,
    TcbVersion,
    parse_snp_report,
)
from ratls.attesters import (
    SNP_GET_EXT_REPORT,
    SVSM_VTPM_SERVICE_GUID,
    GuestInterface,
    GuestReport,
    GuestRequestIoctl,
    LinuxTsmFilesystem,
    SnpGuestAttester,
    SvsmServiceRequest,
)

NONCE = bytes(range(64))
CERTS = build_cert_table(
    [
        CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"vcek" * 100),
        CertTableEntry(guid=CERT_TABLE_GUID_ASK, data=b"ask" * 300),
        CertTableEntry(guid=CERT_TABLE_GUID_ARK, data=b"ark" * 300),
    ]
)
MANIFEST = b"\x00\x01" + b"EK TPMT_PUBLIC" * 20


def build_report(report_data: bytes, vmpl: int) -> bytes:
    tcb = TcbVersion(bootloader=4, tee=0, snp=22, microcode=213)
    return SnpReport(
        version=3,
        guest_svn=0,
        policy=GuestPolicy(smt=True),
        family_id=bytes(16),
        image_id=bytes(16),
        vmpl=vmpl,
        signature_algo=SignatureAlgorithm.ECDSA_P384_SHA384,
        current_tcb=tcb,
        platform_info=PlatformInfo(smt_en=True),
        signer_info=SignerInfo(),
        report_data=report_data,
        measurement=b"\x5a" * 48,
        host_data=bytes(32),
        id_key_digest=bytes(48),
        author_key_digest=bytes(48),
        report_id=b"\x01" * 32,
        report_id_ma=b"\xff" * 32,
        reported_tcb=tcb,
        cpuid_fam_id=0x19,
        cpuid_mod_id=0x01,
        cpuid_step=0x01,
        chip_id=b"\xc4" * 64,
        committed_tcb=tcb,
        current_build=4,
        current_minor=52,
        current_major=1,
        committed_build=4,
        committed_minor=52,
        committed_major=1,
        launch_tcb=tcb,
        launch_mit_vector=None,
        current_mit_vector=None,
        signature_r=12345,
        signature_s=67890,
        product=ProductLine.MILAN,
    ).to_bytes()


# --- a simulated configfs-tsm kernel ------------------------------------------------------------

_WRITABLE = {"inblob", "privlevel", "service_provider", "service_guid", "service_manifest_version"}
_READABLE = {"outblob", "auxblob", "provider", "generation", "privlevel_floor", "manifestblob"}


class FakeTsmKernel:
    """configfs-tsm as the kernel behaves, over real files in a temporary directory."""

    def __init__(
        self,
        base: Path,
        *,
        provider: str = "sev_guest",
        certs: bytes = CERTS,
        manifest: bytes = MANIFEST,
        privlevel_floor: int = 0,
        svsm_capable: bool = True,
        has_auxblob: bool = True,
        interfering_reads: int = 0,
        wrong_report_data: bool = False,
        short_outblob: bool = False,
        generation_text: bytes | None = None,
    ) -> None:
        self.root = base / "tsm" / "report"
        self.root.mkdir(parents=True)
        self.provider = provider
        self.certs = certs
        self.manifest = manifest
        self.privlevel_floor = privlevel_floor
        self.svsm_capable = svsm_capable
        self.has_auxblob = has_auxblob
        self.interfering_reads = interfering_reads
        self.wrong_report_data = wrong_report_data
        self.short_outblob = short_outblob
        self.generation_text = generation_text
        self.writes: list[tuple[str, bytes]] = []
        self.created: list[Path] = []
        self.removed: list[Path] = []
        self.fail_mkdir: OSError | None = None
        self.fail_write: dict[str, OSError] = {}

    # TsmFilesystem ---------------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def mkdir(self, path: str) -> None:
        if self.fail_mkdir is not None:
            raise self.fail_mkdir
        entry = Path(path)
        assert entry.parent == self.root
        entry.mkdir()
        names = set(_WRITABLE | _READABLE)
        if not self.svsm_capable:
            names -= {"service_provider", "service_guid", "service_manifest_version"}
            names.discard("manifestblob")
        if not self.has_auxblob:
            names.discard("auxblob")
        for name in names:
            (entry / name).write_bytes(b"")
        (entry / "provider").write_bytes(self.provider.encode() + b"\n")
        (entry / "generation").write_bytes(b"0\n")
        (entry / "privlevel_floor").write_bytes(f"{self.privlevel_floor}\n".encode())
        self.created.append(entry)

    def rmdir(self, path: str) -> None:
        shutil.rmtree(path)  # configfs drops the attributes with the directory
        self.removed.append(Path(path))

    def write(self, path: str, data: bytes) -> None:
        attr = Path(path)
        if attr.name not in _WRITABLE or not attr.exists():
            raise PermissionError(errno.EACCES, "not writable", path)
        if failure := self.fail_write.get(attr.name):
            raise failure
        if attr.name == "inblob" and len(data) > 64:
            raise OSError(errno.EINVAL, "inblob too large", path)
        if attr.name == "privlevel" and not self.privlevel_floor <= int(data) <= 3:
            raise OSError(errno.EINVAL, "bad privlevel", path)
        attr.write_bytes(data)
        self.writes.append((attr.name, data))
        self._bump(attr.parent)

    def read(self, path: str) -> bytes:
        attr = Path(path)
        if not attr.exists():
            raise FileNotFoundError(errno.ENOENT, "no such attribute", path)
        if attr.name in _WRITABLE:
            raise PermissionError(errno.EACCES, "write-only attribute", path)
        entry = attr.parent
        if attr.name == "outblob":
            if self.interfering_reads:
                # Another process writes the same request while we read it.
                self.interfering_reads -= 1
                (entry / "inblob").write_bytes(b"\xee" * 64)
                self._bump(entry)
            return self._make_report(entry)
        if attr.name == "auxblob":
            return self.certs
        if attr.name == "manifestblob":
            return self.manifest
        if attr.name == "generation" and self.generation_text is not None:
            return self.generation_text
        return attr.read_bytes()

    # kernel internals ------------------------------------------------------------------------

    def _bump(self, entry: Path) -> None:
        generation = int((entry / "generation").read_bytes())
        (entry / "generation").write_bytes(f"{generation + 1}\n".encode())

    def _make_report(self, entry: Path) -> bytes:
        inblob = (entry / "inblob").read_bytes().ljust(64, b"\x00")
        vmpl = int((entry / "privlevel").read_bytes() or b"0")
        if (entry / "service_provider").exists() and (entry / "service_provider").read_bytes():
            report_data = hashlib.sha512(inblob + self.manifest).digest()
            vmpl = 0
        else:
            report_data = inblob
        if self.wrong_report_data:
            report_data = bytes(64)
        report = build_report(report_data, vmpl)
        return report[:100] if self.short_outblob else report


def attester_for(kernel: FakeTsmKernel, tmp_path: Path, **kwargs: object) -> SnpGuestAttester:
    return SnpGuestAttester(
        tsm_root=str(kernel.root),
        filesystem=kernel,
        device=str(tmp_path / "no-sev-guest"),
        **kwargs,  # type: ignore[arg-type]
    )


# --- configfs-tsm -------------------------------------------------------------------------------


def test_configfs_report(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    result = attester_for(kernel, tmp_path).get_report(NONCE)
    assert result.interface is GuestInterface.CONFIGFS_TSM
    assert result.provider == "sev_guest"
    assert result.manifest is None
    report = parse_snp_report(result.report)
    assert report.report_data == NONCE
    assert report.vmpl == 0
    assert result.certs is not None
    assert parse_cert_table(result.certs).get(CERT_TABLE_GUID_VCEK) == b"vcek" * 100
    assert [name for name, _ in kernel.writes] == ["privlevel", "inblob"]
    assert kernel.writes == [("privlevel", b"0"), ("inblob", NONCE)]
    # The request directory is gone afterwards, and nothing else was left.
    assert kernel.removed == kernel.created
    assert len(kernel.created) == 1
    assert list(kernel.root.iterdir()) == []


@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_configfs_vmpl(tmp_path: Path, vmpl: int) -> None:
    kernel = FakeTsmKernel(tmp_path)
    result = attester_for(kernel, tmp_path).get_report(NONCE, vmpl=vmpl)
    assert parse_snp_report(result.report).vmpl == vmpl
    assert ("privlevel", str(vmpl).encode()) in kernel.writes


def test_configfs_without_certificates(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, certs=b"")
    assert attester_for(kernel, tmp_path).get_report(NONCE).certs is None


def test_configfs_kernel_without_auxblob(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, has_auxblob=False)
    result = attester_for(kernel, tmp_path).get_report(NONCE)
    assert result.certs is None
    assert parse_snp_report(result.report).report_data == NONCE


def test_configfs_concurrent_writer_retried(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, interfering_reads=1)
    result = attester_for(kernel, tmp_path).get_report(NONCE)
    assert parse_snp_report(result.report).report_data == NONCE
    assert [name for name, _ in kernel.writes] == ["privlevel", "inblob"] * 2


def test_configfs_concurrent_writer_that_never_stops(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, interfering_reads=10)
    with pytest.raises(AttesterError, match="another writer"):
        attester_for(kernel, tmp_path, max_attempts=3).get_report(NONCE)
    assert [name for name, _ in kernel.writes] == ["privlevel", "inblob"] * 3
    assert kernel.removed == kernel.created


def test_configfs_wrong_provider(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, provider="tdx_guest")
    with pytest.raises(AttesterUnavailable, match="tdx_guest"):
        attester_for(kernel, tmp_path).get_report(NONCE)
    assert kernel.writes == []
    assert kernel.removed == kernel.created


def test_configfs_privlevel_floor(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, privlevel_floor=2)
    attester = attester_for(kernel, tmp_path)
    with pytest.raises(AttesterError, match="floor 2"):
        attester.get_report(NONCE, vmpl=1)
    assert parse_snp_report(attester.get_report(NONCE, vmpl=2).report).vmpl == 2


def test_configfs_kernel_refuses_write(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    kernel.fail_write["privlevel"] = OSError(errno.EINVAL, "Invalid argument")
    with pytest.raises(AttesterError, match="privlevel") as info:
        attester_for(kernel, tmp_path).get_report(NONCE)
    assert isinstance(info.value.__cause__, OSError)
    assert kernel.removed == kernel.created


def test_configfs_mkdir_refused(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    kernel.fail_mkdir = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(AttesterError, match="cannot create"):
        attester_for(kernel, tmp_path).get_report(NONCE)


def test_configfs_report_for_other_data_refused(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, wrong_report_data=True)
    with pytest.raises(AttesterError, match="REPORT_DATA"):
        attester_for(kernel, tmp_path).get_report(NONCE)


def test_configfs_short_report_refused(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, short_outblob=True)
    with pytest.raises(AttesterError, match="100 bytes"):
        attester_for(kernel, tmp_path).get_report(NONCE)


def test_configfs_garbled_generation(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, generation_text=b"many\n")
    with pytest.raises(AttesterError, match="not a decimal"):
        attester_for(kernel, tmp_path).get_report(NONCE)


def test_configfs_unreadable_outblob(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)

    def broken_read(path: str) -> bytes:
        if path.endswith("outblob"):
            raise OSError(errno.EIO, "Input/output error")
        return FakeTsmKernel.read(kernel, path)

    kernel.read = broken_read  # type: ignore[method-assign]
    with pytest.raises(AttesterError, match="outblob"):
        attester_for(kernel, tmp_path).get_report(NONCE)


def test_configfs_unreadable_auxblob(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    real_read = kernel.read

    def broken_auxblob(path: str) -> bytes:
        if path.endswith("auxblob"):
            raise OSError(errno.EIO, "Input/output error")
        return real_read(path)

    kernel.read = broken_auxblob  # type: ignore[method-assign]
    with pytest.raises(AttesterError, match="auxblob"):
        attester_for(kernel, tmp_path).get_report(NONCE)


def test_configfs_without_privlevel_floor(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    real_mkdir = kernel.mkdir

    def mkdir_without_floor(path: str) -> None:
        real_mkdir(path)
        (Path(path) / "privlevel_floor").unlink()

    kernel.mkdir = mkdir_without_floor  # type: ignore[method-assign]
    assert (
        parse_snp_report(attester_for(kernel, tmp_path).get_report(NONCE, vmpl=3).report).vmpl == 3
    )


def test_configfs_svsm_vtpm_service(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    request = SvsmServiceRequest(service_guid=SVSM_VTPM_SERVICE_GUID)
    result = attester_for(kernel, tmp_path).get_report(NONCE, vmpl=1, svsm=request)
    assert result.manifest == MANIFEST
    report = parse_snp_report(result.report)
    assert report.vmpl == 0
    assert report.report_data == hashlib.sha512(NONCE + MANIFEST).digest()
    assert kernel.writes[:3] == [
        ("service_provider", b"svsm"),
        ("service_guid", b"c476f1eb-0123-45a5-9641-b4e7dde5bfe3"),
        ("service_manifest_version", b"0"),
    ]
    assert kernel.writes[3:] == [("privlevel", b"1"), ("inblob", NONCE)]


def test_configfs_svsm_all_services(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    attester_for(kernel, tmp_path).get_report(NONCE, svsm=SvsmServiceRequest())
    assert ("service_guid", b"00000000-0000-0000-0000-000000000000") in kernel.writes


def test_configfs_svsm_manifest_mismatch_refused(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path)
    real_read = kernel.read

    def read_other_manifest(path: str) -> bytes:
        return b"another manifest" if path.endswith("manifestblob") else real_read(path)

    kernel.read = read_other_manifest  # type: ignore[method-assign]
    with pytest.raises(AttesterError, match="REPORT_DATA"):
        attester_for(kernel, tmp_path).get_report(NONCE, svsm=SvsmServiceRequest())


def test_configfs_svsm_on_old_kernel(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(tmp_path, svsm_capable=False)
    with pytest.raises(AttesterUnavailable, match="service_provider"):
        attester_for(kernel, tmp_path).get_report(NONCE, svsm=SvsmServiceRequest())


def test_svsm_needs_configfs(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    attester = SnpGuestAttester(tsm_root=str(tmp_path / "absent"), device=str(device))
    with pytest.raises(AttesterUnavailable, match="configfs-tsm"):
        attester.get_report(NONCE, svsm=SvsmServiceRequest())


def test_neither_interface(tmp_path: Path) -> None:
    root = tmp_path / "tsm-report"
    device = tmp_path / "sev-guest"
    attester = SnpGuestAttester(tsm_root=str(root), device=str(device))
    with pytest.raises(AttesterUnavailable) as info:
        attester.get_report(NONCE)
    assert str(root) in str(info.value)
    assert str(device) in str(info.value)


@pytest.mark.parametrize(
    ("data", "vmpl"), [(bytes(63), 0), (bytes(65), 0), (NONCE, 4), (NONCE, -1)]
)
def test_bad_arguments(tmp_path: Path, data: bytes, vmpl: int) -> None:
    kernel = FakeTsmKernel(tmp_path)
    with pytest.raises(ValueError, match=r"report_data|vmpl"):
        attester_for(kernel, tmp_path).get_report(data, vmpl=vmpl)
    assert kernel.created == []


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        SnpGuestAttester(max_attempts=0)
    with pytest.raises(TypeError):
        SvsmServiceRequest(service_guid=str(SVSM_VTPM_SERVICE_GUID))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="u32"):
        SvsmServiceRequest(manifest_version=-1)


def test_linux_filesystem_on_real_files(tmp_path: Path) -> None:
    fs = LinuxTsmFilesystem()
    entry = str(tmp_path / "request")
    assert not fs.exists(entry)
    fs.mkdir(entry)
    assert fs.exists(entry)
    attr = str(tmp_path / "request" / "inblob")
    Path(attr).write_bytes(b"")
    fs.write(attr, NONCE)
    assert fs.read(attr) == NONCE
    big = str(tmp_path / "request" / "outblob")
    Path(big).write_bytes(b"x" * 200_000)
    assert fs.read(big) == b"x" * 200_000
    Path(attr).unlink()
    Path(big).unlink()
    fs.rmdir(entry)
    assert not fs.exists(entry)


# --- /dev/sev-guest -----------------------------------------------------------------------------


class FakeSevGuest:
    """The SNP_GET_EXT_REPORT ioctl as the kernel implements it."""

    def __init__(
        self,
        *,
        certs: bytes = CERTS,
        ask_for: int | None = None,
        exitinfo2: int = 0,
        status: int = 0,
        report_size: int = 0x4A0,
    ) -> None:
        self.certs = certs
        self.ask_for = ask_for
        self.exitinfo2 = exitinfo2
        self.status = status
        self.report_size = report_size
        self.offered: list[int] = []

    def __call__(self, fd: int, request: int, arg: GuestRequestIoctl) -> int:
        assert request == SNP_GET_EXT_REPORT
        assert ctypes.sizeof(arg) == 32
        assert arg.msg_version == 1
        raw = ctypes.string_at(arg.req_data, 112)
        user_data = raw[:64]
        (vmpl,) = struct.unpack_from("<I", raw, 64)
        assert raw[68:96] == bytes(28)
        certs_address, certs_len = struct.unpack_from("<QI", raw, 96)
        self.offered.append(certs_len)
        if self.exitinfo2:
            arg.exitinfo2 = self.exitinfo2
            raise OSError(errno.EIO, "Input/output error")
        needed = self.ask_for if self.ask_for is not None else len(self.certs)
        if needed > certs_len:
            ctypes.memmove(arg.req_data + 104, struct.pack("<I", needed), 4)
            arg.exitinfo2 = 1 << 32
            raise OSError(errno.EIO, "Input/output error")
        ctypes.memmove(certs_address, self.certs, len(self.certs))
        response = struct.pack("<II24x", self.status, self.report_size)
        response += build_report(user_data, vmpl)
        ctypes.memmove(arg.resp_data, response, len(response))
        return 0


def device_attester(tmp_path: Path, fake: FakeSevGuest, **kwargs: object) -> SnpGuestAttester:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    return SnpGuestAttester(
        tsm_root=str(tmp_path / "no-configfs"),
        device=str(device),
        ioctl=fake,
        **kwargs,  # type: ignore[arg-type]
    )


def test_device_report(tmp_path: Path) -> None:
    fake = FakeSevGuest()
    result = device_attester(tmp_path, fake).get_report(NONCE, vmpl=2)
    assert result.interface is GuestInterface.SEV_GUEST_DEVICE
    assert result.provider == "sev_guest"
    report = parse_snp_report(result.report)
    assert report.report_data == NONCE
    assert report.vmpl == 2
    assert result.certs is not None
    assert len(result.certs) == 0x4000
    assert parse_cert_table(result.certs).get(CERT_TABLE_GUID_ARK) == b"ark" * 300
    assert fake.offered == [0x4000]


def test_device_certificate_buffer_grows(tmp_path: Path) -> None:
    big = build_cert_table([CertTableEntry(guid=CERT_TABLE_GUID_VCEK, data=b"v" * 0x5800)])
    fake = FakeSevGuest(certs=big)
    result = device_attester(tmp_path, fake).get_report(NONCE)
    assert fake.offered == [0x4000, 0x6000]  # rounded up to whole pages
    assert result.certs is not None
    assert parse_cert_table(result.certs).get(CERT_TABLE_GUID_VCEK) == b"v" * 0x5800


@pytest.mark.parametrize("ask_for", [2 << 20, 0x1000])
def test_device_absurd_certificate_request(tmp_path: Path, ask_for: int) -> None:
    fake = FakeSevGuest(ask_for=ask_for)
    if ask_for <= 0x4000:
        # The host claims INVALID_LEN while asking for less than was offered.
        fake.exitinfo2 = 1 << 32
    with pytest.raises(AttesterError, match="certificate buffer"):
        device_attester(tmp_path, fake).get_report(NONCE)


def test_device_host_keeps_asking(tmp_path: Path) -> None:
    class Greedy(FakeSevGuest):
        def __call__(self, fd: int, request: int, arg: GuestRequestIoctl) -> int:
            self.ask_for = 0x4000 + 0x1000 * (len(self.offered) + 1)
            return super().__call__(fd, request, arg)

    fake = Greedy()
    with pytest.raises(AttesterError, match="kept asking"):
        device_attester(tmp_path, fake, max_attempts=2).get_report(NONCE)
    assert len(fake.offered) == 2


def test_device_without_certificates(tmp_path: Path) -> None:
    fake = FakeSevGuest(certs=b"")
    assert device_attester(tmp_path, fake).get_report(NONCE).certs is None


@pytest.mark.parametrize(
    ("exitinfo2", "words"),
    [(0x16, "firmware error 0x16"), (2 << 32, "hypervisor error 0x2"), (0xFF, "0xff")],
)
def test_device_firmware_or_host_error(tmp_path: Path, exitinfo2: int, words: str) -> None:
    fake = FakeSevGuest(exitinfo2=exitinfo2)
    with pytest.raises(AttesterError, match=words) as info:
        device_attester(tmp_path, fake).get_report(NONCE)
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize(
    ("status", "size", "words"),
    [(0x16, 0x4A0, "invalid parameters"), (0x5, 0x4A0, "status 0x5"), (0, 0x400, "1024-byte")],
)
def test_device_bad_response(tmp_path: Path, status: int, size: int, words: str) -> None:
    fake = FakeSevGuest(status=status, report_size=size)
    with pytest.raises(AttesterError, match=words):
        device_attester(tmp_path, fake).get_report(NONCE)


def test_device_real_ioctl_on_a_plain_file(tmp_path: Path) -> None:
    # The default seam is fcntl.ioctl; a regular file answers ENOTTY.
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    attester = SnpGuestAttester(tsm_root=str(tmp_path / "no-configfs"), device=str(device))
    with pytest.raises(AttesterError, match="SNP_GET_EXT_REPORT failed") as info:
        attester.get_report(NONCE)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOTTY


def test_device_vanishes(tmp_path: Path) -> None:
    attester = SnpGuestAttester(tsm_root=str(tmp_path / "none"), device=str(tmp_path / "gone"))
    with pytest.raises(AttesterUnavailable, match="does not exist"):
        attester._via_device(NONCE, 0)


def test_device_unopenable(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.mkdir()  # a directory cannot be opened read-write
    attester = SnpGuestAttester(tsm_root=str(tmp_path / "none"), device=str(device))
    with pytest.raises(AttesterError, match="cannot open"):
        attester.get_report(NONCE)


def test_request_layout() -> None:
    assert ctypes.sizeof(GuestRequestIoctl) == 32
    assert GuestRequestIoctl.exitinfo2.offset == 24
    assert SNP_GET_EXT_REPORT == 0xC0205302


# --- value types --------------------------------------------------------------------------------


def test_guest_report_value_type() -> None:
    a = GuestReport(report=b"r" * 4, certs=None, manifest=None, provider="sev_guest")
    b = GuestReport(report=b"r" * 4, certs=None, manifest=None, provider="sev_guest")
    c = GuestReport(report=b"r" * 4, certs=b"c", manifest=None, provider="sev_guest")
    assert a == b
    assert a != c
    assert a != object()
    assert hash(a) == hash(b)
    assert repr(a) == (
        "GuestReport(report=<4 bytes>, certs=none, manifest=none, "
        "provider='sev_guest', interface=configfs-tsm)"
    )
    assert "certs=1 bytes" in repr(c)


def test_svsm_request_value_type() -> None:
    a = SvsmServiceRequest(service_guid=SVSM_VTPM_SERVICE_GUID)
    b = SvsmServiceRequest(service_guid=uuid.UUID(str(SVSM_VTPM_SERVICE_GUID)))
    assert a == b
    assert a != SvsmServiceRequest()
    assert a != object()
    assert hash(a) == hash(b)
    assert "c476f1eb" in repr(a)


def test_exports_and_final_classes() -> None:
    import inspect

    import ratls.attesters
    from ratls import _snp_certtable, _snp_report
    from ratls.attesters import _snp_guest

    # ratls.attesters re-exports the SNP guest interface (and other attesters, e.g. Azure's).
    assert set(_snp_guest.__all__) <= set(ratls.attesters.__all__)
    for module in (_snp_report, _snp_certtable, _snp_guest):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and not issubclass(obj, enum.Enum):
                is_protocol = getattr(obj, "_is_protocol", False)
                assert is_protocol or getattr(obj, "__final__", False), name
