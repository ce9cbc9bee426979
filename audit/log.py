"""One configured logger for the whole tool, progress bars, and rate-limited warnings."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_QUIET = False
LOGGER_NAMES = ("audit", "pipelines", "detectors")


def setup_logging(verbosity: int = 0) -> None:
    """Configure logging: -q (verbosity < 0) warnings only, default info, -v debug.

    Also quiets chatty third-party loggers and the albumentations update check.
    """
    global _QUIET
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    _QUIET = verbosity < 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in LOGGER_NAMES:
        logging.getLogger(name).setLevel(level)
    for noisy in (
        "apache_beam",
        "urllib3",
        "PIL",
        "matplotlib",
        "diffusers",
        "transformers",
        "distributed",
        "faiss",
        "numexpr",
        "h5py",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbosity < 2 else logging.INFO)


def progress(
    iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """A tqdm progress bar on stderr, disabled with ``-q`` or when stderr is not a terminal
    and ``LAION_AUDIT_PROGRESS`` is not set."""
    from tqdm.auto import tqdm

    disable = _QUIET or (not sys.stderr.isatty() and not os.environ.get("LAION_AUDIT_PROGRESS"))
    return iter(
        tqdm(
            iterable,
            desc=desc,
            total=total,
            unit=unit,
            disable=disable,
            dynamic_ncols=True,
            leave=False,
        )
    )


class RateLimitedWarner:
    """Log the first ``limit`` warnings of a kind, then only count them (per-sample noise)."""

    def __init__(self, logger: logging.Logger, limit: int = 10) -> None:
        self.logger = logger
        self.limit = limit
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, msg: str, *args: object) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= self.limit:
            self.logger.warning(msg, *args)
            if n == self.limit:
                self.logger.warning("further '%s' warnings are counted, not shown", kind)

    def summary(self) -> None:
        for kind, n in self.counts.items():
            if n > self.limit:
                self.logger.warning("%d '%s' warnings in total", n, kind)
