"""deer-ros cost: per-exit compute and memory of deer-vla-3b (built on the meta device) against the paper's figures.

The DeeR paper reports LLM cost in multiply-accumulates (fvcore/thop):
1.3 G per layer, 31.2 for RoboFlamingo++'s 24 layers, 15.6 for DeeR-B's 12,
~5.2 for DeeR-S's 4. deer_ros counts the same layers (an MPT-1B block and its
gated cross-attention) on a 13-token prompt -- the CALVIN instruction of the
first evaluation chain's first subtask -- and lands within 5 %; the exact
count is the formula below (docs/model.md). Memory is parameter bytes in fp32.
"""
from __future__ import annotations

import re

import pytest

from deer_ros.cli import main

D, VISION, VISUAL_TOKENS, CROSS_INNER = 2048, 1024, 128, 512  # deer-vla-3b
PAPER_GMACS = {4: 5.2, 12: 15.6, 24: 31.2}


def layer_gmacs(tokens: int) -> float:
    """Multiply-adds of one decoder layer of deer-vla-3b for ``tokens`` prompt tokens.

    Per token: MPT block 12 d^2 (fused q/k/v 3d^2, output d^2, MLP 8d^2) and the
    cross-attention block's query/output projections (2 * 512 d) and
    feed-forward (8 d^2); per prompt: self-attention scores and mixing
    (2 T^2 d), the visual keys/values (128 tokens x 1024 -> 2 x 512) and the
    cross-attention scores and mixing (2 T x 128 x 512).
    """
    per_token = 12 * D * D + 2 * CROSS_INNER * D + 8 * D * D
    per_prompt = (2 * tokens * tokens * D + VISUAL_TOKENS * VISION * 2 * CROSS_INNER
                  + 2 * tokens * VISUAL_TOKENS * CROSS_INNER)
    return (tokens * per_token + per_prompt) / 1e9


def _run(capsys: pytest.CaptureFixture, *arguments: str) -> tuple[str, dict[int, list[float]]]:
    """Printed output and, per layer count, the row's numbers (LLM cum, vision, heads, total, LLM MiB, MiB)."""
    assert main(['cost', *arguments]) == 0
    printed = capsys.readouterr().out
    rows = {}
    for line in printed.splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[0].isdigit():
            rows[int(fields[1])] = [float(field) for field in fields[2:]]
    return printed, rows


def test_deer_vla_3b_per_layer_cost_matches_the_count_and_the_paper(capsys: pytest.CaptureFixture) -> None:
    printed, rows = _run(capsys, 'deer-vla-3b', '--units', 'gmacs', '--prompt-tokens', '13', '--num-exits', '12')
    per_layer = float(re.search(r'LLM per decoder layer: ([\d.]+) GMACs', printed)[1])
    assert per_layer == pytest.approx(layer_gmacs(13), rel=1e-3)  # 1.254: counted, equal to the formula
    assert per_layer == pytest.approx(1.3, rel=0.05)
    for layers, paper in PAPER_GMACS.items():
        assert rows[layers][0] == pytest.approx(paper, rel=0.05)  # 5.02 / 15.05 / 30.11
    assert '13 prompt tokens' in printed and 'GMACs' in printed


def test_deer_vla_3b_memory_and_units(capsys: pytest.CaptureFixture) -> None:
    printed, rows = _run(capsys, 'deer-vla-3b', '--units', 'gflops')
    assert '32 prompt tokens' in printed  # default: the most a prompt costs, what budgets are solved with
    assert sorted(rows) == [2, 4, 6, 8, 10, 12]
    per_layer = float(re.search(r'LLM per decoder layer: ([\d.]+) GFLOPs', printed)[1])
    assert per_layer == pytest.approx(2 * layer_gmacs(32), rel=1e-3)  # 2 FLOPs per multiply-add
    layer_params = 12 * D * D + 4 * D  # MPT-1B block: weights, 2 norms and the q/k norms (no biases)
    cross_params = 2 * CROSS_INNER * D + VISION * 2 * CROSS_INNER + 8 * D * D + 4 * D + 2  # + 2 LayerNorms, 2 gates
    embeddings = 50280 * D
    for layers, row in rows.items():
        llm_mib = (embeddings + layers * (layer_params + cross_params)) * 4 / 2 ** 20
        assert row[4] == pytest.approx(llm_mib, abs=0.1)
        assert row[5] > row[4] + 1500  # + CLIP ViT-L/14, resampler and head
    assert rows[12][4] * 2 ** 20 / 1e9 == pytest.approx(4.59, rel=0.01)  # GB, fp32; the paper's "6 GB": docs


def test_bad_source_and_prompt_length(capsys: pytest.CaptureFixture, tmp_path) -> None:
    assert main(['cost', 'no-such-model']) == 2
    assert 'no shipped model config named' in capsys.readouterr().err
    assert main(['cost', 'deer-vla-3b', '--prompt-tokens', '0']) == 2
    assert main(['cost', str(tmp_path)]) == 2  # a directory without config.json
    assert 'checkpoint file not found' in capsys.readouterr().err
