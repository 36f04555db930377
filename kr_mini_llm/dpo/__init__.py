"""Preference tuning (DPO): preference pairs, the sigmoid DPO loss, and its task on the fine-tuning trainer.

    python scripts/dpo.py --model models/demo-sft --train --data data/dpo --adapter-path adapters/demo-dpo
"""
from .data import PreferenceBatches, PreferenceDataset, PreferenceError, load_preference_split
from .loss import dpo_loss, sequence_logps

__all__ = ["PreferenceBatches", "PreferenceDataset", "PreferenceError", "dpo_loss", "load_preference_split",
           "sequence_logps"]
