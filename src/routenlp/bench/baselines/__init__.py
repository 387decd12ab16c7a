"""Baseline routing methods, each fitted on the train split only (see `base.py`).

Importing this package registers every built-in baseline under its results name.
"""

from routenlp.bench.baselines import (  # noqa: F401  (registration side effects)
    automix,
    frugalgpt,
    hybrid_llm,
    knn_router,
    oracle,
    random_router,
    routellm_bert,
    routellm_mf,
    task_mix,
)
from routenlp.bench.baselines.always import AlwaysTier
from routenlp.bench.baselines.base import (
    Baseline,
    Context,
    MatrixView,
    register_baseline,
    registered,
)

__all__ = ["AlwaysTier", "Baseline", "Context", "MatrixView", "register_baseline", "registered"]
