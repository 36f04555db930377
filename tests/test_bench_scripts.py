"""The benchmark scripts run (tiny shapes, a smoke test, not a measurement) and write their tables."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, args", [
    ("bench_ops.py", ["--quick", "--no-compile", "--threads", "1", "--repeats", "1"]),
    ("bench_model.py", ["--models", "tiny", "--seq", "32", "--tokens", "64", "--dtypes", "float32",
                        "--variants", "ours,ours-ref,hf-sdpa", "--repeats", "1"]),
    ("bench_generate.py", ["--models", "tiny", "--batches", "2", "--prompt_len", "8", "--new_tokens", "4",
                           "--repeats", "1"]),    ("bench_generate.py", ["--models", "tiny", "--batches", "1", "--prompt_len", "8", "--new_tokens", "4",
                           "--repeats", "1", "--impls", "ours-int8,ours-int8-7ops", "--no_memory"]),
])
def test_bench_script_writes_its_table(script, args, tmp_path):
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, "--output", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = out.read_text()
    assert f"Command: `python scripts/{script}" in text and "Total benchmark time" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 3  # a header and measured rows


def test_bench_tokenizer_compares_vocabularies_on_a_tiny_corpus(token_data, tmp_path):
    tokens, _ = token_data
    ood = tmp_path / "ood.txt"
    ood.write_text("대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.\n\n"
                   "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.\n", encoding="utf-8")
    out = tmp_path / "tokenizer.md"
    args = ["--processed", str(tokens.parent / "processed"), "--vocab-sizes", "420", "512", "--model-types", "bpe",
            "unigram", "--minutes", "0.005", "--train", "max_seq_length=32", "batch_size=4", "--threads", "1",
            "--calibration_steps", "2", "--step_seconds", "bpe-512=0.05", "--ood", str(ood), "--output", str(out)]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_tokenizer.py"), *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = out.read_text()
    assert "Command: `python scripts/bench_tokenizer.py --processed" in text and "Total benchmark time" in text
    # a step budget: bpe-512's seconds a step as given (0.005 min / 0.05 s = 6 steps), the others calibrated
    assert "Budget: the steps each model makes in the minutes" in text and "given: bpe-512" in text
    assert "bpe-512 0.050" in text and "unigram-420 " in text
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    # type, pre-tokenization, vocab, valid chars/token, valid fallback, OOD chars/token, OOD fallback, steps,
    # valid bpb, seed spread, test bpb
    assert [(c[0], c[1], c[2]) for c in rows] == [("bpe", "none", "420"), ("bpe", "none", "512"),
                                                  ("unigram", "none", "420"), ("unigram", "none", "512")]
    for c in rows:
        valid_cpt, ood_cpt, steps, valid_bpb = float(c[3]), float(c[5]), float(c[7]), float(c[8])
        assert 1.0 < valid_cpt < 10 and 0.2 < ood_cpt < 10 and 0 < valid_bpb < 20 and steps >= 1
        if (c[0], c[2]) == ("bpe", "512"):
            assert steps == 6
        # text unlike the training corpus: more of its characters fall back to bytes
        valid_fallback, ood_fallback = (float(c[i].removesuffix("%")) for i in (4, 6))
        assert ood_fallback > valid_fallback
    # a larger vocabulary cuts the same validation text into fewer tokens
    assert float(rows[1][3]) > float(rows[0][3])
    assert str(ood) in text


def test_bench_tokenizer_refuses_bad_input_before_training(tmp_path):
    processed = tmp_path / "processed"
    processed.mkdir()

    def bench(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_tokenizer.py"), "--processed",
                               str(processed), "--output", str(tmp_path / "t.md"), *args],
                              capture_output=True, text=True, timeout=600)

    r = bench()
    assert r.returncode != 0 and "no train.txt, valid.txt, test.txt" in r.stderr and "prepare_data.py" in r.stderr
    for split in ("train", "valid", "test"):
        (processed / f"{split}.txt").write_text("문서\n", encoding="utf-8")
    r = bench("--vocab-sizes", "8000", "256")
    assert r.returncode != 0 and "--vocab-sizes [256]" in r.stderr and "300 or more" in r.stderr
    r = bench("--vocab-sizes", "8000", "--model-types", "bpe", "--step_seconds", "unigram-8000=1")
    assert r.returncode != 0 and "NAME one of bpe-8000" in r.stderr and "Traceback" not in r.stderr
    r = bench("--jobs", "0")
    assert r.returncode != 0 and "must be >= 1" in r.stderr
    assert not (tmp_path / "t.md").exists()


def _bench_recipe(token_data, tmp_path, *args):
    tokens, tok = token_data
    model = tmp_path / "model.yaml"
    model.write_text("vocab_size: 512\nhidden_size: 32\nnum_layers: 1\nnum_heads: 2\nnum_kv_heads: 1\n"
                     "intermediate_size: 64\nmax_seq_length: 32\n", encoding="utf-8")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_recipe.py"), "--tokens", str(tokens),
                           "--tokenizer", tok, "--model_config", str(model), "--recipes", "ours",
                           "--ours", "max_seq_length=32", "batch_size=4", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=600)


def _per_run(text: str) -> dict:
    """The report's per-run lines: (minutes, recipe, seed) -> (steps, valid bpb, test bpb)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("- ") and line.count(",") == 5:
            head, tail = line[2:].split(": ")
            steps, _wall, valid, test = tail.split(", ")
            out[tuple(head.split(", "))] = (int(steps), valid, test)
    return out


def test_bench_recipe_step_budget_computes_the_same_runs_in_parallel(token_data, tmp_path):
    """A step budget fixes what each run computes: two runs at once in worker processes give the
    same steps and bits per byte as one after the other."""
    budget = ["--minutes", "0.02", "--seeds", "0", "1", "--step_seconds", "ours=0.1"]
    reports = []
    for jobs in ("1", "2"):
        out = tmp_path / f"recipe{jobs}.md"
        r = _bench_recipe(token_data, tmp_path, *budget, "--jobs", jobs, "--output", str(out))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        reports.append(_per_run(out.read_text()))
    assert set(reports[0]) == {("0.02", "ours", "0"), ("0.02", "ours", "1")}
    assert {k: v[0] for k, v in reports[0].items()} == {k: 12 for k in reports[0]}  # 0.02 min / 0.1 s
    assert reports[0] == reports[1]
    assert reports[0][("0.02", "ours", "0")] != reports[0][("0.02", "ours", "1")]  # the seed matters


def test_bench_recipe_calibrates_and_refuses_bad_budgets(token_data, tmp_path):
    out = tmp_path / "recipe.md"
    r = _bench_recipe(token_data, tmp_path, "--minutes", "0.01", "--seeds", "0", "--calibration_steps", "2",
                      "--output", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Budget: the steps each recipe makes in the minutes" in out.read_text()
    for bad, says in [(["--step_seconds", "ours=0"], "SECONDS > 0"), (["--step_seconds", "gpt3=1"], "NAME one of"),
                      (["--budget", "time", "--jobs", "2"], "only with --budget steps"),
                      (["--calibration_steps", "0"], "must be >= 1")]:
        target = tmp_path / "bad.md"
        r = _bench_recipe(token_data, tmp_path, "--minutes", "0.01", "--seeds", "0", *bad, "--output", str(target))
        assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert not target.exists()


def test_bench_recipe_calibration_takes_turns(token_data, monkeypatch):
    """The recipes' calibration steps alternate (5 turns by default), so a drift in the machine's speed
    reaches every recipe alike; each recipe gets its 3 warm-up steps and then exactly `steps` timed."""
    import importlib.util

    from kr_mini_llm import TransformerConfig

    spec = importlib.util.spec_from_file_location("bench_recipe_calib", ROOT / "scripts" / "bench_recipe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    order = []
    real_step = bench.train_step
    monkeypatch.setattr(bench, "train_step", lambda model, opt, t, *a: order.append(t.batch_size) or real_step(
        model, opt, t, *a))
    tokens, tok = token_data
    cfg = TransformerConfig(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                            max_seq_length=32)
    keys = {**bench.TODAY, "max_seq_length": 32}
    runs = {"today": ({**keys, "batch_size": 2}, cfg), "ours": ({**keys, "batch_size": 3}, cfg)}
    seconds = bench.step_seconds(runs, bench.load_shards(str(tokens), tok), steps=7, turns=3)
    assert set(seconds) == {"today", "ours"} and all(v > 0 for v in seconds.values())
    # warm-up 3 + 3, then turns of 3, 2, 2 steps (7 over 3 turns) each
    assert order == [2] * 3 + [3] * 3 + [2] * 3 + [3] * 3 + [2] * 2 + [3] * 2 + [2] * 2 + [3] * 2


def _bench_recipe_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_recipe_late", ROOT / "scripts" / "bench_recipe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_recipe_budgets_late_dropout_by_its_two_step_times(token_data, monkeypatch):
    """A recipe whose dropout starts after some passes is timed without and with it, and makes the
    steps that fit: the first ones at the faster time, the rest at the slower."""
    from kr_mini_llm import TransformerConfig

    bench = _bench_recipe_module()
    assert bench.budget_steps(1.0, 0.5) == 120
    assert bench.budget_steps(1.0, 0.5, late=(200, 1.0)) == 120  # dropout never reached
    assert bench.budget_steps(1.0, 0.5, late=(40, 1.0)) == 40 + 40  # 20 s without, 40 s at 1 s a step
    keys = {**bench.TODAY, "max_seq_length": 32, "batch_size": 2, "dropout_after_epochs": 1.5}
    assert bench.first_dropout_step(keys, train_tokens=640) == 15  # 1.5 passes of 640 tokens, 64 a step
    assert bench.first_dropout_step({**keys, "dropout_after_epochs": 1.6}, train_tokens=640) == 16
    tokens, tok = token_data
    cfg = TransformerConfig(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                            max_seq_length=32, dropout=0.2)
    rates = []
    real_step = bench.train_step
    monkeypatch.setattr(bench, "train_step", lambda model, *a: rates.append(model.dropout) or real_step(model, *a))
    seconds = bench.step_seconds({"ours": (keys, cfg)}, bench.load_shards(str(tokens), tok), steps=2, turns=1)
    assert set(seconds) == {"ours", "ours+dropout"}
    assert rates == [0.0] * 3 + [0.2] * 3 + [0.0] * 2 + [0.2] * 2  # 3 warm-up steps each, then 2 timed each


def test_bench_recipe_ends_a_pass_budget_where_the_trainer_does(token_data):
    """--ours max_epochs=E: the run stops at the steps of E passes (optim.run_max_steps, as the
    Trainer), inside its minutes, with the schedule ending at the floor rate."""
    from kr_mini_llm import TransformerConfig

    bench = _bench_recipe_module()
    tokens, tok = token_data
    shards = bench.load_shards(str(tokens), tok)
    cfg = TransformerConfig(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                            max_seq_length=32)
    keys = {**bench.demo_recipe(), "max_seq_length": 32, "batch_size": 2, "warmup_steps": 2, "max_epochs": 0.1,
            "max_time_minutes": 1.0}
    want = math.ceil(0.1 * shards["train"].num_tokens / 64)
    assert 10 < want < 200
    r = bench.run("ours", keys, cfg, shards, seed=0, minutes=1.0, steps=want + 50)
    assert r["steps"] == want
    # wsd: the last step's rate is one step's share of the decay above the floor (its rate is set
    # before it); keyed to the minutes' steps instead, the run would end at the peak rate.
    floor, peak = keys["min_learning_rate"], keys["learning_rate"]
    one_step = 1 / ((want - 2) * keys["decay_fraction"])
    assert r["lr_end"] == pytest.approx(floor + (peak - floor) * one_step, rel=1e-6)
    assert bench.run("ours", {**keys, "max_epochs": None}, cfg, shards, seed=0, minutes=1.0, steps=7)["steps"] == 7
