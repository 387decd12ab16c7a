"""Tier kinds. Importing this package registers every built-in kind with the registry."""

from routenlp.tiers import classifier, hf_local, openai_compat, replay  # noqa: F401
from routenlp.tiers.base import (
    BaseTier,
    Generation,
    Request,
    Tier,
    Usage,
    build_tier,
    register_tier,
    token_uncertainty,
)

__all__ = [
    "BaseTier",
    "Generation",
    "Request",
    "Tier",
    "Usage",
    "build_tier",
    "register_tier",
    "token_uncertainty",
]
