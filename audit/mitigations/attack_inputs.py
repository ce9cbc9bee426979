"""What ``laion-audit attack`` reads and resumes: prompts from a file or from a workspace's
findings, reference images, the run's fingerprint and the partial results a rerun continues."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def finding_rows(workspace: str, findings: list[str]) -> list[dict[str, Any]]:
    """The prompts the workspace's main reproduce run generated for ``findings`` (most copied
    first, within the order the findings are given), as :func:`read_rows` returns rows."""
    from audit.errors import InputError
    from audit.mitigations.runs import ATTACK_SUFFIX, CONTROL_KIND, FINDING
    from audit.workspace import Workspace

    ws = Workspace(workspace)
    if not ws.has_finding(FINDING):
        raise InputError(
            f"{ws.finding_path(FINDING)} not found: run `laion-audit reproduce {workspace}` "
            "first (or give --prompts FILE)"
        )
    df = ws.read_finding(FINDING).to_pandas()
    df = df[df["n"].fillna(0).astype(int) > 0]
    if "generated" in df.columns:
        df = df[df["generated"].fillna(True).astype(bool)]
    df = df[(df["prompt_kind"] != CONTROL_KIND) & ~df["prompt_kind"].str.endswith(ATTACK_SUFFIX)]
    rows = []
    for fid in findings:
        sub = df[df["finding_id"].astype(str) == fid]
        if sub.empty:
            known = sorted(df["finding_id"].astype(str).unique())
            raise InputError(
                f"finding {fid!r}: no generated prompts in {ws.finding_path(FINDING)} "
                f"(findings there: {', '.join(known) or 'none'})"
            )
        sub = sub.sort_values(["replication_rate", "prompt_kind"], ascending=[False, True])
        for r in sub.to_dict("records"):
            rows.append(
                {
                    "prompt": str(r["prompt"]),
                    "finding_id": fid,
                    "prompt_kind": str(r["prompt_kind"]),
                    "seed": None,
                    "reference": None,
                    "target_prompt": None,
                }
            )
    return rows


def read_rows(path: str) -> list[dict[str, Any]]:
    """The prompt file as ``reproduce`` reads it, plus each row's optional ``seed``,
    ``reference`` and ``target_prompt`` (``.jsonl`` and ``.csv`` only)."""
    import csv
    import json

    from audit.errors import InputError
    from audit.prompts import read_prompt_file

    prompts = read_prompt_file(path)
    p = Path(path)
    extras: list[dict[str, Any]] = [{} for _ in prompts]
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        raw = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        extras = [r if isinstance(r, dict) else {} for r in raw]
    elif suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            extras = list(csv.DictReader(fh))
    rows = []
    for i, (pr, ex) in enumerate(zip(prompts, extras)):
        seed = ex.get("seed")
        if seed not in (None, ""):
            try:
                seed = int(seed)
            except (TypeError, ValueError):
                raise InputError(
                    f"{p}: row {i + 1}: seed must be an integer, got {seed!r}"
                ) from None
        rows.append(
            {
                "prompt": pr.prompt,
                "finding_id": pr.finding_id,
                "prompt_kind": pr.prompt_kind,
                "seed": None if seed in (None, "") else seed,
                "reference": ex.get("reference") or None,
                "target_prompt": ex.get("target_prompt") or None,
            }
        )
    return rows


def check_reference(spec: str) -> None:
    """Fail early (before any model is loaded) on a reference that cannot be loaded."""
    from audit.errors import InputError

    if spec.startswith("work:"):
        from audit.testbed.draw import WORKS

        if spec.split(":", 1)[1] not in WORKS:
            raise InputError(f"reference {spec!r}: unknown work; known: {', '.join(WORKS)}")
    elif not Path(spec).is_file():
        raise InputError(f"reference image not found: {spec} (or use work:ID)")


def load_reference(spec: str, size: tuple[int, int]) -> Any:
    """``work:ID`` (a canonical SynthLAION work at ``size``) or an image file, as RGB PIL."""
    from audit.errors import InputError

    if spec.startswith("work:"):
        from audit.testbed.draw import WORKS, draw_work

        wid = spec.split(":", 1)[1]
        if wid not in WORKS:
            raise InputError(f"reference {spec!r}: unknown work; known: {', '.join(WORKS)}")
        img = draw_work(wid, size=max(size))
        return img.resize((size[1], size[0])) if size[0] != size[1] else img
    from pipelines.decode import DecodeError, decode_image

    p = Path(spec)
    if not p.is_file():
        raise InputError(f"reference image not found: {spec} (or use work:ID)")
    try:
        return decode_image(p.read_bytes()).image
    except DecodeError as exc:
        raise InputError(f"reference {spec}: not a usable image ({exc})") from exc


def fingerprint(cfg: Any, settings: Any, vocabulary: Any, rows: list[dict]) -> dict[str, Any]:
    """What an attacked prompt depends on: the models (an erased folder by its erase.json's
    creation time too), the attack and judging settings, and the prompt rows."""
    import hashlib
    import json

    def model(name: str) -> Any:
        card = Path(name) / "erase.json"
        if card.is_file():
            return [str(Path(name).resolve()), json.loads(card.read_text()).get("created")]
        return name

    st = dict(settings.__dict__)
    st.pop("device", None)
    return {
        "generator": model(cfg.generator),
        "original": model(cfg.original),
        "settings": st,
        "copy_model": cfg.copy_model,
        "copy_size": cfg.copy_size,
        "reference": cfg.reference,
        "vocabulary": vocabulary,
        "rows": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
    }


class Partial:
    """``.FILE.partial.jsonl`` next to the output: a header line with the run's fingerprint,
    then one line per finished prompt (its row number and output row), flushed as it is
    written; a rerun with the same fingerprint keeps those prompts. Removed once FILE is
    written."""

    def __init__(self, out: Path, fp: dict[str, Any]) -> None:
        self.path = out.with_name(f".{out.name}.partial.jsonl")
        self.fp = fp
        self.fh: Any = None

    def load(self) -> dict[int, dict[str, Any]]:
        import json

        if not self.path.is_file():
            return {}
        done: dict[int, dict[str, Any]] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            if not lines or json.loads(lines[0]).get("fingerprint") != json.loads(
                json.dumps(self.fp)
            ):
                return {}
            for line in lines[1:]:
                rec = json.loads(line)  # a torn last line ends the usable part
                done[int(rec["index"])] = rec["row"]
        except (ValueError, KeyError, TypeError):
            pass
        return done

    def start(self, keep: dict[int, dict[str, Any]]) -> None:
        import json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(
            json.dumps({"fingerprint": self.fp}) + "\n"
            + "".join(json.dumps({"index": i, "row": r}) + "\n" for i, r in sorted(keep.items())),
            encoding="utf-8",
        )  # fmt: skip
        tmp.replace(self.path)
        self.fh = self.path.open("a", encoding="utf-8")

    def append(self, index: int, row: dict[str, Any]) -> None:
        import json
        import os

        self.fh.write(json.dumps({"index": index, "row": row}) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def clear(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.path.unlink(missing_ok=True)
