"""Prometheus metrics of the gateway (one registry per app, so tests and several apps in a
process do not collide). Updated after the response is built: cheap counter bumps, no I/O."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("routenlp_requests", "chat completion requests",
                                ["task", "tier", "status"], registry=r)
        self.tier_calls = Counter("routenlp_tier_calls", "tier calls made by the cascade",
                                  ["task", "tier", "outcome"], registry=r)
        self.escalations = Counter("routenlp_escalations", "requests served above their start tier",
                                   ["task"], registry=r)
        self.cost = Counter("routenlp_cost_usd", "cost summed over all attempted tiers",
                            ["task", "tier"], registry=r)
        self.latency = Histogram("routenlp_request_latency_seconds", "gateway request latency",
                                 ["task", "tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.tier_latency = Histogram("routenlp_tier_latency_seconds", "one tier call's latency",
                                      ["task", "tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("routenlp_rejected_requests", "requests refused before routing",
                                ["reason"], registry=r)
        self.breaker_open = Gauge("routenlp_tier_breaker_open", "1 while a tier's breaker is open",
                                  ["tier"], registry=r)
        self.log_pending = Gauge("routenlp_log_pending", "request records waiting to be stored",
                                 registry=r)

    def observe_result(self, task: str, record: dict, status: str, seconds: float) -> None:
        tier = str(record.get("tier") or "none")
        self.requests.labels(task, tier, status).inc()
        self.latency.labels(task, tier).observe(seconds)
        if record.get("escalated"):
            self.escalations.labels(task).inc()
        for step in record.get("steps") or []:
            if step.get("skipped_reason") is not None:
                outcome = "skipped"
            elif step.get("error"):
                outcome = "error"
            else:
                outcome = "accepted" if step.get("accepted") else "rejected"
            name = str(step.get("tier"))
            self.tier_calls.labels(task, name, outcome).inc()
            if outcome != "skipped":
                self.tier_latency.labels(task, name).observe(float(step.get("latency_ms") or 0) / 1000)
                self.cost.labels(task, name).inc(float(step.get("cost") or 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
