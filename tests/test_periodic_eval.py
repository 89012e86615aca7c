"""Held-out evaluation during training (train.eval_strategy / eval_steps): rows at the scheduled steps, the same
numbers as `rlvr eval`, best/ = the checkpoint with the best metric, load_best_model_at_end, and a resumed run
keeping its best so far."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_tokenizer
from safetensors.torch import load_file

from rlvr.config import GRPOConfig, SFTConfig, config_from_dict
from rlvr.errors import RlvrError
from rlvr.models.loading import attach_lora
from rlvr.pipeline import run_eval, run_grpo, run_sft
from rlvr.sft.trainer import SFTTrainer
from rlvr.train.periodic_eval import BestModel, best_metric_key, eval_due, eval_interval


def sft_data(n=12):
    return [{"prompt": [{"role": "user", "content": f"{i}+{i}?"}], "completion": f"<answer>\n{2 * i}\n</answer>"}
            for i in range(n)]


def held_out(n=4):
    return [{"prompt": [{"role": "user", "content": f"{i}+1?"}], "answer": str(i + 1)} for i in range(n)]


def lora_model(tok, seed=0):
    model = make_model("llama", vocab_size=len(tok), seed=seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    return attach_lora(model, 4, 8, seed=seed)


def rows(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def run_config(run_dir, train_cls, **train):
    return config_from_dict({
        "rewards": ["xml_count", "correctness"],
        "train": {"output_dir": str(run_dir), "learning_rate": 1e-2, "warmup_ratio": 0.0, "save_steps": 100, **train},
        "eval": {"max_new_tokens": 6, "batch_size": 4, "rollout_backend": "hf"},
    }, train_cls)


# ---------------------------------------------------------------- the schedule


def test_the_schedule_names_the_steps_transformers_would_and_the_last():
    assert [s for s in range(1, 8) if eval_due(s, 7, "steps", eval_interval(3, 1, 7), None)] == [3, 6, 7]
    assert [s for s in range(1, 11) if eval_due(s, 10, "steps", eval_interval(None, 5, 10), None)] == [5, 10]
    assert [s for s in range(1, 11) if eval_due(s, 10, "steps", eval_interval(0.3, 1, 10), None)] == [3, 6, 9, 10]
    assert [s for s in range(1, 9) if eval_due(s, 8, "epoch", 1, 3)] == [3, 6, 8]
    assert not any(eval_due(s, 5, "no", 1, None) for s in range(1, 6))


def test_best_model_follows_the_metric_in_either_direction():
    up = BestModel(best_metric_key("accuracy"), True)
    assert [up.update(s, {"eval/accuracy": v}) for s, v in enumerate([0.2, 0.5, 0.5, 0.1, float("nan")], 1)] == [
        True, True, False, False, False]
    assert (up.step, up.value) == (2, 0.5)
    down = BestModel.from_args(SFTConfig(metric_for_best_model="eval_loss"))
    assert down.metric == "eval/loss" and not down.greater_is_better
    assert [down.update(s, {"eval/loss": v}) for s, v in enumerate([3.0, 2.0, 2.5], 1)] == [True, True, False]


# ---------------------------------------------------------------- through the pipeline, the real evaluator


def test_sft_evaluates_at_the_scheduled_steps_with_the_numbers_rlvr_eval_gives(tmp_path):
    tok = make_tokenizer()
    model = lora_model(tok)
    cfg = run_config(tmp_path / "sft", SFTConfig, per_device_train_batch_size=4, max_steps=5, eval_strategy="steps",
                     eval_steps=2, eval_on_start=True, logging_steps=1)
    result = run_sft(cfg, model, tok, sft_data(), show_progress=False, eval_examples=held_out())
    logged = rows(tmp_path / "sft")
    evaluated = [r["step"] for r in logged if "eval/accuracy" in r]
    assert evaluated == [0, 2, 4, 5]
    assert [r["step"] for r in logged] == [0, 1, 2, 3, 4, 5]  # eval metrics join their step's line
    for key in ("eval/format", "eval/soft_format", "eval/mean_reward", "eval/mean_length", "eval/truncated",
                "eval/pass@1", "eval/best_step"):
        assert all(key in r for r in logged if r["step"] in evaluated), key
    assert "loss" in logged[-1] and "loss" not in logged[0]
    # The last evaluation is `rlvr eval` of the trained model: the same problems, sampling and rewards.
    again = run_eval(cfg, model, tok, held_out())
    for name in ("accuracy", "format", "mean_reward", "mean_length", "truncated"):
        assert logged[-1][f"eval/{name}"] == pytest.approx(again[name]), name
    assert result["best_step"] == json.loads((tmp_path / "sft" / "best" / "best_metric.json").read_text())["step"]


def test_grpo_gets_the_same_evaluation_from_the_trainer_core(tmp_path):
    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(16)]
    cfg = run_config(tmp_path / "grpo", GRPOConfig, per_device_train_batch_size=8, num_generations=4,
                     max_completion_length=6, max_steps=3, eval_strategy="steps", eval_steps=2,
                     metric_for_best_model="mean_reward")
    run_grpo(cfg, lora_model(tok), tok, data, show_progress=False, eval_examples=held_out())
    logged = rows(tmp_path / "grpo")
    assert [r["step"] for r in logged if "eval/mean_reward" in r] == [2, 3]
    assert all("reward" in r for r in logged)  # the training metrics stay in the same lines
    run = json.loads((tmp_path / "grpo" / "run.json").read_text())
    assert run["best"]["metric"] == "eval/mean_reward" and run["best"]["step"] in (2, 3)


# ---------------------------------------------------------------- best/ with a scripted evaluator


class Scripted:
    """An evaluator whose accuracy after each step is given: which checkpoint is best is known in advance."""

    def __init__(self, values: dict[int, float]):
        self.values, self.calls = values, []

    def metric_names(self):
        return ["eval/accuracy"]

    def __call__(self, model, step):
        self.calls.append(step)
        return {"eval/accuracy": self.values[step]}


def sft(run_dir, evaluator, **kw):
    tok = make_tokenizer()
    args = SFTConfig(output_dir=str(run_dir), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
                     warmup_ratio=0.0, save_steps=1, save_total_limit=None, seed=3, eval_strategy="steps",
                     eval_steps=1, **kw)
    return SFTTrainer(lora_model(tok), tok, sft_data(), args, show_progress=False, evaluator=evaluator)


def weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize("greater, best_step", [(True, 2), (False, 3)])
def test_best_adapter_is_the_checkpoint_with_the_best_metric(tmp_path, greater, best_step):
    run_dir = tmp_path / "run"
    result = sft(run_dir, Scripted({1: 0.3, 2: 0.5, 3: 0.1, 4: 0.2}), greater_is_better=greater,
                 load_best_model_at_end=True).train()
    best = weights(run_dir / "best")
    assert_same(best, weights(run_dir / "checkpoints" / f"step-{best_step:06d}" / "model"))
    other = weights(run_dir / "checkpoints" / "step-000004" / "model")
    assert any(not torch.equal(best[k], other[k]) for k in best)  # the steps' adapters do differ
    assert_same(weights(run_dir / "final"), best)  # load_best_model_at_end: final/ is the best
    assert json.loads((run_dir / "best" / "best_metric.json").read_text())["step"] == best_step
    assert result["best_step"] == best_step
    assert [r["eval/best_step"] for r in rows(run_dir)] == ([1, 2, 2, 2] if greater else [1, 1, 3, 3])


def test_without_load_best_model_at_end_final_is_the_last_step(tmp_path):
    run_dir = tmp_path / "run"
    sft(run_dir, Scripted({1: 0.3, 2: 0.5, 3: 0.1, 4: 0.2})).train()
    assert_same(weights(run_dir / "final"), weights(run_dir / "checkpoints" / "step-000004" / "model"))


def test_a_resumed_run_keeps_its_best_so_far(tmp_path):
    run_dir = tmp_path / "run"
    values = {1: 0.3, 2: 0.5, 3: 0.1, 4: 0.4}  # step 4 is better than 3 but not than 2
    first = sft(run_dir, Scripted(values))
    step = first.train_step

    def stop_after_three(*a):
        out = step(*a)
        if first.global_step == 3:
            first.request_stop()
        return out

    first.train_step = stop_after_three
    assert first.train()["step"] == 3
    resumed_eval = Scripted(values)
    result = sft(run_dir, resumed_eval).train("latest")
    assert resumed_eval.calls == [4]
    assert result["best_step"] == 2 and rows(run_dir)[-1]["eval/best_step"] == 2
    assert_same(weights(run_dir / "best"), weights(run_dir / "checkpoints" / "step-000002" / "model"))


def test_eval_settings_are_refused_before_training(tmp_path):
    with pytest.raises(RlvrError, match="metric_for_best_model: 'eval/bleu' is not an evaluation metric"):
        sft(tmp_path / "a", Scripted({}), metric_for_best_model="bleu").train()
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    with pytest.raises(RlvrError, match="load_best_model_at_end needs evaluations"):
        SFTConfig(load_best_model_at_end=True).validate()
    with pytest.raises(RlvrError, match="eval_steps must be a whole number"):
        SFTConfig(eval_strategy="steps", eval_steps=2.5).validate()
    with pytest.raises(RlvrError, match="eval_strategy: 'step' is not one of"):
        SFTConfig(eval_strategy="step").validate()
    tok = make_tokenizer()
    with pytest.raises(RlvrError, match="given nothing to evaluate"):
        SFTTrainer(lora_model(tok), tok, sft_data(), SFTConfig(output_dir=str(tmp_path / "b"), eval_strategy="steps"),
                   show_progress=False).train()


def test_dpo_gets_evaluations_from_the_core_after_each_epoch(tmp_path):
    """The preference trainers share the core: eval_strategy epoch evaluates after steps 2 and 4 of 8 pairs ×
    2 epochs at 4 pairs a step (and the last step), and keeps best/."""
    from rlvr.preference.config import DPOConfig
    from rlvr.preference.trainer import PreferenceTrainer

    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": f"say {i}"}], "chosen": f"{i}{i}", "rejected": f"{i + 1}x"}
            for i in range(8)]
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=4, num_train_epochs=2.0,
                     learning_rate=1e-3, logging_steps=10, save_steps=100, eval_strategy="epoch")
    evaluator = Scripted({2: 0.5, 4: 0.25})
    PreferenceTrainer(lora_model(tok), tok, data, args, show_progress=False, evaluator=evaluator).train()
    assert evaluator.calls == [2, 4]
    assert [(r["step"], r["eval/accuracy"]) for r in rows(tmp_path / "dpo")] == [(2, 0.5), (4, 0.25)]
    assert json.loads((tmp_path / "dpo" / "best" / "best_metric.json").read_text())["step"] == 2
