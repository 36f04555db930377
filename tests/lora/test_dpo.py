"""scripts/dpo.py end to end on a tiny base: the reward accuracy rises, the output loads like a
fine-tune's, resume is bit-exact, the data forms agree, and bad pairs name their line."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.cli.dpo import main
from kr_mini_llm.dpo.data import PreferenceDataset, PreferenceError
from kr_mini_llm.inference import Generator

from .conftest import COLORS, write_jsonl

VAL = re.compile(r"^Iter (\d+): Val loss ([\d.]+), Val reward accuracy ([\d.]+), Val reward margin ([-\d.]+)", re.M)


def pairs(n, seed):
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = rng.choice(COLORS)
        rows.append({"prompt": f"{c} 색을 말해 주세요.", "chosen": f"네, {c}입니다.",
                     "rejected": f"{rng.choice([x for x in COLORS if x != c])} 아닙니다 모릅니다."})
    return rows


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pref")
    for split, (n, seed) in {"train": (32, 1), "valid": (8, 2), "test": (8, 3)}.items():
        write_jsonl(d / f"{split}.jsonl", pairs(n, seed))
    return d


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def dpo_args(base_dir, pref_data, out):
    return ["--model", str(base_dir), "--train", "--data", str(pref_data), "--batch-size", "4", "--num-layers", "-1",
            "--learning-rate", "5e-3", "--steps-per-report", "2", "--steps-per-eval", "4", "--save-every", "4",
            "--beta", "0.5", "--adapter-path", str(out), "--no-progress", "--device", "cpu"]


def test_dpo_learns_the_preference_and_writes_adapters(base_dir, pref_data, tmp_path, capsys):
    out = tmp_path / "dpo"
    code, stdout, err = run(dpo_args(base_dir, pref_data, out) + ["--iters", "8", "--test"], capsys)
    assert code == 0, err
    vals = [(int(i), float(loss), float(acc)) for i, loss, acc, _ in VAL.findall(stdout)]
    assert [v[0] for v in vals] == [0, 4, 8]
    assert vals[0][1] == pytest.approx(0.693, abs=1e-3)  # policy = reference before the first step: log 2
    assert vals[-1][1] < vals[0][1] - 0.1 and vals[-1][2] > 0.7, vals
    assert re.search(r"^Iter 2: Reward accuracy [\d.]+, Reward margin [-\d.]+", stdout, re.M)
    assert re.search(r"^Test loss [\d.]+, Test reward accuracy [\d.]+", stdout, re.M)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["objective"] == "dpo" and cfg["beta"] == 0.5 and cfg["fine_tune_type"] == "lora"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_accuracy" in r for r in rows) and any("val_reward_accuracy" in r for r in rows)
    Generator.from_pretrained(base_dir, device="cpu", adapter_path=out)  # loads like any LoRA adapters
    code, stdout, err = run(["--model", str(base_dir), "--test", "--data", str(pref_data), "--adapter-path", str(out),
                             "--device", "cpu", "--beta", "0.5"], capsys)
    assert code == 0, err
    assert re.search(r"^Test loss [\d.]+, Test reward accuracy [\d.]+", stdout, re.M)


@pytest.mark.parametrize("kind", ["full", "dora"])
def test_dpo_resume_is_bit_exact(kind, base_dir, pref_data, tmp_path, capsys):
    args = dpo_args(base_dir, pref_data, tmp_path / "x") + ["--fine-tune-type", kind, "--save-every", "2",
                                                             "--precompute-ref-log-probs", "--learning-rate", "1e-3"]
    straight, half = tmp_path / "straight", tmp_path / "half"
    assert run(args + ["--iters", "4", "--adapter-path", str(straight)], capsys)[0] == 0
    assert run(args + ["--iters", "2", "--adapter-path", str(half)], capsys)[0] == 0
    resume = half / "checkpoint-2" if kind == "full" else half / "adapters.safetensors"
    code, out, err = run(args + ["--iters", "4", "--adapter-path", str(half), "--resume-adapter-file", str(resume)],
                         capsys)
    assert code == 0, err
    assert "at iteration 2" in out and "Reference log-probabilities of 40 pairs" in out
    name = "checkpoint-4/model.safetensors" if kind == "full" else "adapters.safetensors"
    a, b = load_file(str(straight / name)), load_file(str(half / name))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_data_forms_encode_alike(tokenizer_path, tmp_path):
    tok = Tokenizer(tokenizer_path)
    user = [{"role": "user", "content": "빨강 색을 말해 주세요."}]
    good, bad = [{"role": "assistant", "content": "네, 빨강입니다."}], [{"role": "assistant", "content": "모릅니다."}]
    forms = [{"prompt": user[0]["content"], "chosen": good[0]["content"], "rejected": bad[0]["content"]},
             {"prompt": user, "chosen": good, "rejected": bad},
             {"chosen": user + good, "rejected": user + bad}]
    write_jsonl(tmp_path / "p.jsonl", forms)
    ds = PreferenceDataset(tmp_path / "p.jsonl", tok, 64)
    first = ds.examples[0]
    assert all((e.prompt, e.chosen, e.rejected) == (first.prompt, first.chosen, first.rejected) for e in ds.examples)
    assert first.chosen[-1] == tok.im_end_id and first.prompt[-1] != tok.im_end_id
    assert tok.decode(first.chosen[:-1]) == "네, 빨강입니다."


@pytest.mark.parametrize("row,expect", [
    ({"prompt": "질문", "chosen": "답"}, "missing 'rejected'"),
    ({"chosen": "답", "rejected": "아니"}, "missing 'prompt'"),
    ({"prompt": "질문", "chosen": "  ", "rejected": "아니"}, "'chosen' is empty"),
    ({"prompt": "질문", "chosen": "같은 답", "rejected": "같은 답"}, "identical"),
    ({"prompt": "질문 " * 80, "chosen": "답", "rejected": "아니"}, "leaves no room for an answer"),
    ({"prompt": "질문", "chosen": 3, "rejected": "아니"}, "'chosen' must be a string or a list of messages"),
], ids=["missing-field", "missing-prompt", "empty-chosen", "identical", "prompt-too-long", "wrong-type"])
def test_bad_pairs_name_their_line(row, expect, base_dir, tokenizer_path, tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "train.jsonl", pairs(3, 1) + [row])
    write_jsonl(d / "valid.jsonl", pairs(2, 2))
    with pytest.raises(PreferenceError, match=re.escape(f"{d / 'train.jsonl'}:4: ") + ".*" + re.escape(expect)):
        PreferenceDataset(d / "train.jsonl", Tokenizer(tokenizer_path), 64)
    code, out, err = run(dpo_args(base_dir, d, tmp_path / "out") + ["--iters", "2"], capsys)
    assert code == 2 and f"train.jsonl:4: " in err and expect in err and "Iter 1:" not in out
    assert not (tmp_path / "out").exists()


def test_dpo_never_writes_over_its_base(base_dir, pref_data, capsys):
    code, out, err = run(dpo_args(base_dir, pref_data, base_dir) + ["--iters", "2", "--fine-tune-type", "full",
                                                                    "--overwrite-adapters"], capsys)
    assert code == 2 and "never writes over or into its own input" in err
    assert (base_dir / "model.safetensors").is_file()
