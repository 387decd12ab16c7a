"""The router head: frozen sentence embedding + learned task embedding -> MLP -> K logits,
plus an auxiliary per-tier success head on the same trunk.

The encoder stays frozen by default so embeddings are computed once per text (cached) and
training the head takes seconds on CPU. Tiers that do not serve a task get logit -inf,
so they never receive probability mass, in training or at inference.

Why a success head: the K-way "cheapest acceptable tier" distribution says which tier is
*probably enough*, but not how likely each tier is to succeed, so it cannot trade quality
against cost when cheap tiers are merely good. The success head predicts
P(q_k >= tau_t) for every tier k independently (K sigmoids), which the decision rule uses
to pick the cheapest tier that is (nearly) as likely to succeed as the best one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RouterHead(nn.Module):
    """`[embedding ; task_embedding] -> Linear -> ReLU -> Dropout -> {Linear -> K logits,
    Linear -> K success logits}`."""

    def __init__(
        self,
        emb_dim: int,
        n_tasks: int,
        n_tiers: int,
        *,
        task_dim: int = 64,
        hidden: int = 256,
        dropout: float = 0.1,
        success_head: bool = True,
        success_prior: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if n_tiers < 2:
            raise ValueError(f"a router needs at least 2 tiers, got {n_tiers}")
        if n_tasks < 1:
            raise ValueError("a router needs at least one task")
        self.task_emb = nn.Embedding(n_tasks, task_dim)
        self.fc1 = nn.Linear(emb_dim + task_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, n_tiers)
        self.fc_s = nn.Linear(hidden, n_tiers) if success_head else None
        nn.init.normal_(self.task_emb.weight, std=0.1)
        # the success head learns a residual over each task's success-rate logit: with little
        # per-query signal it stays near the task prior instead of adding noise to it
        prior = np.zeros((n_tasks, n_tiers), dtype=np.float32) if success_prior is None else success_prior
        self.register_buffer("s_prior", torch.as_tensor(np.asarray(prior, dtype=np.float32)))
        if self.fc_s is not None and success_prior is not None:
            nn.init.zeros_(self.fc_s.weight)
            nn.init.zeros_(self.fc_s.bias)

    def trunk(self, emb: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        x = torch.cat([emb, self.task_emb(task_idx)], dim=-1)
        return self.drop(torch.relu(self.fc1(x)))

    def forward(
        self, emb: torch.Tensor, task_idx: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (n, K); `mask` (n, K) bool, False -> -inf (tier does not serve the task)."""
        return self.forward_all(emb, task_idx, mask)[0]

    def forward_all(
        self, emb: torch.Tensor, task_idx: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tier logits (n, K) masked to -inf, success logits (n, K) unmasked or None)."""
        h = self.trunk(emb, task_idx)
        logits = self.fc2(h)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        if self.fc_s is None:
            return logits, None
        return logits, self.fc_s(h) + self.s_prior[task_idx]

    def numpy_weights(self) -> dict[str, np.ndarray]:
        """Plain float32 arrays for the numpy inference path (no torch call per decision)."""

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy().astype(np.float32)

        out = {
            "task_emb": arr(self.task_emb.weight),
            "w1": arr(self.fc1.weight).T.copy(),
            "b1": arr(self.fc1.bias),
            "w2": arr(self.fc2.weight).T.copy(),
            "b2": arr(self.fc2.bias),
        }
        if self.fc_s is not None:
            out["ws"] = arr(self.fc_s.weight).T.copy()
            out["bs"] = arr(self.fc_s.bias)
            out["s_prior"] = arr(self.s_prior)
        return out


def _hidden(weights: dict[str, np.ndarray], emb: np.ndarray, task_idx: np.ndarray) -> np.ndarray:
    d = emb.shape[1]
    w1 = weights["w1"]
    task_part = weights["task_emb"][task_idx] @ w1[d:]
    h = emb @ w1[:d] + task_part + weights["b1"]
    np.maximum(h, 0.0, out=h)
    return h


def head_logits(weights: dict[str, np.ndarray], emb: np.ndarray, task_idx: np.ndarray) -> np.ndarray:
    """Numpy forward pass of `RouterHead` (eval mode), unmasked tier logits (n, K).

    The first layer is split into its text and task parts: the task part is a per-task
    bias, so a decision costs one (n, d) x (d, H) matmul plus one (n, H) x (H, K).
    """
    return _hidden(weights, emb, task_idx) @ weights["w2"] + weights["b2"]


def head_outputs(
    weights: dict[str, np.ndarray], emb: np.ndarray, task_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Tier logits (n, K) and success probabilities (n, K) (None without a success head),
    sharing one trunk evaluation."""
    h = _hidden(weights, emb, task_idx)
    logits = h @ weights["w2"] + weights["b2"]
    if "ws" not in weights:
        return logits, None
    z = h @ weights["ws"] + weights["bs"]
    if "s_prior" in weights:
        z += weights["s_prior"][task_idx]
    return logits, 1.0 / (1.0 + np.exp(-z))


def prior_logits(targets: np.ndarray, weight: np.ndarray, task_index: np.ndarray, n_tasks: int) -> np.ndarray:
    """(T, K) logit of each task's smoothed mean success target per tier ((sum + 1) / (n + 2))."""
    t = np.asarray(targets, dtype=np.float64) * weight
    sums = np.zeros((n_tasks, t.shape[1]))
    counts = np.zeros((n_tasks, t.shape[1]))
    np.add.at(sums, task_index, t)
    np.add.at(counts, task_index, weight.astype(np.float64))
    p = (sums + 1.0) / (counts + 2.0)
    return np.log(p / (1.0 - p)).astype(np.float32)


def masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise softmax with masked entries exactly 0."""
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
