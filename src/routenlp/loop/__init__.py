"""The closed loop: mine the failures that keep traffic on the expensive tiers, cluster
them, distil the cheap tiers on the worst clusters, then re-label, retrain the router,
re-calibrate and evaluate, round after round (see docs/design.md, "Closed loop")."""

from routenlp.loop.cluster import Cluster, ClusterReport, cluster_failures
from routenlp.loop.distill import DistillResult, LoraSettings, distill_tier, lora_distill
from routenlp.loop.mining import Failure, mine_matrix, mine_store
from routenlp.loop.rounds import LoopOptions, optimize, rollback
from routenlp.loop.sets import DistillSet, Example, HeldOut, random_set, targeted_set

__all__ = [
    "Cluster", "ClusterReport", "DistillResult", "DistillSet", "Example", "Failure", "HeldOut",
    "LoopOptions", "LoraSettings", "cluster_failures", "distill_tier", "lora_distill", "mine_matrix",
    "mine_store", "optimize", "random_set", "rollback", "targeted_set",
]
