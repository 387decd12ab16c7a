"""Distillation sets: which (query, target) pairs each cheap tier is trained on.

Targeted: the members of the top-N failure clusters that failed on the tier, topped up
with nearest neighbours from the unlabelled pool when a cluster is small. Random: the
same volume per tier drawn at random (the ablation). Held-out rows (calibration, test)
never enter a set, by id or by query text: the round is judged on them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from routenlp.config import EnsembleConfig
from routenlp.errors import DataError
from routenlp.loop import adapters
from routenlp.loop.cluster import ClusterReport
from routenlp.loop.mining import Failure, row_targets
from routenlp.matrix import MatrixRow

Teacher = Literal["top", "accepted", "reference"]
TEACHERS = ("top", "accepted", "reference")


@dataclass
class Example:
    id: str
    task: str
    tier: str
    query: str
    target: str
    source: str  # "cluster:<task>#<k>" | "neighbour:<task>#<k>" | "random"


@dataclass
class DistillSet:
    strategy: str
    teacher: str
    examples: list[Example]

    def for_tier(self, tier: str) -> list[Example]:
        return [e for e in self.examples if e.tier == tier]

    def volume(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.examples:
            out[e.tier] = out.get(e.tier, 0) + 1
        return out

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8") as fh:
            for e in self.examples:
                fh.write(json.dumps(asdict(e), ensure_ascii=False, sort_keys=True) + "\n")
        return p


class HeldOut:
    """Ids and query texts of the calibration and test splits."""

    def __init__(self, rows: Iterable[MatrixRow]) -> None:
        rows = list(rows)
        self.ids = {r.id for r in rows}
        self.texts = {r.prompt.strip() for r in rows}

    def __contains__(self, item: tuple[str, str]) -> bool:
        rid, text = item
        return rid in self.ids or text.strip() in self.texts


def _target(config: EnsembleConfig, task: str, teacher: str, top: str | None, accepted: str | None,
            reference: Any) -> str | None:
    if teacher == "top":
        return top
    if teacher == "accepted":
        return accepted
    if reference is None:
        return None
    return adapters.task_spec(config, task).reference_text(reference)


def failure_target(config: EnsembleConfig, f: Failure, teacher: str) -> str | None:
    return _target(config, f.task, teacher, f.top_output, f.accepted_output, f.reference)


def row_target(config: EnsembleConfig, row: MatrixRow, teacher: str) -> str | None:
    top, acc = row_targets(config, row)
    return _target(config, row.task, teacher, top, acc, row.reference)


def _check_teacher(teacher: str) -> None:
    if teacher not in TEACHERS:
        raise DataError(f"--teacher must be one of {', '.join(TEACHERS)}, got {teacher!r}")


def targeted_set(
    config: EnsembleConfig,
    report: ClusterReport,
    failures: Sequence[Failure],
    pool: Sequence[MatrixRow],
    held_out: HeldOut,
    *,
    tiers: Sequence[str],
    teacher: str = "top",
    top_clusters: int = 5,
    min_cluster: int = 8,
    max_per_tier: int | None = None,
    embed: adapters.EmbedFn | None = None,
) -> DistillSet:
    """Examples from the top clusters for each distillable tier (in cluster rank order)."""
    _check_teacher(teacher)
    by_id = {f.id: f for f in failures}
    examples: list[Example] = []
    used: set[tuple[str, str]] = set()
    for c in report.top(top_clusters):
        for tier in tiers:
            if not config.tier(tier).serves(c.task):
                continue
            added = 0
            for fid in c.ids:
                f = by_id[fid]
                if tier not in f.tiers or (f.id, f.query) in held_out or (tier, f.id) in used:
                    continue
                tgt = failure_target(config, f, teacher)
                if not tgt:
                    continue
                examples.append(Example(f.id, f.task, tier, f.query, tgt, f"cluster:{c.key}"))
                used.add((tier, f.id))
                added += 1
            if added < min_cluster and embed is not None:
                cand = [r for r in pool if r.task == c.task and (tier, r.id) not in used
                        and (r.id, r.prompt) not in held_out]
                if cand:
                    d = report.spaces[c.task].distances(embed([r.prompt for r in cand]), c.index)
                    for i in np.argsort(d, kind="stable"):
                        if added >= min_cluster:
                            break
                        r = cand[int(i)]
                        tgt = row_target(config, r, teacher)
                        if not tgt:
                            continue
                        examples.append(Example(r.id, r.task, tier, r.prompt, tgt, f"neighbour:{c.key}"))
                        used.add((tier, r.id))
                        added += 1
    if max_per_tier is not None:
        kept: list[Example] = []
        count: dict[str, int] = {}
        for e in examples:  # cluster rank order: the best clusters are kept first
            if count.get(e.tier, 0) < max_per_tier:
                kept.append(e)
                count[e.tier] = count.get(e.tier, 0) + 1
        examples = kept
    return DistillSet("targeted", teacher, examples)


def random_set(
    config: EnsembleConfig,
    pool: Sequence[MatrixRow],
    held_out: HeldOut,
    volume: dict[str, int],
    *,
    teacher: str = "top",
    seed: int = 13,
) -> DistillSet:
    """The ablation: per tier, the same number of examples drawn at random from the pool."""
    _check_teacher(teacher)
    rng = random.Random(seed)
    examples: list[Example] = []
    for tier, n in sorted(volume.items()):
        cand = [r for r in pool if config.tier(tier).serves(r.task) and (r.id, r.prompt) not in held_out]
        rng.shuffle(cand)
        added = 0
        for r in cand:
            if added >= n:
                break
            tgt = row_target(config, r, teacher)
            if not tgt:
                continue
            examples.append(Example(r.id, r.task, tier, r.prompt, tgt, "random"))
            added += 1
    return DistillSet("random", teacher, examples)


def export_chat_jsonl(config: EnsembleConfig, examples: Sequence[Example], path: str | Path) -> Path:
    """Chat-format fine-tuning data ({"messages": [...]}) for a tier trained elsewhere."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for e in examples:
            msgs = adapters.chat_messages(config, e.task, e.query)
            msgs.append({"role": "assistant", "content": e.target})
            fh.write(json.dumps({"messages": msgs, "metadata": {"id": e.id, "task": e.task}},
                                ensure_ascii=False) + "\n")
    return p
