"""DeeR-VLA configs (shipped 3B/9B facts, config.json round trip, clear errors) and OpenFlamingo's tokenisation."""
from __future__ import annotations

import dataclasses
import json

import pytest
from deer_vla_helpers import INSTRUCTIONS, tiny_config, write_tokenizer

from deer_ros.model.configuration_deer import ConfigError, DeerConfig
from deer_ros.model.configuration_deer_vla import DeerVLAConfig, is_deer_vla_config, load_deer_vla_config
from deer_ros.model.family import config_from_dict, instruction_encoder_for, model_class_for
from deer_ros.model.modeling_deer_vla import DeerVLAFlamingo
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.model.tokenization_deer_vla import FlamingoPromptEncoder


def _cross_attention_layers(config: DeerVLAConfig) -> list[int]:
    return [layer for layer in range(config.kept_layers) if config.has_cross_attention(layer)]


def test_shipped_configs_are_the_published_models() -> None:
    three, nine = load_deer_vla_config('deer-vla-3b'), load_deer_vla_config('deer-vla-9b')
    assert (three.decoder.num_layers, three.decoder.d_model, three.kept_layers) == (24, 2048, 12)
    assert three.exit_layers == (2, 4, 6, 8, 10, 12) and _cross_attention_layers(three) == list(range(12))
    assert three.decoder.qk_layernorm and three.decoder.block_layout == 'mosaic_gpt'
    assert (nine.decoder.num_layers, nine.decoder.d_model, nine.kept_layers) == (32, 4096, 16)
    assert nine.exit_layers == tuple(range(2, 17, 2)) and _cross_attention_layers(nine) == [3, 7, 11, 15]
    assert not nine.decoder.qk_layernorm and nine.decoder.block_layout == 'mpt'
    for config in (three, nine):
        assert (config.perceiver.depth, config.perceiver.num_latents, config.perceiver.heads,
                config.perceiver.dim_head, config.perceiver.ff_mult) == (6, 64, 8, 64, 4)
        assert (config.vision.image_size, config.vision.patch_size, config.vision.hidden_size) == (224, 14, 1024)
        assert config.decoder.vocab_size == 50277 + 3 and config.decoder.media_token_id == 50278
        assert (config.head.hidden_size, config.head.lstm_num_layers, config.mlp_hidden_sizes) == (1024, 4, (1024, 512))
        assert config.head.history == 'carry' and config.exit_pooling == 'all_tokens' and config.first_exit_reference
        assert not config.use_proprio


def test_config_json_round_trip_and_family_dispatch(tmp_path) -> None:
    config = load_deer_vla_config('deer-vla-9b')
    config.save(tmp_path / 'config.json')
    data = json.loads((tmp_path / 'config.json').read_text())
    assert is_deer_vla_config(data) and data['model_type'] == 'deer-vla'
    assert DeerVLAConfig.from_file(tmp_path / 'config.json') == config == config_from_dict(data)
    assert load_deer_vla_config(tmp_path / 'config.json').fingerprint() == config.fingerprint()
    assert model_class_for(config) is DeerVLAFlamingo
    assert isinstance(config_from_dict(DeerConfig().to_dict()), DeerConfig)


@pytest.mark.parametrize('change, message', [
    ({'exit_pooling': 'mean'}, 'exit_pooling must be one of'),
    ({'num_exits': 13}, 'exceeds decoder.num_layers'),
    ({'exit_interval': 1}, 'first_exit_reference compares the first exit'),
    ({'model_type': 'deer'}, 'model_type must be'),
    ({'head': {'history': 'replay-all'}}, 'head.history must be one of'),
    ({'decoder': {'block_layout': 'llama'}}, 'decoder.block_layout must be one of'),
    ({'decoder': {'media_token_id': 50280}}, 'outside the vocabulary'),
    ({'head': {'mlp_num_hidden_layers': 4}}, 'mlp_num_hidden_layers must be in'),
    ({'vision': {'image_size': 225}}, 'multiple of vision.patch_size'),
    ({'decoder': {'n_layers': 24}}, r"unknown keys in decoder: \['n_layers'\]"),
    ({'cross_attention_every': 4}, 'unknown model config keys'),
    ({'decoder': {'d_model': '2048'}}, 'decoder.d_model must be an integer'),
])
def test_config_errors_name_the_field(tmp_path, change, message) -> None:
    data = load_deer_vla_config('deer-vla-3b').to_dict()
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    (tmp_path / 'config.json').write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        DeerVLAConfig.from_file(tmp_path / 'config.json')


def test_yaml_numbers_written_as_text_are_read_as_floats(tmp_path) -> None:
    (tmp_path / 'model.yaml').write_text('decoder:\n  layer_norm_eps: 1e-5\nhead:\n  dropout: 0.5\n')
    assert load_deer_vla_config(tmp_path / 'model.yaml').decoder.layer_norm_eps == 1e-5


@pytest.fixture(scope='module')
def tokenizer_config(tmp_path_factory) -> DeerVLAConfig:
    directory = tmp_path_factory.mktemp('mpt-tokenizer')
    return tiny_config(directory, write_tokenizer(directory))


def test_prompts_are_tokenised_as_openflamingo_does(tokenizer_config: DeerVLAConfig) -> None:
    encoder = instruction_encoder_for(tokenizer_config)
    assert isinstance(encoder, FlamingoPromptEncoder)
    base = tokenizer_config.decoder.vocab_size - 3
    tokens = encoder.tokenizer
    assert [tokens.convert_tokens_to_ids(t) for t in ('<|endofchunk|>', '<image>', '<PAD>')] == [base, base + 1,
                                                                                                   base + 2]
    ids, mask = encoder(['  ' + INSTRUCTIONS[0] + ' '])  # stripped, as upstream does
    assert ids[0, 0] == base + 1 and ids[0, -2:].tolist() == [base, tokens.eos_token_id] and mask.all()
    assert tokens.decode(ids[0, 1:-2]) == INSTRUCTIONS[0]
    ids, mask = encoder([INSTRUCTIONS[0], INSTRUCTIONS[1]])  # padding='longest', on the right with <PAD>
    short = int(mask[1].sum())
    assert ids.shape[1] == int(mask[0].sum()) > short and (ids[1, short:] == base + 2).all()
    assert encoder(['word ' * 40])[0].shape[1] == tokenizer_config.decoder.max_length  # truncated to 32
    with pytest.raises(ValueError, match='non-empty'):
        encoder([' '])


def test_tokenizer_mismatches_are_refused(tokenizer_config: DeerVLAConfig, tmp_path) -> None:
    decoder = tokenizer_config.decoder
    with pytest.raises(ConfigError, match='decoder.vocab_size is 50280'):
        FlamingoPromptEncoder(dataclasses.replace(decoder, vocab_size=50280, media_token_id=50278))
    with pytest.raises(ConfigError, match='media_token_id'):
        FlamingoPromptEncoder(dataclasses.replace(decoder, media_token_id=decoder.media_token_id + 1))
    with pytest.raises(ConfigError, match='tokenizer_path is required'):
        FlamingoPromptEncoder(dataclasses.replace(decoder, tokenizer_path=None))
    with pytest.raises(FileNotFoundError, match='MPT tokenizer directory not found'):
        FlamingoPromptEncoder(dataclasses.replace(decoder, tokenizer_path=str(tmp_path / 'missing')))
    assert isinstance(instruction_encoder_for(DeerConfig()), InstructionEncoder)
