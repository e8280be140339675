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
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import trio

from ratls._errors import AttesterError, AttesterUnavailable
from ratls._tpm_device import (
    COMMAND_TIMEOUT,
    SwtpmSocketTransport,
    Tpm,
)
from ratls._vtpm_keys import VtpmIdentity as VtpmIdentity
from ratls._vtpm_keys import activate_credential as activate_credential
from ratls._vtpm_keys import manufacture_vtpm as manufacture_vtpm
from ratls._vtpm_keys import quote as quote
from ratls._vtpm_keys import store_report_in_nv as store_report_in_nv

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
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
