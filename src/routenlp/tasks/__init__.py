"""Task registry: prompt templates, output parsers and per-sample quality metrics."""

from routenlp.tasks.base import CLASSIFICATION_KINDS, TaskSpec, family_of
from routenlp.tasks.metrics import accuracy, bertscore_f1, entity_f1, macro_f1, rouge_l
from routenlp.tasks.parsers import clean_generation, format_entities, parse_entities, parse_label
from routenlp.tasks.registry import (
    clear_cache,
    get_task_spec,
    read_card,
    register_task_kind,
    resolve_labels,
)

__all__ = [
    "CLASSIFICATION_KINDS",
    "TaskSpec",
    "accuracy",
    "bertscore_f1",
    "clean_generation",
    "clear_cache",
    "entity_f1",
    "family_of",
    "format_entities",
    "get_task_spec",
    "macro_f1",
    "parse_entities",
    "parse_label",
    "read_card",
    "register_task_kind",
    "resolve_labels",
    "rouge_l",
]
