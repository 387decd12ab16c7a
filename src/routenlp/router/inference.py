"""Router inference: text + task -> tier probabilities -> a tier decision, in milliseconds.

The expensive part is the sentence embedding (cached by text hash; ONNX Runtime int8 by
default when available); the head is two small numpy matmuls. Decisions:

- default: the most probable tier;
- `cost_bias` b: argmax_k log p_k - b * c_k / c_K. Larger b never picks a more expensive
  tier (exchange argument: if b1 < b2 pick k1, k2 then (b2 - b1)(c_k1 - c_k2) >= 0), so it
  is a cost/quality knob that needs no retraining; b < 0 leans towards quality;
- `min_accept_prob` p: the cheapest tier k whose cumulative probability
  P(acceptable tier <= k) >= p; larger p is more conservative (higher tiers).
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
from routenlp.router.model import head_logits, masked_softmax

Fallback = Literal["error", "top", "cheapest"]


@dataclass
class RouteDecision:
    """The chosen tier, the tier probabilities and the mass above the chosen tier."""

    tier: str
    index: int
    probs: dict[str, float]
    p_escalate: float
    fallback: bool = field(default=False)


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
    ) -> None:
        self.meta = meta
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.tiers: list[str] = list(meta.tiers)
        self.tasks: list[str] = list(meta.tasks)
        self._task_idx = dict(meta.task_index)
        self._mask = np.array([meta.serving[t] for t in self.tasks], dtype=bool)
        self.cost_norm = np.asarray(meta.cost_norm, dtype=np.float64)
        self.config = config
        rc = config.router if config is not None else None
        self.unknown_task: Fallback = unknown_task or (rc.unknown_task if rc else "error")
        self.cost_bias = float(cost_bias if cost_bias is not None else (rc.cost_bias if rc else 0.0))
        self.backend = backend or meta.embedding_backend
        self.threads = threads or (rc.threads if rc and rc.threads else 2)
        self._embedder = embedder

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
    ) -> Router:
        """Load an artifact; with a config, its tier list must equal the router's."""
        weights, meta = load_artifact(path, config)
        return cls(weights, meta, config=config, backend=backend, threads=threads, unknown_task=unknown_task)

    @property
    def embedder(self):  # noqa: ANN201 - TextEmbedder protocol
        if self._embedder is None:
            from routenlp.router.onnx_export import get_embedder, onnx_available

            backend = self.backend
            if backend.startswith("onnx") and not onnx_available():
                backend = "torch"  # same model, fp32 torch: embeddings within cos ~0.99
            self._embedder = get_embedder(
                self.meta.encoder, backend, threads=self.threads, max_length=self.meta.max_length
            )
        return self._embedder

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

    def probs_from_embeddings(self, task_idx: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """(n, K) masked probabilities from precomputed embeddings (training, evaluation)."""
        logits = head_logits(self.weights, np.asarray(emb, dtype=np.float32), np.asarray(task_idx))
        return masked_softmax(logits, self._mask[task_idx])

    def predict_proba(self, tasks: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """(n, K) tier probabilities; tiers not serving the task get exactly 0."""
        probs, _, _ = self._probs(tasks, texts)
        return probs

    def _probs(
        self, tasks: Sequence[str], texts: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities, per-row serving mask and the unknown-task fallback flags."""
        if len(tasks) != len(texts):
            raise ValueError(f"{len(tasks)} tasks for {len(texts)} texts")
        n, k = len(texts), len(self.tiers)
        out = np.zeros((n, k))
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
            else:
                known.append(i)
                tidx.append(j)
        if known:
            emb = self.embedder.encode([texts[i] for i in known])
            ti = np.asarray(tidx, dtype=np.int64)
            out[known] = self.probs_from_embeddings(ti, emb)
            mask[known] = self._mask[ti]
        return out, mask, is_fallback

    # -- decisions ---------------------------------------------------------------------
    def decide_batch(
        self,
        tasks: Sequence[str],
        texts: Sequence[str],
        *,
        cost_bias: float | None = None,
        min_accept_prob: float | None = None,
    ) -> list[RouteDecision]:
        probs, mask, is_fallback = self._probs(tasks, texts)
        bias = self.cost_bias if cost_bias is None else float(cost_bias)
        choice = choose_tiers(probs, mask, self.cost_norm, cost_bias=bias, min_accept_prob=min_accept_prob)
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
