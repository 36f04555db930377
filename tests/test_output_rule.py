"""The one rule of every command that writes (io/outputs.py): an existing output is refused unless
--overwrite is given, and no output is, holds or lies inside the command's own input, not even with
--overwrite. Each command is run as a user runs it, against a user's folder and against its input."""
import contextlib
import importlib.util
import io
import os
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kr_mini_llm.io.outputs import OutputError, check_not_input, claim_output

from .export.conftest import make_adapters, random_model, save_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def snapshot(d: Path) -> dict:
    """Every file under `d` with its bytes: what a refused command must leave exactly as it was."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def script_main(script):
    """The main() of scripts/SCRIPT, imported as the file it is (in this process: a subprocess per
    case would spend most of the test importing torch)."""
    spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}", ROOT / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run(script, *args):
    """Runs a script's main() with these arguments; (exit code, stdout, stderr) as a process would give."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = script_main(script)(list(map(str, args)))
        except SystemExit as e:  # argparse
            code = e.code
        except Exception:  # noqa: BLE001 -- a traceback is what the tests below rule out
            traceback.print_exc()
            code = 1
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


# -- the rule itself ----------------------------------------------------------------------------
@given(parts=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4),
       other=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_overlap_is_refused_exactly_when_one_path_contains_the_other(tmp_path_factory, parts, other):
    root = tmp_path_factory.getbasetemp()
    out, inp = root.joinpath(*parts), root.joinpath(*other)
    overlaps = parts[:len(other)] == other or other[:len(parts)] == parts
    if overlaps:
        with pytest.raises(OutputError, match="never writes over or into its own input"):
            check_not_input(out, [inp])
    else:
        check_not_input(out, [inp])


def test_spellings_and_symlinks_of_the_input_count_as_the_input(tmp_path):
    (tmp_path / "run").mkdir()
    os.symlink(tmp_path / "run", tmp_path / "link")
    for spelling in (tmp_path / "run" / ".", tmp_path / "link", tmp_path / "run" / ".." / "run" / "x"):
        with pytest.raises(OutputError, match="own input"):
            claim_output(spelling, overwrite=True, inputs=[tmp_path / "run"])


def test_existing_outputs_need_overwrite_and_keep_their_kind(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"dir already exists \(a folder\).*--overwrite"):
        claim_output(tmp_path / "dir", overwrite=False)
    assert claim_output(tmp_path / "dir", overwrite=True) == tmp_path / "dir"
    with pytest.raises(OutputError, match="is a file, and this command writes a folder there"):
        claim_output(tmp_path / "file", overwrite=True)
    with pytest.raises(OutputError, match="is a folder, and this command writes a file there"):
        claim_output(tmp_path / "new.gguf", also=[tmp_path / "dir"], is_dir=False, overwrite=True)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")   # a dangling link is still something there
    with pytest.raises(OutputError, match="already exists"):
        claim_output(tmp_path / "dangling", overwrite=False)


# -- every command that writes --------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, token_data):
    """A training output directory with one checkpoint (the input of the commands below)."""
    root = tmp_path_factory.mktemp("rule")
    ckpt = save_model(random_model(tiny_config(), seed=4), root / "run" / "checkpoint-3", token_data[1])
    (root / "run" / "metrics.jsonl").write_text('{"step": 3, "loss": 1.0}\n')
    make_adapters(ckpt, root / "adapters")
    return root / "run"


def user_folder(tmp_path) -> Path:
    d = tmp_path / "thesis"
    d.mkdir()
    (d / "thesis.txt").write_text("3 years of work", encoding="utf-8")
    return d


COMMANDS = {  # name -> (script, args before the output flag, output flag)
    "quantize": ("quantize.py", ["--model", "{run}", "--dtype", "int8"], "--output"),
    "export-hf": ("export.py", ["--model", "{run}", "--format", "hf"], "--output"),
    "fuse": ("fuse.py", ["--model", "{run}", "--adapter-path", "{adapters}"], "--save-path"),
    "visualize": ("visualize_attention.py", ["--model", "{run}", "--prompt", "안녕"], "--output"),
    "peft-export": ("peft_adapters.py", ["export", "--model", "{run}", "--adapter-path", "{adapters}"], "--save-path"),
}


def command(name, run_dir, out, *extra):
    script, args, flag = COMMANDS[name]
    fill = {"run": run_dir, "adapters": run_dir.parent / "adapters"}
    return run(script, *[a.format(**fill) for a in args], flag, out, *extra)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_users_folder_is_refused_then_replaced_only_with_overwrite(name, run_dir, tmp_path):
    folder = user_folder(tmp_path)
    before, run_before = snapshot(folder), snapshot(run_dir)
    r = command(name, run_dir, folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "already exists (a folder)" in r.stderr and "--overwrite" in r.stderr
    assert snapshot(folder) == before and snapshot(run_dir) == run_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]   # no staging directory left behind


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["the run", "its checkpoint", "inside the checkpoint"])
def test_the_input_is_never_written_over_even_with_overwrite(name, where, run_dir):
    out = {"the run": run_dir, "its checkpoint": run_dir / "checkpoint-3",
           "inside the checkpoint": run_dir / "checkpoint-3" / "out"}[where]
    before = snapshot(run_dir)
    r = command(name, run_dir, out, "--overwrite")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "never writes over or into its own input" in r.stderr
    assert snapshot(run_dir) == before and sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-3",
                                                                                          "metrics.jsonl"]


def test_overwrite_replaces_an_earlier_output(run_dir, tmp_path):
    out = tmp_path / "int8"
    assert command("quantize", run_dir, out).returncode == 0
    stale = out / "stale.txt"
    stale.write_text("from before")
    r = command("quantize", run_dir, out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "inference.json").is_file() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]


def test_evaluate_and_sft_demo_refuse_existing_files(run_dir, tmp_path):
    from kr_mini_llm.cli.evaluate import main as evaluate

    (tmp_path / "report.md").write_text("mine")
    assert evaluate(["--model", str(run_dir), "--output", str(tmp_path / "report"), "--no_speed"]) == 2
    assert (tmp_path / "report.md").read_text() == "mine" and not (tmp_path / "report.json").exists()

    processed = tmp_path / "processed"
    processed.mkdir()
    for split in ("train", "valid", "test"):
        (processed / f"{split}.txt").write_text("제목\n\n본문입니다. 아주 긴 본문입니다. 충분히 깁니다.\n", encoding="utf-8")
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "valid.jsonl").write_text("mine\n")
    r = run("make_sft_demo.py", "--input", processed, "--output", sft)
    assert r.returncode == 2 and "valid.jsonl already exists" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in sft.iterdir()) == ["valid.jsonl"]
    r = run("make_sft_demo.py", "--input", processed, "--output", processed / "sft", "--overwrite")
    assert r.returncode == 2 and "own input" in r.stderr and not (processed / "sft").exists()
    assert run("make_sft_demo.py", "--input", processed, "--output", sft, "--overwrite").returncode == 0
    assert (sft / "valid.jsonl").read_text() != "mine\n"


def test_train_never_writes_into_its_token_shards(token_data, tmp_path, capsys):
    from kr_mini_llm.cli.train import main as train

    tokens, tok = token_data
    before = snapshot(tokens)
    for out in (tokens, tokens / "run"):
        assert train(["--config", str(ROOT / "configs/training_demo.yaml"), "--model_config",
                      str(ROOT / "configs/model_tiny.yaml"), "--output_dir", str(out), "--overwrite",
                      "--set", f"data.tokens={tokens}", "--set", f"data.tokenizer={tok}"]) == 2
        assert "never writes over or into its own input" in capsys.readouterr().err
    assert snapshot(tokens) == before and not (tokens / "run").exists()


def test_prepare_data_replaces_only_its_own_outputs(token_data, tmp_path, capsys):
    from kr_mini_llm.cli.prepare import main as prepare

    tokens, tok = token_data
    processed = tokens.parent / "processed"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.txt").write_text("my own notes", encoding="utf-8")
    args = ["--input", str(processed / "train.txt"), "--output_dir", str(mine), "--no_progress"]
    assert prepare(args) == 2
    assert "was not written by prepare_data.py" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["train.txt"] and (mine / "train.txt").read_text() == "my own notes"
    assert prepare(args + ["--overwrite"]) == 0 and (mine / "meta.json").is_file()
    assert prepare(args) == 0   # its own output now: a rerun is fine
    # into its own input, or its token shards into the text they come from: refused
    assert prepare(["--input", str(mine), "--output_dir", str(mine / "out"), "--no_progress"]) == 2
    assert prepare(["--input", str(processed / "train.txt"), "--output_dir", str(mine), "--tokenizer", tok,
                    "--tokens_dir", str(mine), "--no_progress"]) == 2
    assert "own input" in capsys.readouterr().err and not list(mine.glob("*.bin"))


def test_train_tokenizer_refuses_an_existing_tokenizer_and_leaves_nothing_when_it_fails(token_data, tmp_path, capsys):
    from kr_mini_llm.cli.tokenizer import main as train_tokenizer

    text = token_data[0].parent / "processed" / "train.txt"
    (tmp_path / "tok.model").write_bytes(b"someone else's")
    args = ["--input", str(text), "--vocab_size", "400", "--output", str(tmp_path / "tok"), "--num_threads", "1"]
    assert train_tokenizer(args) == 2 and "tok.model already exists" in capsys.readouterr().err
    assert (tmp_path / "tok.model").read_bytes() == b"someone else's"
    assert train_tokenizer(args + ["--vocab_size", "10"]) == 2   # fails inside training: nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.model"]
    assert train_tokenizer(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.model", "tok.vocab"]
