"""Rank programs for the distributed tests (run by dist_harness.launch_ranks, one process per rank).

`python tests/dist_workers.py NAME ARGS...` joins the process group from the torchrun-style
environment, runs NAME under rank_guard and, like the CLI, prints an RlvrError as one line on
stderr and exits 2. `grpo_steps` is also called in-process by the tests as the one-process reference.
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
from rlvr.distributed.sharding import completion_slots, rank_micro_batches
from rlvr.errors import RlvrError

VOCAB, G, PROMPTS_PER_ROUND, MICRO = 32, 4, 2, 2  # a round: 8 completions, micro-batches of 2


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


# ---------------------------------------------------------------------------- training steps


def make_policy(full_weights: bool):
    from conftest import make_model

    model = make_model("llama", vocab_size=VOCAB, seed=0)
    if full_weights:
        return model
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    # init_lora_weights=False: B is random too, so A and B both get gradients from step 1.
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))


def make_round(round_index: int) -> dict:
    """A round of 8 completions (2 prompts × G 4) with ragged lengths, fixed by the round index."""
    from rlvr.grpo.advantages import group_advantages

    g = torch.Generator().manual_seed(100 + round_index)
    n, p, c = PROMPTS_PER_ROUND * G, 5, 6
    prompt_ids = torch.randint(4, VOCAB, (PROMPTS_PER_ROUND, p), generator=g).repeat_interleave(G, 0)
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    prompt_mask[:, :round_index % 2] = 0  # some left padding
    completion_ids = torch.randint(4, VOCAB, (n, c), generator=g)
    lengths = torch.randint(1, c + 1, (n,), generator=g)
    completion_mask = (torch.arange(c) < lengths[:, None]).long()
    rewards = torch.randint(0, 3, (n,), generator=g).float()
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                completion_mask=completion_mask, advantages=group_advantages(rewards, G, "group"))


def grpo_steps(ctx: DistContext, full_weights: bool, loss_type: str, level: str, grad_accum: int, steps: int = 3,
               save_dir: str | None = None, save_after: int | None = None, resume_dir: str | None = None,
               checkpointing: bool = False):
    """A GRPO loop over fixed rounds, data-parallel as the trainer runs it; returns the trainable state.

    A round's ℓ^old is computed by each rank for the completions it "generated" and gathered; the
    round is shuffled and cut into micro-batches the same way at every world size; each step's
    StepShape counts all of the step's micro-batches, and each rank trains on its share.
    """
    from rlvr.distributed.checkpoint import full_trainable_state, load_sharded_state, save_sharded_state
    from rlvr.distributed.parallel import clip_grad_norm, parallelize, sync_gradients
    from rlvr.grpo.objective import StepShape, aggregate, per_token_loss
    from rlvr.models.checkpointing import enable_checkpointing
    from rlvr.models.forward import completion_logprobs

    model = make_policy(full_weights)
    model.train()
    enable_checkpointing(model, checkpointing)
    parallelize(model, ctx, full_weights=full_weights)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    start = 0
    if resume_dir:
        load_sharded_state(Path(resume_dir), model, optimizer, ctx)
        start = int((Path(resume_dir) / "step").read_text())
    per_step = grad_accum * ctx.world_size
    micro_per_round = PROMPTS_PER_ROUND * G // MICRO
    steps_per_round = micro_per_round // per_step

    def logps(batch, rows):
        return completion_logprobs(model, batch["prompt_ids"][rows], batch["prompt_mask"][rows],
                                   batch["completion_ids"][rows], batch["completion_mask"][rows])[0]

    for step in range(start, steps):
        round_index, in_round = divmod(step, steps_per_round)
        batch = make_round(round_index)
        if in_round == 0 or step == start:
            # ℓ^old at the round's start (the policy moves between its steps): each rank its own slots.
            # (Resuming is tested at a round boundary; the trainer keeps a mid-round round's tensors.)
            mine = torch.tensor(list(completion_slots(len(batch["advantages"]), ctx.world_size, ctx.rank)))
            with torch.no_grad():
                batch_old = gather_rows(logps(batch, mine), ctx)
        perm = torch.randperm(len(batch["advantages"]), generator=torch.Generator().manual_seed(round_index))
        micro = list(perm.split(MICRO))
        step_micro = micro[in_round * per_step:(in_round + 1) * per_step]
        masks = [batch["completion_mask"][m] for m in step_micro]
        shape = StepShape(num_sequences=sum(len(m) for m in masks), num_tokens=int(sum(m.sum() for m in masks)),
                          num_micro_batches=len(step_micro), max_completion_length=batch["completion_ids"].shape[1])
        for rows in rank_micro_batches(step_micro, grad_accum, ctx.world_size, ctx.rank):
            lp = logps(batch, rows)
            out = per_token_loss(lp, batch_old[rows], batch["advantages"][rows], batch["completion_mask"][rows],
                                 importance_sampling_level=level, epsilon_high=0.28)
            aggregate(out.loss, batch["completion_mask"][rows], loss_type, shape).backward()
        sync_gradients(model, ctx)
        clip_grad_norm(params, 1.0, ctx)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if save_dir and step + 1 == save_after:
            save_sharded_state(Path(save_dir), model, optimizer, ctx)
            if ctx.is_main:
                (Path(save_dir) / "step").write_text(str(step + 1))
    return {k: v.detach().clone() for k, v in full_trainable_state(model).items()}


LOSS_VARIANTS = [("grpo", "token"), ("bnpo", "token"), ("dr_grpo", "token"), ("dapo", "token"),
                 ("dapo", "sequence")]  # the last is GSPO


def training(ctx: DistContext, out: str) -> None:
    """Everything the training tests compare, in one job (each rank imports transformers once):

    every loss type and GSPO with LoRA on 2 ranks × GA 1; full fine-tuning under FSDP2 (dapo),
    writing a DCP checkpoint after step 2 of 3, then resumed from it on the same 2 ranks; FSDP2
    with activation checkpointing (grpo); where FSDP2 put each parameter.
    """
    from torch.distributed.tensor import DTensor

    from rlvr.distributed.parallel import parallelize

    res = {f"lora/{lt}/{lv}": grpo_steps(ctx, False, lt, lv, grad_accum=1) for lt, lv in LOSS_VARIANTS}
    ckpt = str(Path(out) / "ckpt")
    res["fsdp"] = grpo_steps(ctx, True, "dapo", "token", grad_accum=1, save_dir=ckpt, save_after=2)
    res["fsdp/resumed"] = grpo_steps(ctx, True, "dapo", "token", grad_accum=1, resume_dir=ckpt)
    res["fsdp/checkpointing"] = grpo_steps(ctx, True, "grpo", "token", grad_accum=1, checkpointing=True)
    model = make_policy(True)
    res["mode"] = parallelize(model, ctx, full_weights=True)
    res["sharded"] = {name: isinstance(p, DTensor) for name, p in model.named_parameters()}
    if ctx.is_main:
        torch.save(res, Path(out) / "training.pt")


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


WORKERS = {"collectives": collectives, "training": training, "fail_on_rank": fail_on_rank,
           "device_mix": device_mix}


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
