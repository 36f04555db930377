"""Training: config, trainer loop, optimizer and schedule, checkpoints, metrics, distributed."""
from ..checkpoint import CheckpointError, resolve_checkpoint
from .run_checkpoint import load_checkpoint, save_checkpoint
from .config import TrainingConfig
from .trainer import Trainer, TrainingStopped

__all__ = ["CheckpointError", "Trainer", "TrainingConfig", "TrainingStopped", "load_checkpoint",
           "resolve_checkpoint", "save_checkpoint"]
