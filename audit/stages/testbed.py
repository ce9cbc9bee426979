"""``laion-audit testbed``: generate a SynthLAION testbed (see ``audit.testbed.generate``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, fields

from audit.config import ConfigError, require

logger = logging.getLogger(__name__)

USES_WORKSPACE = False

HELP = "generate a SynthLAION testbed with planted, known truth"

DESCRIPTION = """\
Generate a LAION-like corpus of procedural 64x64 images with template captions, and the truth
about what was planted in it. Rates are shares of the N rows; every planted kind is disjoint.

Writes into --out:
  urls.parquet    LAION-style url list (URL, TEXT, WIDTH, HEIGHT, sha256 of the image when the
                  list was built); URLs use the placeholder base http://127.0.0.1:{port}
  files/          the bytes served for each URL (404 rows have no file)
  shards/         img2dataset webdataset shards for that list (00000.tar, 00000.parquet,
                  00000_stats.json), as `img2dataset --resize_mode no --skip_reencode True
                  --output_format webdataset --input_format parquet --url_col URL
                  --caption_col TEXT` writes them (times fixed for reproducibility)
  truth.parquet   one row per key: key, url, caption, concept, style, dup_group, work_id,
                  keyword, object_present, poison_kind, poison_target, broken_kind, ...
  testbed.json    parameters and counts, and the copy check (below)
  testbed_pairs.png  contact sheet of the closest distinct and the farthest planted pairs

Unless --no-copy-check, the generator then checks itself with the SSCD copy detector: the cosine
of the most similar pairs its truth calls distinct (99.99th percentile, max) and of the least
similar planted copies (5th percentile, min) go into testbed.json under copy_check (null, with
a warning, when the detector is not installed).

The same arguments and seed give byte-identical output. Serve the files for a real download
with audit.testbed.server.serve_testbed(DIR) and audit.testbed.generate.write_url_list().
Clean-label poisons need the tiny-synth CLIP weights (or --poison-model/--poison-pretrained);
pass --clean-rate 0 to build without any model.
"""


def _fraction(text: str) -> float:
    """A number, or a fraction like 8/255."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a number or a fraction like 8/255, got {text!r}"
        ) from None


@dataclass
class Config:
    out: str = ""
    n: int = 2000
    seed: int = 0
    size: int = 64
    shard_size: int = 10000
    overwrite: bool = False
    zipf_s: float = 1.0
    exact_dup_rate: float = 0.04
    near_dup_rate: float = 0.06
    work_rate: float = 0.007
    works: list[str] = field(
        default_factory=lambda: ["starry_night", "almond_blossoming", "sunflowers"]
    )
    object_keyword: str = "astronaut"
    object_name: str = "flag"
    object_rate: float = 0.10
    extra_object_rate: float = 0.25
    dirty_rate: float = 0.01
    dirty_pairs: list[str] = field(default_factory=lambda: ["cat:bird", "tree:boat"])
    clean_rate: float = 0.01
    clean_pairs: list[str] = field(default_factory=lambda: ["dog:cat", "car:bicycle"])
    pgd_eps: float = 8 / 255
    pgd_steps: int = 40
    poison_format: str = "jpeg"
    poison_model: str = "tiny-synth"
    poison_pretrained: str | None = None
    device: str = "cpu"
    truncated_rate: float = 0.005
    zero_byte_rate: float = 0.0025
    wrong_format_rate: float = 0.0025
    missing_rate: float = 0.01
    split_view_rate: float = 0.005
    png_rate: float = 0.05
    copy_check: bool = True
    copy_sheet: str | None = None

    def __post_init__(self) -> None:
        require(bool(self.out), "testbed.out", "an output folder is required (--out DIR)", self.out)
        try:
            self.params()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def params(self):  # type: ignore[no-untyped-def]
        """The generator's ``TestbedParams`` for this config."""
        from audit.testbed.generate import TestbedParams

        skip = {"out", "overwrite", "copy_check", "copy_sheet"}
        return TestbedParams(
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("corpus")
    g.add_argument("--out", default=None, metavar="DIR", help="output folder (required)")
    g.add_argument("--n", type=int, default=None, help="number of rows (default 2000)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    g.add_argument("--size", type=int, default=None, help="image side in pixels (default 64)")
    g.add_argument(
        "--shard-size",
        dest="shard_size",
        type=int,
        default=None,
        help="rows per img2dataset shard (number_sample_per_shard; default 10000, "
        "which gives 9-digit keys equal to the row number)",
    )
    g.add_argument(
        "--overwrite", action="store_true", default=None, help="replace a testbed already in --out"
    )
    g.add_argument(
        "--zipf-s",
        dest="zipf_s",
        type=float,
        default=None,
        help="Zipf exponent of concept frequencies (default 1.0; 0 = uniform); "
        "higher makes the tail concepts sparser",
    )

    g = parser.add_argument_group("duplicates and replication")
    g.add_argument(
        "--exact-dup-rate",
        dest="exact_dup_rate",
        type=float,
        default=None,
        help="share of rows in exact-duplicate groups of 2-4 (identical bytes under "
        "different URLs, varied captions; default 0.04)",
    )
    g.add_argument(
        "--near-dup-rate",
        dest="near_dup_rate",
        type=float,
        default=None,
        help="share of rows in near-duplicate groups of 2-5 (a source plus copies "
        "resized, cropped, colour-jittered or re-encoded at JPEG q 30-90; "
        "default 0.06)",
    )
    g.add_argument(
        "--work-rate",
        dest="work_rate",
        type=float,
        default=None,
        help="copies of EACH famous van gogh work, as a share of rows (near-copies "
        "with varied captions naming the work: word-level replication; "
        "default 0.007, i.e. 14 copies per work at n=2000, at least 2)",
    )
    g.add_argument(
        "--works",
        default=None,
        help="comma-separated famous works to plant (default: starry_night,"
        "almond_blossoming,sunflowers)",
    )
    g.add_argument(
        "--object-keyword",
        dest="object_keyword",
        default=None,
        help="concept whose images carry the unmentioned object (default astronaut)",
    )
    g.add_argument(
        "--object-name",
        dest="object_name",
        default=None,
        help="the object drawn in but never named in captions (default flag)",
    )
    g.add_argument(
        "--object-rate",
        dest="object_rate",
        type=float,
        default=None,
        help="share of the keyword's images that carry the object: object-level "
        "replication (default 0.10)",
    )
    g.add_argument(
        "--extra-object-rate",
        dest="extra_object_rate",
        type=float,
        default=None,
        help="share of the other images that also show a second, smaller, unmentioned "
        "object (recorded in truth.parquet extra_object; never the object above; "
        "default 0.25)",
    )

    g = parser.add_argument_group("poisons")
    g.add_argument(
        "--dirty-rate",
        dest="dirty_rate",
        type=float,
        default=None,
        help="share of rows that are dirty-label pairs (caption names A, image "
        "shows B), split evenly over --dirty-pairs (default 0.01)",
    )
    g.add_argument(
        "--dirty-pairs",
        dest="dirty_pairs",
        default=None,
        help="comma-separated A:B pairs, caption concept : image concept "
        "(default cat:bird,tree:boat)",
    )
    g.add_argument(
        "--clean-rate",
        dest="clean_rate",
        type=float,
        default=None,
        help="share of rows that are clean-label Nightshade-style poisons (an image "
        "of A perturbed by PGD toward an anchor image of B in tiny CLIP space; "
        "caption stays A), split evenly over --clean-pairs (default 0.01)",
    )
    g.add_argument(
        "--clean-pairs",
        dest="clean_pairs",
        default=None,
        help="comma-separated A:B pairs, image/caption concept : anchor concept "
        "(default dog:cat,car:bicycle)",
    )
    g.add_argument(
        "--pgd-eps",
        dest="pgd_eps",
        type=_fraction,
        default=None,
        help="L-infinity budget of the clean-label perturbation, in [0,1] pixel "
        "units, e.g. 8/255 (default)",
    )
    g.add_argument(
        "--pgd-steps", dest="pgd_steps", type=int, default=None, help="PGD steps (default 40)"
    )
    g.add_argument(
        "--poison-format",
        dest="poison_format",
        choices=["jpeg", "png"],
        default=None,
        help="how clean-label poisons are served: jpeg (q95 4:4:4, optimised "
        "through the JPEG round trip, kept byte-identical in the shards) or png "
        "(lossless, but img2dataset re-encodes it to JPEG q95); default jpeg",
    )
    g.add_argument(
        "--poison-model",
        dest="poison_model",
        default=None,
        help="open_clip model the poisons are optimised against (default tiny-synth)",
    )
    g.add_argument(
        "--poison-pretrained",
        dest="poison_pretrained",
        default=None,
        help="its weights: open_clip tag or checkpoint path (default: shipped tiny-synth weights)",
    )
    g.add_argument("--device", default=None, help="torch device for PGD (default cpu)")

    g = parser.add_argument_group("broken inputs")
    g.add_argument(
        "--truncated-rate",
        dest="truncated_rate",
        type=float,
        default=None,
        help="share of rows whose served JPEG is cut to 30-70%% of its bytes (default 0.005)",
    )
    g.add_argument(
        "--zero-byte-rate",
        dest="zero_byte_rate",
        type=float,
        default=None,
        help="share of rows served as an empty file (default 0.0025)",
    )
    g.add_argument(
        "--wrong-format-rate",
        dest="wrong_format_rate",
        type=float,
        default=None,
        help="share of rows served as an HTML page or text under a .jpg name (default 0.0025)",
    )
    g.add_argument(
        "--missing-rate",
        dest="missing_rate",
        type=float,
        default=None,
        help="share of rows whose URL answers 404 (no file; default 0.01)",
    )
    g.add_argument(
        "--split-view-rate",
        dest="split_view_rate",
        type=float,
        default=None,
        help="share of rows whose URL now serves a different image than the one "
        "whose sha256 urls.parquet recorded: split-view poisoning "
        "(default 0.005)",
    )
    g.add_argument(
        "--png-rate",
        dest="png_rate",
        type=float,
        default=None,
        help="share of ordinary images served as PNG instead of JPEG (img2dataset "
        "re-encodes those; default 0.05)",
    )

    g = parser.add_argument_group("self-check")
    g.add_argument(
        "--copy-check",
        dest="copy_check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the testbed with the SSCD copy detector afterwards: distinct vs "
        "planted pair cosines into testbed.json, and a contact sheet (default on)",
    )
    g.add_argument(
        "--copy-sheet",
        dest="copy_sheet",
        default=None,
        metavar="PNG",
        help="where to draw the contact sheet (default OUT/testbed_pairs.png), e.g. "
        "docs/testbed_pairs.png",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.models import ModelError
    from audit.testbed.generate import build_testbed

    p = cfg.params()
    rates = {k: v for k, v in vars(p).items() if k not in ("n", "seed")}
    try:
        summary = build_testbed(
            cfg.out,
            p.n,
            p.seed,
            overwrite=cfg.overwrite,
            copy_check=cfg.copy_check,
            copy_sheet=cfg.copy_sheet,
            **rates,
        )
    except FileExistsError as exc:
        raise ConfigError(f"testbed.out: {exc}") from None
    except ModelError as exc:
        raise ConfigError(
            f"testbed.clean_rate: clean-label poisons need a CLIP model: {exc}; pass "
            "--clean-rate 0 to build without poisons of that kind"
        ) from None
    c = summary["counts"]
    logger.info(
        "wrote %s: %d rows, %d files; duplicates %s; works %s; %s with a %s: %d of %d; "
        "poisons %s; broken %s",
        cfg.out,
        c["rows"],
        c["files"],
        c["dup_rows"],
        c["works"],
        p.object_keyword,
        p.object_name,
        c["object_present"],
        c["object_keyword_rows"],
        c["poisons"],
        c["broken"],
    )
    return 0
