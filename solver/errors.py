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


def validation_problem(error, known_fields=()) -> tuple[tuple, str]:
    """The one problem to report from a pydantic ValidationError: (location, message).

    An unknown field comes first (a typo such as `bandwith_tb_s` also makes the real field look
    missing), with the closest known field suggested; pydantic's "Value error, " prefix goes.
    """
    import difflib

    problems = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = problems[0]
    location = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        name = str(location[-1]) if location else "?"
        close = difflib.get_close_matches(name, list(known_fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return location, f"unknown field {name!r}{hint}"
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace("a valid tuple", "a list").replace("a valid dictionary", "a table")
    return location, message[:1].lower() + message[1:]
