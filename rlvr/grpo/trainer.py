"""The GRPO loop, readable top to bottom: rollout → rewards → advantages → update, round after round.

Batch structure follows semantics §1: a round is generation_batch_size completions (G per prompt),
split into steps_per_generation micro-batches and replayed num_iterations times; the optimizer
steps every gradient_accumulation_steps micro-batches. A round is one generation batch of prompts,
or with filter_groups the groups with reward variance of as many batches as it takes (dynamic_sampling.py).
The pure math lives in advantages.py, dynamic_sampling.py and objective.py; this file only moves tensors
between them.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from rlvr.config import GRPOConfig
from rlvr.data.templates import fit_prompts
from rlvr.distributed.collectives import gather_objects, gather_rows, reduce_metric_values, reduce_metrics
from rlvr.distributed.parallel import gathered_for_decoding
from rlvr.distributed.sharding import completion_slots, rank_micro_batches, rank_seed, rollout_request
from rlvr.errors import RlvrError, nearest
from rlvr.grpo.advantages import (
    group_advantages,
    normalize_scale_rewards,
    reward_stats,
    saturation_scales,
    zero_std_groups,
)
from rlvr.grpo.dynamic_sampling import group_rows, select_groups
from rlvr.grpo.memory import estimate_memory, format_estimate
from rlvr.grpo.objective import (
    StepShape,
    aggregate,
    clip_metric_share,
    clip_metrics,
    per_token_loss,
    router_aux_share,
    tis_weights,
)
from rlvr.grpo.round import DrawnRows, RoundBatch, gather_round
from rlvr.models.forward import PolicyForward, base_causal_lm, policy_forward
from rlvr.models.moe import router_aux_loss_coef
from rlvr.rewards.inputs import RewardLog, new_trainer_state, reward_inputs
from rlvr.rewards.registry import resolve_rewards
from rlvr.rewards.scoring import combine_rewards, per_function_metrics, score_completions, unique_reward_names
from rlvr.rollout import SamplingParams, make_engine
from rlvr.rollout.engine import ProgressCallback
from rlvr.train.core import TrainerCore
from rlvr.train.guards import MetricGuards
from rlvr.train.run_dir import run_details
from rlvr.train.session import RunSession
from rlvr.train.update import StepCounts, free_accelerator_memory, peak_memory_gib

log = logging.getLogger("rlvr")


def _as_records(dataset) -> list[dict]:
    if isinstance(dataset, list):
        return dataset
    return [dict(row) for row in dataset]


class GRPOTrainer(TrainerCore):
    """GRPO/DAPO/Dr. GRPO/GSPO on a (peft or plain) causal LM, with TRL's config names.

    train() → run_round() → train_step() (the core's) → forward_backward(micro_batch).
    """

    kind, label = "grpo", "GRPO"
    metric_ops = {"tis_min": "min", "tis_max": "max"}

    def __init__(self, model, tokenizer, reward_funcs, train_dataset, args: GRPOConfig | None = None,
                 engine=None, reasoning_tag: str = "reasoning", answer_tag: str = "answer",
                 show_progress: bool | None = None, evaluator=None):
        a = args or GRPOConfig()
        a.validate()
        self.args, self.model, self.tokenizer = a, model, tokenizer
        self.device = next(model.parameters()).device
        self.reward_funcs = resolve_rewards(list(reward_funcs), reasoning_tag=reasoning_tag, answer_tag=answer_tag)
        if a.reward_weights is not None and len(a.reward_weights) != len(self.reward_funcs):
            raise RlvrError(f"train.reward_weights has {len(a.reward_weights)} values for "
                            f"{len(self.reward_funcs)} reward functions; give one weight per function")
        self.reward_names = unique_reward_names(self.reward_funcs)
        self.reward_weight_tensor = torch.tensor(a.reward_weights or [1.0] * len(self.reward_funcs),
                                                 dtype=torch.float64)
        if a.filter_groups and a.filter_groups_metric not in ("reward", *self.reward_names):
            raise RlvrError(f"train.filter_groups_metric: {a.filter_groups_metric!r} is neither 'reward' nor a reward "
                            f"function's name{nearest(a.filter_groups_metric, self.reward_names)}; use one of "
                            f"reward, {', '.join(self.reward_names)}")
        self.examples = _as_records(train_dataset)
        if not self.examples:
            raise RlvrError("the training dataset is empty; check data.dataset and data.split")
        # Over-long prompts are cut inside the question, with a warning; prompt_cut_tokens counts per prompt.
        self.prompt_ids, self.prompt_cut_tokens = fit_prompts(tokenizer, [ex["prompt"] for ex in self.examples],
                                                              a.max_prompt_length)
        self.engine = engine or make_engine(a.rollout_backend, model, tokenizer,
                                            rollout_merge_lora=a.rollout_merge_lora, rollout_dtype=a.rollout_dtype)
        self.scale_rewards = normalize_scale_rewards(a.scale_rewards)

        self.spg = a.resolved_steps_per_generation
        self.prompts_per_round = a.resolved_generation_batch_size // a.num_generations
        if (self.spg * a.num_iterations) % a.gradient_accumulation_steps:
            raise RlvrError(
                f"train: steps_per_generation × num_iterations ({self.spg} × {a.num_iterations}) must be a "
                f"multiple of gradient_accumulation_steps ({a.gradient_accumulation_steps})")
        self.rounds_per_epoch = len(self.examples) // self.prompts_per_round
        if self.rounds_per_epoch == 0:
            raise RlvrError(
                f"the dataset has {len(self.examples)} prompts but one round needs {self.prompts_per_round}; "
                "add data or lower per_device_train_batch_size / steps_per_generation")
        self.steps_per_round = self.spg * a.num_iterations // a.gradient_accumulation_steps
        if a.max_steps > 0:
            self.total_steps = a.max_steps
        else:
            rounds = max(1, math.floor(a.num_train_epochs * self.rounds_per_epoch))
            self.total_steps = rounds * self.steps_per_round
        self.state = new_trainer_state(self.total_steps, a.num_train_epochs, a.logging_steps, a.save_steps,
                                       a.per_device_train_batch_size)  # what reward functions see, as in TRL
        # ℓ^old is only needed when the policy can change between sampling and use (semantics §1).
        self.needs_old = self.spg > a.gradient_accumulation_steps or a.num_iterations > 1
        self.is_peft = hasattr(model, "disable_adapter")
        # Mixture of experts: the router's load-balancing loss joins the objective, as in TRL (0 = off).
        self.aux_coef = router_aux_loss_coef(base_causal_lm(model), a.router_aux_loss_coef)
        if a.beta > 0 and not self.is_peft:
            raise RlvrError("train.beta > 0 needs a reference policy: use LoRA (the adapter-disabled model is "
                            "the reference) or set beta: 0")
        super().__init__(model, a, self.total_steps, show_progress, evaluator=evaluator,
                         guards=MetricGuards(a.guard_length_collapse, a.guard_format_only),
                         steps_per_epoch=self.rounds_per_epoch * self.steps_per_round)
        if self.parallelism == "fsdp" and a.micro_batch_token_budget is not None:
            # Pieces differ between ranks, and every FSDP2 forward is a collective all ranks must join.
            raise RlvrError("train.micro_batch_token_budget with full fine-tuning on several processes (FSDP2) "
                            "is not supported; set it to null or use LoRA")
        # Where the loop is: the round, the optimizer steps of it done, and its tensors once made; the
        # generation batches drawn (one per round, more with filter_groups), which pick prompts and seeds.
        self.round_index, self.step_in_round, self.draw_index = 0, 0, 0
        self.warned_filled = False
        self.batch: RoundBatch | None = None
        self.round_metrics: dict = {}

    # ------------------------------------------------------------------ data

    def round_indices(self, round_index: int) -> list[int]:
        """Prompts of a round: a seeded permutation per epoch, incomplete last round dropped."""
        epoch, pos = divmod(round_index, self.rounds_per_epoch)
        g = torch.Generator().manual_seed(self.args.seed * 1000 + epoch)
        perm = torch.randperm(len(self.examples), generator=g)
        return perm[pos * self.prompts_per_round:(pos + 1) * self.prompts_per_round].tolist()

    def sampling_params(self) -> SamplingParams:
        a = self.args
        return SamplingParams(max_new_tokens=a.max_completion_length, temperature=a.temperature, top_p=a.top_p,
                              top_k=a.top_k, min_p=a.min_p, repetition_penalty=a.repetition_penalty,
                              do_sample=True, stop_strings=tuple(a.stop_strings))

    # ------------------------------------------------------------------ one round

    def make_round(self, round_index: int, progress: ProgressCallback | None = None
                   ) -> tuple[RoundBatch, dict, list[dict]]:
        """Rollout, rewards, advantages (and ℓ^old / ℓ^ref when needed) for one round; `progress` hears
        how far the rollout is.

        A round is one generation batch (draw_groups), or with filter_groups as many as it takes to hold
        prompts_per_round groups with reward variance (at most max_num_gen_batches; dynamic_sampling.py).
        Every rank holds the whole round and computes the same advantages over whole groups; ℓ^old / ℓ^ref
        are computed by each rank for its share of the rows, then gathered.
        """
        a, G = self.args, self.args.num_generations
        rows, draws, metrics = self.draw_round(round_index, progress)
        batch = rows.batch
        self.add_logps_no_grad(batch)
        total = rows.total
        if a.reward_saturation_scaling:
            scales = saturation_scales(rows.per_function)
            total = combine_rewards(rows.per_function.double(), self.reward_weight_tensor * scales.double()).float()
            metrics.update({f"rewards/{n}/scale": scales[k].item() for k, n in enumerate(self.reward_names)})
        batch.advantages = group_advantages(total, G, self.scale_rewards).to(self.device)
        metrics.update(self.round_metrics_of(rows, draws))
        samples = [{"prompt": r["prompt"], "group": i // G, "length": int(rows.lengths[i]),
                    "completion": r["completion"], "reward": _f(rows.total[i]),
                    "rewards": {n: _f(rows.per_function[i, k]) for k, n in enumerate(self.reward_names)},
                    "advantage": _f(batch.advantages[i]), **({"extra": r["extra"]} if "extra" in r else {})}
                   for i, r in enumerate(rows.records[:2 * G])]
        return batch, metrics, samples

    def draw_round(self, round_index: int, progress: ProgressCallback | None = None
                   ) -> tuple[DrawnRows, list[DrawnRows], dict]:
        """(the round's rows, the generation batches drawn, filter_groups metrics): one batch, or with
        filter_groups the first prompts_per_round groups with variance in as many batches as that takes."""
        a, G = self.args, self.args.num_generations
        draws = [self.draw_groups(progress)]
        if not a.filter_groups:
            return draws[0], draws, {}
        rows = draws[0]
        while True:
            informative = ~zero_std_groups(self.filter_values(rows), G)
            if int(informative.sum()) >= self.prompts_per_round or len(draws) >= a.max_num_gen_batches:
                break
            draws.append(self.draw_groups(progress))
            rows = DrawnRows.cat(draws)
        kept = select_groups(informative.tolist(), self.prompts_per_round)
        filled = sum(1 for g in kept if not informative[g])
        if filled and not self.warned_filled:
            self.warned_filled = True
            log.warning("round %d: only %d of %d groups had reward variance after %d generation batches; groups "
                        "without it fill the round (raise train.max_num_gen_batches to draw more)", round_index,
                        len(kept) - filled, len(kept), len(draws))
        metrics = {"filter_groups/generation_batches": len(draws),
                   "filter_groups/frac_informative": informative.float().mean().item(),
                   "filter_groups/filled_groups": filled}
        return rows.select(group_rows(kept, G)), draws, metrics

    def filter_values(self, rows: DrawnRows) -> torch.Tensor:
        """What filter_groups asks to vary within a group: the weighted reward or one function's."""
        metric = self.args.filter_groups_metric
        return rows.total if metric == "reward" else rows.per_function[:, self.reward_names.index(metric)]

    def round_metrics_of(self, rows: DrawnRows, draws: list[DrawnRows]) -> dict:
        """TRL's round metrics over the rows trained on; times, token rate and errors over everything drawn."""
        drawn = reduce_metric_values([d.metrics for d in draws],
                                     {k: "sum" for k in draws[0].metrics if "/errors" in k or k.startswith("time/")}
                                     | {"completion_tokens": "sum"})
        tokens = drawn.pop("completion_tokens")
        return {**drawn, **per_function_metrics(rows.per_function, self.reward_names), **reward_stats(rows.total,
                self.args.num_generations),
                "completions/mean_length": rows.lengths.mean().item(),
                "completions/min_length": rows.lengths.min().item(),
                "completions/max_length": rows.lengths.max().item(),
                "completions/clipped_ratio": (~rows.is_eos).float().mean().item(),
                "tokens_per_second": tokens / max(drawn["time/rollout"], 1e-9),
                "prompts/truncated": sum(1 for i in rows.example_index[::self.args.num_generations]
                                         if self.prompt_cut_tokens[i])}

    def draw_groups(self, progress: ProgressCallback | None = None) -> DrawnRows:
        """One generation batch: the next prompts_per_round prompts × G completions, sampled and scored.

        Under torchrun each rank generates and scores its block of the batch's completion slots
        (rlvr/distributed/sharding.py) and the blocks are gathered: every rank then holds all of it.
        """
        a, G, ctx = self.args, self.args.num_generations, self.dist
        draw = self.draw_index
        idx = self.round_indices(draw)
        slots = completion_slots(len(idx) * G, ctx.world_size, ctx.rank)
        positions, per_prompt = rollout_request(slots, G)
        mine = [idx[p] for p in positions]
        t0 = time.perf_counter()
        with gathered_for_decoding(self.model):  # FSDP2: whole layers for the rollout; else nothing
            rollout = self.generate([self.prompt_ids[i] for i in mine], per_prompt,
                                    seed=rank_seed(a.seed * 1_000_003 + draw, ctx.rank), progress=progress)
        t1 = time.perf_counter()
        texts = self.tokenizer.batch_decode(rollout.completion_ids * rollout.completion_mask
                                            + self.tokenizer.pad_token_id * (1 - rollout.completion_mask),
                                            skip_special_tokens=True)
        rows = [self.examples[i] for i in mine for _ in range(per_prompt)]
        prompts, completions, columns = reward_inputs(rows, texts)
        ids = [r[m.bool()].tolist() for r, m in zip(rollout.completion_ids, rollout.completion_mask)]
        self.state.global_step, self.state.epoch = self.global_step, draw / self.rounds_per_epoch
        reward_log = RewardLog()
        columns.update(trainer_state=self.state, **reward_log.hooks())
        scores = score_completions(self.reward_funcs, prompts, completions, ids, columns, a.reward_weights,
                                   a.reward_errors, self.global_step + 1)
        t2 = time.perf_counter()
        self.draw_index += 1

        loss_mask = rollout.completion_mask.clone()
        if a.mask_truncated_completions:
            loss_mask *= rollout.is_eos.unsqueeze(1).long()
        batch = RoundBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, loss_mask,
                           torch.zeros(len(rows), device=self.device),  # advantages: once the round is whole
                           rollout_logps=rollout.logprobs if a.vllm_importance_sampling_correction else None)
        records = [{"prompt": p if isinstance(p, str) else p[-1]["content"], "completion": t} for p, t in
                   zip(prompts, texts)]
        for i, record in enumerate(records):  # columns reward functions added with log_extra
            if extra := reward_log.extra_of(i):
                record["extra"] = extra
        errors = {k: v for k, v in scores.metrics.items() if "/errors" in k}
        local = {**reward_log.metrics(), **errors, "time/rollout": t1 - t0, "time/score": t2 - t1,
                 "completion_tokens": rollout.completion_mask.sum().item()}
        metrics = reduce_metrics(local, ctx, {k: "sum" for k in errors}
                                 | {"completion_tokens": "sum", "time/rollout": "max", "time/score": "max"})
        lengths = rollout.completion_mask.sum(1).float()
        return DrawnRows(gather_round(batch, ctx), gather_rows(scores.total, ctx),
                         gather_rows(scores.per_function, ctx), gather_rows(lengths, ctx),
                         gather_rows(rollout.is_eos, ctx), [idx[s // G] for s in range(len(idx) * G)],
                         [r for part in gather_objects(records, ctx) for r in part], metrics)

    def generate(self, prompt_ids: list[list[int]], num_generations: int, seed: int,
                 progress: ProgressCallback | None = None):
        """This rank's rollout; out of memory, retried once with the engine's sub-batch halved."""
        G, params = num_generations, self.sampling_params()
        step = self.global_step + 1
        try:
            return self.engine.generate(prompt_ids, G, params, seed=seed, progress=progress)
        except torch.OutOfMemoryError:
            free_accelerator_memory()
            rows = self.engine.reduce_batch()
            if rows is None:
                raise RlvrError(f"step {step}: out of memory in the rollout; lower per_device_train_batch_size, "
                                "num_generations or max_completion_length") from None
            log.warning("step %d: out of memory in the rollout; retrying with sub-batches of %d rows", step, rows)
            try:
                return self.engine.generate(prompt_ids, G, params, seed=seed, progress=progress)
            except torch.OutOfMemoryError:
                raise RlvrError(
                    f"step {step}: out of memory in the rollout even with sub-batches of {rows} rows "
                    f"(peak {peak_memory_gib(self.device):.1f} GiB); lower max_completion_length or "
                    "num_generations, or set rollout_merge_lora: false") from None

    def add_logps_no_grad(self, batch: RoundBatch) -> None:
        """ℓ^old (when the policy can move before use, or for TIS) and ℓ^ref (beta > 0) of the round's rows:
        each rank computes its share (the slots it would generate), then the shares are gathered."""
        a, ctx = self.args, self.dist
        share = completion_slots(batch.completion_ids.shape[0], ctx.world_size, ctx.rank)
        rows = torch.arange(share.start, share.stop, device=self.device)
        if self.needs_old or batch.rollout_logps is not None:
            batch.old_logps = self._gathered(self._logps_no_grad(batch, rows, adapters=True), batch)
        if a.beta > 0:
            batch.ref_logps = self._gathered(self._logps_no_grad(batch, rows, adapters=False), batch)

    def _gathered(self, share: torch.Tensor, batch: RoundBatch) -> torch.Tensor:
        return gather_rows(share, self.dist)[:, :batch.completion_ids.shape[1]]

    @torch.no_grad()
    def _logps_no_grad(self, batch: RoundBatch, rows: torch.Tensor, adapters: bool) -> torch.Tensor:
        """[len(rows), C] log-probs of those rows' completion tokens, adapters on (ℓ^old) or off (ℓ^ref)."""
        out = torch.zeros((rows.numel(), batch.completion_ids.shape[1]), dtype=torch.float32, device=self.device)
        bs = self.args.per_device_train_batch_size
        for s in range(0, rows.numel(), bs):
            idx = rows[s:s + bs]
            for piece in self.token_budget_pieces(batch, idx):
                mb = batch.rows(piece)
                if adapters:
                    lp = self._policy_forward(mb, with_entropy=False).logps
                else:
                    with self.model.disable_adapter():
                        lp = self._policy_forward(mb, with_entropy=False).logps
                out[piece - rows[0], :lp.shape[1]] = lp
        return out

    def _policy_forward(self, mb: RoundBatch, with_entropy: bool, with_aux_loss: bool = False) -> PolicyForward:
        # The loss mask doubles as the completion's attention mask: a row it masks out entirely
        # needs no log-probs, and every other row's mask is its real one.
        with self.autocast():
            return policy_forward(self.model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids,
                                  mb.completion_mask, self.args.temperature, with_entropy,
                                  self.args.logprob_chunk_elements, with_aux_loss)

    # ------------------------------------------------------------------ update

    def micro_batches(self, batch: RoundBatch, round_index: int) -> list[torch.Tensor]:
        """The round shuffled (seeded by round) and split into steps_per_generation index sets."""
        n = batch.advantages.shape[0]
        g = torch.Generator().manual_seed(self.args.seed * 7919 + round_index)
        perm = torch.randperm(n, generator=g).to(self.device)
        size = self.args.per_device_train_batch_size
        return [perm[s:s + size] for s in range(0, n, size)]

    def token_budget_pieces(self, batch: RoundBatch, index: torch.Tensor) -> list[torch.Tensor]:
        """A micro-batch split so each piece holds at most micro_batch_token_budget padded tokens.

        A piece is padded to its longest prompt plus its longest completion (RoundBatch.rows), so that
        is what is counted. Rows are sorted by length first, so each piece pads to similar lengths; a
        row longer than the budget is a piece of its own. Without a budget, the micro-batch as it is.
        """
        budget = self.args.micro_batch_token_budget
        if budget is None:
            return [index]
        prompt_len = batch.prompt_mask[index].sum(-1)
        completion_len = batch.completion_mask[index].sum(-1)
        order = torch.argsort(prompt_len + completion_len, descending=True, stable=True)
        rows, prompt_len, completion_len = index[order], prompt_len[order].tolist(), completion_len[order].tolist()
        pieces, start, max_p, max_c = [], 0, 0, 0
        for i in range(len(rows)):
            p, c = max(max_p, prompt_len[i]), max(max_c, completion_len[i])
            if i > start and (i - start + 1) * (p + c) > budget:
                pieces.append(rows[start:i])
                start, p, c = i, prompt_len[i], completion_len[i]
            max_p, max_c = p, c
        pieces.append(rows[start:])
        return pieces

    # ------------------------------------------------------------------ one step (the core calls these)

    def train_step(self, micro_batches: list[torch.Tensor]) -> dict:
        """One optimizer step over micro-batches of self.batch's row indices (the core's, TRL's metric names)."""
        return step_metrics(super().train_step(micro_batches))

    def count(self, index: torch.Tensor) -> tuple[int, int]:
        return index.numel(), int(self.batch.completion_mask[index].sum())

    def forward_backward(self, index: torch.Tensor, counts: StepCounts, sums: dict) -> float:
        """Policy log-probs, per-token loss, this micro-batch's share of the step loss, backward."""
        a, batch = self.args, self.batch
        shape = StepShape(counts.num_sequences, counts.num_tokens, counts.num_micro_batches, a.max_completion_length)
        # bnpo needs a split micro-batch's whole token count; without a budget nothing is split
        # (and the count would cost a host sync per micro-batch for nothing).
        micro_batch_tokens = int(batch.completion_mask[index].sum()) if a.micro_batch_token_budget else None
        total = 0.0
        pieces = self.token_budget_pieces(batch, index)
        with_aux = self.aux_coef != 0
        # The router aux loss's weight is split between pieces by their unpadded tokens (a micro-batch run
        # whole needs no count, and no host sync).
        split = with_aux and len(pieces) > 1
        micro_batch_inputs = self._input_tokens(index) if split else 1
        for piece in pieces:
            # Rows the loss masks out entirely are left out (rows_in_the_loss), except when the router's
            # aux loss is on: it averages over every token of the forward, masked rows' too.
            mb = batch.rows(piece if with_aux else rows_in_the_loss(piece, batch.completion_mask))
            weight = mb.completion_mask.sum().item() / max(1, shape.num_tokens)
            fwd = self._policy_forward(mb, with_entropy=True, with_aux_loss=with_aux)
            logps, entropy = fwd.logps, fwd.entropy
            tis = None
            if mb.rollout_logps is not None:
                old = mb.old_logps if mb.old_logps is not None else logps.detach()
                tis = tis_weights(old, mb.rollout_logps, mb.completion_mask, a.vllm_importance_sampling_mode,
                                  a.vllm_importance_sampling_cap)
                _add(sums, "tis", tis.expand_as(mb.completion_mask), mb.completion_mask, weight)
                _add(sums, "sampling/logprob_diff/mean", (old - mb.rollout_logps).abs(), mb.completion_mask, weight)
                active = tis.expand_as(mb.completion_mask)[mb.completion_mask.bool()]
                if active.numel():
                    sums["tis_min"] = min(sums.get("tis_min", math.inf), active.min().item())
                    sums["tis_max"] = max(sums.get("tis_max", -math.inf), active.max().item())
            out = per_token_loss(logps, mb.old_logps if self.needs_old else None, mb.advantages,
                                 mb.completion_mask, epsilon_low=a.epsilon, epsilon_high=a.epsilon_high,
                                 delta=a.delta, importance_sampling_level=a.importance_sampling_level,
                                 ref_logps=mb.ref_logps, beta=a.beta, tis=tis)
            loss = aggregate(out.loss, mb.completion_mask, a.loss_type, shape, micro_batch_tokens)
            if with_aux:
                aux_share = router_aux_share(self._input_tokens(piece) if split else 1, micro_batch_inputs, shape)
                loss = loss + self.aux_coef * aux_share * fwd.aux_loss
                sums["aux_loss"] = sums.get("aux_loss", 0.0) + fwd.aux_loss.item() * aux_share
            self.backward(loss)
            total += loss.item()
            share = clip_metric_share(out.log_weights, mb.completion_mask, shape)
            for k, v in clip_metrics(out.log_weights, mb.advantages, mb.completion_mask, a.epsilon,
                                     a.epsilon_high).items():
                sums[k] = sums.get(k, 0.0) + v * share
            _add(sums, "entropy", entropy, mb.completion_mask, weight)
            if out.kl is not None:
                _add(sums, "kl", out.kl, mb.completion_mask, weight)
        return total

    def _input_tokens(self, rows: torch.Tensor) -> int:
        """Unpadded prompt + completion tokens of some rows of the round (what the router sees)."""
        return int(self.batch.prompt_mask[rows].sum() + self.batch.completion_mask[rows].sum())

    # ------------------------------------------------------------------ loop

    def train(self, resume_from_checkpoint: str | None = None, force: bool = False) -> dict:
        with self.open_session(resume_from_checkpoint, force) as run:
            self.write_memory_estimate(run)
            while run.wants_more():
                self.run_round(run)
        return run.result()

    def run_round(self, run: RunSession) -> None:
        """Make the round (unless a resumed checkpoint is inside one), then its optimizer steps."""
        a = self.args
        if self.batch is None:
            self.batch, self.round_metrics, samples = self.make_round(self.round_index,
                                                                      lambda p: run.note(p.describe()))
            if a.log_completions and self.global_step % max(1, a.completions_log_steps) == 0:
                run.log_samples(self.global_step + 1, samples)  # the step these completions train
        micro = self.micro_batches(self.batch, self.round_index)
        schedule = [m for _ in range(a.num_iterations) for m in micro]
        # A step is the next GA × world-size micro-batches of the round's (global) schedule; this rank
        # trains on its GA of them, so the step is the same whatever the world size.
        ga, ctx = a.gradient_accumulation_steps, self.dist
        per_step = ga * ctx.world_size
        # A stop requested during the rollout still gets this round's first step (and its checkpoint).
        while self.step_in_round < self.steps_per_round and run.steps_left():
            first = self.step_in_round * per_step
            mine = rank_micro_batches(schedule[first:first + per_step], ga, ctx.world_size, ctx.rank)
            metrics = {**self.round_metrics, **self.train_step(mine),
                       **reduce_metrics({"memory/peak_gib": peak_memory_gib(self.device)}, ctx,
                                        {"memory/peak_gib": "max"})}
            self.step_in_round += 1
            run.end_step(self.global_step, metrics, f"reward {metrics['reward']:.3f}  loss {metrics['loss']:+.4f}")
            if run.stop_requested:
                break
        if self.step_in_round == self.steps_per_round:
            self.round_index, self.step_in_round, self.batch = self.round_index + 1, 0, None

    def write_memory_estimate(self, run: RunSession) -> None:
        self.memory_estimate = estimate_memory(self.model, self.args, max(len(p) for p in self.prompt_ids),
                                               self.engine.memory_plan())
        log.info(format_estimate(self.memory_estimate))
        run.write_json("memory_estimate.json", self.memory_estimate)

    # ------------------------------------------------------------------ checkpoints (the session calls these)

    def run_details(self) -> dict:
        return run_details(self.model, self.engine)  # the rollout backend too

    def checkpoint_state(self) -> tuple[dict, dict]:
        """Where the loop is; a checkpoint inside a round carries the round's tensors, so resuming
        replays exactly what the uninterrupted run would have."""
        if self.step_in_round == self.steps_per_round or self.batch is None:
            return {"round_index": self.round_index + (self.batch is not None), "step_in_round": 0,
                    "draw_index": self.draw_index}, {}
        return ({"round_index": self.round_index, "step_in_round": self.step_in_round, "draw_index": self.draw_index},
                {"round.pt": {"batch": self.batch.to_state(), "metrics": self.round_metrics}})

    def restore_checkpoint(self, state: dict, path) -> None:
        self.round_index, self.step_in_round = state["round_index"], state["step_in_round"]
        # Checkpoints from before dynamic sampling drew one generation batch per round.
        self.draw_index = state.get("draw_index", self.round_index + (1 if self.step_in_round else 0))
        if self.step_in_round:
            saved = torch.load(path / "round.pt", weights_only=False)
            self.batch = RoundBatch.from_state(saved["batch"], self.device)
            self.round_metrics = saved["metrics"]


def step_metrics(sums: dict) -> dict:
    """The update's sums with the importance-sampling ratio's mean / min / max under TRL's names."""
    metrics = {k: v for k, v in sums.items() if not k.startswith("tis")}
    for key, name in (("tis", "mean"), ("tis_min", "min"), ("tis_max", "max")):
        if key in sums:
            metrics[f"sampling/importance_sampling_ratio/{name}"] = sums[key]
    return metrics


def _f(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _add(sums: dict, key: str, values: torch.Tensor, mask: torch.Tensor, weight: float = 1.0) -> None:
    mean = (values * mask).sum() / mask.sum().clamp(min=1)
    sums[key] = sums.get(key, 0.0) + mean.item() * weight


def rows_in_the_loss(index: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """The rows of `index` whose loss mask is not all zero (at least one row, so that every piece
    still runs a backward, as distributed ranks expect). A row masked out entirely (a truncated
    completion under mask_truncated_completions) adds 0 to the loss, its gradient and every metric,
    while the step's counts, taken before, still include it: leaving it out of the forward changes
    nothing but the time (each truncated completion's forward and backward under
    mask_truncated_completions). One host sync per piece; the boolean selection only when rows drop."""
    keep = loss_mask[index].any(-1)
    kept = int(keep.sum())
    if kept == keep.numel():
        return index
    return index[keep] if kept else index[:1]
