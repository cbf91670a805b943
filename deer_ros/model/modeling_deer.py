"""Multi-exit DeeR vision-language-action model.

Layout (RoboFlamingo-style, as in the DeeR paper):

* one vision encoder + Perceiver resampler per camera (static 200x200,
  gripper 84x84) turns each frame into a fixed number of visual tokens;
  optional proprioception adds one more token (and a residual skip from it to every exit feature);
* a Llama-family decoder from ``transformers`` reads the instruction; before
  every ``cross_attention_every``-th decoder layer a tanh-gated
  cross-attention block lets the text tokens attend to the visual tokens;
* after every ``exit_interval`` layers there is an exit: the hidden states
  max-pooled over the (non-padding) text tokens; with ``first_exit_reference``
  the states one layer before the first exit (the decoder input for one layer
  per exit) are pooled too, as the reference the first exit's action is
  compared with;
* one shared action head (LayerNorm-LSTM over the step history + MLPs) maps
  an exit feature to 6 pose deltas (tanh) and a gripper logit.

Why gated cross-attention rather than visual prefix tokens: the decoder then
only processes the instruction tokens, so the LLM cost per exit matches the
paper's accounting (it scales with text length, not with 2x64 visual tokens),
the pretrained decoder is untouched at initialisation (gates start at 0) and
can stay frozen, and the decoder layers are the stock ``transformers`` ones,
called one at a time, so no modeling file is patched.

The decoder is cut after its largest exit: layers past it are never built,
and :meth:`DeerVLA.from_pretrained` never reads their weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaModel
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from deer_ros.calvin_layout import POSE_DIM, ROBOT_OBS_DIM

from .configuration_deer import (
    FROZEN_VISION_ENCODERS,
    DeerConfig,
    ExitModelConfig,
    HeadConfig,
    ResamplerConfig,
    VisionConfig,
)
from .efficientnet_lite import frozen_trunk
from .tokenization import MINILM_HIDDEN_SIZE

WEIGHTS_NAME = 'model.safetensors'
ConfigT = TypeVar('ConfigT')
CONFIG_NAME = 'config.json'
# ``iter_exit_features(..., reference=True)`` yields this index for the features one layer before the first exit.
REFERENCE = -1


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not match the model; the message names the file and the mismatch."""


# --------------------------------------------------------------------------- vision

class ConvVisionEncoder(nn.Module):
    """Strided CNN turning an image into a grid of patch tokens with learned 2-D positions."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for _ in range(config.num_layers):
            layers += [nn.Conv2d(channels, config.hidden_size, 3, stride=2, padding=1),
                       nn.GroupNorm(1, config.hidden_size), nn.GELU()]
            channels = config.hidden_size
        self.layers = nn.Sequential(*layers)
        grid = config.image_size
        for _ in range(config.num_layers):
            grid = (grid + 1) // 2
        self.position = nn.Parameter(torch.zeros(1, grid * grid, config.hidden_size))
        self.output_dim = config.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.layers(pixels)
        return grid.flatten(2).transpose(1, 2) + self.position


class ClipVisionEncoder(nn.Module):
    """CLIP ViT vision tower from ``transformers`` (ViT-L/14 for the paper-sized model)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.model = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_attention_heads,
            image_size=config.image_size, patch_size=config.patch_size))
        self.output_dim = config.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state


class FeatureGridEncoder(nn.Module):
    """Trainable half of a frozen-trunk encoder: each cell of the trunk's feature grid becomes a token.

    LayerNorm over channels, a linear projection to ``hidden_size`` and a learned position per cell. Its input is
    the frozen trunk's output, computed fresh at run time or read from the training feature cache.
    """

    def __init__(self, channels: int, grid: int, hidden_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, hidden_size)
        self.position = nn.Parameter(torch.zeros(1, grid * grid, hidden_size))
        self.output_dim = hidden_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, g, g) trunk features (any float dtype) -> (N, g*g, hidden) tokens."""
        tokens = features.flatten(2).transpose(1, 2).to(self.proj.weight.dtype)
        return self.proj(self.norm(tokens)) + self.position


def camera_image_size(config: VisionConfig, camera: str) -> int:
    """Input side of ``camera``'s encoder: ``gripper_image_size`` for the gripper camera when set."""
    return config.gripper_image_size if camera == 'gripper' and config.gripper_image_size else config.image_size


def prepare_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [-1, 1] (antialiased bilinear resize when needed)."""
    pixels = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode='bilinear', align_corners=False, antialias=True)
    return pixels


def trunk_features(config: VisionConfig, images: torch.Tensor, camera: str) -> torch.Tensor:
    """Frozen-trunk features (N, C, g, g) of uint8 frames on their device, rounded to fp16.

    The one definition of what the training feature cache stores and what the model computes live, so a
    cached and a freshly computed frame give the same action. Always fp32 inside (autocast off): the cache is
    built that way, and a bf16/fp16 policy would otherwise see features ~4 % off the ones it was trained on.
    """
    trunk = frozen_trunk(config.feature_blocks, str(images.device))
    autocast_off = torch.autocast(images.device.type, enabled=False) \
        if torch.amp.is_autocast_available(images.device.type) else contextlib.nullcontext()  # meta: cost counting
    with autocast_off:
        return trunk(prepare_images(images, camera_image_size(config, camera))).to(torch.float16)


def build_vision_encoder(config: VisionConfig, camera: str) -> nn.Module:
    if config.encoder == 'efficientnet_lite0':
        trunk = frozen_trunk(config.feature_blocks, 'cpu')
        return FeatureGridEncoder(trunk.output_channels, trunk.grid_size(camera_image_size(config, camera)),
                                  config.hidden_size)
    return ConvVisionEncoder(config) if config.encoder == 'conv' else ClipVisionEncoder(config)


# --------------------------------------------------------------------------- attention blocks

class CrossAttention(nn.Module):
    """Multi-head attention from ``query_dim`` tokens to ``context_dim`` tokens (SDPA kernel)."""

    def __init__(self, query_dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(query_dim, query_dim, bias=False)
        self.k_proj = nn.Linear(context_dim, query_dim, bias=False)
        self.v_proj = nn.Linear(context_dim, query_dim, bias=False)
        self.o_proj = nn.Linear(query_dim, query_dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        attended = F.scaled_dot_product_attention(
            self._split(self.q_proj(query)), self._split(self.k_proj(context)), self._split(self.v_proj(context)))
        return self.o_proj(attended.transpose(1, 2).flatten(2))


def feed_forward(dim: int, mult: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


class PerceiverResampler(nn.Module):
    """Learned latents cross-attend to patch tokens: any number of patches in, ``num_latents`` tokens out."""

    def __init__(self, config: ResamplerConfig, input_dim: int) -> None:
        super().__init__()
        dim = config.hidden_size
        self.input_proj = nn.Linear(input_dim, dim) if input_dim != dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(config.num_latents, dim) * 0.02)
        self.media_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(config.depth))
        self.latent_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(config.depth))
        self.attentions = nn.ModuleList(CrossAttention(dim, dim, config.num_heads) for _ in range(config.depth))
        self.feed_forwards = nn.ModuleList(feed_forward(dim) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        media = self.input_proj(patches)
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
        for media_norm, latent_norm, attention, ff in zip(
                self.media_norms, self.latent_norms, self.attentions, self.feed_forwards):
            normed = latent_norm(latents)
            latents = latents + attention(normed, torch.cat([media_norm(media), normed], dim=1))
            latents = latents + ff(latents)
        return self.norm(latents)


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo-style block inserted before a decoder layer; tanh gates start at 0 (identity)."""

    def __init__(self, dim: int, visual_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = CrossAttention(dim, visual_dim, num_heads)
        self.attention_gate = nn.Parameter(torch.zeros(1))
        self.feed_forward = feed_forward(dim)
        self.feed_forward_gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        hidden = hidden + torch.tanh(self.attention_gate) * self.attention(self.norm(hidden), visual)
        return hidden + torch.tanh(self.feed_forward_gate) * self.feed_forward(hidden)


# --------------------------------------------------------------------------- action head

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, batch, hidden)


class LayerNormLSTM(nn.Module):
    """Stacked LSTM cells with LayerNorm after each layer, stepped explicitly.

    Built from ``LSTMCell`` so one control step is one cell call per layer
    (incremental inference carries the state) and its FLOPs are counted.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LSTMState:
        zeros = torch.zeros(len(self.cells), batch, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(self, inputs: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """``inputs`` (batch, time, input_size) -> outputs (batch, time, hidden), final state."""
        if state is None:
            state = self.initial_state(inputs.shape[0], inputs.device, inputs.dtype)
        h_layers, c_layers = list(state[0].unbind(0)), list(state[1].unbind(0))
        outputs = []
        for t in range(inputs.shape[1]):
            x = inputs[:, t]
            for layer, (cell, norm) in enumerate(zip(self.cells, self.norms)):
                h_layers[layer], c_layers[layer] = cell(x, (h_layers[layer], c_layers[layer]))
                x = norm(h_layers[layer])
                if layer < len(self.cells) - 1:
                    x = self.dropout(x)
            outputs.append(x)
        return torch.stack(outputs, dim=1), (torch.stack(h_layers), torch.stack(c_layers))


def mlp(input_dim: int, hidden_sizes: list[int], output_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(input_dim, size), nn.LayerNorm(size), nn.ReLU(), nn.Dropout(dropout)]
        input_dim = size
    layers.append(nn.Linear(input_dim, output_dim))
    return nn.Sequential(*layers)


@dataclass
class HeadOutput:
    pose: torch.Tensor           # (batch, time, 6), tanh -> [-1, 1]
    gripper_logit: torch.Tensor  # (batch, time), > 0 means open
    state: LSTMState


class ActionHead(nn.Module):
    """Action head: LayerNorm on the exit feature, LSTM over steps, pose MLP (tanh) and gripper MLP.

    The same class serves as the shared head (used at every exit at run time)
    and as the per-exit auxiliary heads built only for training.
    """

    def __init__(self, config: HeadConfig, feature_dim: int) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(feature_dim)
        self.lstm = LayerNormLSTM(feature_dim, config.lstm_hidden_size, config.lstm_layers, config.lstm_dropout)
        self.pose_mlp = mlp(config.lstm_hidden_size, config.mlp_hidden_sizes, POSE_DIM, config.mlp_dropout)
        self.gripper_mlp = mlp(config.lstm_hidden_size, config.mlp_hidden_sizes, 1, config.mlp_dropout)

    def forward(self, features: torch.Tensor, state: LSTMState | None = None) -> HeadOutput:
        """``features`` (batch, time, feature_dim); one control step is ``time == 1``."""
        hidden, state = self.lstm(self.input_norm(features), state)
        return HeadOutput(torch.tanh(self.pose_mlp(hidden)), self.gripper_mlp(hidden).squeeze(-1), state)

    def history_state(self, features: torch.Tensor) -> LSTMState:
        """LSTM state after ``features`` (batch, time, feature_dim) from a zero state; the MLPs are skipped."""
        return self.lstm(self.input_norm(features))[1]


# --------------------------------------------------------------------------- the model

def masked_max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the real (mask == 1) tokens only; padding never leaks into the feature."""
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), float('-inf')).amax(dim=1)


def exit_group_features(config: ExitModelConfig, hidden: torch.Tensor,
                        run_layer: Callable[[int, torch.Tensor], torch.Tensor],
                        pool: Callable[[torch.Tensor], torch.Tensor], num_exits: int | None = None,
                        reference: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """Run the decoder from its input ``hidden`` one exit group at a time; yield ``(exit_index, pool(states))``.

    Both families' ``iter_exit_features``. Layers of a group run only when
    the caller asks for the next item, so a consumer that stops iterating
    never runs the layers past its exit. ``reference`` (a model with
    ``first_exit_reference``): first yield ``(REFERENCE, pool(states))`` of
    the states one layer before the first exit; the first exit's action is
    compared with the head's action from it (upstream DeeR's rule,
    ``value_net.py``), so the first exit can stop. With one layer per exit
    that is the decoder input: no decoder layer is run for it.
    """
    if reference and not config.first_exit_reference:
        raise ValueError(f'{config.name} was not configured with first_exit_reference')
    layer = 0
    for exit_index, end in enumerate(config.exit_layers[:num_exits]):
        for index in range(layer, end):
            if reference and exit_index == 0 and index == end - 1:
                yield REFERENCE, pool(hidden)
            hidden = run_layer(index, hidden)
        layer = end
        yield exit_index, pool(hidden)


def llama_config(config: DeerConfig, num_layers: int) -> LlamaConfig:
    decoder = config.decoder
    llama = LlamaConfig(
        vocab_size=decoder.vocab_size, hidden_size=decoder.hidden_size,
        intermediate_size=decoder.intermediate_size, num_hidden_layers=num_layers,
        num_attention_heads=decoder.num_attention_heads, num_key_value_heads=decoder.num_key_value_heads,
        max_position_embeddings=decoder.max_position_embeddings, rope_theta=decoder.rope_theta,
        rms_norm_eps=decoder.rms_norm_eps, tie_word_embeddings=False)
    llama._attn_implementation = 'sdpa'
    return llama


class DeerVLA(nn.Module):
    """Vision encoders + resamplers, the decoder cut after its largest exit, gated cross-attention and the shared head."""

    CAMERAS = ('static', 'gripper')

    def __init__(self, config: DeerConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_encoders = nn.ModuleDict({cam: build_vision_encoder(config.vision, cam) for cam in self.CAMERAS})
        encoder_dim = self.vision_encoders['static'].output_dim
        self.resamplers = nn.ModuleDict(
            {cam: PerceiverResampler(config.resampler, encoder_dim) for cam in self.CAMERAS})
        visual_dim = config.resampler.hidden_size
        self.proprio_proj = nn.Linear(ROBOT_OBS_DIM, visual_dim) if config.use_proprio else None
        # The robot-state token also reaches every exit feature through a residual skip, zero at init: the
        # cross-attention gates start closed, and without the skip the head would not see the arm state
        # until they open, which takes far more updates than a CPU training budget gives.
        self.proprio_to_exit = nn.Linear(visual_dim, config.decoder.hidden_size) if config.use_proprio else None
        if self.proprio_to_exit is not None:
            nn.init.zeros_(self.proprio_to_exit.weight)
            nn.init.zeros_(self.proprio_to_exit.bias)

        decoder = LlamaModel(llama_config(config, config.kept_layers))
        # Text enters as token ids (embedding lookup) or as frozen sentence-encoder states (linear projection).
        sentence_states = config.decoder.tokenizer == 'minilm'
        self.embed_tokens = None if sentence_states else decoder.embed_tokens
        self.text_proj = nn.Linear(MINILM_HIDDEN_SIZE, config.decoder.hidden_size) if sentence_states else None
        self.layers = decoder.layers
        self.rotary_emb = decoder.rotary_emb
        every = config.decoder.cross_attention_every
        self.cross_attention = nn.ModuleList(
            GatedCrossAttentionBlock(config.decoder.hidden_size, visual_dim, config.decoder.num_attention_heads)
            for _ in range(0, config.kept_layers, every))
        self.action_head = ActionHead(config.head, config.decoder.hidden_size)

    # ---- structure
    @property
    def num_exits(self) -> int:
        return self.config.num_exits

    @property
    def exit_layers(self) -> tuple[int, ...]:
        return self.config.exit_layers

    def truncate(self, num_exits: int) -> None:
        """Drop every layer past exit ``num_exits - 1`` (peak-GFLOPs / memory cap) and free its weights."""
        if not 1 <= num_exits <= self.num_exits:
            raise ValueError(f'num_exits must be in [1, {self.num_exits}], got {num_exits}')
        self.config = dataclasses.replace(self.config, num_exits=num_exits)
        kept = self.config.kept_layers
        every = self.config.decoder.cross_attention_every
        self.layers = self.layers[:kept]
        self.cross_attention = self.cross_attention[:len(range(0, kept, every))]

    # ---- inputs
    @property
    def frozen_vision(self) -> bool:
        """True when a frozen trunk runs before the trainable vision layers (its features can be cached)."""
        return self.config.vision.encoder in FROZEN_VISION_ENCODERS

    def vision_modules(self) -> list[nn.Module]:
        """Everything resident for vision, the frozen trunk (shared by both cameras) included: memory accounting."""
        device = str(self.resamplers['static'].latents.device)
        trunk = [frozen_trunk(self.config.vision.feature_blocks, device)] if self.frozen_vision else []
        return [self.vision_encoders, *trunk]

    def prepare_images(self, images: torch.Tensor, camera: str = 'static') -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, S, S) resized to ``camera``'s encoder size, in [-1, 1]."""
        return prepare_images(images, camera_image_size(self.config.vision, camera))

    def encode_vision(self, rgb_static: torch.Tensor, rgb_gripper: torch.Tensor,
                      proprio: torch.Tensor | None = None) -> torch.Tensor:
        """Visual tokens (N, V, D_visual) of N frames from uint8 HWC images of both cameras."""
        images = (rgb_static, rgb_gripper)
        if self.frozen_vision:
            return self.encode_vision_features(*(trunk_features(self.config.vision, frames, cam)
                                                 for cam, frames in zip(self.CAMERAS, images)), proprio)
        return self._visual_tokens([self.vision_encoders[cam](self.prepare_images(frames, cam))
                                    for cam, frames in zip(self.CAMERAS, images)], proprio)

    def encode_vision_features(self, static_features: torch.Tensor, gripper_features: torch.Tensor,
                               proprio: torch.Tensor | None = None) -> torch.Tensor:
        """Visual tokens from frozen-trunk features (:func:`trunk_features`, live or from the training cache)."""
        return self._visual_tokens([self.vision_encoders[cam](features) for cam, features
                                    in zip(self.CAMERAS, (static_features, gripper_features))], proprio)

    def _visual_tokens(self, patches: list[torch.Tensor], proprio: torch.Tensor | None) -> torch.Tensor:
        tokens = [self.resamplers[cam](cam_patches) for cam, cam_patches in zip(self.CAMERAS, patches)]
        if self.proprio_proj is not None:
            if proprio is None:
                raise ValueError('this model was configured with use_proprio=True and needs proprioception')
            tokens.append(self.proprio_proj(proprio.to(tokens[0].dtype)).unsqueeze(1))
        return torch.cat(tokens, dim=1)

    # ---- decoder, one exit group at a time
    def iter_exit_features(self, visual: torch.Tensor, text_input: torch.Tensor, text_mask: torch.Tensor,
                           num_exits: int | None = None, reference: bool = False
                           ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(exit_index, feature (N, hidden))`` after each exit group (:func:`exit_group_features`).

        ``text_input`` is what :class:`~deer_ros.model.tokenization.InstructionEncoder`
        returns: token ids (N, L), or sentence-encoder states (N, L, 384).
        ``reference``: first yield ``(REFERENCE, feature)`` of the decoder input
        (one layer per exit; else the states one layer before the first exit).
        """
        if text_input.shape[0] != visual.shape[0]:
            text_input = text_input.expand(visual.shape[0], *text_input.shape[1:])
            text_mask = text_mask.expand(visual.shape[0], -1)
        if self.text_proj is None:
            hidden = self.embed_tokens(text_input)
        else:
            hidden = self.text_proj(text_input.to(visual.dtype))
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        position_embeddings = self.rotary_emb(hidden, position_ids)
        every = self.config.decoder.cross_attention_every
        skip = self.proprio_to_exit(visual[:, -1]) if self.proprio_to_exit is not None else 0.0

        def run_layer(index: int, hidden: torch.Tensor) -> torch.Tensor:
            if index % every == 0:
                hidden = self.cross_attention[index // every](hidden, visual)
            return self.layers[index](hidden, position_embeddings=position_embeddings, position_ids=position_ids)

        def pool(states: torch.Tensor) -> torch.Tensor:
            return masked_max_pool(states, text_mask) + skip

        yield from exit_group_features(self.config, hidden, run_layer, pool, num_exits, reference)

    def exit_features(self, visual: torch.Tensor, text_input: torch.Tensor, text_mask: torch.Tensor,
                      reference: bool = False) -> torch.Tensor:
        """Features at every exit in one pass: (N, num_exits, hidden). Used for training and calibration.

        ``reference``: the reference feature comes first, (N, 1 + num_exits, hidden).
        """
        return torch.stack([feature for _, feature in self.iter_exit_features(visual, text_input, text_mask,
                                                                              reference=reference)], dim=1)

    # ---- checkpoints
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (only the kept layers exist, so only they are saved)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        save_file({name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()},
                  str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, num_exits: int | None = None,
                        device: str | torch.device = 'cpu') -> 'DeerVLA':
        """Build the model capped at ``num_exits`` and read only the weights it needs.

        Raises :class:`CheckpointError` naming the file for a missing file,
        missing or unexpected tensors, or shape mismatches.
        """
        config, weights_path = read_capped_config(directory, DeerConfig.from_file, num_exits)
        with torch.device('meta'):
            model = cls(config)
        model.load_safetensors(weights_path, device)
        return model.eval()

    def load_safetensors(self, path: Path, device: str | torch.device = 'cpu') -> None:
        """Materialise parameters from ``path``; tensors of layers past the cap are skipped unread."""
        load_capped_safetensors(self, path, device, self._is_dropped_layer)
        # Rotary frequencies are a non-persistent buffer: recompute them off the meta device.
        self.rotary_emb = LlamaRotaryEmbedding(llama_config(self.config, 0)).to(device)

    def _is_dropped_layer(self, name: str) -> bool:
        """True for tensors of decoder layers (or their cross-attention) beyond the current cap."""
        parts = name.split('.')
        if parts[0] == 'layers':
            return int(parts[1]) >= len(self.layers)
        if parts[0] == 'cross_attention':
            return int(parts[1]) >= len(self.cross_attention)
        return False


def read_capped_config(directory: str | Path, read_config: Callable[[Path], ConfigT],
                       num_exits: int | None) -> tuple[ConfigT, Path]:
    """A checkpoint's config, capped at ``num_exits``, and its weights file: what every ``from_pretrained`` reads first.

    Raises :class:`CheckpointError` for a missing file or more exits than the checkpoint has.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f'checkpoint file not found: {path}')
    config = read_config(config_path)
    if num_exits is not None:
        if not 1 <= num_exits <= config.num_exits:
            raise CheckpointError(
                f'{config_path}: requested {num_exits} exits but the checkpoint has {config.num_exits}')
        config = dataclasses.replace(config, num_exits=num_exits)
    return config, weights_path


def load_capped_safetensors(model: nn.Module, path: Path, device: str | torch.device,
                            is_dropped: Callable[[str], bool]) -> None:
    """Materialise ``model``'s tensors from ``path``; tensors for which ``is_dropped`` holds are skipped unread.

    Raises :class:`CheckpointError` listing missing, unexpected and mis-shaped tensors.
    """
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    with safe_open(str(path), framework='pt', device=str(device)) as handle:
        available = set(handle.keys())
        for name, reference in expected.items():
            if name not in available:
                problems.append(f'missing tensor {name}')
                continue
            shape = tuple(handle.get_slice(name).get_shape())
            if shape != tuple(reference.shape):
                problems.append(f'{name}: checkpoint shape {shape} != model shape {tuple(reference.shape)}')
                continue
            state[name] = handle.get_tensor(name)
    problems += [f'unexpected tensor {name}' for name in sorted(available - set(expected)) if not is_dropped(name)]
    if problems:
        shown = '; '.join(problems[:8]) + (f'; ... ({len(problems)} problems)' if len(problems) > 8 else '')
        raise CheckpointError(f'{path} does not match the model config: {shown}')
    model.load_state_dict(state, assign=True)
