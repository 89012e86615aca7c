"""Training mixtures of experts: the router's load-balancing loss in the GRPO update (as TRL adds it),
and LoRA on the experts (peft's target_parameters) through a GRPO step and the merged export."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_tokenizer
from families import family_model

from rlvr.config import GRPOConfig
from rlvr.errors import RlvrError
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.models.forward import position_ids_from_mask

MOE = ["qwen3_moe", "mixtral", "gpt_oss"]
ROUTER = {"qwen3_moe": "mlp.gate.weight", "mixtral": "mlp.gate.weight", "gpt_oss": "mlp.router.weight"}


def char_score(prompts, completions, **kw):
    """Varied within every group, so advantages (and gradients) are never all zero."""
    return [float(sum(map(ord, c[0]["content"])) % 7) for c in completions]


DATA = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(8)]


def grpo_args(tmp_path, **kw) -> GRPOConfig:
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                max_completion_length=6, max_steps=1, learning_rate=1e-3, max_grad_norm=1e9, save_steps=100,
                warmup_ratio=0.0, logging_steps=1, optim="adamw_torch")
    base.update(kw)
    return GRPOConfig(**base)


def stepped(trainer: GRPOTrainer, micro_batches: list[torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """One optimizer step's metrics, and the gradients it stepped with (by parameter name)."""
    grads = {}
    trainer.update.optimizer.step = lambda: grads.update(
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    return trainer.train_step(micro_batches), grads


def model_aux_loss(model, batch, rows: torch.Tensor) -> torch.Tensor:
    """transformers' own aux loss of the full model on these rows (prompt + completion, padding masked)."""
    mb = batch.rows(rows)
    ids = torch.cat([mb.prompt_ids, mb.completion_ids], 1)
    mask = torch.cat([mb.prompt_mask, mb.completion_mask], 1)
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                 output_router_logits=True).aux_loss


@pytest.mark.parametrize("kind", MOE)
def test_router_aux_loss_joins_the_objective_as_in_trl(kind, tmp_path):
    """loss = objective + coef × the model's aux loss (one per micro-batch, averaged over the step's
    micro-batches as TRL's coef · aux / GA adds up), its gradient reaches the router, and aux_loss is logged."""
    tok, coef = make_tokenizer(), 0.5

    def trainer(c, name):
        model = family_model(kind, len(tok))
        model.generation_config.eos_token_id = tok.eos_token_id
        return GRPOTrainer(model, tok, [char_score], DATA, grpo_args(tmp_path / name, router_aux_loss_coef=c,
                                                                     gradient_accumulation_steps=2),
                           show_progress=False)

    with_aux, without = trainer(coef, "aux"), trainer(0.0, "plain")
    assert with_aux.aux_coef == coef and without.aux_coef == 0.0
    with_aux.batch, _, _ = with_aux.make_round(0)
    without.batch = with_aux.batch  # the same completions for both
    halves = [torch.arange(0, 4), torch.arange(4, 8)]
    # What the model's own code says, before the step changes the weights.
    router = [p for n, p in with_aux.model.named_parameters() if n.endswith(ROUTER[kind])]
    expected = [model_aux_loss(with_aux.model, with_aux.batch, h) for h in halves]
    expected_grads = torch.autograd.grad(sum(expected) / 2, router)
    metrics, grads = stepped(with_aux, halves)
    plain_metrics, plain_grads = stepped(without, halves)

    aux = sum(e.item() for e in expected) / 2
    assert aux > 0 and metrics["aux_loss"] == pytest.approx(aux, rel=1e-5)
    assert "aux_loss" not in plain_metrics
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"] + coef * aux, rel=1e-5, abs=1e-7)
    names = [n for n, _ in with_aux.model.named_parameters() if n.endswith(ROUTER[kind])]
    for name, grad in zip(names, expected_grads):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grads[name] - plain_grads[name], coef * grad, atol=1e-6, rtol=1e-4)


def test_router_aux_loss_defaults_to_the_models_coefficient_and_is_refused_without_a_router(tmp_path):
    tok = make_tokenizer()
    moe = family_model("mixtral", len(tok), router_aux_loss_coef=0.02)
    assert GRPOTrainer(moe, tok, [char_score], DATA, grpo_args(tmp_path / "a"), show_progress=False).aux_coef == 0.02
    dense = make_model("llama", vocab_size=len(tok))
    assert GRPOTrainer(dense, tok, [char_score], DATA, grpo_args(tmp_path / "b"), show_progress=False).aux_coef == 0
    with pytest.raises(RlvrError, match="router_aux_loss_coef is 0.1 but LlamaForCausalLM is not a mixture") as info:
        GRPOTrainer(dense, tok, [char_score], DATA, grpo_args(tmp_path / "c", router_aux_loss_coef=0.1),
                    show_progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(RlvrError, match="must be >= 0"):
        grpo_args(tmp_path / "d", router_aux_loss_coef=-1.0).validate()


def test_a_micro_batch_run_in_pieces_weights_their_aux_losses_by_tokens(tmp_path):
    tok = make_tokenizer()
    model = family_model("qwen3_moe", len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    trainer = GRPOTrainer(model, tok, [char_score], DATA,
                          grpo_args(tmp_path, router_aux_loss_coef=0.5, micro_batch_token_budget=40),
                          show_progress=False)
    trainer.batch, _, _ = trainer.make_round(0)
    everything = torch.arange(8)
    pieces = trainer.token_budget_pieces(trainer.batch, everything)
    assert len(pieces) > 1
    tokens = [trainer._input_tokens(p) for p in pieces]
    expected = sum(t * model_aux_loss(model, trainer.batch, p).item() for t, p in zip(tokens, pieces)) / sum(tokens)
    metrics, _ = stepped(trainer, [everything])
    assert metrics["aux_loss"] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- LoRA on the experts


@pytest.mark.parametrize("kind", MOE)
def test_lora_adapts_the_experts_by_default_and_the_router_when_named(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlvr.export.save import save_merged
    from rlvr.models.loading import attach_lora

    tok = make_tokenizer()
    default = attach_lora(family_model(kind, len(tok)), 4, 8)
    assert sorted(default.peft_config["default"].target_parameters) == ["experts.down_proj", "experts.gate_up_proj"]
    router = ROUTER[kind]
    model = attach_lora(family_model(kind, len(tok)), 4, 8,
                        target_parameters=["experts.gate_up_proj", "experts.down_proj", router])
    model.generation_config.eos_token_id = tok.eos_token_id
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    experts = [n for n in adapters if ".experts." in n and "lora_B" in n]
    routers = [n for n in adapters if f".{router.rsplit('.', 1)[0]}." in n and "lora_B" in n]
    assert len(experts) == 4 and len(routers) == 2  # gate_up and down of 2 layers; 2 routers
    cfg = grpo_args(tmp_path, router_aux_loss_coef=0.5, learning_rate=1e-2, rollout_backend="native")
    GRPOTrainer(model, tok, [char_score], DATA, cfg, show_progress=False).train()
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(adapters[n], p)}
    assert set(experts) <= changed and set(routers) <= changed  # lora_B starts at zero: the step moved it

    ids = torch.tensor([tok.encode("the quick brown fox jumps")])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    loaded = AutoModelForCausalLM.from_pretrained(save_merged(model, tok, tmp_path / "merged", dtype="float32"),
                                                  attn_implementation="eager").eval()
    assert not any("lora" in k or "base_layer" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_lora_target_parameters_errors_are_one_line():
    from rlvr.models.lora_targets import lora_target_parameters

    model = family_model("qwen3_moe", 104)
    with pytest.raises(RlvrError, match="its expert and router weights are experts.gate_up_proj, experts.down_proj, "
                                        "mlp.gate.weight") as info:
        lora_target_parameters(model, ["experts.up_proj"])
    assert "\n" not in str(info.value)
    with pytest.raises(RlvrError, match="cannot use dropout.*lora_dropout: 0") as info:
        lora_target_parameters(model, None, dropout=0.05)
    assert lora_target_parameters(model, []) == [] and lora_target_parameters(make_model("llama"), None) == []


def test_a_saved_expert_adapter_fits_its_base_and_is_refused_by_a_run_without_expert_lora(tmp_path):
    from rlvr.models.adapter_checks import check_adapter_fits
    from rlvr.models.loading import attach_lora, load_adapter

    attach_lora(family_model("qwen3_moe", 104), 4, 8).save_pretrained(tmp_path / "adapter")
    check_adapter_fits(family_model("qwen3_moe", 104), tmp_path / "adapter")  # nested wrappers name their module
    loaded = load_adapter(family_model("qwen3_moe", 104), str(tmp_path / "adapter"))
    assert any(".experts." in n for n, p in loaded.named_parameters() if p.requires_grad)
    attention_only = attach_lora(family_model("qwen3_moe", 104), 4, 8, target_parameters=[])
    with pytest.raises(RlvrError, match="'model.layers.0.mlp.experts'.*lora_target_parameters") as info:
        check_adapter_fits(attention_only, tmp_path / "adapter")
    assert "\n" not in str(info.value)
