"""What a diverged run keeps, and what a model is paired with when it loads: the checkpoint a NaN stop
keeps gives a finite loss; a swapped or foreign tokenizer is refused on every load path (checkpoint,
run directory, --tokenizer); a checkpoint of another model shape is named in one line; a run whose
checkpoints all lack a file, or a quantized directory, says what it is."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from kr_mini_llm import Transformer
from kr_mini_llm.training import CheckpointError, Trainer, TrainingStopped, load_checkpoint
from kr_mini_llm.checkpoint import list_checkpoints, resolve_checkpoint

from .test_faults import ROOT, copy_run, setup  # noqa: F401  (the module's tiny run, made once)


def script_main(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def other_tokenizer(tmp_path, vocab_size) -> Path:
    from kr_mini_llm.data.tokenizer import train_tokenizer
    from tests.data.conftest import korean_docs

    text = tmp_path / "other.txt"
    text.write_text("\n\n".join(korean_docs(60, seed=99)) + "\n", encoding="utf-8")
    return train_tokenizer([text], vocab_size=vocab_size, output_prefix=tmp_path / f"tok{vocab_size}", num_threads=1)


# -- the NaN stop --------------------------------------------------------------------------------
def test_a_diverged_step_with_finite_weights_is_not_kept_as_the_last_good_checkpoint(setup, tmp_path, monkeypatch):
    _, model, config = setup
    run = copy_run(setup, tmp_path)
    cfg = config.replace(output_dir=str(run))
    cfg.train.save_steps = 1
    cfg.train.max_steps = 8
    trainer = Trainer(model, cfg, resume_from=run, show_progress=False)
    real = trainer._train_step

    def step():  # what learning_rate 1000 does: finite weights so large that the next loss is not finite
        loss = real()
        if trainer.step == 4:  # the step about to become 5, saved at once (save_steps 1)
            with torch.no_grad():
                trainer.model.norm.weight.fill_(3e38)   # finite, but the logits overflow
        return loss

    monkeypatch.setattr(trainer, "_train_step", step)
    with pytest.raises(TrainingStopped, match=r"weights after step 5 give a loss of (nan|inf).*without saving"):
        trainer.train()
    kept = list_checkpoints(run)[-1]
    assert kept.name == "checkpoint-4"
    # The kept checkpoint resumes: its loss is finite.
    resumed = Trainer(model, cfg.replace(), resume_from=run, show_progress=False)
    resumed.config.train.max_steps = 5
    assert resumed.train()["step"] == 5


# -- a model and its tokenizer -------------------------------------------------------------------
@pytest.mark.parametrize("model_path", ["run", "checkpoint"])
def test_a_tokenizer_swapped_in_the_checkpoint_is_named_whichever_path_names_it(setup, tmp_path, model_path):
    from kr_mini_llm.inference import Generator

    run = copy_run(setup, tmp_path)
    latest = run / "checkpoint-4"
    shutil.copyfile(other_tokenizer(tmp_path, 400), latest / "tokenizer.model")   # another size, another model
    target = run if model_path == "run" else latest
    with pytest.raises(CheckpointError, match="checkpoint-4/tokenizer.model does not match the checksum"):
        Generator.from_pretrained(target, device="cpu")
    assert resolve_checkpoint(run) == latest   # damaged, not skipped in favour of an older checkpoint


def test_generate_refuses_a_tokenizer_the_model_was_not_trained_with(setup, tmp_path, capsys):
    run = copy_run(setup, tmp_path)
    generate = script_main("generate")
    for pieces in (400, 600):   # fewer pieces than the model's 512 rows, and more
        tok = other_tokenizer(tmp_path, pieces)
        assert generate(["--model", str(run), "--tokenizer", str(tok), "--prompt", "오늘", "--max_new_tokens", "3"]) == 2
        err = capsys.readouterr().err
        assert "is not the tokenizer this model was trained with" in err and "Traceback" not in err
    # Without a tokenizer of its own, the model takes none with another piece count either.
    (run / "checkpoint-4" / "tokenizer.model").unlink()
    (run / "checkpoint-4" / "checksums.json").unlink()
    assert generate(["--model", str(run), "--tokenizer", str(tok), "--prompt", "오늘"]) == 2
    assert "600 pieces but the model in" in capsys.readouterr().err


def test_a_model_with_more_rows_than_its_tokenizer_never_emits_an_id_it_cannot_decode(setup):
    from kr_mini_llm.data.tokenizer import Tokenizer
    from kr_mini_llm.inference import Generator

    root, model_config, config = setup
    tok = Tokenizer(config.data.tokenizer)
    model = Transformer(model_config.replace(vocab_size=tok.vocab_size + 64)).eval()
    with torch.no_grad():
        model.lm_head.weight[tok.vocab_size:] = 5.0 if not model_config.tie_word_embeddings else 0.0
        model.embed_tokens.weight[tok.vocab_size:] = 5.0
    gen = Generator(model, tok, "cpu")
    for temperature in (0.0, 1.0):
        for step in gen.generate_ids([[tok.bos_id, 10, 11]], 20, temperature=temperature, seed=1, stop_at_eos=False):
            assert step[0] < tok.vocab_size


# -- the shape of a checkpoint's model, and what a directory is -----------------------------------
def test_resuming_with_another_model_shape_says_which_fields_differ_in_one_line(setup, tmp_path):
    _, model, config = setup
    run = copy_run(setup, tmp_path)
    wider = model.replace(hidden_size=64)
    with pytest.raises(CheckpointError) as e:
        Trainer(wider, config.replace(output_dir=str(run)), resume_from=run, show_progress=False)
    message = str(e.value)
    assert "\n" not in message
    assert "hidden_size 32 in the checkpoint, 64 in this model" in message and "size mismatch" not in message


def test_a_run_whose_checkpoints_lack_files_names_what_is_missing(setup, tmp_path):
    run = copy_run(setup, tmp_path)
    for ck in list_checkpoints(run):
        (ck / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="the latest, checkpoint-4, lacks tokenizer.model"):
        resolve_checkpoint(run)


def test_export_of_a_quantized_directory_says_what_it_is(setup, tmp_path, capsys):
    run = copy_run(setup, tmp_path)
    assert script_main("quantize")(["--model", str(run), "--dtype", "int8", "--output", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert script_main("export")(["--model", str(tmp_path / "q"), "--output", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "holds packed inference weights" in err and "source" in err
    assert json.loads((tmp_path / "q" / "inference.json").read_text())["source"].endswith("checkpoint-4")


def test_quantizing_nan_weights_names_them():
    from kr_mini_llm.ops import quantize_int8

    w = torch.randn(8, 64)
    w[3, 17] = float("nan")
    with pytest.raises(ValueError, match=r"holds NaN or inf \(first at \[3, 17\]\)"):
        quantize_int8(w, 32)
    w[3, 17] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_int8(w)


def test_load_checkpoint_keeps_its_message_for_hand_made_mismatches(setup, tmp_path):
    """A model_config.yaml that agrees with the model, but weights that do not: torch's reason, once."""
    from safetensors.torch import load_file, save_file

    _, model, _ = setup
    run = copy_run(setup, tmp_path)
    ck = run / "checkpoint-4"
    weights = load_file(ck / "model.safetensors")
    weights.pop("norm.weight")
    save_file(weights, ck / "model.safetensors")
    (ck / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match=r"does not match the model: missing \['norm.weight'\]"):
        load_checkpoint(ck, Transformer(model))

