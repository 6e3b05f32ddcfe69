"""The statistics of the evaluation's rates, from scipy: a 95 % Wilson score interval for each
harmless rate, and McNemar's exact test for Direct vs ECSO, which are measured on the same items
(so the comparison is paired: only the items where the two disagree carry information)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

CONFIDENCE = 0.95
INTERVAL_METHOD = "Wilson score interval, 95 %"
PAIRED_METHOD = "McNemar's exact test: two-sided binomial test (p = 0.5) on the discordant pairs"


@dataclass(frozen=True)
class Rate:
    """k of n, as a proportion with its interval (all NaN when n is 0: no item to count)."""

    k: int
    n: int
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedDifference:
    """ECSO minus Direct on the same n items. `ecso_only`: items harmless by ECSO only,
    `direct_only`: by Direct only. `p_value` is None without items."""

    n: int
    direct_only: int
    ecso_only: int
    difference: float
    p_value: Optional[float]


def rate(k: int, n: int) -> Rate:
    if not 0 <= k <= n:
        raise ValueError(f"a rate needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        nan = float("nan")
        return Rate(k, n, nan, nan, nan)
    from scipy.stats import binomtest  # type: ignore[import-untyped]

    ci = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    # scipy's Wilson bounds can miss 0 or 1 by a rounding error at k = 0 or k = n
    return Rate(k, n, k / n, max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def paired_difference(n: int, direct_only: int, ecso_only: int) -> PairedDifference:
    if direct_only < 0 or ecso_only < 0 or direct_only + ecso_only > n:
        raise ValueError(f"discordant pairs {direct_only} + {ecso_only} do not fit {n} items")
    if n == 0:
        return PairedDifference(0, 0, 0, float("nan"), None)
    discordant = direct_only + ecso_only
    p: Optional[float] = 1.0
    if discordant:
        from scipy.stats import binomtest

        p = min(1.0, float(binomtest(ecso_only, discordant, 0.5, alternative="two-sided").pvalue))
    return PairedDifference(n, direct_only, ecso_only, (ecso_only - direct_only) / n, p)


def finite(x: float) -> Optional[float]:
    """x, or None where it is NaN (JSON has no NaN)."""
    return None if math.isnan(x) else x
