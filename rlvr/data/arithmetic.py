"""A built-in task: short arithmetic word problems with integer answers, seeded and offline.

The demo and the tests need a task with verifiable answers that a 135M model can learn on a CPU
in minutes, without downloads. Each example carries a correct worked `completion` in the tag
format, so the same data serves the SFT warm-up and GRPO. Reasoning lines are Python expressions
(`23 + 45 = 68`, `3 * 7 = 21`) so a test can check them with eval.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from rlvr.data.prompts import SYSTEM_PROMPT, format_completion, to_conversation
from rlvr.errors import RlvrError

NAMES = ("Tom", "Ana", "Sam", "Mia", "Leo", "Zoe", "Ben", "Ivy")
ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "coins", "cookies", "cards")
MAX_FACTOR = 9  # multiplications stay small enough for a tiny model to learn

Step = tuple[str, int]  # ("23 + 45", 68)
Problem = tuple[str, list[Step]]


def _add(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    a, b = rng.randint(1, hi), rng.randint(1, hi)
    question = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?"
    return question, [(f"{a} + {b}", a + b)]


def _add_boxes(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    a, b = rng.randint(1, hi), rng.randint(1, hi)
    question = f"One box has {a} {what} and another has {b}. How many {what} are there in total?"
    return question, [(f"{a} + {b}", a + b)]


def _subtract(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    a = rng.randint(1, hi)
    b = rng.randint(1, a)
    return f"{who} had {a} {what} and gave away {b}. How many {what} are left?", [(f"{a} - {b}", a - b)]


def _subtract_shop(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    a = rng.randint(1, hi)
    b = rng.randint(1, a)
    return f"A shop had {a} {what} and sold {b}. How many {what} does it have left?", [(f"{a} - {b}", a - b)]


def _multiply(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    top = min(MAX_FACTOR, hi)
    a, b = rng.randint(2, top), rng.randint(2, top)
    return f"{who} buys {a} packs of {b} {what}. How many {what} is that?", [(f"{a} * {b}", a * b)]


def _add_subtract(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    a, b = rng.randint(1, hi), rng.randint(1, hi)
    c = rng.randint(1, min(hi, a + b))
    question = f"{who} has {a} {what}, finds {b} more, then loses {c}. How many {what} are left?"
    return question, [(f"{a} + {b}", a + b), (f"{a + b} - {c}", a + b - c)]


def _subtract_add(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    a = rng.randint(1, hi)
    b, c = rng.randint(1, a), rng.randint(1, hi)
    question = f"{who} had {a} {what}, gave away {b}, then got {c} more. How many {what} now?"
    return question, [(f"{a} - {b}", a - b), (f"{a - b} + {c}", a - b + c)]


def _multiply_add(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    top = min(MAX_FACTOR, hi)
    a, b, c = rng.randint(2, top), rng.randint(2, top), rng.randint(1, hi)
    question = f"{who} has {a} bags of {b} {what} and {c} loose {what}. How many {what} in all?"
    return question, [(f"{a} * {b}", a * b), (f"{a * b} + {c}", a * b + c)]


def _multiply_subtract(rng: random.Random, hi: int, who: str, what: str) -> Problem:
    top = min(MAX_FACTOR, hi)
    a, b = rng.randint(2, top), rng.randint(2, top)
    c = rng.randint(1, min(hi, a * b))
    question = f"{who} buys {a} packs of {b} {what} and gives away {c}. How many {what} are left?"
    return question, [(f"{a} * {b}", a * b), (f"{a * b} - {c}", a * b - c)]


TEMPLATES: tuple[Callable[[random.Random, int, str, str], Problem], ...] = (
    _add,
    _add_boxes,
    _subtract,
    _subtract_shop,
    _multiply,
    _add_subtract,
    _subtract_add,
    _multiply_add,
    _multiply_subtract,
)


def arithmetic_problems(
    n: int,
    seed: int = 0,
    system_prompt: str | None = SYSTEM_PROMPT,
    reasoning_tag: str = "reasoning",
    answer_tag: str = "answer",
    max_operand: int = 50,
) -> list[dict[str, Any]]:
    """`n` distinct word problems: `{"prompt", "answer", "completion", "question"}` each.

    The same seed gives the same list, and a longer list starts with the shorter one. `answer` is
    the integer as a string; `completion` is a correct worked solution in the tag format. Operands
    of + and - are 1..max_operand; factors of * are 2..min(9, max_operand).
    """
    if n < 0:
        raise RlvrError(f"arithmetic_problems(n={n}): the number of problems must be 0 or more")
    if max_operand < 2:
        raise RlvrError(f"arithmetic_problems(max_operand={max_operand}): use max_operand of 2 or more")
    rng = random.Random(seed)
    seen: set[str] = set()
    examples: list[dict[str, Any]] = []
    misses = 0
    # Duplicates are redrawn; a long run of them means the question space is used up (tiny
    # max_operand, huge n), which becomes an error instead of an endless loop.
    while len(examples) < n and misses < 2000:
        template = rng.choice(TEMPLATES)
        question, steps = template(rng, max_operand, rng.choice(NAMES), rng.choice(ITEMS))
        if question in seen:
            misses += 1
            continue
        misses = 0
        seen.add(question)
        answer = str(steps[-1][1])
        reasoning = "\n".join(f"{expr} = {value}" for expr, value in steps)
        examples.append(
            {
                "prompt": to_conversation(question, system_prompt),
                "answer": answer,
                "completion": format_completion(reasoning, answer, reasoning_tag, answer_tag),
                "question": question,
            }
        )
    if len(examples) < n:
        raise RlvrError(
            f"arithmetic_problems could make only {len(examples)} distinct problems of the {n} asked "
            f"with max_operand={max_operand}; raise max_operand or ask for fewer"
        )
    return examples


def split_train_eval(
    n_train: int, n_eval: int, seed: int = 0, **kwargs: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and eval sets of arithmetic problems with no eval question in train.

    Both come from one seeded stream of distinct questions; eval takes the first `n_eval`, so the
    eval set stays the same when `n_train` changes. `kwargs` go to `arithmetic_problems`.
    """
    if n_train < 0 or n_eval < 0:
        raise RlvrError(f"split_train_eval(n_train={n_train}, n_eval={n_eval}): sizes must be 0 or more")
    problems = arithmetic_problems(n_train + n_eval, seed=seed, **kwargs)
    return problems[n_eval:], problems[:n_eval]
