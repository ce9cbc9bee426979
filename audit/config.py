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
from dataclasses import dataclass
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


# ----------------------------------------------------------------------- declared options
#
# Each option of a stage is declared once, as a field of the stage's ``Config`` dataclass:
#
#     @dataclass
#     class Config(Options):
#         threshold: float | None = option(None, help="near-duplicate cosine", gt=-1, lt=1,
#                                          default_help="0.5 in copy space")
#         kinds: list[str] = option(["exact", "near"], help="kinds to find",
#                                   choices=("exact", "near", "caption"), nonempty=True)
#
#         def check(self) -> None:  # cross-field rules only
#             ...
#
# ``add_options(parser, Config)`` generates the argparse flags (``--threshold``, default None
# so that an absent flag never hides audit.toml, the default and choices written into the
# help), and ``Options.__post_init__`` checks types' bounds and choices with messages naming
# ``section.field``, then calls ``check()``.

_MISSING = dataclasses.MISSING

GROUP_DESCRIPTIONS = {
    "Beam runner": "Any other --flag is passed to Beam's PipelineOptions, e.g. "
    "--direct_num_workers 2 --direct_running_mode multi_processing, or --runner "
    "DataflowRunner --project P --region R --temp_location gs://B/tmp.",
}


def option(
    default: Any = _MISSING,
    *,
    help: str,  # noqa: A002 - the argparse word
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    metavar: str | None = None,
    choices: Any = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
    default_help: str | None = None,
    group: str | None = None,
    cli: bool = True,
    repeat: bool = False,
    parse: Any = None,
) -> Any:
    """A config field with everything the CLI and the validation need.

    ``default``: a value, or a list/dict (copied per instance). ``choices``: a tuple, or a
    zero-argument callable returning one (imported lazily). ``ge``/``gt``/``le``/``lt``: numeric
    bounds (``None`` values are not checked). ``nonempty``: a list must hold an item.
    ``default_help``: what the help says instead of the literal default (e.g. "calibrated
    for the model"). ``group``: an argparse group title. ``cli=False``: audit.toml only.
    ``repeat``: a list option whose flag may be given several times (argparse ``append``; a
    value that is itself a comma list stays one item: the stage's ``check()`` splits it).
    ``parse``: the flag's argparse ``type`` when the field's own type is not enough (e.g. a
    number also accepted as a fraction like ``8/255``).
    """
    meta = {
        "help": help,
        "flag": flag,
        "aliases": tuple(aliases),
        "metavar": metavar,
        "choices": choices,
        "bounds": {"ge": ge, "gt": gt, "le": le, "lt": lt},
        "nonempty": nonempty,
        "default_help": default_help,
        "group": group,
        "cli": cli,
        "repeat": repeat,
        "parse": parse,
    }
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _choices(meta: dict[str, Any]) -> tuple[Any, ...] | None:
    c = meta.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


def _declared(config_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(config_cls)
    return [
        (f, hints[f.name])
        for f in dataclasses.fields(config_cls)
        if f.init and "help" in f.metadata
    ]


def _is_list(tp: Any) -> bool:
    if typing.get_origin(tp) in (list, tuple):
        return True
    return any(typing.get_origin(a) in (list, tuple) for a in typing.get_args(tp))


def _scalar(tp: Any) -> Any:
    """The non-None type of ``X | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and args else tp


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def option_help(f: dataclasses.Field, extra: str = "") -> str:
    """An option's help text, then ``extra`` (e.g. the list format), then its default."""
    meta = f.metadata
    text = meta["help"] + extra
    default = _default_of(f)
    if meta.get("default_help"):
        text += f" (default: {meta['default_help']})"
    elif default is not _MISSING and default is not None and not isinstance(default, bool):
        text += f" (default: {_render(default)})"
    return text.replace("%", "%%")


def add_options(
    parser: argparse.ArgumentParser | Any, config_cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """argparse flags for every declared field of ``config_cls`` (see :func:`option`)."""
    groups: dict[str, Any] = {}
    for f, tp in _declared(config_cls):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in skip:
            continue
        target = parser
        if meta.get("group"):
            title = meta["group"]
            if title not in groups:
                groups[title] = parser.add_argument_group(title, GROUP_DESCRIPTIONS.get(title))
            target = groups[title]
        flags = [meta.get("flag") or "--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        scalar = _scalar(tp)
        extra = ""
        if scalar is bool:
            if _default_of(f) is True:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["action"] = "store_const"
                kwargs["const"] = True
        elif _is_list(tp):
            kwargs["metavar"] = meta.get("metavar") or "LIST"
            if meta.get("repeat"):
                kwargs["action"] = "append"
            choices = _choices(meta)
            extra = (
                ("; repeatable, " if meta.get("repeat") else "; ")
                + "comma-separated"
                + (f", from {','.join(map(str, choices))}" if choices else "")
            )
        else:
            if scalar in (int, float):
                kwargs["type"] = scalar
            choices = _choices(meta)
            if choices:
                kwargs["choices"] = choices
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            elif not choices:
                kwargs["metavar"] = {int: "N", float: "X"}.get(scalar, f.name.upper())
        if meta.get("parse") is not None:
            kwargs["type"] = meta["parse"]
        kwargs["help"] = option_help(f, extra)
        target.add_argument(*flags, **kwargs)


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bound_ok(value: float, op: str, limit: float) -> bool:
    return {
        "ge": value >= limit,
        "gt": value > limit,
        "le": value <= limit,
        "lt": value < limit,
    }[op]


def check_declared(cfg: Any, section: str) -> None:
    """Choices, bounds and non-empty lists of every declared field of ``cfg``."""
    for f, tp in _declared(type(cfg)):
        meta = f.metadata
        value = getattr(cfg, f.name)
        name = f"{section}.{f.name}"
        if value is None:
            continue
        items = list(value) if _is_list(tp) else [value]
        if meta.get("nonempty") and not items:
            raise ConfigError(f"{name}: needs at least one value (got {value!r})")
        choices = _choices(meta)
        if choices:
            for item in items:
                require(
                    item in choices, name, f"must be one of {', '.join(map(str, choices))}", item
                )
        bounds = {k: v for k, v in meta.get("bounds", {}).items() if v is not None}
        if bounds:
            for item in items:
                for op, limit in bounds.items():
                    if not _bound_ok(item, op, limit):
                        text = " and ".join(
                            f"{_BOUND_TEXT[o]} {lim:g}" for o, lim in bounds.items()
                        )
                        require(False, name, f"must be {text}", item)


class Options:
    """Base of the stages' ``Config`` dataclasses: declared checks, then ``check()``.

    The ``audit.toml`` section is the stage module's name (``SECTION`` overrides it)."""

    SECTION: typing.ClassVar[str | None] = None

    @classmethod
    def section(cls) -> str:
        return cls.SECTION or cls.__module__.rsplit(".", 1)[-1]

    def __post_init__(self) -> None:
        check_declared(self, self.section())
        self.check()

    def check(self) -> None:
        """Cross-field rules (override); single-field rules belong in :func:`option`."""


def options_table(config_cls: type) -> list[dict[str, Any]]:
    """Every declared option as a row (name, flag, default, help): for docs and `--help`."""
    rows = []
    for f, _ in _declared(config_cls):
        meta = f.metadata
        default = _default_of(f)
        rows.append(
            {
                "name": f.name,
                "flag": (meta.get("flag") or "--" + f.name.replace("_", "-"))
                if meta.get("cli", True)
                else None,
                "default": meta.get("default_help")
                or (
                    None
                    if default is _MISSING
                    else _render(default)
                    if default is not None
                    else None
                ),
                "help": meta["help"],
            }
        )
    return rows


# ------------------------------------------------------------------ shared stage options


def add_workspace_argument(parser: argparse.ArgumentParser) -> None:
    """The positional workspace (may also come from ``workspace = ...`` in audit.toml)."""
    parser.add_argument(
        "workspace",
        nargs="?",
        default=None,
        metavar="WS",
        help="workspace folder (default: `workspace` from audit.toml)",
    )


@dataclass
class BeamOptions(Options):
    """Options shared by the Beam stages (inherit them: ``class Config(BeamOptions)``)."""

    runner: str | None = option(
        None,
        help="Beam runner (default: DirectRunner; e.g. DataflowRunner, FlinkRunner, "
        "SparkRunner, apache_beam.runners.dask.dask_runner.DaskRunner)",
        group="Beam runner",
    )
    dask_local: int | None = option(
        None,
        help="start a Dask LocalCluster of N workers on 127.0.0.1 and run there",
        ge=1,
        group="Beam runner",
    )


def add_beam_arguments(parser: argparse.ArgumentParser) -> None:
    """The Beam options' flags, for stages whose ``Config`` does not inherit
    :class:`BeamOptions`; unknown ``--flags`` are passed to Beam as well."""
    add_options(parser, BeamOptions)


def add_positional(parser: argparse.ArgumentParser, config_cls: type, name: str) -> None:
    """An optional positional argument for the declared option ``name`` (declared with
    ``cli=False``; its help and metavar come from the declaration)."""
    import dataclasses

    f = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    parser.add_argument(
        name, nargs="?", default=None, metavar=f.metadata.get("metavar"), help=option_help(f)
    )
