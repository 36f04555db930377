"""The Trainer runs whatever task it is given (training/task.py): the loop calls the task for the
model, data, optimizer, evaluation and saving, and nothing else of pretraining."""
import itertools

import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig
from kr_mini_llm.training import Trainer, TrainingConfig
from kr_mini_llm.training.task import PretrainingTask, TaskBuild, TrainingTask


class OneBatchTask(TrainingTask):
    """A tiny model on one fixed random batch, without tokenizer or shards."""
    check_memory = False

    def __init__(self, model_config):
        self.model_config, self.events, self.losses = model_config, [], []

    def build(self, context):
        torch.manual_seed(0)
        model = Transformer(self.model_config, ops_impl="reference")
        ids = torch.randint(0, self.model_config.vocab_size, (2, 9))
        self.batch = (ids[:, :-1], ids[:, 1:])
        self.events.append("build")
        return TaskBuild(model=model, forward=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                         batches=itertools.repeat(self.batch), tokenizer=None, tokenizer_path=None)

    def start(self, run):
        self.events.append(f"start@{run.step}")

    def after_step(self, run, loss):
        self.losses.append(loss)

    @torch.no_grad()
    def evaluate(self, run):
        self.events.append(f"evaluate@{run.step}")
        return {"step": run.step, "val_loss": float(run.model(*self.batch)), "val_ppl": 1.0, "val_bpb": 1.0}

    def save(self, run):
        self.events.append(f"save@{run.step}")


def test_the_loop_runs_a_task_it_does_not_know(tmp_path):
    model_config = TransformerConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     intermediate_size=64, max_seq_length=16)
    config = TrainingConfig.from_dict({"device": "cpu", "output_dir": str(tmp_path), "train": {
        "batch_size": 2, "max_seq_length": 8, "max_steps": 6, "warmup_steps": 0, "lr_schedule": "constant",
        "learning_rate": 0.5, "log_steps": 100, "eval_steps": 3, "save_steps": 3, "sample_prompts": []}})
    task = OneBatchTask(model_config)
    trainer = Trainer(model_config, config, task=task, show_progress=False)
    result = trainer.train()
    assert task.events == ["build", "start@0", "evaluate@3", "save@3", "evaluate@6", "save@6"]
    assert len(task.losses) == 6 and task.losses[-1] < task.losses[0]  # the loop trained the task's model
    assert result["step"] == 6 and result["val_loss"] < task.losses[0]


def test_pretraining_is_the_default_task(token_data, tmp_path):
    tokens, tok = token_data
    model_config = TransformerConfig(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     intermediate_size=64, max_seq_length=16)
    config = TrainingConfig.from_dict({"device": "cpu", "output_dir": str(tmp_path), "data": {
        "tokens": str(tokens), "tokenizer": tok}, "train": {"batch_size": 2, "max_seq_length": 8, "max_steps": 1}})
    trainer = Trainer(model_config, config, show_progress=False)
    assert type(trainer.task) is PretrainingTask
    assert trainer.batches is not None and trainer.optimizer is not None
    trainer.release_lock()


def test_a_task_without_resume_refuses_it_clearly(tmp_path):
    model_config = TransformerConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     intermediate_size=64, max_seq_length=16)
    config = TrainingConfig.from_dict({"device": "cpu", "output_dir": str(tmp_path), "train": {
        "batch_size": 2, "max_seq_length": 8, "max_steps": 2, "sample_prompts": []}})
    with pytest.raises(ValueError, match="OneBatchTask cannot resume a run"):
        Trainer(model_config, config, task=OneBatchTask(model_config), resume_from=tmp_path, show_progress=False)
    with pytest.raises(TypeError, match="abstract"):
        TrainingTask()
