"""Shared CLI plumbing: clean error reporting, rich console and progress bars."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from routenlp.errors import RouteNLPError

# Piped output (CI logs, `make demo > log`) gets a wide fixed width instead of rich's 80
# columns, so result tables keep one line per row.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])


def progress() -> Progress:
    """A progress bar for long steps (labelling, training, conversion)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def friendly_errors(fn: F) -> F:
    """Turn user-fixable errors into one clear message and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RouteNLPError as err:
            # escape: messages quote user text and extras like routenlp[ray] verbatim
            err_console.print(f"[bold red]error:[/] {escape(err.message)}")
            if err.hint:
                err_console.print(f"[yellow]hint:[/] {escape(err.hint)}")
            sys.exit(2)
        except FileNotFoundError as err:
            err_console.print(f"[bold red]error:[/] file not found: {err.filename or err}")
            sys.exit(2)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def write_json(path: str | Path, payload: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
