"""NativeEngine: GRPO rollouts with a static KV cache and a CUDA-graph decode step, on the training weights.

A round (prompts × G rows) is split into sub-batches that fit the KV memory budget. Per sub-batch:
each distinct prompt is prefilled once and its K/V copied to its completion rows; then one
fixed-shape step per token runs (eagerly on CPU, as a replayed CUDA graph on GPU) and samples on
the device. The host looks at the batch only every `sync_every` steps: to stop when all rows are
done, to end rows whose text contains a stop string, to compact the batch when at least half of
it has finished (finished rows then stop costing), and to tell a progress callback how far it is (in
the same transfer). Cache and graphs are freed at the end of the round.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from rlvr.config import ROLLOUT_DTYPES, ROLLOUT_MERGE_LORA
from rlvr.models.forward import base_causal_lm
from rlvr.models.fp8 import fp8_supported
from rlvr.rollout.engine import MemoryPlan, ProgressCallback, ProgressTally, Rollout, SamplingParams, halve_rows
from rlvr.rollout.hf import HFEngine, completion_mask_from_eos, eos_token_ids, left_pad, truncate_at_stop_strings
from rlvr.rollout.native.attention import DecodeAttention, sdpa_attention
from rlvr.rollout.native.families import read_weights, without_long_windows
from rlvr.rollout.native.model import EAGER, Compiled, DecodeFns, decode_one_token, prefill, rope_tables
from rlvr.rollout.native.weights import ModelW, Unsupported, decode_weights
from rlvr.rollout.sampling import exponential_noise_, sample, seen_tokens, token_logprobs

log = logging.getLogger("rlvr")

CPU_KV_BUDGET = 2 << 30  # bytes; on CUDA the default is 90% of the memory free at generate() time
PREFILL_TOKENS = 16384  # prompt tokens per prefill forward (bounds its activations)
SLOT_ALIGN = 64  # cache length multiple: keeps the attention mask rows aligned for fused kernels
COPY_SHARE = 0.5  # a 4-bit model's dense decode copy is made when it takes at most this share of free memory
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DecodeState:
    """Per-row buffers the decode step reads and updates in place (the captured graph's I/O)."""

    tok: torch.Tensor  # [B] long: last sampled token, the next step's input
    pos: torch.Tensor  # [B] long: its position
    slot: torch.Tensor  # [1] long: cache column the next step writes
    step: torch.Tensor  # [1] long: output column the next sampled token goes to
    kv_bias: torch.Tensor  # [B, S] model dtype: 0 = attend, -inf = pad / not yet written
    done: torch.Tensor  # [B] bool: hit EOS (or a stop string, set by the host)
    length: torch.Tensor  # [B] long: tokens emitted while not done
    out_tok: torch.Tensor  # [B, C] long, pad after done
    out_logp: torch.Tensor  # [B, C] fp32, 0 after done
    seen: torch.Tensor | None  # [B, V] bool: for the repetition penalty
    noise: torch.Tensor | None  # [B, V] fp32 Exp(1) draws, refilled before every step

    def select(self, keep: torch.Tensor) -> DecodeState:
        """The rows `keep` (a compacted batch); new tensors, so graphs must be re-captured."""
        pick = lambda t: None if t is None else t.index_select(0, keep)
        return DecodeState(tok=pick(self.tok), pos=pick(self.pos), slot=self.slot, step=self.step,
                           kv_bias=pick(self.kv_bias), done=pick(self.done), length=pick(self.length),
                           out_tok=pick(self.out_tok), out_logp=pick(self.out_logp), seen=pick(self.seen),
                           noise=pick(self.noise))


class StepRunner:
    """Runs a decode step eagerly, or as one CUDA graph per attended cache length.

    The first step of each new length runs eagerly on a side stream (it is a real step and doubles
    as the warm-up), then the step is captured and later steps replay it. Capture failing switches
    this runner, and the rest of the round, to eager.
    """

    def __init__(self, step_fn, use_graphs: bool, pool=None):
        self.step_fn, self.use_graphs, self.pool = step_fn, use_graphs, pool
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.captured = 0

    def __call__(self, kv_len: int) -> None:
        if not self.use_graphs:
            self.step_fn(kv_len)
            return
        graph = self.graphs.get(kv_len)
        if graph is not None:
            graph.replay()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step_fn(kv_len)
        torch.cuda.current_stream().wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.step_fn(kv_len)
        except Exception as e:  # capture is an optimisation: never fail the round over it
            log.warning("native rollout: CUDA graph capture failed (%s); decoding eagerly", e)
            self.use_graphs = False
            return
        self.graphs[kv_len] = graph
        self.captured += 1


class NativeEngine:
    """Rollouts from the training model's own weights (see module docstring).

    kv_budget_bytes: memory for KV cache and per-row sampling buffers (default: 90% of free CUDA
    memory, or 2 GiB on CPU); larger rounds run in sub-batches. sync_every: decode steps between
    host checks. cuda_graphs: capture the decode step on CUDA. kv_bucket: the step attends over the
    cache in multiples of this many slots, not the whole cache (one graph per multiple). compact:
    shrink the batch at a sync point when at least this fraction of it has finished (0 = never).
    batch_size: optional cap on rows per sub-batch (and the hf fallback's batch size).
    rollout_merge_lora: fold LoRA into a per-round copy of the adapted matrices (q/k/v and gate/up stacked)
    instead of running the adapters as extra matmuls: ~3× fewer kernels per token, at the memory of
    those matrices during the round; 'attention' merges only q/k/v/o (an eighth of the memory) and
    runs the MLP adapters fused; False runs every adapter as extra matmuls, those of q/k/v and of
    gate/up fused into one pair each. Default: on CUDA True, on CPU False. compile: fuse each layer's
    elementwise work with torch.compile (default: on CUDA), falling back to eager if it fails.
    attention: 'sdpa' (torch's fused kernel; the default) or 'triton' (the split-cache decode
    kernel of attention.py on CUDA, SDPA where it does not apply or fails).
    rollout_dtype: the decode step's matrices (`ROLLOUT_DTYPES`): 'auto' the model's dtype (a 4-bit
    or FP8 base's compute dtype), 'bfloat16'/'float16' a per-round cast copy, 'fp8' per-round e4m3
    copies with row scales (bf16 matmul inputs quantised per token; the head stays 16-bit; an FP8
    base no adapter is merged into is used as it is), on GPUs with FP8 only (elsewhere one warning
    and 'auto'). dequantize_4bit: for bitsandbytes 4-bit bases and FP8 bases (`model.load_in_fp8`),
    'copy' dequantises them into a per-round decode copy (LoRA merged in, FP8 if asked), 'step'
    dequantises each matrix inside the step where it is used (an FP8 base under an FP8 rollout: read
    as it is), with no copy and adapters as extra matmuls; None picks 'copy' when it takes at most
    half the free memory.
    """

    def __init__(self, model, tokenizer, kv_budget_bytes: int | None = None, sync_every: int = 16,
                 cuda_graphs: bool = True, kv_bucket: int = 256, compact: float = 0.5,
                 batch_size: int | None = None, rollout_merge_lora: bool | str | None = None,
                 compile: bool | None = None, attention: str | None = None, rollout_dtype: str = "auto",
                 dequantize_4bit: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        if rollout_dtype not in ROLLOUT_DTYPES:
            raise ValueError(f"rollout_dtype must be one of {ROLLOUT_DTYPES}, got {rollout_dtype!r}")
        if dequantize_4bit not in (None, "copy", "step"):
            raise ValueError(f"dequantize_4bit must be 'copy', 'step' or None, got {dequantize_4bit!r}")
        self.rollout_dtype, self.dequantize_4bit = rollout_dtype, dequantize_4bit
        if rollout_dtype == "fp8" and not fp8_supported(self.device):
            log.warning("rollout_dtype fp8: %s has no FP8 matmuls (needs a CUDA GPU of compute capability >= 8.9); "
                        "decoding in the model's dtype", self.device)
            self.rollout_dtype = "auto"
        self._plan_logged = False
        self.compile = compile
        if attention not in (None, "triton", "sdpa"):
            raise ValueError(f"attention must be 'triton', 'sdpa' or None, got {attention!r}")
        self.attention = attention
        self._fns: tuple[DecodeFns, Callable] | None = None
        self.kv_budget_bytes, self.sync_every, self.cuda_graphs = kv_budget_bytes, sync_every, cuda_graphs
        self.kv_bucket, self.compact, self.batch_size = kv_bucket, compact, batch_size
        if rollout_merge_lora not in ROLLOUT_MERGE_LORA:
            raise ValueError(f"rollout_merge_lora must be one of {ROLLOUT_MERGE_LORA}, got {rollout_merge_lora!r}")
        self.rollout_merge_lora = rollout_merge_lora
        self.rows_per_batch: int | None = None  # of the last generate
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.last_stats: dict = {}
        self.fallback: HFEngine | None = None
        self.fallback_reason: str | None = None
        try:
            read_weights(model)
        except Unsupported as e:
            self._fall_back(str(e))

    def _fall_back(self, reason: str) -> None:
        """Switch to transformers.generate for good, with one warning line saying why."""
        self.fallback_reason = reason
        log.warning("rollout: the native engine does not implement %s (%s); sampling with transformers.generate "
                    "instead (slower)", reason, type(base_causal_lm(self.model)).__name__)
        self.fallback = HFEngine(self.model, self.tokenizer, batch_size=self.batch_size or 64)

    @property
    def backend_name(self) -> str:
        return "hf" if self.fallback is not None else "native"

    def describe(self) -> str:
        if self.fallback is not None:
            return f"hf (transformers.generate; native engine fell back: {self.fallback_reason})"
        return "native"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def merge_scope(self) -> str | None:
        """What rounds fold LoRA into decode copies of: 'all' adapted matrices (default on CUDA),
        'attention' (q/k/v/o only), or None (adapters run as fused extra matmuls; default on CPU)."""
        if self.fallback is not None:
            return None
        merge = self.rollout_merge_lora if self.rollout_merge_lora is not None else self.device.type == "cuda"
        return "all" if merge is True else (merge or None)

    def memory_plan(self) -> MemoryPlan:
        scope = self.merge_scope
        return MemoryPlan(rollout_merge_lora=True if scope == "all" else (scope or False),
                          rollout_dtype=None if self.fallback is not None else self.rollout_dtype)

    def reduce_batch(self) -> int | None:
        """Half the rows the last generate ran per sub-batch (its KV budget may have capped them below
        batch_size), as the new cap."""
        if self.fallback is not None:
            return self.fallback.reduce_batch()
        rows = halve_rows(self.rows_per_batch)
        if rows is not None:
            self.batch_size = rows
        return rows

    @property
    def merges_lora(self) -> bool:
        return self.merge_scope is not None

    def decode_fns(self, device: torch.device) -> tuple[DecodeFns, Callable]:
        """Compiled step pieces on CUDA (default) or when asked; made once, so later rounds reuse
        the compiled code (the first round pays the compile, ~tens of seconds)."""
        if self._fns is None:
            on_cuda = device.type == "cuda"
            # SDPA by default: on an H200 at 64 rows × 640 slots the Triton kernel was no faster
            # (bench/results/2026-12-03-rollout-h200.jsonl: 25.4k vs 25.7k tokens/s).
            attention = DecodeAttention() if self.attention == "triton" else sdpa_attention
            if self.compile if self.compile is not None else on_cuda:
                # Sampling and its bookkeeping are a dozen passes over [B, V] floats: fused into a few.
                self._fns = DecodeFns.compiled(attention), Compiled(_emit)
            else:
                self._fns = replace(EAGER, attention=attention), _emit
        return self._fns

    # ------------------------------------------------------------------ round

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], num_generations: int, params: SamplingParams,
                 seed: int | None = None, progress: ProgressCallback | None = None) -> Rollout:
        if self.fallback is None:
            try:
                w = read_weights(self.model)  # re-read every round: adapters may have changed
            except Unsupported as e:
                self._fall_back(str(e))
        if self.fallback is not None:
            t0 = time.perf_counter()
            out = self.fallback.generate(prompt_ids, num_generations, params, seed, progress)
            self.last_stats = {"backend": "hf", "seconds": time.perf_counter() - t0,
                               "tokens": int(out.completion_mask.sum())}
            return out

        if params.do_sample and params.temperature <= 0:
            params = replace(params, do_sample=False)  # T = 0 means greedy, as in vLLM
        dev = w.device
        self.last_stats = {"backend": "native", "sub_batches": 0, "graphs_captured": 0, "compactions": 0,
                           "graphs": False, "kv_gib": 0.0}
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)  # the peak includes the decode copy's making
        t_copy = time.perf_counter()
        # Before the budget is measured: decode copies take memory too.
        w = self.round_weights(w)
        self.last_stats["decode_copy_s"] = time.perf_counter() - t_copy  # launches only on CUDA (no sync)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))  # from the global RNG: torch.manual_seed still reproduces
        gen = torch.Generator(device=dev).manual_seed(seed)
        on_cuda = dev.type == "cuda"
        t0 = time.perf_counter()

        rows = [p for p in prompt_ids for _ in range(num_generations)]
        per_batch = self._rows_per_batch(w, params, max(len(r) for r in rows), num_generations, len(rows))
        self.rows_per_batch = per_batch
        tally = ProgressTally(len(rows), progress) if progress is not None else None
        toks, logps, lens = [], [], []
        for s in range(0, len(rows), per_batch):
            t, lp, n = self._generate_batch(w, rows[s:s + per_batch], params, gen, tally)
            if tally is not None:
                tally.end_sub_batch(n.shape[0], int(n.sum()))
            toks.append(t)
            logps.append(lp)
            lens.append(n)
        out = self._assemble(rows, toks, logps, lens, params)

        if on_cuda:
            torch.cuda.synchronize(dev)
            self.last_stats["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            torch.cuda.empty_cache()  # give the cache and graph pools back to training
        else:
            self.last_stats["peak_gib"] = None
        self.last_stats.update(seconds=time.perf_counter() - t0, tokens=int(out.completion_mask.sum()),
                               rows_per_batch=per_batch)
        return out

    def round_weights(self, w: ModelW) -> ModelW:
        """This round's decode weights (`weights.decode_weights`) under the memory plan; logs the plan once."""
        fp8 = self.rollout_dtype == "fp8"
        dtype = DTYPES.get(self.rollout_dtype)
        if dtype is None and w.has_packed:
            dtype = next(lin.packed.dtype for layer in w.layers for lin in (layer.q, layer.o) if lin.packed)
        dtype = dtype or w.dtype
        keep_packed, copy_bytes, kind = False, 0, w.packed_kind
        if kind is not None:
            copy_bytes = sum(lin.packed.numel() for layer in w.layers for lin in
                             (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down)
                             if lin is not None and lin.packed is not None) * (1 if fp8 else dtype.itemsize)
            mode = self.dequantize_4bit or ("copy" if copy_bytes <= COPY_SHARE * _free_bytes(w.device) else "step")
            keep_packed = mode == "step"
        if not self._plan_logged:
            self._plan_logged = True
            what = "fp8 e4m3 matrices with row scales" if fp8 else f"{str(dtype).removeprefix('torch.')} matrices"
            if kind is not None:
                unpack = "read as they are" if fp8 and kind == "fp8" else "dequantised"
                what += (f"; {kind} bases {unpack} inside each step (no copy; a {copy_bytes / 2**30:.1f} GiB "
                         "copy would not fit half the free memory)" if keep_packed else
                         f"; {kind} bases dequantised into a {copy_bytes / 2**30:.1f} GiB per-round copy")
            log.info("native rollout: decoding with %s", what)
            if fp8 and any(layer.moe is not None for layer in w.layers):
                log.warning("rollout_dtype fp8: the mixture-of-experts routers and experts stay %s; "
                            "only the attention matrices decode in FP8", str(dtype).removeprefix("torch."))
        self.last_stats.update(rollout_dtype="fp8" if fp8 else str(dtype).removeprefix("torch."),
                               quant=f"{kind}-{'step' if keep_packed else 'copy'}" if kind else None)
        return decode_weights(w, None if keep_packed else self.merge_scope, dtype, fp8=fp8, keep_packed=keep_packed)

    def _rows_per_batch(self, w: ModelW, params: SamplingParams, longest_prompt: int, g: int, n_rows: int) -> int:
        """Rows per sub-batch under the memory budget; whole groups of G when possible (one prefill each)."""
        budget = self.kv_budget_bytes
        if budget is None:
            budget = int(_free_bytes(w.device) * 0.9)
        slots = _round_up(longest_prompt + params.max_new_tokens, SLOT_ALIGN)
        # KV for every slot + [B, V] sampling temporaries (logits, scores, probs, noise, sort…) + outputs.
        per_row = slots * w.kv_bytes_per_token() + w.vocab_size * 4 * 8 + params.max_new_tokens * 16
        rows = max(1, budget // per_row)
        if self.batch_size:
            rows = min(rows, self.batch_size)
        if rows >= g:
            rows -= rows % g
        return min(rows, n_rows)

    # ------------------------------------------------------------------ sub-batch

    def _generate_batch(self, w: ModelW, rows: list[list[int]], params: SamplingParams, gen: torch.Generator,
                        tally: ProgressTally | None = None):
        """(tokens [B, C], logprobs [B, C], lengths [B]) for one sub-batch of rows; at each host check its
        counts so far go to `tally`."""
        dev, pad = w.device, self.tokenizer.pad_token_id
        stats = self.last_stats
        stats["sub_batches"] += 1
        # Distinct prompts in this sub-batch (rows of one prompt are adjacent) and each row's prompt.
        prompts, row_prompt = [], []
        for r in rows:
            if not prompts or prompts[-1] is not r:
                prompts.append(r)
            row_prompt.append(len(prompts) - 1)
        row_prompt_t = torch.tensor(row_prompt, device=dev)
        ids, mask = left_pad(prompts, pad, dev)  # [n, P]
        b, (n, p), c = len(rows), ids.shape, params.max_new_tokens
        slots = _round_up(p + c, SLOT_ALIGN)
        w = without_long_windows(w, slots)
        cos_t, sin_t = rope_tables(w, int(mask.sum(1).max()) + c + 1)

        # Zeros, not empty: masked slots get softmax weight 0, and 0 · NaN garbage would still be NaN.
        # One tensor per layer: each compiled step piece then sees the same cache tensor metadata in
        # every layer (views into one big tensor would differ in storage offset).
        shape = (b, 2, w.n_kv_heads, slots, w.head_dim)
        kv_cache = [torch.zeros(shape, dtype=w.dtype, device=dev) for _ in w.layers]
        stats["kv_gib"] = max(stats["kv_gib"], len(w.layers) * math.prod(shape) * w.embed.element_size() / 2**30)

        first_logits = torch.empty(n, w.vocab_size, dtype=torch.float32, device=dev)
        chunk = max(1, PREFILL_TOKENS // p)
        for s in range(0, n, chunk):
            # This chunk's prompts fill rows [r0, r1); each row takes its prompt's K/V.
            r0, r1 = row_prompt.index(s), len(row_prompt) - row_prompt[::-1].index(min(s + chunk, n) - 1)
            local = row_prompt_t[r0:r1] - s

            def store(i: int, k: torch.Tensor, v: torch.Tensor, r0=r0, r1=r1, local=local) -> None:
                kv_cache[i][r0:r1, 0, :, :p] = k[local]
                kv_cache[i][r0:r1, 1, :, :p] = v[local]

            first_logits[s:s + chunk] = prefill(w, ids[s:s + chunk], mask[s:s + chunk], cos_t, sin_t, store)

        row_mask = mask[row_prompt_t]  # [B, P]
        kv_bias = torch.full((b, slots), float("-inf"), dtype=w.dtype, device=dev)
        kv_bias[:, :p].masked_fill_(row_mask.bool(), 0.0)
        st = DecodeState(
            tok=torch.zeros(b, dtype=torch.long, device=dev), pos=row_mask.sum(1),
            slot=torch.tensor([p], device=dev), step=torch.zeros(1, dtype=torch.long, device=dev),
            kv_bias=kv_bias, done=torch.zeros(b, dtype=torch.bool, device=dev),
            length=torch.zeros(b, dtype=torch.long, device=dev),
            out_tok=torch.full((b, c), pad, dtype=torch.long, device=dev),
            out_logp=torch.zeros(b, c, dtype=torch.float32, device=dev),
            seen=seen_tokens(ids[row_prompt_t], w.vocab_size, row_mask) if params.repetition_penalty != 1.0 else None,
            noise=torch.empty(b, w.vocab_size, dtype=torch.float32, device=dev) if params.do_sample else None,
        )
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=dev)
        lp_temp = params.temperature if params.temperature > 0 else 1.0
        if st.noise is not None:
            exponential_noise_(st.noise, gen)
        _emit(st, first_logits[row_prompt_t], params, eos, pad, lp_temp)

        # Results of rows removed by compaction are parked here, by their row in this sub-batch.
        final_tok, final_logp = st.out_tok, st.out_logp
        final_len = st.length
        row_ids = torch.arange(b, device=dev)
        caches = kv_cache
        fns, emit = self.decode_fns(dev)

        def make_runner() -> StepRunner:
            def step_fn(kv_len: int, st=st, caches=caches) -> None:
                logits = decode_one_token(w, st.tok, st.pos, st.slot, caches, st.kv_bias, kv_len,
                                          cos_t, sin_t, fns)
                emit(st, logits, params, eos, pad, lp_temp)
            graphs = self.cuda_graphs and dev.type == "cuda"
            return StepRunner(step_fn, graphs, torch.cuda.graph_pool_handle() if graphs else None)

        runner = make_runner()
        for t in range(1, c):
            if t % self.sync_every == 0:
                self._check_stop_strings(st, params)
                if tally is None:
                    n_live = int((~st.done).sum())  # the host sync, once every sync_every steps
                else:  # the same sync, carrying the tokens decoded so far too
                    n_live, tokens = torch.stack([(~st.done).sum(),
                                                  _decoded_tokens(final_len, row_ids, st)]).tolist()
                    tally.report(b - n_live, tokens)
                if n_live == 0:
                    break
                if self.compact and st.done.shape[0] > 1 and n_live <= (1 - self.compact) * st.done.shape[0]:
                    keep = (~st.done).nonzero().squeeze(1)
                    _park(final_tok, final_logp, final_len, row_ids, st)
                    row_ids = row_ids[keep]
                    st = st.select(keep)
                    caches = _compact_cache(caches, keep)
                    stats["graphs_captured"] += runner.captured
                    runner = None  # drop the old graphs (they hold the old buffers) before capturing anew
                    runner = make_runner()
                    stats["compactions"] += 1
            if st.noise is not None:
                exponential_noise_(st.noise, gen)
            slot = p + t - 1  # the cache column this step writes; the step attends up to it
            runner(min(slots, _round_up(slot + 1, self.kv_bucket)))
        _park(final_tok, final_logp, final_len, row_ids, st)
        stats["graphs_captured"] += runner.captured
        stats["graphs"] = stats["graphs_captured"] > 0
        return final_tok, final_logp, final_len

    def _check_stop_strings(self, st: DecodeState, params: SamplingParams) -> None:
        """End live rows whose text so far contains a stop string (exact cut happens in _assemble)."""
        if not params.stop_strings:
            return
        live = (~st.done).nonzero().squeeze(1).tolist()
        toks, lens = st.out_tok.cpu(), st.length.cpu()
        for i in live:
            text = self.tokenizer.decode(toks[i, :lens[i]])
            if any(s in text for s in params.stop_strings):
                st.done[i] = True

    # ------------------------------------------------------------------ output

    def _assemble(self, rows, toks, logps, lens, params: SamplingParams) -> Rollout:
        pad, dev = self.tokenizer.pad_token_id, self.device
        width = max(1, max(int(n.max()) for n in lens))
        completion = torch.cat([t[:, :width] for t in toks])
        logprobs = torch.cat([lp[:, :width] for lp in logps])
        length = torch.cat(lens)
        valid = torch.arange(width, device=dev)[None, :] < length[:, None]
        mask, is_eos = completion_mask_from_eos(completion, self.eos_ids, valid)
        if params.stop_strings:
            truncate_at_stop_strings(self.tokenizer, completion, mask, is_eos, params.stop_strings)
        completion = torch.where(mask.bool(), completion, torch.full_like(completion, pad))
        prompt_ids, prompt_mask = left_pad(rows, pad, dev)
        return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion,
                       completion_mask=mask, is_eos=is_eos, logprobs=logprobs * mask)


def _emit(st: DecodeState, logits: torch.Tensor, params: SamplingParams, eos: torch.Tensor, pad: int,
          lp_temp: float) -> None:
    """Sample from logits [B, V], record token and log-prob at column `step`, update done/seen (no sync)."""
    tok = sample(logits, params, seen=st.seen, noise=st.noise)
    logp = token_logprobs(logits, tok, lp_temp)
    live = ~st.done
    tok = torch.where(live, tok, pad)
    st.out_tok.index_copy_(1, st.step, tok[:, None])
    st.out_logp.index_copy_(1, st.step, (logp * live)[:, None])
    st.length.add_(live.long())
    st.done.logical_or_(live & (tok[:, None] == eos[None, :]).any(dim=1))
    if st.seen is not None:
        st.seen.scatter_(1, tok[:, None], True)
    st.tok.copy_(tok)
    st.step.add_(1)


def _decoded_tokens(final_len: torch.Tensor, row_ids: torch.Tensor, st: DecodeState) -> torch.Tensor:
    """Tokens decoded so far in a sub-batch (0-d, on the device): the parked rows' and the live batch's."""
    if final_len is st.length:  # not compacted yet
        return st.length.sum()
    return final_len.sum() - final_len[row_ids].sum() + st.length.sum()


def _park(final_tok, final_logp, final_len, row_ids: torch.Tensor, st: DecodeState) -> None:
    """Write the current batch's outputs back to their rows of the sub-batch result."""
    if final_tok is st.out_tok:
        return
    final_tok[row_ids] = st.out_tok
    final_logp[row_ids] = st.out_logp
    final_len[row_ids] = st.length


def _compact_cache(caches: list[torch.Tensor], keep: torch.Tensor) -> list[torch.Tensor]:
    """Move rows `keep` to the front of each layer's cache (no second full cache)."""
    for cache in caches:
        cache[:keep.numel()] = cache[keep]
    return [cache[:keep.numel()] for cache in caches]


def _free_bytes(device: torch.device) -> int:
    """Memory free for the rollout: on CUDA free plus cached-but-unused; on CPU a fixed budget."""
    if device.type != "cuda":
        return CPU_KV_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)
