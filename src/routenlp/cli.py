"""The `routenlp` command line. Each area registers its own verbs from a `commands.py`
module, so the CLI stays one entry point while the code stays with its concept.

Conventions shared by every verb live here, once: `--version`, shell completion, the
logging options (`--quiet`, `--verbose`, `--log-level`) and the error policy (every
expected error becomes one line and exit code 2, via `cli_utils.report_error`)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from routenlp.cli_groups import GROUPS
from routenlp.cli_utils import (
    PASS_THROUGH,
    ClickException,
    err_console,
    report_error,
    setup_logging,
)


class RouteNLPGroup(TyperGroup):
    """The root command group: applies the error policy to every (sub)command it runs."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PASS_THROUGH:
            raise
        except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - re-raised when a bug
            code = report_error(err)
            if code is None:
                raise
            raise typer.Exit(code) from None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Usage errors (bad option value, missing option) also become one line, exit 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError" or not err.format_message().strip():
                err.show()  # `routenlp` / `routenlp bench` alone: the help text, as click does
                sys.exit(err.exit_code)
            err_console.print(f"[bold red]error:[/] {err.format_message()}", highlight=False)
            ctx = getattr(err, "ctx", None)
            if ctx is not None:
                err_console.print(
                    f"[yellow]hint:[/] try '{ctx.command_path} --help'", highlight=False
                )
            sys.exit(err.exit_code)
        except typer.Abort:
            err_console.print("[yellow]aborted[/]")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def package_version() -> str:
    """The installed distribution's version (the source tree's when run uninstalled)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("routenlp")
    except PackageNotFoundError:
        from routenlp import __version__

        return __version__


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"routenlp {package_version()}")
        raise typer.Exit()


app = typer.Typer(
    name="routenlp",
    cls=RouteNLPGroup,
    help="Closed-loop LLM routing: route each request to the cheapest tier that meets the "
    "task's quality bar, check it with a calibrated confidence test, escalate when it fails.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True,
        help="print the version and exit",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="errors only: no progress bars or informational lines"
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="more log output (-v info, -vv debug)"
    ),
    log_level: Optional[str] = typer.Option(
        None, "--log-level", envvar="ROUTENLP_LOG_LEVEL",
        help="debug, info, warning, error or critical (overrides -q/-v)",
    ),
) -> None:
    """Options that apply to every command (put them before the command name)."""
    del version
    setup_logging(quiet=quiet, verbose=verbose, level=log_level)


for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)

# Modules that define `register(app: typer.Typer) -> None`.
COMMAND_MODULES = (
    "routenlp.models.commands",
    "routenlp.tiers.commands",
    "routenlp.workloads.commands",
    "routenlp.labeling",
    "routenlp.router.commands",
    "routenlp.conformal.commands",
    "routenlp.bench.commands",
    "routenlp.loop.commands",
    "routenlp.demo",
    "routenlp.server.commands",
)

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
