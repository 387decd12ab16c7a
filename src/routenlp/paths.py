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


def write_json_atomic(path: str | Path, payload: object) -> Path:
    """Write JSON via a per-process, per-thread temp file, fsync, then rename: a reader (a
    reloading server, another replica) sees the old file or the new one, never half."""
    import json
    import threading

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)
    return p


def read_json_file(path: str | Path, what: str, *, hint: str) -> object:
    """Parse a JSON artifact, or raise one clear DataError naming `what` and the file
    (missing, not UTF-8, not JSON); `hint` says how to create it."""
    import json

    from routenlp.errors import DataError

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found: {p}", hint=hint)
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {p} is not valid JSON: {err}") from None
