"""Know your model: the evaluation report (scripts/evaluate.py), the lm-evaluation-harness
adapter (harness.py) and attention maps (attention_maps.py)."""
from .prompts import DEFAULT_PROMPTS, PromptsError, read_prompts
from .test_split import EvalError, TestSplit, test_loss
from .tokenizer_stats import format_tokenizer_stats, tokenizer_stats

__all__ = ["DEFAULT_PROMPTS", "PromptsError", "read_prompts", "EvalError", "TestSplit", "test_loss",
           "tokenizer_stats", "format_tokenizer_stats", "evaluate_models", "write_report"]


def __getattr__(name):
    if name in ("evaluate_models", "write_report", "evaluate_model", "render_markdown"):
        from . import report

        return getattr(report, name)
    raise AttributeError(name)
