"""Tests for rlvr.evaluation.evaluate: exact metric arithmetic on a fake engine, one real HFEngine run."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from rlvr.config import EvalConfig
from rlvr.errors import RlvrError
from rlvr.evaluation import (
    comparison_table,
    evaluate,
    is_correct,
    normalize_answer,
    print_comparison,
    write_result,
)
from rlvr.rewards.registry import resolve_rewards
from rlvr.rewards.text import completion_text
from rlvr.rollout import Rollout

STRICT = "<reasoning>\n{r}\n</reasoning>\n<answer>\n{a}\n</answer>\n"

# Three problems, four samples each: (completion text, ends with EOS).
COMPLETIONS = [
    [  # answer 42: three correct
        (STRICT.format(r="6*7", a="42"), True),  # correct, strict
        ("<reasoning>x</reasoning> <answer>42.0</answer>", True),  # correct, soft only
        ("<answer>41</answer>", True),  # wrong, no format
        ("<reasoning>\nr\n</reasoning>\n<answer>\n$4,2\n</answer>", True),  # correct, not strict (no final newline)
    ],
    [  # answer "1,000": one correct
        ("<answer> 1000 </answer>", True),
        (STRICT.format(r="think", a="999"), True),  # wrong, strict
        ("I do not know", False),  # ran out of tokens
        ("<reasoning>\nr\n</reasoning>\n<answer>\n1000\n</answer>\nBye", True),  # correct, soft only
    ],
    [  # answer 7: none correct
        ("<answer>8</answer>", True),
        ("", True),
        ("<reasoning>\na\n</reasoning>\n<answer>\nseven\n</answer>\n", True),  # wrong, strict
        ("7", True),  # no tags
    ],
]
ANSWERS = ["42", "1,000", "7"]


class FakeEngine:
    """A RolloutEngine that replays COMPLETIONS in order and records how it was called."""

    def __init__(self, tokenizer, completions=COMPLETIONS):
        self.tokenizer, self.queue, self.calls = tokenizer, [row for p in completions for row in p], []

    def generate(self, prompt_ids, num_generations, params, seed=None, progress=None) -> Rollout:
        self.calls.append({"prompts": len(prompt_ids), "n": num_generations, "params": params, "seed": seed})
        rows = [self.queue.pop(0) for _ in range(len(prompt_ids) * num_generations)]
        ids = [self.tokenizer(t, add_special_tokens=False).input_ids + ([self.tokenizer.eos_token_id] if eos else [])
               for t, eos in rows]
        width = max(len(r) for r in ids)
        completion = torch.full((len(ids), width), self.tokenizer.pad_token_id)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, r in enumerate(ids):
            completion[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        prompt = torch.zeros((len(ids), 1), dtype=torch.long)
        return Rollout(prompt_ids=prompt, prompt_mask=prompt, completion_ids=completion, completion_mask=mask,
                       is_eos=torch.tensor([eos for _, eos in rows]))


def examples(conversational: bool = True) -> list[dict]:
    rows = []
    for i, answer in enumerate(ANSWERS):
        question = f"question {i}?"
        prompt = [{"role": "system", "content": "Answer in tags."}, {"role": "user", "content": question}]
        rows.append({"prompt": prompt if conversational else question, "answer": answer, "id": i})
    return rows


def sample_cfg(**overrides) -> EvalConfig:
    values = dict(num_samples=4, k=[1, 2, 4], do_sample=True, temperature=0.7, max_new_tokens=64, batch_size=8)
    values.update(overrides)
    return EvalConfig(**values)


def probe_reward(prompts, completions, completion_ids=None, answer=None, **columns):
    """1.0 per correct sample, after checking what the evaluator passes."""
    assert len(prompts) == len(completions) == len(answer) == len(completion_ids) == len(columns["id"])
    return [1.0 if is_correct(completion_text(c), a) else 0.0 for c, a in zip(completions, answer)]


def length_reward(prompts, completions, completion_ids=None, **columns):
    return [float(len(ids)) for ids in completion_ids]


def test_normalize_answer():
    assert normalize_answer("  1,000 ") == normalize_answer("$1000.0") == normalize_answer("1000.00") == "1000"
    assert normalize_answer("3.05") == "3.05" and normalize_answer("a \n b") == "a b"
    assert normalize_answer(42) == "42"


def test_metric_arithmetic_is_exact(tokenizer):
    engine = FakeEngine(tokenizer)
    result = evaluate(None, tokenizer, examples(), sample_cfg(), reward_funcs=[probe_reward], engine=engine)

    # Correct: problem 0 rows 0, 1, 3; problem 1 rows 0, 3.
    correct = [3, 2, 0]
    assert result["problems"] == 3 and result["samples_per_problem"] == 4 and result["completions"] == 12
    assert result["accuracy"] == pytest.approx(5 / 12)
    # Strict (§9, the strict_format reward's rule): p0 row 0; p1 row 1 (row 3 has text after the
    # answer); p2 row 2. p0 row 3 lacks the final newline.
    assert result["format"] == pytest.approx(3 / 12)
    # Soft adds p0 rows 1 and 3 and p1 row 3.
    assert result["soft_format"] == pytest.approx(6 / 12)
    assert result["mean_reward"] == pytest.approx(5 / 12)
    assert result["rewards"] == {"probe_reward": pytest.approx(5 / 12)}
    p = result["pass_at_k"]
    assert p["1"]["mean"] == pytest.approx(sum(c / 4 for c in correct) / 3)
    assert p["2"]["mean"] == pytest.approx((1.0 + (1 - 1 / 6) + 0.0) / 3)  # p1: 1 - C(2,2)/C(4,2)
    assert p["4"]["mean"] == pytest.approx(2 / 3)
    for entry in p.values():
        low, high = entry["ci95"]
        assert 0.0 <= low <= entry["mean"] <= high <= 1.0
    lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) + eos for rows in COMPLETIONS for t, eos in rows]
    assert result["mean_length"] == pytest.approx(sum(lengths) / 12)
    assert result["truncated"] == pytest.approx(1 / 12)
    json.dumps(result)


def test_engine_calls_seeds_and_sampling(tokenizer):
    engine = FakeEngine(tokenizer)
    evaluate(None, tokenizer, examples(), sample_cfg(seed=7), reward_funcs=[probe_reward], engine=engine)
    # batch_size 8 / 4 samples = 2 problems per call, each call seeded by its first problem's index.
    assert [(c["prompts"], c["n"], c["seed"]) for c in engine.calls] == [(2, 4, 7), (1, 4, 9)]
    params = engine.calls[0]["params"]
    assert params.do_sample and params.temperature == 0.7 and params.max_new_tokens == 64


def test_weighted_rewards_and_string_prompts(tokenizer):
    result = evaluate(None, tokenizer, examples(conversational=False), sample_cfg(),
                      reward_funcs=[probe_reward, length_reward], reward_weights=[2.0, 0.5],
                      engine=FakeEngine(tokenizer))
    mean_length = result["mean_length"]
    assert result["mean_reward"] == pytest.approx(2.0 * 5 / 12 + 0.5 * mean_length)
    assert set(result["rewards"]) == {"probe_reward", "length_reward"}


def test_default_rewards_are_the_gsm8k_set(tokenizer):
    result = evaluate(None, tokenizer, examples(), sample_cfg(), engine=FakeEngine(tokenizer))
    assert list(result["rewards"]) == ["correctness", "int", "strict_format", "soft_format", "xml_count"]
    # The correctness reward compares stripped text without normalising: only p0 row 0 ("42") earns 2.0.
    assert result["rewards"]["correctness"] == pytest.approx(2.0 / 12)
    # Its strict format wants the final newline: p0 row 0, p1 row 1, p2 row 2.
    assert result["rewards"]["strict_format"] == pytest.approx(0.5 * 3 / 12)


@pytest.mark.parametrize("tags", [("reasoning", "answer"), ("think", "sol")])
def test_format_metrics_are_the_format_rewards(tokenizer, tags):
    # One rule (semantics §9) for the metric and the reward, whatever the newlines around the answer.
    r, a = tags
    body = f"<{r}>\nx\n</{r}>\n<{a}>\n1\n</{a}>"
    texts = [body, body + "\n", body + "\n\n", body + "\nmore", f"<{r}>x</{r}><{a}>1</{a}>", " " + body + "\n",
             f"<{r}>\nx\n</{r}>\n\n<{a}>\n1\n</{a}>\n", ""]
    cfg = EvalConfig(max_new_tokens=64, batch_size=8)
    strict_fn, soft_fn = resolve_rewards(["strict_format", "soft_format"], reasoning_tag=r, answer_tag=a)
    for text in texts:  # one evaluation per completion, so no count can hide a disagreement
        result = evaluate(None, tokenizer, [{"prompt": "q", "answer": "1"}], cfg, reward_funcs=[strict_fn, soft_fn],
                          engine=FakeEngine(tokenizer, [[(text, True)]]), reasoning_tag=r, answer_tag=a)
        decoded = result["samples"][0]["completion"]
        assert result["format"] == strict_fn(["q"], [decoded])[0] / 0.5 == result["rewards"]["strict_format"] / 0.5
        assert result["soft_format"] == soft_fn(["q"], [decoded])[0] / 0.5
    assert [strict_fn(["q"], [t])[0] for t in texts[:3]] == [0.0, 0.5, 0.5]  # Python's `$`: one extra newline


def test_run_eval_weighs_rewards_as_training_does(tiny_model, tokenizer):
    from rlvr.config import GRPOConfig, RunConfig
    from rlvr.pipeline import run_eval

    weights = [2.0, 0.5]
    cfg = RunConfig(rewards=[probe_reward, length_reward], train=GRPOConfig(reward_weights=weights),
                    eval=EvalConfig(max_new_tokens=4, batch_size=4))
    result = run_eval(cfg, tiny_model, tokenizer, examples())
    per_function = result["rewards"]
    assert per_function["length_reward"] > 0
    assert result["mean_reward"] == pytest.approx(2.0 * per_function["probe_reward"]
                                                  + 0.5 * per_function["length_reward"])


def test_limit_samples_and_custom_tags(tokenizer):
    rows = [[(t.replace("reasoning", "think").replace("answer", "sol"), e) for t, e in p] for p in COMPLETIONS]
    result = evaluate(None, tokenizer, examples(), sample_cfg(limit=2), reward_funcs=[length_reward],
                      engine=FakeEngine(tokenizer, rows), reasoning_tag="think", answer_tag="sol")
    assert result["problems"] == 2 and result["completions"] == 8
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["format"] == pytest.approx(2 / 8)
    first = result["samples"][0]
    assert first["prompt"] == "question 0?" and first["answer"] == "42"
    assert first["correct"] and first["format"] and first["completion"] == rows[0][0][0]
    assert len(result["samples"]) == 2


def test_bad_inputs_are_one_line_errors(tokenizer):
    cases = [
        ([], sample_cfg()),
        ([{"prompt": "q"}], sample_cfg()),
        (examples(), sample_cfg(k=[5])),
        (examples(), EvalConfig(num_samples=2)),  # several greedy samples
    ]
    for rows, cfg in cases:
        with pytest.raises(RlvrError) as info:
            evaluate(None, tokenizer, rows, cfg, engine=FakeEngine(tokenizer))
        assert "\n" not in str(info.value)


def test_write_result_and_comparison_table(tokenizer, tmp_path):
    result = evaluate(None, tokenizer, examples(), sample_cfg(), reward_funcs=[probe_reward],
                      engine=FakeEngine(tokenizer))
    path = write_result(result, tmp_path / "out" / "eval.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))

    results = {"base": {**result, "mean_reward": None}, "GRPO": result}
    table = comparison_table(results)
    headers = [c.header for c in table.columns]
    assert headers[:4] == ["stage", "accuracy", "format", "mean reward"]
    assert "pass@4 (95% CI)" in headers and headers[-1] == "mean length"
    assert table.row_count == 2
    out = io.StringIO()
    print_comparison(results, console=Console(file=out, width=200))
    text = out.getvalue()
    assert "GRPO" in text and "41.7%" in text and "–" in text


# ---------------------------------------------------------------- one real generation run


def test_real_run_through_hf_engine(tiny_model, tokenizer):
    cfg = EvalConfig(max_new_tokens=6, batch_size=2, seed=3)
    greedy = evaluate(tiny_model, tokenizer, examples(), cfg, desc="base")
    again = evaluate(tiny_model, tokenizer, examples(), cfg, desc="base")
    expected_keys = {"desc", "problems", "samples_per_problem", "completions", "accuracy", "format", "soft_format",
                     "mean_reward", "rewards", "pass_at_k", "mean_length", "truncated", "seconds", "config",
                     "samples"}
    assert set(greedy) == expected_keys
    assert greedy["completions"] == 3 and 1 <= greedy["mean_length"] <= 6
    assert list(greedy["pass_at_k"]) == ["1"] and greedy["desc"] == "base"
    assert [s["completion"] for s in greedy["samples"]] == [s["completion"] for s in again["samples"]]
    json.dumps(greedy)

    sampled_cfg = EvalConfig(num_samples=2, k=[1, 2], do_sample=True, max_new_tokens=6, batch_size=4, seed=3)
    first = evaluate(tiny_model, tokenizer, examples(), sampled_cfg)
    second = evaluate(tiny_model, tokenizer, examples(), sampled_cfg)
    assert first["completions"] == 6 and set(first["pass_at_k"]) == {"1", "2"}
    assert [s["completion"] for s in first["samples"]] == [s["completion"] for s in second["samples"]]
