"""Beam ``PipelineOptions`` from the command line: ``--runner``, ``--dask-local N`` and any other
standard Beam flag (``args.beam_args``), with DirectRunner as the default.

"DirectRunner" (the default) runs Beam's portable FnApiRunner directly: that is the engine the
DirectRunner uses for batch pipelines, minus the Prism attempt that would try to download a
binary. It honours ``--direct_num_workers N --direct_running_mode multi_processing`` (one model
per worker process) and ``in_memory`` / ``multi_threading``. Any other runner name is given to
Beam as is (``DataflowRunner``, ``FlinkRunner``, ``SparkRunner``, ``PrismRunner``, or a dotted
path), together with its own options. ``--dask-local N`` starts a Dask ``LocalCluster`` of N
single-threaded worker processes on 127.0.0.1 and runs Beam's DaskRunner on it.

Unknown flags are an error naming the flag (with Beam's closest match), not silently dropped.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DIRECT_NAMES = {"directrunner", "direct", "fnapirunner"}
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


class BeamOptionsError(ValueError):
    """A bad Beam flag or runner; the message names it."""


@dataclass
class BeamSetup:
    """What ``beam.Pipeline(runner=setup.new_runner(), options=setup.options)`` needs."""

    options: Any
    runner_name: str
    flags: list[str] = field(default_factory=list)

    @property
    def is_direct(self) -> bool:
        return self.runner_name.lower() in DIRECT_NAMES

    def new_runner(self) -> Any:
        """A fresh runner object (or name) for one ``beam.Pipeline``."""
        return make_runner(self.runner_name)[0]


def _split_runner(flags: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--runner X`` / ``--runner=X`` out of ``flags``."""
    out: list[str] = []
    runner = None
    i = 0
    while i < len(flags):
        f = flags[i]
        if f == "--runner" and i + 1 < len(flags):
            runner = flags[i + 1]
            i += 2
            continue
        if f.startswith("--runner="):
            runner = f.split("=", 1)[1]
        else:
            out.append(f)
        i += 1
    return runner, out


def check_flags(flags: list[str]) -> None:
    """Raise :class:`BeamOptionsError` for flags no registered ``PipelineOptions`` knows."""
    from apache_beam.options import pipeline_options as po

    with contextlib.suppress(ImportError):  # registers DaskOptions when dask is installed
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    parser = po._BeamArgumentParser(allow_abbrev=False)  # Beam's own parser class
    seen: set[str] = set()
    for cls in po.PipelineOptions.__subclasses__():
        if str(cls) in seen:
            continue
        seen.add(str(cls))
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(flags)
    bad = [u for u in unknown if u.startswith("-")]
    if unknown and not bad:
        bad = unknown
    if bad:
        if bad[0] in ("-q", "--quiet", "-v", "-vv", "--verbose", "-c", "--config"):
            raise BeamOptionsError(
                f"{bad[0]} goes after the subcommand (laion-audit COMMAND {bad[0]} ...)"
            )
        known = [opt for action in parser._actions for opt in action.option_strings]
        name = bad[0].split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise BeamOptionsError(
            f"unknown Beam option {bad[0]!r}{hint}; stage options go before, Beam's "
            "PipelineOptions flags (e.g. --direct_num_workers 2) anywhere"
        )


def make_runner(name: str | None) -> tuple[Any, str]:
    """A runner object or name for ``beam.Pipeline`` plus a display name."""
    if name is None or name.lower() in DIRECT_NAMES:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner(), "DirectRunner"
    if name == "DaskRunner":
        return DASK_RUNNER, DASK_RUNNER
    return name, name


def _restore_environ(saved: dict[str, str]) -> None:
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def local_dask_cluster(n_workers: int) -> Iterator[Any]:
    """A Dask ``LocalCluster`` of ``n_workers`` single-threaded worker processes on 127.0.0.1.

    ``distributed``'s nannies export ``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1`` and a fixed
    ``PYTHONHASHSEED`` into *this* process's environment before spawning workers; left there they
    change the thread count (and so the float results) of every later subprocess. The environment
    is put back right after start-up and again on exit.
    """
    from distributed import LocalCluster

    saved = dict(os.environ)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    _restore_environ(saved)
    try:
        yield cluster
    finally:
        cluster.close()
        _restore_environ(saved)


@contextlib.contextmanager
def beam_setup(
    beam_args: list[str] | None = None,
    runner: str | None = None,
    dask_local: int | None = None,
    **defaults: Any,
) -> Iterator[BeamSetup]:
    """Build Beam options; with ``dask_local`` a Dask LocalCluster lives for the block.

    ``defaults`` are option values used unless a flag overrides them (e.g.
    ``pickle_library="cloudpickle"``).
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    flag_runner, flags = _split_runner(list(beam_args or []))
    if runner and flag_runner and runner != flag_runner:
        raise BeamOptionsError(f"--runner given twice ({runner!r} and {flag_runner!r})")
    runner = runner or flag_runner
    with contextlib.ExitStack() as stack:
        if dask_local:
            if dask_local < 1:
                raise BeamOptionsError(f"--dask-local must be >= 1 (got {dask_local})")
            if runner and runner not in ("DaskRunner", DASK_RUNNER):
                raise BeamOptionsError(f"--dask-local cannot be combined with --runner {runner}")
            try:
                import distributed  # noqa: F401
            except ImportError as exc:
                raise BeamOptionsError(
                    "--dask-local needs `pip install 'apache-beam[dask]' distributed`"
                ) from exc
            cluster = stack.enter_context(local_dask_cluster(dask_local))
            runner = DASK_RUNNER
            flags.append(f"--dask_client_address={cluster.scheduler_address}")
            logger.info(
                "started a Dask LocalCluster with %d workers at %s",
                dask_local,
                cluster.scheduler_address,
            )
        check_flags(flags)
        _, runner_name = make_runner(runner)
        given = {f.split("=", 1)[0].lstrip("-") for f in flags if f.startswith("--")}
        options = PipelineOptions(flags, **{k: v for k, v in defaults.items() if k not in given})
        yield BeamSetup(options, runner_name, flags)
