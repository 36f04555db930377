"""Bad input: a clear error before any file is written, from the API and from scripts/export.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kr_mini_llm.export import ExportError, export_model

from .conftest import make_adapters, random_model, save_model, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def listing(d):
    return sorted(p.name for p in Path(d).iterdir())


def test_existing_output_is_refused(llama_dir, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_model(llama_dir, tmp_path / "m.gguf", "gguf", "f32")
    assert (tmp_path / "m.gguf").read_bytes() == b"keep me" and listing(tmp_path) == ["m.gguf"]
    (tmp_path / "n.Modelfile").write_text("FROM x\n")          # the Modelfile beside it exists
    with pytest.raises(ExportError, match="n.Modelfile already exists"):
        export_model(llama_dir, tmp_path / "n.gguf", "gguf", "f32")
    (tmp_path / "hf").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_model(llama_dir, tmp_path / "hf", "hf", "f32")
    assert listing(tmp_path) == ["hf", "m.gguf", "n.Modelfile"] and listing(tmp_path / "hf") == []


@pytest.mark.parametrize("scaling,match", [
    ({"type": "ntk", "factor": 2.0, "original_max_position_embeddings": 64}, "no dynamic NTK"),
    ({"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}, "yarn"),
])
def test_rope_scaling_llama_cpp_lacks(tokenizer_file, tmp_path, scaling, match):
    d = save_model(random_model(tiny_config(rope_scaling=scaling)), tmp_path / "model", tokenizer_file)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match=match):
        export_model(d, out / "m.gguf", "gguf", "q8_0")
    assert listing(out) == []


def test_tokenizer_larger_than_the_vocabulary(tokenizer_file, tmp_path):
    d = save_model(random_model(tiny_config(vocab_size=300)), tmp_path / "model", tokenizer_file)
    for fmt, name in (("gguf", "m.gguf"), ("hf", "hf")):
        with pytest.raises(ExportError, match=r"512 pieces but the model in .* has 300 embedding rows"):
            export_model(d, tmp_path / name, fmt, "f32")
    assert listing(tmp_path) == ["model"]


def test_adapters_of_another_model(qwen3_dir, llama_dir, tmp_path):
    adapters = make_adapters(llama_dir, tmp_path / "adapters")
    with pytest.raises(ExportError, match="fingerprint"):
        export_model(qwen3_dir, tmp_path / "m.gguf", "gguf", "f32", adapter_path=adapters)
    with pytest.raises(ExportError, match="adapter weights not found|adapter_config"):
        export_model(llama_dir, tmp_path / "m.gguf", "gguf", "f32", adapter_path=tmp_path / "nowhere")
    assert listing(tmp_path) == ["adapters"]


def test_bad_format_outtype_and_directory(llama_dir, tmp_path):
    with pytest.raises(ExportError, match="not available for hf"):
        export_model(llama_dir, tmp_path / "hf", "hf", "q8_0")
    with pytest.raises(ExportError, match="not one of"):
        export_model(llama_dir, tmp_path / "m.onnx", "onnx", "f32")
    with pytest.raises(ExportError, match="does not exist; create it first"):
        export_model(llama_dir, tmp_path / "missing" / "m.gguf", "gguf", "f32")
    assert listing(tmp_path) == []


def test_script_says_what_is_wrong_in_one_line(llama_dir, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "export.py"), "--model", str(llama_dir), "--format",
                        "gguf", "--output", str(tmp_path / "m.gguf")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'm.gguf'} already exists (a file); choose another "
                                              "--output, or pass --overwrite to replace it"]
