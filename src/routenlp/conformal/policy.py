"""The accept rule the Cascade serves, behind one small interface.

* `CertifiedRule` (default): a non-top rung accepts iff `p_hat(u) <= lambda` with the maps
  and theta of a `PolicyArtifact` (`conformal/certify.py`); lambda may be moved online by
  `OnlineLambda` (policy-level regret feedback).
* `PerTierRule` (`policy="per-tier"`, the ablation `routenlp-per-tier`): one calibrated
  threshold per (task, tier), `u <= delta`, optionally moved by `OnlineThresholds`. Each
  tier's accepted-but-bad rate over all queries is bounded; the served policy's is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from routenlp.conformal.certify import PolicyArtifact, accepts
from routenlp.conformal.online import OnlineLambda, OnlineThresholds
from routenlp.conformal.thresholds import Thresholds


class AcceptRule(Protocol):
    kind: str

    def never_reason(self, task: str, tier: str) -> str | None: ...
    def level(self, task: str, tier: str) -> float | None: ...
    def accepts(self, task: str, tier: str, u: float | None) -> bool: ...
    def needs_signal(self, task: str, tier: str) -> bool: ...
    def signal(self, task: str, tier: str) -> str | None: ...
    def reject_rate(self, task: str, tier: str) -> float | None: ...
    def cost_bias(self, task: str) -> float | None: ...
    def feedback(self, rec: Mapping[str, Any], quality: float, tau: float, top: str,
                 top_quality: float | None) -> int: ...
    def estimator_pairs(self) -> list[str]: ...


class PerTierRule:
    """u <= delta per (task, tier) from a thresholds file (today's behaviour)."""

    kind = "per-tier"

    def __init__(self, thresholds: Thresholds, online: OnlineThresholds | None = None) -> None:
        self.thresholds = thresholds
        self.online = online

    def level(self, task: str, tier: str) -> float | None:
        if self.online is not None and self.online.has(task, tier):
            return self.online.delta(task, tier)
        return self.thresholds.delta(task, tier)

    def never_reason(self, task: str, tier: str) -> str | None:
        return "never accepts: no calibrated threshold" if self.level(task, tier) is None else None

    def accepts(self, task: str, tier: str, u: float | None) -> bool:
        d = self.level(task, tier)
        return u is not None and d is not None and u <= d

    def needs_signal(self, task: str, tier: str) -> bool:
        return True

    def signal(self, task: str, tier: str) -> str | None:
        return self.thresholds.signal(task, tier)

    def reject_rate(self, task: str, tier: str) -> float | None:
        e = self.thresholds.entry(task, tier)
        return None if e is None or e.accept_rate is None else 1.0 - e.accept_rate

    def cost_bias(self, task: str) -> float | None:
        return None

    def estimator_pairs(self) -> list[str]:
        return [f"{t}/{k}" for t, k, e in self.thresholds.pairs() if e.signal == "estimator"]

    def feedback(self, rec: Mapping[str, Any], quality: float, tau: float, top: str,
                 top_quality: float | None) -> int:
        """One ACI step per attempted non-top step: err = accepted and quality < tau."""
        if self.online is None:
            return 0
        task, bad, n = str(rec["task"]), quality < tau, 0
        for s in rec.get("steps", []):
            if s.get("skipped_reason") is not None or s["tier"] == top:
                continue
            if self.online.update(task, s["tier"], bool(s.get("accepted")) and bad) is not None:
                n += 1
        return n


class CertifiedRule:
    """p_hat(u) <= lambda with the certified theta (lambda optionally moved online)."""

    kind = "certified"

    def __init__(self, artifact: PolicyArtifact, online: OnlineLambda | None = None) -> None:
        self.artifact = artifact
        self.online = online

    def lam(self, task: str) -> float:
        if self.online is not None:
            got = self.online.lam(task)
            if got is not None:
                return got
        return self.artifact.theta_for(task).lam

    def level(self, task: str, tier: str) -> float | None:
        return self.lam(task)

    def never_reason(self, task: str, tier: str) -> str | None:
        lam = self.lam(task)
        if lam <= 0:
            return f"never accepts: lambda={lam:.3g} (accept-nothing state)"
        m = self.artifact.iso(task, tier)
        if lam >= 1:
            return None
        if m is None:
            return "never accepts: no calibrated map for this tier"
        if m.floor > lam:
            return f"never accepts: p_hat >= {m.floor:.3g} > lambda={lam:.3g}"
        return None

    def accepts(self, task: str, tier: str, u: float | None) -> bool:
        return accepts(self.lam(task), self.artifact.p_hat(task, tier, u))

    def needs_signal(self, task: str, tier: str) -> bool:
        return self.lam(task) < 1

    def signal(self, task: str, tier: str) -> str | None:
        return self.artifact.signals.get(task, {}).get(tier)

    def reject_rate(self, task: str, tier: str) -> float | None:
        return self.artifact.reject_rate.get(task, {}).get(tier)

    def cost_bias(self, task: str) -> float | None:
        return self.artifact.theta_for(task).b

    def estimator_pairs(self) -> list[str]:
        return [f"{t}/{k}" for t, ks in self.artifact.signals.items() for k, s in ks.items() if s == "estimator"]

    def feedback(self, rec: Mapping[str, Any], quality: float, tau: float, top: str,
                 top_quality: float | None) -> int:
        """One ACI step on the task's lambda with the served answer's regret vs the top.

        Served at the top: regret 0. Otherwise the audited top quality gives the exact
        regret; without it, the upper bound 1 - quality (never optimistic)."""
        if self.online is None:
            return 0
        if rec.get("tier") == top and not rec.get("degraded"):
            regret = 0.0
        elif top_quality is not None and not math.isnan(top_quality):
            regret = max(0.0, float(top_quality) - float(quality))
        else:
            regret = max(0.0, 1.0 - float(quality))
        self.online.update(str(rec["task"]), min(1.0, regret))
        return 1
