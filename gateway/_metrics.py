"""In-process metrics with Prometheus text exposition.

A gateway needs a handful of counters, gauges and histograms, all updated from one trio
thread, so this module keeps them as plain dictionaries keyed by label values and
renders the Prometheus text format (version 0.0.4) on demand.  No locks: every update
happens in the trio thread (worker threads never touch metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, final

from ratls._caches import verification_cache_stats

__all__ = [
    "LATENCY_BUCKETS",
    "Counter",
    "GatewayMetrics",
    "Gauge",
    "Histogram",
    "MetricsRegistry",
]

# Latency buckets in seconds.  An attested handshake on loopback takes a few ms with a
# cached verification and tens of ms with a cold SNP + vTPM check; a remote peer adds
# round trips.  Buckets from 1 ms to 10 s cover that range, roughly x2.5 apart.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass(slots=True, kw_only=True)
class _Metric:
    name: str
    help: str
    labelnames: tuple[str, ...] = ()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        # Tunnels count bytes per chunk: labels given in the declared order (the usual
        # case) cost one tuple comparison; any other order is checked and reordered.
        if tuple(labels) == self.labelnames:
            return tuple(map(str, labels.values()))
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)


@final
@dataclass(slots=True, kw_only=True)
class Counter(_Metric):
    """A monotonically increasing value per label set."""

    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series named by ``labels``."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        """The current value of one series (0 if never set)."""
        return self.values.get(self._key(labels), 0.0)

    def set_total(self, total: float, **labels: str) -> None:
        """Mirror a total counted elsewhere (it may not go down)."""
        key = self._key(labels)
        if total < self.values.get(key, 0.0):
            raise ValueError("a counter only goes up")
        self.values[key] = total

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labelnames, key)} {_number(value)}")
        return lines


@final
@dataclass(slots=True, kw_only=True)
class Gauge(_Metric):
    """A value that goes up and down per label set."""

    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def add(self, amount: float, **labels: str) -> None:
        """Add ``amount`` (may be negative) to one series."""
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        """Set one series."""
        self.values[self._key(labels)] = value

    def get(self, **labels: str) -> float:
        """The current value of one series (0 if never set)."""
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labelnames, key)} {_number(value)}")
        return lines


@final
@dataclass(slots=True, kw_only=True)
class Histogram(_Metric):
    """Observations counted into cumulative buckets, per label set."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    sums: dict[tuple[str, ...], float] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        key = self._key(labels)
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        """How many observations one series has."""
        return sum(self.counts.get(self._key(labels), []))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(
                f"{self.name}_sum{_labels(self.labelnames, key)} {_number(self.sums[key])}"
            )
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


@final
class MetricsRegistry:
    """Holds metrics and renders them in the Prometheus text format."""

    def __init__(self) -> None:
        self._metrics: list[Counter | Gauge | Histogram] = []

    def counter(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Counter:
        """Create and register a counter."""
        metric = Counter(name=name, help=help, labelnames=labelnames)
        self._metrics.append(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        """Create and register a gauge."""
        metric = Gauge(name=name, help=help, labelnames=labelnames)
        self._metrics.append(metric)
        return metric

    def histogram(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Histogram:
        """Create and register a histogram with :data:`LATENCY_BUCKETS`."""
        metric = Histogram(name=name, help=help, labelnames=labelnames)
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole registry as Prometheus text (ends with a newline)."""
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


@final
class GatewayMetrics:
    """The gateway's metrics (names prefixed ``ratls_gateway_``).

    Labels: ``side`` is ``ingress`` or ``egress``; ``rule`` the ingress rule or egress
    listener name; ``direction`` is ``up`` (client to backend) or ``down``; ``reason``
    a :func:`~gateway._link.reason_name`.
    """

    def __init__(self) -> None:
        r = self.registry = MetricsRegistry()
        self.tunnels_active = r.gauge(
            "ratls_gateway_tunnels_active", "Tunnels currently open.", ("side", "rule")
        )
        self.tunnels_total = r.counter(
            "ratls_gateway_tunnels_total", "Tunnels accepted (opened or not).", ("side", "rule")
        )
        self.tunnels_failed = r.counter(
            "ratls_gateway_tunnels_failed_total",
            "Tunnels that failed or were refused, by reason.",
            ("side", "rule", "reason"),
        )
        self.bytes = r.counter(
            "ratls_gateway_bytes_total",
            "Bytes carried through tunnels.",
            ("side", "rule", "direction"),
        )
        self.handshake_seconds = r.histogram(
            "ratls_gateway_handshake_seconds",
            "TLS handshake plus mutual attestation latency.",
            ("side",),
        )
        self.reattest_seconds = r.histogram(
            "ratls_gateway_reattest_seconds", "Re-attestation round-trip latency.", ("side",)
        )
        self.reattest_total = r.counter(
            "ratls_gateway_reattestations_total",
            "Re-attestations of tunnel peers, by outcome.",
            ("side", "outcome"),
        )
        self.udp_dropped = r.counter(
            "ratls_gateway_udp_dropped_total",
            "Client datagrams dropped: their flow's queue was full, or the flow was refused.",
            ("rule",),
        )
        self.prewarm_links = r.counter(
            "ratls_gateway_prewarm_links_total",
            "Links made ahead of need ([prewarm]), by what became of them: made, failed, "
            "used, expired, dead, dropped.",
            ("outcome",),
        )
        self.prewarm_ready = r.gauge(
            "ratls_gateway_prewarm_ready", "Attested links ready for the next tunnel.", ("egress",)
        )

        self.verify_cache_hits = r.counter(
            "ratls_gateway_verify_cache_hits_total",
            "Verification work answered from a memo of this process, by memo.",
            ("cache",),
        )
        self.verify_cache_misses = r.counter(
            "ratls_gateway_verify_cache_misses_total",
            "Verification work done in full (remembered only if it passed), by memo.",
            ("cache",),
        )
        self.verify_cache_hit_ratio = r.gauge(
            "ratls_gateway_verify_cache_hit_ratio",
            "hits / (hits + misses) of each verification memo since start.",
            ("cache",),
        )

    def refresh_verification_caches(self) -> None:
        """Copy ratls's verification-memo counts into the cache metrics."""
        for name, stats in verification_cache_stats().items():
            self.verify_cache_hits.set_total(stats.hits, cache=name)
            self.verify_cache_misses.set_total(stats.misses, cache=name)
            self.verify_cache_hit_ratio.set(stats.hit_ratio, cache=name)

    def render(self) -> str:
        """Prometheus text for every gateway metric."""
        self.refresh_verification_caches()
        return self.registry.render()
