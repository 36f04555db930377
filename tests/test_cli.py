"""The `kr-mini-llm` command: every subcommand is its script's code, with the same flags."""
import importlib
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kr_mini_llm.cli import COMMANDS, PROG, main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTED = [name for name in COMMANDS if name != "bench"]


def _help(capsys, run) -> str:
    try:
        code = run()  # torch's @record on train's main turns argparse's exit(0) into a return
    except SystemExit as e:
        code = e.code
    assert code in (0, None)
    return capsys.readouterr().out


def _without_usage(text: str) -> str:
    """The help after its usage block (the usage names the program, which differs)."""
    return text.split("\n\n", 1)[1]


def test_pyproject_declares_the_console_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[PROG].split(":")
    assert getattr(importlib.import_module(module), func) is main


def test_top_level_help_lists_every_command_on_one_line(capsys):
    text = _help(capsys, lambda: main(["--help"]))
    for name, command in COMMANDS.items():
        assert any(line.split()[:1] == [name] and command.summary in line for line in text.splitlines()), name


def test_an_unknown_command_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trian"])
    assert e.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", SCRIPTED)
def test_each_command_runs_its_scripts_code_with_the_same_help(name, capsys):
    command = COMMANDS[name]
    script = runpy.run_path(str(ROOT / "scripts" / command.script))  # not as __main__: only its imports run
    module = importlib.import_module(command.module)
    assert script["main"] is module.main
    ours = _help(capsys, lambda: main([name, "--help"]))
    assert ours.startswith(f"usage: {PROG} {name}")
    theirs = _help(capsys, lambda: module.main(["--help"]))
    assert _without_usage(ours) == _without_usage(theirs)


def test_the_module_entry_point_and_the_script_print_the_same_help():
    def run(*args):
        return subprocess.run([sys.executable, *args, "--help"], capture_output=True, text=True, cwd=ROOT, check=True).stdout

    assert _without_usage(run("-m", "kr_mini_llm.cli", "train")) == _without_usage(run("scripts/train.py"))


def test_a_bad_model_config_is_one_error_line_and_exit_2(tmp_path):
    train, model = tmp_path / "train.yaml", tmp_path / "model.yaml"
    train.write_text("device: cpu\n")
    model.write_text("hidden_size: 64\nnum_layer: 2\n")
    r = subprocess.run([sys.executable, "-m", "kr_mini_llm.cli", "train", "--config", str(train), "--model_config",
                        str(model)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith(f"error: {model}:2: unknown key 'num_layer' (did you mean 'num_layers'?)")


def test_bench_lists_the_benchmarks_and_runs_one_by_name(capfd):
    text = _help(capfd, lambda: main(["bench", "--help"]))
    assert "ops " in text and "generate " in text and "common" not in text
    assert "evaluate " not in text
    ours = _help(capfd, lambda: main(["bench", "memory_estimate", "--help"]))
    assert "--help" in ours and "usage: bench_memory_estimate.py" in ours
    with pytest.raises(SystemExit):
        main(["bench", "nonesuch"])
    assert "no benchmark 'nonesuch'" in capfd.readouterr().err


def test_tokenizer_command_trains_a_tokenizer(token_data, tmp_path, capsys):
    tokens, _ = token_data
    train_txt = tokens.parent / "processed" / "train.txt"
    out = tmp_path / "tok"
    assert main(["tokenizer", "--input", str(train_txt), "--vocab_size", "512", "--output", str(out),
                 "--num_threads", "1", "--valid", str(train_txt)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "tok.model").is_file() and (tmp_path / "tok.vocab").is_file()
    assert f"wrote {out}.model" in printed and "vocab 512" in printed
    assert main(["tokenizer", "--input", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
