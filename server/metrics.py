"""Prometheus metrics, one registry per app (no module globals, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inpaint_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "inpaint_request_latency_seconds",
            "Edit request latency, end to end",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "inpaint_queue_seconds",
            "Time a request's rows waited before their first model call",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "inpaint_batch_rows",
            "Rows per model call (UNet call for diffusion models)",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
        )
        self.steps = Counter(
            "inpaint_denoising_steps", "Denoising row-steps computed", ["model"], registry=r
        )
        self.images = Counter("inpaint_images", "Images produced", ["model"], registry=r)
        self.queue_depth = Gauge(
            "inpaint_queue_depth", "Rows waiting or running", ["model"], registry=r
        )
        self.model_errors = Counter(
            "inpaint_model_errors", "Model calls that failed", ["model"], registry=r
        )
        # async jobs (server/jobs): the queue lives in the database, shared by all replicas
        self.jobs_queued = Gauge(
            "inpaint_jobs_queued",
            "Queued jobs in the job database (every replica reports the same count: use max)",
            registry=r,
        )
        self.jobs_running = Gauge(
            "inpaint_jobs_running", "Jobs this replica is running", registry=r
        )
        self.jobs_submitted = Counter(
            "inpaint_jobs_submitted", "Jobs created (idempotent replays excluded)", registry=r
        )
        self.jobs_finished = Counter(
            "inpaint_jobs_finished", "Jobs this replica settled, by status", ["status"], registry=r
        )
        self.jobs_claimed = Counter(
            "inpaint_jobs_claimed", "Jobs this replica took from the queue", registry=r
        )
        self.jobs_lease_renewals = Counter(
            "inpaint_jobs_lease_renewals", "Lease renewals of running jobs", registry=r
        )
        self.jobs_recovered = Counter(
            "inpaint_jobs_recovered",
            "Jobs run again after their replica died (lease expired, or requeued at start)",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "inpaint_webhook_deliveries",
            "Webhook attempts: success, retry (failed, another comes), failed (gave up)",
            ["result"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
