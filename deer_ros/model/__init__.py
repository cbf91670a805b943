"""The multi-exit DeeR VLA model: configuration, modules, cost counting and checkpoints."""
from .builder import build_model, load_model
from .configuration_deer import ConfigError, DeerConfig
from .cost import CostTable
from .family import load_config
from .modeling_deer import CheckpointError, DeerVLA

__all__ = ['build_model', 'load_model', 'ConfigError', 'DeerConfig', 'load_config', 'CostTable',
           'CheckpointError', 'DeerVLA']
