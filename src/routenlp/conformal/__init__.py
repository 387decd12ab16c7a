"""Conformal cascading: uncertainty signals, the certified served policy (one finite-sample
guarantee for router + cascade: `certify`), per-tier thresholds (conformal risk control,
learn-then-test) and online adaptation."""

from routenlp.conformal.certify import (
    Certificate,
    IsoMap,
    PolicyArtifact,
    Theta,
    calibrate_policy,
    certify,
    replay_evaluator,
)

from routenlp.conformal.crc import PairResult, crc_threshold, min_samples
from routenlp.conformal.estimator import QualityEstimator, train_estimator
from routenlp.conformal.ltt import hb_pvalues, ltt_threshold
from routenlp.conformal.online import OnlineLambda, OnlineThresholds
from routenlp.conformal.scores import outcome_risk, uncertainty_of
from routenlp.conformal.thresholds import ThresholdEntry, Thresholds, calibrate

__all__ = [
    "Certificate",
    "IsoMap",
    "OnlineLambda",
    "PolicyArtifact",
    "Theta",
    "calibrate_policy",
    "certify",
    "replay_evaluator",
    "OnlineThresholds",
    "PairResult",
    "QualityEstimator",
    "ThresholdEntry",
    "Thresholds",
    "calibrate",
    "crc_threshold",
    "hb_pvalues",
    "ltt_threshold",
    "min_samples",
    "outcome_risk",
    "train_estimator",
    "uncertainty_of",
]
