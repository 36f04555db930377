"""Hyperparameter sweeps on Optuna (kr-mini-llm sweep): space.py reads the search space, study.py
runs the trials, report.py writes the table, importances, plots and the best config."""
from .space import Space, SpaceError, load_space

__all__ = ["Space", "SpaceError", "load_space"]
