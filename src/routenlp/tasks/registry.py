"""Task registry keyed by TaskConfig.kind.

`get_task_spec(task)` resolves the label set (config -> the dataset's card.json -> the
built-in workload) and returns the kind's TaskSpec. Specs are cached per task config, so
hot paths (labelling, the server) can call it per request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from routenlp.config import TASK_KINDS, TaskConfig
from routenlp.errors import ConfigError, DataError, UnknownTaskError
from routenlp.tasks.base import CLASSIFICATION_KINDS, DEFAULT_ENTITY_TYPES, TaskSpec
from routenlp.tasks.metrics import normalise_entity_type

SpecFactory = Callable[[TaskConfig], TaskSpec]
_REGISTRY: dict[str, SpecFactory] = {}
_CACHE: dict[str, TaskSpec] = {}
_LOCK = threading.Lock()


def register_task_kind(kind: str) -> Callable[[SpecFactory], SpecFactory]:
    """Register a TaskSpec factory for a task kind (plug-in point for new kinds)."""

    def deco(factory: SpecFactory) -> SpecFactory:
        _REGISTRY[kind] = factory
        _CACHE.clear()
        return factory

    return deco


def read_card(data_dir: str | Path) -> dict | None:
    """The dataset's card.json as a dict, or None when the directory has none."""
    path = Path(data_dir).expanduser() / "card.json"
    if not path.exists():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(card, dict):
        raise DataError(f"{path}: expected a JSON object")
    return card


def _card_labels(task: TaskConfig) -> list[str] | None:
    if not task.data:
        return None
    card = read_card(task.data)
    labels = (card or {}).get("labels")
    if labels is None or labels == []:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{Path(task.data) / 'card.json'}: 'labels' must be a list of strings")
    return labels


def _builtin_labels(name: str) -> list[str] | None:
    from routenlp.workloads import builtin_labels

    return builtin_labels(name)


def resolve_labels(task: TaskConfig) -> list[str]:
    """Labels of a classification task: task.labels, else <data>/card.json, else the
    built-in workload's label set for this task name."""
    labels = task.labels or _card_labels(task) or _builtin_labels(task.name)
    if not labels:
        where = f"{task.data}/card.json" if task.data else "the built-in workload"
        raise UnknownTaskError(
            f"task {task.name!r} ({task.kind}): no label set found in the config or {where}",
            hint="add `labels: [...]` to the task, or point `data:` at a dataset whose "
            "card.json lists 'labels'",
        )
    return list(labels)


def _entity_types(task: TaskConfig) -> list[str]:
    types = task.labels or _card_labels(task) or _builtin_labels(task.name)
    if not types:
        return list(DEFAULT_ENTITY_TYPES)
    return list(dict.fromkeys(normalise_entity_type(t) for t in types))


def _classification(task: TaskConfig) -> TaskSpec:
    return TaskSpec(task, labels=resolve_labels(task))


def _extraction(task: TaskConfig) -> TaskSpec:
    return TaskSpec(task, entity_types=_entity_types(task))


def _generation(task: TaskConfig) -> TaskSpec:
    return TaskSpec(task)


def _generic(task: TaskConfig) -> TaskSpec:
    # generic tasks classify only when labels are given explicitly or by the dataset card
    labels = task.labels or _card_labels(task)
    return TaskSpec(task, labels=labels)


for _kind in CLASSIFICATION_KINDS:
    _REGISTRY[_kind] = _classification
_REGISTRY["entity_extraction"] = _extraction
_REGISTRY["reply_generation"] = _generation
_REGISTRY["summarisation"] = _generation
_REGISTRY["generic"] = _generic
assert set(_REGISTRY) == set(TASK_KINDS), "every config task kind needs a spec factory"


def get_task_spec(task: TaskConfig) -> TaskSpec:
    """The TaskSpec for a configured task (cached by the task's full config)."""
    key = task.model_dump_json()
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    factory = _REGISTRY.get(task.kind)
    if factory is None:
        raise ConfigError(
            f"task {task.name!r}: unknown kind {task.kind!r}; known: {sorted(_REGISTRY)}"
        )
    spec = factory(task)
    with _LOCK:
        _CACHE[key] = spec
    return spec


def clear_cache() -> None:
    """Forget cached specs (a card.json changed on disk)."""
    with _LOCK:
        _CACHE.clear()
