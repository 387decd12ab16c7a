"""Failure mining: the queries that keep traffic on the expensive tiers.

A failure is (query, cheap tier) where the cheap tier served below the task's tau or was
rejected (escalated past). Its gap is top-tier quality minus cheap-tier quality; without a
reference the top tier's answer is the pseudo-reference, scored with the task's metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from routenlp.config import EnsembleConfig
from routenlp.loop import adapters
from routenlp.matrix import MatrixRow


@dataclass
class Failure:
    """One failing query with every cheap tier that failed on it."""

    id: str
    task: str
    query: str
    gap: float  # max over failing tiers of (top quality - cheap quality), >= 0
    tiers: list[str]  # failing cheap tiers, cheapest first
    top_tier: str
    top_output: str | None = None  # the teacher's answer (`--teacher top`)
    accepted_output: str | None = None  # an answer known to be good (`--teacher accepted`)
    reference: Any = None  # gold or reviewer's correction (`--teacher reference`)
    source: str = "matrix"  # "matrix" | "store"
    qualities: dict[str, float | None] = field(default_factory=dict)
    top_cost: float | None = None  # what the top tier charged for it (the spend at stake)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "task": self.task, "query": self.query, "gap": self.gap,
            "tiers": self.tiers, "top_tier": self.top_tier, "source": self.source,
            "qualities": self.qualities, "top_cost": self.top_cost,
        }


def _pseudo_quality(config: EnsembleConfig, task: str, output: Any, top_output: Any) -> float | None:
    """Score a cheap answer against the top tier's answer with the task's metric."""
    spec = adapters.task_spec(config, task)
    try:
        return float(spec.score(spec.parse(adapters.response_text(output)),
                                spec.parse(adapters.response_text(top_output))))
    except Exception:  # noqa: BLE001 - an unscorable answer is a full failure
        return 0.0


def row_targets(config: EnsembleConfig, row: MatrixRow) -> tuple[str | None, str | None]:
    """(top tier's answer, best answer with quality >= tau) of a labelled row."""
    ladder = [t.name for t in config.tiers_for(row.task) if t.name in row.outcomes]
    if not ladder:
        return None, None
    tau = config.task(row.task).tau
    top = row.outcomes[ladder[-1]]
    top_out = adapters.response_text(top.response) if top.error is None and top.response is not None else None
    good = [(row.outcomes[t].quality, -i, t) for i, t in enumerate(ladder)
            if row.outcomes[t].ok and (row.outcomes[t].quality or 0.0) >= tau]
    acc = None
    if good:
        best = max(good)[2]
        acc = adapters.response_text(row.outcomes[best].response)
    return top_out, acc


def mine_matrix(config: EnsembleConfig, rows: Sequence[MatrixRow], *, tiers: Sequence[str] | None = None
                ) -> list[Failure]:
    """Failures of the cheap tiers on a labelled quality matrix (one entry per query).

    Walking the ladder cheapest first, a tier fails when its quality is below tau; the walk
    stops at the first tier that meets tau, since the tiers above it would not be asked."""
    out: list[Failure] = []
    known = set(config.task_names)
    for row in rows:
        if row.task not in known:
            continue
        ladder = [t.name for t in config.tiers_for(row.task) if t.name in row.outcomes]
        if len(ladder) < 2:
            continue
        tau = config.task(row.task).tau
        top = ladder[-1]
        top_o = row.outcomes[top]
        no_ref = row.reference is None
        q_top = 1.0 if no_ref else (top_o.quality if top_o.ok else 0.0)
        failing: list[str] = []
        gap = 0.0
        quals: dict[str, float | None] = {}
        for name in ladder[:-1]:
            o = row.outcomes[name]
            if no_ref:
                q = _pseudo_quality(config, row.task, o.response, top_o.response) if o.ok else 0.0
            else:
                q = o.quality if o.ok else 0.0
            q = 0.0 if q is None else float(q)
            quals[name] = q
            if q >= tau:
                break  # served here: the tiers above never see this query
            if tiers is None or name in tiers:
                failing.append(name)
                gap = max(gap, max(0.0, float(q_top or 0.0) - q))
        if not failing:
            continue
        top_out, acc = row_targets(config, row)
        out.append(Failure(
            id=row.id, task=row.task, query=row.prompt, gap=gap, tiers=failing, top_tier=top,
            top_output=top_out, accepted_output=acc, reference=row.reference, qualities=quals,
            top_cost=top_o.cost,
        ))
    return out


def _step_text(step: Any) -> str | None:
    extra = step.model_extra or {}
    for key in ("output", "text", "response"):
        if isinstance(extra.get(key), str):
            return extra[key]
    return None


def mine_store(config: EnsembleConfig, store: Any, *, task: str | None = None,
               limit: int | None = None) -> list[Failure]:
    """Failures from the gateway's request log: escalated requests (every rejected tier
    below the served one fails) and served answers whose audited feedback is below tau.

    Gap: with the rejected tier's answer recorded, its pseudo-quality against the served
    answer; otherwise the rejection counts as a full miss (gap = served quality, 1 when
    unaudited). Positive feedback makes the served answer an `accepted` teacher target,
    a reviewer's reference a `reference` target.
    """
    feedback: dict[str, list[Any]] = {}
    for fb in store.feedback_since(task=task):
        feedback.setdefault(fb.request_id, []).append(fb)
    seen: set[str] = set()
    out: list[Failure] = []
    known = set(config.task_names)
    candidates = store.requests(task=task, escalated_only=True, limit=limit)
    extra_ids = [rid for rid in feedback if rid not in {r.id for r in candidates}]
    for rid in extra_ids:
        rec = store.get_request(rid)
        if rec is not None:
            candidates.append(rec)
    for rec in candidates:
        response = rec.response or (rec.metadata or {}).get("output")
        if rec.id in seen or rec.task not in known or not response:
            continue
        seen.add(rec.id)
        ladder = [t.name for t in config.tiers_for(rec.task)]
        tau = config.task(rec.task).tau
        fbs = feedback.get(rec.id, [])
        q_served = fbs[-1].quality if fbs else None
        ref = next((fb.reference for fb in reversed(fbs) if fb.reference is not None), None)
        failing: list[str] = []
        quals: dict[str, float | None] = {}
        gap = 0.0
        for step in rec.path:
            if step.skipped or step.tier == rec.final_tier or step.tier not in ladder[:-1]:
                continue
            if step.accepted and step.error is None:
                continue
            text = _step_text(step)
            if text is not None:
                q = _pseudo_quality(config, rec.task, text, response) or 0.0
            else:
                q = 0.0
            quals[step.tier] = q
            failing.append(step.tier)
            gap = max(gap, max(0.0, (1.0 if q_served is None else q_served) - q))
        if q_served is not None and q_served < tau and rec.final_tier in ladder[:-1]:
            failing.append(rec.final_tier)  # accepted but audited bad
            quals[rec.final_tier] = q_served
            gap = max(gap, 1.0 - q_served)
        if not failing:
            continue
        accepted = response if q_served is not None and q_served >= tau else None
        top_step = next((s for s in rec.path if s.tier == ladder[-1] and not s.skipped), None)
        out.append(Failure(
            id=rec.id, task=rec.task, query=rec.query, gap=gap,
            tiers=sorted(set(failing), key=ladder.index), top_tier=ladder[-1],
            top_output=response if rec.final_tier == ladder[-1] else None,
            accepted_output=accepted, reference=ref, source="store", qualities=quals,
            top_cost=top_step.cost if top_step is not None else None,
        ))
    return out

