"""Preference data: TRL's formats and their bad inputs, the arithmetic preference set, tokenisation,
per-sequence log-probs through the chunked path, and the configs' TRL names and defaults."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from rlvr.config import load_run_config
from rlvr.data import encode_prompt, split_train_eval
from rlvr.data.preferences import (
    arithmetic_preference_pairs,
    prepare_preference_pairs,
    prepare_unpaired_examples,
    wrong_solution,
)
from rlvr.data.templates import IGNORE_INDEX, pad_batch
from rlvr.errors import RlvrError
from rlvr.preference.batches import completion_tokens, encode_pairs, encode_unpaired, length_sorted_micro_batches
from rlvr.preference.config import CPOConfig, DPOConfig, KTOConfig, ORPOConfig
from rlvr.preference.logprobs import reference_logprobs, sequence_logprobs
from rlvr.rewards import correctness_reward

SKY = [{"role": "user", "content": "What color is the sky?"}]


def test_paired_formats_plain_conversational_and_implicit_prompt():
    plain = prepare_preference_pairs([{"prompt": "2+2=", "chosen": "4", "rejected": "5", "id": 7}])
    assert plain == [{"id": 7, "prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    conv = prepare_preference_pairs([{"prompt": SKY, "chosen": [{"role": "assistant", "content": "Blue."}],
                                      "rejected": [{"role": "assistant", "content": "Green."}]}])
    assert conv == [{"prompt": SKY, "chosen": "Blue.", "rejected": "Green."}]
    implicit = prepare_preference_pairs([{"chosen": SKY + [{"role": "assistant", "content": "Blue."}],
                                          "rejected": SKY + [{"role": "assistant", "content": "Green."}]}])
    assert implicit == conv


@pytest.mark.parametrize("row,message", [
    ({"prompt": "p", "chosen": "a"}, "row 0: no 'rejected' column"),
    ({"prompt": "p", "rejected": "a"}, "row 0: no 'chosen' column"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "row 0: 'chosen' and 'rejected' are identical"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "row 0: 'chosen' is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": ""}]}, "'rejected' is empty"),
    ({"prompt": SKY, "chosen": SKY + [{"role": "assistant", "content": "x"}], "rejected": "y"},
     "one assistant message"),
])
def test_bad_pairs_are_one_line_errors(row, message):
    with pytest.raises(RlvrError, match=message) as e:
        prepare_preference_pairs([row], where="prefs.jsonl")
    assert "\n" not in str(e.value) and "prefs.jsonl" in str(e.value)


def test_unpaired_format_and_unpairing():
    rows = [{"prompt": "q", "completion": "good", "label": True}, {"prompt": "q", "completion": "bad", "label": 0}]
    assert [e["label"] for e in prepare_unpaired_examples(rows)] == [True, False]
    unpaired = prepare_unpaired_examples([{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    assert unpaired == [{"prompt": "q", "completion": "good", "label": True},
                        {"prompt": "q", "completion": "bad", "label": False}]
    with pytest.raises(RlvrError, match="row 0: no 'label' column"):
        prepare_unpaired_examples([{"prompt": "q", "completion": "c"}])
    with pytest.raises(RlvrError, match="'completion' is empty"):
        prepare_unpaired_examples([{"prompt": "q", "completion": "", "label": True}])
    with pytest.raises(RlvrError, match="'label' is 'yes'"):
        prepare_unpaired_examples([{"prompt": "q", "completion": "c", "label": "yes"}])


def test_arithmetic_pairs_chosen_right_rejected_wrong():
    train, _ = split_train_eval(60, 0, seed=3)
    pairs = arithmetic_preference_pairs(train, seed=1)
    chosen = correctness_reward([p["prompt"] for p in pairs], [p["chosen"] for p in pairs],
                                answer=[p["answer"] for p in pairs])
    rejected = correctness_reward([p["prompt"] for p in pairs], [p["rejected"] for p in pairs],
                                  answer=[p["answer"] for p in pairs])
    assert min(chosen) > 0 and max(rejected) == 0  # every chosen is right, every rejected wrong
    assert all(p["chosen"] == ex["completion"] and p["prompt"] == ex["prompt"] for p, ex in zip(pairs, train))
    assert prepare_preference_pairs(pairs)  # in TRL's format and passes its checks
    slipped = sum("= " + p["answer"] + "\n" not in p["rejected"] for p in pairs)
    assert 0 < slipped < len(pairs)  # most have the slip in the work, some only in the answer


def test_wrong_solution_by_hand():
    text = "<reasoning>\n2 + 3 = 5\n5 * 2 = 10\n</reasoning>\n<answer>\n10\n</answer>\n"
    rng = random.Random(0)
    out = {wrong_solution(text, "10", rng) for _ in range(40)}
    for w in out:
        lines = w.split("\n")
        assert lines[1] == "2 + 3 = 5" and lines[5] != "10" and lines[5].isdigit()
        assert lines[2] in ("5 * 2 = 10", f"5 * 2 = {lines[5]}")


def test_encode_pairs_prompt_ids_and_labels(tokenizer):
    pairs = prepare_preference_pairs([{"prompt": SKY, "chosen": "Blue.", "rejected": "Green!!"},
                                      {"prompt": "plain ", "chosen": "ab", "rejected": "c"}])
    encoded = encode_pairs(tokenizer, pairs, max_length=None)
    prompt_ids = encode_prompt(tokenizer, SKY)
    ids, labels = encoded[0].chosen
    assert ids[:len(prompt_ids)] == prompt_ids and all(t == IGNORE_INDEX for t in labels[:len(prompt_ids)])
    reply = tokenizer.decode(ids[len(prompt_ids):])
    assert reply.startswith("Blue.") and reply.endswith("<|im_end|>")  # the end-of-turn token is learnt too
    assert completion_tokens([encoded[0].rejected]) == len("Green!!") + 1  # the characters and <|im_end|>
    # max_length cutting a pair's completion away drops the pair, with a warning; all of them is an error.
    short = encode_pairs(tokenizer, pairs, max_length=len(prompt_ids))
    assert len(short) == 1
    with pytest.raises(RlvrError, match="raise max_length"):
        encode_pairs(tokenizer, pairs[:1], max_length=len(prompt_ids))


def test_kl_sequences_rotate_within_groups(tokenizer):
    examples = [{"prompt": f"q{i} ", "completion": f"c{i}", "label": i % 2 == 0} for i in range(5)]
    encoded = encode_unpaired(tokenizer, examples, None, kl_group=2)
    texts = [tokenizer.decode(e.kl_sequence[0]) for e in encoded]
    # groups (0, 1), (2, 3), (4): each prompt with the previous completion of its group
    assert [t.split(" ")[0] + t.split(" ")[1][:2] for t in texts] == ["q0c1", "q1c0", "q2c3", "q3c2", "q4c4"]


def test_length_sorted_micro_batches():
    assert length_sorted_micro_batches([0, 1, 2, 3, 4], [3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]


def naive_sequence_logprobs(model, ids, mask, labels):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * (targets != IGNORE_INDEX)).sum(1)


def test_sequence_logprobs_equal_full_logits_values_and_gradients(tokenizer, tiny_model):
    pairs = prepare_preference_pairs([{"prompt": SKY, "chosen": "Blue.", "rejected": "Green, surely."},
                                      {"prompt": "2+2=", "chosen": "4", "rejected": "five"}])
    enc = encode_pairs(tokenizer, pairs, None)
    rows = [p.chosen for p in enc] + [p.rejected for p in enc]
    ids, mask, labels = pad_batch(rows, tokenizer.pad_token_id)
    weights = torch.tensor([0.3, -1.0, 2.0, 0.5])
    sums, lengths = sequence_logprobs(tiny_model, ids, mask, labels, chunk_elements=3 * len(tokenizer))
    (sums * weights).sum().backward()
    ours = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    naive = naive_sequence_logprobs(tiny_model, ids, mask, labels)
    (naive * weights).sum().backward()
    torch.testing.assert_close(sums, naive, rtol=1e-5, atol=1e-5)
    for a, p in zip(ours, tiny_model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    assert lengths.tolist() == [completion_tokens([r]) for r in rows]
    # The reference pass: the same sums, in the rows' order, whatever the batch size and length sort.
    ref = reference_logprobs(tiny_model, rows, tokenizer.pad_token_id, batch_size=3)
    torch.testing.assert_close(ref, naive.detach(), rtol=1e-5, atol=1e-5)
    assert tiny_model.training


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


# Where rlvr's defaults differ from TRL's, on purpose (each marked "rlvr:" in rlvr/preference/config.py).
RLVR_FIELDS = {"warmup_ratio", "max_nonfinite_steps", "logprob_chunk_elements", "overwrite_output_dir"}
RLVR_DEFAULTS = {"output_dir", "optim", "gradient_checkpointing", "bf16", "metric_for_best_model"}


@pytest.mark.parametrize("ours,module,name", [(DPOConfig, "trl", "DPOConfig"), (KTOConfig, "trl", "KTOConfig"),
                                              (CPOConfig, "trl.experimental.cpo", "CPOConfig"),
                                              (ORPOConfig, "trl.experimental.orpo", "ORPOConfig")])
def test_configs_have_trl_names_and_defaults(ours, module, name):
    theirs = getattr(pytest.importorskip(module), name)
    trl_defaults = {f.name: _default(f) for f in dataclasses.fields(theirs)}
    for f in dataclasses.fields(ours):
        if f.name in RLVR_FIELDS:
            continue
        assert f.name in trl_defaults, f"{name}.{f.name} is not a TRL field"
        if f.name not in RLVR_DEFAULTS:
            assert _default(f) == trl_defaults[f.name], f"{name}.{f.name}"


@pytest.mark.parametrize("cls,train,message", [
    (DPOConfig, {"loss_type": "sigmoids"}, "train.loss_type: 'sigmoids' is not one of"),
    (DPOConfig, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "loss_weights has 1 values for 2"),
    (DPOConfig, {"loss_type": "robust", "label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
    (DPOConfig, {"loss_type": "exo_pair"}, "exo_pair needs label_smoothing > 0"),
    (DPOConfig, {"loss_type": "bco_pair", "f_divergence_type": "js_divergence"}, "bco_pair need reverse_kl"),
    (DPOConfig, {"beta": 0}, "train.beta must be > 0"),
    (DPOConfig, {"use_weighting": True}, "train.use_weighting: unknown setting"),
    (CPOConfig, {"loss_type": "simpoo"}, "did you mean 'simpo'"),
    (KTOConfig, {"per_device_train_batch_size": 1}, "KL term"),
    (ORPOConfig, {"learning_rate": "fast"}, "train.learning_rate: expected float"),
])
def test_bad_preference_settings_are_one_line_errors(tmp_path, cls, train, message):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": train}))
    with pytest.raises(RlvrError, match=message) as e:
        load_run_config(path, cls)
    assert "\n" not in str(e.value)


def test_yaml_loads_trl_spellings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  loss_type: alphapo\n  beta: 2.5\n")
    cfg = load_run_config(path, CPOConfig).train
    assert (cfg.loss_type, cfg.cpo_alpha, cfg.beta) == ("simpo", 0.0, 2.5)  # TRL's AlphaPO shorthand
    path.write_text("train:\n  loss_type: ipo\n  learning_rate: 5e-7\n")
    cfg = load_run_config(path, DPOConfig).train
    assert cfg.loss_type == ["ipo"] and cfg.learning_rate == 5e-7
