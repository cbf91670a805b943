"""Full-size DeeR-VLA models on the meta device hold exactly the tensors of the upstream checkpoints.

``fixtures/deer_vla_3b_parameters.json`` lists the 3B model's tensors by their
canonical upstream names and shapes, derived from upstream's own module
definitions (its ``derivation`` field says which); nothing here is allocated.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from deer_ros.model.configuration_deer_vla import load_deer_vla_config
from deer_ros.model.conversion_deer_vla import canonical_upstream_name, from_upstream_name, upstream_parameter_shapes
from deer_ros.model.flops import count_cost_table
from deer_ros.model.modeling_deer_vla import DeerVLAFlamingo

FIXTURE = Path(__file__).parent / 'fixtures' / 'deer_vla_3b_parameters.json'


def _meta_model(name: str) -> DeerVLAFlamingo:
    with torch.device('meta'):
        return DeerVLAFlamingo(load_deer_vla_config(name))


def _upstream_shapes(model: DeerVLAFlamingo) -> dict[str, list[int]]:
    shapes = upstream_parameter_shapes({name: tuple(p.shape) for name, p in model.named_parameters()}, model.config)
    return {name: list(shape) for name, shape in shapes.items()}


def test_deer_vla_3b_has_exactly_the_upstream_parameters() -> None:
    model = _meta_model('deer-vla-3b')
    expected = json.loads(FIXTURE.read_text())['parameters']
    ours = _upstream_shapes(model)
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {name: shape for name, shape in ours.items() if expected[name] != shape} == {}
    # every upstream tensor fills exactly our tensors, back and forth
    filled = [name for upstream in expected for name in from_upstream_name(upstream, model.config)]
    assert sorted(filled) == sorted(name for name, _ in model.named_parameters())


def test_checkpoint_aliases_and_ddp_prefix_resolve_to_canonical_names() -> None:
    config = load_deer_vla_config('deer-vla-3b')
    assert canonical_upstream_name('module.lang_encoder.old_decoder_blocks.7.attn.q_ln.weight') == \
        'lang_encoder.transformer.blocks.7.decoder_layer.attn.q_ln.weight'
    assert from_upstream_name('module.lang_encoder.gated_cross_attn_layers.3.ff.1.weight', config) == \
        ['lang_encoder.gated_cross_attn_layers.3.ff.1.weight']
    for unused in ('module.lm_head.rnn.layers.0.weight_ih_l0', 'module.lm_exit_modules.0.actions.mlp.1.weight',
                   'lang_encoder.transformer.ln_f.weight', 'vision_encoder.visual.proj',
                   'vision_encoder.transformer.resblocks.0.ln_1.weight'):  # training heads, final norm, text tower
        assert from_upstream_name(unused, config) == []


def test_deer_vla_9b_structure() -> None:
    model = _meta_model('deer-vla-9b')
    shapes = _upstream_shapes(model)
    assert len(model.lang_encoder.blocks) == 16
    crossed = sorted({int(name.split('.')[3]) for name in shapes if '.gated_cross_attn_layer.' in name})
    assert crossed == [3, 7, 11, 15]
    assert shapes['lang_encoder.transformer.wte.weight'] == [50280, 4096]
    assert shapes['lang_encoder.transformer.blocks.15.decoder_layer.ffn.up_proj.weight'] == [16384, 4096]
    assert shapes['lang_encoder.transformer.blocks.3.gated_cross_attn_layer.attn.to_kv.weight'] == [1024, 1024]
    assert shapes['extra_exit.rnn.layers.0.weight_ih_l0'] == [4096, 4096]
    assert not any('q_ln' in name for name in shapes)


def test_full_size_cost_table_counts_on_the_meta_device() -> None:
    table = count_cost_table(_meta_model('deer-vla-3b'))
    per_layer = np.diff((0.0,) + table.llm_gflops)
    assert table.exit_layers == (2, 4, 6, 8, 10, 12) and np.allclose(per_layer, per_layer[0])
    assert table.vision_gflops > 300  # two ViT-L/14 passes at 224 px
    gib = np.array(table.param_bytes) / 2 ** 30
    assert 5.5 < gib[-1] < 6.0 and np.all(np.diff(gib) > 0)  # fp32, vision tower included, cap 12
