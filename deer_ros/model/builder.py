"""Build a model of either family from a config (pretrained decoder weights where a ``DeerConfig`` asks), or load a
checkpoint directory of either family."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .configuration_deer import ConfigError, DeerConfig
from .configuration_deer_vla import DeerVLAConfig
from .family import AnyConfig, AnyModel, load_config, model_class_for, with_paths_from
from .modeling_deer import CONFIG_NAME, CheckpointError, DeerVLA
from .modeling_deer_vla import DeerVLAFlamingo
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


def build_model(config: AnyConfig) -> AnyModel:
    """A fresh model: random init, then pretrained decoder weights for ``smollm2``/``local`` sources.

    A DeeR-VLA config gets random weights of the right shapes (cost counting,
    timing, tests): its real weights come from the upstream files through
    ``deer-ros import-upstream``, never from a config.
    """
    if isinstance(config, DeerVLAConfig):
        return DeerVLAFlamingo(config)
    model = DeerVLA(config)
    if config.decoder.source != 'random':
        load_pretrained_decoder(model)
    return model


def load_model(source: str | Path, num_exits: int | None = None, device: str | torch.device = 'cpu') -> AnyModel:
    """A checkpoint directory (``config.json`` + ``model.safetensors``) of either family, or a config name/file
    for a fresh model."""
    path = Path(source)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        model = model_class_for(load_config(path / CONFIG_NAME)).from_pretrained(path, num_exits=num_exits,
                                                                                 device=device)
        model.config = with_paths_from(model.config, path)
        return model
    if path.is_dir():
        raise CheckpointError(f'checkpoint file not found: {path / CONFIG_NAME}')
    model = build_model(load_config(source))
    if num_exits is not None:
        model.truncate(num_exits)
    return model.to(device).eval()


def _rebuilt(model: DeerVLA, config: DeerConfig, new: tuple[str, ...], dropped: tuple[str, ...],
             change: str) -> DeerVLA:
    """A model of ``config`` with every weight of ``model`` except ``dropped``; parameters under ``new`` start fresh."""
    rebuilt = DeerVLA(config).to(next(model.parameters()).device)
    state = {name: value for name, value in model.state_dict().items() if not name.startswith(dropped)}
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    fresh = {name for name, _ in rebuilt.named_parameters() if name.startswith(new)}
    if set(missing) != fresh or unexpected:
        raise ConfigError(f'cannot {change}: missing {sorted(set(missing) - fresh)}, unexpected {unexpected}')
    return rebuilt


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
    return _rebuilt(model, dataclasses.replace(model.config, use_proprio=True), ('proprio_proj.', 'proprio_to_exit.'),
                    (), 'add proprioception')


def with_sentence_encoder(model: DeerVLA, text_length: int = 16) -> DeerVLA:
    """``model`` reading instructions through the frozen MiniLM sentence encoder (``decoder.tokenizer: minilm``).

    The token embeddings are dropped and a new projection of the encoder's
    token states takes their place; every other weight is kept, so a policy
    trained with a from-scratch tokenizer keeps its vision and control and
    only relearns how text enters the decoder (``deer-ros train
    --sentence-encoder``). 16 WordPiece tokens hold every CALVIN-style
    instruction here (the longest has 12, special tokens included), with room for longer user wording.
    """
    if model.config.decoder.tokenizer == 'minilm':
        return model
    decoder = dataclasses.replace(model.config.decoder, tokenizer='minilm', text_length=text_length)
    return _rebuilt(model, dataclasses.replace(model.config, decoder=decoder), ('text_proj.',), ('embed_tokens.',),
                    'switch to the sentence encoder')


def with_exit_interval(model: DeerVLA, exit_interval: int) -> DeerVLA:
    """``model`` with an exit every ``exit_interval`` decoder layers over the same kept layers, every weight kept.

    No weight depends on where the exits are: only which layers' pooled
    states the heads see. Denser exits make early stops cheaper relative to
    full depth (with one layer per exit the earliest stop, exit 2, costs 2/L
    of the decoder instead of 4/L), at the price of one head pass per checked
    exit; the heads must then be trained on the new exits' features
    (``deer-ros train --exit-interval``). With one layer per exit,
    :func:`with_first_exit_reference` lets the rule stop after one layer too.
    """
    config = model.config
    if exit_interval == config.exit_interval:
        return model
    if exit_interval < 1 or config.kept_layers % exit_interval:
        raise ConfigError(f'exit_interval {exit_interval} must divide the {config.kept_layers} kept decoder layers')
    respaced = dataclasses.replace(config, exit_interval=exit_interval,
                                   num_exits=config.kept_layers // exit_interval)
    return _rebuilt(model, respaced, (), (), 'move the exits')


def with_first_exit_reference(model: DeerVLA) -> DeerVLA:
    """``model`` with ``first_exit_reference`` on: the same weights, and exit 0 can stop on its own.

    The reference is read from states the decoder computes anyway and the
    shared head is not trained on it (as upstream; see ``DeerConfig``), so a
    trained checkpoint needs no retraining, only a new calibration, whose
    column 0 then holds exit 0's differences from the reference
    (``deer-ros calibrate --first-exit-reference DIR`` does both).
    """
    if model.config.first_exit_reference:
        return model
    return _rebuilt(model, dataclasses.replace(model.config, first_exit_reference=True), (), (),
                    'turn on the first-exit reference')
