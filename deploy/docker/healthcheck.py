"""Container health check (the images' HEALTHCHECK): exit 0 when the server's ``/health``
answers 200, else print why and exit 1.

The slim images carry no curl, so this is Python. It resolves the address exactly as the
server does (its own flag parser: ``INPAINT_PORT``, ``INPAINT_HOST``, defaults from
``server/config.py``); /health answers whatever Host it is called with. Kubernetes does not
run this; the Deployment's probes call /health and /ready themselves.

Usage: ``python healthcheck.py [timeout seconds, default 5]``.
"""

from __future__ import annotations

import sys
import urllib.request

from server.cli import build_parser

#: a bind address that means "every interface" is reached on loopback from inside
ANY_ADDRESS = ("0.0.0.0", "::", "")


def health_url() -> str:
    """The URL of /health from the server's own settings."""
    args = build_parser().parse_args([])
    host = getattr(args, "http.host")
    port = getattr(args, "http.port")
    target = "127.0.0.1" if host in ANY_ADDRESS else host
    if ":" in target:  # an IPv6 literal
        target = f"[{target}]"
    return f"http://{target}:{port}/health"


def main(argv: list[str]) -> int:
    timeout = float(argv[0]) if argv else 5.0
    url = health_url()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return 0
            print(f"unhealthy: {url} answered {response.status}", file=sys.stderr)
    except OSError as exc:  # refused, timed out, or an HTTP error status (HTTPError)
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
