"""Online adaptation of the thresholds under drift (adaptive conformal inference).

Static conformal thresholds assume tomorrow's traffic is exchangeable with the calibration
set; under a domain shift the accepted-but-bad rate drifts above alpha (the paper saw 5% ->
8.1%). Following Gibbs & Candes (2021) we update each (task, tier) threshold from audited
feedback:

    delta_{t+1} = delta_t + step * (alpha - err_t),   step = gamma * (u_hi - u_lo)

Parametrisation: delta itself (in the units of the tier's uncertainty signal), with the step
scaled by the calibration u range so that one `gamma` (config `cascade.gamma`) works for
signals on any scale (u in [0, 1], -mean log-prob in [0, 10], ...).

err_t is defined per *visited step* of an audited request, so it measures the same joint
rate that conformal risk control bounds (P(accepted at tier k and bad)):
  - the tier accepted the answer and its audited quality < tau  -> err = 1
  - the tier accepted and the audit says it is good              -> err = 0
  - the tier rejected (escalated)                                -> err = 0
Only steps of audited requests are counted, so a random audit sample keeps the estimate
unbiased. Long-run guarantee: |mean(err) - alpha| <= (hi - lo + step) / (step * T) while
delta stays inside the bounds [lo, hi] = calibration u range widened by `margin` of its
span on each side (bounds stop a runaway when feedback is one-sided for a long time).

Pairs calibrated to "never accept" (delta = None) stay None: there was not enough evidence
to accept at all, and feedback on rejected steps alone cannot create it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from routenlp.conformal.thresholds import Thresholds
from routenlp.errors import DataError

STATE_VERSION = 1


@dataclass
class PairState:
    delta0: float | None
    delta: float | None
    lo: float
    hi: float
    step: float
    steps: int = 0
    violations: int = 0
    recent: float = 0.0  # exponentially weighted violation rate

    @property
    def violation_rate(self) -> float | None:
        return None if self.steps == 0 else self.violations / self.steps


class OnlineThresholds:
    """Thread-safe adaptive thresholds on top of a calibrated `Thresholds`."""

    def __init__(
        self,
        thresholds: Thresholds,
        *,
        gamma: float = 0.005,
        margin: float = 0.1,
        path: str | Path | None = None,
        save_every: int = 1,
        recent_window: int = 500,
    ) -> None:
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.alpha = thresholds.alpha
        self.gamma = gamma
        self.margin = margin
        self.path = Path(path) if path else None
        self.save_every = max(1, save_every)
        self._ew = 1.0 / max(1, recent_window)
        self._lock = threading.Lock()
        self._pending = 0
        self._source = {"created_at": thresholds.created_at, "config_hash": thresholds.config_hash}
        self._pairs: dict[tuple[str, str], PairState] = {}
        for task, tier, e in thresholds.pairs():
            self._pairs[(task, tier)] = self._fresh(e.delta, e.u_lo, e.u_hi)

    def _fresh(self, delta: float | None, u_lo: float | None, u_hi: float | None) -> PairState:
        lo = u_lo if u_lo is not None else (delta if delta is not None else 0.0)
        hi = u_hi if u_hi is not None else (delta if delta is not None else 0.0)
        span = hi - lo if hi > lo else 1.0
        return PairState(
            delta0=delta,
            delta=delta,
            lo=lo - self.margin * span,
            hi=hi + self.margin * span,
            step=self.gamma * span,
        )

    # -- queries -----------------------------------------------------------------------
    def has(self, task: str, tier: str) -> bool:
        return (task, tier) in self._pairs

    def delta(self, task: str, tier: str) -> float | None:
        st = self._pairs.get((task, tier))
        return None if st is None else st.delta

    def status(self) -> dict[str, Any]:
        """Current deltas and effective alpha (running violation rate) per pair."""
        with self._lock:
            pairs: dict[str, dict[str, Any]] = {}
            total_steps = total_viol = 0
            for (task, tier), st in self._pairs.items():
                total_steps += st.steps
                total_viol += st.violations
                pairs.setdefault(task, {})[tier] = {
                    "delta": st.delta,
                    "delta0": st.delta0,
                    "bounds": [st.lo, st.hi],
                    "steps": st.steps,
                    "violations": st.violations,
                    "effective_alpha": st.violation_rate,
                    "recent_violation_rate": st.recent if st.steps else None,
                    "frozen": st.delta is None,
                }
            return {
                "alpha": self.alpha,
                "gamma": self.gamma,
                "steps": total_steps,
                "effective_alpha": (total_viol / total_steps) if total_steps else None,
                "pairs": pairs,
            }

    # -- updates -----------------------------------------------------------------------
    def update(self, task: str, tier: str, err: int | bool) -> float | None:
        """One ACI step for a visited (task, tier) of an audited request; returns new delta."""
        e = 1 if err else 0
        with self._lock:
            st = self._pairs.get((task, tier))
            if st is None or st.delta is None:
                return None
            st.steps += 1
            st.violations += e
            st.recent += self._ew * (e - st.recent) if st.steps > 1 else (e - st.recent)
            st.delta = min(st.hi, max(st.lo, st.delta + st.step * (self.alpha - e)))
            new = st.delta
            self._pending += 1
            flush = self.path is not None and self._pending >= self.save_every
        if flush:
            self.save()
        return new

    def observe(self, task: str, tier: str, *, accepted: bool, quality_bad: bool) -> float | None:
        """err = accepted and bad (a rejected step is never a violation)."""
        return self.update(task, tier, accepted and quality_bad)

    # -- persistence -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        with self._lock:
            pairs: dict[str, dict[str, Any]] = {}
            for (task, tier), st in self._pairs.items():
                pairs.setdefault(task, {})[tier] = asdict(st)
            return {
                "version": STATE_VERSION,
                "alpha": self.alpha,
                "gamma": self.gamma,
                "margin": self.margin,
                "source": self._source,
                "updated_at": time.time(),
                "pairs": pairs,
            }

    def save(self, path: str | Path | None = None) -> Path:
        """Atomic write (temp + fsync + rename) so a crash never leaves a torn state file."""
        p = Path(path) if path else self.path
        if p is None:
            raise ValueError("no state path given")
        payload = self.to_json()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        with self._lock:
            self._pending = 0
        return p

    @classmethod
    def load(
        cls,
        path: str | Path,
        thresholds: Thresholds,
        *,
        gamma: float | None = None,
        save_every: int = 1,
    ) -> OnlineThresholds:
        """Resume from a state file; start fresh if it is absent or from other thresholds.

        A state built on a different calibration (other created_at/config_hash) is
        discarded: a recalibration supersedes what was learned online.
        """
        p = Path(path)
        state: dict[str, Any] | None = None
        if p.exists():
            try:
                state = json.loads(p.read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"online threshold state {p} is not valid JSON: {err}") from None
        g = gamma if gamma is not None else (state or {}).get("gamma", 0.005)
        obj = cls(thresholds, gamma=g, path=p, save_every=save_every)
        if state is None or state.get("version") != STATE_VERSION:
            return obj
        if state.get("source") != obj._source:
            return obj
        for task, tiers in state.get("pairs", {}).items():
            for tier, st in tiers.items():
                if (task, tier) not in obj._pairs:
                    continue
                try:
                    obj._pairs[(task, tier)] = PairState(**st)
                except TypeError as err:
                    raise DataError(
                        f"online threshold state {p}: bad entry {task}/{tier}: {err}"
                    ) from None
        return obj
