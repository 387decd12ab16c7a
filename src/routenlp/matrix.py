"""Quality matrix I/O: per (query, tier) outcomes in the routing-matrix JSONL format.

One row per query: `{"id", "task", "prompt", "reference"?, "outcomes": {tier: Outcome}}`.
This is the contract between labelling, router training, calibration and replay, so
reading is strict about structure (clear errors naming file, line and key) and lenient
about optional fields (nulls allowed where public matrices lack data).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routenlp.errors import DataError


class Outcome(BaseModel):
    """What one tier did on one query."""

    model_config = ConfigDict(extra="allow")

    quality: float | None = None
    cost: float | None = None
    latency_s: float | None = None
    uncertainty: float | None = None
    confidence: float | None = None
    response: Any = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None

    def risk(self) -> float | None:
        """The uncertainty signal: recorded u, else -confidence (larger = riskier)."""
        if self.uncertainty is not None and not math.isnan(self.uncertainty):
            return float(self.uncertainty)
        if self.confidence is not None and not math.isnan(self.confidence):
            return -float(self.confidence)
        return None

    @property
    def ok(self) -> bool:
        return self.error is None and self.quality is not None


class MatrixRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    task: str
    prompt: str
    reference: Any = None
    outcomes: dict[str, Outcome] = Field(default_factory=dict)

    def quality(self, tier: str) -> float | None:
        o = self.outcomes.get(tier)
        return None if o is None else o.quality


# Numeric outcome fields and the range each must lie in (None: any finite number).
# Quality is the task metric's per-sample score; tau, quality ratios and the conformal
# loss all assume [0, 1], so 5.0 (a 1-10 judge score, say) must be rescaled upstream.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "quality": (0.0, 1.0),
    "cost": (0.0, None),
    "latency_s": (0.0, None),
    "uncertainty": (None, None),
    "confidence": (None, None),
}


def outcome_problem(outcome: Outcome) -> str | None:
    """What is wrong with an outcome's numbers (`field: why`), or None when they are usable.

    Missing values are null, never NaN: a NaN would silently drop out of every mean and
    threshold instead of failing here."""
    for name, (lo, hi) in _RANGES.items():
        value = getattr(outcome, name)
        if value is None:
            continue
        x = float(value)
        if math.isnan(x) or math.isinf(x):
            return f"{name}: {value} is not a number (write null for a missing value)"
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            span = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
            return f"{name}: {value} is outside {span}"
    for name in ("tokens_in", "tokens_out"):
        value = getattr(outcome, name)
        if value is not None and value < 0:
            return f"{name}: {value} is negative"
    return None


def read_matrix(path: str | Path) -> list[MatrixRow]:
    """Read a quality matrix JSONL file; errors name the file and line."""
    return list(iter_matrix(path))


def iter_matrix(path: str | Path) -> Iterator[MatrixRow]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"quality matrix not found: {p}")
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{p}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object")
            for key in ("id", "task", "outcomes"):
                if key not in obj:
                    raise DataError(f"{p}:{lineno}: missing key {key!r}")
            if "prompt" not in obj:
                obj["prompt"] = obj.get("input", "")
            obj["id"] = str(obj["id"])
            try:
                row = MatrixRow.model_validate(obj)
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(x) for x in first["loc"])
                raise DataError(f"{p}:{lineno}: {loc}: {first['msg']}") from None
            for tier, outcome in row.outcomes.items():
                problem = outcome_problem(outcome)
                if problem:
                    raise DataError(
                        f"{p}:{lineno}: row {row.id!r}, outcomes.{tier}.{problem}"
                    )
            yield row


def row_to_json(row: MatrixRow) -> str:
    """One JSONL line. A NaN/inf outcome number (the in-memory "missing" of public
    matrices) is written as null, so every file written here passes `iter_matrix`."""
    data = row.model_dump(mode="json", exclude_none=False)
    for outcome in data.get("outcomes", {}).values():
        for name in _RANGES:
            value = outcome.get(name)
            if isinstance(value, float) and not math.isfinite(value):
                outcome[name] = None
    return json.dumps(data, sort_keys=True)


def write_matrix(path: str | Path, rows: Iterable[MatrixRow]) -> int:
    """Write rows atomically (temp file + rename) so a crash never leaves half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row_to_json(row) + "\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(p)
    return n


def append_rows(path: str | Path, rows: Iterable[MatrixRow]) -> None:
    """Append rows and fsync: used by resumable labelling (each batch is durable)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row_to_json(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def done_ids(path: str | Path) -> set[str]:
    """Ids already labelled in a (possibly partially written) matrix file."""
    p = Path(path)
    if not p.exists():
        return set()
    ids: set[str] = set()
    with p.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from a crash: that row is redone
    return ids


def matrix_tasks(rows: Iterable[MatrixRow]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r.task, None)
    return list(seen)


def matrix_tiers(rows: Iterable[MatrixRow]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        for t in r.outcomes:
            seen.setdefault(t, None)
    return list(seen)


def repair_tail(path: str | Path) -> None:
    """Drop a torn last line (left by a crash mid-write) so appends start on a clean line."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return
    data = p.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n")
    with p.open("r+b") as fh:
        fh.truncate(cut + 1 if cut >= 0 else 0)
