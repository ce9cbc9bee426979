from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from audit import cli

ALL = [name for name, _ in cli.SUBCOMMANDS]


def test_help_lists_every_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert name in out


@pytest.mark.parametrize("name", ALL)
def test_each_subcommand_has_real_help(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: laion-audit " + name in out
    assert len(out.splitlines()) > 5


def test_unimplemented_stage_exits_nonzero(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + [("frobnicate", "a future stage")])
    assert cli.main(["frobnicate", "ws"]) == cli.EXIT_USAGE
    assert "not implemented yet" in capsys.readouterr().err


def test_bad_config_value_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f'workspace = "{tmp_path}"\n[dedup]\nthreshold = "high"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "audit", "dedup", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("laion-audit: config error: dedup.threshold")
    assert "'high'" in err[-1]


def test_unknown_option_is_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["concepts", "ws", "--no-such-option"])
    assert exc.value.code == 2
