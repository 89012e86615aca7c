"""Tokenised preference data and its batches: (prompt, chosen, rejected) → padded [chosen; rejected] rows.

Each completion is encoded with the prompt through the chat template exactly as SFT encodes a
reply (`encode_sft_example`: labels on the reply and its end-of-turn token), so the prompt ids are
the ones the rollout engine and the evaluation see. Sequences longer than max_length keep their
start (TRL's keep_start); a completion cut away entirely drops its row, with a warning.

Micro-batches are length-sorted within an optimizer step: the step's loss does not depend on how
the step is split (rlvr.preference.losses.preference_loss), so sorting only removes padding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from rlvr.data.templates import IGNORE_INDEX, encode_sft_example
from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")

Encoded = tuple[list[int], list[int]]  # (input_ids, labels) with IGNORE_INDEX on the prompt


@dataclass(frozen=True)
class EncodedPair:
    chosen: Encoded
    rejected: Encoded

    @property
    def cost(self) -> int:  # padded tokens this pair adds to a batch
        return 2 * max(len(self.chosen[0]), len(self.rejected[0]))


@dataclass(frozen=True)
class EncodedExample:  # KTO: one completion, its label, and the mismatched completion of its KL term
    sequence: Encoded
    desirable: bool
    kl_sequence: Encoded | None = None

    @property
    def cost(self) -> int:
        return len(self.sequence[0])


def _has_completion(row: Encoded) -> bool:
    return any(t != IGNORE_INDEX for t in row[1][1:])


def _kept(rows: list, total: int, max_length: int | None, what: str) -> list:
    if not rows:
        raise RlvrError(f"every {what}'s prompt fills train.max_length ({max_length}), leaving no completion "
                        f"token; raise max_length")
    if len(rows) < total:
        log.warning("dropped %d of %d %ss whose prompt fills train.max_length (%s)", total - len(rows), total,
                    what, max_length)
    return rows


def encode_pairs(tokenizer, pairs: Sequence[dict], max_length: int | None) -> list[EncodedPair]:
    """Tokenise `{"prompt", "chosen", "rejected"}` pairs; pairs left without a completion token are dropped."""
    encoded = []
    for p in pairs:
        pair = EncodedPair(encode_sft_example(tokenizer, p["prompt"], p["chosen"], max_length),
                           encode_sft_example(tokenizer, p["prompt"], p["rejected"], max_length))
        if _has_completion(pair.chosen) and _has_completion(pair.rejected):
            encoded.append(pair)
    return _kept(encoded, len(pairs), max_length, "pair")


def encode_unpaired(tokenizer, examples: Sequence[dict], max_length: int | None, kl_group: int | None
                    ) -> list[EncodedExample]:
    """Tokenise KTO examples; with `kl_group`, each also gets its KL sequence: its prompt with the completion
    of the previous example of its group of `kl_group` consecutive examples (TRL's rotation by one)."""
    kept = [e for e in examples if _has_completion(encode_sft_example(tokenizer, e["prompt"], e["completion"],
                                                                      max_length))]
    kept = _kept(kept, len(examples), max_length, "example")
    out = []
    for i, e in enumerate(kept):
        kl = None
        if kl_group:
            start = i - i % kl_group
            size = min(kl_group, len(kept) - start)
            other = kept[start + (i - start - 1) % size]
            kl = encode_sft_example(tokenizer, e["prompt"], other["completion"], max_length)
        out.append(EncodedExample(encode_sft_example(tokenizer, e["prompt"], e["completion"], max_length),
                                  bool(e["label"]), kl))
    return out


def length_sorted_micro_batches(indices: Sequence[int], costs: Sequence[int], size: int) -> list[list[int]]:
    """`indices` sorted by cost (longest first) and cut into micro-batches of `size`."""
    ordered = sorted(indices, key=lambda i: -costs[i])
    return [ordered[s:s + size] for s in range(0, len(ordered), size)]


def completion_tokens(rows: Sequence[Encoded]) -> int:
    """Completion tokens (labelled positions after the first) of rows: the NLL term's denominator."""
    return sum(sum(1 for t in labels[1:] if t != IGNORE_INDEX) for _, labels in rows)
