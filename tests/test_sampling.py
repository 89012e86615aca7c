"""The device-side sampling filters: exact on hand-made logits, equal to transformers' processors,
and the sampled distribution equal to softmax(logits / T)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.sampling import (
    apply_repetition_penalty,
    exponential_noise_,
    min_p_filter,
    process_logits,
    sample,
    seen_tokens,
    token_logprobs,
    top_k_filter,
    top_p_filter,
)

INF = float("-inf")
# Probabilities 0.5, 0.3, 0.15, 0.05 in a shuffled order.
PROBS = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
LOGITS = PROBS.log()


def _kept(scores: torch.Tensor) -> list[int]:
    return torch.isfinite(scores[0]).nonzero().squeeze(1).tolist()


def test_repetition_penalty_hand_made():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_repetition_penalty_matches_hf_including_prompt_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    ids = torch.randint(0, 50, (3, 12), generator=g)  # prompt + completion so far
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen_tokens(ids, 50), 1.3), ref, rtol=0, atol=0)
    counts = torch.zeros(3, 50).scatter_add_(1, ids, torch.ones(3, 12))  # counts work as well as a mask
    torch.testing.assert_close(apply_repetition_penalty(logits, counts, 1.3), ref, rtol=0, atol=0)


def test_seen_tokens_skips_masked_positions():
    ids = torch.tensor([[1, 1, 3], [0, 2, 2]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1]])  # left padding with pad id 1 / 0
    assert seen_tokens(ids, 4, mask).tolist() == [[False, True, False, True], [False, False, True, False]]


def test_top_k_hand_made():
    assert _kept(top_k_filter(LOGITS, 2)) == [1, 3]
    assert _kept(top_k_filter(LOGITS, 1)) == [1]
    assert top_k_filter(LOGITS, 0) is LOGITS
    ties = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert _kept(top_k_filter(ties, 1)) == [1, 2]  # tied with the k-th: kept, as HF does


@pytest.mark.parametrize("top_p,kept", [(0.5, [1]), (0.8, [1, 3]), (0.81, [0, 1, 3]), (0.96, [0, 1, 2, 3]),
                                        (0.01, [1])])
def test_top_p_hand_made(top_p, kept):
    # The smallest set of top tokens with mass >= top_p: 0.5 → {0.5}; 0.8 → {0.5, 0.3}; 0.81 adds 0.15.
    assert _kept(top_p_filter(LOGITS, top_p)) == kept


def test_min_p_hand_made():
    assert _kept(min_p_filter(LOGITS, 0.2)) == [0, 1, 3]  # threshold 0.2 · 0.5 = 0.1
    assert _kept(min_p_filter(LOGITS, 0.7)) == [1]
    assert _kept(min_p_filter(LOGITS, 1.5)) == [1]  # the top token always stays


@pytest.mark.parametrize("warper,ours", [
    (TopKLogitsWarper(7), lambda s: top_k_filter(s, 7)),
    (TopPLogitsWarper(0.7), lambda s: top_p_filter(s, 0.7)),
    (MinPLogitsWarper(0.1), lambda s: min_p_filter(s, 0.1)),
])
def test_filters_match_hf_warpers(warper, ours):
    scores = torch.randn(16, 100, generator=torch.Generator().manual_seed(1)) * 2
    ref = warper(torch.zeros(16, 1, dtype=torch.long), scores.clone())
    assert torch.equal(torch.isfinite(ours(scores)), torch.isfinite(ref))
    torch.testing.assert_close(ours(scores), ref, rtol=0, atol=0)


def _frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).float() / tokens.numel()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_distribution_matches_softmax(temperature):
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0, 2.0, 0.2, -3.0]])
    n = 20_000
    params = SamplingParams(temperature=temperature)
    tokens = sample(logits.expand(n, -1), params, torch.Generator().manual_seed(0))
    expected = torch.softmax(logits[0] / temperature, dim=-1)
    freq = _frequencies(tokens, 8)
    assert (freq - expected).abs().max() < 0.02
    # Chi-square goodness of fit, 7 degrees of freedom: p < 0.001 above 24.3.
    chi2 = float(((freq - expected) ** 2 / expected).sum() * n)
    assert chi2 < 24.3


def test_sampled_distribution_after_filters():
    n = 20_000
    params = SamplingParams(temperature=1.0, top_k=3, top_p=0.9)
    logits = torch.tensor([[0.0, math.log(4), math.log(2), math.log(3), -5.0]])
    tokens = sample(logits.expand(n, -1), params, torch.Generator().manual_seed(1))
    # top-3 keeps {4, 2, 3} (probs 4/9, 2/9, 3/9); top-p 0.9 then keeps all three (4/9 + 3/9 < 0.9).
    expected = torch.tensor([0.0, 4 / 9, 2 / 9, 3 / 9, 0.0])
    assert (_frequencies(tokens, 5) - expected).abs().max() < 0.02


def test_greedy_and_seeded_noise():
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(2))
    assert torch.equal(sample(logits, SamplingParams(do_sample=False)), logits.argmax(-1))
    p = SamplingParams(temperature=0.9)
    a = sample(logits, p, torch.Generator().manual_seed(3))
    b = sample(logits, p, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_cpu_noise_is_exponential():
    """The CPU's -log U draws have Exp(1)'s quantiles (P(E > x) = e^-x) and moments, and are seeded."""
    draws = exponential_noise_(torch.empty(400_000), torch.Generator().manual_seed(5))
    for x in (0.05, 0.5, 1.0, 2.0, 4.0):
        assert abs(float((draws > x).float().mean()) - math.exp(-x)) < 0.003
    assert abs(float(draws.mean()) - 1.0) < 0.01 and abs(float(draws.var()) - 1.0) < 0.03
    assert bool((draws > 0).all())
    again = exponential_noise_(torch.empty(400_000), torch.Generator().manual_seed(5))
    assert torch.equal(draws, again)


def test_sample_is_the_exponential_race_on_probabilities():
    """argmax(scores - log noise) picks what argmax(softmax(scores) / noise) picks, filters included."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(200, 50, generator=g) * 3
    noise = torch.empty(200, 50).exponential_(generator=g)
    noise[0, :5] = 0.0  # zero draws: a filtered token must still never win
    params = SamplingParams(temperature=0.8, top_k=10)
    scores = process_logits(logits, params)
    expected = (scores.softmax(-1) / noise.clamp_min(1e-20)).argmax(-1)
    got = sample(logits, params, noise=noise)
    assert torch.equal(got, expected)
    assert bool(torch.isfinite(scores.gather(1, got[:, None])).all())


def test_token_logprobs_use_full_vocab_at_temperature():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(4))
    tokens = torch.tensor([0, 5, 29, 7])
    expected = torch.log_softmax(logits / 0.7, dim=-1)[torch.arange(4), tokens]
    torch.testing.assert_close(token_logprobs(logits, tokens, 0.7), expected)
