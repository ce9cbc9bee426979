"""``audit.toml``: one section per subcommand, dataclasses, validated with messages that name
the bad field and value. CLI options override the file; the file overrides built-in defaults.

Example::

    workspace = "my-audit"          # default workspace for every stage

    [embed]
    model = "ViT-B-32"
    pretrained = "laion2b_s34b_b79k"
    batch_size = 256

    [dedup]
    threshold = 0.95

    [run]
    stages = ["embed", "dedup", "concepts", "replication", "objects", "poisons", "report"]
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomllib

C = TypeVar("C")

TOP_LEVEL_KEYS = {"workspace"}


class ConfigError(ValueError):
    """A bad configuration value; the message names the field and the value."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an ``audit.toml``; raise ``ConfigError`` with the file name on syntax errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    for key, value in data.items():
        if not isinstance(value, dict) and key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{p}: top-level key '{key}' is not a known setting "
                f"(known: {', '.join(sorted(TOP_LEVEL_KEYS))}; stage options go in [sections])"
            )
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(field: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; raise ConfigError naming ``field``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(field, value, a)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{field}: invalid value (got {value!r})")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(f"{field}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{field}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{field}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{field}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{field}: unsupported option type {_type_name(tp)}")


def merge(
    config_cls: type[C],
    section: str,
    file_values: dict[str, Any] | None,
    args: argparse.Namespace | None = None,
) -> C:
    """Build ``config_cls`` from dataclass defaults < ``audit.toml`` section < CLI options.

    CLI options are taken from ``args`` when their value is not ``None`` (every option is
    declared with ``default=None`` so an absent option never hides the file's value).
    Unknown keys in the file are an error naming the section and the key.
    """
    values = check_section(config_cls, section, file_values)
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    if args is not None:
        for name in fields:
            value = getattr(args, name, None)
            if value is not None:
                values[name] = _coerce(f"{section}.{name}", value, hints[name])
    try:
        return config_cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from exc


def check_section(
    config_cls: type, section: str, file_values: dict[str, Any] | None
) -> dict[str, Any]:
    """The values of one ``audit.toml`` section, each checked against its option's type
    (unknown keys and wrong types raise ``ConfigError`` naming ``section.key``); cross-field
    rules and required options are left to ``config_cls`` itself (see :func:`merge`)."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    values: dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(
                f"{section}.{key}: unknown option (known: {', '.join(sorted(fields))})"
            )
        values[name] = _coerce(f"{section}.{name}", value, hints[name])
    return values


def require(condition: bool, field: str, message: str, value: Any) -> None:
    """Raise ``ConfigError("field: message (got value)")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{field}: {message} (got {value!r})")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a plain, TOML/JSON-friendly dict (for the report's run metadata)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = str(v) if isinstance(v, Path) else v
    return out
