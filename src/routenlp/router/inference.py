"""Router inference: text + task -> tier probabilities -> a tier decision, in milliseconds.

The expensive part is the sentence embedding (cached by text hash; ONNX Runtime int8 by
default when available); the head is three small numpy matmuls. Decision rules:

- "success" (default for routers trained with a success head): argmax_k P(success_k) -
  b * c_k / c_K, with P(success_k) = P(q_k >= tau_t) from the success head; the default b is
  chosen at train time on the validation split (meta.json "decision") as the cheapest
  setting that matches the task-only baseline's validation quality;
- "label": argmax_k log p_k - b * c_k / c_K on the cheapest-acceptable-tier distribution
  (b = 0: its most probable tier);
- `min_accept_prob` p (label distribution): the cheapest tier k whose cumulative
  probability P(acceptable tier <= k) >= p; larger p is more conservative (higher tiers).

For both rules larger b never picks a more expensive tier (exchange argument: if b1 < b2
pick k1, k2 then (b2 - b1)(c_k1 - c_k2) >= 0), so b is a cost/quality knob that needs no
retraining; b < 0 leans towards quality. The knob `cost_bias` given to `decide` applies to
the router's rule; `predict_proba` is always the acceptable-tier distribution and
`success_proba` the per-tier success probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError, UnknownTaskError
from routenlp.router.artifact import RouterMeta, load_artifact
from routenlp.router.features import PromptFeaturizer
from routenlp.router.success import KnnBank, SuccessCalibration
from routenlp.router.model import head_outputs, masked_softmax

Fallback = Literal["error", "top", "cheapest"]
Rule = Literal["success", "label"]


@dataclass
class RouteDecision:
    """The chosen tier, the tier probabilities and the mass above the chosen tier."""

    tier: str
    index: int
    probs: dict[str, float]
    p_escalate: float
    fallback: bool = field(default=False)
    success: dict[str, float] | None = field(default=None)  # P(q_k >= tau_t) per tier


def choose_tiers(
    probs: np.ndarray,
    mask: np.ndarray,
    cost_norm: np.ndarray,
    *,
    cost_bias: float = 0.0,
    min_accept_prob: float | None = None,
) -> np.ndarray:
    """Tier index per row from probabilities (n, K), serving mask (n, K) and c_k / c_K.

    Ties go to the lowest index (the cheaper tier in cost order).
    """
    probs = np.asarray(probs, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if min_accept_prob is not None:
        if not 0.0 < min_accept_prob <= 1.0:
            raise ConfigError(f"min_accept_prob must be in (0, 1], got {min_accept_prob}")
        cum = np.cumsum(np.where(mask, probs, 0.0), axis=1)
        target = min(min_accept_prob, 1.0 - 1e-9)
        ok = (cum >= target) & mask
        # the top serving tier always reaches cum ~= 1; guard against rounding anyway
        top = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        return np.where(ok.any(axis=1), np.argmax(ok, axis=1), top)
    with np.errstate(divide="ignore"):
        score = np.log(probs) - float(cost_bias) * np.asarray(cost_norm, dtype=np.float64)[None, :]
    score = np.where(mask, score, -np.inf)
    # a serving tier whose probability underflowed to 0 stays selectable only if all did
    all_neg_inf = ~np.isfinite(score).any(axis=1)
    if all_neg_inf.any():
        score[all_neg_inf] = np.where(mask[all_neg_inf], 0.0, -np.inf)
    return np.argmax(score, axis=1)


def choose_by_success(
    success: np.ndarray, mask: np.ndarray, cost_norm: np.ndarray, *, cost_bias: float = 0.0
) -> np.ndarray:
    """Quality-aware decision: argmax_k P(success_k) - b * c_k / c_K over serving tiers.

    b = 0 picks the tier most likely to succeed; larger b trades success probability for
    cost (b is the success probability one would give up for a full top-tier price), and
    never picks a more expensive tier (same exchange argument as `choose_tiers`). Ties go to
    the lowest index (the cheaper tier in cost order).
    """
    success = np.asarray(success, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    score = success - float(cost_bias) * np.asarray(cost_norm, dtype=np.float64)[None, :]
    score = np.where(mask, score, -np.inf)
    return np.argmax(score, axis=1)


class Router:
    """A trained router. Build with `Router.load(path, config)`."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        meta: RouterMeta,
        *,
        embedder: object | None = None,
        config: EnsembleConfig | None = None,
        unknown_task: Fallback | None = None,
        cost_bias: float | None = None,
        backend: str | None = None,
        threads: int | None = None,
        rule: Rule | None = None,
    ) -> None:
        self.meta = meta
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.tiers: list[str] = list(meta.tiers)
        self.tasks: list[str] = list(meta.tasks)
        self._task_idx = dict(meta.task_index)
        self._mask = np.array([meta.serving[t] for t in self.tasks], dtype=bool)
        cand = meta.decision.get("candidates") or {}
        # tiers the success rule may pick per task (the train cost-quality frontier)
        self._cand = np.array([cand.get(t, meta.serving[t]) for t in self.tasks], dtype=bool) & self._mask
        self.cost_norm = np.asarray(meta.cost_norm, dtype=np.float64)
        self.config = config
        rc = config.router if config is not None else None
        self.unknown_task: Fallback = unknown_task or (rc.unknown_task if rc else "error")
        self.has_success_head = "ws" in self.weights and "bs" in self.weights
        trained_rule = meta.decision.get("rule", "label")
        self.rule: Rule = rule or (trained_rule if trained_rule in ("success", "label") else "label")
        if self.rule == "success" and not self.has_success_head:
            raise ConfigError("this router has no success head; use rule='label'")
        # the knob: explicit argument > a cost_bias written in the config > the trained default
        if cost_bias is not None:
            bias = float(cost_bias)
        elif rc is not None and "cost_bias" in rc.model_fields_set:
            bias = float(rc.cost_bias)
        elif self.rule == trained_rule:
            bias = float(meta.decision.get("cost_bias", 0.0))
        else:
            bias = 0.0
        self.cost_bias = bias
        self.backend = backend or meta.embedding_backend
        self.threads = threads or (rc.threads if rc and rc.threads else 2)
        self._embedder = embedder
        self.featurizer = PromptFeaturizer.model_validate(meta.featurizer or {})
        self.calibration = (
            SuccessCalibration.model_validate(meta.success_calibration) if meta.success_calibration else None
        )
        self._knn = (
            KnnBank.from_arrays(
                self.weights, len(self.tasks), k=self.calibration.knn_k, shrink=self.calibration.knn_shrink
            )
            if self.calibration is not None
            else None
        )

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        config: EnsembleConfig | None = None,
        *,
        backend: str | None = None,
        threads: int | None = None,
        unknown_task: Fallback | None = None,
        rule: Rule | None = None,
        cost_bias: float | None = None,
    ) -> Router:
        """Load an artifact; with a config, its tier list must equal the router's."""
        weights, meta = load_artifact(path, config)
        return cls(
            weights, meta, config=config, backend=backend, threads=threads, unknown_task=unknown_task,
            rule=rule, cost_bias=cost_bias,
        )

    @property
    def embedder(self):  # noqa: ANN201 - TextEmbedder protocol
        if self._embedder is None:
            from routenlp.router.onnx_export import get_embedder, onnx_available

            backend = self.backend
            if backend.startswith("onnx") and not onnx_available():
                backend = "torch"  # same model, fp32 torch: embeddings within cos ~0.99
            self._embedder = get_embedder(
                self.meta.encoder, backend, threads=self.threads, max_length=self.meta.max_length,
                truncation=self.meta.truncation,  # type: ignore[arg-type]
            )
        return self._embedder

    def ladder(self, task: str) -> list[str]:
        """The task's escalation ladder for the Cascade: the serving tiers on its train
        cost-quality frontier (meta.json decision "candidates"), cheapest first; all serving
        tiers for a router without frontier info; [] for a task the router was not trained on."""
        idx = self._task_idx.get(task)
        if idx is None:
            return []
        return [t for t, ok in zip(self.tiers, self._cand[idx]) if ok]

    # -- probabilities -----------------------------------------------------------------
    def _resolve(self, task: str) -> int | None:
        """Task index, or None when the task is unknown and a fallback is configured."""
        idx = self._task_idx.get(task)
        if idx is not None:
            return idx
        if self.unknown_task == "error":
            raise UnknownTaskError(
                f"the router was not trained on task {task!r}; known tasks: {self.tasks}",
                hint="retrain with rows of this task, or set router.unknown_task to 'top' or "
                "'cheapest' for an explicit fallback",
            )
        return None

    def _fallback_row(self, task: str) -> tuple[np.ndarray, int]:
        """One-hot probabilities on the fallback tier for an unknown task."""
        serving = np.ones(len(self.tiers), dtype=bool)
        if self.config is not None:
            serving = np.array([t.serves(task) for t in self.config.tiers], dtype=bool)
            if not serving.any():
                serving[:] = True
        cand = np.flatnonzero(serving)
        k = int(cand[-1] if self.unknown_task == "top" else cand[0])
        row = np.zeros(len(self.tiers))
        row[k] = 1.0
        return row, k

    def outputs_from_embeddings(
        self, task_idx: np.ndarray, emb: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(acceptable-tier probabilities (n, K), success probabilities (n, K) or None),
        masked (non-serving tiers 0), from precomputed embeddings."""
        task_idx = np.asarray(task_idx, dtype=np.int64)
        emb = np.asarray(emb, dtype=np.float32)
        logits, success = head_outputs(self.weights, emb, task_idx)
        if success is not None and self.calibration is not None and self._knn is not None:
            knn = self._knn.predict(emb, task_idx)
            success = self.calibration.apply(success, knn, task_idx, self.tasks, self.tiers)
        mask = self._mask[task_idx]
        return masked_softmax(logits, mask), (None if success is None else np.where(mask, success, 0.0))

    def probs_from_embeddings(self, task_idx: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """(n, K) masked probabilities from precomputed embeddings (training, evaluation)."""
        return self.outputs_from_embeddings(task_idx, emb)[0]

    def choose_from_embeddings(
        self, task_idx: np.ndarray, emb: np.ndarray, *, cost_bias: float | None = None
    ) -> np.ndarray:
        """Tier index per row with the router's rule and knob (evaluation on cached embeddings)."""
        ti = np.asarray(task_idx, dtype=np.int64)
        probs, success = self.outputs_from_embeddings(ti, emb)
        return self._choose(probs, success, self._mask[ti], self._cand[ti], cost_bias=cost_bias)

    def predict_proba(self, tasks: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """(n, K) acceptable-tier probabilities; tiers not serving the task get exactly 0."""
        return self._probs(tasks, texts)[0]

    def success_proba(self, tasks: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """(n, K) per-tier success probabilities P(q_k >= tau_t) (non-serving tiers 0).

        Unknown tasks with a fallback get 1 on the fallback tier and 0 elsewhere.
        """
        if not self.has_success_head:
            raise ConfigError("this router was trained without a success head (router.lambda_s = 0)")
        return self._probs(tasks, texts)[3]  # type: ignore[return-value]

    def _probs(
        self, tasks: Sequence[str], texts: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Probabilities, per-row serving mask, unknown-task fallback flags, success probs,
        per-row candidate mask of the success rule."""
        if len(tasks) != len(texts):
            raise ValueError(f"{len(tasks)} tasks for {len(texts)} texts")
        n, k = len(texts), len(self.tiers)
        out = np.zeros((n, k))
        succ = np.zeros((n, k)) if self.has_success_head else None
        mask = np.ones((n, k), dtype=bool)
        is_fallback = np.zeros(n, dtype=bool)
        known: list[int] = []
        tidx: list[int] = []
        for i, t in enumerate(tasks):
            j = self._resolve(t)
            if j is None:
                out[i], _ = self._fallback_row(t)
                mask[i] = out[i] > 0
                is_fallback[i] = True
                if succ is not None:
                    succ[i] = out[i]
            else:
                known.append(i)
                tidx.append(j)
        if known:
            emb = self.embedder.encode(
                self.featurizer.transform_all([tasks[i] for i in known], [texts[i] for i in known])
            )
            ti = np.asarray(tidx, dtype=np.int64)
            p, sp = self.outputs_from_embeddings(ti, emb)
            out[known] = p
            if succ is not None and sp is not None:
                succ[known] = sp
            mask[known] = self._mask[ti]
        cand = mask.copy()
        if known:
            cand[known] = self._cand[ti]
        return out, mask, is_fallback, succ, cand

    def _choose(
        self,
        probs: np.ndarray,
        success: np.ndarray | None,
        mask: np.ndarray,
        cand: np.ndarray,
        *,
        cost_bias: float | None = None,
        min_accept_prob: float | None = None,
    ) -> np.ndarray:
        bias = self.cost_bias if cost_bias is None else float(cost_bias)
        if min_accept_prob is not None or self.rule == "label" or success is None:
            if cost_bias is None and self.rule != "label":
                bias = 0.0  # the trained default is in success-probability units
            return choose_tiers(probs, mask, self.cost_norm, cost_bias=bias, min_accept_prob=min_accept_prob)
        return choose_by_success(success, mask & cand, self.cost_norm, cost_bias=bias)

    # -- decisions ---------------------------------------------------------------------
    def decide_batch(
        self,
        tasks: Sequence[str],
        texts: Sequence[str],
        *,
        cost_bias: float | None = None,
        min_accept_prob: float | None = None,
    ) -> list[RouteDecision]:
        """Route a batch. `cost_bias` overrides the knob of the router's rule;
        `min_accept_prob` switches to the cumulative rule on the acceptable-tier distribution."""
        probs, mask, is_fallback, succ, cand = self._probs(tasks, texts)
        choice = self._choose(probs, succ, mask, cand, cost_bias=cost_bias, min_accept_prob=min_accept_prob)
        out = []
        for i, k in enumerate(choice):
            k = int(k)
            row = probs[i]
            out.append(
                RouteDecision(
                    tier=self.tiers[k],
                    index=k,
                    probs={t: float(p) for t, p in zip(self.tiers, row)},
                    p_escalate=float(row[k + 1 :].sum()),
                    fallback=bool(is_fallback[i]),
                    success=None if succ is None else {t: float(p) for t, p in zip(self.tiers, succ[i])},
                )
            )
        return out

    def decide(
        self,
        task: str,
        text: str,
        *,
        cost_bias: float | None = None,
        min_accept_prob: float | None = None,
    ) -> RouteDecision:
        """Route one query. Unknown task -> UnknownTaskError unless a fallback is set."""
        return self.decide_batch([task], [text], cost_bias=cost_bias, min_accept_prob=min_accept_prob)[0]
