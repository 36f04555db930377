#!/usr/bin/env python3
"""Training recipes at equal wall-clock minutes on this CPU: validation (and test) bits per byte of

  gpt2    HF GPT2LMHeadModel of the same width and depth (GELU MLP of 4x width, learned positions,
          no dropout), AdamW with the old demo's schedule (TODAY) keyed to steps
  today   our Transformer with the old demo's recipe (TODAY): AdamW, cosine keyed to max_steps only
  ours    our Transformer with the recipe under test: configs/training_demo.yaml's, changed by
          --ours KEY=VALUE (training keys) and --ours_model KEY=VALUE; the schedule keyed to the
          time budget (optim.py)

The budget (--budget steps, the default): each recipe's seconds a step are measured first, at
--threads, on what should be an idle machine, the recipes taking turns (or given: --step_seconds);
every run then makes the whole steps that fit its minutes, so what it computes does not depend on
what else runs, and --jobs N runs N at once in worker processes (one thread each). --budget time:
each run trains until its minutes of CPU seconds per thread (busy_seconds) are up. Same token
windows per seed, bf16 autocast only where native (device.precision_choice), clipping; then one
evaluation over the whole validation and test splits (outside the budget). Several seeds per
recipe; the table gives each recipe's mean, its seed-to-seed spread (max - min) and its gain
over the baselines.

  python scripts/bench_recipe.py --tokens data/tokens --tokenizer models/tokenizer.model \\
      --minutes 4 10 --seeds 0 1 2 --jobs 2 --output benchmarks/recipe.md
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kr_mini_llm import TransformerConfig  # noqa: E402
from kr_mini_llm.cli.command import command  # noqa: E402
from kr_mini_llm.data.datasets import EvalWindows, RandomWindows, TokenShards  # noqa: E402
from kr_mini_llm.data.tokenizer import Tokenizer  # noqa: E402
from kr_mini_llm.device import precision_choice  # noqa: E402
from kr_mini_llm.errors import KrMiniLlmError  # noqa: E402
from kr_mini_llm import host_memory  # noqa: E402
from kr_mini_llm.io.outputs import add_overwrite_flag, claim_output  # noqa: E402
from kr_mini_llm.model import Transformer  # noqa: E402
from kr_mini_llm.training import TrainingConfig  # noqa: E402
from kr_mini_llm.training.optim import (build_optimizer, dropout_at, lr_factor, run_max_steps,  # noqa: E402
                                       set_learning_rates)

# The demo's recipe before the time-keyed schedule (and the baseline's): training_demo.yaml at
# commit 58b9190, the schedule keys that matter here.
TODAY = {"optimizer": "adamw", "learning_rate": 1e-3, "min_learning_rate": 1e-4, "warmup_steps": 50,
         "max_steps": 1000, "lr_schedule": "cosine", "batch_size": 16, "max_seq_length": 256}


def gpt2_model(cfg: TransformerConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_length,
                                      n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def next_token_loss(model, x, y, is_hf: bool):
    if not is_hf:
        return model(x, y)
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def build(recipe: str, train_keys: dict, model_cfg: TransformerConfig, seed: int):
    """The model, its optimizer and the training section of one run, seeded."""
    t = TrainingConfig.from_dict({"train": train_keys}).train
    torch.manual_seed(seed)
    model = gpt2_model(model_cfg) if recipe == "gpt2" else Transformer(model_cfg)
    model.train()
    return model, build_optimizer(model, t, torch.device("cpu")), t


def train_step(model, opt, t, x, y, is_hf: bool, amp) -> float:
    with (torch.autocast("cpu", dtype=amp) if amp is not None else _null()):
        loss = next_token_loss(model, x, y, is_hf)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def run(recipe: str, train_keys: dict, model_cfg: TransformerConfig, shards: dict, seed: int, minutes: float,
        steps: int | None = None):
    """One run: `minutes` of busy_seconds, or, with `steps`, exactly that many steps (the steps this
    recipe makes in `minutes` on an idle machine, from step_seconds), whatever else the machine runs."""
    model, opt, t = build(recipe, train_keys, model_cfg, seed)
    # train.max_epochs ends the run as the Trainer does: at the steps of that many passes, if fewer
    # than the minutes', the schedule keyed to them.
    last = run_max_steps(t, shards["train"].num_tokens, t.batch_size * t.max_seq_length) if t.max_epochs else None
    if last is not None:
        t = dataclasses.replace(t, max_steps=last)
    is_hf = recipe == "gpt2"
    amp, _ = precision_choice(torch.device("cpu"), True)
    host_memory.for_training(torch.device("cpu"), amp)  # as the Trainer
    batches = iter(RandomWindows(shards["train"], t.max_seq_length, t.batch_size, seed=seed))
    budget, step, elapsed = 60.0 * minutes, 0, 0.0
    start, wall_start = busy_seconds(), time.perf_counter()

    def elapsed_now() -> float:
        # a step budget stands for `minutes`: its schedule sees the share of the steps as the share of the time
        return budget * step / steps if steps else busy_seconds() - start

    while ((step < steps) if steps else (elapsed_now() < budget)) and (last is None or step < last):
        elapsed = elapsed_now()
        set_learning_rates(opt, t, lr_factor(step, t, elapsed))
        if t.dropout_after_epochs > 0 and not is_hf:  # as the Trainer: passes over the training tokens so far
            epochs = step * t.batch_size * t.max_seq_length / shards["train"].num_tokens
            model.set_dropout(dropout_at(t, model_cfg.dropout, epochs))
        x, y = next(batches)
        loss = train_step(model, opt, t, x, y, is_hf, amp)
        step += 1
        if not math.isfinite(loss):
            return {"steps": step, "valid": float("nan"), "test": float("nan"), "lr_end": float("nan"),
                    "wall_s": time.perf_counter() - wall_start}
    lr_end = lr_factor(step - 1, t, elapsed) * t.learning_rate
    model.eval()
    out = {"steps": step, "lr_end": lr_end, "wall_s": time.perf_counter() - wall_start}
    with torch.no_grad():
        for split in ("valid", "test"):
            total, n = 0.0, 0
            for x, y in EvalWindows(shards[split], t.max_seq_length, t.batch_size):
                with (torch.autocast("cpu", dtype=amp) if amp is not None else _null()):
                    loss = next_token_loss(model, x, y, is_hf)
                total += loss.item() * y.numel()
                n += y.numel()
            out[split] = total / n / math.log(2) / shards[split].bytes_per_token
    return out


def step_seconds(runs: dict, shards: dict, steps: int = 20, turns: int = 5) -> dict:
    """Seconds per training step of each recipe in `runs` ({name: (train_keys, model_config)}, or
    (train_keys, model_config, own_shards) for a run on other data, e.g. another vocabulary) at this
    process's thread count: the median of `steps`, after 3 warm-up steps each. The recipes take
    turns, steps/turns at a time, so a machine whose speed drifts (a shared VM's did by 25% within a
    minute) moves them alike and their ratio, which decides the budgets, holds. Run it on an idle
    machine; it turns minutes into a step budget. A recipe with late dropout (train.dropout_after_epochs) is
    timed in both phases: NAME without its dropout, NAME+dropout with it."""
    amp, _ = precision_choice(torch.device("cpu"), True)
    host_memory.for_training(torch.device("cpu"), amp)  # as the Trainer
    state = {}
    for name, (keys, cfg, *own) in runs.items():
        train = (own[0] if own else shards)["train"]
        # Late dropout: both phases timed, without it (NAME) and with it (NAME+dropout).
        late = late_dropout(keys, cfg)
        for phase in (name, name + LATE) if late else (name,):
            model, opt, t = build(name, keys, cfg, seed=0)
            if late and phase == name:
                model.set_dropout(0.0)
            state[phase] = (model, opt, t, iter(RandomWindows(train, t.max_seq_length, t.batch_size, seed=0)))
    times = {phase: [] for phase in state}
    for phase, (model, opt, t, batches) in state.items():
        name = phase.removesuffix(LATE)
        for _ in range(3):
            x, y = next(batches)
            train_step(model, opt, t, x, y, name == "gpt2", amp)
    for turn in range(turns):
        for phase, (model, opt, t, batches) in state.items():
            for _ in range(steps // turns + (turn < steps % turns)):
                x, y = next(batches)
                began = time.perf_counter()
                train_step(model, opt, t, x, y, phase == "gpt2", amp)
                times[phase].append(time.perf_counter() - began)
    return {phase: statistics.median(v) for phase, v in times.items()}


def load_shards(tokens: str, tokenizer: str) -> dict:
    fingerprint = Tokenizer(tokenizer).fingerprint
    return {s: TokenShards(tokens, s, expected_fingerprint=fingerprint) for s in ("train", "valid", "test")}


def _job(job: tuple) -> dict:
    """One step-budgeted run in a worker process (--jobs): its own shards and thread count."""
    tokens, tokenizer, threads, recipe, keys, model_cfg, seed, minutes, steps = job
    torch.set_num_threads(threads)
    return run(recipe, keys, TransformerConfig.from_dict(model_cfg), load_shards(tokens, tokenizer), seed,
               minutes, steps)


def run_all(jobs: list, args, report) -> None:
    """Runs `jobs` [(key, (tokens, tokenizer, recipe, keys, model_config, seed, minutes, steps))] one after
    the other, or --jobs at a time in worker processes (--run_threads each), calling report(key, result)."""
    if args.jobs > 1:
        import concurrent.futures as cf
        import multiprocessing

        threads = args.run_threads or 1
        with cf.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_job, (tokens, tokenizer, threads, name, keys, cfg.to_dict(), seed, minutes,
                                          steps)): key
                       for key, (tokens, tokenizer, name, keys, cfg, seed, minutes, steps) in jobs}
            for f in cf.as_completed(futures):
                report(futures[f], f.result())
        return
    if args.run_threads:
        torch.set_num_threads(args.run_threads)
    shards = {}
    for key, (tokens, tokenizer, name, keys, cfg, seed, minutes, steps) in jobs:
        if tokens not in shards:
            shards[tokens] = load_shards(tokens, tokenizer)
        report(key, run(name, keys, cfg, shards[tokens], seed, minutes, steps))


def budget_steps(minutes: float, seconds: float | None, late: tuple[int, float] | None = None) -> int | None:
    """The whole steps that fit `minutes` at `seconds` a step (1e-9: 0.02 min at 0.1 s is 12 steps, not
    11.999...); with late = (first step with dropout, its seconds a step), the steps from there at
    those seconds; None for a time budget."""
    if not seconds:
        return None
    steps = max(1, math.floor(60.0 * minutes / seconds + 1e-9))
    if late is None or steps <= late[0]:
        return steps
    first, on_seconds = late
    return first + math.floor((60.0 * minutes - first * seconds) / on_seconds + 1e-9)


LATE = "+dropout"  # the calibration's name for a late-dropout recipe's steps with its dropout on


def late_dropout(keys: dict, cfg: TransformerConfig) -> bool:
    return keys.get("dropout_after_epochs", 0) > 0 and cfg.dropout > 0


def first_dropout_step(keys: dict, train_tokens: int) -> int:
    """The first step (0-based) whose passes seen reach dropout_after_epochs (training/optim.py dropout_at)."""
    per_step = keys["batch_size"] * keys["max_seq_length"]
    return math.ceil(keys["dropout_after_epochs"] * train_tokens / per_step - 1e-9)


def busy_seconds() -> float:
    """The budget's clock: this process's CPU seconds per thread. On an idle machine it runs with
    the wall clock; on a shared one, time other jobs take from our cores is not counted, so every
    recipe gets the same compute (the wall time of each run is reported beside it)."""
    return time.process_time() / torch.get_num_threads()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


# The training keys that make a recipe (the rest, logging and saving, do not change the model).
RECIPE_KEYS = ("dropout", "optimizer", "learning_rate", "min_learning_rate", "muon_learning_rate", "muon_momentum",
               "muon_ns_steps", "lr_schedule", "decay_fraction", "warmup_steps", "max_steps", "batch_size",
               "max_seq_length", "weight_decay", "beta1", "beta2", "max_grad_norm", "dropout_after_epochs",
               "max_epochs")


def demo_recipe() -> dict:
    """The recipe keys of configs/training_demo.yaml: `ours` when --ours changes nothing."""
    demo = TrainingConfig.from_yaml(ROOT / "configs" / "training_demo.yaml").to_dict()["train"]
    return {k: demo[k] for k in RECIPE_KEYS}


def parse_keys(items) -> dict:
    """KEY=VALUE training keys (train. prefix optional), typed and checked as train.py's --set."""
    items = [i if i.startswith("train.") else f"train.{i}" for i in items]
    full = TrainingConfig.from_dict({"train": TODAY}).with_overrides(items, where="--ours").to_dict()["train"]
    return {i.split("=", 1)[0].removeprefix("train."): full[i.split("=", 1)[0].removeprefix("train.")]
            for i in items if "=" in i}


def parse_model_keys(items) -> dict:
    """KEY=VALUE model config keys, typed as YAML reads them and checked by TransformerConfig."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise KrMiniLlmError(f"--ours_model {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def parse_step_seconds(items, recipes) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            seconds = float(value) if sep else float("nan")
        except ValueError:
            seconds = float("nan")
        if name not in recipes or not seconds > 0:
            raise KrMiniLlmError(f"--step_seconds {item!r}: expected NAME=SECONDS with NAME one of "
                                 f"{', '.join(recipes)} and SECONDS > 0")
        out[name] = seconds
    return out


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """The budget options of the scripts that train recipes for equal minutes (this one, bench_tokenizer.py)."""
    p.add_argument("--budget", choices=["steps", "time"], default="steps",
                   help="steps: each recipe's step time is measured first (--calibration_steps, on an idle "
                        "machine), then every run makes the steps that fit its minutes, so other jobs, "
                        "--jobs and --run_threads change how long it takes, not what it computes; "
                        "time: each run trains until its minutes of busy CPU time are up")
    p.add_argument("--calibration_steps", type=int, default=20)
    p.add_argument("--step_seconds", nargs="*", default=[], metavar="NAME=SECONDS",
                   help="step budget: a run's seconds a step from an earlier calibration (printed by every "
                        "run), instead of measuring it again")
    p.add_argument("--jobs", type=int, default=1, help="step budget: runs at once, each in its own process")
    p.add_argument("--run_threads", type=int, default=None,
                   help="step budget: threads of each run (default: --threads, or 1 with --jobs > 1)")


def check_budget_args(args) -> None:
    if args.budget == "time" and args.jobs > 1:
        raise KrMiniLlmError("--jobs runs at once only with --budget steps: a time budget needs the cores to itself")
    if args.calibration_steps < 1 or args.jobs < 1:
        raise KrMiniLlmError(f"--calibration_steps {args.calibration_steps} and --jobs {args.jobs} must be >= 1")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@command()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="data/tokens")
    p.add_argument("--tokenizer", default="models/tokenizer.model")
    p.add_argument("--model_config", default=str(ROOT / "configs" / "model_tiny.yaml"))
    p.add_argument("--minutes", type=float, nargs="+", default=[4.0, 10.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=["gpt2", "today", "ours"], choices=["gpt2", "today", "ours"])
    p.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training keys of the recipe under test, over the demo's (configs/training_demo.yaml)")
    p.add_argument("--ours_model", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model config keys of the recipe under test (e.g. tie_word_embeddings=false)")
    p.add_argument("--threads", type=int, help="threads of the calibration (and of time-budgeted runs)")
    add_budget_args(p)
    p.add_argument("--output", default="benchmarks/recipe.md")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    claim_output(args.output, overwrite=args.overwrite, inputs=[args.tokens, args.tokenizer], is_dir=False)
    check_budget_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    shards = load_shards(args.tokens, args.tokenizer)  # the calibration's
    model_cfg = TransformerConfig.from_yaml(args.model_config)
    ours_cfg = model_cfg.replace(**parse_model_keys(args.ours_model)) if args.ours_model else model_cfg
    ours = {**TODAY, **demo_recipe(), **parse_keys(args.ours)}
    if ours.get("dropout") is not None:  # train.dropout: the run's rate, over the model config's
        ours_cfg = ours_cfg.replace(dropout=ours["dropout"])
    recipes = {"gpt2": TODAY, "today": TODAY, "ours": ours}
    configs = {"gpt2": model_cfg, "today": model_cfg, "ours": ours_cfg}
    began = time.time()
    lines = ["# Recipes at equal wall-clock minutes\n",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"bf16 autocast: {precision_choice(torch.device('cpu'), True)[1]}",
             f"Data: {args.tokens} (train {shards['train'].num_tokens:,}, valid {shards['valid'].num_tokens:,}, "
             f"test {shards['test'].num_tokens:,} tokens); model {Path(args.model_config).name}",
             f"ours = configs/training_demo.yaml's recipe + {' '.join(args.ours + args.ours_model) or 'nothing'}, "
             "schedule keyed to the time budget",
             f"Command: python scripts/bench_recipe.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"]
    phases = [n + suffix for n in args.recipes for suffix in ("", LATE) if not suffix or late_dropout(recipes[n], configs[n])]
    step_s = parse_step_seconds(args.step_seconds, phases) if args.budget == "steps" else {}
    if args.budget == "steps":
        given = sorted(step_s)
        missing = {n: (recipes[n], configs[n]) for n in args.recipes
                   if n not in step_s or (late_dropout(recipes[n], configs[n]) and n + LATE not in step_s)}
        if missing:  # a given NAME=SECONDS stays; only what was not given is measured
            for name, seconds in step_seconds(missing, shards, args.calibration_steps).items():
                step_s.setdefault(name, seconds)
        for name in phases:
            print(f"{name}: {step_s[name]:.3f} s a step at {torch.get_num_threads()} threads", flush=True)
        lines.append(f"Budget: the steps each recipe makes in the minutes, from its seconds a step at "
                     f"{torch.get_num_threads()} threads (median of {args.calibration_steps} after 3 warm-up "
                     f"steps, the recipes taking turns{'; given: ' + ', '.join(given) if given else ''}): "
                     + ", ".join(f"{n} {v:.3f}" for n, v in step_s.items()) + "\n")
    jobs = []
    for minutes in args.minutes:
        for seed in args.seeds:
            for name in args.recipes:
                keys = dict(recipes[name])
                if name == "ours":
                    keys["max_time_minutes"] = minutes
                late = ((first_dropout_step(keys, shards["train"].num_tokens), step_s[name + LATE])
                        if late_dropout(keys, configs[name]) and name in step_s else None)
                jobs.append(((minutes, name, seed), (args.tokens, args.tokenizer, name, keys, configs[name], seed,
                                                     minutes, budget_steps(minutes, step_s.get(name), late))))
    results = {}

    def report(key, r):
        results[key] = r
        minutes, name, seed = key
        print(f"{minutes:g} min seed {seed} {name:5s}: {r['steps']} steps ({r['wall_s']:.0f} s wall), "
              f"lr at the end {r['lr_end']:.2e}, valid {r['valid']:.4f} bpb, test {r['test']:.4f} bpb", flush=True)

    run_all(jobs, args, report)
    lines += ["| minutes | recipe | steps (mean) | lr at end | valid bpb (mean) | seed spread (max-min) | test bpb (mean) "
              "| valid vs gpt2 | valid vs today |", "|---|---|---|---|---|---|---|---|---|"]
    for minutes in args.minutes:
        mean = {}
        for name in args.recipes:
            rs = [results[(minutes, name, s)] for s in args.seeds]
            mean[name] = statistics.mean(r["valid"] for r in rs)
        for name in args.recipes:
            rs = [results[(minutes, name, s)] for s in args.seeds]
            v = [r["valid"] for r in rs]
            vs = lambda base: f"{100 * (1 - mean[name] / mean[base]):+.1f}% lower" if base in mean else "–"  # noqa: E731
            lines.append(f"| {minutes:g} | {name} | {statistics.mean(r['steps'] for r in rs):.0f} | "
                         f"{statistics.mean(r['lr_end'] for r in rs):.1e} | {mean[name]:.4f} | {max(v) - min(v):.4f} | "
                         f"{statistics.mean(r['test'] for r in rs):.4f} | {vs('gpt2')} | {vs('today')} |")
    lines += ["", "Per run (minutes, recipe, seed: steps, wall seconds, valid bpb, test bpb):", ""]
    lines += [f"- {m:g}, {n}, {s}: {r['steps']}, {r['wall_s']:.0f}, {r['valid']:.4f}, {r['test']:.4f}"
              for (m, n, s), r in results.items()]
    from bench_common import write_report

    write_report(args.output, lines, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
