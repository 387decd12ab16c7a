"""Shared fixtures. Data beside the checkout is read by path; in CI (CI=true) missing data
or services are a failure, never a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from routenlp.paths import shared_data_dir

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, what: str) -> None:
    """Skip locally when a prerequisite is absent; fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (CI=true) but is not available")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def require_shared_data() -> Path:
    """The shared data directory (../shared/data or ROUTENLP_SHARED_DATA)."""
    path = shared_data_dir()
    need((path / "tasks").is_dir() and (path / "routing").is_dir(), f"shared data at {path}")
    return path
