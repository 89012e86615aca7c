"""Issue 13's cases that had no test through the CLI yet, and `rlvr eval` weighing rewards as training does
(issue 12): one line and exit 2 before anything loads or is written; what rlvr changed is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import make_tokenizer

from rlvr.cli import main
from rlvr.config import DEFAULT_LORA_TARGETS, config_from_dict

REWARDS = '''
def length_mod_3(prompts, completions, **kw):
    return [float(len(c[0]["content"]) % 3) for c in completions]

def one(prompts, completions, **kw):
    return [1.0] * len(completions)

def boom(prompts, completions, **kw):
    raise ValueError("no")
'''


def write(tmp_path: Path, tiny_model_dir: Path, rewards=("correctness",), **sections) -> Path:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(12)))
    config = {"model": {"model_name_or_path": str(tiny_model_dir), "lora_rank": 4},
              "data": {"dataset": str(data), "system_prompt": "Add.", "eval_size": 3},
              "rewards": [r if ":" not in r else f"{tmp_path / 'my_rewards.py'}{r}" for r in rewards],
              "eval": {"max_new_tokens": 6, "rollout_backend": "hf"}}
    train = {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 8,
             "num_generations": 4, "max_completion_length": 6, "learning_rate": 1e-2, "optim": "adamw_torch",
             "rollout_backend": "hf", "save_steps": 1}
    config["train"] = {**train, **sections.pop("train", {})}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(capsys, *argv) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_refused(code, lines, *needles):
    """Exit 2 and the error as the last line (status lines such as the run directory may come first)."""
    assert code == 2 and lines[-1].startswith("rlvr: error: "), lines
    assert not any(line.startswith("rlvr: error: ") for line in lines[:-1])
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


# ---------------------------------------------------------------- rlvr eval


def test_eval_weighs_the_rewards_with_the_train_sections_reward_weights(tmp_path, capsys, tiny_model_dir):
    # Weights 3 and 0.5: the weighted mean equals the plain sum only if length_mod_3 averaged 0.25, which
    # three completions cannot.
    config = write(tmp_path, tiny_model_dir, rewards=(":length_mod_3", ":one"), train={"reward_weights": [3.0, 0.5]})
    assert cli(capsys, "eval", config, "--output", tmp_path / "eval.json")[0] == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    means = result["rewards"]
    assert means["one"] == 1.0
    assert result["mean_reward"] == pytest.approx(3.0 * means["length_mod_3"] + 0.5 * means["one"])


def test_eval_reads_only_the_reward_weights_of_a_train_section():
    sft_section = {"max_length": 64, "learning_rate": 1e-4}  # SFTConfig's: not GRPO's, not eval's business
    assert config_from_dict({"train": sft_section}, None).train.reward_weights is None
    assert config_from_dict({"train": {"reward_weights": [1, 2]}}, None).train.reward_weights == [1, 2]


@pytest.mark.parametrize(("rewards", "train", "needle"), [
    ((":lenght_mod_3",), {}, "did you mean 'length_mod_3'"),
    ((":length_mod_3", ":one"), {"reward_weights": [1.0]}, "reward_weights has 1 values for 2 reward functions"),
])
@pytest.mark.parametrize("compare", [False, True])
def test_eval_checks_the_rewards_before_the_model_loads(tmp_path, capsys, tiny_model_dir, no_model_loads, rewards,
                                                       train, needle, compare):
    extra = ["--compare", "base=base", "--output-dir", tmp_path / "cmp"] if compare else []
    assert_refused(*cli(capsys, "eval", write(tmp_path, tiny_model_dir, rewards=rewards, train=train), *extra), needle)
    assert not (tmp_path / "cmp").exists()


# ---------------------------------------------------------------- preference commands


@pytest.mark.parametrize("command", ["dpo", "cpo", "orpo", "kto"])
def test_preference_max_steps_zero_is_refused(tmp_path, capsys, command):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"max_steps": 0}}))
    assert_refused(*cli(capsys, command, path, "--output-dir", tmp_path / "run"), "train.max_steps: 0", "-1")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- rlvr train (GRPO)


def test_grpo_resume_refuses_a_changed_num_generations(tmp_path, capsys, tiny_model_dir):
    config = write(tmp_path, tiny_model_dir, train={"max_steps": 1})
    assert cli(capsys, "train", config)[0] == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert_refused(*cli(capsys, "train", config, "--resume", "--set", "train.num_generations=2",
                        "--set", "train.max_steps=2"), "num_generations: 4 → 2", "--force")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_grpo_identical_configs_and_seeds_give_identical_adapters(tmp_path, capsys, tiny_model_dir):
    adapters = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        config = write(tmp_path, tiny_model_dir, train={"output_dir": str(tmp_path / name), "seed": seed})
        assert cli(capsys, "train", config)[0] == 0
        adapters.append((tmp_path / name / "final" / "adapter_model.safetensors").read_bytes())
    assert adapters[0] == adapters[1]
    assert adapters[0] != adapters[2]


def test_grpo_records_cut_prompts_the_backend_and_the_adapted_modules(tmp_path, capsys, tiny_model_dir):
    tok = make_tokenizer()
    shortest = tok.apply_chat_template([{"role": "system", "content": "Add."}, {"role": "user", "content": "0+0?"}],
                                       add_generation_prompt=True, tokenize=True)
    if not isinstance(shortest, list):
        shortest = shortest["input_ids"]
    config = write(tmp_path, tiny_model_dir, train={"max_prompt_length": len(shortest) - 1})  # every question is cut
    assert cli(capsys, "train", config)[0] == 0
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [m["prompts/truncated"] for m in metrics] == [2, 2]  # both prompts of each round
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["rollout_backend"] == "hf"
    assert sorted(run["lora_target_modules"]) == sorted(DEFAULT_LORA_TARGETS)


def test_a_reward_error_names_the_step_it_happened_in(tmp_path, capsys, tiny_model_dir):
    config = write(tmp_path, tiny_model_dir, rewards=(":boom",))
    assert_refused(*cli(capsys, "train", config), "reward function 'boom' raised ValueError", "at step 1")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("kind", ["gemma2", "gpt_oss"])
def test_a_model_without_sdpa_evaluates_with_the_default_setting_and_one_warning(kind, tmp_path, capsys, caplog):
    import logging

    from families import family_model

    tok = make_tokenizer()
    folder = tmp_path / kind
    family_model(kind, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    config = write(tmp_path, folder, data={"eval_size": 1}, eval={"max_new_tokens": 2})
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        assert cli(capsys, "eval", config)[0] == 0  # model.attn_implementation left at its default, sdpa
    assert [r.getMessage() for r in caplog.records if "attn_implementation" in r.getMessage()] == [
        f"model.attn_implementation 'sdpa' is not supported by {family_model(kind, 8).__class__.__name__}; "
        "using 'eager' (set model.attn_implementation to choose)"]
