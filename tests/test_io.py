"""io/: the atomic writes every writer uses, and checkpoint.load_model, the one loader of
a model directory (checkpoint, output directory, sharded checkpoint, HF directory)."""
import ast
from pathlib import Path

import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig
from kr_mini_llm.io import layout
from kr_mini_llm.io.atomic import atomic_write, atomic_write_text, staged_directory
from kr_mini_llm.training import TrainingConfig
from kr_mini_llm.checkpoint import CheckpointError, load_model
from kr_mini_llm.training.run_checkpoint import save_checkpoint
from kr_mini_llm.training.optim import build_optimizer

from .test_import_layers import assert_no_circle

PACKAGE = Path(__file__).resolve().parents[1] / "kr_mini_llm"


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_staged_directory_swaps_in_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with staged_directory(out) as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1"
    with pytest.raises(RuntimeError, match="boom"), staged_directory(out) as tmp:
        (tmp / "x").write_text("2")
        raise RuntimeError("boom")
    assert (out / "x").read_text() == "1"          # the complete old copy stays
    with staged_directory(out) as tmp:
        (tmp / "y").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["y"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _config():
    return TransformerConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                             intermediate_size=64, max_seq_length=32)


def _saved(tmp_path):
    torch.manual_seed(0)
    model = Transformer(_config())
    train = TrainingConfig.from_dict({"device": "cpu", "train": {"batch_size": 2, "max_steps": 1}})
    optimizer = build_optimizer(model, train.train, torch.device("cpu"))
    save_checkpoint(tmp_path / "run", 3, model, optimizer, {}, train, model.config)
    return model, optimizer, tmp_path / "run"


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=0, msg=name)


def test_load_model_reads_a_checkpoint_an_output_dir_a_sharded_checkpoint_and_a_hf_dir(tmp_path):
    from kr_mini_llm.checkpoint.sharded import save_shards as _dcp_save

    model, optimizer, run = _saved(tmp_path)
    ckpt = run / layout.checkpoint_name(3)
    for path in (ckpt, run):
        loaded, where = load_model(path, ops_impl="reference")
        assert where == ckpt
        _same_weights(model, loaded)

    # the same checkpoint with DCP shards in place of the single file, as an FSDP run writes it
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in (layout.TRAINER_STATE, layout.MODEL_CONFIG, layout.TRAINING_CONFIG, layout.RNG_STATE):
        (sharded / name).write_bytes((ckpt / name).read_bytes())
    _dcp_save(model, optimizer, sharded / layout.SHARDED_DIR)
    assert layout.is_sharded_checkpoint(sharded) and not (sharded / layout.MODEL_WEIGHTS).exists()
    loaded, _ = load_model(sharded, ops_impl="reference")
    _same_weights(model, loaded)

    model.save_hf(tmp_path / "hf")
    loaded, where = load_model(tmp_path / "hf", ops_impl="reference")
    assert where == tmp_path / "hf"
    _same_weights(model, loaded)


def test_load_model_names_a_directory_that_holds_no_model(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_model(tmp_path)


def _imports(path: Path) -> set[str]:
    """Modules of the same package that `path` imports (`from .x import` / `from . import x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def test_checkpoint_modules_import_one_way():
    checkpoint = PACKAGE / "checkpoint"
    assert "sharded" in _imports(checkpoint / "store.py")
    # No circle among checkpoint/'s or training/'s modules, lazy imports inside functions included.
    for package in (checkpoint, PACKAGE / "training"):
        graph = {f.stem: _imports(f) for f in package.glob("*.py")}
        assert_no_circle(graph)
    for module in ("atomic.py", "layout.py"):  # io/ sits below every other subpackage
        assert not any(n.level >= 2 for n in ast.walk(ast.parse((PACKAGE / "io" / module).read_text()))
                       if isinstance(n, ast.ImportFrom))
