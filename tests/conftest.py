"""Fixtures shared across test folders."""
import pytest

from tests.data.conftest import korean_docs


@pytest.fixture(scope="session")
def token_data(tmp_path_factory):
    """(tokens_dir, tokenizer_path) for a small Korean corpus."""
    from kr_mini_llm.data.pipeline import tokenize_splits
    from kr_mini_llm.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("train_data")
    processed = root / "processed"
    processed.mkdir()
    for split, (n, seed) in {"train": (240, 11), "valid": (12, 12), "test": (12, 13)}.items():
        (processed / f"{split}.txt").write_text("\n\n".join(korean_docs(n, seed=seed)) + "\n", encoding="utf-8")
    tok = train_tokenizer([processed / "train.txt"], vocab_size=512, output_prefix=root / "tokenizer", num_threads=1)
    tokenize_splits(tok, processed, root / "tokens", num_proc=1, progress=False, log=lambda *a, **k: None)
    return root / "tokens", str(tok)
