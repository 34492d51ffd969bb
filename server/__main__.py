"""``python -m server``: flags and ``INPAINT_*`` variables -> ServerConfig -> run the app.

The flags are generated from ``config.py`` (see ``cli.py``); ``--help`` lists them all.
"""

from __future__ import annotations

import asyncio
import sys

from .cli import ConfigError, build_parser, config_from_args, unknown_variables
from .config import ServerConfig
from .http.app import create_app
from .http.serve import serve
from .logs import setup_logging
from .models.instances import check_count
from .service.admission import return_freed_memory


def check_provider(config: ServerConfig) -> None:
    """Fail at start, with what to install, when an explicitly requested provider is missing
    (a typo'd or unavailable provider would otherwise only show up per model in /v1/models)."""
    from .models.providers import select_provider

    select_provider(config.models.provider, threads=config.models.threads)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config, generated = config_from_args(args)
        setup_logging(config.logging.log_level, config.logging.log_format)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in unknown_variables():
        print(f"warning: {name} is not a setting of this server (ignored)", file=sys.stderr)
    if generated:
        # Printed once, to stdout only (never logged): the caller needs it to make requests.
        print(
            f"No API key configured; generated one for this run:\n\n    {config.auth.api_keys[0]}\n",
            flush=True,
        )
    return_freed_memory()
    try:
        check_provider(config)
        check_count(config.models.instances)
        app = create_app(config)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    http = config.http
    # a bind address a browser can open: wildcards -> loopback, IPv6 in brackets
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(http.host, http.host)
    base = f"http://{f'[{host}]' if ':' in host else host}:{http.port}"
    print(f"Serving on {base} (models dir: {config.models.models_dir})", flush=True)
    # the playground page: with a generated key, an address that logs the browser in
    if generated:
        print(f"Playground: {base}/#key={config.auth.api_keys[0]}", flush=True)
    elif config.auth.no_auth:
        print(f"Playground: {base}/ (auth is off)", flush=True)
    else:
        print(f"Playground: {base}/ (enter your API key on the page)", flush=True)
    asyncio.run(serve(app, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
