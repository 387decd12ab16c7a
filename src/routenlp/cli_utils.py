"""Shared CLI plumbing: the one error-to-message mapping (`friendly_errors`), the one
logging setup, option range checks, rich console and progress bars."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml
from pydantic import ValidationError
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

# The click that typer runs on (recent typer releases vendor their own copy): its base
# class of usage errors, found through a public typer exception so no private import.
ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)

# Piped output (CI logs, `make demo > log`) gets a wide fixed width instead of rich's 80
# columns, so result tables keep one line per row.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells and other CLIs return on Ctrl-C
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# -- output mode ----------------------------------------------------------------------
_QUIET = False


def is_quiet() -> bool:
    """True under `--quiet`: progress bars and informational lines are suppressed."""
    return _QUIET


def progress() -> Progress:
    """A progress bar for long steps (labelling, training, conversion); off with --quiet."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=_QUIET,
    )


def info(message: str) -> None:
    """An informational line on stderr (kept off stdout so `--json` output stays parseable)."""
    if not _QUIET:
        err_console.print(message)


def print_json(payload: Any) -> None:
    """Machine-readable output on stdout: one JSON document, nothing else on that stream."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


STDOUT = "-"


def json_to_stdout(path: str | Path | None) -> bool:
    """`--json -`: the command's JSON document goes to stdout, so its tables and notes move
    to stderr and stdout stays one parseable document (`friendly_errors` moves them back)."""
    if path is not None and str(path) == STDOUT:
        console.file = sys.stderr
        return True
    return False


def write_json(path: str | Path, payload: Any) -> None:
    """Write `payload` to the file `path`, or to stdout when `path` is `-`."""
    if str(path) == STDOUT:
        print_json(payload)
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


# -- logging ----------------------------------------------------------------------------
def parse_log_level(value: str | None) -> int | None:
    """`--log-level` text -> logging level; a bogus name is a usage error naming the option."""
    if value is None:
        return None
    name = value.strip().lower()
    if name not in LOG_LEVELS:
        raise typer.BadParameter(
            f"unknown level {value!r}; choose one of {', '.join(LOG_LEVELS)}",
            param_hint="'--log-level'",
        )
    return getattr(logging, name.upper())


def setup_logging(*, quiet: bool = False, verbose: int = 0, level: str | None = None) -> int:
    """The one logging setup of every command: rich handler on stderr, `routenlp.*` loggers.

    Precedence: --log-level, then --quiet (errors only), then -v (info) / -vv (debug);
    the default is warning. Returns the level set."""
    global _QUIET
    _QUIET = quiet
    chosen = parse_log_level(level)
    if chosen is None:
        if quiet:
            chosen = logging.ERROR
        elif verbose >= 2:
            chosen = logging.DEBUG
        elif verbose == 1:
            chosen = logging.INFO
        else:
            chosen = logging.WARNING
    from rich.logging import RichHandler

    root = logging.getLogger("routenlp")
    for h in list(root.handlers):
        if getattr(h, "_routenlp", False):
            root.removeHandler(h)
    handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
    handler._routenlp = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(chosen)
    root.propagate = False
    return chosen


# -- errors -----------------------------------------------------------------------------
def _validation_message(err: ValidationError) -> str:
    errors = err.errors()
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"invalid {err.title}: " + "; ".join(parts) + more


def error_message(err: BaseException) -> tuple[str, str | None] | None:
    """(message, hint) for an expected, user-fixable error; None for a real bug."""
    if isinstance(err, RouteNLPError):
        return err.message, err.hint
    if isinstance(err, ModuleNotFoundError):
        from routenlp.extras import missing_extra

        found = missing_extra(err.name or "")
        return None if found is None else (found.message, found.hint)
    if isinstance(err, ValidationError):
        return _validation_message(err), None
    if isinstance(err, IsADirectoryError):
        return f"{err.filename or err} is a directory, not a file", "pass a file path"
    if isinstance(err, FileNotFoundError):
        return f"file not found: {err.filename or err}", None
    if isinstance(err, NotADirectoryError):
        return f"not a directory: {err.filename or err}", None
    if isinstance(err, PermissionError):
        return f"permission denied: {err.filename or err}", None
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})", None
    if isinstance(err, yaml.YAMLError):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not valid YAML: {first}", None
    if isinstance(err, UnicodeDecodeError):
        return f"input is not UTF-8 text ({err.reason} at byte {err.start})", None
    return None


# Exceptions the CLI framework itself handles (usage errors, explicit exits).
PASS_THROUGH = (ClickException, typer.Exit, typer.Abort, SystemExit)


def report_error(err: BaseException) -> int | None:
    """Print an expected error as one line (plus an optional hint) and return its exit code.

    Returns None for anything else (a bug: let the traceback through)."""
    if isinstance(err, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    found = error_message(err)
    if found is None:
        return None
    message, hint = found
    # escape: messages quote user text and extras like routenlp[ray] verbatim
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False)
    return EXIT_USER_ERROR


def friendly_errors(fn: F) -> F:
    """Turn user-fixable errors into one clear message and exit code 2, never a traceback.

    The root app applies this to every command centrally (`cli.RouteNLPGroup`); the
    decorator stays usable for entry points called outside the app."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - re-raised when a bug
            if isinstance(err, PASS_THROUGH):
                raise
            code = report_error(err)
            if code is None:
                raise
            raise typer.Exit(code) from None
        finally:
            console.file = None  # type: ignore[assignment] # back to stdout after `--json -`

    return wrapper  # type: ignore[return-value]


# -- option ranges ------------------------------------------------------------------------
def in_range(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Callable[[Any], Any]:
    """A Typer option callback enforcing lo <= x <= hi (open ends with lo_open/hi_open).

    Usage: `alpha: float = typer.Option(0.05, "--alpha", callback=in_range(0, 1,
    lo_open=True, hi_open=True))`. The error names the option (click adds it) and the
    range; None (an unset optional option) passes through."""
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def check(value: Any) -> Any:
        if value is None:
            return value
        x = float(value)
        bad = math.isnan(x)
        if lo is not None:
            bad = bad or (x <= lo if lo_open else x < lo)
        if hi is not None:
            bad = bad or (x >= hi if hi_open else x > hi)
        if bad:
            raise typer.BadParameter(f"{value} is not in the range {span}")
        return value

    return check


# Ready-made checks for the cascade/task options (alpha, delta-conf: a probability in
# (0, 1); tau: a quality bar in [0, 1]; sla-ms: a positive latency budget).
probability = in_range(0, 1, lo_open=True, hi_open=True)
unit_interval = in_range(0, 1)
positive = in_range(0, None, lo_open=True)
