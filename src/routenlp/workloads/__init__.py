"""The built-in six-task enterprise workload (embedded default) and task JSONL I/O."""

from routenlp.workloads.generator import (
    BUILTIN_TASK_NAMES,
    BUILTIN_TASKS,
    DIFFICULTY_MIX,
    BuiltinTask,
    builtin_labels,
    builtin_task_configs,
    generate_task_rows,
    generate_workload,
    parse_task_list,
    task_rows,
)
from routenlp.workloads.io import load_task_rows, load_task_split, write_task_rows

__all__ = [
    "BUILTIN_TASKS",
    "BUILTIN_TASK_NAMES",
    "DIFFICULTY_MIX",
    "BuiltinTask",
    "builtin_labels",
    "builtin_task_configs",
    "generate_task_rows",
    "generate_workload",
    "load_task_rows",
    "load_task_split",
    "parse_task_list",
    "task_rows",
    "write_task_rows",
]
