"""SPDM exceptions, each carrying the SPDM ErrorCode a responder would answer with.

The classes sit under ratls' ``ProtocolError`` branch the h11/h2 way: what the
peer did wrong is a :class:`ratls.RemoteProtocolError`, what this side was asked
to do wrongly is a :class:`ratls.LocalProtocolError`.  Each class has an
``error_code`` class attribute (an :class:`SpdmErrorCode`), so a responder state
machine can turn any exception it catches into the matching ERROR response
without a lookup table of its own.
"""

from __future__ import annotations

from typing import ClassVar

from ratls._errors import LocalProtocolError, RemoteProtocolError

from ._constants import SpdmErrorCode

__all__ = [
    "SpdmDecodeError",
    "SpdmDecryptError",
    "SpdmLocalProtocolError",
    "SpdmMessageTooLarge",
    "SpdmRemoteProtocolError",
    "SpdmSequenceOverflow",
    "SpdmUnexpectedMessage",
    "SpdmUnsupportedRequest",
    "SpdmVersionMismatch",
]


class SpdmRemoteProtocolError(RemoteProtocolError):
    """The SPDM peer sent something the protocol does not allow.

    Attributes:
        error_code: the ErrorCode a responder answers with (class attribute).
        error_data: the ErrorData byte that goes with it (0 unless stated).
    """

    error_code: ClassVar[SpdmErrorCode] = SpdmErrorCode.UNSPECIFIED

    def __init__(self, message: str, *, error_data: int = 0) -> None:
        self.error_data = error_data
        super().__init__(message)


class SpdmDecodeError(SpdmRemoteProtocolError):
    """Bytes that should be an SPDM message (or secured record) are malformed.

    Attributes:
        structure: the message or structure being decoded, e.g. ``"KEY_EXCHANGE_RSP"``.
        offset: byte offset of the problem within it, when known.
    """

    error_code = SpdmErrorCode.INVALID_REQUEST

    def __init__(self, message: str, *, structure: str = "", offset: int | None = None) -> None:
        self.structure = structure
        self.offset = offset
        where = structure
        if offset is not None:
            where = f"{structure} at offset {offset:#x}" if structure else f"offset {offset:#x}"
        super().__init__(f"{where}: {message}" if where else message)


class SpdmMessageTooLarge(SpdmDecodeError):
    """A message is larger than the negotiated or built-in maximum."""

    error_code = SpdmErrorCode.REQUEST_TOO_LARGE


class SpdmVersionMismatch(SpdmRemoteProtocolError):
    """A message's SPDMVersion is not the negotiated version."""

    error_code = SpdmErrorCode.VERSION_MISMATCH


class SpdmUnexpectedMessage(SpdmRemoteProtocolError):
    """A well-formed message arrived in a state that does not allow it."""

    error_code = SpdmErrorCode.UNEXPECTED_REQUEST


class SpdmUnsupportedRequest(SpdmRemoteProtocolError):
    """A request this responder does not implement (ErrorData = the request code)."""

    error_code = SpdmErrorCode.UNSUPPORTED_REQUEST


class SpdmDecryptError(SpdmRemoteProtocolError):
    """A secured message failed authentication or carried the wrong session/sequence."""

    error_code = SpdmErrorCode.DECRYPT_ERROR


class SpdmSequenceOverflow(SpdmRemoteProtocolError):
    """A secured-message sequence number would wrap; the session must end."""

    error_code = SpdmErrorCode.DECRYPT_ERROR


class SpdmLocalProtocolError(LocalProtocolError):
    """This side was asked to do something SPDM does not allow (e.g. send out of order).

    Attributes:
        error_code: the ErrorCode that best describes the refusal (class attribute).
    """

    error_code: ClassVar[SpdmErrorCode] = SpdmErrorCode.UNEXPECTED_REQUEST
