"""Reward functions and the code that runs them (semantics §2, §7 and §9).

A reward function is a plain callable `fn(prompts, completions, completion_ids=None, **columns)`
returning one float or None per completion (TRL's protocol, so TRL reward functions work as they
are). Built-ins: the GSM8K set of §9 (`gsm8k_rewards`), `numeric_proximity_reward` and
`math_verify_reward`. `resolve_rewards` turns config names into functions; `score_completions`
runs them over a batch and combines them into one reward per completion.
"""

from rlvr.rewards.code import make_code_reward
from rlvr.rewards.gsm8k import (
    correctness_reward,
    gsm8k_rewards,
    int_reward,
    make_correctness_reward,
    make_int_reward,
    make_soft_format_reward,
    make_strict_format_reward,
    make_xml_count_reward,
    soft_format_reward,
    strict_format_reward,
    xml_count_reward,
)
from rlvr.rewards.math import (
    make_math_verify_reward,
    make_numeric_proximity_reward,
    math_verify_reward,
    numeric_proximity_reward,
    parse_last_number,
    proximity_score,
)
from rlvr.rewards.registry import available_rewards, resolve_rewards
from rlvr.rewards.scoring import RewardScores, combine_rewards, nanstd, reward_name, score_completions
from rlvr.rewards.text import RewardFunc, completion_text, extract_tag

__all__ = [
    "RewardFunc",
    "RewardScores",
    "available_rewards",
    "combine_rewards",
    "completion_text",
    "correctness_reward",
    "extract_tag",
    "gsm8k_rewards",
    "int_reward",
    "make_code_reward",
    "make_correctness_reward",
    "make_int_reward",
    "make_math_verify_reward",
    "make_numeric_proximity_reward",
    "make_soft_format_reward",
    "make_strict_format_reward",
    "make_xml_count_reward",
    "math_verify_reward",
    "nanstd",
    "numeric_proximity_reward",
    "parse_last_number",
    "proximity_score",
    "resolve_rewards",
    "reward_name",
    "score_completions",
    "soft_format_reward",
    "strict_format_reward",
    "xml_count_reward",
]
