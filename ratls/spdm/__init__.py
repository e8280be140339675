"""SPDM 1.2 (DMTF DSP0274) with DSP0277 secured messages, sans-I/O.

A confidential VM answers as the SPDM responder (its key in a self-signed leaf,
its evidence in measurement blocks) and a verifier asks as the requester.  This
package holds the message codec, the signing rule and key schedule, secured
records and transport framings, and requester/responder state machines, all
without I/O (docs/spdm.md); the CPU-TEE mapping of evidence onto certificates and
measurement blocks, socket transports and the session API sit on top of them
(docs/spdm-tee.md).
"""

from __future__ import annotations

from ._api import BlockingSpdmSession as BlockingSpdmSession
from ._api import SpdmSession as SpdmSession
from ._api import SpdmTrust as SpdmTrust
from ._api import Trace as Trace
from ._api import connect_spdm_session as connect_spdm_session
from ._api import open_spdm_session as open_spdm_session
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
from ._io import APPLICATION_MESSAGE_TYPE as APPLICATION_MESSAGE_TYPE
from ._io import CLIENT_HELLO as CLIENT_HELLO
from ._io import DEFAULT_PORT as DEFAULT_PORT
from ._io import SERVER_HELLO as SERVER_HELLO
from ._io import AppHandler as AppHandler
from ._io import BlockingSpdmChannel as BlockingSpdmChannel
from ._io import Frame as Frame
from ._io import SpdmFramer as SpdmFramer
from ._io import TransportKind as TransportKind
from ._io import TrioSpdmChannel as TrioSpdmChannel
from ._io import connect_spdm_channel as connect_spdm_channel
from ._io import open_spdm_channel as open_spdm_channel
from ._io import serve_spdm_responder as serve_spdm_responder
from ._io import unwrap_application_payload as unwrap_application_payload
from ._io import wrap_application_payload as wrap_application_payload
from ._requester import DEFAULT_REQUESTER_FLAGS as DEFAULT_REQUESTER_FLAGS
from ._requester import Requester as Requester
from ._requester import RequesterConfig as RequesterConfig
from ._requester import get_capabilities_request as get_capabilities_request
from ._requester import negotiate_algorithms_request as negotiate_algorithms_request
from ._responder import DEFAULT_RESPONDER_FLAGS as DEFAULT_RESPONDER_FLAGS
from ._responder import MIN_DATA_TRANSFER_SIZE as MIN_DATA_TRANSFER_SIZE
from ._responder import ApplicationData as ApplicationData
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
from ._tee import BINDER_LABEL as BINDER_LABEL
from ._tee import DMTF_EKU_RESPONDER_AUTH as DMTF_EKU_RESPONDER_AUTH
from ._tee import DeviceMode as DeviceMode
from ._tee import MeasurementIndex as MeasurementIndex
from ._tee import SimulatedSnpAttester as SimulatedSnpAttester
from ._tee import SimulatedSvsmAttester as SimulatedSvsmAttester
from ._tee import TeeAttester as TeeAttester
from ._tee import TeeEvidence as TeeEvidence
from ._tee import TeeResponderIdentity as TeeResponderIdentity
from ._tee import VerifiedResponderIdentity as VerifiedResponderIdentity
from ._tee import VerifiedTeeMeasurements as VerifiedTeeMeasurements
from ._tee import check_leaf_profile as check_leaf_profile
from ._tee import parse_device_mode as parse_device_mode
from ._tee import tee_binder as tee_binder
from ._tee import tee_measurement_blocks as tee_measurement_blocks
from ._tee import verify_responder_chain as verify_responder_chain
from ._tee import verify_tee_measurements as verify_tee_measurements
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
    "APPLICATION_MESSAGE_TYPE",
    "BINDER_LABEL",
    "CLIENT_HELLO",
    "CONTEXT_REQUESTER_CHALLENGE_AUTH",
    "CONTEXT_REQUESTER_FINISH",
    "CONTEXT_RESPONDER_CHALLENGE_AUTH",
    "CONTEXT_RESPONDER_KEY_EXCHANGE_RSP",
    "CONTEXT_RESPONDER_MEASUREMENTS",
    "DEFAULT_PORT",
    "DEFAULT_REQUESTER_FLAGS",
    "DEFAULT_RESPONDER_FLAGS",
    "DMTF_EKU_RESPONDER_AUTH",
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
    "SERVER_HELLO",
    "SESSION_ONLY",
    "SPDM_VERSION_10",
    "SPDM_VERSION_11",
    "SPDM_VERSION_12",
    "AeadAlgorithm",
    "AlgStruct",
    "AlgType",
    "Algorithms",
    "AppHandler",
    "ApplicationData",
    "BaseAsymAlgo",
    "BaseHashAlgo",
    "BlockingSpdmChannel",
    "BlockingSpdmSession",
    "Capabilities",
    "CapabilityFlag",
    "CertChain",
    "Certificate",
    "Challenge",
    "ChallengeAuth",
    "DataSecrets",
    "DeviceMode",
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
    "Frame",
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
    "MeasurementIndex",
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
    "SimulatedSnpAttester",
    "SimulatedSvsmAttester",
    "SpdmDecodeError",
    "SpdmDecryptError",
    "SpdmErrorCode",
    "SpdmFramer",
    "SpdmHeader",
    "SpdmLocalProtocolError",
    "SpdmMessage",
    "SpdmMessageTooLarge",
    "SpdmRemoteProtocolError",
    "SpdmSequenceOverflow",
    "SpdmSession",
    "SpdmTrust",
    "SpdmUnexpectedMessage",
    "SpdmUnsupportedRequest",
    "SpdmVersionMismatch",
    "State",
    "TcpBinding",
    "TcpStreamDecoder",
    "TeeAttester",
    "TeeEvidence",
    "TeeResponderIdentity",
    "Trace",
    "TrafficKeys",
    "Transcript",
    "Transcripts",
    "TransportBinding",
    "TransportKind",
    "TransportMessage",
    "TrioSpdmChannel",
    "VerifiedResponderIdentity",
    "VerifiedTeeMeasurements",
    "Version",
    "aead_key_size",
    "aead_nonce",
    "bin_concat",
    "check_capability_flags",
    "check_leaf_profile",
    "check_verify_data",
    "connect_spdm_channel",
    "connect_spdm_session",
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
    "open_spdm_channel",
    "open_spdm_session",
    "parse_cert_chain",
    "parse_device_mode",
    "parse_header",
    "parse_measurement_record",
    "parse_response_not_ready",
    "render_transitions",
    "serve_spdm_responder",
    "sign",
    "signature_size",
    "signing_prefix",
    "tee_binder",
    "tee_measurement_blocks",
    "transitions",
    "unwrap_application_payload",
    "update_traffic_secret",
    "verify_data",
    "verify_responder_chain",
    "verify_signature",
    "verify_tee_measurements",
    "wrap_application_payload",
]
