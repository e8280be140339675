"""ratls: mutual attested TLS for AMD SEV-SNP confidential VMs with an SVSM vTPM."""

from __future__ import annotations

from ._errors import (
    AttesterError as AttesterError,
)
from ._errors import (
    AttesterUnavailable as AttesterUnavailable,
)
from ._errors import (
    BindingMismatch as BindingMismatch,
)
from ._errors import (
    CertificateChainError as CertificateChainError,
)
from ._errors import (
    EvidenceError as EvidenceError,
)
from ._errors import (
    EvidenceFormatError as EvidenceFormatError,
)
from ._errors import (
    EvidenceVerificationError as EvidenceVerificationError,
)
from ._errors import (
    LocalProtocolError as LocalProtocolError,
)
from ._errors import (
    MeasurementMismatch as MeasurementMismatch,
)
from ._errors import (
    NonceMismatch as NonceMismatch,
)
from ._errors import (
    PolicyError as PolicyError,
)
from ._errors import (
    PolicyViolation as PolicyViolation,
)
from ._errors import (
    ProtocolError as ProtocolError,
)
from ._errors import (
    RatlsError as RatlsError,
)
from ._errors import (
    RemoteProtocolError as RemoteProtocolError,
)
from ._errors import (
    SignatureMismatch as SignatureMismatch,
)
from ._errors import (
    TcbTooLow as TcbTooLow,
)

__version__ = "0.1.0.dev0"
