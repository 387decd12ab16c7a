"""The thresholds file and the calibration that writes it.

Format (architecture doc): `{"alpha", "method", "thresholds": {task: {tier: {"delta": float
or null, "n", "risk", "bound", ...}}}}`; null means "never accept at this tier for this
task". Extra keys say why (`reason`), how often calibration accepted (`accept_rate`), which
signal was used (`signal`: "recorded" or "estimator") and the finite u range seen (`u_lo`,
`u_hi`, used to bound online adaptation). The top serving tier of a task has no entry: it
always accepts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routenlp.config import EnsembleConfig
from routenlp.conformal.crc import PairResult, crc_threshold
from routenlp.conformal.estimator import QualityEstimator, answer_text
from routenlp.conformal.ltt import ltt_threshold
from routenlp.errors import DataError
from routenlp.matrix import MatrixRow

Method = Literal["crc", "ltt"]


class ThresholdEntry(BaseModel):
    """One (task, tier) threshold; `delta=None` means never accept."""

    model_config = ConfigDict(extra="allow")

    delta: float | None
    n: int = Field(ge=0)
    risk: float | None = None
    bound: float | None = None
    accept_rate: float | None = None
    reason: str | None = None
    signal: str | None = None
    u_lo: float | None = None
    u_hi: float | None = None


class Thresholds(BaseModel):
    """Per (task, non-top tier) acceptance thresholds from `routenlp calibrate`."""

    model_config = ConfigDict(extra="allow")

    alpha: float = Field(gt=0, lt=1)
    method: str = "crc"
    thresholds: dict[str, dict[str, ThresholdEntry]] = Field(default_factory=dict)
    delta_conf: float | None = None
    created_at: float | None = None
    config_hash: str | None = None

    def entry(self, task: str, tier: str) -> ThresholdEntry | None:
        return self.thresholds.get(task, {}).get(tier)

    def delta(self, task: str, tier: str) -> float | None:
        """The threshold, or None (never accept) for an uncalibrated or refused pair."""
        e = self.entry(task, tier)
        return None if e is None else e.delta

    def signal(self, task: str, tier: str) -> str | None:
        """'estimator' when the pair was calibrated on the learned estimator's scores."""
        e = self.entry(task, tier)
        return None if e is None else e.signal

    def pairs(self) -> list[tuple[str, str, ThresholdEntry]]:
        return [(t, k, e) for t, tiers in self.thresholds.items() for k, e in tiers.items()]

    # -- I/O ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        for tiers in data["thresholds"].values():
            for e in tiers.values():
                e.setdefault("delta", None)  # the contract: null means never accept
                e.setdefault("risk", None)
                e.setdefault("bound", None)
        return data

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp + rename): a server reloading it never sees half a file."""
        from routenlp.paths import write_json_atomic

        return write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        from routenlp.paths import read_json_file

        p = Path(path)
        raw = read_json_file(p, "thresholds file", hint="create it with `routenlp calibrate ... --out FILE`")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise DataError(f"thresholds file {p}: {loc}: {first['msg']}") from None


def _pair_samples(
    rows: Sequence[MatrixRow], tier: str, tau: float
) -> tuple[list[float], list[bool], list[int], int, int]:
    """(u, bad, row index, n_failed, n_no_signal) for one (task, tier) from matrix rows.

    Failed outcomes (error or missing quality) are bad with u=+inf: the cascade escalates
    on them, so they are never accepted. Outcomes without a recorded signal also get
    u=+inf (never accepted at run time either).
    """
    us: list[float] = []
    bad: list[bool] = []
    idx: list[int] = []
    n_failed = n_nosig = 0
    for i, r in enumerate(rows):
        o = r.outcomes.get(tier)
        if o is None:
            continue  # tier not run on this query: not a sample
        idx.append(i)
        if not o.ok:
            n_failed += 1
            us.append(math.inf)
            bad.append(True)
            continue
        assert o.quality is not None
        bad.append(bool(o.quality < tau))
        risk = o.risk()
        if risk is None:
            n_nosig += 1
            us.append(math.inf)
        else:
            us.append(risk)
    return us, bad, idx, n_failed, n_nosig


def calibrate(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    *,
    alpha: float,
    method: Method | str = "crc",
    delta_conf: float = 0.1,
    estimator: QualityEstimator | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Thresholds:
    """One threshold per (task, non-top serving tier) from the matrix rows' (u, q).

    Signal per pair: the recorded one (Outcome.risk()) unless the tier is configured with
    `uncertainty: estimator` or no row of the pair records any signal; then the learned
    estimator is used when given, else the pair never accepts (reason says so).
    """
    if method not in ("crc", "ltt"):
        raise DataError(f"unknown calibration method {method!r}; use 'crc' or 'ltt'")
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be in (0, 1), got {alpha}")
    if estimator is not None:
        overlap = set(estimator.train_ids) & {r.id for r in rows}
        if overlap:
            raise DataError(
                f"the quality estimator was trained on {len(overlap)} of the calibration rows "
                f"(e.g. {sorted(overlap)[:3]}); calibration must be disjoint from its training",
                hint="train the estimator on the train split and calibrate on a held-out split",
            )
    by_task: dict[str, list[MatrixRow]] = {}
    for r in rows:
        by_task.setdefault(r.task, []).append(r)
    unknown = sorted(set(by_task) - set(config.task_names))
    if not set(by_task) & set(config.task_names):
        raise DataError(
            f"none of the matrix tasks {sorted(by_task)[:10]} are in the config "
            f"(config tasks: {config.task_names})"
        )
    result = Thresholds(
        alpha=alpha,
        method=method,
        delta_conf=delta_conf if method == "ltt" else None,
        created_at=time.time(),
        config_hash=config.hash(),
    )
    if unknown:
        result.__pydantic_extra__["skipped_tasks"] = unknown  # type: ignore[index]
    jobs = [
        (task, tier_cfg)
        for task in config.task_names
        if task in by_task
        for tier_cfg in config.tiers_for(task)[:-1]
    ]
    for j, (task, tier_cfg) in enumerate(jobs):
        if progress:
            progress(f"{task} / {tier_cfg.name}", j, len(jobs))
        task_rows = by_task[task]
        tau = config.task(task).tau
        us, bad, idx, n_failed, n_nosig = _pair_samples(task_rows, tier_cfg.name, tau)
        signal = "recorded"
        notes: list[str] = []
        n_ok = len(us) - n_failed
        want_estimator = tier_cfg.uncertainty == "estimator" or (n_ok > 0 and n_nosig == n_ok)
        if want_estimator and n_ok > 0:
            if estimator is not None and estimator.has_tier(tier_cfg.name):
                name = tier_cfg.name
                ok_pos = [k for k in range(len(idx)) if not _failed(task_rows[idx[k]], name)]
                queries = [task_rows[idx[k]].prompt for k in ok_pos]
                answers = [
                    answer_text(task_rows[idx[k]].outcomes[name].response) for k in ok_pos
                ]
                est_u = estimator.uncertainty(tier_cfg.name, queries, answers)
                for k, u in zip(ok_pos, est_u):
                    us[k] = u
                signal = "estimator"
                n_nosig = 0
            else:
                why = (
                    "tier is configured with uncertainty: estimator"
                    if tier_cfg.uncertainty == "estimator"
                    else "no uncertainty signal (uncertainty/confidence) recorded in the matrix"
                )
                hint = (
                    "the given estimator has no model for this tier"
                    if estimator is not None
                    else "pass --estimator DIR (routenlp train-estimator) to use a learned one"
                )
                entry = ThresholdEntry(
                    delta=None, n=len(us), reason=f"{why}; never accept ({hint})", signal="none",
                    accept_rate=0.0,
                )
                result.thresholds.setdefault(task, {})[tier_cfg.name] = entry
                continue
        if n_failed:
            notes.append(f"{n_failed} failed outcome(s) counted as bad, never accepted")
        if n_nosig:
            notes.append(
                f"{n_nosig} outcome(s) without an uncertainty signal counted as never accepted"
            )
        if method == "crc":
            pr: PairResult = crc_threshold(us, bad, alpha)
        else:
            pr = ltt_threshold(us, bad, alpha, delta_conf)
        reasons = ([pr.reason] if pr.reason else []) + notes
        extra: dict[str, Any] = {}
        if pr.p_value is not None:
            extra["p_value"] = pr.p_value
        result.thresholds.setdefault(task, {})[tier_cfg.name] = ThresholdEntry(
            delta=pr.delta,
            n=pr.n,
            risk=pr.risk,
            bound=pr.bound,
            accept_rate=pr.accept_rate,
            reason="; ".join(reasons) if reasons else None,
            signal=signal,
            u_lo=pr.u_lo,
            u_hi=pr.u_hi,
            **extra,
        )
    if progress:
        progress("done", len(jobs), len(jobs))
    return result


def _failed(row: MatrixRow, tier: str) -> bool:
    o = row.outcomes.get(tier)
    return o is None or not o.ok
