"""``laion-audit testbed``: generate a SynthLAION testbed (see ``audit.testbed.generate``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields

from audit.config import ConfigError, Options, add_options, option, require

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
Clean-label poisons need the tiny-synth CLIP weights (or --poison-model/--poison-pretrained),
Nightshade- and Glaze-style poisons the tiny-sd VAE (or --generator); pass --clean-rate 0
--nightshade-rate 0 --glaze-rate 0 to build without any model.
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


CORPUS, DUPS, POISONS, BROKEN = "corpus", "duplicates and replication", "poisons", "broken inputs"


@dataclass
class Config(Options):
    out: str | None = option(None, help="output folder (required)", metavar="DIR", group=CORPUS)
    n: int = option(2000, help="number of rows", group=CORPUS)
    seed: int = option(0, help="random seed", group=CORPUS)
    size: int = option(64, help="image side in pixels", group=CORPUS)
    shard_size: int = option(
        10000,
        help="rows per img2dataset shard (number_sample_per_shard; the default gives 9-digit "
        "keys equal to the row number)",
        group=CORPUS,
    )
    overwrite: bool = option(False, help="replace a testbed already in --out", group=CORPUS)
    zipf_s: float = option(
        1.0,
        help="Zipf exponent of concept frequencies (0 = uniform); higher makes the tail "
        "concepts sparser",
        group=CORPUS,
    )
    exact_dup_rate: float = option(
        0.04,
        help="share of rows in exact-duplicate groups of 2-4 (identical bytes under different "
        "URLs, varied captions)",
        group=DUPS,
    )
    near_dup_rate: float = option(
        0.06,
        help="share of rows in near-duplicate groups of 2-5 (a source plus copies resized, "
        "cropped, colour-jittered or re-encoded at JPEG q 30-90)",
        group=DUPS,
    )
    work_rate: float = option(
        0.007,
        help="copies of EACH famous van gogh work, as a share of rows (near-copies with varied "
        "captions naming the work: word-level replication; 0.007 is 14 copies per work at "
        "n=2000, at least 2)",
        group=DUPS,
    )
    works: list[str] = option(
        ["starry_night", "almond_blossoming", "sunflowers"],
        help="famous works to plant",
        group=DUPS,
    )
    object_keyword: str = option(
        "astronaut", help="concept whose images carry the unmentioned object", group=DUPS
    )
    object_name: str = option(
        "flag", help="the object drawn in but never named in captions", group=DUPS
    )
    object_rate: float = option(
        0.10,
        help="share of the keyword's images that carry the object: object-level replication",
        group=DUPS,
    )
    extra_object_rate: float = option(
        0.25,
        help="share of the other images that also show a second, smaller, unmentioned object "
        "(recorded in truth.parquet extra_object; never the object above)",
        group=DUPS,
    )
    dirty_rate: float = option(
        0.01,
        help="share of rows that are dirty-label pairs (caption names A, image shows B), split "
        "evenly over --dirty-pairs",
        group=POISONS,
    )
    dirty_pairs: list[str] = option(
        ["cat:bird", "tree:boat"],
        help="A:B pairs, caption concept : image concept",
        metavar="PAIRS",
        group=POISONS,
    )
    clean_rate: float = option(
        0.01,
        help="share of rows that are clean-label Nightshade-style poisons (an image of A "
        "perturbed by PGD toward an anchor image of B in tiny CLIP space; caption stays A), "
        "split evenly over --clean-pairs",
        group=POISONS,
    )
    clean_pairs: list[str] = option(
        ["dog:cat", "car:bicycle"],
        help="A:B pairs, image/caption concept : anchor concept",
        metavar="PAIRS",
        group=POISONS,
    )
    pgd_eps: float = option(
        8 / 255,
        help="L-infinity budget of the clean-label perturbation, in [0,1] pixel units: a number "
        "or a fraction",
        default_help="8/255",
        group=POISONS,
        parse=_fraction,
    )
    pgd_steps: int = option(40, help="PGD steps", group=POISONS)
    poison_format: str = option(
        "jpeg",
        help="how clean-label poisons are served: jpeg (q95 4:4:4, optimised through the JPEG "
        "round trip, kept byte-identical in the shards) or png (lossless, but img2dataset "
        "re-encodes it to JPEG q95)",
        choices=("jpeg", "png"),
        group=POISONS,
    )
    poison_model: str = option(
        "tiny-synth", help="open_clip model the poisons are optimised against", group=POISONS
    )
    poison_pretrained: str | None = option(
        None,
        help="its weights: open_clip tag or checkpoint path",
        default_help="shipped tiny-synth weights",
        group=POISONS,
    )
    nightshade_rate: float = option(
        0.01,
        help="share of rows that are Nightshade-style poisons aimed at the generator (an image "
        "of A whose VAE latent PGD moves toward the same picture with B drawn in; caption "
        "stays A), split evenly over --nightshade-pairs",
        group=POISONS,
    )
    nightshade_pairs: list[str] = option(
        ["house:clock"],
        help="A:B pairs, image/caption concept : target concept",
        metavar="PAIRS",
        group=POISONS,
    )
    glaze_rate: float = option(
        0.01,
        help="share of rows that are Glaze-style cloaks (an image in style S, caption naming "
        "S, whose VAE latent PGD moves toward the same picture in style T), split evenly over "
        "--glaze-pairs",
        group=POISONS,
    )
    glaze_pairs: list[str] = option(
        ["watercolor:pixel art"],
        help="S:T pairs, cloaked style : target style",
        metavar="PAIRS",
        group=POISONS,
    )
    gen_eps: float = option(
        16 / 255,
        help="L-infinity budget of the Nightshade- and Glaze-style perturbations, in [0,1] "
        "pixel units: a number or a fraction",
        default_help="16/255",
        group=POISONS,
        parse=_fraction,
    )
    gen_steps: int = option(
        50,
        help="PGD steps of the generator poisons (step eps/10; converged by 50 on tiny-sd)",
        group=POISONS,
    )
    generator: str = option(
        "tiny-sd",
        help="diffusers pipeline whose VAE the Nightshade- and Glaze-style poisons are "
        "optimised against (a folder, or the shipped tiny-sd)",
        group=POISONS,
    )
    device: str = option("cpu", help="torch device for PGD", group=POISONS)
    truncated_rate: float = option(
        0.005,
        help="share of rows whose served JPEG is cut to 30-70% of its bytes",
        group=BROKEN,
    )
    zero_byte_rate: float = option(
        0.0025, help="share of rows served as an empty file", group=BROKEN
    )
    wrong_format_rate: float = option(
        0.0025, help="share of rows served as an HTML page or text under a .jpg name", group=BROKEN
    )
    missing_rate: float = option(
        0.01, help="share of rows whose URL answers 404 (no file)", group=BROKEN
    )
    split_view_rate: float = option(
        0.005,
        help="share of rows whose URL now serves a different image than the one whose sha256 "
        "urls.parquet recorded: split-view poisoning",
        group=BROKEN,
    )
    png_rate: float = option(
        0.05,
        help="share of ordinary images served as PNG instead of JPEG (img2dataset re-encodes "
        "those)",
        group=BROKEN,
    )
    copy_check: bool = option(
        True,
        help="measure the testbed with the SSCD copy detector afterwards: distinct vs planted "
        "pair cosines into testbed.json, and a contact sheet",
        default_help="on",
        group="self-check",
    )
    copy_sheet: str | None = option(
        None,
        help="where to draw the contact sheet, e.g. docs/testbed_pairs.png",
        metavar="PNG",
        default_help="OUT/testbed_pairs.png",
        group="self-check",
    )

    def check(self) -> None:
        require(bool(self.out), "testbed.out", "an output folder is required (--out DIR)", self.out)
        try:
            self.params()  # the generator's own checks (rates, pairs, sizes)
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
    add_options(parser, Config)


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
            f"testbed: poisons need their model (clean-label: a CLIP model; Nightshade- and "
            f"Glaze-style: the generator's VAE): {exc}; pass --clean-rate 0, or "
            "--nightshade-rate 0 --glaze-rate 0, to build without poisons of that kind"
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
