"""Build a :class:`DeerVLA` from a config, with pretrained decoder weights where the config asks for them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .configuration_deer import ConfigError, DeerConfig, load_config
from .modeling_deer import CONFIG_NAME, DeerVLA
from .pretrained_weights import decoder_state_dict

# DecoderConfig field -> key in a transformers LlamaConfig dict
_HF_KEYS = {
    'hidden_size': 'hidden_size', 'num_hidden_layers': 'num_hidden_layers',
    'intermediate_size': 'intermediate_size', 'num_attention_heads': 'num_attention_heads',
    'num_key_value_heads': 'num_key_value_heads', 'vocab_size': 'vocab_size',
}


def _hf_rope_theta(hf_config: dict) -> float | None:
    rope = hf_config.get('rope_parameters') or {}
    return rope.get('rope_theta', hf_config.get('rope_theta'))


def load_pretrained_decoder(model: DeerVLA) -> None:
    """Copy embeddings and the kept layers of the pretrained decoder into ``model``; layers past the cut are ignored."""
    decoder = model.config.decoder
    state, hf_config = decoder_state_dict(decoder.source, decoder.path)
    mismatches = [f'decoder.{ours}={getattr(decoder, ours)} but the weights have {hf_config.get(theirs)}'
                  for ours, theirs in _HF_KEYS.items() if hf_config.get(theirs) != getattr(decoder, ours)]
    theta = _hf_rope_theta(hf_config)
    if theta is not None and float(theta) != float(decoder.rope_theta):
        mismatches.append(f'decoder.rope_theta={decoder.rope_theta} but the weights have {theta}')
    if mismatches:
        raise ConfigError(f'{model.config.name}: ' + '; '.join(mismatches))
    model.embed_tokens.load_state_dict({'weight': state['embed_tokens.weight']})
    for index, layer in enumerate(model.layers):
        prefix = f'layers.{index}.'
        layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def build_model(config: DeerConfig) -> DeerVLA:
    """A fresh model: random init, then pretrained decoder weights for ``smollm2``/``local`` sources."""
    model = DeerVLA(config)
    if config.decoder.source != 'random':
        load_pretrained_decoder(model)
    return model


def load_model(source: str | Path, num_exits: int | None = None, device: str | torch.device = 'cpu') -> DeerVLA:
    """A checkpoint directory (``config.json`` + ``model.safetensors``), or a config name/file for a fresh model."""
    path = Path(source)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return DeerVLA.from_pretrained(path, num_exits=num_exits, device=device)
    if path.is_dir():
        from .modeling_deer import CheckpointError
        raise CheckpointError(f'checkpoint file not found: {path / CONFIG_NAME}')
    model = build_model(load_config(source))
    if num_exits is not None:
        model.truncate(num_exits)
    return model.to(device).eval()


def with_proprioception(model: DeerVLA) -> DeerVLA:
    """``model`` with ``use_proprio`` turned on: every weight kept, the robot-state layers new.

    The new robot-state token starts from random init and joins the
    cross-attention (a small change to the features where the gates are
    open); its skip to the exit features starts at zero. Used to add
    proprioception to a trained vision-only policy (``deer-ros train
    --add-proprio``), which is how the shipped default policy was made.
    """
    if model.config.use_proprio:
        return model
    config = dataclasses.replace(model.config, use_proprio=True)
    extended = DeerVLA(config).to(next(model.parameters()).device)
    missing, unexpected = extended.load_state_dict(model.state_dict(), strict=False)
    new = {name for name, _ in extended.named_parameters() if name.startswith(('proprio_proj.', 'proprio_to_exit.'))}
    if set(missing) != new or unexpected:
        raise ConfigError(f'cannot add proprioception: missing {sorted(set(missing) - new)}, unexpected {unexpected}')
    return extended
