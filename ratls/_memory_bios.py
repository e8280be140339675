"""Give an idle pyOpenSSL connection fresh, empty memory BIOs to release their capacity.

OpenSSL's memory BIOs grow to the largest amount ever queued in them and never shrink.
After a handshake and an attestation exchange each of a connection's two BIOs holds
several KiB it will not use again (the evidence message alone is a few KiB), which is
about a fifth of an idle attested connection's memory.  OpenSSL's ``SSL_set_bio`` lets a
connection change BIOs at any time; when both are empty no byte is in flight in them,
so swapping them loses nothing and the old buffers are freed.

pyOpenSSL has no public call for this, so :func:`renew_idle_bios` uses its binding and
the Connection attributes it keeps the BIOs in, and does nothing (returns False) when a
pyOpenSSL version lacks them: memory then stays as it was, and nothing else changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = ["bios_renewable", "renew_idle_bios", "write_whole_chunks"]

try:  # pyOpenSSL's cffi binding of libssl/libcrypto (private, hence the checks below)
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the binding
    _ffi = _lib = None

_NEEDED: Final = ("SSL_set_bio", "BIO_new", "BIO_s_mem", "BIO_free", "BIO_get_mem_data")
_BINDING_OK: Final = _lib is not None and all(hasattr(_lib, name) for name in _NEEDED)


def bios_renewable(conn: SSL.Connection) -> bool:
    """True when this pyOpenSSL exposes what :func:`renew_idle_bios` needs for ``conn``."""
    return (
        _BINDING_OK
        and getattr(conn, "_into_ssl", None) is not None
        and getattr(conn, "_from_ssl", None) is not None
        and getattr(conn, "_ssl", None) is not None
    )


def _queued(bio: object) -> int:
    # BIO_get_mem_data returns the number of bytes waiting; a NULL out-pointer is allowed.
    return int(_lib.BIO_get_mem_data(bio, _ffi.NULL))


def renew_idle_bios(conn: SSL.Connection) -> bool:
    """Replace both memory BIOs of ``conn`` with new ones if neither holds a byte.

    Returns True when the BIOs were replaced.  Returns False, changing nothing, when
    either BIO still holds data (ciphertext not yet decrypted or not yet sent), when
    ``conn`` was made on a socket, or when pyOpenSSL lacks the calls.  Call it only from
    the one task that drives ``conn`` at that moment.
    """
    if not bios_renewable(conn):
        return False
    conn_any: Any = conn  # the private attributes pyOpenSSL keeps its BIOs in
    if _queued(conn_any._into_ssl) or _queued(conn_any._from_ssl):
        return False
    incoming = _lib.BIO_new(_lib.BIO_s_mem())
    if incoming == _ffi.NULL:
        return False
    outgoing = _lib.BIO_new(_lib.BIO_s_mem())
    if outgoing == _ffi.NULL:
        _lib.BIO_free(incoming)
        return False
    # Both BIOs change, so SSL_set_bio takes one reference to each new one and frees
    # the old pair (the connection owned them, as it owns the new ones).
    _lib.SSL_set_bio(conn_any._ssl, incoming, outgoing)
    conn_any._into_ssl = incoming
    conn_any._from_ssl = outgoing
    return True


def write_whole_chunks(conn: SSL.Connection) -> bool:
    """Let one ``send`` encrypt every record of its buffer, not only the first.

    pyOpenSSL sets ``SSL_MODE_ENABLE_PARTIAL_WRITE`` on every context, so each
    ``SSL_write`` stops after one 16 KiB record and a 64 KiB chunk costs four calls,
    each with pyOpenSSL's argument and error handling.  Into a memory BIO a write never
    blocks, so without partial writes one call encrypts the whole chunk (a WANT_READ
    still needs the same call repeated with the same bytes, as before).

    Returns:
        False when this pyOpenSSL's binding cannot clear the mode (nothing changed).
    """
    ssl = getattr(conn, "_ssl", None)
    if _lib is None or ssl is None or not hasattr(_lib, "SSL_clear_mode"):
        return False
    _lib.SSL_clear_mode(ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
    return True
