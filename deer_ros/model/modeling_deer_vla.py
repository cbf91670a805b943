"""DeeR-VLA on OpenFlamingo-MPT, equal at the level of tensors to the published checkpoints.

What runs per control step, as ``robot_flamingo/models/flamingo_mpt.py`` (post fusion) does:

* both cameras are resized to 224 px (PIL bicubic) and CLIP-normalised; CLIP
  ViT-L/14 gives 256 patch tokens each (the class token and ``ln_post`` are not
  used: open_clip 2.20 returns the raw tokens). The ViT is ``transformers``'
  ``CLIPVisionModel``: open_clip cannot be installed beside the CPU torch here
  (its torchvision pins another torch), and the two compute the same function
  once the open_clip keys are converted (:mod:`.conversion_deer_vla`);
* ONE Perceiver resampler, shared by the cameras, turns each camera's tokens
  into 64 latents; static then gripper latents are concatenated (128 tokens);
* MPT decoder blocks (``transformers``' ``MptBlock``: ALiBi, no biases; MPT-1B
  adds MosaicGPT's query/key LayerNorms, :class:`QKNormedWqkv`) read the
  prompt ``<image>{instruction}<|endofchunk|>{eos}``; before block ``i`` with
  ``(i + 1) % n == 0`` a tanh-gated cross-attention block lets the text
  attend to the 128 visual tokens, masked by OpenFlamingo's media locations;
* after every ``exit_interval`` blocks the raw block output (no final norm)
  is max-pooled over the text positions into the exit feature;
* one LayerNorm-LSTM head (``extra_exit`` upstream) maps an exit feature to
  6 pose deltas (tanh) and a gripper logit. At run time its state is carried
  through a subtask and only the chosen exit's call advances it (upstream's
  window of 1), or a window is replayed (RoboFlamingo); see
  :class:`~deer_ros.policy.early_exit.EarlyExitPolicy`.

Module and parameter names follow upstream wherever ``transformers`` does not
impose its own (Perceiver, cross-attention, head indices), so the key map
to an upstream checkpoint is short. Layers past the last exit are never
built, and :meth:`DeerVLAFlamingo.from_pretrained` never reads their tensors.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, MptConfig
from transformers.models.mpt.modeling_mpt import MptBlock, build_mpt_alibi_tensor

from deer_ros.calvin_layout import POSE_DIM

from .configuration_deer_vla import ClipVisionConfig, DeerVLAConfig, LstmHeadConfig, PerceiverConfig
from .modeling_deer import (
    DeerVLA,
    HeadOutput,
    LSTMState,
    exit_group_features,
    load_capped_safetensors,
    masked_max_pool,
    read_capped_config,
)

# --------------------------------------------------------------------------- vision


def clip_vision_config(config: ClipVisionConfig) -> CLIPVisionConfig:
    """OpenAI CLIP ViT: QuickGELU, LayerNorm eps 1e-5."""
    return CLIPVisionConfig(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                            num_hidden_layers=config.num_layers, num_attention_heads=config.num_attention_heads,
                            image_size=config.image_size, patch_size=config.patch_size, hidden_act='quick_gelu',
                            layer_norm_eps=config.layer_norm_eps)


def _resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision ``Resize(size, BICUBIC)`` then ``CenterCrop(size)`` on a PIL image (open_clip's eval transform)."""
    height, width = image.shape[:2]
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(size * long / short)
    new_height, new_width = (size, new_long) if height <= width else (new_long, size)
    resized = Image.fromarray(image).resize((new_width, new_height), Image.BICUBIC)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    return np.asarray(resized)[top:top + size, left:left + size]


def preprocess_images(images: torch.Tensor, config: ClipVisionConfig) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, S, S): PIL bicubic resize, /255, CLIP mean/std.

    PIL rounds the resized pixels to uint8 as open_clip's transform does, so
    the pixels equal upstream's exactly. Resizing is not a tensor operation:
    on the meta device (cost counting) only the output shape is produced.
    """
    size = config.image_size
    if images.device.type == 'meta':
        return torch.empty(images.shape[0], 3, size, size, device=images.device)
    resized = np.stack([_resize_and_crop(image, size) for image in images.cpu().numpy()])
    pixels = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div(255).to(images.device)
    mean = torch.tensor(config.image_mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std, device=images.device).view(1, 3, 1, 1)
    return pixels.sub(mean).div(std)


# --------------------------------------------------------------------------- OpenFlamingo blocks


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """OpenFlamingo's ``FeedForward``: LayerNorm, bias-free Linear, GELU, bias-free Linear (indices 0, 1, 3)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(2)


def _stable_softmax(scores: torch.Tensor) -> torch.Tensor:
    """OpenFlamingo subtracts the (detached) row maximum before the softmax; kept for identical rounding."""
    return (scores - scores.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)


class PerceiverAttention(nn.Module):
    """Latents attend to the media tokens and to themselves (keys/values of both)."""

    def __init__(self, dim: int, config: PerceiverConfig) -> None:
        super().__init__()
        inner = config.heads * config.dim_head
        self.heads = config.heads
        self.scale = config.dim_head ** -0.5
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        keys, values = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        query = _split_heads(self.to_q(latents), self.heads) * self.scale
        attention = _stable_softmax(query @ _split_heads(keys, self.heads).transpose(-1, -2))
        return self.to_out(_merge_heads(attention @ _split_heads(values, self.heads)))


class PerceiverResampler(nn.Module):
    """Any number of patch tokens in, ``num_latents`` tokens out (no frame or media-time embeddings, as upstream)."""

    def __init__(self, dim: int, config: PerceiverConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(config.num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, config), feed_forward(dim, config.ff_mult)])
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, patches, dim) -> (N, num_latents, dim)."""
        latents = self.latents.unsqueeze(0).expand(patches.shape[0], -1, -1)
        for attention, ff in self.layers:
            latents = attention(patches, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    """Text attends to the visual tokens of the image its ``<image>`` token introduced.

    OpenFlamingo's rule for one image per prompt: text after the ``<image>``
    token attends to all visual tokens; text before any ``<image>`` gets zero
    attention output (then only the gated feed-forward acts on it).
    """

    def __init__(self, dim: int, visual_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(visual_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, text: torch.Tensor, visual: torch.Tensor, media_locations: torch.Tensor) -> torch.Tensor:
        text_time = media_locations.cumsum(dim=-1).view(text.shape[0], 1, text.shape[1], 1)
        keys, values = self.to_kv(visual).chunk(2, dim=-1)
        query = _split_heads(self.to_q(self.norm(text)), self.heads) * self.scale
        scores = query @ _split_heads(keys, self.heads).transpose(-1, -2)
        scores = scores.masked_fill(text_time != 1, -torch.finfo(scores.dtype).max)
        attention = _stable_softmax(scores).masked_fill(text_time == 0, 0.0)
        return self.to_out(_merge_heads(attention @ _split_heads(values, self.heads)))


class GatedCrossAttentionBlock(nn.Module):
    """Masked cross-attention and a feed-forward, each added through a tanh gate (0 at init: identity)."""

    def __init__(self, dim: int, visual_dim: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, visual_dim, heads, dim_head)
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(self, text: torch.Tensor, visual: torch.Tensor, media_locations: torch.Tensor) -> torch.Tensor:
        text = self.attn(text, visual, media_locations) * self.attn_gate.tanh() + text
        return self.ff(text) * self.ff_gate.tanh() + text


# --------------------------------------------------------------------------- MPT decoder


class QKNormedWqkv(nn.Linear):
    """MosaicGPT-1B's fused q/k/v projection followed by its query and key LayerNorms (``attn_qk_ln``).

    ``transformers``' MPT has no QK-LayerNorm. MosaicGPT applies it right
    after splitting the fused projection, before heads are formed, so this
    projection drops into ``MptAttention.Wqkv`` and the rest of the stock
    block (ALiBi, masking, softmax, output projection) stays as it is.
    """

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__(d_model, 3 * d_model, bias=False)
        self.q_ln = nn.LayerNorm(d_model, eps=eps, bias=False)
        self.k_ln = nn.LayerNorm(d_model, eps=eps, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        query, key, value = super().forward(hidden).chunk(3, dim=-1)
        return torch.cat([self.q_ln(query), self.k_ln(key), value], dim=-1)


def mpt_config(config: DeerVLAConfig) -> MptConfig:
    decoder = config.decoder
    return MptConfig(d_model=decoder.d_model, n_heads=decoder.n_heads, n_layers=config.kept_layers,
                     expansion_ratio=decoder.expansion_ratio, max_seq_len=decoder.max_length,
                     vocab_size=decoder.vocab_size, layer_norm_epsilon=decoder.layer_norm_eps,
                     attn_config={'alibi': True, 'alibi_bias_max': decoder.alibi_bias_max})


def mpt_block(config: DeerVLAConfig, index: int) -> MptBlock:
    block = MptBlock(mpt_config(config), layer_idx=index)
    if config.decoder.qk_layernorm:
        block.attn.Wqkv = QKNormedWqkv(config.decoder.d_model, config.decoder.layer_norm_eps)
    return block


class FlamingoMptDecoder(nn.Module):
    """Token embeddings, the kept MPT blocks and the gated cross-attention blocks placed before them."""

    def __init__(self, config: DeerVLAConfig) -> None:
        super().__init__()
        decoder = config.decoder
        self.n_heads = decoder.n_heads
        self.alibi_bias_max = decoder.alibi_bias_max
        self.wte = nn.Embedding(decoder.vocab_size, decoder.d_model)
        self.blocks = nn.ModuleList(mpt_block(config, index) for index in range(config.kept_layers))
        # None where OpenFlamingo puts no cross-attention, so indices equal the decoder layer's (as upstream).
        self.gated_cross_attn_layers = nn.ModuleList(
            GatedCrossAttentionBlock(decoder.d_model, config.vision.hidden_size, decoder.cross_attn_heads,
                                     decoder.cross_attn_dim_head, decoder.cross_attn_ff_mult)
            if config.has_cross_attention(index) else None
            for index in range(config.kept_layers))

    def truncate(self, num_layers: int) -> None:
        self.blocks = self.blocks[:num_layers]
        self.gated_cross_attn_layers = self.gated_cross_attn_layers[:num_layers]

    def attention_inputs(self, text_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """ALiBi bias (heads, 1, L) and the boolean mask (N, 1, L, L) of disallowed keys: future or padding."""
        length = text_mask.shape[1]
        alibi = build_mpt_alibi_tensor(self.n_heads, length, self.alibi_bias_max, device=text_mask.device)
        future = torch.ones(length, length, dtype=torch.bool, device=text_mask.device).triu(1)
        return alibi.to(dtype), future | ~text_mask.bool().view(-1, 1, 1, length)

    def layer(self, index: int, hidden: torch.Tensor, visual: torch.Tensor, media_locations: torch.Tensor,
              alibi: torch.Tensor, disallowed: torch.Tensor) -> torch.Tensor:
        """Decoder layer ``index``: its cross-attention block (if any), then its MPT block."""
        cross_attention = self.gated_cross_attn_layers[index]
        if cross_attention is not None:
            hidden = cross_attention(hidden, visual, media_locations)
        return self.blocks[index](hidden, position_bias=alibi, attention_mask=disallowed)[0]


# --------------------------------------------------------------------------- action head


class LayerNormLSTM(nn.Module):
    """Single-layer ``nn.LSTM`` modules, each followed by a LayerNorm, with dropout between them.

    ``layers`` holds [LSTM, LayerNorm, Dropout, LSTM, ...] at upstream's
    indices (3 per layer, no dropout after the last), so state-dict keys
    such as ``rnn.layers.3.weight_ih_l0`` match DeeR's checkpoints.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.num_layers = num_layers
        modules: list[nn.Module] = []
        for layer in range(num_layers):
            modules += [nn.LSTM(input_size if layer == 0 else hidden_size, hidden_size, batch_first=True),
                        nn.LayerNorm(hidden_size)]
            if layer < num_layers - 1:
                modules.append(nn.Dropout(dropout))
        self.layers = nn.ModuleList(modules)

    def forward(self, inputs: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        outputs, finals = inputs, []
        for layer in range(self.num_layers):
            lstm, norm = self.layers[3 * layer], self.layers[3 * layer + 1]
            layer_state = None if state is None else (state[0][layer:layer + 1], state[1][layer:layer + 1])
            outputs, final = lstm(outputs, layer_state)
            outputs = norm(outputs)
            if layer < self.num_layers - 1:
                outputs = self.layers[3 * layer + 2](outputs)
            finals.append(final)
        return outputs, (torch.cat([h for h, _ in finals]), torch.cat([c for _, c in finals]))


class MlpHead(nn.Module):
    """Upstream's ``MLPTanhHead`` / ``MLPSigmoidHead``: ``mlp`` is one ``nn.Sequential`` ending in the squashing."""

    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...], output_size: int, config: LstmHeadConfig,
                 squash: nn.Module) -> None:
        super().__init__()
        layerwise = config.dropout_mode == 'layerwise'
        layers: list[nn.Module] = [nn.Dropout(config.dropout)] if layerwise else []
        for index, size in enumerate(hidden_sizes):
            layers += [nn.Linear(input_size, size), nn.LayerNorm(size) if config.mlp_layernorm else nn.Identity(),
                       nn.ReLU()]
            if layerwise or index == len(hidden_sizes) - 1:
                layers.append(nn.Dropout(config.dropout))
            input_size = size
        self.mlp = nn.Sequential(*layers, nn.Linear(input_size, output_size), squash)

    def forward(self, hidden: torch.Tensor, squashed: bool = True) -> torch.Tensor:
        """The head's output, or (``squashed=False``) the value before the final tanh/sigmoid."""
        return self.mlp(hidden) if squashed else self.mlp[:-1](hidden)


class LstmActionHead(nn.Module):
    """DeeR's ``DeterministicDecoder`` for a pooled exit feature: LSTM, tanh pose MLP, gripper MLP (logit kept).

    Built from ``nn.LSTM`` as upstream, for identical numerics; its fused CPU
    kernel is invisible to ``FlopCounterMode``, so its cost is counted on the
    meta device (:func:`~deer_ros.model.flops.cost_table_for` does).
    """

    def __init__(self, config: LstmHeadConfig, feature_dim: int, mlp_hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        if config.lstm_layernorm:
            self.rnn: nn.Module = LayerNormLSTM(feature_dim, config.hidden_size, config.lstm_num_layers,
                                                config.lstm_dropout)
        else:
            self.rnn = nn.LSTM(feature_dim, config.hidden_size, config.lstm_num_layers, batch_first=True,
                               dropout=config.lstm_dropout)
        self.actions = MlpHead(config.hidden_size, mlp_hidden_sizes, POSE_DIM, config, nn.Tanh())
        self.gripper = MlpHead(config.hidden_size, mlp_hidden_sizes, 1, config, nn.Sigmoid())

    def forward(self, features: torch.Tensor, state: LSTMState | None = None) -> HeadOutput:
        """``features`` (batch, time, feature_dim) from ``state`` (``None``: zeros); a control step: ``time == 1``."""
        hidden, state = self.rnn(features, state)
        return HeadOutput(self.actions(hidden), self.gripper(hidden, squashed=False).squeeze(-1), state)

    def history_state(self, features: torch.Tensor) -> LSTMState:
        """LSTM state after ``features`` from a zero state; the MLPs are skipped (the replay mode's history)."""
        return self.rnn(features)[1]


# --------------------------------------------------------------------------- the model


class DeerVLAFlamingo(nn.Module):
    """CLIP + shared resampler, the MPT decoder cut after its last exit, gated cross-attention and DeeR's head."""

    def __init__(self, config: DeerVLAConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = CLIPVisionModel(clip_vision_config(config.vision))
        self.perceiver = PerceiverResampler(config.vision.hidden_size, config.perceiver)
        self.lang_encoder = FlamingoMptDecoder(config)
        self.action_head = LstmActionHead(config.head, config.decoder.d_model, config.mlp_hidden_sizes)

    # ---- structure
    @property
    def num_exits(self) -> int:
        return self.config.num_exits

    @property
    def exit_layers(self) -> tuple[int, ...]:
        return self.config.exit_layers

    @property
    def carries_state(self) -> bool:
        """True when the head's LSTM state is carried through a subtask (upstream DeeR), False for window replay."""
        return self.config.head.history == 'carry'

    def truncate(self, num_exits: int) -> None:
        """Drop every layer past exit ``num_exits - 1`` (peak-GFLOPs / memory cap) and free its weights."""
        if not 1 <= num_exits <= self.num_exits:
            raise ValueError(f'num_exits must be in [1, {self.num_exits}], got {num_exits}')
        self.config = dataclasses.replace(self.config, num_exits=num_exits)
        self.lang_encoder.truncate(self.config.kept_layers)

    # ---- inputs
    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP patch tokens (N, 256, width): the last encoder layer's output without the class token."""
        return self.vision_encoder(pixel_values=pixels).last_hidden_state[:, 1:]

    def encode_vision(self, rgb_static: torch.Tensor, rgb_gripper: torch.Tensor,
                      proprio: torch.Tensor | None = None) -> torch.Tensor:
        """Visual tokens (N, 2 * num_latents, width) of N frames from uint8 HWC images; ``proprio`` is not used.

        Both cameras go through the ViT and the shared resampler as one batch;
        static latents come first, as upstream concatenates them.
        """
        dtype = self.perceiver.latents.dtype
        pixels = torch.cat([preprocess_images(images, self.config.vision) for images in (rgb_static, rgb_gripper)])
        latents = self.perceiver(self.patch_tokens(pixels.to(dtype)))
        static, gripper = latents.split(rgb_static.shape[0])
        return torch.cat([static, gripper], dim=1)

    def _pool(self, hidden: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        if self.config.exit_pooling == 'all_tokens':
            return hidden.amax(dim=1)
        return masked_max_pool(hidden, text_mask)

    # ---- decoder, one exit group at a time
    def iter_exit_features(self, visual: torch.Tensor, text_input: torch.Tensor, text_mask: torch.Tensor,
                           num_exits: int | None = None, reference: bool = False
                           ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(exit_index, feature (N, d_model))`` after each exit group (:func:`exit_group_features`).

        ``text_input``: token ids (N, L) from
        :class:`~deer_ros.model.tokenization_deer_vla.FlamingoPromptEncoder`.
        ``reference``: first yield ``(REFERENCE, feature)`` read one layer
        before the first exit (upstream's comparison for the first exit).
        """
        if text_input.shape[0] != visual.shape[0]:
            text_input = text_input.expand(visual.shape[0], -1)
            text_mask = text_mask.expand(visual.shape[0], -1)
        decoder = self.lang_encoder
        media_locations = text_input == self.config.decoder.media_token_id
        hidden = decoder.wte(text_input)
        alibi, disallowed = decoder.attention_inputs(text_mask, hidden.dtype)

        def run_layer(index: int, hidden: torch.Tensor) -> torch.Tensor:
            return decoder.layer(index, hidden, visual, media_locations, alibi, disallowed)

        yield from exit_group_features(self.config, hidden, run_layer, lambda states: self._pool(states, text_mask),
                                       num_exits, reference)

    exit_features = DeerVLA.exit_features  # (N, num_exits, d_model) in one pass: training and calibration

    # ---- cost counting (deer_ros.model.flops)
    def resident_modules(self, num_layers: int) -> list[nn.Module]:
        """Modules whose parameters are in memory when the decoder is capped at ``num_layers`` layers."""
        decoder = self.lang_encoder
        capped = [module for module in decoder.gated_cross_attn_layers[:num_layers] if module is not None]
        return [self.vision_encoder, self.perceiver, decoder.wte, self.action_head,
                *decoder.blocks[:num_layers], *capped]

    # ---- checkpoints
    save_pretrained = DeerVLA.save_pretrained  # config.json + model.safetensors of the kept layers

    @classmethod
    def from_pretrained(cls, directory: str | Path, num_exits: int | None = None,
                        device: str | torch.device = 'cpu') -> 'DeerVLAFlamingo':
        """Build the model capped at ``num_exits`` and read only the tensors it needs.

        Raises :class:`CheckpointError` naming the file for a missing file,
        missing or unexpected tensors, or shape mismatches.
        """
        config, weights_path = read_capped_config(directory, DeerVLAConfig.from_file, num_exits)
        with torch.device('meta'):
            model = cls(config)
        load_capped_safetensors(model, weights_path, device, model._is_dropped_layer)
        # The ViT's position ids are a non-persistent buffer: rebuild it off the meta device.
        embeddings = model.vision_encoder.embeddings
        embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
        return model.eval()

    def _is_dropped_layer(self, name: str) -> bool:
        """True for tensors of decoder layers (or their cross-attention) beyond the current cap."""
        parts = name.split('.')
        return parts[:2] in (['lang_encoder', 'blocks'], ['lang_encoder', 'gated_cross_attn_layers']) \
            and int(parts[2]) >= self.config.kept_layers
