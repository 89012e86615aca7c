"""SFT warm-up: teach the answer format before RL, training on the assistant's tokens only.

Examples are dicts with `prompt` (messages or text) and `completion` (the assistant's reply).
Optimizer, schedule, run directory and saving are shared with the GRPO trainer.
"""

from __future__ import annotations

import math
import time

import torch

from rlvr.config import SFTConfig
from rlvr.data.templates import IGNORE_INDEX, encode_sft_example
from rlvr.errors import RlvrError
from rlvr.models.forward import labelled_logprobs
from rlvr.train.checkpoint import save_trainable
from rlvr.train.optim import build_optimizer, build_scheduler, trainable_parameters
from rlvr.train.run_dir import JsonlWriter, Progress, prepare_run_dir


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
        if a.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        self.optimizer = build_optimizer(trainable_parameters(model), a.optim, a.learning_rate,
                                         (a.adam_beta1, a.adam_beta2), a.adam_epsilon, a.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, a.lr_scheduler_type, a.warmup_ratio, self.total_steps)

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
                    loss.backward()
                    total += loss.item()
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), a.max_grad_norm)
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                last = {"step": step, "loss": total, "grad_norm": grad_norm.item(), "learning_rate": lr,
                        "tokens": n_tokens, "time/update": time.perf_counter() - t0}
                if step % a.logging_steps == 0 or step == self.total_steps:
                    metrics_log.write(last)
                progress.update(1, f"loss {total:.4f}")
        finally:
            progress.close()
            metrics_log.close()
        save_trainable(self.model, run_dir / "final")
        return {**last, "run_dir": str(run_dir)}
