"""The one base of every error that is the user's to fix: a bad flag, file, config or input.

Such an error is printed by every command as one line, `error: <message>`, and ends it with
EXIT_USER_ERROR; anything else is a bug in kr-mini-llm and keeps its traceback. The subclasses
also derive from the builtin they used to be (ValueError, RuntimeError, ...), so code that catches
those still works.
"""
from __future__ import annotations

import sys

__all__ = ["KrMiniLlmError", "ConfigError", "EXIT_USER_ERROR", "format_error", "report_error"]

EXIT_USER_ERROR = 2  # as argparse exits on a bad flag


class KrMiniLlmError(Exception):
    """An error whose message says what is wrong and how to fix it."""


class ConfigError(KrMiniLlmError, ValueError):
    """A config file, dict or value the config readers refuse, naming the file, line and key.

    The C++ readers (kr_mini_llm._C) raise this class too, so it is defined here, where the
    native module can import it: this module imports nothing of the package."""


def format_error(error: BaseException, prefix: str = "") -> str:
    """The one line a command prints for a user error."""
    return f"{prefix}error: {error}"


def report_error(error: BaseException, prefix: str = "") -> int:
    """Prints `error` as a command does and returns the exit code to end with."""
    print(format_error(error, prefix), file=sys.stderr)
    return EXIT_USER_ERROR
