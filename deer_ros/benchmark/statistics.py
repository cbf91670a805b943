"""Intervals for closed-loop results: chains differ far more than policies, so compare on the same chains."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def confidence_interval(values: Sequence[float]) -> float:
    """Half-width of the normal-approximation 95 % interval of the mean (nan for fewer than 2 values)."""
    if len(values) < 2:
        return float('nan')
    return 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def paired_difference(successes: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Mean per-chain difference ``successes - reference`` (same chains, same order) and its 95 % half-width."""
    differences = [a - b for a, b in zip(successes, reference, strict=True)]
    return float(np.mean(differences)), confidence_interval(differences)
