"""Tests for rlvr.rewards: the §9 GSM8K values, the math rewards, the registry and batch scoring.

Expected values in the tables are worked out by hand from semantics §9 (comments say how where it
is not obvious), so a change in any rule shows up as a failing row.
"""

from __future__ import annotations

import asyncio
import doctest
import math
import statistics
import sys
import threading

import pytest
import torch

from rlvr.errors import RlvrError
from rlvr.rewards import (
    RewardScores,
    available_rewards,
    completion_text,
    correctness_reward,
    extract_tag,
    gsm8k_rewards,
    int_reward,
    make_numeric_proximity_reward,
    math_verify_reward,
    numeric_proximity_reward,
    proximity_score,
    resolve_rewards,
    score_completions,
    soft_format_reward,
    strict_format_reward,
    xml_count_reward,
)
from rlvr.rewards import gsm8k as gsm8k_module

GSM8K_NAMES = ["correctness", "int", "strict_format", "soft_format", "xml_count"]
TRUTH = "12"
R = "<reasoning>\nSix plus six.\n</reasoning>\n"
PERFECT = R + "<answer>\n12\n</answer>\n"

# (id, completion, correctness, int, strict_format, soft_format, xml_count); ground truth "12".
GSM8K_TABLE = [
    ("perfect", PERFECT, 2.0, 0.5, 0.5, 0.5, 0.5),
    ("wrong answer", R + "<answer>\n13\n</answer>\n", 0.0, 0.5, 0.5, 0.5, 0.5),
    # strict needs the final newline; the missing one costs nothing in xml count.
    ("no final newline", R + "<answer>\n12\n</answer>", 2.0, 0.5, 0.0, 0.5, 0.5),
    # 17 characters after </answer>, the first newline free: 0.5 - 16 * 0.001.
    ("trailing text", PERFECT + "Hope this helps!", 2.0, 0.5, 0.0, 0.5, 0.484),
    # Python's `$` matches before a final newline, so the verbatim §9 regex accepts one extra.
    ("extra final newline", PERFECT + "\n", 2.0, 0.5, 0.5, 0.5, 0.499),
    ("tags on one line", "<reasoning>six plus six</reasoning><answer>12</answer>", 2.0, 0.5, 0.0, 0.5, 0.0),
    ("multi-line reasoning", "<reasoning>\na\nb\n</reasoning>\n<answer>\n12\n</answer>\n", 2.0, 0.5, 0.5, 0.5, 0.5),
    ("blank lines between", "<reasoning>r</reasoning>\n\n<answer>12</answer>", 2.0, 0.5, 0.0, 0.5, 0.0),
    # Three of the four tag lines are there, and nothing follows a closing tag.
    ("unclosed answer", R + "<answer>\n12\n", 0.0, 0.0, 0.0, 0.0, 0.375),
    ("no tags", "The answer is 12.", 0.0, 0.0, 0.0, 0.0, 0.0),
    # Soft format is anchored at the start of the completion.
    ("text before reasoning", "Sure!\n" + PERFECT, 2.0, 0.5, 0.0, 0.0, 0.5),
    ("decimal answer", R + "<answer>\n12.0\n</answer>\n", 0.0, 0.0, 0.5, 0.5, 0.5),
    ("negative answer", R + "<answer>\n-12\n</answer>\n", 0.0, 0.0, 0.5, 0.5, 0.5),
    # Answer is stripped; the two answer tag lines are missing from xml count.
    ("answer on the tag line", R + "<answer> 12 </answer>\n", 2.0, 0.5, 0.0, 0.5, 0.25),
    # The last answer counts; both answer tag lines appear twice, so xml count keeps only 0.25,
    # while the verbatim strict regex still matches (its lazy .*? spans the first answer).
    ("echoed answer first", R + "<answer>\nx\n</answer>\n<answer>\n12\n</answer>\n", 2.0, 0.5, 0.5, 0.5, 0.25),
]
TABLE_IDS = [row[0] for row in GSM8K_TABLE]


def retag(text: str, reasoning: str, answer: str) -> str:
    for old, new in (("reasoning", reasoning), ("answer", answer)):
        text = text.replace(f"<{old}>", f"<{new}>").replace(f"</{old}>", f"</{new}>")
    return text


def conversational(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def call(fn, completions, **columns):
    # Keywords, as score_completions (and TRL) call reward functions.
    return fn(prompts=["prompt"] * len(completions), completions=completions, completion_ids=None, **columns)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- text helpers


def test_completion_text_accepts_strings_and_messages():
    assert completion_text("plain") == "plain"
    assert completion_text(conversational("hi")) == "hi"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]
    assert completion_text(parts) == "a"
    tool_use = [
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "<answer>42</answer>"},
    ]
    assert completion_text(tool_use) == "call\n<answer>42</answer>"


def test_completion_text_rejects_other_types():
    with pytest.raises(RlvrError, match="string or a list of") as e:
        completion_text(42)
    one_line(e)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer> 42 </answer>", "42"),
        ("<answer>\n4\n2\n</answer>", "4\n2"),
        ("<answer></answer>", ""),
        ("<answer>42", None),
        ("42</answer>", None),
        ("no tags", None),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>1<answer>2</answer>", "2"),
        ("<answer>1</answer> and a dangling <answer>", "1"),
    ],
)
def test_extract_tag(text, expected):
    assert extract_tag(text, "answer") == expected


# ---------------------------------------------------------------- GSM8K rewards (§9)


@pytest.mark.parametrize("form", [str, conversational], ids=["plain", "conversational"])
@pytest.mark.parametrize("row", GSM8K_TABLE, ids=TABLE_IDS)
def test_gsm8k_values(row, form):
    _, text, *expected = row
    got = [call(fn, [form(text)], answer=[TRUTH])[0] for fn in gsm8k_rewards()]
    assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("row", GSM8K_TABLE, ids=TABLE_IDS)
def test_gsm8k_values_with_custom_tags(row):
    _, text, *expected = row
    funcs = gsm8k_rewards(reasoning_tag="start_working_out", answer_tag="SOLUTION")
    got = [call(fn, [retag(text, "start_working_out", "SOLUTION")], answer=[TRUTH])[0] for fn in funcs]
    assert got == pytest.approx(expected, abs=1e-9)


def test_custom_tags_do_not_accept_default_tags():
    funcs = gsm8k_rewards(reasoning_tag="start_working_out", answer_tag="SOLUTION")
    assert [call(fn, [PERFECT], answer=[TRUTH])[0] for fn in funcs] == [0.0] * 5


def test_module_level_functions_use_default_tags():
    defaults = [correctness_reward, int_reward, strict_format_reward, soft_format_reward, xml_count_reward]
    assert [fn.__name__ for fn in defaults] == GSM8K_NAMES
    assert [call(fn, [PERFECT], answer=[TRUTH])[0] for fn in defaults] == [2.0, 0.5, 0.5, 0.5, 0.5]


def test_gsm8k_scores_a_batch_row_by_row():
    completions = [PERFECT, "no tags", R + "<answer>\n13\n</answer>\n"]
    assert call(correctness_reward, completions, answer=["12", "12", "13"]) == [2.0, 0.0, 2.0]


def test_correctness_compares_stripped_text_of_any_ground_truth_type():
    assert call(correctness_reward, [PERFECT, PERFECT], answer=[12, " 12 "]) == [2.0, 2.0]
    assert call(correctness_reward, [R + "<answer>\n1,234\n</answer>\n"], answer=["1234"]) == [0.0]


def test_correctness_without_answer_column_says_which_column():
    with pytest.raises(RlvrError, match="needs a dataset column 'answer'.*question") as e:
        call(correctness_reward, [PERFECT], question=["q"])
    one_line(e)


@pytest.mark.parametrize("bad", ["<answer>", "", "</SOLUTION>"])
def test_bad_tag_names_are_rejected(bad):
    with pytest.raises(RlvrError, match="answer_tag") as e:
        gsm8k_rewards(answer_tag=bad)
    one_line(e)


# ---------------------------------------------------------------- numeric proximity


@pytest.mark.parametrize(
    ("text", "truth"),
    [
        ("<answer>72</answer>", "72"),
        ("<answer>$1,234</answer>", "1234"),
        ("<answer>72 apples</answer>", 72),
        ("<answer>-3.5</answer>", "-3.5"),
        ("<answer>72</answer> (checked 3 times)", "72"),  # the tag wins over the last number
        ("so the answer is 72.", "72"),  # no tag: the last number
        ("<answer>0</answer>", "0"),
    ],
)
def test_numeric_proximity_exact(text, truth):
    assert call(numeric_proximity_reward, [text], answer=[truth]) == [1.0]


@pytest.mark.parametrize("text", ["<answer>seventy-two</answer> 72", "I don't know", "<answer></answer>"])
def test_numeric_proximity_penalises_missing_numbers(text):
    assert call(numeric_proximity_reward, [text], answer=["72"]) == [-0.5]


def test_numeric_proximity_unreadable_truth_is_none():
    assert call(numeric_proximity_reward, ["<answer>72</answer>"], answer=["n/a"]) == [None]


def test_numeric_proximity_decays_with_relative_error():
    guesses = [100, 101, 110, 150, 300, 500]
    scores = call(numeric_proximity_reward, [f"<answer>{g}</answer>" for g in guesses], answer=["100"] * 6)
    assert scores[0] == 1.0
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert -0.5 < scores[-1] < -0.5 + 1e-8
    # Far off reaches the floor and never goes below it.
    assert call(numeric_proximity_reward, ["<answer>1e6 is 1000000</answer>"], answer=["100"]) == [-0.5]
    # Overshooting and undershooting by the same amount score the same.
    assert call(numeric_proximity_reward, ["<answer>90</answer>"], answer=["100"])[0] == pytest.approx(scores[2])


def test_numeric_proximity_pinned_values():
    # Relative error 0.2 (the default scale): -0.5 + 1.5 / e.
    assert proximity_score(12, 10) == pytest.approx(0.0518191617571635, abs=1e-12)
    # A zero truth measures absolute error: error 1 is five scales.
    assert proximity_score(1, 0) == pytest.approx(-0.5 + 1.5 * math.exp(-5), abs=1e-12)
    # The score crosses zero at relative error scale * ln 3.
    assert proximity_score(100 * (1 + 0.2 * math.log(3)), 100) == pytest.approx(0.0, abs=1e-12)
    wide = make_numeric_proximity_reward(scale=0.4)
    assert call(wide, ["<answer>14</answer>"], answer=["10"])[0] == pytest.approx(-0.5 + 1.5 / math.e)


def test_numeric_proximity_rejects_bad_scale():
    with pytest.raises(RlvrError, match="scale"):
        make_numeric_proximity_reward(scale=0)


# ---------------------------------------------------------------- math-verify


MATH_CASES = [
    (r"<answer>\frac{1}{2}</answer>", "0.5", 1.0),
    ("<answer>2</answer>", "0.5", 0.0),
    (r"We get $\boxed{72}$.", "72", 1.0),
    ("<answer>72</answer> not 71", "72", 1.0),
    ("<answer>71</answer> not 72", "72", 0.0),
    ("<answer>72</answer>", "abc", None),
]


def test_math_verify_values():
    texts, truths, expected = zip(*MATH_CASES)
    assert call(math_verify_reward, list(texts), answer=list(truths)) == list(expected)


def test_math_verify_works_outside_the_main_thread():
    # With signal-based timeouts math-verify raises ValueError in a worker thread.
    texts, truths, expected = zip(*MATH_CASES)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(out=call(math_verify_reward, list(texts), answer=list(truths)))
    )
    worker.start()
    worker.join()
    assert result["out"] == list(expected)


def test_math_verify_missing_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` fail
    with pytest.raises(RlvrError, match="pip install math-verify") as e:
        call(math_verify_reward, ["<answer>1</answer>"], answer=["1"])
    one_line(e)


# ---------------------------------------------------------------- registry


def test_available_rewards():
    assert available_rewards() == [*GSM8K_NAMES, "numeric_proximity", "math_verify", "code", "gsm8k"]


@pytest.mark.parametrize("name", [*GSM8K_NAMES, "numeric_proximity", "math_verify"])
def test_each_builtin_name_resolves_to_that_function(name):
    (fn,) = resolve_rewards([name])
    assert fn.__name__ == name


def test_gsm8k_set_uses_the_run_tags():
    funcs = resolve_rewards(["gsm8k"], reasoning_tag="start_working_out", answer_tag="SOLUTION")
    assert [f.__name__ for f in funcs] == GSM8K_NAMES
    custom = retag(PERFECT, "start_working_out", "SOLUTION")
    assert [call(f, [custom], answer=[TRUTH])[0] for f in funcs] == [2.0, 0.5, 0.5, 0.5, 0.5]


def test_a_single_string_spec_is_a_list_of_one():
    assert [f.__name__ for f in resolve_rewards("gsm8k")] == GSM8K_NAMES


def test_callables_pass_through():
    def mine(prompts, completions, **kw):
        return [0.0] * len(completions)

    assert resolve_rewards([mine, "int"])[0] is mine


def test_module_function_spec(tmp_path, monkeypatch):
    assert resolve_rewards(["rlvr.rewards.gsm8k:correctness_reward"]) == [gsm8k_module.correctness_reward]
    (tmp_path / "team_rewards.py").write_text("def brevity(prompts, completions, **kw):\n    return [1.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (fn,) = resolve_rewards(["team_rewards:brevity"])
    assert fn.__name__ == "brevity" and call(fn, ["x"]) == [1.0]


USER_FILE = """
CALLS = []

def length_reward(prompts, completions, **kw):
    CALLS.append(len(completions))
    return [float(len(c)) for c in completions]

NOT_A_FUNCTION = 3
"""


def test_file_path_spec(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "my_rewards.py"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    (absolute,) = resolve_rewards([f"{path}:length_reward"])
    assert call(absolute, ["abc", "de"]) == [3.0, 2.0]
    monkeypatch.chdir(tmp_path)
    (relative,) = resolve_rewards(["sub/my_rewards.py:length_reward"])
    # The same file is imported once, so both share its module state.
    assert relative is absolute and relative.__globals__["CALLS"] == [2]


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("missing.py:fn", "file 'missing.py' not found"),
        ("{file}:lenght_reward", "has no 'lenght_reward' \\(did you mean 'length_reward'\\?\\)"),
        ("{file}:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is a int, not a function"),
        ("{broken}:fn", "raised ZeroDivisionError"),
        ("no_such_package_xyz:fn", "cannot import module 'no_such_package_xyz'"),
        ("rlvr.rewards.gsm8k:nope", "has no 'nope'"),
        ("corectness", "unknown reward 'corectness' \\(did you mean 'correctness'\\?\\).*gsm8k"),
        ("gsm8", "did you mean 'gsm8k'"),
        (":fn", "not of the form"),
    ],
)
def test_registry_errors(tmp_path, spec, pattern):
    (tmp_path / "user.py").write_text(USER_FILE)
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    spec = spec.format(file=tmp_path / "user.py", broken=tmp_path / "broken.py")
    with pytest.raises(RlvrError, match=pattern) as e:
        resolve_rewards([spec])
    one_line(e)


def test_unknown_name_lists_the_accepted_forms():
    with pytest.raises(RlvrError) as e:
        resolve_rewards(["bleu"])
    message = one_line(e)
    assert "numeric_proximity" in message
    assert "'package.module:function'" in message and "'path/to/file.py:function'" in message


@pytest.mark.parametrize("specs", [[], [42]])
def test_registry_rejects_empty_and_non_string_specs(specs):
    with pytest.raises(RlvrError):
        resolve_rewards(specs)


# ---------------------------------------------------------------- scoring


def constant(name: str, values: list):
    def fn(prompts, completions, completion_ids=None, **columns):
        return list(values)

    fn.__name__ = name
    return fn


def score(funcs, completions, reward_errors="raise", weights=None, step=0, **columns):
    n = len(completions)
    return score_completions(
        funcs, ["p"] * n, completions, None, {"trainer_state": None, **columns}, weights, reward_errors, step
    )


def nan_list(t: torch.Tensor) -> list:
    return [None if math.isnan(x) else x for x in t.tolist()]


def test_weighted_total_and_metrics():
    a, b = constant("a", [1.0, 0.0, 2.0]), constant("b", [0.5, 1.0, 3.0])
    s = score([a, b], ["x", "y", "z"], weights=[1.0, 0.5])
    assert isinstance(s, RewardScores) and s.names == ["a", "b"]
    assert s.per_function.dtype == torch.float32 and s.per_function.shape == (3, 2)
    assert s.per_function.tolist() == [[1.0, 0.5], [0.0, 1.0], [2.0, 3.0]]
    assert s.total.dtype == torch.float32 and s.total.tolist() == [1.25, 0.5, 3.5]
    assert s.metrics["rewards/a/mean"] == 1.0
    assert s.metrics["rewards/b/std"] == pytest.approx(statistics.stdev([0.5, 1.0, 3.0]))
    assert s.metrics["rewards/a/errors"] == 0.0
    assert score([a, b], ["x", "y", "z"]).total.tolist() == [1.5, 1.0, 5.0]


def test_none_is_nan_and_skipped_in_the_total():
    a, b = constant("a", [1.0, None, None]), constant("b", [2.0, 3.0, None])
    s = score([a, b], ["x", "y", "z"], weights=[2.0, 1.0])
    assert [nan_list(row) for row in s.per_function] == [[1.0, 2.0], [None, 3.0], [None, None]]
    assert nan_list(s.total) == [4.0, 3.0, None]  # the all-None row stays NaN
    assert s.metrics["rewards/a/mean"] == 1.0
    assert math.isnan(s.metrics["rewards/a/std"])  # one value: Bessel std undefined
    assert s.metrics["rewards/b/std"] == pytest.approx(statistics.stdev([2.0, 3.0]))
    assert s.metrics["rewards/a/errors"] == 0.0  # a plain None is not an error


def test_gsm8k_set_end_to_end():
    s = score(gsm8k_rewards(), [PERFECT, PERFECT + "Hope this helps!", "12"], answer=["12", "12", "12"])
    assert s.names == GSM8K_NAMES
    assert s.total.tolist() == pytest.approx([4.0, 3.484, 0.0])


def test_columns_trainer_state_and_ids_reach_the_function():
    seen = {}

    def spy(prompts, completions, completion_ids=None, **columns):
        seen.update(prompts=prompts, completion_ids=completion_ids, **columns)
        return [0.0] * len(completions)

    state = object()
    columns = {"answer": ["1", "2"], "trainer_state": state}
    score_completions([spy], ["p1", "p2"], ["a", "b"], [[1], [2, 3]], columns)
    assert seen == {"prompts": ["p1", "p2"], "completion_ids": [[1], [2, 3]], **columns}


def test_functions_are_called_with_keywords():
    def trl_style(completions, **kwargs):  # the shape of most TRL reward functions
        return [float(len(c)) for c in completions]

    assert score([trl_style], ["ab", "c"]).per_function[:, 0].tolist() == [2.0, 1.0]


def test_duplicate_names_get_suffixes():
    s = score([constant("f", [1.0]), constant("f", [2.0])], ["x"])
    assert s.names == ["f", "f_2"] and s.metrics["rewards/f_2/mean"] == 2.0


def test_wrong_weight_count_is_an_error():
    with pytest.raises(RlvrError, match="reward_weights has 1 values for 2 reward functions") as e:
        score([constant("a", [1.0]), constant("b", [1.0])], ["x"], weights=[1.0])
    one_line(e)


def test_unknown_error_mode_is_an_error():
    with pytest.raises(RlvrError, match="did you mean 'skip'"):
        score([constant("a", [1.0])], ["x"], reward_errors="skipp")


def test_column_of_the_wrong_length_is_an_error():
    with pytest.raises(RlvrError, match="'answer' has 1 values for 2 completions"):
        score([constant("a", [1.0, 1.0])], ["x", "y"], answer=["1"])


# -- async


def waiter(name: str, partner: str, events: dict):
    """An async reward that finishes only once its partner has started: proof they share one gather."""

    async def fn(prompts, completions, **kw):
        events.setdefault(name, asyncio.Event()).set()
        await asyncio.wait_for(events.setdefault(partner, asyncio.Event()).wait(), timeout=2)
        return [1.0] * len(completions)

    fn.__name__ = name
    return fn


def run_pair() -> RewardScores:
    events: dict = {}
    return score([waiter("a", "b", events), waiter("b", "a", events), constant("c", [2.0])], ["x"])


def test_async_functions_run_concurrently():
    s = run_pair()
    assert s.per_function.tolist() == [[1.0, 1.0, 2.0]]


def test_async_functions_from_a_worker_thread():
    result = {}
    worker = threading.Thread(target=lambda: result.update(s=run_pair()))
    worker.start()
    worker.join()
    assert result["s"].total.tolist() == [4.0]


def test_async_functions_while_the_callers_loop_runs():
    async def notebook_cell():
        return run_pair()

    assert asyncio.run(notebook_cell()).total.tolist() == [4.0]


def test_async_functions_share_one_loop_across_batches():
    loops = []

    async def judge(prompts, completions, **kw):
        loops.append(asyncio.get_running_loop())
        return [0.0] * len(completions)

    score([judge], ["x"])
    score([judge], ["x"])
    assert len(loops) == 2 and loops[0] is loops[1] and not loops[0].is_closed()


# -- errors


def fragile(prompts, completions, **kw):
    if any("boom" in c for c in completions):
        raise ValueError("cannot parse\nsecond line")
    return [1.0] * len(completions)


async def async_fragile(prompts, completions, **kw):
    return fragile(prompts, completions)


@pytest.mark.parametrize("fn", [fragile, async_fragile])
def test_raise_mode_names_function_step_and_completion(fn):
    with pytest.raises(RlvrError) as e:
        score([fn], ["fine", "it went boom " + "x" * 200, "fine"], step=7)
    message = one_line(e)
    assert f"'{fn.__name__}'" in message and "step 7" in message and "completion 1" in message
    assert "'it went boom xxx" in message and "x" * 100 not in message  # truncated
    assert "ValueError: cannot parse" in message and "reward_errors='skip'" in message
    assert isinstance(e.value.__cause__, ValueError)


@pytest.mark.parametrize("fn", [fragile, async_fragile])
def test_skip_mode_loses_only_the_failing_rows(fn):
    s = score([fn, constant("c", [1.0, 1.0, 1.0])], ["fine", "boom", "fine"], reward_errors="skip")
    assert nan_list(s.per_function[:, 0]) == [1.0, None, 1.0]
    assert s.total.tolist() == [2.0, 1.0, 2.0]
    assert s.metrics[f"rewards/{fn.__name__}/errors"] == 1.0
    assert s.metrics[f"rewards/{fn.__name__}/mean"] == 1.0


def test_a_batch_only_failure():
    def batch_bug(prompts, completions, **kw):
        if len(completions) > 1:
            raise IndexError("off by one")
        return [0.5]

    with pytest.raises(RlvrError, match="IndexError: off by one .*no single one reproduces it"):
        score([batch_bug], ["x", "y"])
    assert score([batch_bug], ["x", "y"], reward_errors="skip").per_function[:, 0].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("returned", [[1.0], [1.0, 1.0, 1.0, 1.0], None, 1.0])
def test_wrong_length_or_type_return(returned):
    fn = constant("short", returned) if isinstance(returned, list) else (lambda **kw: returned)
    with pytest.raises(RlvrError, match="for 3 completions at step 4") as e:
        score([fn], ["x", "y", "z"], step=4)
    one_line(e)
    s = score([fn, constant("c", [1.0] * 3)], ["x", "y", "z"], reward_errors="skip")
    assert torch.isnan(s.per_function[:, 0]).all() and s.total.tolist() == [1.0, 1.0, 1.0]
    assert s.metrics[f"rewards/{s.names[0]}/errors"] == 3.0


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_non_finite_values_are_none_and_counted(mode):
    s = score([constant("odd", [math.nan, math.inf, -math.inf, 1.0])], ["a", "b", "c", "d"], reward_errors=mode)
    assert nan_list(s.per_function[:, 0]) == [None, None, None, 1.0]
    assert nan_list(s.total) == [None, None, None, 1.0]
    assert s.metrics["rewards/odd/errors"] == 3.0


def test_values_that_are_not_numbers():
    fn = constant("texty", [1.0, "high"])
    with pytest.raises(RlvrError, match="returned 'high' for completion 1 'b' at step 0") as e:
        score([fn], ["a", "b"])
    one_line(e)
    s = score([fn], ["a", "b"], reward_errors="skip")
    assert nan_list(s.per_function[:, 0]) == [1.0, None] and s.metrics["rewards/texty/errors"] == 1.0


def test_numeric_types_are_accepted():
    s = score([constant("mixed", [True, 2, torch.tensor(0.5)])], ["a", "b", "c"])
    assert s.per_function[:, 0].tolist() == [1.0, 2.0, 0.5]


def test_configuration_errors_stop_even_in_skip_mode():
    with pytest.raises(RlvrError, match="'correctness' at step 3: .*needs a dataset column 'answer'") as e:
        score([correctness_reward], [PERFECT], reward_errors="skip", step=3)
    one_line(e)


# ---------------------------------------------------------------- docstring examples


@pytest.mark.parametrize("module", ["text", "gsm8k", "math", "registry", "scoring"])
def test_docstring_examples(module):
    mod = __import__(f"rlvr.rewards.{module}", fromlist=["_"])
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
