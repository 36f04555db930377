import pytest

from kr_mini_llm.data.split import parse_ratios, split_documents
from .conftest import korean_docs


def test_split_by_document_disjoint_complete_and_seeded():
    docs = korean_docs(400, seed=9)
    assert len(set(docs)) == len(docs)
    a = split_documents(docs, (0.98, 0.01, 0.01), seed=1)
    assert (len(a["train"]), len(a["valid"]), len(a["test"])) == (392, 4, 4)
    sets = {k: set(v) for k, v in a.items()}
    assert not (sets["train"] & sets["valid"]) and not (sets["train"] & sets["test"]) and not (sets["valid"] & sets["test"])
    assert sets["train"] | sets["valid"] | sets["test"] == set(docs)
    assert split_documents(docs, (0.98, 0.01, 0.01), seed=1) == a
    assert split_documents(docs, (0.98, 0.01, 0.01), seed=2)["valid"] != a["valid"]
    # documents stay whole and in corpus order within a split
    order = {d: i for i, d in enumerate(docs)}
    assert [order[d] for d in a["train"]] == sorted(order[d] for d in a["train"])


def test_split_small_corpus_gets_valid_and_test():
    a = split_documents(["가", "나", "다", "라", "마"], (0.98, 0.01, 0.01), seed=0)
    assert len(a["valid"]) == 1 and len(a["test"]) == 1 and len(a["train"]) == 3


def test_parse_ratios_and_errors():
    assert parse_ratios("98/1/1") == pytest.approx((0.98, 0.01, 0.01))
    assert parse_ratios("8,1,1") == pytest.approx((0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="expected three non-negative numbers"):
        parse_ratios("90/10")
    with pytest.raises(ValueError, match="empty corpus"):
        split_documents([], (0.98, 0.01, 0.01))


def test_auto_split_gives_small_corpora_evaluation_sets_that_can_decide():
    from kr_mini_llm.data.split import EVAL_SPLIT_BYTES, auto_ratios

    assert parse_ratios("auto") is None and parse_ratios(" AUTO ") is None
    for size in (10_000, 1_000_000, 3_820_000, 20_000_000, 10 ** 9, None):
        train, valid, test = auto_ratios(size)
        assert valid == test and 0.01 <= valid <= 0.05 and train + valid + test == pytest.approx(1.0)
        if size and 0.01 * size <= EVAL_SPLIT_BYTES <= 0.05 * size:
            assert valid * size == pytest.approx(EVAL_SPLIT_BYTES)
    assert auto_ratios(3_820_000)[1] > 0.04      # the built-in corpus: ~5%, not 1%
    assert auto_ratios(10 ** 9)[1] == 0.01 and auto_ratios(None)[1] == 0.01
