"""SPDM 1.2 (DMTF DSP0274) with DSP0277 secured messages, sans-I/O.

A confidential VM answers as the SPDM responder (its key in a self-signed leaf,
its evidence in measurement blocks) and a verifier asks as the requester.  This
package holds the message codec, the signing rule and key schedule, secured
records and transport framings, and requester/responder state machines; it
performs no I/O.  See docs/spdm.md.
"""

from __future__ import annotations

from ._codec import MAX_SPDM_MESSAGE_SIZE as MAX_SPDM_MESSAGE_SIZE
from ._codec import Algorithms as Algorithms
from ._codec import AlgStruct as AlgStruct
from ._codec import Capabilities as Capabilities
from ._codec import CertChain as CertChain
from ._codec import Certificate as Certificate
from ._codec import Challenge as Challenge
from ._codec import ChallengeAuth as ChallengeAuth
from ._codec import Digests as Digests
from ._codec import EndSession as EndSession
from ._codec import EndSessionAck as EndSessionAck
from ._codec import Error as Error
from ._codec import Finish as Finish
from ._codec import FinishRsp as FinishRsp
from ._codec import GetCapabilities as GetCapabilities
from ._codec import GetCertificate as GetCertificate
from ._codec import GetDigests as GetDigests
from ._codec import GetMeasurements as GetMeasurements
from ._codec import GetVersion as GetVersion
from ._codec import Heartbeat as Heartbeat
from ._codec import HeartbeatAck as HeartbeatAck
from ._codec import KeyExchange as KeyExchange
from ._codec import KeyExchangeRsp as KeyExchangeRsp
from ._codec import KeyUpdate as KeyUpdate
from ._codec import KeyUpdateAck as KeyUpdateAck
from ._codec import MeasurementBlock as MeasurementBlock
from ._codec import Measurements as Measurements
from ._codec import NegotiateAlgorithms as NegotiateAlgorithms
from ._codec import NegotiatedSizes as NegotiatedSizes
from ._codec import OpaqueData as OpaqueData
from ._codec import OpaqueElement as OpaqueElement
from ._codec import RespondIfReady as RespondIfReady
from ._codec import ResponseNotReadyData as ResponseNotReadyData
from ._codec import SecuredMessageSupportedVersions as SecuredMessageSupportedVersions
from ._codec import SecuredMessageVersionSelection as SecuredMessageVersionSelection
from ._codec import SpdmHeader as SpdmHeader
from ._codec import SpdmMessage as SpdmMessage
from ._codec import Version as Version
from ._codec import decode_message as decode_message
from ._codec import decode_opaque_data as decode_opaque_data
from ._codec import decode_secured_message_opaque as decode_secured_message_opaque
from ._codec import dhe_exchange_size as dhe_exchange_size
from ._codec import hash_size as hash_size
from ._codec import parse_cert_chain as parse_cert_chain
from ._codec import parse_header as parse_header
from ._codec import parse_measurement_record as parse_measurement_record
from ._codec import parse_response_not_ready as parse_response_not_ready
from ._codec import signature_size as signature_size
from ._constants import NONCE_SIZE as NONCE_SIZE
from ._constants import RANDOM_DATA_SIZE as RANDOM_DATA_SIZE
from ._constants import SPDM_VERSION_10 as SPDM_VERSION_10
from ._constants import SPDM_VERSION_11 as SPDM_VERSION_11
from ._constants import SPDM_VERSION_12 as SPDM_VERSION_12
from ._constants import AeadAlgorithm as AeadAlgorithm
from ._constants import AlgType as AlgType
from ._constants import BaseAsymAlgo as BaseAsymAlgo
from ._constants import BaseHashAlgo as BaseHashAlgo
from ._constants import CapabilityFlag as CapabilityFlag
from ._constants import DheGroup as DheGroup
from ._constants import DmtfMeasurementType as DmtfMeasurementType
from ._constants import KeyScheduleAlgorithm as KeyScheduleAlgorithm
from ._constants import KeyUpdateOperation as KeyUpdateOperation
from ._constants import MeasurementHashAlgo as MeasurementHashAlgo
from ._constants import MeasurementSummaryHashType as MeasurementSummaryHashType
from ._constants import OpaqueDataFormat as OpaqueDataFormat
from ._constants import RequestCode as RequestCode
from ._constants import ResponseCode as ResponseCode
from ._constants import SpdmErrorCode as SpdmErrorCode
from ._crypto import CONTEXT_REQUESTER_CHALLENGE_AUTH as CONTEXT_REQUESTER_CHALLENGE_AUTH
from ._crypto import CONTEXT_REQUESTER_FINISH as CONTEXT_REQUESTER_FINISH
from ._crypto import CONTEXT_RESPONDER_CHALLENGE_AUTH as CONTEXT_RESPONDER_CHALLENGE_AUTH
from ._crypto import CONTEXT_RESPONDER_KEY_EXCHANGE_RSP as CONTEXT_RESPONDER_KEY_EXCHANGE_RSP
from ._crypto import CONTEXT_RESPONDER_MEASUREMENTS as CONTEXT_RESPONDER_MEASUREMENTS
from ._crypto import DataSecrets as DataSecrets
from ._crypto import HandshakeSecrets as HandshakeSecrets
from ._crypto import PrivateKey as PrivateKey
from ._crypto import PublicKey as PublicKey
from ._crypto import TrafficKeys as TrafficKeys
from ._crypto import Transcript as Transcript
from ._crypto import bin_concat as bin_concat
from ._crypto import check_verify_data as check_verify_data
from ._crypto import derive_data_secrets as derive_data_secrets
from ._crypto import derive_handshake_secrets as derive_handshake_secrets
from ._crypto import derive_traffic_keys as derive_traffic_keys
from ._crypto import dhe_generate as dhe_generate
from ._crypto import dhe_shared_secret as dhe_shared_secret
from ._crypto import digest_measurement_block as digest_measurement_block
from ._crypto import hash_algorithm as hash_algorithm
from ._crypto import hash_bytes as hash_bytes
from ._crypto import hkdf_expand as hkdf_expand
from ._crypto import hkdf_extract as hkdf_extract
from ._crypto import measurement_hash_algorithm as measurement_hash_algorithm
from ._crypto import measurement_summary_hash as measurement_summary_hash
from ._crypto import sign as sign
from ._crypto import signing_prefix as signing_prefix
from ._crypto import update_traffic_secret as update_traffic_secret
from ._crypto import verify_data as verify_data
from ._crypto import verify_signature as verify_signature
from ._errors import SpdmDecodeError as SpdmDecodeError
from ._errors import SpdmDecryptError as SpdmDecryptError
from ._errors import SpdmLocalProtocolError as SpdmLocalProtocolError
from ._errors import SpdmMessageTooLarge as SpdmMessageTooLarge
from ._errors import SpdmRemoteProtocolError as SpdmRemoteProtocolError
from ._errors import SpdmSequenceOverflow as SpdmSequenceOverflow
from ._errors import SpdmUnexpectedMessage as SpdmUnexpectedMessage
from ._errors import SpdmUnsupportedRequest as SpdmUnsupportedRequest
from ._errors import SpdmVersionMismatch as SpdmVersionMismatch
from ._requester import DEFAULT_REQUESTER_FLAGS as DEFAULT_REQUESTER_FLAGS
from ._requester import Requester as Requester
from ._requester import RequesterConfig as RequesterConfig
from ._requester import get_capabilities_request as get_capabilities_request
from ._requester import negotiate_algorithms_request as negotiate_algorithms_request
from ._responder import DEFAULT_RESPONDER_FLAGS as DEFAULT_RESPONDER_FLAGS
from ._responder import MIN_DATA_TRANSFER_SIZE as MIN_DATA_TRANSFER_SIZE
from ._responder import MeasurementContext as MeasurementContext
from ._responder import MeasurementProvider as MeasurementProvider
from ._responder import RequestRejected as RequestRejected
from ._responder import Responder as Responder
from ._responder import ResponderConfig as ResponderConfig
from ._secured import AEAD_TAG_SIZE as AEAD_TAG_SIZE
from ._secured import MAX_SEQUENCE_NUMBER as MAX_SEQUENCE_NUMBER
from ._secured import SecuredChannel as SecuredChannel
from ._secured import SecuredRecord as SecuredRecord
from ._secured import aead_key_size as aead_key_size
from ._secured import aead_nonce as aead_nonce
from ._secured import decode_secured_record as decode_secured_record
from ._state import NEED_DATA as NEED_DATA
from ._state import OUT_OF_SESSION_ONLY as OUT_OF_SESSION_ONLY
from ._state import RESPONSE_TYPES as RESPONSE_TYPES
from ._state import SESSION_ONLY as SESSION_ONLY
from ._state import NeedData as NeedData
from ._state import Negotiated as Negotiated
from ._state import Role as Role
from ._state import Session as Session
from ._state import State as State
from ._state import Transcripts as Transcripts
from ._state import check_capability_flags as check_capability_flags
from ._state import next_state as next_state
from ._state import render_transitions as render_transitions
from ._state import transitions as transitions
from ._transport import EMU_HEADER_SIZE as EMU_HEADER_SIZE
from ._transport import MAX_TRANSPORT_MESSAGE_SIZE as MAX_TRANSPORT_MESSAGE_SIZE
from ._transport import EmuCommand as EmuCommand
from ._transport import EmuFrame as EmuFrame
from ._transport import EmuStreamDecoder as EmuStreamDecoder
from ._transport import EmuTransportType as EmuTransportType
from ._transport import MctpBinding as MctpBinding
from ._transport import TcpBinding as TcpBinding
from ._transport import TcpStreamDecoder as TcpStreamDecoder
from ._transport import TransportBinding as TransportBinding
from ._transport import TransportMessage as TransportMessage
from ._transport import decode_emu_header as decode_emu_header

__all__ = [
    "AEAD_TAG_SIZE",
    "CONTEXT_REQUESTER_CHALLENGE_AUTH",
    "CONTEXT_REQUESTER_FINISH",
    "CONTEXT_RESPONDER_CHALLENGE_AUTH",
    "CONTEXT_RESPONDER_KEY_EXCHANGE_RSP",
    "CONTEXT_RESPONDER_MEASUREMENTS",
    "DEFAULT_REQUESTER_FLAGS",
    "DEFAULT_RESPONDER_FLAGS",
    "EMU_HEADER_SIZE",
    "MAX_SEQUENCE_NUMBER",
    "MAX_SPDM_MESSAGE_SIZE",
    "MAX_TRANSPORT_MESSAGE_SIZE",
    "MIN_DATA_TRANSFER_SIZE",
    "NEED_DATA",
    "NONCE_SIZE",
    "OUT_OF_SESSION_ONLY",
    "RANDOM_DATA_SIZE",
    "RESPONSE_TYPES",
    "SESSION_ONLY",
    "SPDM_VERSION_10",
    "SPDM_VERSION_11",
    "SPDM_VERSION_12",
    "AeadAlgorithm",
    "AlgStruct",
    "AlgType",
    "Algorithms",
    "BaseAsymAlgo",
    "BaseHashAlgo",
    "Capabilities",
    "CapabilityFlag",
    "CertChain",
    "Certificate",
    "Challenge",
    "ChallengeAuth",
    "DataSecrets",
    "DheGroup",
    "Digests",
    "DmtfMeasurementType",
    "EmuCommand",
    "EmuFrame",
    "EmuStreamDecoder",
    "EmuTransportType",
    "EndSession",
    "EndSessionAck",
    "Error",
    "Finish",
    "FinishRsp",
    "GetCapabilities",
    "GetCertificate",
    "GetDigests",
    "GetMeasurements",
    "GetVersion",
    "HandshakeSecrets",
    "Heartbeat",
    "HeartbeatAck",
    "KeyExchange",
    "KeyExchangeRsp",
    "KeyScheduleAlgorithm",
    "KeyUpdate",
    "KeyUpdateAck",
    "KeyUpdateOperation",
    "MctpBinding",
    "MeasurementBlock",
    "MeasurementContext",
    "MeasurementHashAlgo",
    "MeasurementProvider",
    "MeasurementSummaryHashType",
    "Measurements",
    "NeedData",
    "NegotiateAlgorithms",
    "Negotiated",
    "NegotiatedSizes",
    "OpaqueData",
    "OpaqueDataFormat",
    "OpaqueElement",
    "PrivateKey",
    "PublicKey",
    "RequestCode",
    "RequestRejected",
    "Requester",
    "RequesterConfig",
    "RespondIfReady",
    "Responder",
    "ResponderConfig",
    "ResponseCode",
    "ResponseNotReadyData",
    "Role",
    "SecuredChannel",
    "SecuredMessageSupportedVersions",
    "SecuredMessageVersionSelection",
    "SecuredRecord",
    "Session",
    "SpdmDecodeError",
    "SpdmDecryptError",
    "SpdmErrorCode",
    "SpdmHeader",
    "SpdmLocalProtocolError",
    "SpdmMessage",
    "SpdmMessageTooLarge",
    "SpdmRemoteProtocolError",
    "SpdmSequenceOverflow",
    "SpdmUnexpectedMessage",
    "SpdmUnsupportedRequest",
    "SpdmVersionMismatch",
    "State",
    "TcpBinding",
    "TcpStreamDecoder",
    "TrafficKeys",
    "Transcript",
    "Transcripts",
    "TransportBinding",
    "TransportMessage",
    "Version",
    "aead_key_size",
    "aead_nonce",
    "bin_concat",
    "check_capability_flags",
    "check_verify_data",
    "decode_emu_header",
    "decode_message",
    "decode_opaque_data",
    "decode_secured_message_opaque",
    "decode_secured_record",
    "derive_data_secrets",
    "derive_handshake_secrets",
    "derive_traffic_keys",
    "dhe_exchange_size",
    "dhe_generate",
    "dhe_shared_secret",
    "digest_measurement_block",
    "get_capabilities_request",
    "hash_algorithm",
    "hash_bytes",
    "hash_size",
    "hkdf_expand",
    "hkdf_extract",
    "measurement_hash_algorithm",
    "measurement_summary_hash",
    "negotiate_algorithms_request",
    "next_state",
    "parse_cert_chain",
    "parse_header",
    "parse_measurement_record",
    "parse_response_not_ready",
    "render_transitions",
    "sign",
    "signature_size",
    "signing_prefix",
    "transitions",
    "update_traffic_secret",
    "verify_data",
    "verify_signature",
]
