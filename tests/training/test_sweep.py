"""kr-mini-llm sweep: two tiny trials end to end, a best config that trains, and every bad input
refused before any trial runs."""
import csv

import pytest
import yaml

pytest.importorskip("optuna")

from kr_mini_llm.cli.sweep import main  # noqa: E402
from kr_mini_llm.training import Trainer, TrainingConfig  # noqa: E402
from kr_mini_llm.model import TransformerConfig  # noqa: E402

SPACE = {"trial": {"steps": 4, "reports": 2}, "study": {"trials": 2, "seed": 1},
         "params": {"train.learning_rate": {"low": 1e-3, "high": 5e-3, "log": True},
                    "train.optimizer": {"choices": ["adamw", "muon"]}}}


@pytest.fixture()
def files(model_config, train_config, tmp_path):
    base = train_config.with_overrides(["threads=1", "train.eval_batches=2"])
    base.save_yaml(tmp_path / "train.yaml")
    model_config.save_yaml(tmp_path / "model.yaml")
    return tmp_path


def write_space(path, space):
    path.write_text(yaml.safe_dump(space))
    return str(path)


def sweep(files, space, *extra, out="out"):
    return main(["--space", write_space(files / "space.yaml", space), "--config", str(files / "train.yaml"),
                 "--model_config", str(files / "model.yaml"), "--output", str(files / out), *extra])


def test_two_trials_end_to_end_write_a_config_that_trains(files, capsys):
    assert sweep(files, SPACE) == 0
    out = files / "out"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1"] and all(r["state"] == "complete" for r in rows)
    assert all(float(r["val_bpb"]) > 0 and r["train.optimizer"] in ("adamw", "muon") for r in rows)
    assert (out / "history.png").stat().st_size > 1000 and (out / "importances.json").exists()
    best = TrainingConfig.from_yaml(out / "best_config.yaml")
    best_row = min(rows, key=lambda r: float(r["val_bpb"]))
    assert best.train.optimizer == best_row["train.optimizer"]
    assert best.train.learning_rate == pytest.approx(float(best_row["train.learning_rate"]))
    assert best.train.max_steps == TrainingConfig.from_yaml(files / "train.yaml").train.max_steps  # the base's budget
    # train.py takes it as it is (here for two steps).
    run = best.with_overrides(["train.max_steps=2", f"output_dir={files / 'best_run'}"])
    result = Trainer(TransformerConfig.from_yaml(out / "best_model_config.yaml"), run, show_progress=False).train()
    assert result["step"] == 2
    # A rerun with --resume continues the study (already complete: no new trial), an unflagged one is refused.
    assert sweep(files, SPACE, "--resume") == 0
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 2
    assert sweep(files, SPACE) == 2 and "already exists" in capsys.readouterr().err


def with_params(**params):
    return {**SPACE, "params": params}


@pytest.mark.parametrize("space, message", [
    (with_params(**{"train.learnig_rate": {"low": 1e-4, "high": 1e-3}}), "unknown key 'train.learnig_rate' (did you mean 'train.learning_rate'?)"),
    (with_params(**{"train.learning_rate": {"low": 1e-3, "high": 1e-4}}), "low 0.001 >= high 0.0001"),
    (with_params(**{"train.learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}), "log range needs low > 0"),
    (with_params(**{"train.warmup_steps": {"low": 0.5, "high": 10}}), "integer setting"),
    (with_params(**{"train.optimizer": {"low": 0, "high": 1}}), "give choices"),
    (with_params(**{"train.min_learning_rate": {"low": 1e-4, "high": 1.0}}), "min_learning_rate must be in"),
    (with_params(**{"model.num_heads": {"choices": [4, 5]}}), "model.num_heads=5"),
    (with_params(**{"train.max_steps": {"low": 10, "high": 20}}), "the trial budget is trial.minutes"),
    ({**SPACE, "trial": {"minutes": 1, "steps": 3}}, "exactly one of minutes"),
    ({**SPACE, "trial": {"steps": 1, "reports": 2}}, "fewer than trial.reports"),
])
def test_bad_spaces_are_refused_before_any_trial(files, capsys, space, message):
    assert sweep(files, space) == 2
    assert message in capsys.readouterr().err
    assert not (files / "out" / "trials").exists()


def test_a_budget_too_short_for_one_evaluation_is_refused(files, capsys):
    assert sweep(files, {**SPACE, "trial": {"minutes": 1e-6}}) == 2
    err = capsys.readouterr().err
    assert "shorter than one training step and one evaluation" in err
    assert not (files / "out").exists()


def test_a_study_of_another_space_is_refused(files, capsys):
    one_trial = {**SPACE, "study": {"trials": 1, "seed": 1}}
    assert sweep(files, one_trial) == 0
    other = {**one_trial, "params": {"train.learning_rate": {"low": 1e-3, "high": 4e-3, "log": True}}}
    assert sweep(files, other, "--resume") == 2
    assert "made from another search space" in capsys.readouterr().err
    assert len(list((files / "out" / "trials").iterdir())) == 1
