"""Certify the served policy: one finite-sample guarantee for router + cascade.

The per-tier thresholds (`conformal/thresholds.py`) bound each tier's accepted-but-bad rate
over all queries; the served policy's rate is only bounded by their sum. Here the unit that
is certified is the whole policy:

* loss per query = regret against the task's ladder top, `(q_top - q_served)+` in [0, 1]
  (0/1 quality: 1[top right and served wrong]); the target is a maximum mean regret alpha
  (`--alpha`, or `alpha_t = (1 - Q) * mean train quality of the task's top` for a quality
  target Q; pooled over tasks: the task-mix-weighted mean of alpha_t).
* one acceptance scale: each (task, tier)'s uncertainty u is mapped to
  `p_hat = P(regret > 0 | u)` by increasing isotonic regression on fit rows, and a non-top
  rung accepts iff `p_hat(u) <= lambda`. lambda <= 0 accepts nothing (always the ladder
  top); lambda >= 1 accepts every answer (the router alone, no escalation).
* policy family theta = (b, lambda), b = the router's cost bias.
* Learn-then-test with Pareto testing (Angelopoulos et al.; Laufer-Goldshtein et al. 2023):
  calibration rows are split A/B (seeded, stratified by task); on A the risk and cost of
  every theta give a Pareto front ordered safest -> cheapest; on B fixed-sequence testing
  along that order (exact binomial p-values for 0/1 loss, Hoeffding-Bentkus for bounded
  loss) at level delta certifies a prefix; the cheapest certified theta is served, and
  P(mean regret of the served policy > alpha) <= delta. Nothing certified -> lambda = 0.
* `guarantee="expected"`: conformal risk control at a b chosen on A, over lambda on B with
  the monotone upper envelope of the cascade's loss curve: E[regret] <= alpha.

Risk and cost of a theta come from an injectable evaluator `Callable[[Theta], (loss_per_row,
cost_per_row)]`; the real one (`replay_evaluator`) replays the real `Cascade.run` over
replay tiers, so SLA rules, skips, the ladder and fallbacks are inside the certificate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from routenlp.conformal.ltt import hb_pvalues, hb_upper_bound
from routenlp.errors import DataError

if TYPE_CHECKING:
    from routenlp.config import EnsembleConfig
    from routenlp.conformal.estimator import QualityEstimator
    from routenlp.matrix import MatrixRow

ARTIFACT_VERSION = 1
Guarantee = Literal["high-probability", "expected"]
CertLoss = Literal["regret", "bar"]
LossKind = Literal["binary", "bounded"]
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(round(x, 3) for x in np.linspace(0.0, 1.0, 21))


class Theta(BaseModel):
    """One member of the policy family: router cost bias b (None: the router's default or
    no router) and the acceptance level lambda on the p_hat scale."""

    model_config = ConfigDict(frozen=True)

    b: float | None = None
    lam: float

    def label(self) -> str:
        b = "default" if self.b is None else f"{self.b:g}"
        return f"b={b}, lambda={self.lam:.3g}"


class IsoMap(BaseModel):
    """u -> p_hat = P(regret > 0 | u): an increasing step-linear map (sklearn's isotonic
    fit: linear interpolation between `thresholds`, clipped outside them)."""

    thresholds: list[float]
    values: list[float]
    n: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> IsoMap:
        if len(self.thresholds) != len(self.values) or not self.values:
            raise ValueError("thresholds and values must be non-empty and of equal length")
        if any(b < a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise ValueError("thresholds must be sorted ascending")
        if any(b < a - 1e-12 for a, b in zip(self.values, self.values[1:])):
            raise ValueError("values must be non-decreasing (isotonic)")
        if any(not 0.0 <= v <= 1.0 for v in self.values):
            raise ValueError("values must lie in [0, 1]")
        return self

    def p_hat(self, u: float | None) -> float:
        """P(regret > 0 | u); 1 for an unknown u (never accepted below lambda = 1)."""
        if u is None or not math.isfinite(u):
            return 1.0
        return float(np.interp(u, self.thresholds, self.values))

    def p_hat_array(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        out = np.interp(np.where(np.isfinite(u), u, 0.0), self.thresholds, self.values)
        return np.where(np.isfinite(u), out, 1.0)

    @property
    def floor(self) -> float:
        """The smallest p_hat any answer can get: lambda below it never accepts."""
        return float(self.values[0])


def fit_map(u: Sequence[float | None] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> IsoMap:
    """Isotonic P(regret > 0 | u) on the finite (u, label) pairs (increasing, clipped).

    With no finite u, the map is the constant 1 (the pair can only accept at lambda >= 1)."""
    from sklearn.isotonic import IsotonicRegression

    ua = np.array([np.nan if x is None else float(x) for x in u], dtype=float)
    ya = np.asarray(positive, dtype=float)
    keep = np.isfinite(ua)
    ua, ya = ua[keep], ya[keep]
    if ua.size == 0:
        return IsoMap(thresholds=[0.0], values=[1.0], n=0)
    if np.unique(ua).size < 2:
        return IsoMap(thresholds=[float(ua[0])], values=[float(ya.mean())], n=int(ua.size))
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(ua, ya)
    xs = [float(x) for x in iso.X_thresholds_]
    ys = [float(min(1.0, max(0.0, y))) for y in np.maximum.accumulate(iso.y_thresholds_)]
    return IsoMap(thresholds=xs, values=ys, n=int(ua.size))


def lambda_grid(maps: Mapping[str, Mapping[str, IsoMap]], max_size: int = 48) -> list[float]:
    """Candidate lambdas: 0, 1 and the maps' distinct p_hat levels in (0, 1) (where acceptance
    changes), thinned to quantiles when there are more than `max_size`."""
    vals = sorted({round(v, 6) for ts in maps.values() for m in ts.values() for v in m.values if 0 < v < 1})
    if len(vals) > max_size - 2:
        vals = sorted({round(float(x), 6) for x in np.quantile(vals, np.linspace(0, 1, max_size - 2))})
    return [0.0, *vals, 1.0]


def accepts(lam: float, p_hat: float) -> bool:
    """The served rule: lambda <= 0 accepts nothing, lambda >= 1 everything, else p_hat <= lambda."""
    if lam <= 0.0:
        return False
    if lam >= 1.0:
        return True
    return p_hat <= lam


# -- the certificate -------------------------------------------------------------------


class Certificate(BaseModel):
    """What was certified, for whom, with which evidence."""

    alpha: float = Field(gt=0, lt=1)
    delta: float = Field(gt=0, lt=1)
    guarantee: Guarantee
    loss: LossKind = "binary"
    n_A: int = Field(ge=0)
    n_B: int = Field(ge=0)
    p_value: float | None = None
    ucb: float | None = None
    risk_B: float | None = None
    cost_B: float | None = None
    theta: Theta
    certified: bool
    population: str
    shares: dict[str, float] = Field(default_factory=dict)
    front: int = 0
    n_certified: int = 0
    message: str | None = None
    measure: CertLoss = "regret"  # what the per-request loss is (see replay_evaluator)

    @property
    def what(self) -> str:
        """The bounded quantity in words."""
        if self.measure == "bar":
            return "the share of requests that miss their task's tau where the top tier meets it"
        return "mean regret vs the top tier"

    def plain(self) -> str:
        """The guarantee in plain words (CLI, reports)."""
        if not self.certified:
            return (
                f"no policy cheaper than always the top tier could be certified at {self.what} "
                f"<= {self.alpha:.3g} (delta {self.delta:g}, n_B={self.n_B}); serving the "
                "ladder top" + (f": {self.message}" if self.message else "")
            )
        if self.guarantee == "expected":
            return (
                f"in expectation over calibration sets, {self.what} <= "
                f"{self.alpha:.3g} on traffic like the calibration set ({self.theta.label()})"
            )
        return (
            f"with probability >= {1 - self.delta:.0%}, {self.what} <= "
            f"{self.alpha:.3g} on traffic like the calibration set ({self.theta.label()})"
        )


def population_of(tasks: Sequence[str]) -> tuple[str, dict[str, float]]:
    """The task mix a pooled certificate is marginal over."""
    uniq, counts = np.unique(np.asarray(list(tasks), dtype=object), return_counts=True)
    shares = {str(t): round(float(c) / len(tasks), 4) for t, c in zip(uniq, counts)}
    mix = ", ".join(f"{t}: {s:.1%}" for t, s in shares.items())
    return f"marginal over the calibration task mix: {{{mix}}}", shares


# -- statistics ------------------------------------------------------------------------


def p_value(loss: np.ndarray, alpha: float, kind: LossKind) -> float:
    """p-value of H0: mean loss > alpha (exact binomial for 0/1 loss, HB for [0, 1])."""
    n = int(loss.size)
    if n == 0:
        return 1.0
    if kind == "binary":
        return float(binom.cdf(int(round(float(loss.sum()))), n, alpha))
    return float(hb_pvalues([float(loss.mean())], n, alpha)[0])


def upper_bound(loss: np.ndarray, delta: float, kind: LossKind) -> float:
    """Upper confidence bound (level 1 - delta) on the mean loss."""
    n = int(loss.size)
    if n == 0:
        return 1.0
    if kind == "binary":
        k = int(round(float(loss.sum())))
        return 1.0 if k >= n else float(beta_dist.ppf(1 - delta, k + 1, n - k))
    return hb_upper_bound(float(loss.mean()), n, delta)


def min_n_B(alpha: float, delta: float) -> int:
    """Smallest test-split size at which a zero-loss policy can be certified."""
    return math.ceil(math.log(delta) / math.log(1 - alpha) - 1e-9)


def pareto_order(risk: np.ndarray, cost: np.ndarray) -> list[int]:
    """Indices of the (risk, cost) Pareto front, safest first (cost strictly decreasing)."""
    order = np.lexsort((cost, risk))
    front: list[int] = []
    best = math.inf
    for i in order:
        if cost[i] < best - 1e-15:
            front.append(int(i))
            best = float(cost[i])
    return front


def split_ab(tasks: Sequence[str], seed: int = 0, frac_a: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Seeded A/B split of row indices, stratified by task."""
    rng = np.random.default_rng(seed)
    ta = np.asarray(list(tasks), dtype=object)
    a_idx, b_idx = [], []
    for t in sorted(set(ta.tolist())):
        idx = np.nonzero(ta == t)[0]
        idx = idx[rng.permutation(idx.size)]
        k = int(round(idx.size * frac_a))
        a_idx.append(idx[:k])
        b_idx.append(idx[k:])
    return np.sort(np.concatenate(a_idx)), np.sort(np.concatenate(b_idx))


Evaluator = Callable[[Theta], tuple[np.ndarray, np.ndarray]]


@dataclass
class Selection:
    """The served theta and its certificate; `table` holds every theta's A/B numbers."""

    theta: Theta
    certificate: Certificate
    table: list[dict[str, Any]]


def _loss_kind(losses: Sequence[np.ndarray]) -> LossKind:
    for lo in losses:
        if np.any((lo > 1e-12) & (lo < 1 - 1e-12)):
            return "bounded"
    return "binary"


def certify(
    thetas: Sequence[Theta],
    evaluator: Evaluator,
    tasks: Sequence[str],
    *,
    alpha: float,
    delta: float = 0.1,
    guarantee: Guarantee = "high-probability",
    seed: int = 0,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    rows: np.ndarray | None = None,
    cache: dict[Theta, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Selection:
    """Learn-then-test with Pareto testing (or CRC) over `thetas`.

    `evaluator(theta)` returns (loss, cost) per calibration row, aligned with `tasks`;
    `rows` restricts to a subset (per-task certification); `split` overrides the seeded A/B
    split. The fallback theta (lambda = 0, the ladder top) is always a candidate.
    """
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < delta < 1:
        raise DataError(f"delta must be in (0, 1), got {delta}")
    if guarantee not in ("high-probability", "expected"):
        raise DataError(f"guarantee must be 'high-probability' or 'expected', got {guarantee!r}")
    cache = {} if cache is None else cache
    cands = list(dict.fromkeys(thetas))
    b_vals = list(dict.fromkeys(t.b for t in cands))
    safe = Theta(b=b_vals[0] if b_vals else None, lam=0.0)
    if all(t.lam > 0 for t in cands):
        cands.insert(0, safe)
    all_tasks = np.asarray(list(tasks), dtype=object)
    sub = np.arange(all_tasks.size) if rows is None else np.asarray(rows)
    if split is None:
        ia, ib = split_ab(all_tasks[sub].tolist(), seed=seed)
        ia, ib = sub[ia], sub[ib]
    else:
        ia, ib = split
    evals: list[tuple[np.ndarray, np.ndarray]] = []
    for th in cands:
        if th not in cache:
            lo, co = evaluator(th)
            cache[th] = (np.asarray(lo, dtype=float), np.asarray(co, dtype=float))
        evals.append(cache[th])
    kind = _loss_kind([e[0][sub] for e in evals])
    risk_a = np.array([e[0][ia].mean() if ia.size else 1.0 for e in evals])
    cost_a = np.array([e[1][ia].mean() if ia.size else 0.0 for e in evals])
    population, shares = population_of(all_tasks[sub].tolist())
    table = [
        {"theta": th.model_dump(), "risk_A": float(r), "cost_A": float(c)}
        for th, r, c in zip(cands, risk_a, cost_a)
    ]
    base = dict(alpha=alpha, delta=delta, guarantee=guarantee, loss=kind, n_A=int(ia.size),
                n_B=int(ib.size), population=population, shares=shares)
    if guarantee == "expected":
        return _crc(cands, evals, ia, ib, alpha, cost_a, table, base, safe)
    front = pareto_order(risk_a, cost_a)
    served: int | None = None
    n_cert = 0
    p_served: float | None = None
    for j in front:
        p = p_value(evals[j][0][ib], alpha, kind)
        table[j]["p_value_B"] = p
        if p > delta:
            break
        served, p_served = j, p
        n_cert += 1
    if served is None:
        need = min_n_B(alpha, delta)
        msg = (
            f"even the safest policy failed the test on n_B={ib.size}"
            if ib.size >= need
            else f"n_B={ib.size} test rows; a certificate at alpha={alpha:.3g}, delta={delta:g} "
            f"needs n_B >= {need} (about {2 * need} calibration rows)"
        )
        lb, cb = evals[cands.index(safe)]
        cert = Certificate(**base, theta=safe, certified=False, p_value=None,
                           ucb=None, risk_B=float(lb[ib].mean()) if ib.size else None,
                           cost_B=float(cb[ib].mean()) if ib.size else None,
                           front=len(front), n_certified=0, message=msg)
        return Selection(safe, cert, table)
    lo_b, co_b = evals[served][0][ib], evals[served][1][ib]
    cert = Certificate(**base, theta=cands[served], certified=True, p_value=p_served,
                       ucb=upper_bound(lo_b, delta, kind), risk_B=float(lo_b.mean()),
                       cost_B=float(co_b.mean()), front=len(front), n_certified=n_cert)
    return Selection(cands[served], cert, table)


def _crc(
    cands: list[Theta],
    evals: list[tuple[np.ndarray, np.ndarray]],
    ia: np.ndarray,
    ib: np.ndarray,
    alpha: float,
    cost_a: np.ndarray,
    table: list[dict[str, Any]],
    base: dict[str, Any],
    safe: Theta,
) -> Selection:
    """CRC: per b, the monotone upper envelope of the loss in lambda; b chosen on A (cheapest
    after CRC on A), lambda_hat on B = max{lambda: (n R_up(lambda) + 1)/(n + 1) <= alpha}."""

    def crc_on(idx: np.ndarray, members: list[int]) -> int | None:
        n = idx.size
        env = np.maximum.accumulate(np.stack([evals[j][0][idx] for j in members], axis=1), axis=1)
        bound = (env.sum(axis=0) + 1.0) / (n + 1.0)
        ok = np.nonzero(bound <= alpha)[0]
        # the envelope makes the bound non-decreasing: the admissible set is a prefix
        return None if ok.size == 0 or ok[0] != 0 else members[int(ok[-1])]

    by_b: dict[float | None, list[int]] = {}
    for j, th in enumerate(cands):
        by_b.setdefault(th.b, []).append(j)
    for b in by_b:
        by_b[b].sort(key=lambda j: cands[j].lam)
        if cands[by_b[b][0]].lam > 0:
            zero = Theta(b=b, lam=0.0)
            if zero in cands:
                by_b[b].insert(0, cands.index(zero))
    best_b, best_cost = None, math.inf
    for b, members in by_b.items():
        j = crc_on(ia, members) if ia.size else None
        if j is not None and cost_a[j] < best_cost:
            best_b, best_cost = b, float(cost_a[j])
    members = by_b.get(best_b) or by_b[next(iter(by_b))]
    j = crc_on(ib, members) if ib.size else None
    if j is None:
        cert = Certificate(**base, theta=safe, certified=False,
                           message=f"CRC needs n_B >= {math.ceil(1 / alpha - 1)} rows with no "
                           f"regret at lambda = 0; n_B={ib.size}")
        return Selection(safe, cert, table)
    k = members.index(j)
    env = np.maximum.accumulate(np.stack([evals[m][0][ib] for m in members[: k + 1]], axis=1), axis=1)
    bound = float((env[:, -1].sum() + 1.0) / (ib.size + 1.0))
    cert = Certificate(**base, theta=cands[j], certified=True, ucb=bound,
                       risk_B=float(evals[j][0][ib].mean()), cost_B=float(evals[j][1][ib].mean()),
                       n_certified=1)
    return Selection(cands[j], cert, table)


# -- the policy artifact ---------------------------------------------------------------


class TaskPolicy(BaseModel):
    """A per-task certificate (`per_task=True`)."""

    theta: Theta
    certificate: Certificate | None = None
    refused: str | None = None


class PolicyArtifact(BaseModel):
    """What `routenlp calibrate --policy certified` writes and the Cascade serves."""

    model_config = ConfigDict(extra="forbid")

    version: int = ARTIFACT_VERSION
    kind: Literal["certified"] = "certified"
    theta: Theta
    maps: dict[str, dict[str, IsoMap]]
    certificate: Certificate
    per_task: dict[str, TaskPolicy] = Field(default_factory=dict)
    ladders: dict[str, list[str]] = Field(default_factory=dict)
    signals: dict[str, dict[str, str]] = Field(default_factory=dict)
    reject_rate: dict[str, dict[str, float]] = Field(default_factory=dict)
    alphas: dict[str, float] = Field(default_factory=dict)
    quality_target: float | None = None
    config_hash: str | None = None
    created_at: float = Field(default_factory=time.time)
    meta: dict[str, Any] = Field(default_factory=dict)

    def theta_for(self, task: str) -> Theta:
        tp = self.per_task.get(task)
        return self.theta if tp is None else tp.theta

    def iso(self, task: str, tier: str) -> IsoMap | None:
        return self.maps.get(task, {}).get(tier)

    def p_hat(self, task: str, tier: str, u: float | None) -> float:
        m = self.iso(task, tier)
        return 1.0 if m is None else m.p_hat(u)

    def with_theta(self, theta: Theta) -> PolicyArtifact:
        """The same maps serving another theta (replay of candidate policies)."""
        return self.model_copy(update={"theta": theta, "per_task": {}})

    def save(self, path: str | Path) -> Path:
        """Atomic write (temp + rename): a reloading server never sees half a file."""
        from routenlp.paths import write_json_atomic

        return write_json_atomic(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: str | Path) -> PolicyArtifact:
        from routenlp.paths import read_json_file

        p = Path(path)
        raw = read_json_file(
            p, "policy artifact", hint="create it with `routenlp calibrate --policy certified ... --out FILE`"
        )
        if not isinstance(raw, dict) or raw.get("kind") != "certified":
            kind = raw.get("kind") if isinstance(raw, dict) else None
            raise DataError(
                f"policy artifact {p}: not a certified policy (kind={kind!r})",
                hint="per-tier thresholds files are loaded with Thresholds.load",
            )
        if raw.get("version") != ARTIFACT_VERSION:
            raise DataError(
                f"policy artifact {p}: version {raw.get('version')!r}, expected {ARTIFACT_VERSION}"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise DataError(f"policy artifact {p}: {loc}: {first['msg']}") from None


# -- the real path: matrix rows, the router, replayed Cascades --------------------------


def quality_of(row: MatrixRow, tier: str) -> float:
    """An outcome's quality; a failed or missing outcome counts as 0."""
    o = row.outcomes.get(tier)
    if o is None or not o.ok or o.quality is None or math.isnan(o.quality):
        return 0.0
    return float(o.quality)


def task_ladders(config: EnsembleConfig, tasks: Sequence[str], router: Any = None) -> dict[str, list[str]]:
    """Each task's ladder as the Cascade builds it (router frontier, else every serving tier)."""
    out: dict[str, list[str]] = {}
    for t in dict.fromkeys(tasks):
        serving = [c.name for c in config.tiers_for(t)]
        rungs: list[str] = []
        if router is not None and callable(getattr(router, "ladder", None)):
            front = set(router.ladder(t))
            rungs = [x for x in serving if x in front]
        out[t] = rungs or serving
    return out


def row_uncertainties(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    tier: str,
    *,
    signal: str,
    estimator: QualityEstimator | None = None,
) -> list[float | None]:
    """u of each row's outcome at `tier`, computed as the Cascade computes it at run time."""
    from routenlp.conformal.estimator import answer_text

    out: list[float | None] = [None] * len(rows)
    if signal == "estimator":
        assert estimator is not None
        ok = [i for i, r in enumerate(rows) if (o := r.outcomes.get(tier)) is not None and o.ok]
        if ok:
            us = estimator.uncertainty(
                tier, [rows[i].prompt for i in ok],
                [answer_text(rows[i].outcomes[tier].response) for i in ok],
            )
            for i, u in zip(ok, us):
                out[i] = float(u)
        return out
    for i, r in enumerate(rows):
        o = r.outcomes.get(tier)
        if o is not None and o.ok:
            out[i] = o.risk()
    return out


def _pair_us(config: EnsembleConfig, rows: Sequence[MatrixRow], tier: str, sig: str,
             estimator: QualityEstimator | None) -> list[float | None]:
    if sig == "none":
        return [None] * len(rows)
    return row_uncertainties(config, rows, tier, signal=sig, estimator=estimator)


def pair_signal(config: EnsembleConfig, rows: Sequence[MatrixRow], tier: str,
                estimator: QualityEstimator | None) -> str:
    """'estimator' when the tier is configured so or records no signal and an estimator
    has a model for it; 'recorded' when rows carry a signal; 'none' otherwise."""
    cfg = config.tier(tier)
    has_rec = any((o := r.outcomes.get(tier)) is not None and o.ok and o.risk() is not None for r in rows)
    est_ok = estimator is not None and estimator.has_tier(tier)
    if cfg.uncertainty == "estimator" or not has_rec:
        return "estimator" if est_ok else "none"
    return "recorded"


def fit_maps(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    ladders: Mapping[str, Sequence[str]],
    *,
    estimator: QualityEstimator | None = None,
) -> tuple[dict[str, dict[str, IsoMap]], dict[str, dict[str, str]]]:
    """One isotonic map per (task, non-top rung): P(q_top - q_k > 0 | u_k) on `rows`."""
    maps: dict[str, dict[str, IsoMap]] = {}
    signals: dict[str, dict[str, str]] = {}
    for task, ladder in ladders.items():
        trows = [r for r in rows if r.task == task]
        top = ladder[-1]
        for tier in ladder[:-1]:
            sig = pair_signal(config, trows, tier, estimator)
            signals.setdefault(task, {})[tier] = sig
            us = _pair_us(config, trows, tier, sig, estimator)
            pos = [quality_of(r, top) - quality_of(r, tier) > 1e-12 for r in trows]
            maps.setdefault(task, {})[tier] = fit_map(us, pos)
    return maps, signals


def task_alphas(
    rows: Sequence[MatrixRow], ladders: Mapping[str, Sequence[str]], quality_target: float,
    *, loss: CertLoss = "regret", taus: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """alpha_t = (1 - Q) * mean quality of the task's top on `rows` (train rows); for the
    `bar` loss, (1 - Q) * the share of rows on which the top meets the task's tau."""
    out: dict[str, float] = {}
    for task, ladder in ladders.items():
        qs = [quality_of(r, ladder[-1]) for r in rows if r.task == task]
        if loss == "bar":
            tau = (taus or {}).get(task, 1.0)
            top_q = float(np.mean([q >= tau - 1e-9 for q in qs])) if qs else 1.0
        else:
            top_q = float(np.mean(qs)) if qs else 1.0
        out[task] = max(1e-6, (1.0 - quality_target) * top_q)
    return out


def replay_evaluator(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    artifact: PolicyArtifact,
    *,
    router: Any = None,
    estimator: QualityEstimator | None = None,
    latency: Mapping[str, float] | None = None,
    sla_aware: bool = True,
    loss: CertLoss = "regret",
) -> Evaluator:
    """theta -> (loss, cost) per row from the REAL `Cascade.run` over replay tiers.

    `regret`: (q_top - q_served)+ in [0, 1]. `bar`: 1[the top meets the task's tau and the
    served answer does not], the miss rate of the quality bar the user set per task."""
    from routenlp.bench.routenlp_eval import _FixedBiasRouter, _request_builder
    from routenlp.cascade import Cascade
    from routenlp.errors import TierError
    from routenlp.tiers.replay import build_replay_tiers

    tiers = build_replay_tiers(config, rows)
    tasks = [r.task for r in rows]
    texts = [r.prompt for r in rows]
    routers: dict[float | None, Any] = {}
    def top_of(task: str) -> str:
        return artifact.ladders.get(task, [config.tiers_for(task)[-1].name])[-1]

    q_top = np.array([quality_of(r, top_of(r.task)) for r in rows])
    tau = np.array([config.task(r.task).tau for r in rows]) if loss == "bar" else None

    def row_loss(i: int, served: float) -> float:
        if tau is not None:
            return float(q_top[i] >= tau[i] - 1e-9 and served < tau[i] - 1e-9)
        return min(1.0, max(0.0, q_top[i] - served))

    def evaluate(theta: Theta) -> tuple[np.ndarray, np.ndarray]:
        rt = None
        if router is not None:
            if theta.b not in routers:
                routers[theta.b] = _FixedBiasRouter(router, tasks, texts, theta.b)
            rt = routers[theta.b]
        cascade = Cascade(
            config, tiers, router=rt, policy=artifact.with_theta(theta), latency=latency,
            sla_aware=sla_aware, estimator=estimator, request_builder=_request_builder,
            online=False,  # replay the certified theta itself, never a live online state
        )
        loss = np.zeros(len(rows))
        cost = np.zeros(len(rows))
        for i, r in enumerate(rows):
            try:
                res = cascade.run(r.task, r.prompt, id=r.id)
            except TierError as err:
                cost[i] = float(sum(s.get("cost") or 0.0 for s in getattr(err, "steps", [])))
                loss[i] = row_loss(i, 0.0)
                continue
            q = res.generation.quality
            served = 0.0 if q is None or not res.generation.ok or math.isnan(q) else float(q)
            loss[i] = row_loss(i, served)
            cost[i] = float(res.total_cost)
        return loss, cost

    return evaluate


def planning_latency(config: EnsembleConfig, rows: Sequence[MatrixRow]) -> dict[str, float] | None:
    """Per-tier p50 (ms) the replayed Cascade plans its SLA rules with: the rows' recorded
    latencies, else the config's profile (fixed, so every theta is replayed alike)."""
    prof: dict[str, float] = {}
    for t in config.tiers:
        vals = [o.latency_s * 1000.0 for r in rows if (o := r.outcomes.get(t.name)) is not None
                and o.latency_s is not None and math.isfinite(o.latency_s)]
        if vals:
            prof[t.name] = float(np.median(vals))
        elif t.latency_p50_ms is not None:
            prof[t.name] = float(t.latency_p50_ms)
    return prof or None


def _reject_rates(
    config: EnsembleConfig, rows: Sequence[MatrixRow], art: PolicyArtifact,
    estimator: QualityEstimator | None,
) -> dict[str, dict[str, float]]:
    """Per (task, rung): the share of calibration answers the served lambda rejects (the
    start-higher rule's escalation probability)."""
    out: dict[str, dict[str, float]] = {}
    for task, tiers in art.maps.items():
        trows = [r for r in rows if r.task == task]
        lam = art.theta_for(task).lam
        for tier, m in tiers.items():
            sig = art.signals.get(task, {}).get(tier, "none")
            us = _pair_us(config, trows, tier, sig, estimator)
            rej = [not accepts(lam, m.p_hat(u)) for u in us]  # p_hat(None) = 1
            out.setdefault(task, {})[tier] = float(np.mean(rej)) if rej else 1.0
    return out


def calibrate_policy(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    *,
    router: Any = None,
    estimator: QualityEstimator | None = None,
    train_rows: Sequence[MatrixRow] | None = None,
    quality_target: float = 0.97,
    alpha: float | None = None,
    delta: float = 0.1,
    guarantee: Guarantee = "high-probability",
    per_task: bool = False,
    biases: Sequence[float | None] | None = None,
    lambdas: Sequence[float] | None = None,
    seed: int = 0,
    latency: Mapping[str, float] | None = None,
    sla_aware: bool = True,
    evaluator: Evaluator | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    loss: CertLoss = "regret",
) -> PolicyArtifact:
    """Fit the maps on train rows (else on split A), Pareto-test on A/B, return the artifact.

    Maps fitted on rows other than A keep A's risk estimates honest (isotonic fits are
    optimistic on their own rows), so the Pareto order is better; validity only needs B.
    `biases`: the router cost-bias grid (default: the harness's grid for the router's rule;
    [None] without a router). `lambdas`: default the maps' own change points (`lambda_grid`).
    `evaluator` overrides the replayed Cascade (tests)."""
    if not 0 < quality_target < 1:
        raise DataError(f"--quality-target must be in (0, 1), got {quality_target}")
    known = set(config.task_names)
    rows = [r for r in rows if r.task in known]
    if not rows:
        raise DataError(
            "none of the calibration rows' tasks are in the config "
            f"(config tasks: {config.task_names})"
        )
    if estimator is not None:
        overlap = set(estimator.train_ids) & {r.id for r in rows}
        if overlap:
            raise DataError(
                f"the quality estimator was trained on {len(overlap)} of the calibration rows "
                f"(e.g. {sorted(overlap)[:3]}); calibration must be disjoint from its training"
            )
    tasks = [r.task for r in rows]
    ia, ib = split_ab(tasks, seed=seed)
    ladders = task_ladders(config, tasks, router)
    if latency is None:
        latency = planning_latency(config, train_rows or rows)
    fit_rows = list(train_rows) if train_rows else [rows[i] for i in ia]
    maps, signals = fit_maps(config, fit_rows, ladders, estimator=estimator)
    if lambdas is None:
        lambdas = lambda_grid(maps)
    if loss not in ("regret", "bar"):
        raise DataError(f"certificate loss must be 'regret' or 'bar', got {loss!r}")
    alphas = task_alphas(train_rows or rows, ladders, quality_target, loss=loss,
                         taus={t: config.task(t).tau for t in set(tasks)})
    if biases is None:
        if router is None:
            biases = [None]
        else:
            from routenlp.bench.routenlp_eval import default_cost_biases

            biases = list(default_cost_biases(router))
    thetas = [Theta(b=b, lam=float(lam)) for b in biases for lam in lambdas]
    # a placeholder certificate until the real one exists (the replay needs the maps only)
    pop, shares = population_of(tasks)
    stub = Certificate(alpha=0.5, delta=delta, guarantee=guarantee, n_A=len(ia), n_B=len(ib),
                       theta=thetas[0], certified=False, population=pop, shares=shares)
    art = PolicyArtifact(theta=thetas[0], maps=maps, certificate=stub, ladders=ladders,
                         signals=signals, alphas=alphas, quality_target=quality_target,
                         config_hash=config.hash())
    if evaluator is None:
        evaluator = replay_evaluator(config, rows, art, router=router, estimator=estimator,
                                     latency=latency, sla_aware=sla_aware, loss=loss)
    cache: dict[Theta, tuple[np.ndarray, np.ndarray]] = {}
    done = [0]

    def counted(th: Theta) -> tuple[np.ndarray, np.ndarray]:
        out = evaluator(th)
        done[0] += 1
        if progress:
            progress(th.label(), done[0], len(thetas) + 1)
        return out

    share_arr = np.array([shares[t] for t in alphas if t in shares])
    pooled_alpha = alpha if alpha is not None else float(
        np.dot(share_arr, [alphas[t] for t in alphas if t in shares]) / share_arr.sum()
    )
    sel = certify(thetas, counted, tasks, alpha=pooled_alpha, delta=delta, guarantee=guarantee,
                  split=(ia, ib), cache=cache)
    art = art.model_copy(update={"theta": sel.theta,
                                 "certificate": sel.certificate.model_copy(update={"measure": loss})})
    if per_task:
        tarr = np.asarray(tasks, dtype=object)
        in_b = np.zeros(len(rows), dtype=bool)
        in_b[ib] = True
        for t in sorted(set(tasks)):
            a_t = alpha if alpha is not None else alphas[t]
            t_rows = np.nonzero(tarr == t)[0]
            t_a, t_b = t_rows[~in_b[t_rows]], t_rows[in_b[t_rows]]
            need = min_n_B(a_t, delta)
            if t_b.size < need:
                msg = (f"task {t!r}: n={t_rows.size} calibration rows (n_B={t_b.size}); certifying it "
                       f"alone at alpha={a_t:.3g}, delta={delta:g} needs n_B >= {need} "
                       f"(about {2 * need} rows); serving the pooled policy")
                art.per_task[t] = TaskPolicy(theta=sel.theta, refused=msg)
                continue
            s = certify(thetas, counted, tasks, alpha=a_t, delta=delta, guarantee=guarantee,
                        split=(t_a, t_b), cache=cache)
            art.per_task[t] = TaskPolicy(theta=s.theta,
                                         certificate=s.certificate.model_copy(update={"measure": loss}))
    art = art.model_copy(update={"reject_rate": _reject_rates(config, rows, art, estimator)})
    art.meta["table"] = sel.table
    art.meta["pooled_alpha"] = pooled_alpha
    return art
