"""Fine-tuning: the LoRA and DoRA layers, applying and fusing adapters, adapter files, PEFT in/out, the
trainer (LoRA, DoRA or full).

    from kr_mini_llm.lora import LoRAParameters, apply_lora, fuse_lora, load_adapters
    apply_lora(model, num_layers=8, params=LoRAParameters(rank=8, scale=20.0))
    load_adapters(model, "adapters/demo")          # base + adapters, unfused
    fuse_lora(model)                                # W + scale * B A, a plain model again
"""
from .adapters import load_adapters, model_fingerprint, read_adapter_config
from .apply import (ALL_KEYS, DEFAULT_KEYS, LoRAError, LoRAParameters, adapters_disabled, apply_lora, fuse_lora,
                    lora_modules, lora_state_dict, parameter_counts, trainable_parameters)
from .dora import DoRALinear
from .layer import LoRALinear

__all__ = ["ALL_KEYS", "DEFAULT_KEYS", "DoRALinear", "LoRAError", "LoRALinear", "adapters_disabled", "LoRAParameters", "apply_lora", "fuse_lora",
           "load_adapters", "lora_modules", "lora_state_dict", "model_fingerprint", "parameter_counts",
           "read_adapter_config", "trainable_parameters"]
