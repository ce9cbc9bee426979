"""One module per CLI subcommand (``audit/stages/<name>.py``).

Each module exposes ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``, a ``Config`` dataclass
whose fields are the option names (``audit.toml`` section ``[<name>]``), and
``run(cfg, args) -> int``. Optional: ``ACCEPTS_BEAM_OPTIONS = True`` to receive unknown
``--flags`` as Beam pipeline options in ``args.beam_args``; ``USES_WORKSPACE = False`` for
commands without a workspace.
"""

from __future__ import annotations

import argparse


def add_workspace_argument(parser: argparse.ArgumentParser) -> None:
    """The positional workspace (may also come from ``workspace = ...`` in audit.toml)."""
    parser.add_argument(
        "workspace",
        nargs="?",
        default=None,
        metavar="WS",
        help="workspace folder (default: `workspace` from audit.toml)",
    )


def add_beam_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the Beam stages; unknown ``--flags`` are passed to Beam as well."""
    g = parser.add_argument_group(
        "Beam runner",
        "Any other --flag is passed to Beam's PipelineOptions, e.g. --direct_num_workers 2 "
        "--direct_running_mode multi_processing, or --runner DataflowRunner --project P "
        "--region R --temp_location gs://B/tmp.",
    )
    g.add_argument(
        "--runner",
        default=None,
        help="Beam runner (default: DirectRunner; e.g. DataflowRunner, FlinkRunner, "
        "SparkRunner, apache_beam.runners.dask.dask_runner.DaskRunner)",
    )
    g.add_argument(
        "--dask-local",
        dest="dask_local",
        type=int,
        default=None,
        metavar="N",
        help="start a Dask LocalCluster of N workers on 127.0.0.1 and run there",
    )
