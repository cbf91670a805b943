"""The two model families behind one policy loop: which config, model class and text encoder go together.

``DeerConfig`` / ``DeerVLA`` is deer_ros's own trainable model (any decoder,
window replay); ``DeerVLAConfig`` / ``DeerVLAFlamingo`` is the published
DeeR-VLA (OpenFlamingo-MPT, carried LSTM state). Both offer the interface
:class:`~deer_ros.policy.early_exit.EarlyExitPolicy` and
:mod:`~deer_ros.model.flops` use; what differs is picked here, by the
config's type or by a ``config.json``'s ``model_type``.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch

from .configuration_deer import DeerConfig
from .configuration_deer_vla import DeerVLAConfig, is_deer_vla_config
from .modeling_deer import DeerVLA
from .modeling_deer_vla import DeerVLAFlamingo
from .tokenization import InstructionEncoder
from .tokenization_deer_vla import FlamingoPromptEncoder

AnyConfig = Union[DeerConfig, DeerVLAConfig]
AnyModel = Union[DeerVLA, DeerVLAFlamingo]
TextEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def config_from_dict(data: Any) -> AnyConfig:
    """The config a parsed ``config.json`` / YAML mapping describes, of either family."""
    return DeerVLAConfig.from_dict(data) if is_deer_vla_config(data) else DeerConfig.from_dict(data)


def model_class_for(config: AnyConfig) -> type[AnyModel]:
    return DeerVLAFlamingo if isinstance(config, DeerVLAConfig) else DeerVLA


def instruction_encoder_for(config: AnyConfig) -> TextEncoder:
    """Instructions -> (text input, mask of real tokens), as the model of ``config`` reads them."""
    if isinstance(config, DeerVLAConfig):
        return FlamingoPromptEncoder(config.decoder)
    return InstructionEncoder(config.decoder)
