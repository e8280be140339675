"""The ratls TEE network gateway.

An ingress gateway (client network) and an egress gateway (in front of confidential
backends) join client connections to backends through mutually attested TLS tunnels,
so neither side changes a line.  See docs/gateway.md.  The public API is re-exported
here; implementation lives in private modules.
"""

from __future__ import annotations

from ._attestation import AttestationProvider as AttestationProvider
from ._attestation import GatewayIdentity as GatewayIdentity
from ._attestation import make_identity as make_identity
from ._attestation import reattest_binder as reattest_binder
from ._attestation import register_provider as register_provider
from ._attestation import registered_providers as registered_providers
from ._attestation import resolve_attestation as resolve_attestation
from ._attestation import unregister_provider as unregister_provider
from ._config import AttestationSettings as AttestationSettings
from ._config import ClaimRule as ClaimRule
from ._config import ConfigError as ConfigError
from ._config import ConfigProblem as ConfigProblem
from ._config import GatewayConfig as GatewayConfig
from ._config import load_config as load_config
from ._config import parse_config as parse_config
from ._daemon import RunningGateway as RunningGateway
from ._daemon import run_gateway as run_gateway
from ._link import LINK_VERSION as LINK_VERSION
from ._link import LinkConnection as LinkConnection
from ._link import LinkReason as LinkReason
from ._link import LinkRole as LinkRole
from ._proxy_protocol import ProxyHeader as ProxyHeader
from ._proxy_protocol import ProxyTlv as ProxyTlv
from ._proxy_protocol import parse_proxy_header as parse_proxy_header

__all__ = [
    "LINK_VERSION",
    "AttestationProvider",
    "AttestationSettings",
    "ClaimRule",
    "ConfigError",
    "ConfigProblem",
    "GatewayConfig",
    "GatewayIdentity",
    "LinkConnection",
    "LinkReason",
    "LinkRole",
    "ProxyHeader",
    "ProxyTlv",
    "RunningGateway",
    "load_config",
    "make_identity",
    "parse_config",
    "parse_proxy_header",
    "reattest_binder",
    "register_provider",
    "registered_providers",
    "resolve_attestation",
    "run_gateway",
    "unregister_provider",
]
