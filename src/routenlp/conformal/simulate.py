"""Synthetic cascades with correlated tiers, to check the certified policy's guarantee.

One latent difficulty z per query drives every tier (shared difficulty is what makes the
per-tier bounds add up): tier k answers right iff z + e_k < s_k (skill s_k, private noise
e_k), and reports u_k = z + v_k (a noisy view of the same difficulty). The cascade starts at
the cheapest tier (no router: theta = (None, lambda)) and is evaluated in closed form with
numpy, so hundreds of seeded trials take seconds. Used by the unit tests and by
`benchmarks/certify_sim.py` (the table in docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from routenlp.conformal.certify import DEFAULT_LAMBDAS, IsoMap, Theta, certify, fit_map, split_ab
from routenlp.conformal.crc import crc_threshold


@dataclass(frozen=True)
class World:
    """Skills and costs of a K-tier ladder (the last is the top); u noise; a u shift."""

    skills: tuple[float, ...] = (0.0, 0.6, 2.5)
    costs: tuple[float, ...] = (1.0, 3.0, 10.0)
    answer_noise: float = 0.5
    u_noise: float = 0.6
    u_shift: float = 0.0  # added to every u (a negative shift makes answers look safer)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(q, u): 0/1 quality and uncertainty, each (n, K)."""
        k = len(self.skills)
        z = rng.standard_normal(n)[:, None]
        q = (z + self.answer_noise * rng.standard_normal((n, k)) < np.asarray(self.skills)).astype(float)
        u = z + self.u_noise * rng.standard_normal((n, k)) + self.u_shift
        return q, u


def regret_matrix(q: np.ndarray) -> np.ndarray:
    """(q_top - q_k)+ per row and tier."""
    return np.clip(q[:, -1:] - q, 0.0, 1.0)


def served_tier(p: np.ndarray, lam: float) -> np.ndarray:
    """The served tier index of the cascade from the cheapest: first rung with p_hat <= lam."""
    k = p.shape[1] + 1
    if lam <= 0:
        return np.full(p.shape[0], k - 1)
    ok = np.ones_like(p, dtype=bool) if lam >= 1 else p <= lam
    ok = np.concatenate([ok, np.ones((p.shape[0], 1), dtype=bool)], axis=1)
    return ok.argmax(axis=1)


def evaluate(world: World, q: np.ndarray, u: np.ndarray, maps: list[IsoMap], lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(regret, cost) per row of the certified-rule cascade at level lam."""
    p = np.stack([m.p_hat_array(u[:, j]) for j, m in enumerate(maps)], axis=1)
    s = served_tier(p, lam)
    reg = regret_matrix(q)[np.arange(q.shape[0]), s]
    cum = np.cumsum(np.asarray(world.costs))
    return reg, cum[s] if lam > 0 else np.full(q.shape[0], world.costs[-1])


def per_tier_policy(world: World, q: np.ndarray, u: np.ndarray, qt: np.ndarray, ut: np.ndarray,
                    alpha: float) -> tuple[float, float]:
    """Today's per-tier CRC (loss 1[u <= d and wrong] on all rows, alpha each): the test
    regret and cost of the cascade it serves."""
    k = q.shape[1]
    ok = np.ones((qt.shape[0], k), dtype=bool)
    for j in range(k - 1):
        d = crc_threshold(u[:, j], q[:, j] < 0.5, alpha).delta
        ok[:, j] = False if d is None else ut[:, j] <= d
    s = ok.argmax(axis=1)
    cum = np.cumsum(np.asarray(world.costs))
    return float(regret_matrix(qt)[np.arange(qt.shape[0]), s].mean()), float(cum[s].mean())


@dataclass
class TrialSummary:
    n_trials: int
    alpha: float
    delta: float
    guarantee: str
    certified_violation_rate: float
    per_tier_violation_rate: float
    mean_certified_risk: float
    mean_per_tier_risk: float
    savings_kept: float  # mean over trials of savings(served) / savings(best on test)
    mean_cost_ratio: float  # served cost / always-top cost
    best_cost_ratio: float
    per_tier_cost_ratio: float
    n_uncertified: int
    risks: list[float] = field(default_factory=list, repr=False)


def run_trials(
    n_trials: int = 100,
    *,
    world: World | None = None,
    n_cal: int = 2000,
    n_test: int = 20000,
    alpha: float = 0.05,
    delta: float = 0.1,
    guarantee: str = "high-probability",
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
    seed: int = 0,
) -> TrialSummary:
    """Seeded trials: fit maps on split A, certify on B, measure on a fresh test draw."""
    world = world or World()
    viol = pt_viol = unc = 0
    risks, pt_risks, kept, cost_r, best_r, pt_cost_r = [], [], [], [], [], []
    top_cost = world.costs[-1]
    tasks = ["synthetic"] * n_cal
    for t in range(n_trials):
        rng = np.random.default_rng(seed * 100_003 + t)
        q, u = world.draw(n_cal, rng)
        qt, ut = world.draw(n_test, rng)
        ia, ib = split_ab(tasks, seed=t)
        reg = regret_matrix(q)
        maps = [fit_map(u[ia, j], reg[ia, j] > 0) for j in range(q.shape[1] - 1)]
        sel = certify(
            [Theta(lam=x) for x in lambdas],
            lambda th: evaluate(world, q, u, maps, th.lam),
            tasks, alpha=alpha, delta=delta, guarantee=guarantee,  # type: ignore[arg-type]
            split=(ia, ib),
        )
        unc += not sel.certificate.certified
        r_test, c_test = evaluate(world, qt, ut, maps, sel.theta.lam)
        risk, cost = float(r_test.mean()), float(c_test.mean())
        viol += risk > alpha
        risks.append(risk)
        # the best theta chosen on test: the cheapest lambda whose test risk meets alpha
        best_cost = top_cost
        for lam in lambdas:
            rr, cc = evaluate(world, qt, ut, maps, lam)
            if rr.mean() <= alpha:
                best_cost = min(best_cost, float(cc.mean()))
        kept.append((top_cost - cost) / (top_cost - best_cost) if best_cost < top_cost else 1.0)
        cost_r.append(cost / top_cost)
        best_r.append(best_cost / top_cost)
        pr, pc = per_tier_policy(world, q, u, qt, ut, alpha)
        pt_viol += pr > alpha
        pt_risks.append(pr)
        pt_cost_r.append(pc / top_cost)
    return TrialSummary(
        n_trials=n_trials, alpha=alpha, delta=delta, guarantee=guarantee,
        certified_violation_rate=viol / n_trials, per_tier_violation_rate=pt_viol / n_trials,
        mean_certified_risk=float(np.mean(risks)), mean_per_tier_risk=float(np.mean(pt_risks)),
        savings_kept=float(np.mean(kept)), mean_cost_ratio=float(np.mean(cost_r)),
        best_cost_ratio=float(np.mean(best_r)), per_tier_cost_ratio=float(np.mean(pt_cost_r)),
        n_uncertified=unc, risks=risks,
    )


def online_run(
    world: World,
    maps: list[IsoMap],
    *,
    lam0: float,
    alpha: float,
    gamma: float,
    steps: int,
    seed: int = 0,
    online: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A stream of audited requests served at the online lambda (OnlineLambda, in memory).

    Returns (regret per step, lambda before each step)."""
    from routenlp.conformal.online import OnlineLambda

    rng = np.random.default_rng(seed)
    q, u = world.draw(steps, rng)
    ol = OnlineLambda({"synthetic": lam0}, {"synthetic": alpha}, gamma=gamma)
    p = np.stack([m.p_hat_array(u[:, j]) for j, m in enumerate(maps)], axis=1)
    reg = regret_matrix(q)
    out = np.zeros(steps)
    lams = np.zeros(steps)
    for i in range(steps):
        lam = ol.lam("synthetic") if online else lam0
        assert lam is not None
        lams[i] = lam
        s = int(served_tier(p[i : i + 1], lam)[0])
        out[i] = reg[i, s]
        if online:
            ol.update("synthetic", out[i])
    return out, lams
