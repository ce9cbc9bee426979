from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from audit.config import ConfigError, load_toml, merge, require


@dataclass
class Demo:
    batch_size: int = 64
    threshold: float = 0.9
    model: str = "tiny-synth"
    concepts: list[str] = field(default_factory=list)
    fp16: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        require(
            self.batch_size > 0, "demo.batch_size", "must be a positive integer", self.batch_size
        )
        require(0.0 < self.threshold <= 1.0, "demo.threshold", "must be in (0, 1]", self.threshold)


def test_defaults_file_and_cli_precedence() -> None:
    cfg = merge(Demo, "demo", None, None)
    assert cfg.batch_size == 64 and cfg.threshold == 0.9
    cfg = merge(Demo, "demo", {"batch_size": 8, "threshold": 0.5}, None)
    assert cfg.batch_size == 8 and cfg.threshold == 0.5
    args = argparse.Namespace(
        batch_size=16, threshold=None, model=None, concepts="a, b", fp16=None, device=None
    )
    cfg = merge(Demo, "demo", {"batch_size": 8, "threshold": 0.5}, args)
    assert cfg.batch_size == 16  # CLI wins
    assert cfg.threshold == 0.5  # absent on the CLI: the file's value stays
    assert cfg.concepts == ["a", "b"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": -3}, "demo.batch_size: must be a positive integer (got -3)"),
        ({"batch_size": "many"}, "demo.batch_size: expected an integer, got 'many'"),
        ({"threshold": 1.5}, "demo.threshold: must be in (0, 1] (got 1.5)"),
        ({"fp16": "perhaps"}, "demo.fp16: expected true or false, got 'perhaps'"),
        ({"batchsize": 3}, "demo.batchsize: unknown option"),
        ({"concepts": 3}, "demo.concepts: expected a list, got 3"),
    ],
)
def test_bad_values_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        merge(Demo, "demo", values, None)
    assert message in str(exc.value)


def test_load_toml_errors(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[embed\nbatch_size = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    top = tmp_path / "top.toml"
    top.write_text("batch_size = 3\n")
    with pytest.raises(ConfigError, match="top-level key 'batch_size'"):
        load_toml(top)
    good = tmp_path / "good.toml"
    good.write_text('workspace = "ws"\n[demo]\nbatch_size = 3\n')
    data = load_toml(good)
    assert merge(Demo, "demo", data["demo"]).batch_size == 3


# ---------------------------------------------------------------- options declared once


def _declared_config():
    from dataclasses import dataclass

    from audit.config import Options, option

    @dataclass
    class Config(Options):
        SECTION = "demo_stage"
        threshold: float | None = option(None, help="a cosine", gt=-1, lt=1, default_help="0.5")
        kinds: list[str] = option(["a", "b"], help="kinds", choices=("a", "b", "c"), nonempty=True)
        size: int = option(8, help="a size", ge=1)
        overwrite: bool = option(False, help="replace")
        progress: bool = option(True, help="show progress")
        name: str = option("x", help="a name", choices=lambda: ("x", "y"))

        def check(self) -> None:
            if self.name == "y" and self.size < 2:
                raise ConfigError("demo_stage.size: name y needs size >= 2")

    return Config


def test_declared_options_generate_flags_with_defaults_and_choices_in_the_help():
    from audit.config import add_options

    cfg_cls = _declared_config()
    parser = argparse.ArgumentParser()
    add_options(parser, cfg_cls)
    text = parser.format_help()
    assert "--threshold X" in text and "(default: 0.5)" in text
    assert "--kinds LIST" in text and "from a,b,c (default: a,b)" in text
    assert "--size N" in text and "(default: 8)" in text
    assert "--no-progress" in text and "--overwrite" in text
    args = parser.parse_args(["--size", "3", "--overwrite", "--no-progress"])
    assert (args.size, args.overwrite, args.progress, args.threshold) == (3, True, False, None)
    with pytest.raises(SystemExit):  # choices of a scalar are argparse's
        parser.parse_args(["--name", "z"])
    cfg = merge(cfg_cls, "demo_stage", {"kinds": ["c"]}, args)
    assert (cfg.size, cfg.kinds, cfg.overwrite, cfg.progress) == (3, ["c"], True, False)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"threshold": 1.0}, "demo_stage.threshold: must be > -1 and < 1 (got 1.0)"),
        ({"size": 0}, "demo_stage.size: must be >= 1 (got 0)"),
        ({"kinds": ["a", "d"]}, "demo_stage.kinds: must be one of a, b, c (got 'd')"),
        ({"kinds": []}, "demo_stage.kinds: needs at least one value"),
        ({"name": "z"}, "demo_stage.name: must be one of x, y (got 'z')"),
        ({"name": "y", "size": 1}, "demo_stage.size: name y needs size >= 2"),
    ],
)
def test_declared_options_are_validated_with_the_field_named(values, message):
    with pytest.raises(ConfigError) as exc:
        merge(_declared_config(), "demo_stage", values)
    assert message in str(exc.value)


def test_every_stage_declares_each_option_once():
    """Each stage's Config fields carry their help (argparse and checks come from it), and every
    CLI flag of a stage is one of its declared fields (or a common flag)."""
    import dataclasses

    from audit.cli import SUBCOMMANDS, build_parser, load_stage

    common = {"help", "verbose", "quiet", "config", "workspace"}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, _ in SUBCOMMANDS:
        mod = load_stage(command)
        fields = {f.name: f for f in dataclasses.fields(mod.Config) if f.init}
        undeclared = [n for n, f in fields.items() if "help" not in f.metadata]
        assert not undeclared, f"{command}: options without option(...): {undeclared}"
        dests = {a.dest for a in sub.choices[command]._actions} - common
        extra = sorted(d for d in dests if d not in fields and not d.startswith("_"))
        assert not extra, f"{command}: flags that are not Config fields: {extra}"
