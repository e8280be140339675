"""AttestedTLSStream: TLS over any trio stream, with attestation before application data.

The stdlib :mod:`ssl` module cannot export keying material (RFC 5705/8446 exporters), and
the exporter is what binds evidence to a connection.  So instead of reusing
:class:`trio.SSLStream` (which needs ``ssl.SSLContext.wrap_bio``) this module drives a
pyOpenSSL ``Connection`` over memory BIOs, following the design of trio's ``_ssl.py``,
and adds one thing: the handshake is not complete until the post-handshake attestation
exchange (:mod:`ratls._exchange`) has succeeded in both directions.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import operator
from functools import partial
from typing import TYPE_CHECKING, Final, Generic, TypeVar, final

import trio
from OpenSSL import SSL

from ._errors import (
    EvidenceVerificationError,
    LocalProtocolError,
    PolicyViolation,
    RatlsError,
    RemoteProtocolError,
)
from ._exchange import (
    EXPORTER_CONTEXT,
    EXPORTER_LABEL,
    EXPORTER_LENGTH,
    NEED_DATA,
    AttestationConfig,
    AttestationExchange,
    AttestationRefused,
    Challenge,
    Evidence,
    ExchangeEvent,
    ExchangeRole,
    ExchangeTruncated,
    NoEvidence,
    Response,
    Verdict,
    VerdictResult,
    appraise_peer_evidence_steps,
    compute_binder,
    local_evidence_event,
    local_evidence_steps,
    local_response_event,
    peer_activation_challenge,
)
from ._memory_bios import renew_idle_bios, write_whole_chunks
from ._offload import StartedSteps, drive
from ._steps import run_inline
from ._sync import LightLock
from ._tls_context import PeerCertificateErrors, certificate_from_openssl

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from cryptography import x509

    from ._steps import Steps

__all__ = ["STARTING_RECEIVE_SIZE", "AttestedTLSStream", "acquire_for_io"]

# Theory of operation
# ===================
#
# A pyOpenSSL Connection created with ``Connection(context, None)`` does no I/O of its
# own.  It owns two memory BIOs: ciphertext we received goes into the incoming BIO with
# ``bio_write()`` (and ``bio_shutdown()`` marks end of file), and ciphertext it wants to
# send is taken out of the outgoing BIO with ``bio_read()``.  Our job is to move bytes
# between those BIOs and the transport stream, and to turn the four non-blocking
# operations (``do_handshake``, ``send``, ``recv``, ``shutdown``) into trio-blocking ones.
#
# What the operations tell us:
#
# * ``WantReadError``: the operation cannot finish until more ciphertext arrives.  The
#   rule (OpenSSL's, not ours) is that we must later retry *exactly the same call with
#   the same data*.  For ``send`` that means the same bytes (pyOpenSSL sets
#   SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, so the same content in a new buffer is fine),
#   and it also means the call may already have put records in the outgoing BIO.
# * ``WantWriteError`` cannot happen: writes to a memory BIO always succeed.
# * ``ZeroReturnError``: the peer sent close_notify, a clean end of the TLS stream.
#   From ``recv`` this is end-of-file (``b""``); anywhere else the connection is over.
# * ``SysCallError``: with memory BIOs this only means the incoming BIO hit end of file
#   without close_notify (pyOpenSSL reports it as ``(-1, "Unexpected EOF")``, OpenSSL 3's
#   SSL_R_UNEXPECTED_EOF_WHILE_READING): a truncation, which we treat as a broken
#   stream, never as EOF (urllib3's WrappedSocket.recv maps it the same way).
# * any other ``SSL.Error``: the TLS layer failed (bad certificate, alert, decrypt
#   error).  The stream becomes BROKEN and the error is re-raised as
#   ``trio.BrokenResourceError`` (or, for a refused peer certificate, as the
#   CertificateChainError that says why) with the pyOpenSSL error as ``__cause__``.
#
# ``_retry(fn)`` converts one such call into a trio-blocking call.  Each round it calls
# ``fn()``, drains the outgoing BIO, and then does *exactly one* thing that can block:
# if there is ciphertext to send it sends it, *otherwise*, if the call wanted to read,
# it receives.  Doing one thing per round matters because several tasks may be in
# ``_retry`` at once (one sending, one receiving, both needing handshake or post-
# handshake traffic): whatever we learned before blocking may be stale afterwards, so we
# loop round and ask OpenSSL again.  Sending has priority because ciphertext must reach
# the wire in the order it left the BIO; the send lock is a StrictFIFOLock so tasks send
# in the order they drained.  Receiving uses a plain lock plus a counter of completed
# transport receives: a task that queued for the lock while another task was receiving
# does not receive again (the data it needed may have just arrived and nothing more
# might ever come), it goes round the loop and retries its call instead.  If a transport
# send fails or is cancelled after ciphertext left the BIO, some unknown part of a
# record is lost and the stream is BROKEN for good.
#
# The stream is OK, BROKEN or CLOSED (_State).  Every public method checks it first;
# BROKEN raises BrokenResourceError and CLOSED raises ClosedResourceError.  Outer
# "conflict detectors" make two tasks calling send_all (or receive_some) at once fail
# with BusyResourceError instead of interleaving.
#
# The handshake runs once, forced by the first send_all/receive_some/aclose if the user
# did not call do_handshake.  For an attested stream it has two parts: the TLS handshake
# (TLS 1.3 only, checked after the fact too) and then the attestation exchange, whose
# messages travel as TLS application data.  Both sides compute the binder
# SHA-256(SPKI of the attesting side's certificate) || TLS-Exporter(
# "EXPORTER-Channel-Binding", "", 32) with ``Connection.export_keying_material`` (RFC
# 9266; for TLS 1.3 an empty context and no context give the same value, and the tests
# compare ours with ``openssl s_client -keymatexport``).  Only after both verdicts are
# "ok" do send_all/receive_some move application bytes; bytes that arrived right after
# the last exchange message are kept and returned first by receive_some.  If we refuse
# the peer we tell it why (a "refused" verdict) and send close_notify, then raise the
# verifier's error; if the peer refuses us we raise AttestationRefused.
#
# The optional challenge round sits inside the same sequence: right after the peer's
# evidence arrives our verifier may hand us a challenge (credential activation for an
# SVSM vTPM); we send it, wait for the RESPONSE, and only then ask the verifier for its
# judgement.  Our attester answers the peer's CHALLENGE the same way, in a worker thread
# (a TPM command).  Every step is one message in one direction, so the exchange never
# needs both sides to send at once.
#
# Bulk data (what a relay's throughput depends on).  ``recv`` returns at most one
# record, so ``_read`` keeps calling it while complete records are waiting in the
# incoming BIO: one receive_some hands over everything one transport read brought, up to
# max_bytes (256 KiB when the caller gives none).  Only the first recv of a call may
# block the call (WantReadError -> _retry reads the transport); anything that stops the
# loop later is met again, unchanged, by the next call.  On the way out, pyOpenSSL's
# partial-write mode makes each SSL_write take one record, so ``_write`` writes a whole
# chunk (up to four records) before _retry drains the BIO: one transport send per chunk,
# not per record.  Contexts get SSL_MODE_RELEASE_BUFFERS, so an idle connection holds no
# record buffers, and once the handshake and attestation are done the connection gets
# new, empty memory BIOs (the old ones keep the capacity of the largest flight forever).
#
# TLS 1.3 servers send NewSessionTicket messages right after the handshake.  If those
# bytes were sent immediately, a server whose client is not reading (on a transport
# without buffering) would block inside do_handshake.  As trio does, we hold them back
# and put them in front of the next thing the server sends.

_T = TypeVar("_T")
T_Stream = TypeVar("T_Stream", bound=trio.abc.Stream)


async def acquire_for_io(lock: LightLock | trio.Lock | trio.StrictFIFOLock) -> None:
    """Take ``lock`` for a section whose transport call is itself a schedule point.

    ``async with lock`` yields to the scheduler even when the lock is free; in a relay
    that is one more run-loop round (an ``epoll`` call and a task switch) per chunk for
    nothing, because the transport send or receive inside the section yields anyway.  A
    free lock is therefore taken at once (a free trio lock has no waiters: release hands
    it straight to the next one); a held lock is waited for as usual, and cancellation is
    still checked here.  Use it only where every path through the section reaches a
    transport call, and release the lock in a ``finally``.
    """
    if lock.locked():
        await lock.acquire()
    else:
        await trio.lowlevel.checkpoint_if_cancelled()
        lock.acquire_nowait()


@final
class _BackgroundCall(Generic[_T]):
    """A blocking call started in a worker thread now and awaited later.

    A stream can so start work it will need a little later (its own evidence) and go on
    with something else (judging the peer's, or finishing the handshake).  The call runs
    through ``trio.to_thread.run_sync`` in a system task: it counts against trio's default
    thread limiter, so many connections at once cannot start unbounded threads, and the
    callee may use ``trio.from_thread``.  If nobody awaits the result, the thread finishes
    and its result is dropped.
    """

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: _T | None = None
        self._error: Exception | None = None

    @classmethod
    async def start(cls, fn: Callable[[], _T]) -> _BackgroundCall[_T]:
        """Start ``fn`` in a trio worker thread (from which ``trio.from_thread`` works)."""
        call: _BackgroundCall[_T] = cls()

        async def run() -> None:
            try:
                call._value = await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
            except Exception as exc:  # handed to the awaiting task by wait()
                call._error = exc
            finally:
                call._done.set()

        # A system task, so that no caller's nursery is needed; it ends with the call.
        trio.lowlevel.spawn_system_task(run, context=contextvars.copy_context())
        await trio.lowlevel.checkpoint()
        return call

    async def wait(self) -> _T:
        """The call's result (or its exception), once the thread has finished."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when no error was recorded


@final
class _EarlyEvidence:
    """Our own evidence, started before it can be sent and taken when it can.

    A client starts its evidence as soon as its handshake is done and sends it only
    after judging the server's.  A server starts its evidence once its Finished is
    written: in TLS 1.3 the exporter is fixed by the transcript up to the server's
    Finished (RFC 8446, 7.5), so a server knows its binder while the client is still
    working on the server's flight.  Either way the attester's time leaves the
    connection's path: a computing attester's signature goes to the offload pool, a
    blocking attester runs in a worker thread.  Nothing is sent before the handshake
    completes, and a failed handshake or exchange drops the result.  A server's early
    evidence shows nothing new: a server shows its evidence to every peer that
    completes a handshake.
    """

    __slots__ = ("_background", "_config", "_conn", "_started", "binder")

    def __init__(self, conn: SSL.Connection, config: AttestationConfig) -> None:
        self._conn = conn
        self._config = config
        self.binder: bytes | None = None
        self._started: StartedSteps[Evidence | NoEvidence] | None = None
        self._background: _BackgroundCall[Evidence | NoEvidence] | None = None

    async def start_if_ready(self) -> None:
        """(Server) start the evidence if our Finished has gone out, else do nothing."""
        conn = self._conn
        if self.binder is not None or conn.get_finished() is None:
            return
        own = conn.get_certificate(as_cryptography=True)
        if own is None or conn.get_protocol_version_name() != _TLS13:
            self.binder = b""  # not startable: made after the handshake (which fails on it)
            return
        exporter = conn.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH, EXPORTER_CONTEXT)
        await self.start(compute_binder(own, exporter))

    async def start(self, binder: bytes) -> None:
        """Start the evidence for ``binder`` (an attester that can do neither: nothing)."""
        self.binder = binder
        config = self._config
        if config.attester is None:
            return
        if config.run_in_thread:
            self._background = await _BackgroundCall.start(
                partial(local_evidence_event, config, binder)
            )
        elif callable(getattr(config.attester, "evidence_steps", None)):
            # Only its signature can run elsewhere; other event-loop attesters are
            # called when their evidence is due.
            self._started = StartedSteps(local_evidence_steps(config, binder), overlap=True)

    def take(self, binder: bytes) -> Awaitable[Evidence | NoEvidence] | None:
        """The started evidence for ``binder``, or None if none was started for it."""
        started, self._started = self._started, None
        background, self._background = self._background, None
        if binder != self.binder:
            if started is not None:
                started.abandon()
            return None
        if started is not None:
            return started.finish()
        return background.wait() if background is not None else None

    def abandon(self) -> None:
        """The handshake or the exchange failed: drop what was started."""
        started, self._started = self._started, None
        if started is not None:
            started.abandon()
        self._background = None  # its thread finishes and its result is dropped


# Size of the first recv() when the caller gives no max_bytes.  Later calls use the
# largest ciphertext chunk the transport has returned so far (ciphertext is slightly
# larger than the plaintext it carries, so this errs on the generous side).  16 KiB is
# one full TLS record.
STARTING_RECEIVE_SIZE: Final = 16384

# Largest plaintext in one TLS record (RFC 8446 5.1).  One recv() returns at most one
# record, and pyOpenSSL allocates (and zeroes) a buffer of the size asked for, so reads
# never ask for more than this per call.
_RECORD_SIZE: Final = 16384

# What receive_some() returns at most when the caller gives no max_bytes: all the
# plaintext a 64 KiB transport read can carry, and then some.
_DEFAULT_RECEIVE_MAX: Final = 256 * 1024

# Largest plaintext handed to one SSL_write: four records.  Bigger sends are split so
# that a retried call (same call, same data) never re-copies a huge buffer.
_MAX_WRITE: Final = 4 * 16384

# Ciphertext taken out of the outgoing BIO per bio_read: one _MAX_WRITE worth of
# records with their headers and AEAD tags (RFC 8446 5.2: at most 256 bytes each).
_OUTGOING_READ: Final = _MAX_WRITE + 4 * 256

# Ciphertext asked of the transport per read: more than one _MAX_WRITE worth of records,
# so that a peer's full write (four records, 65,624 bytes with headers and tags) can
# arrive in one read and be decrypted whole, instead of leaving its last record cut.
_TRANSPORT_READ: Final = 4 * _OUTGOING_READ

_TLS13: Final = "TLSv1.3"

# How long a failing connection may wait for room to send OpenSSL's alert (a few bytes
# that nearly always fit at once); past it the transport is closed without the alert.
_ALERT_TIMEOUT: Final = 1.0


class _State(enum.Enum):
    OK = enum.auto()
    BROKEN = enum.auto()
    CLOSED = enum.auto()


class _ConflictDetector:
    """Raise BusyResourceError when two tasks enter the same operation at once.

    ``with detector.guard():`` holds it for the block.  A plain object with ``__enter__``
    and ``__exit__`` (not a generator context manager): a relay enters it once per chunk.
    """

    __slots__ = ("_held", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def guard(self) -> _ConflictDetector:
        return self

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._held = False


def _refusal_reason(exc: BaseException) -> str:
    # What the peer learns about why we stop: the error class and, for evidence checks,
    # the claim that failed, but not the reference values our policy expected.
    if isinstance(exc, EvidenceVerificationError):
        return f"{type(exc).__name__}: {exc.claim}"
    if isinstance(exc, RatlsError):
        return f"{type(exc).__name__}: {exc}"
    return f"internal error ({type(exc).__name__})"


@final
class AttestedTLSStream(trio.abc.Stream, Generic[T_Stream]):
    """TLS over a trio stream, optionally with mutual attestation before any data.

    Args:
        transport_stream: the stream carrying ciphertext (a TCP stream, a memory stream,
            another TLS stream...).
        ssl_context: a pyOpenSSL context, normally from
            :func:`~ratls._tls_context.make_client_context` or
            :func:`~ratls._tls_context.make_server_context`.
        server_side: True for the TLS server end.
        attestation: what this side proves and demands; None for plain TLS (then TLS 1.2
            is allowed and no exchange takes place).
        server_hostname: SNI name to send (client side only); trust does not depend on it.
        certificate_attestation: for evidence carried in certificates (cert mode): called
            with the peer's certificate (None if it sent none) once the TLS handshake is
            done; what it returns becomes :attr:`peer_attestation`, and if it raises, the
            handshake fails with that error.  Not together with ``attestation``.

    Attributes:
        transport_stream: the underlying stream.
        server_side: whether this is the TLS server end.
    """

    def __init__(
        self,
        transport_stream: T_Stream,
        ssl_context: SSL.Context,
        *,
        server_side: bool,
        attestation: AttestationConfig | None = None,
        server_hostname: str | None = None,
        certificate_attestation: Callable[[x509.Certificate | None], object] | None = None,
    ) -> None:
        if attestation is not None and certificate_attestation is not None:
            raise ValueError("attestation and certificate_attestation exclude each other")
        self.transport_stream: T_Stream = transport_stream
        self.server_side = server_side
        # A transport call counts as this call's checkpoint only if the transport always
        # checkpoints (trio's streams do).  One that skips the scheduler when the kernel
        # is ready says so with ``checkpoints_always = False``; then we checkpoint.
        self._transport_checkpoints = bool(getattr(transport_stream, "checkpoints_always", True))
        self._attestation = attestation
        self._certificate_attestation = certificate_attestation
        # An idle connection then holds no 16 KiB+ read and write buffers (OpenSSL
        # frees them whenever they are empty): most of what an idle TLS connection
        # costs.  The mode is copied into each new Connection.  pyOpenSSL refuses to
        # change a context that already made a Connection; by then the first stream
        # over it has set the mode (or its maker chose otherwise), so that is fine.
        with contextlib.suppress(ValueError):
            ssl_context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        self._conn = SSL.Connection(ssl_context, None)
        write_whole_chunks(self._conn)
        self._cert_errors = PeerCertificateErrors()
        self._conn.set_app_data(self._cert_errors)
        if server_side:
            if server_hostname is not None:
                raise ValueError("server_hostname is for the client side")
            self._conn.set_accept_state()
        else:
            if server_hostname is not None:
                self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
            self._conn.set_connect_state()
        self._state = _State.OK
        self._handshake_started = False
        self._handshake_finished = False
        # Made only when a second task must wait for a handshake in progress.
        self._handshake_waiters: trio.Event | None = None
        self._handshake_ok = False
        self._inner_send_lock = LightLock()
        self._inner_recv_lock = LightLock()
        self._inner_recv_count = 0
        self._estimated_receive_size = STARTING_RECEIVE_SIZE
        self._delayed_outgoing = b""
        self._app_buffer = bytearray()
        self._outer_send = _ConflictDetector("another task is sending on this AttestedTLSStream")
        self._outer_recv = _ConflictDetector("another task is receiving on this AttestedTLSStream")
        self._peer_certificate: x509.Certificate | None = None
        self._peer_attestation: object = None

    # ------------------------------------------------------------------ properties

    def _require_handshake(self, name: str) -> None:
        if not self._handshake_ok:
            raise trio.NeedHandshakeError(f"call do_handshake() before reading {name}")

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's TLS certificate (None if it sent none).

        Raises:
            trio.NeedHandshakeError: the handshake has not completed.
        """
        self._require_handshake("peer_certificate")
        return self._peer_certificate

    @property
    def peer_attestation(self) -> object:
        """What the PeerVerifier returned for the peer's evidence.

        None when attestation is off or our configuration does not require the peer to
        attest.

        Raises:
            trio.NeedHandshakeError: the handshake (and exchange) has not completed.
        """
        self._require_handshake("peer_attestation")
        return self._peer_attestation

    @property
    def tls_version(self) -> str:
        """The negotiated protocol version, e.g. ``"TLSv1.3"``.

        Raises:
            trio.NeedHandshakeError: the handshake has not completed.
        """
        self._require_handshake("tls_version")
        return self._conn.get_protocol_version_name()

    @property
    def key_exchange_group(self) -> str | None:
        """The negotiated key exchange group as OpenSSL names it, e.g. ``"X25519MLKEM768"``.

        None when OpenSSL does not say, or when this pyOpenSSL cannot ask (before 26).

        Raises:
            trio.NeedHandshakeError: the handshake has not completed.
        """
        self._require_handshake("key_exchange_group")
        get_group_name = getattr(self._conn, "get_group_name", None)
        name = get_group_name() if get_group_name is not None else None
        return str(name) if name is not None else None

    @property
    def channel_binding(self) -> bytes:
        """The RFC 9266 tls-exporter channel binding of this connection (32 bytes).

        Raises:
            trio.NeedHandshakeError: the handshake has not completed.
        """
        self._require_handshake("channel_binding")
        return self._exporter()

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """Export keying material from the TLS session (RFC 5705 / RFC 8446 7.5).

        Args:
            label: the exporter label.
            length: how many bytes to export.
            context: the context value, or None for "no context".

        Returns:
            ``length`` bytes.

        Raises:
            trio.NeedHandshakeError: the handshake has not completed.
        """
        self._require_handshake("keying material")
        return self._conn.export_keying_material(label, length, context)

    def _exporter(self) -> bytes:
        return self._conn.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH, EXPORTER_CONTEXT)

    # ------------------------------------------------------------------ core I/O

    def _check_status(self) -> None:
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this AttestedTLSStream is broken")
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this AttestedTLSStream is closed")

    def _mark_broken(self) -> None:
        if self._state is _State.OK:
            self._state = _State.BROKEN

    def _drain_outgoing(self) -> bytes:
        # One bio_read usually takes everything: a full _MAX_WRITE of plaintext is four
        # records of at most _RECORD_SIZE + 256 bytes each.  A memory BIO hands out all
        # it holds up to the size asked, so a short read means it is empty now.
        try:
            first = self._conn.bio_read(_OUTGOING_READ)
        except SSL.WantReadError:
            return b""
        if len(first) < _OUTGOING_READ:
            return first
        chunks = [first]
        while True:
            try:
                chunks.append(self._conn.bio_read(_OUTGOING_READ))
            except SSL.WantReadError:
                return b"".join(chunks) if len(chunks) > 1 else first

    def _tls_failure(self, exc: SSL.Error) -> BaseException:
        if self._cert_errors:
            return self._cert_errors[0]
        return trio.BrokenResourceError(f"TLS failure: {exc}")

    async def _send_alert(self) -> None:
        # On a TLS failure OpenSSL queues an alert saying why (no shared group, a
        # certificate refused...).  Sent, it lets the peer report that reason instead of
        # a bare end of stream.  Best effort: skipped if another task is sending, given
        # up after _ALERT_TIMEOUT, and any transport failure is ignored (we are failing).
        alert = self._drain_outgoing()
        if not alert or self._inner_send_lock.locked():
            return
        with (
            trio.move_on_after(_ALERT_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            async with self._inner_send_lock:
                await self.transport_stream.send_all(alert)

    async def _retry(
        self,
        fn: Callable[[], _T],
        *,
        is_handshake: bool = False,
        before_read: Callable[[], Awaitable[None]] | None = None,
    ) -> _T:
        """Run one non-blocking pyOpenSSL call to completion; see the theory above.

        ``before_read`` is awaited whenever the call waits for the peer, after what it
        wrote has gone out (the handshake uses it to start the server's evidence).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        yielded = False
        while True:
            want_read = False
            finished = False
            try:
                result = fn()
            except SSL.WantReadError:
                want_read = True
            except SSL.ZeroReturnError as exc:
                self._mark_broken()
                raise trio.BrokenResourceError("peer closed the TLS connection") from exc
            except SSL.SysCallError as exc:
                self._mark_broken()
                raise trio.BrokenResourceError("transport ended without TLS close") from exc
            except SSL.Error as exc:
                self._mark_broken()
                failure = self._tls_failure(exc)
                await self._send_alert()
                raise failure from exc
            else:
                finished = True
            to_send = self._drain_outgoing()
            if (
                is_handshake
                and finished
                and self.server_side
                and self._conn.get_protocol_version_name() == _TLS13
            ):
                # Session tickets: hold them until the server next sends (see theory).
                self._delayed_outgoing += to_send
                to_send = b""
            if to_send:
                try:
                    await acquire_for_io(self._inner_send_lock)
                    try:
                        yielded = yielded or self._transport_checkpoints
                        if self._delayed_outgoing:
                            to_send = self._delayed_outgoing + to_send
                            self._delayed_outgoing = b""
                        await self.transport_stream.send_all(to_send)
                    finally:
                        self._inner_send_lock.release()
                except BaseException:
                    # Some unknown part of our ciphertext was lost: the stream is doomed.
                    self._mark_broken()
                    raise
            elif want_read:
                if before_read is not None:
                    await before_read()
                recv_count = self._inner_recv_count
                await acquire_for_io(self._inner_recv_lock)
                try:
                    yielded = yielded or self._transport_checkpoints
                    if recv_count == self._inner_recv_count:
                        data = await self.transport_stream.receive_some(_TRANSPORT_READ)
                        if data:
                            self._estimated_receive_size = max(
                                self._estimated_receive_size, len(data)
                            )
                            self._conn.bio_write(data)
                        else:
                            self._conn.bio_shutdown()
                        self._inner_recv_count += 1
                finally:
                    self._inner_recv_lock.release()
            if finished:
                if not yielded:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return result

    def _read(self, max_bytes: int) -> bytes:
        # The first recv() may raise WantReadError (nothing decrypted yet: _retry reads
        # the transport and calls again).  Once it has returned data, every further
        # complete record already in the incoming BIO is decrypted too, up to
        # max_bytes: one call then hands the caller what one transport read brought
        # (four records for a 64 KiB read) instead of one record per call.  Anything
        # that stops the loop after the first record (no complete record left, the
        # peer's close_notify, a TLS error) is left for the next call to meet again:
        # OpenSSL reports it again then, since the record that caused it stays put.
        try:
            first = self._conn.recv(min(max_bytes, _RECORD_SIZE))
        except SSL.ZeroReturnError:
            return b""
        room = max_bytes - len(first)
        if room <= 0:
            return first
        chunks = [first]
        recv = self._conn.recv
        while room > 0:
            try:
                chunk = recv(min(room, _RECORD_SIZE))
            except SSL.Error:
                break
            chunks.append(chunk)
            room -= len(chunk)
        return b"".join(chunks) if len(chunks) > 1 else first

    def _shutdown_once(self) -> None:
        # Send close_notify without waiting for the peer's (allowed by RFC 8446 6.1).
        with contextlib.suppress(SSL.WantReadError):
            self._conn.shutdown()

    def _write(self, view: memoryview) -> int:
        # The whole chunk is encrypted here, before _retry drains the outgoing BIO, so
        # up to four records leave with one transport send.  With partial writes off
        # (write_whole_chunks) one SSL_write takes the whole chunk; where pyOpenSSL's
        # SSL_MODE_ENABLE_PARTIAL_WRITE could not be cleared, each call encrypts one
        # record and the loop makes the rest.  Only the first SSL_write may raise
        # WantReadError (then _retry repeats this call with the same data); a later one
        # ends the loop early and the caller retries from where it stopped, with the
        # same bytes in front (OpenSSL accepts a longer buffer on a retry).
        written = self._conn.send(view)
        size = len(view)
        while written < size:
            try:
                written += self._conn.send(view[written:])
            except SSL.WantReadError:
                break
        return written

    async def _send_plaintext(self, data: bytes | bytearray | memoryview) -> None:
        # pyOpenSSL takes any buffer and SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER is set, so a
        # retried send may pass a new view of the same bytes: slices of the caller's
        # buffer go to SSL_write without a copy (the caller may not change it while
        # send_all runs, see trio.abc.SendStream).
        view = memoryview(data).cast("B")
        while view:
            written = await self._retry(partial(self._write, view[:_MAX_WRITE]))
            view = view[written:]

    # ------------------------------------------------------------------ handshake

    async def _ensure_handshake(self, *, checkpoint: bool) -> None:
        if not self._handshake_started:
            self._handshake_started = True
            try:
                await self._do_handshake()
            except BaseException:
                self._mark_broken()
                raise
            finally:
                self._handshake_finished = True
                if self._handshake_waiters is not None:
                    self._handshake_waiters.set()
        elif not self._handshake_finished:
            if self._handshake_waiters is None:
                self._handshake_waiters = trio.Event()
            await self._handshake_waiters.wait()
        elif checkpoint:
            await trio.lowlevel.checkpoint()
        if not self._handshake_ok:
            self._check_status()
            raise trio.BrokenResourceError("the handshake failed")

    async def _do_handshake(self) -> None:
        config = self._attestation
        early = None
        if self.server_side and config is not None and config.attester is not None:
            early = _EarlyEvidence(self._conn, config)
        try:
            await self._retry(
                self._conn.do_handshake,
                is_handshake=True,
                before_read=None if early is None else early.start_if_ready,
            )
            peer = self._conn.get_peer_certificate()
            self._peer_certificate = None if peer is None else certificate_from_openssl(peer)
            if config is not None:
                version = self._conn.get_protocol_version_name()
                if version != _TLS13:
                    raise PolicyViolation("tls.version", expected=_TLS13, actual=version)
                self._peer_attestation = await self._attest(config, early)
        except BaseException:
            if early is not None:
                early.abandon()
            raise
        if config is None and self._certificate_attestation is not None:
            self._peer_attestation = self._certificate_attestation(self._peer_certificate)
        # The handshake and the exchange grew both memory BIOs to their largest flight;
        # an idle connection need not keep that (see ratls._memory_bios).  Nothing else
        # drives the connection now, and the transport has not ended (that raises above).
        renew_idle_bios(self._conn)
        self._handshake_ok = True

    async def _call(self, in_thread: bool, fn: Callable[[], _T]) -> _T:
        if in_thread:
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
        await trio.lowlevel.checkpoint()
        return fn()

    async def _call_steps(self, in_thread: bool, make: Callable[[], Steps[_T]]) -> _T:
        # In a thread: the whole computation there.  In the event loop: the Python parts
        # here, the GIL-free calls (ECDSA) on the offload pool (see ratls._offload).
        if in_thread:
            return await trio.to_thread.run_sync(partial(_run_made, make), abandon_on_cancel=True)
        return await drive(make())

    async def _next_exchange_event(self, machine: AttestationExchange) -> ExchangeEvent:
        """The peer's next exchange message; a refusal raises AttestationRefused."""
        while True:
            try:
                event = machine.next_event()
            except ExchangeTruncated as exc:
                self._mark_broken()
                raise trio.BrokenResourceError(str(exc)) from exc
            except RemoteProtocolError as exc:
                await self._refuse(machine, exc)
                raise
            if event is NEED_DATA:
                size = self._estimated_receive_size
                try:
                    data = await self._retry(partial(self._read, size))
                except trio.BrokenResourceError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, SSL.Error) and not isinstance(cause, SSL.SysCallError):
                        raise  # a TLS failure, not the peer going away
                    data = b""  # transport EOF or failure: report the exchange as cut short
                machine.receive_data(data)
            elif isinstance(event, Verdict) and event.result is VerdictResult.REFUSED:
                self._mark_broken()
                raise AttestationRefused(event.reason)
            elif isinstance(event, Evidence | NoEvidence | Verdict | Challenge | Response):
                return event
            else:  # pragma: no cover - PAUSED would be a sequencing bug in _attest
                raise LocalProtocolError("attestation exchange out of step")

    async def _receive_evidence(self, machine: AttestationExchange) -> Evidence | NoEvidence:
        event = await self._next_exchange_event(machine)
        if not isinstance(event, Evidence | NoEvidence):  # pragma: no cover - machine's job
            raise LocalProtocolError("attestation exchange out of step")
        return event

    async def _receive_response(self, machine: AttestationExchange) -> Response:
        event = await self._next_exchange_event(machine)
        if not isinstance(event, Response):  # pragma: no cover - the machine rules this out
            raise LocalProtocolError("attestation exchange out of step")
        return event

    async def _refuse(self, machine: AttestationExchange, exc: BaseException) -> None:
        """Best effort: tell the peer why we stop, then send close_notify."""
        self._mark_broken()
        try:
            data = machine.send(Verdict.refused(_refusal_reason(exc)))
        except LocalProtocolError:  # pragma: no cover - refusing is allowed in every live state
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send_plaintext(data)
            await self._retry(self._shutdown_once)

    async def _attest(
        self, config: AttestationConfig, early: _EarlyEvidence | None = None
    ) -> object:
        machine = AttestationExchange(
            ExchangeRole.SERVER if self.server_side else ExchangeRole.CLIENT
        )
        exporter = self._exporter()
        own = self._conn.get_certificate(as_cryptography=True)
        own_binder = compute_binder(own, exporter) if own is not None else None
        peer = self._peer_certificate
        peer_binder = compute_binder(peer, exporter) if peer is not None else None

        async def guarded(fn: Callable[[], _T], *, verifier: bool = False) -> _T:
            # Run our attester or verifier; if it fails, tell the peer why and stop.
            in_thread = config.verifier_in_thread if verifier else config.run_in_thread
            try:
                return await self._call(in_thread, fn)
            except Exception as exc:
                await self._refuse(machine, exc)
                raise

        async def guarded_result(pending: Awaitable[_T]) -> _T:
            # Await our attester's early start; if it failed, tell the peer why and stop.
            try:
                return await pending
            except Exception as exc:
                await self._refuse(machine, exc)
                raise

        async def guarded_steps(make: Callable[[], Steps[_T]], *, verifier: bool = False) -> _T:
            # The same for a computation in steps (its ECDSA calls may go to the pool).
            in_thread = config.verifier_in_thread if verifier else config.run_in_thread
            try:
                return await self._call_steps(in_thread, make)
            except Exception as exc:
                await self._refuse(machine, exc)
                raise

        async def produce() -> Evidence | NoEvidence:
            if config.attester is not None and own_binder is None:
                error = LocalProtocolError("cannot attest without a certificate of our own")
                await self._refuse(machine, error)
                raise error
            return await guarded_steps(partial(local_evidence_steps, config, own_binder or b""))

        async def answer(challenge: Challenge) -> None:
            # The peer challenges our evidence: one RESPONSE from our attester.
            response = await guarded(partial(local_response_event, config, challenge))
            await self._send_plaintext(machine.send(response))

        async def appraise(event: Evidence | NoEvidence) -> object:
            # Challenge the peer's evidence if our verifier asks to, then judge it.
            pending = await guarded(
                partial(peer_activation_challenge, config, event, peer_binder), verifier=True
            )
            if pending is None:
                return await guarded_steps(
                    partial(appraise_peer_evidence_steps, config, event, peer_binder),
                    verifier=True,
                )
            state, challenge = pending
            await self._send_plaintext(machine.send(challenge))
            response = await self._receive_response(machine)
            return await guarded_steps(
                partial(
                    appraise_peer_evidence_steps,
                    config,
                    event,
                    peer_binder,
                    activation=state,
                    response=response,
                ),
                verifier=True,
            )

        if self.server_side:
            # Our evidence was normally started when our Finished went out.
            pending = None if early is None or own_binder is None else early.take(own_binder)
            own_event = await (produce() if pending is None else guarded_result(pending))
            await self._send_plaintext(machine.send(own_event))
            first = await self._next_exchange_event(machine)
            if isinstance(first, Challenge):
                await answer(first)
                first = await self._next_exchange_event(machine)
            if not isinstance(first, Evidence | NoEvidence):  # pragma: no cover - machine's job
                raise LocalProtocolError("attestation exchange out of step")
            # The client's verdict on us follows its evidence in the same flight; read it
            # before challenging, so that a refused client is not asked anything more.
            await self._next_exchange_event(machine)
            result = await appraise(first)
            await self._send_plaintext(machine.send(Verdict.ok()))
        else:
            # Our evidence does not depend on the server's: make it while we wait for and
            # judge the server's, and send it only once the server is accepted.
            own_early = _EarlyEvidence(self._conn, config)
            if own_binder is not None:
                await own_early.start(own_binder)
            try:
                result = await appraise(await self._receive_evidence(machine))
            except BaseException:
                own_early.abandon()  # the server is refused: our evidence is not needed
                raise
            pending = None if own_binder is None else own_early.take(own_binder)
            own_event = await (produce() if pending is None else guarded_result(pending))
            await self._send_plaintext(machine.send(own_event) + machine.send(Verdict.ok()))
            last = await self._next_exchange_event(machine)
            if isinstance(last, Challenge):
                await answer(last)
                await self._next_exchange_event(machine)  # the server's ok verdict on us
        self._app_buffer += machine.trailing_data
        return result

    async def do_handshake(self) -> None:
        """Run the TLS handshake and, if configured, the attestation exchange.

        You need not call this: the first send_all, receive_some or aclose does it.
        Call it to look at :attr:`peer_attestation` before sending anything.  If another
        task is already handshaking, this waits for it.  Run it under a timeout
        (``trio.fail_after``): a silent peer makes it wait forever.

        Raises:
            trio.BrokenResourceError: the transport or the TLS layer failed, or the peer
                went away during the exchange.
            trio.ClosedResourceError: this stream was closed.
            CertificateChainError: the peer's certificate was refused.
            AttestationRefused: the peer refused our evidence (its reason attached).
            RatlsError: our verifier refused the peer's evidence (we told the peer), our
                attester failed, or the peer broke the exchange protocol
                (a RemoteProtocolError subclass).

        If this raises or is cancelled, the stream is broken: every later call raises
        BrokenResourceError, and only :meth:`aclose` remains useful.
        """
        self._check_status()
        await self._ensure_handshake(checkpoint=True)

    # ------------------------------------------------------------------ Stream API

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data``, after the handshake and attestation.

        See :meth:`trio.abc.SendStream.send_all`.  If cancelled, an unknown amount of
        data was sent and the stream is broken.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.BrokenResourceError: the stream failed (now or before).
            trio.ClosedResourceError: this stream was closed.
            RatlsError: the implicit handshake failed (see :meth:`do_handshake`).
        """
        with self._outer_send.guard():
            self._check_status()
            await self._ensure_handshake(checkpoint=False)
            if not data:
                await trio.lowlevel.checkpoint()
                return
            await self._send_plaintext(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive and decrypt some data, after the handshake and attestation.

        See :meth:`trio.abc.ReceiveStream.receive_some`: returns ``b""`` only when the
        peer closed the TLS stream with close_notify.  One call returns every record
        that has already arrived, up to ``max_bytes`` (256 KiB when None), so a relay
        moves one transport read's worth per call, not one 16 KiB record.  A transport
        EOF without close_notify raises BrokenResourceError (a possible truncation
        attack).

        Raises:
            ValueError: ``max_bytes`` is less than 1.
            TypeError: ``max_bytes`` is not an integer.
            trio.BusyResourceError: another task is receiving.
            trio.BrokenResourceError: the stream failed (now or before).
            trio.ClosedResourceError: this stream was closed.
            RatlsError: the implicit handshake failed (see :meth:`do_handshake`).
        """
        with self._outer_recv.guard():
            if max_bytes is not None:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            self._check_status()
            await self._ensure_handshake(checkpoint=False)
            if self._app_buffer:
                await trio.lowlevel.checkpoint()
                limit = len(self._app_buffer) if max_bytes is None else max_bytes
                chunk = bytes(self._app_buffer[:limit])
                del self._app_buffer[:limit]
                return chunk
            if max_bytes is None:
                max_bytes = _DEFAULT_RECEIVE_MAX
            return await self._retry(partial(self._read, max_bytes))

    def release_idle_buffers(self) -> bool:
        """Free what the memory BIOs grew to, if no byte waits in them; True if freed.

        OpenSSL's memory BIOs keep the capacity of the largest burst they ever held (up
        to a few hundred KiB after bulk data).  A long-lived connection that has gone
        quiet can give it back: call this when no data has moved for a while.  Cheap
        and safe at any point between this stream's own calls (they keep no BIO across
        a wait); it does nothing while ciphertext is queued in either direction.
        """
        if not self._handshake_ok or self._state is not _State.OK:
            return False
        return renew_idle_bios(self._conn)

    async def wait_send_all_might_not_block(self) -> None:
        """See :meth:`trio.abc.SendStream.wait_send_all_might_not_block`."""
        with self._outer_send.guard():
            self._check_status()
            # A concurrent receive_some may be sending (handshake or TLS 1.3
            # post-handshake traffic); wait our turn rather than touch the transport
            # at the same time.
            async with self._inner_send_lock:
                await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify (once, without waiting for the reply), then close.

        If the handshake never started there is nothing to say in TLS, so the transport
        is simply closed (no attestation runs just to say goodbye).  If it is under way,
        this waits for it to finish first.  Any failure, or cancellation, closes the
        transport forcefully; either way the stream ends up closed.
        """
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        if self._state is _State.BROKEN or not self._handshake_started:
            self._state = _State.CLOSED
            await self.transport_stream.aclose()
            return
        try:
            await self._ensure_handshake(checkpoint=False)
            # The peer may already be gone, or another task may be mid-send: then
            # grace is impossible and we just close.
            with contextlib.suppress(trio.BrokenResourceError, trio.BusyResourceError):
                await self._retry(self._shutdown_once)
        except BaseException:
            await trio.aclose_forcefully(self.transport_stream)
            raise
        else:
            await self.transport_stream.aclose()
        finally:
            self._state = _State.CLOSED

    def __repr__(self) -> str:
        side = "server" if self.server_side else "client"
        mode = "attested" if self._attestation is not None else "plain"
        return f"<AttestedTLSStream {side} {mode} {self._state.name}>"


def _run_made(make: Callable[[], Steps[_T]]) -> _T:
    """Make a computation and run it to the end in this (worker) thread."""
    return run_inline(make())
