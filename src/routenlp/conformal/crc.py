"""Conformal risk control for one (task, tier) pair.

Loss `l_i(delta) = 1[u_i <= delta and q_i < tau]` (accepted but bad) is non-decreasing in
delta, so `delta_hat = max{delta : (sum_i l_i(delta) + 1)/(n + 1) <= alpha}` bounds the
expected accepted-but-bad rate of a new exchangeable sample by alpha (Angelopoulos et al.,
"Conformal Risk Control"). The search is exact over the candidate values (the finite u_i),
O(n log n) for the sort. Samples with u = +inf (tier error, missing signal) are part of n
but never accepted, exactly as the cascade treats them at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PairResult:
    """The calibrated threshold of one (task, tier) pair and its diagnostics."""

    delta: float | None
    n: int
    risk: float | None
    bound: float | None
    accept_rate: float
    reason: str | None = None
    u_lo: float | None = None
    u_hi: float | None = None
    p_value: float | None = None

    def to_dict(self) -> dict[str, object]:
        keep = ("delta", "risk", "bound")
        return {k: v for k, v in asdict(self).items() if v is not None or k in keep}


def min_samples(alpha: float) -> int:
    """Smallest n with (0 + 1)/(n + 1) <= alpha, i.e. n >= 1/alpha - 1."""
    return max(0, math.ceil(1.0 / alpha - 1.0 - 1e-9))


def as_arrays(
    u: Sequence[float] | np.ndarray, bad: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ua = np.asarray(u, dtype=float)
    ba = np.asarray(bad, dtype=bool)
    if ua.shape != ba.shape or ua.ndim != 1:
        raise ValueError(f"u and bad must be 1-d of equal length, got {ua.shape} and {ba.shape}")
    ua = np.where(np.isnan(ua), np.inf, ua)  # an unknown signal is never accepted
    return ua, ba


def loss_curve(u: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate deltas (sorted unique finite u) with the accepted and accepted-bad counts.

    Returns (deltas, n_accepted(delta), n_accepted_bad(delta)), each counting samples with
    u_i <= delta (ties included).
    """
    finite = np.isfinite(u)
    uf, bf = u[finite], bad[finite]
    order = np.argsort(uf, kind="stable")
    us, bs = uf[order], bf[order]
    if us.size == 0:
        empty = np.zeros(0)
        return empty, empty.astype(int), empty.astype(int)
    cum_bad = np.cumsum(bs)
    last = np.r_[us[1:] != us[:-1], True]  # last index of each tie group
    idx = np.nonzero(last)[0]
    return us[idx], idx + 1, cum_bad[idx]


@dataclass
class Curve:
    """A pair's calibration sample reduced to its loss curve (see `loss_curve`)."""

    n: int
    u_lo: float | None
    u_hi: float | None
    deltas: np.ndarray
    n_acc: np.ndarray
    n_bad: np.ndarray

    def refuse(self, reason: str) -> PairResult:
        """Never accept this pair, saying why."""
        return PairResult(None, self.n, None, None, 0.0, reason=reason, u_lo=self.u_lo, u_hi=self.u_hi)


def calibration_curve(
    u: Sequence[float] | np.ndarray,
    bad: Sequence[bool] | np.ndarray,
    *,
    need: int,
    too_few: str,
) -> Curve | PairResult:
    """The shared preamble of CRC and LTT: the u range, a refusal when n < `need` (with the
    method's `too_few` message) or when no u is finite, else the loss curve."""
    ua, ba = as_arrays(u, bad)
    finite = ua[np.isfinite(ua)]
    curve = Curve(
        n=int(ua.size),
        u_lo=float(finite.min()) if finite.size else None,
        u_hi=float(finite.max()) if finite.size else None,
        deltas=np.zeros(0),
        n_acc=np.zeros(0, dtype=int),
        n_bad=np.zeros(0, dtype=int),
    )
    if curve.n < need:
        return curve.refuse(f"{too_few}: need n >= {need}, have {curve.n}")
    curve.deltas, curve.n_acc, curve.n_bad = loss_curve(ua, ba)
    if curve.deltas.size == 0:
        return curve.refuse("no finite uncertainty among the calibration samples; never accept")
    return curve


def crc_threshold(
    u: Sequence[float] | np.ndarray, bad: Sequence[bool] | np.ndarray, alpha: float
) -> PairResult:
    """delta_hat for one pair from calibration scores `u` and bad flags (q < tau)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    need = min_samples(alpha)
    c = calibration_curve(u, bad, need=need, too_few=f"too few samples for alpha={alpha:g}")
    if isinstance(c, PairResult):
        return c
    n, deltas, n_acc, n_bad = c.n, c.deltas, c.n_acc, c.n_bad
    feasible = (n_bad + 1) / (n + 1) <= alpha  # a prefix, since n_bad is non-decreasing
    if not feasible[0]:
        return c.refuse(
            "even the most confident calibration samples are too often bad for "
            f"alpha={alpha:g}; never accept"
        )
    j = int(np.nonzero(feasible)[0][-1])
    return PairResult(
        delta=float(deltas[j]),
        n=n,
        risk=float(n_bad[j]) / n,
        bound=float(n_bad[j] + 1) / (n + 1),
        accept_rate=float(n_acc[j]) / n,
        u_lo=c.u_lo,
        u_hi=c.u_hi,
    )


def accepted_bad_rate(u: np.ndarray, bad: np.ndarray, delta: float | None) -> float:
    """Empirical accepted-but-bad rate of a threshold on a sample (None accepts nothing)."""
    if delta is None or len(u) == 0:
        return 0.0
    ua, ba = as_arrays(u, bad)
    return float(np.mean((ua <= delta) & ba))
