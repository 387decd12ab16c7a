"""The built-in six-task enterprise workload: a seeded, deterministic, offline generator.

Same task names and file format as the shared datasets (fin_ner, fin_summ, cs_intent,
cs_reply, legal_clause, legal_risk), so everything that runs on real data runs on this
embedded default too, with no download. Rows carry a `difficulty` in [0, 1] drawn from a
mix with a heavy hard tail (45% routine, 20% medium, 35% hard; exact counts per split), and
each grammar turns difficulty into harder inputs: more entities, distractors, negation,
longer text, rarer labels.

Determinism: every (seed, task, split) gets its own `random.Random` seeded from a SHA-256
of those three values, so the output depends only on the arguments (not on Python's
hash randomisation or on which other tasks are generated). Test rows are generated first
and train rows avoid their inputs, so the test split of a task is stable across train
sizes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp.config import TaskConfig
from routenlp.errors import DataError, UnknownTaskError
from routenlp.workloads import finance, legal, support
from routenlp.workloads.io import write_task_rows

RowMaker = Callable[[random.Random, float], dict[str, Any]]

# bucket -> (share of rows, difficulty range)
DIFFICULTY_MIX: dict[str, tuple[float, tuple[float, float]]] = {
    "routine": (0.45, (0.02, 0.45)),
    "medium": (0.20, (0.45, 0.70)),
    "hard": (0.35, (0.70, 0.99)),
}
DEFAULT_SEED = 13
DEFAULT_N_TRAIN = 300
DEFAULT_N_TEST = 100
_MAX_TRIES = 400


@dataclass(frozen=True)
class BuiltinTask:
    """One built-in task: its config defaults and its row grammar."""

    name: str
    kind: str  # TaskConfig kind
    card_kind: str  # "classification" | "extraction" | "generation" (as in shared cards)
    metric: str
    tau: float
    sla_ms: float
    labels: tuple[str, ...]
    description: str
    make: RowMaker = field(repr=False)

    def task_config(self, data: str | None = None) -> TaskConfig:
        """A TaskConfig for this task (labels left to the card / built-in lookup)."""
        return TaskConfig(
            name=self.name,
            kind=self.kind,
            metric=self.metric,
            tau=self.tau,
            sla_ms=self.sla_ms,
            data=data,
        )


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    t.name: t
    for t in (
        BuiltinTask(
            "fin_ner", "entity_extraction", "extraction", "entity_f1", 0.8, 8000,
            ("LOC", "ORG", "PER"),
            "Financial-news sentences with PER/LOC/ORG entities; reference = list of "
            "{text, type} in sentence order (may be empty).",
            finance.make_ner,
        ),
        BuiltinTask(
            "fin_summ", "summarisation", "generation", "rougeL", 0.3, 15000, (),
            "Short earnings-call passages (< 150 words, one sentence per line) -> 1-3 summary "
            "lines (headline facts only); extra 'company'.",
            finance.make_summary,
        ),
        BuiltinTask(
            "cs_intent", "intent_classification", "classification", "accuracy", 1.0, 3000,
            tuple(support.INTENT_LABELS),
            "Banking customer messages labelled with one of 14 intents (skewed frequencies; "
            "hard rows add a distractor about another intent, typos, rare intents).",
            support.make_intent,
        ),
        BuiltinTask(
            "cs_reply", "reply_generation", "generation", "rougeL", 0.3, 10000, (),
            "Banking customer messages -> reference agent reply; extra 'intent' (and "
            "'intent_2' for two-request hard rows).",
            support.make_reply,
        ),
        BuiltinTask(
            "legal_clause", "clause_classification", "classification", "accuracy", 1.0, 3000,
            tuple(legal.CLAUSE_LABELS),
            "Contract clauses labelled with one of 12 clause types (hard rows cross-reference "
            "other clause types and add boilerplate).",
            legal.make_clause,
        ),
        BuiltinTask(
            "legal_risk", "risk_classification", "classification", "macro_f1", 1.0, 3000,
            tuple(legal.RISK_LABELS),
            "Terms-of-service sentences labelled fair / potentially_unfair / clearly_unfair "
            "(CLAUDETTE-style); extra 'categories' (tags such as ter3, ltd2).",
            legal.make_risk,
        ),
    )
}
BUILTIN_TASK_NAMES = tuple(BUILTIN_TASKS)


def builtin_labels(task_name: str) -> list[str] | None:
    """Label set of a built-in task (entity types for fin_ner); None for generation tasks
    and for names that are not built in."""
    task = BUILTIN_TASKS.get(task_name)
    if task is None or not task.labels:
        return None
    return list(task.labels)


def builtin_task_configs(data_root: str | Path | None = None) -> list[TaskConfig]:
    """TaskConfigs of the six built-in tasks; with `data_root`, each points at
    `<data_root>/<task>` (e.g. a directory written by `generate_workload`)."""
    return [
        t.task_config(str(Path(data_root) / t.name) if data_root is not None else None)
        for t in BUILTIN_TASKS.values()
    ]


def _rng(seed: int, task: str, split: str) -> random.Random:
    digest = hashlib.sha256(f"routenlp-workload:{seed}:{task}:{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def difficulty_plan(rng: random.Random, n: int) -> list[float]:
    """n difficulties with exact bucket counts (the heavy tail is guaranteed per split)."""
    n_hard = round(n * DIFFICULTY_MIX["hard"][0])
    n_medium = round(n * DIFFICULTY_MIX["medium"][0])
    buckets = ["hard"] * n_hard + ["medium"] * n_medium + ["routine"] * (n - n_hard - n_medium)
    rng.shuffle(buckets)
    return [round(rng.uniform(*DIFFICULTY_MIX[b][1]), 3) for b in buckets]


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def _generate_split(
    task: BuiltinTask, split: str, n: int, seed: int, seen: set[str]
) -> list[dict[str, Any]]:
    rng = _rng(seed, task.name, split)
    rows = []
    for i, difficulty in enumerate(difficulty_plan(rng, n)):
        for _ in range(_MAX_TRIES):
            item = task.make(rng, difficulty)
            key = _key(item["input"])
            if key not in seen:
                break
        else:
            raise DataError(
                f"workload {task.name}: could not make {n} distinct {split} inputs "
                f"(grammar exhausted after {i} rows)",
                hint="ask for fewer rows (--n-train / --n-test)",
            )
        seen.add(key)
        row = {
            "id": f"{task.name}-{split}-{i:05d}",
            "task": task.name,
            "difficulty": difficulty,
            **item,
        }
        rows.append(row)
    return rows


def generate_task_rows(
    task_name: str,
    *,
    seed: int = DEFAULT_SEED,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, test rows) of one built-in task, in memory; no input appears twice."""
    task = BUILTIN_TASKS.get(task_name)
    if task is None:
        raise UnknownTaskError(
            f"{task_name!r} is not a built-in workload task; "
            f"built-in tasks: {', '.join(BUILTIN_TASKS)}"
        )
    if n_train < 0 or n_test < 0:
        raise DataError(f"workload {task_name}: row counts must be >= 0 (got {n_train}, {n_test})")
    seen: set[str] = set()
    test = _generate_split(task, "test", n_test, seed, seen)
    train = _generate_split(task, "train", n_train, seed, seen)
    return train, test


def parse_task_list(tasks: str | Iterable[str] | None) -> list[str]:
    """Task names from a comma list or iterable (None = all six); unknown names fail."""
    if tasks is None:
        return list(BUILTIN_TASKS)
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = [t for t in names if t]
    unknown = [t for t in names if t not in BUILTIN_TASKS]
    if unknown:
        raise UnknownTaskError(
            f"unknown built-in task(s) {unknown}; built-in tasks: {', '.join(BUILTIN_TASKS)}"
        )
    if not names:
        raise UnknownTaskError(f"no tasks given; built-in tasks: {', '.join(BUILTIN_TASKS)}")
    return list(dict.fromkeys(names))


def _card(
    task: BuiltinTask, train: Sequence[dict], test: Sequence[dict], seed: int
) -> dict[str, Any]:
    diffs = [r["difficulty"] for r in (*train, *test)]
    hard = sum(1 for d in diffs if d >= 0.7)
    return {
        "task": task.name,
        "kind": task.card_kind,
        "task_kind": task.kind,
        "metric": task.metric,
        "labels": list(task.labels),
        "n_train": len(train),
        "n_test": len(test),
        "seed": seed,
        "source": "routenlp built-in workload generator (synthetic, offline)",
        "license": "Apache-2.0 (generated by RouteNLP)",
        "notes": (
            f"{task.description} Synthetic rows from template grammars, seed {seed}; "
            "extra field 'difficulty' in [0, 1] (routine < 0.45, medium 0.45-0.7, hard >= 0.7; "
            f"{hard} of {len(diffs)} rows hard). Test rows are generated first; train rows "
            "never repeat a test input (case/whitespace-insensitive)."
        ),
    }


def generate_workload(
    out_dir: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    tasks: str | Iterable[str] | None = None,
    on_task: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write `<out>/<task>/{train,test}.jsonl` and `card.json` for the built-in tasks.

    Returns task name -> task directory. `on_task(name)` is called after each task
    (progress reporting).
    """
    names = parse_task_list(tasks)
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for name in names:
        task = BUILTIN_TASKS[name]
        train, test = generate_task_rows(name, seed=seed, n_train=n_train, n_test=n_test)
        task_dir = out / name
        task_dir.mkdir(parents=True, exist_ok=True)
        write_task_rows(task_dir / "train.jsonl", train)
        write_task_rows(task_dir / "test.jsonl", test)
        card = _card(task, train, test, seed)
        (task_dir / "card.json").write_text(
            json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        written[name] = task_dir
        if on_task is not None:
            on_task(name)
    return written


def task_rows(
    task: TaskConfig,
    split: str,
    *,
    seed: int = DEFAULT_SEED,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
) -> list[dict[str, Any]]:
    """Rows of a configured task's split: `<task.data>/<split>.jsonl` when `data` is set,
    else the built-in workload generated in memory (the embedded default)."""
    from routenlp.workloads.io import load_task_split

    if task.data:
        return load_task_split(task.data, split)
    if task.name not in BUILTIN_TASKS:
        raise DataError(
            f"task {task.name!r} has no `data:` directory and is not a built-in workload task",
            hint=f"set data: <dir with {split}.jsonl>, or use one of {', '.join(BUILTIN_TASKS)}",
        )
    if split not in ("train", "test"):
        raise DataError(
            f"the built-in workload has train and test splits only (asked for {split!r})"
        )
    train, test = generate_task_rows(task.name, seed=seed, n_train=n_train, n_test=n_test)
    return train if split == "train" else test
