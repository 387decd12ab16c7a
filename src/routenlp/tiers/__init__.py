"""Tier kinds. Kind modules are imported lazily by `build_tier` (a server that only talks to
remote endpoints never pays for importing torch)."""

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
