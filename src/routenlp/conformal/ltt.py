"""Learn-then-test: a high-probability version of the threshold.

Where conformal risk control bounds the *expected* accepted-but-bad rate, learn-then-test
(Angelopoulos, Bates et al. 2021) gives P(risk(delta_hat) > alpha) <= delta_conf over the
draw of the calibration set. Each candidate delta is a null hypothesis H0: risk(delta) >
alpha, tested with the Hoeffding-Bentkus p-value; the candidates are tested in a fixed
sequence from the most conservative (smallest delta, fewest accepted) upward, each at the
full level delta_conf, stopping at the first non-rejection (fixed-sequence testing controls
the family-wise error rate without a multiplicity correction because risk is monotone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import bdtr

from routenlp.conformal.crc import PairResult, calibration_curve


def _kl_bernoulli(a: np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b)), with 0 log 0 = 0."""
    a = np.clip(a, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(a > 0, a * np.log(a / b), 0.0)
        t2 = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - b)), 0.0)
    return t1 + t2


def hb_pvalues(
    risk_hat: np.ndarray | Sequence[float], n: int, alpha: float | np.ndarray
) -> np.ndarray:
    """Hoeffding-Bentkus p-values for H0: risk > alpha given empirical risks over n samples.

    p = min(exp(-n h(min(rhat, alpha), alpha)), e * P(Binom(n, alpha) <= ceil(n rhat))).
    """
    r = np.asarray(risk_hat, dtype=float)
    hoeffding = np.exp(-n * _kl_bernoulli(np.minimum(r, alpha), alpha))
    k = np.ceil(n * r - 1e-9)
    bentkus = math.e * bdtr(k, n, alpha)  # P(Binom(n, alpha) <= k)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def ltt_threshold(
    u: Sequence[float] | np.ndarray,
    bad: Sequence[bool] | np.ndarray,
    alpha: float,
    delta_conf: float = 0.1,
) -> PairResult:
    """The largest delta certified by fixed-sequence HB testing (None if none is)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < delta_conf < 1:
        raise ValueError(f"delta_conf must be in (0, 1), got {delta_conf}")
    # Smallest n for which even a zero empirical risk can be certified: (1 - alpha)^n.
    need = math.ceil(math.log(delta_conf) / math.log(1 - alpha) - 1e-9)
    c = calibration_curve(
        u, bad, need=need,
        too_few=f"too few samples for alpha={alpha:g}, delta_conf={delta_conf:g}",
    )
    if isinstance(c, PairResult):
        return c
    n, deltas, n_acc, n_bad = c.n, c.deltas, c.n_acc, c.n_bad
    risk_hat = n_bad / n
    p = hb_pvalues(risk_hat, n, alpha)
    rejected = p <= delta_conf
    # fixed sequence: ascending delta (most conservative first), stop at first failure
    if not rejected[0]:
        return c.refuse(
            f"no threshold certified at alpha={alpha:g}, delta_conf={delta_conf:g} "
            "(even the most confident samples are too often bad); never accept"
        )
    stop = np.nonzero(~rejected)[0]
    j = int(stop[0] - 1) if stop.size else int(deltas.size - 1)
    return PairResult(
        delta=float(deltas[j]),
        n=n,
        risk=float(risk_hat[j]),
        bound=hb_upper_bound(float(risk_hat[j]), n, delta_conf),
        accept_rate=float(n_acc[j]) / n,
        u_lo=c.u_lo,
        u_hi=c.u_hi,
        p_value=float(p[j]),
    )


def hb_upper_bound(risk_hat: float, n: int, delta_conf: float) -> float:
    """Smallest a with HB p-value(H0: risk > a) <= delta_conf: risk <= a w.p. 1-delta_conf.

    Three vectorised grid passes (p is non-increasing in a) give ~1e-7 resolution.
    """
    lo, hi = float(risk_hat), 1.0
    for _ in range(3):
        grid = np.linspace(lo, hi, 257)
        p = hb_pvalues(np.full(grid.shape, risk_hat), n, np.clip(grid, 1e-12, 1 - 1e-12))
        ok = np.nonzero(p <= delta_conf)[0]
        if ok.size == 0:
            return 1.0
        k = int(ok[0])
        if k == 0:
            return float(grid[0])
        lo, hi = float(grid[k - 1]), float(grid[k])
    return hi
