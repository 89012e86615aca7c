"""Rollout throughput: the native engine against transformers.generate on a real-shaped random model.

Builds the model from a config (random bf16 weights on CUDA; fp32 on CPU), attaches LoRA r16 with a
non-zero B, samples `batch` rows (prompts × G) of `--new-tokens` tokens each with EOS disabled, and
prints one JSON line (also written to --out). Every engine is warmed up before it is timed; the timed
native round includes its per-round CUDA-graph capture, as in training.

    python bench/rollout.py --shape qwen2.5-1.5b --out bench/results/rollout_qwen2.5-1.5b.json
    python bench/rollout.py --shape llama-3.1-8b --rollout-dtype fp8   # also times the bf16 engine
    python bench/rollout.py --shape llama-3.1-8b --quant nf4   # NF4 bases (QLoRA); bf16 engine peak beside
    python bench/rollout.py --shape tiny            # CPU smoke check

--rollout-dtype fp8 times the bf16 engine in the same run (`bf16_tok_per_s`). --quant nf4 builds the
model's layer matrices as bitsandbytes NF4 (as `load_in_4bit` loads them, with peft's k-bit
preparation), times the native engine and generate on that model, and reports the peak memory of
the bf16 engine on the bf16 model of the same shape (`bf16_peak_gib`, from a first build).
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from report import emit

from rlvr.models import fp8
from rlvr.models.loading import attach_lora, quantize_linears_4bit
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.native import NativeEngine
from rlvr.rollout.native.families import read_weights

H200_BYTES_PER_S = 4.8e12
MERGE = {"all": None, "attention": "attention", "none": False}  # None: the engine's default (all on CUDA)

SHAPES = {
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, rope_theta=1e6),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True, rope_theta=1e5),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False, rope_theta=5e5),
    # Mixture of experts: 128 experts, 8 active per token; LoRA on attention and every expert (rlvr's MoE
    # default; --lora-target-parameters none: attention only, as the 2026-12-03 run).
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                          num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, vocab_size=151936,
                          tie_word_embeddings=False, rope_theta=1e6),
    # Five sliding-window (1024) layers per global one, two rope tables, scaled embeddings, (1 + w) norms.
    "gemma-3-12b": dict(model_type="gemma3_text", hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256,
                        sliding_window=1024, vocab_size=262208, tie_word_embeddings=True,
                        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(48)]),
}


def build_model(shape: str, device: torch.device, dtype: torch.dtype, quant: str = "none",
                target_parameters: list[str] | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    kind = spec.pop("model_type")
    config = AutoConfig.for_model(kind, max_position_embeddings=4096, **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    # EOS disabled: an id past the vocabulary can never be sampled, so every row runs to the end.
    model.generation_config.eos_token_id = config.vocab_size
    model.generation_config.pad_token_id = 0
    if quant == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(quantize_linears_4bit(model, dtype), use_gradient_checkpointing=False)
    model = attach_lora(model, rank=16, alpha=32, target_parameters=target_parameters)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)  # non-zero B: the adapter path is really computed
    return model, config


def bw_bound_tok_per_s(engine: NativeEngine, batch: int, prompt: int, new_tokens: int, rows: int = 1) -> float:
    """Tokens/s if every decode step only had to read its decode weights and the filled KV once at 4.8 TB/s.
    A mixture of experts' layer counts the experts `rows` tokens are routed to (`ModelW.weight_bytes`): 1 =
    only the k experts of one token (issue 15's bound), `batch` = those a whole step touches."""
    w = engine.round_weights(read_weights(engine.model))
    seconds = sum((w.weight_bytes(rows) + batch * (prompt + t) * w.kv_bytes_per_token()) / H200_BYTES_PER_S
                  for t in range(new_tokens))
    return batch * new_tokens / seconds


def timed(engine, prompts, g: int, new_tokens: int, seed: int = 0) -> tuple[float, int]:
    """(seconds, generated tokens) of one round, synchronized."""
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = engine.generate(prompts, g, params, seed=seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, int(out.completion_mask.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--batch", type=int, default=64, help="rows = prompts × G")
    ap.add_argument("--group", type=int, default=8, help="G completions per prompt")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--hf-new-tokens", type=int, default=128, help="fewer tokens for the slow hf reference")
    ap.add_argument("--no-graphs", action="store_true", help="native engine without CUDA graphs")
    ap.add_argument("--merge", choices=["all", "attention", "none"], default="all",
                    help="LoRA folded into copies of all adapted matrices, of q/k/v/o only, or none (extra matmuls)")
    ap.add_argument("--attention", choices=["triton", "sdpa"], default=None,
                    help="decode attention kernel (default: the engine's, sdpa)")
    ap.add_argument("--max-autotune", action="store_true",
                    help="let inductor time Triton GEMM templates against cuBLAS in the compiled step pieces")
    ap.add_argument("--rollout-dtype", choices=["auto", "bfloat16", "float16", "fp8"], default="auto",
                    help="the engine's rollout_dtype; fp8 also times the bf16 engine in the same run")
    ap.add_argument("--fp8-fast-accum", action="store_true", help="FP8 matmuls with Hopper's fast accumulation")
    ap.add_argument("--quant", choices=["none", "nf4"], default="none", help="4-bit (bitsandbytes NF4) bases")
    ap.add_argument("--dequantize-4bit", choices=["copy", "step"], default=None,
                    help="NF4: per-round dequantised copy or dequantisation inside the step (default: by memory)")
    ap.add_argument("--lora-target-parameters", choices=["default", "none"], default="default",
                    help="mixtures of experts: LoRA on every expert too (rlvr's default), or on attention only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    fp8.FP8_FAST_ACCUM = args.fp8_fast_accum
    if args.max_autotune:
        from torch._inductor import config as inductor_config

        inductor_config.max_autotune_gemm = True

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=None, decode=lambda ids: "")
    g = args.group
    n_prompts = max(1, args.batch // g)
    spec = SHAPES[args.shape]
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, spec["vocab_size"], (n_prompts, args.prompt), generator=gen).tolist()
    batch = n_prompts * g
    target_parameters = None if args.lora_target_parameters == "default" else []

    def native_round(model, rollout_dtype: str = "auto") -> tuple[float, int, dict, NativeEngine]:
        engine = NativeEngine(model, tokenizer, cuda_graphs=not args.no_graphs,
                              rollout_merge_lora=MERGE[args.merge], attention=args.attention,
                              rollout_dtype=rollout_dtype, dequantize_4bit=args.dequantize_4bit)
        # Warm-up round of the same shape: kernels, cuBLAS, allocator, and the compiled step pieces
        # (training compiles once, in its first round; every later round has the same shapes).
        timed(engine, prompts, g, args.new_tokens)
        seconds, tokens = timed(engine, prompts, g, args.new_tokens)
        return seconds, tokens, dict(engine.last_stats), engine

    extra = {}
    if args.quant == "nf4" or args.rollout_dtype == "fp8":  # the bf16 engine of the same run, for reference
        model, _ = build_model(args.shape, device, dtype, target_parameters=target_parameters)
        bf16_s, bf16_tokens, bf16_stats, _ = native_round(model)
        extra = {"bf16_tok_per_s": round(bf16_tokens / bf16_s, 1),
                 "bf16_peak_gib": None if bf16_stats.get("peak_gib") is None else round(bf16_stats["peak_gib"], 2)}
        if args.quant == "nf4":
            del model
            torch._dynamo.reset()
            if cuda:
                torch.cuda.empty_cache()
    if args.quant == "nf4" or args.rollout_dtype != "fp8":
        model, _ = build_model(args.shape, device, dtype, args.quant, target_parameters)
    native_s, native_tokens, stats, native = native_round(model, args.rollout_dtype)

    hf = HFEngine(model, tokenizer, batch_size=batch)
    timed(hf, prompts, g, min(8, args.hf_new_tokens))
    hf_s, hf_tokens = timed(hf, prompts, g, args.hf_new_tokens)

    native_tps, hf_tps = native_tokens / native_s, hf_tokens / hf_s
    bound = bw_bound_tok_per_s(native, batch, args.prompt, args.new_tokens)
    touched = bw_bound_tok_per_s(native, batch, args.prompt, args.new_tokens, rows=batch)
    result = {
        "shape": args.shape, "rollout_dtype": stats.get("rollout_dtype"), "quant": args.quant,
        "batch": batch, "group": g, "prompt": args.prompt, "new_tokens": args.new_tokens,
        "native_tokens": native_tokens, "native_seconds": round(native_s, 3),
        "native_tok_per_s": round(native_tps, 1),
        "hf_new_tokens": args.hf_new_tokens, "hf_tokens": hf_tokens, "hf_seconds": round(hf_s, 3),
        "hf_tok_per_s": round(hf_tps, 1), "speedup_vs_hf": round(native_tps / hf_tps, 2), **extra,
        "speedup_vs_bf16": round(native_tps / extra["bf16_tok_per_s"], 2) if extra else None,
        "bw_bound_tok_per_s": round(bound, 1), "share_of_bw_bound": round(native_tps / bound, 3),
        "touched_bw_bound_tok_per_s": round(touched, 1), "share_of_touched_bw_bound": round(native_tps / touched, 3),
        "lora_target_parameters": args.lora_target_parameters,
        "rollout_peak_gib": None if stats.get("peak_gib") is None else round(stats["peak_gib"], 2),
        "kv_gib": round(stats.get("kv_gib", 0.0), 3), "cuda_graphs": bool(stats.get("graphs")),
        "graphs_captured": stats.get("graphs_captured", 0), "sub_batches": stats.get("sub_batches"),
        "decode_copy_s": round(stats.get("decode_copy_s", 0.0), 4), "quant_mode": stats.get("quant"),
        "backend": stats.get("backend"), "lora_merge": native.merge_scope, "max_autotune": args.max_autotune,
        "attention": args.attention or "default", "fp8_fast_accum": args.fp8_fast_accum,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    emit(result, str(args.out) if args.out else None)


if __name__ == "__main__":
    main()
