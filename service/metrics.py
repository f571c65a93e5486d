"""All Prometheus metrics of the service, on a per-app registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

# Dense around the 512x512 real-time target (tens to hundreds of ms), 5 ms .. 2.5 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25,
    0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5,
)  # fmt: skip
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Seconds, accepted -> finished: from under a second (small, untiled) to an hour (STYA2K_JOB_TIMEOUT_S).
JOB_DURATION_BUCKETS_S: tuple[float, ...] = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# expired: a done job's result dropped (its time to live passed, room for newer results, or deleted by the client)
JOB_OUTCOMES = ("done", "failed", "cancelled", "expired")
REJECTION_REASONS = ("queue_full", "deadline", "invalid", "too_large", "oom")
PREFIX = "stya2k"
# idle_timeout: silent past the header timeout; header_timeout / body_timeout: 408 for a half-sent request;
# evicted_idle: an idle connection closed to make room at the connection limit; refused: 503 at the limit.
# probe_slot: accepted beyond the limit for health checks only.
CONNECTION_EVENTS = (
    "idle_timeout", "header_timeout", "header_too_large", "bad_request", "body_timeout", "evicted_idle", "probe_slot",
    "refused",
)  # fmt: skip


class ServiceMetrics:
    """Owns the registry; every other module records through these attributes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def stage_histogram(name: str, what: str) -> Histogram:
            return Histogram(f"{PREFIX}_{name}_seconds", what, buckets=LATENCY_BUCKETS_S, registry=r)

        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end latency of transfer requests, arrival to last byte handed to the server",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = stage_histogram("queue_wait", "Time a request waited in the batch queue")
        self.decode_time = stage_histogram("decode", "Time decoding and preparing the input images")
        self.compute_time = stage_histogram("compute", "Model time of one batch (forward pass and transfers)")
        self.encode_time = stage_histogram("encode", "Time encoding the output image")
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Requests per model forward pass", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting in the batch queue", registry=r)
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Transfer requests being handled (any stage)", registry=r
        )
        self.batches = Counter(f"{PREFIX}_batches", "Model forward passes run", registry=r)
        self.style_cache_hits = Counter(
            f"{PREFIX}_style_cache_hits", "Style features served from the cache", registry=r
        )
        self.style_cache_misses = Counter(
            f"{PREFIX}_style_cache_misses", "Style features that had to be encoded", registry=r
        )
        self.style_cache_bytes = Gauge(
            f"{PREFIX}_style_cache_bytes", "Bytes of style features held in the cache", registry=r
        )
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections", "Transfer requests refused, by reason", ["reason"], registry=r
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason)  # export zeros so dashboards see every series
        self.connections_open = Gauge(
            f"{PREFIX}_connections_open", "Client connections open (HTTP/1.1, counted by the server)", registry=r
        )
        self.connection_events = Counter(
            f"{PREFIX}_connection_events",
            "Connections closed or refused by the server's guards (service/connections.py), by event",
            ["event"],
            registry=r,
        )
        for event in CONNECTION_EVENTS:
            self.connection_events.labels(event=event)
        self.jobs_queued = Gauge(
            f"{PREFIX}_jobs_queued", "Jobs accepted and waiting to run (Redis store: in the shared queue)", registry=r
        )
        # The autoscaler's signal (docs/DEPLOY.md): with the Redis store both count the shared queue, so every
        # replica reports the same value (take the max, not the sum, across replicas).
        self.jobs_oldest_queued_age = Gauge(
            f"{PREFIX}_jobs_oldest_queued_age_seconds", "Age of the oldest job waiting to run (0: none waiting)",
            registry=r,
        )
        self.jobs_running = Gauge(f"{PREFIX}_jobs_running", "Jobs running (0 or 1: one at a time)", registry=r)
        self.jobs_finished = Counter(
            f"{PREFIX}_jobs_finished", "Jobs by how they ended (expired: a done job's result dropped)", ["outcome"],
            registry=r,
        )
        for outcome in JOB_OUTCOMES:
            self.jobs_finished.labels(outcome=outcome)
        self.job_duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Jobs' time from acceptance to their end, by outcome (done, failed, cancelled)",
            ["outcome"],
            buckets=JOB_DURATION_BUCKETS_S,
            registry=r,
        )
        self.job_result_bytes = Gauge(
            f"{PREFIX}_job_result_bytes", "Bytes of finished jobs' results held for download", registry=r
        )
        self.model_info = Info(f"{PREFIX}_model", "The loaded model", registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the service accepts work, 0 otherwise", registry=r)

    def reject(self, reason: str | None) -> None:
        if reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason).inc()

    def render(self) -> tuple[bytes, str]:
        """Text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
