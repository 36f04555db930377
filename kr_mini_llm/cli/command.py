"""How every command ends on an error, written once: each `main(argv, prog)` of kr_mini_llm/cli/ is
decorated with `@command(...)`, so `kr-mini-llm NAME`, `python scripts/NAME.py` and a test calling
`main([...])` all end the same way.

A user error (KrMiniLlmError, ConfigError included, and the builtins a command names because the
libraries under it raise them for bad input) prints `error: <message>` and returns EXIT_USER_ERROR;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools

from ..errors import KrMiniLlmError, report_error

__all__ = ["command", "is_user_error"]


def is_user_error(error: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    return isinstance(error, (KrMiniLlmError, *also))


def command(*also: type[BaseException], prefix: str = ""):
    """Decorates a command's main: a user error becomes one `{prefix}error: ...` line on stderr and
    the return value EXIT_USER_ERROR. `also`: builtin exceptions this command treats as user errors."""
    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except Exception as e:
                if not is_user_error(e, also):
                    raise
                return report_error(e, prefix)
        return run
    return decorate
