"""pass@k: the unbiased estimator of Chen et al. (2021) and a confidence interval over problems.

With n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k) is the chance that k samples
drawn without replacement contain a correct one. The binomials overflow floats for large n, so the
ratio is taken as the product  prod_{i=n-c+1}^{n} (1 - k/i),  which stays in [0, 1] throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples, `c` of them correct.

    >>> round(pass_at_k(5, 2, 1), 6), round(pass_at_k(5, 2, 2), 6)
    (0.4, 0.7)
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        # Fewer than k wrong samples: every draw of k holds a correct one (covers k = n with c > 0).
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i); an empty product (c = 0) gives 0.0.
    ratio = math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    return 1.0 - ratio


def pass_at_k_interval(per_problem: Sequence[float]) -> tuple[float, float]:
    """95% interval for the mean of per-problem pass@k estimates (normal approximation), in [0, 1].

    The spread is the problems' (Bessel-corrected) standard deviation over sqrt(#problems); with a
    single problem there is no spread to measure, so the interval is the whole [0, 1].

    >>> pass_at_k_interval([0.0, 1.0, 1.0, 0.0])
    (0.0, 1.0)
    >>> pass_at_k_interval([0.5, 0.5, 0.5])
    (0.5, 0.5)
    """
    values = list(per_problem)
    if not values:
        raise ValueError("pass_at_k_interval: no problems")
    if len(values) == 1:
        return 0.0, 1.0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = Z_95 * std / math.sqrt(len(values))
    return max(0.0, mean - half), min(1.0, mean + half)
