"""``python -m server``'s arguments, generated from the declarations in ``config.py``.

- ``settings()``: one ``Setting`` per config field (flag, environment variable, type, default).
- ``build_parser(environ)``: argparse flags whose defaults come from the environment.
- ``config_from_args(args)``: the ``ServerConfig`` (API keys resolved: flags + variable + file,
  or one generated key).
- ``config_table()``: the configuration table of docs/configuration.md (``python -m
  server.cli`` prints it, ``python -m server.cli docs/configuration.md`` rewrites its block).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .auth import generate_key, read_keys_file
from .config import ENV_PREFIX, ServerConfig, make_config

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: what a setting may be (a tuple holds strings)
_TYPES = (int, float, str, bool, Path, tuple)


class ConfigError(ValueError):
    """An environment variable holds a value its setting cannot take."""


@dataclass(frozen=True)
class Setting:
    section: str  # the ServerConfig field holding it ("http", "limits"...)
    name: str  # the field name inside that section
    type: type  # int, float, str, bool, Path or tuple (of str)
    optional: bool  # None is a valid value
    default: Any
    help: str
    flag: str
    env: str
    repeatable: bool

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.name}"

    def parse(self, text: str) -> Any:
        """One value from its text form (an environment variable's)."""
        if self.type is bool:
            if text.strip().lower() in _TRUE:
                return True
            if text.strip().lower() in _FALSE:
                return False
            raise ConfigError(f"{self.env}={text!r}: use 1/true or 0/false")
        if self.repeatable:
            return [item.strip() for item in text.split(",") if item.strip()]
        try:
            return self.type(text)
        except ValueError:
            raise ConfigError(f"{self.env}={text!r}: expected {self.type.__name__}") from None


def _unwrap(hint: Any) -> tuple[type, bool]:
    """(base type, optional) of a field annotation such as ``int | None`` or ``tuple[str, ...]``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        base = [a for a in args if a is not type(None)]
        return _unwrap(base[0])[0], True
    origin = typing.get_origin(hint)
    return (origin or hint), False


def settings() -> list[Setting]:
    out = []
    for section in dataclasses.fields(ServerConfig):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            base, optional = _unwrap(hints[f.name])
            if base not in _TYPES:
                raise TypeError(f"{section.name}.{f.name}: settings cannot be of type {base}")
            meta = f.metadata
            out.append(
                Setting(
                    section=section.name,
                    name=f.name,
                    type=base,
                    optional=optional,
                    default=f.default,
                    help=meta["help"],
                    flag=meta["flag"] or "--" + f.name.replace("_", "-"),
                    env=meta["env"] or ENV_PREFIX + f.name.upper(),
                    repeatable=meta["repeatable"],
                )
            )
    return out


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Flags for every setting; a set, non-empty environment variable replaces the default."""
    environ = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="python -m server",
        description="OpenAI-compatible image-edit (inpainting) server. Every flag has an "
        f"{ENV_PREFIX}* environment variable (shown with it); a flag wins over its variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for s in settings():
        raw = environ.get(s.env, "")
        default = s.parse(raw) if raw != "" else s.default
        help_text = f"{s.help} (env {s.env})"
        if s.type is bool:
            p.add_argument(
                s.flag, dest=s.dest, action="store_true", default=default, help=help_text
            )
        elif s.repeatable:
            # argparse copies a list default before appending: flags add to the variable's list.
            p.add_argument(
                s.flag, dest=s.dest, action="append", default=list(default), help=help_text
            )
        else:
            p.add_argument(s.flag, dest=s.dest, type=s.type, default=default, help=help_text)
    return p


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``INPAINT_*`` variables no setting reads (a typo, or a renamed setting)."""
    environ = os.environ if environ is None else environ
    known = {s.env for s in settings()}
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


def config_from_args(args: argparse.Namespace) -> tuple[ServerConfig, bool]:
    """ServerConfig plus whether its API key was generated here (and must be printed once)."""
    values: dict[str, Any] = {}
    for s in settings():
        value = getattr(args, s.dest)
        values[s.name] = tuple(value) if s.repeatable else value
    keys = list(values["api_keys"])
    if values["api_keys_file"]:
        keys += read_keys_file(values["api_keys_file"])
    generated = not keys and not values["no_auth"]
    if generated:
        keys = [generate_key()]
    values["api_keys"] = tuple(dict.fromkeys(keys))
    return make_config(**values), generated


def _shown(value: Any) -> str:
    if value is None or value == ():
        return "-"
    if isinstance(value, bool):
        return "off" if not value else "on"
    return f"`{value}`"


def config_table() -> str:
    """The configuration table of docs/configuration.md (Markdown), one row per setting."""
    lines = [
        "| flag | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for s in settings():
        lines.append(f"| `{s.flag}` | `{s.env}` | {_shown(s.default)} | {s.help} |")
    return "\n".join(lines) + "\n"


TABLE_BLOCK = ("<!-- config-table -->\n", "<!-- /config-table -->")


def write_config_table(path: Path) -> None:
    """Replace the generated block of ``path`` (docs/configuration.md) with ``config_table()``."""
    text = Path(path).read_text()
    begin, end = TABLE_BLOCK
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    Path(path).write_text(head + begin + config_table() + end + tail)


if __name__ == "__main__":
    # python -m server.cli            prints the table
    # python -m server.cli docs/configuration.md  rewrites its generated block
    if len(sys.argv) > 1:
        write_config_table(Path(sys.argv[1]))
    else:
        sys.stdout.write(config_table())
