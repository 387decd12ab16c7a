"""Learned quality estimator: an uncertainty signal for tiers that expose no log-probs.

Public routing matrices (RouterBench, LLMRouter) and black-box endpoints record neither
log-probs nor a confidence, so the cascade would never accept at those tiers. This model
predicts P(quality >= tau) from MiniLM embeddings of the query and the answer, with the
usual pair features [q, a, q*a, |q-a|], one logistic regression per tier; u = 1 - P.

It must be trained on a split disjoint from the calibration rows (otherwise its scores are
optimistic on exactly the samples the conformal bound is computed from); the training ids
are saved with the model so `calibrate` can refuse an overlapping calibration set.
Saved as `estimator.npz` (weights, training ids) + `estimator.json` (metadata): no pickle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from routenlp.config import EnsembleConfig
from routenlp.errors import DataError
from routenlp.matrix import MatrixRow

FORMAT_VERSION = 1


class TextEncoder(Protocol):
    name: str

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def answer_text(response: Any) -> str:
    """A matrix `response` as the text a replay tier serves (same rule as
    routenlp.tiers.replay.response_text), so calibration and run time embed the same string."""
    if response is None:
        return ""
    if isinstance(response, str):
        return response
    return json.dumps(response, ensure_ascii=False, sort_keys=True)


def pair_features(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    """[q, a, q*a, |q-a|] for row-aligned query/answer embeddings."""
    return np.concatenate([q, a, q * a, np.abs(q - a)], axis=1).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass
class _TierModel:
    coef: np.ndarray  # (d,)
    intercept: float
    n: int
    positive_rate: float


@dataclass
class QualityEstimator:
    """Per-tier logistic regressions on (query, answer) embedding features."""

    encoder_name: str
    models: dict[str, _TierModel]
    taus: dict[str, float] = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    # the router's featuriser (shared prompt blocks stripped from queries), learnt on the
    # estimator's train rows: the estimator sees the same part of a query as the router
    featurizer: dict[str, Any] = field(default_factory=dict)
    _encoder: TextEncoder | None = field(default=None, repr=False)

    def _queries(self, queries: Sequence[str]) -> list[str]:
        from routenlp.router.features import PromptFeaturizer

        if not self.featurizer:
            return list(queries)
        return PromptFeaturizer.model_validate(self.featurizer).transform_all(None, list(queries))

    # -- inference ---------------------------------------------------------------------
    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            from routenlp.router.encoder import get_encoder

            self._encoder = get_encoder(self.encoder_name)
        return self._encoder

    def has_tier(self, tier: str) -> bool:
        return tier in self.models

    def answer_free(self, tier: str) -> bool:
        """True when the tier's model ignores the answer (zero weight on every answer-derived
        feature: a, q*a, |q-a|): its u is known before the tier is called, so the Cascade can
        skip the call unpaid when the answer would be rejected anyway."""
        m = self.models.get(tier)
        if m is None:
            return False
        d = m.coef.size // 4
        return bool(d > 0 and not np.any(m.coef[d:]))

    def prob_good(self, tier: str, queries: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """P(quality >= tau) for each (query, answer) at `tier`."""
        if tier not in self.models:
            raise DataError(
                f"quality estimator has no model for tier {tier!r}; trained tiers: "
                f"{sorted(self.models)}"
            )
        if len(queries) != len(answers):
            raise ValueError("queries and answers must have the same length")
        if not queries:
            return np.zeros(0)
        m = self.models[tier]
        emb = self.encoder.encode(self._queries(queries) + list(answers))
        x = pair_features(emb[: len(queries)], emb[len(queries) :])
        return _sigmoid(x @ m.coef + m.intercept)

    def uncertainty(self, tier: str, queries: Sequence[str], answers: Sequence[str]) -> list[float]:
        """u = 1 - P(quality >= tau): larger = riskier."""
        return [float(1.0 - p) for p in self.prob_good(tier, queries, answers)]

    # -- persistence -------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tiers = sorted(self.models)
        arrays: dict[str, np.ndarray] = {
            "train_ids": np.asarray(self.train_ids, dtype=str),
        }
        for i, t in enumerate(tiers):
            arrays[f"coef_{i}"] = self.models[t].coef.astype(np.float32)
        tmp = out / "estimator.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out / "estimator.npz")
        meta = {
            "format": FORMAT_VERSION,
            "kind": "quality_estimator",
            "encoder": self.encoder_name,
            "features": "[q, a, q*a, |q-a|]",
            "created_at": self.created_at,
            "taus": self.taus,
            "featurizer": self.featurizer,
            "tiers": [
                {
                    "name": t,
                    "array": f"coef_{i}",
                    "intercept": self.models[t].intercept,
                    "n": self.models[t].n,
                    "positive_rate": self.models[t].positive_rate,
                }
                for i, t in enumerate(tiers)
            ],
        }
        (out / "estimator.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path, *, encoder: TextEncoder | None = None) -> QualityEstimator:
        p = Path(path)
        meta_path, npz_path = p / "estimator.json", p / "estimator.npz"
        if not meta_path.exists() or not npz_path.exists():
            raise DataError(
                f"no quality estimator at {p} (expected estimator.json and estimator.npz)",
                hint="train one with `routenlp train-estimator --matrix TRAIN.jsonl --out DIR`",
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{meta_path} is not valid JSON: {err}") from None
        if meta.get("kind") != "quality_estimator" or meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{meta_path} is not a format-{FORMAT_VERSION} quality estimator")
        with np.load(npz_path, allow_pickle=False) as z:
            models = {
                t["name"]: _TierModel(
                    coef=np.asarray(z[t["array"]], dtype=np.float32),
                    intercept=float(t["intercept"]),
                    n=int(t["n"]),
                    positive_rate=float(t["positive_rate"]),
                )
                for t in meta["tiers"]
            }
            train_ids = [str(x) for x in z["train_ids"].tolist()]
        return cls(
            encoder_name=meta["encoder"],
            models=models,
            taus={k: float(v) for k, v in meta.get("taus", {}).items()},
            train_ids=train_ids,
            created_at=float(meta.get("created_at", 0.0)),
            featurizer=dict(meta.get("featurizer") or {}),
            _encoder=encoder,
        )


def train_estimator(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    *,
    tiers: Sequence[str] | None = None,
    encoder: TextEncoder | None = None,
    c: float = 1.0,
    seed: int = 13,
    query_only: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> QualityEstimator:
    """Fit one logistic regression per tier on rows of tasks the config knows.

    `query_only`: fit on the query embedding alone (answer-feature weights are zero), a
    signal the Cascade evaluates before calling the tier.

    Label: quality >= tau of the row's task (errors and missing quality are bad).
    A tier whose labels are all one class gets a constant model (its base rate).
    """
    from sklearn.linear_model import LogisticRegression

    if encoder is None:
        from routenlp.router.encoder import get_encoder

        encoder = get_encoder(config.router.encoder)
    known = set(config.task_names)
    rows = [r for r in rows if r.task in known]
    if not rows:
        raise DataError(
            "no training rows for the quality estimator: none of the matrix tasks are in the "
            f"config (config tasks: {sorted(known)})"
        )
    taus = {t.name: t.tau for t in config.tasks}
    use_tiers = list(tiers) if tiers is not None else config.tier_names
    models: dict[str, _TierModel] = {}
    from routenlp.router.features import PromptFeaturizer

    feat = PromptFeaturizer.fit([r.task for r in rows], [r.prompt for r in rows])
    prompts = feat.transform_all(None, [r.prompt for r in rows])
    q_emb = encoder.encode(prompts)
    for ti, tier in enumerate(use_tiers):
        idx, answers, labels = [], [], []
        for i, r in enumerate(rows):
            o = r.outcomes.get(tier)
            if o is None or not config.tier(tier).serves(r.task):
                continue
            idx.append(i)
            answers.append(answer_text(o.response))
            labels.append(bool(o.ok and o.quality is not None and o.quality >= taus[r.task]))
        if progress:
            progress(tier, ti, len(use_tiers))
        if not idx:
            continue
        a_emb = encoder.encode(answers)
        x = pair_features(q_emb[idx], a_emb)
        y = np.asarray(labels, dtype=int)
        rate = float(y.mean())
        if y.min() == y.max():
            p = min(max(rate, 1e-4), 1 - 1e-4)
            models[tier] = _TierModel(
                coef=np.zeros(x.shape[1], dtype=np.float32),
                intercept=float(np.log(p / (1 - p))),
                n=len(y),
                positive_rate=rate,
            )
            continue
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        d = q_emb.shape[1]
        clf.fit(x[:, :d] if query_only else x, y)
        coef = clf.coef_[0].astype(np.float32)
        if query_only:
            coef = np.concatenate([coef, np.zeros(x.shape[1] - d, dtype=np.float32)])
        models[tier] = _TierModel(
            coef=coef,
            intercept=float(clf.intercept_[0]),
            n=len(y),
            positive_rate=rate,
        )
    if progress:
        progress("done", len(use_tiers), len(use_tiers))
    if not models:
        raise DataError("no tier has outcomes in the training matrix; nothing to train")
    return QualityEstimator(
        encoder_name=getattr(encoder, "name", config.router.encoder),
        models=models,
        taus=taus,
        train_ids=[r.id for r in rows],
        featurizer=feat.model_dump(mode="json"),
        _encoder=encoder,
    )
