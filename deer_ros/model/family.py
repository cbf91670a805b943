"""The two model families behind one policy loop: which config, model class and text encoder go together.

``DeerConfig`` / ``DeerVLA`` is deer_ros's own trainable model (any decoder,
window replay); ``DeerVLAConfig`` / ``DeerVLAFlamingo`` is the published
DeeR-VLA (OpenFlamingo-MPT, carried LSTM state). Both offer the interface
:class:`~deer_ros.policy.early_exit.EarlyExitPolicy` and
:mod:`~deer_ros.model.flops` use; what differs is picked here, by the
config's type or by a config file's ``model_type``, so every loader
(:func:`~deer_ros.model.builder.load_model`, the policy runtime, calibration)
takes either family without branching.

A DeeR-VLA checkpoint's ``decoder.tokenizer_path`` may be relative: it is
read relative to the checkpoint directory (``deer-ros import-upstream``
writes ``tokenizer``), so the directory can be moved or copied to a robot
as a whole.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Union

import torch
import yaml

from .configuration_deer import ConfigError, DeerConfig, shipped_config_path
from .configuration_deer_vla import DeerVLAConfig, is_deer_vla_config
from .modeling_deer import CONFIG_NAME, CheckpointError, DeerVLA
from .modeling_deer_vla import DeerVLAFlamingo
from .tokenization import InstructionEncoder
from .tokenization_deer_vla import FlamingoPromptEncoder

AnyConfig = Union[DeerConfig, DeerVLAConfig]
AnyModel = Union[DeerVLA, DeerVLAFlamingo]
TextEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def config_from_dict(data: Any) -> AnyConfig:
    """The config a parsed ``config.json`` / YAML mapping describes, of either family."""
    return DeerVLAConfig.from_dict(data) if is_deer_vla_config(data) else DeerConfig.from_dict(data)


def config_class_for(path: Path) -> type[AnyConfig]:
    """The config class of a YAML/JSON file, from its ``model_type`` (an unreadable file: ``DeerConfig``, which
    then reports what is wrong with it)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return DeerConfig
    return DeerVLAConfig if is_deer_vla_config(data) else DeerConfig


def load_config(name_or_path: str | Path) -> AnyConfig:
    """A shipped config by name (``tiny``, ``deer-vla-3b``, ...) or any YAML/JSON config file, of either family."""
    candidate = Path(name_or_path)
    if not (candidate.suffix in ('.yaml', '.yml', '.json') or candidate.is_file()):
        candidate = shipped_config_path(str(name_or_path))
    if not candidate.is_file():
        raise ConfigError(f'model config file not found: {candidate}')
    return config_class_for(candidate).from_file(candidate)


def with_paths_from(config: AnyConfig, directory: Path) -> AnyConfig:
    """``config`` with a relative DeeR-VLA tokenizer path read relative to ``directory`` (a checkpoint directory)."""
    if not isinstance(config, DeerVLAConfig):
        return config
    value = config.decoder.tokenizer_path
    if value is None or Path(value).is_absolute():
        return config
    decoder = dataclasses.replace(config.decoder, tokenizer_path=str((directory / value).resolve()))
    return dataclasses.replace(config, decoder=decoder)


def checkpoint_config(directory: str | Path) -> AnyConfig:
    """The config of a checkpoint directory (its ``config.json``), relative paths resolved against it."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f'checkpoint file not found: {path}')
    return with_paths_from(config_class_for(path).from_file(path), directory)


def model_class_for(config: AnyConfig) -> type[AnyModel]:
    return DeerVLAFlamingo if isinstance(config, DeerVLAConfig) else DeerVLA


def instruction_encoder_for(config: AnyConfig) -> TextEncoder:
    """Instructions -> (text input, mask of real tokens), as the model of ``config`` reads them."""
    if isinstance(config, DeerVLAConfig):
        return FlamingoPromptEncoder(config.decoder)
    return InstructionEncoder(config.decoder)
