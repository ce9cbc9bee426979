"""One module per CLI subcommand (``audit/stages/<name>.py``).

Each module exposes ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``, a ``Config`` dataclass
whose fields are the options (``audit.toml`` section ``[<name>]``), each declared once with
:func:`audit.config.option` (default, help, choices, bounds: argparse and validation are
generated from it by :func:`audit.config.add_options` and :class:`audit.config.Options`), and
``run(cfg, args) -> int``. Optional: ``ACCEPTS_BEAM_OPTIONS = True`` to receive unknown
``--flags`` as Beam pipeline options in ``args.beam_args``; ``USES_WORKSPACE = False`` for
commands without a workspace.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from audit.config import Options, add_options, option


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

    from audit.config import option_help

    f = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    parser.add_argument(
        name, nargs="?", default=None, metavar=f.metadata.get("metavar"), help=option_help(f)
    )
