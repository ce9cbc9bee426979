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

from audit.config import (  # noqa: F401 - the stages' shared options live in audit.config
    BeamOptions,
    add_beam_arguments,
    add_positional,
    add_workspace_argument,
)
