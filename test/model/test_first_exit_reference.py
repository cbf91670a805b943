"""first_exit_reference on deer_ros's own model: the reference feature, the stop at exit 0, its cost, the switch."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.model import DeerVLA
from deer_ros.model.builder import with_exit_interval, with_first_exit_reference, with_proprioception
from deer_ros.model.flops import count_cost_table
from deer_ros.model.modeling_deer import REFERENCE, masked_max_pool
from deer_ros.policy.early_exit import EarlyExitPolicy

INSTRUCTION = 'lift the blue block from the slider'


def _model(tiny_model: DeerVLA, exit_interval: int = 1, reference: bool = True, proprio: bool = True) -> DeerVLA:
    """``tiny`` (gates open) with an exit every ``exit_interval`` layers and a non-zero robot-state skip."""
    torch.manual_seed(1)
    model = with_exit_interval(tiny_model, exit_interval)
    if proprio:
        model = with_proprioception(model)
        with torch.no_grad():
            model.proprio_to_exit.weight.normal_(0.0, 0.1)
    return (with_first_exit_reference(model) if reference else model).eval()


def _inputs(model: DeerVLA, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    static = torch.from_numpy(rng.integers(0, 256, (2, 200, 200, 3), dtype=np.uint8))
    gripper = torch.from_numpy(rng.integers(0, 256, (2, 84, 84, 3), dtype=np.uint8))
    proprio = torch.from_numpy(rng.uniform(-1, 1, (2, 15))).float() if model.config.use_proprio else None
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # padding never reaches the pooled reference either
    return model.encode_vision(static, gripper, proprio), ids, mask


def _layer_calls(model: DeerVLA) -> list[int]:
    ran: list[int] = []
    for index, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda module, args, output, index=index: ran.append(index))
    return ran


@torch.no_grad()
def test_the_reference_is_the_decoder_input_pooled_like_an_exit_and_runs_no_layer(tiny_model: DeerVLA) -> None:
    model = _model(tiny_model)
    ran = _layer_calls(model)
    visual, ids, mask = _inputs(model)
    items = model.iter_exit_features(visual, ids, mask, reference=True)
    index, reference = next(items)
    assert index == REFERENCE and ran == []  # layer 0 has not run: the reference costs no decoder layer
    skip = model.proprio_to_exit(visual[:, -1])
    torch.testing.assert_close(reference, masked_max_pool(model.embed_tokens(ids), mask) + skip)
    rest = list(items)
    assert [index for index, _ in rest] == list(range(model.num_exits)) and ran == list(range(12))
    torch.testing.assert_close(torch.stack([feature for _, feature in rest], dim=1),
                               model.exit_features(visual, ids, mask))  # the exits are untouched by it
    stacked = model.exit_features(visual, ids, mask, reference=True)
    assert stacked.shape == (2, 1 + model.num_exits, model.config.decoder.hidden_size)
    torch.testing.assert_close(stacked[:, 0], reference)


@torch.no_grad()
def test_with_wider_exits_the_reference_is_one_layer_before_the_first_exit(tiny_model: DeerVLA) -> None:
    """Two layers per exit: the reference is the state after layer 1, i.e. exit 0 of the same model at interval 1."""
    wide = _model(tiny_model, exit_interval=2)
    dense = with_exit_interval(wide, 1).eval()
    visual, ids, mask = _inputs(wide, seed=1)
    reference = next(wide.iter_exit_features(visual, ids, mask, reference=True))[1]
    torch.testing.assert_close(reference, dense.exit_features(visual, ids, mask)[:, 0])


def test_the_reference_needs_the_flag(tiny_model: DeerVLA) -> None:
    model = _model(tiny_model, reference=False, proprio=False)
    visual, ids, mask = _inputs(model)
    with pytest.raises(ValueError, match='first_exit_reference'):
        next(model.iter_exit_features(visual, ids, mask, reference=True))
    with pytest.raises(ValueError, match='first_exit_reference'):
        EarlyExitPolicy(model, ExitCriterion(np.full(12, np.inf), first_exit_checked=True), count_cost_table(model))


def test_the_policy_stops_at_exit_0_after_one_layer(tiny_model: DeerVLA, random_observations) -> None:
    model = _model(tiny_model, proprio=False)
    costs = count_cost_table(model)
    ran = _layer_calls(model)
    stop_at_once = np.full(model.num_exits, np.inf)
    policy = EarlyExitPolicy(model, ExitCriterion(stop_at_once, first_exit_checked=True), costs)
    observation = random_observations(1)[0]
    action, info = policy.step(observation, INSTRUCTION)
    assert info.exit_index == 0 and info.exit_layer == 1 and ran == [0]  # layers past exit 0 never run
    assert info.llm_gflops == pytest.approx(costs.llm_gflops[0]) and info.llm_gflops < costs.llm_gflops[1]
    # the value decided on: exit 0's pose against the pose the head reads from the reference
    with torch.no_grad():
        ids, mask = policy.instruction_encoder([INSTRUCTION])
        visual = model.encode_vision(torch.from_numpy(observation.rgb_static)[None],
                                     torch.from_numpy(observation.rgb_gripper)[None])
        reference, exit0 = [model.action_head(feature[:, None]).pose[0, 0].double().numpy()
                            for _, feature in list(model.iter_exit_features(visual, ids, mask, reference=True))[:2]]
    assert info.consistency == [pytest.approx(policy.criterion.consistency(exit0, reference))]
    np.testing.assert_allclose(action.pose, np.clip(exit0, -1, 1), atol=1e-5)
    # a threshold exit 0 cannot meet: the rule goes on to exit 1 and decides there as before
    ran.clear()
    never_at_0 = stop_at_once.copy()
    never_at_0[0] = 0.0
    policy.set_criterion(ExitCriterion(never_at_0, first_exit_checked=True))
    policy.reset()
    _, info = policy.step(observation, INSTRUCTION)
    assert info.exit_index == 1 and ran == [0, 1] and len(info.consistency) == 2


def test_the_reference_costs_one_head_pass_per_step(tiny_model: DeerVLA) -> None:
    plain = count_cost_table(_model(tiny_model, reference=False))
    referenced = count_cost_table(_model(tiny_model))
    assert referenced.llm_gflops == plain.llm_gflops and referenced.vision_gflops == plain.vision_gflops
    assert referenced.history_gflops == pytest.approx(plain.history_gflops + plain.head_gflops)
    assert referenced.total_gflops(0) == pytest.approx(plain.total_gflops(0) + plain.head_gflops)


@torch.no_grad()
def test_an_existing_model_switches_the_reference_on_with_its_weights(tiny_model: DeerVLA) -> None:
    model = _model(tiny_model, reference=False)
    switched = with_first_exit_reference(model)
    assert switched.config.first_exit_reference and not model.config.first_exit_reference
    assert switched.config == dataclasses.replace(model.config, first_exit_reference=True)
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), switched.state_dict().items()):
        assert torch.equal(ours, theirs), name
    switched.eval()
    visual, ids, mask = _inputs(model)
    torch.testing.assert_close(switched.exit_features(visual, ids, mask), model.exit_features(visual, ids, mask))
    assert with_first_exit_reference(switched) is switched
