"""Small corpora written by the tests themselves: Korean sentences built from word lists, mixed
with junk (HTML, English, duplicates, near-duplicates, invalid UTF-8, empty files)."""
import random

import pytest

SUBJECTS = ["나는", "우리 가족은", "그 학생은", "할머니께서는", "작은 고양이가", "이웃 사람들은", "선생님은",
            "친구와 나는", "동생은", "회사 동료들은", "아이들은", "마을 사람들은"]
PLACES = ["공원에서", "도서관에서", "바닷가에서", "시장에서", "학교 앞에서", "산길을 따라", "부엌에서",
          "기차역 근처에서", "강가에서", "작은 카페에서"]
OBJECTS = ["책을", "사과를", "편지를", "노래를", "그림을", "김치찌개를", "사진을", "꽃을", "자전거를", "연을"]
VERBS = ["읽었습니다.", "샀습니다.", "썼습니다.", "불렀습니다.", "그렸습니다.", "만들었습니다.",
         "찍었습니다.", "심었습니다.", "고쳤습니다.", "날렸습니다."]
TIMES = ["어제", "오늘 아침", "지난 주말에", "봄이 오면", "저녁 늦게", "비 오는 날", "방학 동안", "새벽에"]


def korean_sentence(rng: random.Random) -> str:
    return f"{rng.choice(TIMES)} {rng.choice(SUBJECTS)} {rng.choice(PLACES)} {rng.choice(OBJECTS)} {rng.choice(VERBS)}"


def korean_doc(rng: random.Random, paragraphs=3, sentences=4) -> str:
    return "\n".join(" ".join(korean_sentence(rng) for _ in range(sentences)) for _ in range(paragraphs))


def korean_docs(n, seed=0, **kw):
    rng = random.Random(seed)
    return [korean_doc(rng, **kw) for _ in range(n)]


@pytest.fixture(scope="session")
def korean_corpus_file(tmp_path_factory):
    """A plain text file of Korean documents (blank-line separated) for tokenizer training."""
    p = tmp_path_factory.mktemp("corpus") / "ko.txt"
    p.write_text("\n\n".join(korean_docs(300, seed=1)) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, korean_corpus_file):
    from kr_mini_llm.data.tokenizer import Tokenizer, train_tokenizer
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    model = train_tokenizer([korean_corpus_file], vocab_size=400, output_prefix=out, num_threads=1)
    return Tokenizer(model)


@pytest.fixture()
def junk_corpus_dir(tmp_path):
    """A directory mixing Korean documents with junk. Returns (dir, korean_docs_written)."""
    d = tmp_path / "raw"
    d.mkdir()
    docs = korean_docs(60, seed=2)
    rng = random.Random(3)
    # plain text: documents separated by blank lines, plus an English document and an exact duplicate
    english = "This paragraph is written entirely in English and should be filtered out by the Hangul ratio.\n" * 3
    (d / "a.txt").write_text("\n\n".join(docs[:30] + [english, docs[0]]) + "\n", encoding="utf-8")
    # HTML page with a script and navigation
    html = ("<html><head><title>t</title><style>p{color:red}</style></head><body><nav>메뉴 홈 로그인 메뉴 홈</nav>"
            "<script>var x = '스크립트 안의 한글은 빠져야 합니다';</script>"
            + "".join(f"<p>{p}</p>" for p in docs[30].split("\n")) + "</body></html>")
    (d / "b.html").write_text(html, encoding="utf-8")
    # JSONL with a near-duplicate (one word changed) of docs[1]
    import json
    near = docs[1].replace("어제", "그제", 1) if "어제" in docs[1] else docs[1] + " 끝."
    with open(d / "c.jsonl", "w", encoding="utf-8") as f:
        for t in docs[31:59] + [near]:
            f.write(json.dumps({"text": t, "id": rng.random()}, ensure_ascii=False) + "\n")
    # invalid UTF-8 bytes inside a Korean document
    (d / "d.txt").write_bytes(docs[59].encode("utf-8")[:30] + b"\xff\xfe\xc3" + docs[59].encode("utf-8")[30:])
    (d / "empty.txt").write_bytes(b"")
    return d, docs
