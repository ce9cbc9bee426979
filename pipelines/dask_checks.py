"""What our Beam pipelines need from a Dask cluster (Beam 2.77's DaskRunner), checked before a
job starts.

**In-process (thread) workers duplicate outputs.** The DaskRunner builds ONE receiver object
per ``ParDo`` when it translates the pipeline and passes it to every task of that step
(``transform_evaluator.apply_dofn_to_bundle``); each task returns the receiver's whole list.
A worker in another process gets its own unpickled copy per task, but a worker thread in the
launching process (``LocalCluster(processes=False)``, ``Client(processes=False)``, any
``inproc://`` worker) shares the one object: task k returns the outputs of tasks 1..k, so
every later step sees them again. Measured (``tests/test_dask.py``): 100 inputs, 4 bag
partitions, a side-effect ``Map`` after a first ``Map``: 250 writes with in-process workers
(1 or 2 threads, 1 or 2 workers), 100 with worker processes of 1, 2 or 4 threads. Such a
cluster is refused (:class:`UnsafeDaskCluster`).

**Parallelism comes from ``Create``.** The runner turns ``beam.Create(items)`` into a Dask bag
of ~128 items per partition, and every later step (``GroupByKey`` included) keeps that number
of partitions: a pipeline that starts from a few file names runs on ONE worker.
:func:`with_bag_partitions` sets ``--dask_npartitions`` to the number of read tasks (unless the
user chose ``--dask_npartitions`` / ``--dask_partition_size``).
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines.beam_options import BeamOptionsError

logger = logging.getLogger(__name__)


class UnsafeDaskCluster(BeamOptionsError):
    """A Dask cluster our pipelines must not run on; the message says why and what to use
    (a :class:`pipelines.beam_options.BeamOptionsError`: stages report it as a configuration
    error)."""


def _dask_options(options: Any) -> dict[str, Any]:
    try:
        from apache_beam.runners.dask.dask_runner import DaskOptions
    except ImportError:  # dask extras not installed: nothing to check
        return {}
    return options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)


def is_dask(runner: Any) -> bool:
    name = runner if isinstance(runner, str) else type(runner).__name__
    return str(name).rsplit(".", 1)[-1] == "DaskRunner"


def worker_kinds(options: Any) -> dict[str, dict[str, Any]] | None:
    """Address -> ``{"nthreads", "in_process"}`` of the cluster the options point to (None when
    they name no cluster: the runner then starts its own ``Client()``, a LocalCluster of worker
    processes)."""
    opts = _dask_options(options)
    address, scheduler_file = opts.get("address"), opts.get("scheduler_file")
    if not address and not scheduler_file:
        return None
    from distributed import Client

    kw: dict[str, Any] = {"timeout": opts.get("timeout") or 30}
    if scheduler_file and not address:
        kw["scheduler_file"] = scheduler_file
    with Client(address, **kw) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
    return {
        addr: {
            "nthreads": int(w.get("nthreads", 1)),
            "in_process": str(addr).startswith("inproc://"),
        }
        for addr, w in info.items()
    }


def check_workers(options: Any, runner: Any) -> None:
    """Raise :class:`UnsafeDaskCluster` when ``runner`` is the DaskRunner and the cluster has
    in-process (thread) workers, which duplicate outputs (module doc). Other runners pass."""
    if not is_dask(runner):
        return
    kinds = worker_kinds(options)
    if kinds is None:
        return
    if not kinds:
        raise UnsafeDaskCluster("the Dask cluster has no workers")
    bad = sorted(a for a, k in kinds.items() if k["in_process"])
    if bad:
        raise UnsafeDaskCluster(
            f"Dask workers {bad[:3]} run as threads inside the launching process "
            "(LocalCluster(processes=False) or Client(processes=False)); Beam 2.77's "
            "DaskRunner shares one output list between such tasks and duplicates rows. "
            "Use worker processes: LocalCluster(processes=True), `dask worker`, or "
            "laion-audit's --dask-local N"
        )
    threads = {k["nthreads"] for k in kinds.values()}
    logger.info("Dask cluster: %d worker processes, %s threads each", len(kinds), threads)


def check_safe_runner(setup: Any) -> None:
    """:func:`check_workers` for a ``pipelines.beam_options.BeamSetup``."""
    check_workers(setup.options, setup.runner_name)


def with_bag_partitions(setup: Any, n_items: int) -> Any:
    """The setup with ``--dask_npartitions=n_items`` on the DaskRunner (each input element of
    the pipeline's ``Create`` its own bag partition, so reading and everything after it spread
    over the workers), unless the user set the bag partitioning. Other runners: unchanged."""
    from dataclasses import replace

    options = bag_partitions(setup.options, setup.runner_name, n_items)
    return setup if options is setup.options else replace(setup, options=options)


def bag_partitions(options: Any, runner: Any, n_items: int) -> Any:
    """:func:`with_bag_partitions` for plain ``PipelineOptions``: a copy with
    ``npartitions`` set, or ``options`` itself."""
    if options is None or not is_dask(runner) or n_items < 1:
        return options
    opts = _dask_options(options)
    if opts.get("npartitions") or opts.get("partition_size"):
        return options
    import copy

    from apache_beam.runners.dask.dask_runner import DaskOptions

    options = copy.deepcopy(options)
    options.view_as(DaskOptions).npartitions = int(n_items)
    return options
