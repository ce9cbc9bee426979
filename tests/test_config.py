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
