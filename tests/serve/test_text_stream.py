"""TextStream: pieces add up to the decoded answer; stop strings cut it and never leak, not even in part."""
import random

import pytest

from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.serve.text_stream import TextStream


@pytest.fixture(scope="module")
def tok(token_data):
    return Tokenizer(token_data[1])


def run(tok, ids, stop=()):
    ts = TextStream(tok, stop)
    pieces = []
    for i in ids:
        pieces.append(ts.push(i))
        if ts.stopped:
            break
    pieces.append(ts.flush())
    return pieces, ts


def test_pieces_add_up_to_the_decoded_text_including_split_characters(tok):
    ids = tok.encode("서울의 봄은 따뜻합니다. 😀 한국어!")
    ids += [tok.piece_to_id(f"<0x{b:02X}>") for b in "읽".encode()]  # one character over three tokens
    assert len(ids) > len(tok.decode(ids))  # (this small tokenizer spells many characters in bytes)
    pieces, ts = run(tok, ids)
    assert "".join(pieces) == tok.decode(ids) and not ts.stopped
    assert all("\ufffd" not in p for p in pieces)  # a split character comes out whole


def test_stop_string_cuts_the_text_and_no_part_of_it_is_sent_early(tok):
    rng = random.Random(0)
    text = "오늘 날씨가 좋아서 공원에 갔습니다. 나무 아래에서 책을 읽었습니다."
    ids = tok.encode(text)
    for _ in range(30):
        a = rng.randrange(1, len(text) - 3)
        stop = text[a:a + rng.randint(1, 4)]
        pieces, ts = run(tok, ids, [stop, "없는문자열"])
        full = tok.decode(ids)
        assert ts.stopped and "".join(pieces) == full[:full.index(stop)]
        for k in range(1, len(pieces) + 1):  # no prefix of the output ever contains the stop string
            assert stop not in "".join(pieces[:k])


def test_held_back_prefix_is_released_when_it_is_not_a_stop(tok):
    ids = tok.encode("가나다 가나라")
    pieces, ts = run(tok, ids, ["가나다라"])
    assert not ts.stopped and "".join(pieces) == tok.decode(ids)
