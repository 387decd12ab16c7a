"""Where RouteNLP keeps converted models and where the shared test data lives."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_dir() -> Path:
    """User cache directory for converted models (override with ROUTENLP_CACHE_DIR)."""
    root = os.environ.get("ROUTENLP_CACHE_DIR") or user_cache_dir("routenlp")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path:
    """The shared datasets beside the checkout (override with ROUTENLP_SHARED_DATA)."""
    env = os.environ.get("ROUTENLP_SHARED_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").exists() and candidate.exists():
            return candidate
    return Path.cwd().parent / "shared" / "data"
