"""TRL compatibility of what reward functions get: one TrainerState, log_extra/log_metric, TRL's prompt column."""

from __future__ import annotations

import json

import pytest
from conftest import make_model, make_tokenizer
from transformers import TrainerState

from rlvr.config import GRPOConfig
from rlvr.data import prepare_examples
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.rewards import score_completions
from rlvr.rewards.inputs import RewardLog, new_trainer_state, reward_inputs


def test_trl_prompt_column_is_used_as_trl_uses_it():
    plain = prepare_examples([{"prompt": "2+2=", "answer": "4"}], prompt_column="prompt", system_prompt="Be brief.")
    assert plain[0]["prompt"] == "2+2="  # no system prompt, no conversation: no chat template later
    messages = [{"role": "user", "content": "2+2?"}]
    chat = prepare_examples([{"prompt": messages, "answer": "4"}], prompt_column="prompt", system_prompt="Be brief.")
    assert chat[0]["prompt"] == messages  # exactly as given
    # A TRL dataset under the default prompt_column ('question') finds its 'prompt' column.
    assert prepare_examples([{"prompt": "2+2=", "answer": "4"}])[0]["prompt"] == "2+2="
    # Prompts rlvr builds from a question column stay conversational, with the system prompt.
    built = prepare_examples([{"question": "2+2?", "answer": "4"}], system_prompt="Be brief.")
    assert built[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def test_reward_inputs_pass_columns_as_trl_does():
    rows = [{"prompt": "q", "answer": "1", "completion": "rlvr's SFT target", "id": 7}] * 2
    prompts, completions, columns = reward_inputs(rows, ["a", "b"])
    assert prompts == ["q", "q"] and completions == ["a", "b"]
    assert columns == {"answer": ["1", "1"], "id": [7, 7]}  # no prompt, completion or completion_ids


def test_trainer_state_and_log_hooks_are_shared_not_per_row():
    state = new_trainer_state(max_steps=5, num_train_epochs=2)
    log = RewardLog()
    calls = []

    def fails_on_b(completions, trainer_state, log_metric, log_extra, **kwargs):
        calls.append(trainer_state)
        log_metric("seen", float(len(completions)))
        if "b" in completions and len(completions) > 1:
            raise ValueError("batch")
        return [1.0] * len(completions)

    scores = score_completions([fails_on_b], ["q", "q"], ["a", "b"], None,
                               {"answer": ["1", "1"], "trainer_state": state, **log.hooks()}, reward_errors="skip")
    assert scores.total.tolist() == [1.0, 1.0]  # retried row by row: each row got the whole object
    assert all(s is state for s in calls) and len(calls) == 3
    assert log.metrics() == {"seen": pytest.approx((2 + 1 + 1) / 3)}


def test_a_trl_reward_function_runs_through_a_grpo_step(tmp_path):
    seen = []

    def reward_len(completions, trainer_state, log_metric=None, log_extra=None, **kwargs):
        """Written as for TRL: reads trainer_state's attributes, logs a metric and an extra column."""
        assert "completion" not in kwargs and kwargs["answer"][0] in {"0", "1", "2", "3"}
        seen.append((id(trainer_state), trainer_state.global_step, trainer_state.max_steps, trainer_state.epoch))
        lengths = [len(c) for c in completions]
        log_metric("custom/mean_chars", sum(lengths) / len(lengths))
        log_extra("chars", lengths)
        scale = 1.0 if trainer_state.global_step < 1 else 2.0  # reward shaping by training progress
        return [scale * (n % 5) for n in lengths]

    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    records = [{"prompt": f"{i} + 1 =", "answer": str(i % 4), "completion": "SFT target"} for i in range(16)]
    train = prepare_examples(records, prompt_column="prompt")
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                     max_completion_length=6, max_steps=2, learning_rate=1e-3, save_steps=100, warmup_ratio=0.0,
                     logging_steps=1, completions_log_steps=1)
    trainer = GRPOTrainer(model, tok, [reward_len], train, cfg, show_progress=False)
    trainer.train()

    assert isinstance(trainer.state, TrainerState)
    assert [s[1:] for s in seen] == [(0, 2, 0.0), (1, 2, 0.125)]  # a round: 2 of 16 prompts, 1/8 epoch
    assert len({s[0] for s in seen}) == 1  # one object, moved along
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all("custom/mean_chars" in m for m in metrics)
    samples = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    assert samples and all(isinstance(s["prompt"], str) and isinstance(s["extra"]["chars"], int) for s in samples)
    assert all(s["extra"]["chars"] == len(s["completion"]) for s in samples)
