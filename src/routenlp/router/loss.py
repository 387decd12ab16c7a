"""The router loss: cross-entropy on the acceptable tier plus expected cost and expected
quality shortfall under the predicted distribution.

`L = CE(logits, y) + lambda_c * sum_k p_k c_k / c_K + lambda_q * sum_k p_k max(0, tau_t - q_k)`

CE alone treats "one tier too expensive" and "one tier too cheap" alike; the cost term
pushes mass to cheap tiers and the shortfall term pushes it away from tiers that failed
the quality bar on this very query (q_k is the recorded quality, missing counts as 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def router_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cost_norm: torch.Tensor,
    quality: torch.Tensor,
    tau: torch.Tensor,
    *,
    lambda_c: float,
    lambda_q: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the batch and its three terms (for logging).

    logits (n, K) with -inf on masked tiers; labels (n,) tier index; cost_norm (K,) =
    c_k / c_K; quality (n, K) recorded quality (missing -> 0); tau (n,) per-row tau.
    """
    logp = torch.log_softmax(logits, dim=-1)
    ce = F.nll_loss(logp, labels)
    p = logp.exp()  # exp(-inf) = 0: masked tiers contribute nothing
    exp_cost = (p * cost_norm.unsqueeze(0)).sum(-1).mean()
    shortfall = torch.clamp(tau.unsqueeze(-1) - quality, min=0.0)
    exp_short = (p * shortfall).sum(-1).mean()
    total = ce + lambda_c * exp_cost + lambda_q * exp_short
    return total, {
        "ce": float(ce.detach()),
        "cost": float(exp_cost.detach()),
        "shortfall": float(exp_short.detach()),
        "total": float(total.detach()),
    }
