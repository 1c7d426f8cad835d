"""The one TOML reader (tomllib on Python 3.11+, tomli before) and its error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recforge.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str, source: str = "TOML") -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes a `ConfigError` naming `source` and the line."""
    try:
        return tomllib.loads(text)
    except TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc


def load_file(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML file; a missing file or bad syntax is a `ConfigError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from exc
    return loads(text, str(path))


def parse_value(text: str) -> Any:
    """A command-line value read as a TOML value (5, 1.5, true, [1, 2], "x"); anything else is a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except TOMLDecodeError:
        return text
