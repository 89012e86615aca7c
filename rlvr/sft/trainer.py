"""SFT warm-up: teach the answer format before RL, training on the assistant's tokens only.

Examples are dicts with `prompt` (messages or text) and `completion` (the assistant's reply).
Optimizer, schedule, run directory and saving are shared with the GRPO trainer.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch

from rlvr.config import SFTConfig
from rlvr.data.templates import IGNORE_INDEX, encode_sft_example
from rlvr.errors import RlvrError
from rlvr.models.checkpointing import enable_checkpointing
from rlvr.models.forward import labelled_logprobs
from rlvr.train.checkpoint import save_trainable
from rlvr.train.optim import build_optimizer, build_scheduler, grad_scaler, trainable_parameters
from rlvr.train.run_dir import JsonlWriter, Progress, RunStatus, model_name, prepare_run_dir, run_details
from rlvr.train.trackers import open_tracker


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad (input_ids, labels) pairs: (input_ids, attention_mask, labels), each [B, T]."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, mask, labels


class SFTTrainer:
    def __init__(self, model, tokenizer, train_dataset, args: SFTConfig | None = None,
                 show_progress: bool | None = None):
        self.args = args or SFTConfig()
        self.args.validate()
        a = self.args
        self.model, self.tokenizer, self.show_progress = model, tokenizer, show_progress
        self.device = next(model.parameters()).device
        records = list(train_dataset)
        if not records:
            raise RlvrError("the SFT dataset is empty; check data.dataset and data.split")
        if "completion" not in records[0]:
            raise RlvrError(f"SFT examples need a 'completion' column (the assistant's reply); found "
                            f"{sorted(records[0])}")
        encoded = [encode_sft_example(tokenizer, r["prompt"], r["completion"], a.max_length) for r in records]
        # A prompt that fills max_length leaves nothing to learn from.
        self.rows = [e for e in encoded if any(t != IGNORE_INDEX for t in e[1])]
        if not self.rows:
            raise RlvrError(f"every SFT example's prompt fills train.max_length ({a.max_length}); raise it")
        micro_per_epoch = math.ceil(len(self.rows) / a.per_device_train_batch_size)
        steps_per_epoch = max(1, micro_per_epoch // a.gradient_accumulation_steps)
        self.total_steps = a.max_steps if a.max_steps > 0 else max(1, math.floor(a.num_train_epochs * steps_per_epoch))
        self.offloader = enable_checkpointing(model, a.gradient_checkpointing)
        self.optimizer = build_optimizer(trainable_parameters(model), a.optim, a.learning_rate,
                                         (a.adam_beta1, a.adam_beta2), a.adam_epsilon, a.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, a.lr_scheduler_type, a.warmup_ratio, self.total_steps)
        self.scaler = grad_scaler(model, self.device)

    def batches(self):
        """Micro-batches forever, reshuffled (seeded) each epoch."""
        a, epoch = self.args, 0
        while True:
            g = torch.Generator().manual_seed(a.seed + epoch)
            order = torch.randperm(len(self.rows), generator=g).tolist()
            for s in range(0, len(order), a.per_device_train_batch_size):
                yield pad_batch([self.rows[i] for i in order[s:s + a.per_device_train_batch_size]],
                                self.tokenizer.pad_token_id)
            epoch += 1

    def train(self) -> dict:
        a = self.args
        run_dir = prepare_run_dir(a.output_dir)
        tracker = open_tracker(a.report_to, run_dir, asdict(a))
        status = RunStatus(run_dir, "sft", asdict(a), model_name(self.model), details=run_details(self.model),
                           total_steps=self.total_steps)
        metrics_log = JsonlWriter(run_dir / "metrics.jsonl")
        progress = Progress(self.total_steps, "SFT", self.show_progress)
        self.model.train()
        batches = self.batches()
        last: dict = {}
        try:
            for step in range(1, self.total_steps + 1):
                t0 = time.perf_counter()
                micro = [next(batches) for _ in range(a.gradient_accumulation_steps)]
                n_tokens = sum(int((labels[:, 1:] != IGNORE_INDEX).sum()) for _, _, labels in micro)
                total = 0.0
                for ids, mask, labels in micro:
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=a.bf16):
                        logps = labelled_logprobs(self.model, ids.to(self.device), mask.to(self.device),
                                                  labels.to(self.device))
                    # Token-mean over the whole optimizer step, however it is split.
                    loss = -logps.sum() / max(1, n_tokens)
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                    total += loss.item()
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), a.max_grad_norm)
                lr = self.scheduler.get_last_lr()[0]
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                last = {"step": step, "loss": total, "grad_norm": grad_norm.item(), "learning_rate": lr,
                        "tokens": n_tokens, "time/update": time.perf_counter() - t0}
                if step % a.logging_steps == 0 or step == self.total_steps:
                    metrics_log.write(last)
                    tracker.log(last, step)
                progress.update(1, f"loss {total:.4f}")
            save_trainable(self.model, run_dir / "final")
        except BaseException as e:
            status.end_on_exception(e, last.get("step", 0))
            raise
        finally:
            progress.close()
            metrics_log.close()
            tracker.close()
        status.end("finished", last.get("step", 0))
        return {**last, "run_dir": str(run_dir)}
