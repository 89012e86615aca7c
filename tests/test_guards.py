"""The metric guards: length collapse and format-only learning fire on hand-made metric sequences that show
them, stay quiet on healthy ones, say each warning once, and reach run.json from a real run."""

from __future__ import annotations

import doctest
import json

import pytest

from rlvr.train import guards
from rlvr.train.guards import MetricGuards, edge_means, format_only_learning, length_collapse

# The H200 GSM8K run of 2026-12-03 (SFT → GRPO, SmolLM2-135M): format learned, correctness barely moved.
COLLAPSING_LENGTHS = [195, 190, 176, 160, 141, 120, 104, 95, 90, 88]
HEALTHY_LENGTHS = [195, 199, 186, 180, 172, 175, 168, 160, 158, 150]
FORMAT_ONLY = ([0.023, 0.025, 0.03, 0.033], [0.60, 0.85, 0.97, 0.99])
LEARNING = ([0.023, 0.05, 0.08, 0.12], [0.60, 0.85, 0.97, 0.99])


def test_edge_means_compare_the_ends_of_a_series():
    assert edge_means([1.0]) is None and edge_means([]) is None
    assert edge_means([2.0, float("nan"), 4.0]) == (2.0, 4.0)  # non-finite values are left out
    assert edge_means(list(range(100))) == (4.5, 94.5)  # at most 10 values at each end


def test_length_collapse_fires_on_a_collapse_and_not_on_a_healthy_shortening():
    # Ends: mean(195, 190) = 192.5 → mean(90, 88) = 89: below half.
    assert length_collapse(COLLAPSING_LENGTHS, 0.5) == ("mean completion length fell from 192.5 to 89.0 tokens "
                                                       "(below 0.5× its start)")
    assert length_collapse(HEALTHY_LENGTHS, 0.5) is None
    assert length_collapse(COLLAPSING_LENGTHS, 0.0) is None  # off
    assert length_collapse(COLLAPSING_LENGTHS, 0.4) is None  # 89 / 192.5 = 0.46
    assert length_collapse([100.0, 10.0][::-1], 0.5) is None  # growing is not collapsing


def test_format_only_learning_fires_when_format_saturates_and_accuracy_stays_flat():
    message = format_only_learning(*FORMAT_ONLY, 0.1)
    assert message == ("held-out format rose from 60.0% to 99.0% while accuracy moved from 2.3% to 3.3% "
                       "(less than 0.1× the gain)")
    assert format_only_learning(*LEARNING, 0.1) is None  # accuracy gained 9.7 points for 39 of format
    assert format_only_learning(*FORMAT_ONLY, 0.0) is None
    assert format_only_learning(FORMAT_ONLY[0], [0.60, 0.70, 0.80, 0.85], 0.1) is None  # not saturated
    assert format_only_learning(FORMAT_ONLY[0], [0.85, 0.90, 0.95, 0.99], 0.1) is None  # format gained too little
    assert format_only_learning([0.03], [0.99], 0.1) is None  # one evaluation is no trend


def feed(watch: MetricGuards, accuracy, fmt, lengths):
    said = []
    for step, (a, f, n) in enumerate(zip(accuracy, fmt, lengths), start=1):
        said += watch.observe(step, {"eval/accuracy": a, "eval/format": f, "eval/mean_length": n, "loss": 0.1})
    return said


def test_metric_guards_say_each_warning_once_and_resume_with_what_they_saw(caplog):
    watch = MetricGuards(0.5, 0.1)
    with caplog.at_level("WARNING", logger="rlvr"):
        said = feed(watch, *FORMAT_ONLY, [195, 150, 100, 88])
        said += feed(watch, *FORMAT_ONLY, [88, 88, 88, 88])  # still true: not said again
    assert len(said) == 2 and said == watch.warnings()
    assert said[0].startswith("step 3: held-out format rose") and "filter_groups" in said[0]
    assert said[1].startswith("step 4: mean completion length fell from 195.0 to 88.0")
    assert [r.message for r in caplog.records] == said
    again = MetricGuards(0.5, 0.1)
    again.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    assert again.warnings() == said and again.observe(9, {"eval/mean_length": 80.0}) == []


def test_metric_guards_stay_quiet_on_a_healthy_run():
    watch = MetricGuards(0.5, 0.1)
    assert feed(watch, *LEARNING, [195, 180, 170, 160]) == []
    for step, n in enumerate(HEALTHY_LENGTHS, start=5):
        assert watch.observe(step, {"completions/mean_length": float(n)}) == []
    assert watch.warnings() == []


def test_a_grpo_run_whose_completions_collapse_says_so_in_run_json(tmp_path):
    """Rewarding short completions collapses the length: the guard fires during training, once."""
    from conftest import make_model, make_tokenizer

    from rlvr.config import GRPOConfig
    from rlvr.grpo.trainer import GRPOTrainer

    def short(prompts, completions, **kw):
        return [-len(c[0]["content"]) for c in completions]

    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    data = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(32)]
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, num_generations=8,
                     max_completion_length=16, max_steps=12, learning_rate=3e-2, warmup_ratio=0.0, save_steps=100,
                     max_grad_norm=1.0, guard_length_collapse=0.5)
    GRPOTrainer(model, tok, [short], data, cfg, show_progress=False).train()
    lengths = [json.loads(line)["completions/mean_length"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert length_collapse(lengths, 0.5) is not None, lengths  # the run did collapse
    warnings = json.loads((tmp_path / "run" / "run.json").read_text())["warnings"]
    assert len(warnings) == 1 and "mean completion length fell" in warnings[0]


@pytest.mark.parametrize("module", ["rlvr.train.guards", "rlvr.train.periodic_eval", "rlvr.grpo.advantages",
                                    "rlvr.grpo.dynamic_sampling", "rlvr.evaluation.during_training"])
def test_docstring_examples(module):
    mod = __import__(module, fromlist=["_"])
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0


def test_every_guard_has_a_fix():
    assert set(guards.FIXES) == {"length_collapse", "format_only"}
