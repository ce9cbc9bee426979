"""``laion-audit``: the command line. ``main(argv=None)`` is the entry point.

Each subcommand lives in ``audit/stages/<name>.py`` (see ``audit.stages``). Exit codes:
0 success; 1 the audit found issues above a configured ``fail_on`` threshold;
2 usage or configuration error (also: stage not implemented yet); 3 input data error;
4 internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path
from types import ModuleType

from audit import __version__
from audit.config import ConfigError, load_toml, merge, to_dict
from audit.errors import InputError, NotImplementedStage
from audit.log import setup_logging

logger = logging.getLogger("audit.cli")

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3, 4

# (subcommand, one-line summary used when the stage module does not exist yet)
SUBCOMMANDS: list[tuple[str, str]] = [
    ("testbed", "generate a SynthLAION testbed with planted, known truth"),
    ("download", "download a url list into webdataset shards with img2dataset"),
    ("embed", "compute CLIP image and text embeddings with a Beam pipeline"),
    ("import-embeddings", "import clip-retrieval embeddings (img_emb/, text_emb/, metadata/)"),
    ("export-embeddings", "export embeddings in clip-retrieval's layout"),
    ("dedup", "find exact, near-duplicate and caption duplicates"),
    ("concepts", "word and semantic frequency per concept (concept sparsity)"),
    ("replication", "word-level replication: keywords whose images collapse onto few clusters"),
    ("objects", "object-level replication: objects in images that captions never name"),
    ("poisons", "rank poison candidates: dirty-label, clean-label, split-view"),
    ("reproduce", "seed N generations per prompt and measure replication"),
    ("report", "write the HTML + JSON memorization report"),
    ("filter", "write keep/drop lists and optionally filtered shards"),
    ("erase", "erase a concept from a diffusion model (ESD) and save the erased pipeline"),
    ("attack", "adversarial prompts that bring an erased concept back (UnlearnDiffAtk)"),
    ("run", "run the stages configured in audit.toml, then the report"),
    ("demo", "build a testbed and run the whole audit on it, end to end"),
]

EPILOG = """\
Typical audit:
  laion-audit download urls.parquet --out WS     # or import-embeddings DIR --out WS
  laion-audit embed WS --model ViT-B-32 --pretrained laion2b_s34b_b79k
  laion-audit dedup WS && laion-audit concepts WS
  laion-audit replication WS --discover && laion-audit objects WS --keyword astronaut
  laion-audit poisons WS
  laion-audit reproduce WS --generator stabilityai/stable-diffusion-2-1
  laion-audit report WS && laion-audit filter WS --drop duplicates,poisons,failed
Or put the options in audit.toml and run `laion-audit run audit.toml`.
Exit codes: 0 ok, 1 findings above fail_on, 2 usage/config error or stage not implemented,
3 input data error, 4 internal error.
"""


def module_name(command: str) -> str:
    return "audit.stages." + command.replace("-", "_")


def load_stage(command: str) -> ModuleType | None:
    """Import a stage module; ``None`` if that stage is not implemented yet."""
    name = module_name(command)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laion-audit",
        description="Audit a scraped image-text dataset (LAION-style) before training a "
        "text-to-image model: duplicates, word- and object-level replication, "
        "poison candidates, seeded reproduction, a report and a filtered dataset.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"laion-audit {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="top_verbose",
        action="count",
        default=0,
        help="more logging (also accepted after the subcommand)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        dest="top_quiet",
        action="store_true",
        help="warnings and errors only (also accepted after the subcommand)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging (-vv also shows library logs)",
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars"
    )
    common.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="TOML",
        help="audit.toml to read options from (default: WS/audit.toml if it "
        "exists); command-line options override it",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command, summary in SUBCOMMANDS:
        mod = load_stage(command)
        if mod is None:
            p = sub.add_parser(
                command,
                help=f"{summary} [not implemented yet]",
                description=f"{summary}.\n\nThis stage is not implemented yet.",
                parents=[common],
            )
            p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
            p.set_defaults(_stage=None)
            continue
        p = sub.add_parser(
            command,
            help=getattr(mod, "HELP", summary),
            description=getattr(mod, "DESCRIPTION", summary),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        mod.add_arguments(p)
        p.set_defaults(_stage=mod)
    return parser


def _config_file(args: argparse.Namespace) -> dict:
    if args.config:
        return load_toml(args.config)
    ws = getattr(args, "workspace", None)
    if ws and (Path(ws) / "audit.toml").is_file():
        return load_toml(Path(ws) / "audit.toml")
    return {}


def dispatch(command: str, mod: ModuleType, args: argparse.Namespace, file_cfg: dict) -> int:
    """Merge config for ``command``, run it, and record timing in the workspace."""
    section = command.replace("-", "_")
    if getattr(mod, "USES_WORKSPACE", True) and getattr(args, "workspace", None) is None:
        ws = file_cfg.get("workspace")
        if ws is None:
            raise ConfigError(
                f"{command}: no workspace given (pass WS or set `workspace` in audit.toml)"
            )
        args.workspace = str(ws)
    cfg = merge(mod.Config, section, file_cfg.get(section), args)
    t0 = time.perf_counter()
    code = mod.run(cfg, args)
    seconds = time.perf_counter() - t0
    ws_path = getattr(args, "workspace", None)
    if code == EXIT_OK and ws_path and Path(ws_path).is_dir():
        from audit.workspace import Workspace

        Workspace(ws_path).record_stage(
            section, {"seconds": round(seconds, 3), "config": to_dict(cfg), "version": __version__}
        )
    logger.info("%s finished in %.1f s (exit %d)", command, seconds, code)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    mod = args._stage
    if unknown:
        if mod is not None and getattr(mod, "ACCEPTS_BEAM_OPTIONS", False):
            args.beam_args = unknown
        else:
            parser.parse_args(argv)  # re-parse strictly: prints the usage error, exits 2
    else:
        args.beam_args = []
    args.quiet = args.quiet or args.top_quiet
    args.verbose = args.verbose + args.top_verbose
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        if mod is None:
            raise NotImplementedStage(f"`laion-audit {args.command}` is not implemented yet")
        return dispatch(args.command, mod, args, _config_file(args))
    except ConfigError as exc:
        print(f"laion-audit: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotImplementedStage as exc:
        print(f"laion-audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InputError, FileNotFoundError) as exc:
        print(f"laion-audit: input error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("laion-audit: interrupted; finished parts are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last-resort handler with a clear message
        logger.debug("traceback", exc_info=True)
        print(
            f"laion-audit: internal error: {type(exc).__name__}: {exc} "
            "(rerun with -v for the traceback)",
            file=sys.stderr,
        )
        if args.verbose:
            import traceback

            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
