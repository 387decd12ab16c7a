"""Task dataset JSONL I/O: `{"id", "task", "input", "reference", ...extra}` per line,
sorted keys, rows sorted by id, UTF-8 (the format of the shared datasets)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from routenlp.errors import DataError

REQUIRED_KEYS = ("id", "task", "input", "reference")
SPLITS = ("train", "cal", "test")


def load_task_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a task JSONL file; malformed lines fail with `file:line: what is wrong`."""
    p = Path(path)
    if p.is_dir():
        raise DataError(
            f"{p} is a directory, not a task JSONL file",
            hint=f"pass {p / 'train.jsonl'} or {p / 'test.jsonl'}",
        )
    if not p.exists():
        raise DataError(f"task data file not found: {p}")
    rows: list[dict[str, Any]] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{p}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise DataError(f"{p}:{lineno}: missing key(s) {missing} (need {list(REQUIRED_KEYS)})")
            if not isinstance(row["input"], str):
                raise DataError(f"{p}:{lineno}: 'input' must be a string")
            rows.append(row)
    return rows


def load_task_split(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Rows of `<data_dir>/<split>.jsonl` (split: train, cal or test)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return load_task_rows(Path(data_dir) / f"{split}.jsonl")


def write_task_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as task JSONL: sorted keys, sorted by id, non-ASCII kept, LF endings."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: str(r["id"]))
    with p.open("w", encoding="utf-8", newline="\n") as fh:
        for row in ordered:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    return p
