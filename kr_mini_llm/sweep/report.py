"""What a sweep leaves in its output folder:

  trials.csv                 one row per trial: number, state, val_bpb, steps, minutes, parameters
  importances.json           Optuna's parameter importances (fANOVA), when two trials completed
  history.png  importances.png  intermediate.png   Optuna's matplotlib plots
  best_config.yaml  best_model_config.yaml         the base configs with the best trial's values:
                             scripts/train.py --config best_config.yaml --model_config best_model_config.yaml
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

from ..io.atomic import atomic_write_text
from ..model import TransformerConfig
from ..training import TrainingConfig
from .space import Space, apply

TRIALS_CSV = "trials.csv"
IMPORTANCES = "importances.json"
BEST_CONFIG = "best_config.yaml"
BEST_MODEL_CONFIG = "best_model_config.yaml"


def write_report(study, space: Space, config: TrainingConfig, model_config: TransformerConfig, output: Path,
                 log=print) -> dict:
    """Writes the files above; returns {"best": trial or None, "importances": {...}, "files": [...]}."""
    import optuna

    keys = [p.key for p in space.params]
    trials = study.get_trials(deepcopy=False)
    rows = [[t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.5f}",
             t.user_attrs.get("steps", ""), t.user_attrs.get("minutes", ""), *[t.params.get(k, "") for k in keys]]
            for t in trials]
    header = ["trial", "state", "val_bpb", "steps", "minutes", *keys]
    with open(output / TRIALS_CSV, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    files = [output / TRIALS_CSV]
    log(_table(header, rows))

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    importances = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True, default=str) for t in complete}) >= 2:
            try:
                importances = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as e:  # e.g. no parameter varied
                log(f"parameter importances: not computed ({e})")
        atomic_write_text(output / IMPORTANCES, json.dumps(importances, indent=2) + "\n")
        files.append(output / IMPORTANCES)
        if importances:
            log("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
        files += _plots(study, output, bool(importances), log)

    best = min(complete, key=lambda t: t.value) if complete else None
    if best is not None:
        best_cfg, best_model = apply(best.params, config, model_config, where=f"best trial {best.number}")
        best_cfg.save_yaml(output / BEST_CONFIG)
        best_model.save_yaml(output / BEST_MODEL_CONFIG)
        files += [output / BEST_CONFIG, output / BEST_MODEL_CONFIG]
        log(f"best: trial {best.number}, val_bpb {best.value:.4f}: " +
            ", ".join(f"{k}={v}" for k, v in best.params.items()))
    else:
        log("no trial completed: no best config written")
    return {"best": best, "importances": importances, "files": files}


def _table(header, rows) -> str:
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _plots(study, output: Path, with_importances: bool, log) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = [("history.png", vis.plot_optimization_history), ("intermediate.png", vis.plot_intermediate_values)]
    if with_importances:
        plots.append(("importances.png", vis.plot_param_importances))
    written = []
    for name, plot in plots:
        try:
            ax = plot(study)
        except (ValueError, RuntimeError) as e:
            log(f"{name}: not drawn ({e})")
            continue
        fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
        fig.savefig(output / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(output / name)
    return written
