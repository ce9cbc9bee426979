"""Keep/drop decisions from the findings: detectors score, this module decides.

Input: every sample of the workspace (the embedding rows, failed ones included). Rules, each
selected by name:

- ``duplicates``: within each duplicate *component* (groups of the selected kinds, by default
  exact and near, that share a sample are merged, so a sample never ends up both kept by one
  group and dropped by another), one sample is kept: the one the detector named representative most often, preferring
  ``status == "ok"``, then the smallest key. Every other member is dropped with reason
  ``duplicates:<kind>`` (the kinds of the groups it belongs to) and ``duplicate_of`` = the kept
  sample.
- ``poisons``: rows of the poisons finding with ``flagged`` are dropped with reason
  ``poisons:<kind>``.
- ``failed``: samples whose status is not ``ok`` (failed downloads and decodes, hash
  mismatches, missing captions) are dropped with reason ``failed:<status>``.

A sample dropped by several rules carries every reason. Kept + dropped = input, checked with
``audit.workspace.check_invariant``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from audit.errors import InputError
from audit.workspace import Workspace, check_invariant

logger = logging.getLogger(__name__)

RULES = ("duplicates", "poisons", "failed")
DUPLICATE_KINDS = ("exact", "near", "caption")
DEFAULT_DUPLICATE_KINDS = ("exact", "near")
"""Caption duplicates (same caption, different images) are dropped only when asked for."""

KEEP_SCHEMA = pa.schema(
    [("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("status", pa.string())]
)
DROP_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("reasons", pa.list_(pa.string())),
        ("duplicate_of", pa.string()),
    ]
)


@dataclass
class Decision:
    """The outcome: keep and drop tables plus counts (rows per reason, per rule)."""

    keep: pa.Table
    drop: pa.Table
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_input(self) -> int:
        return self.keep.num_rows + self.drop.num_rows


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_drops(
    dups: pa.Table, status: dict[str, str], kinds: tuple[str, ...] = DEFAULT_DUPLICATE_KINDS
) -> dict[str, tuple[list[str], str]]:
    """key -> (reasons, kept key) for every duplicate that is not its component's keeper.

    Keys of the finding that are not in ``status`` (not samples of this workspace) are an error.
    """
    needed = {"key", "group_id", "kind", "is_representative"}
    missing = needed - set(dups.column_names)
    if missing:
        raise InputError(f"duplicates finding lacks columns {sorted(missing)}")
    rows = dups.select(["key", "group_id", "kind", "is_representative"]).to_pylist()
    rows = [r for r in rows if r["kind"] in kinds]
    unknown = sorted({r["key"] for r in rows} - status.keys())
    if unknown:
        raise InputError(
            f"duplicates finding names {len(unknown)} keys that are not samples of "
            f"this workspace, e.g. {unknown[:5]}: is it from another workspace?"
        )
    uf = _UnionFind()
    members: dict[tuple[str, int], list[str]] = defaultdict(list)
    votes: Counter[str] = Counter()
    kinds_of: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        members[(r["kind"], int(r["group_id"]))].append(r["key"])
        kinds_of[r["key"]].add(r["kind"])
        if r["is_representative"]:
            votes[r["key"]] += 1
    for keys in members.values():
        for k in keys[1:]:
            uf.union(keys[0], k)
    components: dict[str, list[str]] = defaultdict(list)
    for k in kinds_of:
        components[uf.find(k)].append(k)
    out: dict[str, tuple[list[str], str]] = {}
    for comp in components.values():
        keeper = min(comp, key=lambda k: (-votes[k], status.get(k) != "ok", k))
        for k in comp:
            if k != keeper:
                out[k] = ([f"duplicates:{kind}" for kind in sorted(kinds_of[k])], keeper)
    return out


def decide(
    ws: Workspace,
    drop: list[str] | tuple[str, ...],
    duplicate_kinds: tuple[str, ...] = DEFAULT_DUPLICATE_KINDS,
) -> Decision:
    """Apply the rules named in ``drop`` to every sample of ``ws``."""
    bad = [d for d in drop if d not in RULES]
    if bad:
        raise ValueError(f"unknown drop rule(s) {bad} (known: {', '.join(RULES)})")
    samples = ws.load_embeddings(columns=["key", "url", "caption", "status"])
    keys = samples.column("key").to_pylist()
    status = dict(zip(keys, samples.column("status").to_pylist()))
    if len(status) != len(keys):
        raise InputError("embedding keys are not unique; rerun `laion-audit embed`")
    reasons: dict[str, list[str]] = defaultdict(list)
    duplicate_of: dict[str, str] = {}
    if "duplicates" in drop:
        if not ws.has_finding("duplicates"):
            raise InputError(
                f"--drop duplicates needs the duplicates finding: run "
                f"`laion-audit dedup {ws.root}` first"
            )
        for k, (why, keeper) in duplicate_drops(
            ws.read_finding("duplicates"), status, duplicate_kinds
        ).items():
            reasons[k] += why
            duplicate_of[k] = keeper
    if "poisons" in drop:
        if not ws.has_finding("poisons"):
            raise InputError(
                f"--drop poisons needs the poisons finding: run "
                f"`laion-audit poisons {ws.root}` first"
            )
        p = ws.read_finding("poisons")
        missing = {"key", "flagged", "kind"} - set(p.column_names)
        if missing:
            raise InputError(f"poisons finding lacks columns {sorted(missing)}")
        for r in p.select(["key", "flagged", "kind"]).to_pylist():
            if r["flagged"]:
                if r["key"] not in status:
                    raise InputError(
                        f"poisons finding names key {r['key']!r}, which is not a "
                        f"sample of this workspace"
                    )
                reasons[r["key"]].append(f"poisons:{r['kind'] or 'unknown'}")
    if "failed" in drop:
        for k, s in status.items():
            if s != "ok":
                reasons[k].append(f"failed:{s or 'unknown'}")
    is_drop = pa.array([k in reasons for k in keys], pa.bool_())
    keep_t = samples.filter(pc.invert(is_drop)).cast(KEEP_SCHEMA)
    dropped = samples.filter(is_drop)
    dkeys = dropped.column("key").to_pylist()
    drop_t = dropped.append_column(
        "reasons", pa.array([sorted(set(reasons[k])) for k in dkeys], pa.list_(pa.string()))
    )
    drop_t = drop_t.append_column(
        "duplicate_of", pa.array([duplicate_of.get(k) for k in dkeys], pa.string())
    ).cast(DROP_SCHEMA)
    check_invariant(keys, keep_t.column("key").to_pylist() + dkeys, stage="filter")
    counts: Counter[str] = Counter({f"rule:{rule}": 0 for rule in drop})
    for k in dkeys:
        why = set(reasons[k])
        counts.update(why)
        counts.update({f"rule:{r.split(':', 1)[0]}" for r in why})
    summary = {
        "input": len(keys),
        "kept": keep_t.num_rows,
        "dropped": drop_t.num_rows,
        **dict(sorted(counts.items())),
    }
    return Decision(keep=keep_t, drop=drop_t, counts=summary)


def write_decision(ws: Workspace, decision: Decision, meta: dict) -> None:
    """``filtered/keep.parquet``, ``filtered/drop.parquet`` and ``filtered/summary.json``."""
    ws.write_table(ws.filtered_dir / "keep.parquet", decision.keep)
    ws.write_table(ws.filtered_dir / "drop.parquet", decision.drop)
    ws.write_json(ws.filtered_dir / "summary.json", {**meta, "counts": decision.counts})
