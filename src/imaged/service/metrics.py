"""The daemon's metrics: RPCs, bytes pulled and imported, verdicts, trust-root refreshes. Made
by the runtime, which counts into them, and served at `/metrics` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("imaged_requests", "RPCs handled", ["method", "code"], registry=r)
        self.latency = Histogram(
            "imaged_request_seconds",
            "RPC duration",
            ["method"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300),
            registry=r,
        )
        self.pulled_bytes = Counter("imaged_pulled_bytes", "Bytes of blobs downloaded by pulls", registry=r)
        self.imported_bytes = Counter("imaged_imported_bytes", "Bytes of archives imported", registry=r)
        self.verdicts = Counter("imaged_verifications", "Verification outcomes", ["outcome"], registry=r)
        # Bound once: these are counted on every Verify.
        self.verified = self.verdicts.labels("verified")
        self.unverified = self.verdicts.labels("unverified")
        self.refused = self.verdicts.labels("refused")
        # Failed or denied, but allowed: the deciding rule (or noMatch) is in warn mode.
        self.warned = self.verdicts.labels("warned")
        self.cache_hits = Counter("imaged_verification_cache_hits", "Verdicts served from cache", registry=r)
        self.trust_refreshes = Counter(
            "imaged_trust_root_refreshes",
            "TUF refreshes of the Sigstore trust root, by outcome (updated, unchanged, failed)",
            ["outcome"],
            registry=r,
        )
        # (source, age seconds, stale) of the trust root in use, None when none is loaded: set
        # by the runtime, read at each scrape.
        self.trust_status: Callable[[], tuple[str, float | None, bool] | None] = lambda: None
        r.register(_TrustRootCollector(self))


class _TrustRootCollector(Collector):
    """Trust root gauges computed at scrape time (an age is a function of the clock)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            "imaged_trust_root_age_seconds",
            "Age of the Sigstore trust root in use (since a TUF refresh confirmed it, else its "
            "file's mtime), labelled with its source: embedded, disk, refreshed or file",
            labels=["source"],
        )
        stale = GaugeMetricFamily(
            "imaged_trust_root_stale", "1 when the trust root is older than verification.tuf.maxAge"
        )
        status = self._metrics.trust_status()
        if status is not None:
            source, seconds, is_stale = status
            if seconds is not None:
                age.add_metric([source], seconds)
            stale.add_metric([], 1.0 if is_stale else 0.0)
        return [age, stale]
