"""Uncertainty signals: one scalar per answer, larger = riskier.

The conformal thresholds are only valid if calibration and serving compute the *same*
signal, so every path (matrix rows at calibration, live Generations in the cascade) goes
through the functions here. A signal that cannot be computed is `None`, never a made-up
number: the cascade then never accepts that answer at a non-top tier.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from routenlp.config import TierConfig
from routenlp.errors import ConfigError
from routenlp.matrix import Outcome

if TYPE_CHECKING:
    from routenlp.conformal.estimator import QualityEstimator
    from routenlp.tiers.base import Generation

Signal = Literal["auto", "token_logprob", "max_prob", "confidence", "estimator"]
SIGNALS: tuple[str, ...] = ("auto", "token_logprob", "max_prob", "confidence", "estimator")


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def recorded_uncertainty(gen: Generation) -> float | None:
    """The `confidence` signal: a recorded u if set, else -confidence (larger = riskier)."""
    u = _finite(gen.uncertainty)
    if u is not None:
        return u
    c = _finite(gen.confidence)
    return None if c is None else -c


def max_prob_uncertainty(class_probs: dict[str, float] | None) -> float | None:
    """1 - max class probability (classifier tiers); None without probabilities."""
    if not class_probs:
        return None
    return 1.0 - max(float(p) for p in class_probs.values())


def resolve_signal(gen: Generation, signal: str) -> str | None:
    """For `auto`: pick the signal the Generation carries, most direct first.

    Order: a recorded uncertainty (replay of a matrix that already holds u) > log-probs >
    class probabilities > a recorded confidence. None when the Generation carries nothing.
    """
    if signal != "auto":
        return signal
    if _finite(gen.uncertainty) is not None:
        return "confidence"  # the recorded-signal path returns the recorded u first
    if gen.logprobs is not None:
        return "token_logprob"
    if gen.class_probs:
        return "max_prob"
    if _finite(gen.confidence) is not None:
        return "confidence"
    return None


def uncertainty_of(
    gen: Generation,
    tier_cfg: TierConfig,
    *,
    query: str | None = None,
    estimator: QualityEstimator | None = None,
    signal: str | None = None,
    calibrated_on: str | None = None,
) -> float | None:
    """The tier's uncertainty for one answer (larger = riskier), or None if unavailable.

    `signal` overrides `tier_cfg.uncertainty` (the thresholds file records when a pair was
    calibrated with the learned estimator, and the cascade must then use it too). With
    `auto` and nothing recorded on the Generation, the estimator is used when given, except
    for a pair calibrated on the recorded signal (`calibrated_on="recorded"`): the
    estimator's 1 - P is on another scale than that pair's threshold, so the answer gets None
    (never accepted at a non-top tier) instead.
    """
    from routenlp.tiers.base import token_uncertainty

    if not gen.ok:
        return None
    chosen = signal or tier_cfg.uncertainty
    if chosen not in SIGNALS:
        raise ConfigError(f"tier {tier_cfg.name!r}: unknown uncertainty signal {chosen!r}")
    kind = resolve_signal(gen, chosen)
    if kind is None:
        kind = "estimator" if estimator is not None and calibrated_on != "recorded" else None
    if kind is None:
        return None
    if kind == "token_logprob":
        return token_uncertainty(gen.logprobs)
    if kind == "max_prob":
        return max_prob_uncertainty(gen.class_probs)
    if kind == "confidence":
        return recorded_uncertainty(gen)
    # estimator
    if estimator is None:
        raise ConfigError(
            f"tier {tier_cfg.name!r} uses the learned quality estimator but none is loaded",
            hint="train one with `routenlp train-estimator` and pass it (--estimator)",
        )
    if query is None:
        raise ConfigError(f"tier {tier_cfg.name!r}: the estimator needs the query text")
    return estimator.uncertainty(tier_cfg.name, [query], [gen.text])[0]


def outcome_risk(outcome: Outcome | None) -> float | None:
    """A matrix outcome's recorded signal (Outcome.risk(): u, else -confidence)."""
    if outcome is None:
        return None
    return outcome.risk()
