"""Faults in LoRA fine-tuning: SIGTERM saves, torchrun is refused, damaged adapter files are named,
and the default --num-layers fits a model with fewer blocks."""
import os
import signal

import pytest
from safetensors import safe_open

from kr_mini_llm.lora import read_adapter_config
from kr_mini_llm.lora.adapters import load_adapter_weights, load_training_state, state_path
from kr_mini_llm.lora.apply import LoRAError
from kr_mini_llm.cli.lora import main
from kr_mini_llm.lora.trainer import LoRATrainer


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def drop_num_layers(args):
    i = args.index("--num-layers")
    return args[:i] + args[i + 2:]


def test_sigterm_saves_the_adapters_and_stops(lora_args, tmp_path, capsys, monkeypatch):
    real = LoRATrainer._train_step

    def step(self):
        if self.step == 2:  # during the third iteration, as Slurm or `timeout` would
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(LoRATrainer, "_train_step", step)
    code, out, err = run(lora_args + ["--iters", "20"], capsys)
    assert code == 0, err
    assert "SIGTERM: saving a checkpoint after this step" in out
    weights = tmp_path / "adapters" / "adapters.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert f.metadata()["step"] == "3"
    monkeypatch.setattr(LoRATrainer, "_train_step", real)
    code, out, err = run(lora_args + ["--iters", "5", "--resume-adapter-file", str(weights)], capsys)
    assert code == 0, err
    assert "at iteration 3" in out


def test_torchrun_is_refused(lora_args, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, err = run(lora_args + ["--iters", "2"], capsys)
    assert code == 2
    assert "LoRA fine-tuning runs in one process, but WORLD_SIZE=2" in err and "Traceback" not in err


def test_default_num_layers_uses_every_block_of_a_shallower_model(lora_args, tmp_path, capsys):
    code, out, err = run(drop_num_layers(lora_args) + ["--iters", "2"], capsys)
    assert code == 0, err
    assert read_adapter_config(tmp_path / "adapters")["num_layers"] == 3  # the base has 3 blocks (< 16)
    code, out, err = run(drop_num_layers(lora_args) + ["--num-layers", "5", "--iters", "2", "--overwrite-adapters"],
                         capsys)
    assert code == 2 and "--num-layers 5 is more than the model's 3 blocks" in err  # an explicit value is kept


def test_damaged_adapter_files_are_named(lora_args, base_dir, tmp_path, capsys):
    from kr_mini_llm.lora.base import load_base_model

    assert run(lora_args + ["--iters", "5"], capsys)[0] == 0
    weights = tmp_path / "adapters" / "adapters.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x40
    weights.write_bytes(bytes(data))
    model = load_base_model(base_dir).model
    from kr_mini_llm.lora.apply import LoRAParameters, apply_lora

    apply_lora(model, 2, LoRAParameters(rank=8, scale=20.0))
    with pytest.raises(LoRAError, match="adapters.safetensors does not match the checksum recorded"):
        load_adapter_weights(model, weights)
    state = state_path(tmp_path / "adapters" / "0000005_adapters.safetensors")
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    with safe_open(str(tmp_path / "adapters" / "0000005_adapters.safetensors"), framework="pt") as f:
        digest = f.metadata()["state_blake2b"]
    with pytest.raises(LoRAError, match="state.pt does not match the checksum recorded"):
        load_training_state(tmp_path / "adapters" / "0000005_adapters.safetensors", 5, digest)
