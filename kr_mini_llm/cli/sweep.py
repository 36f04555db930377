"""Search training settings with Optuna: each trial trains for a fixed number of minutes (or steps),
TPE picks the next values, the median pruner stops trials whose validation bits per byte lag.

  python scripts/sweep.py --space configs/sweep_demo.yaml --config configs/training_demo.yaml \\
      --model_config configs/model_tiny.yaml --output sweeps/demo
  python scripts/sweep.py ... --output sweeps/demo --resume        # continue the study (study.db)

The output folder gets study.db, trials/trial-N (each trial's run), trials.csv, importances.json,
plots (PNG) and best_config.yaml + best_model_config.yaml for scripts/train.py. On a cluster, start
the same command on every machine with one --storage (e.g. postgresql://... or a JournalStorage
file on a shared filesystem: journal:///shared/study.log) and --study_name: docs/training-recipe.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import KrMiniLlmError
from ..io.atomic import remove_directory
from ..io.outputs import add_overwrite_flag, claim_output
from ..model import TransformerConfig
from ..training import TrainingConfig
from .command import command

TAG = "[sweep] "


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help="search space YAML (trial:, study:, params:; see docs/training-recipe.md)")
    p.add_argument("--config", required=True, help="base training YAML (configs/training*.yaml)")
    p.add_argument("--model_config", required=True, help="base model YAML (configs/model_*.yaml)")
    p.add_argument("--output", required=True, help="folder for the study, the trials' runs and the report")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base training config key, as in train.py (repeatable)")
    p.add_argument("--trials", type=int, help="finished trials the study should hold (default: the space's study.trials)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUTPUT/study.db; journal:///PATH for a "
                                     "JournalStorage file on a shared filesystem)")
    p.add_argument("--study_name", help="default: the space file's name without .yaml")
    p.add_argument("--resume", action="store_true", help="continue the study in an existing --output")
    p.add_argument("--report_only", action="store_true", help="write the report of the trials so far; run none")
    add_overwrite_flag(p)
    return p


def storage_url(given: str | None, output: Path) -> str:
    from ..sweep.study import STUDY_DB

    if given is None:
        return f"sqlite:///{(output / STUDY_DB).resolve()}"
    if given.startswith("journal:///"):  # a file every worker appends to (NFS-safe locking)
        import optuna
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(given[len("journal://"):]))
    return given


@command(FileNotFoundError, ValueError, prefix=TAG)
def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise KrMiniLlmError("the sweep needs Optuna: pip install 'kr-mini-llm[sweep]' "
                             "(or pip install optuna)") from None
    from ..sweep.report import write_report
    from ..sweep.space import SpaceError, check_against, load_space
    from ..sweep.study import check_budget, check_study, run_sweep

    output = Path(args.output)
    if args.trials is not None and args.trials < 1:
        raise SpaceError(f"--trials must be >= 1, got {args.trials}")
    if args.resume and args.overwrite:
        raise SpaceError("--resume continues the study in --output and --overwrite replaces it: give one")
    space = load_space(args.space)
    config = TrainingConfig.from_yaml(args.config)
    if args.set:
        config = config.with_overrides(args.set)
    model_config = TransformerConfig.from_yaml(args.model_config)
    check_against(space, config, model_config)
    inputs = [args.space, args.config, args.model_config, config.data.tokens, config.data.tokenizer]
    if not (args.resume and output.is_dir()):
        claim_output(output, overwrite=args.overwrite, inputs=inputs, flag="--output")
    else:
        claim_output(output, overwrite=True, inputs=inputs, flag="--output")  # the overlap checks alone
    fresh = args.overwrite or not output.exists()
    storage = storage_url(args.storage, output)
    if not fresh or args.storage is not None:
        check_study(space, storage, args.study_name or Path(args.space).stem)
    if not args.report_only:
        check_budget(space, config, model_config, log=lambda m: print(TAG + m))
    if args.overwrite and output.exists():
        remove_directory(output)
    output.mkdir(parents=True, exist_ok=True)
    storage = storage_url(args.storage, output)
    name = args.study_name or Path(args.space).stem
    if args.report_only:
        from ..sweep.study import open_study

        study = open_study(space, storage, name)
    else:
        study = run_sweep(space, config, model_config, output, storage, name, n_trials=args.trials,
                          log=lambda m: print(TAG + m, flush=True))
    report = write_report(study, space, config, model_config, output)
    if report["best"] is not None:
        print(f"\n{TAG}train with it: python scripts/train.py --config {output / 'best_config.yaml'} "
              f"--model_config {output / 'best_model_config.yaml'}")
    return 0
