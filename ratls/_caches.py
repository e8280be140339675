"""What the verifier's memos remember, and how often they spared work.

Verification remembers only results that cannot change for the same input, each keyed by
the exact bytes it judged and never a failure: a verified AMD endorsement chain (kept
only while the time of use lies inside all three certificates' validity), parsed AMD
certificates and their extensions, passed self-signatures of peer TLS certificates,
parsed TPM public areas (EKs and AKs, with their Names and keys), and passed credential
activations per (EK, AK).
Operators watch the hit ratios (the gateway exports them on ``/metrics``); a low one
means peers keep presenting new endorsements, or the memo is too small for the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from ._amd_certs import _load_amd_certificate
from ._bound import ACTIVATION_MEMORY_SIZE, activation_memory_counts
from ._snp_verify import CHAIN_CACHE_SIZE, _leaf_extensions, chain_cache_counts
from ._tls_context import _passed_certificate
from ._tpm_structs import _parse_tpmt_public

__all__ = ["CacheStats", "verification_cache_stats"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """Counts for one memo since the process started.

    Attributes:
        hits: lookups answered from the memo.
        misses: lookups that had to do the work (and remembered it if it passed).
        entries: entries held now.
        capacity: most entries it holds; the least recently used goes first.
    """

    hits: int
    misses: int
    entries: int
    capacity: int

    @property
    def hit_ratio(self) -> float:
        """hits / (hits + misses), 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


def verification_cache_stats() -> dict[str, CacheStats]:
    """Statistics of each verification memo of this process, by name.

    Returns:
        ``amd_chain`` (verified VCEK/VLEK -> ASK/ASVK -> ARK chains), ``amd_certificate``
        (parsed AMD certificates), ``amd_extensions`` (decoded VCEK/VLEK extensions) and
        ``tls_self_signature`` (peer TLS certificates whose self-signature passed),
        ``tpm_public`` (parsed TPM public areas: the EKs and AKs of vTPM peers) and
        ``vtpm_activation`` (credential activations remembered per EK and AK, summed over
        the process's verifiers; its capacity is one verifier's).
    """
    hits, misses, entries = chain_cache_counts()
    stats = {
        "amd_chain": CacheStats(
            hits=hits, misses=misses, entries=entries, capacity=CHAIN_CACHE_SIZE
        )
    }
    hits, misses, entries = activation_memory_counts()
    stats["vtpm_activation"] = CacheStats(
        hits=hits, misses=misses, entries=entries, capacity=ACTIVATION_MEMORY_SIZE
    )
    for name, memo in (
        ("amd_certificate", _load_amd_certificate),
        ("amd_extensions", _leaf_extensions),
        ("tls_self_signature", _passed_certificate),
        ("tpm_public", _parse_tpmt_public),
    ):
        info = memo.cache_info()
        stats[name] = CacheStats(
            hits=info.hits, misses=info.misses, entries=info.currsize, capacity=info.maxsize or 0
        )
    return stats
