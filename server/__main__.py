"""``python -m server``: flags and environment variables -> ServerConfig -> run the app.

Every flag has an environment variable (shown in ``--help``); a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from .app import create_app
from .auth import generate_key, read_keys_file
from .config import Limits, ServerConfig


def _env(name: str, default=None):
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--host", default=_env("HOST", "127.0.0.1"), help="bind address (env HOST)")
    a("--port", type=int, default=int(_env("PORT", 8000)), help="port (env PORT)")
    a(
        "--models-dir",
        type=Path,
        default=Path(_env("MODELS_DIR", "models")),
        help="folder of exported models (env MODELS_DIR)",
    )
    a(
        "--api-key",
        action="append",
        default=[],
        help="accepted key; repeatable (env API_KEYS, comma-separated)",
    )
    a(
        "--api-keys-file",
        type=Path,
        default=_env("API_KEYS_FILE"),
        help="file with one key per line (env API_KEYS_FILE)",
    )
    a(
        "--no-auth",
        action="store_true",
        default=_env("NO_AUTH", "") in ("1", "true"),
        help="accept requests without a key, for local use (env NO_AUTH=1)",
    )
    a(
        "--default-model",
        default=_env("DEFAULT_MODEL"),
        help="model used when a request names none (env DEFAULT_MODEL); default: the first "
        "exported model, else the built-in one",
    )
    a(
        "--provider",
        default=_env("PROVIDER", "auto"),
        help="execution provider for exported models: auto, cpu, cuda, tensorrt, openvino, "
        "openvino:bf16, openvino:f16 (env PROVIDER); auto = cuda if available, else cpu",
    )
    a(
        "--threads",
        type=int,
        default=_env("THREADS") and int(_env("THREADS")),
        help="CPU threads per model session (env THREADS); default: all cores",
    )
    a(
        "--public-url",
        default=_env("PUBLIC_URL"),
        help="base URL for url responses (env PUBLIC_URL); default: from the request's Host",
    )
    a(
        "--files-dir",
        type=Path,
        default=_env("FILES_DIR"),
        help="where url images are kept (env FILES_DIR); default: a temp dir, lost on restart",
    )
    a(
        "--max-batch-size",
        type=int,
        default=int(_env("MAX_BATCH_SIZE", 4)),
        help="rows (images) per model call (env MAX_BATCH_SIZE)",
    )
    a(
        "--max-wait-ms",
        type=float,
        default=float(_env("MAX_WAIT_MS", 10)),
        help="how long a new single-pass batch waits for company; diffusion models never wait, "
        "late rows join at the next step (env MAX_WAIT_MS)",
    )
    a(
        "--max-queue",
        type=int,
        default=int(_env("MAX_QUEUE", 64)),
        help="queued rows per model before 429 (env MAX_QUEUE)",
    )
    a(
        "--request-timeout",
        type=float,
        default=float(_env("REQUEST_TIMEOUT", 600)),
        help="seconds before a queued/running request gets 504 (env REQUEST_TIMEOUT)",
    )
    a(
        "--rate-limit",
        type=int,
        default=int(_env("RATE_LIMIT", 0)),
        help="requests per minute per API key, 0 = off (env RATE_LIMIT)",
    )
    a(
        "--cors-origin",
        action="append",
        default=[o for o in _env("CORS_ORIGINS", "").split(",") if o],
        help="allowed CORS origin; repeatable (env CORS_ORIGINS); default: CORS off",
    )
    a(
        "--shutdown-grace",
        type=float,
        default=float(_env("SHUTDOWN_GRACE", 30)),
        help="seconds in-flight work may finish after SIGTERM (env SHUTDOWN_GRACE)",
    )
    a(
        "--max-body-mb",
        type=float,
        default=float(_env("MAX_BODY_MB", 64)),
        help="largest request body (env MAX_BODY_MB) -> 413",
    )
    a(
        "--max-image-mb",
        type=float,
        default=float(_env("MAX_IMAGE_MB", 25)),
        help="largest uploaded file (env MAX_IMAGE_MB)",
    )
    a(
        "--max-image-pixels",
        type=int,
        default=int(_env("MAX_IMAGE_PIXELS", 4096 * 4096)),
        help="largest decoded image, checked from the header (env MAX_IMAGE_PIXELS)",
    )
    a(
        "--max-request-pixels",
        type=int,
        default=int(_env("MAX_REQUEST_PIXELS", 10 * 2048 * 2048)),
        help="n x output width x height per request (env MAX_REQUEST_PIXELS)",
    )
    a(
        "--max-images",
        type=int,
        default=int(_env("MAX_IMAGES", 16)),
        help="images per request (env MAX_IMAGES)",
    )
    a(
        "--max-prompt-chars",
        type=int,
        default=int(_env("MAX_PROMPT_CHARS", 32000)),
        help="prompt length (env MAX_PROMPT_CHARS)",
    )
    a(
        "--max-parts",
        type=int,
        default=int(_env("MAX_PARTS", 64)),
        help="multipart parts per request (env MAX_PARTS)",
    )
    a(
        "--max-field-kb",
        type=float,
        default=float(_env("MAX_FIELD_KB", 256)),
        help="size of one text field (env MAX_FIELD_KB)",
    )
    a(
        "--read-timeout",
        type=float,
        default=float(_env("READ_TIMEOUT", 30)),
        help="seconds a request body may stall before 408 (env READ_TIMEOUT)",
    )
    a("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def config_from_args(args: argparse.Namespace) -> tuple[ServerConfig, bool]:
    """ServerConfig plus whether the key was generated here (and must be printed once)."""
    keys = list(args.api_key)
    keys += [k.strip() for k in (_env("API_KEYS", "") or "").split(",") if k.strip()]
    if args.api_keys_file:
        keys += read_keys_file(args.api_keys_file)
    generated = False
    if not keys and not args.no_auth:
        keys = [generate_key()]
        generated = True
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_image_bytes=int(args.max_image_mb * 1024 * 1024),
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        max_images=args.max_images,
        max_prompt_chars=args.max_prompt_chars,
        max_parts=args.max_parts,
        max_field_bytes=int(args.max_field_kb * 1024),
        read_timeout_s=args.read_timeout,
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        models_dir=args.models_dir,
        api_keys=tuple(keys),
        no_auth=args.no_auth,
        default_model=args.default_model,
        provider=args.provider,
        threads=args.threads,
        public_url=args.public_url,
        files_dir=args.files_dir,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        rate_limit_per_minute=args.rate_limit,
        cors_origins=tuple(args.cors_origin),
        shutdown_grace_s=args.shutdown_grace,
        limits=limits,
    )
    return config, generated


def check_provider(config: ServerConfig) -> None:
    """Fail at start, with what to install, when an explicitly requested provider is missing
    (a typo'd or unavailable provider would otherwise only show up per model in /v1/models)."""
    from .models.providers import select_provider

    select_provider(config.provider, threads=config.threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config, generated = config_from_args(args)
    if generated:
        # Printed once, to stdout only (never logged): the caller needs it to make requests.
        print(
            f"No API key configured; generated one for this run:\n\n    {config.api_keys[0]}\n",
            flush=True,
        )
    try:
        check_provider(config)
        app = create_app(config)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Serving on http://{config.host}:{config.port} (models dir: {config.models_dir})",
        flush=True,
    )
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        print=None,
        shutdown_timeout=config.shutdown_grace_s,
        handler_cancellation=True,
        access_log_format='%a "%r" %s %b %Tfs',
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
