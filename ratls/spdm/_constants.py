"""Wire codes of SPDM 1.2 (DMTF DSP0274) and DSP0277 as enums.

Every number that appears on the wire has a name here, so that the codec, the
transcripts and the state machines never spell out a magic value.  Values whose
unknown members only inform (capability bits, algorithm bits) are ``IntFlag``
with ``boundary=KEEP`` so unknown bits survive a decode/encode round trip;
values that steer parsing (request/response codes) are closed ``IntEnum``s and
an unknown one is refused by the codec.
"""

from __future__ import annotations

import enum

__all__ = [
    "NONCE_SIZE",
    "RANDOM_DATA_SIZE",
    "SPDM_VERSION_10",
    "SPDM_VERSION_11",
    "SPDM_VERSION_12",
    "AeadAlgorithm",
    "AlgType",
    "BaseAsymAlgo",
    "BaseHashAlgo",
    "CapabilityFlag",
    "DheGroup",
    "DmtfMeasurementType",
    "KeyScheduleAlgorithm",
    "KeyUpdateOperation",
    "MeasurementHashAlgo",
    "MeasurementSummaryHashType",
    "OpaqueDataFormat",
    "RequestCode",
    "ResponseCode",
    "SpdmErrorCode",
]

#: SPDMVersion header byte of GET_VERSION / VERSION (always 1.0).
SPDM_VERSION_10 = 0x10
#: SPDMVersion header byte of SPDM 1.1.
SPDM_VERSION_11 = 0x11
#: SPDMVersion header byte of SPDM 1.2, the version this package speaks.
SPDM_VERSION_12 = 0x12

#: Size of every SPDM nonce (CHALLENGE, GET_MEASUREMENTS, responses).
NONCE_SIZE = 32
#: Size of RandomData in KEY_EXCHANGE and KEY_EXCHANGE_RSP.
RANDOM_DATA_SIZE = 32


class RequestCode(enum.IntEnum):
    """RequestResponseCode values of requests (DSP0274 table "request codes")."""

    GET_DIGESTS = 0x81  #: ask for the digests of the provisioned certificate chains
    GET_CERTIFICATE = 0x82  #: read (part of) one certificate chain
    CHALLENGE = 0x83  #: ask the responder to sign the transcript M1
    GET_VERSION = 0x84  #: start (or restart) the connection
    CHUNK_SEND = 0x85  #: large-message transfer, requester to responder
    CHUNK_GET = 0x86  #: large-message transfer, responder to requester
    GET_MEASUREMENTS = 0xE0  #: ask for measurement blocks, optionally signed
    GET_CAPABILITIES = 0xE1  #: exchange capability flags
    NEGOTIATE_ALGORITHMS = 0xE3  #: offer algorithms
    KEY_EXCHANGE = 0xE4  #: start a session with an ephemeral DHE exchange
    FINISH = 0xE5  #: finish the session handshake
    PSK_EXCHANGE = 0xE6  #: start a session with a pre-shared key
    PSK_FINISH = 0xE7  #: finish a PSK session handshake
    HEARTBEAT = 0xE8  #: keep a session alive
    KEY_UPDATE = 0xE9  #: rotate session data keys
    GET_ENCAPSULATED_REQUEST = 0xEA  #: mutual auth: fetch the responder's request
    DELIVER_ENCAPSULATED_RESPONSE = 0xEB  #: mutual auth: answer the responder's request
    END_SESSION = 0xEC  #: close a session
    GET_CSR = 0xED  #: ask for a certificate signing request
    SET_CERTIFICATE = 0xEE  #: provision a certificate chain
    VENDOR_DEFINED_REQUEST = 0xFE  #: vendor-defined request
    RESPOND_IF_READY = 0xFF  #: retry after ERROR(ResponseNotReady)


class ResponseCode(enum.IntEnum):
    """RequestResponseCode values of responses (DSP0274 table "response codes")."""

    DIGESTS = 0x01  #: answer to GET_DIGESTS
    CERTIFICATE = 0x02  #: answer to GET_CERTIFICATE
    CHALLENGE_AUTH = 0x03  #: answer to CHALLENGE
    VERSION = 0x04  #: answer to GET_VERSION
    CHUNK_SEND_ACK = 0x05  #: answer to CHUNK_SEND
    CHUNK_RESPONSE = 0x06  #: answer to CHUNK_GET
    MEASUREMENTS = 0x60  #: answer to GET_MEASUREMENTS
    CAPABILITIES = 0x61  #: answer to GET_CAPABILITIES
    ALGORITHMS = 0x63  #: answer to NEGOTIATE_ALGORITHMS
    KEY_EXCHANGE_RSP = 0x64  #: answer to KEY_EXCHANGE
    FINISH_RSP = 0x65  #: answer to FINISH
    PSK_EXCHANGE_RSP = 0x66  #: answer to PSK_EXCHANGE
    PSK_FINISH_RSP = 0x67  #: answer to PSK_FINISH
    HEARTBEAT_ACK = 0x68  #: answer to HEARTBEAT
    KEY_UPDATE_ACK = 0x69  #: answer to KEY_UPDATE
    ENCAPSULATED_REQUEST = 0x6A  #: answer to GET_ENCAPSULATED_REQUEST
    ENCAPSULATED_RESPONSE_ACK = 0x6B  #: answer to DELIVER_ENCAPSULATED_RESPONSE
    END_SESSION_ACK = 0x6C  #: answer to END_SESSION
    VENDOR_DEFINED_RESPONSE = 0x7E  #: vendor-defined response
    ERROR = 0x7F  #: the request failed; Param1 holds an SpdmErrorCode


class SpdmErrorCode(enum.IntEnum):
    """ErrorCode values carried in Param1 of ERROR (DSP0274 1.0-1.3)."""

    INVALID_REQUEST = 0x01  #: the request is malformed
    BUSY = 0x03  #: the responder cannot answer now; retry later
    UNEXPECTED_REQUEST = 0x04  #: the request is not allowed in this state
    UNSPECIFIED = 0x05  #: unspecified failure
    DECRYPT_ERROR = 0x06  #: a secured message did not decrypt (1.1)
    UNSUPPORTED_REQUEST = 0x07  #: ErrorData names the unsupported request code
    REQUEST_IN_FLIGHT = 0x08  #: another request is pending (1.1)
    INVALID_RESPONSE_CODE = 0x09  #: an encapsulated response was invalid (1.1)
    SESSION_LIMIT_EXCEEDED = 0x0A  #: no more sessions can be opened (1.1)
    SESSION_REQUIRED = 0x0B  #: the request is only valid inside a session (1.2)
    RESET_REQUIRED = 0x0C  #: the responder needs a reset (1.2)
    RESPONSE_TOO_LARGE = 0x0D  #: the response exceeds MaxSPDMmsgSize (1.2)
    REQUEST_TOO_LARGE = 0x0E  #: the request exceeds MaxSPDMmsgSize (1.2)
    LARGE_RESPONSE = 0x0F  #: fetch the response with CHUNK_GET (1.2)
    MESSAGE_LOST = 0x10  #: a message was lost (1.2)
    INVALID_POLICY = 0x11  #: the requested policy is invalid (1.3)
    VERSION_MISMATCH = 0x41  #: SPDMVersion differs from the negotiated one
    RESPONSE_NOT_READY = 0x42  #: ask again with RESPOND_IF_READY
    REQUEST_RESYNCH = 0x43  #: the requester must restart with GET_VERSION
    OPERATION_FAILED = 0x44  #: the operation failed (1.3)
    NO_PENDING_REQUESTS = 0x45  #: nothing pending (1.3)
    VENDOR_DEFINED = 0xFF  #: vendor-defined error


class CapabilityFlag(enum.IntFlag, boundary=enum.KEEP):
    """Flags of GET_CAPABILITIES / CAPABILITIES (requester and responder share positions)."""

    CACHE_CAP = 0x1  #: responder caches negotiated state across resets
    CERT_CAP = 0x2  #: supports GET_DIGESTS and GET_CERTIFICATE
    CHAL_CAP = 0x4  #: supports CHALLENGE
    MEAS_CAP_NO_SIG = 0x8  #: returns measurements without signature
    MEAS_CAP_SIG = 0x10  #: returns signed measurements
    MEAS_FRESH_CAP = 0x20  #: measurements are recomputed on reset
    ENCRYPT_CAP = 0x40  #: secured messages may be encrypted
    MAC_CAP = 0x80  #: secured messages may be authenticated
    MUT_AUTH_CAP = 0x100  #: supports mutual authentication
    KEY_EX_CAP = 0x200  #: supports KEY_EXCHANGE
    PSK_CAP = 0x400  #: supports PSK_EXCHANGE without context
    PSK_CAP_WITH_CONTEXT = 0x800  #: supports PSK_EXCHANGE with context
    ENCAP_CAP = 0x1000  #: supports encapsulated requests
    HBEAT_CAP = 0x2000  #: supports HEARTBEAT
    KEY_UPD_CAP = 0x4000  #: supports KEY_UPDATE
    HANDSHAKE_IN_THE_CLEAR_CAP = 0x8000  #: FINISH/FINISH_RSP travel in the clear
    PUB_KEY_ID_CAP = 0x10000  #: public key provisioned out of band
    CHUNK_CAP = 0x20000  #: supports CHUNK_SEND / CHUNK_GET (1.2)
    ALIAS_CERT_CAP = 0x40000  #: certificate chain uses an alias certificate (1.2)
    SET_CERT_CAP = 0x80000  #: supports SET_CERTIFICATE (1.2)
    CSR_CAP = 0x100000  #: supports GET_CSR (1.2)
    CERT_INSTALL_RESET_CAP = 0x200000  #: certificate install needs a reset (1.2)


class AlgType(enum.IntEnum):
    """AlgType of the AlgStruct tables in NEGOTIATE_ALGORITHMS / ALGORITHMS."""

    DHE = 2  #: Diffie-Hellman group for KEY_EXCHANGE
    AEAD = 3  #: AEAD cipher suite for secured messages
    REQ_BASE_ASYM_ALG = 4  #: requester signing algorithm (mutual auth)
    KEY_SCHEDULE = 5  #: key schedule


class BaseAsymAlgo(enum.IntFlag, boundary=enum.KEEP):
    """BaseAsymAlgo / ReqBaseAsymAlg bits."""

    TPM_ALG_RSASSA_2048 = 0x1  #: RSASSA-PKCS1-v1_5, 2048-bit
    TPM_ALG_RSAPSS_2048 = 0x2  #: RSASSA-PSS, 2048-bit
    TPM_ALG_RSASSA_3072 = 0x4  #: RSASSA-PKCS1-v1_5, 3072-bit
    TPM_ALG_RSAPSS_3072 = 0x8  #: RSASSA-PSS, 3072-bit
    TPM_ALG_ECDSA_ECC_NIST_P256 = 0x10  #: ECDSA on P-256
    TPM_ALG_RSASSA_4096 = 0x20  #: RSASSA-PKCS1-v1_5, 4096-bit
    TPM_ALG_RSAPSS_4096 = 0x40  #: RSASSA-PSS, 4096-bit
    TPM_ALG_ECDSA_ECC_NIST_P384 = 0x80  #: ECDSA on P-384
    TPM_ALG_ECDSA_ECC_NIST_P521 = 0x100  #: ECDSA on P-521
    TPM_ALG_SM2_ECC_SM2_P256 = 0x200  #: SM2 (1.2)
    EDDSA_ED25519 = 0x400  #: Ed25519 (1.2)
    EDDSA_ED448 = 0x800  #: Ed448 (1.2)


class BaseHashAlgo(enum.IntFlag, boundary=enum.KEEP):
    """BaseHashAlgo bits."""

    TPM_ALG_SHA_256 = 0x1  #: SHA-256
    TPM_ALG_SHA_384 = 0x2  #: SHA-384
    TPM_ALG_SHA_512 = 0x4  #: SHA-512
    TPM_ALG_SHA3_256 = 0x8  #: SHA3-256
    TPM_ALG_SHA3_384 = 0x10  #: SHA3-384
    TPM_ALG_SHA3_512 = 0x20  #: SHA3-512
    TPM_ALG_SM3_256 = 0x40  #: SM3 (1.2)


class MeasurementHashAlgo(enum.IntFlag, boundary=enum.KEEP):
    """MeasurementHashAlgo bits of ALGORITHMS (the responder's own choice)."""

    RAW_BIT_STREAM_ONLY = 0x1  #: measurements are only ever raw bit streams
    TPM_ALG_SHA_256 = 0x2  #: SHA-256 digests
    TPM_ALG_SHA_384 = 0x4  #: SHA-384 digests
    TPM_ALG_SHA_512 = 0x8  #: SHA-512 digests
    TPM_ALG_SHA3_256 = 0x10  #: SHA3-256 digests
    TPM_ALG_SHA3_384 = 0x20  #: SHA3-384 digests
    TPM_ALG_SHA3_512 = 0x40  #: SHA3-512 digests
    TPM_ALG_SM3_256 = 0x80  #: SM3 digests (1.2)


class DheGroup(enum.IntFlag, boundary=enum.KEEP):
    """AlgSupported bits of the DHE AlgStruct."""

    FFDHE_2048 = 0x1  #: RFC 7919 ffdhe2048
    FFDHE_3072 = 0x2  #: RFC 7919 ffdhe3072
    FFDHE_4096 = 0x4  #: RFC 7919 ffdhe4096
    SECP_256_R1 = 0x8  #: NIST P-256
    SECP_384_R1 = 0x10  #: NIST P-384
    SECP_521_R1 = 0x20  #: NIST P-521
    SM2_P256 = 0x40  #: SM2 curve (1.2)


class AeadAlgorithm(enum.IntFlag, boundary=enum.KEEP):
    """AlgSupported bits of the AEAD AlgStruct."""

    AES_128_GCM = 0x1  #: AES-128-GCM, 16-byte tag
    AES_256_GCM = 0x2  #: AES-256-GCM, 16-byte tag
    CHACHA20_POLY1305 = 0x4  #: ChaCha20-Poly1305, 16-byte tag
    SM4_GCM = 0x8  #: SM4-GCM (1.2)


class KeyScheduleAlgorithm(enum.IntFlag, boundary=enum.KEEP):
    """AlgSupported bits of the KeySchedule AlgStruct."""

    SPDM_KEY_SCHEDULE = 0x1  #: the SPDM key schedule (HKDF based)


class OpaqueDataFormat(enum.IntFlag, boundary=enum.KEEP):
    """OtherParamsSupport / OtherParamsSelection bits."""

    OPAQUE_DATA_FMT0 = 0x1  #: opaque data format 0 (legacy, 4-byte "DMTF" header)
    OPAQUE_DATA_FMT1 = 0x2  #: opaque data format 1 (the 1.2 general format)


class MeasurementSummaryHashType(enum.IntEnum):
    """Param2 of CHALLENGE / Param1 of KEY_EXCHANGE."""

    NONE = 0x00  #: no measurement summary hash in the response
    TCB = 0x01  #: hash over the TCB (DMTF type 0, immutable ROM) blocks only
    ALL = 0xFF  #: hash over every measurement block


class DmtfMeasurementType(enum.IntEnum):
    """DMTFSpecMeasurementValueType bits 6:0."""

    IMMUTABLE_ROM = 0  #: immutable ROM
    MUTABLE_FIRMWARE = 1  #: mutable firmware
    HARDWARE_CONFIGURATION = 2  #: hardware configuration
    FIRMWARE_CONFIGURATION = 3  #: firmware configuration
    MEASUREMENT_MANIFEST = 4  #: free-form measurement manifest
    DEVICE_MODE = 5  #: structured device mode (4 x u32)
    VERSION = 6  #: mutable firmware version
    SECURE_VERSION_NUMBER = 7  #: mutable firmware security version number (u64)


class KeyUpdateOperation(enum.IntEnum):
    """Param1 of KEY_UPDATE / KEY_UPDATE_ACK."""

    UPDATE_KEY = 1  #: update the requester's (request direction) key only
    UPDATE_ALL_KEYS = 2  #: update the keys of both directions
    VERIFY_NEW_KEY = 3  #: confirm that the new key is in use
