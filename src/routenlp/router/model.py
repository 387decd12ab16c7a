"""The router head: frozen sentence embedding + learned task embedding -> MLP -> K logits.

The encoder stays frozen by default so embeddings are computed once per text (cached) and
training the head takes seconds on CPU. Tiers that do not serve a task get logit -inf,
so they never receive probability mass, in training or at inference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RouterHead(nn.Module):
    """`[embedding ; task_embedding] -> Linear -> ReLU -> Dropout -> Linear -> K logits`."""

    def __init__(
        self,
        emb_dim: int,
        n_tasks: int,
        n_tiers: int,
        *,
        task_dim: int = 64,
        hidden: int = 256,
        dropout: float = 0.1,
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
        nn.init.normal_(self.task_emb.weight, std=0.1)

    def forward(
        self, emb: torch.Tensor, task_idx: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (n, K); `mask` (n, K) bool, False -> -inf (tier does not serve the task)."""
        x = torch.cat([emb, self.task_emb(task_idx)], dim=-1)
        logits = self.fc2(self.drop(torch.relu(self.fc1(x))))
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits

    def numpy_weights(self) -> dict[str, np.ndarray]:
        """Plain float32 arrays for the numpy inference path (no torch call per decision)."""
        return {
            "task_emb": self.task_emb.weight.detach().cpu().numpy().astype(np.float32),
            "w1": self.fc1.weight.detach().cpu().numpy().T.astype(np.float32).copy(),
            "b1": self.fc1.bias.detach().cpu().numpy().astype(np.float32),
            "w2": self.fc2.weight.detach().cpu().numpy().T.astype(np.float32).copy(),
            "b2": self.fc2.bias.detach().cpu().numpy().astype(np.float32),
        }


def head_logits(weights: dict[str, np.ndarray], emb: np.ndarray, task_idx: np.ndarray) -> np.ndarray:
    """Numpy forward pass of `RouterHead` (eval mode), unmasked logits (n, K).

    The first layer is split into its text and task parts: the task part is a per-task
    bias, so a decision costs one (n, d) x (d, H) matmul plus one (n, H) x (H, K).
    """
    d = emb.shape[1]
    w1 = weights["w1"]
    task_part = weights["task_emb"][task_idx] @ w1[d:]
    h = emb @ w1[:d] + task_part + weights["b1"]
    np.maximum(h, 0.0, out=h)
    return h @ weights["w2"] + weights["b2"]


def masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise softmax with masked entries exactly 0."""
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
