"""A TPM 2.0 command path: marshalling, transports and typed commands.

This module talks to a TPM 2.0 - the kernel's resource-managed character device
``/dev/tpmrm0`` inside a confidential VM, or swtpm's TCP interface in the simulator -
and offers the handful of commands attestation needs (keys in the endorsement
hierarchy, PCRs, quotes, NV storage, policy sessions and credential activation).

Why its own marshalling instead of a TSS binding: ratls is also installed on machines
that only *verify* evidence.  Those must not need the C TSS libraries, and the attester
side needs only some twenty commands whose wire formats are fixed by TPM 2.0 Part 3.
The code here marshals commands and unmarshals responses byte by byte and checks every
response strictly (tag, size, response code, exact consumption of the parameter and
authorization areas).  It does not parse TPMT_PUBLIC or TPMS_ATTEST: those stay bytes
here and are parsed by the format layer.

Theory of operation
-------------------

A command is ``tag u16 | commandSize u32 | commandCode u32 | handles | [authorizationSize
u32 | auth sessions] | parameters`` (big-endian).  The tag is ``TPM_ST_SESSIONS`` exactly
when an authorization area is present.  A response is ``tag | responseSize | responseCode``
and, on success, ``handles | [parameterSize u32] | parameters | [auth responses]``; an error
response is the 10-byte header alone.

Authorizations used here are the password session ``TPM_RS_PW`` (the auth value in the
clear - fine on a local device or loopback, where nothing sits between caller and TPM)
and unsalted, unbound policy sessions.  The endorsement key made from the TCG template has
``userWithAuth`` clear and the policy ``PolicySecret(TPM_RH_ENDORSEMENT)``, so every use of
the EK (as parent of the AK, and in ActivateCredential) goes through a policy session
that first runs ``TPM2_PolicySecret`` - :meth:`Tpm.endorsement_policy_session` does that.

Transports move one command and return one response; they know nothing about TPM
semantics beyond the header's size field.  Every blocking step has a timeout, so a TPM
or swtpm process that dies mid-command produces an :class:`~ratls.AttesterError`
instead of a hang.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, final

from ratls._errors import AttesterError, AttesterUnavailable
from ratls._tpm_structs import TpmAlgId, TpmSt

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from types import TracebackType

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "EK_PERSISTENT_HANDLE",
    "MAX_RESPONSE_SIZE",
    "NV_INDEX_RSA2048_EK_CERT",
    "Attestation",
    "AuthSession",
    "CreatedObject",
    "CreatedPrimary",
    "DeviceTransport",
    "LoadedObject",
    "NvPublic",
    "PublicArea",
    "SigScheme",
    "SwtpmCtrlCommand",
    "SwtpmSocketTransport",
    "Tpm",
    "TpmCc",
    "TpmCommandError",
    "TpmResponseCode",
    "TpmResponseFormatError",
    "TpmRh",
    "TpmSe",
    "TpmTransport",
    "TpmaNv",
    "decode_response_code",
]

#: Seconds one TPM command may take before the transport gives up.  RSA-2048 key
#: generation (CreatePrimary of an EK) is the slowest command used here: hardware TPMs
#: can take some tens of seconds for it, and a software TPM searching for primes on a
#: loaded machine can take seconds.  A minute covers both with margin;
#: the point of the limit is to turn a dead peer into an error, not to bound latency.
COMMAND_TIMEOUT: Final = 60.0

#: Seconds to wait for a TCP connection to swtpm.  It listens on loopback, so anything
#: slower than this means it is not there.
CONNECT_TIMEOUT: Final = 10.0

#: Largest response accepted from a transport.  TPMs advertise at most a few KiB
#: (TPM_PT_MAX_RESPONSE_SIZE is 4096 on common TPMs and on libtpms; the Linux driver's
#: buffer is 4096 bytes).  64 KiB leaves room for future TPMs while refusing a garbage
#: size field that would make us wait for, or allocate, gigabytes.
MAX_RESPONSE_SIZE: Final = 0x10000

#: Persistent handle of the RSA-2048 endorsement key (TCG EK Credential Profile, and
#: where the SVSM vTPM keeps it).
EK_PERSISTENT_HANDLE: Final = 0x81010001

#: NV index of the RSA-2048 EK certificate (TCG EK Credential Profile).  The SVSM-vTPM
#: prototype stores the VMPL0 SNP report there instead of a certificate.
NV_INDEX_RSA2048_EK_CERT: Final = 0x01C00002

_HEADER = struct.Struct(">HII")

#: Warnings after which a command is simply sent again (TPM_RC_YIELDED, TPM_RC_TESTING,
#: TPM_RC_RETRY): the TPM did not start the command and says a retry may succeed.
_RETRY_CODES: Final = frozenset({0x908, 0x90A, 0x922})
#: How often, and with which first delay in seconds (doubling, capped at 0.5 s), such a
#: command is retried: a few seconds in all, then the warning is raised.
_RETRIES: Final = 10
_RETRY_DELAY: Final = 0.01

# TPM_ALG_ID values used in marshalling (TPM 2.0 Part 2, table 9).  The full
# enumeration lives in the format layer; only what framing needs is here.
_ALG_HMAC: Final = 0x0005
_ALG_NULL: Final = 0x0010
_ALG_SHA256: Final = 0x000B
_ALG_RSASSA: Final = 0x0014
_ALG_RSAPSS: Final = 0x0016
_ALG_ECDSA: Final = 0x0018
_ALG_ECDAA: Final = 0x001A
_ALG_SM2: Final = 0x001B
_ALG_ECSCHNORR: Final = 0x001C

#: Digest sizes of the hash algorithms a TPM bank can use, by TPM_ALG_ID.
_DIGEST_SIZES: Final[Mapping[int, int]] = {
    0x0004: 20,  # SHA1
    0x000B: 32,  # SHA256
    0x000C: 48,  # SHA384
    0x000D: 64,  # SHA512
    0x0012: 32,  # SM3_256
    0x0027: 32,  # SHA3_256
    0x0028: 48,  # SHA3_384
    0x0029: 64,  # SHA3_512
}


class TpmCc(IntEnum):
    """TPM_CC command codes of the commands this module sends (Part 2, table 12)."""

    #: TPM2_NV_UndefineSpace
    NV_UNDEFINE_SPACE = 0x0122
    #: TPM2_EvictControl
    EVICT_CONTROL = 0x0120
    #: TPM2_NV_DefineSpace
    NV_DEFINE_SPACE = 0x012A
    #: TPM2_CreatePrimary
    CREATE_PRIMARY = 0x0131
    #: TPM2_NV_Write
    NV_WRITE = 0x0137
    #: TPM2_Startup
    STARTUP = 0x0144
    #: TPM2_Shutdown
    SHUTDOWN = 0x0145
    #: TPM2_ActivateCredential
    ACTIVATE_CREDENTIAL = 0x0147
    #: TPM2_Certify
    CERTIFY = 0x0148
    #: TPM2_NV_Read
    NV_READ = 0x014E
    #: TPM2_PolicySecret
    POLICY_SECRET = 0x0151
    #: TPM2_Create
    CREATE = 0x0153
    #: TPM2_Load
    LOAD = 0x0157
    #: TPM2_Quote
    QUOTE = 0x0158
    #: TPM2_FlushContext
    FLUSH_CONTEXT = 0x0165
    #: TPM2_NV_ReadPublic
    NV_READ_PUBLIC = 0x0169
    #: TPM2_ReadPublic
    READ_PUBLIC = 0x0173
    #: TPM2_StartAuthSession
    START_AUTH_SESSION = 0x0176
    #: TPM2_GetCapability
    GET_CAPABILITY = 0x017A
    #: TPM2_GetRandom
    GET_RANDOM = 0x017B
    #: TPM2_PCR_Read
    PCR_READ = 0x017E
    #: TPM2_PCR_Extend
    PCR_EXTEND = 0x0182
    #: TPM2_PolicyGetDigest
    POLICY_GET_DIGEST = 0x0189


class TpmRh(IntEnum):
    """Permanent handles (TPM_RH, Part 2, table 28)."""

    #: Owner (storage) hierarchy.
    OWNER = 0x40000001
    #: The null hierarchy / "no handle".
    NULL = 0x40000007
    #: Password authorization session.
    RS_PW = 0x40000009
    #: Lockout authorization.
    LOCKOUT = 0x4000000A
    #: Endorsement hierarchy.
    ENDORSEMENT = 0x4000000B
    #: Platform hierarchy.
    PLATFORM = 0x4000000C


class TpmSe(IntEnum):
    """TPM_SE session types for TPM2_StartAuthSession (Part 2, table 27)."""

    #: HMAC session.
    HMAC = 0x00
    #: Policy session.
    POLICY = 0x01
    #: Trial policy session (computes a digest, authorizes nothing).
    TRIAL = 0x03


class TpmaNv(IntFlag):
    """TPMA_NV attribute bits of an NV index (Part 2, table 204)."""

    #: Platform authorization may write.
    PPWRITE = 0x00000001
    #: Owner authorization may write.
    OWNERWRITE = 0x00000002
    #: The index's own auth value may write.
    AUTHWRITE = 0x00000004
    #: The index's policy may write.
    POLICYWRITE = 0x00000008
    #: The index may only be deleted with its policy.
    POLICY_DELETE = 0x00000400
    #: Writes are locked.
    WRITELOCKED = 0x00000800
    #: A partial write is not allowed.
    WRITEALL = 0x00001000
    #: TPM2_NV_WriteLock may lock writes permanently.
    WRITEDEFINE = 0x00002000
    #: TPM2_NV_WriteLock locks writes until the next TPM Reset or Restart.
    WRITE_STCLEAR = 0x00004000
    #: TPM2_NV_GlobalWriteLock applies.
    GLOBALLOCK = 0x00008000
    #: Platform authorization may read.
    PPREAD = 0x00010000
    #: Owner authorization may read.
    OWNERREAD = 0x00020000
    #: The index's own auth value may read.
    AUTHREAD = 0x00040000
    #: The index's policy may read.
    POLICYREAD = 0x00080000
    #: Failed authorizations do not count towards dictionary-attack lockout.
    NO_DA = 0x02000000
    #: Updates may be kept in RAM until an orderly shutdown.
    ORDERLY = 0x04000000
    #: WRITTEN is cleared by TPM Reset or Restart.
    CLEAR_STCLEAR = 0x08000000
    #: Reads are locked.
    READLOCKED = 0x10000000
    #: The index has been written (set by the TPM).
    WRITTEN = 0x20000000
    #: Defined with platform authorization.
    PLATFORMCREATE = 0x40000000
    #: TPM2_NV_ReadLock may lock reads until the next TPM Reset or Restart.
    READ_STCLEAR = 0x80000000


class SwtpmCtrlCommand(IntEnum):
    """Commands on swtpm's control channel (swtpm's ``tpm_ioctl.h``, non-CUSE numbering)."""

    #: Return the capability bit mask (u64).
    GET_CAPABILITY = 0x01
    #: Power on / reset the TPM (payload: init flags u32).
    INIT = 0x02
    #: Stop the TPM and terminate the swtpm process.
    SHUTDOWN = 0x03
    #: Set the locality of following commands.
    SET_LOCALITY = 0x05
    #: Stop the TPM but keep the process running.
    STOP = 0x0E


# --------------------------------------------------------------------------------------
# Response codes
# --------------------------------------------------------------------------------------

_RC_VER1: Final = 0x100
_RC_FMT1: Final = 0x080
_RC_WARN: Final = 0x900

# (name, meaning) of format-zero error codes, by their full value (RC_VER1 + n).
_FMT0_CODES: Final[Mapping[int, tuple[str, str]]] = {
    0x100: ("TPM_RC_INITIALIZE", "TPM not started with TPM2_Startup, or started twice"),
    0x101: ("TPM_RC_FAILURE", "the TPM is in failure mode and accepts almost no command"),
    0x103: ("TPM_RC_SEQUENCE", "a sequence handle was used improperly"),
    0x10B: ("TPM_RC_PRIVATE", "not currently used"),
    0x119: ("TPM_RC_HMAC", "not currently used"),
    0x120: ("TPM_RC_DISABLED", "the command is disabled"),
    0x121: ("TPM_RC_EXCLUSIVE", "the command needs exclusivity for an audit sequence"),
    0x124: ("TPM_RC_AUTH_TYPE", "the authorization handle is wrong for this command"),
    0x125: ("TPM_RC_AUTH_MISSING", "a handle needs an authorization session that is absent"),
    0x126: ("TPM_RC_POLICY", "policy failure in a math operation or an invalid authPolicy"),
    0x127: ("TPM_RC_PCR", "PCR check failed"),
    0x128: ("TPM_RC_PCR_CHANGED", "PCRs changed since they were checked"),
    0x12D: ("TPM_RC_UPGRADE", "the TPM is in field-upgrade mode"),
    0x12E: ("TPM_RC_TOO_MANY_CONTEXTS", "context ID counter is at its maximum"),
    0x12F: ("TPM_RC_AUTH_UNAVAILABLE", "authValue or authPolicy is not available"),
    0x130: ("TPM_RC_REBOOT", "a _TPM_Init and TPM2_Startup(CLEAR) are needed"),
    0x131: ("TPM_RC_UNBALANCED", "the protection algorithms are unbalanced"),
    0x142: ("TPM_RC_COMMAND_SIZE", "commandSize is inconsistent with the command"),
    0x143: ("TPM_RC_COMMAND_CODE", "the command code is not supported"),
    0x144: ("TPM_RC_AUTHSIZE", "authorizationSize is out of range or inconsistent"),
    0x145: ("TPM_RC_AUTH_CONTEXT", "this command cannot take an authorization session"),
    0x146: ("TPM_RC_NV_RANGE", "NV offset plus size is out of range"),
    0x147: ("TPM_RC_NV_SIZE", "the requested NV allocation is too large"),
    0x148: ("TPM_RC_NV_LOCKED", "the NV index is locked for this access"),
    0x149: ("TPM_RC_NV_AUTHORIZATION", "this authorization may not access the NV index"),
    0x14A: ("TPM_RC_NV_UNINITIALIZED", "the NV index has never been written"),
    0x14B: ("TPM_RC_NV_SPACE", "not enough NV space for the index"),
    0x14C: ("TPM_RC_NV_DEFINED", "the NV index is already defined"),
    0x150: ("TPM_RC_BAD_CONTEXT", "the context blob is not valid"),
    0x151: ("TPM_RC_CPHASH", "cpHash is already set or does not match"),
    0x152: ("TPM_RC_PARENT", "the handle is not a valid parent"),
    0x153: ("TPM_RC_NEEDS_TEST", "some function needs testing first"),
    0x154: ("TPM_RC_NO_RESULT", "an internal function could not produce a result"),
    0x155: ("TPM_RC_SENSITIVE", "the sensitive area did not unmarshal correctly"),
}

# (name, meaning) of format-one error codes, by RC_FMT1 + n.
_FMT1_CODES: Final[Mapping[int, tuple[str, str]]] = {
    0x081: ("TPM_RC_ASYMMETRIC", "asymmetric algorithm not supported or not correct"),
    0x082: ("TPM_RC_ATTRIBUTES", "inconsistent attributes"),
    0x083: ("TPM_RC_HASH", "hash algorithm not supported or not appropriate"),
    0x084: ("TPM_RC_VALUE", "value is out of range or not correct for the context"),
    0x085: ("TPM_RC_HIERARCHY", "hierarchy is not enabled or not correct for the use"),
    0x087: ("TPM_RC_KEY_SIZE", "key size is not supported"),
    0x088: ("TPM_RC_MGF", "mask generation function not supported"),
    0x089: ("TPM_RC_MODE", "mode of operation not supported"),
    0x08A: ("TPM_RC_TYPE", "the type of the value is not appropriate for the use"),
    0x08B: ("TPM_RC_HANDLE", "the handle is not correct for the use"),
    0x08C: ("TPM_RC_KDF", "unsupported key derivation function or not appropriate"),
    0x08D: ("TPM_RC_RANGE", "value was out of allowed range"),
    0x08E: ("TPM_RC_AUTH_FAIL", "authorization failure without DA implications"),
    0x08F: ("TPM_RC_NONCE", "invalid nonce size or nonce value mismatch"),
    0x090: ("TPM_RC_PP", "authorization requires assertion of physical presence"),
    0x092: ("TPM_RC_SCHEME", "unsupported or incompatible scheme"),
    0x095: ("TPM_RC_SIZE", "structure is the wrong size"),
    0x096: ("TPM_RC_SYMMETRIC", "unsupported symmetric algorithm or key size"),
    0x097: ("TPM_RC_TAG", "incorrect structure tag"),
    0x098: ("TPM_RC_SELECTOR", "union selector is incorrect"),
    0x09A: ("TPM_RC_INSUFFICIENT", "not enough input for unmarshalling"),
    0x09B: ("TPM_RC_SIGNATURE", "the signature is not valid"),
    0x09C: ("TPM_RC_KEY", "key fields are not compatible with the selected use"),
    0x09D: ("TPM_RC_POLICY_FAIL", "a policy check failed"),
    0x09F: ("TPM_RC_INTEGRITY", "integrity check failed"),
    0x0A0: ("TPM_RC_TICKET", "invalid ticket"),
    0x0A1: ("TPM_RC_RESERVED_BITS", "reserved bits not set to zero as required"),
    0x0A2: ("TPM_RC_BAD_AUTH", "authorization failure with dictionary-attack implications"),
    0x0A3: ("TPM_RC_EXPIRED", "the policy has expired"),
    0x0A4: ("TPM_RC_POLICY_CC", "the policy's command code does not match the command"),
    0x0A5: ("TPM_RC_BINDING", "public and sensitive portions of an object do not match"),
    0x0A6: ("TPM_RC_CURVE", "curve not supported"),
    0x0A7: ("TPM_RC_ECC_POINT", "point is not on the required curve"),
}

# (name, meaning) of warnings, by RC_WARN + n.
_WARN_CODES: Final[Mapping[int, tuple[str, str]]] = {
    0x901: ("TPM_RC_CONTEXT_GAP", "the gap for context IDs is too large"),
    0x902: ("TPM_RC_OBJECT_MEMORY", "out of memory for object contexts"),
    0x903: ("TPM_RC_SESSION_MEMORY", "out of memory for session contexts"),
    0x904: ("TPM_RC_MEMORY", "out of shared object/session memory"),
    0x905: ("TPM_RC_SESSION_HANDLES", "out of session handles"),
    0x906: ("TPM_RC_OBJECT_HANDLES", "out of object handles"),
    0x907: ("TPM_RC_LOCALITY", "bad locality"),
    0x908: ("TPM_RC_YIELDED", "the TPM suspended the operation; retry the command"),
    0x909: ("TPM_RC_CANCELED", "the command was canceled"),
    0x90A: ("TPM_RC_TESTING", "the TPM is self-testing"),
    **{
        0x910 + n: (
            f"TPM_RC_REFERENCE_H{n}",
            f"handle {n} references a transient object not loaded",
        )
        for n in range(7)
    },
    **{
        0x918 + n: (f"TPM_RC_REFERENCE_S{n}", f"session {n} references a session not loaded")
        for n in range(7)
    },
    0x920: ("TPM_RC_NV_RATE", "the TPM is rate-limiting NV writes"),
    0x921: ("TPM_RC_LOCKOUT", "authorizations are locked out (dictionary-attack protection)"),
    0x922: ("TPM_RC_RETRY", "the TPM was not able to start the command; retry"),
    0x923: ("TPM_RC_NV_UNAVAILABLE", "the command needs NV and NV is not available"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TpmResponseCode:
    """A decoded TPM_RC (TPM 2.0 Part 2, section 6.6).

    Attributes:
        rc: the raw 32-bit response code.
        base: the code with the handle/session/parameter number removed
            (``TPM_RC_HANDLE`` is ``0x08B`` whichever handle was wrong).
        name: the spec name, e.g. ``"TPM_RC_HANDLE"``, or a description of the class
            when the code is not in the tables (vendor, TPM 1.2, unknown).
        meaning: a short explanation.
        format_one: whether the code is a format-one code (bit 7 set), which names the
            handle, session or parameter it is about.
        warning: whether it is a format-zero warning (retrying may succeed).
        parameter: 1-based parameter number (format one), else ``None``.
        handle: 1-based handle number (format one), else ``None``.
        session: 1-based session number (format one), else ``None``.
    """

    rc: int
    base: int
    name: str
    meaning: str
    format_one: bool
    warning: bool
    parameter: int | None
    handle: int | None
    session: int | None

    def __str__(self) -> str:
        where = ""
        if self.parameter is not None:
            where = f" (parameter {self.parameter})"
        elif self.handle is not None:
            where = f" (handle {self.handle})"
        elif self.session is not None:
            where = f" (session {self.session})"
        return f"{self.name} ({self.rc:#x}){where}: {self.meaning}"


def decode_response_code(rc: int) -> TpmResponseCode:
    """Decode a TPM 2.0 response code into its name, meaning and position.

    Format-one codes (bit 7 set) carry an error number in bits 0-5 and say which
    parameter (bit 6 set, number in bits 8-11), session (bit 11 set, number in bits
    8-10) or handle (number in bits 8-10) caused the error.  Format-zero codes with
    bit 8 set are TPM 2.0 errors, or warnings when bit 11 is also set; bit 10 marks
    vendor codes, and codes without bit 8 come from TPM 1.2.

    Args:
        rc: a 32-bit response code, as found in a response header.

    Returns:
        The decoded code.  Unknown values decode to a descriptive name rather than
        failing, since the number itself is always reported too.

    Raises:
        ValueError: if ``rc`` is not a 32-bit unsigned value.
    """
    if not 0 <= rc <= 0xFFFFFFFF:
        raise ValueError(f"response code out of range: {rc!r}")
    parameter = handle = session = None
    if rc == 0:
        return TpmResponseCode(
            rc=0,
            base=0,
            name="TPM_RC_SUCCESS",
            meaning="success",
            format_one=False,
            warning=False,
            parameter=None,
            handle=None,
            session=None,
        )
    if rc > 0xFFF:
        name, meaning = "non-TPM response code", "upper bits set: a software layer's code"
        return TpmResponseCode(
            rc=rc,
            base=rc,
            name=name,
            meaning=meaning,
            format_one=False,
            warning=False,
            parameter=None,
            handle=None,
            session=None,
        )
    if rc & _RC_FMT1:
        base = _RC_FMT1 | (rc & 0x3F)
        number = (rc >> 8) & 0xF
        if rc & 0x40:
            parameter = number
        elif rc & 0x800:
            session = (number & 0x7) or None
        else:
            handle = (number & 0x7) or None
        name, meaning = _FMT1_CODES.get(base, (f"format-one error {base:#05x}", "unknown code"))
        return TpmResponseCode(
            rc=rc,
            base=base,
            name=name,
            meaning=meaning,
            format_one=True,
            warning=False,
            parameter=parameter,
            handle=handle,
            session=session,
        )
    if not rc & _RC_VER1:
        name, meaning = "TPM 1.2 response code", "a TPM 1.2 (or pre-2.0) error"
        warning = False
    elif rc & 0x400:
        name, meaning = "vendor response code", "defined by the TPM vendor"
        warning = bool(rc & 0x800)
    elif rc & 0x800:
        name, meaning = _WARN_CODES.get(rc, (f"warning {rc:#05x}", "unknown warning"))
        warning = True
    else:
        name, meaning = _FMT0_CODES.get(rc, (f"error {rc:#05x}", "unknown format-zero error"))
        warning = False
    return TpmResponseCode(
        rc=rc,
        base=rc,
        name=name,
        meaning=meaning,
        format_one=False,
        warning=warning,
        parameter=None,
        handle=None,
        session=None,
    )


class TpmCommandError(AttesterError):
    """The TPM executed a command and answered with an error response code.

    Attributes:
        rc: the raw response code.
        command_code: the TPM_CC of the failed command.
        code: the decoded response code (name, meaning, handle/session/parameter).
    """

    def __init__(self, rc: int, command_code: int) -> None:
        self.rc = rc
        self.command_code = command_code
        self.code = decode_response_code(rc)
        try:
            command = f"TPM2_{TpmCc(command_code).name}"
        except ValueError:
            command = f"command {command_code:#x}"
        super().__init__(f"{command} failed: {self.code}")


class TpmResponseFormatError(AttesterError):
    """A TPM (or what answered in its place) sent a response that breaks the format.

    Attributes:
        command_code: the TPM_CC of the command whose response is malformed.
        offset: byte offset in the response where the problem was found, when known.
    """

    def __init__(self, message: str, *, command_code: int, offset: int | None = None) -> None:
        self.command_code = command_code
        self.offset = offset
        where = f" at offset {offset:#x}" if offset is not None else ""
        super().__init__(f"malformed response to command {command_code:#x}{where}: {message}")


# --------------------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------------------


class TpmTransport(Protocol):
    """Moves one marshalled TPM command to a TPM and returns its response."""

    def transmit(self, command: bytes) -> bytes:
        """Send one command and return one complete response.

        Args:
            command: a complete, marshalled TPM command.

        Returns:
            The complete response, exactly as many bytes as its header's size says.

        Raises:
            AttesterError: on I/O errors, timeouts, or a peer that closes.
        """
        ...

    def close(self) -> None:
        """Release the underlying device or connection."""
        ...


def _check_command_frame(command: bytes) -> None:
    if len(command) < _HEADER.size:
        raise ValueError("a TPM command is at least 10 bytes long")
    _, size, _ = _HEADER.unpack_from(command)
    if size != len(command):
        raise ValueError(f"command header says {size} bytes, command has {len(command)}")


def _response_size(header: bytes) -> int:
    """Total response size from a 10-byte header, bounded by MAX_RESPONSE_SIZE."""
    size = int.from_bytes(header[2:6], "big")
    if not _HEADER.size <= size <= MAX_RESPONSE_SIZE:
        raise AttesterError(f"TPM response header announces an impossible size {size}")
    return size


@final
class DeviceTransport:
    """The Linux TPM character device (``/dev/tpmrm0``, or ``/dev/tpm0``).

    Use the resource-managed device ``/dev/tpmrm0``: the kernel then swaps transient
    objects and sessions in and out, so several processes can use the TPM and handles
    created through this transport are flushed when it is closed.  The device is
    opened non-blocking and every wait is bounded by ``timeout``.  After a failed
    exchange (timeout, I/O error, malformed size) the device is closed, which makes the
    kernel drop the command still in flight and this transport's transient handles, and
    it is reopened for the next command: a late response is never taken for the answer
    to a later command.

    Args:
        path: the device node.
        timeout: seconds to wait for each command's response.

    Raises:
        AttesterUnavailable: if the device does not exist or may not be opened.
        AttesterError: on any other error opening it.
    """

    def __init__(self, path: str = "/dev/tpmrm0", *, timeout: float = COMMAND_TIMEOUT) -> None:
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._closed = False
        self._fd: int | None = self._open()

    def _open(self) -> int:
        try:
            return os.open(self._path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            raise AttesterUnavailable(f"TPM device {self._path} is not usable: {exc}") from exc
        except OSError as exc:
            raise AttesterError(f"cannot open TPM device {self._path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"DeviceTransport({self._path!r})"

    def _wait(self, fd: int, events: int, deadline_left: float) -> None:
        poller = select.poll()
        poller.register(fd, events)
        ready = poller.poll(max(0, int(deadline_left * 1000)))
        if not ready:
            raise AttesterError(f"TPM device {self._path} did not answer within {self._timeout} s")
        _, revents = ready[0]
        if revents & (select.POLLERR | select.POLLNVAL) or (
            revents & select.POLLHUP and not revents & select.POLLIN
        ):
            raise AttesterError(f"TPM device {self._path} reported an error (poll {revents:#x})")

    def transmit(self, command: bytes) -> bytes:
        """Write one command to the device and read its response.

        Args:
            command: a complete, marshalled TPM command.

        Returns:
            The complete response.

        Raises:
            ValueError: if ``command`` is not framed correctly.
            AttesterError: on I/O errors, timeouts or a truncated response.
        """
        _check_command_frame(command)
        with self._lock:
            if self._closed:
                raise AttesterError(f"TPM device {self._path} is closed")
            if self._fd is None:
                self._fd = self._open()
            fd = self._fd
            try:
                return self._transmit(fd, command)
            except OSError as exc:
                self._drop()
                raise AttesterError(f"I/O error on TPM device {self._path}: {exc}") from exc
            except AttesterError:
                self._drop()
                raise

    def _drop(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _transmit(self, fd: int, command: bytes) -> bytes:
        deadline = time.monotonic() + self._timeout
        view = memoryview(command)
        while view:
            self._wait(fd, select.POLLOUT, deadline - time.monotonic())
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            view = view[written:]
        response = bytearray()
        expected = _HEADER.size
        while len(response) < expected:
            self._wait(fd, select.POLLIN, deadline - time.monotonic())
            try:
                chunk = os.read(fd, MAX_RESPONSE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    raise AttesterError(f"TPM device {self._path} failed the command") from exc
                raise
            if not chunk:
                raise AttesterError(f"TPM device {self._path} closed mid-response")
            response += chunk
            if len(response) >= _HEADER.size:
                expected = _response_size(bytes(response[: _HEADER.size]))
        if len(response) != expected:
            raise AttesterError(
                f"TPM device {self._path} returned {len(response)} bytes, header says {expected}"
            )
        return bytes(response)

    def close(self) -> None:
        """Close the device (idempotent)."""
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> DeviceTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AttesterError(f"{what}: connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


@final
class SwtpmSocketTransport:
    """swtpm's TCP interface: the raw command channel plus the control channel.

    swtpm (``swtpm socket --server type=tcp,... --ctrl type=tcp,...``) reads raw TPM
    commands on its server port and answers with raw responses, one connection at a
    time.  Its control channel takes big-endian ``u32`` command numbers
    (:class:`SwtpmCtrlCommand`) and answers with a ``u32`` result, which is how a
    virtual machine monitor powers the TPM on (``CMD_INIT``) and off.  Both channels
    are blocking sockets with timeouts and are (re)connected on first use; after a
    failed command the data connection is dropped, so a late answer can never be
    taken for the next command's response.

    Args:
        host: address swtpm listens on (loopback in every supported setup).
        port: the server (command) port.
        ctrl_port: the control port, or ``None`` if the control channel is not used.
        timeout: seconds each command may take.
        connect_timeout: seconds a connection attempt may take.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ctrl_port: int | None = None,
        timeout: float = COMMAND_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.ctrl_port = ctrl_port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._data: socket.socket | None = None
        self._ctrl: socket.socket | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"SwtpmSocketTransport(host={self.host!r}, port={self.port}, "
            f"ctrl_port={self.ctrl_port})"
        )

    def _connect(self, port: int, what: str) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, port), timeout=self.connect_timeout)
        except ConnectionRefusedError as exc:
            raise AttesterUnavailable(
                f"no swtpm {what} listening on {self.host}:{port}: {exc}"
            ) from exc
        except OSError as exc:
            raise AttesterError(
                f"cannot connect to swtpm {what} {self.host}:{port}: {exc}"
            ) from exc
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def transmit(self, command: bytes) -> bytes:
        """Send one command on the server channel and read its response.

        Args:
            command: a complete, marshalled TPM command.

        Returns:
            The complete response.

        Raises:
            ValueError: if ``command`` is not framed correctly.
            AttesterUnavailable: if nothing listens on the server port.
            AttesterError: on a timeout, a reset or a connection closed mid-response.
        """
        _check_command_frame(command)
        with self._lock:
            if self._data is None:
                self._data = self._connect(self.port, "server")
            sock = self._data
            what = f"swtpm server {self.host}:{self.port}"
            try:
                sock.sendall(command)
                header = _recv_exact(sock, _HEADER.size, what)
                size = _response_size(header)
                return header + _recv_exact(sock, size - _HEADER.size, what)
            except TimeoutError as exc:
                self._drop_data()
                raise AttesterError(f"{what}: no response within {self.timeout} s") from exc
            except OSError as exc:
                self._drop_data()
                raise AttesterError(f"{what}: {exc}") from exc
            except AttesterError:
                self._drop_data()
                raise

    def _drop_data(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None

    def _ctrl_command(self, command: SwtpmCtrlCommand, payload: bytes, reply_size: int) -> bytes:
        if self.ctrl_port is None:
            raise AttesterError("this swtpm transport has no control channel configured")
        with self._lock:
            if self._ctrl is None:
                self._ctrl = self._connect(self.ctrl_port, "control channel")
            sock = self._ctrl
            what = f"swtpm control channel {self.host}:{self.ctrl_port}"
            try:
                sock.sendall(struct.pack(">I", command) + payload)
                return _recv_exact(sock, reply_size, what)
            except (OSError, AttesterError) as exc:
                sock.close()
                self._ctrl = None
                if isinstance(exc, AttesterError):
                    raise
                if isinstance(exc, TimeoutError):
                    raise AttesterError(f"{what}: no answer within {self.timeout} s") from exc
                raise AttesterError(f"{what}: {exc}") from exc

    @staticmethod
    def _check_result(command: SwtpmCtrlCommand, reply: bytes) -> None:
        (result,) = struct.unpack_from(">I", reply)
        if result != 0:
            raise AttesterError(f"swtpm control command {command.name} failed: result {result:#x}")

    def ctrl_get_capability(self) -> int:
        """Return swtpm's capability bit mask (``CMD_GET_CAPABILITY``).

        Raises:
            AttesterError: on I/O errors or when no control port is configured.
        """
        reply = self._ctrl_command(SwtpmCtrlCommand.GET_CAPABILITY, b"", 8)
        (caps,) = struct.unpack(">Q", reply)
        return int(caps)

    def ctrl_init(self, *, delete_volatile: bool = False) -> None:
        """Power the TPM on (``CMD_INIT``), as a VM monitor does at VM start.

        Args:
            delete_volatile: also delete saved volatile state (init flag 1).

        Raises:
            AttesterError: if swtpm refuses or on I/O errors.
        """
        flags = 1 if delete_volatile else 0
        reply = self._ctrl_command(SwtpmCtrlCommand.INIT, struct.pack(">I", flags), 4)
        self._check_result(SwtpmCtrlCommand.INIT, reply)

    def ctrl_stop(self) -> None:
        """Stop the TPM (``CMD_STOP``) and keep the swtpm process running.

        Raises:
            AttesterError: if swtpm refuses or on I/O errors.
        """
        reply = self._ctrl_command(SwtpmCtrlCommand.STOP, b"", 4)
        self._check_result(SwtpmCtrlCommand.STOP, reply)

    def ctrl_shutdown(self) -> None:
        """Stop the TPM and make the swtpm process exit (``CMD_SHUTDOWN``).

        Raises:
            AttesterError: if swtpm refuses or on I/O errors.
        """
        reply = self._ctrl_command(SwtpmCtrlCommand.SHUTDOWN, b"", 4)
        self._check_result(SwtpmCtrlCommand.SHUTDOWN, reply)

    def close(self) -> None:
        """Close both connections (idempotent); swtpm keeps running."""
        with self._lock:
            self._drop_data()
            if self._ctrl is not None:
                self._ctrl.close()
                self._ctrl = None

    def __enter__(self) -> SwtpmSocketTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Marshalling
# --------------------------------------------------------------------------------------


class _Marshallable(Protocol):
    """A structure of the format layer that marshals itself (e.g. a TpmtPublic)."""

    def to_bytes(self) -> bytes: ...


def _tpm2b(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"TPM2B payload too long: {len(data)} bytes")
    return struct.pack(">H", len(data)) + data


def _template_bytes(template: bytes | _Marshallable) -> bytes:
    if isinstance(template, bytes | bytearray | memoryview):
        return bytes(template)
    return template.to_bytes()


def _sensitive_create(auth: bytes, data: bytes = b"") -> bytes:
    return _tpm2b(_tpm2b(auth) + _tpm2b(data))


def _pcr_selection(selection: Mapping[TpmAlgId, Iterable[int]]) -> bytes:
    """Marshal a TPML_PCR_SELECTION from ``{hash_alg: pcr indices}`` (insertion order)."""
    out = [struct.pack(">I", len(selection))]
    for alg, indices in selection.items():
        pcrs = sorted(set(indices))
        if any(not 0 <= i < 256 for i in pcrs):
            raise ValueError(f"PCR index out of range in {pcrs}")
        size = max(3, (pcrs[-1] // 8 + 1) if pcrs else 3)
        bitmap = bytearray(size)
        for i in pcrs:
            bitmap[i // 8] |= 1 << (i % 8)
        out.append(struct.pack(">HB", alg, size) + bytes(bitmap))
    return b"".join(out)


class SigScheme(NamedTuple):
    """A TPMT_SIG_SCHEME: signature scheme and hash, both TPM_ALG_IDs."""

    #: The scheme (TPM_ALG_RSASSA 0x0014, TPM_ALG_RSAPSS 0x0016, TPM_ALG_ECDSA 0x0018...).
    scheme: int
    #: The hash algorithm (TPM_ALG_SHA256 0x000B...).
    hash_alg: int

    def to_bytes(self) -> bytes:
        """Marshal as TPMT_SIG_SCHEME."""
        return struct.pack(">HH", self.scheme, self.hash_alg)


def _sig_scheme(scheme: SigScheme | None) -> bytes:
    return struct.pack(">H", _ALG_NULL) if scheme is None else scheme.to_bytes()


class _Auth(NamedTuple):
    handle: int
    attributes: int
    hmac: bytes

    def to_bytes(self) -> bytes:
        # nonceCaller is empty: password sessions take none, and the policy sessions
        # used here are unsalted and unbound, so no HMAC is computed over nonces.
        return (
            struct.pack(">I", self.handle)
            + _tpm2b(b"")
            + bytes([self.attributes])
            + _tpm2b(self.hmac)
        )


_CONTINUE_SESSION: Final = 0x01


def _password(auth: bytes) -> _Auth:
    return _Auth(TpmRh.RS_PW, 0, auth)


def _policy(session: int) -> _Auth:
    # The caller owns the policy session's lifetime, so keep it alive after use.
    return _Auth(session, _CONTINUE_SESSION, b"")


def _auth_for(session: int | None, auth: bytes) -> _Auth:
    return _password(auth) if session is None else _policy(session)


class _Reader:
    """Strict big-endian reader over one response's parameter area."""

    __slots__ = ("_base", "_cc", "_data", "_pos")

    def __init__(self, data: bytes, cc: int, base: int = 0) -> None:
        self._data = data
        self._pos = 0
        self._cc = cc
        self._base = base

    @property
    def position(self) -> int:
        return self._pos

    def slice(self, start: int) -> bytes:
        return self._data[start : self._pos]

    def fail(self, message: str) -> TpmResponseFormatError:
        return TpmResponseFormatError(message, command_code=self._cc, offset=self._base + self._pos)

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise self.fail(f"need {n} bytes, {len(self._data) - self._pos} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def tpm2b_whole(self) -> bytes:
        """A TPM2B returned with its size prefix (e.g. TPM2B_PUBLIC as the TPM sent it)."""
        start = self._pos
        self.tpm2b()
        return self._data[start : self._pos]

    def done(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} unexpected trailing bytes")


def _read_signature(r: _Reader) -> bytes:
    """Consume one TPMT_SIGNATURE and return its marshalled bytes."""
    start = r.position
    sig_alg = r.u16()
    if sig_alg == _ALG_NULL:
        pass
    elif sig_alg in (_ALG_RSASSA, _ALG_RSAPSS):
        r.u16()
        r.tpm2b()
    elif sig_alg in (_ALG_ECDSA, _ALG_ECDAA, _ALG_SM2, _ALG_ECSCHNORR):
        r.u16()
        r.tpm2b()
        r.tpm2b()
    elif sig_alg == _ALG_HMAC:
        hash_alg = r.u16()
        size = _DIGEST_SIZES.get(hash_alg)
        if size is None:
            raise r.fail(f"unknown HMAC hash algorithm {hash_alg:#x}")
        r.take(size)
    else:
        raise r.fail(f"unknown signature algorithm {sig_alg:#x}")
    return r.slice(start)


def _read_pcr_selection(r: _Reader) -> dict[TpmAlgId, list[int]]:
    count = r.u32()
    if count > 16:
        raise r.fail(f"implausible PCR bank count {count}")
    result: dict[TpmAlgId, list[int]] = {}
    for _ in range(count):
        value = r.u16()
        if value not in _DIGEST_SIZES:
            raise r.fail(f"{value:#06x} is not a PCR bank algorithm")
        alg = TpmAlgId(value)
        bitmap = r.take(r.u8())
        result[alg] = [
            8 * j + i for j, byte in enumerate(bitmap) for i in range(8) if byte >> i & 1
        ]
    return result


# --------------------------------------------------------------------------------------
# Command results
# --------------------------------------------------------------------------------------


class CreatedPrimary(NamedTuple):
    """Result of TPM2_CreatePrimary."""

    #: Transient handle of the new primary object.
    handle: int
    #: TPM2B_PUBLIC of the object, with its size prefix, as the TPM returned it.
    public: bytes
    #: Name of the object (nameAlg || H(TPMT_PUBLIC)).
    name: bytes


class CreatedObject(NamedTuple):
    """Result of TPM2_Create: the key blobs to give TPM2_Load."""

    #: TPM2B_PRIVATE, with its size prefix (encrypted under the parent).
    private: bytes
    #: TPM2B_PUBLIC, with its size prefix.
    public: bytes


class LoadedObject(NamedTuple):
    """Result of TPM2_Load."""

    #: Transient handle of the loaded object.
    handle: int
    #: Name of the object.
    name: bytes


class PublicArea(NamedTuple):
    """Result of TPM2_ReadPublic."""

    #: TPM2B_PUBLIC, with its size prefix.
    public: bytes
    #: Name of the object.
    name: bytes
    #: Qualified name of the object.
    qualified_name: bytes


class Attestation(NamedTuple):
    """Result of TPM2_Quote and TPM2_Certify."""

    #: TPM2B_ATTEST, with its size prefix; the signature covers ``attest[2:]``.
    attest: bytes
    #: TPMT_SIGNATURE.
    signature: bytes


class AuthSession(NamedTuple):
    """Result of TPM2_StartAuthSession."""

    #: Session handle.
    handle: int
    #: The TPM's first nonce.
    nonce_tpm: bytes


class NvPublic(NamedTuple):
    """Result of TPM2_NV_ReadPublic (the fields of TPMS_NV_PUBLIC, plus the name)."""

    #: The NV index handle.
    nv_index: int
    #: Hash algorithm of the index's name.
    name_alg: int
    #: TPMA_NV attributes.
    attributes: TpmaNv
    #: Policy digest of the index (may be empty).
    auth_policy: bytes
    #: Size of the index's data in bytes.
    data_size: int
    #: Name of the index.
    name: bytes


# --------------------------------------------------------------------------------------
# The TPM
# --------------------------------------------------------------------------------------


@final
class Tpm:
    """Typed TPM 2.0 commands over a :class:`TpmTransport`.

    Methods send one command each (a few send several, as documented), parse the
    response strictly and raise :class:`TpmCommandError` when the TPM answers with an
    error code.  Authorization values are passed as bytes and sent in password
    sessions; objects whose user role needs a policy (the EK) take a policy session
    handle instead, which :meth:`endorsement_policy_session` provides.  A ``Tpm`` is
    not meant to be shared between threads (a lock keeps commands whole if it is).

    Args:
        transport: where commands go.
    """

    def __init__(self, transport: TpmTransport) -> None:
        self._transport = transport
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Tpm({self._transport!r})"

    @property
    def transport(self) -> TpmTransport:
        """The transport commands go through."""
        return self._transport

    def close(self) -> None:
        """Close the transport."""
        self._transport.close()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- framing ---------------------------------------------------------------------

    def _execute(
        self,
        cc: TpmCc,
        *,
        handles: Iterable[int] = (),
        auths: Iterable[_Auth] = (),
        params: bytes = b"",
        response_handles: int = 0,
    ) -> tuple[list[int], _Reader]:
        """Run one command; return the response handles and a reader over its parameters."""
        auth_list = list(auths)
        body = b"".join(struct.pack(">I", h) for h in handles)
        if auth_list:
            area = b"".join(a.to_bytes() for a in auth_list)
            body += struct.pack(">I", len(area)) + area
            tag = TpmSt.SESSIONS
        else:
            tag = TpmSt.NO_SESSIONS
        body += params
        command = _HEADER.pack(tag, _HEADER.size + len(body), cc) + body
        for attempt in range(_RETRIES + 1):
            with self._lock:
                response = self._transport.transmit(command)
            try:
                return self._parse_response(cc, tag, len(auth_list), response_handles, response)
            except TpmCommandError as exc:
                if exc.rc not in _RETRY_CODES or attempt == _RETRIES:
                    raise
            time.sleep(min(_RETRY_DELAY * 2**attempt, 0.5))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _parse_response(
        cc: TpmCc, tag: TpmSt, n_auths: int, n_handles: int, response: bytes
    ) -> tuple[list[int], _Reader]:
        r = _Reader(response, cc)
        rtag, size, rc = r.u16(), r.u32(), r.u32()
        if size != len(response):
            raise TpmResponseFormatError(
                f"size field {size} but {len(response)} bytes", command_code=cc, offset=2
            )
        if rtag not in (TpmSt.NO_SESSIONS, TpmSt.SESSIONS):
            raise TpmResponseFormatError(f"unknown tag {rtag:#x}", command_code=cc, offset=0)
        if rc != 0:
            if size != _HEADER.size:
                raise TpmResponseFormatError(
                    "an error response must be the header alone", command_code=cc, offset=10
                )
            raise TpmCommandError(rc, cc)
        if rtag != tag:
            raise TpmResponseFormatError(
                f"response tag {rtag:#x} does not match command tag {tag:#x}",
                command_code=cc,
                offset=0,
            )
        handles = [r.u32() for _ in range(n_handles)]
        if tag == TpmSt.NO_SESSIONS:
            start = r.position
            return handles, _Reader(r.take(len(response) - start), cc, start)
        param_size = r.u32()
        start = r.position
        params = r.take(param_size)
        for _ in range(n_auths):
            r.tpm2b()  # nonceTPM
            r.u8()  # sessionAttributes
            r.tpm2b()  # acknowledgment (HMAC), empty for password/unbound policy
        r.done()
        return handles, _Reader(params, cc, start)

    # -- start-up and housekeeping ---------------------------------------------------

    def startup(self, clear: bool = True) -> None:
        """TPM2_Startup: first command after power-on.

        Args:
            clear: ``TPM_SU_CLEAR`` (a TPM Reset or Restart) if true, else ``TPM_SU_STATE``
                (resume saved state).

        Raises:
            TpmCommandError: e.g. ``TPM_RC_INITIALIZE`` if the TPM is already started.
            AttesterError: on transport errors.
        """
        _, r = self._execute(TpmCc.STARTUP, params=struct.pack(">H", 0 if clear else 1))
        r.done()

    def shutdown(self, clear: bool = True) -> None:
        """TPM2_Shutdown: prepare for power-off.

        Args:
            clear: ``TPM_SU_CLEAR`` if true, else ``TPM_SU_STATE`` (save state for resume).

        Raises:
            TpmCommandError: if the TPM refuses.
            AttesterError: on transport errors.
        """
        _, r = self._execute(TpmCc.SHUTDOWN, params=struct.pack(">H", 0 if clear else 1))
        r.done()

    def get_random(self, count: int) -> bytes:
        """TPM2_GetRandom, repeated until ``count`` bytes are gathered.

        Args:
            count: number of random bytes wanted.

        Returns:
            ``count`` bytes from the TPM's random number generator.

        Raises:
            ValueError: if ``count`` is negative.
            TpmCommandError: if the TPM refuses.
            AttesterError: on transport errors or an empty answer.
        """
        if count < 0:
            raise ValueError("count must not be negative")
        out = bytearray()
        while len(out) < count:
            want = min(count - len(out), 0xFFFF)
            _, r = self._execute(TpmCc.GET_RANDOM, params=struct.pack(">H", want))
            chunk = r.tpm2b()
            r.done()
            if not chunk or len(chunk) > want:
                raise TpmResponseFormatError(
                    f"asked for {want} random bytes, got {len(chunk)}",
                    command_code=TpmCc.GET_RANDOM,
                )
            out += chunk
        return bytes(out)

    def get_property(self, prop: int) -> int:
        """TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES) for one fixed or variable property.

        Args:
            prop: a TPM_PT value, e.g. ``0x12C`` (TPM_PT_NV_BUFFER_MAX).

        Returns:
            The property's value.

        Raises:
            TpmCommandError: if the TPM refuses.
            AttesterError: if the TPM does not report that property.
        """
        _, r = self._execute(TpmCc.GET_CAPABILITY, params=struct.pack(">III", 6, prop, 1))
        r.u8()  # moreData
        if r.u32() != 6:
            raise TpmResponseFormatError("capability mismatch", command_code=TpmCc.GET_CAPABILITY)
        count = r.u32()
        values = [(r.u32(), r.u32()) for _ in range(count)]
        r.done()
        for tag, value in values:
            if tag == prop:
                return value
        raise AttesterError(f"TPM does not report property {prop:#x}")

    def get_handles(self, first: int, count: int = 64) -> list[int]:
        """TPM2_GetCapability(TPM_CAP_HANDLES): handles from ``first`` in its range.

        Args:
            first: first handle, e.g. ``0x81000000`` for persistent objects or
                ``0x01000000`` for NV indices.
            count: at most this many handles are returned.

        Returns:
            Handles of the same type as ``first``, in ascending order.

        Raises:
            TpmCommandError: if the TPM refuses.
            AttesterError: on transport errors.
        """
        _, r = self._execute(TpmCc.GET_CAPABILITY, params=struct.pack(">III", 1, first, count))
        r.u8()
        if r.u32() != 1:
            raise TpmResponseFormatError("capability mismatch", command_code=TpmCc.GET_CAPABILITY)
        n = r.u32()
        handles = [r.u32() for _ in range(n)]
        r.done()
        return handles

    def flush_context(self, handle: int) -> None:
        """TPM2_FlushContext: unload a transient object or end a session.

        Args:
            handle: transient object or session handle.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_HANDLE`` if nothing is loaded there.
            AttesterError: on transport errors.
        """
        _, r = self._execute(TpmCc.FLUSH_CONTEXT, params=struct.pack(">I", handle))
        r.done()

    def evict_control(
        self,
        object_handle: int,
        persistent_handle: int,
        *,
        auth_handle: int = TpmRh.OWNER,
        auth: bytes = b"",
    ) -> None:
        """TPM2_EvictControl: make a transient object persistent, or evict a persistent one.

        To persist, pass the transient ``object_handle`` and the target
        ``persistent_handle``; to evict, pass the persistent handle as both.

        Args:
            object_handle: the object to persist or evict.
            persistent_handle: the persistent handle (0x81xxxxxx).
            auth_handle: owner (or platform) hierarchy.
            auth: that hierarchy's auth value.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_NV_DEFINED`` if the persistent handle is taken.
            AttesterError: on transport errors.
        """
        _, r = self._execute(
            TpmCc.EVICT_CONTROL,
            handles=(auth_handle, object_handle),
            auths=(_password(auth),),
            params=struct.pack(">I", persistent_handle),
        )
        r.done()

    # -- keys -------------------------------------------------------------------------

    def create_primary(
        self,
        hierarchy: int,
        template: bytes | _Marshallable,
        *,
        hierarchy_auth: bytes = b"",
        auth: bytes = b"",
    ) -> CreatedPrimary:
        """TPM2_CreatePrimary: derive a primary key from a hierarchy's seed.

        The same template on the same seed gives the same key; a fresh TPM (new seeds)
        gives a new one.

        Args:
            hierarchy: ``TpmRh.ENDORSEMENT``, ``TpmRh.OWNER``, ``TpmRh.PLATFORM`` or
                ``TpmRh.NULL``.
            template: marshalled TPMT_PUBLIC (bytes), or a format-layer object with
                ``to_bytes()``.
            hierarchy_auth: the hierarchy's auth value.
            auth: auth value for the new key.

        Returns:
            The transient handle, TPM2B_PUBLIC and Name of the new key.

        Raises:
            TpmCommandError: if the TPM rejects the template or the authorization.
            AttesterError: on transport errors.
        """
        params = (
            _sensitive_create(auth)
            + _tpm2b(_template_bytes(template))
            + _tpm2b(b"")
            + struct.pack(">I", 0)
        )
        handles, r = self._execute(
            TpmCc.CREATE_PRIMARY,
            handles=(hierarchy,),
            auths=(_password(hierarchy_auth),),
            params=params,
            response_handles=1,
        )
        public = r.tpm2b_whole()
        r.tpm2b()  # creationData
        r.tpm2b()  # creationHash
        r.u16(), r.u32(), r.tpm2b()  # creationTicket
        name = r.tpm2b()
        r.done()
        return CreatedPrimary(handles[0], public, name)

    def create(
        self,
        parent: int,
        template: bytes | _Marshallable,
        *,
        parent_session: int | None = None,
        parent_auth: bytes = b"",
        auth: bytes = b"",
    ) -> CreatedObject:
        """TPM2_Create: create an ordinary key under a loaded parent.

        Args:
            parent: handle of the parent (a storage key, or the EK).
            template: marshalled TPMT_PUBLIC, or an object with ``to_bytes()``.
            parent_session: a policy session authorizing the parent (needed for the EK,
                see :meth:`endorsement_policy_session`); ``None`` uses a password.
            parent_auth: the parent's auth value for the password session.
            auth: auth value for the new key.

        Returns:
            TPM2B_PRIVATE and TPM2B_PUBLIC of the new key, to pass to :meth:`load`.

        Raises:
            TpmCommandError: if the TPM refuses.
            AttesterError: on transport errors.
        """
        params = (
            _sensitive_create(auth)
            + _tpm2b(_template_bytes(template))
            + _tpm2b(b"")
            + struct.pack(">I", 0)
        )
        _, r = self._execute(
            TpmCc.CREATE,
            handles=(parent,),
            auths=(_auth_for(parent_session, parent_auth),),
            params=params,
        )
        private = r.tpm2b_whole()
        public = r.tpm2b_whole()
        r.tpm2b()  # creationData
        r.tpm2b()  # creationHash
        r.u16(), r.u32(), r.tpm2b()  # creationTicket
        r.done()
        return CreatedObject(private, public)

    def load(
        self,
        parent: int,
        private: bytes,
        public: bytes,
        *,
        parent_session: int | None = None,
        parent_auth: bytes = b"",
    ) -> LoadedObject:
        """TPM2_Load: load a key created by :meth:`create`.

        Args:
            parent: handle of the parent the key was created under.
            private: TPM2B_PRIVATE with its size prefix.
            public: TPM2B_PUBLIC with its size prefix.
            parent_session: policy session for the parent, or ``None`` for a password.
            parent_auth: the parent's auth value for the password session.

        Returns:
            The transient handle and Name of the loaded key.

        Raises:
            TpmCommandError: if the TPM refuses (wrong parent, corrupted blob...).
            AttesterError: on transport errors.
        """
        handles, r = self._execute(
            TpmCc.LOAD,
            handles=(parent,),
            auths=(_auth_for(parent_session, parent_auth),),
            params=bytes(private) + bytes(public),
            response_handles=1,
        )
        name = r.tpm2b()
        r.done()
        return LoadedObject(handles[0], name)

    def read_public(self, handle: int) -> PublicArea:
        """TPM2_ReadPublic: the public area and names of a loaded or persistent object.

        Args:
            handle: object handle.

        Returns:
            TPM2B_PUBLIC, Name and qualified Name.

        Raises:
            TpmCommandError: ``TPM_RC_HANDLE`` if no object is there.
            AttesterError: on transport errors.
        """
        _, r = self._execute(TpmCc.READ_PUBLIC, handles=(handle,))
        public = r.tpm2b_whole()
        name = r.tpm2b()
        qualified = r.tpm2b()
        r.done()
        return PublicArea(public, name, qualified)

    # -- PCRs -------------------------------------------------------------------------

    def pcr_read(
        self, selection: Mapping[TpmAlgId, Iterable[int]]
    ) -> dict[TpmAlgId, dict[int, bytes]]:
        """TPM2_PCR_Read, repeated until every selected PCR has been read.

        A TPM returns at most eight digests per call, so larger selections take
        several commands; the PCRs could change between them (use a quote when
        consistency matters).

        Args:
            selection: ``{bank: PCR indices}``, e.g. ``{TpmAlgId.SHA256: range(24)}``.

        Returns:
            ``{bank: {index: value}}`` with banks in the order given and indices
            ascending (the form ``ratls._tpm_quote.verify_quote`` takes).

        Raises:
            ValueError: for an index outside 0..255.
            TpmCommandError: if the TPM refuses.
            AttesterError: if a selected bank or PCR is not implemented.
        """
        remaining = {alg: sorted(set(pcrs)) for alg, pcrs in selection.items()}
        values: dict[TpmAlgId, dict[int, bytes]] = {TpmAlgId(alg): {} for alg in remaining}
        while any(remaining.values()):
            request = {alg: pcrs for alg, pcrs in remaining.items() if pcrs}
            _, r = self._execute(TpmCc.PCR_READ, params=_pcr_selection(request))
            r.u32()  # pcrUpdateCounter
            returned = _read_pcr_selection(r)
            count = r.u32()
            digests = [r.tpm2b() for _ in range(count)]
            r.done()
            flat = [(alg, i) for alg, pcrs in returned.items() for i in pcrs]
            if len(flat) != count:
                raise TpmResponseFormatError(
                    f"{len(flat)} PCRs selected but {count} digests", command_code=TpmCc.PCR_READ
                )
            if not flat:
                raise AttesterError(f"TPM returned none of the requested PCRs {request}")
            for (alg, i), digest in zip(flat, digests, strict=True):
                if alg not in remaining or i not in remaining[alg]:
                    raise TpmResponseFormatError(
                        f"PCR {alg:#x}:{i} was not requested", command_code=TpmCc.PCR_READ
                    )
                values[alg][i] = digest
                remaining[alg].remove(i)
        return {TpmAlgId(alg): dict(sorted(v.items())) for alg, v in values.items()}

    def pcr_extend(self, pcr: int, digests: Mapping[TpmAlgId, bytes], *, auth: bytes = b"") -> None:
        """TPM2_PCR_Extend: new value = H(old value || digest), per bank.

        Args:
            pcr: PCR index.
            digests: ``{hash_alg: digest}`` - one digest per bank to extend.
            auth: the PCR's auth value (empty for the usual PCRs).

        Raises:
            ValueError: if a digest has the wrong size for its algorithm.
            TpmCommandError: if the TPM refuses (e.g. a locality-protected PCR).
            AttesterError: on transport errors.
        """
        parts = [struct.pack(">I", len(digests))]
        for alg, digest in digests.items():
            size = _DIGEST_SIZES.get(alg)
            if size is not None and len(digest) != size:
                raise ValueError(f"digest for algorithm {alg:#x} must be {size} bytes")
            parts.append(struct.pack(">H", alg) + bytes(digest))
        _, r = self._execute(
            TpmCc.PCR_EXTEND, handles=(pcr,), auths=(_password(auth),), params=b"".join(parts)
        )
        r.done()

    # -- attestation ------------------------------------------------------------------

    def quote(
        self,
        ak: int,
        qualifying_data: bytes,
        selection: Mapping[TpmAlgId, Iterable[int]],
        scheme: SigScheme | None = None,
        *,
        ak_auth: bytes = b"",
    ) -> Attestation:
        """TPM2_Quote: the AK signs the PCR digest and ``qualifying_data``.

        Args:
            ak: handle of a restricted signing key.
            qualifying_data: becomes ``extraData`` of the TPMS_ATTEST (a TPM2B_DATA: at
                most 66 bytes, sizeof(TPMT_HA); hash longer binders first).
            selection: PCRs to quote, ``{hash_alg: indices}``.
            scheme: signature scheme; ``None`` (TPM_ALG_NULL) uses the AK's own scheme.
            ak_auth: the AK's auth value.

        Returns:
            TPM2B_ATTEST and TPMT_SIGNATURE.

        Raises:
            TpmCommandError: if the TPM refuses (e.g. ``TPM_RC_SIZE`` for long data).
            AttesterError: on transport errors.
        """
        params = _tpm2b(qualifying_data) + _sig_scheme(scheme) + _pcr_selection(selection)
        _, r = self._execute(TpmCc.QUOTE, handles=(ak,), auths=(_password(ak_auth),), params=params)
        attest = r.tpm2b_whole()
        signature = _read_signature(r)
        r.done()
        return Attestation(attest, signature)

    def certify(
        self,
        object_handle: int,
        sign_handle: int,
        qualifying_data: bytes,
        scheme: SigScheme | None = None,
        *,
        object_auth: bytes = b"",
        object_session: int | None = None,
        sign_auth: bytes = b"",
    ) -> Attestation:
        """TPM2_Certify: ``sign_handle`` attests that ``object_handle`` is loaded in this TPM.

        Args:
            object_handle: the object to certify (admin role: its auth value, or a
                policy session if its adminWithPolicy attribute is set).
            sign_handle: the signing key.
            qualifying_data: becomes ``extraData`` of the TPMS_ATTEST.
            scheme: signature scheme, ``None`` for the key's own.
            object_auth: auth value of the certified object.
            object_session: policy session for the certified object instead.
            sign_auth: auth value of the signing key.

        Returns:
            TPM2B_ATTEST (type TPM_ST_ATTEST_CERTIFY) and TPMT_SIGNATURE.

        Raises:
            TpmCommandError: if the TPM refuses.
            AttesterError: on transport errors.
        """
        params = _tpm2b(qualifying_data) + _sig_scheme(scheme)
        _, r = self._execute(
            TpmCc.CERTIFY,
            handles=(object_handle, sign_handle),
            auths=(_auth_for(object_session, object_auth), _password(sign_auth)),
            params=params,
        )
        attest = r.tpm2b_whole()
        signature = _read_signature(r)
        r.done()
        return Attestation(attest, signature)

    # -- sessions ---------------------------------------------------------------------

    def start_auth_session(
        self, session_type: TpmSe = TpmSe.POLICY, auth_hash: int = _ALG_SHA256
    ) -> AuthSession:
        """TPM2_StartAuthSession for an unsalted, unbound session without encryption.

        Args:
            session_type: policy (default), trial or HMAC session.
            auth_hash: the session's hash algorithm (SHA-256 by default).

        Returns:
            The session handle and the TPM's nonce.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_SESSION_MEMORY`` when too many are open.
            AttesterError: on transport errors.
        """
        nonce = secrets.token_bytes(_DIGEST_SIZES.get(auth_hash, 32))
        params = (
            _tpm2b(nonce)
            + _tpm2b(b"")  # encryptedSalt: unsalted
            + bytes([session_type])
            + struct.pack(">H", _ALG_NULL)  # symmetric: no parameter encryption
            + struct.pack(">H", auth_hash)
        )
        handles, r = self._execute(
            TpmCc.START_AUTH_SESSION,
            handles=(TpmRh.NULL, TpmRh.NULL),  # tpmKey, bind
            params=params,
            response_handles=1,
        )
        nonce_tpm = r.tpm2b()
        r.done()
        return AuthSession(handles[0], nonce_tpm)

    def policy_secret(
        self,
        auth_handle: int,
        session: int,
        *,
        auth: bytes = b"",
        nonce_tpm: bytes = b"",
        cp_hash: bytes = b"",
        policy_ref: bytes = b"",
        expiration: int = 0,
    ) -> None:
        """TPM2_PolicySecret: extend the session's policy with proof of ``auth_handle``'s secret.

        Args:
            auth_handle: the entity whose auth value is proven, e.g.
                ``TpmRh.ENDORSEMENT`` for the EK's policy.
            session: the policy session to extend.
            auth: ``auth_handle``'s auth value.
            nonce_tpm: the session's nonceTPM to bind the policy to it (empty: unbound).
            cp_hash: command parameter hash to restrict the policy to (empty: any).
            policy_ref: policy qualifier (empty for the EK policy).
            expiration: seconds of validity, 0 for none.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_AUTH_FAIL`` / ``TPM_RC_BAD_AUTH`` for a wrong secret.
            AttesterError: on transport errors.
        """
        params = (
            _tpm2b(nonce_tpm) + _tpm2b(cp_hash) + _tpm2b(policy_ref) + struct.pack(">i", expiration)
        )
        _, r = self._execute(
            TpmCc.POLICY_SECRET,
            handles=(auth_handle, session),
            auths=(_password(auth),),
            params=params,
        )
        r.tpm2b()  # timeout
        r.u16(), r.u32(), r.tpm2b()  # policyTicket
        r.done()

    def policy_get_digest(self, session: int) -> bytes:
        """TPM2_PolicyGetDigest: the current policy digest of a policy or trial session.

        Args:
            session: session handle.

        Returns:
            The policy digest.

        Raises:
            TpmCommandError: if ``session`` is not a policy session.
            AttesterError: on transport errors.
        """
        _, r = self._execute(TpmCc.POLICY_GET_DIGEST, handles=(session,))
        digest = r.tpm2b()
        r.done()
        return digest

    @contextlib.contextmanager
    def endorsement_policy_session(self, *, endorsement_auth: bytes = b"") -> Iterator[int]:
        """A policy session satisfying the TCG EK policy ``PolicySecret(TPM_RH_ENDORSEMENT)``.

        Yields the session handle; pass it as ``parent_session`` / ``ek_session``.  Each
        successful use resets the policy, so use one session per command.  The session
        is flushed on exit, also after an error.

        Args:
            endorsement_auth: the endorsement hierarchy's auth value.

        Yields:
            The policy session handle.

        Raises:
            TpmCommandError: if the session cannot be started or the secret is wrong.
            AttesterError: on transport errors.
        """
        session = self.start_auth_session(TpmSe.POLICY).handle
        try:
            self.policy_secret(TpmRh.ENDORSEMENT, session, auth=endorsement_auth)
            yield session
        except BaseException:
            with contextlib.suppress(AttesterError):
                self.flush_context(session)
            raise
        self.flush_context(session)

    def activate_credential(
        self,
        activate_handle: int,
        key_handle: int,
        id_object: bytes,
        encrypted_secret: bytes,
        *,
        activate_auth: bytes = b"",
        key_session: int | None = None,
        key_auth: bytes = b"",
    ) -> bytes:
        """TPM2_ActivateCredential: recover a secret made for ``activate_handle``'s Name.

        The verifier made the credential with MakeCredential(EK public, Name(AK),
        secret); only the TPM holding that EK can recover the secret, and only if the
        object named in the credential is loaded.

        Args:
            activate_handle: the AK (admin role: its auth value).
            key_handle: the EK that decrypts the seed (user role: for the TCG EK a
                policy session from :meth:`endorsement_policy_session`).
            id_object: TPM2B_ID_OBJECT, with its size prefix (as MakeCredential and
                ``tpm2_makecredential`` produce it).
            encrypted_secret: TPM2B_ENCRYPTED_SECRET (the encrypted seed), with its
                size prefix.
            activate_auth: the AK's auth value.
            key_session: policy session for the EK; ``None`` uses ``key_auth``.
            key_auth: the EK's auth value for a password session.

        Returns:
            The recovered secret (certInfo).

        Raises:
            ValueError: if a size prefix does not match the length of its structure.
            TpmCommandError: e.g. ``TPM_RC_INTEGRITY`` when the credential was made for
                another object or TPM.
            AttesterError: on transport errors.
        """
        for what, blob in (("id_object", id_object), ("encrypted_secret", encrypted_secret)):
            if len(blob) < 2 or int.from_bytes(blob[:2], "big") != len(blob) - 2:
                raise ValueError(f"{what} must be a TPM2B: u16 size || that many bytes")
        _, r = self._execute(
            TpmCc.ACTIVATE_CREDENTIAL,
            handles=(activate_handle, key_handle),
            auths=(_password(activate_auth), _auth_for(key_session, key_auth)),
            params=bytes(id_object) + bytes(encrypted_secret),
        )
        secret = r.tpm2b()
        r.done()
        return secret

    # -- NV ---------------------------------------------------------------------------

    def nv_define(
        self,
        index: int,
        size: int,
        attributes: TpmaNv = (
            TpmaNv.OWNERWRITE | TpmaNv.AUTHWRITE | TpmaNv.OWNERREAD | TpmaNv.AUTHREAD | TpmaNv.NO_DA
        ),
        *,
        auth_handle: int = TpmRh.OWNER,
        hierarchy_auth: bytes = b"",
        index_auth: bytes = b"",
        auth_policy: bytes = b"",
        name_alg: int = _ALG_SHA256,
    ) -> None:
        """TPM2_NV_DefineSpace: define an ordinary NV index.

        Args:
            index: NV index handle (0x01xxxxxx).
            size: data size in bytes.
            attributes: TPMA_NV bits; the default lets the owner and the index's own
                (empty) auth value read and write.
            auth_handle: ``TpmRh.OWNER`` or ``TpmRh.PLATFORM``.
            hierarchy_auth: that hierarchy's auth value.
            index_auth: auth value of the new index.
            auth_policy: policy digest of the new index.
            name_alg: hash algorithm of the index's name.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_NV_DEFINED`` if it exists.
            AttesterError: on transport errors.
        """
        public = (
            struct.pack(">IHI", index, name_alg, int(attributes))
            + _tpm2b(auth_policy)
            + struct.pack(">H", size)
        )
        _, r = self._execute(
            TpmCc.NV_DEFINE_SPACE,
            handles=(auth_handle,),
            auths=(_password(hierarchy_auth),),
            params=_tpm2b(index_auth) + _tpm2b(public),
        )
        r.done()

    def nv_undefine(self, index: int, *, auth_handle: int = TpmRh.OWNER, auth: bytes = b"") -> None:
        """TPM2_NV_UndefineSpace: delete an NV index.

        Args:
            index: NV index handle.
            auth_handle: the hierarchy that defined it.
            auth: that hierarchy's auth value.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_HANDLE`` if it is not defined.
            AttesterError: on transport errors.
        """
        _, r = self._execute(
            TpmCc.NV_UNDEFINE_SPACE, handles=(auth_handle, index), auths=(_password(auth),)
        )
        r.done()

    def nv_read_public(self, index: int) -> NvPublic:
        """TPM2_NV_ReadPublic: the public area of an NV index.

        Args:
            index: NV index handle.

        Returns:
            The index's attributes, size, policy and name.

        Raises:
            TpmCommandError: ``TPM_RC_HANDLE`` if it is not defined.
            AttesterError: on transport errors or a malformed answer.
        """
        _, r = self._execute(TpmCc.NV_READ_PUBLIC, handles=(index,))
        inner = _Reader(r.tpm2b(), TpmCc.NV_READ_PUBLIC, 2)
        name = r.tpm2b()
        r.done()
        nv_index, name_alg, attributes = inner.u32(), inner.u16(), inner.u32()
        policy = inner.tpm2b()
        data_size = inner.u16()
        inner.done()
        if nv_index != index:
            raise TpmResponseFormatError(
                f"asked for index {index:#x}, got {nv_index:#x}", command_code=TpmCc.NV_READ_PUBLIC
            )
        return NvPublic(nv_index, name_alg, TpmaNv(attributes), policy, data_size, name)

    def _nv_chunk(self) -> int:
        try:
            return max(1, self.get_property(0x12C))  # TPM_PT_NV_BUFFER_MAX
        except AttesterError:
            return 512  # MAX_NV_BUFFER_SIZE is at least this on every TPM seen

    def nv_write(
        self,
        index: int,
        data: bytes,
        offset: int = 0,
        *,
        auth_handle: int | None = None,
        auth: bytes = b"",
    ) -> None:
        """TPM2_NV_Write, in as many chunks as the TPM's NV buffer requires.

        Args:
            index: NV index handle.
            data: bytes to write.
            offset: offset in the index.
            auth_handle: who authorizes: the index itself (default) or ``TpmRh.OWNER``.
            auth: that entity's auth value.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_NV_RANGE`` past the end of the index.
            AttesterError: on transport errors.
        """
        authorizer = index if auth_handle is None else auth_handle
        chunk = self._nv_chunk()
        view = memoryview(bytes(data))
        position = offset
        while True:
            part = bytes(view[:chunk])
            view = view[chunk:]
            _, r = self._execute(
                TpmCc.NV_WRITE,
                handles=(authorizer, index),
                auths=(_password(auth),),
                params=_tpm2b(part) + struct.pack(">H", position),
            )
            r.done()
            position += len(part)
            if not view:
                return

    def nv_read(
        self,
        index: int,
        size: int | None = None,
        offset: int = 0,
        *,
        auth_handle: int | None = None,
        auth: bytes = b"",
    ) -> bytes:
        """TPM2_NV_Read, in as many chunks as needed.

        Args:
            index: NV index handle.
            size: bytes to read; ``None`` reads to the end of the index
                (one extra TPM2_NV_ReadPublic).
            offset: offset in the index.
            auth_handle: who authorizes: the index itself (default) or ``TpmRh.OWNER``.
            auth: that entity's auth value.

        Returns:
            The data.

        Raises:
            TpmCommandError: e.g. ``TPM_RC_NV_UNINITIALIZED`` if never written.
            AttesterError: on transport errors or a short answer.
        """
        if size is None:
            size = self.nv_read_public(index).data_size - offset
        authorizer = index if auth_handle is None else auth_handle
        chunk = self._nv_chunk()
        out = bytearray()
        while len(out) < size:
            want = min(chunk, size - len(out))
            _, r = self._execute(
                TpmCc.NV_READ,
                handles=(authorizer, index),
                auths=(_password(auth),),
                params=struct.pack(">HH", want, offset + len(out)),
            )
            part = r.tpm2b()
            r.done()
            if len(part) != want:
                raise TpmResponseFormatError(
                    f"asked for {want} NV bytes, got {len(part)}", command_code=TpmCc.NV_READ
                )
            out += part
        return bytes(out)
