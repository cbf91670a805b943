"""Checkpoint round trip and clear errors for bad configs, checkpoints and observations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.model import CheckpointError, ConfigError, DeerConfig, DeerVLA, load_config, load_model
from deer_ros.model.builder import with_exit_interval, with_proprioception
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.policy.early_exit import EarlyExitPolicy


def test_save_load_round_trip_gives_identical_actions(tiny_model, tiny_costs, random_observations, tmp_path) -> None:
    tiny_model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    for name, tensor in tiny_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    observations = random_observations(3)
    original = EarlyExitPolicy(tiny_model, ExitCriterion.always_last(6), tiny_costs)
    restored = EarlyExitPolicy(loaded, ExitCriterion.always_last(6), tiny_costs)
    for obs in observations:
        a, _ = original.step(obs, 'open the drawer')
        b, _ = restored.step(obs, 'open the drawer')
        np.testing.assert_allclose(a.pose, b.pose, atol=1e-6)  # same weights; kernels may reorder sums


def test_missing_checkpoint_names_the_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match='config.json'):
        load_model(tmp_path)
    DeerVLA(load_config('tiny')).save_pretrained(tmp_path)
    (tmp_path / 'model.safetensors').unlink()
    with pytest.raises(CheckpointError, match=r'model\.safetensors'):
        DeerVLA.from_pretrained(tmp_path)


def test_mismatched_checkpoint_names_tensor_and_shapes(tmp_path) -> None:
    DeerVLA(load_config('tiny')).save_pretrained(tmp_path)
    config = json.loads((tmp_path / 'config.json').read_text())
    config['head']['lstm_hidden_size'] = 96
    (tmp_path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r'model\.safetensors.*action_head\.lstm.*\(512, 128\) != model shape \(384, 128\)'):
        DeerVLA.from_pretrained(tmp_path)


def test_requesting_more_exits_than_saved_is_rejected(tmp_path) -> None:
    model = DeerVLA(load_config('tiny'))
    model.truncate(2)
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match='requested 4 exits but the checkpoint has 2'):
        DeerVLA.from_pretrained(tmp_path, num_exits=4)


@pytest.mark.parametrize('text, message', [
    ('exit_interval: 2\nnum_exits: [1', 'malformed model config'),
    ('bogus_key: 3', "unknown model config keys: \\['bogus_key'\\]"),
    ('num_exits: 20', 'exceeds decoder.num_hidden_layers'),
    ('vision: {encoder: resnet}', 'vision.encoder must be one of'),
    ('decoder: {rope_theta: fast}', 'decoder.rope_theta must be a number'),
    ('num_exits: two', 'num_exits must be an integer'),
])
def test_bad_config_files_are_rejected_with_the_field(tmp_path, text: str, message: str) -> None:
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        DeerConfig.from_file(path)


def test_unknown_shipped_config_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="available: .*'tiny'"):
        load_config('huge')


@pytest.mark.parametrize('field, value, message', [
    ('rgb_static', np.zeros((84, 84, 3), np.uint8), r'rgb_static must have shape \(200, 200, 3\)'),
    ('rgb_gripper', np.zeros((84, 84, 3), np.float32), 'rgb_gripper must have dtype uint8'),
    ('rgb_static', np.zeros((200, 200), np.uint8), 'rgb_static must have shape'),
    ('proprio', np.full(15, np.nan), 'proprio contains NaN'),
    ('proprio', np.zeros(7), r'proprio must have shape \(15,\)'),
])
def test_bad_observations_are_rejected(tiny_model, tiny_costs, random_observations, field, value, message) -> None:
    observation = random_observations(1)[0]
    setattr(observation, field, value)
    policy = EarlyExitPolicy(tiny_model, ExitCriterion.always_last(6), tiny_costs)
    with pytest.raises(ValueError, match=message):
        policy.step(observation, 'open the drawer')


def test_empty_instruction_is_rejected(tiny_model, tiny_costs, random_observations) -> None:
    policy = EarlyExitPolicy(tiny_model, ExitCriterion.always_last(6), tiny_costs)
    with pytest.raises(ValueError, match='non-empty'):
        policy.step(random_observations(1)[0], '  ')


def test_adding_proprioception_keeps_every_weight() -> None:
    torch.manual_seed(0)
    model = DeerVLA(load_config('tiny'))
    extended = with_proprioception(model)
    assert extended.config.use_proprio and not model.config.use_proprio
    state = extended.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(state[name], tensor)
    assert not extended.proprio_to_exit.weight.any() and not extended.proprio_to_exit.bias.any()
    assert with_proprioception(extended) is extended


def test_moving_the_exits_keeps_every_weight_and_the_features_of_the_old_exits(tiny_model, random_observations) -> None:
    dense = with_exit_interval(tiny_model, 1).eval()
    assert dense.config.exit_layers == tuple(range(1, 13)) and tiny_model.config.exit_layers == (2, 4, 6, 8, 10, 12)
    state = dense.state_dict()
    for name, tensor in tiny_model.state_dict().items():
        torch.testing.assert_close(state[name], tensor)
    observation = random_observations(1)[0]
    images = [torch.from_numpy(getattr(observation, key))[None] for key in ('rgb_static', 'rgb_gripper')]
    text_input, mask = InstructionEncoder(tiny_model.config.decoder)(['open the drawer'])
    with torch.no_grad():
        sparse_features = tiny_model.exit_features(tiny_model.encode_vision(*images), text_input, mask)
        dense_features = dense.exit_features(dense.encode_vision(*images), text_input, mask)
    torch.testing.assert_close(dense_features[:, 1::2], sparse_features)  # layers 2, 4, .., 12 in both
    assert with_exit_interval(dense, 1) is dense
    with pytest.raises(ConfigError, match='must divide the 12 kept decoder layers'):
        with_exit_interval(tiny_model, 5)
