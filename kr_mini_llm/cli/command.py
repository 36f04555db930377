"""How every command ends on an error, written once: each `main(argv, prog)` of kr_mini_llm/cli/ is
decorated with `@command(...)`, so `kr-mini-llm NAME`, `python scripts/NAME.py` and a test calling
`main([...])` all end the same way.

A user error (KrMiniLlmError, a config file's ConfigError, and the builtins a command names because
the libraries under it raise them for bad input) prints `error: <message>` and returns
EXIT_USER_ERROR; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys

from ..errors import KrMiniLlmError, report_error

__all__ = ["command", "is_user_error"]


def is_user_error(error: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    # ConfigError is defined by the C++ extension, so it cannot derive from KrMiniLlmError; one can
    # only have been raised if _C is loaded, so this looks it up without importing torch.
    config_error = getattr(sys.modules.get("kr_mini_llm._C"), "ConfigError", None)
    kinds = (KrMiniLlmError, *also, *((config_error,) if config_error is not None else ()))
    return isinstance(error, kinds)


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
