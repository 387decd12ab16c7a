"""The router loss: cross-entropy on the acceptable tier plus expected cost and expected
quality shortfall under the predicted distribution, plus an auxiliary success term.

`L = CE(logits, y) + lambda_c * sum_k p_k c_k / c_K + lambda_q * sum_k p_k max(0, tau_t - q_k)
     + lambda_s * BCE(sigmoid(s_k), 1[q_k >= tau_t])` (BCE averaged over serving tiers
with a recorded outcome).

CE alone treats "one tier too expensive" and "one tier too cheap" alike; the cost term
pushes mass to cheap tiers and the shortfall term pushes it away from tiers that failed
the quality bar on this very query (q_k is the recorded quality, missing counts as 0).
The success term trains per-tier success probabilities on the same trunk, which the
quality-aware decision rule uses (see inference.choose_by_success).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def success_loss(success_logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the entries where `weight` (n, K) is True.

    Entries outside the weight mask (tiers that do not serve the task, outcomes that were
    never recorded) carry no information about the tier and are ignored.
    """
    w = weight.to(success_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(success_logits, targets.to(success_logits.dtype), reduction="none")
    return (bce * w).sum() / w.sum().clamp(min=1.0)


def router_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cost_norm: torch.Tensor,
    quality: torch.Tensor,
    tau: torch.Tensor,
    *,
    lambda_c: float,
    lambda_q: float,
    success_logits: torch.Tensor | None = None,
    success_targets: torch.Tensor | None = None,
    success_weight: torch.Tensor | None = None,
    lambda_s: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the batch and its terms (for logging).

    logits (n, K) with -inf on masked tiers; labels (n,) tier index; cost_norm (K,) =
    c_k / c_K; quality (n, K) recorded quality (missing -> 0); tau (n,) per-row tau.
    With `success_logits` (n, K), `success_targets` (n, K) in [0, 1] and `success_weight`
    (n, K) bool, adds `lambda_s * success_loss(...)`.
    """
    logp = torch.log_softmax(logits, dim=-1)
    ce = F.nll_loss(logp, labels)
    p = logp.exp()  # exp(-inf) = 0: masked tiers contribute nothing
    exp_cost = (p * cost_norm.unsqueeze(0)).sum(-1).mean()
    shortfall = torch.clamp(tau.unsqueeze(-1) - quality, min=0.0)
    exp_short = (p * shortfall).sum(-1).mean()
    total = ce + lambda_c * exp_cost + lambda_q * exp_short
    parts = {"ce": float(ce.detach()), "cost": float(exp_cost.detach()), "shortfall": float(exp_short.detach())}
    if success_logits is not None:
        if success_targets is None or success_weight is None:
            raise ValueError("success_logits need success_targets and success_weight")
        s = success_loss(success_logits, success_targets, success_weight)
        total = total + lambda_s * s
        parts["success"] = float(s.detach())
    parts["total"] = float(total.detach())
    return total, parts
