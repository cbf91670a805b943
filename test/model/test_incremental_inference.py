"""Incremental, early-stopping inference must equal a full forward read at each exit."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LlamaModel

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.model.modeling_deer import DeerVLA, llama_config, masked_max_pool
from deer_ros.policy.early_exit import EarlyExitPolicy

INSTRUCTION = 'push the red block to the left'


def _stacked_inputs(policy: EarlyExitPolicy, observations):
    static = torch.from_numpy(np.stack([o.rgb_static for o in observations]))
    gripper = torch.from_numpy(np.stack([o.rgb_gripper for o in observations]))
    ids, mask = policy.instruction_encoder([INSTRUCTION])
    return static, gripper, ids, mask


def _full_forward_features(policy: EarlyExitPolicy, observations) -> torch.Tensor:
    """(time, num_exits, hidden): all frames as one batch through every layer."""
    static, gripper, ids, mask = _stacked_inputs(policy, observations)
    with torch.no_grad():
        return policy.model.exit_features(policy.model.encode_vision(static, gripper), ids, mask)


def test_layer_by_layer_decoder_equals_transformers_forward(tiny_model: DeerVLA) -> None:
    """With closed gates our group-by-group loop is exactly the stock LlamaModel forward."""
    for block in tiny_model.cross_attention:
        block.attention_gate.data.zero_()
        block.feed_forward_gate.data.zero_()
    reference = LlamaModel(llama_config(tiny_model.config, tiny_model.config.kept_layers)).eval()
    reference.embed_tokens.load_state_dict(tiny_model.embed_tokens.state_dict())
    reference.layers.load_state_dict(tiny_model.layers.state_dict())
    ids = torch.randint(0, 300, (2, 20))
    mask = torch.ones_like(ids)
    visual = torch.randn(2, 16, tiny_model.config.resampler.hidden_size)
    with torch.no_grad():
        ours = tiny_model.exit_features(visual, ids, mask)
        hidden_states = reference(input_ids=ids, output_hidden_states=True).hidden_states
    for exit_index, layer in enumerate(tiny_model.exit_layers[:-1]):  # the last entry is post-norm in HF
        torch.testing.assert_close(ours[:, exit_index], masked_max_pool(hidden_states[layer], mask))


def test_policy_steps_equal_full_forward_at_every_exit(tiny_model: DeerVLA, tiny_costs, random_observations) -> None:
    observations = random_observations(5)
    features = _full_forward_features(EarlyExitPolicy(tiny_model, ExitCriterion.always_last(6), tiny_costs),
                                      observations)
    for cap in range(1, tiny_model.num_exits + 1):
        model = DeerVLA(tiny_model.config)
        model.load_state_dict(tiny_model.state_dict())
        model.truncate(cap)
        policy = EarlyExitPolicy(model, ExitCriterion.always_last(cap), tiny_costs.truncated(cap))
        steps = [policy.step(obs, INSTRUCTION) for obs in observations]
        with torch.no_grad():
            expected = model.action_head(features[:, cap - 1].unsqueeze(0))
        for t, (action, info) in enumerate(steps):
            assert info.exit_index == cap - 1
            np.testing.assert_allclose(action.pose, expected.pose[0, t].numpy(), atol=1e-5)
            assert action.gripper == (1 if expected.gripper_logit[0, t] > 0 else -1)


def test_mixed_exit_history_advances_lstm_with_chosen_feature(tiny_model: DeerVLA, tiny_costs, random_observations) -> None:
    """Thresholds that stop at different exits per step: the history is the chosen exits' features."""
    observations = random_observations(8, seed=1)
    features = _full_forward_features(EarlyExitPolicy(tiny_model, ExitCriterion.always_last(6), tiny_costs),
                                      observations)
    criterion = ExitCriterion(np.array([np.inf, 0.02, 0.05, 0.1, 0.2, np.inf]))
    policy = EarlyExitPolicy(tiny_model, criterion, tiny_costs)
    chosen, actions = [], []
    for obs in observations:
        action, info = policy.step(obs, INSTRUCTION)
        chosen.append(info.exit_index)
        actions.append(action.pose)
        decided = info.consistency[1:]
        assert len(info.consistency) == info.exit_index + 1
        assert all(value > criterion.thresholds[k + 1] for k, value in enumerate(decided[:-1]))
    history = torch.stack([features[t, k] for t, k in enumerate(chosen)]).unsqueeze(0)
    with torch.no_grad():
        expected = tiny_model.action_head(history).pose[0].numpy()
    np.testing.assert_allclose(np.array(actions), expected, atol=1e-5)


def test_layers_past_the_exit_never_run(tiny_model: DeerVLA, tiny_costs, random_observations) -> None:
    ran: list[int] = []
    for index, layer in enumerate(tiny_model.layers):
        layer.register_forward_hook(lambda module, args, output, index=index: ran.append(index))
    stop_at_second_exit = ExitCriterion(np.array([np.inf, 10.0, 0, 0, 0, np.inf]))
    policy = EarlyExitPolicy(tiny_model, stop_at_second_exit, tiny_costs)
    action, info = policy.step(random_observations(1)[0], INSTRUCTION)
    assert info.exit_index == 1 and info.exit_layer == 4
    assert ran == [0, 1, 2, 3]
    assert info.llm_gflops == pytest.approx(tiny_costs.llm_gflops[1])


def test_history_is_a_sliding_window_of_chosen_features(tiny_model: DeerVLA, tiny_costs, random_observations) -> None:
    """Past ``history_window`` steps, step t acts on the LSTM replayed from zero over steps t-W+1 .. t, as trained."""
    window = 3
    config = dataclasses.replace(tiny_model.config, head=dataclasses.replace(tiny_model.config.head,
                                                                             history_window=window))
    model = DeerVLA(config)
    model.load_state_dict(tiny_model.state_dict())
    observations = random_observations(7, seed=2)
    policy = EarlyExitPolicy(model, ExitCriterion.always_last(6), tiny_costs)
    features = _full_forward_features(policy, observations)[:, -1]
    actions = [policy.step(obs, INSTRUCTION)[0].pose for obs in observations]
    with torch.no_grad():
        for t, pose in enumerate(actions):
            expected = model.action_head(features[max(0, t - window + 1):t + 1].unsqueeze(0)).pose[0, -1]
            np.testing.assert_allclose(pose, expected.numpy(), atol=1e-5)
        unbounded = model.action_head(features.unsqueeze(0)).pose[0, -1].numpy()
    assert not np.allclose(actions[-1], unbounded, atol=1e-4)


def test_state_is_constant_size_over_a_long_episode(tiny_model: DeerVLA, tiny_costs, random_observations) -> None:
    policy = EarlyExitPolicy(tiny_model, ExitCriterion(np.array([np.inf, 0.05, 0.05, 0.05, 0.05, np.inf])),
                             tiny_costs)
    observation = random_observations(1)[0]
    attributes = set(vars(policy))
    for _ in range(60):
        policy.step(observation, INSTRUCTION)
    remembered = tiny_model.config.head.history_window - 1
    assert len(policy._history) == remembered
    assert {tuple(t.shape) for t in policy._history} == {(1, 1, tiny_model.config.decoder.hidden_size)}
    assert set(vars(policy)) == attributes


def test_reset_forgets_history(tiny_model: DeerVLA, tiny_costs, random_observations) -> None:
    policy = EarlyExitPolicy(tiny_model, ExitCriterion.always_last(6), tiny_costs)
    first, second = random_observations(2, seed=3)
    fresh, _ = policy.step(first, INSTRUCTION)
    policy.step(second, INSTRUCTION)
    policy.reset()
    again, _ = policy.step(first, INSTRUCTION)
    np.testing.assert_allclose(again.pose, fresh.pose, atol=1e-6)


def test_robot_state_reaches_every_exit_through_a_skip_that_starts_at_zero(tiny_model: DeerVLA) -> None:
    """With closed gates only the skip carries the robot state; it is zero at init, so the start is unchanged."""
    model = DeerVLA(dataclasses.replace(tiny_model.config, use_proprio=True)).eval()
    static = torch.randint(0, 256, (1, 200, 200, 3), dtype=torch.uint8)
    gripper = torch.randint(0, 256, (1, 84, 84, 3), dtype=torch.uint8)
    ids, mask = EarlyExitPolicy(tiny_model, ExitCriterion.always_last(6), None).instruction_encoder([INSTRUCTION])

    def features(proprio: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.exit_features(model.encode_vision(static, gripper, proprio), ids, mask)[0]

    low, high = torch.zeros(1, 15), torch.ones(1, 15)
    torch.testing.assert_close(features(low), features(high))
    torch.nn.init.normal_(model.proprio_to_exit.weight)
    shift = features(high) - features(low)
    assert shift.abs().sum(dim=1).gt(0).all()
    torch.testing.assert_close(shift, shift[:1].expand_as(shift))  # the same skip at every exit
