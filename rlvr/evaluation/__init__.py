"""Evaluation: pass@k, accuracy and format compliance on held-out problems, and before/after tables."""

from rlvr.evaluation.evaluate import (
    comparison_table,
    evaluate,
    format_patterns,
    is_correct,
    normalize_answer,
    print_comparison,
    write_result,
)
from rlvr.evaluation.passk import pass_at_k, pass_at_k_interval

__all__ = [
    "comparison_table",
    "evaluate",
    "format_patterns",
    "is_correct",
    "normalize_answer",
    "pass_at_k",
    "pass_at_k_interval",
    "print_comparison",
    "write_result",
]
