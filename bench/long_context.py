"""One GRPO update at long completion lengths: Llama-3.1-8B shape, LoRA r16 (16-bit or QLoRA NF4).

The completions are fixed random tokens (generation would dominate the time and is measured by
bench/rollout.py); the update runs through rlvr's own GRPOTrainer.train_step with activation
checkpointing (offloaded by default), a token budget of one completion per piece, chunked
log-probs and bf16 weights. The rollout KV cache those completions would need is computed and
reported separately (`rollout_kv_cache_gib`), not allocated. Prints one JSON line per length.

    python bench/long_context.py --out bench/results/long_context.jsonl               # 8 × 20,000
    python bench/long_context.py --lengths 65536,131072 --gens 2 --quant nf4         # how far it goes
    python bench/long_context.py --shape tiny --lengths 256 --device cpu             # CPU smoke check

With a token budget of one completion, the pieces of a step run one after another and each frees
what it used before the next starts, so the peak of G completions is that of one plus G rows of
per-token bookkeeping (ids, masks, log-probs: ~20 bytes a token); `--gens 2` shows the second piece
adds nothing.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import emit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rollout import SHAPES  # noqa: E402  (bench/ is not a package)


def build_model(shape: str, device: torch.device, quant: str, max_pos: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    kind = spec.pop("model_type")
    config = AutoConfig.for_model(kind, max_position_embeddings=max_pos, **spec)
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if quant == "nf4":
        quantize_nf4(model)
    model.generation_config.eos_token_id = config.vocab_size - 1
    model.generation_config.pad_token_id = config.vocab_size - 2
    return model, config


def quantize_nf4(model) -> None:
    """The decoder's Linear layers as bitsandbytes NF4 with double quantisation, as load_in_4bit loads
    them (random weights cannot go through from_pretrained without an 8B checkpoint on disk)."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in layer.modules():
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True).to(child.weight.device)
                setattr(parent, name, q)
        torch.cuda.empty_cache()


def make_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=f"t{vocab - 1}", pad_token=f"t{vocab - 2}",
                                   unk_token="t0")


def kv_cache_gib(config, rows: int, tokens: int) -> float:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2  # K and V, bf16
    return per_token * rows * tokens / 2**30


def one_update(trainer, config, gens: int, prompt: int, completion: int, device: torch.device) -> dict:
    from rlvr.grpo.round import RoundBatch

    g = torch.Generator(device="cpu").manual_seed(completion)
    vocab = config.vocab_size - 2
    batch = RoundBatch(
        prompt_ids=torch.randint(0, vocab, (gens, prompt), generator=g).to(device),
        prompt_mask=torch.ones(gens, prompt, dtype=torch.long, device=device),
        completion_ids=torch.randint(0, vocab, (gens, completion), generator=g).to(device),
        completion_mask=torch.ones(gens, completion, dtype=torch.long, device=device),
        advantages=torch.randn(gens, generator=g).to(device),
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.batch = batch
    metrics = trainer.train_step([torch.arange(gens, device=device)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds, 2), "tokens_per_s": round(gens * (prompt + completion) / seconds),
           "loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--lengths", default="20000", help="completion lengths, comma-separated")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gens", type=int, default=8, help="completions in the step (one prompt's group)")
    ap.add_argument("--quant", default="none", choices=["none", "nf4"])
    ap.add_argument("--checkpointing", default="offload", choices=["offload", "true"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="append the JSON lines to this file")
    a = ap.parse_args()

    from rlvr.config import GRPOConfig
    from rlvr.errors import RlvrError
    from rlvr.grpo.trainer import GRPOTrainer
    from rlvr.models.checkpointing import active_offloader, discard_offloaded_activations
    from rlvr.models.loading import attach_lora
    from rlvr.train.core import prepare_model

    device = torch.device(a.device)
    lengths = [int(x) for x in a.lengths.split(",")]
    model, config = build_model(a.shape, device, a.quant, max(lengths) + a.prompt + 1)
    weights_gib = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None
    model = attach_lora(model, 16, 16)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)  # non-zero B: gradients reach A, the adapter really computes
    tok = make_tokenizer(config.vocab_size)
    group = max(2, a.gens)  # a valid config needs a group; the step itself takes exactly --gens rows
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=group, num_generations=group,
                      max_completion_length=max(lengths), max_prompt_length=None, beta=0.0, loss_type="dapo",
                      gradient_checkpointing=a.checkpointing, micro_batch_token_budget=a.prompt + max(lengths),
                      learning_rate=1e-6, rollout_backend="hf", save_steps=10**9, log_completions=False,
                      optim="adamw_8bit" if a.quant == "nf4" else "adamw_torch")
    ds = [{"prompt": "t5 t6 t7"} for _ in range(group)]
    trainer = GRPOTrainer(model, tok, [lambda completions, **kw: [0.0] * len(completions)], ds, args,
                          show_progress=False)
    prepare_model(model, args)  # checkpointing and train mode, as train() applies them
    # Warm-up (not reported): CUDA/cuBLAS initialisation and the first pinned buffers.
    one_update(trainer, config, 1, a.prompt, min(1024, min(lengths)), device)
    for length in lengths:
        row = {"bench": "long_context", "date": datetime.date.today().isoformat(), "shape": a.shape,
               "quant": a.quant, "lora_rank": 16, "checkpointing": a.checkpointing, "completions": a.gens,
               "prompt_length": a.prompt, "completion_length": length, "weights_gib": weights_gib,
               "rollout_kv_cache_gib": round(kv_cache_gib(config, a.gens, a.prompt + length), 2),
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__}
        try:
            row.update(one_update(trainer, config, a.gens, a.prompt, length, device))
            if active_offloader(model) is not None:
                row["pinned_host_gib"] = round(active_offloader(model).peak_host_bytes / 2**30, 2)
        except (torch.OutOfMemoryError, RlvrError) as e:  # the trainer turns a second OOM into an RlvrError
            row["oom"] = str(e)[:200]
            trainer.update.optimizer.zero_grad(set_to_none=True)
            discard_offloaded_activations(model)
            torch.cuda.empty_cache()
        emit(row, a.out)


if __name__ == "__main__":
    main()
