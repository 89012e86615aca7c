"""Reference rollout backend: transformers.generate. Correct everywhere, slow on a GPU."""

from __future__ import annotations

import torch

from rlvr.rollout.engine import MemoryPlan, ProgressCallback, ProgressTally, Rollout, SamplingParams, halve_rows


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the generation config's EOS list and the tokenizer's."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_ids: list[int],
                             valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [N, C], is_eos [N]): 1 up to and including the first EOS; all valid tokens when none."""
    n, c = completion_ids.shape
    is_eos_tok = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))
    if valid is not None:
        is_eos_tok &= valid.bool()
    has_eos = is_eos_tok.any(dim=1)
    first = torch.where(has_eos, is_eos_tok.int().argmax(dim=1), torch.full((n,), c, device=completion_ids.device))
    positions = torch.arange(c, device=completion_ids.device).expand(n, c)
    mask = positions <= first.unsqueeze(1)
    if valid is not None:
        mask &= valid.bool()
    return mask.long(), has_eos


def truncate_at_stop_strings(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor,
                             is_eos: torch.Tensor, stop_strings: tuple[str, ...]) -> None:
    """Cut each row after the first token whose text completes a stop string (in place)."""
    for i in range(completion_ids.shape[0]):
        n = int(mask[i].sum())
        text = tokenizer.decode(completion_ids[i, :n])
        if not any(s in text for s in stop_strings):
            continue
        for t in range(1, n + 1):
            if any(s in tokenizer.decode(completion_ids[i, :t]) for s in stop_strings):
                mask[i, t:] = 0
                is_eos[i] = True
                break


def decoded_counts(completion_ids: torch.Tensor, eos_ids: list[int]) -> tuple[int, int]:
    """(rows ended with an EOS, tokens decoded up to each row's first EOS) of completions so far: one host sync."""
    mask, ended = completion_mask_from_eos(completion_ids, eos_ids)
    rows_done, tokens = torch.stack([ended.sum(), mask.sum()]).tolist()
    return rows_done, tokens


def progress_criteria(tally: ProgressTally, prompt_width: int, eos_ids: list[int], every: int):
    """A transformers stopping criterion that never stops: every `every` new tokens it reports the
    sub-batch's counts to `tally` (generate syncs with the host at each token to check its criteria
    anyway; this adds a sync every `every` tokens)."""
    from transformers import StoppingCriteria  # imported here: transformers.generation takes seconds

    class ReportProgress(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            if (input_ids.shape[1] - prompt_width) % every == 0:
                tally.report(*decoded_counts(input_ids[:, prompt_width:], eos_ids))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return ReportProgress()


class HFEngine:
    """Rollouts through `model.generate`, in sub-batches of at most `batch_size` rows; a progress
    callback hears from each sub-batch every `progress_every` tokens."""

    backend_name = "hf"
    progress_every = 16

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.rows_per_batch: int | None = None  # of the last generate

    def memory_plan(self) -> MemoryPlan:
        return MemoryPlan(rollout_merge_lora=False)

    def reduce_batch(self) -> int | None:
        rows = halve_rows(self.rows_per_batch)
        if rows is not None:
            self.batch_size = rows
        return rows

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        return "hf (transformers.generate)"

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], num_generations: int, params: SamplingParams,
                 seed: int | None = None, progress: ProgressCallback | None = None) -> Rollout:
        rows = [p for p in prompt_ids for _ in range(num_generations)]
        self.rows_per_batch = min(self.batch_size, len(rows))
        tally = ProgressTally(len(rows), progress) if progress is not None else None
        was_training = self.model.training
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        chunks = []
        try:
            with torch.random.fork_rng(devices=devices):
                if seed is not None:
                    torch.manual_seed(seed)
                for s in range(0, len(rows), self.batch_size):
                    chunk = self._generate_chunk(rows[s:s + self.batch_size], params, tally)
                    chunks.append(chunk)
                    if tally is not None:
                        tally.end_sub_batch(chunk.shape[0], decoded_counts(chunk, self.eos_ids)[1])
        finally:  # an out of memory must not leave the model in eval mode (no dropout, no checkpointing)
            if was_training:
                self.model.train()
        return self._assemble(rows, chunks, params)

    def _generate_chunk(self, rows: list[list[int]], params: SamplingParams,
                        tally: ProgressTally | None = None) -> torch.Tensor:
        ids, mask = left_pad(rows, self.tokenizer.pad_token_id, self.device)
        kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=params.do_sample,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids,
                      repetition_penalty=params.repetition_penalty)
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k or None, min_p=params.min_p or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop_strings:
            kwargs.update(stop_strings=list(params.stop_strings), tokenizer=self.tokenizer)
        if tally is not None:
            kwargs["stopping_criteria"] = [progress_criteria(tally, ids.shape[1], self.eos_ids, self.progress_every)]
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        return out[:, ids.shape[1]:]

    def _assemble(self, rows, chunks, params: SamplingParams) -> Rollout:
        pad = self.tokenizer.pad_token_id
        width = max(c.shape[1] for c in chunks)
        completion = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad) for c in chunks])
        # Tokens after a row finished are padding; when pad == eos the first-EOS rule still finds the end.
        mask, is_eos = completion_mask_from_eos(completion, self.eos_ids)
        if params.stop_strings:
            truncate_at_stop_strings(self.tokenizer, completion, mask, is_eos, params.stop_strings)
        completion = torch.where(mask.bool(), completion, torch.full_like(completion, pad))
        prompt_ids, prompt_mask = left_pad(rows, pad, self.device)
        return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion,
                       completion_mask=mask, is_eos=is_eos)
