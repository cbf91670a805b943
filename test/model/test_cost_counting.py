"""Counted FLOPs match the analytic formula and grow with the exit; a cap builds only its layers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deer_ros.model import DeerVLA, load_config
from deer_ros.model.flops import cost_table_for, count_cost_table

# deer_ros's own family at the paper's 3B sizes (was the shipped deer-3b; deer-vla-3b is the published model)
PAPER_SIZED = pytest.param(str(Path(__file__).parent / 'fixtures' / 'llama_3b_sized.yaml'), id='llama-3b-sized')


def analytic_layer_gflops(config) -> float:
    """Matmul FLOPs (2 per multiply-add) of one decoder layer plus its gated cross-attention block."""
    d, ffn, t = config.decoder.hidden_size, config.decoder.intermediate_size, config.decoder.text_length
    heads, kv_heads = config.decoder.num_attention_heads, config.decoder.num_key_value_heads
    kv_dim = d // heads * kv_heads
    visual_tokens = 2 * config.resampler.num_latents + int(config.use_proprio)
    visual_dim = config.resampler.hidden_size
    self_attention = 2 * t * d * (2 * d + 2 * kv_dim) + 4 * t * t * d
    mlp = 2 * t * 3 * d * ffn
    cross_attention = (2 * t * 2 * d * d + 2 * visual_tokens * 2 * visual_dim * d + 4 * t * visual_tokens * d
                       + 2 * t * 2 * d * 2 * d)
    share = 1 / config.decoder.cross_attention_every
    return (self_attention + mlp + share * cross_attention) / 1e9


@pytest.mark.parametrize('name', ['tiny', 'smollm2', PAPER_SIZED])
def test_counted_llm_flops_match_formula_and_grow(name: str) -> None:
    config = load_config(name)
    table = cost_table_for(config)
    per_layer = analytic_layer_gflops(config)
    for layers, counted in zip(table.exit_layers, table.llm_gflops):
        assert counted == pytest.approx(layers * per_layer, rel=0.05)
    assert all(a < b for a, b in zip(table.llm_gflops, table.llm_gflops[1:]))
    assert all(a < b for a, b in zip(table.param_bytes, table.param_bytes[1:]))
    assert table.total_gflops(0) > table.llm_gflops[0] + table.vision_gflops


@pytest.mark.parametrize('name', ['tiny', PAPER_SIZED])
def test_history_replay_is_counted_once_per_step(name: str) -> None:
    """The sliding-window replay costs (history_window - 1) LSTM steps of matmuls, in every exit's total."""
    config = load_config(name)
    table = cost_table_for(config)
    hidden, size = config.head.lstm_hidden_size, config.decoder.hidden_size
    inputs = [size] + [hidden] * (config.head.lstm_layers - 1)
    lstm_step = sum(2 * 4 * hidden * (width + hidden) for width in inputs) / 1e9
    assert table.history_gflops == pytest.approx((config.head.history_window - 1) * lstm_step, rel=0.05)
    for k in range(table.num_exits):
        assert table.total_gflops(k) == pytest.approx(table.llm_gflops[k] + table.vision_gflops
                                                      + table.history_gflops + (k + 1) * table.head_gflops)


def test_meta_count_equals_real_count() -> None:
    config = load_config('tiny')
    torch.manual_seed(0)
    real = count_cost_table(DeerVLA(config))
    assert real == cost_table_for(config)


@pytest.mark.parametrize('cap', [1, 3, 6])
def test_capping_builds_only_the_layers_up_to_the_exit(tmp_path, cap: int) -> None:
    config = load_config('tiny')
    DeerVLA(config).save_pretrained(tmp_path)
    capped = DeerVLA.from_pretrained(tmp_path, num_exits=cap)
    assert len(capped.layers) == cap * config.exit_interval
    assert capped.num_exits == cap
    parameter_bytes = sum(p.numel() * p.element_size() for p in capped.parameters())
    assert parameter_bytes == cost_table_for(config).param_bytes[cap - 1]


def test_paper_sized_config_builds_on_meta_device() -> None:
    config = load_config(PAPER_SIZED.values[0])
    with torch.device('meta'):
        model = DeerVLA(config)
    assert len(model.layers) == 12 and model.exit_layers == (2, 4, 6, 8, 10, 12)
    assert config.decoder.num_hidden_layers == 24
    vision = sum(p.numel() for p in model.vision_encoders['static'].parameters())
    assert 300e6 < vision < 310e6  # CLIP ViT-L/14 vision tower
    table = cost_table_for(config)
    assert table.param_bytes[-1] / table.param_bytes[0] > 1.5
