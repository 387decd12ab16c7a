"""Uncertainty signals: each is a scalar, larger = riskier, None when unavailable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routenlp.config import TierConfig
from routenlp.conformal.scores import outcome_risk, uncertainty_of
from routenlp.errors import ConfigError
from routenlp.matrix import Outcome
from routenlp.tiers.base import Generation


def tier(signal: str = "auto") -> TierConfig:
    return TierConfig(name="T", kind="replay", price_in=0.1, price_out=0.1, uncertainty=signal)


def test_token_logprob() -> None:
    g = Generation(text="a b", logprobs=[math.log(0.9), math.log(0.5)])
    assert uncertainty_of(g, tier("token_logprob")) == pytest.approx((0.1 + 0.5) / 2)
    assert uncertainty_of(g, tier("auto")) == pytest.approx(0.3)
    # a surer answer is less risky
    sure = Generation(text="a b", logprobs=[math.log(0.99), math.log(0.99)])
    assert uncertainty_of(sure, tier()) < uncertainty_of(g, tier())


def test_max_prob() -> None:
    g = Generation(text="x", class_probs={"x": 0.7, "y": 0.3})
    assert uncertainty_of(g, tier("max_prob")) == pytest.approx(0.3)
    assert uncertainty_of(g, tier()) == pytest.approx(0.3)


def test_confidence_and_recorded_uncertainty() -> None:
    assert uncertainty_of(Generation(text="x", confidence=-0.2), tier("confidence")) == 0.2
    recorded = Generation(text="x", uncertainty=0.4, confidence=-3.0, logprobs=[0.0])
    assert uncertainty_of(recorded, tier("confidence")) == 0.4
    # auto prefers the recorded u over log-probs (replay of a labelled matrix)
    assert uncertainty_of(recorded, tier("auto")) == 0.4


def test_missing_signal_and_failures_are_none() -> None:
    assert uncertainty_of(Generation(text="x"), tier()) is None
    assert uncertainty_of(Generation(text="x"), tier("token_logprob")) is None
    assert uncertainty_of(Generation(text="", error="timeout", logprobs=[0.0]), tier()) is None
    assert uncertainty_of(Generation(text="x", confidence=float("nan")), tier()) is None


class _FakeEstimator:
    def uncertainty(self, tier: str, queries: list[str], answers: list[str]) -> list[float]:
        return [0.25 for _ in queries]


def test_estimator_signal() -> None:
    g = Generation(text="answer")
    est = _FakeEstimator()
    assert uncertainty_of(g, tier("estimator"), query="q", estimator=est) == 0.25  # type: ignore[arg-type]
    # auto falls back to the estimator only when nothing is recorded
    assert uncertainty_of(g, tier(), query="q", estimator=est) == 0.25  # type: ignore[arg-type]
    assert uncertainty_of(Generation(text="a", uncertainty=0.9), tier(), query="q", estimator=est) == 0.9  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="estimator"):
        uncertainty_of(g, tier("estimator"), query="q")


def test_outcome_risk() -> None:
    assert outcome_risk(Outcome(quality=1.0, uncertainty=0.3)) == 0.3
    assert outcome_risk(Outcome(quality=1.0, confidence=-1.5)) == 1.5
    assert outcome_risk(Outcome(quality=1.0)) is None
    assert outcome_risk(None) is None
    assert np.isfinite(outcome_risk(Outcome(quality=0.0, confidence=2.0)))


def test_recorded_pair_does_not_fall_back_to_the_estimator_scale() -> None:
    # issue 9: a pair calibrated on the recorded signal must not score a signal-less answer
    # with the estimator's 1 - P (another scale than its threshold): None, never accepted
    est = _FakeEstimator()
    g = Generation(text="answer")
    assert uncertainty_of(g, tier(), query="q", estimator=est, calibrated_on="recorded") is None  # type: ignore[arg-type]
    assert uncertainty_of(Generation(text="a", uncertainty=0.9), tier(), query="q", estimator=est, calibrated_on="recorded") == 0.9  # type: ignore[arg-type]
    # an estimator-calibrated pair still uses it
    assert uncertainty_of(g, tier(), query="q", estimator=est, signal="estimator") == 0.25  # type: ignore[arg-type]
