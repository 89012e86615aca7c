"""GPU-only memory features: QLoRA (bitsandbytes NF4), 8-bit AdamW, offloaded checkpointing on CUDA
streams, float16 GRPO end to end. Run on the device machine: `python -m pytest -m gpu tests/test_gpu_memory.py`."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_tokenizer
from test_grpo_trainer import args, char_score, count_a, dataset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _tiny_checkpoint(tmp_path, tok):
    # bitsandbytes quantises in blocks of 64: hidden sizes divisible by 64.
    model = make_model("llama", vocab_size=len(tok), hidden_size=256, intermediate_size=512)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    path = tmp_path / "base"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_qlora_loads_nf4_and_trains(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from rlvr.grpo.trainer import GRPOTrainer
    from rlvr.models.loading import load_model

    tok = make_tokenizer()
    path = _tiny_checkpoint(tmp_path, tok)
    model, _ = load_model(str(path), dtype="bfloat16", load_in_4bit=True, lora_rank=8, lora_alpha=16, device="cuda")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # every attention and MLP projection of both layers
    assert quantized[0].weight.quant_type == "nf4" and quantized[0].weight.quant_state.nested  # double quant
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = args(tmp_path, max_steps=2, optim="adamw_8bit", gradient_checkpointing="offload", bf16=True)
    # char_score varies within every group, so advantages (and the update) are never all zero.
    trainer = GRPOTrainer(model, tok, [char_score], dataset(), cfg, show_progress=False)
    assert isinstance(trainer.update.optimizer, bnb.optim.AdamW8bit)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result["loss"])) and result["grad_norm"] > 0
    after = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("optim,cls_name", [("adamw_8bit", "AdamW8bit"), ("paged_adamw_8bit", "PagedAdamW8bit")])
def test_8bit_adamw_step_matches_adamw(optim, cls_name):
    pytest.importorskip("bitsandbytes")
    from rlvr.train.optim import build_optimizer

    torch.manual_seed(0)
    # Large enough for the 8-bit state (bitsandbytes keeps tensors under 4096 elements in 32 bits).
    w8 = torch.nn.Parameter(torch.randn(256, 256, device="cuda"))
    w32 = torch.nn.Parameter(w8.detach().clone())
    w0 = w8.detach().clone()
    grads = [torch.randn(256, 256, device="cuda") for _ in range(3)]
    opt8 = build_optimizer([w8], optim, 1e-3, (0.9, 0.99), 1e-8, 0.0)
    opt32 = build_optimizer([w32], "adamw_torch", 1e-3, (0.9, 0.99), 1e-8, 0.0)
    assert type(opt8).__name__ == cls_name
    for g in grads:
        for w, opt in ((w8, opt8), (w32, opt32)):
            w.grad = g.clone()
            opt.step()
    state = opt8.state[w8]
    one_byte = {k: t.dtype for k, t in state.items() if torch.is_tensor(t) and t.element_size() == 1}
    assert len(one_byte) >= 2, {k: (t.dtype, tuple(t.shape)) for k, t in state.items() if torch.is_tensor(t)}
    # 8-bit moments are blockwise-quantised, so single elements can differ a lot (a small second
    # moment amplifies its error); the update as a whole must be AdamW's.
    d8, d32 = (w8 - w0).flatten(), (w32 - w0).flatten()
    cosine = torch.nn.functional.cosine_similarity(d8, d32, dim=0).item()
    rel = ((d8 - d32).abs().mean() / d32.abs().mean()).item()
    assert cosine > 0.95 and rel < 0.15, (cosine, rel)
    assert not torch.equal(w8, w32)  # it is really another optimizer


def test_offloaded_checkpointing_on_cuda_gives_the_gradients_of_none():
    from rlvr.models.checkpointing import enable_checkpointing
    from rlvr.models.forward import completion_logprobs
    from rlvr.models.loading import attach_lora

    results = {}
    for mode in (False, "offload"):
        tok = make_tokenizer()
        model = make_model("llama", vocab_size=len(tok), num_hidden_layers=4).to("cuda", torch.bfloat16)
        model = attach_lora(model, 8, 16)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator("cuda").manual_seed(1))
        model.train()
        offloader = enable_checkpointing(model, mode)
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(5, len(tok), (4, 32), generator=g).cuda()
        completion = torch.randint(5, len(tok), (4, 64), generator=g).cuda()
        pm, cm = torch.ones_like(prompt), torch.ones_like(completion)
        cm[1, 40:] = 0
        for _ in range(2):  # twice: the second pass reuses the pooled pinned buffers
            model.zero_grad(set_to_none=True)
            logps, _ = completion_logprobs(model, prompt, pm, completion, cm, temperature=0.9)
            (logps * torch.linspace(-1, 1, logps.numel(), device="cuda").view_as(logps)).sum().backward()
        if offloader is not None:
            assert offloader.slots == [] and offloader.free and offloader.peak_host_bytes > 0
        results[mode] = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    for name, ref in results[False].items():
        torch.testing.assert_close(results["offload"][name], ref, atol=1e-5, rtol=1e-3, msg=name)


def test_float16_grpo_end_to_end_on_cuda(tmp_path):
    from rlvr.grpo.trainer import GRPOTrainer
    from rlvr.models.loading import load_model

    tok = make_tokenizer()
    path = _tiny_checkpoint(tmp_path, tok)
    model, _ = load_model(str(path), dtype="float16", lora_rank=8, lora_alpha=16, device="cuda")
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    cfg = args(tmp_path, max_steps=3, optim="adamw_torch", rollout_backend="native", gradient_checkpointing=True)
    trainer = GRPOTrainer(model, tok, [count_a], dataset(), cfg, show_progress=False)
    assert trainer.update.scaler is not None
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result["loss"])) and result["amp/loss_scale"] > 0
