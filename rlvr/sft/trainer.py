"""SFT warm-up: teach the answer format before RL, training on the assistant's tokens only.

Examples are dicts with `prompt` (messages or text) and `completion` (the assistant's reply). The
optimizer step, run directory, checkpoints, --resume and signals are the trainer core's
(rlvr/train/core.py); this file builds the batches and the loss of one micro-batch.
"""

from __future__ import annotations

import math

import torch

from rlvr.config import SFTConfig
from rlvr.data.templates import IGNORE_INDEX, encode_sft_example, pad_batch
from rlvr.distributed.context import env_world_size
from rlvr.distributed.sharding import rank_micro_batches
from rlvr.errors import RlvrError
from rlvr.models.forward import labelled_logprobs
from rlvr.train.core import TrainerCore
from rlvr.train.update import StepCounts


class SFTTrainer(TrainerCore):
    kind, label = "sft", "SFT"
    metric_ops = {"tokens": "max"}  # already the whole step's count on every rank

    def __init__(self, model, tokenizer, train_dataset, args: SFTConfig | None = None,
                 show_progress: bool | None = None, evaluator=None):
        args = args or SFTConfig()
        args.validate()
        self.tokenizer = tokenizer
        records = list(train_dataset)
        if not records:
            raise RlvrError("the SFT dataset is empty; check data.dataset and data.split")
        if "completion" not in records[0]:
            raise RlvrError(f"SFT examples need a 'completion' column (the assistant's reply); found "
                            f"{sorted(records[0])}")
        encoded = [encode_sft_example(tokenizer, r["prompt"], r["completion"], args.max_length) for r in records]
        # A prompt that fills max_length leaves nothing to learn from.
        self.rows = [e for e in encoded if any(t != IGNORE_INDEX for t in e[1])]
        if not self.rows:
            raise RlvrError(f"every SFT example's prompt fills train.max_length ({args.max_length}); raise it")
        micro_per_epoch = math.ceil(len(self.rows) / args.per_device_train_batch_size)
        # A step takes gradient_accumulation_steps micro-batches on each of the job's ranks.
        steps_per_epoch = max(1, micro_per_epoch // (args.gradient_accumulation_steps * env_world_size()))
        total = args.max_steps if args.max_steps > 0 else max(1, math.floor(args.num_train_epochs * steps_per_epoch))
        super().__init__(model, args, total, show_progress, evaluator=evaluator, steps_per_epoch=steps_per_epoch)

    def batches(self, skip: int = 0):
        """Micro-batches forever, reshuffled (seeded) each epoch, the first `skip` left out (a resume)."""
        a, epoch, seen = self.args, 0, 0
        while True:
            g = torch.Generator().manual_seed(a.seed + epoch)
            order = torch.randperm(len(self.rows), generator=g).tolist()
            for s in range(0, len(order), a.per_device_train_batch_size):
                seen += 1
                if seen > skip:
                    yield pad_batch([self.rows[i] for i in order[s:s + a.per_device_train_batch_size]],
                                    self.tokenizer.pad_token_id)
            epoch += 1

    def train(self, resume_from_checkpoint: str | None = None, force: bool = False) -> dict:
        ga, ctx = self.args.gradient_accumulation_steps, self.dist
        per_step = ga * ctx.world_size  # the step's micro-batches over all ranks; this rank trains on its GA
        with self.open_session(resume_from_checkpoint, force) as run:
            batches = self.batches(skip=self.global_step * per_step)
            while run.wants_more():
                step = [next(batches) for _ in range(per_step)]
                metrics = self.train_step(rank_micro_batches(step, ga, ctx.world_size, ctx.rank))
                run.end_step(self.global_step, metrics, f"loss {metrics['loss']:.4f}")
        return run.result()

    # ------------------------------------------------------------------ one micro-batch

    def count(self, micro_batch) -> tuple[int, int]:
        ids, _, labels = micro_batch
        return ids.shape[0], int((labels[:, 1:] != IGNORE_INDEX).sum())

    def forward_backward(self, micro_batch, counts: StepCounts, sums: dict) -> float:
        ids, mask, labels = (t.to(self.device) for t in micro_batch)
        with self.autocast():
            logps = labelled_logprobs(self.model, ids, mask, labels, self.args.logprob_chunk_elements)
        # Token-mean over the whole optimizer step, however it is split.
        loss = -logps.sum() / max(1, counts.num_tokens)
        self.backward(loss)
        sums["tokens"] = counts.num_tokens
        return loss.item()

    def halve(self, micro_batch) -> list:
        ids = micro_batch[0]
        if ids.shape[0] < 2:
            return [micro_batch]
        return list(zip(*(t.chunk(2) for t in micro_batch)))
