"""One frozen ServerConfig, built from CLI flags and environment variables in ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """Input limits; each maps to an OpenAI-shaped error (see README, "Limits")."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_image_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    #: n x output width x output height, summed over a request.
    max_request_pixels: int = 10 * 2048 * 2048
    max_images: int = 16
    max_prompt_chars: int = 32000
    max_parts: int = 64
    max_field_bytes: int = 256 * 1024
    #: seconds without progress while reading a request body
    read_timeout_s: float = 30.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models_dir: Path = Path("models")
    api_keys: tuple[str, ...] = ()
    no_auth: bool = False
    default_model: str | None = None
    provider: str = "auto"
    threads: int | None = None
    #: public base URL for `url` responses; default: from the request's Host header.
    public_url: str | None = None
    files_dir: Path | None = None  # default: a temp dir
    file_ttl_s: int = 3600
    max_batch_size: int = 4
    max_wait_ms: float = 10.0
    max_queue: int = 64
    request_timeout_s: float = 600.0
    rate_limit_per_minute: int = 0  # 0 = off
    cors_origins: tuple[str, ...] = ()
    shutdown_grace_s: float = 30.0
    limits: Limits = field(default_factory=Limits)
