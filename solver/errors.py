"""Domain errors: what the CLI turns into one line on stderr and an exit code."""

from __future__ import annotations


class QuantplanError(Exception):
    """Bad input: unknown id, impossible value, malformed file. Exit code 2."""

    exit_code = 2


class InfeasibleError(QuantplanError):
    """The problem has no solution; the message says what cannot be met and what could. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or [message]


class PluginError(QuantplanError):
    """A plugin failed to load or raised, and strict mode makes that fatal."""
