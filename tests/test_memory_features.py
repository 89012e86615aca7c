"""Memory features: checkpointing (plain and offloaded), token-budget micro-batches, float16 training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_tokenizer
from test_grpo_trainer import args, char_score, count_a, dataset, lora_model

from rlvr.config import GRPOConfig, SFTConfig
from rlvr.errors import RlvrError
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.models.checkpointing import ActivationOffloader, enable_checkpointing
from rlvr.models.forward import completion_logprobs
from rlvr.models.loading import attach_lora
from rlvr.train.core import prepare_model


def _inputs(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(5, vocab, (3, 6), generator=g)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[0, :2] = 0  # ragged, left-padded
    completion = torch.randint(5, vocab, (3, 7), generator=g)
    completion_mask = torch.ones_like(completion)
    completion_mask[1, 4:] = 0
    return prompt, prompt_mask, completion, completion_mask


def _grads(mode, bf16=False, dropout=0.0):
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok), num_hidden_layers=3)
    model = attach_lora(model, 4, 8, dropout=dropout)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    model.train()
    offloader = enable_checkpointing(model, mode)
    torch.manual_seed(123)  # the dropout masks: the recompute must draw the same ones
    prompt, pm, completion, cm = _inputs(len(tok))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logps, entropy = completion_logprobs(model, prompt, pm, completion, cm, temperature=0.7, with_entropy=True)
    ((logps * torch.linspace(-1, 1, logps.numel()).view_as(logps)).sum() + entropy.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logps.detach(), grads, offloader


@pytest.mark.parametrize("mode", [True, "offload"])
@pytest.mark.parametrize("bf16,dropout", [(False, 0.0), (False, 0.1), (True, 0.0)])
def test_checkpointing_gives_the_gradients_of_none(mode, bf16, dropout):
    ref_logps, ref, _ = _grads(False, bf16, dropout)
    logps, got, offloader = _grads(mode, bf16, dropout)
    assert sum(g.abs().sum() for g in ref.values()) > 0
    assert set(got) == set(ref)
    torch.testing.assert_close(logps, ref_logps, atol=0, rtol=0)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=1e-5, msg=name)
    if mode == "offload":
        assert offloader is not None and offloader.slots == []  # every saved input was consumed


def test_checkpointing_recomputes_in_backward():
    """The layers run twice per step when checkpointed (forward + recompute), once without."""
    calls = {}
    for mode in (False, True):
        tok = make_tokenizer()
        model = attach_lora(make_model("llama", vocab_size=len(tok)), 4, 8)
        model.train()
        enable_checkpointing(model, mode)
        mlp = model.get_base_model().model.layers[0].mlp
        count = [0]

        def hook(*_, count=count):
            count[0] += 1

        mlp.register_forward_hook(hook)
        prompt, pm, completion, cm = _inputs(len(tok))
        logps, _ = completion_logprobs(model, prompt, pm, completion, cm)
        logps.sum().backward()
        calls[mode] = count[0]
    assert calls == {False: 1, True: 2}


def _layer_calls(model, tok) -> int:
    """How many times layer 0's MLP runs in one forward + backward (2 when checkpointed)."""
    count = [0]
    mlp = model.get_base_model().model.layers[0].mlp
    handle = mlp.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    prompt, pm, completion, cm = _inputs(len(tok))
    completion_logprobs(model, prompt, pm, completion, cm)[0].sum().backward()
    handle.remove()
    return count[0]


def test_a_later_stage_changes_or_removes_checkpointing():
    """The mode is the last one set: a second enable_checkpointing is not ignored."""
    tok = make_tokenizer()
    model = attach_lora(make_model("llama", vocab_size=len(tok)), 4, 8)
    model.train()
    enable_checkpointing(model, True)
    assert _layer_calls(model, tok) == 2
    enable_checkpointing(model, False)
    assert _layer_calls(model, tok) == 1
    offloader = enable_checkpointing(model, "offload")
    prompt, pm, completion, cm = _inputs(len(tok))
    logps, _ = completion_logprobs(model, prompt, pm, completion, cm)
    assert len(offloader.slots) == 2  # the new mode's offloader holds both layers' inputs
    logps.sum().backward()
    assert offloader.slots == []
    enable_checkpointing(model, True)
    assert _layer_calls(model, tok) == 2


def test_no_grad_passes_are_not_checkpointed():
    tok = make_tokenizer()
    model = attach_lora(make_model("llama", vocab_size=len(tok)), 4, 8)
    model.train()
    enable_checkpointing(model, True)
    offloader = enable_checkpointing(model, "offload")  # replaces the first mode
    prompt, pm, completion, cm = _inputs(len(tok))
    with torch.no_grad():
        completion_logprobs(model, prompt, pm, completion, cm)
    assert offloader.slots == []
    logps, _ = completion_logprobs(model, prompt, pm, completion, cm)  # the same offloader saves with grad
    assert len(offloader.slots) == 2


def test_offloader_loads_each_input_once():
    off = ActivationOffloader(torch.device("cpu"))
    a, b = torch.randn(2, 3), torch.randn(4)
    ia, ib = off.save(a), off.save(b)
    assert off.load(ib) is b and off.load(ia) is a
    assert off.slots == []
    i = off.save(a)
    off.load(i)
    off.slots.append(None)
    with pytest.raises(RuntimeError, match="loaded twice"):
        off.load(len(off.slots) - 1)


@pytest.mark.parametrize("value,expected", [(True, True), ("true", True), ("false", False), ("offload", "offload")])
def test_gradient_checkpointing_values(value, expected):
    cfg = GRPOConfig(gradient_checkpointing=value)
    cfg.validate()
    assert cfg.gradient_checkpointing == expected
    sft = SFTConfig(gradient_checkpointing=value)
    sft.validate()
    assert sft.gradient_checkpointing == expected


def test_gradient_checkpointing_typo_is_one_line_error():
    with pytest.raises(RlvrError, match="not one of false, true, offload.*offload"):
        GRPOConfig(gradient_checkpointing="ofload").validate()


# ---------------------------------------------------------------- token budget


def _step_params(tmp_path, loss_type, budget, checkpointing=False):
    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = args(tmp_path, loss_type=loss_type, micro_batch_token_budget=budget, gradient_checkpointing=checkpointing,
               per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=2,
               max_completion_length=12, max_steps=1)
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), cfg, show_progress=False)
    batch, _, _ = trainer.make_round(0)
    micro = trainer.micro_batches(batch, 0)
    pieces = [p for m in micro for p in trainer.token_budget_pieces(batch, m)]
    grads = {}
    # Compare gradients, not updated weights: Adam's first step is lr·sign(g), which turns 1e-12
    # differences in near-zero gradients into ±lr.
    trainer.update.optimizer.step = lambda: grads.update(
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    prepare_model(trainer.model, cfg)
    trainer.batch = batch
    metrics = trainer.train_step(micro)
    return grads, metrics, batch, pieces


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_token_budget_pieces_give_the_same_step(tmp_path, loss_type):
    whole, m_whole, batch, pieces_whole = _step_params(tmp_path / "a", loss_type, None)
    split, m_split, _, pieces = _step_params(tmp_path / "b", loss_type, 40)
    assert len(pieces_whole) == 2 and len(pieces) > 2
    assert sum(g.abs().sum() for g in whole.values()) > 0
    for piece in pieces:
        rows = batch.rows(piece)
        padded = rows.prompt_ids.shape[1] + rows.completion_ids.shape[1]
        assert piece.numel() == 1 or piece.numel() * padded <= 40
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-5, msg=name)
    assert m_split["loss"] == pytest.approx(m_whole["loss"], rel=1e-5, abs=1e-7)


def test_token_budget_with_offloaded_checkpointing(tmp_path):
    whole, _, _, _ = _step_params(tmp_path / "a", "dapo", None)
    split, _, _, _ = _step_params(tmp_path / "b", "dapo", 30, checkpointing="offload")
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-5, msg=name)


def test_token_budget_pieces_sort_rows_and_cover_the_micro_batch(tmp_path):
    tok = make_tokenizer()
    cfg = args(tmp_path, micro_batch_token_budget=25, max_completion_length=12)
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), cfg, show_progress=False)
    batch, _, _ = trainer.make_round(0)
    index = torch.arange(8)
    pieces = trainer.token_budget_pieces(batch, index)
    assert sorted(torch.cat(pieces).tolist()) == list(range(8))
    lengths = (batch.prompt_mask.sum(-1) + batch.completion_mask.sum(-1))
    flat = [lengths[i].item() for p in pieces for i in p]
    assert flat == sorted(flat, reverse=True)


def test_token_budget_must_be_positive():
    with pytest.raises(RlvrError, match="micro_batch_token_budget must be > 0"):
        GRPOConfig(micro_batch_token_budget=0).validate()


def test_token_budget_counts_pieces_as_they_are_padded(tmp_path):
    """A piece pads to its longest prompt plus its longest completion, not its longest row."""
    from rlvr.grpo.round import RoundBatch

    tok = make_tokenizer()
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(),
                          args(tmp_path, micro_batch_token_budget=20), show_progress=False)
    # Row 0: prompt 8, completion 2; row 1: prompt 2, completion 8. Each is 10 long; together they pad to 16.
    pm = torch.tensor([[1] * 8, [0] * 6 + [1] * 2])
    cm = torch.tensor([[1] * 2 + [0] * 6, [1] * 8])
    batch = RoundBatch(pm.clone(), pm, cm.clone(), cm, torch.zeros(2))
    pieces = trainer.token_budget_pieces(batch, torch.arange(2))
    for piece in pieces:
        rows = batch.rows(piece)
        assert piece.numel() == 1 or piece.numel() * (rows.prompt_ids.shape[1] + rows.completion_ids.shape[1]) <= 20
    assert len(pieces) == 2


# ---------------------------------------------------------------- float16


def test_float16_lora_trains_with_a_loss_scaler(tmp_path):
    tok = make_tokenizer()
    model = lora_model(tok)
    model.get_base_model().to(torch.float16)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # peft keeps adapters in fp32 on a half base
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = args(tmp_path, max_steps=3, learning_rate=1e-3, max_completion_length=8)
    trainer = GRPOTrainer(model, tok, [count_a], dataset(), cfg, show_progress=False)
    assert trainer.update.scaler is not None
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert result["amp/loss_scale"] > 0
    moved = [not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(moved)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_float16_full_fine_tuning_is_refused(tmp_path):
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok)).to(torch.float16)
    with pytest.raises(RlvrError, match="float16 training needs float32 trainable weights"):
        GRPOTrainer(model, tok, [count_a], dataset(), args(tmp_path), show_progress=False)


def test_float32_model_has_no_scaler(tmp_path):
    tok = make_tokenizer()
    trainer = GRPOTrainer(lora_model(tok), tok, [count_a], dataset(), args(tmp_path), show_progress=False)
    assert trainer.update.scaler is None


def test_memory_estimate_counts_the_decode_copy_of_the_merge_scope():
    from rlvr.grpo.memory import estimate_memory
    from rlvr.rollout import MemoryPlan

    tok = make_tokenizer()
    # Wide enough that the copies show at the estimate's 1 MiB resolution.
    model = attach_lora(make_model("llama", vocab_size=len(tok), hidden_size=1024, intermediate_size=2048), 4, 8)
    cfg = GRPOConfig(per_device_train_batch_size=8, num_generations=4)
    copies = {merge: estimate_memory(model, cfg, 16, MemoryPlan(merge))["decode_copy"]
              for merge in (False, True, "attention")}
    layer = model.get_base_model().model.layers[0]
    attention = sum(getattr(layer.self_attn, n).base_layer.weight.numel() for n in ("q_proj", "k_proj", "v_proj",
                                                                                    "o_proj"))
    expected = 2 * attention * 4 / 2**30  # two layers, fp32
    assert copies[False] == 0 and copies[True] > copies["attention"] > 0
    assert copies["attention"] == pytest.approx(expected, abs=1e-3)
    with pytest.raises(RlvrError, match="rollout_merge_lora"):
        GRPOConfig(rollout_merge_lora="atention").validate()


def test_sft_with_offloaded_checkpointing_matches_plain_sft(tmp_path):
    from rlvr.sft.trainer import SFTTrainer

    data = [{"prompt": [{"role": "user", "content": f"{i}+1?"}], "completion": f"{i + 1}"} for i in range(8)]
    losses = {}
    for mode in (False, "offload"):
        tok = make_tokenizer()
        cfg = SFTConfig(output_dir=str(tmp_path / str(mode)), per_device_train_batch_size=4, max_steps=3,
                        gradient_checkpointing=mode, learning_rate=1e-3)
        trainer = SFTTrainer(lora_model(tok), tok, data, cfg, show_progress=False)
        trainer.train()
        losses[mode] = [json.loads(line)["loss"] for line in open(tmp_path / str(mode) / "metrics.jsonl")]
    assert len(losses[False]) == 3
    assert losses["offload"] == pytest.approx(losses[False], rel=1e-5)
