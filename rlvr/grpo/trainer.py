"""The GRPO loop, readable top to bottom: rollout → rewards → advantages → update, round after round.

Batch structure follows semantics §1: a round is generation_batch_size completions (G per prompt),
split into steps_per_generation micro-batches and replayed num_iterations times; the optimizer
steps every gradient_accumulation_steps micro-batches. The pure math lives in advantages.py and
objective.py; this file only moves tensors between them.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rlvr.config import GRPOConfig
from rlvr.data.templates import encode_prompt
from rlvr.errors import RlvrError
from rlvr.grpo.advantages import group_advantages, normalize_scale_rewards, reward_stats
from rlvr.grpo.memory import estimate_memory, format_estimate
from rlvr.grpo.objective import StepShape, aggregate, clip_metrics, per_token_loss, tis_weights
from rlvr.grpo.round import RoundBatch
from rlvr.models.checkpointing import enable_checkpointing
from rlvr.models.forward import completion_logprobs
from rlvr.rewards.registry import resolve_rewards
from rlvr.rewards.scoring import score_completions
from rlvr.rollout import SamplingParams, make_engine
from rlvr.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from rlvr.train.optim import build_optimizer, build_scheduler, grad_scaler, trainable_parameters
from rlvr.train.run_dir import JsonlWriter, Progress, RunStatus, model_name, prepare_run_dir
from rlvr.train.trackers import open_tracker

log = logging.getLogger("rlvr")


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _as_records(dataset) -> list[dict]:
    if isinstance(dataset, list):
        return dataset
    return [dict(row) for row in dataset]


class GRPOTrainer:
    """GRPO/DAPO/Dr. GRPO/GSPO on a (peft or plain) causal LM, with TRL's config names."""

    def __init__(self, model, tokenizer, reward_funcs, train_dataset, args: GRPOConfig | None = None,
                 engine=None, reasoning_tag: str = "reasoning", answer_tag: str = "answer",
                 show_progress: bool | None = None):
        self.args = args or GRPOConfig()
        self.args.validate()
        a = self.args
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.reward_funcs = resolve_rewards(list(reward_funcs), reasoning_tag=reasoning_tag, answer_tag=answer_tag)
        if a.reward_weights is not None and len(a.reward_weights) != len(self.reward_funcs):
            raise RlvrError(f"train.reward_weights has {len(a.reward_weights)} values for "
                            f"{len(self.reward_funcs)} reward functions; give one weight per function")
        self.examples = _as_records(train_dataset)
        if not self.examples:
            raise RlvrError("the training dataset is empty; check data.dataset and data.split")
        self.prompt_ids = [self._encode(ex["prompt"]) for ex in self.examples]
        self.engine = engine or make_engine(a.rollout_backend, model, tokenizer, merge_lora=a.rollout_merge_lora,
                                            rollout_dtype=a.rollout_dtype)
        self.scale_rewards = normalize_scale_rewards(a.scale_rewards)
        self.show_progress = show_progress

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
        # ℓ^old is only needed when the policy can change between sampling and use (semantics §1).
        self.needs_old = self.spg > a.gradient_accumulation_steps or a.num_iterations > 1
        self.is_peft = hasattr(model, "disable_adapter")
        if a.beta > 0 and not self.is_peft:
            raise RlvrError("train.beta > 0 needs a reference policy: use LoRA (the adapter-disabled model is "
                            "the reference) or set beta: 0")
        self.offloader = enable_checkpointing(model, a.gradient_checkpointing)
        self.optimizer = build_optimizer(trainable_parameters(model), a.optim, a.learning_rate,
                                         (a.adam_beta1, a.adam_beta2), a.adam_epsilon, a.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, a.lr_scheduler_type, a.warmup_ratio, self.total_steps)
        self.scaler = grad_scaler(model, self.device)
        self.global_step = 0
        self.nonfinite_steps = self.nonfinite_in_a_row = self.amp_overflow_steps = 0
        self._stop_requested = False

    # ------------------------------------------------------------------ data

    def _encode(self, prompt) -> list[int]:
        ids = encode_prompt(self.tokenizer, prompt)
        limit = self.args.max_prompt_length
        # Keep the end of a long prompt: the question and the generation prompt are there.
        return ids[-limit:] if limit else ids

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

    def make_round(self, round_index: int) -> tuple[RoundBatch, dict, list[dict]]:
        """Rollout, rewards, advantages (and ℓ^old / ℓ^ref when needed) for one round."""
        a, G = self.args, self.args.num_generations
        idx = self.round_indices(round_index)
        t0 = time.perf_counter()
        rollout = self.generate([self.prompt_ids[i] for i in idx], seed=a.seed * 1_000_003 + round_index)
        t1 = time.perf_counter()
        texts = self.tokenizer.batch_decode(rollout.completion_ids * rollout.completion_mask
                                            + self.tokenizer.pad_token_id * (1 - rollout.completion_mask),
                                            skip_special_tokens=True)
        rows = [self.examples[i] for i in idx for _ in range(G)]
        prompts = [r["prompt"] for r in rows]
        completions = [[{"role": "assistant", "content": t}] if isinstance(p, list) else t
                       for p, t in zip(prompts, texts)]
        ids = [r[m.bool()].tolist() for r, m in zip(rollout.completion_ids, rollout.completion_mask)]
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        state = {"step": self.global_step, "epoch": round_index / self.rounds_per_epoch}
        columns["trainer_state"] = [state] * len(rows)
        scores = score_completions(self.reward_funcs, prompts, completions, ids, columns, a.reward_weights,
                                   a.reward_errors, self.global_step)
        advantages = group_advantages(scores.total, G, self.scale_rewards)
        t2 = time.perf_counter()

        loss_mask = rollout.completion_mask.clone()
        if a.mask_truncated_completions:
            loss_mask *= rollout.is_eos.unsqueeze(1).long()
        batch = RoundBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, loss_mask,
                           advantages.to(self.device),
                           rollout_logps=rollout.logprobs if a.vllm_importance_sampling_correction else None)
        if self.needs_old or batch.rollout_logps is not None:
            batch.old_logps = self._logps_no_grad(batch, adapters=True)
        if a.beta > 0:
            batch.ref_logps = self._logps_no_grad(batch, adapters=False)

        lengths = rollout.completion_mask.sum(1).float()
        metrics = {**reward_stats(scores.total, G), **scores.metrics,
                   "completions/mean_length": lengths.mean().item(),
                   "completions/min_length": lengths.min().item(),
                   "completions/max_length": lengths.max().item(),
                   "completions/clipped_ratio": (~rollout.is_eos).float().mean().item(),
                   "time/rollout": t1 - t0, "time/score": t2 - t1,
                   "tokens_per_second": lengths.sum().item() / max(t1 - t0, 1e-9)}
        samples = [{"prompt": prompts[i] if isinstance(prompts[i], str) else prompts[i][-1]["content"],
                    "group": i // G, "length": int(lengths[i]), "completion": texts[i], "reward": _f(scores.total[i]),
                    "rewards": {n: _f(scores.per_function[i, k]) for k, n in enumerate(scores.names)},
                    "advantage": _f(advantages[i])} for i in range(min(len(texts), 2 * G))]
        return batch, metrics, samples

    def generate(self, prompt_ids: list[list[int]], seed: int):
        """The round's rollout; out of memory, retried once with half the engine's sub-batch."""
        G, params = self.args.num_generations, self.sampling_params()
        try:
            return self.engine.generate(prompt_ids, G, params, seed=seed)
        except torch.OutOfMemoryError:
            _free_accelerator_memory()
            rows = min(getattr(self.engine, "batch_size", None) or len(prompt_ids) * G, len(prompt_ids) * G)
            if not hasattr(self.engine, "batch_size") or rows < 2:
                raise RlvrError(f"step {self.global_step + 1}: out of memory in the rollout; lower "
                                "per_device_train_batch_size, num_generations or max_completion_length") from None
            self.engine.batch_size = rows // 2
            log.warning("step %d: out of memory in the rollout; retrying with sub-batches of %d rows",
                        self.global_step + 1, self.engine.batch_size)
            try:
                return self.engine.generate(prompt_ids, G, params, seed=seed)
            except torch.OutOfMemoryError:
                raise RlvrError(
                    f"step {self.global_step + 1}: out of memory in the rollout even with sub-batches of "
                    f"{self.engine.batch_size} rows (peak {peak_memory_gib(self.device):.1f} GiB); lower "
                    "max_completion_length or num_generations, or set rollout_merge_lora: false") from None

    @torch.no_grad()
    def _logps_no_grad(self, batch: RoundBatch, adapters: bool) -> torch.Tensor:
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=self.device)
        bs = self.args.per_device_train_batch_size
        for s in range(0, out.shape[0], bs):
            idx = torch.arange(s, min(s + bs, out.shape[0]), device=self.device)
            for piece in self.token_budget_pieces(batch, idx):
                mb = batch.rows(piece)
                if adapters:
                    lp, _ = self._policy_logps(mb, with_entropy=False)
                else:
                    with self.model.disable_adapter():
                        lp, _ = self._policy_logps(mb, with_entropy=False)
                out[piece, :lp.shape[1]] = lp
        return out

    def _policy_logps(self, mb: RoundBatch, with_entropy: bool):
        # The loss mask doubles as the completion's attention mask: a row it masks out entirely
        # needs no log-probs, and every other row's mask is its real one.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            return completion_logprobs(self.model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids,
                                       mb.completion_mask, self.args.temperature, with_entropy,
                                       self.args.logprob_chunk_elements)

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

        Rows are sorted by length first, so each piece pads to similar lengths; a row longer than the
        budget is a piece of its own. Without a budget, the micro-batch as it is.
        """
        budget = self.args.micro_batch_token_budget
        if budget is None:
            return [index]
        lengths = batch.prompt_mask[index].sum(-1) + batch.completion_mask[index].sum(-1)
        order = index[torch.argsort(lengths, descending=True, stable=True)]
        lengths = lengths.sort(descending=True, stable=True).values.tolist()
        pieces, start = [], 0
        for i in range(1, len(lengths) + 1):
            # Sorted descending, so the piece's padded length is its first row's length.
            if i == len(lengths) or (i - start + 1) * lengths[start] > budget:
                pieces.append(order[start:i])
                start = i
        return pieces

    def optimizer_step(self, batch: RoundBatch, micro: list[torch.Tensor]) -> dict:
        """One optimizer step; out of memory, it is retried once with every micro-batch halved
        (the grpo, dr_grpo and dapo losses are the same however a step is split; bnpo's is not)."""
        try:
            return self._optimizer_step(batch, micro)
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            _free_accelerator_memory()
            halves = [h for index in micro for h in index.chunk(2) if h.numel()]
            log.warning("step %d: out of memory in the update; retrying with micro-batches of %d",
                        self.global_step + 1, max(h.numel() for h in halves))
            try:
                return self._optimizer_step(batch, halves)
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                raise RlvrError(
                    f"step {self.global_step + 1}: out of memory in the update even with half-size micro-batches "
                    f"(peak {peak_memory_gib(self.device):.1f} GiB); lower per_device_train_batch_size or "
                    "max_completion_length, set gradient_checkpointing: true, or load_in_4bit: true") from None

    def _optimizer_step(self, batch: RoundBatch, micro: list[torch.Tensor]) -> dict:
        a = self.args
        masks = [batch.completion_mask[i] for i in micro]
        shape = StepShape(num_sequences=sum(m.shape[0] for m in masks), num_tokens=int(sum(m.sum() for m in masks)),
                          num_micro_batches=len(micro), max_completion_length=a.max_completion_length)
        sums: dict[str, float] = {}
        # bnpo needs a split micro-batch's whole token count; without a budget nothing is split
        # (and the count would cost a host sync per micro-batch for nothing).
        split = a.micro_batch_token_budget is not None
        pieces = [(piece, int(batch.completion_mask[index].sum()) if split else None) for index in micro
                  for piece in self.token_budget_pieces(batch, index)]
        for index, micro_batch_tokens in pieces:
            mb = batch.rows(index)
            weight = mb.completion_mask.sum().item() / max(1, shape.num_tokens)
            logps, entropy = self._policy_logps(mb, with_entropy=True)
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
            self._backward(loss)
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in clip_metrics(out.log_weights, mb.advantages, mb.completion_mask, a.epsilon,
                                     a.epsilon_high).items():
                sums[k] = sums.get(k, 0.0) + v * weight
            _add(sums, "entropy", entropy, mb.completion_mask, weight)
            if out.kl is not None:
                _add(sums, "kl", out.kl, mb.completion_mask, weight)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), a.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        finite = bool(torch.isfinite(grad_norm)) and math.isfinite(sums["loss"])
        overflow = self.scaler is not None and not finite and math.isfinite(sums["loss"])
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.nonfinite_in_a_row = 0
        elif overflow and self.scaler.get_scale() >= 1.0:
            # fp16 gradients overflowed at this loss scale: the scaler lowers it and the step is
            # skipped, as every fp16 trainer does; not a fault unless the scale collapses.
            self.amp_overflow_steps += 1
            log.info("step %d: fp16 gradient overflow at loss scale %g; step skipped, scale lowered",
                     self.global_step + 1, self.scaler.get_scale())
        else:
            # A NaN/inf loss or gradient would poison the weights and the optimizer state: skip it.
            self.nonfinite_steps += 1
            self.nonfinite_in_a_row += 1
            log.warning("step %d: non-finite loss or gradient norm, update skipped (%d in a row)",
                        self.global_step + 1, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= a.max_nonfinite_steps:
                raise RlvrError(
                    f"step {self.global_step + 1}: {self.nonfinite_in_a_row} optimizer steps in a row had a "
                    "non-finite loss or gradient; lower learning_rate, check the reward functions' values, "
                    "or use dtype float32 / bf16 instead of float16")
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        metrics = {k: v for k, v in sums.items() if not k.startswith("tis")}
        for key, name in (("tis", "mean"), ("tis_min", "min"), ("tis_max", "max")):
            if key in sums:
                metrics[f"sampling/importance_sampling_ratio/{name}"] = sums[key]
        metrics.update(grad_norm=grad_norm.item(), learning_rate=lr, skipped_steps=self.nonfinite_steps)
        if self.scaler is not None:
            metrics.update({"amp/loss_scale": self.scaler.get_scale(), "amp/overflow_steps": self.amp_overflow_steps})
        return metrics

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    # ------------------------------------------------------------------ loop

    def train(self, resume_from_checkpoint: str | None = None) -> dict:
        a = self.args
        run_dir = prepare_run_dir(a.output_dir)
        # from_pretrained leaves a model in eval mode, where gradient checkpointing is off.
        self.model.train()
        round_index, step_in_round, batch = 0, 0, None
        resume = resume_from_checkpoint or a.resume_from_checkpoint
        if resume:
            path = resolve_checkpoint(run_dir, resume)
            state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
            self.global_step = state["global_step"]
            self.nonfinite_steps = state.get("nonfinite_steps", 0)
            if self.scaler is not None and "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
            round_index, step_in_round = state["round_index"], state["step_in_round"]
            if step_in_round:
                saved = torch.load(path / "round.pt", weights_only=False)
                batch = RoundBatch.from_state(saved["batch"], self.device)
                round_metrics = saved["metrics"]
            log.info("resumed from %s at step %d", path, self.global_step)
        self.memory_estimate = estimate_memory(
            self.model, a, max(len(p) for p in self.prompt_ids),
            merged_lora_copy=getattr(self.engine, "merge_scope", None) or False)
        log.info(format_estimate(self.memory_estimate))
        (run_dir / "memory_estimate.json").write_text(json.dumps(self.memory_estimate, indent=1))
        tracker = open_tracker(a.report_to, run_dir, asdict(a))
        status = RunStatus(run_dir, "grpo", asdict(a), model_name(self.model), self.total_steps,
                           resumed_from_step=self.global_step or None)
        metrics_log = JsonlWriter(run_dir / "metrics.jsonl")
        samples_log = JsonlWriter(run_dir / "samples.jsonl")
        progress = Progress(self.total_steps, "GRPO", self.show_progress, initial=self.global_step)
        previous_handlers = self._catch_stop_signals()
        last: dict = {}
        try:
            while self.global_step < self.total_steps and not self._stop_requested:
                if batch is None:
                    batch, round_metrics, samples = self.make_round(round_index)
                    if a.log_completions and (self.global_step % max(1, a.completions_log_steps) == 0):
                        for s in samples:
                            samples_log.write({"step": self.global_step, **s})
                micro = self.micro_batches(batch, round_index)
                schedule = [m for _ in range(a.num_iterations) for m in micro]
                ga = a.gradient_accumulation_steps
                while step_in_round < self.steps_per_round and self.global_step < self.total_steps:
                    t0 = time.perf_counter()
                    step_metrics = self.optimizer_step(batch, schedule[step_in_round * ga:(step_in_round + 1) * ga])
                    self.global_step += 1
                    step_in_round += 1
                    last = {"step": self.global_step, **round_metrics, **step_metrics,
                            "time/update": time.perf_counter() - t0,
                            "memory/peak_gib": peak_memory_gib(self.device)}
                    if self.global_step % a.logging_steps == 0 or self.global_step == self.total_steps:
                        metrics_log.write(last)
                        tracker.log(last, self.global_step)
                    progress.update(1, f"reward {last['reward']:.3f}  loss {last['loss']:+.4f}")
                    round_done = step_in_round == self.steps_per_round
                    if self._stop_requested or self.global_step % a.save_steps == 0 \
                            or self.global_step == self.total_steps:
                        self._save(run_dir, round_index + round_done, 0 if round_done else step_in_round,
                                   None if round_done else (batch, round_metrics))
                    if self._stop_requested:
                        break
                if step_in_round == self.steps_per_round:
                    round_index, step_in_round, batch = round_index + 1, 0, None
            save_final(self.model, run_dir)
        except BaseException as e:
            status.end_on_exception(e, self.global_step)
            raise
        finally:
            progress.close()
            metrics_log.close()
            samples_log.close()
            tracker.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        status.end("interrupted" if self._stop_requested else "finished", self.global_step)
        return {**last, "interrupted": self._stop_requested, "run_dir": str(run_dir)}

    def _catch_stop_signals(self) -> dict:
        """Ctrl-C and SIGTERM finish the current step and save, unless someone else handles them."""
        previous = {}
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            try:
                if signal.getsignal(sig) is default:
                    previous[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return previous

    def _request_stop(self, *_):
        log.warning("interrupt: finishing this step, saving a checkpoint, then stopping")
        self._stop_requested = True

    def _save(self, run_dir: Path, round_index: int, step_in_round: int, partial) -> None:
        state = {"global_step": self.global_step, "round_index": round_index, "step_in_round": step_in_round,
                 "nonfinite_steps": self.nonfinite_steps, "config": asdict(self.args)}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        # A checkpoint inside a round carries the round's tensors, so resuming replays it exactly.
        extra = None if partial is None else {"round.pt": {"batch": partial[0].to_state(), "metrics": partial[1]}}
        save_checkpoint(run_dir, self.global_step, self.model, self.optimizer, self.scheduler, state,
                        keep=self.args.save_total_limit, extra=extra)


def save_final(model, run_dir: Path) -> None:
    """The trained adapter (peft format) or full model in run_dir/final."""
    from rlvr.train.checkpoint import save_trainable

    save_trainable(model, run_dir / "final")


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _f(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _add(sums: dict, key: str, values: torch.Tensor, mask: torch.Tensor, weight: float = 1.0) -> None:
    mean = (values * mask).sum() / mask.sum().clamp(min=1)
    sums[key] = sums.get(key, 0.0) + mean.item() * weight
