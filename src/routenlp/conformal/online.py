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

`OnlineLambda` is the same idea for the certified policy (`conformal/certify.py`): one
level lambda per task on the common p_hat scale, moved by the served answer's regret vs the
task's top (`lambda += gamma * (alpha - regret)`). There is no lower clamp: lambda <= 0 is an
explicit accept-nothing state (every request served at the top, regret 0), from which each
audited request moves lambda back up by gamma * alpha, so it recovers; the long-run mean
regret then stays within (1 - lambda_min + gamma) / (gamma T) of alpha. Its state file is
shared by several writers (server workers): every update is a read-modify-write under an
exclusive file lock with a version counter, written atomically (temp + fsync + rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from routenlp.conformal.thresholds import Thresholds
from routenlp.paths import write_json_atomic
from routenlp.errors import DataError

STATE_VERSION = 1
LAMBDA_STATE_VERSION = 1


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
        write_json_atomic(p, payload)
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


@dataclass
class TaskLambda:
    lam0: float
    lam: float
    alpha: float
    steps: int = 0
    regret_sum: float = 0.0

    @property
    def accept_nothing(self) -> bool:
        return self.lam <= 0.0

    @property
    def mean_regret(self) -> float | None:
        return None if self.steps == 0 else self.regret_sum / self.steps


class OnlineLambda:
    """Adaptive conformal updates of the certified lambda, per task, from audited regret."""

    def __init__(
        self,
        lam0: Mapping[str, float],
        alpha: Mapping[str, float],
        *,
        gamma: float = 0.005,
        path: str | Path | None = None,
        source: Mapping[str, Any] | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)
        self.path = Path(path) if path else None
        self.source = dict(source or {})
        self.refresh_s = refresh_s
        self.version = 0
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._tasks = {t: TaskLambda(lam0=float(v), lam=float(v), alpha=float(alpha[t])) for t, v in lam0.items()}
        if self.path is not None and self.path.exists():
            with self._locked():
                self._read()

    @classmethod
    def from_artifact(cls, artifact: Any, *, gamma: float = 0.005, path: str | Path | None = None) -> OnlineLambda:
        """Start from the artifact's certified lambda per task (its alpha per task)."""
        tasks = sorted(set(artifact.maps) | set(artifact.ladders))
        lam0 = {t: artifact.theta_for(t).lam for t in tasks}
        alpha = {}
        for t in tasks:
            tp = artifact.per_task.get(t)
            cert = tp.certificate if tp is not None and tp.certificate is not None else artifact.certificate
            alpha[t] = cert.alpha
        src = {"created_at": artifact.created_at, "config_hash": artifact.config_hash}
        return cls(lam0, alpha, gamma=gamma, path=path, source=src)

    # -- state file ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read(self) -> None:
        """Adopt the file's state (caller holds the file lock) when it is newer and ours."""
        assert self.path is not None
        self._read_at = time.monotonic()
        if not self.path.exists():
            return
        try:
            raw = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"online lambda state {self.path} is not valid JSON: {err}") from None
        if not isinstance(raw, dict) or raw.get("version") != LAMBDA_STATE_VERSION:
            raise DataError(f"online lambda state {self.path}: unknown format (version {raw.get('version') if isinstance(raw, dict) else None!r})")
        if raw.get("source") != self.source:
            return  # a recalibration supersedes what was learned online
        seq = int(raw.get("seq", 0))
        if seq < self.version:
            return
        try:
            for t, st in raw.get("tasks", {}).items():
                if t in self._tasks:
                    self._tasks[t] = TaskLambda(**st)
        except TypeError as err:
            raise DataError(f"online lambda state {self.path}: bad entry: {err}") from None
        self.version = seq

    def _write(self) -> None:
        assert self.path is not None
        payload = {
            "version": LAMBDA_STATE_VERSION,
            "seq": self.version,
            "source": self.source,
            "gamma": self.gamma,
            "updated_at": time.time(),
            "tasks": {t: asdict(st) for t, st in self._tasks.items()},
        }
        write_json_atomic(self.path, payload)

    # -- queries and updates -----------------------------------------------------------
    def lam(self, task: str) -> float | None:
        """The current lambda of a task (other writers' updates seen within refresh_s)."""
        if self.path is not None and time.monotonic() - self._read_at > self.refresh_s:
            with self._lock, self._locked():
                self._read()
        st = self._tasks.get(task)
        return None if st is None else st.lam

    def update(self, task: str, regret: float) -> float | None:
        """One ACI step: lambda += gamma * (alpha - regret); no lower clamp, capped at 1
        (lambda >= 1 already accepts everything). Returns the new lambda."""
        r = min(1.0, max(0.0, float(regret)))
        with self._lock:
            if self.path is None:
                return self._step(task, r)
            with self._locked():
                self._read()  # compare-and-swap: apply the step to the latest version
                new = self._step(task, r)
                if new is not None:
                    self.version += 1
                    self._write()
                return new

    def _step(self, task: str, r: float) -> float | None:
        st = self._tasks.get(task)
        if st is None:
            return None
        st.steps += 1
        st.regret_sum += r
        st.lam = min(1.0, st.lam + self.gamma * (st.alpha - r))
        return st.lam

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "gamma": self.gamma,
                "version": self.version,
                "tasks": {
                    t: {"lambda": st.lam, "lambda0": st.lam0, "alpha": st.alpha, "steps": st.steps,
                        "mean_regret": st.mean_regret, "accept_nothing": st.accept_nothing}
                    for t, st in self._tasks.items()
                },
            }
