"""One exception type for every user-facing problem, so the CLI and server can print it
cleanly (never a traceback) and say what to do."""

from __future__ import annotations


class RouteNLPError(Exception):
    """A problem caused by input or environment that the user can fix."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(RouteNLPError):
    """The ensemble config (or a models.json) is invalid."""


class UnknownTaskError(RouteNLPError):
    """A task name that the config or artifact does not know."""


class TierError(RouteNLPError):
    """A tier could not answer (unreachable, timed out, malformed answer, not fitted)."""


class DataError(RouteNLPError):
    """An input file is missing or malformed."""


class BrowserError(RouteNLPError):
    """Headless Chromium (the report screenshot check) is missing or failed."""
