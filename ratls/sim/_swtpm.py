"""An ephemeral swtpm process as the simulated SVSM vTPM.

The SVSM vTPM is manufactured afresh at every boot of the confidential VM: new seeds,
so a new endorsement key, and no EK certificate - the EK is trusted because a VMPL0 SNP
report binds it.  :class:`Swtpm` reproduces that with a real TPM 2.0 implementation
(swtpm on libtpms): it creates a throw-away state directory, so libtpms manufactures a
TPM with new random seeds, runs ``swtpm socket`` on loopback, powers the TPM on through
the control channel and issues ``TPM2_Startup(CLEAR)``, and on exit shuts it down and
deletes every trace.  :func:`manufacture_vtpm` then performs the simulated SVSM boot
steps: EK from the TCG default template persisted at 0x81010001, and an AK created as a
child of the EK (authorised by the EK policy, PolicySecret(TPM_RH_ENDORSEMENT)).

Ports: the control channel listens on a socket this module binds itself (port 0, so the
kernel picks a free one) and hands to swtpm with ``--ctrl type=tcp,fd=N``, which swtpm
0.7 accepts as a listening socket; there is no race for it.  swtpm 0.7's ``--server
...,fd=N`` instead expects an already *connected* socket, so the command port is chosen
by binding port 0, closing, and passing the number; if another process grabs it in
between, swtpm fails to bind and the start is retried with a new port.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import trio

from ratls._errors import AttesterError, AttesterUnavailable
from ratls._tpm_device import (
    COMMAND_TIMEOUT,
    EK_PERSISTENT_HANDLE,
    NV_INDEX_RSA2048_EK_CERT,
    Attestation,
    SigScheme,
    SwtpmSocketTransport,
    Tpm,
    TpmaNv,
    TpmCommandError,
    TpmRh,
)
from ratls._tpm_structs import (
    AK_TEMPLATE_ECC_P256,
    AK_TEMPLATE_RSA2048,
    EK_TEMPLATE_RSA2048,
    TpmAlgId,
    TpmtPublic,
    parse_tpm2b_public,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping
    from types import TracebackType

__all__ = [
    "SHUTDOWN_TIMEOUT",
    "STARTUP_TIMEOUT",
    "Swtpm",
    "VtpmIdentity",
    "activate_credential",
    "manufacture_vtpm",
    "open_swtpm",
    "quote",
    "store_report_in_nv",
]

#: Seconds swtpm may take to answer its first control command after being started.
#: It starts in milliseconds; the margin is for a loaded two-core machine.
STARTUP_TIMEOUT: Final = 20.0

#: Seconds to wait for swtpm to exit at each shutdown stage (control-channel shutdown,
#: then SIGTERM, then SIGKILL).  A healthy swtpm exits at once.
SHUTDOWN_TIMEOUT: Final = 5.0

#: How often a start is retried when the command port was taken between choosing it and
#: swtpm binding it.
_START_ATTEMPTS: Final = 3

_LOOPBACK: Final = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@final
class Swtpm:
    """A throw-away swtpm vTPM; ``with Swtpm() as tpm:`` gives a started :class:`Tpm`.

    On entry a fresh state directory is created (new seeds: a new EK each time), swtpm
    is started on loopback, powered on (``CMD_INIT``) and sent ``TPM2_Startup(CLEAR)``.
    On exit - also when the block raises - the TPM is shut down through the control
    channel, the process is terminated and killed if it lingers, and the state directory
    is deleted.  One instance can be entered once.

    Args:
        command_timeout: seconds each TPM command may take before the transport fails.
        swtpm: the swtpm executable (looked up on ``PATH``).

    Raises:
        AttesterUnavailable: (on entry) if swtpm is not installed.
        AttesterError: (on entry) if swtpm does not start.
    """

    def __init__(self, *, command_timeout: float = COMMAND_TIMEOUT, swtpm: str = "swtpm") -> None:
        self._command_timeout = command_timeout
        self._swtpm = swtpm
        self._process: subprocess.Popen[bytes] | None = None
        self._state_dir: Path | None = None
        self._transport: SwtpmSocketTransport | None = None
        self._tpm: Tpm | None = None
        self._entered = False

    def __repr__(self) -> str:
        pid = self._process.pid if self._process is not None else None
        return f"Swtpm(pid={pid}, state_dir={str(self._state_dir)!r})"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The swtpm process (``None`` before entry)."""
        return self._process

    @property
    def state_dir(self) -> Path | None:
        """The temporary state directory (``None`` before entry; deleted after exit)."""
        return self._state_dir

    @property
    def transport(self) -> SwtpmSocketTransport:
        """The transport to the running swtpm (command and control channels).

        Raises:
            AttesterError: if swtpm is not running.
        """
        if self._transport is None:
            raise AttesterError("swtpm is not running")
        return self._transport

    @property
    def tpm(self) -> Tpm:
        """The started TPM.

        Raises:
            AttesterError: if swtpm is not running.
        """
        if self._tpm is None:
            raise AttesterError("swtpm is not running")
        return self._tpm

    def __enter__(self) -> Tpm:
        if self._entered:
            raise RuntimeError("a Swtpm instance can be entered only once")
        self._entered = True
        executable = shutil.which(self._swtpm)
        if executable is None:
            raise AttesterUnavailable(
                f"{self._swtpm!r} not found on PATH: install swtpm to run the simulated vTPM"
            )
        self._state_dir = Path(tempfile.mkdtemp(prefix="ratls-swtpm-"))
        try:
            self._start(executable)
            tpm = self.tpm
            self.transport.ctrl_init()
            tpm.startup(clear=True)
        except BaseException:
            self._stop()
            raise
        return tpm

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self, executable: str) -> None:
        assert self._state_dir is not None  # noqa: S101 - set by the caller
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            ctrl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                ctrl.bind((_LOOPBACK, 0))
                ctrl.listen(1)
                ctrl_port: int = ctrl.getsockname()[1]
                port = _free_port()
                log = self._state_dir / "swtpm.log"
                argv = [
                    executable,
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={self._state_dir}",
                    "--server",
                    f"type=tcp,port={port},bindaddr={_LOOPBACK}",
                    "--ctrl",
                    f"type=tcp,fd={ctrl.fileno()}",
                    "--log",
                    f"file={log}",
                ]
                with open(self._state_dir / "swtpm.stderr", "wb") as stderr:
                    try:
                        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                            argv,
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=stderr,
                            pass_fds=(ctrl.fileno(),),
                        )
                    except OSError as exc:
                        raise AttesterError(f"cannot run {executable}: {exc}") from exc
            finally:
                ctrl.close()
            self._transport = SwtpmSocketTransport(
                _LOOPBACK,
                port,
                ctrl_port=ctrl_port,
                timeout=self._command_timeout,
            )
            if self._wait_ready():
                self._tpm = Tpm(self._transport)
                return
            last_error = self._diagnostics()
            self._stop_process()
            self._transport.close()
            self._transport = None
        raise AttesterError(f"swtpm did not start: {last_error or 'no diagnostics'}")

    def _wait_ready(self) -> bool:
        """True once swtpm answers on the control channel and accepts on its command port."""
        assert self._transport is not None  # noqa: S101 - set by _start
        assert self._process is not None  # noqa: S101 - set by _start
        probe = SwtpmSocketTransport(
            self._transport.host,
            self._transport.port,
            ctrl_port=self._transport.ctrl_port,
            timeout=STARTUP_TIMEOUT,
            connect_timeout=STARTUP_TIMEOUT,
        )
        try:
            # The control socket was listening before swtpm started, so this connects
            # at once and the answer arrives when swtpm's main loop runs; by then the
            # command port is bound, since swtpm binds it before entering that loop.
            probe.ctrl_get_capability()
            with socket.create_connection(
                (self._transport.host, self._transport.port), timeout=STARTUP_TIMEOUT
            ):
                pass
        except AttesterError:
            return False
        except OSError:
            return False
        finally:
            probe.close()
        return self._process.poll() is None

    def _diagnostics(self) -> str:
        if self._state_dir is None:
            return ""
        texts = []
        for name in ("swtpm.stderr", "swtpm.log"):
            with contextlib.suppress(OSError):
                text = (self._state_dir / name).read_text(errors="replace").strip()
                if text:
                    texts.append(text)
        return " | ".join(texts)[-2000:]

    def _stop_process(self) -> None:
        process = self._process
        if process is None:
            return
        for stage in ("wait", "terminate", "kill"):
            if stage == "terminate":
                process.terminate()
            elif stage == "kill":
                process.kill()
            try:
                process.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
            return

    def _stop(self) -> None:
        """Shut the TPM down gracefully if possible, then make sure the process is gone."""
        transport = self._transport
        process = self._process
        try:
            if transport is not None:
                # swtpm serves one control connection at a time: close ours first.
                transport.close()
            if transport is not None and process is not None and process.poll() is None:
                graceful = SwtpmSocketTransport(
                    transport.host,
                    transport.port,
                    ctrl_port=transport.ctrl_port,
                    timeout=SHUTDOWN_TIMEOUT,
                    connect_timeout=SHUTDOWN_TIMEOUT,
                )
                with contextlib.suppress(AttesterError):
                    graceful.ctrl_shutdown()
                graceful.close()
            self._stop_process()
        finally:
            self._tpm = None
            self._transport = None
            if self._state_dir is not None:
                shutil.rmtree(self._state_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def open_swtpm(*, command_timeout: float = COMMAND_TIMEOUT) -> AsyncIterator[Tpm]:
    """Trio variant of :class:`Swtpm`: start and stop swtpm in a worker thread.

    The :class:`Tpm` it yields is blocking; call its methods through
    ``trio.to_thread.run_sync``.  Start-up and shutdown are not cancellable while they
    run (each is bounded by :data:`STARTUP_TIMEOUT` / :data:`SHUTDOWN_TIMEOUT`), and
    shutdown runs even when the body was cancelled.

    Args:
        command_timeout: seconds each TPM command may take.

    Yields:
        The started TPM.

    Raises:
        AttesterUnavailable: if swtpm is not installed.
        AttesterError: if swtpm does not start.
    """
    sw = Swtpm(command_timeout=command_timeout)
    tpm = await trio.to_thread.run_sync(sw.__enter__)
    try:
        yield tpm
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(sw.__exit__, None, None, None)


# --------------------------------------------------------------------------------------
# The simulated SVSM vTPM boot
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VtpmIdentity:
    """The keys a freshly manufactured vTPM holds after :func:`manufacture_vtpm`.

    Attributes:
        ek_handle: persistent handle of the EK (0x81010001).
        ek_public: the EK's TPM2B_PUBLIC as TPM2_ReadPublic returns it (what the
            SVSM-vTPM prototype hashes into REPORT_DATA).
        ek_tpmt_public: the EK's TPMT_PUBLIC, without the size prefix (the SVSM
            specification's vTPM service manifest).
        ek_name: the EK's Name.
        ak_handle: transient handle of the loaded AK.
        ak_public: the AK's TPM2B_PUBLIC.
        ak_private: the AK's TPM2B_PRIVATE (wrapped by the EK), to reload it.
        ak_name: the AK's Name (what MakeCredential binds the credential to).
    """

    ek_handle: int
    ek_public: bytes
    ek_tpmt_public: bytes
    ek_name: bytes
    ak_handle: int
    ak_public: bytes
    ak_private: bytes
    ak_name: bytes

    def ek(self) -> TpmtPublic:
        """The EK public area, parsed.

        Raises:
            EvidenceFormatError: if the stored bytes are malformed.
        """
        return parse_tpm2b_public(self.ek_public)

    def ak(self) -> TpmtPublic:
        """The AK public area, parsed.

        Raises:
            EvidenceFormatError: if the stored bytes are malformed.
        """
        return parse_tpm2b_public(self.ak_public)


def manufacture_vtpm(
    tpm: Tpm, *, ak_type: str = "rsa", endorsement_auth: bytes = b""
) -> VtpmIdentity:
    """Simulate the SVSM vTPM boot: create and persist the EK, create and load the AK.

    The EK comes from the TCG default RSA-2048 template (L-1) in the endorsement
    hierarchy and is made persistent at 0x81010001 (replacing whatever was there).  The
    AK is a restricted signing key created as a child of the EK, with the EK authorised
    by a policy session running PolicySecret(TPM_RH_ENDORSEMENT) - the EK's authPolicy.

    Args:
        tpm: a started TPM (for example from :class:`Swtpm`).
        ak_type: ``"rsa"`` (RSA-2048, RSASSA-SHA256) or ``"ecc"`` (P-256, ECDSA-SHA256).
        endorsement_auth: the endorsement hierarchy's auth value.

    Returns:
        The EK and AK public areas, names and handles.

    Raises:
        ValueError: for an unknown ``ak_type``.
        TpmCommandError: if the TPM refuses a step.
        AttesterError: on transport errors.
    """
    templates = {"rsa": AK_TEMPLATE_RSA2048, "ecc": AK_TEMPLATE_ECC_P256}
    if ak_type not in templates:
        raise ValueError(f"ak_type must be 'rsa' or 'ecc', not {ak_type!r}")
    primary = tpm.create_primary(
        TpmRh.ENDORSEMENT, EK_TEMPLATE_RSA2048, hierarchy_auth=endorsement_auth
    )
    try:
        if EK_PERSISTENT_HANDLE in tpm.get_handles(EK_PERSISTENT_HANDLE, 1):
            tpm.evict_control(EK_PERSISTENT_HANDLE, EK_PERSISTENT_HANDLE)
        tpm.evict_control(primary.handle, EK_PERSISTENT_HANDLE)
    finally:
        tpm.flush_context(primary.handle)
    ek = tpm.read_public(EK_PERSISTENT_HANDLE)
    with tpm.endorsement_policy_session(endorsement_auth=endorsement_auth) as session:
        created = tpm.create(EK_PERSISTENT_HANDLE, templates[ak_type], parent_session=session)
    with tpm.endorsement_policy_session(endorsement_auth=endorsement_auth) as session:
        loaded = tpm.load(
            EK_PERSISTENT_HANDLE, created.private, created.public, parent_session=session
        )
    return VtpmIdentity(
        ek_handle=EK_PERSISTENT_HANDLE,
        ek_public=ek.public,
        ek_tpmt_public=ek.public[2:],
        ek_name=ek.name,
        ak_handle=loaded.handle,
        ak_public=created.public,
        ak_private=created.private,
        ak_name=loaded.name,
    )


def quote(
    tpm: Tpm,
    identity: VtpmIdentity,
    qualifying_data: bytes,
    selection: Mapping[TpmAlgId, Iterable[int]],
    scheme: SigScheme | None = None,
) -> Attestation:
    """Quote PCRs with the vTPM's AK.

    Args:
        tpm: the TPM holding ``identity``.
        identity: from :func:`manufacture_vtpm`.
        qualifying_data: extraData of the quote (the verifier's binder).
        selection: ``{hash_alg: PCR indices}``.
        scheme: signature scheme, ``None`` for the AK's own.

    Returns:
        TPM2B_ATTEST and TPMT_SIGNATURE.

    Raises:
        TpmCommandError: if the TPM refuses.
        AttesterError: on transport errors.
    """
    return tpm.quote(identity.ak_handle, qualifying_data, selection, scheme)


def activate_credential(
    tpm: Tpm,
    identity: VtpmIdentity,
    id_object: bytes,
    encrypted_secret: bytes,
    *,
    endorsement_auth: bytes = b"",
) -> bytes:
    """Answer a verifier's MakeCredential challenge for the vTPM's AK.

    Args:
        tpm: the TPM holding ``identity``.
        identity: from :func:`manufacture_vtpm`.
        id_object: TPM2B_ID_OBJECT, with its size prefix.
        encrypted_secret: TPM2B_ENCRYPTED_SECRET, with its size prefix.
        endorsement_auth: the endorsement hierarchy's auth value.

    Returns:
        The secret the verifier chose.

    Raises:
        ValueError: if a size prefix does not match its structure's length.
        TpmCommandError: e.g. ``TPM_RC_INTEGRITY`` for a credential made for another
            AK or EK.
        AttesterError: on transport errors.
    """
    with tpm.endorsement_policy_session(endorsement_auth=endorsement_auth) as session:
        return tpm.activate_credential(
            identity.ak_handle,
            identity.ek_handle,
            id_object,
            encrypted_secret,
            key_session=session,
        )


def store_report_in_nv(tpm: Tpm, report: bytes, index: int = NV_INDEX_RSA2048_EK_CERT) -> None:
    """Store a blob (the SVSM-vTPM prototype's VMPL0 SNP report) in an NV index.

    The index is (re)defined with the exact size of ``report``, readable with owner
    authorisation or its own empty auth value, and written in full.

    Args:
        tpm: a started TPM.
        report: the bytes to store (1184 for an SNP attestation report).
        index: the NV index, 0x01C00002 (the RSA-2048 EK certificate index) by default.

    Raises:
        TpmCommandError: if the TPM refuses.
        AttesterError: on transport errors.
    """
    try:
        tpm.nv_undefine(index)
    except TpmCommandError as exc:
        if exc.code.base != 0x08B:  # TPM_RC_HANDLE: nothing defined there yet
            raise
    tpm.nv_define(
        index,
        len(report),
        TpmaNv.OWNERWRITE | TpmaNv.AUTHWRITE | TpmaNv.OWNERREAD | TpmaNv.AUTHREAD | TpmaNv.NO_DA,
    )
    tpm.nv_write(index, report)
