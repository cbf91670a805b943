"""DeeR-VLA modules against independent references: open-flamingo's modules, transformers' MPT, upstream layouts.

Same weights must give the same outputs (1e-5). References: open-flamingo
2.0.1's ``PerceiverResampler``, ``GatedCrossAttentionBlock`` and
``FlamingoLMMixin`` (the package DeeR vendors, byte-identical helpers),
``transformers``' ``MptModel`` (with MosaicGPT's QK-LayerNorm spliced in at
the point MosaicGPT applies it), and open_clip 2.20's ViT and DeeR's head
written out from torch modules in upstream's tensor layout.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from deer_vla_helpers import open_flamingo_module, tiny_config, tiny_model
from PIL import Image
from torch import nn
from transformers import MptForCausalLM

from deer_ros.model.conversion_deer_vla import from_upstream_name, split_fused_qkv, to_upstream_name
from deer_ros.model.modeling_deer_vla import mpt_config, preprocess_images

TOLERANCE = dict(atol=1e-5, rtol=1e-5)
MEDIA = tiny_config().decoder.media_token_id


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded prompts; the first has a token before ``<image>`` (no media: zero attention)."""
    ids = torch.tensor([[5, MEDIA, 17, 41, 9, 80, 318, 0], [MEDIA, 33, 12, 7, 318, 0, 319, 319]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    return ids, mask


def test_perceiver_matches_open_flamingo() -> None:
    model = tiny_model(tiny_config())
    perceiver = model.config.perceiver
    reference = open_flamingo_module('helpers').PerceiverResampler(
        dim=model.config.vision.hidden_size, depth=perceiver.depth, dim_head=perceiver.dim_head,
        heads=perceiver.heads, num_latents=perceiver.num_latents, ff_mult=perceiver.ff_mult)
    reference.load_state_dict(model.perceiver.state_dict())  # same names: upstream keys load as they are
    patches = torch.randn(3, 4, model.config.vision.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(model.perceiver(patches), reference(patches[:, None, None])[:, 0], **TOLERANCE)


def test_gated_cross_attention_matches_open_flamingo_media_masking() -> None:
    model = tiny_model(tiny_config())
    decoder = model.config.decoder
    ours = model.lang_encoder.gated_cross_attn_layers[0]
    reference = open_flamingo_module('helpers').GatedCrossAttentionBlock(
        dim=decoder.d_model, dim_visual=model.config.vision.hidden_size, dim_head=decoder.cross_attn_dim_head,
        heads=decoder.cross_attn_heads, ff_mult=decoder.cross_attn_ff_mult)
    reference.load_state_dict(ours.state_dict())
    ids, _ = _prompts()
    text, visual = torch.randn(2, ids.shape[1], decoder.d_model), torch.randn(2, 8, model.config.vision.hidden_size)
    with torch.no_grad():
        expected = reference(text, visual[:, None], media_locations=ids == MEDIA)
        torch.testing.assert_close(ours(text, visual, ids == MEDIA), expected, **TOLERANCE)
        # the token before <image> got no attention output: only the gated feed-forward changed it
        attention = ours.attn(text, visual, ids == MEDIA)
    assert torch.all(attention[0, 0] == 0) and torch.all(attention[0, 1:].abs().sum(-1) > 0)


class _MosaicQKNorm(nn.Module):
    """MosaicGPT's ``attn_qk_ln`` step: LayerNorm (no bias) on the query and key thirds of the fused projection."""

    def __init__(self, fused: nn.Linear, eps: float) -> None:
        super().__init__()
        self.fused, self.eps = fused, eps
        self.q_weight = nn.Parameter(torch.ones(fused.in_features))
        self.k_weight = nn.Parameter(torch.ones(fused.in_features))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        query, key, value = self.fused(hidden).chunk(3, dim=2)
        width = (query.shape[-1],)
        return torch.cat([F.layer_norm(query, width, self.q_weight, None, self.eps),
                          F.layer_norm(key, width, self.k_weight, None, self.eps), value], dim=2)


def _reference_lm(model, layers: int) -> MptForCausalLM:
    """transformers' MPT with our block weights (one layer more, so every kept block's raw output is returned)."""
    config = model.config
    hf_config = mpt_config(config)
    hf_config.n_layers = layers + 1
    reference = MptForCausalLM(hf_config).eval()
    renames = {}
    if config.decoder.qk_layernorm:
        for block in reference.transformer.blocks:
            block.attn.Wqkv = _MosaicQKNorm(block.attn.Wqkv, config.decoder.layer_norm_eps)
        renames = {'attn.Wqkv.weight': 'attn.Wqkv.fused.weight', 'attn.Wqkv.q_ln.weight': 'attn.Wqkv.q_weight',
                   'attn.Wqkv.k_ln.weight': 'attn.Wqkv.k_weight'}
    state = {}
    for name, tensor in model.lang_encoder.blocks.state_dict().items():
        index, rest = name.split('.', 1)
        state[f'{index}.{renames.get(rest, rest)}'] = tensor
    missing, unexpected = reference.transformer.blocks.load_state_dict(state, strict=False)
    assert not unexpected and all(name.startswith(f'{layers}.') for name in missing)
    reference.transformer.wte.load_state_dict(model.lang_encoder.wte.state_dict())
    return reference


@pytest.mark.parametrize('qk_layernorm', [True, False], ids=['mosaic-gpt-1b', 'mpt-7b'])
def test_decoder_blocks_match_transformers_mpt(qk_layernorm: bool) -> None:
    """Closed gates: our layer-by-layer decoder is MPT's forward (ALiBi, causal + padding mask, QK-LayerNorm)."""
    model = tiny_model(tiny_config(qk_layernorm=qk_layernorm, block_layout='mosaic_gpt' if qk_layernorm else 'mpt'))
    for block in model.lang_encoder.gated_cross_attn_layers:
        block.attn_gate.data.zero_()
        block.ff_gate.data.zero_()
    reference = _reference_lm(model, model.config.kept_layers)
    ids, mask = _prompts()
    visual = torch.randn(2, 8, model.config.vision.hidden_size)
    with torch.no_grad():
        hidden_states = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                  use_cache=False).hidden_states
        features = model.exit_features(visual, ids, mask)
    for exit_index, layers in enumerate(model.exit_layers):  # hidden_states[k]: the raw output of block k - 1
        torch.testing.assert_close(features[:, exit_index], hidden_states[layers].amax(dim=1), **TOLERANCE)


@pytest.mark.parametrize('variant', ['3b', '9b'])
def test_decoder_with_cross_attention_matches_open_flamingo_lm(variant: str) -> None:
    """Open gates: equal to open-flamingo's FlamingoLMMixin on transformers' MPT, cross-attention placement included."""
    nine = variant == '9b'
    model = tiny_model(tiny_config(qk_layernorm=not nine, block_layout='mpt' if nine else 'mosaic_gpt',
                                   cross_attn_every_n_layers=4 if nine else 1, num_exits=4 if nine else 3))
    layers, decoder = model.config.kept_layers, model.config.decoder
    flamingo_lm, helpers = open_flamingo_module('flamingo_lm'), open_flamingo_module('helpers')
    reference = _reference_lm(model, layers)
    open_flamingo_module('utils').extend_instance(reference, flamingo_lm.FlamingoLMMixin)
    reference.set_decoder_layers_attr_name('transformer.blocks')
    reference.init_flamingo(media_token_id=MEDIA, lang_hidden_size=decoder.d_model,
                            vis_hidden_size=model.config.vision.hidden_size,
                            cross_attn_every_n_layers=decoder.cross_attn_every_n_layers, gradient_checkpointing=False)
    # open-flamingo's blocks at our (reduced) widths, with our weights, rewrapped by its own layer builder
    reference.gated_cross_attn_layers = nn.ModuleList(
        None if block is None else helpers.GatedCrossAttentionBlock(
            dim=decoder.d_model, dim_visual=model.config.vision.hidden_size, dim_head=decoder.cross_attn_dim_head,
            heads=decoder.cross_attn_heads, ff_mult=decoder.cross_attn_ff_mult)
        for block in reference.gated_cross_attn_layers)
    for ours, theirs in zip(model.lang_encoder.gated_cross_attn_layers, reference.gated_cross_attn_layers):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            theirs.load_state_dict(ours.state_dict())
    reference.init_flamingo_layers(False)
    assert [i for i, b in enumerate(model.lang_encoder.gated_cross_attn_layers) if b is not None] == \
        ([3, 7] if nine else list(range(layers)))
    ids, mask = _prompts()
    visual = torch.randn(2, 8, model.config.vision.hidden_size)
    for layer in reference.transformer.blocks:
        layer.condition_vis_x(visual[:, None])
    with torch.no_grad():
        hidden_states = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                  use_cache=False).hidden_states
        features = model.exit_features(visual, ids, mask)
    for exit_index, layers_run in enumerate(model.exit_layers):
        torch.testing.assert_close(features[:, exit_index], hidden_states[layers_run].amax(dim=1), **TOLERANCE)


class _UpstreamHead(nn.Module):
    """DeeR's ``DeterministicDecoder`` (layerwise dropout, LayerNorm LSTM and MLPs) written out in its tensor layout."""

    def __init__(self, feature_dim: int, hidden: int, lstm_layers: int, mlp_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.lstm_layers = lstm_layers
        rnn: list[nn.Module] = []
        for layer in range(lstm_layers):
            rnn += [nn.LSTM(feature_dim if layer == 0 else hidden, hidden, batch_first=True), nn.LayerNorm(hidden)]
            rnn += [nn.Dropout(0.3)] if layer < lstm_layers - 1 else []
        self.rnn = nn.Module()
        self.rnn.layers = nn.ModuleList(rnn)

        def mlp(out: int, squash: nn.Module) -> nn.Module:
            layers, size = [nn.Dropout(0.4)], hidden
            for width in mlp_sizes:
                layers += [nn.Linear(size, width), nn.LayerNorm(width), nn.ReLU(), nn.Dropout(0.4)]
                size = width
            head = nn.Module()
            head.mlp = nn.Sequential(*layers, nn.Linear(size, out), squash)
            return head
        self.actions, self.gripper = mlp(6, nn.Tanh()), mlp(1, nn.Sigmoid())

    def forward(self, tokens: torch.Tensor, hidden_state=None):
        """(batch, time, tokens, dim): max-pool the tokens, LSTM from ``hidden_state``; pose, gripper logit, state."""
        x = tokens.amax(dim=2)
        states = [None if hidden_state is None else (hidden_state[0][i:i + 1], hidden_state[1][i:i + 1])
                  for i in range(self.lstm_layers)]
        for i in range(0, len(self.rnn.layers), 3):
            x, states[i // 3] = self.rnn.layers[i](x, states[i // 3])
            x = self.rnn.layers[i + 1](x)
        final = (torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states]))
        return self.actions.mlp(x), self.gripper.mlp[:-1](x)[..., 0], final


def test_action_head_loads_upstream_keys_and_matches_it() -> None:
    model = tiny_model(tiny_config())
    head = model.config.head
    reference = _UpstreamHead(model.config.decoder.d_model, head.hidden_size, head.lstm_num_layers,
                              model.config.mlp_hidden_sizes).eval()
    upstream = {to_upstream_name(f'action_head.{name}', model.config): tensor
                for name, tensor in model.action_head.state_dict().items()}
    assert all(name.startswith('extra_exit.') for name in upstream)
    reference.load_state_dict({name.removeprefix('extra_exit.'): t for name, t in upstream.items()})  # strict
    tokens = torch.randn(2, 5, 7, model.config.decoder.d_model)
    with torch.no_grad():
        pose, gripper, state = reference(tokens)
        ours = model.action_head(tokens.amax(dim=2))
        torch.testing.assert_close(ours.pose, pose, **TOLERANCE)
        torch.testing.assert_close(ours.gripper_logit, gripper, **TOLERANCE)
        # carrying the state step by step equals the unrolled window
        carried = None
        for t in range(tokens.shape[1]):
            step = model.action_head(tokens[:, t:t + 1].amax(dim=2), carried)
            carried = step.state
        torch.testing.assert_close(step.pose[:, 0], pose[:, -1], **TOLERANCE)
        torch.testing.assert_close(carried, state, **TOLERANCE)


class _OpenClipVisual(nn.Module):
    """open_clip 2.20's VisionTransformer (OpenAI weights: QuickGELU), returning the raw tokens OpenFlamingo reads."""

    def __init__(self, size: int, patch: int, width: int, layers: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, 8))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.ln_1, block.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            block.attn = nn.MultiheadAttention(width, heads)
            block.mlp = nn.Sequential()
            block.mlp.add_module('c_fc', nn.Linear(width, mlp))
            block.mlp.add_module('c_proj', nn.Linear(mlp, width))
            self.transformer.resblocks.append(block)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding).permute(1, 0, 2)
        for block in self.transformer.resblocks:
            normed = block.ln_1(x)
            x = x + block.attn(normed, normed, normed, need_weights=False)[0]
            hidden = block.mlp.c_fc(block.ln_2(x))
            x = x + block.mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))
        return x.permute(1, 0, 2)[:, 1:]  # tokens: no ln_post (open_clip 2.20 normalises only the pooled output)


def test_vision_tower_from_open_clip_layout_gives_its_patch_tokens() -> None:
    model = tiny_model(tiny_config())
    vision = model.config.vision
    reference = _OpenClipVisual(vision.image_size, vision.patch_size, vision.hidden_size, vision.num_layers,
                                vision.num_attention_heads, vision.intermediate_size).eval()
    converted = {}
    for name, tensor in reference.state_dict().items():
        targets = from_upstream_name(f'vision_encoder.visual.{name}', model.config)
        parts = split_fused_qkv(tensor) if len(targets) == 3 else (tensor,)
        converted.update(zip(targets, parts))
    assert set(converted) == {name for name in model.state_dict() if name.startswith('vision_encoder.')}
    model.load_state_dict(converted, strict=False)
    pixels = torch.randn(2, 3, vision.image_size, vision.image_size)
    with torch.no_grad():
        torch.testing.assert_close(model.patch_tokens(pixels), reference(pixels), **TOLERANCE)


def test_images_are_preprocessed_like_open_clip_eval_transform() -> None:
    """PIL bicubic to 224 (uint8 rounding kept), /255, CLIP mean/std: exactly what upstream feeds the ViT."""
    config = tiny_config().vision
    rng = np.random.default_rng(0)
    for shape in ((200, 200, 3), (84, 84, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        pixels = preprocess_images(torch.from_numpy(image)[None], config)[0]
        resized = np.asarray(Image.fromarray(image).resize((config.image_size,) * 2, Image.BICUBIC), np.float32)
        expected = (resized / np.float32(255) - np.float32(config.image_mean)) / np.float32(config.image_std)
        np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), expected, atol=1e-6)
