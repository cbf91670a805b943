"""Configuration of the DeeR-VLA model family: OpenFlamingo-MPT as RoboFlamingo and DeeR build it.

One dataclass per sub-module plus :class:`DeerVLAConfig`, loadable from
``config/deer-vla-*.yaml`` and saved as ``config.json`` beside a checkpoint,
like :class:`~deer_ros.model.configuration_deer.DeerConfig`. The
``model_type`` key tells the two families apart in a ``config.json``.

The defaults are the published 3B model (OpenFlamingo-3B-vitl-mpt1b with
DeeR's heads): every number here is one the upstream checkpoints' tensors
or code fix (``robot_flamingo/models/flamingo_mpt.py``, ``action_head.py``,
OpenFlamingo's ``helpers.py``, MosaicGPT's ``config.json``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .configuration_deer import ConfigError, ExitModelConfig, shipped_config_path

MODEL_TYPE = 'deer-vla'
# OpenAI CLIP's pixel statistics (open_clip OPENAI_DATASET_MEAN / _STD), used by every OpenFlamingo checkpoint.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BLOCK_LAYOUTS = ('mosaic_gpt', 'mpt')
PADDINGS = ('longest', 'max_length')
HISTORY_MODES = ('carry', 'replay')
EXIT_POOLINGS = ('all_tokens', 'real_tokens')
DROPOUT_MODES = ('layerwise', 'last')


@dataclass
class ClipVisionConfig:
    """CLIP ViT-L/14 (OpenAI weights) whose patch tokens, without the class token and ``ln_post``, feed the resampler.

    Both cameras are resized to ``image_size`` with PIL bicubic and
    normalised with CLIP's mean/std, as open_clip's eval transform does.
    """

    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-5
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))


@dataclass
class PerceiverConfig:
    """OpenFlamingo's Perceiver resampler, one instance shared by both cameras (width = the vision width)."""

    depth: int = 6
    num_latents: int = 64
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4


@dataclass
class MptDecoderConfig:
    """MPT language model with OpenFlamingo's gated cross-attention, and its tokenizer.

    ``num_layers`` is the depth of the pretrained LLM (24 for MPT-1B, 32 for
    MPT-7B); only the layers up to the last exit are built.
    ``qk_layernorm``: MosaicGPT-1B normalises queries and keys (``attn_qk_ln``);
    MPT-7B does not. ``block_layout`` names the decoder-block tensors in
    upstream checkpoints: ``mosaic_gpt`` (``ln_1``, ``mlp.mlp_up`` ...: MPT-1B)
    or ``mpt`` (``norm_1``, ``ffn.up_proj`` ...: MPT-7B).
    ``vocab_size``: the GPT-NeoX tokenizer (50277) plus ``<|endofchunk|>``,
    ``<image>`` and ``<PAD>``: OpenFlamingo resizes the embeddings to that.
    ``media_token_id``: the id of ``<image>``. ``tokenizer_path``: a local
    directory with MPT's tokenizer (never downloaded).
    Instructions are tokenised as ``<image>{instruction}<|endofchunk|>{eos}``,
    truncated to ``max_length``; ``padding: longest`` leaves a single
    instruction unpadded, as upstream's evaluation does.
    """

    d_model: int = 2048
    n_heads: int = 16
    num_layers: int = 24
    expansion_ratio: int = 4
    vocab_size: int = 50280
    qk_layernorm: bool = True
    block_layout: str = 'mosaic_gpt'
    alibi_bias_max: int = 8
    layer_norm_eps: float = 1e-5
    cross_attn_every_n_layers: int = 1
    cross_attn_heads: int = 8
    cross_attn_dim_head: int = 64
    cross_attn_ff_mult: int = 4
    media_token_id: int = 50278
    tokenizer_path: str | None = None
    max_length: int = 32
    padding: str = 'longest'


@dataclass
class LstmHeadConfig:
    """DeeR's action head (``DeterministicDecoder``): LayerNorm-LSTM, then a tanh pose MLP and a gripper MLP.

    Hidden sizes of the MLPs are the first ``mlp_num_hidden_layers`` of
    upstream's fixed [1024, 512, 256]; ``dropout_mode`` and the LayerNorm
    switches decide the ``nn.Sequential`` indices, so they must match the
    checkpoint. ``history``: ``carry`` keeps the LSTM state through a
    subtask (upstream DeeR at inference, window 1); ``replay`` re-runs the
    LSTM from a zero state over the last ``history_window`` chosen features
    (RoboFlamingo's ``refresh_window``). ``history_window`` is also the
    training window (12 upstream).
    """

    hidden_size: int = 1024
    lstm_num_layers: int = 4
    lstm_layernorm: bool = True
    lstm_dropout: float = 0.3
    mlp_num_hidden_layers: int = 2
    mlp_layernorm: bool = True
    dropout: float = 0.4
    dropout_mode: str = 'layerwise'
    history: str = 'carry'
    history_window: int = 12


MLP_HIDDEN_SIZES = (1024, 512, 256)


@dataclass
class DeerVLAConfig(ExitModelConfig):
    """The whole model.

    Exits sit after every ``exit_interval`` decoder layers (upstream blocks
    1, 3, ... for an interval of 2); ``num_exits`` of them are kept, so the
    decoder is cut after ``num_exits * exit_interval`` layers.
    ``exit_pooling``: ``all_tokens`` max-pools every text position,
    padding included, as upstream; ``real_tokens`` skips padding (deer_ros's
    pooling). ``first_exit_reference``: the first exit's action is compared
    with the action read from the layer just before it (upstream's rule,
    ``value_net.py``); the thresholds of imported checkpoints assume it.
    """

    name: str = 'deer-vla-3b'
    model_type: str = MODEL_TYPE
    vision: ClipVisionConfig = field(default_factory=ClipVisionConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    decoder: MptDecoderConfig = field(default_factory=MptDecoderConfig)
    head: LstmHeadConfig = field(default_factory=LstmHeadConfig)
    exit_interval: int = 2
    num_exits: int = 6
    exit_pooling: str = 'all_tokens'
    first_exit_reference: bool = True

    @property
    def use_proprio(self) -> bool:
        """DeeR-VLA sees no robot state (upstream ``use_state`` off): callers drop ``robot_obs``."""
        return False

    @property
    def mlp_hidden_sizes(self) -> tuple[int, ...]:
        return MLP_HIDDEN_SIZES[:self.head.mlp_num_hidden_layers]

    def has_cross_attention(self, layer: int) -> bool:
        """OpenFlamingo's placement: a gated block before decoder layer ``layer`` when ``(layer + 1) % n == 0``."""
        return (layer + 1) % self.decoder.cross_attn_every_n_layers == 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent field."""
        choices = ((self.decoder.block_layout, BLOCK_LAYOUTS, 'decoder.block_layout'),
                   (self.decoder.padding, PADDINGS, 'decoder.padding'),
                   (self.head.history, HISTORY_MODES, 'head.history'),
                   (self.head.dropout_mode, DROPOUT_MODES, 'head.dropout_mode'),
                   (self.exit_pooling, EXIT_POOLINGS, 'exit_pooling'))
        for value, allowed, name in choices:
            if value not in allowed:
                raise ConfigError(f'{name} must be one of {allowed}, got {value!r}')
        if self.model_type != MODEL_TYPE:
            raise ConfigError(f'model_type must be {MODEL_TYPE!r}, got {self.model_type!r}')
        positive = {'exit_interval': self.exit_interval, 'num_exits': self.num_exits,
                    'decoder.cross_attn_every_n_layers': self.decoder.cross_attn_every_n_layers,
                    'decoder.max_length': self.decoder.max_length, 'head.history_window': self.head.history_window,
                    'head.lstm_num_layers': self.head.lstm_num_layers}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f'{name} must be a positive integer, got {value!r}')
        if self.kept_layers > self.decoder.num_layers:
            raise ConfigError(f'num_exits * exit_interval = {self.kept_layers} exceeds decoder.num_layers '
                              f'= {self.decoder.num_layers}')
        if self.decoder.d_model % self.decoder.n_heads:
            raise ConfigError('decoder.d_model must be divisible by decoder.n_heads')
        if self.vision.image_size % self.vision.patch_size:
            raise ConfigError('vision.image_size must be a multiple of vision.patch_size')
        if not 1 <= self.head.mlp_num_hidden_layers <= len(MLP_HIDDEN_SIZES):
            raise ConfigError(f'head.mlp_num_hidden_layers must be in [1, {len(MLP_HIDDEN_SIZES)}], '
                              f'got {self.head.mlp_num_hidden_layers}')
        if self.first_exit_reference and self.exit_layers[0] < 2:
            raise ConfigError('first_exit_reference compares the first exit with the layer before it: '
                              'it needs exit_interval >= 2')
        if not 0 <= self.decoder.media_token_id < self.decoder.vocab_size:
            raise ConfigError(f'decoder.media_token_id {self.decoder.media_token_id} is outside the vocabulary '
                              f'of {self.decoder.vocab_size}')
        for name in ('image_mean', 'image_std'):
            if len(getattr(self.vision, name)) != 3:
                raise ConfigError(f'vision.{name} must hold 3 numbers (RGB)')


def is_deer_vla_config(data: Any) -> bool:
    """Whether parsed config data (a ``config.json`` mapping) describes this family."""
    return isinstance(data, dict) and data.get('model_type') == MODEL_TYPE


def load_deer_vla_config(name_or_path: str | Path) -> DeerVLAConfig:
    """A shipped config by name (``deer-vla-3b``, ``deer-vla-9b``) or any YAML/JSON config file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in ('.yaml', '.yml', '.json') or candidate.is_file():
        return DeerVLAConfig.from_file(candidate)
    return DeerVLAConfig.from_file(shipped_config_path(str(name_or_path)))
