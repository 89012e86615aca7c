"""Evaluation: pass@k, accuracy and format compliance on held-out problems, and before/after tables and charts."""

from rlvr.evaluation.compare import (
    compare_stages,
    parse_stages,
    report_comparison,
    resolve_stages,
    write_comparison,
)
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
    "compare_stages",
    "comparison_table",
    "evaluate",
    "format_patterns",
    "is_correct",
    "normalize_answer",
    "parse_stages",
    "pass_at_k",
    "pass_at_k_interval",
    "print_comparison",
    "report_comparison",
    "resolve_stages",
    "write_comparison",
    "write_result",
]
