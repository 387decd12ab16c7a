"""Importers: public routing data -> quality-matrix rows (`MatrixRow`).

- the shared routing-matrix JSONL (`routenlp.matrix.read_matrix`);
- RouterBench's published table: one row per prompt with `prompt`, `eval_name`, and per
  model `<model>` (correctness/score in [0, 1]), `<model>|model_response` and
  `<model>|total_cost`; read from .csv or .jsonl with the standard library, or from .pkl /
  .parquet when pandas is installed (the published file is a pandas pickle);
- RouteLLM-style per-model CSVs: a directory of `<model>.csv` files, each with a prompt or
  id column and a correctness/score column, joined on the prompt id.

Every problem names the file and the missing column or file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from routenlp.errors import DataError
from routenlp.matrix import MatrixRow, Outcome, read_matrix

RESPONSE_SUFFIX = "|model_response"
COST_SUFFIX = "|total_cost"
ROUTERBENCH_META = ("sample_id", "prompt", "eval_name", "oracle_model_to_route_to", "id")
ID_COLUMNS = ("id", "sample_id", "prompt_id", "question_id", "idx")
PROMPT_COLUMNS = ("prompt", "question", "query", "input", "instruction")
SCORE_COLUMNS = ("correct", "correctness", "score", "quality", "is_correct", "accuracy", "label")
RESPONSE_COLUMNS = ("response", "model_response", "output", "answer", "completion")
COST_COLUMNS = ("cost", "total_cost")
TASK_COLUMNS = ("task", "eval_name", "dataset")


def _stable_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.blake2b(text.encode('utf-8'), digest_size=6).hexdigest()}"


def _num(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return None if math.isnan(float(value)) else float(value)
    s = str(value).strip()
    if s == "" or s.lower() in ("nan", "none", "null"):
        return None
    if s.lower() in ("true", "false"):
        return 1.0 if s.lower() == "true" else 0.0
    try:
        v = float(s)
    except ValueError:
        return None
    return None if math.isnan(v) else v


def _prompt_text(value: Any) -> str:
    """RouterBench stores some prompts as a Python-list string of one prompt."""
    if isinstance(value, list):
        return "\n".join(str(x) for x in value)
    s = "" if value is None else str(value)
    if s.startswith("['") and s.endswith("']"):
        import ast

        try:
            got = ast.literal_eval(s)
            if isinstance(got, list):
                return "\n".join(str(x) for x in got)
        except (ValueError, SyntaxError):
            pass
    return s


# -- generic table reading -------------------------------------------------------------


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a .csv, .jsonl/.json, or (with pandas) .pkl/.parquet table."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"table not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(1 << 30)
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    if suffix in (".jsonl", ".json"):
        rows = []
        with p.open(encoding="utf-8") as fh:
            if suffix == ".json":
                data = json.load(fh)
                if not isinstance(data, list):
                    raise DataError(f"{p}: expected a JSON list of row objects")
                rows = data
            else:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{p}:{lineno}: not valid JSON ({err.msg})") from None
        cols: dict[str, None] = {}
        for r in rows:
            if not isinstance(r, dict):
                raise DataError(f"{p}: every row must be a JSON object")
            for k in r:
                cols.setdefault(k, None)
        return list(cols), rows
    if suffix in (".pkl", ".pickle", ".parquet"):
        try:
            import pandas as pd  # type: ignore[import-untyped]
        except ImportError:
            raise DataError(
                f"{p}: reading {suffix} needs pandas, which is not installed",
                hint="convert the table to .csv or .jsonl, or pip install pandas",
            ) from None
        df = pd.read_pickle(p) if suffix in (".pkl", ".pickle") else pd.read_parquet(p)
        return [str(c) for c in df.columns], df.to_dict(orient="records")
    raise DataError(f"{p}: unsupported table format {suffix!r}; use .csv, .jsonl, .json or .pkl")


# -- RouterBench -----------------------------------------------------------------------


def routerbench_models(columns: Iterable[str]) -> list[str]:
    """Model names: columns that have a matching `<model>|total_cost` column."""
    cols = list(columns)
    colset = set(cols)
    return [c for c in cols if f"{c}{COST_SUFFIX}" in colset and "|" not in c]


def import_routerbench(
    path: str | Path,
    *,
    models: Iterable[str] | None = None,
    task_map: Mapping[str, str] | None = None,
) -> list[MatrixRow]:
    """RouterBench's table -> matrix rows (task = eval_name, quality = the model column)."""
    p = Path(path)
    columns, table = read_table(p)
    colset = set(columns)
    for need in ("prompt", "eval_name"):
        if need not in colset:
            raise DataError(
                f"{p}: RouterBench table has no {need!r} column (columns: {columns[:12]}...)"
            )
    found = routerbench_models(columns)
    use = list(models) if models is not None else found
    if not use:
        raise DataError(
            f"{p}: no model columns found: expected '<model>', '<model>{RESPONSE_SUFFIX}' and "
            f"'<model>{COST_SUFFIX}' columns"
        )
    for m in use:
        for col in (m, f"{m}{COST_SUFFIX}"):
            if col not in colset:
                raise DataError(f"{p}: model {m!r} has no {col!r} column")
    rows: list[MatrixRow] = []
    seen: set[str] = set()
    for lineno, rec in enumerate(table, 2):
        prompt = _prompt_text(rec.get("prompt"))
        task = str(rec.get("eval_name") or "")
        if task_map:
            task = task_map.get(task, task)
        rid = str(rec.get("sample_id") or rec.get("id") or _stable_id(task, prompt))
        if rid in seen:
            rid = f"{rid}#{lineno}"
        seen.add(rid)
        outcomes: dict[str, Outcome] = {}
        for m in use:
            q = _num(rec.get(m))
            outcomes[m] = Outcome(
                quality=q,
                cost=_num(rec.get(f"{m}{COST_SUFFIX}")),
                response=rec.get(f"{m}{RESPONSE_SUFFIX}"),
                error=None if q is not None else "no recorded outcome",
            )
        rows.append(MatrixRow(id=rid, task=task, prompt=prompt, outcomes=outcomes))
    return rows


# -- RouteLLM-style per-model CSVs -----------------------------------------------------


def _pick(columns: Iterable[str], candidates: Iterable[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def import_per_model_csvs(
    directory: str | Path,
    *,
    task: str | None = None,
    models: Iterable[str] | None = None,
) -> list[MatrixRow]:
    """A directory of `<model>.csv` (id/prompt + correctness/score columns) -> matrix rows.

    Rows are joined on the id column (else the prompt text); a query missing from some
    model's file gets that model's outcome as an error. `task` defaults to a task column
    when present, else the directory name.
    """
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"per-model CSV directory not found: {d}")
    files = sorted(d.glob("*.csv"))
    if models is not None:
        wanted = list(models)
        by_name = {f.stem: f for f in files}
        missing = [m for m in wanted if m not in by_name]
        if missing:
            raise DataError(f"{d}: no CSV file for model(s) {missing} (expected <model>.csv)")
        files = [by_name[m] for m in wanted]
    if not files:
        raise DataError(f"{d}: no <model>.csv files found")
    per_model: dict[str, dict[str, dict[str, Any]]] = {}
    order: dict[str, None] = {}
    prompts: dict[str, str] = {}
    tasks: dict[str, str] = {}
    for f in files:
        columns, table = read_table(f)
        id_col = _pick(columns, ID_COLUMNS)
        prompt_col = _pick(columns, PROMPT_COLUMNS)
        if id_col is None and prompt_col is None:
            raise DataError(
                f"{f}: no id or prompt column (looked for {ID_COLUMNS + PROMPT_COLUMNS}; "
                f"columns: {columns})"
            )
        score_col = _pick(columns, SCORE_COLUMNS)
        if score_col is None:
            raise DataError(
                f"{f}: no correctness/score column (looked for {SCORE_COLUMNS}; columns: {columns})"
            )
        resp_col = _pick(columns, RESPONSE_COLUMNS)
        cost_col = _pick(columns, COST_COLUMNS)
        task_col = _pick(columns, TASK_COLUMNS)
        got: dict[str, dict[str, Any]] = {}
        for rec in table:
            prompt = _prompt_text(rec.get(prompt_col)) if prompt_col else ""
            key = str(rec.get(id_col)) if id_col else _stable_id("q", prompt)
            order.setdefault(key, None)
            if prompt and key not in prompts:
                prompts[key] = prompt
            if task_col and rec.get(task_col) and key not in tasks:
                tasks[key] = str(rec[task_col])
            got[key] = {
                "quality": _num(rec.get(score_col)),
                "response": rec.get(resp_col) if resp_col else None,
                "cost": _num(rec.get(cost_col)) if cost_col else None,
            }
        per_model[f.stem] = got
    default_task = task or d.name
    rows: list[MatrixRow] = []
    for key in order:
        outcomes: dict[str, Outcome] = {}
        for m, got in per_model.items():
            rec = got.get(key)
            if rec is None or rec["quality"] is None:
                outcomes[m] = Outcome(error="no recorded outcome")
            else:
                outcomes[m] = Outcome(**rec)
        rows.append(
            MatrixRow(
                id=key,
                task=task or tasks.get(key, default_task),
                prompt=prompts.get(key, ""),
                outcomes=outcomes,
            )
        )
    return rows


# -- dispatch --------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """'matrix' | 'routerbench' | 'per_model_csv' for a file or directory."""
    p = Path(path)
    if p.is_dir():
        return "per_model_csv"
    if not p.exists():
        raise DataError(f"routing data not found: {p}")
    if p.suffix.lower() == ".jsonl":
        with p.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        break
                    return "matrix" if isinstance(first, dict) and "outcomes" in first else "routerbench"
    return "routerbench"


def import_routing_data(path: str | Path, *, fmt: str = "auto", **kw: Any) -> list[MatrixRow]:
    """Read any supported routing data into matrix rows."""
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "matrix":
        return read_matrix(path)
    if kind == "routerbench":
        return import_routerbench(path, **kw)
    if kind == "per_model_csv":
        return import_per_model_csvs(path, **kw)
    raise DataError(f"unknown routing data format {fmt!r}; use matrix, routerbench or per_model_csv")


def iter_models(rows: Iterable[MatrixRow]) -> Iterator[str]:
    seen: dict[str, None] = {}
    for r in rows:
        for m in r.outcomes:
            if m not in seen:
                seen[m] = None
                yield m
