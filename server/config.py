"""Configuration: one frozen dataclass per concern, composed into ``ServerConfig``.

Each field is the single declaration of one setting: its name gives the flag (``--max-queue``)
and the environment variable (``INPAINT_MAX_QUEUE``); its default and ``help`` are the ones
``--help`` and docs/configuration.md's table show (``server/cli.py`` generates both). A flag
wins over its variable. Nothing else in the server reads the environment.

Units are the ones an operator types (MB, KB, seconds); properties give bytes where code needs
them, so that no default is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .models.instances import MAX_LONE_SLOWDOWN, MIN_GAIN
from .protocol import MAX_IMAGES, MAX_PROMPT_CHARS

#: every environment variable of the server starts with this (harnesses drop them by prefix).
ENV_PREFIX = "INPAINT_"


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    env: str | None = None,
    repeatable: bool = False,
) -> Any:
    """A config field with its CLI metadata.

    ``flag`` / ``env`` override the names derived from the field name (``--field-name`` and
    ``INPAINT_FIELD_NAME``); ``repeatable`` tuple fields take the flag several times and the
    variable as a comma-separated list (both are combined).
    """
    meta = {"help": help, "flag": flag, "env": env, "repeatable": repeatable}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class HTTPConfig:
    host: str = option("127.0.0.1", "bind address")
    port: int = option(8000, "port")
    public_url: str | None = option(
        None, "base URL for url responses; default: from the request's Host header"
    )
    cors_origins: tuple[str, ...] = option(
        (), "allowed CORS origin; default: CORS off", flag="--cors-origin", repeatable=True
    )
    allowed_hosts: tuple[str, ...] = option(
        (),
        "Host header names accepted (others get 400); default: loopback names when bound to "
        "loopback, any name otherwise (then set --public-url for url links)",
        flag="--allowed-host",
        repeatable=True,
    )
    shutdown_grace: float = option(
        30.0,
        "seconds in-flight work may finish after SIGTERM; then it gets 503 and the process "
        "exits (within 2 s more)",
    )
    header_timeout: float = option(
        30.0, "seconds a connection may take to send a request's headers (and may stay idle)"
    )
    write_timeout: float = option(
        30.0,
        "seconds an edit's answer (JSON body or SSE stream) may stall on a client that reads "
        "none of it (each 256 KiB must be taken within it); then the connection is closed and "
        "its memory released",
    )
    trusted_proxies: tuple[str, ...] = option(
        (),
        "address or CIDR of a reverse proxy whose --forwarded-header names the client (the "
        "auth throttle, logs); default: none, the peer address is the client",
        flag="--trusted-proxy",
        repeatable=True,
    )
    forwarded_header: str = option(
        "x-forwarded-for",
        "the header trusted proxies write the client's address into: x-forwarded-for or "
        "forwarded (RFC 7239 for=); the other one is ignored, so a client cannot forge it",
    )


@dataclass(frozen=True)
class AuthConfig:
    api_keys: tuple[str, ...] = option(
        (),
        "accepted API key; default: one generated at start and printed once",
        flag="--api-key",
        repeatable=True,
    )
    api_keys_file: Path | None = option(None, "file with one key per line ('#' comments)")
    no_auth: bool = option(False, "accept requests without a key, for local use")
    rate_limit: int = option(0, "requests per minute per API key, 0 = off")
    rate_limit_per_user: int = option(
        0,
        "edit requests per minute per end user (safety_identifier, else user) under each API "
        "key, 0 = off; requests naming no end user count only against --rate-limit",
    )
    auth_failures_per_minute: int = option(
        30,
        "failed authentications per minute per client address (see --trusted-proxy) before "
        "its failing requests get 429 (a valid key always passes), 0 = off",
    )


@dataclass(frozen=True)
class ModelsConfig:
    models_dir: Path = option(Path("models"), "folder of exported models")
    default_model: str | None = option(
        None,
        "model used when a request names none; default: the first exported model, "
        "else the built-in one",
    )
    provider: str = option(
        "auto",
        "execution provider for exported models: auto, cpu, cuda, tensorrt, openvino, "
        "openvino:bf16, openvino:f16; auto = cuda if available, else per component the "
        "fastest precision this CPU computes natively (bf16/f16 on OpenVINO) that stays within "
        "its tolerance of fp32 and measures faster than fp32",
    )
    threads: int | None = option(
        None,
        "CPU threads per model (its budget, split between its instances); default: all cores",
    )
    static_shapes: int | None = option(
        None,
        "OpenVINO only: compile one graph per input-shape set and keep the N most recent per "
        "component (each new size or batch pays a compile, and memory for a copy of the "
        "weights); 0 = one dynamic graph per component. Default: 0, except under auto, which "
        "gives the UNet up to 4 static graphs for the shapes that come back, beside its "
        "dynamic graph, where they measured no slower on this CPU and memory allows",
    )
    amx_attention: str = option(
        "auto",
        "the AMX attention kernel in OpenVINO bf16 graphs (the UNet's long self-attentions): "
        "auto = where the CPU has AMX-BF16 and the kernel builds; on = the same, but refuse to "
        "start where it cannot run; off = OpenVINO's own attention (no rebuild needed)",
    )
    instances: int | None = option(
        None,
        "concurrent batches per exported model, sharing its sessions and splitting its "
        "threads; default: measured at load (one per thread when concurrent calls of the model "
        f"give >= {MIN_GAIN}x the throughput of one and a lone call stays within "
        f"{MAX_LONE_SLOWDOWN}x of its time, as for small models; else 1)",
    )


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = option(4, "rows (images) per model call")
    max_wait_ms: float = option(
        10.0,
        "how long a new single-pass batch waits for company; diffusion models never wait, "
        "late rows join at the next step",
    )
    max_queue: int = option(64, "queued rows per model before 429")
    request_timeout: float = option(600.0, "seconds before a queued/running request gets 504")


@dataclass(frozen=True)
class StorageConfig:
    files_dir: Path | None = option(
        None, "where url images are kept; default: a temp dir, lost on restart"
    )
    file_ttl: int = option(3600, "seconds a url image stays available")
    # S3: credentials come from boto3's chain (AWS_* variables, ~/.aws, roles), never from here
    s3_bucket: str | None = option(
        None,
        "S3-compatible bucket for url images, linked by presigned GETs that expire after "
        "--file-ttl; default: none (files in --files-dir)",
    )
    s3_prefix: str = option("inpaint/", "key prefix in --s3-bucket ('' or ending in '/')")
    s3_endpoint_url: str | None = option(
        None, "S3 API endpoint (MinIO, SeaweedFS, R2...); default: AWS"
    )
    s3_link_endpoint_url: str | None = option(
        None,
        "endpoint written into the links when clients reach the store at another address "
        "than the server does; default: --s3-endpoint-url",
    )
    s3_region: str | None = option(None, "region; default: boto3's (AWS_REGION, ~/.aws/config)")
    s3_addressing_style: str = option(
        "auto", "auto, path (most self-hosted stores) or virtual (bucket in the host name)"
    )
    s3_no_sweep: bool = option(
        False,
        "never list or delete expired objects (leave it to a bucket lifecycle rule; links "
        "still expire)",
    )


@dataclass(frozen=True)
class JobsConfig:
    """Asynchronous jobs (``Prefer: respond-async``): where their state lives, leases, webhooks."""

    database_url: str | None = option(
        None,
        "job (and shared rate-limit) database: postgresql://user@host/db for any number of "
        "replicas, or sqlite:///path; default: SQLite jobs.sqlite3 in --files-dir (one "
        "replica; a temp dir without --files-dir, lost on restart)",
    )
    lease_seconds: float = option(
        30.0,
        "a running job's lease, renewed while it runs; a job whose replica died is run again "
        "this long after its last renewal",
    )
    max_queued_jobs: int = option(1000, "queued jobs per API key before 429")
    max_stored_results_mb: float = option(
        1024.0,
        "megabytes of finished job results kept per API key: storing a new result deletes "
        "that key's oldest ones beyond it (their jobs then read as expired)",
    )
    webhook_secret: str | None = option(
        None,
        "Standard Webhooks signing secret, whsec_ + base64 of 24..64 random bytes; "
        "default: none, webhook_url is refused",
    )
    webhook_retries: int = option(6, "webhook attempts after the first before giving up")
    webhook_backoff: float = option(
        2.0, "seconds before the first webhook retry, doubled at each further one (max 600)"
    )
    webhook_timeout: float = option(
        10.0, "seconds one webhook attempt may take in all (connection, request, answer)"
    )
    webhook_allow_private: bool = option(
        False,
        "allow webhook URLs on loopback, private, link-local and other non-public addresses "
        "(refused by default against SSRF)",
    )

    @property
    def max_stored_results_bytes(self) -> int:
        return int(self.max_stored_results_mb * 1024 * 1024)


@dataclass(frozen=True)
class FilesConfig:
    """Files (``/v1/files``) and the Batch API (``/v1/batches``); files live in the url
    images' store and at most ``--file-ttl`` seconds."""

    max_file_mb: float = option(64.0, "largest file uploaded to /v1/files (413 over it)")
    max_batch_requests: int = option(1000, "lines (requests) in one batch input file")
    max_stored_files_mb: float = option(
        2048.0, "bytes of uploaded files one API key may keep (MB; 429 past it)"
    )

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def max_stored_files_bytes(self) -> int:
        return int(self.max_stored_files_mb * 1024 * 1024)


@dataclass(frozen=True)
class ImageURLConfig:
    """Images a JSON edit names by http(s) URL: fetched only from the hosts allowed here."""

    image_url_allow: tuple[str, ...] = option(
        (),
        "host whose http(s) image URLs a JSON edit may name: a name (images.example.com), "
        "*.example.com for its subdomains, or * for any public host; default: none, image "
        "URLs are refused (send data URLs or file_id)",
        flag="--image-url-allow",
        repeatable=True,
    )
    image_url_timeout: float = option(
        10.0, "seconds one image URL fetch may take, all of it (lookup, connection, body)"
    )
    image_url_allow_private: bool = option(
        False,
        "allow image URLs on loopback, private, link-local and other non-public addresses "
        "(refused by default against SSRF)",
    )


@dataclass(frozen=True)
class Limits:
    """Input limits; each maps to an OpenAI-shaped error (README, "Limits")."""

    max_body_mb: float = option(64.0, "largest request body -> 413")
    max_image_mb: float = option(25.0, "largest uploaded file")
    max_image_pixels: int = option(4096 * 4096, "largest decoded image, checked from the header")
    max_request_pixels: int = option(10 * 2048 * 2048, "n x output width x height per request")
    max_images: int = option(MAX_IMAGES, "images per request")
    max_prompt_chars: int = option(MAX_PROMPT_CHARS, "prompt length")
    max_parts: int = option(64, "multipart parts per request")
    max_field_kb: float = option(256.0, "size of one text field")
    read_timeout: float = option(30.0, "seconds a request body may stall before 408")
    body_timeout: float = option(300.0, "seconds the whole request body may take before 408")
    min_body_rate_kb: float = option(
        8.0, "slowest body upload accepted after its first 10 s, in KB/s (408 below)"
    )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_field_bytes(self) -> int:
        return int(self.max_field_kb * 1024)


@dataclass(frozen=True)
class AdmissionConfig:
    memory_budget_mb: float | None = option(
        None,
        "memory for decoding, compositing and encoding across concurrent requests (429 over "
        "it); default: a quarter of the machine's memory, at least 1024",
    )
    request_threads: int = option(
        4, "threads that decode, composite and encode (whatever the core count)"
    )


@dataclass(frozen=True)
class LoggingConfig:
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = option(
        "text", "text (control characters escaped) or json (one object per line)"
    )


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server is configured with; flows into constructors, never read globally."""

    http: HTTPConfig = field(default_factory=HTTPConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    limits: Limits = field(default_factory=Limits)
    image_urls: ImageURLConfig = field(default_factory=ImageURLConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def without_server_env(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` minus every server setting, for harnesses that configure it by flags only."""
    return {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}


def make_config(**values: Any) -> ServerConfig:
    """A ServerConfig from flat setting names (``max_queue=8, no_auth=True``), each routed to
    the section that declares it; unknown names are a TypeError."""
    sections: dict[str, dict[str, Any]] = {}
    owners = {
        f.name: section.name
        for section in fields(ServerConfig)
        for f in fields(section.default_factory)
    }
    for name, value in values.items():
        if name not in owners:
            raise TypeError(f"unknown setting {name!r}")
        sections.setdefault(owners[name], {})[name] = value
    return ServerConfig(
        **{
            section.name: section.default_factory(**sections.get(section.name, {}))
            for section in fields(ServerConfig)
        }
    )
