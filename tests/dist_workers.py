"""Rank programs for the distributed tests (run by dist_harness.launch_ranks, one process per rank).

`python tests/dist_workers.py NAME ARGS...` joins the process group from the torchrun-style
environment, runs NAME under rank_guard and, like the CLI, prints an RlvrError as one line on
stderr and exits 2. The trainer runs are also called in-process by the tests as the one-process references.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from rlvr.distributed.collectives import (
    all_reduce_gradients,
    all_reduce_sum,
    any_rank,
    broadcast_parameters,
    gather_rows,
    reduce_metrics,
)
from rlvr.distributed.context import DistContext, agree_on_device_type, init_distributed, shutdown
from rlvr.distributed.faults import rank_guard
from rlvr.errors import RlvrError

# ---------------------------------------------------------------------------- collectives


def collectives(ctx: DistContext, out: str) -> None:
    r = ctx.rank
    res = {}
    # Rank r holds r+1 rows of width 2+r, filled with r+1.
    t = torch.full((r + 1, 2 + r), float(r + 1))
    res["right"] = gather_rows(t, ctx, pad_side="right", pad_value=-1)
    res["left"] = gather_rows(t, ctx, pad_side="left", pad_value=-1)
    res["flat"] = gather_rows(torch.arange(r + 2) + 10 * r, ctx)
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    a.grad = torch.full((3,), float(r + 1))
    b.grad = None if r == 0 else torch.ones(2, 2, dtype=torch.float64)  # rank 0 has no gradient for b
    all_reduce_gradients([a, b], ctx)
    res["grad_a"], res["grad_b"] = a.grad, b.grad
    c = torch.nn.Parameter(torch.full((4,), float(r)))
    broadcast_parameters([c], ctx)
    res["broadcast"] = c.detach()
    res["any_one"], res["any_none"] = any_rank(r == 1, ctx), any_rank(False, ctx)
    res["sums"] = all_reduce_sum([1.0, float(r)], ctx)
    metrics = {"loss": 0.25 * (r + 1), "time/update": float(r), "n": 1.0, **({"only_1": 7.0} if r == 1 else {})}
    res["metrics"] = reduce_metrics(metrics, ctx, {"loss": "sum", "time/update": "max"})
    torch.save(res, Path(out) / f"rank{r}.pt")


# ---------------------------------------------------------------------------- the trainers under torchrun


class PromptSeededEngine:
    """A rollout engine whose completions depend only on (prompt, copy index): the same round whatever
    rank generates which group, so 1-rank and 2-rank runs train on identical rollouts."""

    def __init__(self, tokenizer):
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.vocab = len(tokenizer)

    def generate(self, prompt_ids, num_generations, params, seed=None, progress=None):
        from rlvr.rollout.engine import Rollout

        rows = [(p, j) for p in prompt_ids for j in range(num_generations)]
        width_p, width_c = max(len(p) for p in prompt_ids), params.max_new_tokens
        out = {k: torch.zeros(len(rows), w, dtype=torch.long) for k, w in
               (("pi", width_p), ("pm", width_p), ("ci", width_c), ("cm", width_c))}
        is_eos = torch.zeros(len(rows), dtype=torch.bool)
        for i, (p, j) in enumerate(rows):
            g = torch.Generator().manual_seed(hash(tuple(p)) % 2**31 * 17 + j)
            n = int(torch.randint(1, width_c + 1, (1,), generator=g))
            tokens = torch.randint(4, self.vocab, (n,), generator=g)
            if n < width_c:
                tokens[-1], is_eos[i] = self.eos, True
            out["pi"][i, width_p - len(p):], out["pm"][i, width_p - len(p):] = torch.tensor(p), 1
            out["ci"][i, :n], out["cm"][i, :n] = tokens, 1
        out["ci"][out["cm"] == 0] = self.pad
        return Rollout(out["pi"], out["pm"], out["ci"], out["cm"], is_eos)

    def memory_plan(self):
        from rlvr.rollout.engine import MemoryPlan

        return MemoryPlan()

    def reduce_batch(self):
        return None


def char_score(prompts, completions, **kw):
    return [float(sum(map(ord, c[0]["content"])) % 7) for c in completions]


def odd_prompts_char_score(prompts, completions, answer, **kw):
    """char_score for odd-numbered prompts, 0 for even ones: filter_groups must draw more to fill a round."""
    return [float(sum(map(ord, c[0]["content"])) % 7) if int(a) % 2 else 0.0 for c, a in zip(completions, answer)]


def trainer_policy(full_weights: bool):
    from conftest import make_model, make_tokenizer

    from rlvr.models.loading import attach_lora

    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok), seed=0)
    if not full_weights:
        model = attach_lora(model, 4, 8, seed=1)
    return model, tok


def killed_at_round_2(prompts, completions, **kw):
    """char_score, except that rank 1 is killed while scoring the round that starts after step 2."""
    if kw["trainer_state"].global_step == 2 and os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return char_score(prompts, completions)


def grpo_trainer_run(ctx: DistContext, out_dir: str, grad_accum: int, full_weights: bool = False,
                     resume: str | None = None, reward=None, **settings) -> dict:
    """3 GRPO steps (2 iterations per round, so ℓ^old differs from ℓ) through GRPOTrainer; the trainable state."""
    from rlvr.config import GRPOConfig
    from rlvr.distributed.checkpoint import full_trainable_state
    from rlvr.grpo.trainer import GRPOTrainer

    model, tok = trainer_policy(full_weights)
    data = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(16)]
    cfg = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=4, gradient_accumulation_steps=grad_accum,
                     num_generations=4, num_iterations=2, max_completion_length=6, max_steps=3, learning_rate=1e-2,
                     lr_scheduler_type="constant", warmup_ratio=0.0, max_grad_norm=1.0, optim="adamw_torch",
                     save_steps=1, save_total_limit=None, seed=5, **settings)
    trainer = GRPOTrainer(model, tok, [reward or char_score], data, cfg, engine=PromptSeededEngine(tok),
                          show_progress=False)
    trainer.train(resume_from_checkpoint=resume)
    return {k: v.detach().clone() for k, v in full_trainable_state(model).items()}


GRPO_VARIANTS = {"grpo": dict(loss_type="grpo"), "bnpo": dict(loss_type="bnpo"),
                 "dr_grpo": dict(loss_type="dr_grpo"), "dapo": dict(loss_type="dapo", beta=0.05),
                 "gspo": dict(loss_type="dapo", importance_sampling_level="sequence"),
                 "filter_groups": dict(loss_type="dapo", filter_groups=True, reward=odd_prompts_char_score)}


def sft_trainer_run(ctx: DistContext, out_dir: str, grad_accum: int) -> dict:
    from rlvr.config import SFTConfig
    from rlvr.distributed.checkpoint import full_trainable_state
    from rlvr.sft.trainer import SFTTrainer

    model, tok = trainer_policy(False)
    data = [{"prompt": [{"role": "user", "content": f"what is {i}+{i}?"}], "completion": f"it is {2 * i}"}
            for i in range(16)]
    cfg = SFTConfig(output_dir=out_dir, per_device_train_batch_size=2, gradient_accumulation_steps=grad_accum,
                    max_steps=3, learning_rate=1e-2, warmup_ratio=0.0, seed=3, optim="adamw_torch")
    SFTTrainer(model, tok, data, cfg, show_progress=False).train()
    return {k: v.detach().clone() for k, v in full_trainable_state(model).items()}


def trainers(ctx: DistContext, out: str) -> None:
    """The trainers on 2 ranks × GA 1 (each rank imports transformers once for all of them): every GRPO
    variant with LoRA, SFT, full fine-tuning under FSDP2 (also with activation checkpointing); then the
    LoRA dapo run and the FSDP2 run resumed on these 2 ranks from their mid-round checkpoints of step 1."""
    import shutil

    from rlvr.distributed.collectives import barrier

    root = Path(out)
    res = {name: grpo_trainer_run(ctx, str(root / name), 1, **kw) for name, kw in GRPO_VARIANTS.items()}
    res["sft"] = sft_trainer_run(ctx, str(root / "sft"), 1)
    res["fsdp"] = grpo_trainer_run(ctx, str(root / "fsdp"), 1, full_weights=True)
    res["fsdp/checkpointing"] = grpo_trainer_run(ctx, str(root / "fsdp-checkpointing"), 1, full_weights=True,
                                                 gradient_checkpointing=True)
    for name, full in (("dapo", False), ("fsdp", True)):
        if ctx.is_main:
            shutil.copytree(root / name, root / f"{name}-resumed-2")
        barrier(ctx)
        step1 = root / f"{name}-resumed-2" / "checkpoints" / "step-000001"
        res[f"{name}/resumed"] = grpo_trainer_run(ctx, str(root / f"{name}-resumed-2"), 1, full_weights=full,
                                                  resume=str(step1), **(GRPO_VARIANTS["dapo"] if not full else {}))
    if ctx.is_main:
        torch.save(res, root / "trainers.pt")


def killed_mid_run(ctx: DistContext, out: str) -> None:
    """The LoRA dapo run of `trainers`, with rank 1 killed during step 3's round."""
    grpo_trainer_run(ctx, out, 1, reward=killed_at_round_2, **GRPO_VARIANTS["dapo"])


# ---------------------------------------------------------------------------- faults


def fail_on_rank(ctx: DistContext, how: str, rank: str) -> None:
    """All ranks meet in collectives; the given rank raises (or is killed) at the second one."""
    x = torch.ones(2)
    any_rank(False, ctx)
    if ctx.rank == int(rank):
        if how == "raise":
            raise RlvrError("reward function 'boom' raised ValueError at step 2")
        os.kill(os.getpid(), signal.SIGKILL)
    for _ in range(3):
        gather_rows(x, ctx)


def device_mix(ctx: DistContext) -> None:
    # (init_distributed already agreed on 'cpu' under the default tag)
    agree_on_device_type(ctx, "cpu" if ctx.rank == 0 else "cuda", tag="device-test")


WORKERS = {"collectives": collectives, "trainers": trainers, "killed_mid_run": killed_mid_run,
           "fail_on_rank": fail_on_rank, "device_mix": device_mix}


def main() -> int:
    ctx = init_distributed(timeout_s=float(os.environ.get("RLVR_TEST_TIMEOUT", "60")))
    try:
        with rank_guard(ctx, wait_s=2.0):
            WORKERS[sys.argv[1]](ctx, *sys.argv[2:])
    except RlvrError as e:
        print(f"rank {ctx.rank}: {e}", file=sys.stderr)
        return 2
    shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
