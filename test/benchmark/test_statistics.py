"""Paired intervals: the same chains under two policies, and pooling evaluation files by chain position."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

from deer_ros.benchmark.statistics import confidence_interval, paired_difference


def test_paired_interval_is_narrower_than_either_mean_when_chains_dominate() -> None:
    """Chain difficulty shared by both policies cancels in the paired difference."""
    reference = [0, 0, 1, 3, 4, 5, 0, 2, 5, 1]
    better = [r + 1 if i % 2 == 0 else r for i, r in enumerate(reference)]  # +1 on half the chains
    difference, half_width = paired_difference(better, reference)
    assert difference == 0.5
    assert half_width == pytest.approx(1.96 * math.sqrt(0.25 * 10 / 9) / math.sqrt(10))
    assert half_width < confidence_interval(better) and half_width < confidence_interval(reference)
    assert math.isnan(confidence_interval([3]))
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def _evaluation(path: Path, offset: int, successes: list[int], gflops: float) -> Path:
    """A file in `deer-ros evaluate --output` format (the keys the comparison reads)."""
    chains = [{'index': i, 'tasks': [f'task{offset + i}'], 'successes': s, 'steps': [100],
               'step_stats': {'ready_pose': 0.1, 'llm_gflops': gflops}} for i, s in enumerate(successes)]
    path.write_text(json.dumps({'settings': {'chain_seed': 0, 'scene': 'D', 'max_steps': 360, 'offset': offset},
                                'chains': chains}))
    return path


def test_compare_pools_slices_and_pairs_chains_by_position(tmp_path: Path) -> None:
    compare = load_benchmark('compare_evaluations').compare
    runs = [_evaluation(tmp_path / 'a0.json', 0, [1, 2], 0.02), _evaluation(tmp_path / 'a224.json', 224, [0, 3], 0.03)]
    # the reference's files come in the other order: chains are matched by position, not file order
    reference = [_evaluation(tmp_path / 'b224.json', 224, [1, 3], 0.1), _evaluation(tmp_path / 'b0.json', 0, [1, 1], 0.1)]
    result = compare(runs, reference)
    assert result['chains'] == 4 and result['runs'] == 1.5 and result['reference'] == 1.5
    assert result['paired_difference'] == 0.0  # +1 on chain 1, -1 on chain 224
    assert result['runs_llm_gflops'] == pytest.approx(0.025) and result['reference_llm_gflops'] == pytest.approx(0.1)

    with pytest.raises(ValueError, match='different chains'):
        compare(runs[:1], reference)
    with pytest.raises(ValueError, match='already in an earlier file'):
        compare(runs + runs[:1], reference)
