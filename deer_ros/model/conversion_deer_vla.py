"""Tensor names of the DeeR-VLA family: deer_ros's modules against upstream's checkpoints.

Upstream names are those of RoboFlamingo/DeeR's ``MPTFlamingo`` state dict,
in their canonical form: the first name ``named_parameters()`` gives, without
DDP's ``module.`` prefix. DeeR's checkpoint files also hold alias copies
(:data:`UPSTREAM_ALIASES`), since OpenFlamingo registers each decoder block
and cross-attention block twice. The CLIP tower is open_clip's ViT
(``vision_encoder.visual.*``); its fused ``attn.in_proj_*`` tensors are
split into ``transformers``' separate q/k/v projections.

Not held by deer_ros (unused at inference): open_clip's text tower and
``visual.proj``, MPT's final norm ``ln_f``/``norm_f`` and LM head, and DeeR's
training-only heads ``lm_head`` and ``lm_exit_modules``: only ``extra_exit``
acts at inference.
"""
from __future__ import annotations

import re

import torch

from .configuration_deer_vla import DeerVLAConfig

CLIP_QKV = ('q', 'k', 'v')  # order of the blocks in open_clip's fused in_proj
# Alternative names of the same tensors in upstream files -> their canonical form.
UPSTREAM_ALIASES = (
    (re.compile(r'^lang_encoder\.old_decoder_blocks\.(\d+)\.'), r'lang_encoder.transformer.blocks.\1.decoder_layer.'),
    (re.compile(r'^lang_encoder\.gated_cross_attn_layers\.(\d+)\.'),
     r'lang_encoder.transformer.blocks.\1.gated_cross_attn_layer.'),
)
_CLIP = 'vision_encoder.visual.'
_CLIP_LAYER = _CLIP + r'transformer.resblocks.\1.'
_OURS_LAYER = r'^vision_encoder\.encoder\.layers\.(\d+)\.'
# (ours, upstream) pairs of anchored patterns; each side's groups fill the other side's template.
_COMMON = (
    (r'^vision_encoder\.embeddings\.class_embedding$', _CLIP + 'class_embedding'),
    (r'^vision_encoder\.embeddings\.patch_embedding\.weight$', _CLIP + 'conv1.weight'),
    (r'^vision_encoder\.embeddings\.position_embedding\.weight$', _CLIP + 'positional_embedding'),
    (r'^vision_encoder\.pre_layrnorm\.(weight|bias)$', _CLIP + r'ln_pre.\1'),
    (r'^vision_encoder\.post_layernorm\.(weight|bias)$', _CLIP + r'ln_post.\1'),
    (_OURS_LAYER + r'layer_norm1\.(weight|bias)$', _CLIP_LAYER + r'ln_1.\2'),
    (_OURS_LAYER + r'layer_norm2\.(weight|bias)$', _CLIP_LAYER + r'ln_2.\2'),
    (_OURS_LAYER + r'self_attn\.out_proj\.(weight|bias)$', _CLIP_LAYER + r'attn.out_proj.\2'),
    (_OURS_LAYER + r'mlp\.fc1\.(weight|bias)$', _CLIP_LAYER + r'mlp.c_fc.\2'),
    (_OURS_LAYER + r'mlp\.fc2\.(weight|bias)$', _CLIP_LAYER + r'mlp.c_proj.\2'),
    (r'^perceiver\.(.+)$', r'perceiver.\1'),
    (r'^lang_encoder\.wte\.weight$', 'lang_encoder.transformer.wte.weight'),
    (r'^lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.+)$',
     r'lang_encoder.transformer.blocks.\1.gated_cross_attn_layer.\2'),
    (r'^action_head\.(.+)$', r'extra_exit.\1'),
)
_BLOCK = r'^lang_encoder\.blocks\.(\d+)\.'
_UPSTREAM_BLOCK = r'lang_encoder.transformer.blocks.\1.decoder_layer.'
# Decoder-block tensors: transformers' MptBlock names -> MosaicGPT-1B's (``mosaic_gpt``) or MPT-7B's (``mpt``).
_BLOCK_NAMES = {
    'mosaic_gpt': (('norm_1.weight', 'ln_1.weight'), ('attn.Wqkv.weight', 'attn.Wqkv.weight'),
                   ('attn.Wqkv.q_ln.weight', 'attn.q_ln.weight'), ('attn.Wqkv.k_ln.weight', 'attn.k_ln.weight'),
                   ('attn.out_proj.weight', 'attn.out_proj.weight'), ('norm_2.weight', 'ln_2.weight'),
                   ('ffn.up_proj.weight', 'mlp.mlp_up.weight'), ('ffn.down_proj.weight', 'mlp.mlp_down.weight')),
    'mpt': tuple((name, name) for name in ('norm_1.weight', 'attn.Wqkv.weight', 'attn.out_proj.weight',
                                           'norm_2.weight', 'ffn.up_proj.weight', 'ffn.down_proj.weight')),
}


def _rules(config: DeerVLAConfig) -> list[tuple[str, str]]:
    blocks = [(_BLOCK + re.escape(ours) + '$', _UPSTREAM_BLOCK + theirs)
              for ours, theirs in _BLOCK_NAMES[config.decoder.block_layout]]
    return [*_COMMON, *blocks]


def _template(pattern: str) -> str:
    """The replacement template equivalent to an anchored pattern: groups become backreferences."""
    count = 0

    def group(_: re.Match) -> str:
        nonlocal count
        count += 1
        return f'\\{count}'
    return re.sub(r'\([^)]*\)', group, pattern.strip('^$')).replace('\\.', '.')


def _as_pattern(template: str) -> str:
    """The anchored pattern matching what a template produces (backreferences become groups)."""
    escaped = re.escape(template).replace(re.escape('\\1'), '(.+?)').replace(re.escape('\\2'), '(.+)')
    return f'^{escaped}$'


def _fused_qkv(name: str) -> tuple[str, int] | None:
    """(upstream in_proj name, block index) for our split q/k/v projection tensors of the CLIP tower."""
    match = re.match(_OURS_LAYER + r'self_attn\.([qkv])_proj\.(weight|bias)$', name)
    if match is None:
        return None
    layer, part, kind = match.groups()
    return f'{_CLIP}transformer.resblocks.{layer}.attn.in_proj_{kind}', CLIP_QKV.index(part)


def to_upstream_name(name: str, config: DeerVLAConfig) -> str:
    """The canonical upstream name of one of our tensors (a q/k/v projection gives its fused ``in_proj`` name)."""
    fused = _fused_qkv(name)
    if fused is not None:
        return fused[0]
    for ours, theirs in _rules(config):
        if re.match(ours, name):
            return re.sub(ours, theirs, name)
    raise KeyError(f'no upstream name for {name!r}')


def canonical_upstream_name(name: str) -> str:
    """An upstream checkpoint key in canonical form: no ``module.`` prefix, aliases resolved."""
    name = name.removeprefix('module.')
    for alias, canonical in UPSTREAM_ALIASES:
        name = alias.sub(canonical, name)
    return name


def from_upstream_name(name: str, config: DeerVLAConfig) -> list[str]:
    """Our tensor names filled from an upstream key (three for a fused CLIP ``in_proj``); [] when not held."""
    name = canonical_upstream_name(name)
    fused = re.match(re.escape(_CLIP) + r'transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$', name)
    if fused is not None:
        layer, kind = fused.groups()
        return [f'vision_encoder.encoder.layers.{layer}.self_attn.{part}_proj.{kind}' for part in CLIP_QKV]
    for ours, theirs in _rules(config):
        pattern = _as_pattern(theirs)
        if re.match(pattern, name):
            return [re.sub(pattern, _template(ours), name)]
    return []


def upstream_parameter_shapes(named_shapes: dict[str, tuple[int, ...]], config: DeerVLAConfig
                              ) -> dict[str, tuple[int, ...]]:
    """Our parameter shapes under upstream names; split q/k/v projections are stacked back into ``in_proj``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in named_shapes.items():
        upstream = to_upstream_name(name, config)
        if upstream in shapes and _fused_qkv(name) is not None:
            shapes[upstream] = (shapes[upstream][0] + shape[0], *shape[1:])
        else:
            shapes[upstream] = tuple(shape)
    return shapes


def split_fused_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """open_clip's ``in_proj_weight``/``in_proj_bias`` -> (q, k, v) along the output dimension."""
    if tensor.shape[0] % 3:
        raise ValueError(f'a fused q/k/v tensor needs a first dimension divisible by 3, got {tuple(tensor.shape)}')
    query, key, value = tensor.chunk(3, dim=0)
    return query, key, value
