"""The `routenlp` command line. Each area registers its own verbs from a `commands.py`
module, so the CLI stays one entry point while the code stays with its concept."""

from __future__ import annotations

import importlib

import typer

from routenlp.cli_groups import GROUPS

app = typer.Typer(
    name="routenlp",
    help="Closed-loop LLM routing: route each request to the cheapest tier that meets the "
    "task's quality bar, check it with a calibrated confidence test, escalate when it fails.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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
)

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
