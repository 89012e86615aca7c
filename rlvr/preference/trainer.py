"""The preference trainers: DPO, CPO/SimPO and ORPO on pairs, KTO on unpaired examples.

Built on the trainer core (rlvr/train/core.py: the optimizer step with its fault handling, the run
session with run.json, metrics, checkpoints, signals and --resume); this file only says how the
steps' batches are drawn and what one micro-batch's loss is.

    reference pass         once, before step 1 (DPO, KTO): Σ log π_ref of every completion, no grad,
                           length-sorted; saved with every checkpoint, so a resumed run uses the same
    step s                 the next per_device_train_batch_size × gradient_accumulation_steps pairs of
                           a seeded permutation per epoch, length-sorted into micro-batches
      micro-batch          [chosen; rejected] in one forward → Σ log π per sequence (chunked lm_head)
                           → objective (rlvr/preference/objectives.py) → preference_loss → backward
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from rlvr.errors import RlvrError
from rlvr.preference.batches import (
    EncodedExample,
    EncodedPair,
    completion_tokens,
    encode_pairs,
    encode_unpaired,
    length_sorted_micro_batches,
)
from rlvr.preference.config import PREFERENCE_CONFIGS, DPOConfig, KTOConfig
from rlvr.preference.logprobs import reference_logprobs, rows_logprobs
from rlvr.preference.losses import PreferenceStats, kto_kl, kto_uses_kl, preference_loss
from rlvr.preference.objectives import NEEDS_REFERENCE, PAIR_OBJECTIVES, PairLogps, kto_terms
from rlvr.train.core import TrainerCore
from rlvr.train.update import StepCounts

REFERENCE_FILE = "reference_logps.pt"


def _method_of(args) -> str:
    for method, cls in PREFERENCE_CONFIGS.items():
        if type(args) is cls:
            return method
    raise RlvrError(f"a preference trainer needs a DPOConfig, CPOConfig, ORPOConfig or KTOConfig, got "
                    f"{type(args).__name__}")


def disable_dropout(model: torch.nn.Module) -> None:
    """TRL's disable_dropout: every dropout probability to 0, so π and π_ref see the same network."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class _PreferenceCore(TrainerCore):
    """What the pair and KTO trainers share: the step schedule, the reference pass and its checkpoint."""

    def __init__(self, model, tokenizer, items: list, args, show_progress: bool | None, evaluator=None):
        self.method = _method_of(args)
        self.kind, self.label = self.method, self.method.upper()
        self.tokenizer, self.items = tokenizer, items
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.step_size = args.per_device_train_batch_size * args.gradient_accumulation_steps
        total = args.max_steps if args.max_steps > 0 else max(
            1, math.floor(args.num_train_epochs * len(items) / self.step_size))
        if args.disable_dropout:
            disable_dropout(model)
        super().__init__(model, args, total, show_progress, evaluator=evaluator,
                         steps_per_epoch=max(1, len(items) // self.step_size))
        self.reference: torch.Tensor | None = None  # Σ log π_ref per reference row (see reference_rows)

    # ------------------------------------------------------------------ the schedule

    def steps(self, skip: int = 0) -> Iterator[list[int]]:
        """Each optimizer step's item indices: consecutive slices of one seeded permutation per epoch."""
        epoch, stream, done = 0, [], 0
        while True:
            while len(stream) < self.step_size:
                g = torch.Generator().manual_seed(self.args.seed + epoch)
                stream += torch.randperm(len(self.items), generator=g).tolist()
                epoch += 1
            step, stream = stream[:self.step_size], stream[self.step_size:]
            done += 1
            if done > skip:
                yield step

    def micro_batches(self, step: list[int]) -> list[list[int]]:
        costs = {i: self.items[i].cost for i in step}
        return length_sorted_micro_batches(step, costs, self.args.per_device_train_batch_size)

    def halve(self, micro_batch: list[int]) -> list[list[int]]:
        half = (len(micro_batch) + 1) // 2
        return [h for h in (micro_batch[:half], micro_batch[half:]) if h]

    # ------------------------------------------------------------------ the reference

    def reference_rows(self) -> list:
        raise NotImplementedError

    def compute_reference(self) -> None:
        a = self.args
        self.reference = reference_logprobs(self.model, self.reference_rows(), self.pad_id,
                                            a.precompute_ref_batch_size or a.per_device_train_batch_size,
                                            a.logprob_chunk_elements, autocast=self.autocast)

    def checkpoint_state(self) -> tuple[dict, dict]:
        return {}, ({REFERENCE_FILE: self.reference} if self.reference is not None else {})

    def restore_checkpoint(self, state: dict, path) -> None:
        if (path / REFERENCE_FILE).exists():
            self.reference = torch.load(path / REFERENCE_FILE, weights_only=True)

    # ------------------------------------------------------------------ the loop

    def train(self, resume_from_checkpoint: str | None = None, force: bool = False) -> dict:
        with self.open_session(resume_from_checkpoint, force) as run:
            if self.method in NEEDS_REFERENCE and self.reference is None:
                self.compute_reference()  # the policy before its first step (also on a resume of an old run)
            steps = self.steps(skip=self.global_step)
            while run.wants_more():
                step = next(steps)
                self.before_step(step)
                metrics = self.train_step(self.micro_batches(step))
                metrics.update(metrics.pop("stats").means())
                run.end_step(self.global_step, metrics, f"loss {metrics['loss']:.4f}")
        return run.result()

    def before_step(self, step: list[int]) -> None:
        pass

    def policy_logps(self, rows: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        return rows_logprobs(self.model, rows, self.pad_id, self.args.logprob_chunk_elements)


class PreferenceTrainer(_PreferenceCore):
    """DPO, CPO (SimPO) or ORPO, chosen by the type of `args`, on `{"prompt", "chosen", "rejected"}` pairs
    (rlvr.data.preferences.prepare_preference_pairs gives them from TRL's formats)."""

    def __init__(self, model, tokenizer, train_dataset: Sequence[dict], args=None,
                 show_progress: bool | None = None, evaluator=None):
        args = args if args is not None else DPOConfig()
        args.validate()
        if isinstance(args, KTOConfig):
            raise RlvrError("a KTOConfig trains on unpaired examples: use KTOTrainer")
        pairs: list[EncodedPair] = encode_pairs(tokenizer, list(train_dataset), args.max_length)
        super().__init__(model, tokenizer, pairs, args, show_progress, evaluator)
        self.objective = PAIR_OBJECTIVES[self.method]

    def reference_rows(self) -> list:
        # chosen of every pair, then rejected of every pair: reference[i], reference[n + i]
        return [p.chosen for p in self.items] + [p.rejected for p in self.items]

    def count(self, micro_batch: list[int]) -> tuple[int, int]:
        return len(micro_batch), completion_tokens([self.items[i].chosen for i in micro_batch])

    def forward_backward(self, micro_batch: list[int], counts: StepCounts, sums: dict) -> float:
        pairs = [self.items[i] for i in micro_batch]
        b = len(pairs)
        with self.autocast():
            logps, lengths = self.policy_logps([p.chosen for p in pairs] + [p.rejected for p in pairs])
        ref_chosen = ref_rejected = None
        if self.reference is not None:
            index = torch.tensor(micro_batch)
            ref_chosen = self.reference[index].to(logps.device)
            ref_rejected = self.reference[index + len(self.items)].to(logps.device)
        x = PairLogps(logps[:b], logps[b:], lengths[:b], lengths[b:], ref_chosen, ref_rejected)
        terms = self.objective(x, self.args)
        loss = preference_loss(terms.pair_losses, counts.num_sequences, x.chosen, terms.nll_weight,
                               counts.num_tokens)
        self.backward(loss)
        sums.setdefault("stats", PreferenceStats()).add(**terms.stats)
        if terms.nll_weight:
            sums["nll_loss"] = sums.get("nll_loss", 0.0) - x.chosen.detach().sum().item() / max(1, counts.num_tokens)
        return loss.item()


class KTOTrainer(_PreferenceCore):
    """KTO on `{"prompt", "completion", "label"}` examples (rlvr.data.preferences.prepare_unpaired_examples).

    The KL reference point of a step is the mean log-ratio of its examples' mismatched pairs (each
    prompt with the completion of its neighbour, TRL's rotation within groups of
    per_device_train_batch_size), over the whole step, so it does not depend on how the step is split.
    """

    def __init__(self, model, tokenizer, train_dataset: Sequence[dict], args: KTOConfig | None = None,
                 show_progress: bool | None = None, evaluator=None):
        args = args if args is not None else KTOConfig()
        args.validate()
        if not isinstance(args, KTOConfig):
            raise RlvrError(f"KTOTrainer needs a KTOConfig, got {type(args).__name__}")
        kl_group = args.per_device_train_batch_size if kto_uses_kl(args.loss_type) else None
        examples: list[EncodedExample] = encode_unpaired(tokenizer, list(train_dataset), args.max_length, kl_group)
        super().__init__(model, tokenizer, examples, args, show_progress, evaluator)
        self.step_kl: torch.Tensor | float = 0.0

    def reference_rows(self) -> list:
        # each example's sequence, then (with the KL term) its KL sequence: reference[i], reference[n + i]
        rows = [e.sequence for e in self.items]
        return rows + [e.kl_sequence for e in self.items] if kto_uses_kl(self.args.loss_type) else rows

    @torch.no_grad()
    def before_step(self, step: list[int]) -> None:
        if not kto_uses_kl(self.args.loss_type):
            return
        policy, order = [], []
        for mb in self.micro_batches(step):
            with self.autocast():
                policy.append(self.policy_logps([self.items[i].kl_sequence for i in mb])[0].float().cpu())
            order += mb
        self.step_kl = kto_kl(torch.cat(policy), self.reference[torch.tensor(order) + len(self.items)])

    def count(self, micro_batch: list[int]) -> tuple[int, int]:
        return len(micro_batch), completion_tokens([self.items[i].sequence for i in micro_batch])

    def forward_backward(self, micro_batch: list[int], counts: StepCounts, sums: dict) -> float:
        examples = [self.items[i] for i in micro_batch]
        with self.autocast():
            logps, _ = self.policy_logps([e.sequence for e in examples])
        ref = self.reference[torch.tensor(micro_batch)].to(logps.device)
        desirable = torch.tensor([e.desirable for e in examples], device=logps.device)
        terms = kto_terms(logps, ref, desirable, self.step_kl, self.args)
        loss = preference_loss(terms.pair_losses, counts.num_sequences)
        self.backward(loss)
        stats = sums.setdefault("stats", PreferenceStats())
        stats.add(**terms.stats)
        sums["kl"] = float(self.step_kl)
        return loss.item()
