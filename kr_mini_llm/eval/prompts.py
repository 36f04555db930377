"""The project's default Korean prompts for scripts/evaluate.py's samples, and --prompts files."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import KrMiniLlmError

__all__ = ["DEFAULT_PROMPTS", "read_prompts", "PromptsError"]

# Written for this project: open continuations across everyday topics, styles and lengths
# (news, explanation, story, dialogue, list, definition), so samples show range, not one genre.
DEFAULT_PROMPTS = (
    "대한민국의 수도는",
    "오늘 날씨가",
    "한국어는 교착어이기 때문에",
    "김치찌개를 맛있게 끓이려면 먼저",
    "옛날 옛적에 깊은 산속 작은 마을에",
    "컴퓨터 프로그램을 처음 배우는 사람에게 가장 중요한 것은",
    "서울에서 부산까지 기차로 가면",
    "\"내일 시간 있어?\" 친구가 물었다.",
    "광합성이란 식물이",
    "이 제품의 장점은 다음과 같다. 첫째,",
)


class PromptsError(KrMiniLlmError, ValueError):
    """A --prompts file that cannot be used."""


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line, UTF-8; blank lines and lines starting with '#' are skipped;
    '\\n' inside a line stands for a line break."""
    p = Path(path)
    if not p.is_file():
        raise PromptsError(f"prompts file not found: {str(p)!r}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise PromptsError(f"{str(p)!r} is not UTF-8 (bad byte 0x{raw[e.start]:02x} on line {line}); save it as "
                           f"UTF-8, e.g. `iconv -f cp949 -t utf-8 {p} > prompts.txt`") from None
    prompts = [ln.replace("\\n", "\n") for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise PromptsError(f"{str(p)!r} holds no prompts (one per line; '#' starts a comment)")
    return prompts
