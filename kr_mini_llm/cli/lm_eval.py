"""`scripts/run_lm_eval.py`: lm_eval's own command line, with our model and tasks registered, and
a clear message when a task's data has to come from the Hugging Face Hub and cannot."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import KrMiniLlmError
from .command import command

TASKS_DIR = Path(__file__).resolve().parents[1] / "eval" / "tasks"


def _with_include_path(argv: list[str]) -> list[str]:
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--include_path" and i + 1 < len(argv):
            argv[i + 1] = f"{argv[i + 1]}:{TASKS_DIR}" if str(TASKS_DIR) not in argv[i + 1] else argv[i + 1]
            return argv
        if a.startswith("--include_path="):
            argv[i] = f"{a}:{TASKS_DIR}"
            return argv
    if argv and argv[0] in ("run", "validate") or any(a.startswith("--tasks") for a in argv):
        argv += ["--include_path", str(TASKS_DIR)]
    return argv


def _is_download_failure(e: BaseException) -> bool:
    """An error from fetching a dataset (the Hub unreachable, offline mode, not cached)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__
        if mod.startswith(("huggingface_hub", "requests", "httpx", "urllib3", "datasets")) or \
                isinstance(e, (ConnectionError, TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    return False


def _task_names(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--tasks" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--tasks="):
            return a.split("=", 1)[1]
    return "?"


@command()
def main(argv: list[str] | None = None) -> int:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise KrMiniLlmError("lm-eval is not installed: pip install 'lm-eval==0.4.13' "
                             "(or `pip install -e .[test]`)") from None
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    from ..eval import harness  # noqa: F401  registers "kr-mini-llm"

    argv = _with_include_path(sys.argv[1:] if argv is None else argv)
    setup_logging()
    cli = HarnessCLI()
    saved, sys.argv = sys.argv, ["lm_eval", *argv]
    try:
        args = cli.parse_args()
        cli.execute(args)
    except Exception as e:  # noqa: BLE001 - only download failures are rewritten; the rest re-raised
        if not _is_download_failure(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KrMiniLlmError(
            f"task(s) {_task_names(argv)} need data from the Hugging Face Hub, which could not be fetched "
            f"({type(e).__name__}: {first[:300]}).\n   Run where the Hub is reachable (the data is cached in "
            f"~/.cache/huggingface for later offline runs with HF_DATASETS_OFFLINE=1), or use the project's "
            f"offline task: --tasks ko_next_sentence") from None
    finally:
        sys.argv = saved
    return 0
