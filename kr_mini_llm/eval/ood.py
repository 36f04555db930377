"""Which out-of-domain text an evaluation reads: a file the user names (--ood FILE), or the
project's set (kr_mini_llm/data/kolaw.py) in the data folder beside the token shards, made on
first use from konlpy's wheel. When the project's set cannot be made (no network for pip, a bad
wheel), the evaluation goes on without it and says why."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .test_split import EvalError, split_documents

__all__ = ["OodText", "locate_ood"]


@dataclass
class OodText:
    path: Path | None   # None: not evaluated
    note: str           # where it came from, or why it is missing

    def to_dict(self) -> dict:
        return {"text": str(self.path) if self.path else None, "note": self.note}


def _documents_in(path: Path) -> int:
    try:
        return len(split_documents(path.read_text(encoding="utf-8")))
    except UnicodeDecodeError as e:
        raise EvalError(f"--ood {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def locate_ood(named: str | os.PathLike | None, inside: str | os.PathLike | None, fetch: bool = True,
               log=print) -> OodText:
    """`named` must exist and hold documents (separated by blank lines, as prepare_data.py writes
    them). Otherwise the project's set in the data folder that holds the folder `inside` (data/ for
    data/tokens or data/processed), made from the wheel there or pip-downloaded when fetch is True;
    when it cannot be made: OodText(None, why)."""
    if named is not None:
        path = Path(named)
        if not path.is_file():
            raise EvalError(f"--ood {str(path)!r} not found (a UTF-8 text, documents separated by blank lines)")
        if not _documents_in(path):
            raise EvalError(f"--ood {str(path)!r} holds no text")
        return OodText(path, f"{path} (--ood)")
    from ..data.kolaw import default_paths, obtain_kolaw
    from ..data.sources import SourceUnavailable

    data_dir = Path(inside).parent if inside else Path("data")
    text, cache = default_paths(data_dir)
    try:
        obtain_kolaw(text, cache, download=fetch, log=log)
    except SourceUnavailable as e:
        note = (f"out-of-domain set not evaluated: {e}\n(pass --ood FILE for another text, --no_ood to skip it "
                "without trying)")
        log(f"[eval] {note}")
        return OodText(None, note)
    return OodText(text, f"{text} (Korean Constitution and bills, kr_mini_llm/data/kolaw.py)")
